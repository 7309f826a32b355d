"""Multi-process JAX for real: 2 and 3 Python processes on this machine, one CPU device each.

Every process calls :func:`diffxas.solvers.joint.parallel.initialize_distributed` (``jax.distributed``
with a coordinator on ``127.0.0.1:<free port>``, gloo CPU collectives), opens the same
small CXI file lazily (``open_cxi``), reads only its share of the frames
(:func:`diffxas.solvers.joint.parallel.frames_placer`), and runs

* the sharded joint loss and gradient at the initial parameters (``ShardedJointSolver``,
  ``shard_map`` + ``psum`` across processes), and
* a short sharded run (:func:`diffxas.solvers.joint.parallel.reconstruct_joint_sharded`, 4 Adam steps,
  checkpointed by process 0).

Reference: the single-process, single-device solver on the same file
(``prepare_joint`` + ``total_loss`` gradient; ``reconstruct_joint`` with the same seed).

Tolerances (float32, only the order of the sums differs between the runs; the 64 frames
of 16x16 give ~1.6e4 positive terms):
* loss and gradients: 1e-5 relative (the issue's bound; gradients: relative L2 per leaf);
* final maps after 4 Adam steps: 1e-3 of the maps' change from the initial values,
  relative L2 (Adam normalises each element by its gradient RMS, which amplifies
  rounding where the gradient is ~0; as tests/test_parallel.py).
The data: 4 energies x 16 positions of 16x16 frames from the forward model of a smooth
object and a KB probe with Poisson noise (the recipe of tests/test_parallel.py).

Processes are started in their own process group and killed as a group on any failure
or timeout; a coordinator port already in use is one clear error (tested).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(r"""
    import json, os, resource, sys, time
    t0 = time.perf_counter()
    mode, data, out, n, i, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    from diffxas.solvers.joint import parallel
    from diffxas.errors import DiffxasError
    if n > 1:
        try:
            parallel.initialize_distributed(f"127.0.0.1:{port}", n, i, timeout_s=60,
                                            heartbeat_timeout_s=int(os.environ.get("MP_HEARTBEAT", "100")))
        except DiffxasError as e:
            print(f"ERROR {e}", flush=True)
            sys.exit(2)
    import equinox as eqx, jax, numpy as np
    from diffxas.data import open_cxi
    from diffxas.solvers.joint import JointConfig, prepare_joint, reconstruct_joint, total_loss

    steps = int(os.environ.get("MP_STEPS", "4"))
    cfg = JointConfig.make(steps=steps, chunk_size=int(os.environ.get("MP_CHUNK", "24")), probe_start=0, lr_positions=0.01,
                      prior="none", tv_weight=0.0, log_every=1, init="stxm", checkpoint_every=2, memory="device", seed=3)
    ds = open_cxi(data)
    reads = []
    take = parallel.take_frames
    def counting_take(frames, idx):
        reads.append(int(np.size(idx)))
        return take(frames, idx)
    parallel.take_frames = counting_take  # count the frames this process reads into its device share
    res = {}
    if mode in ("step", "both"):
        if n == 1 and not os.environ.get("MP_SHARDED1"):
            solver, state, _ = prepare_joint(ds, cfg)
            loss, grad = eqx.filter_jit(eqx.filter_value_and_grad(total_loss))(state.params, solver.prob, None, solver.static)
            share = None
        else:
            solver, state, _, mesh = parallel.prepare_joint_sharded(ds, cfg)
            loss, grad = eqx.filter_jit(lambda s, p: s._loss_and_grad(p, jax.numpy.asarray(0)))(solver, state.params)
            shards = solver.prob.frames.addressable_shards
            share = [list(s.data.shape) for s in shards]
        leaves = [np.asarray(x) for x in jax.tree.leaves(grad)]
        if jax.process_index() == 0:
            np.savez(out + ".npz", loss=np.asarray(loss), *leaves)
        res.update(loss=float(loss), share=share, frames_read=int(sum(reads)), t_step=time.perf_counter() - t0)
    if mode in ("run", "both"):
        ck = out + ".ckpt"
        if n == 1:
            r = reconstruct_joint(ds, cfg)
        else:
            try:
                r = parallel.reconstruct_joint_sharded(ds, cfg, checkpoint=ck, resume=True)
            except DiffxasError as e:
                print(f"ERROR {e}", flush=True)
                os._exit(2)  # as the CLI: jax's shutdown of a broken distributed runtime would abort
        if jax.process_index() == 0:
            np.savez(out + ".maps.npz", **{k: np.asarray(v) for k, v in r.maps.as_dict().items()})
        res.update(run_loss=[float(x) for x in r.history["loss"]], ckpt=os.path.exists(ck),
                   resumed_from=int(r.config["init"].get("resumed_from_step", 0)) if n > 1 else 0)
    res.update(process=jax.process_index(), processes=jax.process_count(), devices=jax.device_count(),
               n_frames=int(ds.n_frames),
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
               seconds=time.perf_counter() - t0)
    print("RESULT " + json.dumps(res), flush=True)
""")


def _tiny_cxi(path: Path, M: int = 16, side: int = 4, energies=(5462.0, 5466.0, 5469.0, 5472.0), seed: int = 0) -> Path:
    """4 energies x side^2 frames of MxM (forward model, Poisson noise) written to ``path``."""
    import jax.numpy as jnp

    from diffxas.data.cxi import write_cxi
    from diffxas.data.dataset import Dataset
    from diffxas.physics.forward import frame_geometry, intensities, transmission
    from diffxas.physics.geometry import grid_covering, object_pixel_size, wavelength
    from diffxas.physics.probe import kb_probe, numerical_aperture_for_fwhm

    rng = np.random.default_rng(seed)
    e = np.asarray(energies)
    K, z, p = len(e), 0.63, 75e-6
    dx = object_pixel_size(e, z, p, M)
    step = 3 * dx[0]
    g = (np.arange(side) - 0.5 * (side - 1)) * step
    yy, xx = np.meshgrid(g, g, indexing="ij")
    pos = np.stack([xx.ravel(), yy.ravel()], -1) + rng.uniform(-0.2, 0.2, (side * side, 2)) * step
    na = numerical_aperture_for_fwhm(5 * dx[0], wavelength(e[0]))
    illum = np.stack([kb_probe(M, dx[k], wavelength(e[k]), na, photons=1e5, defocus_m=1e-6) for k in range(K)])
    frames = []
    for k in range(K):
        grid = grid_covering(pos, dx[k], M, margin_px=2)
        ny, nx = grid.shape
        r2 = ((np.arange(ny)[:, None] - ny / 2) ** 2 + (np.arange(nx)[None, :] - nx / 2) ** 2) / (0.25 * ny) ** 2
        obj = transmission(
            jnp.asarray(0.3 * np.exp(-r2) * (1 + 0.3 * k / K), jnp.float32),
            jnp.asarray(-0.5 * np.exp(-r2), jnp.float32),
        )
        c, f = frame_geometry(pos, grid, M)
        inten = intensities(
            obj[None],
            jnp.fft.fft2(jnp.asarray(illum[k]))[None],
            jnp.zeros(len(pos), jnp.int32),
            jnp.asarray(c),
            jnp.asarray(f),
        )
        frames.append(rng.poisson(np.maximum(np.asarray(inten), 0)).astype(np.float32))
    n = len(pos)
    ds = Dataset(
        frames=np.concatenate(frames),
        positions=np.tile(pos, (K, 1)),
        energy_index=np.repeat(np.arange(K), n).astype(np.int32),
        energies=e,
        mask=np.ones((K, M, M), np.float32),
        illumination=illum.astype(np.complex64),
        distance=z,
        detector_pixel=p,
    )
    return write_cxi(path, ds)


def run_group(
    mode: str,
    data: Path,
    out: Path,
    n: int,
    port: int | None = None,
    timeout: float = 300,
    env_extra: dict | None = None,
) -> list[dict]:
    """Start ``n`` worker processes (one process group each), wait, return their RESULT dicts.

    On a timeout or any failure every process still running is killed (SIGKILL to its
    group) before the assertion reports the failing process's output."""
    from diffxas.solvers.joint.parallel import free_port

    port = free_port() if port is None else port
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        OMP_NUM_THREADS="1",
        **(env_extra or {}),
    )
    # one persistent compilation cache for all runs of the module (next to the data file):
    # the initialisation's programs are the same in every process and every run
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(data).parent / "jax-cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, str(data), str(out), str(n), str(i), str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + timeout
    outs: list[str | None] = [None] * n
    try:
        for i, p in enumerate(procs):
            outs[i], _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for i, p in enumerate(procs):
        text = outs[i] if outs[i] is not None else "(killed after the timeout)"
        assert p.returncode == 0, f"process {i}/{n} exit {p.returncode}:\n{text[-3000:]}"
    res = []
    for text in outs:
        line = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
        assert line, text[-3000:]
        res.append(json.loads(line[-1][len("RESULT ") :]))
    return res


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


@pytest.fixture(scope="module")
def cxi(tmp_path_factory):
    return _tiny_cxi(tmp_path_factory.mktemp("mp") / "tiny.cxi")


@pytest.fixture(scope="module")
def reference(cxi):
    """The single-process, single-device step and run on the same file (same seed)."""
    out = cxi.parent / "ref"
    return run_group("both", cxi, out, 1)[0], out


@pytest.mark.parametrize("n", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_multiprocess_step_and_run_match_single_process(cxi, reference, tmp_path, n):
    ref, ref_out = reference
    got = run_group("both", cxi, tmp_path / "mp", n)
    assert [r["process"] for r in got] == list(range(n)) and all(r["devices"] == n for r in got)
    n_frames = ref["n_frames"]
    # each process read only its share of the frames into its device copy
    assert ref["frames_read"] == 0  # the single-device solver builds its copy elsewhere (joint._device_frames)
    assert sum(r["frames_read"] for r in got) == n_frames, got
    assert max(r["frames_read"] for r in got) <= -(-n_frames // n) + n, got
    # the sharded loss and gradient at the initial parameters
    for r in got:
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    a, b = np.load(str(ref_out) + ".npz"), np.load(tmp_path / "mp.npz")
    keys = [k for k in a.files if k.startswith("arr_")]
    assert keys and keys == [k for k in b.files if k.startswith("arr_")]
    worst = max(_rel(a[k], b[k]) for k in keys)
    assert worst < 1e-5, worst
    # the short run: same losses, same maps, process 0 checkpointed
    assert got[0]["ckpt"] and (tmp_path / "mp.ckpt").exists()
    for r in got:
        np.testing.assert_allclose(r["run_loss"], ref["run_loss"], rtol=1e-5)
    m1, mn = np.load(str(ref_out) + ".maps.npz"), np.load(tmp_path / "mp.maps.npz")
    assert set(m1.files) == set(mn.files)
    for k in m1.files:
        x, y = m1[k], mn[k]
        ok = np.isfinite(x) & np.isfinite(y)
        assert (np.isfinite(x) == np.isfinite(y)).all(), k
        if not ok.any():
            continue
        scale = max(float(np.linalg.norm(x[ok] - np.median(x[ok]))), 1e-12)
        assert float(np.linalg.norm(x[ok] - y[ok])) / scale < 1e-3, k


def test_port_in_use_is_one_clear_error(cxi, tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
        p = subprocess.run(
            [sys.executable, "-c", WORKER, "step", str(cxi), str(tmp_path / "x"), "2", "0", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert p.returncode == 2
    assert f"coordinator 127.0.0.1:{port}: the port is already in use" in p.stdout, p.stdout + p.stderr


def _cli_group(cxi: Path, out: Path, n: int, extra=(), timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``diffxas reconstruct --coordinator ... --process-id i`` in ``n`` processes (killed as a group on failure)."""
    from diffxas.solvers.joint.parallel import free_port

    port = free_port()
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        OMP_NUM_THREADS="1",
        JAX_COMPILATION_CACHE_DIR=str(cxi.parent / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "diffxas.app.cli",
        "reconstruct",
        str(cxi),
        "--method",
        "joint",
        "-o",
        str(out),
        "--steps",
        "2",
        "--no-progress",
        "--set",
        "init=stxm",
        "--set",
        "prior=none",
        "--set",
        "chunk_size=24",
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        str(n),
        *extra,
    ]
    procs = [
        subprocess.Popen(
            cmd + ["--process-id", str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + timeout
    done = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return done


def test_cli_reconstruct_distributed_writes_once(cxi, tmp_path):
    from diffxas.data.results import read_result

    out = tmp_path / "joint.h5"
    done = _cli_group(cxi, out, 2)
    for p in done:
        assert p.returncode == 0, p.stderr[-3000:]
    assert "joint: 4 energies, 64 frames" in done[0].stdout  # process 0 reports and writes
    assert "joint:" not in done[1].stdout  # the other process reports nothing (gloo prints its connection line)
    res = read_result(out)
    assert np.isfinite(np.asarray(res.maps.valid, float)).all()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["joint.h5"]  # no temporary files, checkpoint removed


def test_cli_distributed_without_launcher_is_one_clear_error(cxi, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    for k in ("SLURM_STEP_NODELIST", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"):
        env.pop(k, None)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffxas.app.cli",
            "reconstruct",
            str(cxi),
            "--method",
            "joint",
            "-o",
            str(tmp_path / "x.h5"),
            "--distributed",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 2
    assert "--distributed: no launcher found" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "x.h5").exists()


def measure_rss(
    M: int = 256, side: int = 16, n_energies: int = 4, processes=(1, 2, 3), folder: str | None = None
) -> dict:
    """Peak RSS per process of the sharded step (prepare + one loss/gradient) for N processes.

    ``python tests/test_multiprocess.py`` prints it: n_energies x side^2 frames of MxM
    (random Poisson counts of a centred disc: only the memory matters here), uncompressed
    CXI, every N run through the sharded path (``frames_placer``, so N = 1 reads all frames)."""
    import tempfile

    from diffxas.data.cxi import write_cxi
    from diffxas.data.dataset import Dataset

    d = Path(folder or tempfile.mkdtemp(prefix="diffxas-rss-"))
    data = d / "rss.cxi"
    rng = np.random.default_rng(0)
    e = np.linspace(5462.0, 5472.0, n_energies)
    F = n_energies * side * side
    yy, xx = np.mgrid[:M, :M] - M // 2
    disc = (xx**2 + yy**2 < (M / 8) ** 2) * 50.0
    if not data.exists():
        frames = rng.poisson(disc, (F, M, M)).astype(np.float32)
        g = (np.arange(side) - 0.5 * (side - 1)) * 60e-9
        pos = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        ds = Dataset(
            frames=frames,
            positions=np.tile(pos, (n_energies, 1)),
            energy_index=np.repeat(np.arange(n_energies), side * side).astype(np.int32),
            energies=e,
            mask=np.ones((n_energies, M, M), np.float32),
            illumination=None,
            distance=0.63,
            detector_pixel=75e-6,
        )
        write_cxi(data, ds, compression=None)
        del frames, ds
    out = {"frames": F, "frame_size": M, "frames_mib": F * M * M * 4 / 2**20}
    for n in processes:
        r = run_group("step", data, d / f"rss{n}", n, timeout=600, env_extra={"MP_SHARDED1": "1", "MP_CHUNK": "128"})
        out[f"N={n}"] = [round(x["peak_rss_mib"], 1) for x in r]
    return out


if __name__ == "__main__":
    print(json.dumps(measure_rss(folder=sys.argv[1] if len(sys.argv) > 1 else None)))


def test_killed_process_stops_all_and_resume_continues(cxi, tmp_path):
    """SIGKILL process 1 once process 0 has checkpointed: process 0 stops with one clear
    error line (exit 2) within the heartbeat timeout, and a rerun with --resume continues
    from the checkpoint's step to the end."""
    from diffxas.solvers.joint.parallel import free_port

    n, out = 2, tmp_path / "k"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        OMP_NUM_THREADS="1",
        MP_STEPS="400",
        MP_HEARTBEAT="10",
        JAX_COMPILATION_CACHE_DIR=str(cxi.parent / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, "run", str(cxi), str(out), str(n), str(i), str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for i in range(n)
    ]
    ckpt = Path(str(out) + ".ckpt")
    try:
        deadline = time.monotonic() + 300
        while not ckpt.exists() and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.2)
        assert ckpt.exists(), "no checkpoint within 300 s"
        os.killpg(procs[1].pid, signal.SIGKILL)
        t_kill = time.monotonic()
        text, _ = procs[0].communicate(timeout=120)
        t_stop = time.monotonic() - t_kill
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert procs[0].returncode == 2, text[-2000:]
    print(f"process 0 stopped {t_stop:.1f} s after the kill, exit {procs[0].returncode}")
    assert "ERROR process 0 of 2: the distributed run stopped" in text, text[-3000:]
    # resume: both processes continue from process 0's last checkpoint (to 6 steps, not 400)
    got = run_group("run", cxi, out, n, env_extra={"MP_STEPS": "6", "MP_HEARTBEAT": "10"})
    assert got[0]["resumed_from"] >= 2 and got[0]["resumed_from"] % 2 == 0, got[0]
    assert got[0]["run_loss"] and all(np.isfinite(got[0]["run_loss"]))
