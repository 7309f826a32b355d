"""The ``diffxas report`` command: figures and a Markdown summary of one or more results.

:func:`report` reads results files (and optionally the ground truth), writes the
figures of :mod:`diffxas.report.plotting` (PNG and PDF) side by side on common colour scales,
``summary.md`` (inputs, clustering, and with a truth a metrics table, one row per
result) and, with a truth, ``metrics.json`` (:func:`diffxas.analysis.evaluate.evaluate` per
result). Optional groups may be missing: without ``/clusters`` the cluster figures are
skipped and the summary says so; without history the timing columns read "n/a";
without std maps (``/maps/*_std``, written by the joint solver only) and a cluster
confidence map the uncertainty figure is skipped and the summary says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from diffxas import __version__
from diffxas.analysis.clustering import cluster_attrs
from diffxas.analysis.evaluate import evaluate, history_summary
from diffxas.data import results as io_results
from diffxas.data import truth as io_truth
from diffxas.data.files import write_text_atomic
from diffxas.errors import ConfigError
from diffxas.maps import DESCRIPTORS, MAP_FIELDS, Result, Truth
from diffxas.report.map_figures import DISPLAY_NV_FRACTION, DISPLAY_NV_PERCENTILE
from diffxas.report.plotting import plot_all


def _default_labels(results: Sequence[Result], sources: Sequence[str] | None) -> list[str]:
    labels = [str(r.method or f"result {i + 1}") for i, r in enumerate(results)]
    if len(set(labels)) < len(labels):
        stems = [os.path.splitext(os.path.basename(s))[0] for s in sources] if sources else None
        labels = [f"{lab} ({stems[i] if stems else i + 1})" for i, lab in enumerate(labels)]
    return labels


def _f(v, spec=".3g", none="n/a") -> str:
    if v is None:
        return none
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return format(v, spec) if np.isfinite(v) else none


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _cluster_section(label: str, r: Result) -> list[str]:
    cl = r.clusters
    if not cl or "labels" not in cl:
        return [
            f"**{label}**: no /clusters group (run `diffxas cluster` on the results file); cluster figures skipped.",
            "",
        ]
    a = cluster_attrs(cl)
    feats = a.get("features") or []
    k = a.get("k")
    head = f"**{label}**: k = {k}"
    if a.get("k_mode") == "auto":
        head += f" (auto: elbow {a.get('k_elbow')}, best silhouette {a.get('k_silhouette')})"
    head += (
        f"; {a.get('n_pixels', 'n/a')} pixels clustered (n_V >= {_f(a.get('nv_threshold'))} m^-2); "
        f"stability (mean pairwise ARI over {a.get('seeds', 'n/a')} seeds) {_f(a.get('stability'), '.3f')}."
    )
    lines = [head, ""]
    centers = np.asarray(cl.get("centers", np.zeros((0, len(feats)))), dtype=np.float64)
    fr = np.asarray(cl.get("fractions", np.full(len(centers), np.nan)), dtype=np.float64)
    header = ["cluster", "N_V fraction"] + [f"{f} ({MAP_FIELDS.get(f, ('',))[0]})" for f in feats]
    rows = []
    for j in range(len(centers)):
        rows.append(
            [str(j), _f(fr[j] if j < len(fr) else None, ".3f")]
            + [_f(centers[j, c], ".6g") for c in range(min(len(feats), centers.shape[1]))]
        )
    if "confidence" in cl:
        lines += [
            f"Assignment confidence (probability that a pixel belongs to its cluster given its std maps; "
            f"Monte Carlo, independent Gaussian errors per descriptor): mean {_f(a.get('confidence_mean'), '.3f')}, "
            f"N_V-weighted {_f(a.get('confidence_mean_nv'), '.3f')}.",
            "",
        ]
        cc = np.asarray(cl.get("cluster_confidence", np.full(len(centers), np.nan)), dtype=np.float64)
        header.append("mean confidence")
        rows = [row + [_f(cc[j] if j < len(cc) else None, ".3f")] for j, row in enumerate(rows)]
    return lines + _md_table(header, rows) + [""]


def _uncertainty_section(labels: Sequence[str], results: Sequence[Result]) -> list[str]:
    """Median standard error of each descriptor over the valid pixels, per result."""
    md = ["## Uncertainty", ""]
    if not any(r.maps.std for r in results):
        return md + [
            "No result carries standard-error maps (`/maps/*_std`; the joint solver writes them, the "
            "two-step path does not).",
            "",
        ]
    md += [
        "Median over the valid pixels of the per-pixel standard error (Fisher information of the joint model, "
        "neighbours and probe held fixed; see docs/analysis.md, 'Uncertainty maps'). It describes the noise, not a "
        "model or solver bias.",
        "",
    ]
    rows = []
    for lab, r in zip(labels, results):
        m = r.maps
        valid = np.asarray(m.valid).astype(bool)
        row = [lab]
        for f in DESCRIPTORS:
            if f in (m.std or {}):
                v = np.asarray(m.std[f], dtype=np.float64)[valid]
                v = v[np.isfinite(v)]
                row.append(_f(np.median(v) if v.size else None, ".3g"))
            else:
                row.append("n/a")
        rows.append(row)
    md += _md_table(["result"] + [f"σ {f} ({MAP_FIELDS[f][0]})" for f in DESCRIPTORS], rows)
    return md + [""]


def report_results(
    results: Sequence[Result],
    out_dir,
    truth: Truth | None = None,
    labels=None,
    sources: Sequence[str] | None = None,
    formats=("png", "pdf"),
    nv_fraction: float = 0.25,
) -> list[str]:
    """Write figures, ``summary.md`` (and ``metrics.json`` with a truth) for in-memory results."""
    if not results:
        raise ValueError("report needs at least one result")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    labels = [str(x) for x in labels] if labels is not None else _default_labels(results, sources)
    if len(labels) != len(results):
        raise ConfigError(f"{len(labels)} labels given for {len(results)} results")
    written, notes = plot_all(results, out_dir, labels=labels, truth=truth, formats=formats, nv_fraction=nv_fraction)

    md = ["# diffxas report", "", f"diffxas {__version__}; {len(results)} result(s).", "", "## Inputs", ""]
    rows = []
    for i, (lab, r) in enumerate(zip(labels, results)):
        m = r.maps
        e = np.asarray(r.energies, dtype=np.float64)
        h = history_summary(r.history, r.config)
        rows.append(
            [
                lab,
                f"`{sources[i]}`" if sources else "-",
                str(r.method),
                f"{m.shape[0]} x {m.shape[1]}, {m.pixel_size * 1e9:.1f} nm",
                (f"{e.size}, {e.min():.1f}-{e.max():.1f} eV" if e.size else "0") + f" ({m.absorber} K)",
                f"{int(np.asarray(m.valid).astype(bool).sum())}",
                str(h["iterations"]) if h["iterations"] is not None else "n/a",
                _f(h["final_loss"], ".4g"),
                _f(h["wall_time_s"], ".1f"),
            ]
        )
    md += _md_table(
        ["result", "file", "method", "grid", "energies", "valid px", "iterations", "final loss", "wall time (s)"], rows
    )
    md += [""]

    if truth is not None:
        metrics = [evaluate(r, truth, nv_fraction=nv_fraction) for r in results]
        mpath = os.path.join(out_dir, "metrics.json")
        write_text_atomic(
            mpath, json.dumps({lab: m for lab, m in zip(labels, metrics)}, indent=2, allow_nan=False) + "\n"
        )
        written.append(mpath)
        md += [
            "## Comparison with the ground truth",
            "",
            f"Over the pixels where the resampled truth n_V >= {nv_fraction} x its maximum; errors over the "
            "pixels valid in the result (result - truth). Matched blur: the Gaussian blur (standard deviation) "
            "of the truth that the edge-energy map matches best, and the RMSE left there (lost resolution vs "
            "noise; docs/analysis.md). ARI: adjusted Rand index of the clusters against the "
            "true domains (n/a without clusters).",
            "",
        ]
        rows = []
        for lab, m in zip(labels, metrics):
            g = lambda name, key: (m.get(name) or {}).get(key)  # noqa: E731, B023
            cl = m.get("clusters") or {}
            h = m.get("history") or {}
            rows.append(
                [
                    lab,
                    str(m.get("method")),
                    _f(m.get("coverage"), ".3f"),
                    _f(g("edge_energy", "rmse")),
                    _f(g("edge_energy", "bias"), "+.3g"),
                    _f(g("edge_energy", "matched_blur_px"), ".2f"),
                    _f(g("edge_energy", "matched_rmse")),
                    _f(g("pre_edge_norm", "rmse")),
                    _f(g("ne_eff_per_nv", "rmse")),
                    _f(g("n_v", "rel_rms"), ".3f"),
                    _f(cl.get("ari"), ".3f"),
                    _f(h.get("wall_time_s"), ".1f"),
                    str(h.get("iterations")) if h.get("iterations") is not None else "n/a",
                ]
            )
        md += _md_table(
            [
                "result",
                "method",
                "coverage",
                "E0 RMSE (eV)",
                "E0 bias (eV)",
                "E0 matched blur (px)",
                "E0 RMSE at it (eV)",
                "PE/Δμt RMSE (eV)",
                "Ne/NV RMSE",
                "n_V rel. RMS",
                "ARI",
                "wall time (s)",
                "iterations",
            ],
            rows,
        )
        md += [""]

    md += ["## Clusters", ""]
    for lab, r in zip(labels, results):
        md += _cluster_section(lab, r)

    md += _uncertainty_section(labels, results)

    md += ["## Figures", ""]
    pngs = [p for p in written if p.endswith(".png")]
    captions = {
        "projections": "Absorption above the edge (energy closest to max edge energy + 15 eV) and phase at the lowest energy.",
        "maps": (
            "Chemical-state maps in the seed's Fig. 2 layout (edge energy, PE/Δμt, Re[Ne]/N_V, N_V), one row per "
            "result, cropped to the particle; colour limits per column from the N_V-weighted 1st-99th "
            "percentiles of the drawn pixels of all rows; pixels with N_V below "
            f"{100 * DISPLAY_NV_FRACTION:g} % of its {DISPLAY_NV_PERCENTILE:g}th percentile, or isolated, blank "
            "(display only)"
            + (
                "; then the truth resampled to the first result's grid and one error row per result (map - "
                "truth, symmetric diverging scale, RMSE over the evaluation region in each title)."
                if truth is not None
                else "; then each result's standard-error maps where it has them."
            )
        ),
        "cluster_spectra": "Mean XANES (edge-step normalised) and phase spectra per cluster.",
        "clusters": "Cluster maps, N_V-weighted densities of each descriptor per cluster, N_V-weighted fractions.",
        "elbow": "Elbow (within-cluster sum of squares) and silhouette score vs k.",
        "preedge_shape": "Pre-edge peak positions and widths (eV) of the results that fit them per pixel or per domain "
        "(`JointConfig.spectra.per_pixel` / `per_domain`); a result that shares one value shows it"
        + (
            "; last column: the truth's parameters, N_V-weighted onto the first result's grid."
            if truth is not None
            else "."
        ),
        "background": "Fitted incoherent detector background (docs/physics.md, 'Detector background'): mean level per "
        "energy, and the radial profile over the detector (mean over the energies).",
        "uncertainty": "Standard-error maps of the descriptors (common colour scales per column; invalid pixels blank) "
        "and, for clustered results, the assignment confidence: the probability that a pixel belongs to "
        "its cluster given its standard errors.",
    }
    for p in pngs:
        stem = os.path.splitext(os.path.basename(p))[0]
        md += [f"![{stem}]({os.path.basename(p)})", "", captions.get(stem, ""), ""]
    for n in notes:
        md += [f"- skipped {n}"]
    if notes:
        md += [""]
    spath = os.path.join(out_dir, "summary.md")
    write_text_atomic(spath, "\n".join(md).rstrip() + "\n")
    written.append(spath)
    return written


def report(
    result_paths: Sequence[str],
    out_dir,
    truth_path=None,
    labels=None,
    formats=("png", "pdf"),
    nv_fraction: float = 0.25,
) -> list[str]:
    """The ``diffxas report`` command: figures and ``summary.md`` for results files.

    Args:
        result_paths: one or more results files (e.g. two-step and joint), drawn side by side.
        out_dir: output folder (created).
        truth_path: optional ground-truth file: adds a truth column and a metrics table.
        labels: optional column labels (default: each result's method, made unique).
        formats: figure formats.
        nv_fraction: evaluation region threshold (truth n_v >= nv_fraction x max).

    Returns the list of written files.
    """
    paths = [os.fspath(p) for p in result_paths]
    results = [io_results.read_result(p) for p in paths]
    truth = io_truth.read_truth(truth_path) if truth_path else None
    return report_results(
        results, out_dir, truth=truth, labels=labels, sources=paths, formats=formats, nv_fraction=nv_fraction
    )
