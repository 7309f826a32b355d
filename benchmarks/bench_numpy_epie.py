"""diffxas's ePIE beside a plain single-threaded numpy ePIE on the same frames.

Usage::

    python -m benchmarks.bench_numpy_epie [--sizes 64 128] [--positions 400] [--epochs 8]
                                          [--repeats 3] [--out FILE.json]

The data: one energy, ``--positions`` probe positions on a raster (step M/8 pixels) with a
random whole-pixel jitter, every position on the reconstruction grid's pixels (so the
classic 2009 ePIE, which cuts integer patches, and diffxas solve the same problem), a KB
probe of 1e6 photons, a smooth random object, Poisson frames of diffxas's forward model.

Engines (alpha = beta = 1, probe updated from the second epoch, both from O = 1 and the
true probe, each in its own random frame order):

* ``diffxas``: :func:`diffxas.solvers.twostep.epie.run_epie` (all frames on the grid: the 2-FFT route);
* ``diffxas_per_frame_shift``: the same with ``per_frame_shift=True`` (the 4-FFT route the
  package used before; the same answer to round-off);
* ``numpy``: the classic Maiden & Rodenburg (2009) ePIE in plain numpy, complex64 (numpy >= 2
  transforms complex64 in single precision), one frame at a time, the counts' square roots
  uncentred once (no per-frame fftshift: the fastest plain form, so the comparison does not
  flatter diffxas).

Timing is interleaved epoch by epoch: each numpy epoch runs inside ``run_epie``'s
per-epoch callback, so both engines see the same machine load; ``--repeats`` full runs
per diffxas route; medians over the epochs after the first (diffxas's first epoch holds
the compilation). Wall time (``perf_counter``) and process CPU time (``process_time``) per
pass, the load average at start and end. Object error: relative L2 error over the well-lit
pixels (probe coverage > 50 % of its maximum) after removing a global complex scale and a
linear phase ramp (:func:`object_error`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

# ----------------------------------------------------------------------------- data


def make_problem(m: int, n_positions: int, photons: float = 1e6, seed: int = 0) -> dict:
    """One-energy dataset on the pixel grid, its truth and the grid (see the module doc)."""
    import jax.numpy as jnp

    from diffxas.data.dataset import Dataset
    from diffxas.physics import forward
    from diffxas.physics.geometry import wavelength
    from diffxas.physics.probe import kb_probe, numerical_aperture_for_fwhm
    from diffxas.solvers.twostep.epie import reconstruction_grids

    rng = np.random.default_rng(seed)
    energy, distance, det = 5480.0, 0.63, 75e-6
    dx = wavelength(energy) * distance / (m * det)
    side = int(np.ceil(np.sqrt(n_positions)))
    step = m // 8
    g = (np.arange(side) - 0.5 * (side - 1)) * step
    rr, cc = np.meshgrid(g, g, indexing="ij")
    pix = np.stack([rr.ravel(), cc.ravel()], -1)[:n_positions] + rng.integers(-1, 2, (n_positions, 2))
    pos = np.stack([pix[:, 1], pix[:, 0]], -1) * dx  # (x, y) m
    proto = Dataset(
        frames=jnp.zeros((n_positions, m, m)),
        positions=jnp.asarray(pos, jnp.float32),
        energy_index=jnp.zeros(n_positions, jnp.int32),
        energies=jnp.asarray([energy], jnp.float32),
        mask=jnp.ones((1, m, m)),
        illumination=None,
        distance=distance,
        detector_pixel=det,
    )
    common, grids = reconstruction_grids(proto)
    grid = grids[0]
    # snap the positions onto this grid's pixels (the classic ePIE's integer patches)
    rc = np.round(grid.to_pixels(pos))
    pos = np.stack([grid.origin[0] + rc[:, 1] * grid.pixel_size, grid.origin[1] + rc[:, 0] * grid.pixel_size], -1)
    corner, frac = forward.frame_geometry(pos.astype(np.float32), grid, m)
    ny, nx = grid.shape
    spec = (rng.standard_normal((ny, nx)) + 1j * rng.standard_normal((ny, nx))) * np.exp(
        -(np.fft.fftfreq(ny)[:, None] ** 2 + np.fft.fftfreq(nx)[None, :] ** 2) / (2 * 0.05**2)
    )
    f = np.fft.ifft2(spec)
    obj = np.exp(-0.3 * np.abs(f) / np.abs(f).max() + 1j * 0.8 * np.real(f) / np.abs(f).max()).astype(np.complex64)
    na = numerical_aperture_for_fwhm(m / 8 * dx, wavelength(energy))
    probe = kb_probe(m, grid.pixel_size, wavelength(energy), na, photons=photons, defocus_m=2e-6).astype(np.complex64)
    inten = forward.intensities(
        jnp.asarray(obj)[None],
        jnp.fft.fft2(jnp.asarray(probe))[None],
        jnp.zeros(n_positions, jnp.int32),
        jnp.asarray(corner),
        jnp.asarray(frac),
    )
    frames = rng.poisson(np.asarray(inten, np.float64)).astype(np.float32)
    ds = Dataset(
        frames=jnp.asarray(frames),
        positions=jnp.asarray(pos, jnp.float32),
        energy_index=jnp.zeros(n_positions, jnp.int32),
        energies=jnp.asarray([energy], jnp.float32),
        mask=jnp.ones((1, m, m), jnp.float32),
        illumination=jnp.asarray(probe[None]),
        distance=distance,
        detector_pixel=det,
    )
    cover = np.zeros(grid.shape)
    for r, c in corner:
        cover[r : r + m, c : c + m] += np.abs(probe) ** 2
    return {
        "ds": ds,
        "common": common,
        "grid": grid,
        "corner": np.asarray(corner),
        "frac": np.asarray(frac),
        "truth": obj,
        "probe": probe,
        "frames": frames,
        "lit": cover > 0.5 * cover.max(),
    }


# ----------------------------------------------------------------------------- plain numpy ePIE


class NumpyEpie:
    """Classic ePIE (Maiden & Rodenburg 2009) in plain numpy, one frame at a time.

    ``O_patch += alpha conj(P) / max|P|^2 (psi' - psi)``, ``P += beta conj(O_patch) /
    max|O_patch|^2 (psi' - psi)``, ``psi' = ifft2(sqrt(n) F / |F|)``, ``F = fft2(psi)``
    (the modulus replaced by one division, not ``exp(i angle F)``: the cheaper plain form)
    (unnormalised transforms: the counts are scaled by M^2 once instead).
    """

    def __init__(self, frames: np.ndarray, corner: np.ndarray, obj0: np.ndarray, probe0: np.ndarray, seed: int = 1):
        m = frames.shape[-1]
        # |fft2| = M |fft2(norm="ortho")|: sqrt(n) scaled once, uncentred once
        self.amp = (np.sqrt(np.fft.ifftshift(frames, axes=(-2, -1))) * m).astype(np.float32)
        self.corner = np.asarray(corner)
        self.obj = np.array(obj0, np.complex64)
        self.probe = np.array(probe0, np.complex64)
        self.m = m
        self.rng = np.random.default_rng(seed)

    def epoch(self, alpha: float = 1.0, beta: float = 1.0) -> float:
        m, o, p = self.m, self.obj, self.probe
        loss = 0.0
        for j in self.rng.permutation(len(self.corner)):
            r, c = self.corner[j]
            patch = o[r : r + m, c : c + m].copy()
            psi = p * patch
            f = np.fft.fft2(psi)
            d = np.fft.ifft2(f * (self.amp[j] / np.maximum(np.abs(f), 1e-12))) - psi
            o[r : r + m, c : c + m] = patch + (alpha / np.max(np.abs(p) ** 2)) * np.conj(p) * d
            if beta > 0:
                p += (beta / np.max(np.abs(patch) ** 2)) * np.conj(patch) * d
            loss += float(np.vdot(d, d).real)
        return loss


# ----------------------------------------------------------------------------- quality


def object_error(obj: np.ndarray, truth: np.ndarray, lit: np.ndarray) -> float:
    """Relative L2 error of ``obj`` over ``lit`` after removing a linear phase ramp and a global
    complex scale (the ePIE ambiguities: global phase, O c / P c^-1, and a sub-pixel shift of
    object against probe, which is a ramp in the object's Fourier space but, for the slowly
    varying residual, well approximated by a ramp in phase).

    The ramp: mean phase gradient of ``truth conj(obj)`` from neighbour products over lit
    pairs; the scale: least squares ``c = <obj', truth> / <obj', obj'>``.
    """
    z = np.where(lit, truth * np.conj(obj), 0)
    gy = np.angle(np.sum(z[1:, :] * np.conj(z[:-1, :])))
    gx = np.angle(np.sum(z[:, 1:] * np.conj(z[:, :-1])))
    yy, xx = np.indices(obj.shape)
    o = obj * np.exp(1j * (gy * yy + gx * xx))
    o, t = o[lit], truth[lit]
    c = np.vdot(o, t) / np.vdot(o, o)
    return float(np.linalg.norm(o * c - t) / np.linalg.norm(t))


# ----------------------------------------------------------------------------- interleaved run


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def compare(m: int, n_positions: int = 400, epochs: int = 8, repeats: int = 3, log=None) -> dict:
    """One frame size: ``repeats`` runs of each diffxas route, numpy interleaved epoch by epoch."""
    from diffxas.solvers.twostep.epie import EpieConfig, run_epie

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    prob = make_problem(m, n_positions)
    assert np.max(np.abs(prob["frac"])) < 1e-3, "positions must lie on the pixel grid"
    load0 = _loadavg()
    routes = {"diffxas": False, "diffxas_per_frame_shift": True}
    rec = {
        "frame_size": m,
        "positions": n_positions,
        "epochs": epochs,
        "repeats": repeats,
        "grid_shape": list(prob["grid"].shape),
        "engines": {},
    }
    times = {k: {"wall": [], "cpu": []} for k in (*routes, "numpy")}
    errors = {k: [] for k in (*routes, "numpy")}
    for rep in range(repeats):
        for name, per_frame in routes.items():
            npe = NumpyEpie(
                prob["frames"],
                prob["corner"],
                np.ones(prob["grid"].shape, np.complex64),
                prob["probe"],
                seed=100 * rep + 1,
            )
            mark = {"cpu": time.process_time(), "wall": time.perf_counter()}
            cpu_dx, wall_np, cpu_np = [], [], []

            def cb(done, loss, npe=npe, mark=mark, cpu_dx=cpu_dx, wall_np=wall_np, cpu_np=cpu_np):
                cpu_dx.append(time.process_time() - mark["cpu"])
                c0, t0 = time.process_time(), time.perf_counter()
                npe.epoch(1.0, 1.0 if done >= 1 else 0.0)  # probe updated from the second epoch, as diffxas
                wall_np.append(time.perf_counter() - t0)
                cpu_np.append(time.process_time() - c0)
                mark["cpu"] = time.process_time()

            cfg = EpieConfig(
                epochs=epochs, alpha=1.0, beta=1.0, probe_update_start=1, seed=rep, per_frame_shift=per_frame
            )
            res = run_epie(prob["ds"], cfg, common=prob["common"], callback=cb)
            times[name]["wall"] += list(res.history["time"][1:])
            times[name]["cpu"] += cpu_dx[1:]
            times["numpy"]["wall"] += wall_np[1:]
            times["numpy"]["cpu"] += cpu_np[1:]
            errors[name].append(object_error(np.asarray(res.objects[0]), prob["truth"], prob["lit"]))
            errors["numpy"].append(object_error(npe.obj, prob["truth"], prob["lit"]))
            log(
                f"[numpy-epie] M={m} rep {rep} {name}: {statistics.median(res.history['time'][1:]) * 1e3:.1f} ms/pass, "
                f"numpy {statistics.median(wall_np[1:]) * 1e3:.1f} ms/pass; errors {errors[name][-1]:.4f} / "
                f"{errors['numpy'][-1]:.4f}"
            )
    for k in times:
        rec["engines"][k] = {
            "pass_median_s": statistics.median(times[k]["wall"]),
            "pass_min_s": min(times[k]["wall"]),
            "pass_cpu_median_s": statistics.median(times[k]["cpu"]),
            "passes_timed": len(times[k]["wall"]),
            "object_error_median": statistics.median(errors[k]),
        }
    npm = rec["engines"]["numpy"]
    for k in routes:
        e = rec["engines"][k]
        e["wall_ratio_to_numpy"] = e["pass_median_s"] / npm["pass_median_s"]
        e["cpu_ratio_to_numpy"] = e["pass_cpu_median_s"] / npm["pass_cpu_median_s"]
    rec["loadavg"] = {"start": load0, "end": _loadavg()}
    rec["fft_limits"] = fft_limits(m, n_positions)
    return rec


def fft_limits(m: int, n_frames: int = 400, min_time: float = 1.0) -> dict:
    """What bounds an ePIE pass from below: the 2 FFT passes per frame (fft2 + ifft2 of M x M
    complex64) of ``n_frames`` frames, in numpy one frame at a time (the plain ePIE's
    FFTs) and in jax in its fastest batching (:func:`benchmarks.common.fft_floor_calls`),
    timed interleaved; wall and process CPU time."""
    from . import common

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n_frames, m, m)) + 1j * rng.standard_normal((n_frames, m, m))).astype(np.complex64)

    def numpy_ffts():
        for j in range(n_frames):
            np.fft.ifft2(np.fft.fft2(x[j]))

    t = common.interleaved(numpy_ffts, common.fft_floor_calls(n_frames, m, passes=2), n_frames, min_time=min_time)
    return {
        "frames": n_frames,
        "numpy_2fft_s": t["median_s"],
        "numpy_2fft_cpu_s": t["cpu_median_s"],
        "jax_2fft_floor_s": t["floor"]["median_s"],
        "jax_2fft_floor_cpu_s": t["floor"]["cpu_median_s"],
        "jax_floor_batch": t["floor"]["batch"],
        "loadavg": t["loadavg"],
    }


def run(suite: str = "quick", log=None) -> list[dict]:
    """Entry for :mod:`benchmarks.run`: 64x64 (and 128x128 in the full suite), 400 positions."""
    sizes = (64,) if suite == "quick" else (64, 128)
    return [compare(m, 400, epochs=6 if suite == "quick" else 8, repeats=3, log=log) for m in sizes]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--positions", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    from . import common

    doc = {
        "benchmark": "numpy_epie",
        "environment": common.env_info(),
        "cases": [compare(m, a.positions, a.epochs, a.repeats) for m in a.sizes],
    }
    doc["environment"]["load_average_at_end"] = _loadavg()
    text = json.dumps(doc, indent=1, default=float)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return doc


if __name__ == "__main__":
    main()
