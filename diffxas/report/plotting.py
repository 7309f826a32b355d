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

import warnings
from collections.abc import Sequence

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from diffxas.analysis.clustering import cluster_mean_spectra
from diffxas.analysis.evaluate import MAX_MATCHED_BLUR_PX, blur_error_curve, blur_matched_error
from diffxas.analysis.frc import threshold_curve
from diffxas.analysis.resample import resample_truth
from diffxas.maps import DESCRIPTORS, ChemMaps, Result
from diffxas.physics.background import per_energy

#: Display names (mathtext) of the maps.
from diffxas.report.figure_style import (
    PANEL,
    _absorber,
    _attrs,
    _clusters_of,
    _extent_um,
    _image_axes,
    _labels_for,
    _maps_of,
    _show,
    _unit_label,
    absorption_energy_index,
    add_scale_bar,
    cluster_colors,
    robust_limits,
    save_figure,
)
from diffxas.report.map_figures import fig_maps, fig_shape_maps, fig_uncertainty

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
        rows.append(
            (
                (np.asarray(r.absorption[ia], dtype=np.float64), r.energies[ia]),
                (np.asarray(r.phase[ip], dtype=np.float64), r.energies[ip]),
            )
        )
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
            from scipy.stats import gaussian_kde  # scipy.stats: ~1 s to import, only for a density curve

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


def fig_clusters(
    results: Sequence[Result],
    labels=None,
    truth_maps: dict | None = None,
    domain_names: Sequence[str] | None = None,
    nv_fraction: float = 0.25,
) -> Figure | None:
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
        rows.append(
            dict(
                title=lab,
                lab=lab_map,
                k=k,
                vals=vals,
                nv=nv,
                fr=fr,
                names=names,
                colors=colors,
                m=m,
                grid=(m.pixel_size, m.origin, m.shape),
                stab=a.get("stability"),
            )
        )
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
        vals = {
            name: np.asarray(truth_maps[name], dtype=np.float64) if name in truth_maps else np.full(tl.shape, np.nan)
            for name in feats
        }
        m0 = rows[0]["m"]
        rows.append(
            dict(
                title="truth (domains)",
                lab=lab_map,
                k=n_dom,
                vals=vals,
                nv=nvt0,
                fr=fr,
                names=names,
                colors=cluster_colors(n_dom),
                m=m0,
                grid=(m0.pixel_size, m0.origin, tl.shape),
                stab=None,
            )
        )
    nf = len(feats)
    # Common x ranges per feature (1-99 % of all rows' clustered pixels, padded 5 %).
    xr = {}
    for name in feats:
        lo, hi = robust_limits([row["vals"][name][row["lab"] >= 0] for row in rows], 1, 99)
        pad = 0.08 * (hi - lo)
        xr[name] = (lo - pad, hi + pad)
    fig = Figure(figsize=(PANEL * (nf + 2) + 0.4, 2.5 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), nf + 2, squeeze=False, gridspec_kw={"width_ratios": [0.9] + [1.0] * nf + [0.8]})
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
    rows = [
        (lab, r.clusters)
        for lab, r in zip(labels, results)
        if r.clusters is not None and "elbow_inertia" in r.clusters and "elbow_k" in r.clusters
    ]
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
        ax.set_title(
            f"{lab}: k = {kc} (elbow {a.get('k_elbow', '?')}, silhouette {a.get('k_silhouette', '?')})", fontsize=9
        )
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
        rad = np.sqrt(xx**2 + yy**2).astype(int)
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


def fig_blur_match(
    results: Sequence[Result | ChemMaps],
    truth,
    labels=None,
    nv_fraction: float = 0.25,
    fields: Sequence[str] = DESCRIPTORS,
) -> Figure | None:
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


def plot_all(
    results: Sequence[Result], out_dir, labels=None, truth=None, formats=("png", "pdf"), nv_fraction: float = 0.25
) -> tuple[list[str], list[str]]:
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
    emit(
        fig_spectra(results, labels),
        "cluster_spectra",
        "cluster spectra: no result has a /clusters group (run `diffxas cluster`)",
    )
    emit(
        fig_clusters(results, labels, truth_maps, truth.domain_names if truth is not None else None),
        "clusters",
        "cluster maps: no result has a /clusters group (run `diffxas cluster`)",
    )
    emit(fig_elbow(results, labels), "elbow", "elbow/silhouette: no result was clustered with k = auto")
    emit(
        fig_shape_maps(results, labels, truth),
        "preedge_shape",
        "pre-edge shape maps: every result shares one pre-edge shape (c12, c13, c22, c23 neither per pixel nor per domain)",
    )
    emit(
        fig_uncertainty(results, labels),
        "uncertainty",
        "uncertainty maps: no result has std maps (the joint solver writes them) or a cluster confidence map",
    )
    emit(
        fig_background(results, labels), "background", 'detector background: no result fitted one (background = "none")'
    )
    if truth is not None:
        emit(
            fig_blur_match(results, truth, labels),
            "blur_match",
            "resolution-matched error: the truth has no n_v or descriptor map",
        )
    return written, notes
