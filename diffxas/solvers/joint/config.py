"""Configuration of the joint solver (:class:`JointConfig`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from diffxas.errors import ConfigError
from diffxas.physics.spectra import PARAM_NAMES

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
    # incoherent detector background per energy (diffxas.physics.background): "none" (the seed's
    # model), "flat" (one level per energy) or "map" (one level per energy and detector
    # pixel, for the scattering around the direct beam). Trained from step 0 in log units
    # (lr_background per step) from the darkest detector block's mean counts. The
    # measurements behind the choice of default: docs/physics.md, "Detector background".
    background: str = "none"
    lr_background: float = 0.05
    # convergence criterion (issue #27, time to solution): 0 = off, the run takes ``steps``
    # steps (the default). tol > 0: stop when the mean loss of the last ``tol_window`` steps
    # is within a relative ``tol`` of the mean of the ``tol_window`` steps before it, checked
    # only once every parameter group is free (after shape_start, probe_start and, with
    # lr_scale > 0, steps // 2) plus two windows; the schedules still run over ``steps``.
    # Steps taken: history["steps_taken"] (diffxas.solvers.joint.solver.Convergence).
    # Off by default: no measurement yet shows the same map errors in fewer steps
    # (docs/scaling.md, "Start-up and time to solution").
    tol: float = 0.0
    tol_window: int = 20

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
        from diffxas.physics.background import check_mode

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
        from diffxas.physics.scattering import check_element

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
