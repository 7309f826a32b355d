"""Fourier ring correlation between two results of independent halves of the data: resolution
without a ground truth (host side, numpy)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from diffxas.analysis.evaluate import check_split_pair, jsonable
from diffxas.data import files as io_files
from diffxas.data import results as io_results
from diffxas.errors import InputError
from diffxas.maps import DESCRIPTORS, MAP_FIELDS, ChemMaps

# --------------------------------------------------------------------------- FRC


def _prepare(img: np.ndarray, window: str | None) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"FRC needs 2-D images, got shape {a.shape}")
    fin = np.isfinite(a)
    mean = float(a[fin].mean()) if fin.any() else 0.0
    a = np.where(fin, a, mean) - mean
    if window:
        from scipy.signal import windows  # scipy.signal: ~1.4 s to import, only with a window

        if window == "tukey":
            wy, wx = windows.tukey(a.shape[0], 0.5), windows.tukey(a.shape[1], 0.5)
        elif window == "hann":
            wy, wx = windows.hann(a.shape[0]), windows.hann(a.shape[1])
        else:
            raise ValueError(f"unknown FRC window {window!r} (tukey, hann or None)")
        a = a * np.outer(wy, wx)
    return a


def frc(img1, img2, pixel_size: float, window: str | None = "tukey", return_counts: bool = False):
    """Fourier ring correlation of two images of the same field.

    NaNs are replaced with the image's finite mean, the mean is subtracted, a separable
    window is applied (Tukey, alpha = 0.5, default; or Hann) and non-square images are
    zero-padded to a square of side N = max(H, W). Rings are 1/(N pixel_size) wide.

    Returns ``(freq, frc)`` (freq in 1/m, ring r at r/(N pixel_size), r = 0..N//2), or
    ``(freq, frc, counts)`` with the number of Fourier pixels per ring when
    ``return_counts``.
    """
    a, b = _prepare(img1, window), _prepare(img2, window)
    if a.shape != b.shape:
        raise ValueError(f"FRC images differ in shape: {a.shape} vs {b.shape}")
    n = max(a.shape)
    if a.shape != (n, n):
        pad = ((0, n - a.shape[0]), (0, n - a.shape[1]))
        a, b = np.pad(a, pad), np.pad(b, pad)
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    f = np.fft.fftfreq(n)  # cycles / pixel
    r = np.rint(np.hypot(f[:, None], f[None, :]) * n).astype(np.int64).ravel()
    nr = n // 2 + 1
    keep = r < nr
    r = r[keep]
    num = np.bincount(r, (fa * np.conj(fb)).real.ravel()[keep], nr)
    pa = np.bincount(r, (np.abs(fa) ** 2).ravel()[keep], nr)
    pb = np.bincount(r, (np.abs(fb) ** 2).ravel()[keep], nr)
    counts = np.bincount(r, minlength=nr)[:nr]
    with np.errstate(invalid="ignore", divide="ignore"):
        c = num / np.sqrt(pa * pb)
    c = np.where(np.isfinite(c), c, 0.0)
    freq = np.arange(nr) / (n * pixel_size)
    if return_counts:
        return freq, c, counts
    return freq, c


def threshold_curve(threshold, n_pixels_per_ring) -> np.ndarray:
    """FRC threshold per ring: "1/7" (0.143, Rosenthal & Henderson 2003), "halfbit" or
    "onebit" (van Heel & Schatz 2005, eq. 17 with SNR 0.2071 / 0.5), or a number."""
    n = np.maximum(np.asarray(n_pixels_per_ring, dtype=np.float64), 1.0)
    if isinstance(threshold, (int, float)):
        return np.full_like(n, float(threshold))
    t = str(threshold).lower().replace("-", "").replace(" ", "")
    if t in ("1/7", "0.143", "onesevenths", "oneseventh"):
        return np.full_like(n, 1.0 / 7.0)
    if t in ("halfbit", "1/2bit"):
        return (0.2071 + 1.9102 / np.sqrt(n)) / (1.2071 + 0.9102 / np.sqrt(n))
    if t in ("onebit", "1bit"):
        return (0.5 + 2.4142 / np.sqrt(n)) / (1.5 + 1.4142 / np.sqrt(n))
    raise ValueError(f"unknown FRC threshold {threshold!r} (1/7, halfbit, onebit or a number)")


def resolution(freq, frc_values, threshold="1/7", n_pixels_per_ring=None) -> float:
    """Resolution (m) = 1 / the first frequency where the FRC falls below the threshold.

    The crossing is linearly interpolated between the last ring above and the first
    below (ring 0, the mean, is skipped). ``n_pixels_per_ring`` (needed by the bit
    thresholds) defaults to the ideal ring count 2 pi r. If the FRC never falls below the
    threshold the result is limited by the sampling: 1 / freq[-1] (two pixels) is
    returned.
    """
    freq = np.asarray(freq, dtype=np.float64)
    c = np.asarray(frc_values, dtype=np.float64)
    if n_pixels_per_ring is None:
        df = freq[1] - freq[0] if len(freq) > 1 else 1.0
        n_pixels_per_ring = np.maximum(2 * np.pi * freq / df, 1.0)
    t = threshold_curve(threshold, n_pixels_per_ring)
    below = np.nonzero(c[1:] < t[1:])[0]
    if below.size == 0:
        return float(1.0 / freq[-1])
    i = int(below[0]) + 1
    if i == 1:
        return float(1.0 / freq[1])
    d0, d1 = c[i - 1] - t[i - 1], c[i] - t[i]
    s = d0 / (d0 - d1) if d0 != d1 else 0.0
    fc = freq[i - 1] + s * (freq[i] - freq[i - 1])
    return float(1.0 / fc)


def frc_maps(
    maps1: ChemMaps, maps2: ChemMaps, name: str = "edge_energy", window: str | None = "tukey"
) -> dict[str, Any]:
    """FRC of one map between two independent reconstructions (e.g. half-frame splits).

    Pixels valid in both maps are compared; elsewhere each map is filled with its mean
    over the common valid pixels (so the two fills carry no noise). Returns freq (1/m),
    frc, counts, the resolution (m) at the 1/7 and half-bit thresholds
    (``resolution_1_7``, ``resolution_halfbit``) and ``sampling_limited_1_7`` /
    ``sampling_limited_halfbit`` (True when the curve never crosses: the resolution is
    then at least the two-pixel value returned).
    """
    if maps1.shape != maps2.shape or not np.isclose(maps1.pixel_size, maps2.pixel_size):
        raise InputError("FRC needs two maps on the same grid (shape and pixel size)")
    if name not in MAP_FIELDS and name not in maps1.extra:
        raise InputError(f"unknown map {name!r}")

    def get(mp):
        return np.asarray(getattr(mp, name) if name in MAP_FIELDS else mp.extra[name], dtype=np.float64)

    a, b = get(maps1), get(maps2)
    both = np.asarray(maps1.valid).astype(bool) & np.asarray(maps2.valid).astype(bool) & np.isfinite(a) & np.isfinite(b)
    if not both.any():
        raise InputError(f"no pixel of {name} is valid in both reconstructions")
    a = np.where(both, a, np.nan)
    b = np.where(both, b, np.nan)
    freq, c, counts = frc(a, b, maps1.pixel_size, window=window, return_counts=True)
    out = {"name": name, "freq": freq, "frc": c, "counts": counts}
    for key, thr in (("1_7", "1/7"), ("halfbit", "halfbit")):
        t = threshold_curve(thr, counts)
        out[f"resolution_{key}"] = resolution(freq, c, thr, counts)
        # True when the FRC never falls below the threshold: the value is the 2-pixel limit.
        out[f"sampling_limited_{key}"] = bool(not np.any(c[1:] < t[1:]))
    return out


def frc_files(path1, path2, names=DESCRIPTORS, json_path=None) -> dict[str, Any]:
    """FRC of each named map between two results files (the two halves of a split run).

    Writes the curves and resolutions as strict JSON to ``json_path`` (if given). Returns
    name -> the dict of :func:`frc_maps` (maps without common valid pixels are left out);
    the figure is :func:`diffxas.report.plotting.fig_frc` of it (drawn by the caller: analysis
    does not import report/).
    """

    r1, r2 = io_results.read_result(path1), io_results.read_result(path2)
    check_split_pair(path1, path2, r1, r2)
    m1, m2 = r1.maps, r2.maps
    out = {}
    for name in names:
        try:
            out[name] = frc_maps(m1, m2, name)
        except InputError:
            continue
    if not out:
        raise InputError(f"{os.fspath(path1)}, {os.fspath(path2)}: no map has pixels valid in both results")
    if json_path is not None:
        io_files.write_text_atomic(json_path, json.dumps(jsonable(out), indent=2, allow_nan=False) + "\n")
    return out
