"""Study 2 (energies): map errors and ARI vs the number of energies (40 down to 8), chosen
uniformly in index or concentrated on the pre-edge and edge; reports the smallest number of
energies at which the joint method is at least as good as two-step with all 40.

    python experiments/energies.py --quick      # tiny geometry, 40/16/8 energies, 1 seed
    python experiments/energies.py              # small preset, 40..8, 3 seeds (GPU)
"""

from __future__ import annotations

import common

STUDY = "energies"


def match_counts(rows, full_count: int) -> list[str]:
    """For each metric and choice: the smallest count from which on (all larger tested counts too) joint's
    mean is at least as good as two-step's with all energies."""
    out = []
    for metric, (label, lower) in common.METRICS.items():
        ref = [
            g
            for g in common.stats_table(rows, "energies.count", ["method"], metric).get(("two-step",), [])
            if g["energies.count"] == full_count and g["n"]
        ]
        if not ref:
            continue
        base = ref[0]["mean"]
        parts = []
        for choice in ("uniform", "edge"):
            sel = [
                r for r in rows if r.get("energies.choice") in (choice, None) or r.get("energies.count") == full_count
            ]
            t = common.stats_table(sel, "energies.count", ["method"], metric).get(("joint",), [])
            # smallest n such that joint meets the reference at every tested count >= n
            best = None
            for g in sorted((g for g in t if g["n"]), key=lambda g: -g["energies.count"]):
                if (g["mean"] <= base) if lower else (g["mean"] >= base):
                    best = g
                else:
                    break
            parts.append(
                f"{choice}: "
                + (
                    f"{best['energies.count']} (joint {common.fmt(best['mean'])})"
                    if best
                    else "not even at the largest tested count"
                )
            )
        out.append(
            f"- **{label}** (two-step at {full_count}: {common.fmt(base)}) — joint reaches it at: " + "; ".join(parts)
        )
    return out


def analyse(rows, info, res):
    x = "energies.count"
    counts = sorted({r.get(x) for r in rows if r.get(x) is not None})
    full = max(counts) if counts else 40
    # the all-energies points have no choice: they belong to both curves
    expanded = []
    for r in rows:
        if r.get(x) == full and not r.get("energies.choice"):
            for c in ("uniform", "edge"):
                expanded.append({**r, "energies.choice": c})
        else:
            expanded.append(r)

    def ref_lines(metric):
        t = common.stats_table(rows, x, ["method"], metric).get(("two-step",), [])
        g = [g for g in t if g[x] == full and g["n"]]
        return (
            [(g[0]["mean"], f"two-step, {full} energies", dict(color="tab:blue", linestyle=":", alpha=0.6))]
            if g
            else []
        )

    return common.standard_sections(
        STUDY,
        expanded,
        res,
        x,
        series=["method", "energies.choice"],
        extra=["", f"## Where joint matches two-step with all {full} energies", ""] + match_counts(rows, full),
        compare=[
            (f"Joint vs two-step at each count ({c} choice)", {"energies.choice": c}) for c in ("uniform", "edge")
        ],
        plot_note=f" (dotted line: two-step with all {full} energies)",
        xlabel="number of energies",
        hlines=ref_lines,
        title="Map errors and ARI vs number of energies (mean ± std over seeds)",
    )


def main(argv=None):
    return common.study_main(STUDY, __doc__, analyse, argv)


if __name__ == "__main__":
    main()
