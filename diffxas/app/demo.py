"""`diffxas demo`: simulate, then the one pipeline (:func:`diffxas.app.pipeline.run`: checks ->
reconstruct -> cluster -> write -> evaluate) with every method, and the report."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffxas.analysis.clustering import format_clusters
from diffxas.app import pipeline
from diffxas.app.config import build_section, dumps_toml, validate_config
from diffxas.app.pipeline import (
    METHODS,
    _get,
    iterations_key,
    method_config,
    select_energies,
    set_iterations,
    simulate_files,
)
from diffxas.data import cxi as io_cxi
from diffxas.data import files as io_files
from diffxas.data import truth as io_truth
from diffxas.errors import ConfigError, DiffxasError, InputError
from diffxas.report import report as report_module
from diffxas.simulate.presets import PRESETS
from diffxas.solvers.joint.config import JointConfig

__all__ = ["DemoOutcome", "format_table", "run_demo"]


@dataclasses.dataclass
class DemoOutcome:
    """What :func:`run_demo` produced."""

    out_dir: Path
    cxi: Path
    truth: Path
    results: dict[str, Path]
    metrics: dict[str, dict]
    wall_s: dict[str, float]
    failures: dict[str, str]
    notes: list[str]
    report_files: list[str]
    table: str
    total_s: float


#: ``--quick``: fewer energies and iterations (a smoke run, not the benchmark).
QUICK = {"energies": 12, "joint.steps": 60, "iterations": 30}


def _stage(msg: str, log) -> None:
    log(msg)


def _fmt(v, spec=".3g") -> str:
    if v is None:
        return "n/a"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return format(v, spec) if np.isfinite(v) else "n/a"


def format_table(
    metrics: Mapping[str, Mapping],
    wall_s: Mapping[str, float],
    failures: Mapping[str, str] | None = None,
    clusters: Mapping[str, Any] | None = None,
) -> str:
    """The demo's summary table (one row per method; failed methods say why)."""
    header = [
        "method",
        "coverage",
        "E0 RMSE (eV)",
        "PE/dmt RMSE (eV)",
        "Ne/NV RMSE",
        "nV rel.RMS",
        "k",
        "ARI",
        "wall (s)",
    ]
    rows = []
    for method in list(metrics) + [m for m in (failures or {}) if m not in metrics]:
        if failures and method in failures:
            rows.append([method, "FAILED: " + failures[method]] + [""] * (len(header) - 2))
            continue
        m = metrics[method]
        g = lambda name, key: (m.get(name) or {}).get(key)  # noqa: E731, B023
        cl = m.get("clusters") or {}
        k = (clusters or {}).get(method, "n/a")
        rows.append(
            [
                method,
                _fmt(m.get("coverage"), ".3f"),
                _fmt(g("edge_energy", "rmse")),
                _fmt(g("pre_edge_norm", "rmse")),
                _fmt(g("ne_eff_per_nv", "rmse")),
                _fmt(g("n_v", "rel_rms"), ".3f"),
                str(k),
                _fmt(cl.get("ari"), ".3f"),
                _fmt(wall_s.get(method), ".1f"),
            ]
        )
    ok_rows = [r for r in rows if not r[1].startswith("FAILED")]
    widths = [max([len(h)] + [len(r[i]) for r in ok_rows]) for i, h in enumerate(header)]
    widths[0] = max([widths[0]] + [len(r[0]) for r in rows])
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        if r[1].startswith("FAILED"):
            lines.append(r[0].ljust(widths[0]) + "  " + r[1])
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def run_demo(
    out_dir="demo-output",
    preset: str = "small",
    *,
    quick: bool = False,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
    methods: Sequence[str] = METHODS,
    progress: bool = False,
    report_formats: Sequence[str] = ("png", "pdf"),
    log=None,
) -> DemoOutcome:
    """Run the demo (see the module docstring) and return what it produced.

    Args:
        out_dir: output folder (created; files in it are replaced).
        preset: simulation preset (``tiny`` for tests, ``small`` the default sample).
        quick: fewer energies (12, spread evenly in index) and iterations (joint 60 steps,
            two-step 30 ePIE epochs) unless ``config`` sets them.
        seed: simulation seed.
        config: a configuration mapping (``{"joint": {"steps": 5}, ...}``, as read by
            :func:`diffxas.app.config.load_config`) applied on top of the defaults; empty =
            the default configuration of every method.
        methods: methods to run (default both; the two-step is skipped, loudly, if its
            module is missing).
        progress: tqdm progress bars (stderr).
        report_formats: figure formats of the report.
        log: callable for progress lines (default print to stdout).

    Failures of one method (e.g. divergence) are recorded and the demo goes on with the
    others; a failure of the simulation or of every method raises.
    """
    log = log or (lambda msg: print(msg, flush=True))
    t_all = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    config = dict(config or {})
    cfg_map = dict(config)
    sim_sect = dict(cfg_map.get("simulate") or {})
    sim_sect.setdefault("preset", preset)
    sim_sect.setdefault("seed", seed)
    notes: list[str] = []
    failures: dict[str, str] = {}
    run_methods = list(methods)
    if not run_methods:
        raise ConfigError("no reconstruction method to run")
    if quick:
        if "energies" not in sim_sect:
            base = PRESETS.get(sim_sect["preset"], {}).get("energies")
            if base is not None and len(base) > QUICK["energies"]:
                sim_sect["energies"] = list(select_energies(base, QUICK["energies"]))
        if JointConfig.get_option(cfg_map.get("joint"), "steps") is None:  # flat or [joint.optim]
            cfg_map = set_iterations(cfg_map, "joint", QUICK["joint.steps"])
        if "two-step" in run_methods and _get(cfg_map, iterations_key("two-step")) is dataclasses.MISSING:
            cfg_map = set_iterations(cfg_map, "two-step", QUICK["iterations"])
        # said in the summary: a smoke run's table is easily read as a comparison, and the
        # joint's 60 steps are far from converged (`small`, 12 energies: edge energy 1.24 eV
        # against 0.53 for the 30-epoch two-step; at the defaults the joint wins)
        notes.append(
            f"--quick is a smoke run (unless the configuration sets them: {QUICK['energies']} energies, joint "
            f"{QUICK['joint.steps']} steps, two-step {QUICK['iterations']} ePIE epochs): its numbers check the "
            "plumbing and compare nothing; run without --quick for that"
        )
    cfg_map["simulate"] = sim_sect
    validate_config(cfg_map)
    # build every config up front: a bad key fails before minutes of computing
    sim_cfg = build_section(cfg_map, "simulate")
    method_cfgs = {m: method_config(m, cfg_map) for m in run_methods}
    cluster_cfg = build_section(cfg_map, "cluster")

    out.mkdir(parents=True, exist_ok=True)
    used = {"simulate": sim_cfg, **{METHODS[m].section: c for m, c in method_cfgs.items()}, "cluster": cluster_cfg}
    (out / "config.toml").write_text(
        "# configuration used by `diffxas demo` (all defaults unless given)\n" + dumps_toml(used)
    )
    n_stages = 2 + len(run_methods) + 3
    stage = 0

    def head(msg):
        nonlocal stage
        stage += 1
        _stage(f"[{stage}/{n_stages}] {msg}", log)

    wall: dict[str, float] = {}
    head(
        f"simulating preset {sim_cfg.preset!r} (seed {sim_cfg.seed}, {len(sim_cfg.energies)} energies, "
        f"dose {sim_cfg.dose:g} photons/frame)"
    )
    t0 = time.perf_counter()
    sim, cxi, truth = simulate_files(sim_cfg, out / "data.cxi", out / "data.truth.h5", progress=progress)
    wall["simulate"] = time.perf_counter() - t0
    n_frames = int(np.asarray(sim.dataset.frames).shape[0])
    log(f"    wrote {cxi} ({n_frames} frames) and {truth} in {wall['simulate']:.1f} s")
    del sim

    head(f"reading {cxi}")
    ds = io_cxi.read_cxi(cxi)
    sha = io_files.sha256_file(cxi)
    truth_map = io_truth.read_truth(truth)

    def on_step(step, m, run):
        # the pipeline runs each step over every method: one stage per reconstruction, then
        # one for the clustering and one for the evaluation of them all
        if step == "reconstruct" and m is not None:
            head(f"reconstructing with the {m} method")
        elif step == "failed":
            log(f"    FAILED: {run.error}")
        elif step == "written":
            valid = int(np.asarray(run.result.maps.valid).astype(bool).sum())
            log(f"    wrote {run.path} in {run.wall_s:.1f} s ({valid} valid map pixels)")
        elif step == "cluster" and m is None:
            head(
                f"clustering ({'k=auto' if cluster_cfg.k == 'auto' else f'k={cluster_cfg.k}'}, features "
                f"{', '.join(cluster_cfg.features)}, same settings for every method)"
            )
        elif step == "clustered":
            if run.cluster_error is not None:
                notes.append(f"{m}: clustering failed: {run.cluster_error}")
                log(f"    {m}: clustering failed: {run.cluster_error}")
            else:
                log(f"    {m}: " + format_clusters(run.clusters).splitlines()[0])
        elif step == "evaluate" and m is None:
            head("evaluating against the ground truth")

    # the one pipeline (checks -> reconstruct -> cluster -> write -> evaluate), every method;
    # the simulator writes its frames in the file convention: no orientation search
    runs = pipeline.run(
        ds,
        method_cfgs,
        source=cxi,
        input_path=cxi,
        input_sha256=sha,
        out={m: out / (METHODS[m].result_name or f"{m}.h5") for m in run_methods},
        cluster=cluster_cfg,
        cluster_csv=True,
        truth=truth_map,
        truth_path=truth,
        eval_json=True,
        keep_going=True,
        progress=progress,
        log=lambda s: log("    " + s),
        on_step=on_step,
    )
    results: dict[str, Path] = {}
    ks: dict[str, Any] = {}
    metrics: dict[str, dict] = {}
    for m, r in runs.items():
        if r.error is not None:
            failures[m] = r.error
            continue
        results[m], wall[m] = r.path, r.wall_s
        if r.clusters is not None:
            ks[m] = int(r.clusters["k"]) if r.clusters.get("k") is not None else None
        metrics[m] = r.metrics
    if not results:
        raise DiffxasError("every reconstruction failed: " + "; ".join(f"{m}: {e}" for m, e in failures.items()))

    head("writing the report")
    labels = list(results)
    rep_dir = out / "report"
    files = report_module.report(
        [str(results[m]) for m in labels], rep_dir, truth_path=str(truth), labels=labels, formats=tuple(report_formats)
    )
    total = time.perf_counter() - t_all
    table = format_table(metrics, wall, failures, ks)
    text = [
        f"diffxas demo: preset {sim_cfg.preset!r}, seed {sim_cfg.seed}, {len(sim_cfg.energies)} energies, "
        f"{n_frames} frames" + (" (--quick)" if quick else ""),
        "",
        table,
        "",
    ]
    text += [f"note: {n}" for n in notes]
    text += [
        f"simulation {wall['simulate']:.1f} s; total {total:.1f} s. Wall times include JIT compilation.",
        f"output: {out}/ (data.cxi, data.truth.h5, "
        + ", ".join(p.name for p in results.values())
        + ", report/summary.md)",
    ]
    summary = "\n".join(text)
    (out / "summary.txt").write_text(summary + "\n")
    (out / "demo.json").write_text(
        json.dumps(
            {
                "preset": sim_cfg.preset,
                "seed": sim_cfg.seed,
                "quick": quick,
                "n_energies": len(sim_cfg.energies),
                "n_frames": n_frames,
                "results": {m: str(p) for m, p in results.items()},
                "wall_s": wall,
                "total_s": total,
                "failures": failures,
                "notes": notes,
                "k": ks,
                "metrics": {m: {k: v for k, v in mt.items() if k not in ("history",)} for m, mt in metrics.items()},
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    return DemoOutcome(
        out_dir=out,
        cxi=cxi,
        truth=truth,
        results=results,
        metrics=metrics,
        wall_s=wall,
        failures=failures,
        notes=notes,
        report_files=files,
        table=summary,
        total_s=total,
    )
