"""Maps, uncertainty and warnings of a finished joint run (:func:`make_result`)."""

from __future__ import annotations

import logging
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffxas.data.dataset import Dataset
from diffxas.maps import ChemMaps, Result
from diffxas.physics.geometry import Grid
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import PARAM_NAMES, XanesParams, maps_from_params, phase
from diffxas.physics.uncertainty import map_std, object_information, to_common_grid
from diffxas.solvers.joint.config import ALL_PARAMS, JointConfig
from diffxas.solvers.joint.model import (
    JointParams,
    Problem,
    background_counts,
    model_fields,
    model_objects,
    physical,
    probes,
)
from diffxas.solvers.twostep.fitting import FitConfig


def object_information_joint(params: JointParams, prob: Problem) -> jax.Array:
    """Per-pixel object-space Fisher blocks (K, 3, H, W) on the common grid at ``params``.

    Model intensities only (no data needed); the final probes, position corrections and
    background (a pixel's counts are Poisson of ``I + b``, so the background lowers the
    information where it is comparable to the coherent signal); see
    :mod:`diffxas.physics.uncertainty` for the formula and the approximation.
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


def map_std_joint(
    params: JointParams, prob: Problem, cfg: JointConfig, edge: VEdge, reference_energy: float
) -> dict[str, np.ndarray]:
    """Standard-error maps (``/maps/*_std``) of the joint model's maps: Fisher information of
    the per-pixel parameters (``cfg.spectra.per_pixel``) with the probes, the positions, the shared
    parameters and the neighbouring pixels held fixed (:mod:`diffxas.physics.uncertainty`).
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
    names = [k for k in ALL_PARAMS if k in cfg.spectra.per_pixel]
    if not names:
        return {}
    return map_std(p, prob.energies, edge, np.asarray(info), names, reference_energy)


def plausibility_warnings(full: dict[str, np.ndarray], pre_edge_norm: np.ndarray, valid: np.ndarray) -> list[str]:
    """Signs that the fitted spectral model left physics (one line each; empty = none seen).

    The joint's widths are bounded below only (softplus), so a collapse shows as widths
    beyond the two-step fit's bounds (:class:`diffxas.solvers.twostep.fitting.FitConfig`: pre-edge widths
    <= 8 eV, edge width <= 15 eV), and as a negative pre-edge peak area. Seen at 1e4
    photons per frame on `tiny` before the per-energy probe gains (commit 8d57a46)
    (experiments/README.md): c23 = 12 eV and median PE/dmt -21 eV. Medians over the valid
    pixels (shared parameters are one value anyway).
    """
    fc = FitConfig()
    v = np.asarray(valid, bool)
    out = []
    if not v.any():
        return ["no valid pixel (no edge jump above valid_jump_fraction): the maps are empty"]
    med = {k: float(np.median(np.asarray(full[k])[v])) for k in ("b3", "c13", "c23") if k in full}
    for k, hi, what in (
        ("c13", fc.width_bounds[1], "first pre-edge peak width"),
        ("c23", fc.width_bounds[1], "second pre-edge peak width"),
        ("b3", fc.b3_bounds[1], "edge width"),
    ):
        if k in med and med[k] > hi:
            out.append(
                f"{what} {k} = {med[k]:.3g} eV (median) is above {hi:g} eV, the two-step fit's bound: "
                "the spectral model has likely collapsed (too few photons or too few energies?)"
            )
    pe = np.asarray(pre_edge_norm, np.float64)[v]
    pe = pe[np.isfinite(pe)]
    if pe.size and float(np.median(pe)) < 0:
        out.append(
            f"median PE/dmt is negative ({float(np.median(pe)):.3g} eV): a negative pre-edge peak area is not physical"
        )
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
    (:func:`diffxas.solvers.twostep.fitting.fit_stack`), its number of per-pixel parameters."""
    names = [k for k in PARAM_NAMES if k in per_pixel]
    if n_energies >= len(names):
        return []
    return [
        f"{n_energies} energ{'y' if n_energies == 1 else 'ies'} for {len(names)} per-pixel spectral parameters ({', '.join(names)}): "
        "the maps are not determined by the data; measure more energies or share parameters (JointConfig.per_pixel)"
    ]


def make_result(
    ds: Dataset,
    params: JointParams,
    prob: Problem,
    common: Grid,
    grids,
    cfg: JointConfig,
    edge: VEdge,
    history,
    init_info,
    timing,
) -> Result:
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
    m, finite = maps_from_params(full, phi_ref, e_ref, edge)  # the one block of both methods
    valid = ill & (b1 > thr) & finite
    t_std = time.perf_counter()
    std = {k: np.where(valid, v, np.nan) for k, v in map_std_joint(params, prob, cfg, edge, e_ref).items()}
    timing = dict(timing, uncertainty_s=time.perf_counter() - t_std)
    maps = ChemMaps(
        **{k: np.where(valid, v, np.nan) for k, v in m.items()},
        valid=valid.astype(np.uint8),
        std=std,
        pixel_size=common.pixel_size,
        origin=common.origin,
        reference_energy=e_ref,
        delta_f2_v=float(edge.delta_f2),
        scattering_table=cfg.table,
        absorber=edge.element,
        extra={**{k: v for k, v in full.items()}, "illuminated": ill.astype(np.float64)},
    )
    probes_k = np.asarray(probes(params, prob), np.complex64)
    hist = {k: np.asarray(v, np.float64) for k, v in history.items()}
    hist["wall_s"] = np.asarray([timing["wall_s"]])
    hist["compile_s"] = np.asarray([timing["compile_s"]])
    hist["uncertainty_s"] = np.asarray([timing["uncertainty_s"]])
    warnings = plausibility_warnings(full, m["pre_edge_norm"], valid)
    _log_warnings(warnings)
    # said at the start already (reconstruct_joint); recorded here with the others
    warnings = energy_count_warnings(ds.n_energies, cfg.spectra.per_pixel) + warnings
    config = {
        "joint": cfg.to_dict(),
        "init": {k: v for k, v in init_info.items() if k != "probes"},
        "amp_scale": prob.scales.amp,
        "grid": {"pixel_size": common.pixel_size, "shape": list(shape), "origin": list(common.origin)},
        "warnings": warnings,
    }
    bg = background_counts(params, prob)
    if bg is not None:
        bg = np.asarray(bg, np.float32)
        bg = np.fft.fftshift(bg, axes=(-2, -1)) if bg.ndim == 3 else bg  # the data file's layout
        from diffxas.physics.background import describe, summary

        config["background"] = summary(bg)
        logging.getLogger("diffxas").info(describe(bg, "joint"))
    return Result(
        method="joint",
        maps=maps,
        energies=np.asarray(ds.energies, np.float64),
        absorption=A,
        phase=phi,
        probes=probes_k,
        probe_pixel_size=np.asarray(ds.pixel_sizes()),
        history=hist,
        config=config,
        background=bg,
    )
