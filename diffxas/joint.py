r"""The joint solver: chemical-state maps fitted directly to every diffraction pattern.

The object at every energy is not a free unknown: it is computed from per-pixel
parameters of the seed's eq. 1 (absorption) and a composition map (phase, through the
KK-consistent f'_V of :mod:`diffxas.spectra`) on one common grid, resampled exactly onto
each energy's grid (:func:`diffxas.forward.resample_stack`), and compared with every frame
of every energy at once through the shared forward model. Gradients come from JAX
autodiff; the optimiser is optax Adam with per-group learning rates, optionally followed
by an L-BFGS polish of the sample parameters (``JointConfig.lbfgs_steps``, :func:`lbfgs_polish`).

Parameterisation (trainable leaves are real and dimensionless, "natural units")
------------------------------------------------------------------------------
* amplitudes ``a, b1, c11, c21`` = ``amp_scale * raw`` (``amp_scale`` = the data's edge
  jump, estimated at initialisation), so raw values are O(1);
* ``n_other`` (non-V electrons per m^2) = ``amp_scale / (r_e lambda_0 Delta f'') * 20 * raw``
  (electrons per V of order 20 <-> raw of order 1);
* energies ``b2, c12, c22`` = ``mid + half * tanh(raw / half)`` in eV: bounded to the
  scanned range, ~identity (1 raw unit = 1 eV) inside it;
* widths ``b3, c13, c23`` = ``w_min + softplus(raw)`` in eV (positive).
Each parameter is per pixel (``JointConfig.per_pixel``), per domain (``per_domain``: one
value per label of a domain map, e.g. the k-means clusters of a first pass, read from
``JointConfig.domains``), or shared (a scalar).
Adam normalises each element's step by its gradient RMS, i.e. it is a diagonal
preconditioner; with the natural units above a learning rate means "eV per step" for
energies and "fraction of the edge jump per step" for amplitudes, whatever the dose or
sample thickness.

Nuisances: one complex probe per energy (real and imaginary leaves, refined after
``probe_start`` steps), or (``probe_model = "smooth"``) the probes of all energies from
a few shared complex arrays, polynomial in energy (:func:`probe_basis`, :func:`probes`);
either times a gain ``exp(g_k)`` per energy, trained from step 0 (``lr_gain``: the start
probe's power, which the maps would otherwise absorb); optional per-frame position corrections (pixels, ``lr_positions``)
and per-frame intensity scales (incident-flux fluctuations, ``lr_scale``; log units with
the mean over each energy's frames removed, since a common factor is the probe's
amplitude; freed in the second half of the run, once the maps are close). The membrane/uniform background is the zero of absorption and phase;
its per-energy complex transmission is absorbed into each energy's probe.

Initialisation (``JointConfig.init``)
-------------------------------------
The empty (membrane-only) reference region, where the sample's amplitudes are pinned to 0,
is found on the flux-independent phase from the frames' centres of mass
(:func:`diffxas.stxm.dpc_phase`), whatever the initialisation.

* ``"stxm"`` (cold start): the integrated counts of each frame over the
  membrane-only frames give the probe-averaged transmission -> a low-resolution
  absorption stack (bright-field STXM) on the map grid; eq. 1 is fitted to it per pixel
  by variable projection (shape parameters from the mean particle spectrum, amplitudes by
  exact per-pixel least squares). The large-scale structure of the maps is right from
  step 0, so the solver only has to add resolution (this replaces a coarse-to-fine
  continuation: the coarse level comes from the data directly). Continuation in the
  parameters: for the first ``shape_start`` steps (default a quarter of the run) only the
  amplitudes, the composition and (after ``probe_start``) the probes move; the shape
  parameters (edge energy and width, peak positions and widths) are freed afterwards. On
  noise-free data this staged start reaches the loss of a start from the true maps, which a
  start that frees everything at once does not (it stalls with widths 2 eV too wide);
* ``"epie"`` (default): the STXM start sharpened by a short ePIE (``init_epochs``) at the
  lowest and highest energies: per-pixel (a, b1) from the two absorption images and the
  composition from the phase below the edge. Measured on ``tiny`` (200 steps): edge
  energy RMSE 0.27 eV vs 1.69 eV from ``"stxm"``, Re[Ne]/N_V 6.2 vs 13.8 (the flat
  composition guess of ``"stxm"`` lets the rim's phase be explained by too much V);
* ``"flat"``: flat maps from the mean STXM spectrum (for the record / ablations);
* ``"result"``: warm start from a results file: its maps (shared parameters from the
  sample's pixels) and, by ``init_probes``, its refined probes rescaled to the membrane
  counts or the data file's illumination (the default when present, measured better).

Probes without an illumination in the data file (``probes_from`` in the results file's
``init`` record): ``"epie"`` starts every energy from the lowest energy's ePIE-refined
probe (that ePIE starts from a KB focus of ``probe_fwhm``, like the two-step), power from the membrane
counts; ``"stxm"`` and ``"flat"`` from the KB focus itself (poor: noisy ``tiny``, edge
energy 0.48 eV, Re[Ne]/N_V 13, against 0.21 / 2.9 with ``"epie"``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .constants import R_E
from .dataset import Dataset, in_memory, read_frames, relative_monitor, take_frames  # noqa: F401 (read/take: public here too)
from .errors import ConfigError, DivergenceError
from .forward import (frame_geometry, illumination_map, intensities, loss_fn, loss_with_background, resample_matrices,
                      resample_stack, transmission)
from .geometry import Grid, wavelength
from .maps import ChemMaps, Result
from .background import FLOOR
from .scattering import VEdge
from .uncertainty import map_std, object_information, to_common_grid
from .stxm import (NO_EMPTY_REGION, check_counts, check_direct_beam, check_saturation, dpc_phase,  # noqa: F401
                   empty_region, flux_scatter, frame_moments, illumination_at_counts, membrane_counts, probes_at_membrane_counts,
                   stxm_absorption)  # (empty_region, membrane_counts: public here too)
from .spectra import (PARAM_NAMES, XanesParams, absorption, linear_design, n_v, ne_eff_per_nv, phase, pre_edge,
                      pre_edge_norm)

ALL_PARAMS = PARAM_NAMES + ("n_other",)
AMPLITUDES = ("a", "b1", "c11", "c21")
POSITIONS = ("b2", "c12", "c22")
WIDTHS = ("b3", "c13", "c23")
WIDTH_MIN = {"b3": 0.5, "c13": 0.3, "c23": 0.3}
#: amplitudes that may be parameterised as ratios to the edge jump (JointConfig.relative)
RELATIVE_OK = ("c11", "c21")


#: The most optimiser steps a run may ask for: 1e7 steps of ~10 ms (the fastest measured,
#: preset tiny on a GPU) are more than a day; the presets converge in 1e2-1e4 steps, so a
#: larger number is a typo (``steps = 1e9`` would otherwise start and never end).
MAX_STEPS = 10_000_000


@dataclasses.dataclass(frozen=True)
class JointConfig:
    """Configuration of the joint solver (frozen, validated). Energies in eV."""

    steps: int = 300
    loss: str = "amplitude"
    batch_size: int | None = None
    chunk_size: int = 512
    lr_amp: float = 0.04
    lr_energy: float = 0.25
    lr_probe: float = 0.01
    lr_positions: float = 0.0
    # per-frame intensity scale (incident-flux fluctuations), log units per step; 0 = off
    lr_scale: float = 0.0
    probe_start: int = 20
    # per-energy probe amplitude gain exp(g_k), trained from step 0 (log units per step;
    # both probe models). The start probe's shape is fixed until probe_start and the empty
    # region pins the maps, so a power error of the start probe went into the maps. Noisy
    # `tiny` with the guess's amplitude x 1.05 / 0.95: edge energy 0.745 / 0.355 eV
    # without the gains, 0.218 / 0.209 eV with them (0.206 at the right power); the smooth
    # model's gains, which used to train only from probe_start at lr_probe: 0.632 -> 0.222
    # eV at x 1.05. At the right power the edge energy is unchanged (tiny A/B/C 0.206 /
    # 0.228 / 0.262 eV, `small` 0.188 vs 0.190, `paper` 0.181 vs 0.181); Re[Ne]/N_V on
    # `paper` 1.88 vs 1.71. 0 = off (the default before session 12).
    lr_gain: float = 0.01
    shape_start: int | None = None
    # pre-edge peak positions/widths shared across pixels, as in the recommended two-step fit
    # (like-for-like; measured on small: PE/dmt RMSE 0.22 tied vs 0.34 free)
    per_pixel: tuple[str, ...] = ("a", "b1", "b2", "b3", "c11", "c21", "n_other")
    # parameters with one value per domain (e.g. the pre-edge positions and widths per
    # chemical domain), domains from the /clusters/labels of a results file on this
    # dataset's map grid (a first pass clustered with `diffxas cluster`), or "auto": a first
    # pass with this configuration minus per_domain, clustered with the default
    # ClusterConfig (k by elbow), then the second pass; pixels without a label share one
    # extra value. Empty = none.
    per_domain: tuple[str, ...] = ()
    domains: str | None = None
    # Spatial prior on the per-pixel maps: "none", or "tv" = total variation with weights
    # from the noise level (the rule: docs/physics.md, "Spatial prior"; never from a truth).
    # prior_strength c: TV threshold of c standard errors (0.5, chosen on noisy tiny; see
    # docs/physics.md). tv_weight > 0 instead sets
    # one explicit weight for every raw map, in units of the data loss (for sweeps).
    prior: str = "tv"
    prior_strength: float = 0.5
    tv_weight: float = 0.0
    init: str = "epie"
    init_result: str | None = None
    # probes of a warm start (init="result"): "result" (the results file's refined probes,
    # rescaled to the membrane counts), "file" (the data file's illumination) or "auto"
    # (the file's illumination when it has one, else the result's). Measured on noisy tiny
    # (warm start from TwoStepConfig(), whose own errors are edge 0.53 / PE/dmt 0.31 eV):
    # "file" edge 0.232 / PE/dmt 0.167 eV, "result" 0.232 / 0.287 eV (bias -0.24: each
    # energy's ePIE probe carries some of that energy's object error).
    init_probes: str = "auto"
    init_epochs: int = 40
    # FWHM (m) of the KB focus guessed when the data file has no illumination (as the
    # two-step's epie.probe_fwhm); refined by the "epie" start
    probe_fwhm: float = 300e-9
    reference_energy: float | None = None
    valid_jump_fraction: float = 0.1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    # the absorber (chemical symbol) whose K edge the data scan; "V" is the seed's. Any
    # element with a K edge in the table works: scattering.VEdge.for_energies(element, ...)
    element: str = "V"
    table: str = "chantler"
    lr_decay: float = 0.1
    # frames on the device ("device"), streamed from the host/file chunk by chunk ("stream"),
    # or chosen from the memory model and the budget ("auto"); see docs/scaling.md
    memory: str = "auto"
    memory_budget_gib: float | None = None  # device memory for "auto"; None = from the device (or host RAM)
    # optional L-BFGS polish after the Adam steps (optax.lbfgs with its zoom line search) on
    # the sample parameters, probes and positions held; 0 = off. Measured on noisy tiny
    # (100 iterations after 300 Adam steps): loss -1e-4 relative, maps unchanged to 0.01 eV,
    # so it is off by default.
    lbfgs_steps: int = 0
    # probe model: "per-energy" (one free complex probe per energy) or "smooth" (probes of all
    # energies from a few shared complex arrays: P_k = exp(g_k) sum_j L_j(x_k) Q_j, Legendre
    # polynomials L_j of degree <= probe_degree in the energy scaled to [-1, 1], one real
    # log-gain g_k per energy for the incident flux). "smooth" suits achromatic (mirror)
    # focusing, whose probe is nearly the same array in every energy's own pixels; see
    # :func:`probe_basis`.
    probe_model: str = "per-energy"
    probe_degree: int = 2
    # amplitudes stored as ratios to the edge jump b1 (c11 = b1 * r11, ...): their maps, and
    # the spatial prior on them, are then intensive (PE/dmt = pi r11 c13), flat across a
    # domain however the thickness varies; see docs/physics.md ("Relative pre-edge
    # amplitudes"). Only V-specific features may be relative (a and n_other also describe
    # V-free matter, carbon binder say, where b1 = 0). Default chosen on noisy `tiny` (two
    # noise realisations, PE/dmt RMSE 0.179 -> 0.132 and 0.211 -> 0.148 eV, edge energy
    # 0.215 -> 0.206 and 0.234 -> 0.228 eV); `()` = absolute amplitudes (before 709a520).
    # Ignored (absolute) unless b1 is per pixel.
    relative: tuple[str, ...] = ("c11", "c21")
    # fraction of each energy's frames held out of the fit (every n-th in scan order,
    # Dataset.holdout_mask); their loss under the fitted model is logged as
    # history["heldout_loss"]: a truth-free check of how well the model predicts frames it
    # has not fitted (over-fitting of the frames, models of the data). Measured on noisy
    # `tiny`, it does NOT rank the chemical maps (it prefers priors that flatten the edge
    # energy, and fewer steps than the maps need), so it is no selector for prior_strength
    # or steps. 0 = off: all frames fit. Needs the frames on one device (memory "device",
    # no sharding); docs/physics.md ("Held-out frames").
    holdout: float = 0.0
    # incoherent detector background per energy (diffxas.background): "none" (the seed's
    # model), "flat" (one level per energy) or "map" (one level per energy and detector
    # pixel, for the scattering around the direct beam). Trained from step 0 in log units
    # (lr_background per step) from the darkest detector block's mean counts. The
    # measurements behind the choice of default: docs/physics.md, "Detector background".
    background: str = "none"
    lr_background: float = 0.05

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if self.steps > MAX_STEPS:
            raise ConfigError(f"steps must be <= {MAX_STEPS:g}, got {self.steps:g}: at the fastest measured step "
                              "(~10 ms, tiny on a GPU) that is more than a day; the presets converge in 1e2-1e4")
        for name in ("log_every", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ConfigError(f"{name} must be a positive number of steps, got {v!r}")
        if not (math.isfinite(self.valid_jump_fraction) and 0.0 <= self.valid_jump_fraction < 1.0):
            raise ConfigError(f"valid_jump_fraction must be in [0, 1) (a fraction of the 99th-percentile edge jump), "
                              f"got {self.valid_jump_fraction}")
        if self.reference_energy is not None and not (1000.0 <= self.reference_energy <= 100000.0):
            raise ConfigError(f"reference_energy must be a photon energy in eV (1e3..1e5) inside the scan, got "
                              f"{self.reference_energy}")
        if self.loss not in ("amplitude", "poisson"):
            raise ConfigError(f"loss must be 'amplitude' or 'poisson', got {self.loss!r}")
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
            raise ConfigError("per_domain needs domains = a results file with /clusters/labels (run `diffxas cluster` on a "
                              "first pass) or \"auto\" (first pass and clustering in the same run)")
        if self.init not in ("stxm", "flat", "result", "epie"):
            raise ConfigError(f"init must be 'stxm', 'epie', 'flat' or 'result', got {self.init!r}")
        if self.init_probes not in ("auto", "result", "file"):
            raise ConfigError(f"init_probes must be 'auto', 'result' or 'file', got {self.init_probes!r}")
        if self.init == "result" and not self.init_result:
            raise ConfigError("init='result' needs init_result (a results file)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size must be positive or None (full batch)")
        if self.chunk_size < 1:
            raise ConfigError("chunk_size must be positive")
        if not (0.0 <= float(self.holdout) <= 0.5):
            raise ConfigError(f"holdout must be in [0, 0.5] (a fraction of each energy's frames), got {self.holdout}")
        if self.prior not in ("none", "tv"):
            raise ConfigError(f"prior must be 'none' or 'tv', got {self.prior!r}")
        if self.prior == "tv" and self.tv_weight > 0:
            raise ConfigError("set either prior='tv' (weights from the noise level) or tv_weight > 0 (one explicit weight), "
                              "not both: add prior='none' to use tv_weight")
        from .background import check_mode

        check_mode(self.background, "joint background")
        for name in ("lr_amp", "lr_energy", "lr_probe", "lr_positions", "lr_scale", "lr_gain", "lr_background", "tv_weight",
                     "prior_strength"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be finite and >= 0")
        bad = sorted(set(self.relative) - set(RELATIVE_OK))
        if bad:
            raise ConfigError(f"relative names {bad}; only the pre-edge amplitudes {list(RELATIVE_OK)} can be ratios to b1")
        if self.probe_model not in ("per-energy", "smooth"):
            raise ConfigError(f"probe_model must be 'per-energy' or 'smooth', got {self.probe_model!r}")
        if not 0 <= self.probe_degree <= 6:
            raise ConfigError(f"probe_degree must be 0..6 (polynomial degree in energy), got {self.probe_degree}")
        if not (math.isfinite(self.probe_fwhm) and self.probe_fwhm > 0):
            raise ConfigError(f"probe_fwhm must be a positive length in m, got {self.probe_fwhm}")
        if self.lbfgs_steps < 0:
            raise ConfigError(f"lbfgs_steps must be >= 0, got {self.lbfgs_steps}")
        from .scattering import check_element

        check_element(self.element)
        if self.memory not in ("auto", "device", "stream"):
            raise ConfigError(f"memory must be 'auto', 'device' or 'stream', got {self.memory!r}")
        if self.memory_budget_gib is not None and not (math.isfinite(self.memory_budget_gib) and self.memory_budget_gib > 0):
            raise ConfigError(f"memory_budget_gib must be a positive number of GiB or None, got {self.memory_budget_gib!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["per_pixel"] = list(self.per_pixel)
        d["per_domain"] = list(self.per_domain)
        d["relative"] = list(self.relative)
        return d


# ----------------------------------------------------------------------------- parameters


class Scales(eqx.Module):
    """Static transforms between raw leaves and physical parameters."""

    amp: float = eqx.field(static=True)
    n_other: float = eqx.field(static=True)
    e_mid: float = eqx.field(static=True)
    e_half: float = eqx.field(static=True)
    # amplitudes whose raw leaf is their ratio to b1 (dimensionless, O(0.1-1))
    relative: tuple = eqx.field(static=True, default=())


class JointParams(eqx.Module):
    """Trainable leaves (all real)."""

    raw: dict  # name -> (H, W) or () raw values
    probe_re: jax.Array  # (K, M, M) per-energy probes, or (J, M, M) shared arrays of the smooth probe model
    probe_im: jax.Array
    dpos: jax.Array  # (F, 2) position corrections, pixels of each frame's energy grid (row, col)
    dscale: jax.Array  # (F,) log intensity scale of each frame (gauge: mean 0 per energy, see frame_nuisances)
    probe_gain: jax.Array  # (K,) log amplitude gain of each energy's probe (trained from step 0 with lr_gain)
    # (K,) or (K, M, M) log factor on the starting background level Problem.background0
    # (JointConfig.background "flat" / "map"); None: no background term
    background: Any = None


def _softplus_inv(y):
    return np.log(np.expm1(np.maximum(y, 1e-6)))


def to_raw(name: str, value, sc: Scales):
    """Physical -> raw (numpy). A relative amplitude (``sc.relative``) takes its ratio to
    b1 as ``value`` (see :func:`relative_values`)."""
    v = np.asarray(value, np.float64)
    if name in sc.relative:
        return v
    if name in AMPLITUDES:
        return v / sc.amp
    if name == "n_other":
        return v / sc.n_other
    if name in POSITIONS:
        z = np.clip((v - sc.e_mid) / sc.e_half, -0.999, 0.999)
        return sc.e_half * np.arctanh(z)
    return _softplus_inv(v - WIDTH_MIN[name])


def from_raw(name: str, raw, sc: Scales):
    """Raw -> physical (JAX); for a relative amplitude the ratio to b1 (:func:`physical`
    multiplies)."""
    if name in sc.relative:
        return raw
    if name in AMPLITUDES:
        return sc.amp * raw
    if name == "n_other":
        return sc.n_other * raw
    if name in POSITIONS:
        return sc.e_mid + sc.e_half * jnp.tanh(raw / sc.e_half)
    return WIDTH_MIN[name] + jax.nn.softplus(raw)


def physical(params: JointParams, sc: Scales, keep=None, domain=None) -> XanesParams:
    """Physical parameters; amplitudes (a, b1, c11, c21, n_other) multiplied by ``keep`` (1 = sample, 0 = pinned empty).

    Per-domain leaves (1-D, one value per domain) are spread over the map by ``domain``
    (H, W) int, the domain index of every pixel.
    """
    out = {k: from_raw(k, params.raw[k] if params.raw[k].ndim != 1 else params.raw[k][domain], sc) for k in ALL_PARAMS}
    for k in sc.relative:
        out[k] = out["b1"] * out[k]
    if keep is not None:
        for k in AMPLITUDES + ("n_other",):
            out[k] = out[k] * keep
    return XanesParams(**out)


# ----------------------------------------------------------------------------- static problem


class Problem(eqx.Module):
    """Everything the step needs that is not trained (arrays on device, shapes static).

    Per-frame arrays are stored in a chunked layout ``(n_chunks, chunk, ...)`` (padded with
    frame id -1): a full-batch loss scans over chunks (memory of one chunk at a time, with
    rematerialisation), and sharding the ``chunk`` axis across devices splits every chunk's
    frames between them (see :mod:`diffxas.parallel`).
    """

    frames: jax.Array  # (C, B, M, M)
    frame_id: jax.Array  # (C, B) index into the dataset's frames, -1 = padding
    energy_index: jax.Array  # (C, B)
    corner: jax.Array  # (C, B, 2)
    frac: jax.Array  # (C, B, 2)
    weight: jax.Array  # (K, M, M) detector mask
    energies: jax.Array  # (K,)
    ry: jax.Array  # (K, N, H) common -> energy grid
    rx: jax.Array  # (K, N, W)
    illuminated: jax.Array  # (H, W) bool
    empty: jax.Array  # (H, W) 1 in the empty (membrane-only) reference region, else 0
    edge: VEdge
    scales: Scales
    # weights of the total variation of each raw map (ALL_PARAMS order): (n,) ones for an
    # explicit tv_weight, (n, H, W) per-pixel maps from the noise rule for prior="tv"
    tv_scale: jax.Array = eqx.field(default_factory=lambda: jnp.ones(len(ALL_PARAMS), jnp.float32))
    # (H, W) int32 domain index of every pixel for per-domain parameters (None: no domains)
    domain: Any = None
    # (F,) energy index of every frame in the dataset's order (gauge of the frame scales)
    frame_energy: Any = None
    # (K, J) Legendre basis of the smooth probe model (None: one free probe per energy)
    probe_basis: Any = None
    # (F,) log of each frame's relative incident flux from the dataset's monitor
    # (diffxas.dataset.relative_monitor; None: no monitor); added to the trained log scales
    log_monitor: Any = None
    # (K,) or (K, M, M) starting incoherent background, photons per detector pixel per frame,
    # maps with zero frequency at (0, 0) like the frames here (None: not modelled)
    background0: Any = None


def chunk_layout(n_frames: int, chunk: int, n_shards: int = 1) -> tuple[int, int]:
    """(n_chunks, chunk) with chunk a multiple of ``n_shards`` and n_chunks * chunk >= n_frames."""
    n_chunks = -(-n_frames // max(1, min(chunk, n_frames)))
    chunk = -(-(-(-n_frames // n_chunks)) // n_shards) * n_shards  # balanced, a multiple of n_shards
    return n_chunks, chunk


def energy_grids(ds: Dataset, common: Grid) -> list[Grid]:
    """Each energy's grid (:meth:`Dataset.energy_grids`), padded to one shape keeping its centre."""
    return ds.energy_grids(common, same_shape=True)


@eqx.filter_jit(donate="all-except-first")
def _put_chunk(c, buf, block):
    """``buf[c] = ifftshift(block)`` in place (``buf`` donated)."""
    return buf.at[c].set(jnp.fft.ifftshift(block, axes=(-2, -1)))


def _device_frames(frames, nchunk: int, chunk: int) -> jax.Array:
    """The chunked, ifftshifted device copy of a lazy frame source (e.g. :class:`diffxas.io.CxiFrames`),
    filled one chunk at a time: the host holds one chunk, never all frames."""
    n, m = int(frames.shape[0]), int(frames.shape[-1])
    buf = jnp.zeros((nchunk, chunk, m, m), jnp.float32)
    block = np.zeros((chunk, m, m), np.float32)
    for c in range(nchunk):
        a, b = c * chunk, min((c + 1) * chunk, n)
        block[: b - a] = read_frames(frames, a, b)
        block[b - a:] = 0.0
        buf = _put_chunk(jnp.asarray(c, jnp.int32), buf, jnp.asarray(block))
    return buf


def build_problem(ds: Dataset, cfg: JointConfig, edge: VEdge, scales: Scales, common: Grid | None = None, n_shards: int = 1,
                  frames_on_device: bool = True, place_frames=None) -> tuple[Problem, Grid, list[Grid]]:
    """The :class:`Problem` of ``ds``. ``frames_on_device=False`` (streaming mode): the
    problem holds no frames (``frames`` has shape ``(n_chunks, chunk, 0, 0)``); the
    streaming solver reads them chunk by chunk (:mod:`diffxas.stream`).
    ``place_frames(frames, n_chunks, chunk)``: builds the chunked, ifftshifted frames array
    itself (:func:`diffxas.parallel.frames_placer`: each process reads only its share)."""
    common = ds.common_grid() if common is None else common
    grids = energy_grids(ds, common)
    M = ds.frame_size
    ei = np.asarray(ds.energy_index)
    pos = np.asarray(ds.positions, np.float64)
    corner = np.zeros((ds.n_frames, 2), np.int32)
    frac = np.zeros((ds.n_frames, 2), np.float32)
    ry, rx = [], []
    for k, g in enumerate(grids):
        idx = np.nonzero(ei == k)[0]
        c, f = frame_geometry(pos[idx], g, M)
        corner[idx], frac[idx] = c, f
        a, b = resample_matrices(common, g)
        ry.append(a)
        rx.append(b)
    # illuminated area on the common grid: footprint of all frames of the lowest energy
    # (its grid has the common pixel), probe intensity from the illumination or a disc.
    k0 = int(np.argmax(ds.pixel_sizes()))
    idx0 = np.nonzero(ei == k0)[0]
    c0, f0 = frame_geometry(pos[idx0], common, M)
    if ds.illumination is not None:
        pint = np.abs(np.asarray(ds.illumination[k0])) ** 2
    else:
        yy, xx = np.mgrid[:M, :M] - M // 2
        pint = (xx ** 2 + yy ** 2 < (M / 8) ** 2).astype(np.float32)
    ill = np.asarray(illumination_map(jnp.asarray(pint[None], jnp.float32), np.zeros(len(idx0), np.int32), c0, f0, common.shape))[0]
    illuminated = ill > 0.1 * np.max(ill) * 1.0 if ill.max() > 0 else np.zeros(common.shape, bool)
    # require full-dose coverage: at least 25 % of the median of the covered interior
    med = np.median(ill[ill > 0.5 * ill.max()]) if ill.max() > 0 else 0.0
    illuminated = ill >= 0.25 * med
    nchunk, chunk = chunk_layout(ds.n_frames, cfg.chunk_size, n_shards)
    pad = nchunk * chunk - ds.n_frames

    def lay(x, fill=0):
        x = np.asarray(x)
        x = np.concatenate([x, np.full((pad,) + x.shape[1:], fill, x.dtype)]) if pad else x
        return jnp.asarray(x.reshape((nchunk, chunk) + x.shape[1:]))

    # frames and mask with zero frequency at (0, 0): the model skips the fftshift (forward.uncenter)
    if not frames_on_device:
        frames = jnp.zeros((nchunk, chunk, 0, 0), jnp.float32)
    elif place_frames is not None:
        frames = place_frames(ds.frames, nchunk, chunk)
    elif in_memory(ds.frames):
        frames = lay(np.fft.ifftshift(np.asarray(ds.frames, np.float32), axes=(-2, -1)))
    else:
        frames = _device_frames(ds.frames, nchunk, chunk)
    prob = Problem(frames=frames, frame_id=lay(np.arange(ds.n_frames, dtype=np.int32), -1),
                   energy_index=lay(ei.astype(np.int32)), corner=lay(corner), frac=lay(frac),
                   weight=jnp.asarray(np.fft.ifftshift(np.asarray(ds.mask, np.float32), axes=(-2, -1))),
                   energies=jnp.asarray(ds.energies, jnp.float32), ry=jnp.asarray(np.stack(ry), jnp.float32),
                   rx=jnp.asarray(np.stack(rx), jnp.float32), illuminated=jnp.asarray(illuminated),
                   empty=jnp.zeros(common.shape, jnp.float32), edge=edge,
                   scales=scales, frame_energy=jnp.asarray(ei, jnp.int32),
                   log_monitor=None if ds.monitor is None else jnp.asarray(np.log(relative_monitor(ds)), jnp.float32))
    return prob, common, grids


# ----------------------------------------------------------------------------- model


def model_fields(params: JointParams, prob: Problem):
    """Absorption and phase stacks (K, H, W) on the common grid from the parameters.

    The empty (membrane-only) reference region carries no sample: its amplitudes are pinned
    to zero (:func:`physical`), so absorption and phase are relative to the membrane, as in
    the two-step path's alignment. Without the pin, a uniform offset of the maps is exactly
    degenerate with the probe's amplitude and phase (the membrane's transmission) and leaks
    into ``a`` and ``n_other`` inside the particles.
    """
    p = physical(params, prob.scales, 1.0 - prob.empty, prob.domain)
    return absorption(p, prob.energies), phase(p, prob.energies, prob.edge)


def model_objects(params: JointParams, prob: Problem):
    """Complex transmission of every energy on its own grid (K, N, N)."""
    a, phi = model_fields(params, prob)
    return transmission(resample_stack(a, prob.ry, prob.rx), resample_stack(phi, prob.ry, prob.rx))


TV_EPS = 1e-8


def _tv(x, mask, weight=1.0):
    """Isotropic total variation of ``x`` over ``mask``: a forward difference counts only
    where both of its pixels are in the mask (no artificial jump at the mask's border).
    ``weight``: a scalar or an (H, W) map weighting each pixel's gradient magnitude."""
    m = mask.astype(x.dtype)
    dy = jnp.diff(x, axis=-2) * (m[1:, :] * m[:-1, :])
    dx = jnp.diff(x, axis=-1) * (m[:, 1:] * m[:, :-1])
    w = weight[:-1, :-1] if jnp.ndim(weight) == 2 else weight
    # eps: smooth at zero (|step| << 1e-4 is quadratic: float32 noise between equal pixels
    # gives no gradient kicks); far below any step that matters (raw units ~ 1e-2..1)
    return jnp.sum(w * jnp.sqrt(dy[:, :-1] ** 2 + dx[:-1, :] ** 2 + TV_EPS))


def frame_nuisances(params: JointParams, prob: Problem):
    """Per-frame nuisances ``(dpos (F, 2), log scale (F,))``. The log scale of a frame is the
    log of its monitor's relative flux (fixed; 0 without a monitor) plus the trained
    correction ``dscale``; the sum has its mean over each energy's frames removed: a common
    factor of one energy's frames is the same thing as its probe's amplitude, so without
    this gauge it would drift freely."""
    s = params.dscale if prob.log_monitor is None else params.dscale + prob.log_monitor
    if prob.frame_energy is None:
        return params.dpos, s
    k = prob.energies.shape[0]
    tot = jax.ops.segment_sum(s, prob.frame_energy, k)
    cnt = jax.ops.segment_sum(jnp.ones_like(s), prob.frame_energy, k)
    return params.dpos, s - (tot / jnp.maximum(cnt, 1.0))[prob.frame_energy]


def probe_basis(energies, degree: int) -> np.ndarray:
    """(K, degree + 1) Legendre polynomials of the energies scaled to [-1, 1] (float32).

    The smooth probe model: ``P_k = exp(g_k) sum_j B[k, j] Q_j``. Why smooth in energy on
    each energy's own pixel grid: with mirror (KB) focusing of a fixed aperture the pupil
    sits at fixed detector pixels whatever the energy (its angle NA is fixed, the
    detector pixel's angle p/z too), so the probe is nearly the same array in each
    energy's own pixels (object pixel lambda z/(M p)); what changes is the defocus phase
    (proportional to 1/lambda: 2.2 % over the seed's 5420-5540 eV, linear to first order)
    and the incident flux (the gains). Degree 2 leaves room for a slow drift of the focus.
    Chromatic optics (zone plates, focal length proportional to E) move the focus by tens
    of um over such a scan: use ``probe_model = "per-energy"`` there.
    """
    e = np.asarray(energies, np.float64)
    span = float(e.max() - e.min())
    x = (e - 0.5 * (e.max() + e.min())) / (0.5 * span) if span > 0 else np.zeros_like(e)
    return np.stack([np.polynomial.legendre.Legendre.basis(j)(x) for j in range(degree + 1)], axis=1).astype(np.float32)


def probes(params: JointParams, prob: Problem) -> jax.Array:
    """The complex probe of every energy (K, M, M) from the trainable leaves."""
    q = params.probe_re + 1j * params.probe_im
    if prob.probe_basis is not None:  # the smooth model: every energy's array from the shared ones
        q = jnp.einsum("kj,jmn->kmn", prob.probe_basis.astype(q.dtype), q)
    return q * jnp.exp(params.probe_gain)[:, None, None]


#: Largest initial log gain of the smooth probe model taken from the exact fit (e^2: a
#: flux 7x off the mean); beyond it the gains come from the probes' powers.
GAIN_LIMIT = 2.0


def fit_probe_model(probes0: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Initial leaves ``(Q (J, M, M) complex, log gains (K,))`` of the smooth probe model.

    With ``h_k = exp(-g_k)`` the model says that the rescaled probes ``h_k P_k`` lie in the
    span of the basis over the energies, ``(I - B B^+) diag(h) P = 0``: linear in ``h``.
    ``h`` minimises the fraction of the rescaled probes' power outside that span, the
    generalised eigenproblem ``G h = lambda D h`` with ``G = R o Re(conj(P) P^T)`` (``R = I -
    B B^+``, Hadamard product) and ``D = diag(|P_k|^2)``: exact for probes of the model's
    form. (Without ``D`` the smallest eigenvector can sit on a few energies, gains of
    e^8 measured on noisy ePIE start probes, and the run diverges.) Where that says nothing
    (as many basis functions as energies) or gives a non-positive gain or one beyond
    ``GAIN_LIMIT``, the gains come from each probe's power. Then ``Q`` by linear least
    squares; the mean log gain is 0 (the gauge: a common factor belongs to ``Q``).
    """
    from scipy.linalg import eigh

    p = np.asarray(probes0, np.complex128)
    b = np.asarray(basis, np.float64)
    flat = p.reshape(len(p), -1)
    power = np.sum(np.abs(flat) ** 2, axis=1)
    g = 0.5 * np.log(np.maximum(power, 1e-30) / max(float(np.mean(power)), 1e-30))
    r = np.eye(len(b)) - b @ np.linalg.pinv(b)
    if np.max(np.abs(r)) > 1e-8:
        _, v = eigh(r * np.real(np.conj(flat) @ flat.T), np.diag(np.maximum(power, 1e-30)))
        h = v[:, 0] * np.sign(v[:, 0].sum())
        if np.all(h > 0):
            g_eig = -np.log(h)
            g_eig = g_eig - np.mean(g_eig)
            if np.max(np.abs(g_eig)) < GAIN_LIMIT:
                g = g_eig
    q, *_ = np.linalg.lstsq(b, flat / np.exp(g)[:, None], rcond=None)
    return q.reshape((b.shape[1],) + p.shape[1:]), g


def background_counts(params: JointParams, prob: Problem):
    """The incoherent background of every energy (:mod:`diffxas.background`): ``(K,)`` or
    ``(K, M, M)`` photons per detector pixel per frame (zero frequency at (0, 0)), the
    starting level times ``exp`` of the trained log factor; None when not modelled."""
    if params.background is None or prob.background0 is None:
        return None
    return prob.background0 * jnp.exp(params.background)


def model_objects_and_probes(params: JointParams, prob: Problem):
    """(objects (K, N, N), fft2 of the probes (K, M, M), nuisances (position corrections,
    log intensity scales, background)): everything the per-frame loss needs from the
    parameters (the streaming step pulls its gradient back through this)."""
    dpos, lsc = frame_nuisances(params, prob)
    return model_objects(params, prob), jnp.fft.fft2(probes(params, prob)), (dpos, lsc, background_counts(params, prob))


def chunk_loss(obj, phat, nuis, weight, lf, frames, fid, k, corner, frac):
    """Data loss of one chunk of frames (``fid`` -1 = padding, weight 0); frames with zero
    frequency at (0, 0); ``nuis`` = (position corrections, log intensity scales) of all
    frames and the background of every energy (None: none). The model intensity is
    ``scale |F(P O)|^2 + b`` (forward.py, "Losses"); the background's gradient is the
    Poisson likelihood's whatever the loss (:func:`forward.loss_with_background`)."""
    dpos, lsc, bg = nuis
    ok = fid >= 0
    j = jnp.where(ok, fid, 0)
    inten = intensities(obj, phat, k, corner, frac + dpos[j], centered=False) * jnp.exp(lsc[j])[:, None, None]
    w = weight[k] * ok[:, None, None]
    if bg is not None:
        return loss_with_background(lf, inten, bg[k][:, None, None] if bg.ndim == 1 else bg[k], frames, w)
    return lf(inten, frames, w)


def _frames_loss(params: JointParams, prob: Problem, obj, phat, nuis, lf, frames, fid, k, corner, frac):
    return chunk_loss(obj, phat, nuis, prob.weight, lf, frames, fid, k, corner, frac)


def data_loss(params: JointParams, prob: Problem, idx: jax.Array | None, loss_name: str, chunk: int):
    """Data loss over all frames (``idx=None``: scan over the chunked layout) or frames ``idx``.

    Each chunk is rematerialised in the backward pass, so memory holds one chunk of
    exit waves at a time.
    """
    obj, phat, nuis = model_objects_and_probes(params, prob)
    lf = loss_fn(loss_name)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    if idx is None:
        xs = (prob.frames, prob.frame_id, prob.energy_index, prob.corner, prob.frac)
    else:
        n = idx.shape[0]
        nch = -(-n // chunk)
        idx = jnp.pad(idx, (0, nch * chunk - n), constant_values=0)
        valid = jnp.arange(nch * chunk) < n
        sel = lambda x: flat(x)[idx].reshape((nch, chunk) + x.shape[2:])  # noqa: E731
        fid = jnp.where(valid, flat(prob.frame_id)[idx], -1).reshape(nch, chunk)
        xs = (sel(prob.frames), fid, sel(prob.energy_index), sel(prob.corner), sel(prob.frac))

    def one_chunk(x):
        return _frames_loss(params, prob, obj, phat, nuis, lf, *x)

    if xs[0].shape[0] == 1:  # one chunk: no scan, no rematerialisation
        return one_chunk(tuple(x[0] for x in xs))
    one_chunk = jax.checkpoint(one_chunk)

    def body(acc, x):
        return acc + one_chunk(x), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.result_type(params.probe_re.dtype, prob.frames.dtype)), xs)
    return total


def total_loss(params, prob, idx, cfg_static):
    loss_name, chunk, tv_weight, n_frames_total = cfg_static
    d = data_loss(params, prob, idx, loss_name, chunk)
    if idx is not None:
        d = d * (n_frames_total / idx.shape[0])
    if tv_weight > 0:
        d = d + tv_weight * regulariser(params, prob)
    return d


def regulariser(params: JointParams, prob: Problem):
    """Total variation of each per-pixel raw map over the illuminated area, times its
    per-parameter weight ``prob.tv_scale`` (the noise rule, :func:`prior_weights`)."""
    reg = 0.0
    for i, k in enumerate(ALL_PARAMS):
        r = params.raw[k]
        if r.ndim == 2:
            reg = reg + _tv(r, prob.illuminated, prob.tv_scale[i])
    return reg


#: Data loss per unit of negative log-likelihood (the amplitude loss sum (sqrt I - sqrt n)^2
#: is a Gaussian on sqrt(n) of variance 1/4, i.e. half the NLL; the Poisson loss is the NLL).
LOSS_PER_NLL = {"amplitude": 0.5, "poisson": 1.0}


#: Per-pixel standard errors are clipped to this factor around their median before they
#: set the weights (pixels without V have no edge-energy information at all).
SIGMA_CLIP = 10.0


def prior_weights(params: JointParams, prob: Problem, cfg: JointConfig, edge: VEdge):
    r"""Total-variation weights of the per-pixel maps from the noise level (``prior="tv"``).

    The rule (docs/physics.md, "Spatial prior"): near the solution the data term of pixel
    p is ``(theta_p - theta_hat_p)^2 / (2 sigma_p^2)`` in NLL units, with ``sigma_p`` the
    Cramer-Rao standard error of that pixel's parameter (:mod:`diffxas.uncertainty`,
    evaluated at the initial maps and probes). Weighting the pixel's gradient magnitude by
    ``w_p = c / sigma_p`` makes each map a Rudin-Osher-Fatemi denoising of the per-pixel
    estimate with the local threshold ``lambda_p = c sigma_p``: a step between neighbours
    smaller than about ``c`` local noise standard errors is flattened, larger ones (domain
    boundaries, particle rims) are kept, at every pixel whatever its own noise (thin rims,
    dose). ``sigma_p`` is clipped to ``[median / SIGMA_CLIP, median * SIGMA_CLIP]``, the
    median over the particles' pixels (illuminated, edge jump above
    ``valid_jump_fraction``, outside the empty reference region); non-finite values take the
    median. ``c = prior_strength`` (default 0.5); weights in data-loss units (times
    :data:`LOSS_PER_NLL`).

    Returns ``(record, maps)``: name -> {"sigma_raw" (median), "weight" (median weight)}
    for the results file, and name -> (H, W) weight map. A parameter without any particle
    pixel of finite error (e.g. a membrane-only scan) gets weight 0 and ``sigma_raw``
    None: no prior, rather than a guess.
    """
    from .uncertainty import covariance, parameter_information

    names = [k for k in ALL_PARAMS if k in cfg.per_pixel and params.raw[k].ndim == 2]
    if not names:
        return {}, {}
    info = np.asarray(eqx.filter_jit(object_information_joint)(params, prob))
    keep = 1.0 - prob.empty
    p = physical(params, prob.scales, keep, prob.domain)
    cov = covariance(parameter_information(p, prob.energies, edge, info, names))
    b1 = np.asarray(p.b1, np.float64)
    ill = np.asarray(prob.illuminated, bool) & (np.asarray(prob.empty) < 0.5)
    thr = cfg.valid_jump_fraction * (np.percentile(b1[ill], 99) if ill.any() else 0.0)
    region = ill & (b1 > thr)
    scale = cfg.prior_strength * LOSS_PER_NLL[cfg.loss]
    out, maps = {}, {}
    for i, k in enumerate(names):
        if k in prob.scales.relative and "b1" in names:
            # raw = c / b1: delta method, g = (d raw / d b1, d raw / d c) = (-c / b1^2, 1 / b1)
            j = names.index("b1")
            c = np.asarray(getattr(p, k), np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                g1, g2 = -c / b1 ** 2, 1.0 / b1
                s = np.sqrt(np.abs(g1 * g1 * cov[..., j, j] + 2 * g1 * g2 * cov[..., i, j] + g2 * g2 * cov[..., i, i]))
        else:
            # d physical / d raw, elementwise (the transforms act pixel by pixel)
            d = np.asarray(jax.grad(lambda r: jnp.sum(from_raw(k, r, prob.scales)))(params.raw[k]), np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.sqrt(np.abs(cov[..., i, i])) / np.maximum(np.abs(d), 1e-30)
        good = np.isfinite(s) & (s > 0)
        vals = s[region & good]
        if vals.size == 0:
            out[k] = {"sigma_raw": None, "weight": 0.0}
            continue
        sig = float(np.median(vals))
        s = np.clip(np.where(good, s, sig), sig / SIGMA_CLIP, sig * SIGMA_CLIP)
        maps[k] = (scale / s).astype(np.float32)
        out[k] = {"sigma_raw": sig, "weight": float(scale / sig)}
    return out, maps


# ----------------------------------------------------------------------------- optimiser


def _labels(params: JointParams, cfg: JointConfig):
    raw_labels = {k: ("amp" if k in AMPLITUDES + ("n_other",) else "energy") for k in params.raw}
    return JointParams(raw=raw_labels, probe_re="probe", probe_im="probe", dpos="pos", dscale="scale", probe_gain="gain",
                       background=None if params.background is None else "background")


def make_optimizer(params: JointParams, cfg: JointConfig, probe_scale: float):
    def sched(lr):
        return optax.cosine_decay_schedule(lr, max(cfg.steps, 1), alpha=cfg.lr_decay)

    probe_lr = cfg.lr_probe * probe_scale

    def probe_sched(step):
        return jnp.where(step >= cfg.probe_start, sched(probe_lr)(step), 0.0)

    shape_start = cfg.steps // 4 if cfg.shape_start is None else cfg.shape_start

    def energy_sched(step):
        return jnp.where(step >= shape_start, sched(cfg.lr_energy)(step), 0.0)

    # frame scales move in the second half only: earlier they would absorb the mismatch of
    # maps that are still far off (measured on noise-free tiny with 10 % flux jitter: freed
    # from step 0 the scales' correlation with the truth was ~0 after 60 steps)
    def scale_sched(step):
        return jnp.where(step >= cfg.steps // 2, sched(cfg.lr_scale)(step), 0.0)

    tx = {
        "amp": optax.adam(sched(cfg.lr_amp)),
        "energy": optax.adam(energy_sched),
        "probe": optax.adam(probe_sched),
        "pos": optax.adam(sched(cfg.lr_positions)) if cfg.lr_positions > 0 else optax.set_to_zero(),
        "scale": optax.adam(scale_sched) if cfg.lr_scale > 0 else optax.set_to_zero(),
        # per-energy log gains of the probes (either probe model): log units per step, from step 0
        "gain": optax.adam(sched(cfg.lr_gain)) if cfg.lr_gain > 0 else optax.set_to_zero(),
        # log factor of the incoherent background (diffxas.background), from step 0
        "background": optax.adam(sched(cfg.lr_background)) if cfg.lr_background > 0 else optax.set_to_zero(),
    }
    return optax.multi_transform(tx, _labels(params, cfg))


# ----------------------------------------------------------------------------- initialisation


def fit_shape_and_amplitudes(stack: np.ndarray, energies: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Variable-projection fit of eq. 1: shared shape parameters, per-pixel amplitudes.

    Shape parameters (b2, b3, c12, c13, c22, c23) by a grid search on the mean spectrum of
    ``mask`` pixels weighted by their edge contrast; then the four amplitudes of every pixel
    by exact linear least squares (:func:`diffxas.spectra.linear_design`).

    The grid holds c13 = 1.2 eV, c22 = c12 + 4 eV, c23 = 2 eV (the joint refines them). The
    search runs in two stages, as the two-step's :func:`diffxas.fitting.fit_global` does:
    first the main pre-edge peak alone (edge + one Lorentzian), then the full design with
    c12 from 2 eV below to 1 eV above that peak; amplitudes b1, c11, c21 non-negative in both (exact NNLS,
    :func:`diffxas.fitting.varpro_grid`). A single unconstrained search over the full design
    can put the *second* peak (the broader one, tied 4 eV up) on the measured pre-edge peak
    and cancel the first with a negative amplitude: it did on one of five `tiny` scans with
    20 nm position errors, where the blurred peak looked broad (c12 = 5462.5 instead of
    ~5466 eV; joint PE/dmt error 2.45 eV). Non-negativity alone does not prevent it (the
    second peak alone then fits best); locating the main peak first does.
    """
    from .fitting import varpro_grid

    e = np.asarray(energies, np.float64)
    sel = stack[:, mask]  # (K, P)
    if sel.shape[1] == 0:
        sel = stack.reshape(stack.shape[0], -1)
    contrast = np.clip(sel[-3:].mean(0) - sel[:3].mean(0), 0, None)
    mean = (sel * contrast).sum(1) / max(contrast.sum(), 1e-12)
    lo, hi = e.min(), e.max()
    grid = [(b2, b3, c12) for b2 in np.arange(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), 0.5)
            for b3 in (2.0, 3.0, 4.0, 5.0) for c12 in np.arange(max(lo, b2 - 20), b2 - 4, 0.5)]
    if grid:
        g = np.asarray(grid)
        # all candidate designs at once (one call of the spectral model), (G, K, 4)
        dm = np.moveaxis(np.asarray(linear_design(jnp.asarray(e), jnp.asarray(g[:, 0]), jnp.asarray(g[:, 1]),
                                                  jnp.asarray(g[:, 2]), 1.2, jnp.asarray(g[:, 2] + 4.0), 2.0), np.float64), 0, 1)
        if e.size <= 4:  # no more energies than amplitudes: the least-squares pick, nothing to constrain
            coef = np.einsum("gpk,k->gp", np.linalg.pinv(dm), mean)
            i = int(np.argmin(np.sum((np.einsum("gkp,gp->gk", dm, coef) - mean) ** 2, axis=1)))
        else:
            # stage 1: the main pre-edge peak alone (columns a, b1, c11)
            best, _, _ = varpro_grid(mean[:, None], dm[:, :, :3], nonneg=(1, 2))
            # stage 2: the full design, c12 from 2 eV below to 1 eV above that peak (one
            # Lorentzian standing in for both peaks sits above the main one)
            dc = g[:, 2] - g[int(best[0]), 2]
            near = np.flatnonzero((dc >= -2.0 - 1e-9) & (dc <= 1.0 + 1e-9))
            best, _, _ = varpro_grid(mean[:, None], dm[near], nonneg=(1, 2, 3))
            i = int(near[int(best[0])])
        b2, b3, c12 = g[i]
    else:
        b2, b3, c12 = 0.5 * (lo + hi), 3.0, lo
    shape = dict(b2=b2, b3=b3, c12=c12, c13=1.2, c22=c12 + 4.0, c23=2.0)
    dm = np.asarray(linear_design(jnp.asarray(e), b2, b3, c12, 1.2, c12 + 4.0, 2.0), np.float64)
    coef, *_ = np.linalg.lstsq(dm, stack.reshape(stack.shape[0], -1), rcond=None)
    out = {k: np.full(stack.shape[1:], v) for k, v in shape.items()}
    for i, k in enumerate(AMPLITUDES):
        out[k] = coef[i].reshape(stack.shape[1:])
    return out


def _background_for(background: np.ndarray, energies_from, energies_to) -> np.ndarray | None:
    """A results file's background at ``energies_to`` (eV): its rows of the same energies
    (within 0.01 eV), or None when one is missing (a warm start from another energy set)."""
    src = np.asarray(energies_from, np.float64)
    idx = [int(np.argmin(np.abs(src - x))) for x in np.asarray(energies_to, np.float64)]
    if any(abs(src[i] - x) > 0.01 for i, x in zip(idx, energies_to)):
        return None
    return np.asarray(background, np.float32)[idx]


def init_params(ds: Dataset, prob: Problem, common: Grid, cfg: JointConfig, edge: VEdge, moments=None) -> tuple[dict, dict]:
    """Initial physical parameter maps and a record of how they were made (``moments``: the
    frames' :func:`diffxas.stxm.frame_moments`, computed here when not given)."""
    e = np.asarray(ds.energies, np.float64)
    ill = np.asarray(prob.illuminated)
    if cfg.init == "result":
        from .io import read_result

        res = read_result(cfg.init_result)
        ex = dict(res.maps.extra)
        if "n_other" not in ex and all(k in ex for k in PARAM_NAMES):
            # composition from the maps: n_other = N_V (Re[Ne]/N_V - Z_V - f'_V(E_ref)), 0 where unknown
            from .spectra import f1_v

            b1 = np.nan_to_num(np.asarray(ex["b1"], np.float64))
            pr = XanesParams(**{k: jnp.asarray(np.nan_to_num(np.asarray(ex[k], np.float64)), jnp.float32) for k in PARAM_NAMES})
            pr = XanesParams(**{**pr.as_dict(), "b1": jnp.asarray(np.where(b1 > 0, b1, 1.0), jnp.float32)})
            f1 = np.asarray(f1_v(pr, jnp.asarray([res.maps.reference_energy]), edge)[0], np.float64)
            nv = np.asarray(n_v(jnp.asarray(b1), edge), np.float64)
            ne = np.asarray(res.maps.ne_eff_per_nv, np.float64)
            ok = np.isfinite(ne) & (b1 > 0) & np.isfinite(f1)
            ex["n_other"] = np.where(ok, nv * (np.where(ok, ne, 0.0) - edge.z - np.where(ok, f1, 0.0)), 0.0)
        missing = [k for k in ALL_PARAMS if k not in ex]
        if missing:
            raise ConfigError(f"{cfg.init_result}: results file lacks per-pixel parameters {missing} needed for a warm start")
        if res.maps.shape != common.shape:
            raise ConfigError(f"{cfg.init_result}: map grid {res.maps.shape} differs from this dataset's {common.shape}")
        # amplitudes are 0 where the result has no value (no sample); positions and widths
        # take the median of the pixels that have one (a 0 eV edge or width is no start)
        vals = {}
        for k in ALL_PARAMS:
            v = np.asarray(ex[k], np.float64)
            fin = np.isfinite(v)
            fill = 0.0 if (k in AMPLITUDES or k == "n_other" or not fin.any()) else float(np.median(v[fin]))
            vals[k] = np.where(fin, v, fill)
        use = cfg.init_probes if cfg.init_probes != "auto" else ("file" if ds.illumination is not None else "result")
        # the result's fitted detector background, energy by energy (prepare_joint starts from it)
        extra = {} if res.background is None else {"background_result": _background_for(res.background, res.energies, e)}
        if use == "file":
            if ds.illumination is None:
                raise ConfigError("init_probes='file': the data file has no illumination; use init_probes='result'")
            return vals, {"init": "result", "init_result": cfg.init_result, "init_probes": "file", **extra}
        probes, gains = _membrane_normalised_probes(ds, res.probes, None if moments is None else moments[0])
        return vals, {"init": "result", "init_result": cfg.init_result, "init_probes": "result", "probes": probes,
                      "probe_gain": gains, **extra}
    stack = stxm_absorption(ds, common, sums=None if moments is None else moments[0])
    vals = fit_shape_and_amplitudes(stack, e, ill)
    if cfg.init == "epie":
        out, info = _epie_refine(ds, common, cfg, edge, vals, ill, sums=None if moments is None else moments[0])
        return out, info
    if cfg.init == "flat":
        for k in AMPLITUDES:
            vals[k] = np.full(common.shape, np.median(vals[k][ill]))
    # composition: a typical 40 electrons per V (between LiVO2 and LiVO3); refined by the phase data
    nv0 = np.asarray(n_v(jnp.asarray(np.clip(vals["b1"], 0, None)), edge))
    vals["n_other"] = nv0 * 20.0
    return vals, {"init": cfg.init}


def _membrane_normalised_probes(ds: Dataset, probes, sums: np.ndarray | None = None) -> tuple[np.ndarray | None, list[float] | None]:
    """Probes rescaled so that a membrane-only frame has the measured counts
    (:func:`diffxas.stxm.probes_at_membrane_counts`).

    The joint model's object is 1 on the membrane, so its probe is the beam times the
    membrane's transmission; a two-step result's probes are the bare beam. Without this a
    warm start's first steps push the membrane's absorption into the maps (noisy `tiny`:
    edge energy bias +0.62 eV, PE/Δμt -0.53 eV; with it ~0)."""
    return probes_at_membrane_counts(ds, probes, sums)


#: Incident-flux scatter (relative RMS beyond Poisson, membrane-only frames) above which
#: the joint solver warns: 0.3 % already raised the N_V error on `tiny` from 4.3 to 7.0 %
#: (docs/physics.md, "Incident-flux monitor").
FLUX_SCATTER_WARN = 0.003


def _check_flux(ds: Dataset, cfg: "JointConfig", scatter: float | None, info: dict) -> None:
    """Record the measured flux scatter (``info["flux_scatter"]``) and warn (the "diffxas"
    logger) when it is above :data:`FLUX_SCATTER_WARN` and nothing models it."""
    info["flux_scatter"] = scatter
    if scatter is None or scatter <= FLUX_SCATTER_WARN:
        return
    what = "after the monitor's correction" if ds.monitor is not None else "and the data have no monitor"
    fix = ("" if cfg.lr_scale > 0 else
           "; per-frame scales can absorb part of it (joint.lr_scale = 0.003)" if ds.monitor is not None else
           "; give the I0 readings in the CXI file (instrument_1/monitor_1/data) or fit per-frame scales (joint.lr_scale = 0.003)")
    logging.getLogger("diffxas").warning(
        f"joint: the membrane-only frames' counts scatter by {100 * scatter:.2g} % beyond Poisson noise "
        f"(incident-flux jitter) {what}{fix}")


#: The joint's "epie" start keeps the file's illumination for the energies it does not
#: refine only when the refined lowest-energy probe still overlaps it this much
#: (|<P_file, P_refined>| / (|P_file| |P_refined|)); see :func:`_epie_refine`.
FILE_PROBE_OVERLAP = 0.99


def _epie_refine(ds: Dataset, common: Grid, cfg: JointConfig, edge: VEdge, vals: dict, ill: np.ndarray,
                 sums: np.ndarray | None = None):
    """Sharpen the STXM start with a short ePIE at the lowest and highest energies.

    Shape parameters stay those of the STXM fit; per pixel, (a, b1) solve the two
    absorption values exactly (pre-edge amplitudes kept proportional to b1 with the
    particle's median ratios), and ``n_other`` follows from the phase at the lowest energy:
    n_other = -phi/(r_e lambda) - N_V (Z_V + f'_V). This gives the composition map a start
    from the data instead of a flat guess.
    """
    from .align import align_stack, illumination_map as _cov
    from .epie import EpieConfig, run_epie
    from .spectra import f1_v

    idx = [0, ds.n_energies - 1]
    sub = ds.select_energies(idx)
    e2 = np.asarray(sub.energies, np.float64)
    # the same background model as the joint: without it a strong background goes into the
    # start's maps and probe, and the joint does not get it out again (noisy `tiny`, 2
    # photons per pixel flat, joint "flat": Re[Ne]/N_V 9.11 -> 4.43, N_V 14.2 -> 8.1 %)
    er = run_epie(sub, EpieConfig(epochs=cfg.init_epochs, probe_update_start=5, decay_start=max(1, cfg.init_epochs * 3 // 4),
                                  probe_fwhm=cfg.probe_fwhm, background=cfg.background,
                                  background_start=min(5, cfg.init_epochs - 1)), common=common)
    st = align_stack(er.objects, er.grids, er.common, e2, register=True, coverage=_cov(er.probes, er.corners, er.grids, er.common))
    probe0 = np.asarray(er.probes[0])
    shift = np.zeros(2)
    overlap = None
    if ds.illumination is not None:
        # How far the short ePIE moved the file's probe at the lowest energy: a file's probe
        # is a guess, and a poor one (other focus size, no defocus phase) given to every other
        # energy broke the joint on the independent simulator (tests/test_foreign.py:
        # 450 nm flat guess for a 300 nm defocused probe, edge shift 0.12 eV for 3.0, N_V
        # 0.43x). Below FILE_PROBE_OVERLAP the refined probe replaces the guess everywhere.
        g = np.asarray(ds.illumination[idx[0]]).ravel()
        r = probe0.ravel()
        overlap = float(np.abs(np.vdot(g, r)) / max(np.linalg.norm(g) * np.linalg.norm(r), 1e-30))
    poor_guess = overlap is not None and overlap < FILE_PROBE_OVERLAP
    if ds.illumination is None or poor_guess:
        # From a guess, the refined probe and object drift together (the shift ambiguity,
        # probe.centred_probe): measured on an independent simulator (tests/test_foreign.py)
        # 1.1 px at 60 nm pixels, which moved every joint map by as much (N_V against the
        # truth +14 % / -23 % on the particle's two halves). Re-centre the probe and move the
        # start maps with it. The file's probe, when there is one, fixes the centre itself.
        from scipy import ndimage

        from .probe import centred_probe

        probe0, shift = centred_probe(probe0)
        scale = er.grids[0].pixel_size / common.pixel_size  # lowest energy's pixels -> common pixels (1 here)
        moved = [ndimage.shift(np.nan_to_num(np.asarray(x, np.float64)), (0, shift[0] * scale, shift[1] * scale),
                               order=1, mode="nearest") for x in (st.absorption, st.phase)]
        st = dataclasses.replace(st, absorption=moved[0], phase=moved[1])
    part = ill & (vals["b1"] > 0.3 * np.percentile(vals["b1"][ill], 99))
    r11 = float(np.median(vals["c11"][part] / vals["b1"][part])) if part.any() else 0.0
    r21 = float(np.median(vals["c21"][part] / vals["b1"][part])) if part.any() else 0.0
    dm = np.asarray(linear_design(jnp.asarray(e2), vals["b2"].flat[0], vals["b3"].flat[0], vals["c12"].flat[0],
                                  vals["c13"].flat[0], vals["c22"].flat[0], vals["c23"].flat[0]), np.float64)  # (2, 4)
    g = dm[:, 1] + r11 * dm[:, 2] + r21 * dm[:, 3]  # response of each energy to b1
    det = g[1] - g[0]
    A0, A1 = np.nan_to_num(st.absorption[0]), np.nan_to_num(st.absorption[1])
    b1 = (A1 - A0) / det
    a = A0 - b1 * g[0]
    out = dict(vals)
    out.update(a=a, b1=b1, c11=r11 * b1, c21=r21 * b1)
    nv = np.asarray(n_v(jnp.asarray(np.clip(b1, 0, None)), edge), np.float64)
    pr = XanesParams(**{k: jnp.asarray(np.broadcast_to(np.asarray(out[k], np.float64), common.shape), jnp.float32) for k in PARAM_NAMES})
    pr = XanesParams(**{**pr.as_dict(), "b1": jnp.ones(common.shape, jnp.float32)})
    f1 = np.asarray(f1_v(pr, jnp.asarray([e2[0]]), edge)[0], np.float64)
    phi0 = np.nan_to_num(st.phase[0])
    out["n_other"] = np.clip(-phi0 / (R_E * float(wavelength(e2[0]))) - nv * (edge.z + f1), 0.0, None)
    info = {"init": "epie", "init_epochs": cfg.init_epochs}
    if overlap is not None:
        info["file_probe_overlap"] = round(overlap, 5)
    if ds.illumination is not None and not poor_guess:
        probes = np.asarray(ds.illumination).copy()
        probes[idx[0]], probes[idx[1]] = er.probes[0], er.probes[1]
    else:
        # No probe in the file (the ePIE above started from its KB guess), or a poor one.
        # Every energy starts from the refined probe of the lowest energy: on each energy's
        # own pixel (lambda z / (M p)) the focus of achromatic (KB) optics, of size ~ lambda
        # / NA, spans the same number of pixels at every energy; the power is set from that
        # energy's membrane counts, as for a warm start's probes. One probe for all rather
        # than the nearer of the two: the two measured alike (noise-free `tiny`: PE/dmt
        # RMSE 0.226 vs 0.232 eV, edge 0.133 vs 0.130), and one probe cannot put a step
        # into the spectra where two ePIE solutions, each with its own sub-pixel
        # probe/object shift, would meet.
        probes, _ = _membrane_normalised_probes(ds, np.repeat(probe0[None], ds.n_energies, axis=0), sums)
        why = (f"the file's illumination is a poor guess: overlap {overlap:.3f} with the lowest energy's refined probe; "
               "that probe" if poor_guess else "the file has no illumination: the lowest energy's refined probe")
        info["probes_from"] = f"epie ({why}, re-centred, power from the membrane counts)"
        info["probe_recentred_px"] = [round(float(v), 4) for v in shift]
        if poor_guess:
            _log_warnings([f"the file's illumination is far from what ePIE refines from it at the lowest energy (overlap "
                           f"{overlap:.3f} < {FILE_PROBE_OVERLAP}): every energy starts from the refined probe instead"])
    info["probes"] = probes
    return out, info


def domain_index(path: str, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Domain index map (H, W) int from the /clusters/labels of results file ``path``:
    labels 0..D-1 as they are, unlabelled pixels (-1) -> D (one extra shared value)."""
    from .io import read_result, sha256_file

    res = read_result(path)
    if res.clusters is None or "labels" not in res.clusters:
        raise ConfigError(f"{path}: no /clusters/labels to take the domains from; run `diffxas cluster {path}` first")
    lab = np.asarray(res.clusters["labels"], np.int64)
    idx = _domain_index_from_labels(lab, shape, str(path))
    n = int(lab.max()) + 1 if (lab >= 0).any() else 0
    return idx, {"file": str(path), "sha256": sha256_file(path), "n_domains": n, "unlabelled_pixels": int((lab < 0).sum())}


def _domain_index_from_labels(lab: np.ndarray, shape, source: str) -> np.ndarray:
    """Labels 0..D-1 as they are, unlabelled (-1) -> D."""
    lab = np.asarray(lab, np.int64)
    if lab.shape != tuple(shape):
        raise ConfigError(f"{source}: domain map {lab.shape} differs from this dataset's map grid {tuple(shape)}")
    n = int(lab.max()) + 1 if (lab >= 0).any() else 0
    return np.where(lab >= 0, lab, n)


def relative_values(vals: dict, names, sample: np.ndarray) -> dict:
    """``vals`` with the amplitudes ``names`` replaced by their ratios to b1: on the sample's
    pixels (``sample``, where b1 is well above 0) the ratio itself, elsewhere the sample's
    median ratio (the data do not see the ratio where b1 = 0; a smooth continuation keeps
    the spatial prior from charging a jump at the particles' rims)."""
    if not names:
        return vals
    out = dict(vals)
    b1 = np.asarray(vals["b1"], np.float64)
    for k in names:
        v = np.broadcast_to(np.asarray(vals[k], np.float64), b1.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = v / b1
        smp = np.broadcast_to(sample, b1.shape) & np.isfinite(r)
        med = float(np.median(r[smp])) if smp.any() else 0.0
        out[k] = np.where(smp, r, med)
    return out


def make_params(vals: dict, cfg: JointConfig, sc: Scales, probes: np.ndarray, n_frames: int,
                domain: np.ndarray | None = None, basis: np.ndarray | None = None,
                background_shape: tuple | None = None) -> JointParams:
    """Trainable leaves from physical starting maps: per-pixel maps as they are, per-domain
    parameters as the median of each domain's sample pixels (the sample's median for a
    domain without any), shared ones as the median over the sample's pixels. With a probe
    ``basis`` (smooth probe model) the per-energy ``probes`` are fitted by
    :func:`fit_probe_model`."""
    raw = {}
    # shared and per-domain values: medians over the sample's pixels (edge jump above 10 %
    # of its 99th percentile), not over the membrane, where shape parameters mean nothing
    b1 = np.asarray(vals["b1"], np.float64)
    sample = b1 > 0.1 * np.percentile(b1, 99) if b1.ndim == 2 and np.any(b1 > 0) else np.ones(np.shape(b1), bool)
    vals = relative_values(vals, sc.relative, sample)
    for k in ALL_PARAMS:
        v = np.broadcast_to(np.asarray(vals[k], np.float64), np.shape(domain) if domain is not None else np.shape(vals[k]))
        smp = np.broadcast_to(sample, v.shape) if v.ndim == 2 and np.shape(sample) == v.shape else np.ones(v.shape, bool)
        if k in cfg.per_domain:
            n_dom = int(domain.max()) + 1
            med = float(np.median(v[smp])) if smp.any() else float(np.median(v))
            v = np.asarray([np.median(v[(domain == d) & smp]) if np.any((domain == d) & smp) else med for d in range(n_dom)])
        elif k not in cfg.per_pixel:
            v = np.asarray(np.median(v[smp]) if smp.any() else np.median(v))
        raw[k] = jnp.asarray(to_raw(k, v, sc), jnp.float32)
    gain = np.zeros(len(probes))
    if basis is not None:
        probes, gain = fit_probe_model(probes, basis)
    p = jnp.asarray(probes, jnp.complex64)
    return JointParams(raw=raw, probe_re=jnp.real(p), probe_im=jnp.imag(p), dpos=jnp.zeros((n_frames, 2), jnp.float32),
                       dscale=jnp.zeros((n_frames,), jnp.float32), probe_gain=jnp.asarray(gain, jnp.float32),
                       background=None if background_shape is None else jnp.zeros(background_shape, jnp.float32))


# ----------------------------------------------------------------------------- state / step


class JointState(eqx.Module):
    params: JointParams
    opt_state: Any
    step: jax.Array


def _save_checkpoint(path: str, state: JointState, history: dict):
    """Write the state and history (both to temporary files first, then both renamed: a
    failure leaves the previous checkpoint whole and no ``*.tmp``). A full disk skips this
    checkpoint with one warning naming the file (the run goes on; the previous checkpoint
    stays resumable); any other failure raises."""
    import contextlib

    from .errors import is_disk_full

    tmp, htmp = path + ".tmp", path + ".hist.tmp.npz"
    try:
        with open(tmp, "wb") as f:
            eqx.tree_serialise_leaves(f, state)
        np.savez(htmp, **{k: np.asarray(v) for k, v in history.items()})
        os.replace(tmp, path)
        os.replace(htmp, path + ".hist.npz")
    except Exception as e:
        for t in (tmp, htmp):
            with contextlib.suppress(OSError):
                os.unlink(t)
        if not is_disk_full(e):
            raise
        logging.getLogger("diffxas").warning(
            "%s: disk full: checkpoint at step %d not written (the previous one, if any, is kept); the run goes on",
            path, int(state.step))


def _load_checkpoint(path: str, like: JointState):
    with open(path, "rb") as f:
        state = eqx.tree_deserialise_leaves(f, like)
    h = dict(np.load(path + ".hist.npz")) if os.path.exists(path + ".hist.npz") else {}
    return state, {k: list(v) for k, v in h.items()}


class JointSolver(eqx.Module):
    """A prepared joint problem: ``init`` -> state, ``step(state)`` -> (state, loss) (one jit region).

    Pure optax-style pair: the state (parameters, optimiser state, step counter) is explicit,
    so scripts, benchmarks and checkpoints handle it directly.
    """

    prob: Problem
    opt: Any = eqx.field(static=True)
    static: tuple = eqx.field(static=True)
    batch: int = eqx.field(static=True)
    n_frames: int = eqx.field(static=True)
    seed: int = eqx.field(static=True)

    def init(self, params: JointParams) -> JointState:
        return JointState(params=params, opt_state=self.opt.init(params), step=jnp.asarray(0, jnp.int32))

    def loss(self, params: JointParams) -> jax.Array:
        return total_loss(params, self.prob, None, self.static)

    @eqx.filter_jit
    def step(self, state: JointState):
        if self.batch == self.n_frames:
            idx = None
        else:
            key = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.step)
            idx = jax.random.choice(key, self.n_frames, (self.batch,), replace=False)
        loss, grads = eqx.filter_value_and_grad(total_loss)(state.params, self.prob, idx, self.static)
        updates, opt_state = self.opt.update(grads, state.opt_state, state.params)
        params = eqx.apply_updates(state.params, updates)
        return JointState(params=params, opt_state=opt_state, step=state.step + 1), loss


def prepare_joint(ds: Dataset, cfg: JointConfig = JointConfig(), n_shards: int = 1, domain_labels=None,
                  common: Grid | None = None, place_frames=None):
    """Build the problem, initial parameters and solver for ``ds``.

    ``n_shards``: number of devices the frames will be split over (the chunk size is
    rounded to a multiple of it; see :mod:`diffxas.parallel`).

    The frames go to the device (:class:`JointSolver`) or are streamed from ``ds.frames``
    chunk by chunk every step (:class:`diffxas.stream.StreamSolver`, same interface)
    according to ``cfg.memory`` (:func:`diffxas.stream.plan_memory`, one log line).
    ``ds.frames`` may be a lazy source (:func:`diffxas.io.open_cxi`): it is then read in
    ranges, never all at once.

    Returns ``(solver, state, context)`` where ``context`` holds the grids, the spectral
    edge model, the initialisation record (for :func:`make_result`) and the memory plan
    (``context["memory"]``).
    """
    from .stream import StreamSolver, frames_source, plan_memory

    e = np.asarray(ds.energies, np.float64)
    edge = VEdge.for_energies(cfg.element, e, cfg.table)  # fails at once on a wrong element
    common = ds.common_grid() if common is None else common
    pre = Scales(amp=1.0, n_other=1.0, e_mid=float(0.5 * (e.min() + e.max())), e_half=float(0.5 * (e.max() - e.min()) + 1.0))
    nchunk, chunk_n = chunk_layout(ds.n_frames, cfg.chunk_size, n_shards)
    plan = plan_memory(cfg, ds.n_frames, nchunk, chunk_n, ds.n_energies, ds.frame_size, common.shape,
                       energy_grids(ds, common)[0].shape, source=frames_source(ds.frames), n_shards=n_shards, emit=False)
    prob, common, grids = build_problem(ds, cfg, edge, pre, common, n_shards=n_shards, frames_on_device=plan.mode == "device",
                                        place_frames=place_frames)
    moments = frame_moments(ds)  # one pass over the frames for the bright field and the DPC phase
    # a probe guess in the file at another power than the frames' (another normalisation,
    # frames not in counts) is put at the counts: the joint is sensitive to it
    ds, power = illumination_at_counts(ds, moments[0])
    quantum = check_counts(ds)  # frames that are counts times a constant: one warning
    check_direct_beam(ds)  # a beamstop: one warning
    check_saturation(ds)  # clipped or flagged pixels: one warning
    vals, init_info = init_params(ds, prob, common, cfg, edge, moments)
    if power is not None:
        init_info["illumination_power"] = power
    if quantum is not None:
        init_info["count_quantum"] = quantum
    ill = np.asarray(prob.illuminated)
    amp = float(np.percentile(np.abs(vals["b1"][ill]), 95)) if ill.any() else 0.05
    amp = amp if amp > 1e-6 else 0.05
    lam0 = float(wavelength(edge.edge_ev))
    sc = Scales(amp=amp, n_other=float(amp / (R_E * lam0 * float(edge.delta_f2)) * 20.0), e_mid=pre.e_mid, e_half=pre.e_half,
                relative=tuple(k for k in RELATIVE_OK if k in cfg.relative and "b1" in cfg.per_pixel))
    prob = eqx.tree_at(lambda p: p.scales, prob, sc)
    # The empty reference region pins the maps' zero (amplitudes 0 there). It is found on the
    # low-resolution phase from the frames' centres of mass (DPC, diffxas.stxm.dpc_phase),
    # which does not see the incident flux. Earlier sources failed silently: the ePIE-sharpened
    # b1 was too noisy on the membrane (noisy `tiny`: no pixel left, so nothing pinned the
    # offset and `a` took the membrane's absorption: PE/dmt RMSE 0.455 vs 0.177 eV), and the
    # bright-field (STXM) b1 that replaced it lost the whole region to a per-frame flux jitter
    # of 1 % (`tiny`: 132 pixels without jitter, 0 with 1-10 %); the DPC phase gives 101-106
    # pixels at 0-10 % jitter on `tiny`, 965 on `small` (STXM: 1086), none on the particle.
    empty = empty_region(-dpc_phase(ds, common, moments=moments), ill)
    init_info["empty_pixels"] = int(empty.sum())
    _check_flux(ds, cfg, flux_scatter(ds, empty, common, sums=moments[0]), init_info)
    if empty.any():
        prob = eqx.tree_at(lambda p: p.empty, prob, jnp.asarray(empty, jnp.float32))
    else:
        # nothing pins the maps' zero: measured on `tiny` scanned only 0.5 um wide (inside
        # the particle), edge energy 0.67 eV and PE/dmt 1.31 eV against 0.21 / 0.13 eV
        _log_warnings([NO_EMPTY_REGION])
    probes_init = init_info.pop("probes", None)
    if probes_init is not None and np.shape(probes_init) == (ds.n_energies, ds.frame_size, ds.frame_size):
        probes0 = np.asarray(probes_init)
    else:
        if ds.illumination is None:  # the two-step's start too: a KB focus, power from the counts
            from .epie import initial_probes

            probes0, _ = _membrane_normalised_probes(ds, initial_probes(ds, grids, cfg.probe_fwhm), moments[0])
            fwhm = f"{cfg.probe_fwhm * 1e9:.4g} nm"
            init_info["probes_from"] = f"KB focus of {fwhm} FWHM (the file has no illumination; epie.initial_probes)"
            _log_warnings([f"the data file has no illumination and init = {cfg.init!r} starts from a {fwhm} KB focus "
                           "guess; init = 'epie' (the default) or a warm start (--init) refine the probe first"])
        else:
            probes0 = np.asarray(ds.illumination)
    domain = None
    if cfg.per_domain:
        if cfg.domains == "auto":
            if domain_labels is None:
                raise ConfigError("domains='auto' needs the first pass: run it through reconstruct_joint (or pass domain_labels)")
            lab, rec = domain_labels
            domain, init_info["domains"] = _domain_index_from_labels(np.asarray(lab), common.shape, "auto (first pass)"), dict(rec)
            init_info["domains"]["n_domains"] = int(np.max(lab)) + 1 if np.any(np.asarray(lab) >= 0) else 0
        else:
            domain, init_info["domains"] = domain_index(cfg.domains, common.shape)
        prob = eqx.tree_at(lambda p: p.domain, prob, jnp.asarray(domain, jnp.int32), is_leaf=lambda x: x is None)
    basis = None
    if cfg.probe_model == "smooth":
        basis = probe_basis(e, min(cfg.probe_degree, ds.n_energies - 1))
        prob = eqx.tree_at(lambda p: p.probe_basis, prob, jnp.asarray(basis), is_leaf=lambda x: x is None)
    bg0 = None
    bg_result = init_info.pop("background_result", None)
    if cfg.background != "none":
        from .background import as_maps, initial_background, mean_frames, per_energy, summary

        if bg_result is not None:  # a warm start from a result that fitted one: its level, in this mode
            m = ds.frame_size
            bg0 = (as_maps(bg_result, ds.n_energies, m) if cfg.background == "map" else
                   per_energy(bg_result))
            bg0 = np.maximum(np.asarray(bg0, np.float32), FLOOR)
            init_info["background_from"] = "the warm start's results file"
        else:
            bg0 = initial_background(mean_frames(ds), np.asarray(ds.mask), cfg.background)
            init_info["background_from"] = "the darkest 4x4 detector block of each energy's mean frame"
        init_info["background_start"] = summary(bg0)
        bg0 = np.fft.ifftshift(bg0, axes=(-2, -1)) if bg0.ndim == 3 else bg0  # the frames' layout here
        prob = eqx.tree_at(lambda p: p.background0, prob, jnp.asarray(bg0, jnp.float32), is_leaf=lambda x: x is None)
    params = make_params(vals, cfg, sc, probes0, ds.n_frames, domain, basis,
                         background_shape=None if bg0 is None else np.shape(bg0))
    if basis is not None:
        p_fit = np.asarray(probes(params, prob))
        init_info["probe_model_fit"] = float(np.sqrt(np.sum(np.abs(p_fit - probes0) ** 2) / max(np.sum(np.abs(probes0) ** 2), 1e-30)))
    probe_scale = float(np.sqrt(np.mean(np.abs(probes0) ** 2)))
    opt = make_optimizer(params, cfg, probe_scale)
    n_frames = ds.n_frames
    bs = n_frames if cfg.batch_size is None else min(cfg.batch_size, n_frames)
    chunk = min(cfg.chunk_size, bs)
    tv = float(cfg.tv_weight)
    if cfg.prior == "tv":
        pw, wmaps = prior_weights(params, prob, cfg, edge)
        init_info["prior_weights"] = pw
        zero = np.zeros(common.shape, np.float32)
        prob = eqx.tree_at(lambda p: p.tv_scale, prob,
                           jnp.asarray(np.stack([wmaps.get(k, zero) for k in ALL_PARAMS]), jnp.float32))
        tv = 1.0 if any(v["weight"] > 0 for v in pw.values()) else 0.0
    static = (cfg.loss, chunk, tv, float(n_frames))
    if plan.mode == "stream":
        solver = StreamSolver(prob, opt, static, batch=bs, n_frames=n_frames, seed=cfg.seed, frames=ds.frames,
                              host_cache=plan.host_cache)
    else:
        solver = JointSolver(prob=prob, opt=opt, static=static, batch=bs, n_frames=n_frames, seed=cfg.seed)
    ctx = {"common": common, "grids": grids, "edge": edge, "init_info": init_info, "memory": plan.to_dict()}
    plan.log()  # after the initialisation has read (and validated) the frames: a bad file fails before this line
    return solver, solver.init(params), ctx


def lbfgs_polish(solver: JointSolver, state: JointState, n: int, history: dict | None = None, norm: float = 1.0,
                 t_start: float | None = None) -> JointState:
    """``n`` L-BFGS iterations (optax.lbfgs, zoom line search) on the sample parameters.

    Probes and positions stay at the Adam endpoint (their scales differ from the maps' by
    orders of magnitude, which a single curvature model handles badly). One jit region
    per iteration; the loss is logged under ``history["lbfgs_loss"]``.
    """
    params = state.params

    def f(raw):
        return solver.loss(eqx.tree_at(lambda p: p.raw, params, raw))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(f)

    @jax.jit
    def it(raw, st):
        v, g = value_and_grad(raw, state=st)
        u, st = opt.update(g, st, raw, value=v, grad=g, value_fn=f)
        return optax.apply_updates(raw, u), st, v

    raw, st = params.raw, opt.init(params.raw)
    for i in range(n):
        raw, st, v = it(raw, st)
        if history is not None:
            history.setdefault("lbfgs_loss", []).append(float(v) / norm)
    if history is not None and t_start is not None:
        history["lbfgs_time"] = [time.perf_counter() - t_start]
    return eqx.tree_at(lambda s_: s_.params, state, eqx.tree_at(lambda p: p.raw, params, raw))


HOLDOUT_FIELDS = ("frames", "frame_id", "energy_index", "corner", "frac", "frame_energy", "log_monitor")


def heldout_problem(prob: Problem, held: Dataset, cfg: JointConfig, common: Grid) -> Problem:
    """``prob`` with the frames of ``held`` (on the same common grid) in place of its own:
    the model (maps, probes, grids, empty region, scales) stays the fit's."""
    h, _, _ = build_problem(held, cfg, prob.edge, prob.scales, common)
    return eqx.tree_at(lambda p: tuple(getattr(p, f) for f in HOLDOUT_FIELDS), prob,
                       tuple(getattr(h, f) for f in HOLDOUT_FIELDS), is_leaf=lambda x: x is None)


def heldout_loss(params: JointParams, hold: Problem, loss_name: str, chunk: int) -> jax.Array:
    """Data loss of the held-out frames in ``hold`` (:func:`heldout_problem`) under the
    fitted ``params``, at their nominal positions and unit scale (times their monitor
    reading): the per-frame corrections exist only for the fitted frames."""
    n = int(hold.frame_energy.shape[0])
    p = eqx.tree_at(lambda q: (q.dpos, q.dscale), params,
                    (jnp.zeros((n, 2), params.dpos.dtype), jnp.zeros((n,), params.dscale.dtype)))
    return data_loss(p, hold, None, loss_name, chunk)


def reconstruct_joint(ds: Dataset, cfg: JointConfig = JointConfig(), progress: bool = False,
                      checkpoint: str | None = None, resume: bool = False, callback=None,
                      n_shards: int = 1, shard=None, _domain_labels=None, place_frames=None) -> Result:
    """Run the joint solver on ``ds`` and return a :class:`Result` (maps, stacks, probes, history).

    ``checkpoint``: file to save the state to every ``cfg.checkpoint_every`` steps (atomic);
    with ``resume=True`` an existing checkpoint is loaded and the run continues from it
    (mini-batches depend only on the seed and the step number, so a resumed run follows
    the uninterrupted one). ``n_shards``/``shard``: multi-device hook used by
    :func:`diffxas.parallel.reconstruct_joint_sharded` (``shard(solver, state)`` returns
    the sharded pair).
    """
    from .checks import check_dataset, check_reference_energy

    ds = check_dataset(ds)  # can these data support maps? (refuse, or drop bad frames; once per dataset)
    check_reference_energy(cfg.reference_energy, ds.energies, "joint.reference_energy")
    if cfg.per_domain and cfg.domains == "auto" and _domain_labels is None:
        return _reconstruct_two_pass(ds, cfg, progress, checkpoint, resume, callback, n_shards, shard)
    t_start = time.perf_counter()
    hold = None
    if cfg.holdout > 0:
        if n_shards > 1:
            raise ConfigError("holdout runs on one device: set holdout=0 for a sharded run")
        held = ds.holdout_mask(cfg.holdout)
        fit_ds, held_ds = ds.subset(~held), ds.subset(held)
        # the full scan's grid: the held-out frames must lie on the fitted object
        solver, state, ctx = prepare_joint(fit_ds, cfg, n_shards=n_shards, domain_labels=_domain_labels,
                                           common=ds.common_grid())
        if ctx["memory"]["mode"] != "device":
            raise ConfigError("holdout needs the frames on the device (memory='device'); the streaming mode has no "
                              "held-out evaluation")
        hold = heldout_problem(solver.prob, held_ds, cfg, ctx["common"])
        hold_norm = float(held_ds.n_frames * ds.frame_size ** 2)
        hold_fn = eqx.filter_jit(heldout_loss)
        ctx["init_info"]["holdout"] = {"fraction": float(cfg.holdout), "heldout_frames": int(held_ds.n_frames),
                                       "fit_frames": int(fit_ds.n_frames)}
        ds = fit_ds
    else:
        solver, state, ctx = prepare_joint(ds, cfg, n_shards=n_shards, domain_labels=_domain_labels,
                                           place_frames=place_frames)
    # after prepare_joint: bad input gets its one error line alone; a two-pass run's first
    # pass has the same per_pixel and has logged it already
    if _domain_labels is None:
        _log_warnings(energy_count_warnings(ds.n_energies, cfg.per_pixel))
    history: dict[str, list] = {"step": [], "loss": [], "time": []}
    if hold is not None:
        history["heldout_loss"] = []
    resumed_from = 0
    if checkpoint and resume and os.path.exists(checkpoint):
        state, history = _load_checkpoint(checkpoint, state)
        if hold is not None:
            history.setdefault("heldout_loss", [])
        resumed_from = int(state.step)
    if shard is not None and ctx["memory"]["mode"] == "device":  # streaming runs on one device (n_shards == 1)
        solver, state = shard(solver, state)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=int(state.step), desc="joint", unit="step")
    t_compile = None
    norm = float(ds.n_frames * ds.frame_size ** 2)
    for s in range(int(state.step), cfg.steps):
        t0 = time.perf_counter()
        state, loss = solver.step(state)
        if t_compile is None:
            jax.block_until_ready(loss)
            t_compile = time.perf_counter() - t0
        if (s + 1) % cfg.log_every == 0 or s == cfg.steps - 1 or s == 0:
            lv = float(loss)
            if not math.isfinite(lv):
                raise DivergenceError(f"joint solver diverged at step {s + 1}: loss is {lv}")
            history["step"].append(s + 1)
            history["loss"].append(lv / norm)
            if hold is not None:
                history["heldout_loss"].append(float(hold_fn(state.params, hold, cfg.loss, solver.static[1])) / hold_norm)
            history["time"].append(time.perf_counter() - t_start)
            if bar is not None:
                bar.set_postfix(loss=f"{lv / norm:.4g}", **({"heldout": f"{history['heldout_loss'][-1]:.4g}"} if hold is not None else {}))
            if callback is not None:
                callback(s + 1, lv / norm, state)
        if bar is not None:
            bar.update(1)
        if checkpoint and (s + 1) % cfg.checkpoint_every == 0 and jax.process_index() == 0:
            _save_checkpoint(checkpoint, state, history)
    if bar is not None:
        bar.close()
    if cfg.lbfgs_steps > 0:
        if ctx["memory"]["mode"] != "device":
            raise ConfigError("lbfgs_steps needs the frames on the device (memory='device'): its line search evaluates the full loss many times")
        state = lbfgs_polish(solver, state, cfg.lbfgs_steps, history, norm, t_start)
    if hold is not None:  # after the last step (and the L-BFGS polish, if any)
        ctx["init_info"]["holdout"]["final_heldout_loss"] = float(hold_fn(state.params, hold, cfg.loss, solver.static[1])) / hold_norm
    wall = time.perf_counter() - t_start
    info = dict(ctx["init_info"], resumed_from_step=resumed_from)
    result = make_result(ds, state.params, solver.prob, ctx["common"], ctx["grids"], cfg, ctx["edge"], history, info,
                         timing={"wall_s": wall, "compile_s": t_compile or 0.0})
    result.config = dict(result.config or {}, memory=ctx["memory"])  # the mode that ran and why
    return result


def _reconstruct_two_pass(ds, cfg, progress, checkpoint, resume, callback, n_shards, shard) -> Result:
    """``domains="auto"``: a first pass without per-domain parameters, k-means of its maps
    (default :class:`diffxas.clustering.ClusterConfig`, k by elbow), then the second pass
    with the per-domain parameters on those domains. With a checkpoint, the first pass's
    result is kept next to it (``CHECKPOINT.pass1.h5``) so ``resume`` does not redo it."""
    from .clustering import ClusterConfig, cluster_maps
    from .io import read_result, write_result

    t0 = time.perf_counter()
    p1_file = checkpoint + ".pass1.h5" if checkpoint else None
    if p1_file and resume and os.path.exists(p1_file):
        first = read_result(p1_file)
    else:
        first = reconstruct_joint(ds, dataclasses.replace(cfg, per_domain=(), domains=None), progress=progress,
                                  checkpoint=checkpoint + ".pass1" if checkpoint else None, resume=resume,
                                  callback=callback, n_shards=n_shards, shard=shard)
        if p1_file:
            write_result(p1_file, first)
    ccfg = ClusterConfig()
    cl = cluster_maps(first.maps, ccfg)
    rec = {"file": "auto (first pass)", "first_pass_steps": cfg.steps, "first_pass_wall_s": float(first.history["wall_s"][0]),
           "cluster": {"k": int(np.max(cl["labels"])) + 1, "features": list(ccfg.features)},
           "unlabelled_pixels": int((np.asarray(cl["labels"]) < 0).sum())}
    res = reconstruct_joint(ds, cfg, progress=progress, checkpoint=checkpoint, resume=resume, callback=callback,
                            n_shards=n_shards, shard=shard, _domain_labels=(cl["labels"], rec))
    res.history["wall_s"] = np.asarray([time.perf_counter() - t0])  # both passes
    res.history["first_pass_wall_s"] = np.asarray([rec["first_pass_wall_s"]])
    return res


# ----------------------------------------------------------------------------- maps / result


def object_information_joint(params: JointParams, prob: Problem) -> jax.Array:
    """Per-pixel object-space Fisher blocks (K, 3, H, W) on the common grid at ``params``.

    Model intensities only (no data needed); the final probes, position corrections and
    background (a pixel's counts are Poisson of ``I + b``, so the background lowers the
    information where it is comparable to the coherent signal); see
    :mod:`diffxas.uncertainty` for the formula and the approximation.
    """
    obj = model_objects(params, prob)
    phat = jnp.fft.fft2(probes(params, prob))
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    fid = flat(prob.frame_id)
    ok = fid >= 0
    frac = flat(prob.frac) + params.dpos[jnp.where(ok, fid, 0)]
    bg = background_counts(params, prob)
    if bg is not None:
        bg = jnp.broadcast_to(bg[:, None, None] if bg.ndim == 1 else bg, prob.weight.shape)
    info = object_information(obj, phat, flat(prob.energy_index), flat(prob.corner), frac, prob.weight, ok, bg)
    return to_common_grid(info, prob.ry, prob.rx)


def map_std_joint(params: JointParams, prob: Problem, cfg: JointConfig, edge: VEdge, reference_energy: float) -> dict[str, np.ndarray]:
    """Standard-error maps (``/maps/*_std``) of the joint model's maps: Fisher information of
    the per-pixel parameters (``cfg.per_pixel``) with the probes, the positions, the shared
    parameters and the neighbouring pixels held fixed (:mod:`diffxas.uncertainty`).
    Per-domain parameters and the per-frame scales are held fixed too. The spatial prior
    is not in it: these are the errors of the per-pixel likelihood, an upper bound for the
    prior-regularised maps (measured on noisy ``tiny``, default TV prior: the scatter
    between two noise realisations is 0.5-0.9 of them).

    Computed at every run: one pass over the frames with two FFTs each (a step costs
    about four per frame, a run hundreds of steps), so there is no option to skip it;
    its time is recorded in the history (``uncertainty_s``; on ``tiny``, 4 s of a 27 s
    run on 2 CPU cores, mostly compilation).
    """
    info = eqx.filter_jit(object_information_joint)(params, prob)
    p = physical(params, prob.scales, 1.0 - prob.empty, prob.domain)
    names = [k for k in ALL_PARAMS if k in cfg.per_pixel]
    if not names:
        return {}
    return map_std(p, prob.energies, edge, np.asarray(info), names, reference_energy)


def plausibility_warnings(full: dict[str, np.ndarray], pre_edge_norm: np.ndarray, valid: np.ndarray) -> list[str]:
    """Signs that the fitted spectral model left physics (one line each; empty = none seen).

    The joint's widths are bounded below only (softplus), so a collapse shows as widths
    beyond the two-step fit's bounds (:class:`diffxas.fitting.FitConfig`: pre-edge widths
    <= 8 eV, edge width <= 15 eV), and as a negative pre-edge peak area. Seen at 1e4
    photons per frame on `tiny` before the per-energy probe gains of session 12
    (experiments/README.md): c23 = 12 eV and median PE/dmt -21 eV. Medians over the valid
    pixels (shared parameters are one value anyway).
    """
    from .fitting import FitConfig

    fc = FitConfig()
    v = np.asarray(valid, bool)
    out = []
    if not v.any():
        return ["no valid pixel (no edge jump above valid_jump_fraction): the maps are empty"]
    med = {k: float(np.median(np.asarray(full[k])[v])) for k in ("b3", "c13", "c23") if k in full}
    for k, hi, what in (("c13", fc.width_bounds[1], "first pre-edge peak width"),
                        ("c23", fc.width_bounds[1], "second pre-edge peak width"),
                        ("b3", fc.b3_bounds[1], "edge width")):
        if k in med and med[k] > hi:
            out.append(f"{what} {k} = {med[k]:.3g} eV (median) is above {hi:g} eV, the two-step fit's bound: "
                       "the spectral model has likely collapsed (too few photons or too few energies?)")
    pe = np.asarray(pre_edge_norm, np.float64)[v]
    pe = pe[np.isfinite(pe)]
    if pe.size and float(np.median(pe)) < 0:
        out.append(f"median PE/dmt is negative ({float(np.median(pe)):.3g} eV): a negative pre-edge peak area is not physical")
    return out


def _log_warnings(warnings: list[str]) -> None:
    """One ``joint: warning: ...`` log line per warning (stderr through the CLI)."""
    for w in warnings:
        logging.getLogger("diffxas").warning(f"joint: warning: {w}")


def energy_count_warnings(n_energies: int, per_pixel) -> list[str]:
    """A warning when fewer energies are measured than the spectral model has absorption
    parameters in every pixel (``per_pixel`` minus ``n_other``, which the phase sets): such
    maps are set by the start, the shared parameters and the prior more than by the data.
    Not an error: with few per-pixel parameters, or for tests and benchmarks on two to four
    energies, the solver still runs. The two-step fit refuses fewer than 6 energies
    (:func:`diffxas.fitting.fit_stack`), its number of per-pixel parameters."""
    names = [k for k in PARAM_NAMES if k in per_pixel]
    if n_energies >= len(names):
        return []
    return [f"{n_energies} energ{'y' if n_energies == 1 else 'ies'} for {len(names)} per-pixel spectral parameters ({', '.join(names)}): "
            "the maps are not determined by the data; measure more energies or share parameters (JointConfig.per_pixel)"]


def make_result(ds: Dataset, params: JointParams, prob: Problem, common: Grid, grids, cfg: JointConfig, edge: VEdge,
                history, init_info, timing) -> Result:
    p = physical(params, prob.scales, 1.0 - prob.empty, prob.domain)
    shape = common.shape
    full = {k: np.broadcast_to(np.asarray(getattr(p, k), np.float64), shape).copy() for k in ALL_PARAMS}
    e_ref = float(cfg.reference_energy) if cfg.reference_energy is not None else float(np.asarray(ds.energies)[0])
    A, phi = model_fields(params, prob)
    A = np.asarray(A, np.float64)
    phi = np.asarray(phi, np.float64)
    pfull = XanesParams(**{k: jnp.asarray(v, jnp.float32) for k, v in full.items()})
    phi_ref = np.asarray(phase(pfull, jnp.asarray([e_ref]), edge)[0], np.float64)
    ill = np.asarray(prob.illuminated)
    b1 = full["b1"]
    thr = cfg.valid_jump_fraction * (np.percentile(b1[ill], 99) if ill.any() else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = {
            "edge_energy": full["b2"], "edge_width": full["b3"], "edge_jump": b1,
            "pre_edge": np.asarray(pre_edge(pfull), np.float64), "pre_edge_norm": np.asarray(pre_edge_norm(pfull), np.float64),
            "n_v": np.asarray(n_v(jnp.asarray(b1), edge), np.float64),
            "ne_eff_per_nv": np.asarray(ne_eff_per_nv(jnp.asarray(phi_ref), jnp.asarray(b1, jnp.float32), e_ref, edge), np.float64),
        }
    valid = ill & (b1 > thr) & np.all([np.isfinite(v) for v in m.values()], axis=0)
    t_std = time.perf_counter()
    std = {k: np.where(valid, v, np.nan) for k, v in map_std_joint(params, prob, cfg, edge, e_ref).items()}
    timing = dict(timing, uncertainty_s=time.perf_counter() - t_std)
    maps = ChemMaps(**{k: np.where(valid, v, np.nan) for k, v in m.items()}, valid=valid.astype(np.uint8), std=std,
                    pixel_size=common.pixel_size, origin=common.origin, reference_energy=e_ref,
                    delta_f2_v=float(edge.delta_f2), scattering_table=cfg.table, absorber=edge.element,
                    extra={**{k: v for k, v in full.items()}, "illuminated": ill.astype(np.float64)})
    probes_k = np.asarray(probes(params, prob), np.complex64)
    hist = {k: np.asarray(v, np.float64) for k, v in history.items()}
    hist["wall_s"] = np.asarray([timing["wall_s"]])
    hist["compile_s"] = np.asarray([timing["compile_s"]])
    hist["uncertainty_s"] = np.asarray([timing["uncertainty_s"]])
    warnings = plausibility_warnings(full, m["pre_edge_norm"], valid)
    _log_warnings(warnings)
    # said at the start already (reconstruct_joint); recorded here with the others
    warnings = energy_count_warnings(ds.n_energies, cfg.per_pixel) + warnings
    config = {"joint": cfg.to_dict(), "init": {k: v for k, v in init_info.items() if k != "probes"},
              "amp_scale": prob.scales.amp, "grid": {"pixel_size": common.pixel_size, "shape": list(shape), "origin": list(common.origin)},
              "warnings": warnings}
    bg = background_counts(params, prob)
    if bg is not None:
        bg = np.asarray(bg, np.float32)
        bg = np.fft.fftshift(bg, axes=(-2, -1)) if bg.ndim == 3 else bg  # the data file's layout
        from .background import describe, summary

        config["background"] = summary(bg)
        logging.getLogger("diffxas").info(describe(bg, "joint"))
    return Result(method="joint", maps=maps, energies=np.asarray(ds.energies, np.float64), absorption=A, phase=phi,
                  probes=probes_k, probe_pixel_size=np.asarray(ds.pixel_sizes()), history=hist, config=config,
                  background=bg)
