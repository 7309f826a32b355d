r"""Energy design: choose the N photon energies that minimise the predicted map errors.

The question (issue #8): with a budget of N energies, which ones should a beamline measure
so that the chemical-state descriptors (edge energy, PE/Delta-mu-t, Re[N_e^eff]/N_V) come
out most precise? The answer here is an *optimal experimental design* on the Cramér-Rao
bound of the joint model, computed from the same Fisher information as the error maps
(:mod:`diffxas.physics.uncertainty`), before anything is measured.

Ingredients
-----------
1. **Sample model** (:class:`SampleModel`): the per-pixel eq.-1 parameters and composition
   of representative pixels. From a preset (:func:`sample_from_preset`): the simulator's
   analytic phantom evaluated on the map grid (no frames are simulated), the pixels with
   N_V >= ``nv_fraction`` (25 %) of its maximum, i.e. the region the evaluation scores.
   From a results file (:func:`sample_from_result`, e.g. a pilot scan): its valid pixels
   above the same N_V fraction (of the 99th percentile, robust to a noisy maximum), with
   the composition of a two-step result derived from its Re[N_e^eff]/N_V map. At most
   ``max_pixels`` (400) pixels, evenly spaced in raster order (deterministic).
2. **Fluence** ``n``: photons per map pixel per energy. Preset: ``dose * dx^2 / step^2``
   (a uniform raster scan of ``dose`` photons per frame, pixel ``dx`` of the map grid: the
   object pixel at the lowest energy), through the Si3N4 membrane. Results file: the sum
   of the refined probe's intensity over the scan positions of the input CXI at each
   pixel (exact for that scan). ``fluence=`` overrides both. **The design does not depend
   on the fluence** (every energy's information is proportional to it, and the criterion
   and the ridge below are relative): it only sets the absolute predicted errors printed
   next to the design.
3. **Information of every candidate energy** (:func:`candidate_information`): the object
   information predicted before measuring, ``F_AA = F_pp = 2 n |O(E)|^2``, ``F_Ap = 0``
   (:func:`diffxas.physics.uncertainty.isotropic_information`: the phase-independent term of the
   exact per-frame blocks; the other term averages out over a scan), carried to the
   parameters with the spectral Jacobian of the one model: at pixel p, energy E adds the
   rank-2 matrix ``sum_{c in (A, phi)} g_c(E, p) J_c J_c^T``. Parameters are of two kinds,
   as in the joint fit: the per-pixel ones (``JointConfig.per_pixel``: a, b1, b2, b3, c11,
   c21, n_other) and the shared ones (the pre-edge peak positions and widths c12, c13,
   c22, c23: one value for the sample, estimated from all its pixels). The sample's Fisher
   matrix is block-arrow shaped and the descriptor variances are those of the full
   inverse (Schur complement of the shared block; each model pixel counts for
   ``SampleModel.weight`` sample pixels in it). Holding the shared shape fixed instead (as
   the error maps do) lets the design put only two energies on the pre-edge, which does
   not determine the peak width. Information is additive over energies.
4. **Criterion** (A-optimality on the seed's descriptors, unit-free): for a set ``S``,

       Phi(S) = 1/3 sum_d  mean_p[var_d(p; S)]  /  mean_p[var_d(p; all candidates)]

   with ``var_d = [g; h]^T (F_S + R)^-1 [g; h]`` (delta method, gradients ``g``/``h`` of
   descriptor d with respect to the per-pixel/shared parameters) and ``R`` a ridge
   prior. Each descriptor's mean variance (= its expected squared map error for an
   efficient estimator) is normalised by the best the candidate grid can do, so the three
   descriptors count equally whatever their units and nothing is tuned; ``Phi -> 1``
   when every candidate is measured. The ridge ``R = ridge * mean_E diag(F_E)`` (default
   ``ridge = 1e-3``: a thousandth of an average energy's information on each parameter)
   makes ``Phi`` finite for fewer energies than parameters and is negligible otherwise.
5. **Robustness** (``shifts``, default :data:`DEFAULT_SHIFTS`): the Fisher information is
   *local* (it trusts the estimator to find the neighbourhood of the truth). A local
   design measures only where the model's derivatives are large and leaves e.g. 5421-5464
   eV empty; the joint fit then explains the pre-edge with a spurious negative peak in
   that gap (measured, docs/design.md). The default design therefore minimises the mean
   criterion over the sample model with every spectral feature moved by -4..4 eV (a
   pseudo-Bayesian design over the chemical shift), which spreads the energies.
6. **Optimisation** (:func:`greedy_design`): greedy forward selection (each step adds the
   candidate that lowers ``Phi`` most; every candidate is scored at once by the rank-2
   Woodbury update of the per-pixel inverses and an (s x s) Schur complement per
   candidate), then Fedorov exchange passes (swap a chosen energy for the best candidate
   while ``Phi`` decreases). Greedy alone is not optimal (quadratic regression, 3 points:
   greedy -0.7, 0, 0.7, twice the optimum's criterion); the exchange reaches the exhaustive
   optimum on the toy problems of tests/test_design.py. ``min_spacing`` (eV, default 0:
   distinct candidates) optionally keeps chosen energies apart. Optimal designs of a
   model with few parameters concentrate on a few support energies: neighbouring
   candidates in a design mean "this energy deserves that many times the dose".

The lowest energy of the range is always in the design: it is the reference energy of
the Re[N_e^eff]/N_V map (the pipeline's default: the lowest measured energy), so the
descriptor means the same thing for every sampling that starts at the range start
(uniform and seed-like do too). Float64 numpy for the design algebra; the Jacobians and
descriptor gradients come from the JAX model (float32, scaled as in the error maps).

Approximations (also in docs/design.md): the isotropic object information (no
absorption/phase mixing by the far-field phases); neighbouring pixels, probe and positions
known (a lower bound on the variance); a local design at the sample model's parameters
(averaged over its pixels and, by default, over chemical shifts); an efficient, unbiased
estimator (the measured errors of the joint solver are larger, mostly by bias, see
docs/design.md); every energy gets the same scan and dose.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffxas import __version__
from diffxas.errors import ConfigError, InputError
from diffxas.maps import DESCRIPTORS

__all__ = [
    "DEFAULT_STEP",
    "DEFAULT_RIDGE",
    "DEFAULT_SHIFTS",
    "SampleModel",
    "CandidateInfo",
    "Design",
    "candidate_grid",
    "raster_fluence",
    "sample_from_preset",
    "sample_from_result",
    "candidate_information",
    "fisher_of",
    "descriptor_variances",
    "criterion",
    "greedy_design",
    "ensemble_criterion",
    "shifted",
    "uniform_energies",
    "seed_like_energies",
    "design_energies",
    "support",
    "predicted_errors",
    "format_design",
    "write_design",
]

#: Default candidate spacing (eV): the seed's finest step is 0.5 eV; 0.25 eV is below any
#: monochromator bandwidth that matters here (~0.7 eV for Si(111) at 5.5 keV).
DEFAULT_STEP = 0.25
#: Default ridge prior, relative to an average candidate energy's information.
DEFAULT_RIDGE = 1e-3
#: Default ensemble of chemical shifts (eV) of the sample model (pseudo-Bayesian design):
#: +-4 eV spans the V3+ <-> V5+ edge shift, in steps of 2 eV (about the pre-edge peak's
#: full width). Measured (docs/design.md): the local design (``(0,)``) leaves the range
#: between the baseline and the pre-edge empty and the joint fit then puts a spurious
#: negative pre-edge peak there (PE/Delta-mu-t error 4-5 eV at every N); this ensemble
#: does not (0.46-0.74 eV from N = 12).
DEFAULT_SHIFTS = (-4.0, -2.0, 0.0, 2.0, 4.0)
#: Default number of sample-model pixels (evenly spaced over the region).
DEFAULT_PIXELS = 200
# ============================================================================ sample model


@dataclasses.dataclass(frozen=True)
class SampleModel:
    """Representative pixels of a sample: what the design is optimised for.

    Attributes:
        params: parameter name -> (P,) float64, every eq.-1 parameter and ``n_other``.
        fluence: (P,) photons per map pixel per energy.
        names: the per-pixel (free) parameters; the others are held fixed (shared).
        reference_energy: eV, where Re[N_e^eff]/N_V is defined.
        extra_absorption: the absorption A(E) of anything else in the beam that the
            fluence does not already include (the membrane), as ``(energies, A)`` arrays for
            interpolation, or None.
        weight: sample pixels per model pixel (the sample's pixels in the region over the
            model's): the shared parameters are estimated from every pixel of the sample.
        source: a JSON-able record of where the model came from.
        absorber: the element whose K edge the model describes (chemical symbol).
    """

    params: dict[str, np.ndarray]
    fluence: np.ndarray
    names: tuple[str, ...]
    reference_energy: float
    extra_absorption: tuple[np.ndarray, np.ndarray] | None = None
    weight: float = 1.0
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    absorber: str = "V"

    @property
    def n_pixels(self) -> int:
        return int(np.asarray(self.params["b1"]).size)

    def xanes(self):
        """The parameters as a :class:`~diffxas.physics.spectra.XanesParams` of (P,) float32 leaves."""
        import jax.numpy as jnp

        from diffxas.physics.spectra import XanesParams

        return XanesParams(**{k: jnp.asarray(np.asarray(v, np.float64), jnp.float32) for k, v in self.params.items()})


def _default_names() -> tuple[str, ...]:
    from diffxas.solvers.joint.config import JointConfig

    return tuple(JointConfig().per_pixel)


def _check_names(names) -> tuple[str, ...]:
    from diffxas.solvers.joint.config import ALL_PARAMS

    names = tuple(names)
    bad = sorted(set(names) - set(ALL_PARAMS))
    if not names or bad:
        raise ConfigError(f"per-pixel parameters must be a non-empty subset of {list(ALL_PARAMS)}, got {list(names)}")
    return tuple(k for k in ALL_PARAMS if k in names)


def _spread(n_total: int, n: int) -> np.ndarray:
    """``min(n, n_total)`` indices spread evenly over ``range(n_total)`` (deterministic)."""
    if n_total <= n:
        return np.arange(n_total)
    return np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int))


def raster_fluence(dose: float, scan_step: float, pixel_size: float) -> float:
    """Photons per map pixel per energy of a uniform raster scan: ``dose * dx^2 / step^2``.

    ``dose``: photons per frame; every scan position covers ``step^2`` of the sample on
    average, so inside the scanned field each pixel of area ``dx^2`` receives this many
    photons summed over the frames of one energy.
    """
    if not (dose > 0 and scan_step > 0 and pixel_size > 0):
        raise ConfigError(f"fluence needs positive dose, scan step and pixel size, got {dose}, {scan_step}, {pixel_size}")
    return float(dose) * (float(pixel_size) / float(scan_step)) ** 2


def sample_from_preset(cfg, e_range: tuple[float, float] | None = None, nv_fraction: float = 0.25,
                       max_pixels: int = DEFAULT_PIXELS, names: Sequence[str] | None = None,
                       fluence: float | None = None) -> SampleModel:
    """The simulator's phantom for ``cfg`` (a :class:`~diffxas.simulate.presets.SimConfig`) as a sample model.

    The analytic phantom is evaluated on the map grid (pixel: the object pixel at the
    lowest energy of ``e_range``, default the preset's energy range), as the simulator's
    ground truth is, with the reference energy at the range start; pixels with N_V >=
    ``nv_fraction`` of the maximum (the evaluation region) are kept, at most
    ``max_pixels`` evenly spaced in raster order. Fluence: ``fluence`` or
    :func:`raster_fluence` of the preset's dose, scan step and that pixel; the membrane's
    absorption is added to every energy.
    """
    import jax.numpy as jnp

    from diffxas.physics.geometry import object_pixel_size
    from diffxas.physics.scattering import VEdge
    from diffxas.simulate.presets import make_phantom, membrane, phantom_fields

    e0 = float(min(cfg.energies)) if e_range is None else float(e_range[0])
    e1 = float(max(cfg.energies)) if e_range is None else float(e_range[1])
    edge = VEdge.for_energies(cfg.element, [e0, e1, *cfg.energies], cfg.table, check=False)
    dx = float(object_pixel_size(e0, cfg.distance, cfg.detector_pixel, cfg.frame_size))
    half = 0.5 * cfg.scan_width + cfg.particle_radius + 2 * dx
    n = int(math.ceil(half / dx))
    xs = (np.arange(-n, n + 1) * dx).astype(np.float64)
    X, Y = np.meshgrid(xs, xs)
    ph = make_phantom(cfg)
    p, labels, _ = phantom_fields(ph, jnp.asarray(X), jnp.asarray(Y), edge, e0)
    b1 = np.asarray(p.b1, np.float64)
    inside = np.asarray(labels) >= 0
    if not inside.any():
        raise ConfigError(f"preset {cfg.preset!r}: the phantom has no particle pixels")
    sel = inside & (b1 >= nv_fraction * b1[inside].max())
    idx = np.flatnonzero(sel.ravel())
    idx = idx[_spread(idx.size, max_pixels)]
    params = {k: np.asarray(v, np.float64).ravel()[idx] for k, v in p.as_dict().items()}
    fl = raster_fluence(cfg.dose, cfg.scan_step, dx) if fluence is None else float(fluence)
    e_mem = np.linspace(min(e0, edge.range_ev[0]), max(e1, edge.range_ev[1]), 201)
    a_mem, _ = membrane(e_mem, cfg.membrane_thickness, cfg.table)
    return SampleModel(
        params=params, fluence=np.full(idx.size, fl), names=_check_names(names or _default_names()),
        reference_energy=e0, extra_absorption=(e_mem, np.asarray(a_mem, np.float64)), weight=float(sel.sum()) / idx.size,
        absorber=edge.element,
        source={"kind": "preset", "preset": cfg.preset, "seed": int(cfg.seed), "dose": float(cfg.dose),
                "scan_step": float(cfg.scan_step), "pixel_size": dx, "nv_fraction": nv_fraction,
                "pixels": int(idx.size), "pixels_in_region": int(sel.sum()),
                "fluence": fl, "fluence_from": "given" if fluence is not None else "dose * dx^2 / step^2"})


def _fluence_from_scan(result, maps_shape) -> np.ndarray | None:
    """Per-pixel fluence (photons per energy) of the result's scan at the lowest energy, or None.

    The refined probe of the lowest energy (its grid is the map grid's pixel) summed over
    the scan positions of the input CXI (read for its positions only).
    """
    import jax.numpy as jnp

    from diffxas.data.cxi import read_cxi
    from diffxas.physics.forward import frame_geometry, illumination_map
    from diffxas.physics.geometry import Grid

    if not result.input_path or not Path(result.input_path).is_file():
        return None
    ds = read_cxi(result.input_path, energies=0)
    m = result.maps
    grid = Grid(pixel_size=float(m.pixel_size), shape=tuple(int(s) for s in maps_shape),
                origin=tuple(float(o) for o in m.origin))
    k = int(np.argmin(np.asarray(result.energies)))
    probe = np.asarray(result.probes[k])
    if abs(float(result.probe_pixel_size[k]) - grid.pixel_size) > 1e-3 * grid.pixel_size:
        return None
    pos = np.asarray(ds.positions)[np.asarray(ds.energy_index) == 0]
    try:
        corner, frac = frame_geometry(pos, grid, probe.shape[-1])
    except ValueError:
        return None
    inten = jnp.asarray((np.abs(probe) ** 2)[None], jnp.float32)
    ill = illumination_map(inten, jnp.zeros(len(pos), jnp.int32), jnp.asarray(corner), jnp.asarray(frac), grid.shape)
    return np.asarray(ill[0], np.float64)


def sample_from_result(path, e_range: tuple[float, float] | None = None, nv_fraction: float = 0.25,
                       max_pixels: int = DEFAULT_PIXELS, names: Sequence[str] | None = None,
                       fluence: float | None = None) -> SampleModel:
    """The valid pixels of a results file (either method) as a sample model.

    Per-pixel parameters come from ``/maps/extra`` (both methods write every eq.-1
    parameter; a two-step result has no ``n_other``: it is derived from its
    Re[N_e^eff]/N_V map as the joint warm start does). Pixels: valid, finite, N_V >=
    ``nv_fraction`` of the 99th percentile of the valid N_V; at most ``max_pixels``.
    ``names`` default: the result's recorded ``joint.per_pixel``, else the JointConfig
    default. Fluence: ``fluence`` or the refined probe summed over the input scan
    (:func:`_fluence_from_scan`); InputError if neither is available.
    """
    import jax.numpy as jnp

    from diffxas.data.results import read_result
    from diffxas.physics.scattering import VEdge
    from diffxas.physics.spectra import PARAM_NAMES, XanesParams, f1_v, n_v
    from diffxas.solvers.joint.config import ALL_PARAMS

    res = read_result(path)
    m = res.maps
    ex = {k: np.asarray(v, np.float64) for k, v in m.extra.items()}
    missing = [k for k in PARAM_NAMES if k not in ex]
    if missing:
        raise InputError(f"{path}: /maps/extra lacks the per-pixel parameters {missing} needed for a design")
    edge = VEdge.for_energies(m.absorber, res.energies, m.scattering_table, check=False)
    b1 = np.nan_to_num(ex["b1"])
    if "n_other" not in ex:
        pr = XanesParams(**{k: jnp.asarray(np.nan_to_num(ex[k]), jnp.float32) for k in PARAM_NAMES})
        pr = XanesParams(**{**pr.as_dict(), "b1": jnp.asarray(np.where(b1 > 0, b1, 1.0), jnp.float32)})
        f1 = np.asarray(f1_v(pr, jnp.asarray([m.reference_energy]), edge)[0], np.float64)
        nv = np.asarray(n_v(jnp.asarray(b1), edge), np.float64)
        ne = np.asarray(m.ne_eff_per_nv, np.float64)
        ok = np.isfinite(ne) & (b1 > 0) & np.isfinite(f1)
        ex["n_other"] = np.where(ok, nv * (np.where(ok, ne, 0.0) - edge.z - np.where(ok, f1, 0.0)), np.nan)
    valid = np.asarray(m.valid, bool) & np.all([np.isfinite(ex[k]) for k in ALL_PARAMS], axis=0) & (b1 > 0)
    if not valid.any():
        raise InputError(f"{path}: no valid pixels with finite parameters")
    nv_map = np.asarray(m.n_v, np.float64)
    ref = np.nanpercentile(np.where(valid, nv_map, np.nan), 99)
    sel = valid & (nv_map >= nv_fraction * ref)
    idx = np.flatnonzero(sel.ravel())
    if idx.size == 0:
        raise InputError(f"{path}: no valid pixels with N_V >= {nv_fraction:g} x its 99th percentile")
    idx = idx[_spread(idx.size, max_pixels)]
    params = {k: ex[k].ravel()[idx] for k in ALL_PARAMS}
    if names is None:
        rec = (res.config or {}).get("joint", {}) if isinstance(res.config, Mapping) else {}
        names = rec.get("per_pixel") if isinstance(rec, Mapping) and rec.get("per_pixel") else _default_names()
    if fluence is not None:
        fl, how = np.full(idx.size, float(fluence)), "given"
    else:
        fmap = _fluence_from_scan(res, m.shape)
        if fmap is None:
            raise InputError(f"{path}: cannot derive the fluence (input CXI {res.input_path or '?'} not found or "
                             "its scan does not fit the map grid); pass --fluence PHOTONS (per map pixel per energy)")
        fl, how = fmap.ravel()[idx], "refined probe summed over the input scan"
    e = np.asarray(res.energies, np.float64)
    return SampleModel(
        params=params, fluence=np.asarray(fl, np.float64), names=_check_names(names),
        reference_energy=float(m.reference_energy), extra_absorption=None, weight=float(sel.sum()) / idx.size,
        absorber=m.absorber,
        source={"kind": "result", "path": str(path), "method": res.method, "energies": [float(e.min()), float(e.max())],
                "nv_fraction": nv_fraction, "pixels": int(idx.size), "pixels_in_region": int(sel.sum()),
                "fluence": float(np.mean(fl)), "fluence_from": how})


# ============================================================================ information


def candidate_grid(e0: float, e1: float, step: float = DEFAULT_STEP) -> np.ndarray:
    """Candidate energies ``e0, e0 + step, ...`` up to ``e1`` (included when on the grid), eV."""
    if not (math.isfinite(e0) and math.isfinite(e1) and e1 > e0):
        raise ConfigError(f"energy range must have E0 < E1, got {e0:g} .. {e1:g}")
    if not (step > 0 and math.isfinite(step)):
        raise ConfigError(f"candidate step must be positive, got {step}")
    n = int(math.floor((e1 - e0) / step + 1e-9)) + 1
    if n > 20000:
        raise ConfigError(f"{n} candidate energies ({e0:g}..{e1:g} eV every {step:g} eV); use a coarser --step")
    return np.round(e0 + step * np.arange(n), 6)


@dataclasses.dataclass
class CandidateInfo:
    """Information of every candidate energy, in equilibrated units.

    Parameters are of two kinds, as in the joint fit: ``n`` per-pixel parameters (their
    own values in every pixel) and ``s`` shared parameters (one value for the whole
    sample, e.g. the pre-edge peak positions and widths). Candidate ``k`` adds, at pixel
    ``p``, the information ``[U; V] [U; V]^T`` with ``U[p, k]`` (n, m) and ``V[p, k]`` (s, m)
    (rank m = 2: absorption and phase). The sample's Fisher matrix is block-arrow shaped
    (per-pixel blocks ``A_p``, couplings ``B_p`` to the shared block ``C = weight * sum_p
    C_p``); each model pixel stands for ``weight`` pixels of the sample in the shared sums.

    Units are rescaled so that every candidate together has a unit diagonal (per pixel for
    ``U``, over the sample for ``V``): ``F_physical = s F s`` with ``scale`` (P, n) and
    ``scale_shared`` (s,). ``grads[d]`` (P, n) and ``grads_shared[d]`` (P, s): descriptor
    gradients in the same units. ``prior``/``prior_shared``: the diagonal ridge.
    ``reference[d]``: mean variance of descriptor d with every candidate (the
    normalisation of :func:`criterion`). Variances are invariant under the rescaling, so
    they come out in the descriptors' physical units.
    """

    energies: np.ndarray
    U: np.ndarray
    V: np.ndarray
    grads: dict[str, np.ndarray]
    grads_shared: dict[str, np.ndarray]
    prior: np.ndarray
    prior_shared: np.ndarray
    weight: float = 1.0
    scale: np.ndarray | None = None
    scale_shared: np.ndarray | None = None
    reference: dict[str, float] = dataclasses.field(default_factory=dict)
    names: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()

    @property
    def n_candidates(self) -> int:
        return int(self.U.shape[1])

    @property
    def n_shared(self) -> int:
        return int(self.V.shape[2])

    def physical_fisher(self, idx) -> np.ndarray:
        """Per-pixel block ``sum_{k in idx} F_k`` (P, n, n) in the parameters' own units (no prior)."""
        idx = np.asarray(idx, int).reshape(-1)
        f = np.einsum("pkim,pkjm->pij", self.U[:, idx], self.U[:, idx])
        s = np.ones((self.U.shape[0], self.U.shape[2])) if self.scale is None else self.scale
        return f * s[:, :, None] * s[:, None, :]


def from_factors(energies, U, grads: Mapping[str, np.ndarray], V=None, grads_shared: Mapping[str, np.ndarray] | None = None,
                 weight: float = 1.0, ridge: float = DEFAULT_RIDGE, names: Sequence[str] = (),
                 shared: Sequence[str] = ()) -> CandidateInfo:
    """A :class:`CandidateInfo` from information factors (the generic entry point; the toy
    problems of the tests use it).

    ``U`` (P, K, n, m): per-pixel parameters; ``V`` (P, K, s, m) or None: shared
    parameters; ``grads``/``grads_shared``: descriptor name -> (P, n) / (P, s) gradients.
    Rescales (see :class:`CandidateInfo`) and computes the every-candidate reference.
    """
    U = np.asarray(U, np.float64)
    if U.ndim != 4:
        raise ValueError(f"U must be (pixels, candidates, params, m), got shape {U.shape}")
    P, K, n, m = U.shape
    V = np.zeros((P, K, 0, m)) if V is None else np.asarray(V, np.float64)
    if V.shape[:2] != (P, K) or V.shape[3] != m:
        raise ValueError(f"V must be ({P}, {K}, s, {m}), got shape {V.shape}")
    if not ridge >= 0:
        raise ConfigError(f"ridge must be >= 0, got {ridge}")
    if not weight > 0:
        raise ConfigError(f"weight must be positive, got {weight}")
    s = V.shape[2]
    gs = {d: (np.zeros((P, s)) if grads_shared is None else np.asarray(grads_shared[d], np.float64).reshape(P, s))
          for d in grads}
    diag = np.einsum("pkim,pkim->pi", U, U)  # (P, n)
    dp = np.sqrt(np.where(diag > 0, diag, 1.0))
    diag_s = weight * np.einsum("pkim,pkim->i", V, V)  # (s,)
    ds = np.sqrt(np.where(diag_s > 0, diag_s, 1.0))
    ci = CandidateInfo(
        energies=np.asarray(energies, np.float64), U=U / dp[:, None, :, None], V=V / ds[None, None, :, None],
        grads={d: np.asarray(g, np.float64) / dp for d, g in grads.items()},
        grads_shared={d: g / ds for d, g in gs.items()},
        prior=np.full(n, ridge / K), prior_shared=np.full(s, ridge / K),  # ridge x an average candidate's diagonal
        weight=float(weight), scale=dp, scale_shared=ds, names=tuple(names), shared=tuple(shared))
    ci.reference = {k: float(np.mean(v)) for k, v in descriptor_variances(ci, np.arange(K)).items()}
    return ci


def fisher_of(ci: CandidateInfo, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample's Fisher matrix (plus the ridge) for candidate indices ``idx``, equilibrated units,
    as its block-arrow parts: per-pixel blocks ``A`` (P, n, n), couplings ``B`` (P, n, s) and
    the shared block ``C`` (s, s) summed over the sample."""
    idx = np.asarray(idx, int).reshape(-1)
    U, V = ci.U[:, idx], ci.V[:, idx]
    A = np.einsum("pkim,pkjm->pij", U, U) + np.diag(ci.prior)
    B = np.einsum("pkim,pkjm->pij", U, V)
    C = ci.weight * np.einsum("pkim,pkjm->ij", V, V) + np.diag(ci.prior_shared)
    return A, B, C


def _variances(ci: CandidateInfo, Ainv, B, C) -> dict[str, np.ndarray]:
    """Per-pixel descriptor variances from the block-arrow parts.

    ``[g; h]^T F^-1 [g; h] = g^T A^-1 g + t^T S^-1 t``, ``t = B^T A^-1 g - h``, with the
    Schur complement ``S = C - weight * sum_p B_p^T A_p^-1 B_p`` (the shared block's
    information left after the per-pixel parameters are estimated too). Shapes: ``Ainv``
    (P, *L, n, n), ``B`` (P, *L, n, s), ``C`` (*L, s, s) for any leading ``L`` (candidates).
    """
    out = {}
    lead = Ainv.shape[1:-2]
    has_shared = ci.n_shared > 0
    if has_shared:
        AiB = Ainv @ B
        Bt = _t(B)
        S = C - ci.weight * np.sum(Bt @ AiB, axis=0)
        Si = np.linalg.inv(S)
    for d, g in ci.grads.items():
        gg = g.reshape(g.shape[:1] + (1,) * len(lead) + g.shape[1:] + (1,))  # (P, *1, n, 1)
        u = Ainv @ gg  # (P, *L, n, 1)
        v = np.sum(gg * u, axis=(-2, -1))
        if has_shared:
            h = ci.grads_shared[d]
            hh = h.reshape(h.shape[:1] + (1,) * len(lead) + h.shape[1:] + (1,))
            t = Bt @ u - hh  # (P, *L, s, 1)
            v = v + np.sum(t * (Si @ t), axis=(-2, -1))
        out[d] = v
    return out


def descriptor_variances(ci: CandidateInfo, idx) -> dict[str, np.ndarray]:
    """Per-pixel Cramér-Rao variance (P,) of every descriptor for the candidate set ``idx``
    (per-pixel and shared parameters all estimated)."""
    A, B, C = fisher_of(ci, idx)
    return _variances(ci, np.linalg.inv(A), B, C)


def criterion(ci: CandidateInfo, idx) -> float:
    """``Phi(S)``: mean over descriptors of (mean variance / mean variance with every candidate)."""
    v = descriptor_variances(ci, idx)
    return float(np.mean([np.mean(v[d]) / ci.reference[d] for d in ci.grads]))


def _state(ci: CandidateInfo, idx):
    A, B, C = fisher_of(ci, idx)
    return np.linalg.inv(A), B, C


def _t(x: np.ndarray) -> np.ndarray:
    """Contiguous matrix transpose of the last two axes (batched matmul is much slower on views)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2))


def _scores(ci: CandidateInfo, state, block: int = 64) -> np.ndarray:
    """``Phi(S + {k})`` for every candidate k from the state of S (``A^-1, B, C``).

    The per-pixel inverse is updated by the rank-m Woodbury identity, ``(A + U U^T)^-1 =
    A^-1 - A^-1 U (I + U^T A^-1 U)^-1 U^T A^-1``; ``B`` and ``C`` by their additive terms;
    the (s x s) Schur complement is formed and inverted per candidate.
    """
    Ainv, B, C = state
    P, K, n, m = ci.U.shape
    out = np.zeros(K)
    eye = np.eye(m)
    for s0 in range(0, K, block):
        Ub, Vb = ci.U[:, s0:s0 + block], ci.V[:, s0:s0 + block]
        Vt = _t(Vb)
        AiU = Ainv[:, None] @ Ub  # (P, b, n, m)
        M = np.linalg.inv(_t(Ub) @ AiU + eye)
        Ai2 = Ainv[:, None] - (AiU @ M) @ _t(AiU)
        B2 = B[:, None] + Ub @ Vt
        C2 = C[None] + ci.weight * np.sum(Vb @ Vt, axis=0)
        v = _variances(ci, Ai2, B2, C2)
        out[s0:s0 + block] = np.mean([v[d].mean(axis=0) / ci.reference[d] for d in ci.grads], axis=0)
    return out


def candidate_information(model: SampleModel, energies, descriptors: Sequence[str] = DESCRIPTORS,
                          ridge: float = DEFAULT_RIDGE, shared: Sequence[str] | None = None,
                          detector_fraction: float = 1.0) -> CandidateInfo:
    """Information of each candidate energy for each pixel of ``model`` (see the module docstring).

    ``[U; V][p, k] = [sqrt(g_AA) dA/dtheta, sqrt(g_pp) dphi/dtheta]`` with ``g`` from
    :func:`diffxas.physics.uncertainty.isotropic_information` at the model's absorption (plus
    ``model.extra_absorption``) and the Jacobian from
    :func:`diffxas.physics.uncertainty.spectral_jacobian`, over the per-pixel parameters
    ``model.names`` (``U``) and the ``shared`` ones (``V``; default: every other parameter,
    as the joint fit estimates them; ``()`` holds them fixed like the error maps do);
    descriptor gradients from :func:`diffxas.physics.uncertainty.descriptor_gradients`.
    """
    import jax.numpy as jnp

    from diffxas.physics.scattering import VEdge
    from diffxas.physics.spectra import absorption
    from diffxas.physics.uncertainty import (
        descriptor_functions,
        descriptor_gradients,
        isotropic_information,
        parameter_scales,
        spectral_jacobian,
    )
    from diffxas.solvers.joint.config import ALL_PARAMS

    e = np.asarray(energies, np.float64)
    names = tuple(model.names)
    shared = tuple(k for k in ALL_PARAMS if k not in names) if shared is None else tuple(shared)
    bad = sorted(set(shared) - set(ALL_PARAMS)) + sorted(set(shared) & set(names))
    if bad:
        raise ConfigError(f"shared parameters must be parameters that are not per pixel, got {bad}")
    edge = VEdge.for_energies(model.absorber, e, check=False)
    funcs = descriptor_functions(edge, model.reference_energy)
    bad = [d for d in descriptors if d not in funcs]
    if bad or not descriptors:
        raise ConfigError(f"unknown descriptor(s) {bad}; known: {sorted(funcs)}")
    allp = names + shared
    n = len(names)
    p = model.xanes()
    sc = parameter_scales(allp, edge)
    dA, dphi = spectral_jacobian(p, jnp.asarray(e, jnp.float32), edge, allp, sc)  # (n+s, K, P), per theta/sc
    A = np.asarray(absorption(p, jnp.asarray(e, jnp.float32)), np.float64)  # (K, P)
    if model.extra_absorption is not None:
        A = A + np.interp(e, *model.extra_absorption)[:, None]
    info = np.asarray(isotropic_information(jnp.asarray(model.fluence[None, :], jnp.float32), jnp.asarray(A, jnp.float32),
                                            detector_fraction), np.float64)  # (K, 3, P)
    g_aa, g_pp = np.clip(info[:, 0], 0, None), np.clip(info[:, 1], 0, None)
    dA = np.asarray(dA, np.float64) / sc[:, None, None]  # physical units
    dphi = np.asarray(dphi, np.float64) / sc[:, None, None]
    W = np.stack([np.sqrt(g_aa)[None] * dA, np.sqrt(g_pp)[None] * dphi], axis=-1)  # (n+s, K, P, 2)
    W = np.transpose(W, (2, 1, 0, 3))  # (P, K, n+s, 2)
    g_all = descriptor_gradients(p, allp, {d: funcs[d] for d in descriptors})
    g_all = {d: np.asarray(g_all[d], np.float64).T for d in descriptors}  # (P, n+s) physical
    if not (np.all(np.isfinite(W)) and all(np.all(np.isfinite(g)) for g in g_all.values())):
        raise ConfigError("the sample model gives non-finite information (check its parameters)")
    return from_factors(e, W[:, :, :n], {d: g[:, :n] for d, g in g_all.items()}, V=W[:, :, n:],
                        grads_shared={d: g[:, n:] for d, g in g_all.items()}, weight=model.weight, ridge=ridge,
                        names=names, shared=shared)


def _allowed(energies: np.ndarray, chosen: Sequence[int], min_spacing: float) -> np.ndarray:
    ok = np.ones(energies.size, bool)
    if len(chosen):
        c = np.asarray(chosen, int)
        ok[c] = False
        if min_spacing > 0:
            dist = np.min(np.abs(energies[:, None] - energies[c][None, :]), axis=1)
            ok &= dist >= min_spacing - 1e-9
    return ok


def _members(ci) -> list[CandidateInfo]:
    return [ci] if isinstance(ci, CandidateInfo) else list(ci)


def ensemble_criterion(ci, idx) -> float:
    """Mean of :func:`criterion` over the members of an ensemble (a CandidateInfo or a list of them)."""
    return float(np.mean([criterion(c, idx) for c in _members(ci)]))


def _ensemble_scores(ci, chosen) -> np.ndarray:
    return np.mean([_scores(c, _state(c, chosen)) for c in _members(ci)], axis=0)


def greedy_design(ci, budget: int, include: Sequence[int] = (), min_spacing: float = 0.0,
                  exchange: bool = True, max_passes: int = 20, tol: float = 1e-10) -> dict[str, Any]:
    """Greedy forward selection of ``budget`` candidate indices, then Fedorov exchange.

    ``ci``: a :class:`CandidateInfo`, or a list of them on the same candidates (an
    ensemble of sample models: the criterion is their mean, a pseudo-Bayesian design).
    ``include``: indices always in the design (not exchanged). Returns ``{"indices"
    (sorted), "criterion", "greedy_indices", "greedy_criterion", "path" (criterion after
    each greedy addition), "exchanges", "passes"}``. ConfigError if the budget cannot be
    met (fewer allowed candidates than ``budget``).
    """
    members = _members(ci)
    include = [int(i) for i in dict.fromkeys(int(i) for i in include)]
    if budget < 1:
        raise ConfigError(f"budget must be at least 1 energy, got {budget}")
    if budget < len(include):
        raise ConfigError(f"budget {budget} is smaller than the {len(include)} energies that must be included")
    e = members[0].energies
    chosen = list(include)
    path = []
    while len(chosen) < budget:
        ok = _allowed(e, chosen, min_spacing)
        if not ok.any():
            raise ConfigError(f"only {len(chosen)} candidate energies fit between {e[0]:g} and {e[-1]:g} eV "
                              f"at a minimum spacing of {min_spacing:g} eV; budget {budget}")
        s = _ensemble_scores(members, chosen)
        s[~ok] = np.inf
        chosen.append(int(np.argmin(s)))
        path.append(float(s[chosen[-1]]))
    greedy = sorted(chosen)
    greedy_phi = ensemble_criterion(members, greedy) if chosen else float("nan")
    phi = greedy_phi
    n_exch, passes = 0, 0
    fixed = set(include)
    if exchange:
        for _ in range(max_passes):
            improved = False
            for pos in range(len(chosen)):
                if chosen[pos] in fixed:
                    continue
                rest = chosen[:pos] + chosen[pos + 1:]
                s = _ensemble_scores(members, rest)
                s[~_allowed(e, rest, min_spacing)] = np.inf
                k = int(np.argmin(s))
                if s[k] < phi * (1 - tol) and k != chosen[pos]:
                    chosen[pos] = k
                    phi = float(s[k])
                    n_exch += 1
                    improved = True
            if not improved:
                break
    idx = sorted(chosen)
    return {"indices": idx, "criterion": ensemble_criterion(members, idx), "greedy_indices": greedy, "greedy_criterion": greedy_phi,
            "path": path, "exchanges": n_exch, "passes": passes}


# ============================================================================ comparison designs


def _snap(grid: np.ndarray, values) -> list[int]:
    """Nearest candidate index of each value, made distinct (a taken index moves to the nearest free one)."""
    out: list[int] = []
    for v in values:
        order = np.argsort(np.abs(grid - v), kind="stable")
        out.append(int(next(i for i in order if int(i) not in out)))
    return sorted(out)


def uniform_energies(grid: np.ndarray, n: int) -> list[int]:
    """``n`` candidates equally spaced in energy over the grid (ends included), as indices."""
    if n > grid.size:
        raise ConfigError(f"budget {n} exceeds the {grid.size} candidate energies")
    return _snap(grid, np.linspace(grid[0], grid[-1], n) if n > 1 else [grid[0]])


def seed_like_energies(grid: np.ndarray, n: int, pattern: Sequence[float] | None = None) -> list[int] | None:
    """``n`` of the seed's 40 energies inside the grid's range, spread evenly in index (first
    and last included), snapped to the grid; None if fewer than ``n`` lie in the range.

    This is what ``diffxas simulate --energies N`` does with the seed's list: it keeps the
    seed's denser sampling of the pre-edge and edge.
    """
    from diffxas.simulate.presets import SEED_ENERGIES

    pat = np.asarray(SEED_ENERGIES if pattern is None else pattern, np.float64)
    pat = pat[(pat >= grid[0] - 1e-9) & (pat <= grid[-1] + 1e-9)]
    if pat.size < n:
        return None
    return _snap(grid, pat[_spread(pat.size, n)] if n > 1 else pat[:1])


# ============================================================================ the whole job


@dataclasses.dataclass
class Design:
    """A designed energy list and its predicted quality next to the comparison samplings.

    ``samplings``: name ("designed", "uniform", "seed-like") -> {"energies", "criterion",
    "std" (descriptor -> rms predicted std over the sample pixels, physical units)} (None
    where a sampling is not available, e.g. seed-like outside the seed's range).
    """

    energies: list[float]
    budget: int
    samplings: dict[str, dict[str, Any] | None]
    inputs: dict[str, Any]
    criterion: dict[str, Any]
    optimiser: dict[str, Any]
    version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def predicted_errors(ci: CandidateInfo, energies) -> dict[str, Any]:
    """Criterion and rms predicted std (physical units) of a set of ``energies`` (eV, snapped
    to the nearest distinct candidates of ``ci``): the comparison numbers of the CLI."""
    return _summary(ci, _snap(ci.energies, energies))


def _summary(ci: CandidateInfo, idx) -> dict[str, Any]:
    """Energies, criterion and rms predicted std (physical units) of a candidate set."""
    v = descriptor_variances(ci, idx)
    return {"energies": [float(x) for x in ci.energies[np.asarray(idx, int)]], "criterion": criterion(ci, idx),
            "std": {d: float(np.sqrt(np.mean(v[d]))) for d in ci.grads},
            "std_median": {d: float(np.sqrt(np.median(v[d]))) for d in ci.grads}}


def shifted(model: SampleModel, delta: float) -> SampleModel:
    """The sample model with every spectral feature moved by ``delta`` eV (edge b2 and the
    pre-edge peaks c12, c22: a chemical shift moves them together)."""
    if delta == 0:
        return model
    p = dict(model.params)
    for k in ("b2", "c12", "c22"):
        p[k] = np.asarray(p[k], np.float64) + float(delta)
    return dataclasses.replace(model, params=p, source={**model.source, "shift_ev": float(delta)})


def design_energies(model: SampleModel, budget: int, e_range: tuple[float, float], step: float = DEFAULT_STEP,
                    ridge: float = DEFAULT_RIDGE, min_spacing: float = 0.0, exchange: bool = True,
                    descriptors: Sequence[str] = DESCRIPTORS, shared: Sequence[str] | None = None,
                    shifts: Sequence[float] = DEFAULT_SHIFTS, ci=None) -> Design:
    """Design ``budget`` energies in ``e_range`` for ``model``; compare with uniform and seed-like.

    The range start (the reference energy) is always included. ``shifts`` (eV): an
    ensemble of the sample model with its features moved by each shift (pseudo-Bayesian
    design over the chemical shift, :data:`DEFAULT_SHIFTS`; ``(0,)``: the local design). The predicted
    errors printed are those of the unshifted model. ``ci`` reuses the
    :func:`candidate_information` of the same grid and shifts (e.g. for several budgets):
    a CandidateInfo (no shifts) or the list, in the order of ``shifts``.
    """
    import time

    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ConfigError(f"budget must be a positive number of energies, got {budget}")
    shifts = [float(x) for x in shifts]
    if not shifts or not all(math.isfinite(x) for x in shifts):
        raise ConfigError(f"shifts must be finite numbers (eV), got {shifts}")
    if 0.0 not in shifts:
        shifts = [0.0] + shifts
    grid = candidate_grid(float(e_range[0]), float(e_range[1]), step)
    if budget > grid.size:
        raise ConfigError(f"budget {budget} exceeds the {grid.size} candidate energies "
                          f"({grid[0]:g}..{grid[-1]:g} eV every {step:g} eV)")
    if abs(model.reference_energy - grid[0]) > 1e-6:
        model = dataclasses.replace(model, reference_energy=float(grid[0]))
    t0 = time.perf_counter()
    members = None if ci is None else _members(ci)
    if (members is None or len(members) != len(shifts)
            or any(m.energies.shape != grid.shape or not np.allclose(m.energies, grid) for m in members)):
        members = [candidate_information(shifted(model, x), grid, descriptors=descriptors, ridge=ridge, shared=shared)
                   for x in shifts]
    ci0 = members[shifts.index(0.0)]
    t_info = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = greedy_design(members, int(budget), include=[0], min_spacing=min_spacing, exchange=exchange)
    t_opt = time.perf_counter() - t0
    samplings: dict[str, dict[str, Any] | None] = {"designed": _summary(ci0, out["indices"])}
    samplings["uniform"] = _summary(ci0, uniform_energies(grid, int(budget)))
    sl = seed_like_energies(grid, int(budget))
    samplings["seed-like"] = None if sl is None else _summary(ci0, sl)
    samplings["all candidates"] = {"energies": [], "criterion": 1.0,
                                   "std": {d: float(np.sqrt(ci0.reference[d])) for d in ci0.grads}}
    if len(members) > 1:
        for name in ("designed", "uniform", "seed-like"):
            if samplings[name] is not None:
                idx = _snap(grid, samplings[name]["energies"])
                samplings[name]["ensemble_criterion"] = ensemble_criterion(members, idx)
    return Design(
        energies=samplings["designed"]["energies"], budget=int(budget), samplings=samplings,
        inputs={"sample": model.source, "range": [float(grid[0]), float(grid[-1])], "step": float(step),
                "candidates": int(grid.size), "per_pixel": list(model.names), "shared": list(ci0.shared),
                "sample_weight": float(model.weight),
                "reference_energy": float(grid[0]), "fluence_mean": float(np.mean(model.fluence))},
        criterion={"name": "A-optimal, normalised", "descriptors": list(descriptors), "ridge": float(ridge),
                   "min_spacing": float(min_spacing), "shifts": shifts,
                   "definition": "mean over descriptors of mean-over-pixels CRB variance / same with every candidate"
                                 + ("; mean over the shifted sample models" if len(shifts) > 1 else ""),
                   "information": "isotropic object information 2 n |O|^2 (uncertainty.isotropic_information)"},
        optimiser={"method": "greedy forward selection" + (" + Fedorov exchange" if exchange else ""),
                   "greedy_criterion": out["greedy_criterion"], "criterion": out["criterion"],
                   "exchanges": out["exchanges"], "passes": out["passes"], "information_s": round(t_info, 3),
                   "optimise_s": round(t_opt, 3)})


# ============================================================================ output

_LABELS = {"edge_energy": ("edge energy", "eV"), "pre_edge_norm": ("PE/dmt", "eV"), "ne_eff_per_nv": ("Re[Ne]/N_V", ""),
           "edge_width": ("edge width", "eV"), "edge_jump": ("edge jump", ""), "pre_edge": ("PE", "eV"),
           "n_v": ("N_V", "m^-2")}


def support(energies: Sequence[float], gap: float) -> list[tuple[float, int]]:
    """Group sorted energies whose neighbours are closer than ``gap`` eV: (mean energy, count) per group.

    An optimal design of a model with few parameters concentrates on a few support energies
    (several neighbouring candidates = one energy measured with that many times the dose).
    """
    e = sorted(float(x) for x in energies)
    groups: list[list[float]] = []
    for x in e:
        if groups and x - groups[-1][-1] <= gap:
            groups[-1].append(x)
        else:
            groups.append([x])
    return [(round(float(np.mean(g)), 3), len(g)) for g in groups]


def format_design(design: Design) -> str:
    """The design and the predicted-error comparison as printable text."""
    lines = [f"designed {design.budget} energies (eV): " + ", ".join(f"{e:g}" for e in design.energies)]
    sup = support(design.energies, 2.0 * design.inputs["step"] + 1e-9)
    if len(sup) < len(design.energies):
        lines.append("  i.e. " + ", ".join(f"{c:g}" + (f" (x{n})" if n > 1 else "") for c, n in sup)
                     + "  [neighbours on the candidate grid: that energy deserves that many times the dose]")
    inp = design.inputs
    src = inp["sample"]
    lines.append(f"sample model: {src.get('kind')} {src.get('preset', src.get('path', ''))}, {src.get('pixels')} pixels, "
                 f"fluence {inp['fluence_mean']:.3g} photons/pixel/energy; candidates {inp['candidates']} "
                 f"({inp['range'][0]:g}..{inp['range'][1]:g} eV every {inp['step']:g} eV)")
    descs = design.criterion["descriptors"]
    shifts = design.criterion.get("shifts") or [0.0]
    robust = len(shifts) > 1

    def label(d):
        name, unit = _LABELS.get(d, (d, ""))
        return name + (f" ({unit})" if unit else "")

    head = f"{'sampling':<16}" + "".join(f"{label(d):>22}" for d in descs) + f"{'criterion':>12}"
    if robust:
        head += f"{'over shifts':>13}"
    lines.append("predicted std (Cramér-Rao, rms over the sample pixels) at the same N:")
    lines.append(head)
    for name, s in design.samplings.items():
        if s is None:
            lines.append(f"{name:<16}" + "".join(f"{'n/a':>22}" for _ in descs) + f"{'n/a':>12}")
            continue
        row = f"{name:<16}" + "".join(f"{s['std'][d]:>22.4g}" for d in descs) + f"{s['criterion']:>12.4g}"
        if robust and s.get("ensemble_criterion") is not None:
            row += f"{s['ensemble_criterion']:>13.4g}"
        lines.append(row)
    opt = design.optimiser
    lines.append(f"criterion: normalised A-optimality over {', '.join(descs)} (1 = every candidate)"
                 + (f", minimised as the mean over the sample model shifted by {', '.join(f'{x:g}' for x in shifts)} eV"
                    if robust else " (local design)")
                 + f"; {opt['method']}: greedy {opt['greedy_criterion']:.4g} -> {opt['criterion']:.4g} "
                 f"({opt['exchanges']} exchanges) in {opt['information_s'] + opt['optimise_s']:.1f} s")
    return "\n".join(lines)


def _toml_text(design: Design) -> str:
    from diffxas.app.config import dumps_toml

    meta = json.dumps({k: v for k, v in design.to_dict().items() if k != "energies"}, indent=1, default=str)
    head = [f"# diffxas {design.version} design-energies: {design.budget} energies",
            "# usable as `diffxas simulate --config FILE` or as the [simulate] section of a configuration",
            "# predicted rms std (designed / uniform / seed-like): " + "; ".join(
                f"{d}: " + " / ".join("n/a" if design.samplings.get(s) is None else f"{design.samplings[s]['std'][d]:.4g}"
                                       for s in ("designed", "uniform", "seed-like"))
                for d in design.criterion["descriptors"]),
            "# record (JSON):"] + ["#   " + line for line in meta.splitlines()]
    return "\n".join(head) + "\n" + dumps_toml({"simulate": {"energies": [float(e) for e in design.energies]}})


def write_design(path, design: Design) -> Path:
    """Write the design atomically (temp file + rename), the format chosen by the suffix.

    * ``.toml``: ``[simulate] energies = [...]`` (a configuration file that ``diffxas
      simulate --config`` and the sweep's ``simulate.energies`` accept), the record in
      ``#`` comments (TOML sections other than the pipeline's are refused by the
      configuration reader);
    * ``.json``: everything (:meth:`Design.to_dict`);
    * anything else (``.txt``, ``.dat`` ...): plain text for a beamline, one energy in eV per
      line, nothing else.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".toml":
        text = _toml_text(design)
    elif suffix == ".json":
        text = json.dumps(design.to_dict(), indent=2, default=str) + "\n"
    else:
        text = "".join(f"{e:.2f}\n" for e in design.energies)
    from diffxas.data.files import write_text_atomic

    write_text_atomic(p, text)
    return p
