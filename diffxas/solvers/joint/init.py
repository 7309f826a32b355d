"""The joint solver: chemical-state maps fitted directly to every diffraction pattern.

The object at every energy is not a free unknown: it is computed from per-pixel
parameters of the seed's eq. 1 (absorption) and a composition map (phase, through the
KK-consistent f'_V of :mod:`diffxas.physics.spectra`) on one common grid, resampled exactly onto
each energy's grid (:func:`diffxas.physics.forward.resample_stack`), and compared with every frame
of every energy at once through the shared forward model. Gradients come from JAX
autodiff; the optimiser is optax Adam with per-group learning rates, optionally followed
by an L-BFGS polish of the sample parameters (``JointConfig.optim.lbfgs_steps``, :func:`lbfgs_polish`).

Parameterisation (trainable leaves are real and dimensionless, "natural units")
------------------------------------------------------------------------------
* amplitudes ``a, b1, c11, c21`` = ``amp_scale * raw`` (``amp_scale`` = the data's edge
  jump, estimated at initialisation), so raw values are O(1);
* ``n_other`` (non-V electrons per m^2) = ``amp_scale / (r_e lambda_0 Delta f'') * 20 * raw``
  (electrons per V of order 20 <-> raw of order 1);
* energies ``b2, c12, c22`` = ``mid + half * tanh(raw / half)`` in eV: bounded to the
  scanned range, ~identity (1 raw unit = 1 eV) inside it;
* widths ``b3, c13, c23`` = ``w_min + softplus(raw)`` in eV (positive).
Each parameter is per pixel (``JointConfig.spectra.per_pixel``), per domain (``per_domain``: one
value per label of a domain map, e.g. the k-means clusters of a first pass, read from
``JointConfig.spectra.domains``), or shared (a scalar).
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

Initialisation (``JointConfig.init.mode``)
-------------------------------------
The empty (membrane-only) reference region, where the sample's amplitudes are pinned to 0,
is found on the flux-independent phase from the frames' centres of mass
(:func:`diffxas.data.stxm.dpc_phase`), whatever the initialisation.

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

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from diffxas.data.dataset import Dataset
from diffxas.data.files import sha256_file
from diffxas.data.results import read_result
from diffxas.data.stxm import probes_at_membrane_counts, stxm_absorption
from diffxas.errors import ConfigError
from diffxas.physics.constants import R_E
from diffxas.physics.geometry import Grid, wavelength
from diffxas.physics.probe import centred_probe
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import PARAM_NAMES, XanesParams, f1_v, linear_design, n_v
from diffxas.solvers.joint.config import ALL_PARAMS, AMPLITUDES, JointConfig
from diffxas.solvers.joint.model import (
    JointParams,
    Problem,
    Scales,
    fit_probe_model,
    to_raw,
)
from diffxas.solvers.joint.result import _log_warnings
from diffxas.solvers.twostep.align import align_stack
from diffxas.solvers.twostep.align import illumination_map as _cov
from diffxas.solvers.twostep.epie import EpieConfig, run_epie
from diffxas.solvers.twostep.fitting import varpro_grid


def fit_shape_and_amplitudes(stack: np.ndarray, energies: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Variable-projection fit of eq. 1: shared shape parameters, per-pixel amplitudes.

    Shape parameters (b2, b3, c12, c13, c22, c23) by a grid search on the mean spectrum of
    ``mask`` pixels weighted by their edge contrast; then the four amplitudes of every pixel
    by exact linear least squares (:func:`diffxas.physics.spectra.linear_design`).

    The grid holds c13 = 1.2 eV, c22 = c12 + 4 eV, c23 = 2 eV (the joint refines them). The
    search runs in two stages, as the two-step's :func:`diffxas.solvers.twostep.fitting.fit_global` does:
    first the main pre-edge peak alone (edge + one Lorentzian), then the full design with
    c12 from 2 eV below to 1 eV above that peak; amplitudes b1, c11, c21 non-negative in both (exact NNLS,
    :func:`diffxas.solvers.twostep.fitting.varpro_grid`). A single unconstrained search over the full design
    can put the *second* peak (the broader one, tied 4 eV up) on the measured pre-edge peak
    and cancel the first with a negative amplitude: it did on one of five `tiny` scans with
    20 nm position errors, where the blurred peak looked broad (c12 = 5462.5 instead of
    ~5466 eV; joint PE/dmt error 2.45 eV). Non-negativity alone does not prevent it (the
    second peak alone then fits best); locating the main peak first does.
    """
    e = np.asarray(energies, np.float64)
    sel = stack[:, mask]  # (K, P)
    if sel.shape[1] == 0:
        sel = stack.reshape(stack.shape[0], -1)
    contrast = np.clip(sel[-3:].mean(0) - sel[:3].mean(0), 0, None)
    mean = (sel * contrast).sum(1) / max(contrast.sum(), 1e-12)
    lo, hi = e.min(), e.max()
    grid = [
        (b2, b3, c12)
        for b2 in np.arange(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), 0.5)
        for b3 in (2.0, 3.0, 4.0, 5.0)
        for c12 in np.arange(max(lo, b2 - 20), b2 - 4, 0.5)
    ]
    if grid:
        g = np.asarray(grid)
        # all candidate designs at once (one call of the spectral model), (G, K, 4)
        dm = np.moveaxis(
            np.asarray(
                linear_design(
                    jnp.asarray(e),
                    jnp.asarray(g[:, 0]),
                    jnp.asarray(g[:, 1]),
                    jnp.asarray(g[:, 2]),
                    1.2,
                    jnp.asarray(g[:, 2] + 4.0),
                    2.0,
                ),
                np.float64,
            ),
            0,
            1,
        )
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


def init_params(
    ds: Dataset, prob: Problem, common: Grid, cfg: JointConfig, edge: VEdge, moments=None
) -> tuple[dict, dict]:
    """Initial physical parameter maps and a record of how they were made (``moments``: the
    frames' :func:`diffxas.data.stxm.frame_moments`, computed here when not given)."""
    e = np.asarray(ds.energies, np.float64)
    ill = np.asarray(prob.illuminated)
    if cfg.init.mode == "result":
        res = read_result(cfg.init.result)
        ex = dict(res.maps.extra)
        if "n_other" not in ex and all(k in ex for k in PARAM_NAMES):
            # composition from the maps: n_other = N_V (Re[Ne]/N_V - Z_V - f'_V(E_ref)), 0 where unknown
            b1 = np.nan_to_num(np.asarray(ex["b1"], np.float64))
            pr = XanesParams(
                **{k: jnp.asarray(np.nan_to_num(np.asarray(ex[k], np.float64)), jnp.float32) for k in PARAM_NAMES}
            )
            pr = XanesParams(**{**pr.as_dict(), "b1": jnp.asarray(np.where(b1 > 0, b1, 1.0), jnp.float32)})
            f1 = np.asarray(f1_v(pr, jnp.asarray([res.maps.reference_energy]), edge)[0], np.float64)
            nv = np.asarray(n_v(jnp.asarray(b1), edge), np.float64)
            ne = np.asarray(res.maps.ne_eff_per_nv, np.float64)
            ok = np.isfinite(ne) & (b1 > 0) & np.isfinite(f1)
            ex["n_other"] = np.where(ok, nv * (np.where(ok, ne, 0.0) - edge.z - np.where(ok, f1, 0.0)), 0.0)
        missing = [k for k in ALL_PARAMS if k not in ex]
        if missing:
            raise ConfigError(
                f"{cfg.init.result}: results file lacks per-pixel parameters {missing} needed for a warm start"
            )
        if res.maps.shape != common.shape:
            raise ConfigError(
                f"{cfg.init.result}: map grid {res.maps.shape} differs from this dataset's {common.shape}"
            )
        # amplitudes are 0 where the result has no value (no sample); positions and widths
        # take the median of the pixels that have one (a 0 eV edge or width is no start)
        vals = {}
        for k in ALL_PARAMS:
            v = np.asarray(ex[k], np.float64)
            fin = np.isfinite(v)
            fill = 0.0 if (k in AMPLITUDES or k == "n_other" or not fin.any()) else float(np.median(v[fin]))
            vals[k] = np.where(fin, v, fill)
        use = cfg.init.probes if cfg.init.probes != "auto" else ("file" if ds.illumination is not None else "result")
        # the result's fitted detector background, energy by energy (prepare_joint starts from it)
        extra = (
            {} if res.background is None else {"background_result": _background_for(res.background, res.energies, e)}
        )
        if use == "file":
            if ds.illumination is None:
                raise ConfigError("init_probes='file': the data file has no illumination; use init_probes='result'")
            return vals, {"init": "result", "init_result": cfg.init.result, "init_probes": "file", **extra}
        probes, gains = _membrane_normalised_probes(ds, res.probes, None if moments is None else moments[0])
        return vals, {
            "init": "result",
            "init_result": cfg.init.result,
            "init_probes": "result",
            "probes": probes,
            "probe_gain": gains,
            **extra,
        }
    stack = stxm_absorption(ds, common, sums=None if moments is None else moments[0])
    vals = fit_shape_and_amplitudes(stack, e, ill)
    if cfg.init.mode == "epie":
        out, info = _epie_refine(ds, common, cfg, edge, vals, ill, sums=None if moments is None else moments[0])
        return out, info
    if cfg.init.mode == "flat":
        for k in AMPLITUDES:
            vals[k] = np.full(common.shape, np.median(vals[k][ill]))
    # composition: a typical 40 electrons per V (between LiVO2 and LiVO3); refined by the phase data
    nv0 = np.asarray(n_v(jnp.asarray(np.clip(vals["b1"], 0, None)), edge))
    vals["n_other"] = nv0 * 20.0
    return vals, {"init": cfg.init.mode}


def _membrane_normalised_probes(
    ds: Dataset, probes, sums: np.ndarray | None = None
) -> tuple[np.ndarray | None, list[float] | None]:
    """Probes rescaled so that a membrane-only frame has the measured counts
    (:func:`diffxas.data.stxm.probes_at_membrane_counts`).

    The joint model's object is 1 on the membrane, so its probe is the beam times the
    membrane's transmission; a two-step result's probes are the bare beam. Without this a
    warm start's first steps push the membrane's absorption into the maps (noisy `tiny`:
    edge energy bias +0.62 eV, PE/Δμt -0.53 eV; with it ~0)."""
    return probes_at_membrane_counts(ds, probes, sums)


#: Incident-flux scatter (relative RMS beyond Poisson, membrane-only frames) above which
#: the joint solver warns: 0.3 % already raised the N_V error on `tiny` from 4.3 to 7.0 %
#: (docs/physics.md, "Incident-flux monitor").
FLUX_SCATTER_WARN = 0.003


def _check_flux(ds: Dataset, cfg: JointConfig, scatter: float | None, info: dict) -> None:
    """Record the measured flux scatter (``info["flux_scatter"]``) and warn (the "diffxas"
    logger) when it is above :data:`FLUX_SCATTER_WARN` and nothing models it."""
    info["flux_scatter"] = scatter
    if scatter is None or scatter <= FLUX_SCATTER_WARN:
        return
    what = "after the monitor's correction" if ds.monitor is not None else "and the data have no monitor"
    fix = (
        ""
        if cfg.frames.lr_scale > 0
        else "; per-frame scales can absorb part of it (joint.lr_scale = 0.003)"
        if ds.monitor is not None
        else "; give the I0 readings in the CXI file (instrument_1/monitor_1/data) or fit per-frame scales (joint.lr_scale = 0.003)"
    )
    logging.getLogger("diffxas").warning(
        f"joint: the membrane-only frames' counts scatter by {100 * scatter:.2g} % beyond Poisson noise "
        f"(incident-flux jitter) {what}{fix}"
    )


#: The joint's "epie" start keeps the file's illumination for the energies it does not
#: refine only when the refined lowest-energy probe still overlaps it this much
#: (|<P_file, P_refined>| / (|P_file| |P_refined|)); see :func:`_epie_refine`.
FILE_PROBE_OVERLAP = 0.99


def _epie_refine(
    ds: Dataset,
    common: Grid,
    cfg: JointConfig,
    edge: VEdge,
    vals: dict,
    ill: np.ndarray,
    sums: np.ndarray | None = None,
):
    """Sharpen the STXM start with a short ePIE at the lowest and highest energies.

    Shape parameters stay those of the STXM fit; per pixel, (a, b1) solve the two
    absorption values exactly (pre-edge amplitudes kept proportional to b1 with the
    particle's median ratios), and ``n_other`` follows from the phase at the lowest energy:
    n_other = -phi/(r_e lambda) - N_V (Z_V + f'_V). This gives the composition map a start
    from the data instead of a flat guess.
    """
    idx = [0, ds.n_energies - 1]
    sub = ds.select_energies(idx)
    e2 = np.asarray(sub.energies, np.float64)
    # the same background model as the joint: without it a strong background goes into the
    # start's maps and probe, and the joint does not get it out again (noisy `tiny`, 2
    # photons per pixel flat, joint "flat": Re[Ne]/N_V 9.11 -> 4.43, N_V 14.2 -> 8.1 %)
    er = run_epie(
        sub,
        EpieConfig(
            epochs=cfg.init.epochs,
            probe_update_start=5,
            decay_start=max(1, cfg.init.epochs * 3 // 4),
            probe_fwhm=cfg.probe.fwhm,
            background=cfg.background.mode,
            background_start=min(5, cfg.init.epochs - 1),
        ),
        common=common,
    )
    st = align_stack(
        er.objects, er.grids, er.common, e2, register=True, coverage=_cov(er.probes, er.corners, er.grids, er.common)
    )
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
        probe0, shift = centred_probe(probe0)
        scale = er.grids[0].pixel_size / common.pixel_size  # lowest energy's pixels -> common pixels (1 here)
        moved = [
            ndimage.shift(
                np.nan_to_num(np.asarray(x, np.float64)),
                (0, shift[0] * scale, shift[1] * scale),
                order=1,
                mode="nearest",
            )
            for x in (st.absorption, st.phase)
        ]
        st = dataclasses.replace(st, absorption=moved[0], phase=moved[1])
    part = ill & (vals["b1"] > 0.3 * np.percentile(vals["b1"][ill], 99))
    r11 = float(np.median(vals["c11"][part] / vals["b1"][part])) if part.any() else 0.0
    r21 = float(np.median(vals["c21"][part] / vals["b1"][part])) if part.any() else 0.0
    dm = np.asarray(
        linear_design(
            jnp.asarray(e2),
            vals["b2"].flat[0],
            vals["b3"].flat[0],
            vals["c12"].flat[0],
            vals["c13"].flat[0],
            vals["c22"].flat[0],
            vals["c23"].flat[0],
        ),
        np.float64,
    )  # (2, 4)
    g = dm[:, 1] + r11 * dm[:, 2] + r21 * dm[:, 3]  # response of each energy to b1
    det = g[1] - g[0]
    A0, A1 = np.nan_to_num(st.absorption[0]), np.nan_to_num(st.absorption[1])
    b1 = (A1 - A0) / det
    a = A0 - b1 * g[0]
    out = dict(vals)
    out.update(a=a, b1=b1, c11=r11 * b1, c21=r21 * b1)
    nv = np.asarray(n_v(jnp.asarray(np.clip(b1, 0, None)), edge), np.float64)
    pr = XanesParams(
        **{
            k: jnp.asarray(np.broadcast_to(np.asarray(out[k], np.float64), common.shape), jnp.float32)
            for k in PARAM_NAMES
        }
    )
    pr = XanesParams(**{**pr.as_dict(), "b1": jnp.ones(common.shape, jnp.float32)})
    f1 = np.asarray(f1_v(pr, jnp.asarray([e2[0]]), edge)[0], np.float64)
    phi0 = np.nan_to_num(st.phase[0])
    out["n_other"] = np.clip(-phi0 / (R_E * float(wavelength(e2[0]))) - nv * (edge.z + f1), 0.0, None)
    info = {"init": "epie", "init_epochs": cfg.init.epochs}
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
        why = (
            f"the file's illumination is a poor guess: overlap {overlap:.3f} with the lowest energy's refined probe; "
            "that probe"
            if poor_guess
            else "the file has no illumination: the lowest energy's refined probe"
        )
        info["probes_from"] = f"epie ({why}, re-centred, power from the membrane counts)"
        info["probe_recentred_px"] = [round(float(v), 4) for v in shift]
        if poor_guess:
            _log_warnings(
                [
                    f"the file's illumination is far from what ePIE refines from it at the lowest energy (overlap "
                    f"{overlap:.3f} < {FILE_PROBE_OVERLAP}): every energy starts from the refined probe instead"
                ]
            )
    info["probes"] = probes
    return out, info


def domain_index(path: str, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Domain index map (H, W) int from the /clusters/labels of results file ``path``:
    labels 0..D-1 as they are, unlabelled pixels (-1) -> D (one extra shared value)."""
    res = read_result(path)
    if res.clusters is None or "labels" not in res.clusters:
        raise ConfigError(f"{path}: no /clusters/labels to take the domains from; run `diffxas cluster {path}` first")
    lab = np.asarray(res.clusters["labels"], np.int64)
    idx = _domain_index_from_labels(lab, shape, str(path))
    n = int(lab.max()) + 1 if (lab >= 0).any() else 0
    return idx, {
        "file": str(path),
        "sha256": sha256_file(path),
        "n_domains": n,
        "unlabelled_pixels": int((lab < 0).sum()),
    }


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


def make_params(
    vals: dict,
    cfg: JointConfig,
    sc: Scales,
    probes: np.ndarray,
    n_frames: int,
    domain: np.ndarray | None = None,
    basis: np.ndarray | None = None,
    background_shape: tuple | None = None,
) -> JointParams:
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
        v = np.broadcast_to(
            np.asarray(vals[k], np.float64), np.shape(domain) if domain is not None else np.shape(vals[k])
        )
        smp = (
            np.broadcast_to(sample, v.shape) if v.ndim == 2 and np.shape(sample) == v.shape else np.ones(v.shape, bool)
        )
        if k in cfg.spectra.per_domain:
            n_dom = int(domain.max()) + 1
            med = float(np.median(v[smp])) if smp.any() else float(np.median(v))
            v = np.asarray(
                [np.median(v[(domain == d) & smp]) if np.any((domain == d) & smp) else med for d in range(n_dom)]
            )
        elif k not in cfg.spectra.per_pixel:
            v = np.asarray(np.median(v[smp]) if smp.any() else np.median(v))
        raw[k] = jnp.asarray(to_raw(k, v, sc), jnp.float32)
    gain = np.zeros(len(probes))
    if basis is not None:
        probes, gain = fit_probe_model(probes, basis)
    p = jnp.asarray(probes, jnp.complex64)
    return JointParams(
        raw=raw,
        probe_re=jnp.real(p),
        probe_im=jnp.imag(p),
        dpos=jnp.zeros((n_frames, 2), jnp.float32),
        dscale=jnp.zeros((n_frames,), jnp.float32),
        probe_gain=jnp.asarray(gain, jnp.float32),
        background=None if background_shape is None else jnp.zeros(background_shape, jnp.float32),
    )
