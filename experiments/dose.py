"""Study 1 (dose): chemical-state map errors and cluster ARI vs photons per frame, both methods.

python experiments/dose.py --quick          # tiny preset, minutes on 2 CPU cores
python experiments/dose.py                  # small preset, long budgets (GPU)
"""

from __future__ import annotations

import common

STUDY = "dose"


def analyse(rows, info, res):
    g = lambda v: f"{v:g}"  # noqa: E731
    return common.standard_sections(
        STUDY,
        rows,
        res,
        "simulate.dose",
        xfmt=g,
        compare=[("Joint vs two-step at each dose", None)],
        xlabel="photons per frame",
        logx=True,
        title="Map errors and ARI vs dose (mean ± std over seeds)",
    )


def main(argv=None):
    return common.study_main(STUDY, __doc__, analyse, argv)


if __name__ == "__main__":
    main()
