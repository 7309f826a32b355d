"""Configuration of the joint solver (:class:`JointConfig`), in option groups.

The joint solver has some forty options. They are grouped, as tike's ``solvers/options.py``
and pty-chi's ``api/options`` group theirs, by the part of the problem they act on, so that
a reader finds a learning rate next to the thing it moves and its start step:

=============== =================================================================================
group           options
=============== =================================================================================
``optim``       the optimiser and its schedule: steps, data loss, mini-batch, seed, decay, L-BFGS
``spectra``     the spectral model: which parameters are per pixel / per domain / relative, and
                the learning rates and start step of the amplitudes and shapes
``prior``       the spatial prior on the per-pixel maps (TV from the noise level or one weight)
``probe``       the probe model, its start guess (FWHM) and its learning rates and start step
``frames``      per-frame nuisances: position corrections and intensity scale
``background``  the incoherent detector background and its learning rate
``init``        where the maps (and probes) start: ePIE, STXM, flat or a results file
``memory``      where the frames live (device / streamed) and how many are evaluated at once
``stopping``    the convergence criterion and the held-out frames (truth-free checks)
``record``      how often the loss is logged and a checkpoint written
=============== =================================================================================

Decisions: ``batch_size`` is in ``optim``, not ``memory``, because it changes the result
(mini-batch order); ``chunk_size`` is in ``memory`` because it does not. What the maps *are*
(``element``, ``table``, ``reference_energy``, ``valid_jump_fraction``) stays at the top,
as in the two-step's :class:`~diffxas.solvers.twostep.run.TwoStepConfig`, because the pipeline
reads those generically for either method. Inside a group the group's name is not repeated
(``probe.lr``, not ``probe.lr_probe``); a group that replaced a flat option of its own name
(``prior``, ``init``, ``memory``, ``background``) keeps that option as ``mode``.

TOML: nested tables are the canonical form::

    [joint.optim]
    steps = 500
    [joint.prior]
    mode = "none"
    tv_weight = 1e-3

The flat keys of the earlier, ungrouped ``JointConfig`` remain documented aliases, without a
warning (users' files, ``experiments/*.toml``, ``examples/*.toml`` and sweep specs use them):
every flat name maps to exactly one group field (:data:`FLAT_ALIASES`), so ``[joint]
tv_weight = 1e-3``, ``--set joint.tv_weight=1e-3`` and a sweep axis ``joint.tv_weight`` set
``prior.tv_weight``; a scalar given for a group's name (``prior = "none"``) sets its ``mode``.
Setting one option twice in one table (``tv_weight`` and ``prior.tv_weight``) is a
ConfigError; an override (``--set``, a sweep axis) replaces the option whatever spelling the
file used (:meth:`JointConfig.set_option`). Results files record the nested form; results
written before (flat) still read (:meth:`JointConfig.nest_options`).

In Python: ``JointConfig(optim=OptimOptions(steps=50))``, or, with flat or group names,
``JointConfig.make(steps=50, tv_weight=1e-3, prior="none")`` and ``cfg.replace(steps=100)``.

The measurements behind the defaults are in docs/results.md ("Joint configuration notes"),
the physics in docs/physics.md. Energies in eV, lengths in m, learning rates in the
parameters' own units per Adam step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from diffxas.errors import ConfigError
from diffxas.physics.background import check_mode
from diffxas.physics.scattering import check_element
from diffxas.physics.spectra import PARAM_NAMES

ALL_PARAMS = PARAM_NAMES + ("n_other",)


AMPLITUDES = ("a", "b1", "c11", "c21")


POSITIONS = ("b2", "c12", "c22")


WIDTHS = ("b3", "c13", "c23")


WIDTH_MIN = {"b3": 0.5, "c13": 0.3, "c23": 0.3}


#: amplitudes that may be parameterised as ratios to the edge jump (``spectra.relative``)
RELATIVE_OK = ("c11", "c21")


#: The most optimiser steps a run may ask for: 1e7 steps of ~10 ms (the fastest measured,
#: preset tiny on a GPU) are more than a day; the presets converge in 1e2-1e4 steps, so a
#: larger number is a typo (``steps = 1e9`` would otherwise start and never end).
MAX_STEPS = 10_000_000


def _nonneg_finite(obj, group: str, names: Sequence[str]) -> None:
    for name in names:
        v = getattr(obj, name)
        if v < 0 or not math.isfinite(v):
            flat = _FLAT_OF.get((group, name), name)
            also = f" ({flat})" if flat != name else ""
            raise ConfigError(f"{group}.{name}{also} must be finite and >= 0")


@dataclasses.dataclass(frozen=True)
class OptimOptions:
    """The optimiser (Adam, then optionally L-BFGS) and its schedule."""

    steps: int = 300
    """Adam steps; 300, the setting the measurements in docs/results.md use."""
    loss: str = "amplitude"
    """Data term: "amplitude" (squared error of the amplitudes; robust, the default) or
    "poisson" (negative log-likelihood of the counts)."""
    batch_size: int | None = None
    """Frames per step; None (the default) = all frames, a full, deterministic batch."""
    seed: int = 0
    """Seed of the mini-batch order; 0 by default, so that a resumed run follows the
    uninterrupted one."""
    lr_decay: float = 0.1
    """Final factor of the cosine learning-rate decay over ``steps`` (dimensionless); 0.1 lets
    the last steps settle without freezing them."""
    lbfgs_steps: int = 0
    """L-BFGS iterations (optax.lbfgs, zoom line search) after the Adam steps, on the sample
    parameters with probes and positions held; 0 (off) by default because it changed the maps
    by less than 0.01 eV on noisy `tiny`."""

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if self.steps > MAX_STEPS:
            raise ConfigError(
                f"steps must be <= {MAX_STEPS:g}, got {self.steps:g}: at the fastest measured step "
                "(~10 ms, tiny on a GPU) that is more than a day; the presets converge in 1e2-1e4"
            )
        if self.loss not in ("amplitude", "poisson"):
            raise ConfigError(f"loss must be 'amplitude' or 'poisson', got {self.loss!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size must be positive or None (full batch)")
        if self.lbfgs_steps < 0:
            raise ConfigError(f"lbfgs_steps must be >= 0, got {self.lbfgs_steps}")


@dataclasses.dataclass(frozen=True)
class SpectraOptions:
    """The spectral model: which XANES parameters vary per pixel, per domain or as ratios, and
    how fast the amplitudes and shapes move."""

    per_pixel: tuple[str, ...] = ("a", "b1", "b2", "b3", "c11", "c21", "n_other")
    """Parameters with one value per map pixel, the rest shared by all pixels; by default the
    pre-edge positions and widths are shared, as in the recommended two-step fit (like-for-like)."""
    per_domain: tuple[str, ...] = ()
    """Parameters with one value per chemical domain (domains from ``domains``), pixels without
    a label sharing one extra value; () (none) by default."""
    domains: str | None = None
    """Where the domains of ``per_domain`` come from: a results file with /clusters/labels on this
    dataset's map grid, or "auto" (a first pass without ``per_domain``, clustered with the default
    ClusterConfig, then the second pass); None by default (no domains)."""
    relative: tuple[str, ...] = ("c11", "c21")
    """Amplitudes stored as ratios to the edge jump b1 (c11 = b1 r11, ...), so that their maps and
    prior are intensive, flat across a domain whatever the thickness (docs/physics.md, "Relative
    pre-edge amplitudes"); only V-specific features qualify; ignored unless b1 is per pixel;
    ("c11", "c21") by default (lower pre-edge errors on noisy `tiny`); () = absolute amplitudes."""
    lr_amp: float = 0.04
    """Learning rate of the amplitude parameters (a, b1, c11, c21, n_other), in their own units
    per step; 0.04 by default."""
    lr_energy: float = 0.25
    """Learning rate of the shape parameters (edge and peak positions and widths), eV per step,
    from ``shape_start``; 0.25 by default."""
    shape_start: int | None = None
    """Step from which the shape parameters move (before it only the amplitudes, the composition
    and the probes do); None (the default) = a quarter of ``optim.steps``."""

    def __post_init__(self):
        bad = sorted(set(self.per_pixel) - set(ALL_PARAMS))
        if bad:
            raise ConfigError(f"per_pixel names unknown parameters {bad}; known: {list(ALL_PARAMS)}")
        bad = sorted(set(self.per_domain) - set(ALL_PARAMS))
        if bad:
            raise ConfigError(f"per_domain names unknown parameters {bad}; known: {list(ALL_PARAMS)}")
        both = sorted(set(self.per_domain) & set(self.per_pixel))
        if both:
            raise ConfigError(f"parameters {both} are both per_pixel and per_domain; choose one")
        if self.per_domain and not self.domains:
            raise ConfigError(
                "per_domain needs domains = a results file with /clusters/labels (run `diffxas cluster` on a "
                'first pass) or "auto" (first pass and clustering in the same run)'
            )
        bad = sorted(set(self.relative) - set(RELATIVE_OK))
        if bad:
            raise ConfigError(
                f"relative names {bad}; only the pre-edge amplitudes {list(RELATIVE_OK)} can be ratios to b1"
            )
        _nonneg_finite(self, "spectra", ("lr_amp", "lr_energy"))


@dataclasses.dataclass(frozen=True)
class PriorOptions:
    """The spatial prior on the per-pixel maps (docs/physics.md, "Spatial prior")."""

    mode: str = "tv"
    """"tv" (total variation, weights from the noise level, never from a truth; the default) or
    "none"; flat alias ``prior``."""
    strength: float = 0.5
    """TV threshold in standard errors (dimensionless); 0.5, chosen on noisy `tiny`; flat alias
    ``prior_strength``."""
    tv_weight: float = 0.0
    """One explicit TV weight for every raw map, in units of the data loss (for sweeps; needs
    ``mode = "none"``); 0 (off) by default."""

    def __post_init__(self):
        if self.mode not in ("none", "tv"):
            raise ConfigError(f"prior.mode (prior) must be 'none' or 'tv', got {self.mode!r}")
        _nonneg_finite(self, "prior", ("strength", "tv_weight"))
        if self.mode == "tv" and self.tv_weight > 0:
            raise ConfigError(
                "set either prior='tv' (weights from the noise level) or tv_weight > 0 (one explicit weight), "
                "not both: add prior='none' to use tv_weight"
            )


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """The probes: their model, start guess and refinement."""

    model: str = "per-energy"
    """"per-energy" (one free complex probe per energy; the default) or "smooth" (probes of all
    energies from a few shared complex arrays, P_k = exp(g_k) sum_j L_j(x_k) Q_j, Legendre
    polynomials of degree <= ``degree`` in the scaled energy; for achromatic mirror focusing;
    :func:`probe_basis`); flat alias ``probe_model``."""
    degree: int = 2
    """Polynomial degree in energy of the "smooth" model; 2 by default (a chromatic focus that
    varies smoothly over the edge); flat alias ``probe_degree``."""
    fwhm: float = 300e-9
    """FWHM (m) of the KB focus guessed when the data file has no illumination (as the
    two-step's ``epie.probe_fwhm``), refined by the "epie" start; 300 nm by default, the seed's
    focus; flat alias ``probe_fwhm``."""
    lr: float = 0.01
    """Learning rate of the probes (relative to their amplitude, per step), from ``start``; 0.01
    by default; flat alias ``lr_probe``."""
    start: int = 20
    """Step from which the probes are refined; 20 by default, so that the start probe is held
    while the maps take shape; flat alias ``probe_start``."""
    lr_gain: float = 0.01
    """Learning rate of a per-energy probe amplitude gain exp(g_k), log units per step, trained
    from step 0 (both models); 0.01 by default because it makes the maps insensitive to a start
    probe at the wrong power; 0 = off."""

    def __post_init__(self):
        if self.model not in ("per-energy", "smooth"):
            raise ConfigError(f"probe.model (probe_model) must be 'per-energy' or 'smooth', got {self.model!r}")
        if not 0 <= self.degree <= 6:
            raise ConfigError(
                f"probe.degree (probe_degree) must be 0..6 (polynomial degree in energy), got {self.degree}"
            )
        if not (math.isfinite(self.fwhm) and self.fwhm > 0):
            raise ConfigError(f"probe.fwhm (probe_fwhm) must be a positive length in m, got {self.fwhm}")
        _nonneg_finite(self, "probe", ("lr", "lr_gain"))


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    """Per-frame nuisance parameters (scan positions, incident flux)."""

    lr_positions: float = 0.01
    """Learning rate of per-frame position corrections (pixels per step, from step 0); 0 = the
    file's positions are used as they are. Default 0.01: chosen on the sample family's train
    draws (quick mode, draws 0-1, 8 cases: edge-energy RMSE better in 6 of 8, mean 1.04 ->
    0.81 eV; docs/generalization.md), where scans carry position errors and probe drift as
    real ones do; on error-free `tiny` it changed nothing (0.272 -> 0.270 eV)."""
    lr_scale: float = 0.0
    """Learning rate of a per-frame intensity scale (incident-flux fluctuations), log units per
    step; 0 (off) by default."""

    def __post_init__(self):
        _nonneg_finite(self, "frames", ("lr_positions", "lr_scale"))


@dataclasses.dataclass(frozen=True)
class BackgroundOptions:
    """The incoherent detector background (:mod:`diffxas.physics.background`; docs/physics.md,
    "Detector background")."""

    mode: str = "none"
    """"none" (the seed's model; the default), "flat" (one level per energy) or "map" (one level
    per energy and detector pixel), trained from step 0 from the darkest detector block's mean
    counts; flat alias ``background``."""
    lr: float = 0.05
    """Learning rate of the background, log units per step; 0.05 by default; flat alias
    ``lr_background``."""

    def __post_init__(self):
        check_mode(self.mode, "joint background")
        _nonneg_finite(self, "background", ("lr",))


@dataclasses.dataclass(frozen=True)
class InitOptions:
    """Where the maps and probes start."""

    mode: str = "epie"
    """"epie" (a short ePIE per energy; the default), "stxm" (bright field and DPC), "flat" or
    "result" (a warm start from ``result``); flat alias ``init``."""
    result: str | None = None
    """Results file of a warm start (``mode = "result"``, the CLI's ``--init``); None by
    default; flat alias ``init_result``."""
    probes: str = "auto"
    """Probes of a warm start: "result" (the results file's, rescaled to the membrane counts),
    "file" (the data file's illumination) or "auto" (the default: the file's when it has one, else
    the result's, because the file's gave the better pre-edge maps); flat alias ``init_probes``."""
    epochs: int = 40
    """ePIE epochs of the "epie" start; 40 by default; flat alias ``init_epochs``."""

    def __post_init__(self):
        if self.mode not in ("stxm", "flat", "result", "epie"):
            raise ConfigError(f"init must be 'stxm', 'epie', 'flat' or 'result', got {self.mode!r}")
        if self.probes not in ("auto", "result", "file"):
            raise ConfigError(f"init.probes (init_probes) must be 'auto', 'result' or 'file', got {self.probes!r}")
        if self.mode == "result" and not self.result:
            raise ConfigError("init='result' needs init.result (init_result, a results file)")


@dataclasses.dataclass(frozen=True)
class MemoryOptions:
    """Where the frames live and how many are evaluated at once (memory only, not the result;
    docs/scaling.md)."""

    mode: str = "auto"
    """Frames on the device ("device"), streamed from the host or file chunk by chunk
    ("stream"), or chosen from the memory model and the budget ("auto", the default); flat alias
    ``memory``."""
    budget_gib: float | None = None
    """Device memory (GiB) for "auto"; None (the default) = from the device (or the host RAM);
    flat alias ``memory_budget_gib``."""
    chunk_size: int = 512
    """Frames evaluated at once inside a step; 512 by default (about 13 GiB for the seed-size
    step, 9 GiB at 64; docs/scaling.md)."""

    def __post_init__(self):
        if self.mode not in ("auto", "device", "stream"):
            raise ConfigError(f"memory must be 'auto', 'device' or 'stream', got {self.mode!r}")
        if self.budget_gib is not None and not (math.isfinite(self.budget_gib) and self.budget_gib > 0):
            raise ConfigError(
                f"memory.budget_gib (memory_budget_gib) must be a positive number of GiB or None, "
                f"got {self.budget_gib!r}"
            )
        if self.chunk_size < 1:
            raise ConfigError("chunk_size must be positive")


@dataclasses.dataclass(frozen=True)
class StoppingOptions:
    """Truth-free checks of the fit: a convergence criterion and held-out frames."""

    tol: float = 0.0
    """Relative tolerance of the convergence criterion (issue #27): stop when the mean loss of the
    last ``tol_window`` steps is within ``tol`` of the mean of the ``tol_window`` steps before it,
    checked only once every parameter group is free (after ``spectra.shape_start``,
    ``probe.start`` and, with ``frames.lr_scale`` > 0, steps // 2) plus two windows; the schedules
    still run over ``optim.steps`` and the steps taken are history["steps_taken"]; 0 (off, the run
    takes ``steps`` steps) by default because no measurement yet shows the same map errors in fewer
    steps (docs/scaling.md, "Start-up and time to solution")."""
    tol_window: int = 20
    """Steps per window of the convergence criterion; 20 by default (two log intervals)."""
    holdout: float = 0.0
    """Fraction of each energy's frames held out of the fit (every n-th in scan order), their loss
    logged as history["heldout_loss"], a truth-free check of how well the model predicts unfitted
    frames (it does not rank the maps: no selector for ``prior.strength`` or ``steps``); needs
    memory "device", no sharding; 0 (off) by default (docs/physics.md, "Held-out frames")."""

    def __post_init__(self):
        if not (0.0 <= float(self.holdout) <= 0.5):
            raise ConfigError(f"holdout must be in [0, 0.5] (a fraction of each energy's frames), got {self.holdout}")


@dataclasses.dataclass(frozen=True)
class RecordOptions:
    """How often the run reports (neither changes the maps)."""

    log_every: int = 10
    """Steps between loss records and progress updates; 10 by default."""
    checkpoint_every: int = 50
    """Steps between checkpoints; 50 by default."""

    def __post_init__(self):
        for name in ("log_every", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ConfigError(f"{name} must be a positive number of steps, got {v!r}")


#: The option groups of :class:`JointConfig`, by field name.
GROUPS: dict[str, type] = {
    "optim": OptimOptions,
    "spectra": SpectraOptions,
    "prior": PriorOptions,
    "probe": ProbeOptions,
    "frames": FrameOptions,
    "background": BackgroundOptions,
    "init": InitOptions,
    "memory": MemoryOptions,
    "stopping": StoppingOptions,
    "record": RecordOptions,
}

#: Options at the top of :class:`JointConfig` (no group).
TOP_LEVEL = ("element", "table", "reference_energy", "valid_jump_fraction")

#: Flat name of the earlier, ungrouped JointConfig -> (group, field); every name maps to
#: exactly one field. Documented aliases (docs/cli.md): accepted in TOML, ``--set`` and sweep axes.
FLAT_ALIASES: dict[str, tuple[str, str]] = {
    **{f: ("optim", f) for f in ("steps", "loss", "batch_size", "seed", "lr_decay", "lbfgs_steps")},
    **{
        f: ("spectra", f)
        for f in ("per_pixel", "per_domain", "domains", "relative", "lr_amp", "lr_energy", "shape_start")
    },
    "prior": ("prior", "mode"),
    "prior_strength": ("prior", "strength"),
    "tv_weight": ("prior", "tv_weight"),
    "probe_model": ("probe", "model"),
    "probe_degree": ("probe", "degree"),
    "probe_fwhm": ("probe", "fwhm"),
    "lr_probe": ("probe", "lr"),
    "probe_start": ("probe", "start"),
    "lr_gain": ("probe", "lr_gain"),
    "lr_positions": ("frames", "lr_positions"),
    "lr_scale": ("frames", "lr_scale"),
    "background": ("background", "mode"),
    "lr_background": ("background", "lr"),
    "init": ("init", "mode"),
    "init_result": ("init", "result"),
    "init_probes": ("init", "probes"),
    "init_epochs": ("init", "epochs"),
    "memory": ("memory", "mode"),
    "memory_budget_gib": ("memory", "budget_gib"),
    "chunk_size": ("memory", "chunk_size"),
    "tol": ("stopping", "tol"),
    "tol_window": ("stopping", "tol_window"),
    "holdout": ("stopping", "holdout"),
    "log_every": ("record", "log_every"),
    "checkpoint_every": ("record", "checkpoint_every"),
}

#: (group, field) -> its flat alias.
_FLAT_OF = {v: k for k, v in FLAT_ALIASES.items()}


def _group_dict(value) -> dict[str, Any]:
    """A group given as a mapping or an options object, as a plain (shallow) dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return dict(value)


@dataclasses.dataclass(frozen=True)
class JointConfig:
    """Configuration of the joint solver (frozen, validated): the option groups of the module
    docstring plus four top-level options. Energies in eV, lengths in m.

    Build it from groups (``JointConfig(prior=PriorOptions(mode="none"))``), from flat or group
    names (:meth:`make`), or from a TOML ``[joint]`` table (:func:`diffxas.app.config.build_section`).
    """

    optim: OptimOptions = dataclasses.field(default_factory=OptimOptions)
    """The optimiser and its schedule (:class:`OptimOptions`)."""
    spectra: SpectraOptions = dataclasses.field(default_factory=SpectraOptions)
    """The spectral model (:class:`SpectraOptions`)."""
    prior: PriorOptions = dataclasses.field(default_factory=PriorOptions)
    """The spatial prior (:class:`PriorOptions`)."""
    probe: ProbeOptions = dataclasses.field(default_factory=ProbeOptions)
    """The probes (:class:`ProbeOptions`)."""
    frames: FrameOptions = dataclasses.field(default_factory=FrameOptions)
    """Per-frame positions and scale (:class:`FrameOptions`)."""
    background: BackgroundOptions = dataclasses.field(default_factory=BackgroundOptions)
    """The detector background (:class:`BackgroundOptions`)."""
    init: InitOptions = dataclasses.field(default_factory=InitOptions)
    """The start (:class:`InitOptions`)."""
    memory: MemoryOptions = dataclasses.field(default_factory=MemoryOptions)
    """Memory placement and chunking (:class:`MemoryOptions`)."""
    stopping: StoppingOptions = dataclasses.field(default_factory=StoppingOptions)
    """Convergence criterion and held-out frames (:class:`StoppingOptions`)."""
    record: RecordOptions = dataclasses.field(default_factory=RecordOptions)
    """Logging and checkpoint intervals (:class:`RecordOptions`)."""
    element: str = "V"
    """Absorber (chemical symbol) whose K edge the data scan; "V", the seed's, by default; any
    element with a K edge in ``table`` works."""
    table: str = "chantler"
    """Scattering-factor table for N_V and Re[N_e^eff]; "chantler" by default (the two-step's)."""
    reference_energy: float | None = None
    """Energy (eV) of the Re[N_e^eff]/N_V map; None (the default) = the lowest of the scan."""
    valid_jump_fraction: float = 0.1
    """Pixels whose edge jump is below this fraction of the 99th-percentile jump are not valid
    (no absorber to speak of there); 0.1 by default."""

    #: the flat aliases (not a field: no annotation); :func:`diffxas.app.config.build_config`
    #: lists them in its unknown-key message
    flat_aliases = FLAT_ALIASES

    def __post_init__(self):
        for name, cls in GROUPS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        if not (math.isfinite(self.valid_jump_fraction) and 0.0 <= self.valid_jump_fraction < 1.0):
            raise ConfigError(
                f"valid_jump_fraction must be in [0, 1) (a fraction of the 99th-percentile edge jump), "
                f"got {self.valid_jump_fraction}"
            )
        if self.reference_energy is not None and not (1000.0 <= self.reference_energy <= 100000.0):
            raise ConfigError(
                f"reference_energy must be a photon energy in eV (1e3..1e5) inside the scan, got "
                f"{self.reference_energy}"
            )
        check_element(self.element)

    # ------------------------------------------------------------------ flat aliases

    @classmethod
    def nest_options(cls, mapping: Mapping[str, Any] | None, section: str = "joint") -> dict[str, Any]:
        """``mapping`` (a ``[joint]`` table: group tables, top-level options and flat aliases)
        with every flat alias moved into its group table; group values given as options objects
        stay objects unless a flat alias adds to them. Raises a one-line ConfigError when one
        option is given twice (``tv_weight`` and ``prior.tv_weight``). Unknown keys are left for
        the caller to report."""
        out: dict[str, Any] = {}
        moved: dict[str, dict[str, Any]] = {}
        for key, value in dict(mapping or {}).items():
            if key in GROUPS and (isinstance(value, Mapping) or isinstance(value, GROUPS[key])):
                out[key] = value
                continue
            if key in FLAT_ALIASES:
                group, field = FLAT_ALIASES[key]
                moved.setdefault(group, {})[field] = value
                continue
            out[key] = value
        for group, fields in moved.items():
            have = out.get(group)
            if have is None:
                out[group] = fields
                continue
            have = _group_dict(have)
            for field in fields:
                if field in have:
                    raise ConfigError(
                        f"[{section}] {_FLAT_OF[(group, field)]} and {group}.{field} set the same option; keep one"
                    )
            out[group] = {**have, **fields}
        return out

    @classmethod
    def option_path(cls, key: Sequence[str], value: Any = None) -> tuple[str, ...] | None:
        """The canonical path (``("prior", "tv_weight")``, ``("element",)``) of an option given
        by its path inside ``[joint]`` (flat alias or group path); None if it names none."""
        key = tuple(key)
        if len(key) == 1:
            k = key[0]
            if k in GROUPS and isinstance(value, Mapping):
                return None  # a whole group table
            if k in FLAT_ALIASES:
                return FLAT_ALIASES[k]
            if k in TOP_LEVEL:
                return key
            return None
        if len(key) == 2 and key[0] in GROUPS and key[1] in {f.name for f in dataclasses.fields(GROUPS[key[0]])}:
            return key
        return None

    @classmethod
    def set_option(cls, section: dict[str, Any], key: Sequence[str], value: Any) -> None:
        """Set one option in a ``[joint]`` mapping (in place), in the spelling ``key`` uses
        (flat alias ``["tv_weight"]`` or group path ``["prior", "tv_weight"]``), after removing
        any other spelling of the same option, so that an override wins over the file whatever
        spelling each used. A scalar for a key that holds a group table (``prior = "none"`` over
        ``[joint.prior]``) sets the group's ``mode``; a group path under a key that holds the
        flat scalar (``prior.strength`` over ``prior = "none"``) turns it into a table. A mapping
        with no other spelling of the option is left as it was (sweep point ids stay the same)."""
        key = tuple(key)
        path = cls.option_path(key, value)
        if path is None or len(path) == 1:
            _set_path(section, key, value)
            return
        group, field = path
        flat = _FLAT_OF[(group, field)]
        # remove the other spellings
        if key != (flat,) and flat in section and not (flat == group and isinstance(section[flat], Mapping)):
            del section[flat]
        if isinstance(section.get(group), Mapping) and key != (group, field) and field in section[group]:
            section[group] = {k: v for k, v in section[group].items() if k != field}
        if key == (group,):  # the mode alias spelled flat, over a group table
            if isinstance(section.get(group), Mapping):
                section[group] = {**section[group], "mode": value}
                return
        elif len(key) == 2 and group in section and not isinstance(section[group], Mapping):
            section[group] = {"mode": section[group]}  # the flat mode alias, now a table
        _set_path(section, key, value)

    @classmethod
    def get_option(cls, section: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
        """An option's value in a ``[joint]`` mapping or a recorded config dict (either
        spelling: ``"steps"`` or ``"optim.steps"``), or ``default`` if it is not there."""
        section = dict(section or {})
        path = cls.option_path(tuple(key.split(".")))
        if path is None:
            return section.get(key, default)
        if len(path) == 2:
            group = section.get(path[0])
            if isinstance(group, Mapping) and path[1] in group:
                return group[path[1]]
            flat = _FLAT_OF[path]
            if flat in section and not isinstance(section[flat], Mapping):
                return section[flat]
            return default
        return section.get(path[0], default)

    @classmethod
    def make(cls, **options) -> JointConfig:
        """A JointConfig from keyword options: groups (objects or dicts), top-level options and
        flat aliases (``JointConfig.make(steps=50, prior="none", tv_weight=1e-3)``), each group
        built on its defaults. Raises ConfigError like a ``[joint]`` table would."""
        return cls().replace(**options)

    def replace(self, **options) -> JointConfig:
        """A copy with ``options`` (as :meth:`make`) changed; groups not named keep their values,
        a group given as a dict changes only the fields it names."""
        nested = type(self).nest_options(options, section="JointConfig")
        kwargs: dict[str, Any] = {}
        for key, value in nested.items():
            if key in GROUPS and isinstance(value, Mapping):
                try:
                    value = dataclasses.replace(getattr(self, key), **value)
                except TypeError as e:
                    raise ConfigError(f"[JointConfig.{key}] {e}") from None
            kwargs[key] = value
        try:
            return dataclasses.replace(self, **kwargs)
        except TypeError as e:
            raise ConfigError(f"[JointConfig] {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The nested form as plain JSON/TOML types (what results files record)."""

        def plain(v):
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, tuple):
                return list(v)
            return v

        return plain(self)


def _set_path(section: dict[str, Any], key: Sequence[str], value: Any) -> None:
    node = section
    for p in key[:-1]:
        nxt = node.get(p)
        if nxt is not None and not isinstance(nxt, Mapping):
            raise ConfigError(f"override {'.'.join(key)!r}: {p} is a value, not a table")
        if not isinstance(nxt, dict):
            nxt = dict(nxt or {})
            node[p] = nxt
        node = nxt
    node[key[-1]] = value
