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
    from diffxas.sweep import git_state

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
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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
    return {"peak_rss_mib": round(ru / 1024.0, 1),
            "vm_hwm_mib": None if hwm is None else round(hwm / 1024.0, 1),
            "rss_mib": None if rss is None else round(rss / 1024.0, 1)}


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
    return {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                            "temp_size_in_bytes", "alias_size_in_bytes",
                                            "generated_code_size_in_bytes") if hasattr(m, k)}


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
    return {"first_run_s": first, "median_s": statistics.median(times), "min_s": min(times),
            "max_s": max(times), "cpu_median_s": statistics.median(cpus), "reps": len(times),
            "loadavg": [load0, loadavg()]}


def aot(fn, *args):
    """(compiled, seconds) for a ``jax.jit``/``eqx.filter_jit`` function: trace + lower + compile."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def xla_compiled(compiled):
    """The ``jax.stages.Compiled`` inside an equinox ``Compiled`` (or itself)."""
    return getattr(compiled, "compiled", compiled)


# ----------------------------------------------------------------------------- FFT floor

#: FFT passes per frame that the brief's floor counts for one step: forward (fft2 of the
#: exit wave + ifft2 of the shifted probe) and their adjoints in the backward pass. The
#: joint step itself does 6 (the two forward FFTs are recomputed under jax.checkpoint).
FLOOR_PASSES = 4

#: Frames per timed FFT call (bigger problems are timed on this many and scaled
#: linearly: the batched FFT is linear in the batch once it fills the machine).
FLOOR_MAX_BYTES = 512 * 2 ** 20


def fft_floor(n_frames: int, frame_size: int, min_time: float = 1.0) -> dict:
    """Time of the bare batched FFTs of a step: fft2, ifft2, fft2, ifft2 on (frames, M, M) complex64."""
    import jax
    import jax.numpy as jnp

    M = int(frame_size)
    per_frame = M * M * 8
    n_meas = int(max(1, min(n_frames, FLOOR_MAX_BYTES // per_frame)))

    @jax.jit
    def passes(x):
        # four passes, as in forward + backward; no algebra in between that XLA could fold
        y = jnp.fft.fft2(x)
        y = jnp.fft.ifft2(y)
        y = jnp.fft.fft2(y)
        return jnp.fft.ifft2(y)

    x = jnp.asarray((np.random.default_rng(0).standard_normal((n_meas, M, M))
                     + 1j * np.random.default_rng(1).standard_normal((n_meas, M, M))).astype(np.complex64))
    compiled, t_comp = aot(passes, x)
    t = time_compiled(lambda: compiled(x), min_time=min_time)
    scale = n_frames / n_meas
    del x
    return {"frames": int(n_frames), "frame_size": M, "passes": FLOOR_PASSES, "frames_measured": n_meas,
            "compile_s": t_comp, "median_s": t["median_s"] * scale, "min_s": t["min_s"] * scale,
            "cpu_median_s": t["cpu_median_s"] * scale, "reps": t["reps"], "loadavg": t["loadavg"], "per_frame_pass_us": 1e6 * t["median_s"] / (n_meas * FLOOR_PASSES)}


# ----------------------------------------------------------------------------- synthetic data


def synthetic_dataset(n_energies: int, frames_per_energy: int, frame_size: int, seed: int = 0,
                      photons: float = 1e6, e_range: tuple[float, float] = (5420.0, 5540.0)):
    """A :class:`~diffxas.dataset.Dataset` with benchmark shapes, built in seconds.

    Raster scan of ``ceil(sqrt(frames_per_energy))`` columns (step M/12 pixels, i.e. ~50 %
    linear overlap of a probe of FWHM M/6 pixels, as in the simulator at M = 64), KB probe
    from :func:`diffxas.probe.kb_probe` at every energy, frames = Poisson counts of the
    probe's far field with a random +-20 % modulation (shapes and magnitudes are what
    matter, not the object). Energies evenly over ``e_range`` (the seed's scan; one energy:
    its midpoint). An earlier 0.25 eV spacing made the joint solver's initial spectral fit
    degenerate (an edge step across < 1 eV: amplitudes ~4, loss NaN from the first step), so
    the timings of the cases with 4 energies were of NaN arithmetic; the benchmark records
    ``loss_finite`` for every case.
    """
    import jax.numpy as jnp

    from diffxas.dataset import Dataset
    from diffxas.geometry import object_pixel_size, wavelength
    from diffxas.probe import kb_probe, numerical_aperture_for_fwhm

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
        frames[k * n:(k + 1) * n] = rng.poisson(lam).astype(np.float32)
    return Dataset(frames=jnp.asarray(frames), positions=jnp.asarray(np.tile(pos, (K, 1)), jnp.float32),
                   energy_index=jnp.asarray(np.repeat(np.arange(K), n).astype(np.int32)),
                   energies=jnp.asarray(e, jnp.float32), mask=jnp.ones((K, M, M), jnp.float32),
                   illumination=jnp.asarray(illum), distance=z, detector_pixel=p)


def nbytes_mib(n: float) -> float:
    return round(n / 2 ** 20, 2)
