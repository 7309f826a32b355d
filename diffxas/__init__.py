"""diffxas: differentiable X-ray spectroscopic ptychography.

Joint (autodiff) and two-step (ePIE + per-pixel XANES fit) reconstruction of
chemical-state maps from multi-energy ptychography data.

The public API is re-exported here by name (:data:`_API`). The names are resolved on first
access (PEP 562), so that ``import diffxas`` (and the command line's light commands) do not
import JAX, h5py or matplotlib; type checkers and IDEs read the explicit imports below.

Layout (imports flow one way, left to right means "may import"):
``app -> report -> solvers -> analysis -> simulate -> data -> physics -> maps, errors``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .errors import ConfigError as ConfigError  # light: no dependencies
from .errors import DiffxasError as DiffxasError
from .errors import DivergenceError as DivergenceError
from .errors import InputError as InputError
from .maps import ChemMaps as ChemMaps
from .maps import Result as Result
from .maps import Truth as Truth

#: name -> module that defines it (resolved lazily by __getattr__). Not `simulate`: that name is
#: the subpackage (the function is `diffxas.simulate.presets.simulate`).
_API = {
    "Dataset": "diffxas.data.dataset",
    "read_cxi": "diffxas.data.cxi",
    "open_cxi": "diffxas.data.cxi",
    "write_cxi": "diffxas.data.cxi",
    "read_result": "diffxas.data.results",
    "write_result": "diffxas.data.results",
    "read_truth": "diffxas.data.truth",
    "write_truth": "diffxas.data.truth",
    "SimConfig": "diffxas.simulate.presets",
    "preset": "diffxas.simulate.presets",
    "METHODS": "diffxas.solvers.registry",
    "Method": "diffxas.solvers.registry",
    "JointConfig": "diffxas.solvers.joint.config",
    "reconstruct_joint": "diffxas.solvers.joint.run",
    "TwoStepConfig": "diffxas.solvers.twostep.run",
    "reconstruct_two_step": "diffxas.solvers.twostep.run",
    "reconstruct": "diffxas.app.pipeline",
    "ClusterConfig": "diffxas.analysis.clustering",
    "cluster_result": "diffxas.analysis.clustering",
    "evaluate": "diffxas.analysis.evaluate",
}

if TYPE_CHECKING:
    from .analysis.clustering import ClusterConfig as ClusterConfig
    from .analysis.clustering import cluster_result as cluster_result
    from .analysis.evaluate import evaluate as evaluate
    from .app.pipeline import reconstruct as reconstruct
    from .data.cxi import open_cxi as open_cxi
    from .data.cxi import read_cxi as read_cxi
    from .data.cxi import write_cxi as write_cxi
    from .data.dataset import Dataset as Dataset
    from .data.results import read_result as read_result
    from .data.results import write_result as write_result
    from .data.truth import read_truth as read_truth
    from .data.truth import write_truth as write_truth
    from .simulate.presets import SimConfig as SimConfig
    from .simulate.presets import preset as preset
    from .solvers.joint.config import JointConfig as JointConfig
    from .solvers.joint.run import reconstruct_joint as reconstruct_joint
    from .solvers.registry import METHODS as METHODS
    from .solvers.registry import Method as Method
    from .solvers.twostep.run import TwoStepConfig as TwoStepConfig
    from .solvers.twostep.run import reconstruct_two_step as reconstruct_two_step


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module 'diffxas' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
