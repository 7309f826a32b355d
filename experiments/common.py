"""Shared driver of the experiment scripts: run a study's sweep, plot, write findings.

Every study is a sweep file ``experiments/<study>.toml`` (full mode: the ``[base]`` and
``[axes]``, meant for a GPU) with a ``[profiles.quick]`` variant (minutes on 2 CPU cores);
its script ``experiments/<study>.py`` runs the sweep through :func:`diffxas.app.sweep.runner.run`
and then writes, into ``experiments/results/<study>-<mode>/``:

* ``summary.csv`` / ``summary.json``: the sweep's table (one row per point x method);
* ``<study>_<metric>.png`` / ``<study>.png``: metric vs factor, mean +- standard deviation over the
  seeds, both methods on one axis;
* ``findings.md``: the tables behind the plots and the observations the script can
  state from the numbers alone.

The sweep's data, results files and per-point metrics stay in the run folder
(``experiments/runs/<study>-<mode>/`` by default, not committed).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from diffxas.errors import DiffxasError  # noqa: E402 (after the path set-up)

#: Metrics plotted by default: summary column -> (axis label, lower is better).
METRICS: dict[str, tuple[str, bool]] = {
    "edge_energy_rmse": ("edge energy RMSE (eV)", True),
    "pre_edge_norm_rmse": ("PE/Δμt RMSE (eV)", True),
    "ne_eff_per_nv_rmse": ("Re[Ne]/N_V RMSE", True),
    "coverage": ("coverage (valid fraction)", False),
    "ari": ("cluster ARI vs truth", False),
}
#: Secondary columns tabulated in findings.md (robust errors, biases, V density, cost).
SECONDARY: dict[str, tuple[str, bool]] = {
    "edge_energy_mae": ("edge energy MAE (eV)", True),
    "pre_edge_norm_mae": ("PE/Δμt MAE (eV)", True),
    "ne_eff_per_nv_bias": ("Re[Ne]/N_V bias", True),
    "edge_energy_bias": ("edge energy bias (eV)", True),
    "n_v_rel_rms": ("N_V rel. RMS error", True),
    "wall_s": ("method wall time (s)", True),
}
METHOD_STYLE = {"two-step": dict(color="tab:blue", marker="o"), "joint": dict(color="tab:red", marker="s")}


def parse_args(study: str, doc: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"experiments/{study}.py", description=doc)
    p.add_argument("--quick", action="store_true", help="the quick profile (minutes on 2 CPU cores)")
    p.add_argument("--out", metavar="DIR", help=f"sweep folder (default experiments/runs/{study}-<mode>)")
    p.add_argument(
        "--results", metavar="DIR", help=f"plots/findings folder (default experiments/results/{study}-<mode>)"
    )
    p.add_argument("-j", "--workers", type=int, default=1, help="sweep worker processes (default 1)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--overwrite", action="store_true", help="recompute every point")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base key of the sweep (e.g. joint.steps=100); recorded in findings.md",
    )
    p.add_argument("--analyse-only", action="store_true", help="only re-plot an existing sweep folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def run_study(study: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run (or, with --analyse-only, read) the study's sweep; returns (rows, info)."""
    from diffxas.app.sweep import cache as sweep_cache
    from diffxas.app.sweep import cli as sweep_cli
    from diffxas.app.sweep import runner as sweep_runner
    from diffxas.app.sweep import spec as sweep_spec
    from diffxas.app.sweep import summary as sweep_summary

    mode = "quick" if args.quick else "full"
    out = Path(args.out) if args.out else HERE / "runs" / f"{study}-{mode}"
    spec_path = HERE / f"{study}.toml"
    overrides = sweep_cli._parse_set(args.overrides)
    info: dict[str, Any] = {
        "study": study,
        "mode": mode,
        "spec": str(spec_path.relative_to(ROOT)),
        "out": str(out),
        "overrides": overrides,
    }
    t0 = time.time()
    if args.analyse_only:
        import json

        rows = sweep_summary.read_summary(out)
        info["wall_s"] = json.loads((out / "summary.json").read_text()).get("wall_s") or 0.0
    else:
        rows = list(
            sweep_runner.run(
                spec_path,
                out,
                workers=args.workers,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
                profile="quick" if args.quick else None,
                overrides=overrides or None,
            )
        )
    if not args.analyse_only:
        info["wall_s"] = time.time() - t0
    info["code"] = code_version(out, rows) or _describe_git(sweep_cache.git_state())
    info["spec_obj"] = sweep_spec.load_spec(spec_path, profile="quick" if args.quick else None)
    try:
        import jax

        info["device"] = str(jax.devices()[0])
    except Exception:  # pragma: no cover
        info["device"] = "?"
    return rows, info


def _describe_git(g: dict[str, Any]) -> str:
    if not g.get("git_commit"):
        return ""
    return f"diffxas git {g['git_commit']}" + (" with uncommitted changes in diffxas/" if g.get("git_dirty") else "")


def code_version(out: Path, rows) -> str:
    """The diffxas version that computed the sweep's points, from their ``config.json``
    (recorded when each point ran; with --analyse-only the analysing process's checkout may
    differ). Several versions are listed with their point counts; "" when none is recorded."""
    import json
    from collections import Counter

    seen: Counter = Counter()
    for d in {r["dir"] for r in rows if r.get("dir")}:
        try:
            v = json.loads((out / d / "config.json").read_text()).get("versions", {})
        except (OSError, ValueError):
            continue
        desc = _describe_git(v)
        if desc:
            seen[desc] += 1
    if len(seen) == 1:
        return next(iter(seen))
    return "; ".join(f"{k} ({n} points)" for k, n in sorted(seen.items()))


def results_dir(study: str, args) -> Path:
    mode = "quick" if args.quick else "full"
    d = Path(args.results) if args.results else HERE / "results" / f"{study}-{mode}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def copy_summary(info: dict[str, Any], dest: Path) -> None:
    out = Path(info["out"])
    for name in ("summary.csv", "summary.json"):
        if (out / name).exists():
            shutil.copyfile(out / name, dest / name)


# ----------------------------------------------------------------------------- statistics


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series_key(row: dict[str, Any], series: Sequence[str]) -> tuple:
    return tuple(row.get(s) for s in series)


def series_label(key: tuple, series: Sequence[str]) -> str:
    parts = []
    for s, v in zip(series, key):
        parts.append(str(v) if s == "method" else f"{s.split('.')[-1]}={v}")
    return ", ".join(parts)


def stats_table(rows, x: str, series: Sequence[str], metric: str) -> dict[tuple, list[dict[str, Any]]]:
    """series key -> group_stats over (x) of ``metric`` (mean/std/n over the other axes, i.e. seeds)."""
    from diffxas.app.sweep.summary import group_stats

    keys = sorted({series_key(r, series) for r in rows}, key=lambda k: tuple(map(str, k)))
    out = {}
    for k in keys:
        out[k] = group_stats(rows, [x], metric, where=dict(zip(series, k)))
    return out


def x_order(rows, x: str, order: Sequence | None = None) -> list:
    vals = []
    for r in rows:
        v = r.get(x)
        if v not in vals and v is not None:
            vals.append(v)
    if order is not None:
        return [v for v in order if v in vals] + [v for v in vals if v not in order]
    if all(finite(v) for v in vals):
        return sorted(vals)
    return vals


# ----------------------------------------------------------------------------- plots


def plot_study(
    rows,
    x: str,
    path: Path,
    series: Sequence[str] = ("method",),
    metrics: dict | None = None,
    xlabel: str | None = None,
    xscale: float = 1.0,
    logx: bool = False,
    order=None,
    title: str = "",
    hlines: Callable | None = None,
) -> Path:
    """One panel per metric: mean +- std over seeds vs ``x``, one line per series (both methods).

    Categorical ``x`` (strings) are spaced evenly in ``order``; numeric ``x`` uses its value
    times ``xscale`` (log axis with ``logx``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = metrics or METRICS
    xs = x_order(rows, x, order)
    categorical = not all(finite(v) for v in xs)
    n = len(metrics)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.5 * nrow), squeeze=False)
    linestyles = ["-", "--", ":", "-."]
    for ax, (metric, (label, _)) in zip(axes.ravel(), metrics.items()):
        table = stats_table(rows, x, series, metric)
        other_keys = sorted({tuple(str(v) for s, v in zip(series, k) if s != "method") for k in table})
        for key, groups in table.items():
            pts = [(g[x], g["mean"], g["std"], g["n"]) for g in groups if g["n"] > 0 and g[x] in xs]
            if not pts:
                continue
            pts.sort(key=lambda t: xs.index(t[0]))
            px = [xs.index(p[0]) if categorical else p[0] * xscale for p in pts]
            method = key[list(series).index("method")] if "method" in series else None
            style = dict(METHOD_STYLE.get(method, {}))
            others = tuple(str(v) for s, v in zip(series, key) if s != "method")
            ls = linestyles[other_keys.index(others) % len(linestyles)]
            ax.errorbar(
                px,
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                capsize=3,
                linestyle=ls,
                label=series_label(key, series),
                **style,
            )
        if hlines is not None:
            for y, lab, st in hlines(metric):
                ax.axhline(y, label=lab, **st)
        ax.set_ylabel(label)
        ax.set_xlabel(xlabel or x)
        if categorical:
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels([str(v) for v in xs], rotation=20)
        elif logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="lower right" if n < nrow * ncol else "upper right",
            fontsize=8,
            bbox_to_anchor=(0.98, 0.08) if n < nrow * ncol else None,
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- findings


def fmt(v, digits: int = 3) -> str:
    if not finite(v):
        return "n/a"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def markdown_table(
    rows, x: str, series: Sequence[str], metrics: dict | None = None, order=None, xfmt: Callable = str
) -> str:
    """Markdown: one line per (x, series), mean ± std (n) of every metric."""
    metrics = metrics or METRICS
    xs = x_order(rows, x, order)
    tables = {m: stats_table(rows, x, series, m) for m in metrics}
    keys = list(next(iter(tables.values())).keys()) if tables else []
    head = f"| {x} | {' / '.join(series)} | " + " | ".join(metrics[m][0] for m in metrics) + " | n ok (failed) |"
    lines = [head, "|" + "---|" * (len(metrics) + 3)]
    for xv in xs:
        for k in keys:
            cells = []
            n_ok = n_bad = None
            for m in metrics:
                g = next((g for g in tables[m][k] if g[x] == xv), None)
                if g is None:
                    cells.append("")
                    continue
                cells.append(f"{fmt(g['mean'])} ± {fmt(g['std'], 2)}" if g["n"] else "n/a")
                n_ok = g["n"] if n_ok is None else max(n_ok, g["n"])
                n_bad = g["n_failed"] if n_bad is None else min(n_bad, g["n_failed"])
            if n_ok is None:
                continue
            lines.append(f"| {xfmt(xv)} | {series_label(k, series)} | " + " | ".join(cells) + f" | {n_ok} ({n_bad}) |")
    return "\n".join(lines)


def compare_methods(
    rows, x: str, metrics: dict | None = None, order=None, where: dict | None = None, xfmt: Callable = str
) -> list[str]:
    """Sentences: at each x, which method has the better mean, and by how much."""
    metrics = metrics or METRICS
    out = []
    xs = x_order(rows, x, order)
    sel = [r for r in rows if not where or all(r.get(k) == v for k, v in where.items())]
    for m, (label, lower) in metrics.items():
        t = stats_table(sel, x, ["method"], m)
        j = {g[x]: g for g in t.get(("joint",), [])}
        s = {g[x]: g for g in t.get(("two-step",), [])}
        parts = []
        for xv in xs:
            if xv in j and xv in s and j[xv]["n"] and s[xv]["n"]:
                a, b = j[xv]["mean"], s[xv]["mean"]
                if fmt(a) == fmt(b):
                    verdict = "equal"
                else:
                    verdict = ("joint" if (a < b) == lower else "two-step") + " better"
                parts.append(f"{xfmt(xv)}: joint {fmt(a)} vs two-step {fmt(b)} ({verdict})")
        if parts:
            out.append(f"- **{label}** — " + "; ".join(parts))
    return out


def failures(rows) -> list[str]:
    return [f"- `{r['dir']}` [{r['method']}]: {r.get('error')}" for r in rows if r.get("status") != "ok"]


def write_findings(path: Path, study: str, info: dict[str, Any], sections: list[str], rows) -> Path:
    spec = info.get("spec_obj")
    n_points = len({r["point"] for r in rows})
    head = [
        f"# {study}: {info['mode']} mode",
        "",
        f"Sweep `{info['spec']}`"
        + (" (profile quick)" if info["mode"] == "quick" else "")
        + f", {n_points} points x methods = {len(rows)} rows, device {info.get('device')}, "
        f"sweep wall time {info['wall_s'] / 60:.1f} min; "
        f"summed method time {sum(r.get('wall_s') or 0 for r in rows) / 60:.1f} min, simulation time "
        f"{sum({r['point']: r.get('sim_wall_s') or 0 for r in rows}.values()) / 60:.1f} min.",
        "",
    ]
    if info.get("overrides"):
        head.append(f"Command-line overrides: `{info['overrides']}`.")
        head.append("")
    if info.get("code"):
        head.append(f"Code: {info['code']}.")
        head.append("")
    if spec is not None:
        b = spec.base
        head.append(
            f"Base: simulate `{b.get('simulate', {})}`, joint `{b.get('joint', {})}`, "
            f"two-step `{b.get('twostep', {})}`, cluster `{b.get('cluster', {})}`; axes "
            f"`{ {k: v for k, v in spec.axes.items()} }`."
        )
        head.append("")
    bad = failures(rows)
    tail = ["", "## Failed points", ""] + (bad or ["none"]) + [""]
    path.write_text("\n".join(head + sections + tail))
    return path


# ----------------------------------------------------------------------------- the scripts' shared tail


def standard_sections(
    study: str,
    rows,
    res: Path,
    x: str,
    *,
    series: Sequence[str] = ("method",),
    order=None,
    xfmt: Callable = str,
    compare: Sequence[tuple[str, dict | None]] = (),
    extra: Sequence[str] = (),
    plot_rows=None,
    plot_note: str = "",
    **plot_kw,
) -> list[str]:
    """The usual analysis of a study: ``<study>.png`` (metric vs ``x``, see :func:`plot_study`) and
    the findings sections: results table, ``extra`` (study-specific lines), one joint-vs-two-step
    comparison per ``(heading, where)`` of ``compare``, secondary metrics, the plot's name.

    ``plot_rows`` (default ``rows``) are the rows plotted; ``plot_kw`` go to :func:`plot_study`.
    """
    plot_study(rows if plot_rows is None else plot_rows, x, res / f"{study}.png", series=series, order=order, **plot_kw)
    sec = ["## Results (mean ± std over seeds)", "", markdown_table(rows, x, series, order=order, xfmt=xfmt)]
    sec += list(extra)
    for heading, where in compare:
        sec += ["", f"## {heading}", ""] + compare_methods(rows, x, order=order, where=where, xfmt=xfmt)
    sec += ["", "## Secondary metrics", "", markdown_table(rows, x, series, metrics=SECONDARY, order=order, xfmt=xfmt)]
    sec += ["", f"Plot: `{study}.png`{plot_note}."]
    return sec


def study_main(study: str, doc: str, analyse: Callable[[list, dict, Path], list[str]], argv=None) -> Path:
    """What every study script's ``main`` does: parse the options, run (or read) the sweep, copy
    its summary to the results folder, call ``analyse(rows, info, results_dir)`` for the findings
    sections (it writes its plots there) and write ``findings.md``. Returns the results folder."""
    args = parse_args(study, doc, argv)
    try:
        rows, info = run_study(study, args)
    except DiffxasError as e:  # bad input or configuration: one line, exit 2 (as the CLI), no traceback
        print(f"{study}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    res = results_dir(study, args)
    copy_summary(info, res)
    sections = analyse(rows, info, res)
    write_findings(res / "findings.md", study, info, sections, rows)
    print(f"results in {res}")
    return res
