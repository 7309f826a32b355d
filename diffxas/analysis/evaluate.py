"""Evaluation against ground truth (host side, numpy/scipy): metrics, cross-checks, formatting.

The truth is resampled onto the result grid by :func:`diffxas.analysis.resample.resample_truth`;
the error anatomy is in :mod:`diffxas.analysis.anatomy`, Fourier ring correlation in
:mod:`diffxas.analysis.frc`.

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

from diffxas.analysis.anatomy import anatomy_section, format_anatomy
from diffxas.analysis.resample import resample_truth
from diffxas.analysis.smoothing import smooth_stack
from diffxas.data import files as io_files
from diffxas.data import results as io_results
from diffxas.errors import InputError
from diffxas.maps import DESCRIPTORS, MAP_FIELDS, ChemMaps, Result, Truth

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


def blur_matched_error(
    est: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray,
    pixel_size: float | None = None,
    max_sigma_px: float = MAX_MATCHED_BLUR_PX,
) -> dict[str, Any]:
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
    from scipy.optimize import minimize_scalar  # scipy.optimize: ~0.5 s to import, only for the blur match

    rmse, ok = _blur_rmse(est, ref, mask)
    if not ok:
        return {
            "matched_blur_px": None,
            "matched_blur_m": None,
            "matched_rmse": None,
            "rmse_unblurred": None,
            "at_bound": None,
        }
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


def cluster_agreement(
    labels: np.ndarray, true_labels: np.ndarray, mask: np.ndarray, domain_names=None
) -> dict[str, Any]:
    """ARI and Hungarian-matched confusion table between result clusters and true domains.

    Over ``mask`` pixels that are clustered (label >= 0); true label -1 (background) is a
    class of its own ("none"). The confusion table has one row per true domain, one
    column per cluster; ``matching`` pairs each domain with one cluster maximising the
    matched pixel count (scipy linear_sum_assignment); ``matched_accuracy`` is the matched
    count over the compared pixels.
    """
    from scipy.optimize import linear_sum_assignment  # scipy.optimize: ~0.5 s to import, only with clusters
    from sklearn.metrics import adjusted_rand_score  # sklearn: ~1 s to import, only with clusters

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
        "matching": [
            {"domain": dname(tv[r]), "true_label": int(tv[r]), "cluster": int(cv[c]), "count": int(conf[r, c])}
            for r, c in zip(rows, cols)
        ],
        "matched_accuracy": float(conf[rows, cols].sum() / n),
    }


def evaluate(
    result_or_maps: Result | ChemMaps, truth: Truth, nv_fraction: float = 0.25, clusters: dict | None = None
) -> dict[str, Any]:
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
    attrs = truth.attrs or {}
    sha = str(attrs.get("data_sha256") or "")
    if sha and result.input_sha256:
        if sha != result.input_sha256:
            raise InputError(
                f"{os.fspath(truth_path)}: the ground truth belongs to another dataset (its data "
                f"SHA-256 {sha[:12]}... differs from the input {result.input_sha256[:12]}... recorded in "
                f"{os.fspath(result_path)})"
            )
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
        raise InputError(
            f"{os.fspath(truth_path)}: the ground truth belongs to another dataset (preset, seed, dose "
            f"{b}) than the input {src} of {os.fspath(result_path)} {a}"
        )


def check_split_pair(path1, path2, r1=None, r2=None) -> None:
    """Refuse FRC inputs that are not two independent halves: the same file twice (FRC
    would be 1 at every frequency), two results recorded as the full data or as the same
    half (``--half``), or halves of different input files."""
    p1, p2 = os.fspath(path1), os.fspath(path2)
    same = os.path.abspath(p1) == os.path.abspath(p2)
    try:
        same = same or os.path.samefile(p1, p2)
    except OSError:
        pass
    if same or io_files.sha256_file(p1) == io_files.sha256_file(p2):
        raise InputError(
            f"--split {p2}: the same results as {p1}; FRC needs the two independent halves "
            "(reconstruct --half even and --half odd)"
        )
    r1 = io_results.read_result(p1) if r1 is None else r1
    r2 = io_results.read_result(p2) if r2 is None else r2
    h = []
    for p, r in ((p1, r1), (p2, r2)):
        cfg = r.config or {}
        sel = cfg.get("input_selection") if isinstance(cfg, dict) else None
        if isinstance(sel, dict):
            if sel.get("half") not in ("even", "odd"):
                raise InputError(
                    f"{p}: a result of all frames, not of one half (reconstruct --half even/odd); "
                    "FRC between full-data results does not measure resolution"
                )
            h.append(sel.get("half"))
    if len(h) == 2 and h[0] == h[1]:
        raise InputError(f"{p1}, {p2}: both are the {h[0]} half; FRC needs the even and the odd half")
    if r1.input_sha256 and r2.input_sha256 and r1.input_sha256 != r2.input_sha256:
        raise InputError(
            f"{p1}, {p2}: halves of different input files (SHA-256 {r1.input_sha256[:12]}... and "
            f"{r2.input_sha256[:12]}...)"
        )


def evaluate_file(path, truth_path, json_path=None, nv_fraction: float = 0.25) -> dict[str, Any]:
    """The ``diffxas evaluate`` command: read result and truth, evaluate, write JSON.

    ``json_path`` defaults to ``<results stem>_eval.json`` next to the results file.
    Returns the metrics dict (with ``result_path``, ``truth_path`` and ``json_path``).
    """
    from diffxas.data import truth as io_truth  # jax (data.truth imports data.cxi): nothing else here needs it

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
                line += (
                    f"; best match: truth blurred by sigma {st['matched_blur_px']:.2f} px{bound}, "
                    f"RMSE {st['matched_rmse']:.4g} {st['unit']} there"
                )
            lines.append(line)
    nv = metrics.get("n_v") or {}
    lines.append(
        f"  n_v relative error: RMS {_fmt(nv.get('rel_rms'), '.3f')}, median |.| {_fmt(nv.get('rel_median_abs'), '.3f')}"
    )
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
