"""Study: designed energies (diffxas design-energies) vs uniform and seed-like sampling at equal N.

For each budget N four samplings of the seed's range (5420-5540 eV) are simulated and
reconstructed with the joint solver (defaults), on the same phantoms:

* ``designed``: :func:`diffxas.app.design.design_energies` with ``shifts=(0,)``, the local
  design (normalised A-optimality on the three seed descriptors, greedy + exchange, 0.25 eV
  candidates), for a sample model that is the preset's phantom with a *different* seed
  (``DESIGN_SEED``) from the evaluated ones: the design knows the kind of sample (the
  preset), not the sample;
* ``designed-robust``: the same with the default ensemble of chemical shifts (``SHIFTS``,
  what ``diffxas design-energies`` does by default);
* ``uniform``: N energies equally spaced in eV over the range (on the 0.25 eV grid);
* ``seed-like``: N of the seed's 40 energies spread evenly in index (``simulate --energies N``).

Reference lines: two-step and joint at the seed's 40 energies (joint runs only the
samplings; both methods run the reference). Outputs (results folder):
``design.png`` (achieved map errors and ARI vs N), ``design_predicted.png`` (Cramér-Rao
prediction vs achieved RMSE), ``designs.json`` (every energy list and its predicted std),
``findings.md`` and ``summary.csv``.

    python experiments/design.py --quick        # tiny geometry, seed's range, N = 8, 12, 16, 24 (1 seed): 17 points,
                                                # measured 39 min on 2 CPU cores shared with other jobs (see findings.md)
    python experiments/design.py                # small preset, 3 seeds, N = 8, 12, 16, 20, 24 (GPU)

Only the public API is used: :mod:`diffxas.app.design` and :func:`diffxas.app.sweep.runner.run` (the
energy lists go in as ``simulate.energies`` of a linked axis).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import common

STUDY = "design"
RANGE = (5420.0, 5540.0)  # the seed's range
DESIGN_SEED = 100  # phantom seed of the sample model (not among the evaluated seeds)
SHIFTS = (-4.0, -2.0, 0.0, 2.0, 4.0)  # "designed-robust" (= diffxas.app.design.DEFAULT_SHIFTS, the CLI default): +-4 eV
SAMPLINGS = ("designed", "designed-robust", "uniform", "seed-like")
STYLE = {
    "designed": dict(color="tab:green", marker="D"),
    "designed-robust": dict(color="tab:purple", marker="^"),
    "uniform": dict(color="tab:gray", marker="v"),
    "seed-like": dict(color="tab:orange", marker="o"),
}
PREDICTED = {
    "edge_energy": "edge_energy_rmse",
    "pre_edge_norm": "pre_edge_norm_rmse",
    "ne_eff_per_nv": "ne_eff_per_nv_rmse",
}

#: mode -> preset, evaluated seeds, budgets, base configuration (joint/two-step budgets as in energies.toml)
MODES = {
    "quick": dict(preset="tiny", seeds=[0], budgets=[8, 12, 16, 24], base={"joint": {}, "twostep": {}}),
    "full": dict(
        preset="small",
        seeds=[0, 1, 2],
        budgets=[8, 12, 16, 20, 24],
        base={
            "joint": {"steps": 1000},
            "twostep": {
                "epie": {"epochs": 600, "probe_update_start": 10, "kk_start": 360, "kk_every": 20, "decay_start": 450}
            },
        },
    ),
}


def make_designs(mode: dict) -> dict:
    """Energy lists of the three samplings at every budget, with their predicted std."""
    from diffxas.app import design as D
    from diffxas.simulate.presets import SEED_ENERGIES, preset

    t0 = time.perf_counter()
    cfg = preset(mode["preset"], seed=DESIGN_SEED)
    model = D.sample_from_preset(cfg, e_range=RANGE)
    grid = D.candidate_grid(*RANGE, D.DEFAULT_STEP)
    cis = [D.candidate_information(D.shifted(model, x), grid) for x in SHIFTS]
    ci = cis[SHIFTS.index(0.0)]
    t_info = time.perf_counter() - t0
    out = {
        "range": list(RANGE),
        "design_seed": DESIGN_SEED,
        "preset": mode["preset"],
        "sample": model.source,
        "information_s": t_info,
        "shifts": list(SHIFTS),
        "budgets": {},
    }
    for n in mode["budgets"]:
        t1 = time.perf_counter()
        d = D.design_energies(model, n, RANGE, shifts=(0.0,), ci=ci)
        t2 = time.perf_counter()
        r = D.design_energies(model, n, RANGE, shifts=SHIFTS, ci=cis)
        t3 = time.perf_counter()
        samp = dict(d.samplings)
        samp["designed-robust"] = r.samplings["designed"]
        out["budgets"][str(n)] = {
            "samplings": samp,
            "optimiser": d.optimiser,
            "optimiser_robust": r.optimiser,
            "design_s": t2 - t1,
            "design_robust_s": t3 - t2,
        }
        print(D.format_design(d), flush=True)
        print("robust:", D.format_design(r), flush=True)
    d40 = D.predicted_errors(ci, SEED_ENERGIES)
    out["seed40"] = d40
    out["criterion"] = d.criterion
    out["wall_s"] = time.perf_counter() - t0
    return out


def sweep_spec(mode: dict, designs: dict, overrides: dict) -> dict:
    from diffxas.simulate.presets import SEED_ENERGIES

    values = []
    for n in mode["budgets"]:
        for s in SAMPLINGS:
            samp = designs["budgets"][str(n)]["samplings"].get(s)
            if samp is not None:
                values.append({"label": f"{s} N={n}", "simulate.energies": samp["energies"]})
    values.append({"label": "seed 40", "simulate.energies": list(SEED_ENERGIES), "methods": ["two-step", "joint"]})
    base = {
        "methods": ["joint"],
        "simulate": {"preset": mode["preset"]},
        "cluster": {"k": 5, "seeds": 1, "n_init": 10},
        **mode["base"],
    }
    for k, v in overrides.items():  # --set: dotted base keys
        node = base
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return {
        "sweep": {"name": STUDY, "description": "designed vs uniform vs seed-like energies at equal N"},
        "base": base,
        "axes": {"simulate.seed": mode["seeds"], "sampling": values},
    }


def annotate(rows):
    """Add ``sampling`` and ``N`` columns from the linked axis label."""
    out = []
    for r in rows:
        lab = str(r.get("sampling", ""))
        if lab == "seed 40":
            out.append({**r, "sampling": "seed 40", "N": 40})
        else:
            s, _, n = lab.partition(" N=")
            out.append({**r, "sampling": s, "N": int(n) if n.isdigit() else None})
    return out


def ref_value(rows, metric, method):
    g = common.stats_table([r for r in rows if r["sampling"] == "seed 40"], "N", ["method"], metric).get((method,), [])
    g = [x for x in g if x["n"]]
    return g[0]["mean"] if g else None


def match_n(rows, metric, lower, ref, sampling="designed"):
    """Smallest tested N from which the sampling's joint mean meets ``ref`` at every larger tested N."""
    t = common.stats_table([r for r in rows if r["sampling"] == sampling], "N", ["method"], metric).get(("joint",), [])
    best = None
    for g in sorted((g for g in t if g["n"]), key=lambda g: -g["N"]):
        if (g["mean"] <= ref) if lower else (g["mean"] >= ref):
            best = g
        else:
            break
    return best


def plot_predicted(rows, designs, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.0))
    for ax, (desc, metric) in zip(axes, PREDICTED.items()):
        for s in SAMPLINGS:
            ns = sorted(int(n) for n in designs["budgets"])
            if not any(designs["budgets"][str(n)]["samplings"].get(s) for n in ns):
                continue
            pred = [
                (n, designs["budgets"][str(n)]["samplings"][s]["std"][desc])
                for n in ns
                if designs["budgets"][str(n)]["samplings"].get(s)
            ]
            ax.plot(
                [p[0] for p in pred],
                [p[1] for p in pred],
                linestyle="--",
                alpha=0.7,
                **STYLE[s],
                label=f"{s} predicted (CRB)",
            )
            t = common.stats_table([r for r in rows if r["sampling"] == s], "N", ["method"], metric).get(("joint",), [])
            pts = sorted((g["N"], g["mean"]) for g in t if g["n"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="-", **STYLE[s], label=f"{s} achieved (joint)")
        ax.axhline(designs["seed40"]["std"][desc], color="k", linestyle=":", alpha=0.6, label="seed 40 predicted")
        ax.set_yscale("log")
        ax.set_xlabel("number of energies N")
        ax.set_ylabel(common.METRICS[metric][0])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Predicted (Cramér-Rao, per-pixel) vs achieved map RMSE")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def analyse(rows, info, res: Path, designs: dict) -> list[str]:
    rows = annotate(rows)
    plot_rows = [r for r in rows if r["sampling"] in SAMPLINGS and r["method"] == "joint"]

    def hl(metric):
        out = []
        for method, st in (
            ("two-step", dict(color="tab:blue", linestyle=":")),
            ("joint", dict(color="tab:red", linestyle=":")),
        ):
            v = ref_value(rows, metric, method)
            if v is not None:
                out.append((v, f"{method}, seed's 40 energies", st))
        return out

    common.plot_study(
        plot_rows,
        "N",
        res / f"{STUDY}.png",
        series=["sampling"],
        xlabel="number of energies N",
        hlines=hl,
        title="Joint solver: designed vs uniform vs seed-like energies (dotted: seed's 40)",
    )
    plot_predicted(rows, designs, res / f"{STUDY}_predicted.png")
    sec = [
        "## Achieved (joint solver; mean ± std over seeds)",
        "",
        common.markdown_table([r for r in rows if r["sampling"] in SAMPLINGS], "N", ["sampling"]),
        "",
        "Reference, the seed's 40 energies:",
        "",
        common.markdown_table([r for r in rows if r["sampling"] == "seed 40"], "N", ["method"]),
        "",
    ]
    # predicted
    sec += [
        "## Predicted (Cramér-Rao bound, rms over the sample model's pixels) and achieved RMSE",
        "",
        "| N | sampling | criterion | edge energy pred / achieved (eV) | PE/Δμt pred / achieved (eV) | Re[Ne]/N_V pred / achieved |",
        "|---|---|---|---|---|---|",
    ]
    for n in sorted(int(k) for k in designs["budgets"]):
        for s in SAMPLINGS:
            p = designs["budgets"][str(n)]["samplings"].get(s)
            if p is None:
                continue
            cells = []
            for desc, metric in PREDICTED.items():
                t = common.stats_table([r for r in rows if r["sampling"] == s], "N", ["method"], metric).get(
                    ("joint",), []
                )
                a = next((g["mean"] for g in t if g["N"] == n and g["n"]), float("nan"))
                cells.append(f"{common.fmt(p['std'][desc])} / {common.fmt(a)}")
            sec.append(f"| {n} | {s} | {common.fmt(p['criterion'])} | " + " | ".join(cells) + " |")
    s40 = designs["seed40"]
    sec.append(
        f"| 40 | seed's 40 | {common.fmt(s40['criterion'])} | "
        + " | ".join(
            f"{common.fmt(s40['std'][d])} / {common.fmt(ref_value(rows, m, 'joint'))}" for d, m in PREDICTED.items()
        )
        + " |"
    )
    sec += [
        "",
        "Achieved = joint solver's map RMSE over the evaluation region. The criterion is 1 with every "
        "0.25 eV candidate measured.",
        "",
    ]
    # where designed reaches two-step at 40
    sec += ["## Where the designed energies reach two-step at the seed's 40 energies", ""]
    for metric, (label, lower) in common.METRICS.items():
        ref = ref_value(rows, metric, "two-step")
        if ref is None:
            continue
        parts = []
        for s in SAMPLINGS:
            best = match_n(rows, metric, lower, ref, s)
            parts.append(f"{s}: " + (f"N = {best['N']} ({common.fmt(best['mean'])})" if best else "none"))
        sec.append(
            f"- **{label}** (two-step at 40: {common.fmt(ref)}) — joint meets it from (at every larger tested N): "
            + "; ".join(parts)
        )
    # designed vs others, per N
    sec += ["", "## All samplings at each N (joint)", ""]
    for metric, (label, lower) in common.METRICS.items():
        if metric == "coverage":
            continue
        parts = []
        for n in sorted(int(k) for k in designs["budgets"]):
            vals = {}
            for s in SAMPLINGS:
                t = common.stats_table([r for r in rows if r["sampling"] == s], "N", ["method"], metric).get(
                    ("joint",), []
                )
                vals[s] = next((g["mean"] for g in t if g["N"] == n and g["n"]), None)
            if vals["designed"] is None:
                continue
            best = (
                min((v, s) for s, v in vals.items() if v is not None)
                if lower
                else max((v, s) for s, v in vals.items() if v is not None)
            )
            parts.append(f"N={n}: " + " / ".join(common.fmt(vals[s]) for s in SAMPLINGS) + f" (best: {best[1]})")
        sec.append(f"- **{label}** ({' / '.join(SAMPLINGS)}) — " + "; ".join(parts))
    sec += ["", "## Designed energies", ""]
    for n in sorted(int(k) for k in designs["budgets"]):
        b = designs["budgets"][str(n)]
        for s, key, tkey in (
            ("designed", "optimiser", "design_s"),
            ("designed-robust", "optimiser_robust", "design_robust_s"),
        ):
            if s not in b["samplings"]:
                continue
            o = b[key]
            sec.append(
                f"- {s} N={n}: "
                + ", ".join(f"{e:g}" for e in b["samplings"][s]["energies"])
                + f" (greedy {common.fmt(o['greedy_criterion'])} → exchange {common.fmt(o['criterion'])}, "
                f"{o['exchanges']} exchanges, {b.get(tkey, float('nan')):.0f} s)"
            )
    sec.append(
        f"\n`designed`: local design at the sample model; `designed-robust`: the mean criterion over the "
        f"sample model moved by {designs.get('shifts')} eV (pseudo-Bayesian over the chemical shift)."
    )
    src = designs["sample"]
    sec += [
        "",
        f"Sample model of the design: preset `{designs['preset']}` phantom seed {designs['design_seed']} "
        f"(not an evaluated seed), {src['pixels']} pixels with N_V ≥ 25 % of max, fluence "
        f"{common.fmt(src['fluence'])} photons/pixel/energy ({src['fluence_from']}). Design time (information of "
        f"{int((RANGE[1] - RANGE[0]) / 0.25) + 1} candidates + all budgets): {designs['wall_s']:.1f} s.",
        "",
        "## Secondary metrics (joint)",
        "",
        common.markdown_table(
            [r for r in rows if r["sampling"] in SAMPLINGS], "N", ["sampling"], metrics=common.SECONDARY
        ),
        "",
        f"Plots: `{STUDY}.png` (achieved), `{STUDY}_predicted.png` (predicted vs achieved).",
    ]
    return sec


def main(argv=None):
    from diffxas.app.sweep import cache as sweep_cache
    from diffxas.app.sweep import cli as sweep_cli
    from diffxas.app.sweep import runner as sweep_runner
    from diffxas.app.sweep import spec as sweep_spec
    from diffxas.app.sweep import summary as sweep_summary

    args = common.parse_args(STUDY, __doc__, argv)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    out = Path(args.out) if args.out else common.HERE / "runs" / f"{STUDY}-{mode_name}"
    res = common.results_dir(STUDY, args)
    overrides = sweep_cli._parse_set(args.overrides)
    t0 = time.time()
    dpath = res / "designs.json"
    if args.analyse_only and dpath.exists():
        designs = json.loads(dpath.read_text())
    else:
        designs = make_designs(mode)
        dpath.write_text(json.dumps(designs, indent=1, default=str) + "\n")
    spec = sweep_spec(mode, designs, overrides)
    info = {
        "study": STUDY,
        "mode": mode_name,
        "spec": "experiments/design.py (sweep built in the script)",
        "out": str(out),
        "overrides": overrides,
    }
    if args.analyse_only:
        rows = sweep_summary.read_summary(out)
        info["wall_s"] = json.loads((out / "summary.json").read_text()).get("wall_s") or 0.0
    else:
        rows = list(
            sweep_runner.run(
                spec, out, workers=args.workers, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet
            )
        )
        info["wall_s"] = time.time() - t0
    info["code"] = common.code_version(out, rows) or common._describe_git(sweep_cache.git_state())
    info["spec_obj"] = sweep_spec.load_spec(spec)
    try:
        import jax

        info["device"] = str(jax.devices()[0])
    except Exception:  # pragma: no cover
        info["device"] = "?"
    common.copy_summary(info, res)
    sections = analyse(rows, info, res, designs)
    common.write_findings(res / "findings.md", STUDY, info, sections, rows)
    print(f"results in {res}")
    return res


if __name__ == "__main__":
    main()
