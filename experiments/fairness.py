"""Study 5 (fairness): the same kind of spatial prior for both methods (joint: TV penalty
joint.tv_weight; two-step: Gaussian pre-smoothing twostep.fit.smooth_sigma) vs neither.

    python experiments/fairness.py --quick      # tiny preset, none/strong, 2 seeds
    python experiments/fairness.py              # small preset, none/weak/strong, 3 seeds (GPU)
"""

from __future__ import annotations

import common

STUDY = "fairness"
ORDER = ["none", "weak", "strong"]


def analyse(rows, info, args):
    res = common.results_dir(STUDY, args)
    common.copy_summary(info, res)
    x = "prior"
    common.plot_study(rows, x, res / f"{STUDY}.png", order=ORDER, xlabel="spatial prior (both methods)",
                      title="Same spatial prior for both methods vs neither (mean ± std over seeds)")
    sec = ["## Results (mean ± std over seeds)", "", common.markdown_table(rows, x, ["method"], order=ORDER), "",
           "## Joint vs two-step at each prior level", ""] + common.compare_methods(rows, x, order=ORDER)
    sec += ["", "## Secondary metrics", "", common.markdown_table(rows, x, ["method"], metrics=common.SECONDARY,
                                                                  order=ORDER)]
    sec += ["", f"Plot: `{STUDY}.png`."]
    common.write_findings(res / "findings.md", STUDY, info, sec, rows)
    print(f"results in {res}")


def main(argv=None):
    args = common.parse_args(STUDY, __doc__, argv)
    rows, info = common.run_study(STUDY, args)
    analyse(rows, info, args)


if __name__ == "__main__":
    main()
