"""Figures in the manner of the seed paper (matplotlib, no display needed).

Figures are built on :class:`matplotlib.figure.Figure` objects directly (no pyplot, so
no GUI backend is ever selected and no global state is touched) and saved with the Agg
renderer as PNG and PDF.

* :func:`fig_projections`: absorption above the edge (energy closest to max edge energy
  + 15 eV) and phase at the lowest energy (seed Fig. 1b-c).
* :func:`fig_spectra`: per-cluster mean XANES (absorption) and phase spectra (Fig. 1d-e).
* :func:`fig_maps`: the chemical-state maps in the seed's Fig. 2 layout, with error rows
  (truth) or standard-error rows (Fig. 2).
* :func:`fig_clusters`: cluster map, per-cluster densities of each descriptor and
  N_V-weighted fractions (Fig. 3).
* :func:`fig_elbow`: elbow (inertia) and silhouette curves of ``k = auto``.
* :func:`fig_uncertainty`: standard-error maps of the three descriptors (``ChemMaps.std``,
  written by the joint solver) and the clusters' assignment confidence, when present.
* :func:`fig_frc`: Fourier ring correlation with thresholds.

Several results are drawn side by side on common colour scales; the truth, resampled to
the first result's grid, is an extra row (or column). Every map figure draws only the
pixels of :func:`display_mask` (N_V >= 10 % of its 99th percentile, not isolated; a
display rule, the results file keeps its own ``valid``) and says so in its header; the
maps figure takes its colour limits from the N_V-weighted 1st-99th percentiles of those
pixels (docs/analysis.md, "How the map figures are made"). Images are drawn with y (rows) increasing
upwards, in physical coordinates, with a scale bar in um. Cluster label j always has
colour j (labels are ordered by edge energy, see :mod:`diffxas.analysis.clustering`); truth
domains get colours in the order of their mean edge energy.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from diffxas.analysis.clustering import cluster_attrs, cluster_mean_spectra
from diffxas.analysis.evaluate import MAX_MATCHED_BLUR_PX, blur_error_curve, blur_matched_error
from diffxas.analysis.frc import threshold_curve
from diffxas.analysis.resample import resample_truth
from diffxas.errors import DiskFullError, is_disk_full
from diffxas.maps import DESCRIPTORS, MAP_FIELDS, ChemMaps, Result
from diffxas.physics.background import per_energy

#: Display names (mathtext) of the maps.
MAP_LABELS = {
    "edge_energy": r"edge energy $E_0$",
    "edge_width": r"edge width",
    "edge_jump": r"edge jump $\Delta\mu t$",
    "pre_edge": r"pre-edge intensity",
    "pre_edge_norm": r"pre-edge / $\Delta\mu t$",
    "n_v": r"$N_\mathrm{V}$",
    "ne_eff_per_nv": r"Re $N_e^\mathrm{eff}$ / $N_\mathrm{V}$",
}
MAP_CMAPS = {"edge_energy": "viridis", "pre_edge_norm": "plasma", "ne_eff_per_nv": "cividis", "n_v": "gray"}
UNIT_TEX = {"eV": "eV", "1": "", "m^-2": r"m$^{-2}$", "rad": "rad"}
DPI = 150
PANEL = 2.6  # inches per image panel


# --------------------------------------------------------------------------- helpers


def cluster_colors(k: int) -> list:
    """Colour of label 0..k-1 (tab10, then tab20 beyond 10 clusters)."""
    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(j % cmap.N) for j in range(max(k, 1))]


def robust_limits(arrays: Sequence[np.ndarray], lo: float = 2.0, hi: float = 98.0) -> tuple[float, float]:
    """(vmin, vmax) = the lo/hi percentiles of the finite values of all arrays together."""
    vals = [np.asarray(a, dtype=np.float64).ravel() for a in arrays if a is not None]
    vals = np.concatenate(vals) if vals else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(vals, [lo, hi])
    if not b > a:
        pad = max(abs(a) * 1e-6, 1e-12)
        a, b = a - pad, b + pad
    return float(a), float(b)


def _power_scale(vmin: float, vmax: float) -> int:
    """Power of ten to factor out of a colour-bar label (0 if not needed)."""
    m = max(abs(vmin), abs(vmax))
    if m == 0 or not np.isfinite(m):
        return 0
    e = int(np.floor(np.log10(m)))
    return e if (e >= 4 or e <= -3) else 0


def _map_label(name: str, absorber: str = "V") -> str:
    """Display name of map ``name``; N_V reads N_<absorber> for another absorber."""
    label = MAP_LABELS.get(name, name)
    return label.replace(r"\mathrm{V}", rf"\mathrm{{{absorber}}}") if absorber != "V" else label


def _absorber(results) -> str:
    """The absorber of the first result (a figure compares results of one absorber)."""
    return _maps_of(results[0]).absorber if len(results) else "V"


def _unit_label(name: str, unit: str | None = None, power: int = 0, absorber: str = "V") -> str:
    unit = MAP_FIELDS.get(name, ("", ""))[0] if unit is None else unit
    u = UNIT_TEX.get(unit, unit)
    p = rf"$10^{{{power}}}$" if power else ""
    inner = " ".join(s for s in (p, u) if s)
    label = _map_label(name, absorber)
    return f"{label} ({inner})" if inner else label


def _extent_um(pixel_size: float, origin, shape) -> tuple[float, float, float, float]:
    h = 0.5 * pixel_size
    ny, nx = shape
    x0, y0 = origin
    return tuple(1e6 * v for v in (x0 - h, x0 + (nx - 0.5) * pixel_size, y0 - h, y0 + (ny - 0.5) * pixel_size))


def _nice_length(width_um: float) -> float:
    target = width_um / 4.0
    for v in (50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01):
        if v <= target:
            return float(v)
    return 0.01


def add_scale_bar(ax, extent_um) -> None:
    """A scale bar of a round length (about a quarter of the field) in the lower left."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    width = abs(extent_um[1] - extent_um[0])
    length = _nice_length(width)
    label = f"{length:g} µm" if length >= 0.1 else f"{length * 1000:g} nm"
    bar = AnchoredSizeBar(ax.transData, length, label, "lower left", pad=0.3, sep=2, borderpad=0.3,
                          frameon=True, size_vertical=width / 80, color="black", fontproperties={"size": 7})
    bar.patch.set_alpha(0.75)
    bar.patch.set_edgecolor("none")
    ax.add_artist(bar)


def _image_axes(ax, extent):
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")


def _show(ax, img, extent, cmap, vmin, vmax, bad="white"):
    cm = colormaps[cmap].with_extremes(bad=bad)
    im = ax.imshow(np.ma.masked_invalid(img), origin="lower", extent=extent, cmap=cm, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    _image_axes(ax, extent)
    add_scale_bar(ax, extent)
    return im


def save_figure(fig: Figure, out_dir, stem: str, formats=("png", "pdf")) -> list[str]:
    """Save as ``out_dir/stem.<fmt>``; returns the paths.

    Each file is written to a temporary file in ``out_dir`` and moved into place
    (``os.replace``), so an interrupted save never leaves a half-written figure.
    """
    import uuid

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for fmt in formats:
        p = os.path.join(os.fspath(out_dir), f"{stem}.{fmt}")
        # never a half-written (0-byte) figure: a fresh name that savefig creates itself (not
        # mkstemp's 0600 file, so the figure gets the user's umask), then a rename
        tmp = os.path.join(os.fspath(out_dir), f".{stem}.{uuid.uuid4().hex}.{fmt}.tmp")
        try:
            fig.savefig(tmp, dpi=DPI, format=fmt)
            os.replace(tmp, p)
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)

            if is_disk_full(e):
                raise DiskFullError(f"{p}: disk full while writing the figure; nothing written") from None
            raise
        paths.append(p)
    return paths


def _labels_for(results, labels):
    if labels is None:
        labels = [str(getattr(r, "method", "") or f"result {i + 1}") for i, r in enumerate(results)]
    labels = [str(x) for x in labels]
    if len(labels) != len(results):
        raise ValueError(f"{len(labels)} labels for {len(results)} results")
    return labels


def _maps_of(obj) -> ChemMaps:
    return obj.maps if isinstance(obj, Result) else obj


def _clusters_of(obj) -> dict | None:
    cl = getattr(obj, "clusters", None)
    return cl if cl and "labels" in cl else None


def _attrs(cl: dict) -> dict:

    return cluster_attrs(cl)


def absorption_energy_index(result: Result, above_edge_ev: float = 15.0) -> int:
    """Index of the energy closest to max(edge energy over valid pixels) + 15 eV."""
    e = np.asarray(result.energies, dtype=np.float64)
    m = result.maps
    ee = np.asarray(m.edge_energy, dtype=np.float64)[np.asarray(m.valid).astype(bool)]
    ee = ee[np.isfinite(ee)]
    target = (ee.max() if ee.size else e.max()) + above_edge_ev
    return int(np.argmin(np.abs(e - target)))


# --------------------------------------------------------------------------- figures


def fig_projections(results: Sequence[Result], labels=None) -> Figure:
    """Absorption above the edge (row 1) and phase at the lowest energy (row 2)."""
    labels = _labels_for(results, labels)
    n = len(results)
    fig = Figure(figsize=(PANEL * n + 1.2, 2 * PANEL + 0.6), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    rows = []
    for r in results:
        ia = absorption_energy_index(r)
        ip = int(np.argmin(np.asarray(r.energies)))
        rows.append(((np.asarray(r.absorption[ia], dtype=np.float64), r.energies[ia]),
                     (np.asarray(r.phase[ip], dtype=np.float64), r.energies[ip])))
    for row, (what, cmap, _unit) in enumerate((("absorption", "gray_r", ""), ("phase", "gray", "rad"))):
        vmin, vmax = robust_limits([x[row][0] for x in rows])
        im = None
        for j, r in enumerate(results):
            img, e = rows[j][row]
            m = r.maps
            ext = _extent_um(m.pixel_size, m.origin, img.shape)
            im = _show(axes[row, j], img, ext, cmap, vmin, vmax)
            axes[row, j].set_title(f"{labels[j]}\n{what} at {float(e):.1f} eV", fontsize=9)
        lab = r"absorption $-\ln|O|$" if what == "absorption" else "phase (rad)"
        fig.colorbar(im, ax=list(axes[row]), shrink=0.85, label=lab)
    return fig


#: Display mask (:func:`display_mask`): pixels with N_V below this fraction of its robust
#: maximum are drawn blank in the map figures.
DISPLAY_NV_FRACTION = 0.10
#: Percentile of the positive N_V of the valid pixels taken as its robust maximum.
DISPLAY_NV_PERCENTILE = 99.0
#: A drawn pixel needs at least this many of its 8 neighbours above the threshold too.
DISPLAY_MIN_NEIGHBOURS = 2
#: Percentiles of the colour limits of a map (over the pixels of the display mask).
MAP_PERCENTILES = (1.0, 99.0)


def display_mask(maps: ChemMaps, fraction: float = DISPLAY_NV_FRACTION,
                 percentile: float = DISPLAY_NV_PERCENTILE) -> np.ndarray:
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


def _nv_mask(nv: np.ndarray, fraction: float = DISPLAY_NV_FRACTION,
             percentile: float = DISPLAY_NV_PERCENTILE) -> np.ndarray:
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
    return sum(pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               if (dy, dx) != (0, 0))


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


def _crop_box(masks: Sequence[np.ndarray], min_pixels: int = 9, margin: float = 0.2,
              min_margin_px: int = 4) -> tuple[slice, slice]:
    """Rows and columns of the particle(s): the bounding box of the drawn pixels (any of
    ``masks``) that lie in a connected group (8-neighbour) of at least ``min_pixels``
    pixels, grown by ``margin`` of its size (at least ``min_margin_px``) on every side. A
    thin second particle is kept (any N_V above the display threshold counts); a stray
    pair of membrane pixels does not stretch the box. The whole grid when nothing qualifies."""
    from scipy import ndimage

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
    return (slice(max(rows[0] - g, 0), min(rows[-1] + g + 1, ny)),
            slice(max(cols[0] - g, 0), min(cols[-1] + g + 1, nx)))


def _display_note(pixel_size: float | None, fraction: float = DISPLAY_NV_FRACTION,
                  percentile: float = DISPLAY_NV_PERCENTILE, absorber: str = "V", limits: bool = True) -> str:
    """The header of a map figure: pixel size, the display mask's threshold, the colour limits' rule."""
    px = f"{pixel_size * 1e9:.3g} nm pixels; " if pixel_size else ""
    note = (f"{px}blank: $N_\\mathrm{{{absorber}}}$ < {100 * fraction:g} % of its {percentile:g}th percentile "
            f"or isolated (display only; the results file keeps its own valid-pixel rule)")
    if limits:
        note += (f";\ncolour limits: {MAP_PERCENTILES[0]:g}-{MAP_PERCENTILES[1]:g} % of the "
                 f"$N_\\mathrm{{{absorber}}}$-weighted drawn pixels of all map rows")
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
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

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
        return f"rel. RMS {np.sqrt(np.mean(rel ** 2)):.3g}"
    unit = MAP_FIELDS.get(f, ("", ""))[0]
    rmse = float(np.sqrt(np.mean((est[ok] - ref[ok]) ** 2)))
    return f"RMSE {rmse:.3g}" + (f" {unit}" if unit not in ("1", "") else "")


def fig_maps(results: Sequence[Result | ChemMaps], labels=None, truth_maps: dict | None = None,
             fields: Sequence[str] = DESCRIPTORS + ("n_v",), truth_label: str = "truth", truth=None,
             nv_fraction: float = 0.25, display_fraction: float = DISPLAY_NV_FRACTION,
             crop: bool = True) -> Figure:
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
        rows.append({"kind": "map", "label": lab, "d": d, "m": m, "w": np.where(dm, np.asarray(m.n_v, np.float64), np.nan)})
    crop_masks = [(dm, r["w"]) for dm, r in zip(masks, rows)]
    if truth_maps is not None or truth is not None:
        t0 = _truth_on(truth, truth_maps, m0, m0)
        nv_t0 = np.asarray(t0["n_v"], dtype=np.float64) if "n_v" in t0 else None
        tmask = _nv_mask(nv_t0, display_fraction) if nv_t0 is not None else None
        td = {}
        for f in fields:
            v = np.asarray(t0[f], dtype=np.float64) if f in t0 else None
            td[f] = None if v is None else (np.where(tmask, v, np.nan) if tmask is not None else v)
        rows.append({"kind": "map", "label": truth_label, "d": td, "m": m0,
                     "w": np.where(tmask, nv_t0, np.nan) if tmask is not None else None})
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
            rows.append({"kind": "error", "label": f"{lab} − {truth_label}", "d": d, "m": m, "titles": titles, "region": region})
    else:
        for lab, m, dm in zip(labels, maps, masks):
            std = getattr(m, "std", None) or {}
            if not any(f in std for f in fields):
                continue
            d = {f: np.where(dm, np.asarray(std[f], dtype=np.float64), np.nan) if f in std else None for f in fields}
            rows.append({"kind": "std", "label": f"{lab}: standard error σ", "d": d, "m": m,
                         "w": np.where(dm, np.asarray(m.n_v, np.float64), np.nan)})
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
        errs = [np.where(r["region"], r["d"][f], np.nan) for r in rows if r["kind"] == "error" and r["d"][f] is not None]
        if errs:
            a = _symmetric_limit(errs)
            lims["error"] = (-a, a)
        sr = [r for r in rows if r["kind"] == "std" and r["d"][f] is not None]
        if sr:  # from 0 to the N_V-weighted 99th percentile: the core's errors read, the rim's saturate
            top = _weighted_limits([r["d"][f] for r in sr], None if f == "n_v" else [r["w"] for r in sr],
                                   *MAP_PERCENTILES)[1]
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
            s = 10.0 ** -p
            cmap = {"map": MAP_CMAPS.get(f, "viridis"), "error": "RdBu_r", "std": "magma"}[kind]
            img, ext = view(img, m)
            im = _show(ax, img * s, ext, cmap, vmin * s, vmax * s)
            unit = _unit_label(f, power=p, absorber=absorber)
            _colorbar(fig, im, ax, {"map": unit, "error": "Δ " + unit, "std": "σ " + unit}[kind])
            title = f"{row['label']}: {row['titles'].get(f, '')}" if kind == "error" else row["label"]
            if i == 0:
                title = f"{_map_label(f, absorber)}\n{title}"
            ax.set_title(title, fontsize=9)
    note = _display_note(m0.pixel_size if len({round(m.pixel_size * 1e12) for m in maps}) == 1 else None,
                         display_fraction, absorber=absorber)
    if crop and outside:
        note += f"; {outside} drawn pixel(s) outside the particle's box not shown"
    fig.suptitle(note, fontsize=7.5, color="0.25")
    return fig


#: Pre-edge shape parameters of eq. 1 (``ChemMaps.extra`` of a joint result), eV.
SHAPE_FIELDS = {"c12": "pre-edge peak 1 position", "c13": "peak 1 width", "c22": "peak 2 position", "c23": "peak 2 width"}


def _shape_map(m: ChemMaps, f: str) -> np.ndarray | None:
    v = m.extra.get(f) if m.extra else None
    if v is None or np.shape(v) != tuple(m.shape):
        return None
    return np.where(display_mask(m), np.asarray(v, np.float64), np.nan)


def _varies(a: np.ndarray | None, tol_ev: float = 1e-4) -> bool:
    return a is not None and np.isfinite(a).any() and float(np.nanmax(a) - np.nanmin(a)) > tol_ev


def fig_shape_maps(results: Sequence[Result | ChemMaps], labels=None, truth=None) -> Figure | None:
    """Maps of the pre-edge peak positions and widths (c12, c13, c22, c23 of eq. 1, eV) for
    the results that fit them per pixel or per domain (``JointConfig.per_pixel`` /
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
        import dataclasses


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


def normalise_spectra(e, absorption, phase, n_end: int = 3):
    """Edge-step normalised XANES and pre-edge normalised phase (columns = clusters).

    absorption: (mu - mean of the first n_end energies) / (mean of the last n_end -
    mean of the first n_end); phase: phase / |mean phase of the first n_end energies|.
    Returned unchanged (flag False) with fewer than 2 n_end energies.
    """
    a = np.asarray(absorption, dtype=np.float64)
    p = np.asarray(phase, dtype=np.float64)
    order = np.argsort(np.asarray(e))
    if len(order) < 2 * n_end:
        return a, p, False
    lo, hi = order[:n_end], order[-n_end:]
    pre, post = np.nanmean(a[lo], axis=0), np.nanmean(a[hi], axis=0)
    step = post - pre
    with np.errstate(invalid="ignore", divide="ignore"):
        an = (a - pre) / np.where(step != 0, step, np.nan)
        p0 = np.abs(np.nanmean(p[lo], axis=0))
        pn = p / np.where(p0 > 0, p0, np.nan)
    return an, pn, True


def fig_spectra(results: Sequence[Result], labels=None, normalise: bool = True) -> Figure | None:
    """Per-cluster mean absorption (XANES) and phase spectra; None if no result has clusters.

    With ``normalise`` (default) the XANES is edge-step normalised and the phase divided by
    its pre-edge magnitude (:func:`normalise_spectra`), so that clusters of different
    thickness compare by shape, as in the seed's Fig. 1d-e.
    """

    labels = _labels_for(results, labels)
    rows = []
    for lab, r in zip(labels, results):
        cl = _clusters_of(r)
        if cl is None:
            continue
        k = int(_attrs(cl).get("k", int(np.max(cl["labels"])) + 1))
        if "mean_absorption" in cl and "mean_phase" in cl:
            sp = {"mean_absorption": np.asarray(cl["mean_absorption"]), "mean_phase": np.asarray(cl["mean_phase"])}
        else:
            sp = cluster_mean_spectra(r, np.asarray(cl["labels"]), k)
        rows.append((lab, r, cl, k, sp))
    if not rows:
        return None
    fig = Figure(figsize=(8.0, 2.7 * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for i, (lab, r, cl, k, sp) in enumerate(rows):
        e = np.asarray(r.energies, dtype=np.float64)
        colors = cluster_colors(k)
        ya, yp, normed = sp["mean_absorption"], sp["mean_phase"], False
        if normalise:
            ya, yp, normed = normalise_spectra(e, ya, yp)
        fr = np.asarray(cl.get("fractions", np.full(k, np.nan)))
        for j in range(k):
            name = f"cluster {j}" + (f" ({100 * fr[j]:.0f} %)" if j < len(fr) and np.isfinite(fr[j]) else "")
            axes[i, 0].plot(e, ya[:, j], "-o", ms=2.5, lw=1.2, color=colors[j], label=name)
            axes[i, 1].plot(e, yp[:, j], "-o", ms=2.5, lw=1.2, color=colors[j], label=name)
        if normed:
            axes[i, 0].set_ylabel(r"normalised absorption $-\ln|O|$")
            axes[i, 1].set_ylabel("phase / |pre-edge phase|")
        else:
            axes[i, 0].set_ylabel(r"absorption $-\ln|O|$")
            axes[i, 1].set_ylabel("phase (rad)")
        axes[i, 0].set_title(f"{lab}: mean XANES per cluster", fontsize=9)
        axes[i, 1].set_title(f"{lab}: mean phase per cluster", fontsize=9)
        axes[i, 0].legend(fontsize=7, frameon=False)
        for ax in axes[i]:
            ax.set_xlabel("photon energy (eV)")
            ax.grid(alpha=0.3)
    return fig


def _weighted_density(values, weights, grid):
    """Weighted Gaussian KDE of values on grid (histogram fallback); integrates to 1."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
    values, weights = values[ok], weights[ok]
    if values.size == 0:
        return np.zeros_like(grid)
    if values.size >= 5 and np.ptp(values) > 0:
        try:
            from scipy.stats import gaussian_kde

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return gaussian_kde(values, weights=weights)(grid)
        except (np.linalg.LinAlgError, ValueError):
            pass
    edges = np.linspace(grid[0], grid[-1], 41)
    h, _ = np.histogram(values, bins=edges, weights=weights, density=True)
    return np.interp(grid, 0.5 * (edges[1:] + edges[:-1]), h, left=0, right=0)


def _domain_order(truth_maps: dict, labels: np.ndarray) -> dict[int, int]:
    """Truth label -> colour index, by increasing n_v-weighted mean edge energy."""
    vals = [int(v) for v in np.unique(labels) if v >= 0]
    ee = truth_maps.get("edge_energy")
    nv = truth_maps.get("n_v")
    keys = []
    for v in vals:
        m = labels == v
        if ee is not None and np.isfinite(ee[m]).any():
            w = np.where(np.isfinite(nv[m]), nv[m], 0) if nv is not None else np.ones(m.sum())
            e = ee[m]
            fin = np.isfinite(e)
            keys.append(np.sum(e[fin] * w[fin]) / max(np.sum(w[fin]), 1e-300) if np.sum(w[fin]) > 0 else np.nanmean(e))
        else:
            keys.append(float(v))
    order = np.argsort(keys, kind="stable")
    return {vals[o]: rank for rank, o in enumerate(order)}


def fig_clusters(results: Sequence[Result], labels=None, truth_maps: dict | None = None,
                 domain_names: Sequence[str] | None = None, nv_fraction: float = 0.25) -> Figure | None:
    """Cluster map | density of each feature per cluster | N_V-weighted fractions (one row
    per clustered result, plus a truth row with the true domains). None if nothing to draw.

    Densities are n_v-weighted Gaussian KDEs over each cluster's pixels (seed Fig. 3b);
    the truth row uses the resampled truth maps over pixels with truth n_v >=
    ``nv_fraction`` x max.
    """
    labels = _labels_for(results, labels)
    rows = []
    feats = None
    for lab, r in zip(labels, results):
        cl = _clusters_of(r)
        if cl is None:
            continue
        a = _attrs(cl)
        f = tuple(a.get("features") or DESCRIPTORS)
        feats = feats or f
        lab_map = np.asarray(cl["labels"]).astype(np.int64)
        k = int(a.get("k", lab_map.max() + 1))
        m = r.maps
        vals = {name: np.asarray(getattr(m, name), dtype=np.float64) for name in feats}
        nv = np.asarray(m.n_v, dtype=np.float64)
        fr = np.asarray(cl.get("fractions", np.full(k, np.nan)), dtype=np.float64)
        names = [str(j) for j in range(k)]
        colors = cluster_colors(k)
        rows.append(dict(title=lab, lab=lab_map, k=k, vals=vals, nv=nv, fr=fr, names=names, colors=colors,
                         m=m, grid=(m.pixel_size, m.origin, m.shape), stab=a.get("stability")))
    if not rows:
        return None
    if truth_maps is not None and "labels" in truth_maps:
        tl = np.asarray(truth_maps["labels"]).astype(np.int64)
        nv_t = np.asarray(truth_maps.get("n_v", np.ones(tl.shape)), dtype=np.float64)
        nvt0 = np.where(np.isfinite(nv_t), nv_t, 0.0)
        region = nvt0 >= nv_fraction * nvt0.max() if nvt0.max() > 0 else tl >= 0
        order = _domain_order(truth_maps, tl)
        n_dom = len(order)
        lab_map = np.full(tl.shape, -1, np.int64)
        for v, rank in order.items():
            lab_map[(tl == v) & region] = rank
        dn = list(domain_names or [])
        inv = {rank: v for v, rank in order.items()}
        names = [dn[inv[j]] if inv[j] < len(dn) else f"domain {inv[j]}" for j in range(n_dom)]
        fr = np.array([nvt0[lab_map == j].sum() for j in range(n_dom)], dtype=np.float64)
        fr = fr / fr.sum() if fr.sum() > 0 else fr
        vals = {name: np.asarray(truth_maps[name], dtype=np.float64) if name in truth_maps else np.full(tl.shape, np.nan)
                for name in feats}
        m0 = rows[0]["m"]
        rows.append(dict(title="truth (domains)", lab=lab_map, k=n_dom, vals=vals, nv=nvt0, fr=fr, names=names,
                         colors=cluster_colors(n_dom), m=m0, grid=(m0.pixel_size, m0.origin, tl.shape), stab=None))
    nf = len(feats)
    # Common x ranges per feature (1-99 % of all rows' clustered pixels, padded 5 %).
    xr = {}
    for name in feats:
        lo, hi = robust_limits([row["vals"][name][row["lab"] >= 0] for row in rows], 1, 99)
        pad = 0.08 * (hi - lo)
        xr[name] = (lo - pad, hi + pad)
    fig = Figure(figsize=(PANEL * (nf + 2) + 0.4, 2.5 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), nf + 2, squeeze=False,
                        gridspec_kw={"width_ratios": [0.9] + [1.0] * nf + [0.8]})
    for i, row in enumerate(rows):
        k, colors = row["k"], row["colors"]
        rgba = np.ones(row["lab"].shape + (4,))
        rgba[..., 3] = 0.0
        for j in range(k):
            rgba[row["lab"] == j] = to_rgba(colors[j])
        ext = _extent_um(*row["grid"])
        ax = axes[i, 0]
        ax.imshow(rgba, origin="lower", extent=ext, interpolation="nearest")
        _image_axes(ax, ext)
        add_scale_bar(ax, ext)
        title = row["title"]
        if row["stab"] is not None:
            title += f"\nk = {k}, stability ARI {float(row['stab']):.2f}"
        ax.set_title(title, fontsize=9)
        for c, name in enumerate(feats):
            ax = axes[i, c + 1]
            g = np.linspace(*xr[name], 256)
            for j in range(k):
                sel = row["lab"] == j
                if not sel.any():
                    continue
                d = _weighted_density(row["vals"][name][sel], row["nv"][sel], g)
                ax.plot(g, d, color=colors[j], lw=1.3, label=row["names"][j])
                ax.fill_between(g, d, color=colors[j], alpha=0.15, lw=0)
            ax.set_xlim(*xr[name])
            ax.set_ylim(bottom=0)
            ax.set_yticks([])
            ax.set_xlabel(_unit_label(name, absorber=_absorber(results)), fontsize=8)
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel("density", fontsize=8)
        ax = axes[i, nf + 1]
        ax.bar(np.arange(k), 100 * row["fr"], color=colors[:k])
        ax.set_xticks(np.arange(k))
        long = max((len(n) for n in row["names"]), default=1) > 3
        ax.set_xticklabels(row["names"], rotation=45 if long else 0, ha="right" if long else "center", fontsize=7)
        ax.set_ylabel(r"$N_\mathrm{V}$ fraction (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, max(100 * np.nanmax(row["fr"]) * 1.15, 1) if row["fr"].size else 1)
        for j, v in enumerate(row["fr"]):
            if np.isfinite(v):
                ax.text(j, 100 * v, f"{100 * v:.0f}", ha="center", va="bottom", fontsize=6)
        ax.set_xlabel("cluster" if row["stab"] is not None else "true domain", fontsize=8)
    return fig


def fig_elbow(results: Sequence[Result], labels=None) -> Figure | None:
    """Elbow (within-cluster sum of squares) and silhouette vs k; None if not available."""
    labels = _labels_for(results, labels)
    rows = [(lab, r.clusters) for lab, r in zip(labels, results)
            if r.clusters is not None and "elbow_inertia" in r.clusters and "elbow_k" in r.clusters]
    if not rows:
        return None
    fig = Figure(figsize=(3.6 * len(rows) + 0.4, 3.0), layout="constrained")
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, (lab, cl) in zip(axes, rows):
        a = _attrs(cl)
        ks = np.asarray(cl["elbow_k"])
        inertia = np.asarray(cl["elbow_inertia"], dtype=np.float64)
        ax.plot(ks, inertia / inertia[0], "-o", color="C0", ms=4, label="inertia")
        ax.set_xlabel("number of clusters k")
        ax.set_ylabel("within-cluster SS / SS(k=1)", color="C0")
        ax.tick_params(axis="y", labelcolor="C0")
        ax.set_xticks(ks)
        if "silhouette" in cl:
            ax2 = ax.twinx()
            ax2.plot(ks, np.asarray(cl["silhouette"], dtype=np.float64), "-s", color="C3", ms=4)
            ax2.set_ylabel("silhouette score", color="C3")
            ax2.tick_params(axis="y", labelcolor="C3")
        kc = a.get("k")
        if kc is not None:
            ax.axvline(int(kc), color="0.4", ls="--", lw=1)
        ax.set_title(f"{lab}: k = {kc} (elbow {a.get('k_elbow', '?')}, silhouette {a.get('k_silhouette', '?')})",
                     fontsize=9)
        ax.grid(alpha=0.3)
    return fig


def fig_background(results: Sequence[Result], labels=None) -> Figure | None:
    """The fitted incoherent detector background (``Result.background``): its mean level per
    energy, and its radial profile over the detector (mean over the energies and over rings
    around the zero frequency; a "flat" background is a horizontal line); None when no
    result has one."""

    labels = _labels_for(results, labels)
    rows = [(lab, r) for lab, r in zip(labels, results) if r.background is not None]
    if not rows:
        return None
    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    ax_e, ax_q = fig.subplots(1, 2)
    for i, (lab, r) in enumerate(rows):
        b = np.asarray(r.background, np.float64)
        e = np.asarray(r.energies, np.float64)
        per_e = per_energy(b)
        ax_e.plot(e, per_e, "-o", ms=3, color=f"C{i}", label=lab)
        m = r.probes.shape[-1]
        yy, xx = np.mgrid[:m, :m] - m // 2
        rad = np.sqrt(xx ** 2 + yy ** 2).astype(int)
        img = np.broadcast_to(per_e[:, None, None], (len(e), m, m)) if b.ndim == 1 else b
        prof = np.bincount(rad.ravel(), img.mean(axis=0).ravel()) / np.maximum(np.bincount(rad.ravel()), 1)
        ax_q.plot(np.arange(prof.size), prof, "-", color=f"C{i}", label=lab)
    ax_e.set_xlabel("energy (eV)")
    ax_e.set_ylabel("mean level (photons/px/frame)")
    ax_e.set_title("incoherent background per energy", fontsize=9)
    ax_q.set_xlabel("radius from the zero frequency (px)")
    ax_q.set_ylabel("level (photons/px/frame)")
    ax_q.set_title("radial profile, mean over the energies", fontsize=9)
    ax_q.set_yscale("log")
    for ax in (ax_e, ax_q):
        ax.grid(alpha=0.3)
    ax_e.legend(fontsize=8)
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
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, ny)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, nx)))


def _show_log(ax, img, extent, cmap, vmin, vmax, bad="white"):
    from matplotlib.colors import LogNorm

    cm = colormaps[cmap].with_extremes(bad=bad)
    pos = np.where(np.asarray(img) > 0, img, np.nan)
    im = ax.imshow(np.ma.masked_invalid(pos), origin="lower", extent=extent, cmap=cm,
                   norm=LogNorm(vmin=vmin, vmax=vmax, clip=True), interpolation="nearest")
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
        sc = 10.0 ** -p
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
            ax.set_title(f"{lab}\nσ {_map_label(f, _absorber(results))}\nmedian {med:.3g}" + (f" {unit}" if unit != "1" else ""),
                         fontsize=8)
        if im is not None:
            from matplotlib.ticker import NullFormatter, NullLocator

            cb = fig.colorbar(im, ax=list(axes[:, c]), shrink=0.85, location="bottom",
                              label="σ " + _unit_label(f, power=p, absorber=_absorber(results)) + ", log scale")
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
            fig.colorbar(im, ax=list(axes[:, c]), shrink=0.85, location="bottom",
                         label="P(pixel in its cluster | σ maps)")
    fig.suptitle(_display_note(None, absorber=_absorber(results), limits=False), fontsize=7, color="0.25")
    return fig


def _finite_mean(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.mean(a)) if a.size else float("nan")


def fig_frc(frc_results: Sequence[dict], labels=None) -> Figure:
    """FRC curves (from :func:`diffxas.analysis.frc.frc_maps`) with 1/7 and half-bit thresholds."""

    fig = Figure(figsize=(5.0, 3.4), layout="constrained")
    ax = fig.subplots()
    labels = labels or [d.get("name", f"map {i}") for i, d in enumerate(frc_results)]
    for i, (lab, d) in enumerate(zip(labels, frc_results)):
        f = np.asarray(d["freq"]) * 1e-6  # 1/um
        res = d.get("resolution_halfbit")
        le = "≤ " if d.get("sampling_limited_halfbit") else ""
        extra = f" ({le}{res * 1e9:.0f} nm half-bit)" if res else ""
        ax.plot(f[1:], np.asarray(d["frc"])[1:], color=f"C{i}", lw=1.2, label=f"{lab}{extra}")
    if frc_results:
        d = frc_results[0]
        f = np.asarray(d["freq"]) * 1e-6
        ax.axhline(1 / 7, color="0.3", ls=":", lw=1, label="1/7")
        if "counts" in d:
            ax.plot(f[1:], threshold_curve("halfbit", d["counts"])[1:], color="0.3", ls="--", lw=1, label="half-bit")
    ax.set_xlabel(r"spatial frequency (µm$^{-1}$)")
    ax.set_ylabel("FRC")
    ax.set_ylim(-0.2, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig


def fig_blur_match(results: Sequence[Result | ChemMaps], truth, labels=None, nv_fraction: float = 0.25,
                   fields: Sequence[str] = DESCRIPTORS) -> Figure | None:
    """RMSE of each descriptor map against the truth blurred by a Gaussian of standard
    deviation sigma (:func:`diffxas.analysis.evaluate.blur_error_curve`), one panel per map, one
    curve per result, the best match (:func:`diffxas.analysis.evaluate.blur_matched_error`) marked:
    lost resolution (where the minimum sits) against noise (how low it is). ``truth``: a
    :class:`~diffxas.maps.Truth`, resampled onto each result's own grid; over the region
    truth n_v >= ``nv_fraction`` x max and each result's valid pixels. None when the truth
    has no n_v map or none of ``fields``, or overlaps no result."""

    labels = _labels_for(results, labels)
    fields = [f for f in fields if f in truth.maps]
    if "n_v" not in truth.maps or not fields:
        return None
    sig = np.linspace(0.0, MAX_MATCHED_BLUR_PX, 33)
    fig = Figure(figsize=(3.6 * len(fields), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(fields)))
    px = set()
    for i, (lab, r) in enumerate(zip(labels, results)):
        m = _maps_of(r)
        tm = resample_truth(truth, m.pixel_size, m.origin, m.shape)
        nv_t = tm["n_v"]
        if not np.isfinite(nv_t).any() or np.nanmax(nv_t) <= 0:
            continue
        mask = np.isfinite(nv_t) & (nv_t >= nv_fraction * np.nanmax(nv_t)) & np.asarray(m.valid).astype(bool)
        px.add(round(m.pixel_size * 1e9, 1))
        for ax, f in zip(axes, fields):
            est = np.asarray(getattr(m, f), np.float64)
            ax.plot(sig, blur_error_curve(est, tm[f], mask, sig), color=f"C{i}", lw=1.2, label=lab)
            b = blur_matched_error(est, tm[f], mask)
            if b["matched_rmse"] is not None:
                ax.plot([b["matched_blur_px"]], [b["matched_rmse"]], "o", color=f"C{i}", ms=4)
    if not px:  # no result overlaps the truth
        return None
    unit = f"px of {px.pop():g} nm" if len(px) == 1 else "px of each result's grid"
    for ax, f in zip(axes, fields):
        ax.set_xlabel(f"truth blurred by σ ({unit})")
        ax.set_ylabel("RMSE: " + _unit_label(f, absorber=_absorber(results)))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def plot_all(results: Sequence[Result], out_dir, labels=None, truth=None, formats=("png", "pdf"),
             nv_fraction: float = 0.25) -> tuple[list[str], list[str]]:
    """Write every applicable figure; returns (written paths, notes on skipped figures)."""

    labels = _labels_for(results, labels)
    written, notes = [], []
    truth_maps = None
    if truth is not None:
        m0 = results[0].maps
        truth_maps = resample_truth(truth, m0.pixel_size, m0.origin, m0.shape)

    def emit(fig, stem, note):
        if fig is None:
            notes.append(note)
            return
        written.extend(save_figure(fig, out_dir, stem, formats))

    emit(fig_projections(results, labels), "projections", "")
    emit(fig_maps(results, labels, truth_maps, truth=truth, nv_fraction=nv_fraction), "maps", "")
    emit(fig_spectra(results, labels), "cluster_spectra",
         "cluster spectra: no result has a /clusters group (run `diffxas cluster`)")
    emit(fig_clusters(results, labels, truth_maps, truth.domain_names if truth is not None else None),
         "clusters", "cluster maps: no result has a /clusters group (run `diffxas cluster`)")
    emit(fig_elbow(results, labels), "elbow", "elbow/silhouette: no result was clustered with k = auto")
    emit(fig_shape_maps(results, labels, truth), "preedge_shape",
         "pre-edge shape maps: every result shares one pre-edge shape (c12, c13, c22, c23 neither per pixel nor per domain)")
    emit(fig_uncertainty(results, labels), "uncertainty",
         "uncertainty maps: no result has std maps (the joint solver writes them) or a cluster confidence map")
    emit(fig_background(results, labels), "background",
         "detector background: no result fitted one (background = \"none\")")
    if truth is not None:
        emit(fig_blur_match(results, truth, labels), "blur_match",
             "resolution-matched error: the truth has no n_v or descriptor map")
    return written, notes

