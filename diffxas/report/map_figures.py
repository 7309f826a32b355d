"""Map figures: the display mask, the seed's Fig. 2 layout with error or standard-error rows
(:func:`fig_maps`), pre-edge shape maps and the uncertainty figure."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator, ScalarFormatter
from scipy import ndimage

from diffxas.analysis.resample import resample_truth
from diffxas.maps import DESCRIPTORS, MAP_FIELDS, ChemMaps, Result

#: Display names (mathtext) of the maps.
from diffxas.report.figure_style import (
    MAP_CMAPS,
    PANEL,
    _absorber,
    _clusters_of,
    _extent_um,
    _finite_mean,
    _image_axes,
    _labels_for,
    _map_label,
    _maps_of,
    _power_scale,
    _show,
    _unit_label,
    add_scale_bar,
    robust_limits,
)

#: Display mask (:func:`display_mask`): pixels with N_V below this fraction of its robust
#: maximum are drawn blank in the map figures.
DISPLAY_NV_FRACTION = 0.10
#: Percentile of the positive N_V of the valid pixels taken as its robust maximum.
DISPLAY_NV_PERCENTILE = 99.0
#: A drawn pixel needs at least this many of its 8 neighbours above the threshold too.
DISPLAY_MIN_NEIGHBOURS = 2
#: Percentiles of the colour limits of a map (over the pixels of the display mask).
MAP_PERCENTILES = (1.0, 99.0)


def display_mask(
    maps: ChemMaps, fraction: float = DISPLAY_NV_FRACTION, percentile: float = DISPLAY_NV_PERCENTILE
) -> np.ndarray:
    """The pixels a map figure draws: ``valid`` and N_V >= ``fraction`` x N_V_max, where
    N_V_max is the ``percentile`` (99th) percentile of the positive N_V of the valid pixels.

    For display only: the results file keeps the seed's missing-data rule (``valid``).

    Why 10 % of the 99th percentile. The seed's missing-data rule keeps any pixel whose fit
    converged, and on bare membrane the two-step's per-pixel fit converges on noise often
    enough to fill the field around the particle with full-colour pixels whose N_V is
    noise around zero (a few % of the particle's); the joint model blanks them. 10 % is
    several times that noise level, yet far below any real absorber: on a ball, N_V falls
    below 10 % of its centre value only in the outer 0.5 % of the radius, so the particle's
    rim is kept and the membrane is not. The 99th percentile, not the maximum, so that a
    few hot pixels do not set the threshold; over the positive N_V only, so that the
    membrane's negative half drops out (the particle must cover more than ~1 % of the
    remaining pixels, true of every preset). A pixel above the threshold with fewer than
    ``DISPLAY_MIN_NEIGHBOURS`` (2) of its 8 neighbours above it is blank too: a membrane
    pixel whose fit ran to a large edge jump is isolated, a particle pixel is not (a
    particle narrower than 2 pixels would vanish, far below the resolution of any preset).
    Returns a (H, W) bool array.
    """
    valid = np.asarray(maps.valid).astype(bool)
    nv = np.asarray(maps.n_v, dtype=np.float64)
    return _nv_mask(np.where(valid, nv, np.nan), fraction, percentile)


def _nv_mask(
    nv: np.ndarray, fraction: float = DISPLAY_NV_FRACTION, percentile: float = DISPLAY_NV_PERCENTILE
) -> np.ndarray:
    nv = np.asarray(nv, dtype=np.float64)
    pos = nv[np.isfinite(nv) & (nv > 0)]
    if pos.size == 0:
        return np.zeros(nv.shape, bool)
    nmax = float(np.percentile(pos, percentile))
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(nv) & (nv >= fraction * nmax)
    return keep & (_neighbours(keep) >= DISPLAY_MIN_NEIGHBOURS)


def _neighbours(mask: np.ndarray) -> np.ndarray:
    """Number of the 8 neighbours of each pixel that are in ``mask`` (outside the grid: not)."""
    pad = np.pad(np.asarray(mask, bool), 1).astype(np.int16)
    h, w = np.shape(mask)
    return sum(
        pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
    )


def _weighted_limits(arrays, weights, lo: float, hi: float) -> tuple[float, float]:
    """(vmin, vmax): the lo/hi percentiles of the weighted distribution of the finite values
    of all arrays (weights: same shapes; non-positive or non-finite weights drop the pixel);
    the unweighted :func:`robust_limits` when ``weights`` is None."""
    if weights is None:
        return robust_limits(arrays, lo, hi)
    v = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    w = np.concatenate([np.asarray(b, np.float64).ravel() for b in weights]) if weights else np.zeros(0)
    ok = np.isfinite(v) & np.isfinite(w) & (w > 0)
    v, w = v[ok], w[ok]
    if v.size == 0:
        return 0.0, 1.0
    o = np.argsort(v)
    v, c = v[o], np.cumsum(w[o])
    c = (c - 0.5 * w[o]) / c[-1]  # midpoint rule: the unweighted case gives the usual percentiles closely
    a, b = (float(np.interp(q / 100.0, c, v)) for q in (lo, hi))
    if not b > a:
        pad = max(abs(a) * 1e-6, 1e-12)
        a, b = a - pad, b + pad
    return a, b


def _crop_box(
    masks: Sequence[np.ndarray], min_pixels: int = 9, margin: float = 0.2, min_margin_px: int = 4
) -> tuple[slice, slice]:
    """Rows and columns of the particle(s): the bounding box of the drawn pixels (any of
    ``masks``) that lie in a connected group (8-neighbour) of at least ``min_pixels``
    pixels, grown by ``margin`` of its size (at least ``min_margin_px``) on every side. A
    thin second particle is kept (any N_V above the display threshold counts); a stray
    pair of membrane pixels does not stretch the box. The whole grid when nothing qualifies."""
    sel = None
    for mk in masks:
        lab, n = ndimage.label(np.asarray(mk, bool), structure=np.ones((3, 3), int))
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        big = (sizes >= min_pixels) & (np.arange(sizes.size) > 0)
        c = big[lab]
        sel = c if sel is None else sel | c
    if sel is None or not sel.any():
        return slice(None), slice(None)
    rows, cols = np.flatnonzero(sel.any(axis=1)), np.flatnonzero(sel.any(axis=0))
    ny, nx = sel.shape
    size = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    g = max(int(np.ceil(margin * size)), min_margin_px)
    return (
        slice(max(rows[0] - g, 0), min(rows[-1] + g + 1, ny)),
        slice(max(cols[0] - g, 0), min(cols[-1] + g + 1, nx)),
    )


def _display_note(
    pixel_size: float | None,
    fraction: float = DISPLAY_NV_FRACTION,
    percentile: float = DISPLAY_NV_PERCENTILE,
    absorber: str = "V",
    limits: bool = True,
) -> str:
    """The header of a map figure: pixel size, the display mask's threshold, the colour limits' rule."""
    px = f"{pixel_size * 1e9:.3g} nm pixels; " if pixel_size else ""
    note = (
        f"{px}blank: $N_\\mathrm{{{absorber}}}$ < {100 * fraction:g} % of its {percentile:g}th percentile "
        f"or isolated (display only; the results file keeps its own valid-pixel rule)"
    )
    if limits:
        note += (
            f";\ncolour limits: {MAP_PERCENTILES[0]:g}-{MAP_PERCENTILES[1]:g} % of the "
            f"$N_\\mathrm{{{absorber}}}$-weighted drawn pixels of all map rows"
        )
    return note


def _symmetric_limit(arrays, percentile: float = MAP_PERCENTILES[1]) -> float:
    """``percentile`` of |value| over the finite values of all arrays (1.0 if none)."""
    vals = [np.abs(np.asarray(a, dtype=np.float64)).ravel() for a in arrays if a is not None]
    vals = np.concatenate(vals) if vals else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 1.0
    v = float(np.percentile(vals, percentile))
    return v if v > 0 else max(float(vals.max()), 1e-12)


def _colorbar(fig, im, ax, label: str, fontsize: float = 7):
    """A colour bar beside one panel, ticks without an offset (5478 eV, not 5.478e3 + ...)."""
    cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02, fraction=0.06)
    cb.set_label(label, fontsize=fontsize)
    fmt = ScalarFormatter(useOffset=False)
    cb.formatter = fmt
    cb.locator = MaxNLocator(5)
    cb.ax.tick_params(labelsize=fontsize - 0.5)
    cb.update_ticks()
    return cb


def _grid_of(m: ChemMaps):
    return (round(float(m.pixel_size), 15), tuple(float(x) for x in m.origin), tuple(m.shape))


def _truth_on(truth, truth_maps, m: ChemMaps, m0: ChemMaps):
    """The truth resampled on ``m``'s grid (``truth_maps`` when ``m`` has the first result's grid)."""
    if truth_maps is not None and _grid_of(m) == _grid_of(m0):
        return truth_maps
    if truth is not None:
        return resample_truth(truth, m.pixel_size, m.origin, m.shape)
    return None


def _eval_region(m: ChemMaps, tm: dict, nv_fraction: float) -> np.ndarray:
    """The evaluation region of :func:`diffxas.analysis.evaluate.evaluate`: truth n_v >= nv_fraction
    x its maximum, valid in the result."""
    nv_t = np.asarray(tm.get("n_v", np.full(m.shape, np.nan)), dtype=np.float64)
    if not np.isfinite(nv_t).any() or np.nanmax(nv_t) <= 0:
        return np.zeros(m.shape, bool)
    with np.errstate(invalid="ignore"):
        return np.isfinite(nv_t) & (nv_t >= nv_fraction * np.nanmax(nv_t)) & np.asarray(m.valid, bool)


def _rmse_text(f: str, est: np.ndarray, m: ChemMaps, tm: dict, nv_fraction: float) -> str:
    """The RMSE of ``est`` against ``tm[f]`` over the evaluation region of
    :func:`diffxas.analysis.evaluate.evaluate` (truth n_v >= nv_fraction x max, valid in the result),
    so that the title matches the summary's metrics table; N_V: its relative RMS, as there."""
    nv_t = np.asarray(tm.get("n_v", np.full(m.shape, np.nan)), dtype=np.float64)
    region = _eval_region(m, tm, nv_fraction)
    ref = np.asarray(tm[f], dtype=np.float64)
    ok = region & np.isfinite(est) & np.isfinite(ref)
    if f == "n_v":
        ok &= nv_t > 0
    if not ok.any():
        return "RMSE n/a"
    if f == "n_v":
        rel = (est[ok] - nv_t[ok]) / nv_t[ok]
        return f"rel. RMS {np.sqrt(np.mean(rel**2)):.3g}"
    unit = MAP_FIELDS.get(f, ("", ""))[0]
    rmse = float(np.sqrt(np.mean((est[ok] - ref[ok]) ** 2)))
    return f"RMSE {rmse:.3g}" + (f" {unit}" if unit not in ("1", "") else "")


def fig_maps(
    results: Sequence[Result | ChemMaps],
    labels=None,
    truth_maps: dict | None = None,
    fields: Sequence[str] = DESCRIPTORS + ("n_v",),
    truth_label: str = "truth",
    truth=None,
    nv_fraction: float = 0.25,
    display_fraction: float = DISPLAY_NV_FRACTION,
    crop: bool = True,
) -> Figure:
    """Chemical-state maps in the seed's Fig. 2 layout: one row per result (edge energy,
    PE/Δμt, Re[Ne]/N_V, N_V side by side), then the truth's row, then the error rows.

    * Display mask (:func:`display_mask`): pixels with N_V < ``display_fraction`` x its
      99th percentile (or isolated) are blank in every panel of a result (the truth: its
      own N_V, same rule); the header states the threshold and the pixel size.
    * Crop (``crop``): every panel shows the particle(s) (:func:`_crop_box`: the box of the
      drawn pixels in groups of at least 9, plus 20 %), not the empty field of view around
      it; the header counts drawn pixels left outside the box.
    * Colour limits per column: the 1st-99th percentiles of the N_V-weighted distribution
      of the drawn pixels of all the map rows (results and truth; the N_V column:
      unweighted). So every method shares one scale, and the scale spans the particle's
      values, not the scan's: the thin rim, where each descriptor is least certain (and
      Re[Ne]/N_V includes the matrix's electrons), carries little weight and cannot stretch
      it. Values outside the limits saturate. A colour bar with units beside every panel.
    * With a truth (``truth_maps``: :func:`diffxas.analysis.resample.resample_truth` on the first
      result's grid; ``truth``: the :class:`~diffxas.maps.Truth`, to resample on a result
      of another grid): an error row per result (map - truth, its drawn pixels) on a
      diverging colour map centred on zero, one symmetric scale per column (99th
      percentile of |error| over the evaluation region of
      :func:`diffxas.analysis.evaluate.evaluate` with ``nv_fraction``, of all error rows), the RMSE
      over that region in each panel's title (N_V: relative RMS, as in the metrics table).
    * Without a truth: a row of standard-error maps (``ChemMaps.std``) per result that has
      them (linear scale from 0 to the N_V-weighted 99th percentile of the drawn pixels,
      per column: the particle's errors read, the thin rim's saturate; the uncertainty
      figure shows them on a log scale).
    """
    labels = _labels_for(results, labels)
    maps = [_maps_of(r) for r in results]
    absorber = _absorber(results)
    m0 = maps[0]
    rows = []  # dict(kind, label, d={field: image or None}, m, w=weights, titles, region)
    masks = []
    for lab, m in zip(labels, maps):
        dm = display_mask(m, display_fraction)
        masks.append(dm)
        d = {f: np.where(dm, np.asarray(getattr(m, f), dtype=np.float64), np.nan) for f in fields}
        rows.append(
            {"kind": "map", "label": lab, "d": d, "m": m, "w": np.where(dm, np.asarray(m.n_v, np.float64), np.nan)}
        )
    crop_masks = [(dm, r["w"]) for dm, r in zip(masks, rows)]
    if truth_maps is not None or truth is not None:
        t0 = _truth_on(truth, truth_maps, m0, m0)
        nv_t0 = np.asarray(t0["n_v"], dtype=np.float64) if "n_v" in t0 else None
        tmask = _nv_mask(nv_t0, display_fraction) if nv_t0 is not None else None
        td = {}
        for f in fields:
            v = np.asarray(t0[f], dtype=np.float64) if f in t0 else None
            td[f] = None if v is None else (np.where(tmask, v, np.nan) if tmask is not None else v)
        rows.append(
            {
                "kind": "map",
                "label": truth_label,
                "d": td,
                "m": m0,
                "w": np.where(tmask, nv_t0, np.nan) if tmask is not None else None,
            }
        )
        if tmask is not None:
            crop_masks.append((tmask, nv_t0))
        for lab, m, dm in zip(labels, maps, masks):
            tm = _truth_on(truth, truth_maps, m, m0)
            d, titles = {}, {}
            region = _eval_region(m, tm, nv_fraction) if tm is not None else np.zeros(m.shape, bool)
            for f in fields:
                if tm is None or f not in tm:
                    d[f] = None
                    continue
                est = np.asarray(getattr(m, f), dtype=np.float64)
                d[f] = np.where(dm, est - np.asarray(tm[f], dtype=np.float64), np.nan)
                titles[f] = _rmse_text(f, np.where(np.asarray(m.valid, bool), est, np.nan), m, tm, nv_fraction)
            rows.append(
                {"kind": "error", "label": f"{lab} − {truth_label}", "d": d, "m": m, "titles": titles, "region": region}
            )
    else:
        for lab, m, dm in zip(labels, maps, masks):
            std = getattr(m, "std", None) or {}
            if not any(f in std for f in fields):
                continue
            d = {f: np.where(dm, np.asarray(std[f], dtype=np.float64), np.nan) if f in std else None for f in fields}
            rows.append(
                {
                    "kind": "std",
                    "label": f"{lab}: standard error σ",
                    "d": d,
                    "m": m,
                    "w": np.where(dm, np.asarray(m.n_v, np.float64), np.nan),
                }
            )
    # Crop: one box on the first result's grid; results on another grid are not cropped.
    ys, xs = _crop_box([c[0] for c in crop_masks]) if crop else (slice(None),) * 2
    outside = sum(int(dm.sum() - dm[ys, xs].sum()) for dm, m in zip(masks, maps) if m.shape == m0.shape)

    def view(img, m):
        if m.shape != m0.shape or (ys == slice(None) and xs == slice(None)):
            return img, _extent_um(m.pixel_size, m.origin, m.shape)
        n0, n1 = np.arange(m.shape[0])[ys], np.arange(m.shape[1])[xs]
        origin = (m.origin[0] + n1[0] * m.pixel_size, m.origin[1] + n0[0] * m.pixel_size)
        return img[ys, xs], _extent_um(m.pixel_size, origin, (n0.size, n1.size))

    nr, nc = len(rows), len(fields)
    ny = (ys.stop or m0.shape[0]) - (ys.start or 0)
    nx = (xs.stop or m0.shape[1]) - (xs.start or 0)
    aspect = float(np.clip(ny / max(nx, 1), 0.5, 2.0))
    fig = Figure(figsize=(3.35 * nc + 0.5, (2.6 * aspect + 0.45) * nr + 0.5), layout="constrained")
    axes = fig.subplots(nr, nc, squeeze=False)
    for c, f in enumerate(fields):
        mr = [r for r in rows if r["kind"] == "map" and r["d"][f] is not None]
        weights = None if f == "n_v" or any(r["w"] is None for r in mr) else [r["w"] for r in mr]
        lims = {"map": _weighted_limits([r["d"][f] for r in mr], weights, *MAP_PERCENTILES)}
        errs = [
            np.where(r["region"], r["d"][f], np.nan) for r in rows if r["kind"] == "error" and r["d"][f] is not None
        ]
        if errs:
            a = _symmetric_limit(errs)
            lims["error"] = (-a, a)
        sr = [r for r in rows if r["kind"] == "std" and r["d"][f] is not None]
        if sr:  # from 0 to the N_V-weighted 99th percentile: the core's errors read, the rim's saturate
            top = _weighted_limits(
                [r["d"][f] for r in sr], None if f == "n_v" else [r["w"] for r in sr], *MAP_PERCENTILES
            )[1]
            lims["std"] = (0.0, top if top > 0 else 1.0)
        for i, row in enumerate(rows):
            kind, m, img = row["kind"], row["m"], row["d"][f]
            ax = axes[i, c]
            if img is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                continue
            vmin, vmax = lims[kind]
            p = _power_scale(vmin, vmax)
            s = 10.0**-p
            cmap = {"map": MAP_CMAPS.get(f, "viridis"), "error": "RdBu_r", "std": "magma"}[kind]
            img, ext = view(img, m)
            im = _show(ax, img * s, ext, cmap, vmin * s, vmax * s)
            unit = _unit_label(f, power=p, absorber=absorber)
            _colorbar(fig, im, ax, {"map": unit, "error": "Δ " + unit, "std": "σ " + unit}[kind])
            title = f"{row['label']}: {row['titles'].get(f, '')}" if kind == "error" else row["label"]
            if i == 0:
                title = f"{_map_label(f, absorber)}\n{title}"
            ax.set_title(title, fontsize=9)
    note = _display_note(
        m0.pixel_size if len({round(m.pixel_size * 1e12) for m in maps}) == 1 else None,
        display_fraction,
        absorber=absorber,
    )
    if crop and outside:
        note += f"; {outside} drawn pixel(s) outside the particle's box not shown"
    fig.suptitle(note, fontsize=7.5, color="0.25")
    return fig


#: Pre-edge shape parameters of eq. 1 (``ChemMaps.extra`` of a joint result), eV.
SHAPE_FIELDS = {
    "c12": "pre-edge peak 1 position",
    "c13": "peak 1 width",
    "c22": "peak 2 position",
    "c23": "peak 2 width",
}


def _shape_map(m: ChemMaps, f: str) -> np.ndarray | None:
    v = m.extra.get(f) if m.extra else None
    if v is None or np.shape(v) != tuple(m.shape):
        return None
    return np.where(display_mask(m), np.asarray(v, np.float64), np.nan)


def _varies(a: np.ndarray | None, tol_ev: float = 1e-4) -> bool:
    return a is not None and np.isfinite(a).any() and float(np.nanmax(a) - np.nanmin(a)) > tol_ev


def fig_shape_maps(results: Sequence[Result | ChemMaps], labels=None, truth=None) -> Figure | None:
    """Maps of the pre-edge peak positions and widths (c12, c13, c22, c23 of eq. 1, eV) for
    the results that fit them per pixel or per domain (``JointConfig.spectra.per_pixel`` /
    ``per_domain``); one row per parameter that varies in at least one result, one column
    per result (+ the truth's parameters, N_V-weighted onto the first result's grid, when
    ``truth`` has them). A result that shares the parameter shows its one value. None when
    no result has a varying pre-edge shape (the default joint fit and the two-step share it).
    """
    labels = _labels_for(results, labels)
    maps = [_maps_of(r) for r in results]
    fields = [f for f in SHAPE_FIELDS if any(_varies(_shape_map(m, f)) for m in maps)]
    if not fields:
        return None
    cols = [(lab, {f: _shape_map(m, f) for f in fields}, m) for lab, m in zip(labels, maps)]
    if truth is not None and getattr(truth, "params", None) and "n_v" in truth.maps:
        have = [f for f in fields if f in truth.params]
        if have:
            t = dataclasses.replace(truth, maps={"n_v": truth.maps["n_v"], **{f: truth.params[f] for f in have}})
            m0 = maps[0]
            tr = resample_truth(t, m0.pixel_size, m0.origin, m0.shape)
            cols.append(("truth", {f: (tr[f] if f in have else None) for f in fields}, m0))
    nr, nc = len(fields), len(cols)
    fig = Figure(figsize=(PANEL * nc + 1.6, PANEL * nr + 0.3), layout="constrained")
    axes = fig.subplots(nr, nc, squeeze=False)
    for i, f in enumerate(fields):
        shown = [c[1][f] for c in cols if _varies(c[1][f])]
        vmin, vmax = robust_limits(shown, *MAP_PERCENTILES)
        im = None
        for j, (lab, d, m) in enumerate(cols):
            ax = axes[i, j]
            if i == 0:
                ax.set_title(lab, fontsize=10)
            a = d[f]
            if not _varies(a):
                ax.set_axis_off()
                txt = "not fitted" if a is None or not np.isfinite(a).any() else f"shared:\n{np.nanmedian(a):.2f} eV"
                ax.text(0.5, 0.5, txt, ha="center", va="center", transform=ax.transAxes, fontsize=9)
                continue
            im = _show(ax, a, _extent_um(m.pixel_size, m.origin, m.shape), "viridis", vmin, vmax)
        if im is not None:
            cb = fig.colorbar(im, ax=list(axes[i]), shrink=0.9, label=f"{SHAPE_FIELDS[f]} {f} (eV)")
            cb.formatter.set_useOffset(False)  # 5466.2 eV, not +5.466e3 and 0.2
            cb.update_ticks()
    fig.suptitle(_display_note(None, absorber=_absorber(results), limits=False), fontsize=7, color="0.25")
    return fig


def _finite_median(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def has_uncertainty(result: Result) -> bool:
    """True if the result carries std maps of the descriptors or a cluster confidence map."""
    std = getattr(_maps_of(result), "std", None) or {}
    cl = _clusters_of(result)
    return any(f in std for f in DESCRIPTORS) or (cl is not None and "confidence" in cl)


def _valid_crop(valid: np.ndarray, margin: int = 3) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of ``valid`` plus ``margin`` pixels (all if none)."""
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return slice(None), slice(None)
    ny, nx = valid.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, ny)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, nx)),
    )


def _show_log(ax, img, extent, cmap, vmin, vmax, bad="white"):
    cm = colormaps[cmap].with_extremes(bad=bad)
    pos = np.where(np.asarray(img) > 0, img, np.nan)
    im = ax.imshow(
        np.ma.masked_invalid(pos),
        origin="lower",
        extent=extent,
        cmap=cm,
        norm=LogNorm(vmin=vmin, vmax=vmax, clip=True),
        interpolation="nearest",
    )
    _image_axes(ax, extent)
    add_scale_bar(ax, extent)
    return im


def fig_uncertainty(results: Sequence[Result], labels=None, fields: Sequence[str] = DESCRIPTORS) -> Figure | None:
    """Standard-error maps of ``fields`` and the clusters' assignment confidence.

    One row per result that has std maps (``ChemMaps.std``) or a ``/clusters/confidence``
    map, cropped to its valid pixels; columns: sigma of each field on a logarithmic colour
    scale (thin particle edges have errors ten times those of the core; common scale per
    column, 2-98 % of the drawn pixels of all rows; drawn: :func:`display_mask`) and the assignment confidence (0-1)
    when any row has one. Panels a row lacks read "no std map" / "no cluster confidence".
    None if no result has either.
    """
    labels = _labels_for(results, labels)
    rows = []
    for lab, r in zip(labels, results):
        if not has_uncertainty(r):
            continue
        m = _maps_of(r)
        valid = display_mask(m)
        std = m.std or {}
        sig = {f: np.where(valid, np.asarray(std[f], dtype=np.float64), np.nan) if f in std else None for f in fields}
        cl = _clusters_of(r)
        conf = np.asarray(cl["confidence"], dtype=np.float64) if cl is not None and "confidence" in cl else None
        conf = np.where(valid, conf, np.nan) if conf is not None else None
        ys, xs = _valid_crop(valid)
        n0 = np.arange(m.shape[0])[ys]
        n1 = np.arange(m.shape[1])[xs]
        origin = (m.origin[0] + n1[0] * m.pixel_size, m.origin[1] + n0[0] * m.pixel_size)
        ext = _extent_um(m.pixel_size, origin, (n0.size, n1.size))
        sig = {f: (v[ys, xs] if v is not None else None) for f, v in sig.items()}
        rows.append((lab, ext, sig, conf[ys, xs] if conf is not None else None))
    if not rows:
        return None
    with_conf = any(row[3] is not None for row in rows)
    nc = len(fields) + (1 if with_conf else 0)
    fig = Figure(figsize=(PANEL * nc + 1.2, PANEL * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), nc, squeeze=False)
    for c, f in enumerate(fields):
        pos = [np.where(row[2][f] > 0, row[2][f], np.nan) for row in rows if row[2][f] is not None]
        vmin, vmax = robust_limits(pos)
        if not (vmin > 0 and vmax > 0):
            vmin, vmax = 1.0, 10.0
        if vmax < 1.5 * vmin:  # (nearly) uniform sigma: a readable range
            vmin, vmax = vmin / 1.5, vmax * 1.5
        p = _power_scale(vmin, vmax)
        sc = 10.0**-p
        im = None
        for i, (lab, ext, sig, _) in enumerate(rows):
            ax = axes[i, c]
            if sig[f] is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no std map", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                continue
            im = _show_log(ax, sig[f] * sc, ext, "magma", vmin * sc, vmax * sc)
            med = _finite_median(sig[f])
            unit = MAP_FIELDS.get(f, ("", ""))[0]
            ax.set_title(
                f"{lab}\nσ {_map_label(f, _absorber(results))}\nmedian {med:.3g}" + (f" {unit}" if unit != "1" else ""),
                fontsize=8,
            )
        if im is not None:
            cb = fig.colorbar(
                im,
                ax=list(axes[:, c]),
                shrink=0.85,
                location="bottom",
                label="σ " + _unit_label(f, power=p, absorber=_absorber(results)) + ", log scale",
            )
            ticks = np.geomspace(vmin * sc, vmax * sc, 4)
            cb.ax.xaxis.set_minor_locator(NullLocator())
            cb.ax.xaxis.set_minor_formatter(NullFormatter())
            cb.set_ticks(ticks, labels=[f"{t:.2g}" for t in ticks])
    if with_conf:
        c = len(fields)
        im = None
        for i, (lab, ext, _, conf) in enumerate(rows):
            ax = axes[i, c]
            if conf is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no cluster confidence", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                continue
            im = _show(ax, conf, ext, "RdYlGn", 0.0, 1.0)
            ax.set_title(f"{lab}\nassignment confidence\nmean {_finite_mean(conf):.3f}", fontsize=8)
        if im is not None:
            fig.colorbar(
                im, ax=list(axes[:, c]), shrink=0.85, location="bottom", label="P(pixel in its cluster | σ maps)"
            )
    fig.suptitle(_display_note(None, absorber=_absorber(results), limits=False), fontsize=7, color="0.25")
    return fig
