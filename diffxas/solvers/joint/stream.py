r"""Frames larger than the device: the joint step streamed chunk by chunk from the host or the file.

The joint step is a sum over frames. In the default *device* mode (:class:`diffxas.solvers.joint.solver.JointSolver`)
all frames sit on the device in the chunked layout and one jitted step scans over the
chunks. When they do not fit, the *stream* mode (:class:`StreamSolver`) keeps no frames on
the device; every step loops on the host over the same chunks:

1. ``begin`` (jitted): the objects of every energy and the probes' FFTs from the maps
   (:func:`diffxas.solvers.joint.model.model_objects_and_probes`), and zero accumulators;
2. for every chunk: its frames are read from the source (a :class:`diffxas.data.cxi.CxiFrames`
   backed by the CXI file, or an in-memory array) by a prefetch thread while the previous
   chunk computes, transferred, and ``accumulate`` (jitted, one compilation: every chunk has
   the same shape, the last one padded with frame id -1) adds the chunk's loss and its
   gradient with respect to the objects, the probes' FFTs and the position corrections to
   the accumulators (donated, updated in place);
3. ``finish`` (jitted): the accumulated object/probe cotangents are pulled back to the
   parameters through the object model (``jax.vjp``), the TV prior is added, and one optax
   update is applied.

By the chain rule this is the gradient of the in-memory full-batch step (same loss, same
parameters after the update, up to the order of float32 sums; ``tests/test_stream.py``).
Mini-batches (``batch_size``) pick the same random frames as the in-memory step.

The mode is chosen by :func:`plan_memory` from ``JointConfig.memory.mode`` (``"auto"``,
``"device"``, ``"stream"``), the memory model of ``docs/scaling.md`` (:func:`memory_estimate`)
and a budget (``JointConfig.memory.budget_gib``, default from the device's memory
statistics on a GPU, else half of the available host memory), with one log line on the
``"diffxas"`` logger saying which mode runs and why.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
from functools import partial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffxas.data.dataset import read_frames, take_frames
from diffxas.errors import ConfigError
from diffxas.physics.forward import loss_fn
from diffxas.solvers.joint.loss import chunk_loss, regulariser
from diffxas.solvers.joint.model import model_objects_and_probes
from diffxas.solvers.joint.solver import JointState

log = logging.getLogger("diffxas")

GIB = float(2**30)


# ----------------------------------------------------------------------------- memory model


def memory_estimate(
    n_chunks: int, chunk: int, n_energies: int, frame_size: int, map_shape, grid_shape, n_shards: int = 1
) -> dict[str, int]:
    """Device bytes of the joint solver in each mode (per device), from the memory model of
    ``docs/scaling.md`` section 4 (coefficients measured from XLA's buffer assignment).

    ``device``: frames resident (``4 M^2`` per padded frame) + one chunk's working memory
    (``64 M^2`` per chunk frame, rematerialised) + maps, Adam state, per-energy stacks,
    resampling matrices, probes, per-frame geometry. ``stream``: the same without the
    resident frames, plus up to three chunks of frames in flight (computing, queued,
    transferring) and the object/probe cotangent accumulators.
    """
    K, M = int(n_energies), int(frame_size)
    H, W = (int(s) for s in map_shape)
    ny, nx = (int(s) for s in grid_shape)
    D = max(1, int(n_shards))
    F = int(n_chunks) * int(chunk)
    frames = 4 * M * M * F // D
    base = (
        48 * F  # frame geometry + position corrections with Adam moments
        + 64 * M * M * chunk // D  # one chunk's exit waves, far fields and cotangents
        + H * W * (264 + 61 * K)  # maps with Adam state (in/out) + per-energy stacks
        + 4 * K * (ny * H + nx * W)  # resampling matrices
        + (48 + 4) * K * M * M
    )  # probes with Adam state (in/out) + mask
    stream_extra = 3 * 4 * M * M * chunk + 2 * 8 * K * ny * nx + 2 * 8 * K * M * M
    return {"frames": int(frames), "device": int(base + frames), "stream": int(base + stream_extra)}


def host_available_bytes() -> int | None:
    """Available host memory (``MemAvailable`` of /proc/meminfo, else free pages via os.sysconf)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_budget() -> tuple[int | None, str]:
    """(bytes, description): 90 % of the first device's free memory when it reports memory
    statistics (GPU), else half of the available host memory (CPU: the device is the host,
    and building the device mode's problem holds about two copies of the frames)."""
    try:
        dev = jax.local_devices()[0]
        stats = dev.memory_stats()
    except Exception:  # backends without memory statistics
        dev, stats = None, None
    if stats and stats.get("bytes_limit"):
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return int(0.9 * free), f"90% of the free memory of {dev.device_kind}"
    avail = host_available_bytes()
    if avail:
        return int(0.5 * avail), "half the available host memory"
    return None, "unknown"


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The chosen mode and why (recorded in the result's ``config["memory"]``)."""

    mode: str  # "device" or "stream"
    requested: str  # JointConfig.memory.mode
    reason: str
    source: str  # the frames' file, or "host memory"
    n_chunks: int
    chunk: int
    n_shards: int
    frames_bytes: int
    device_bytes: int
    stream_bytes: int
    budget_bytes: int | None
    budget_source: str
    host_cache: bool = False  # stream mode: the file's frames loaded once into host memory
    messages: tuple = ()  # (level, line) pairs: the log lines of the choice

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["log"] = [line for _, line in d.pop("messages")]
        return d

    def log(self, logger: logging.Logger | None = None) -> None:
        """Emit the plan's lines on ``logger`` (default: the ``"diffxas"`` logger)."""
        logger = log if logger is None else logger
        for level, line in self.messages:
            logger.log(level, line)


def _gib(n) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.3g} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.3g} MiB"


def frames_source(frames) -> str:
    path = getattr(frames, "path", None)
    return os.fspath(path) if path is not None else "host memory"


def plan_memory(
    cfg,
    n_frames: int,
    n_chunks: int,
    chunk: int,
    n_energies: int,
    frame_size: int,
    map_shape,
    grid_shape,
    source: str = "host memory",
    n_shards: int = 1,
    emit: bool = True,
) -> MemoryPlan:
    """Choose ``"device"`` or ``"stream"`` for ``cfg`` (a JointConfig) and log one line saying which and why.

    ``"auto"``: device mode when its estimate (:func:`memory_estimate`) fits the budget
    (``cfg.memory.budget_gib`` or :func:`default_budget`), else stream mode. Streaming runs
    on one device: with ``n_shards > 1`` ``"auto"`` keeps the frames on the devices (with a
    warning when the per-device estimate exceeds the budget) and ``"stream"`` is refused.
    ``emit=False``: the lines are only stored (``plan.messages``; :meth:`MemoryPlan.log`).
    """
    est = memory_estimate(n_chunks, chunk, n_energies, frame_size, map_shape, grid_shape, n_shards)
    if cfg.memory.budget_gib is not None:
        budget, bsrc = int(cfg.memory.budget_gib * GIB), "memory_budget_gib"
    elif cfg.memory.mode == "auto":
        budget, bsrc = default_budget()
    else:
        budget, bsrc = None, "not needed"
    need = f"frames {_gib(est['frames'])} + working memory {_gib(est['device'] - est['frames'])}"
    budget_txt = f"budget {_gib(budget)} ({bsrc})"
    warn = None
    if cfg.memory.mode == "stream":
        if n_shards > 1:
            raise ConfigError(
                f"memory = 'stream' runs on one device, not {n_shards}: use memory = 'auto' or 'device' "
                "with several devices"
            )
        mode, reason = "stream", "memory = 'stream'"
    elif cfg.memory.mode == "device":
        mode, reason = "device", f"memory = 'device'; {need}"
    elif budget is None:
        mode, reason = "device", f"{need}; device memory unknown, set memory_budget_gib to stream"
    elif est["device"] <= budget:
        mode, reason = "device", f"data {_gib(est['device'])} <= {budget_txt}"
    elif n_shards > 1:
        mode, reason = (
            "device",
            f"data {_gib(est['device'])} per device > {budget_txt}, but streaming runs on one device",
        )
        warn = f"joint: warning: the frames may not fit the {n_shards} devices; lower chunk_size or use more devices"
    elif est["stream"] >= est["device"]:
        mode, reason = (
            "device",
            (
                f"data {_gib(est['device'])} > {budget_txt}, but streaming would need as much "
                f"({_gib(est['stream'])}: the chunk's working memory dominates)"
            ),
        )
        warn = "joint: warning: the problem may not fit the device; lower chunk_size"
    else:
        mode, reason = "stream", f"data {_gib(est['device'])} > {budget_txt}"
        if est["stream"] > budget:
            warn = (
                f"joint: warning: even streaming needs ~{_gib(est['stream'])} > budget {_gib(budget)}; lower chunk_size"
            )
    if mode == "stream" and cfg.memory.mode == "stream" and budget is not None and est["stream"] > budget:
        warn = f"joint: warning: streaming needs ~{_gib(est['stream'])} > budget {_gib(budget)}; lower chunk_size"
    cache = False
    origin = source
    if mode == "stream" and source != "host memory":
        # a file's frames that fit the host memory are read once, not every step
        avail = host_available_bytes()
        host_frames = 4 * int(frame_size) ** 2 * int(n_frames)
        cache = avail is not None and host_frames <= 0.5 * avail
        if cache:
            origin = f"host memory ({source} loaded once: {_gib(host_frames)} <= half the available host memory)"
        else:
            origin = f"{source} (read every step: {_gib(host_frames)} > half the available host memory {_gib(avail)})"
    chunks = f"{n_chunks} chunk{'s' if n_chunks != 1 else ''} of {chunk}"
    if mode == "stream":
        line = f"joint: streaming frames from {origin} in {chunks} ({reason}; streaming needs ~{_gib(est['stream'])})"
    else:
        where = f"{n_shards} devices" if n_shards > 1 else "device"
        line = f"joint: frames on {where}, {n_frames} frames in {chunks} ({reason})"
    msgs = [(logging.INFO, line)] + ([(logging.WARNING, warn)] if warn else [])
    plan = MemoryPlan(
        mode=mode,
        requested=cfg.memory.mode,
        reason=reason,
        source=source,
        n_chunks=int(n_chunks),
        chunk=int(chunk),
        n_shards=int(n_shards),
        frames_bytes=est["frames"],
        device_bytes=est["device"],
        stream_bytes=est["stream"],
        budget_bytes=budget,
        budget_source=bsrc,
        host_cache=cache,
        messages=tuple(msgs),
    )
    if emit:
        plan.log()
    return plan


# ----------------------------------------------------------------------------- the streamed step


def _chunk_value_and_grads(obj, phat, nuis, weight, frames, fid, k, corner, frac, loss_name):

    lf = loss_fn(loss_name)
    fr = jnp.fft.ifftshift(frames, axes=(-2, -1))  # zero frequency at (0, 0), as in the device layout
    val, vjp = jax.vjp(lambda o, p, d: chunk_loss(o, p, d, weight, lf, fr, fid, k, corner, frac), obj, phat, nuis)
    return val, vjp(jnp.ones_like(val))


@partial(jax.jit, static_argnames=("loss_name",), donate_argnums=(0,))
def _accumulate(acc, obj, phat, nuis, weight, frames, fid, k, corner, frac, *, loss_name):
    """``acc + (loss, d/d obj, d/d phat, d/d frame nuisances)`` of one chunk (``acc`` donated);
    also the chunk's loss on its own (not donated: the host waits on it to bound the frames
    in flight)."""
    val, (go, gp, gd) = _chunk_value_and_grads(obj, phat, nuis, weight, frames, fid, k, corner, frac, loss_name)
    return (acc[0] + val, acc[1] + go, acc[2] + gp, jax.tree.map(jnp.add, acc[3], gd)), val


@partial(jax.jit, static_argnames=("loss_name",))
def _chunk_value(obj, phat, nuis, weight, frames, fid, k, corner, frac, *, loss_name):

    fr = jnp.fft.ifftshift(frames, axes=(-2, -1))
    return chunk_loss(obj, phat, nuis, weight, loss_fn(loss_name), fr, fid, k, corner, frac)


def load_frames(frames, block: int = 256) -> np.ndarray:
    """All frames of a lazy source in one host array, read ``block`` frames at a time."""
    n, m = int(frames.shape[0]), int(frames.shape[-1])
    out = np.empty((n, m, m), np.float32)
    for a in range(0, n, max(1, block)):
        b = min(a + block, n)
        frames.read(a, b, out=out[a:b])
    return out


class _Core(eqx.Module):
    """The jitted begin/finish of a streamed step (problem without frames, optimiser)."""

    prob: Any
    opt: Any = eqx.field(static=True)
    tv_weight: float = eqx.field(static=True)

    @eqx.filter_jit
    def begin(self, params):

        obj, phat, nuis = model_objects_and_probes(params, self.prob)
        acc = (
            jnp.zeros((), jnp.float32),
            jnp.zeros_like(obj),
            jnp.zeros_like(phat),
            jax.tree.map(jnp.zeros_like, nuis),
        )
        return obj, phat, nuis, acc

    @eqx.filter_jit
    def finish(self, state, acc, scale):

        data, g_obj, g_phat, g_nuis = acc
        params = state.params
        _, vjp = jax.vjp(lambda p: model_objects_and_probes(p, self.prob), params)
        (grads,) = vjp((g_obj, g_phat, g_nuis))
        grads = jax.tree.map(lambda g: g * scale, grads)
        loss = data * scale
        if self.tv_weight > 0:
            reg, g_reg = eqx.filter_value_and_grad(regulariser)(params, self.prob)
            loss = loss + self.tv_weight * reg
            grads = jax.tree.map(lambda g, r: g + self.tv_weight * r, grads, g_reg)
        updates, opt_state = self.opt.update(grads, state.opt_state, params)
        params = eqx.apply_updates(params, updates)
        return JointState(params=params, opt_state=opt_state, step=state.step + 1), loss

    @eqx.filter_jit
    def objects(self, params):

        return model_objects_and_probes(params, self.prob)

    @eqx.filter_jit
    def total(self, params, data):

        return data + self.tv_weight * regulariser(params, self.prob) if self.tv_weight > 0 else data


class StreamSolver:
    """A prepared joint problem whose frames stay on the host (or in the file).

    Same interface as :class:`diffxas.solvers.joint.solver.JointSolver`: ``init(params) -> state``,
    ``step(state) -> (state, loss)``, ``loss(params)``, and the attributes ``prob`` (its
    ``frames`` are empty: ``(n_chunks, chunk, 0, 0)``), ``opt``, ``static``, ``batch``,
    ``n_frames``, ``seed``. ``frames`` is the source: a :class:`diffxas.data.cxi.CxiFrames`
    (read a range per chunk) or an in-memory ``(F, M, M)`` array. ``prefetch``: read the
    next chunk in a thread while the current one computes. ``host_cache``: load a lazy
    source into host memory once (when it fits; :func:`plan_memory` decides).
    """

    def __init__(
        self,
        prob,
        opt,
        static,
        batch: int,
        n_frames: int,
        seed: int,
        frames,
        prefetch: bool = True,
        host_cache: bool = False,
    ):
        self.prob, self.opt, self.static = prob, opt, tuple(static)
        self.batch, self.n_frames, self.seed = int(batch), int(n_frames), int(seed)
        if isinstance(frames, jax.Array):
            frames = np.asarray(frames)
        elif host_cache and not isinstance(frames, np.ndarray):
            frames = load_frames(frames, int(prob.frame_id.shape[1]))
        self.frames = frames
        self.prefetch = bool(prefetch)
        self.n_chunks, self.chunk = (int(s) for s in prob.frame_id.shape)
        self.frame_size = int(prob.weight.shape[-1])
        flat = lambda x: np.asarray(x).reshape((-1,) + tuple(x.shape[2:]))  # noqa: E731
        self._fid, self._k, self._corner, self._frac = (
            flat(x) for x in (prob.frame_id, prob.energy_index, prob.corner, prob.frac)
        )
        self._core = _Core(prob=prob, opt=opt, tv_weight=float(static[2]))

    def init(self, params):

        return JointState(params=params, opt_state=self.opt.init(params), step=jnp.asarray(0, jnp.int32))

    # ---- chunks -------------------------------------------------------------------------
    def _plans(self, step: int | None):
        """The step's chunks as (frame positions or (start, stop), geometry rows) and the loss scale."""
        if step is None or self.batch == self.n_frames:
            plans = [
                (
                    (c * self.chunk, min((c + 1) * self.chunk, self.n_frames)),
                    np.arange(c * self.chunk, (c + 1) * self.chunk),
                )
                for c in range(self.n_chunks)
            ]
            return plans, 1.0
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        idx = np.asarray(jax.random.choice(key, self.n_frames, (self.batch,), replace=False))
        bchunk = int(self.static[1])
        nch = -(-self.batch // bchunk)
        plans = []
        for c in range(nch):
            sel = idx[c * bchunk : (c + 1) * bchunk]
            rows = np.concatenate([sel, np.full(bchunk - sel.size, -1, sel.dtype)])
            plans.append((sel, rows))
        return plans, float(self.static[3]) / self.batch

    def _load(self, plan):
        """Host read (+ padding) and transfer of one chunk: (frames, fid, k, corner, frac) on the device."""

        which, rows = plan
        n = rows.size
        m = self.frame_size
        block = np.zeros((n, m, m), np.float32)
        if isinstance(which, tuple):  # a range of the full-batch layout
            a, b = which
            block[: b - a] = read_frames(self.frames, a, b)
            fid, k, corner, frac = (x[rows] for x in (self._fid, self._k, self._corner, self._frac))
        else:  # mini-batch frames (layout rows are frame ids; -1 = padding)
            block[: which.size] = take_frames(self.frames, which)
            ok = rows >= 0
            r = np.where(ok, rows, 0)
            fid = np.where(ok, self._fid[r], -1).astype(np.int32)
            k, corner, frac = (x[r] for x in (self._k, self._corner, self._frac))
        return jax.device_put((block, fid, k, corner, frac))

    def _chunks(self, plans):
        """The loaded chunks in order; with ``prefetch``, chunk i+1 is read while i is used."""
        if not self.prefetch or len(plans) < 2:
            for p in plans:
                yield self._load(p)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffxas-read") as pool:
            fut = pool.submit(self._load, plans[0])
            for i in range(len(plans)):
                x = fut.result()
                if i + 1 < len(plans):
                    fut = pool.submit(self._load, plans[i + 1])
                yield x

    # ---- step / loss --------------------------------------------------------------------
    def step(self, state):
        loss_name = self.static[0]
        step = None if self.batch == self.n_frames else int(state.step)
        plans, scale = self._plans(step)
        obj, phat, nuis, acc = self._core.begin(state.params)
        weight = self.prob.weight
        prev = None
        for x in self._chunks(plans):
            acc, val = _accumulate(acc, obj, phat, nuis, weight, *x, loss_name=loss_name)
            if prev is not None:  # at most two chunks computing/queued on the device
                prev.block_until_ready()
            prev = val
        return self._core.finish(state, acc, jnp.asarray(scale, jnp.float32))

    def loss(self, params) -> jax.Array:
        """Full-batch total loss (as :meth:`JointSolver.loss`), streamed."""
        obj, phat, nuis = self._core.objects(params)
        plans, _ = self._plans(None)
        total = jnp.zeros((), jnp.float32)
        for x in self._chunks(plans):
            total = total + _chunk_value(obj, phat, nuis, self.prob.weight, *x, loss_name=self.static[0])
        return self._core.total(params, total)
