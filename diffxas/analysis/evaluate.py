"""Evaluation against ground truth and Fourier ring correlation (host side, numpy/scipy).

Resampling the truth onto the result grid (:func:`resample_truth`) is an exact
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

Metrics (:func:`evaluate`) are taken over the *evaluation region*: the pixels where the
resampled truth n_v >= ``nv_fraction`` x its maximum. Coverage is the fraction of the
region that is valid in the result; the errors are computed over the valid part only.

Resolution-matched error (:func:`blur_matched_error`): a map's RMSE against the truth mixes
two things, lost resolution (any smoothing: the dose-limited resolution of ptychography, a
spatial prior, a reconstruction that stopped early) and noise or bias at the resolution it
has. For each descriptor the evaluation also reports the Gaussian blur of the truth that
the map matches best (``matched_blur_px``, the standard deviation in result pixels, and
``matched_blur_m``) and the RMSE against that blurred truth (``matched_rmse``), so a
comparison of two methods can say whether one wins by resolution or by noise.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from diffxas.analysis.smoothing import smooth_stack
from diffxas.errors import InputError
from diffxas.maps import DESCRIPTORS, MAP_FIELDS, ChemMaps, Result, Truth

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


# --------------------------------------------------------------------------- metrics


def _finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj):
    """Convert numpy scalars/arrays and NaN (-> None) so that ``json.dumps`` is strict-valid."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(obj)
    if isinstance(obj, bytes):
        return obj.decode()
    return obj


def history_summary(history: dict | None, config: dict | None = None) -> dict[str, Any]:
    """Iterations, final loss and wall time from a Result's history (None where absent).

    * ``final_loss``: last finite value of ``history["loss"]`` (else of the first key
      containing "loss").
    * ``iterations``: the last ``step`` when the history logs step numbers (the joint
      solver logs every ``log_every`` steps), else the length of the loss history (else
      of the longest history array).
    * ``final_heldout_loss``: last finite value of ``history["heldout_loss"]`` (a joint run
      with ``holdout > 0``: the loss of the frames held out of the fit), else None.
    * ``wall_time_s``: last value of a whole-run key (``wall_time``, ``wall_s``, ``elapsed``,
      ``cumulative_time``) if present, else the sum of the per-iteration ``time`` /
      ``time_per_iteration``; else ``config["wall_time"]`` if present.
    """
    history = history or {}
    hist = {k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in history.items() if _is_numeric(v)}
    out: dict[str, Any] = {"final_loss": None, "iterations": None, "wall_time_s": None}
    key = "loss" if "loss" in hist else next((k for k in hist if "loss" in k and k != "heldout_loss"), None)
    if key is not None:
        v = hist[key]
        fin = v[np.isfinite(v)]
        out["final_loss"] = float(fin[-1]) if fin.size else None
        out["loss_key"] = key
        out["iterations"] = int(v.size)
        if "step" in hist and hist["step"].size:
            out["iterations"] = int(np.nanmax(hist["step"]))
    elif hist:
        out["iterations"] = int(max(v.size for v in hist.values()))
    out["final_heldout_loss"] = None
    if "heldout_loss" in hist:
        fin = hist["heldout_loss"][np.isfinite(hist["heldout_loss"])]
        out["final_heldout_loss"] = float(fin[-1]) if fin.size else None
    for k in ("wall_time", "wall_s", "elapsed", "cumulative_time", "wall_time_s"):
        if k in hist and hist[k].size:
            out["wall_time_s"] = float(hist[k][-1])
            break
    else:
        for k in ("time", "time_per_iteration", "iteration_time"):
            if k in hist and hist[k].size:
                out["wall_time_s"] = float(np.nansum(hist[k]))
                break
    if out["wall_time_s"] is None and config:
        for k in ("wall_time", "wall_time_s", "elapsed"):
            if isinstance(config.get(k), (int, float)):
                out["wall_time_s"] = float(config[k])
                break
    return out


def _is_numeric(v) -> bool:
    try:
        a = np.asarray(v)
    except Exception:  # pragma: no cover
        return False
    return a.dtype.kind in "biuf"


def _err_stats(est, ref, mask) -> dict[str, Any]:
    m = mask & np.isfinite(est) & np.isfinite(ref)
    n = int(m.sum())
    if n == 0:
        return {"rmse": None, "bias": None, "mae": None, "n": 0}
    e = est[m] - ref[m]
    return {
        "rmse": float(np.sqrt(np.mean(e**2))),
        "bias": float(np.mean(e)),
        "mae": float(np.mean(np.abs(e))),
        "n": n,
    }


#: Upper end of the blur search, in result pixels (a Gaussian of this standard deviation
#: already spans ~10 pixels FWHM; a map blurrier than that is reported at the bound).
MAX_MATCHED_BLUR_PX = 4.0
#: Lower end of the search: a sampled Gaussian narrower than half a pixel hardly changes a
#: pixel map (its neighbour weight is < 2 %), so the search compares "no blur" with blurs of
#: at least this much; a map best matched below it is reported as blur 0.
MIN_MATCHED_BLUR_PX = 0.5


def _gaussian_blur_in_support(ref: np.ndarray, support: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: Gaussian blur of ``ref`` over ``support`` only (outside
    pixels neither contribute nor dilute), so the particles' rims do not blur into vacuum;
    the two-step fit's spatial prior (:func:`diffxas.analysis.smoothing.smooth_stack`) on one image,
    NaN outside ``support``."""

    if sigma <= 0:
        return ref
    b = smooth_stack(np.where(support, ref, 0.0)[None], support, sigma)[0]
    return np.where(support, b, np.nan)


def _blur_rmse(est: np.ndarray, ref: np.ndarray, mask: np.ndarray):
    """``(rmse(sigma), comparable)``: the RMSE of ``est`` against ``ref`` blurred by sigma
    pixels inside its support, over ``mask`` & finite ``est`` & finite ``ref``."""
    est = np.asarray(est, np.float64)
    ref = np.asarray(ref, np.float64)
    support = np.isfinite(ref)
    m = np.asarray(mask, bool) & np.isfinite(est) & support

    def rmse(sig):
        b = _gaussian_blur_in_support(ref, support, float(sig))
        d = est[m] - b[m]
        d = d[np.isfinite(d)]
        return float(np.sqrt(np.mean(d * d))) if d.size else np.inf

    return rmse, bool(m.any())


def blur_error_curve(est: np.ndarray, ref: np.ndarray, mask: np.ndarray, sigmas_px) -> np.ndarray:
    """RMSE of ``est`` against the truth ``ref`` blurred by each of ``sigmas_px`` (pixels),
    as in :func:`blur_matched_error`; NaN everywhere when no pixel is comparable."""
    rmse, ok = _blur_rmse(est, ref, mask)
    return np.array([rmse(s) if ok else np.nan for s in np.asarray(sigmas_px, np.float64)])


def blur_matched_error(est: np.ndarray, ref: np.ndarray, mask: np.ndarray, pixel_size: float | None = None,
                       max_sigma_px: float = MAX_MATCHED_BLUR_PX) -> dict[str, Any]:
    """The Gaussian blur of the truth that a map matches best, and the RMSE left at it.

    ``ref`` (the truth on the result grid) is blurred with a Gaussian of standard deviation
    sigma pixels inside its own support (finite pixels; normalised convolution), and
    ``rmse(sigma) = rms(est - blur_sigma(ref))`` over ``mask`` (finite ``est`` and ``ref``)
    is minimised over ``MIN_MATCHED_BLUR_PX <= sigma <= max_sigma_px`` (bounded Brent
    search) and compared with sigma = 0 (narrower blurs are not resolvable on the pixel
    grid: see :data:`MIN_MATCHED_BLUR_PX`). For a map that
    is the truth blurred by s plus independent noise of standard deviation n, the minimum is
    at sigma ~ s with ``matched_rmse`` ~ n. Returns ``matched_blur_px``, ``matched_blur_m``
    (None without ``pixel_size``), ``matched_rmse``, ``rmse_unblurred`` and ``at_bound``
    (the search ended at ``max_sigma_px``); all None when no pixel is comparable.
    """
    from scipy.optimize import minimize_scalar

    rmse, ok = _blur_rmse(est, ref, mask)
    if not ok:
        return {"matched_blur_px": None, "matched_blur_m": None, "matched_rmse": None, "rmse_unblurred": None, "at_bound": None}
    r0 = rmse(0.0)
    lo = min(MIN_MATCHED_BLUR_PX, float(max_sigma_px))
    opt = minimize_scalar(rmse, bounds=(lo, float(max_sigma_px)), method="bounded", options={"xatol": 0.01})
    sig, best = float(opt.x), float(opt.fun)
    if r0 <= best:  # the unblurred truth matches at least as well
        sig, best = 0.0, r0
    return {
        "matched_blur_px": sig,
        "matched_blur_m": sig * float(pixel_size) if pixel_size is not None else None,
        "matched_rmse": best,
        "rmse_unblurred": r0,
        "at_bound": bool(sig >= max_sigma_px - 0.02),
    }


def cluster_agreement(labels: np.ndarray, true_labels: np.ndarray, mask: np.ndarray, domain_names=None) -> dict[str, Any]:
    """ARI and Hungarian-matched confusion table between result clusters and true domains.

    Over ``mask`` pixels that are clustered (label >= 0); true label -1 (background) is a
    class of its own ("none"). The confusion table has one row per true domain, one
    column per cluster; ``matching`` pairs each domain with one cluster maximising the
    matched pixel count (scipy linear_sum_assignment); ``matched_accuracy`` is the matched
    count over the compared pixels.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score

    labels = np.asarray(labels)
    true_labels = np.asarray(true_labels)
    m = mask & (labels >= 0)
    n = int(m.sum())
    if n == 0:
        return {"ari": None, "n": 0}
    a, b = true_labels[m].astype(np.int64), labels[m].astype(np.int64)
    tv, cv = np.unique(a), np.unique(b)
    conf = np.zeros((len(tv), len(cv)), dtype=np.int64)
    np.add.at(conf, (np.searchsorted(tv, a), np.searchsorted(cv, b)), 1)
    rows, cols = linear_sum_assignment(-conf)
    names = list(domain_names or [])

    def dname(t):
        t = int(t)
        if t < 0:
            return "none"
        return str(names[t]) if t < len(names) else f"domain {t}"

    return {
        "ari": float(adjusted_rand_score(a, b)),
        "n": n,
        "true_labels": [int(t) for t in tv],
        "true_names": [dname(t) for t in tv],
        "cluster_labels": [int(c) for c in cv],
        "confusion": conf.tolist(),
        "matching": [{"domain": dname(tv[r]), "true_label": int(tv[r]), "cluster": int(cv[c]), "count": int(conf[r, c])}
                     for r, c in zip(rows, cols)],
        "matched_accuracy": float(conf[rows, cols].sum() / n),
    }


def evaluate(result_or_maps: Result | ChemMaps, truth: Truth, nv_fraction: float = 0.25, clusters: dict | None = None) -> dict[str, Any]:
    """Compare a result (or bare ChemMaps) with the ground truth; JSON-serialisable dict.

    Keys: ``n_region`` (evaluation-region pixels: truth n_v >= nv_fraction x max),
    ``coverage`` (valid fraction of the region), ``<map>`` -> {rmse, bias, mae, n} for
    the descriptors and edge_width (units of the map; errors = result - truth over the
    valid region pixels), ``n_v`` -> {rel_rms, rel_bias, rel_median_abs, n} (relative
    error (nv - nv_true)/nv_true), ``clusters`` -> :func:`cluster_agreement` (when the
    result has clusters; else None), ``anatomy`` -> :func:`anatomy_section` (per-domain
    bias and scatter, near-boundary vs bulk, calibration of the std maps), ``history`` ->
    :func:`history_summary` and ``method``.
    """
    if isinstance(result_or_maps, Result):
        maps = result_or_maps.maps
        method = result_or_maps.method
        history = result_or_maps.history
        config = result_or_maps.config
        if clusters is None:
            clusters = result_or_maps.clusters
    elif isinstance(result_or_maps, ChemMaps):
        maps, method, history, config = result_or_maps, None, None, None
    else:
        raise TypeError(f"evaluate needs a Result or ChemMaps, got {type(result_or_maps).__name__}")
    if "n_v" not in truth.maps:
        raise InputError("truth has no n_v map; cannot define the evaluation region")
    tr = resample_truth(truth, maps.pixel_size, maps.origin, maps.shape)
    nv_t = tr["n_v"]
    if not np.isfinite(nv_t).any() or np.nanmax(nv_t) <= 0:
        raise InputError("truth n_v is zero on the result grid: the truth and the result do not overlap")
    region = np.isfinite(nv_t) & (nv_t >= nv_fraction * np.nanmax(nv_t))
    flagged = np.asarray(maps.valid).astype(bool)
    # a pixel flagged valid whose descriptor or n_v map is NaN/inf is not covered: it has
    # no estimate (else the coverage reads 1.0 beside empty metrics)
    finite = np.ones(maps.shape, bool)
    for name in DESCRIPTORS + ("n_v",):
        finite &= np.isfinite(np.asarray(getattr(maps, name), dtype=np.float64))
    valid = flagged & finite
    vr = region & valid
    n_region = int(region.sum())
    out: dict[str, Any] = {
        "method": method,
        "nv_fraction": float(nv_fraction),
        "n_region": n_region,
        "n_valid": int(vr.sum()),
        "coverage": float(vr.sum() / n_region) if n_region else None,
        "n_valid_nonfinite": int((flagged & ~finite).sum()),
    }
    for name in DESCRIPTORS + ("edge_width",):
        if name in tr:
            est = np.asarray(getattr(maps, name), dtype=np.float64)
            st = _err_stats(est, tr[name], vr)
            st["unit"] = MAP_FIELDS[name][0]
            if name in DESCRIPTORS:
                bm = blur_matched_error(est, tr[name], vr, maps.pixel_size)
                st.update({k: v for k, v in bm.items() if k != "rmse_unblurred"})
            out[name] = st
    nv = np.asarray(maps.n_v, dtype=np.float64)
    m = vr & np.isfinite(nv) & (nv_t > 0)
    if m.any():
        rel = (nv[m] - nv_t[m]) / nv_t[m]
        out["n_v"] = {
            "rel_rms": float(np.sqrt(np.mean(rel**2))),
            "rel_bias": float(np.mean(rel)),
            "rel_median_abs": float(np.median(np.abs(rel))),
            "n": int(m.sum()),
        }
    else:
        out["n_v"] = {"rel_rms": None, "rel_bias": None, "rel_median_abs": None, "n": 0}
    if clusters is not None and "labels" in clusters:
        lab = np.asarray(clusters["labels"])
        if lab.shape == maps.shape:
            out["clusters"] = cluster_agreement(lab, tr["labels"], vr, truth.domain_names)
        else:
            out["clusters"] = None
    else:
        out["clusters"] = None
    out["anatomy"] = anatomy_section(maps, truth, tr, vr)
    out["history"] = history_summary(history, config)
    return jsonable(out)


# --------------------------------------------------------------------------- error anatomy

#: Pixels closer than this to a domain boundary or a particle's rim are "near"; the others
#: the "bulk" (issue 24: a 300 nm probe at 150 nm steps does not resolve a sharp step in
#: valence there; 45 nm = 3 pixels of 15 nm).
NEAR_BOUNDARY_M = 45e-9


def boundary_distance(labels: np.ndarray, pixel_size: float) -> np.ndarray:
    """(H, W) distance (m) of each pixel centre to the nearest boundary between different
    labels (a domain boundary, or a particle's rim where the label changes to -1).

    Exact Euclidean distance transform (scipy) to the nearest pixel of another label,
    minus half a pixel: the boundary lies between the two pixel centres, so a pixel next
    to it is half a pixel away (the value is exact along grid directions and at most
    (sqrt 2 - 1)/2 pixel too large diagonally). Pixels of label -1 get their distance to
    the nearest particle pixel the same way. A grid without any boundary gives +inf.
    """
    from scipy.ndimage import distance_transform_edt

    lab = np.asarray(labels)
    out = np.full(lab.shape, np.inf)
    vals = np.unique(lab)
    if vals.size < 2:
        return out
    for v in vals:
        m = lab == v
        d = distance_transform_edt(m)  # distance to the nearest pixel that is not v (in pixels)
        out[m] = (d[m] - 0.5) * float(pixel_size)
    return out


def truth_boundary_distance(truth: Truth, pixel_size: float, origin, shape) -> np.ndarray:
    """:func:`boundary_distance` of the truth labels on the (finer) truth grid, read at the
    centres of the result grid's pixels (nearest truth pixel; error <= half a truth pixel);
    +inf outside the truth grid."""
    d_t = boundary_distance(truth.labels, truth.pixel_size)
    ny, nx = int(shape[0]), int(shape[1])
    xs = origin[0] + pixel_size * np.arange(nx)
    ys = origin[1] + pixel_size * np.arange(ny)
    j = np.rint((xs - truth.origin[0]) / truth.pixel_size).astype(int)
    i = np.rint((ys - truth.origin[1]) / truth.pixel_size).astype(int)
    ok_j = (j >= 0) & (j < d_t.shape[1])
    ok_i = (i >= 0) & (i < d_t.shape[0])
    out = np.full((ny, nx), np.inf)
    out[np.ix_(ok_i, ok_j)] = d_t[np.ix_(i[ok_i], j[ok_j])]
    return out


def _split_stats(e: np.ndarray) -> dict[str, Any]:
    if e.size == 0:
        return {"rmse": None, "bias": None, "n": 0}
    return {"rmse": float(np.sqrt(np.mean(e ** 2))), "bias": float(np.mean(e)), "n": int(e.size)}


def calibration(err: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """Calibration of standard-error maps: the fraction of pixels with |error| <= 1 sigma and
    <= 2 sigma (68.3 % and 95.4 % for calibrated Gaussian errors), the median |error|/sigma
    (0.674 for calibrated Gaussian errors) and the median sigma, over pixels where both are
    finite and sigma > 0."""
    err = np.asarray(err, np.float64).ravel()
    std = np.asarray(std, np.float64).ravel()
    m = np.isfinite(err) & np.isfinite(std) & (std > 0)
    if not m.any():
        return {"within_1sigma": None, "within_2sigma": None, "median_abs_z": None, "median_sigma": None, "n": 0}
    z = np.abs(err[m]) / std[m]
    return {"within_1sigma": float(np.mean(z <= 1.0)), "within_2sigma": float(np.mean(z <= 2.0)),
            "median_abs_z": float(np.median(z)), "median_sigma": float(np.median(std[m])), "n": int(m.sum())}


def error_anatomy(est: np.ndarray, ref: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                  distance: np.ndarray | None = None, std: np.ndarray | None = None,
                  near_m: float = NEAR_BOUNDARY_M, domain_names=None) -> dict[str, Any]:
    """What a map's error is made of, over ``mask`` & finite ``est`` & finite ``ref``.

    Args:
        est, ref: (H, W) the map and the truth on the same grid; labels: (H, W) true domain
            of each pixel (-1: none); distance: (H, W) m to the nearest domain boundary or
            rim (:func:`truth_boundary_distance`), None to skip the near/bulk split;
            std: (H, W) the map's standard errors, None to skip the calibration.

    Returns (JSON-ready):
        ``per_domain``: per true label {name, n, bias (mean error), scatter (standard
        deviation of the error about that bias), rmse}; ``domain_mean_rms`` =
        sqrt(sum_d n_d bias_d^2 / N) and ``within_domain_rms`` = sqrt(sum_d n_d scatter_d^2 /
        N), whose squares add up to the RMSE's (exactly); ``near`` / ``bulk``: {rmse, bias,
        n} of the pixels closer than ``near_m`` to a boundary or rim and of the others, and
        ``near_fraction``; ``calibration`` / ``calibration_bulk``: :func:`calibration` over
        all and over the bulk pixels.
    """
    est = np.asarray(est, np.float64)
    ref = np.asarray(ref, np.float64)
    labels = np.asarray(labels)
    m = np.asarray(mask, bool) & np.isfinite(est) & np.isfinite(ref)
    e = est - ref
    names = list(domain_names or [])
    out: dict[str, Any] = {"n": int(m.sum())}
    if not m.any():
        out.update({"per_domain": [], "domain_mean_rms": None, "within_domain_rms": None})
        return out
    per, sb, sw = [], 0.0, 0.0
    for lv in np.unique(labels[m]):
        ed = e[m & (labels == lv)]
        bias, scatter = float(ed.mean()), float(ed.std())
        lv = int(lv)
        name = "none" if lv < 0 else (str(names[lv]) if lv < len(names) else f"domain {lv}")
        per.append({"label": lv, "name": name, "n": int(ed.size), "bias": bias, "scatter": scatter,
                    "rmse": float(np.sqrt(np.mean(ed ** 2)))})
        sb += ed.size * bias ** 2
        sw += ed.size * scatter ** 2
    n = int(m.sum())
    out.update({"rmse": float(np.sqrt(np.mean(e[m] ** 2))), "per_domain": per,
                "domain_mean_rms": float(np.sqrt(sb / n)), "within_domain_rms": float(np.sqrt(sw / n))})
    bulk = None
    if distance is not None:
        dist = np.asarray(distance, np.float64)
        near = m & (dist < near_m)
        bulk = m & ~(dist < near_m)
        out["near_m"] = float(near_m)
        out["near"] = _split_stats(e[near])
        out["bulk"] = _split_stats(e[bulk])
        out["near_fraction"] = float(near.sum() / n)
    if std is not None:
        sd = np.asarray(std, np.float64)
        out["calibration"] = calibration(e[m], sd[m])
        if bulk is not None:
            out["calibration_bulk"] = calibration(e[bulk], sd[bulk])
    return out


def anatomy_section(maps: ChemMaps, truth: Truth, tr: dict[str, np.ndarray], region: np.ndarray,
                    names=DESCRIPTORS, near_m: float = NEAR_BOUNDARY_M) -> dict[str, Any]:
    """:func:`error_anatomy` of each descriptor of ``maps`` against the resampled truth ``tr``
    (:func:`resample_truth`) over ``region`` (the evaluation region's valid pixels), with
    the truth's boundary distances and the maps' std maps where present."""
    dist = truth_boundary_distance(truth, maps.pixel_size, maps.origin, maps.shape)
    out: dict[str, Any] = {"near_m": float(near_m)}
    for name in names:
        if name not in tr:
            continue
        std = maps.std.get(name) if maps.std else None
        if std is not None and np.shape(std) != maps.shape:
            std = None
        out[name] = error_anatomy(getattr(maps, name), tr[name], tr["labels"], region, dist, std, near_m,
                                  truth.domain_names)
    return out


def format_anatomy(anatomy: dict | None) -> list[str]:
    """Lines of the error anatomy for ``diffxas evaluate`` (see :func:`error_anatomy`)."""
    if not anatomy:
        return []
    near_nm = 1e9 * float(anatomy.get("near_m") or NEAR_BOUNDARY_M)
    lines = [f"  error anatomy (bulk: >= {near_nm:.0f} nm from any domain boundary or rim):"]
    for name in DESCRIPTORS:
        a = anatomy.get(name)
        if not a or not a.get("n"):
            continue
        line = (f"    {name:15s} RMSE {_fmt(a.get('rmse'), '.4g')} = domain means {_fmt(a.get('domain_mean_rms'), '.4g')}"
                f" (+) within {_fmt(a.get('within_domain_rms'), '.4g')}")
        if a.get("bulk") is not None:
            line += (f"; near {_fmt(a['near']['rmse'], '.4g')} (n={a['near']['n']}), "
                     f"bulk {_fmt(a['bulk']['rmse'], '.4g')} (n={a['bulk']['n']})")
        lines.append(line)
        worst = sorted(a.get("per_domain") or [], key=lambda d: -abs(d["bias"]))[:3]
        if worst:
            lines.append("      largest domain biases: " + "; ".join(
                f"{d['label']}: {d['bias']:+.3g} (scatter {d['scatter']:.3g}, n={d['n']})" for d in worst))
        for key, what in (("calibration", "all"), ("calibration_bulk", "bulk")):
            c = a.get(key)
            if c and c.get("n"):
                lines.append(f"      std maps ({what}): {100 * c['within_1sigma']:.0f} % within 1 sigma, "
                             f"{100 * c['within_2sigma']:.0f} % within 2 sigma, median |error|/sigma "
                             f"{c['median_abs_z']:.2f} (calibrated: 68 %, 95 %, 0.67)")
    return lines


def default_json_path(results_path) -> str:
    """``<results stem>_eval.json`` next to the results file."""
    root, _ = os.path.splitext(os.fspath(results_path))
    return root + "_eval.json"


def _sample_id(d) -> tuple | None:
    """(preset, seed, dose) of a simulation record (truth attrs or a CXI's root attrs)."""
    try:
        return (str(d["preset"]), int(d["seed"]), float(d["dose"]))
    except (KeyError, TypeError, ValueError):
        return None


def check_truth_matches(result, truth, result_path, truth_path) -> None:
    """Refuse (one InputError line) a ground truth that belongs to another dataset than
    the result's input. Evidence, strongest first: the truth's ``data_sha256`` (the CXI
    file's SHA-256, recorded at simulate time) against the result's ``input_sha256``;
    else the simulation record (preset, seed, dose) of the result's input CXI file, when
    it is still there, against the truth's. Without either record there is nothing to
    compare (e.g. a truth file from before the record, or a result from the API)."""
    from diffxas.data import files as io_files

    attrs = truth.attrs or {}
    sha = str(attrs.get("data_sha256") or "")
    if sha and result.input_sha256:
        if sha != result.input_sha256:
            raise InputError(f"{os.fspath(truth_path)}: the ground truth belongs to another dataset (its data "
                             f"SHA-256 {sha[:12]}... differs from the input {result.input_sha256[:12]}... recorded in "
                             f"{os.fspath(result_path)})")
        return
    src = result.input_path
    if not src or not os.path.isfile(src):
        return
    try:
        with io_files._open_h5(src) as f:
            cxi = {k: io_files._attr_value(v) for k, v in f.attrs.items()}
    except InputError:
        return
    a, b = _sample_id(cxi), _sample_id(attrs)
    if a is not None and b is not None and a != b:
        raise InputError(f"{os.fspath(truth_path)}: the ground truth belongs to another dataset (preset, seed, dose "
                         f"{b}) than the input {src} of {os.fspath(result_path)} {a}")


def check_split_pair(path1, path2, r1=None, r2=None) -> None:
    """Refuse FRC inputs that are not two independent halves: the same file twice (FRC
    would be 1 at every frequency), two results recorded as the full data or as the same
    half (``--half``), or halves of different input files."""
    from diffxas.data import files as io_files
    from diffxas.data import results as io_results

    p1, p2 = os.fspath(path1), os.fspath(path2)
    same = os.path.abspath(p1) == os.path.abspath(p2)
    try:
        same = same or os.path.samefile(p1, p2)
    except OSError:
        pass
    if same or io_files.sha256_file(p1) == io_files.sha256_file(p2):
        raise InputError(f"--split {p2}: the same results as {p1}; FRC needs the two independent halves "
                         "(reconstruct --half even and --half odd)")
    r1 = io_results.read_result(p1) if r1 is None else r1
    r2 = io_results.read_result(p2) if r2 is None else r2
    h = []
    for p, r in ((p1, r1), (p2, r2)):
        cfg = r.config or {}
        sel = cfg.get("input_selection") if isinstance(cfg, dict) else None
        if isinstance(sel, dict):
            if sel.get("half") not in ("even", "odd"):
                raise InputError(f"{p}: a result of all frames, not of one half (reconstruct --half even/odd); "
                                 "FRC between full-data results does not measure resolution")
            h.append(sel.get("half"))
    if len(h) == 2 and h[0] == h[1]:
        raise InputError(f"{p1}, {p2}: both are the {h[0]} half; FRC needs the even and the odd half")
    if r1.input_sha256 and r2.input_sha256 and r1.input_sha256 != r2.input_sha256:
        raise InputError(f"{p1}, {p2}: halves of different input files (SHA-256 {r1.input_sha256[:12]}... and "
                         f"{r2.input_sha256[:12]}...)")


def evaluate_file(path, truth_path, json_path=None, nv_fraction: float = 0.25) -> dict[str, Any]:
    """The ``diffxas evaluate`` command: read result and truth, evaluate, write JSON.

    ``json_path`` defaults to ``<results stem>_eval.json`` next to the results file.
    Returns the metrics dict (with ``result_path``, ``truth_path`` and ``json_path``).
    """
    from diffxas.data import files as io_files
    from diffxas.data import results as io_results
    from diffxas.data import truth as io_truth

    result = io_results.read_result(path)
    truth = io_truth.read_truth(truth_path)
    check_truth_matches(result, truth, path, truth_path)
    metrics = evaluate(result, truth, nv_fraction=nv_fraction)
    json_path = os.fspath(json_path) if json_path is not None else default_json_path(path)
    metrics["result_path"] = os.fspath(path)
    metrics["truth_path"] = os.fspath(truth_path)
    metrics["json_path"] = json_path
    io_files.write_text_atomic(json_path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def format_metrics(metrics: dict) -> str:
    """A short human-readable summary of :func:`evaluate`'s output (for the CLI)."""
    lines = [
        f"method: {metrics.get('method')}; evaluation region {metrics.get('n_region')} px "
        f"(truth n_v >= {metrics.get('nv_fraction')} max); coverage {_fmt(metrics.get('coverage'), '.3f')}"
    ]
    for name in DESCRIPTORS + ("edge_width",):
        st = metrics.get(name)
        if st:
            line = f"  {name:15s} RMSE {_fmt(st['rmse'], '.4g')} {st['unit']}, bias {_fmt(st['bias'], '+.4g')} {st['unit']} (n={st['n']})"
            if st.get("matched_rmse") is not None:
                bound = " (search bound)" if st.get("at_bound") else ""
                line += (f"; best match: truth blurred by sigma {st['matched_blur_px']:.2f} px{bound}, "
                         f"RMSE {st['matched_rmse']:.4g} {st['unit']} there")
            lines.append(line)
    nv = metrics.get("n_v") or {}
    lines.append(f"  n_v relative error: RMS {_fmt(nv.get('rel_rms'), '.3f')}, median |.| {_fmt(nv.get('rel_median_abs'), '.3f')}")
    cl = metrics.get("clusters")
    if cl and cl.get("ari") is not None:
        lines.append(f"  clusters: ARI {cl['ari']:.3f}, matched accuracy {cl['matched_accuracy']:.3f}")
    lines.extend(format_anatomy(metrics.get("anatomy")))
    h = metrics.get("history") or {}
    if h.get("final_loss") is not None:
        lines.append(f"  final loss {h['final_loss']:.6g} after {h.get('iterations')} iterations")
    if h.get("final_heldout_loss") is not None:
        lines.append(f"  held-out frames' loss {h['final_heldout_loss']:.6g} (data only, per frame pixel)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- FRC


def _prepare(img: np.ndarray, window: str | None) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"FRC needs 2-D images, got shape {a.shape}")
    fin = np.isfinite(a)
    mean = float(a[fin].mean()) if fin.any() else 0.0
    a = np.where(fin, a, mean) - mean
    if window:
        from scipy.signal import windows

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


def frc_maps(maps1: ChemMaps, maps2: ChemMaps, name: str = "edge_energy", window: str | None = "tukey") -> dict[str, Any]:
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
    from diffxas.data import files as io_files
    from diffxas.data import results as io_results

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
