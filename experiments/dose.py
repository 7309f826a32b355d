"""Study 1 (dose): chemical-state map errors and cluster ARI vs photons per frame, both methods.

    python experiments/dose.py --quick          # tiny preset, minutes on 2 CPU cores
    python experiments/dose.py                  # small preset, long budgets (GPU)
"""

from __future__ import annotations

import common

STUDY = "dose"


def analyse(rows, info, args):
    res = common.results_dir(STUDY, args)
    common.copy_summary(info, res)
    x = "simulate.dose"
    common.plot_study(rows, x, res / f"{STUDY}.png", xlabel="photons per frame", logx=True,
                      title="Map errors and ARI vs dose (mean ± std over seeds)")
    sec = ["## Results (mean ± std over seeds)", "", common.markdown_table(rows, x, ["method"], xfmt=lambda v: f"{v:g}"),
           "", "## Joint vs two-step at each dose", ""] + common.compare_methods(rows, x, xfmt=lambda v: f"{v:g}")
    sec += ["", "## Secondary metrics", "", common.markdown_table(rows, x, ["method"], metrics=common.SECONDARY,
                                                                  xfmt=lambda v: f"{v:g}")]
    sec += ["", f"Plot: `{STUDY}.png`."]
    common.write_findings(res / "findings.md", STUDY, info, sec, rows)
    print(f"results in {res}")


def main(argv=None):
    args = common.parse_args(STUDY, __doc__, argv)
    rows, info = common.run_study(STUDY, args)
    analyse(rows, info, args)


if __name__ == "__main__":
    main()
