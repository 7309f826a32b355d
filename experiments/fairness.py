"""Study 5 (fairness): the same kind of spatial prior for both methods (joint: TV penalty
joint.tv_weight; two-step: Gaussian pre-smoothing twostep.fit.smooth_sigma) vs neither.

    python experiments/fairness.py --quick      # tiny preset, none/strong, 2 seeds
    python experiments/fairness.py              # small preset, none/weak/strong, 3 seeds (GPU)
"""

from __future__ import annotations

import common

STUDY = "fairness"
ORDER = ["none", "weak", "strong"]


def analyse(rows, info, res):
    return common.standard_sections(
        STUDY,
        rows,
        res,
        "prior",
        order=ORDER,
        compare=[("Joint vs two-step at each prior level", None)],
        xlabel="spatial prior (both methods)",
        title="Same spatial prior for both methods vs neither (mean ± std over seeds)",
    )


def main(argv=None):
    return common.study_main(STUDY, __doc__, analyse, argv)


if __name__ == "__main__":
    main()
