"""Physics: constants, scattering factors, XANES spectra, geometry, forward model, probe, background, Fisher information. No file I/O."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> submodule that defines it. Resolved on first access (PEP 562), so that importing one
#: submodule does not import the others (the CLI's light commands must not import JAX).
_API = {
    "AVOGADRO": "constants",
    "BLOCK": "background",
    "COMPOSITIONS_PER_V": "tables",
    "DAWSON_K": "kramers_kronig",
    "DAWSON_X0": "kramers_kronig",
    "ELEMENTARY_CHARGE": "constants",
    "FLOOR": "background",
    "Grid": "geometry",
    "HC_EV_M": "constants",
    "LOSSES": "forward",
    "MODES": "background",
    "OBJECT_COMPONENTS": "uncertainty",
    "PARAM_NAMES": "spectra",
    "PLANCK_H": "constants",
    "POISSON_EPS": "forward",
    "R_E": "constants",
    "SEED_CONSTANTS": "tables",
    "SPEED_OF_LIGHT": "constants",
    "TABLES": "tables",
    "VEdge": "scattering",
    "XanesParams": "spectra",
    "Z": "constants",
    "absorption": "spectra",
    "amplitude_loss": "forward",
    "amplitude_projection": "forward",
    "anomalous_factors": "tables",
    "as_maps": "background",
    "back_propagate": "forward",
    "centred_probe": "probe",
    "check_mode": "background",
    "covariance": "uncertainty",
    "crop_center": "forward",
    "darkest_level": "background",
    "dawson_integral": "kramers_kronig",
    "describe": "background",
    "descriptor_functions": "uncertainty",
    "descriptor_gradients": "uncertainty",
    "descriptor_std": "uncertainty",
    "detected_power": "probe",
    "dirichlet_matrix": "forward",
    "edge_jump_f2": "tables",
    "edge_step": "spectra",
    "electrons_per_v": "tables",
    "energy_from_wavelength": "geometry",
    "erf_step": "kramers_kronig",
    "exit_wave": "forward",
    "extract_patch": "forward",
    "f1_v": "spectra",
    "far_field": "forward",
    "fourier_shift": "forward",
    "frame_geometry": "forward",
    "frame_information": "uncertainty",
    "grid_covering": "geometry",
    "grid_like": "geometry",
    "illumination_map": "forward",
    "initial_background": "background",
    "intensities": "forward",
    "isotropic_information": "uncertainty",
    "kb_probe": "probe",
    "kk_erf_step": "kramers_kronig",
    "kk_lorentzian": "kramers_kronig",
    "kk_piecewise_linear": "kramers_kronig",
    "kk_piecewise_linear_matrix": "kramers_kronig",
    "linear_design": "spectra",
    "loss_fn": "forward",
    "loss_with_background": "forward",
    "map_std": "uncertainty",
    "model_intensity": "forward",
    "modulus_update": "forward",
    "n_v": "spectra",
    "n_v_from_edge_jump": "scattering",
    "ne_eff_from_phase": "scattering",
    "ne_eff_per_nv": "spectra",
    "numerical_aperture_for_fwhm": "probe",
    "object_information": "uncertainty",
    "object_pixel_size": "geometry",
    "parameter_information": "uncertainty",
    "parameter_scales": "uncertainty",
    "per_energy": "background",
    "phase": "spectra",
    "poisson_nll": "forward",
    "pre_edge": "spectra",
    "pre_edge_norm": "spectra",
    "probe_centre": "probe",
    "probe_from_frames": "probe",
    "resample": "forward",
    "resample_matrices": "forward",
    "resample_stack": "forward",
    "shifted_probe": "forward",
    "spectral_jacobian": "uncertainty",
    "summary": "background",
    "table_edge_energy": "tables",
    "to_common_grid": "uncertainty",
    "transmission": "forward",
    "uncenter": "forward",
    "wavelength": "geometry",
}

if TYPE_CHECKING:
    from .background import BLOCK as BLOCK
    from .background import FLOOR as FLOOR
    from .background import MODES as MODES
    from .background import as_maps as as_maps
    from .background import check_mode as check_mode
    from .background import darkest_level as darkest_level
    from .background import describe as describe
    from .background import initial_background as initial_background
    from .background import per_energy as per_energy
    from .background import summary as summary
    from .constants import AVOGADRO as AVOGADRO
    from .constants import ELEMENTARY_CHARGE as ELEMENTARY_CHARGE
    from .constants import HC_EV_M as HC_EV_M
    from .constants import PLANCK_H as PLANCK_H
    from .constants import R_E as R_E
    from .constants import SPEED_OF_LIGHT as SPEED_OF_LIGHT
    from .constants import Z as Z
    from .forward import LOSSES as LOSSES
    from .forward import POISSON_EPS as POISSON_EPS
    from .forward import amplitude_loss as amplitude_loss
    from .forward import amplitude_projection as amplitude_projection
    from .forward import back_propagate as back_propagate
    from .forward import crop_center as crop_center
    from .forward import dirichlet_matrix as dirichlet_matrix
    from .forward import exit_wave as exit_wave
    from .forward import extract_patch as extract_patch
    from .forward import far_field as far_field
    from .forward import fourier_shift as fourier_shift
    from .forward import frame_geometry as frame_geometry
    from .forward import illumination_map as illumination_map
    from .forward import intensities as intensities
    from .forward import loss_fn as loss_fn
    from .forward import loss_with_background as loss_with_background
    from .forward import model_intensity as model_intensity
    from .forward import modulus_update as modulus_update
    from .forward import poisson_nll as poisson_nll
    from .forward import resample as resample
    from .forward import resample_matrices as resample_matrices
    from .forward import resample_stack as resample_stack
    from .forward import shifted_probe as shifted_probe
    from .forward import transmission as transmission
    from .forward import uncenter as uncenter
    from .geometry import Grid as Grid
    from .geometry import energy_from_wavelength as energy_from_wavelength
    from .geometry import grid_covering as grid_covering
    from .geometry import grid_like as grid_like
    from .geometry import object_pixel_size as object_pixel_size
    from .geometry import wavelength as wavelength
    from .kramers_kronig import DAWSON_K as DAWSON_K
    from .kramers_kronig import DAWSON_X0 as DAWSON_X0
    from .kramers_kronig import dawson_integral as dawson_integral
    from .kramers_kronig import erf_step as erf_step
    from .kramers_kronig import kk_erf_step as kk_erf_step
    from .kramers_kronig import kk_lorentzian as kk_lorentzian
    from .kramers_kronig import kk_piecewise_linear as kk_piecewise_linear
    from .kramers_kronig import kk_piecewise_linear_matrix as kk_piecewise_linear_matrix
    from .probe import centred_probe as centred_probe
    from .probe import detected_power as detected_power
    from .probe import kb_probe as kb_probe
    from .probe import numerical_aperture_for_fwhm as numerical_aperture_for_fwhm
    from .probe import probe_centre as probe_centre
    from .probe import probe_from_frames as probe_from_frames
    from .scattering import VEdge as VEdge
    from .scattering import n_v_from_edge_jump as n_v_from_edge_jump
    from .scattering import ne_eff_from_phase as ne_eff_from_phase
    from .spectra import PARAM_NAMES as PARAM_NAMES
    from .spectra import XanesParams as XanesParams
    from .spectra import absorption as absorption
    from .spectra import edge_step as edge_step
    from .spectra import f1_v as f1_v
    from .spectra import linear_design as linear_design
    from .spectra import n_v as n_v
    from .spectra import ne_eff_per_nv as ne_eff_per_nv
    from .spectra import phase as phase
    from .spectra import pre_edge as pre_edge
    from .spectra import pre_edge_norm as pre_edge_norm
    from .tables import COMPOSITIONS_PER_V as COMPOSITIONS_PER_V
    from .tables import SEED_CONSTANTS as SEED_CONSTANTS
    from .tables import TABLES as TABLES
    from .tables import anomalous_factors as anomalous_factors
    from .tables import edge_jump_f2 as edge_jump_f2
    from .tables import electrons_per_v as electrons_per_v
    from .tables import table_edge_energy as table_edge_energy
    from .uncertainty import OBJECT_COMPONENTS as OBJECT_COMPONENTS
    from .uncertainty import covariance as covariance
    from .uncertainty import descriptor_functions as descriptor_functions
    from .uncertainty import descriptor_gradients as descriptor_gradients
    from .uncertainty import descriptor_std as descriptor_std
    from .uncertainty import frame_information as frame_information
    from .uncertainty import isotropic_information as isotropic_information
    from .uncertainty import map_std as map_std
    from .uncertainty import object_information as object_information
    from .uncertainty import parameter_information as parameter_information
    from .uncertainty import parameter_scales as parameter_scales
    from .uncertainty import spectral_jacobian as spectral_jacobian
    from .uncertainty import to_common_grid as to_common_grid


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
