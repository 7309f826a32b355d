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
   as in the joint fit: the per-pixel ones (``JointConfig.spectra.per_pixel``: a, b1, b2, b3, c11,
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
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from diffxas import __version__
from diffxas.app.config import dumps_toml
from diffxas.app.design_information import (
    DEFAULT_RIDGE,
    DEFAULT_STEP,
    CandidateInfo,
    SampleModel,
    _check_names,
    _default_names,
    _members,
    _snap,
    _spread,
    candidate_grid,
    candidate_information,
    criterion,
    descriptor_variances,
    ensemble_criterion,
    fisher_of,
    greedy_design,
    seed_like_energies,
    uniform_energies,
)
from diffxas.data.cxi import read_cxi
from diffxas.data.files import write_text_atomic
from diffxas.data.results import read_result
from diffxas.errors import ConfigError, InputError
from diffxas.maps import DESCRIPTORS
from diffxas.physics.forward import frame_geometry, illumination_map
from diffxas.physics.geometry import Grid, object_pixel_size
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import PARAM_NAMES, XanesParams, f1_v, n_v
from diffxas.simulate.presets import make_phantom, membrane, phantom_fields
from diffxas.solvers.joint.config import ALL_PARAMS, JointConfig

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
#: Default ensemble of chemical shifts (eV) of the sample model (pseudo-Bayesian design):
#: +-4 eV spans the V3+ <-> V5+ edge shift, in steps of 2 eV (about the pre-edge peak's
#: full width). Measured (docs/design.md): the local design (``(0,)``) leaves the range
#: between the baseline and the pre-edge empty and the joint fit then puts a spurious
#: negative pre-edge peak there (PE/Delta-mu-t error 4-5 eV at every N); this ensemble
#: does not (0.46-0.74 eV from N = 12).
DEFAULT_SHIFTS = (-4.0, -2.0, 0.0, 2.0, 4.0)
#: Default number of sample-model pixels (evenly spaced over the region).
DEFAULT_PIXELS = 200


def raster_fluence(dose: float, scan_step: float, pixel_size: float) -> float:
    """Photons per map pixel per energy of a uniform raster scan: ``dose * dx^2 / step^2``.

    ``dose``: photons per frame; every scan position covers ``step^2`` of the sample on
    average, so inside the scanned field each pixel of area ``dx^2`` receives this many
    photons summed over the frames of one energy.
    """
    if not (dose > 0 and scan_step > 0 and pixel_size > 0):
        raise ConfigError(
            f"fluence needs positive dose, scan step and pixel size, got {dose}, {scan_step}, {pixel_size}"
        )
    return float(dose) * (float(pixel_size) / float(scan_step)) ** 2


def sample_from_preset(
    cfg,
    e_range: tuple[float, float] | None = None,
    nv_fraction: float = 0.25,
    max_pixels: int = DEFAULT_PIXELS,
    names: Sequence[str] | None = None,
    fluence: float | None = None,
) -> SampleModel:
    """The simulator's phantom for ``cfg`` (a :class:`~diffxas.simulate.presets.SimConfig`) as a sample model.

    The analytic phantom is evaluated on the map grid (pixel: the object pixel at the
    lowest energy of ``e_range``, default the preset's energy range), as the simulator's
    ground truth is, with the reference energy at the range start; pixels with N_V >=
    ``nv_fraction`` of the maximum (the evaluation region) are kept, at most
    ``max_pixels`` evenly spaced in raster order. Fluence: ``fluence`` or
    :func:`raster_fluence` of the preset's dose, scan step and that pixel; the membrane's
    absorption is added to every energy.
    """
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
        params=params,
        fluence=np.full(idx.size, fl),
        names=_check_names(names or _default_names()),
        reference_energy=e0,
        extra_absorption=(e_mem, np.asarray(a_mem, np.float64)),
        weight=float(sel.sum()) / idx.size,
        absorber=edge.element,
        source={
            "kind": "preset",
            "preset": cfg.preset,
            "seed": int(cfg.seed),
            "dose": float(cfg.dose),
            "scan_step": float(cfg.scan_step),
            "pixel_size": dx,
            "nv_fraction": nv_fraction,
            "pixels": int(idx.size),
            "pixels_in_region": int(sel.sum()),
            "fluence": fl,
            "fluence_from": "given" if fluence is not None else "dose * dx^2 / step^2",
        },
    )


def _fluence_from_scan(result, maps_shape) -> np.ndarray | None:
    """Per-pixel fluence (photons per energy) of the result's scan at the lowest energy, or None.

    The refined probe of the lowest energy (its grid is the map grid's pixel) summed over
    the scan positions of the input CXI (read for its positions only).
    """
    if not result.input_path or not Path(result.input_path).is_file():
        return None
    ds = read_cxi(result.input_path, energies=0)
    m = result.maps
    grid = Grid(
        pixel_size=float(m.pixel_size),
        shape=tuple(int(s) for s in maps_shape),
        origin=tuple(float(o) for o in m.origin),
    )
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


def sample_from_result(
    path,
    e_range: tuple[float, float] | None = None,
    nv_fraction: float = 0.25,
    max_pixels: int = DEFAULT_PIXELS,
    names: Sequence[str] | None = None,
    fluence: float | None = None,
) -> SampleModel:
    """The valid pixels of a results file (either method) as a sample model.

    Per-pixel parameters come from ``/maps/extra`` (both methods write every eq.-1
    parameter; a two-step result has no ``n_other``: it is derived from its
    Re[N_e^eff]/N_V map as the joint warm start does). Pixels: valid, finite, N_V >=
    ``nv_fraction`` of the 99th percentile of the valid N_V; at most ``max_pixels``.
    ``names`` default: the result's recorded ``joint.spectra.per_pixel``, else the JointConfig
    default. Fluence: ``fluence`` or the refined probe summed over the input scan
    (:func:`_fluence_from_scan`); InputError if neither is available.
    """
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
        # recorded nested (spectra.per_pixel) or, by results written before the option groups, flat
        rec_names = JointConfig.get_option(rec, "per_pixel") if isinstance(rec, Mapping) else None
        names = rec_names if rec_names else _default_names()
    if fluence is not None:
        fl, how = np.full(idx.size, float(fluence)), "given"
    else:
        fmap = _fluence_from_scan(res, m.shape)
        if fmap is None:
            raise InputError(
                f"{path}: cannot derive the fluence (input CXI {res.input_path or '?'} not found or "
                "its scan does not fit the map grid); pass --fluence PHOTONS (per map pixel per energy)"
            )
        fl, how = fmap.ravel()[idx], "refined probe summed over the input scan"
    e = np.asarray(res.energies, np.float64)
    return SampleModel(
        params=params,
        fluence=np.asarray(fl, np.float64),
        names=_check_names(names),
        reference_energy=float(m.reference_energy),
        extra_absorption=None,
        weight=float(sel.sum()) / idx.size,
        absorber=m.absorber,
        source={
            "kind": "result",
            "path": str(path),
            "method": res.method,
            "energies": [float(e.min()), float(e.max())],
            "nv_fraction": nv_fraction,
            "pixels": int(idx.size),
            "pixels_in_region": int(sel.sum()),
            "fluence": float(np.mean(fl)),
            "fluence_from": how,
        },
    )


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
    return {
        "energies": [float(x) for x in ci.energies[np.asarray(idx, int)]],
        "criterion": criterion(ci, idx),
        "std": {d: float(np.sqrt(np.mean(v[d]))) for d in ci.grads},
        "std_median": {d: float(np.sqrt(np.median(v[d]))) for d in ci.grads},
    }


def shifted(model: SampleModel, delta: float) -> SampleModel:
    """The sample model with every spectral feature moved by ``delta`` eV (edge b2 and the
    pre-edge peaks c12, c22: a chemical shift moves them together)."""
    if delta == 0:
        return model
    p = dict(model.params)
    for k in ("b2", "c12", "c22"):
        p[k] = np.asarray(p[k], np.float64) + float(delta)
    return dataclasses.replace(model, params=p, source={**model.source, "shift_ev": float(delta)})


def design_energies(
    model: SampleModel,
    budget: int,
    e_range: tuple[float, float],
    step: float = DEFAULT_STEP,
    ridge: float = DEFAULT_RIDGE,
    min_spacing: float = 0.0,
    exchange: bool = True,
    descriptors: Sequence[str] = DESCRIPTORS,
    shared: Sequence[str] | None = None,
    shifts: Sequence[float] = DEFAULT_SHIFTS,
    ci=None,
) -> Design:
    """Design ``budget`` energies in ``e_range`` for ``model``; compare with uniform and seed-like.

    The range start (the reference energy) is always included. ``shifts`` (eV): an
    ensemble of the sample model with its features moved by each shift (pseudo-Bayesian
    design over the chemical shift, :data:`DEFAULT_SHIFTS`; ``(0,)``: the local design). The predicted
    errors printed are those of the unshifted model. ``ci`` reuses the
    :func:`candidate_information` of the same grid and shifts (e.g. for several budgets):
    a CandidateInfo (no shifts) or the list, in the order of ``shifts``.
    """
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ConfigError(f"budget must be a positive number of energies, got {budget}")
    shifts = [float(x) for x in shifts]
    if not shifts or not all(math.isfinite(x) for x in shifts):
        raise ConfigError(f"shifts must be finite numbers (eV), got {shifts}")
    if 0.0 not in shifts:
        shifts = [0.0] + shifts
    grid = candidate_grid(float(e_range[0]), float(e_range[1]), step)
    if budget > grid.size:
        raise ConfigError(
            f"budget {budget} exceeds the {grid.size} candidate energies "
            f"({grid[0]:g}..{grid[-1]:g} eV every {step:g} eV)"
        )
    if abs(model.reference_energy - grid[0]) > 1e-6:
        model = dataclasses.replace(model, reference_energy=float(grid[0]))
    t0 = time.perf_counter()
    members = None if ci is None else _members(ci)
    if (
        members is None
        or len(members) != len(shifts)
        or any(m.energies.shape != grid.shape or not np.allclose(m.energies, grid) for m in members)
    ):
        members = [
            candidate_information(shifted(model, x), grid, descriptors=descriptors, ridge=ridge, shared=shared)
            for x in shifts
        ]
    ci0 = members[shifts.index(0.0)]
    t_info = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = greedy_design(members, int(budget), include=[0], min_spacing=min_spacing, exchange=exchange)
    t_opt = time.perf_counter() - t0
    samplings: dict[str, dict[str, Any] | None] = {"designed": _summary(ci0, out["indices"])}
    samplings["uniform"] = _summary(ci0, uniform_energies(grid, int(budget)))
    sl = seed_like_energies(grid, int(budget))
    samplings["seed-like"] = None if sl is None else _summary(ci0, sl)
    samplings["all candidates"] = {
        "energies": [],
        "criterion": 1.0,
        "std": {d: float(np.sqrt(ci0.reference[d])) for d in ci0.grads},
    }
    if len(members) > 1:
        for name in ("designed", "uniform", "seed-like"):
            if samplings[name] is not None:
                idx = _snap(grid, samplings[name]["energies"])
                samplings[name]["ensemble_criterion"] = ensemble_criterion(members, idx)
    return Design(
        energies=samplings["designed"]["energies"],
        budget=int(budget),
        samplings=samplings,
        inputs={
            "sample": model.source,
            "range": [float(grid[0]), float(grid[-1])],
            "step": float(step),
            "candidates": int(grid.size),
            "per_pixel": list(model.names),
            "shared": list(ci0.shared),
            "sample_weight": float(model.weight),
            "reference_energy": float(grid[0]),
            "fluence_mean": float(np.mean(model.fluence)),
        },
        criterion={
            "name": "A-optimal, normalised",
            "descriptors": list(descriptors),
            "ridge": float(ridge),
            "min_spacing": float(min_spacing),
            "shifts": shifts,
            "definition": "mean over descriptors of mean-over-pixels CRB variance / same with every candidate"
            + ("; mean over the shifted sample models" if len(shifts) > 1 else ""),
            "information": "isotropic object information 2 n |O|^2 (uncertainty.isotropic_information)",
        },
        optimiser={
            "method": "greedy forward selection" + (" + Fedorov exchange" if exchange else ""),
            "greedy_criterion": out["greedy_criterion"],
            "criterion": out["criterion"],
            "exchanges": out["exchanges"],
            "passes": out["passes"],
            "information_s": round(t_info, 3),
            "optimise_s": round(t_opt, 3),
        },
    )


# ============================================================================ output

_LABELS = {
    "edge_energy": ("edge energy", "eV"),
    "pre_edge_norm": ("PE/dmt", "eV"),
    "ne_eff_per_nv": ("Re[Ne]/N_V", ""),
    "edge_width": ("edge width", "eV"),
    "edge_jump": ("edge jump", ""),
    "pre_edge": ("PE", "eV"),
    "n_v": ("N_V", "m^-2"),
}


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
        lines.append(
            "  i.e. "
            + ", ".join(f"{c:g}" + (f" (x{n})" if n > 1 else "") for c, n in sup)
            + "  [neighbours on the candidate grid: that energy deserves that many times the dose]"
        )
    inp = design.inputs
    src = inp["sample"]
    lines.append(
        f"sample model: {src.get('kind')} {src.get('preset', src.get('path', ''))}, {src.get('pixels')} pixels, "
        f"fluence {inp['fluence_mean']:.3g} photons/pixel/energy; candidates {inp['candidates']} "
        f"({inp['range'][0]:g}..{inp['range'][1]:g} eV every {inp['step']:g} eV)"
    )
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
    lines.append(
        f"criterion: normalised A-optimality over {', '.join(descs)} (1 = every candidate)"
        + (
            f", minimised as the mean over the sample model shifted by {', '.join(f'{x:g}' for x in shifts)} eV"
            if robust
            else " (local design)"
        )
        + f"; {opt['method']}: greedy {opt['greedy_criterion']:.4g} -> {opt['criterion']:.4g} "
        f"({opt['exchanges']} exchanges) in {opt['information_s'] + opt['optimise_s']:.1f} s"
    )
    return "\n".join(lines)


def _toml_text(design: Design) -> str:
    meta = json.dumps({k: v for k, v in design.to_dict().items() if k != "energies"}, indent=1, default=str)
    head = [
        f"# diffxas {design.version} design-energies: {design.budget} energies",
        "# usable as `diffxas simulate --config FILE` or as the [simulate] section of a configuration",
        "# predicted rms std (designed / uniform / seed-like): "
        + "; ".join(
            f"{d}: "
            + " / ".join(
                "n/a" if design.samplings.get(s) is None else f"{design.samplings[s]['std'][d]:.4g}"
                for s in ("designed", "uniform", "seed-like")
            )
            for d in design.criterion["descriptors"]
        ),
        "# record (JSON):",
    ] + ["#   " + line for line in meta.splitlines()]
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

    write_text_atomic(p, text)
    return p
