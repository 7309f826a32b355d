"""Shared style of the figures: labels, colours, limits, axes, scale bars, atomic saving."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from diffxas.analysis.clustering import cluster_attrs
from diffxas.errors import DiskFullError, is_disk_full
from diffxas.maps import MAP_FIELDS, ChemMaps, Result

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
    width = abs(extent_um[1] - extent_um[0])
    length = _nice_length(width)
    label = f"{length:g} µm" if length >= 0.1 else f"{length * 1000:g} nm"
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        label,
        "lower left",
        pad=0.3,
        sep=2,
        borderpad=0.3,
        frameon=True,
        size_vertical=width / 80,
        color="black",
        fontproperties={"size": 7},
    )
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
    im = ax.imshow(
        np.ma.masked_invalid(img), origin="lower", extent=extent, cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    _image_axes(ax, extent)
    add_scale_bar(ax, extent)
    return im


def save_figure(fig: Figure, out_dir, stem: str, formats=("png", "pdf")) -> list[str]:
    """Save as ``out_dir/stem.<fmt>``; returns the paths.

    Each file is written to a temporary file in ``out_dir`` and moved into place
    (``os.replace``), so an interrupted save never leaves a half-written figure.
    """
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


def _finite_mean(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.mean(a)) if a.size else float("nan")
