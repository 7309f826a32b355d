"""Study 4 (realism): unknown position errors (20 nm rms) and energy-dependent probe drift
(50 nm over the scan), with and without refinement, both methods.

    python experiments/realism.py --quick       # tiny preset, 1 seed
    python experiments/realism.py               # small preset, 3 seeds (GPU)
"""

from __future__ import annotations

import common

STUDY = "realism"
ORDER = ["ideal", "positions", "drift", "both"]


def analyse(rows, info, args):
    res = common.results_dir(STUDY, args)
    common.copy_summary(info, res)
    x = "errors"
    common.plot_study(rows, x, res / f"{STUDY}.png", series=["method", "refine"], order=ORDER,
                      xlabel="simulated errors", title="Position errors / probe drift, refinement off vs on")
    sec = ["## Results (mean ± std over seeds)", "", common.markdown_table(rows, x, ["method", "refine"], order=ORDER)]
    for ref in ("off", "on"):
        sec += ["", f"## Joint vs two-step, refinement {ref}", ""] + common.compare_methods(rows, x, order=ORDER,
                                                                                           where={"refine": ref})
    sec += ["", "## Secondary metrics", "", common.markdown_table(rows, x, ["method", "refine"],
                                                                  metrics=common.SECONDARY, order=ORDER)]
    sec += ["", f"Plot: `{STUDY}.png`."]
    common.write_findings(res / "findings.md", STUDY, info, sec, rows)
    print(f"results in {res}")


def main(argv=None):
    args = common.parse_args(STUDY, __doc__, argv)
    rows, info = common.run_study(STUDY, args)
    analyse(rows, info, args)


if __name__ == "__main__":
    main()
