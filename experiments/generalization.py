"""Generalization study: joint vs two-step on the randomized sample family (issue 24).

    python experiments/generalization.py --quick                 # family-tiny, 2 test draws, minutes
    python experiments/generalization.py --quick --split train   # the same on train draws
    python experiments/generalization.py                         # family, 100 test draws x 4 cases (GPU)

The split of family seeds is fixed (docs/generalization.md): ``train`` = 0-99 (look at these
while choosing defaults and priors), ``test`` = 1000-1099 (scored only). Every case
(photons per frame 1e6 and 1e7 x 16 and 40 energies; quick: 8 and 15 of family-tiny's 15)
runs both methods on the same simulated data; the script reports, per draw and as mean ±
standard deviation over draws, each method's errors over all evaluated pixels and over the
bulk (>= 45 nm from any domain boundary or rim), the joint/two-step ratios, the per-domain
bias of the edge energy (domain-mean part of its RMSE), the calibration of the joint's std
maps and the wall times.

Only public functions of diffxas are used (``diffxas.app.sweep.runner.run``/``read_summary``; the
per-point ``metrics-<method>.json`` files written by :func:`diffxas.analysis.evaluate.evaluate`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

STUDY = "generalization"
#: The fixed split of family seeds (never change it: results are comparable only on one split).
SPLITS = {"train": range(100), "test": range(1000, 1100)}
#: Draws per split in quick mode (the first ones of the split).
QUICK_SEEDS = 2
#: Descriptors reported: name -> (label, how the error is read from the metrics).
DESCRIPTORS = {"edge_energy": "edge energy (eV)", "pre_edge_norm": "PE/Δμt (eV)", "ne_eff_per_nv": "Re[Ne]/N_V"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="experiments/generalization.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="family-tiny, few draws (minutes on 2 CPU cores)")
    p.add_argument("--split", choices=sorted(SPLITS), default="test", help="which seeds (default test)")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help=f"use the first N seeds of the split (default: all 100; quick {QUICK_SEEDS})",
    )
    p.add_argument("--out", metavar="DIR", help="sweep folder (default experiments/runs/generalization-<mode>-<split>)")
    p.add_argument(
        "--results", metavar="DIR", help="findings folder (default experiments/results/generalization-<mode>-<split>)"
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
        help="override a base key (e.g. joint.steps=100); recorded in findings.md",
    )
    p.add_argument("--analyse-only", action="store_true", help="only re-analyse an existing sweep folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def seeds_of(split: str, n: int | None) -> list[int]:
    s = list(SPLITS[split])
    if n is not None:
        if not 1 <= n <= len(s):
            raise SystemExit(f"--seeds must be between 1 and {len(s)}, got {n}")
        s = s[:n]
    return s


def spec_mapping(split: str, n: int | None, quick: bool) -> dict[str, Any]:
    spec = tomllib.loads((HERE / f"{STUDY}.toml").read_text())
    seeds = seeds_of(split, n if n is not None else (QUICK_SEEDS if quick else None))
    spec["axes"]["simulate.seed"] = seeds
    if quick:
        spec["profiles"]["quick"].setdefault("axes", {})["simulate.seed"] = seeds
    return spec


# ----------------------------------------------------------------------------- analysis


def _f(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def point_record(out: Path, row: dict[str, Any]) -> dict[str, Any] | None:
    """The numbers of one point x method, from its metrics file (None if it failed)."""
    if row.get("status") != "ok":
        return None
    path = out / row["dir"] / f"metrics-{row['method']}.json"
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    an = m.get("anatomy") or {}
    rec: dict[str, Any] = {
        "seed": row.get("simulate.seed"),
        "dose": row.get("simulate.dose"),
        "n_energies": row.get("energies.count"),
        "method": row["method"],
        "coverage": _f(m.get("coverage")),
        "ari": _f((m.get("clusters") or {}).get("ari")),
        "n_v_rel_rms": _f((m.get("n_v") or {}).get("rel_rms")),
        "wall_s": _f((m.get("timing") or {}).get("method_wall_s")),
    }
    for name in DESCRIPTORS:
        a = an.get(name) or {}
        rec[f"{name}_all"] = _f((m.get(name) or {}).get("rmse"))
        rec[f"{name}_bulk"] = _f((a.get("bulk") or {}).get("rmse"))
        rec[f"{name}_near"] = _f((a.get("near") or {}).get("rmse"))
        rec[f"{name}_domain_mean"] = _f(a.get("domain_mean_rms"))
        rec[f"{name}_within"] = _f(a.get("within_domain_rms"))
        cb = a.get("calibration_bulk") or {}
        rec[f"{name}_bulk_within_1sigma"] = _f(cb.get("within_1sigma"))
        rec["near_fraction"] = _f(a.get("near_fraction"))
    return rec


def _ms(vals) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "n/a"
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return f"{mean:.3g} ± {sd:.2g} (n={len(v)})"


def _g(v, spec=".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def analyse(recs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """findings.md: per-draw table and mean ± std over draws of the joint/two-step ratios."""
    by = {}
    for r in recs:
        by[(r["dose"], r["n_energies"], r["seed"], r["method"])] = r
    cases = sorted({(r["dose"], r["n_energies"]) for r in recs})
    seeds = sorted({r["seed"] for r in recs})
    L = [
        f"# Generalization study ({info['mode']}, {info['split']} split)",
        "",
        f"Code: {info.get('code', '?')}; seeds {seeds[0] if seeds else '-'}..{seeds[-1] if seeds else '-'} "
        f"({len(seeds)} draws); wall {info.get('wall_s', 0):.0f} s; overrides {info.get('overrides') or 'none'}.",
        "",
        "Errors are RMSEs over the evaluation region (truth N_V >= 25 % of its maximum; `all`) and over its bulk "
        "(>= 45 nm from any true domain boundary or rim; `bulk`). Ratio = joint / two-step on the same data "
        "(< 1: the joint is better).",
        "",
    ]
    for dose, ne in cases:
        L += [f"## {dose:g} photons per frame, {ne} energies", ""]
        head = ["seed"]
        for name in DESCRIPTORS:
            head += [f"{name} all J/T", f"{name} bulk J/T"]
        head += ["N_V rel J/T", "ARI J−T", "edge dom.-mean J/T (eV)", "joint bulk 1σ (edge)", "wall J/T (s)"]
        L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        ratios: dict[str, list] = {}
        for s in seeds:
            j, t = by.get((dose, ne, s, "joint")), by.get((dose, ne, s, "two-step"))
            if j is None or t is None:
                L.append(f"| {s} | " + " | ".join(["failed"] * (len(head) - 1)) + " |")
                continue
            cells = [str(s)]
            for name in DESCRIPTORS:
                for part in ("all", "bulk"):
                    r = _ratio(j[f"{name}_{part}"], t[f"{name}_{part}"])
                    ratios.setdefault(f"{name}_{part}", []).append(r)
                    cells.append(f"{_g(j[f'{name}_{part}'])}/{_g(t[f'{name}_{part}'])} = {_g(r, '.2f')}x")
            rn = _ratio(j["n_v_rel_rms"], t["n_v_rel_rms"])
            ratios.setdefault("n_v", []).append(rn)
            cells.append(f"{_g(rn, '.2f')}x")
            dari = j["ari"] - t["ari"] if j["ari"] is not None and t["ari"] is not None else None
            ratios.setdefault("ari_diff", []).append(dari)
            cells.append(_g(dari, "+.2f"))
            cells.append(f"{_g(j['edge_energy_domain_mean'])}/{_g(t['edge_energy_domain_mean'])}")
            c1 = j["edge_energy_bulk_within_1sigma"]
            ratios.setdefault("calib", []).append(c1)
            cells.append("n/a" if c1 is None else f"{100 * c1:.0f} %")
            cells.append(f"{_g(j['wall_s'], '.0f')}/{_g(t['wall_s'], '.0f')}")
            L.append("| " + " | ".join(cells) + " |")
        L += ["", "Mean ± standard deviation over draws:", ""]
        for name, label in DESCRIPTORS.items():
            L.append(
                f"- {label}: all {_ms(ratios.get(f'{name}_all', []))}x, bulk {_ms(ratios.get(f'{name}_bulk', []))}x"
            )
        L.append(
            f"- N_V relative RMS error: {_ms(ratios.get('n_v', []))}x; ARI joint − two-step "
            f"{_ms(ratios.get('ari_diff', []))}"
        )
        L.append(
            f"- joint's edge-energy std maps: bulk pixels within 1σ {_ms(ratios.get('calib', []))} (target 0.55-0.80)"
        )
        L.append("")
    L += [
        "Targets (issue 24, on the test split): bulk edge energy and PE/Δμt <= 0.5x, bulk Re[Ne]/N_V <= 0.8x; "
        "all pixels edge energy <= 0.8x; 55-80 % of bulk pixels within 1σ of the joint's std maps.",
        "",
    ]
    return "\n".join(L)


def main(argv=None) -> Path:
    args = parse_args(argv)
    from diffxas.app.sweep import cache as sweep_cache
    from diffxas.app.sweep import runner as sweep_runner
    from diffxas.app.sweep import summary as sweep_summary

    mode = "quick" if args.quick else "full"
    out = Path(args.out) if args.out else HERE / "runs" / f"{STUDY}-{mode}-{args.split}"
    res = Path(args.results) if args.results else HERE / "results" / f"{STUDY}-{mode}-{args.split}"
    info: dict[str, Any] = {"mode": mode, "split": args.split, "out": str(out), "overrides": args.overrides}
    t0 = time.time()
    if args.analyse_only:
        rows = sweep_summary.read_summary(out)
    else:
        spec = spec_mapping(args.split, args.seeds, args.quick)
        over = {}
        for item in args.overrides:
            k, _, v = item.partition("=")
            from diffxas.app.config import parse_value

            over[k.strip()] = parse_value(v)
        rows = list(
            sweep_runner.run(
                spec,
                out,
                workers=args.workers,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
                profile="quick" if args.quick else None,
                overrides=over or None,
            )
        )
    info["wall_s"] = time.time() - t0
    g = sweep_cache.git_state()
    info["code"] = f"diffxas git {g.get('git_commit')}" + (" (uncommitted changes)" if g.get("git_dirty") else "")
    recs = [r for r in (point_record(out, row) for row in rows) if r is not None]
    res.mkdir(parents=True, exist_ok=True)
    (res / "records.json").write_text(json.dumps({"info": info, "records": recs}, indent=1) + "\n")
    path = res / "findings.md"
    path.write_text(analyse(recs, info))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
