"""Study 3 (overlap): map errors and ARI vs scan step (100-300 nm) at a 300 nm probe.

python experiments/overlap.py --quick       # tiny preset, 100/200/300 nm, 2 seeds
python experiments/overlap.py               # small preset, 100..300 nm, 3 seeds (GPU)
"""

from __future__ import annotations

import common

STUDY = "overlap"


def analyse(rows, info, res):
    nm = lambda v: f"{v * 1e9:.0f} nm"  # noqa: E731
    return common.standard_sections(
        STUDY,
        rows,
        res,
        "simulate.scan_step",
        xfmt=nm,
        compare=[("Joint vs two-step at each scan step", None)],
        xlabel="scan step (nm), probe FWHM 300 nm",
        xscale=1e9,
        title="Map errors and ARI vs scan step (mean ± std over seeds)",
    )


def main(argv=None):
    return common.study_main(STUDY, __doc__, analyse, argv)


if __name__ == "__main__":
    main()
