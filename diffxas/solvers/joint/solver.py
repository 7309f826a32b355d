"""Optimiser, the pure state/step (:class:`JointState`, :class:`JointSolver`), L-BFGS polish and the held-out loss."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffxas.data.dataset import Dataset
from diffxas.errors import ConfigError, is_disk_full
from diffxas.physics.geometry import Grid
from diffxas.solvers.joint.config import AMPLITUDES, JointConfig
from diffxas.solvers.joint.loss import data_loss, total_loss
from diffxas.solvers.joint.model import JointParams, Problem, build_problem


def _labels(params: JointParams, cfg: JointConfig):
    raw_labels = {k: ("amp" if k in AMPLITUDES + ("n_other",) else "energy") for k in params.raw}
    return JointParams(
        raw=raw_labels,
        probe_re="probe",
        probe_im="probe",
        dpos="pos",
        dscale="scale",
        probe_gain="gain",
        background=None if params.background is None else "background",
    )


def make_optimizer(params: JointParams, cfg: JointConfig, probe_scale: float):
    def sched(lr):
        return optax.cosine_decay_schedule(lr, max(cfg.optim.steps, 1), alpha=cfg.optim.lr_decay)

    probe_lr = cfg.probe.lr * probe_scale

    def probe_sched(step):
        return jnp.where(step >= cfg.probe.start, sched(probe_lr)(step), 0.0)

    shape_start = cfg.optim.steps // 4 if cfg.spectra.shape_start is None else cfg.spectra.shape_start

    def energy_sched(step):
        return jnp.where(step >= shape_start, sched(cfg.spectra.lr_energy)(step), 0.0)

    # frame scales move in the second half only: earlier they would absorb the mismatch of
    # maps that are still far off (measured on noise-free tiny with 10 % flux jitter: freed
    # from step 0 the scales' correlation with the truth was ~0 after 60 steps)
    def scale_sched(step):
        return jnp.where(step >= cfg.optim.steps // 2, sched(cfg.frames.lr_scale)(step), 0.0)

    tx = {
        "amp": optax.adam(sched(cfg.spectra.lr_amp)),
        "energy": optax.adam(energy_sched),
        "probe": optax.adam(probe_sched),
        "pos": optax.adam(sched(cfg.frames.lr_positions)) if cfg.frames.lr_positions > 0 else optax.set_to_zero(),
        "scale": optax.adam(scale_sched) if cfg.frames.lr_scale > 0 else optax.set_to_zero(),
        # per-energy log gains of the probes (either probe model): log units per step, from step 0
        "gain": optax.adam(sched(cfg.probe.lr_gain)) if cfg.probe.lr_gain > 0 else optax.set_to_zero(),
        # log factor of the incoherent background (diffxas.physics.background), from step 0
        "background": optax.adam(sched(cfg.background.lr)) if cfg.background.lr > 0 else optax.set_to_zero(),
    }
    return optax.multi_transform(tx, _labels(params, cfg))


class Convergence:
    """The optional stopping rule of the joint run (``cfg.stopping.tol`` > 0; see :class:`JointConfig`).

    :meth:`update` takes the loss of every step (data-loss units; a host float, so with the
    rule on every step synchronises) and returns True when the run may stop: the mean of the
    last ``tol_window`` losses is within ``tol`` (relative) of the mean of the window before
    it, and the step is at least :attr:`earliest`. Means over windows, not single steps:
    mini-batch losses scatter from step to step. Bad settings are :class:`ConfigError`.
    """

    def __init__(self, cfg: JointConfig):
        if not (cfg.stopping.tol >= 0.0) or not np.isfinite(cfg.stopping.tol):
            raise ConfigError(f"tol must be a finite number >= 0 (0 = off), got {cfg.stopping.tol!r}")
        if not isinstance(cfg.stopping.tol_window, (int, np.integer)) or cfg.stopping.tol_window < 1:
            raise ConfigError(f"tol_window must be a positive number of steps, got {cfg.stopping.tol_window!r}")
        self.tol, self.window = float(cfg.stopping.tol), int(cfg.stopping.tol_window)
        shape_start = cfg.optim.steps // 4 if cfg.spectra.shape_start is None else cfg.spectra.shape_start
        free = max(shape_start, cfg.probe.start, cfg.optim.steps // 2 if cfg.frames.lr_scale > 0 else 0)
        #: first step count (1-based) at which the rule may stop the run
        self.earliest = free + 2 * self.window
        self.losses: list[float] = []

    @property
    def on(self) -> bool:
        return self.tol > 0

    def update(self, step: int, loss: float) -> bool:
        """Record the loss after ``step`` steps (1-based); True: converged, stop here."""
        self.losses.append(float(loss))
        w = self.window
        if not self.on or step < self.earliest or len(self.losses) < 2 * w:
            return False
        last, prev = float(np.mean(self.losses[-w:])), float(np.mean(self.losses[-2 * w : -w]))
        return abs(prev - last) <= self.tol * abs(last)


class JointState(eqx.Module):
    params: JointParams
    opt_state: Any
    step: jax.Array


def _save_checkpoint(path: str, state: JointState, history: dict):
    """Write the state and history (both to temporary files first, then both renamed: a
    failure leaves the previous checkpoint whole and no ``*.tmp``). A full disk skips this
    checkpoint with one warning naming the file (the run goes on; the previous checkpoint
    stays resumable); any other failure raises."""
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
            path,
            int(state.step),
        )


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


def lbfgs_polish(
    solver: JointSolver,
    state: JointState,
    n: int,
    history: dict | None = None,
    norm: float = 1.0,
    t_start: float | None = None,
) -> JointState:
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
    for _ in range(n):
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
    return eqx.tree_at(
        lambda p: tuple(getattr(p, f) for f in HOLDOUT_FIELDS),
        prob,
        tuple(getattr(h, f) for f in HOLDOUT_FIELDS),
        is_leaf=lambda x: x is None,
    )


def heldout_loss(params: JointParams, hold: Problem, loss_name: str, chunk: int) -> jax.Array:
    """Data loss of the held-out frames in ``hold`` (:func:`heldout_problem`) under the
    fitted ``params``, at their nominal positions and unit scale (times their monitor
    reading): the per-frame corrections exist only for the fitted frames."""
    n = int(hold.frame_energy.shape[0])
    p = eqx.tree_at(
        lambda q: (q.dpos, q.dscale),
        params,
        (jnp.zeros((n, 2), params.dpos.dtype), jnp.zeros((n,), params.dscale.dtype)),
    )
    return data_loss(p, hold, None, loss_name, chunk)
