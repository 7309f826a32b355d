"""Joint method: per-pixel XANES parameters fitted with autodiff to all frames."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> submodule that defines it. Resolved on first access (PEP 562), so that importing one
#: submodule does not import the others (the CLI's light commands must not import JAX).
_API = {
    "ALL_PARAMS": "config",
    "AMPLITUDES": "config",
    "AXIS": "parallel",
    "DistributedError": "parallel",
    "FILE_PROBE_OVERLAP": "init",
    "FLUX_SCATTER_WARN": "init",
    "FRAME_FIELDS": "parallel",
    "GAIN_LIMIT": "model",
    "GIB": "stream",
    "HOLDOUT_FIELDS": "solver",
    "JointConfig": "config",
    "JointParams": "model",
    "JointSolver": "solver",
    "JointState": "solver",
    "LOSS_PER_NLL": "loss",
    "MAX_STEPS": "config",
    "MemoryPlan": "stream",
    "POSITIONS": "config",
    "Problem": "model",
    "RELATIVE_OK": "config",
    "SIGMA_CLIP": "loss",
    "Scales": "model",
    "ShardedJointSolver": "parallel",
    "StreamSolver": "stream",
    "TV_EPS": "model",
    "WIDTHS": "config",
    "WIDTH_MIN": "config",
    "background_counts": "model",
    "build_problem": "model",
    "chunk_layout": "model",
    "chunk_loss": "loss",
    "data_loss": "loss",
    "default_budget": "stream",
    "distributed_environment": "parallel",
    "domain_index": "init",
    "energy_count_warnings": "result",
    "energy_grids": "model",
    "fit_probe_model": "model",
    "fit_shape_and_amplitudes": "init",
    "frame_nuisances": "model",
    "frame_share": "parallel",
    "frames_mesh": "parallel",
    "frames_placer": "parallel",
    "frames_source": "stream",
    "free_port": "parallel",
    "from_raw": "model",
    "heldout_loss": "solver",
    "heldout_problem": "solver",
    "host_available_bytes": "stream",
    "init_params": "init",
    "initialize_distributed": "parallel",
    "lbfgs_polish": "solver",
    "load_frames": "stream",
    "make_optimizer": "solver",
    "make_params": "init",
    "make_result": "result",
    "map_std_joint": "result",
    "memory_estimate": "stream",
    "model_fields": "model",
    "model_objects": "model",
    "model_objects_and_probes": "model",
    "object_information_joint": "result",
    "physical": "model",
    "place": "parallel",
    "plan_memory": "stream",
    "plausibility_warnings": "result",
    "prepare_joint": "run",
    "prepare_joint_sharded": "parallel",
    "prior_weights": "loss",
    "probe_basis": "model",
    "probes": "model",
    "reconstruct_joint": "run",
    "reconstruct_joint_sharded": "parallel",
    "regulariser": "loss",
    "relative_values": "init",
    "replicate": "parallel",
    "shard_problem": "parallel",
    "shard_solver": "parallel",
    "shard_state": "parallel",
    "sharder": "parallel",
    "to_raw": "model",
    "total_loss": "loss",
}

if TYPE_CHECKING:
    from .config import ALL_PARAMS as ALL_PARAMS
    from .config import AMPLITUDES as AMPLITUDES
    from .config import MAX_STEPS as MAX_STEPS
    from .config import POSITIONS as POSITIONS
    from .config import RELATIVE_OK as RELATIVE_OK
    from .config import WIDTH_MIN as WIDTH_MIN
    from .config import WIDTHS as WIDTHS
    from .config import JointConfig as JointConfig
    from .init import FILE_PROBE_OVERLAP as FILE_PROBE_OVERLAP
    from .init import FLUX_SCATTER_WARN as FLUX_SCATTER_WARN
    from .init import domain_index as domain_index
    from .init import fit_shape_and_amplitudes as fit_shape_and_amplitudes
    from .init import init_params as init_params
    from .init import make_params as make_params
    from .init import relative_values as relative_values
    from .loss import LOSS_PER_NLL as LOSS_PER_NLL
    from .loss import SIGMA_CLIP as SIGMA_CLIP
    from .loss import chunk_loss as chunk_loss
    from .loss import data_loss as data_loss
    from .loss import prior_weights as prior_weights
    from .loss import regulariser as regulariser
    from .loss import total_loss as total_loss
    from .model import GAIN_LIMIT as GAIN_LIMIT
    from .model import TV_EPS as TV_EPS
    from .model import JointParams as JointParams
    from .model import Problem as Problem
    from .model import Scales as Scales
    from .model import background_counts as background_counts
    from .model import build_problem as build_problem
    from .model import chunk_layout as chunk_layout
    from .model import energy_grids as energy_grids
    from .model import fit_probe_model as fit_probe_model
    from .model import frame_nuisances as frame_nuisances
    from .model import from_raw as from_raw
    from .model import model_fields as model_fields
    from .model import model_objects as model_objects
    from .model import model_objects_and_probes as model_objects_and_probes
    from .model import physical as physical
    from .model import probe_basis as probe_basis
    from .model import probes as probes
    from .model import to_raw as to_raw
    from .parallel import AXIS as AXIS
    from .parallel import FRAME_FIELDS as FRAME_FIELDS
    from .parallel import DistributedError as DistributedError
    from .parallel import ShardedJointSolver as ShardedJointSolver
    from .parallel import distributed_environment as distributed_environment
    from .parallel import frame_share as frame_share
    from .parallel import frames_mesh as frames_mesh
    from .parallel import frames_placer as frames_placer
    from .parallel import free_port as free_port
    from .parallel import initialize_distributed as initialize_distributed
    from .parallel import place as place
    from .parallel import prepare_joint_sharded as prepare_joint_sharded
    from .parallel import reconstruct_joint_sharded as reconstruct_joint_sharded
    from .parallel import replicate as replicate
    from .parallel import shard_problem as shard_problem
    from .parallel import shard_solver as shard_solver
    from .parallel import shard_state as shard_state
    from .parallel import sharder as sharder
    from .result import energy_count_warnings as energy_count_warnings
    from .result import make_result as make_result
    from .result import map_std_joint as map_std_joint
    from .result import object_information_joint as object_information_joint
    from .result import plausibility_warnings as plausibility_warnings
    from .run import prepare_joint as prepare_joint
    from .run import reconstruct_joint as reconstruct_joint
    from .solver import HOLDOUT_FIELDS as HOLDOUT_FIELDS
    from .solver import JointSolver as JointSolver
    from .solver import JointState as JointState
    from .solver import heldout_loss as heldout_loss
    from .solver import heldout_problem as heldout_problem
    from .solver import lbfgs_polish as lbfgs_polish
    from .solver import make_optimizer as make_optimizer
    from .stream import GIB as GIB
    from .stream import MemoryPlan as MemoryPlan
    from .stream import StreamSolver as StreamSolver
    from .stream import default_budget as default_budget
    from .stream import frames_source as frames_source
    from .stream import host_available_bytes as host_available_bytes
    from .stream import load_frames as load_frames
    from .stream import memory_estimate as memory_estimate
    from .stream import plan_memory as plan_memory


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
