r"""Data-parallel joint solver: the frames split across devices (one host or many).

The joint step is a sum over frames, so it parallelises as data parallelism: every device
holds all parameters (maps, probes, optimiser state: replicated) and a slice of the
frames; the loss and the gradients are summed over devices by an all-reduce that XLA
inserts when the jitted step is compiled for the sharded inputs (GSPMD). Nothing in the
solver changes: :func:`shard_solver` only *places* the solver's arrays.

Layout
------
:class:`diffxas.solvers.joint.model.Problem` stores the per-frame arrays in a chunked layout
``(n_chunks, chunk, ...)`` that the full-batch loss scans over (one chunk of exit waves in
memory at a time). Here the ``chunk`` axis is split over a 1-D mesh axis ``"frames"``::

    frames, frame_id, energy_index, corner, frac   NamedSharding(mesh, P(None, "frames"))
    everything else (weights, resampling matrices,
    illuminated mask, edge tables), params, opt state   NamedSharding(mesh, P())  (replicated)

so every scan iteration works on ``chunk / n_devices`` frames per device. Build the solver
with ``prepare_joint(ds, cfg, n_shards=n_devices)`` so that the chunk is a multiple of the
device count (:func:`diffxas.solvers.joint.model.chunk_layout`); :func:`reconstruct_joint_sharded` does
prepare -> shard -> loop.

Results equal the single-device run up to float32 summation order (the per-device partial
sums are added in a different order): ~1e-6 relative in the loss, a few 1e-6 in the
parameters after a few Adam steps (``tests/test_parallel.py``).

Mini-batches (``JointConfig.optim.batch_size``) use the same random frames as the single-device
step: every device picks the batch frames it holds and a reduce-scatter gives each device
its share of the batch (communication and memory of the batch only).

Several hosts
-------------
Call :func:`initialize_distributed` (``jax.distributed.initialize()``) in every process
before any other JAX call; ``jax.devices()`` then lists the devices of all hosts and the
mesh spans them. Every process opens the same dataset and runs the same program
(multi-controller SPMD); :func:`place` builds each replicated array from the host copy
with ``jax.make_array_from_callback``, and :func:`frames_placer` builds the frames so that
a process reads (from a lazy CXI source) only its own devices' frames (:func:`frame_share`).
Process 0 writes checkpoints and results; a process that dies stops the others with a
:class:`DistributedError` (tests/test_multiprocess.py runs 2 and 3 real processes).
Under ``srun`` (SLURM), ``jax.distributed.initialize()`` needs no arguments: it reads
``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST`` (coordinator = first node, port derived from the
job id), ``SLURM_NTASKS``, ``SLURM_PROCID`` and ``SLURM_LOCALID``. Under Open MPI 4
``mpirun`` it reads ``OMPI_MCA_orte_hnp_uri``, ``OMPI_COMM_WORLD_SIZE``,
``OMPI_COMM_WORLD_RANK`` and ``OMPI_COMM_WORLD_LOCAL_RANK``. Elsewhere (Open MPI 5,
plain ssh) pass ``coordinator_address="host0:1234", num_processes=..., process_id=...``
or set ``JAX_COORDINATOR_ADDRESS``. See ``docs/distributed.md`` and ``examples/slurm_joint.sh``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from diffxas.data.dataset import Dataset, take_frames
from diffxas.errors import ConfigError, DiffxasError
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import run as joint_run
from diffxas.solvers.joint.config import JointConfig
from diffxas.solvers.joint.loss import total_loss
from diffxas.solvers.joint.model import chunk_layout
from diffxas.solvers.joint.run import prepare_joint
from diffxas.solvers.joint.solver import JointState

log = logging.getLogger("diffxas")

#: Name of the mesh axis the frames are split over.
AXIS = "frames"

#: Problem fields laid out per frame as (n_chunks, chunk, ...).
FRAME_FIELDS = ("frames", "frame_id", "energy_index", "corner", "frac")


class DistributedError(DiffxasError):
    """Another process of a multi-process run failed (died, or its collectives broke)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (bind to port 0 and read the port the OS chose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_taken(address: str) -> bool:
    """True when ``host:port`` cannot be bound here (another program listens on it)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host if host not in ("", "localhost") else "127.0.0.1", int(port)))
    except OSError:
        return True
    except ValueError:
        raise ConfigError(f"--coordinator {address!r}: expected HOST:PORT") from None
    return False


def distributed_environment() -> str | None:
    """Which launcher started this process as one of several: ``"slurm"`` (``srun`` with
    more than one task), ``"ompi"`` (Open MPI ``mpirun``), ``"env"`` (``JAX_COORDINATOR_ADDRESS``
    set) or None (a single process)."""
    if "SLURM_STEP_NODELIST" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "ompi"
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    return None


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
    heartbeat_timeout_s: int | None = None,
    **kwargs,
) -> bool:
    """``jax.distributed.initialize`` when running as one of several processes; True if it ran.

    With ``coordinator="HOST:PORT"``, ``num_processes`` and ``process_id`` the process joins
    that job (process 0 opens the coordinator on PORT). Without them the launcher is
    detected (:func:`distributed_environment`: SLURM ``srun``, Open MPI ``mpirun``, or
    ``JAX_COORDINATOR_ADDRESS``) and jax's cluster detection fills in the rest; with no
    launcher this does nothing (a single process), so scripts can call it unconditionally.
    Must run before any other JAX computation.

    On CPU the cross-process collectives use gloo (``jax_cpu_collectives_implementation``);
    GPUs use NCCL. A coordinator port already in use on this host, or a failed start, is
    one :class:`~diffxas.errors.ConfigError` line naming the address. ``heartbeat_timeout_s``:
    how soon the others notice a dead process (jax's default: 100 s).
    """
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if explicit and None in (coordinator, num_processes, process_id):
        raise ConfigError(
            "--coordinator, --num-processes and --process-id go together (or none of them: SLURM/Open MPI detection)"
        )
    if not (explicit or kwargs or distributed_environment()):
        return False
    if explicit:
        if not 0 <= int(process_id) < int(num_processes):
            raise ConfigError(f"--process-id {process_id} is not in 0..{int(num_processes) - 1} (--num-processes)")
        kwargs.update(coordinator_address=coordinator, num_processes=int(num_processes), process_id=int(process_id))
        host = coordinator.rpartition(":")[0]
        if int(process_id) == 0 and host in ("127.0.0.1", "localhost", "") and _port_taken(coordinator):
            raise ConfigError(
                f"coordinator {coordinator}: the port is already in use on this host "
                "(pick another, e.g. diffxas.solvers.joint.parallel.free_port())"
            )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if heartbeat_timeout_s is not None:
        kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout_s)
    try:
        jax.distributed.initialize(initialization_timeout=int(timeout_s), **kwargs)
    except Exception as e:  # noqa: BLE001 - jax raises RuntimeError/ValueError/XlaRuntimeError, long texts
        where = (
            kwargs.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS") or distributed_environment()
        )
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"distributed start failed (coordinator {where}): {msg}") from None
    return True


def frames_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh named ``"frames"`` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("no devices to build a mesh on")
    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def place(x, sharding: NamedSharding):
    """A global ``jax.Array`` with ``sharding`` from a host (or single-device) array ``x``.

    Works with several processes: each process materialises only its addressable shards
    (every process must hold the same ``x``).
    """
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree, mesh: Mesh):
    """Every array leaf of ``tree`` replicated on all devices of ``mesh``."""
    rep = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: place(x, rep) if eqx.is_array(x) else x, tree)


def shard_problem(prob, mesh: Mesh):
    """The :class:`~diffxas.solvers.joint.model.Problem` with its per-frame arrays split over ``mesh``."""
    n = mesh.devices.size
    chunk = prob.frames.shape[1]
    if chunk % n:
        raise ValueError(
            f"chunk of {chunk} frames does not split over {n} devices: "
            f"build the solver with prepare_joint(ds, cfg, n_shards={n})"
        )
    split = NamedSharding(mesh, P(None, AXIS))
    get = lambda p: tuple(getattr(p, f) for f in FRAME_FIELDS)  # noqa: E731
    fields = tuple(place(x, split) for x in get(prob))  # before replicating: frames may be global already
    prob = eqx.tree_at(get, prob, tuple(None for _ in FRAME_FIELDS))
    prob = replicate(prob, mesh)
    return eqx.tree_at(get, prob, fields, is_leaf=lambda x: x is None)


def frame_share(n_frames: int, n_chunks: int, chunk: int, n_devices: int, device: int) -> np.ndarray:
    """Frame indices (into the dataset's frame order) held by mesh position ``device``.

    The chunked layout puts frame ``g`` in chunk ``g // chunk`` at offset ``g % chunk`` and
    the mesh splits every chunk into ``n_devices`` equal slices, so device ``d`` holds
    offsets ``[d * chunk / n, (d + 1) * chunk / n)`` of every chunk: the same number of
    slots on every device (the padding of the last chunk excepted).

    Decision: the share is balanced in *count* and taken from every chunk, not reordered
    per energy. Every device evaluates the objects of all energies (they are replicated),
    so the cost of a frame does not depend on its energy and count balance is load
    balance; with the usual many chunks per run (e.g. 28 000 frames, chunk 512: 55 chunks,
    frames sorted by energy) every process also holds frames of every energy. Reordering
    would change the frame positions that the mini-batch sampler and checkpoints rely on.
    """
    cl = chunk // n_devices
    off = np.arange(device * cl, (device + 1) * cl)
    g = (np.arange(n_chunks)[:, None] * chunk + off[None, :]).ravel()
    return g[g < n_frames]


def frames_placer(mesh: Mesh) -> Callable:
    """``place_frames(frames, n_chunks, chunk)`` for :func:`diffxas.solvers.joint.run.prepare_joint`: the
    chunked, ifftshifted frames as a global array split over ``mesh`` (``P(None, "frames")``),
    built with ``jax.make_array_from_callback`` so that each process reads from ``frames``
    (a lazy :class:`diffxas.data.cxi.CxiFrames` or an array) only the frames of its own devices
    (:func:`frame_share`), one device slice of one chunk at a time. Host memory per process
    for the frames: ``4 M^2 F / N`` bytes instead of ``4 M^2 F`` (N processes)."""
    sharding = NamedSharding(mesh, P(None, AXIS))

    def place_frames(frames, n_chunks: int, chunk: int):
        n, m = int(frames.shape[0]), int(frames.shape[-1])

        def shard(idx):
            cs, fs = idx[0], idx[1]
            c0, c1, _ = cs.indices(n_chunks)
            f0, f1, _ = fs.indices(chunk)
            out = np.zeros((c1 - c0, f1 - f0, m, m), np.float32)
            for i, c in enumerate(range(c0, c1)):
                g = np.arange(c * chunk + f0, min(c * chunk + f1, n))
                if g.size:
                    out[i, : g.size] = np.fft.ifftshift(take_frames(frames, g), axes=(-2, -1))
            return out

        return jax.make_array_from_callback((n_chunks, chunk, m, m), sharding, shard)

    return place_frames


class ShardedJointSolver(eqx.Module):
    """A :class:`~diffxas.solvers.joint.solver.JointSolver` whose frames are split over a mesh.

    Same interface (``init``, ``step``, ``loss``, ``prob``, ``opt``, ``static``, ``batch``,
    ``n_frames``). The step computes each device's part of the loss and gradient on its own
    frames inside :func:`jax.shard_map` and sums them with ``psum``; the (cheap) optimiser
    update then runs replicated.

    Why not plain ``jit`` on sharded inputs: XLA's SPMD partitioner (Shardy and GSPMD, jaxlib
    0.10) does not partition an FFT along its batch dimension: it all-gathers the operand and
    runs every frame's FFT on every device (openxla/xla#24, jax-ml/jax#15680). The
    gradient all-reduce would be right but there would be no speed-up. ``shard_map`` keeps
    each device on its own frames.
    """

    inner: Any  # the JointSolver, problem placed (frames split, the rest replicated)
    mesh: Mesh = eqx.field(static=True)

    # ---- the JointSolver interface
    @property
    def prob(self):
        return self.inner.prob

    @property
    def opt(self):
        return self.inner.opt

    @property
    def static(self):
        return self.inner.static

    @property
    def batch(self):
        return self.inner.batch

    @property
    def n_frames(self):
        return self.inner.n_frames

    @property
    def seed(self):
        return self.inner.seed

    @property
    def n_devices(self) -> int:
        return int(self.mesh.devices.size)

    def init(self, params):
        return shard_state(self.inner.init(params), self.mesh)

    def loss(self, params):
        """Full-batch total loss (as ``JointSolver.loss``), frames split over the mesh."""

        dyn, rest = eqx.partition(self.inner.prob, eqx.is_array)
        loss_name, chunk, tv, n_total = self.inner.static
        static = (loss_name, chunk, float(tv) / self.n_devices, n_total)

        def local(params, dyn):
            return jax.lax.psum(total_loss(params, eqx.combine(dyn, rest), None, static), AXIS)

        return jax.shard_map(
            local, mesh=self.mesh, in_specs=(P(), _problem_specs(dyn)), out_specs=P(), check_vma=False
        )(params, dyn)

    # ---- sharded loss
    def _loss_and_grad(self, params, step):
        """Loss and gradient of the step (full batch, or the step's mini-batch), frames split over the mesh."""

        loss_name, step_chunk, tv, n_total = self.inner.static
        n = self.n_devices
        full = self.inner.batch == self.inner.n_frames
        scale = 1.0 if full else self.inner.n_frames / self.inner.batch
        # every device adds tv/(n scale) * reg: psum -> tv/scale * reg, times scale -> tv * reg
        tv_local = float(tv) / (n * scale)
        dyn, rest = eqx.partition(self.inner.prob, eqx.is_array)
        specs = _problem_specs(dyn)

        if full:

            def local(params, dyn):
                static = (loss_name, step_chunk, tv_local, n_total)
                val, grad = eqx.filter_value_and_grad(total_loss)(params, eqx.combine(dyn, rest), None, static)
                return jax.lax.psum((val, grad), AXIS)

            val, grad = jax.shard_map(local, mesh=self.mesh, in_specs=(P(), specs), out_specs=P(), check_vma=False)(
                params, dyn
            )
            return val, grad

        # Mini-batch: the same random frames as the single-device step. Each device picks the
        # batch frames it holds (position from the chunked layout: frame g sits in chunk
        # g // chunk at offset g % chunk, i.e. on device offset // (chunk / n)) and a
        # reduce-scatter hands every device its share of the batch: traffic and memory of
        # the batch only, never of all frames.
        bs = self.inner.batch
        chunk = int(self.inner.prob.frames.shape[1])
        cl = chunk // n
        per = -(-bs // n)  # batch slots per device
        nch_b, cb = _chunk_layout(per, max(1, step_chunk // n), 1)
        key = jax.random.fold_in(jax.random.PRNGKey(self.inner.seed), step)
        idx = jax.random.choice(key, self.inner.n_frames, (bs,), replace=False)
        idx = jnp.pad(idx, (0, per * n - bs), constant_values=-1)
        owner = jnp.where(idx >= 0, (idx % chunk) // cl, -1)
        lpos = jnp.where(idx >= 0, (idx // chunk) * cl + (idx % chunk) % cl, 0)

        def local(params, dyn, owner, lpos):
            prob = eqx.combine(dyn, rest)
            mine = owner == jax.lax.axis_index(AXIS)

            def pick(x, offset=0):
                flat = x.reshape((-1,) + x.shape[2:])
                g = flat[lpos] + offset
                g = jnp.where(mine.reshape((-1,) + (1,) * (g.ndim - 1)), g, jnp.zeros_like(g))
                g = jax.lax.psum_scatter(g, AXIS, scatter_dimension=0, tiled=True) - offset  # (per, ...)
                pad = nch_b * cb - per
                if pad:
                    fill = -1 if offset else 0
                    g = jnp.concatenate([g, jnp.full((pad,) + g.shape[1:], fill, g.dtype)])
                return g.reshape((nch_b, cb) + g.shape[1:])

            # frame_id + 1 so that empty slots (0 from every device) come back as -1 (padding)
            fields = {f: pick(getattr(prob, f), 1 if f == "frame_id" else 0) for f in FRAME_FIELDS}
            prob_b = eqx.tree_at(
                lambda p: tuple(getattr(p, f) for f in FRAME_FIELDS), prob, tuple(fields[f] for f in FRAME_FIELDS)
            )
            static = (loss_name, cb, tv_local, n_total)
            val, grad = eqx.filter_value_and_grad(total_loss)(params, prob_b, None, static)
            return jax.lax.psum((val, grad), AXIS)

        val, grad = jax.shard_map(
            local, mesh=self.mesh, in_specs=(P(), specs, P(), P()), out_specs=P(), check_vma=False
        )(params, dyn, owner, lpos)
        return jax.tree.map(lambda x: x * scale, (val, grad))

    @eqx.filter_jit
    def step(self, state):

        loss, grads = self._loss_and_grad(state.params, state.step)
        updates, opt_state = self.inner.opt.update(grads, state.opt_state, state.params)
        params = eqx.apply_updates(state.params, updates)
        return JointState(params=params, opt_state=opt_state, step=state.step + 1), loss


def _chunk_layout(n_frames: int, chunk: int, n_shards: int):

    return chunk_layout(n_frames, chunk, n_shards)


def _problem_specs(dyn_prob):
    """PartitionSpecs of the array leaves of a Problem: frames split, the rest replicated."""
    specs = jax.tree.map(lambda _: P(), dyn_prob)
    return eqx.tree_at(
        lambda p: tuple(getattr(p, f) for f in FRAME_FIELDS),
        specs,
        tuple(P(None, AXIS) for _ in FRAME_FIELDS),
        is_leaf=lambda x: x is None,
    )


def shard_solver(solver, mesh: Mesh) -> ShardedJointSolver:
    """``solver`` (a :class:`~diffxas.solvers.joint.solver.JointSolver`) with its frames split over ``mesh``.

    Per-frame arrays (``frames, frame_id, energy_index, corner, frac``, shape
    ``(n_chunks, chunk, ...)``) get ``NamedSharding(mesh, P(None, "frames"))`` (each chunk's
    frames split across devices); every other array is replicated. Returns a
    :class:`ShardedJointSolver` (same interface) whose step runs each device on its own
    frames. Use :func:`shard_state` (replication) for an existing state.
    """
    if isinstance(solver, ShardedJointSolver):
        solver = solver.inner
    return ShardedJointSolver(inner=eqx.tree_at(lambda s: s.prob, solver, shard_problem(solver.prob, mesh)), mesh=mesh)


def shard_state(state, mesh: Mesh):
    """The solver state (parameters, optimiser state, step) replicated over ``mesh``."""
    return replicate(state, mesh)


def sharder(mesh: Mesh) -> Callable:
    """``(solver, state) -> (solver, state)`` placing both on ``mesh`` (a hook for loops)."""

    def shard(solver, state):
        return shard_solver(solver, mesh), shard_state(state, mesh)

    return shard


def prepare_joint_sharded(ds: Dataset, cfg=None, devices: Sequence[jax.Device] | None = None):
    """``prepare_joint`` with ``n_shards = len(devices)``, then sharded: ``(solver, state, ctx, mesh)``."""

    cfg = JointConfig() if cfg is None else cfg
    mesh = frames_mesh(devices)
    solver, state, ctx = prepare_joint(ds, cfg, n_shards=mesh.devices.size, place_frames=frames_placer(mesh))
    solver, state = sharder(mesh)(solver, state)
    return solver, state, ctx, mesh


def reconstruct_joint_sharded(
    ds: Dataset,
    cfg=None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
    checkpoint: str | None = None,
    resume: bool = False,
    callback=None,
):
    """:func:`diffxas.solvers.joint.run.reconstruct_joint` with the frames split over ``devices``.

    Same arguments and result; ``devices`` defaults to all devices (of all processes after
    :func:`initialize_distributed`). With one device this is the single-device solver.
    Each process reads only its share of the frames into memory (:func:`frames_placer`;
    the initialisation's one pass over all frames reads them in blocks). With several
    processes the frames must fit the devices (``memory="device"``: the streaming mode
    runs on one device); ``memory="auto"`` is taken as ``"device"``. Every process returns
    the same (replicated) result; only process 0 writes checkpoints.
    """

    cfg = joint_config.JointConfig() if cfg is None else cfg
    if jax.process_count() > 1:
        if cfg.memory.mode == "stream":
            raise ConfigError(
                "memory='stream' runs on one device: a multi-process run needs memory='device' "
                "(the frames split over all devices)"
            )
        if cfg.memory.mode != "device":
            cfg = cfg.replace(memory="device")
    mesh = frames_mesh(devices)
    try:
        return joint_run.reconstruct_joint(
            ds,
            cfg,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
            callback=callback,
            n_shards=mesh.devices.size,
            shard=sharder(mesh),
            place_frames=frames_placer(mesh),
        )
    except DiffxasError:
        raise
    except Exception as e:  # a collective that broke: one line for every survivor
        if jax.process_count() == 1:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DistributedError(
            f"process {jax.process_index()} of {jax.process_count()}: the distributed run stopped "
            f"(another process died or its connection broke: {first}); rerun all processes "
            "with --resume to continue from the last checkpoint"
        ) from None
