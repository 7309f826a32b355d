"""Registry of the reconstruction methods: ``METHODS[name] -> Method``.

A :class:`Method` unpacks to ``(Config, reconstruct)``; every ``reconstruct`` has the one
signature::

    reconstruct(dataset, config, *, progress=False, checkpoint=None, resume=False) -> Result

``checkpoint`` is a path (a file or a folder, see :attr:`Method.checkpoint`) or None. The
pipeline (:mod:`diffxas.app.pipeline`), the CLI, the demo and sweeps know the methods only
through this table. Adding a method is one module with a config dataclass and a
``reconstruct`` of that signature, plus one line in :data:`METHODS` (or :func:`register`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffxas.data.results import known_result_method
from diffxas.errors import ConfigError
from diffxas.maps import Result


def _resolve(ref):
    """A ``"module:name"`` reference imported on first use; anything else as it is.

    Why lazy: the solvers import jax (seconds); the CLI shows the method names in
    ``reconstruct --help`` and checks ``--method`` without needing any solver.
    """
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)
    return ref


@dataclasses.dataclass(frozen=True)
class Method:
    """One reconstruction method.

    Attributes:
        name: the name on the command line and in results (``"joint"``).
        config_ref: its configuration dataclass (the TOML section's class), or a
            ``"module:name"`` reference to it, imported on first use of :attr:`config`.
        reconstruct_ref: ``(dataset, config, *, progress, checkpoint, resume) -> Result``,
            or a ``"module:name"`` reference (:attr:`reconstruct`).
        section: the TOML section of its options (``[joint]``).
        checkpoint: ``"file"`` (one file, ``RESULT.h5.ckpt``) or ``"folder"``
            (``RESULT.h5.ckpt.d/``): what the pipeline creates, checks and removes.
        iterations_key: dotted config key that ``--iterations``/``--steps`` set.
        lazy_frames: the method reads frames on demand (the CLI opens the file lazily
            instead of reading it into memory).
        result_name: file name of its result in the demo's output folder.
        reconstruct_sharded_ref: the same signature with the frames split over all devices of
            all processes (``--sharded``); None: the method has no such variant.
    """

    name: str
    config_ref: type | str
    reconstruct_ref: Callable[..., Result] | str
    section: str
    checkpoint: str = "file"
    iterations_key: str | None = None
    lazy_frames: bool = False
    result_name: str = ""
    reconstruct_sharded_ref: Callable[..., Result] | str | None = None

    @property
    def config(self) -> type:
        """The configuration dataclass (a ``"module:name"`` reference is imported here)."""
        return _resolve(self.config_ref)

    @property
    def reconstruct(self) -> Callable[..., Result]:
        return _resolve(self.reconstruct_ref)

    @property
    def reconstruct_sharded(self) -> Callable[..., Result] | None:
        return _resolve(self.reconstruct_sharded_ref)

    def __iter__(self):  # METHODS[name] unpacks to (Config, reconstruct)
        return iter((self.config, self.reconstruct))


def _joint(dataset, config, *, progress: bool = False, checkpoint=None, resume: bool = False) -> Result:
    # looked up on the module at call time, so a test can monkeypatch run.reconstruct_joint
    from diffxas.solvers.joint import run as joint_run  # jax: only when a method runs

    return joint_run.reconstruct_joint(
        dataset, config, progress=progress, checkpoint=None if checkpoint is None else str(checkpoint), resume=resume
    )


def _joint_sharded(dataset, config, *, progress: bool = False, checkpoint=None, resume: bool = False) -> Result:
    from diffxas.solvers.joint import parallel as joint_parallel  # jax: only when a method runs

    return joint_parallel.reconstruct_joint_sharded(
        dataset, config, progress=progress, checkpoint=None if checkpoint is None else str(checkpoint), resume=resume
    )


def _two_step(dataset, config, *, progress: bool = False, checkpoint=None, resume: bool = False) -> Result:
    from diffxas.solvers.twostep import run as twostep_run  # jax: only when a method runs

    return twostep_run.reconstruct_two_step(
        dataset,
        config,
        progress=progress,
        checkpoint_dir=None if checkpoint is None else str(checkpoint),
        resume=resume,
    )


#: The methods, in the order the demo and sweeps run them.
METHODS: dict[str, Method] = {
    "two-step": Method(
        "two-step",
        "diffxas.solvers.twostep.run:TwoStepConfig",
        _two_step,
        section="twostep",
        checkpoint="folder",
        iterations_key="twostep.epie.epochs",
        result_name="twostep.h5",
    ),
    "joint": Method(
        "joint",
        "diffxas.solvers.joint.config:JointConfig",
        _joint,
        section="joint",
        checkpoint="file",
        iterations_key="joint.steps",
        lazy_frames=True,
        result_name="joint.h5",
        reconstruct_sharded_ref=_joint_sharded,
    ),
}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (replacing one of the same name); returns it."""
    if method.checkpoint not in ("file", "folder"):
        raise ConfigError(f"method {method.name!r}: checkpoint must be 'file' or 'folder', got {method.checkpoint!r}")
    METHODS[method.name] = method
    known_result_method(method.name)  # its results files read back like the built-in methods'
    return method


def get(name: str) -> Method:
    """The registered method ``name``; ConfigError naming the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def by_section(section: str) -> Method | None:
    """The method whose options live in TOML section ``section`` (None: not a method's)."""
    return next((m for m in METHODS.values() if m.section == section), None)


def default_checkpoint(name: str, result_path) -> Path:
    """``RESULT.h5.ckpt`` (a file) or ``RESULT.h5.ckpt.d`` (a folder), by the method's kind."""
    p = Path(result_path)
    return p.with_name(p.name + (".ckpt" if get(name).checkpoint == "file" else ".ckpt.d"))


def describe() -> dict[str, Any]:
    """Name -> (section, checkpoint kind) of every method (for ``diffxas info`` and docs)."""
    return {n: {"section": m.section, "checkpoint": m.checkpoint} for n, m in METHODS.items()}
