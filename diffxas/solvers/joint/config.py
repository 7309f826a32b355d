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
    """Configuration of the joint solver (frozen, validated). Energies in eV, lengths in m,
    learning rates in the parameters' own units per Adam step.

    The measurements behind the defaults are in docs/results.md ("Joint configuration notes");
    the physics in docs/physics.md.

    Attributes:
        steps: Adam steps (300: the setting the measurements in docs/results.md use).
        loss: data term, "amplitude" (squared error of the amplitudes, robust, the default)
            or "poisson" (negative log-likelihood of the counts).
        batch_size: frames per step; None = all frames (full batch, deterministic).
        chunk_size: frames evaluated at once inside a step (memory, not the result: about
            13 GiB for the seed-size step at 512, 9 GiB at 64; docs/scaling.md).
        lr_amp: learning rate of the amplitude parameters (a, b1, c11, c21, n_other).
        lr_energy: learning rate of the shape parameters (edge and peak positions and
            widths), from ``shape_start``.
        lr_probe: learning rate of the probes (relative), from ``probe_start``.
        lr_positions: learning rate of per-frame position corrections (pixels); 0 = the
            file's positions are used as they are (the default).
        lr_scale: learning rate of a per-frame intensity scale (incident-flux
            fluctuations), log units per step; 0 = off.
        probe_start: step from which the probes are refined (the start probe is held for
            the first 20 steps while the maps take shape).
        lr_gain: learning rate of a per-energy probe amplitude gain exp(g_k), log units
            per step, trained from step 0 (both probe models); 0.01 makes the maps
            insensitive to a start probe at the wrong power; 0 = off.
        shape_start: step from which the shape parameters (``lr_energy``) move; before it
            only the amplitudes, the composition and the probes do; None = a quarter of
            ``steps``.
        per_pixel: parameters with one value per map pixel; the rest are shared by all
            pixels (default: the pre-edge positions and widths shared, as in the
            recommended two-step fit, like-for-like).
        per_domain: parameters with one value per chemical domain (domains from
            ``domains``); pixels without a label share one extra value; () = none.
        domains: where the domains of ``per_domain`` come from: a results file with
            /clusters/labels on this dataset's map grid, or "auto" (a first pass without
            ``per_domain``, clustered with the default ClusterConfig, then the second pass).
        prior: spatial prior on the per-pixel maps: "tv" (total variation, weights from
            the noise level, never from a truth; docs/physics.md, "Spatial prior") or "none".
        prior_strength: TV threshold in standard errors (0.5, chosen on noisy `tiny`).
        tv_weight: one explicit TV weight for every raw map, in units of the data loss
            (for sweeps; needs ``prior = "none"``); 0 = off.
        init: start of the maps: "epie" (a short ePIE per energy, the default), "stxm"
            (bright field and DPC), "flat" or "result" (a warm start from ``init_result``).
        init_result: results file of a warm start (``init = "result"``, ``--init``).
        init_probes: probes of a warm start: "result" (the results file's, rescaled to the
            membrane counts), "file" (the data file's illumination) or "auto" (the file's
            when it has one, else the result's: the file's gave the better pre-edge maps).
        init_epochs: ePIE epochs of the "epie" start (40).
        probe_fwhm: FWHM (m) of the KB focus guessed when the data file has no
            illumination (as the two-step's ``epie.probe_fwhm``); refined by the "epie" start.
        reference_energy: energy (eV) of the Re[N_e^eff]/N_V map; None = the lowest.
        valid_jump_fraction: pixels whose edge jump is below this fraction of the
            99th-percentile jump are not valid (no vanadium to speak of there).
        seed: seed of the mini-batch order (a resumed run follows the uninterrupted one).
        log_every: steps between loss records (and progress updates).
        checkpoint_every: steps between checkpoints.
        element: absorber (chemical symbol) whose K edge the data scan; "V" is the seed's;
            any element with a K edge in ``table`` works.
        table: scattering-factor table for N_V and Re[N_e^eff] ("chantler").
        lr_decay: final factor of the cosine learning-rate decay over ``steps`` (0.1).
        memory: frames on the device ("device"), streamed from the host or file chunk by
            chunk ("stream"), or chosen from the memory model and the budget ("auto");
            docs/scaling.md.
        memory_budget_gib: device memory (GiB) for "auto"; None = from the device (or
            the host RAM).
        lbfgs_steps: L-BFGS iterations after the Adam steps (optax.lbfgs, zoom line
            search) on the sample parameters, probes and positions held; 0 = off (the
            default: it changed the maps by less than 0.01 eV on noisy `tiny`).
        probe_model: "per-energy" (one free complex probe per energy) or "smooth" (probes
            of all energies from a few shared complex arrays, P_k = exp(g_k) sum_j L_j(x_k)
            Q_j, Legendre polynomials of degree <= ``probe_degree`` in the scaled energy; for
            achromatic mirror focusing; :func:`probe_basis`).
        probe_degree: polynomial degree in energy of the "smooth" probe model (2).
        relative: amplitudes stored as ratios to the edge jump b1 (c11 = b1 r11, ...), so
            that their maps and prior are intensive, flat across a domain whatever the
            thickness (docs/physics.md, "Relative pre-edge amplitudes"); only V-specific
            features qualify; ignored unless b1 is per pixel; () = absolute amplitudes.
        holdout: fraction of each energy's frames held out of the fit (every n-th in scan
            order); their loss is logged as history["heldout_loss"], a truth-free check of
            how well the model predicts unfitted frames (it does not rank the maps: no
            selector for ``prior_strength`` or ``steps``); needs memory "device", no
            sharding; 0 = off (docs/physics.md, "Held-out frames").
        background: incoherent detector background per energy
            (:mod:`diffxas.physics.background`): "none" (the seed's model), "flat" (one
            level per energy) or "map" (one level per energy and detector pixel); trained
            from step 0 from the darkest detector block's mean counts (docs/physics.md,
            "Detector background").
        lr_background: learning rate of the background, log units per step.
    """

    steps: int = 300
    loss: str = "amplitude"
    batch_size: int | None = None
    chunk_size: int = 512
    lr_amp: float = 0.04
    lr_energy: float = 0.25
    lr_probe: float = 0.01
    lr_positions: float = 0.0
    lr_scale: float = 0.0
    probe_start: int = 20
    lr_gain: float = 0.01
    shape_start: int | None = None
    per_pixel: tuple[str, ...] = ("a", "b1", "b2", "b3", "c11", "c21", "n_other")
    per_domain: tuple[str, ...] = ()
    domains: str | None = None
    prior: str = "tv"
    prior_strength: float = 0.5
    tv_weight: float = 0.0
    init: str = "epie"
    init_result: str | None = None
    init_probes: str = "auto"
    init_epochs: int = 40
    probe_fwhm: float = 300e-9
    reference_energy: float | None = None
    valid_jump_fraction: float = 0.1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    element: str = "V"
    table: str = "chantler"
    lr_decay: float = 0.1
    memory: str = "auto"
    memory_budget_gib: float | None = None
    lbfgs_steps: int = 0
    probe_model: str = "per-energy"
    probe_degree: int = 2
    relative: tuple[str, ...] = ("c11", "c21")
    holdout: float = 0.0
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
            raise ConfigError(
                f"steps must be <= {MAX_STEPS:g}, got {self.steps:g}: at the fastest measured step "
                "(~10 ms, tiny on a GPU) that is more than a day; the presets converge in 1e2-1e4"
            )
        for name in ("log_every", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ConfigError(f"{name} must be a positive number of steps, got {v!r}")
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
            raise ConfigError(
                "per_domain needs domains = a results file with /clusters/labels (run `diffxas cluster` on a "
                'first pass) or "auto" (first pass and clustering in the same run)'
            )
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
            raise ConfigError(
                "set either prior='tv' (weights from the noise level) or tv_weight > 0 (one explicit weight), "
                "not both: add prior='none' to use tv_weight"
            )
        from diffxas.physics.background import check_mode

        check_mode(self.background, "joint background")
        for name in (
            "lr_amp",
            "lr_energy",
            "lr_probe",
            "lr_positions",
            "lr_scale",
            "lr_gain",
            "lr_background",
            "tv_weight",
            "prior_strength",
        ):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be finite and >= 0")
        bad = sorted(set(self.relative) - set(RELATIVE_OK))
        if bad:
            raise ConfigError(
                f"relative names {bad}; only the pre-edge amplitudes {list(RELATIVE_OK)} can be ratios to b1"
            )
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
        if self.memory_budget_gib is not None and not (
            math.isfinite(self.memory_budget_gib) and self.memory_budget_gib > 0
        ):
            raise ConfigError(
                f"memory_budget_gib must be a positive number of GiB or None, got {self.memory_budget_gib!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["per_pixel"] = list(self.per_pixel)
        d["per_domain"] = list(self.per_domain)
        d["relative"] = list(self.relative)
        return d
