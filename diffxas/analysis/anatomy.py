"""Error anatomy against a ground truth: per true domain bias and scatter, domain-mean vs
within-domain error, pixels near domain boundaries and the rim vs the bulk, and the
calibration of the standard-error maps (used by :func:`diffxas.analysis.evaluate.evaluate`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt

from diffxas.maps import DESCRIPTORS, ChemMaps, Truth


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


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
    return {"rmse": float(np.sqrt(np.mean(e**2))), "bias": float(np.mean(e)), "n": int(e.size)}


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
    return {
        "within_1sigma": float(np.mean(z <= 1.0)),
        "within_2sigma": float(np.mean(z <= 2.0)),
        "median_abs_z": float(np.median(z)),
        "median_sigma": float(np.median(std[m])),
        "n": int(m.sum()),
    }


def error_anatomy(
    est: np.ndarray,
    ref: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    distance: np.ndarray | None = None,
    std: np.ndarray | None = None,
    near_m: float = NEAR_BOUNDARY_M,
    domain_names=None,
) -> dict[str, Any]:
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
        per.append(
            {
                "label": lv,
                "name": name,
                "n": int(ed.size),
                "bias": bias,
                "scatter": scatter,
                "rmse": float(np.sqrt(np.mean(ed**2))),
            }
        )
        sb += ed.size * bias**2
        sw += ed.size * scatter**2
    n = int(m.sum())
    out.update(
        {
            "rmse": float(np.sqrt(np.mean(e[m] ** 2))),
            "per_domain": per,
            "domain_mean_rms": float(np.sqrt(sb / n)),
            "within_domain_rms": float(np.sqrt(sw / n)),
        }
    )
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


def anatomy_section(
    maps: ChemMaps,
    truth: Truth,
    tr: dict[str, np.ndarray],
    region: np.ndarray,
    names=DESCRIPTORS,
    near_m: float = NEAR_BOUNDARY_M,
) -> dict[str, Any]:
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
        out[name] = error_anatomy(
            getattr(maps, name), tr[name], tr["labels"], region, dist, std, near_m, truth.domain_names
        )
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
        line = (
            f"    {name:15s} RMSE {_fmt(a.get('rmse'), '.4g')} = domain means {_fmt(a.get('domain_mean_rms'), '.4g')}"
            f" (+) within {_fmt(a.get('within_domain_rms'), '.4g')}"
        )
        if a.get("bulk") is not None:
            line += (
                f"; near {_fmt(a['near']['rmse'], '.4g')} (n={a['near']['n']}), "
                f"bulk {_fmt(a['bulk']['rmse'], '.4g')} (n={a['bulk']['n']})"
            )
        lines.append(line)
        worst = sorted(a.get("per_domain") or [], key=lambda d: -abs(d["bias"]))[:3]
        if worst:
            lines.append(
                "      largest domain biases: "
                + "; ".join(f"{d['label']}: {d['bias']:+.3g} (scatter {d['scatter']:.3g}, n={d['n']})" for d in worst)
            )
        for key, what in (("calibration", "all"), ("calibration_bulk", "bulk")):
            c = a.get(key)
            if c and c.get("n"):
                lines.append(
                    f"      std maps ({what}): {100 * c['within_1sigma']:.0f} % within 1 sigma, "
                    f"{100 * c['within_2sigma']:.0f} % within 2 sigma, median |error|/sigma "
                    f"{c['median_abs_z']:.2f} (calibrated: 68 %, 95 %, 0.67)"
                )
    return lines
