"""Commands on results files: ``cluster``, ``evaluate`` (against a truth or, with ``--split``,
two half-data results) and ``report`` (figures and a Markdown summary).

The analysis and report modules (scipy, h5py, matplotlib) are imported inside the
``_run_*`` functions: ``diffxas --help`` imports none of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffxas.app.cli.common import add_config_options, config_mapping, positive_int, require_file
from diffxas.errors import ConfigError, InputError


# ---- cluster --------------------------------------------------------------------------
def _add_cluster(subparsers) -> None:
    p = subparsers.add_parser(
        "cluster",
        help="k-means clustering of the chemical-state maps of a results file",
        description="Cluster the chemical-state maps of a results file (robustly standardised features, "
        "N_V-weighted k-means, labels ordered by edge energy) and store the clusters in the file's "
        "/clusters group (replaced atomically); a table of centres and fractions goes to "
        "RESULT_clusters.csv. Settings: ClusterConfig defaults, then [cluster] of --config, then "
        "--set, then the options below.",
        epilog="example: diffxas cluster joint.h5 --k auto --features edge_energy,pre_edge_norm,ne_eff_per_nv",
    )
    p.add_argument("result", metavar="RESULT.h5", help="results file (modified in place)")
    p.add_argument("--k", default=None, help="number of clusters, or 'auto' (elbow over 1..k_max; the default)")
    p.add_argument(
        "--features",
        default=None,
        metavar="F1,F2,...",
        help="maps to cluster on (default edge_energy,pre_edge_norm,ne_eff_per_nv)",
    )
    p.add_argument(
        "--weight",
        default=None,
        choices=["n_v", "none"],
        help="n_v: V-density weighted k-means and fractions (default); none: per pixel",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        metavar="N",
        help="random states of the stability study (default 10; 1 disables it)",
    )
    p.add_argument("--csv", default=None, metavar="FILE.csv", help="table of clusters (default RESULT_clusters.csv)")
    add_config_options(p, "cluster")
    p.set_defaults(func=_run_cluster)


def _run_cluster(args) -> int:
    from diffxas.analysis.clustering import cluster_file, default_csv_path, format_clusters  # ~15 ms; sklearn inside
    from diffxas.app.config import build_section  # ~10-15 ms, not needed by --help or info
    from diffxas.app.pipeline import check_output_path  # the pipeline imports the solvers (jax)

    extra = {}
    if args.k is not None:
        extra["cluster.k"] = args.k
    if args.features is not None:
        extra["cluster.features"] = args.features
    if args.weight is not None:
        extra["cluster.weight"] = None if args.weight == "none" else args.weight
    if args.seeds is not None:
        extra["cluster.seeds"] = args.seeds
    mapping = config_mapping(args, "cluster", extra)
    cfg = build_section(mapping, "cluster")
    require_file(args.result, "results file")
    csv = args.csv if args.csv is not None else default_csv_path(args.result)
    check_output_path(csv, "CSV file", inputs=[args.result])
    clusters = cluster_file(args.result, cfg, csv_path=csv)
    print(format_clusters(clusters))
    print(f"wrote /clusters to {args.result} and {clusters.get('csv_path', csv)}")
    return 0


# ---- evaluate -------------------------------------------------------------------------
def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="compare a results file with the ground truth of a simulation",
        description="Compare the maps (and clusters, if present) of a results file with a simulation's "
        "ground truth resampled onto the map grid: coverage, RMSE and bias of the descriptors, "
        "relative error of N_V, adjusted Rand index of the clusters. Prints a summary and writes "
        "all metrics as JSON (default RESULT_eval.json).",
        epilog="example: diffxas evaluate joint.h5 --truth data.truth.h5 --json joint_eval.json",
    )
    p.add_argument("result", metavar="RESULT.h5", help="results file")
    p.add_argument(
        "--truth",
        default=None,
        metavar="TRUTH.h5",
        help="ground-truth file (default: the .truth.h5 file next to the result's input CXI file)",
    )
    p.add_argument("--json", default=None, metavar="OUT.json", help="metrics file to write (default RESULT_eval.json)")
    p.add_argument(
        "--nv-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="evaluation region: truth n_V >= F x its maximum (default 0.25)",
    )
    p.add_argument(
        "--split",
        default=None,
        metavar="OTHER_HALF.h5",
        help="no truth (real data): Fourier ring correlation between RESULT.h5 and the result of the "
        "other half of the frames (reconstruct --half even/odd); resolution at 1/7 and half-bit",
    )
    p.set_defaults(func=_run_evaluate)


def _default_truth_for(result_path) -> str:
    from diffxas.app.pipeline import default_truth_path  # the pipeline imports the solvers (jax)
    from diffxas.data import results as io_results  # h5py

    r = io_results.read_result(result_path)
    if not r.input_path:
        raise InputError(f"{result_path}: no --truth given and the results file does not name its input")
    t = default_truth_path(r.input_path)
    if not Path(t).exists():
        raise InputError(f"no --truth given and no ground-truth file at {t} (next to the input {r.input_path})")
    return str(t)


def _run_evaluate(args) -> int:
    from diffxas.analysis.evaluate import default_json_path, evaluate_file, format_metrics  # scipy
    from diffxas.app.pipeline import check_output_path  # the pipeline imports the solvers (jax)

    if not (0.0 < args.nv_fraction < 1.0):
        raise ConfigError(f"--nv-fraction must be in (0, 1), got {args.nv_fraction}")
    require_file(args.result, "results file")
    if args.split is not None:
        from diffxas.analysis.frc import frc_files  # h5py + scipy; only for --split

        require_file(args.split, "results file")
        json_path = (
            args.json if args.json is not None else default_json_path(args.result).replace("_eval.json", "_frc.json")
        )
        check_output_path(json_path, "JSON file", inputs=[args.result, args.split])
        out = frc_files(args.result, args.split, json_path=json_path)
        from diffxas.report.figure_style import save_figure  # matplotlib; only for --split
        from diffxas.report.plotting import fig_frc  # matplotlib; only for --split

        # named after the JSON: a second split evaluation in the same folder does not overwrite the first one's figure
        stem = os.path.splitext(os.path.basename(json_path))[0]
        save_figure(
            fig_frc(list(out.values()), labels=list(out)),
            os.path.dirname(os.path.abspath(json_path)),
            stem if stem.endswith("frc") else f"{stem}_frc",
        )
        for name, d in out.items():
            res = {k: v for k, v in d.items() if "resolution" in k} if isinstance(d, dict) else d
            print(f"{name}: {json.dumps(res, default=str)}")
        print(f"wrote {json_path}")
        return 0
    truth = args.truth if args.truth is not None else _default_truth_for(args.result)
    require_file(truth, "ground-truth file")
    json_path = args.json if args.json is not None else default_json_path(args.result)
    check_output_path(json_path, "JSON file", inputs=[args.result, truth])
    metrics = evaluate_file(args.result, truth, json_path=json_path, nv_fraction=args.nv_fraction)
    print(format_metrics(metrics))
    print(f"wrote {metrics.get('json_path', json_path)}")
    return 0


# ---- report ---------------------------------------------------------------------------
def _add_report(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="figures and a Markdown summary of one or more results files",
        description="Draw the projections, chemical-state maps, cluster maps and spectra of one or more "
        "results files side by side on common colour scales (PNG and PDF) and write summary.md; "
        "with --truth, add the truth column and a metrics table (metrics.json).",
        epilog="example: diffxas report twostep.h5 joint.h5 -o report --truth data.truth.h5",
    )
    p.add_argument("results", nargs="+", metavar="RESULT.h5", help="results file(s), drawn side by side")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--truth", default=None, metavar="TRUTH.h5", help="ground-truth file (adds truth and metrics)")
    p.add_argument("--labels", default=None, metavar="L1,L2,...", help="column labels (default: the methods)")
    p.add_argument("--formats", default="png,pdf", metavar="png,pdf", help="figure formats (default png,pdf)")
    p.add_argument(
        "--nv-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="evaluation region for the metrics: truth n_V >= F x its maximum (default 0.25)",
    )
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from diffxas.data import results as io_results  # h5py
    from diffxas.data import truth as io_truth  # h5py + jax
    from diffxas.report.report import report  # h5py, matplotlib inside

    labels = None
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.results) or not all(labels):
            raise ConfigError(
                f"--labels needs {len(args.results)} non-empty comma-separated labels, got {args.labels!r}"
            )
    formats = tuple(s.strip().lower() for s in args.formats.split(",") if s.strip())
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if not formats or bad:
        raise ConfigError(f"--formats: choose from png, pdf, svg, got {args.formats!r}")
    if not (0.0 < args.nv_fraction < 1.0):
        raise ConfigError(f"--nv-fraction must be in (0, 1), got {args.nv_fraction}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    # validate every input before anything is written
    for r in args.results:
        require_file(r, "results file")
        io_results.read_result(r)
    if args.truth is not None:
        from diffxas.analysis.evaluate import check_truth_matches  # scipy; only with --truth

        require_file(args.truth, "ground-truth file")
        truth = io_truth.read_truth(args.truth)
        for r in args.results:
            check_truth_matches(io_results.read_result(r), truth, r, args.truth)
    files = report(
        args.results, out, truth_path=args.truth, labels=labels, formats=formats, nv_fraction=args.nv_fraction
    )
    summary = [f for f in files if os.path.basename(f) == "summary.md"]
    print(f"wrote {len(files)} files to {out}/" + (f" (summary: {summary[0]})" if summary else ""))
    return 0
