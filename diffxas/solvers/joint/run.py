"""Driver of the joint reconstruction (:func:`reconstruct_joint`)."""

from __future__ import annotations

import math
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffxas.analysis.clustering import ClusterConfig, cluster_maps
from diffxas.data.checks import check_reference_energy, ensure_checked
from diffxas.data.dataset import Dataset, mean_frames
from diffxas.data.results import read_result, write_result
from diffxas.data.stxm import (
    NO_EMPTY_REGION,
    dpc_phase,
    empty_region,
    flux_scatter,
    frame_moments,
    illumination_at_counts,
)
from diffxas.errors import ConfigError, DivergenceError
from diffxas.maps import Result
from diffxas.physics.background import FLOOR, as_maps, initial_background, per_energy
from diffxas.physics.background import summary as background_summary
from diffxas.physics.constants import R_E
from diffxas.physics.geometry import Grid, wavelength
from diffxas.physics.scattering import VEdge
from diffxas.solvers.joint.config import ALL_PARAMS, RELATIVE_OK, JointConfig
from diffxas.solvers.joint.init import (
    _check_flux,
    _domain_index_from_labels,
    _membrane_normalised_probes,
    domain_index,
    init_params,
    make_params,
)
from diffxas.solvers.joint.loss import prior_weights
from diffxas.solvers.joint.model import (
    Scales,
    build_problem,
    chunk_layout,
    energy_grids,
    probe_basis,
    probes,
)
from diffxas.solvers.joint.result import (
    _log_warnings,
    energy_count_warnings,
    make_result,
)
from diffxas.solvers.joint.solver import (
    Convergence,
    JointSolver,
    _load_checkpoint,
    _save_checkpoint,
    heldout_loss,
    heldout_problem,
    lbfgs_polish,
    make_optimizer,
)
from diffxas.solvers.joint.stream import StreamSolver, frames_source, plan_memory


def prepare_joint(
    ds: Dataset,
    cfg: JointConfig = JointConfig(),
    n_shards: int = 1,
    domain_labels=None,
    common: Grid | None = None,
    place_frames=None,
    findings: dict | None = None,
):
    """Build the problem, initial parameters and solver for ``ds``.

    ``findings``: the data checks' record (:func:`diffxas.data.checks.ensure_checked`, which
    :func:`reconstruct_joint` runs once on the whole dataset before holding frames out);
    None (a direct call, e.g. from a benchmark) runs the warnings of
    :func:`diffxas.data.checks.data_findings` here. The frames' power (the probe guess put at
    the counts, :func:`~diffxas.data.stxm.illumination_at_counts`) is set here in either case:
    it is part of the start, not a check, and uses this function's one pass over the frames.

    ``n_shards``: number of devices the frames will be split over (the chunk size is
    rounded to a multiple of it; see :mod:`diffxas.solvers.joint.parallel`).

    The frames go to the device (:class:`JointSolver`) or are streamed from ``ds.frames``
    chunk by chunk every step (:class:`diffxas.solvers.joint.stream.StreamSolver`, same interface)
    according to ``cfg.memory.mode`` (:func:`diffxas.solvers.joint.stream.plan_memory`, one log line).
    ``ds.frames`` may be a lazy source (:func:`diffxas.data.cxi.open_cxi`): it is then read in
    ranges, never all at once.

    Returns ``(solver, state, context)`` where ``context`` holds the grids, the spectral
    edge model, the initialisation record (for :func:`make_result`) and the memory plan
    (``context["memory"]``).
    """
    e = np.asarray(ds.energies, np.float64)
    edge = VEdge.for_energies(cfg.element, e, cfg.table)  # fails at once on a wrong element
    common = ds.common_grid() if common is None else common
    pre = Scales(
        amp=1.0, n_other=1.0, e_mid=float(0.5 * (e.min() + e.max())), e_half=float(0.5 * (e.max() - e.min()) + 1.0)
    )
    nchunk, chunk_n = chunk_layout(ds.n_frames, cfg.memory.chunk_size, n_shards)
    plan = plan_memory(
        cfg,
        ds.n_frames,
        nchunk,
        chunk_n,
        ds.n_energies,
        ds.frame_size,
        common.shape,
        energy_grids(ds, common)[0].shape,
        source=frames_source(ds.frames),
        n_shards=n_shards,
        emit=False,
    )
    prob, common, grids = build_problem(
        ds, cfg, edge, pre, common, n_shards=n_shards, frames_on_device=plan.mode == "device", place_frames=place_frames
    )
    moments = frame_moments(ds)  # one pass over the frames for the bright field and the DPC phase
    # a probe guess in the file at another power than the frames' (another normalisation,
    # frames not in counts) is put at the counts: the joint is sensitive to it
    ds, power = illumination_at_counts(ds, moments[0])
    if findings is None:  # counts times a constant, a beamstop, clipped pixels: one warning each
        from diffxas.data.checks import data_findings

        findings = data_findings(ds)
    quantum = findings.get("count_quantum")
    vals, init_info = init_params(ds, prob, common, cfg, edge, moments)
    if power is not None:
        init_info["illumination_power"] = power
    if quantum is not None:
        init_info["count_quantum"] = quantum
    ill = np.asarray(prob.illuminated)
    amp = float(np.percentile(np.abs(vals["b1"][ill]), 95)) if ill.any() else 0.05
    amp = amp if amp > 1e-6 else 0.05
    lam0 = float(wavelength(edge.edge_ev))
    sc = Scales(
        amp=amp,
        n_other=float(amp / (R_E * lam0 * float(edge.delta_f2)) * 20.0),
        e_mid=pre.e_mid,
        e_half=pre.e_half,
        relative=tuple(k for k in RELATIVE_OK if k in cfg.spectra.relative and "b1" in cfg.spectra.per_pixel),
    )
    prob = eqx.tree_at(lambda p: p.scales, prob, sc)
    # The empty reference region pins the maps' zero (amplitudes 0 there). It is found on the
    # low-resolution phase from the frames' centres of mass (DPC, diffxas.data.stxm.dpc_phase),
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
            from diffxas.solvers.twostep.epie import initial_probes

            probes0, _ = _membrane_normalised_probes(ds, initial_probes(ds, grids, cfg.probe.fwhm), moments[0])
            fwhm = f"{cfg.probe.fwhm * 1e9:.4g} nm"
            init_info["probes_from"] = f"KB focus of {fwhm} FWHM (the file has no illumination; epie.initial_probes)"
            _log_warnings(
                [
                    f"the data file has no illumination and init = {cfg.init.mode!r} starts from a {fwhm} KB focus "
                    "guess; init = 'epie' (the default) or a warm start (--init) refine the probe first"
                ]
            )
        else:
            probes0 = np.asarray(ds.illumination)
    domain = None
    if cfg.spectra.per_domain:
        if cfg.spectra.domains == "auto":
            if domain_labels is None:
                raise ConfigError(
                    "domains='auto' needs the first pass: run it through reconstruct_joint (or pass domain_labels)"
                )
            lab, rec = domain_labels
            domain, init_info["domains"] = (
                _domain_index_from_labels(np.asarray(lab), common.shape, "auto (first pass)"),
                dict(rec),
            )
            init_info["domains"]["n_domains"] = int(np.max(lab)) + 1 if np.any(np.asarray(lab) >= 0) else 0
        else:
            domain, init_info["domains"] = domain_index(cfg.spectra.domains, common.shape)
        prob = eqx.tree_at(lambda p: p.domain, prob, jnp.asarray(domain, jnp.int32), is_leaf=lambda x: x is None)
    basis = None
    if cfg.probe.model == "smooth":
        basis = probe_basis(e, min(cfg.probe.degree, ds.n_energies - 1))
        prob = eqx.tree_at(lambda p: p.probe_basis, prob, jnp.asarray(basis), is_leaf=lambda x: x is None)
    bg0 = None
    bg_result = init_info.pop("background_result", None)
    if cfg.background.mode != "none":
        if bg_result is not None:  # a warm start from a result that fitted one: its level, in this mode
            m = ds.frame_size
            bg0 = as_maps(bg_result, ds.n_energies, m) if cfg.background.mode == "map" else per_energy(bg_result)
            bg0 = np.maximum(np.asarray(bg0, np.float32), FLOOR)
            init_info["background_from"] = "the warm start's results file"
        else:
            bg0 = initial_background(mean_frames(ds), np.asarray(ds.mask), cfg.background.mode)
            init_info["background_from"] = "the darkest 4x4 detector block of each energy's mean frame"
        init_info["background_start"] = background_summary(bg0)
        bg0 = np.fft.ifftshift(bg0, axes=(-2, -1)) if bg0.ndim == 3 else bg0  # the frames' layout here
        prob = eqx.tree_at(lambda p: p.background0, prob, jnp.asarray(bg0, jnp.float32), is_leaf=lambda x: x is None)
    params = make_params(
        vals, cfg, sc, probes0, ds.n_frames, domain, basis, background_shape=None if bg0 is None else np.shape(bg0)
    )
    if basis is not None:
        p_fit = np.asarray(probes(params, prob))
        init_info["probe_model_fit"] = float(
            np.sqrt(np.sum(np.abs(p_fit - probes0) ** 2) / max(np.sum(np.abs(probes0) ** 2), 1e-30))
        )
    probe_scale = float(np.sqrt(np.mean(np.abs(probes0) ** 2)))
    opt = make_optimizer(params, cfg, probe_scale)
    n_frames = ds.n_frames
    bs = n_frames if cfg.optim.batch_size is None else min(cfg.optim.batch_size, n_frames)
    chunk = min(cfg.memory.chunk_size, bs)
    tv = float(cfg.prior.tv_weight)
    if cfg.prior.mode == "tv":
        pw, wmaps = prior_weights(params, prob, cfg, edge)
        init_info["prior_weights"] = pw
        zero = np.zeros(common.shape, np.float32)
        prob = eqx.tree_at(
            lambda p: p.tv_scale, prob, jnp.asarray(np.stack([wmaps.get(k, zero) for k in ALL_PARAMS]), jnp.float32)
        )
        tv = 1.0 if any(v["weight"] > 0 for v in pw.values()) else 0.0
    static = (cfg.optim.loss, chunk, tv, float(n_frames))
    if plan.mode == "stream":
        solver = StreamSolver(
            prob,
            opt,
            static,
            batch=bs,
            n_frames=n_frames,
            seed=cfg.optim.seed,
            frames=ds.frames,
            host_cache=plan.host_cache,
        )
    else:
        solver = JointSolver(prob=prob, opt=opt, static=static, batch=bs, n_frames=n_frames, seed=cfg.optim.seed)
    ctx = {"common": common, "grids": grids, "edge": edge, "init_info": init_info, "memory": plan.to_dict()}
    plan.log()  # after the initialisation has read (and validated) the frames: a bad file fails before this line
    return solver, solver.init(params), ctx


def reconstruct_joint(
    ds: Dataset,
    cfg: JointConfig = JointConfig(),
    progress: bool = False,
    checkpoint: str | None = None,
    resume: bool = False,
    callback=None,
    n_shards: int = 1,
    shard=None,
    _domain_labels=None,
    place_frames=None,
) -> Result:
    """Run the joint solver on ``ds`` and return a :class:`Result` (maps, stacks, probes, history).

    ``checkpoint``: file to save the state to every ``cfg.record.checkpoint_every`` steps (atomic);
    with ``resume=True`` an existing checkpoint is loaded and the run continues from it
    (mini-batches depend only on the seed and the step number, so a resumed run follows
    the uninterrupted one). ``n_shards``/``shard``: multi-device hook used by
    :func:`diffxas.solvers.joint.parallel.reconstruct_joint_sharded` (``shard(solver, state)`` returns
    the sharded pair).

    Data checks: a dataset checked by the pipeline (:func:`diffxas.app.pipeline.check_data`,
    used by ``diffxas reconstruct``, the demo and sweeps) is trusted as it is; one that comes
    here from Python unchecked is checked once (:func:`diffxas.data.checks.ensure_checked`),
    so that a direct call refuses the same inputs and warns the same way as the command.
    The check is remembered with the dataset, so the two-pass mode's second call and the
    sharded driver do not repeat it. The reference-energy check stays here as well: it
    compares two numbers and guards direct calls.
    """
    ds, found = ensure_checked(ds)  # trusted when the pipeline checked it; else refuse or drop bad frames here
    check_reference_energy(cfg.reference_energy, ds.energies, "joint.reference_energy")
    if cfg.spectra.per_domain and cfg.spectra.domains == "auto" and _domain_labels is None:
        return _reconstruct_two_pass(ds, cfg, progress, checkpoint, resume, callback, n_shards, shard)
    conv = Convergence(
        cfg
    )  # cfg.stopping.tol > 0: stop when the loss has settled (bad tol: ConfigError before any work)
    t_start = time.perf_counter()
    hold = None
    if cfg.stopping.holdout > 0:
        if n_shards > 1:
            raise ConfigError("holdout runs on one device: set holdout=0 for a sharded run")
        held = ds.holdout_mask(cfg.stopping.holdout)
        fit_ds, held_ds = ds.subset(~held), ds.subset(held)
        # the full scan's grid: the held-out frames must lie on the fitted object
        solver, state, ctx = prepare_joint(
            fit_ds, cfg, n_shards=n_shards, domain_labels=_domain_labels, common=ds.common_grid(), findings=found
        )
        if ctx["memory"]["mode"] != "device":
            raise ConfigError(
                "holdout needs the frames on the device (memory='device'); the streaming mode has no "
                "held-out evaluation"
            )
        hold = heldout_problem(solver.prob, held_ds, cfg, ctx["common"])
        hold_norm = float(held_ds.n_frames * ds.frame_size**2)
        hold_fn = eqx.filter_jit(heldout_loss)
        ctx["init_info"]["holdout"] = {
            "fraction": float(cfg.stopping.holdout),
            "heldout_frames": int(held_ds.n_frames),
            "fit_frames": int(fit_ds.n_frames),
        }
        ds = fit_ds
    else:
        solver, state, ctx = prepare_joint(
            ds, cfg, n_shards=n_shards, domain_labels=_domain_labels, place_frames=place_frames, findings=found
        )
    # after prepare_joint: bad input gets its one error line alone; a two-pass run's first
    # pass has the same per_pixel and has logged it already
    if _domain_labels is None:
        _log_warnings(energy_count_warnings(ds.n_energies, cfg.spectra.per_pixel))
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
        from tqdm import tqdm  # tqdm: ~25 ms, only with progress

        bar = tqdm(total=cfg.optim.steps, initial=int(state.step), desc="joint", unit="step")
    t_compile = None
    norm = float(ds.n_frames * ds.frame_size**2)
    for s in range(int(state.step), cfg.optim.steps):
        t0 = time.perf_counter()
        state, loss = solver.step(state)
        if t_compile is None:
            jax.block_until_ready(loss)
            t_compile = time.perf_counter() - t0
        stop = conv.on and conv.update(s + 1, float(loss) / norm)
        if (s + 1) % cfg.record.log_every == 0 or s == cfg.optim.steps - 1 or s == 0 or stop:
            lv = float(loss)
            if not math.isfinite(lv):
                raise DivergenceError(f"joint solver diverged at step {s + 1}: loss is {lv}")
            history["step"].append(s + 1)
            history["loss"].append(lv / norm)
            if hold is not None:
                history["heldout_loss"].append(
                    float(hold_fn(state.params, hold, cfg.optim.loss, solver.static[1])) / hold_norm
                )
            history["time"].append(time.perf_counter() - t_start)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{lv / norm:.4g}",
                    **({"heldout": f"{history['heldout_loss'][-1]:.4g}"} if hold is not None else {}),
                )
            if callback is not None:
                callback(s + 1, lv / norm, state)
        if bar is not None:
            bar.update(1)
        if checkpoint and (s + 1) % cfg.record.checkpoint_every == 0 and jax.process_index() == 0:
            _save_checkpoint(checkpoint, state, history)
        if stop:
            break
    history["steps_taken"] = [int(state.step)]  # Adam steps (cfg.optim.steps unless cfg.stopping.tol stopped the run)
    if bar is not None:
        bar.close()
    if cfg.optim.lbfgs_steps > 0:
        if ctx["memory"]["mode"] != "device":
            raise ConfigError(
                "lbfgs_steps needs the frames on the device (memory='device'): its line search evaluates the full loss many times"
            )
        state = lbfgs_polish(solver, state, cfg.optim.lbfgs_steps, history, norm, t_start)
    if hold is not None:  # after the last step (and the L-BFGS polish, if any)
        ctx["init_info"]["holdout"]["final_heldout_loss"] = (
            float(hold_fn(state.params, hold, cfg.optim.loss, solver.static[1])) / hold_norm
        )
    wall = time.perf_counter() - t_start
    info = dict(ctx["init_info"], resumed_from_step=resumed_from)
    result = make_result(
        ds,
        state.params,
        solver.prob,
        ctx["common"],
        ctx["grids"],
        cfg,
        ctx["edge"],
        history,
        info,
        timing={"wall_s": wall, "compile_s": t_compile or 0.0},
    )
    result.config = dict(result.config or {}, memory=ctx["memory"])  # the mode that ran and why
    return result


def _reconstruct_two_pass(ds, cfg, progress, checkpoint, resume, callback, n_shards, shard) -> Result:
    """``domains="auto"``: a first pass without per-domain parameters, k-means of its maps
    (default :class:`diffxas.analysis.clustering.ClusterConfig`, k by elbow), then the second pass
    with the per-domain parameters on those domains. With a checkpoint, the first pass's
    result is kept next to it (``CHECKPOINT.pass1.h5``) so ``resume`` does not redo it."""
    t0 = time.perf_counter()
    p1_file = checkpoint + ".pass1.h5" if checkpoint else None
    if p1_file and resume and os.path.exists(p1_file):
        first = read_result(p1_file)
    else:
        first = reconstruct_joint(
            ds,
            cfg.replace(per_domain=(), domains=None),
            progress=progress,
            checkpoint=checkpoint + ".pass1" if checkpoint else None,
            resume=resume,
            callback=callback,
            n_shards=n_shards,
            shard=shard,
        )
        if p1_file:
            write_result(p1_file, first)
    ccfg = ClusterConfig()
    cl = cluster_maps(first.maps, ccfg)
    rec = {
        "file": "auto (first pass)",
        "first_pass_steps": cfg.optim.steps,
        "first_pass_wall_s": float(first.history["wall_s"][0]),
        "cluster": {"k": int(np.max(cl["labels"])) + 1, "features": list(ccfg.features)},
        "unlabelled_pixels": int((np.asarray(cl["labels"]) < 0).sum()),
    }
    res = reconstruct_joint(
        ds,
        cfg,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
        callback=callback,
        n_shards=n_shards,
        shard=shard,
        _domain_labels=(cl["labels"], rec),
    )
    res.history["wall_s"] = np.asarray([time.perf_counter() - t0])  # both passes
    res.history["first_pass_wall_s"] = np.asarray([rec["first_pass_wall_s"]])
    return res
