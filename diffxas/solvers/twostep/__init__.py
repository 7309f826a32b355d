"""Two-step method: ePIE per energy, alignment, per-pixel XANES fit."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> submodule that defines it. Resolved on first access (PEP 562), so that importing one
#: submodule does not import the others (the CLI's light commands must not import JAX).
_API = {
    "AlignedStack": "align",
    "BOUNDED": "fit_lm",
    "EpieConfig": "epie_config",
    "EpieResult": "epie",
    "FitConfig": "fit_config",
    "FitResult": "fitting",
    "LINEAR": "fit_config",
    "OFFSET_TOL": "epie_batches",
    "POSITIVE": "fit_lm",
    "PRE_EDGE_SHAPE": "fit_config",
    "SECOND_PEAK_STARTS": "fitting",
    "TwoStepConfig": "run",
    "align_stack": "align",
    "apply_shifts": "align",
    "bounds_for": "fit_lm",
    "cached_matrices": "align",
    "epie_update": "epie_kernel",
    "epoch_fn": "epie_kernel",
    "estimate_shift": "align",
    "find_empty_region": "align",
    "fit_global": "fit_varpro",
    "fit_shared_shape": "fit_varpro",
    "fit_stack": "fitting",
    "frame_orders": "epie_batches",
    "from_raw": "fit_lm",
    "illumination_map": "align",
    "init_pixels": "fit_varpro",
    "initial_probes": "epie_batches",
    "kk_constrain": "kk",
    "kk_matrix": "kk",
    "kk_phase": "kk",
    "levenberg_marquardt": "fit_lm",
    "lm_fit": "fit_lm",
    "load_checkpoint": "epie_checkpoint",
    "maps_from_fit": "run",
    "multistart_fit": "fitting",
    "noise_energy_mask": "fitting",
    "peak_grid": "fit_varpro",
    "reconstruct_two_step": "run",
    "reconstruction_grids": "epie_batches",
    "refit_two_step": "run",
    "register_stack": "align",
    "remove_background": "align",
    "resample_field": "align",
    "run_epie": "epie",
    "save_checkpoint": "epie_checkpoint",
    "shift_ramps": "epie_kernel",
    "to_common": "align",
    "to_raw": "fit_lm",
    "unwrap_phase": "align",
    "varpro_grid": "fit_varpro",
}

if TYPE_CHECKING:
    from .align import AlignedStack as AlignedStack
    from .align import align_stack as align_stack
    from .align import apply_shifts as apply_shifts
    from .align import cached_matrices as cached_matrices
    from .align import estimate_shift as estimate_shift
    from .align import find_empty_region as find_empty_region
    from .align import illumination_map as illumination_map
    from .align import register_stack as register_stack
    from .align import remove_background as remove_background
    from .align import resample_field as resample_field
    from .align import to_common as to_common
    from .align import unwrap_phase as unwrap_phase
    from .epie import EpieResult as EpieResult
    from .epie import run_epie as run_epie
    from .epie_batches import OFFSET_TOL as OFFSET_TOL
    from .epie_batches import frame_orders as frame_orders
    from .epie_batches import initial_probes as initial_probes
    from .epie_batches import reconstruction_grids as reconstruction_grids
    from .epie_checkpoint import load_checkpoint as load_checkpoint
    from .epie_checkpoint import save_checkpoint as save_checkpoint
    from .epie_config import EpieConfig as EpieConfig
    from .epie_kernel import epie_update as epie_update
    from .epie_kernel import epoch_fn as epoch_fn
    from .epie_kernel import shift_ramps as shift_ramps
    from .fit_config import LINEAR as LINEAR
    from .fit_config import PRE_EDGE_SHAPE as PRE_EDGE_SHAPE
    from .fit_config import FitConfig as FitConfig
    from .fit_lm import BOUNDED as BOUNDED
    from .fit_lm import POSITIVE as POSITIVE
    from .fit_lm import bounds_for as bounds_for
    from .fit_lm import from_raw as from_raw
    from .fit_lm import levenberg_marquardt as levenberg_marquardt
    from .fit_lm import lm_fit as lm_fit
    from .fit_lm import to_raw as to_raw
    from .fit_varpro import fit_global as fit_global
    from .fit_varpro import fit_shared_shape as fit_shared_shape
    from .fit_varpro import init_pixels as init_pixels
    from .fit_varpro import peak_grid as peak_grid
    from .fit_varpro import varpro_grid as varpro_grid
    from .fitting import SECOND_PEAK_STARTS as SECOND_PEAK_STARTS
    from .fitting import FitResult as FitResult
    from .fitting import fit_stack as fit_stack
    from .fitting import multistart_fit as multistart_fit
    from .fitting import noise_energy_mask as noise_energy_mask
    from .kk import kk_constrain as kk_constrain
    from .kk import kk_matrix as kk_matrix
    from .kk import kk_phase as kk_phase
    from .run import TwoStepConfig as TwoStepConfig
    from .run import maps_from_fit as maps_from_fit
    from .run import reconstruct_two_step as reconstruct_two_step
    from .run import refit_two_step as refit_two_step


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
