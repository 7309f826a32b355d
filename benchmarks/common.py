"""Shared benchmark helpers: environment record, synthetic datasets, timing, memory, FFT floor.

Timing convention (every case, the FFT floor included): the jitted function is lowered and
compiled ahead of time (``compile_s``: trace + lower + XLA compile), run once
(``first_run_s``; ``first_call_s = compile_s + first_run_s`` is what a first ``step()``
call costs), then timed call by call with ``block_until_ready`` until ``min_time``
seconds and ``min_reps`` calls have passed; ``median_s`` is the steady-state time.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

# ----------------------------------------------------------------------------- environment


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def env_info() -> dict:
    """Where the numbers come from: devices, versions, CPU, date."""
    import jax
    import jaxlib

    from diffxas import __version__
    from diffxas.app.sweep.cache import git_state

    devs = jax.devices()
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device_kind": devs[0].device_kind,
        "device_name": str(devs[0]),
        "n_devices": len(devs),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "nproc": nproc,
        "load_average_at_start": load,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "diffxas_version": __version__,
        # which code the numbers belong to: commit and uncommitted changes in diffxas/ ({} outside git)
        "git": git_state(),
    }


# ----------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs``); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def host_memory() -> dict:
    """Peak and current host RSS, MiB: ``maxrss`` (getrusage; since the last reset on Linux)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if sys.platform == "darwin":
        ru /= 1024.0
    hwm, rss = _status_kb("VmHWM"), _status_kb("VmRSS")  # peak since reset, current
    return {
        "peak_rss_mib": round(ru / 1024.0, 1),
        "vm_hwm_mib": None if hwm is None else round(hwm / 1024.0, 1),
        "rss_mib": None if rss is None else round(rss / 1024.0, 1),
    }


def device_memory() -> dict | None:
    """``device.memory_stats()`` of the first device (None on CPU)."""
    import jax

    try:
        st = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without the API
        return None
    if not st:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit", "largest_alloc_size")
    return {k: int(st[k]) for k in keys if k in st}


def compiled_memory(compiled) -> dict | None:
    """XLA's buffer assignment of a compiled executable (arguments, outputs, temporaries), bytes."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    return {
        k: int(getattr(m, k))
        for k in (
            "argument_size_in_bytes",
            "output_size_in_bytes",
            "temp_size_in_bytes",
            "alias_size_in_bytes",
            "generated_code_size_in_bytes",
        )
        if hasattr(m, k)
    }


def compiled_cost(compiled) -> dict | None:
    try:
        c = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(c, (list, tuple)):
        c = c[0] if c else None
    if not c:
        return None
    return {k: float(c[k]) for k in ("flops", "bytes accessed", "transcendentals") if k in c}


# ----------------------------------------------------------------------------- timing


def block(x):
    import jax

    return jax.block_until_ready(x)


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def loadavg3() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def time_compiled(call, min_reps: int = 3, max_reps: int = 50, min_time: float = 1.0) -> dict:
    """Time ``call()`` (already compiled) repeatedly: wall-clock and process CPU time per call.

    ``median_s``: median wall time (the headline). ``cpu_median_s``: median CPU time of this
    process (all threads): on a shared machine it is much less sensitive to other jobs than
    the wall time, so compare variants with it; on an idle machine wall <= cpu.
    """
    load0 = loadavg()
    t0 = time.perf_counter()
    block(call())
    first = time.perf_counter() - t0
    times, cpus = [], []
    t_start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - t_start < min_time):
        c0 = time.process_time()
        t0 = time.perf_counter()
        block(call())
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {
        "first_run_s": first,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "cpu_median_s": statistics.median(cpus),
        "reps": len(times),
        "loadavg": [load0, loadavg()],
    }


def aot(fn, *args):
    """(compiled, seconds) for a ``jax.jit``/``eqx.filter_jit`` function: trace + lower + compile."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def xla_compiled(compiled):
    """The ``jax.stages.Compiled`` inside an equinox ``Compiled`` (or itself)."""
    return getattr(compiled, "compiled", compiled)


# ----------------------------------------------------------------------------- FFT floor
#
# The floor of a case is the fastest of a few *batchings* of the same library's FFTs of the
# same shapes (all frames in one call, and chunks of 32 / 64 / 256 frames run one after the
# other inside one jitted call), timed *interleaved* with the case in the same process
# (case, floor batchings, case, ...), so that both see the same machine load. On this CPU
# one jitted FFT over all frames costs 3-5x more per frame than the same FFTs in chunks
# of 32-64 (cache), so a floor of one batching only is no floor. A case cannot do its FFT
# passes faster than the fastest batching of the same FFTs: a ratio case / floor below
# ``case_passes / floor_passes`` is a measurement error (load changed between the two, or
# the floor missed a faster batching) and is flagged, not reported (:func:`judge_ratio`).

#: FFT passes per frame that the joint step's floor is timed with: forward (fft2 of the
#: exit wave + ifft2 of the shifted probe) and their adjoints in the backward pass.
FLOOR_PASSES = 4

#: FFT passes per frame the joint step itself does: 2 forward, the same 2 recomputed under
#: jax.checkpoint, 2 adjoint (its physical minimum is JOINT_STEP_PASSES / FLOOR_PASSES floors).
JOINT_STEP_PASSES = 6

#: Bytes of one all-frames floor call at most (bigger problems are timed on this many frames
#: and scaled linearly: the batched FFT is linear in the batch once it fills the machine).
FLOOR_MAX_BYTES = 512 * 2**20

#: Chunk sizes (frames) of the floor's batchings, besides all frames in one call.
FLOOR_CHUNKS = (32, 64, 256)


def floor_batchings(n_frames: int, chunks=FLOOR_CHUNKS) -> list[int]:
    """Frames per FFT call of each floor batching: all frames, and each chunk size below that."""
    n = int(n_frames)
    return sorted({n} | {int(c) for c in chunks if c < n}, reverse=True)


def fft_floor_calls(n_frames: int, frame_size: int, passes: int = FLOOR_PASSES, chunks=FLOOR_CHUNKS) -> dict:
    """Compiled floor candidates: ``{batch: (call, frames_measured)}``.

    ``call()`` runs ``passes`` alternating fft2 / ifft2 (jnp, complex64) over
    ``frames_measured`` frames of M x M, in chunks of ``batch`` frames scanned one after
    another inside one jitted call (``batch`` = all: one batched call). ``frames_measured``
    is the largest multiple of ``batch`` <= ``n_frames`` (capped at ``FLOOR_MAX_BYTES``);
    the time per frame is scaled to ``n_frames``.
    """
    import jax
    import jax.numpy as jnp

    M = int(frame_size)
    cap = int(max(1, FLOOR_MAX_BYTES // (M * M * 8)))
    rng = np.random.default_rng(0)
    out = {}
    for b in floor_batchings(min(n_frames, cap), chunks):
        n_meas = (min(n_frames, cap) // b) * b
        x = jnp.asarray(
            (rng.standard_normal((n_meas // b, b, M, M)) + 1j * rng.standard_normal((n_meas // b, b, M, M))).astype(
                np.complex64
            )
        )

        def chunk(y):
            for i in range(passes):  # no algebra in between that XLA could fold
                y = jnp.fft.fft2(y) if i % 2 == 0 else jnp.fft.ifft2(y)
            return y

        fn = jax.jit(lambda a: jax.lax.map(chunk, a))
        compiled = fn.lower(x).compile()
        out[b] = (lambda compiled=compiled, x=x: compiled(x), n_meas)
    return out


def torch_fft_calls(n_frames: int, frame_size: int, passes: int = FLOOR_PASSES, chunks=FLOOR_CHUNKS) -> dict | None:
    """The same batchings with torch's CPU FFT (MKL/pocketfft) as a "best CPU FFT" reference;
    None where torch is not importable (it is not a dependency)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    M = int(frame_size)
    cap = int(max(1, FLOOR_MAX_BYTES // (M * M * 8)))
    out = {}
    for b in floor_batchings(min(n_frames, cap), chunks):
        n_meas = (min(n_frames, cap) // b) * b
        x = torch.randn(n_meas // b, b, M, M, dtype=torch.complex64)

        def call(x=x):
            res = []
            for a in x:
                y = a
                for i in range(passes):
                    y = torch.fft.fft2(y) if i % 2 == 0 else torch.fft.ifft2(y)
                res.append(y)
            return res

        out[b] = (call, n_meas)
    return out


def _timed(call, sync) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    sync(call())
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved(
    case,
    floors: dict,
    n_frames: int,
    min_reps: int = 3,
    max_reps: int = 50,
    min_time: float = 1.0,
    reference: dict | None = None,
) -> dict:
    """Time ``case()`` and every floor batching alternately (case, floor b1, floor b2, ...,
    case, ...): at least ``min_reps`` rounds and ``min_time`` seconds of case time.

    Returns the case's ``first_run_s``, ``median_s``, ``min_s``, ``max_s``, ``cpu_median_s``
    (process CPU time, all threads), ``reps``; ``floor`` with per batching the median wall
    and CPU time scaled to ``n_frames``, and ``median_s`` / ``cpu_median_s`` / ``batch`` of
    the fastest batching; ``reference`` (torch, when given) likewise; and the load average
    (1, 5, 15 min) at start and end.
    """
    import jax

    load0 = loadavg3()
    t0 = time.perf_counter()
    block(case())
    first = time.perf_counter() - t0
    for call, _ in floors.values():  # warm
        block(call())
    ref_sync = lambda r: r
    if reference:
        for call, _ in reference.values():
            call()
    cw, cc = [], []
    fw = {b: [] for b in floors}
    fc = {b: [] for b in floors}
    rw = {b: [] for b in (reference or {})}
    rc = {b: [] for b in (reference or {})}
    while len(cw) < max_reps and (len(cw) < min_reps or sum(cw) < min_time):
        w, c = _timed(case, jax.block_until_ready)
        cw.append(w)
        cc.append(c)
        for b, (call, nm) in floors.items():
            w, c = _timed(call, jax.block_until_ready)
            fw[b].append(w * n_frames / nm)
            fc[b].append(c * n_frames / nm)
        for b, (call, nm) in (reference or {}).items():
            w, c = _timed(call, ref_sync)
            rw[b].append(w * n_frames / nm)
            rc[b].append(c * n_frames / nm)

    def summarise(ws, cs):
        per = {
            str(b): {
                "median_s": statistics.median(ws[b]),
                "cpu_median_s": statistics.median(cs[b]),
                "min_s": min(ws[b]),
            }
            for b in ws
        }
        best = min(ws, key=lambda b: statistics.median(ws[b]))
        return {
            "batchings": per,
            "batch": int(best),
            "median_s": per[str(best)]["median_s"],
            "cpu_median_s": min(v["cpu_median_s"] for v in per.values()),
            "min_s": min(v["min_s"] for v in per.values()),
        }

    out = {
        "first_run_s": first,
        "median_s": statistics.median(cw),
        "min_s": min(cw),
        "max_s": max(cw),
        "cpu_median_s": statistics.median(cc),
        "reps": len(cw),
        "floor": summarise(fw, fc),
        "loadavg": {"start": load0, "end": loadavg3()},
    }
    if reference:
        out["best_cpu_fft"] = dict(summarise(rw, rc), library="torch")
    return out


def judge_ratio(case_s: float, floor_s: float, case_passes: float, floor_passes: float) -> dict:
    """``{"ratio": case_s / floor_s, "physical_min": case_passes / floor_passes}``, or, when the
    ratio is below the physical minimum, ``ratio: None`` and ``measurement_error`` (the
    measured value kept as ``ratio_measured``): a case cannot run its FFT passes faster than
    the fastest batching of the same FFTs."""
    ratio = case_s / floor_s
    pmin = case_passes / floor_passes
    if ratio < pmin:
        return {
            "ratio": None,
            "ratio_measured": ratio,
            "physical_min": pmin,
            "measurement_error": f"ratio {ratio:.3g} below the physical minimum {pmin:.3g} "
            f"({case_passes:g} FFT passes per frame against the floor's {floor_passes:g})",
        }
    return {"ratio": ratio, "physical_min": pmin}


def fft_floor(n_frames: int, frame_size: int, min_time: float = 1.0, passes: int = FLOOR_PASSES) -> dict:
    """The floor alone (no case): fastest batching of ``passes`` FFTs of (frames, M, M) complex64."""
    floors = fft_floor_calls(n_frames, frame_size, passes)
    first = next(iter(floors.values()))[0]
    t = interleaved(first, floors, n_frames, min_time=min_time)
    f = t["floor"]
    return {
        "frames": int(n_frames),
        "frame_size": int(frame_size),
        "passes": passes,
        **f,
        "loadavg": t["loadavg"],
        "per_frame_pass_us": 1e6 * f["median_s"] / (n_frames * passes),
    }


# ----------------------------------------------------------------------------- synthetic data


def synthetic_dataset(
    n_energies: int,
    frames_per_energy: int,
    frame_size: int,
    seed: int = 0,
    photons: float = 1e6,
    e_range: tuple[float, float] = (5420.0, 5540.0),
):
    """A :class:`~diffxas.data.dataset.Dataset` with benchmark shapes, built in seconds.

    Raster scan of ``ceil(sqrt(frames_per_energy))`` columns (step M/12 pixels, i.e. ~50 %
    linear overlap of a probe of FWHM M/6 pixels, as in the simulator at M = 64), KB probe
    from :func:`diffxas.physics.probe.kb_probe` at every energy, frames = Poisson counts of the
    probe's far field with a random +-20 % modulation (shapes and magnitudes are what
    matter, not the object). Energies evenly over ``e_range`` (the seed's scan; one energy:
    its midpoint). An earlier 0.25 eV spacing made the joint solver's initial spectral fit
    degenerate (an edge step across < 1 eV: amplitudes ~4, loss NaN from the first step), so
    the timings of the cases with 4 energies were of NaN arithmetic; the benchmark records
    ``loss_finite`` for every case.
    """
    import jax.numpy as jnp

    from diffxas.data.dataset import Dataset
    from diffxas.physics.geometry import object_pixel_size, wavelength
    from diffxas.physics.probe import kb_probe, numerical_aperture_for_fwhm

    rng = np.random.default_rng(seed)
    M = int(frame_size)
    K = int(n_energies)
    e = np.linspace(e_range[0], e_range[1], K) if K > 1 else np.asarray([0.5 * (e_range[0] + e_range[1])])
    z, p = 0.63, 75e-6
    dx = np.asarray(object_pixel_size(e, z, p, M))
    side = int(math.ceil(math.sqrt(frames_per_energy)))
    step = (M / 12.0) * dx[0]
    g = (np.arange(side) - 0.5 * (side - 1)) * step
    yy, xx = np.meshgrid(g, g, indexing="ij")
    pos = np.stack([xx.ravel(), yy.ravel()], -1)[:frames_per_energy]
    pos = pos + rng.uniform(-0.15, 0.15, pos.shape) * step
    na = numerical_aperture_for_fwhm((M / 6.0) * dx[0], wavelength(e[0]))
    illum = np.stack([kb_probe(M, dx[k], wavelength(e[k]), na, photons=photons, defocus_m=1e-6) for k in range(K)])
    far = np.abs(np.fft.fftshift(np.fft.fft2(illum, norm="ortho"), axes=(-2, -1))) ** 2  # (K, M, M)
    n = pos.shape[0]
    frames = np.empty((K * n, M, M), np.float32)
    for k in range(K):
        lam = far[k][None] * rng.uniform(0.8, 1.2, (n, M, M)).astype(np.float32)
        frames[k * n : (k + 1) * n] = rng.poisson(lam).astype(np.float32)
    return Dataset(
        frames=jnp.asarray(frames),
        positions=jnp.asarray(np.tile(pos, (K, 1)), jnp.float32),
        energy_index=jnp.asarray(np.repeat(np.arange(K), n).astype(np.int32)),
        energies=jnp.asarray(e, jnp.float32),
        mask=jnp.ones((K, M, M), jnp.float32),
        illumination=jnp.asarray(illum),
        distance=z,
        detector_pixel=p,
    )


def nbytes_mib(n: float) -> float:
    return round(n / 2**20, 2)
