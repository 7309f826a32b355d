"""Calibration of the joint solver's per-pixel standard errors (``/maps/*_std``).

The joint solver writes, next to every chemical map, a standard-error map from the
Fisher information of its forward model (:mod:`diffxas.physics.uncertainty`: exact per-pixel
object-space blocks, neighbours/probe/positions/shared parameters held fixed, delta
method to the maps). This script measures how well those errors describe the actual
scatter and error of the maps:

* one phantom, scan and probe (``seed``), ``N`` Poisson noise realisations
  (``noise_seed`` 0..N-1, :class:`diffxas.simulate.presets.SimConfig`), the joint solver at its
  defaults (:class:`diffxas.solvers.joint.config.JointConfig`) on each;
* region: truth N_V >= 25 % of its maximum (as :func:`diffxas.analysis.evaluate.evaluate`), the
  truth area-averaged onto the map grid (:func:`diffxas.analysis.resample.resample_truth`), pixels
  valid with a finite, positive predicted sigma in every realisation;
* per map: fraction of (pixel, realisation) pairs whose truth lies within +-1 sigma and
  +-2 sigma of the estimate (68.3 % / 95.4 % for calibrated, unbiased Gaussian errors);
  the same about the mean over the realisations, ``x_i - xbar``, divided by its own
  predicted standard deviation ``sqrt(sigma_i^2 (1 - 2/N) + mean_j sigma_j^2 / N)``
  (the finite-N correction: the mean contains ``x_i``); the per-pixel ratio of the
  empirical scatter (standard deviation over realisations, ddof = 1) to the predicted
  sigma (RMS over realisations): its median (for calibrated errors
  ``sqrt(median(chi2_{N-1}) / (N-1))``, 0.89 at N = 4, not 1) and its pooled RMS
  (expected 1); and the bias ``(xbar - truth) / sigma``: median and median absolute
  value (for an unbiased estimator the latter is noise only, ``0.674 / sqrt(N)``).

The first two test the predicted sigma against the noise alone (they need no truth and
are what the Fisher information predicts); the truth coverage adds any bias of the model
or solver, which no noise model contains.

Usage::

    python experiments/calibration.py --quick   # tiny preset, N = 4 (a few minutes on 2 CPU cores)
    python experiments/calibration.py           # small preset, N = 8 (meant for a GPU)
    python experiments/calibration.py --quick --analyse-only   # re-analyse the saved results files

Writes ``experiments/results/calibration-<mode>/``: ``findings.md`` (the tables),
``calibration.png`` (z-score histograms vs N(0, 1) and empirical vs predicted sigma per
descriptor) and ``summary.json`` (git commit, configuration, wall times, every number of
the tables). The results files of the realisations and the truth go to
``experiments/runs/calibration-<mode>/`` (not committed). Public API only
(``diffxas.simulate``, ``diffxas.solvers.joint``, ``diffxas.analysis.evaluate``, ``diffxas.data``).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

#: Maps analysed (those the joint solver writes a std map for), in table order.
MAPS = ("edge_energy", "edge_width", "edge_jump", "pre_edge", "pre_edge_norm", "n_v", "ne_eff_per_nv")
#: The three clustering descriptors drawn in calibration.png.
DESCRIPTORS = ("edge_energy", "pre_edge_norm", "ne_eff_per_nv")
LABELS = {
    "edge_energy": "edge energy (eV)",
    "edge_width": "edge width (eV)",
    "edge_jump": "edge jump Δμt",
    "pre_edge": "pre-edge PE (eV)",
    "pre_edge_norm": "PE/Δμt (eV)",
    "n_v": "N_V (m⁻²)",
    "ne_eff_per_nv": "Re[Ne]/N_V",
}
MODES = {"quick": dict(preset="tiny", n=4), "full": dict(preset="small", n=8)}


# ----------------------------------------------------------------------------- running


def git_state() -> dict:
    """Commit of this checkout and whether diffxas/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {}
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "diffxas"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return {"git_commit": head.stdout.strip(), "git_dirty_diffxas": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {}


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_realisations(
    preset: str,
    n: int,
    seed: int,
    joint_overrides: dict,
    sim_overrides: dict,
    out: Path,
    quiet: bool = False,
    command: str = "",
) -> list[dict]:
    """Simulate and reconstruct ``n`` noise realisations; results files in ``out``."""
    t_start = time.perf_counter()
    from diffxas.data import results as io_results
    from diffxas.data import truth as io_truth
    from diffxas.simulate.presets import preset as make_preset
    from diffxas.simulate.presets import simulate
    from diffxas.solvers.joint.config import JointConfig
    from diffxas.solvers.joint.run import reconstruct_joint

    out.mkdir(parents=True, exist_ok=True)
    jcfg = JointConfig.make(**joint_overrides)
    runs = []
    for i in range(n):
        cfg = make_preset(preset, seed=seed, noise_seed=i, **sim_overrides)
        t0 = time.perf_counter()
        sim = simulate(cfg)
        t_sim = time.perf_counter() - t0
        if i == 0:
            io_truth.write_truth(out / "truth.h5", sim.truth)
        t0 = time.perf_counter()
        res = reconstruct_joint(sim.dataset, jcfg)
        t_joint = time.perf_counter() - t0
        res.config = dict(res.config, simulation=cfg.to_dict())
        path = out / f"joint_noise{i}.h5"
        io_results.write_result(path, res)
        h = res.history
        row = {
            "noise_seed": i,
            "file": path.name,
            "simulate_s": t_sim,
            "joint_s": t_joint,
            "joint_wall_s": float(np.asarray(h["wall_s"])[0]),
            "compile_s": float(np.asarray(h["compile_s"])[0]),
            "uncertainty_s": float(np.asarray(h["uncertainty_s"])[0]),
            "load_average_1min": float(os.getloadavg()[0]) if hasattr(os, "getloadavg") else None,
        }
        runs.append(row)
        if not quiet:
            print(
                f"realisation {i}: simulate {t_sim:.1f} s, joint {t_joint:.1f} s "
                f"(of which uncertainty {row['uncertainty_s']:.1f} s)",
                flush=True,
            )
    with open(out / "runs.json", "w") as fh:
        json.dump(
            {
                "runs": runs,
                "simulation": make_preset(preset, seed=seed, **sim_overrides).to_dict(),
                "joint": jcfg.to_dict(),
                "command": command,
                "git": git_state(),
                "wall_total_s": time.perf_counter() - t_start,
            },
            fh,
            indent=2,
        )
    return runs


# ----------------------------------------------------------------------------- analysis


def load(out: Path):
    """(results, truth maps on the common map grid, runs metadata) from a run folder."""
    from diffxas.analysis.resample import resample_truth
    from diffxas.data import results as io_results
    from diffxas.data import truth as io_truth

    meta = json.loads((out / "runs.json").read_text())
    results = [io_results.read_result(out / r["file"]) for r in meta["runs"]]
    m0 = results[0].maps
    for r in results[1:]:
        if r.maps.shape != m0.shape or not np.allclose(r.maps.origin, m0.origin) or r.maps.pixel_size != m0.pixel_size:
            raise SystemExit("realisations have different map grids: not the same scan")
    truth = io_truth.read_truth(out / "truth.h5")
    tr = resample_truth(truth, m0.pixel_size, m0.origin, m0.shape)
    return results, tr, meta


def calibration_stats(x: np.ndarray, s: np.ndarray, t: np.ndarray) -> dict:
    """Calibration numbers of one map.

    ``x``, ``s``: (N, P) estimates and predicted sigmas of N realisations at P pixels;
    ``t``: (P,) truth. Returns the fractions, ratios, biases (see the module docstring)
    plus the per-pixel arrays used by the figure (``z_truth``, ``z_mean``, ``emp``, ``pred``).
    """
    from scipy.stats import chi2

    n = x.shape[0]
    z_truth = (x - t[None]) / s
    xbar = x.mean(axis=0)
    var_dev = s**2 * (1.0 - 2.0 / n) + np.mean(s**2, axis=0)[None] / n
    z_mean = (x - xbar[None]) / np.sqrt(var_dev)
    emp = x.std(axis=0, ddof=1)
    pred = np.sqrt(np.mean(s**2, axis=0))
    ratio = emp / pred
    bias = (xbar - t) / pred
    return {
        "n_pixels": int(x.shape[1]),
        "truth_within_1sigma": float(np.mean(np.abs(z_truth) <= 1)),
        "truth_within_2sigma": float(np.mean(np.abs(z_truth) <= 2)),
        "mean_within_1sigma": float(np.mean(np.abs(z_mean) <= 1)),
        "mean_within_2sigma": float(np.mean(np.abs(z_mean) <= 2)),
        "median_ratio_emp_pred": float(np.median(ratio)),
        "median_ratio_expected": float(np.sqrt(chi2.median(n - 1) / (n - 1))),
        "rms_ratio_emp_pred": float(np.sqrt(np.mean(ratio**2))),
        "median_bias_sigma": float(np.median(bias)),
        "median_abs_bias_sigma": float(np.median(np.abs(bias))),
        "median_abs_bias_expected_unbiased": float(0.6745 / math.sqrt(n)),
        "median_pred_sigma": float(np.median(pred)),
        "median_emp_sigma": float(np.median(emp)),
        "rmse_vs_truth": float(np.sqrt(np.mean((x - t[None]) ** 2))),
        "median_error_per_realisation": [float(v) for v in np.median(x - t[None], axis=1)],
        "median_error_sigma_per_realisation": [float(v) for v in np.median(z_truth, axis=1)],
        "_z_truth": z_truth.ravel(),
        "_z_mean": z_mean.ravel(),
        "_emp": emp,
        "_pred": pred,
    }


def analyse(results, tr: dict, nv_fraction: float) -> tuple[dict, int]:
    """Per-map calibration numbers over the evaluation region; returns (stats, region size)."""
    nv_t = tr["n_v"]
    region = np.isfinite(nv_t) & (nv_t >= nv_fraction * np.nanmax(nv_t))
    for r in results:
        region &= np.asarray(r.maps.valid).astype(bool)
    out = {}
    for name in MAPS:
        if not all(name in r.maps.std for r in results) or name not in tr:
            continue
        x = np.stack([np.asarray(getattr(r.maps, name), np.float64) for r in results])
        s = np.stack([np.asarray(r.maps.std[name], np.float64) for r in results])
        t = np.asarray(tr[name], np.float64)
        ok = region & np.isfinite(t) & np.all(np.isfinite(x), axis=0) & np.all(np.isfinite(s) & (s > 0), axis=0)
        if not ok.any():
            continue
        out[name] = calibration_stats(x[:, ok], s[:, ok], t[ok])
    return out, int(region.sum())


# ----------------------------------------------------------------------------- outputs


def plot(stats: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    names = [n for n in DESCRIPTORS if n in stats]
    fig = Figure(figsize=(3.6 * len(names) + 0.4, 6.6), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False)
    g = np.linspace(-5, 5, 400)
    pdf = np.exp(-0.5 * g**2) / np.sqrt(2 * np.pi)
    for j, name in enumerate(names):
        st = stats[name]
        ax = axes[0, j]
        bins = np.linspace(-5, 5, 41)
        zm = np.clip(st["_z_mean"], -5, 5)
        zt = np.clip(st["_z_truth"], -5, 5)
        ax.hist(
            zm,
            bins=bins,
            density=True,
            histtype="stepfilled",
            alpha=0.35,
            color="C0",
            label=f"about realisation mean ({100 * st['mean_within_1sigma']:.0f} % in ±1σ)",
        )
        ax.hist(
            zt,
            bins=bins,
            density=True,
            histtype="step",
            lw=1.4,
            color="C3",
            label=f"about truth ({100 * st['truth_within_1sigma']:.0f} % in ±1σ)",
        )
        ax.plot(g, pdf, "k--", lw=1, label="N(0, 1)")
        ax.set_xlabel("z = error / predicted σ (clipped to ±5)")
        ax.set_title(LABELS.get(name, name), fontsize=10)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
        ax = axes[1, j]
        pred, emp = st["_pred"], st["_emp"]
        ax.loglog(pred, emp, ".", ms=3, color="C0", alpha=0.7)
        lo = float(np.nanmin([pred.min(), emp[emp > 0].min() if (emp > 0).any() else pred.min()]))
        hi = float(np.nanmax([pred.max(), emp.max()]))
        lims = (lo / 1.5, hi * 1.5)
        ax.plot(lims, lims, "k--", lw=1, label="empirical = predicted")
        ax.plot(
            lims,
            [v * st["median_ratio_expected"] for v in lims],
            "k:",
            lw=1,
            label=f"expected median at N={st['_n']} ({st['median_ratio_expected']:.2f}×)",
        )
        ax.set_xlim(*lims)
        ax.set_ylim(*lims)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("predicted σ (RMS over realisations)")
        ax.set_ylabel("empirical σ (std over realisations)")
        ax.set_title(
            f"median ratio {st['median_ratio_emp_pred']:.2f}, RMS ratio {st['rms_ratio_emp_pred']:.2f}", fontsize=9
        )
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=130)


def pct(v) -> str:
    return f"{100 * v:.0f} %"


def findings(stats: dict, info: dict) -> str:
    n = info["n_realisations"]
    exp_med = next(iter(stats.values()))["median_ratio_expected"] if stats else float("nan")
    lines = [
        f"# Calibration of the joint solver's standard-error maps ({info['mode']} mode)",
        "",
        f"Code (when the realisations were run): {info.get('git_commit', 'unknown')}"
        + (" with uncommitted changes in diffxas/" if info.get("git_dirty_diffxas") else "")
        + f". Preset `{info['preset']}` (phantom seed {info['seed']}), {n} Poisson noise realisations "
        f"(`noise_seed` 0..{n - 1}), joint solver at its defaults"
        + (f" with overrides {info['joint_overrides']}" if info["joint_overrides"] else "")
        + f" ({info['joint']['steps']} steps). Region: truth N_V >= {info['nv_fraction']:g} x max, valid in every "
        f"realisation: {info['n_region']} pixels (per map: those with a finite predicted σ in every realisation). "
        f"Total run time {info['wall_total_s']:.0f} s on {os.cpu_count()} CPU cores shared with other jobs (the "
        "1-minute load average after each realisation is in the last table when it was recorded; times are not "
        "benchmarks).",
        "",
        "Columns: fraction of (pixel, realisation) pairs with the truth within ±1σ / ±2σ of the estimate "
        "(calibrated and unbiased: 68 % / 95 %); the same for the deviation from the mean over the realisations, "
        "divided by its own predicted σ (finite-N corrected; noise only, no bias); median and pooled RMS of the "
        f"per-pixel ratio empirical σ (std over the {n} realisations) / predicted σ (calibrated: median "
        f"{exp_med:.2f} at N = {n}, RMS 1); bias (mean over realisations - truth) / σ: median and median absolute "
        f"value (unbiased: median |bias| {0.6745 / math.sqrt(n):.2f} from the noise of the mean alone); median "
        "predicted σ and empirical scatter in the map's units; RMSE against the truth.",
        "",
        "| map | px | truth ±1σ | truth ±2σ | mean ±1σ | mean ±2σ | median emp/pred | RMS emp/pred | "
        "median bias/σ | median abs bias/σ | median pred σ | median emp σ | RMSE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, st in stats.items():
        lines.append(
            f"| {name} | {st['n_pixels']} | {pct(st['truth_within_1sigma'])} | {pct(st['truth_within_2sigma'])} | "
            f"{pct(st['mean_within_1sigma'])} | {pct(st['mean_within_2sigma'])} | {st['median_ratio_emp_pred']:.2f} | "
            f"{st['rms_ratio_emp_pred']:.2f} | {st['median_bias_sigma']:+.2f} | {st['median_abs_bias_sigma']:.2f} | "
            f"{st['median_pred_sigma']:.3g} | {st['median_emp_sigma']:.3g} | {st['rmse_vs_truth']:.3g} |"
        )
    lines += ["", "## Observations (from the numbers above)", ""]
    for name, st in stats.items():
        noise_ok = 0.5 <= st["rms_ratio_emp_pred"] <= 1.5
        biased = st["median_abs_bias_sigma"] > 3 * st["median_abs_bias_expected_unbiased"]
        desc = (
            f"- **{name}**: scatter about the realisation mean {pct(st['mean_within_1sigma'])} / "
            f"{pct(st['mean_within_2sigma'])} within ±1σ / ±2σ, RMS empirical/predicted σ "
            f"{st['rms_ratio_emp_pred']:.2f}"
        )
        desc += (
            " — the predicted σ describes the noise"
            if noise_ok
            else (
                " — the predicted σ is too large"
                if st["rms_ratio_emp_pred"] < 0.5
                else " — the predicted σ is too small"
            )
        )
        desc += (
            f"; truth within ±1σ {pct(st['truth_within_1sigma'])}, median |bias| {st['median_abs_bias_sigma']:.2f} σ"
            + (
                f" (noise alone: {st['median_abs_bias_expected_unbiased']:.2f}): bias-dominated, the error "
                "against the truth is mostly a systematic (model/solver) error that the σ map does not contain."
                if biased
                else f" (noise alone: {st['median_abs_bias_expected_unbiased']:.2f})."
            )
        )
        lines.append(desc)
    desc = [d for d in DESCRIPTORS if d in stats]
    lines += [
        "",
        "Per realisation (median error against the truth over the region, in the map's units and in "
        "predicted σ; times on the machine that ran it):",
        "",
        "| noise seed | "
        + " | ".join(f"{d} median error" for d in desc)
        + " | simulate (s) | joint (s) | of which compile (s) | uncertainty (s) | load average |",
        "|---|" + "---|" * len(desc) + "---|---|---|---|---|",
    ]
    for i, r in enumerate(info["runs"]):
        errs = [
            f"{stats[d]['median_error_per_realisation'][i]:+.3g} ({stats[d]['median_error_sigma_per_realisation'][i]:+.2f}σ)"
            for d in desc
        ]
        lines.append(
            f"| {r['noise_seed']} | " + " | ".join(errs) + f" | {r['simulate_s']:.1f} | {r['joint_wall_s']:.1f} | "
            f"{r['compile_s']:.1f} | {r['uncertainty_s']:.1f} | "
            + (f"{r['load_average_1min']:.1f} |" if r.get("load_average_1min") is not None else "n/a |")
        )
    lines += [
        "",
        "![calibration](calibration.png)",
        "",
        "Top: z-scores about the realisation mean (filled) and about the truth (line) vs N(0, 1). Bottom: "
        "empirical vs predicted σ per pixel (dashed: equality; dotted: the median expected for calibrated "
        "errors with this N).",
        "",
        f"Regenerate: `{info['command']}` (add `--analyse-only` to re-analyse the saved results files).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="experiments/calibration.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny preset, 4 realisations (minutes on 2 CPU cores)")
    p.add_argument(
        "-n", "--realisations", type=int, default=None, help="number of noise realisations (quick 4, full 8)"
    )
    p.add_argument("--seed", type=int, default=0, help="phantom/scan seed (default 0)")
    p.add_argument("--nv-fraction", type=float, default=0.25, help="region: truth N_V >= this x max (default 0.25)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a JointConfig field (joint.steps=100) or a SimConfig field (simulate.dose=1e5)",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default experiments/runs/calibration-<mode>)")
    p.add_argument("--results", metavar="DIR", help="output folder (default experiments/results/calibration-<mode>)")
    p.add_argument("--analyse-only", action="store_true", help="re-analyse the results files in the run folder")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)

    mode = "quick" if args.quick else "full"
    preset = MODES[mode]["preset"]
    n = args.realisations or MODES[mode]["n"]
    if n < 2:
        p.error("at least 2 realisations are needed")
    out = Path(args.out) if args.out else HERE / "runs" / f"calibration-{mode}"
    res_dir = Path(args.results) if args.results else HERE / "results" / f"calibration-{mode}"
    joint_over, sim_over = {}, {}
    for item in args.overrides:
        key, _, val = item.partition("=")
        sect, _, field = key.partition(".")
        if sect not in ("joint", "simulate") or not field:
            p.error(f"--set needs joint.FIELD=VALUE or simulate.FIELD=VALUE, got {item!r}")
        (joint_over if sect == "joint" else sim_over)[field] = parse_value(val)

    if args.analyse_only:
        meta = json.loads((out / "runs.json").read_text())
        runs = meta["runs"]
    else:
        command = "python experiments/calibration.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("-q", "--quiet")
        )
        runs = run_realisations(
            preset, n, args.seed, joint_over, sim_over, out, quiet=args.quiet, command=command.strip()
        )
    results, tr, meta = load(out)
    wall = meta.get("wall_total_s") or sum(r["simulate_s"] + r["joint_s"] for r in runs)
    stats, n_region = analyse(results, tr, args.nv_fraction)
    for st in stats.values():
        st["_n"] = len(results)

    from diffxas.solvers.joint.config import JointConfig

    info = {
        "mode": mode,
        "preset": preset,
        "seed": args.seed,
        "n_realisations": len(results),
        "nv_fraction": args.nv_fraction,
        "n_region": n_region,
        "joint_overrides": joint_over,
        "simulation_overrides": sim_over,
        "simulation": meta["simulation"],
        "joint": meta["joint"],
        "joint_defaults": JointConfig().to_dict(),
        "runs": runs,
        "wall_total_s": wall,
        "command": meta.get("command") or f"python experiments/calibration.py{' --quick' if args.quick else ''}",
        **(meta.get("git") or git_state()),
    }
    res_dir.mkdir(parents=True, exist_ok=True)
    plot(
        stats,
        res_dir / "calibration.png",
        f"σ-map calibration: {preset}, {len(results)} noise realisations, joint defaults, {n_region} region pixels",
    )
    (res_dir / "findings.md").write_text(findings(stats, info))
    public = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in stats.items()}
    with open(res_dir / "summary.json", "w") as fh:
        json.dump({**info, "maps": public}, fh, indent=2, allow_nan=False)
        fh.write("\n")
    if not args.quiet:
        print((res_dir / "findings.md").read_text())
    return res_dir


if __name__ == "__main__":
    main()
