"""Study 4 (realism): unknown position errors (20 nm rms) and energy-dependent probe drift
(50 nm over the scan), with and without refinement, both methods.

    python experiments/realism.py --quick       # tiny preset, 1 seed
    python experiments/realism.py               # small preset, 3 seeds (GPU)
"""

from __future__ import annotations

import common

STUDY = "realism"
ORDER = ["ideal", "positions", "drift", "both"]


def analyse(rows, info, res):
    return common.standard_sections(
        STUDY,
        rows,
        res,
        "errors",
        series=["method", "refine"],
        order=ORDER,
        compare=[(f"Joint vs two-step, refinement {ref}", {"refine": ref}) for ref in ("off", "on")],
        xlabel="simulated errors",
        title="Position errors / probe drift, refinement off vs on",
    )


def main(argv=None):
    return common.study_main(STUDY, __doc__, analyse, argv)


if __name__ == "__main__":
    main()
