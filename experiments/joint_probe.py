"""Diagnostic (not one of the five studies): the joint solver with and without probe
refinement (joint.lr_probe 0 vs 0.01) at 1e5 and 1e7 photons per frame; joint only.

    python experiments/joint_probe.py --quick   # tiny preset, 2 seeds
    python experiments/joint_probe.py           # small preset, 3 seeds (GPU)
"""

from __future__ import annotations

import common

STUDY = "joint_probe"


def analyse(rows, info, res):
    g = lambda v: f"{v:g}"  # noqa: E731
    return common.standard_sections(
        STUDY,
        rows,
        res,
        "simulate.dose",
        series=["method", "joint.lr_probe"],
        xfmt=g,
        xlabel="photons per frame",
        logx=True,
        title="Joint: probe refinement off (lr_probe=0) vs on (mean ± std over seeds)",
    )


def main(argv=None):
    return common.study_main(STUDY, __doc__, analyse, argv)


if __name__ == "__main__":
    main()
