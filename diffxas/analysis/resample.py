"""Resampling the truth onto the result grid (:func:`resample_truth`) is an exact
area average: each result pixel is a square of side ``pixel_size`` centred on its
pixel centre; every truth pixel contributes with the area of its overlap with that
square (separable 1-D overlap matrices along x and y, so the operation is exact for
any pixel-size ratio and sub-pixel offset of the two grids).

* Extensive maps (per area: ``n_v``, ``edge_jump``, ``pre_edge``) are plain area means,
  NaN counted as 0 (no material).
* Intensive maps (per V atom: ``edge_energy``, ``edge_width``, ``pre_edge_norm``,
  ``ne_eff_per_nv`` and any other map) are N_V-weighted area means: a mixed pixel's
  absorption is the sum of its parts, so its fitted descriptor is (to first order)
  the V-weighted mean of the parts'. NaN where the pixel holds no V. Without an
  ``n_v`` truth map, the plain mean over the finite part is used.
* ``labels`` (domain index, -1 = no particle) take the label with the largest overlap
  area (majority vote, -1 included).

On piecewise-constant blocks aligned with the coarse grid all of these are exact.
"""

from __future__ import annotations

import numpy as np

from diffxas.maps import Truth

#: Maps that are amounts per area (averaged with NaN = 0); all others are per V atom.
EXTENSIVE = ("n_v", "edge_jump", "pre_edge")

# --------------------------------------------------------------------------- resampling


def _overlap_matrix(n_out, x0_out, d_out, n_in, x0_in, d_in) -> np.ndarray:
    """(n_out, n_in) overlap length of output pixel i with input pixel j (1-D)."""
    lo_o = x0_out + d_out * (np.arange(n_out) - 0.5)
    hi_o = lo_o + d_out
    lo_i = x0_in + d_in * (np.arange(n_in) - 0.5)
    hi_i = lo_i + d_in
    ov = np.minimum(hi_o[:, None], hi_i[None, :]) - np.maximum(lo_o[:, None], lo_i[None, :])
    return np.clip(ov, 0.0, None)


def resample_truth(truth: Truth, pixel_size: float, origin, shape) -> dict[str, np.ndarray]:
    """Truth maps (and labels) area-averaged onto the grid (pixel_size, origin, shape).

    Returns name -> (H, W) float64 for every map in ``truth.maps``, plus ``labels`` (H, W)
    int16 (majority by overlap area, -1 = no particle) and ``area_fraction`` (H, W): the
    fraction of each result pixel covered by the truth grid. Pixels outside the truth
    grid are NaN (labels -1).
    """
    ny, nx = int(shape[0]), int(shape[1])
    tmaps = {k: np.asarray(v, dtype=np.float64) for k, v in truth.maps.items()}
    tlab = np.asarray(truth.labels)
    if tmaps:
        tny, tnx = next(iter(tmaps.values())).shape
    else:
        tny, tnx = tlab.shape
    wx = _overlap_matrix(nx, origin[0], pixel_size, tnx, truth.origin[0], truth.pixel_size)
    wy = _overlap_matrix(ny, origin[1], pixel_size, tny, truth.origin[1], truth.pixel_size)
    area = pixel_size * pixel_size

    def avg(m):  # area integral of m over each output pixel
        return wy @ m @ wx.T

    cover = avg(np.ones((tny, tnx)))
    out: dict[str, np.ndarray] = {"area_fraction": cover / area}
    inside = cover > 0.5 * area
    nv = tmaps.get("n_v")
    nv0 = np.where(np.isfinite(nv), nv, 0.0) if nv is not None else None
    nv_int = avg(nv0) if nv0 is not None else None
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, m in tmaps.items():
            fin = np.isfinite(m)
            m0 = np.where(fin, m, 0.0)
            if name in EXTENSIVE:
                r = avg(m0) / np.where(cover > 0, cover, np.nan)
                r = np.where(inside, r, np.nan)
            elif nv0 is not None:
                wv = np.where(fin, nv0, 0.0)
                num, den = avg(m0 * wv), avg(wv)
                r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
                # Pixels with only a vanishing sliver of V carry no usable truth value.
                r = np.where(inside & (den > 1e-12 * max(float(np.nanmax(nv_int)), 1e-300)), r, np.nan)
            else:
                num, den = avg(m0), avg(fin.astype(np.float64))
                r = np.where(inside & (den > 0), num / np.where(den > 0, den, 1.0), np.nan)
            out[name] = r
    # Labels: majority by overlap area (background -1 is a candidate too).
    vals = np.unique(tlab)
    best = np.full((ny, nx), -1, dtype=np.int16)
    best_area = np.full((ny, nx), -np.inf)
    for v in vals:
        a = avg((tlab == v).astype(np.float64))
        upd = a > best_area
        best[upd] = v
        best_area[upd] = a[upd]
    best[~inside] = -1
    out["labels"] = best
    return out
