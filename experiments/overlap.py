"""Study 3 (overlap): map errors and ARI vs scan step (100-300 nm) at a 300 nm probe.

    python experiments/overlap.py --quick       # tiny preset, 100/200/300 nm, 2 seeds
    python experiments/overlap.py               # small preset, 100..300 nm, 3 seeds (GPU)
"""

from __future__ import annotations

import common

STUDY = "overlap"


def analyse(rows, info, args):
    res = common.results_dir(STUDY, args)
    common.copy_summary(info, res)
    x = "simulate.scan_step"
    common.plot_study(rows, x, res / f"{STUDY}.png", xlabel="scan step (nm), probe FWHM 300 nm", xscale=1e9,
                      title="Map errors and ARI vs scan step (mean ± std over seeds)")
    nm = lambda v: f"{v * 1e9:.0f} nm"  # noqa: E731
    sec = ["## Results (mean ± std over seeds)", "", common.markdown_table(rows, x, ["method"], xfmt=nm), "",
           "## Joint vs two-step at each scan step", ""] + common.compare_methods(rows, x, xfmt=nm)
    sec += ["", "## Secondary metrics", "", common.markdown_table(rows, x, ["method"], metrics=common.SECONDARY, xfmt=nm)]
    sec += ["", f"Plot: `{STUDY}.png`."]
    common.write_findings(res / "findings.md", STUDY, info, sec, rows)
    print(f"results in {res}")


def main(argv=None):
    args = common.parse_args(STUDY, __doc__, argv)
    rows, info = common.run_study(STUDY, args)
    analyse(rows, info, args)


if __name__ == "__main__":
    main()
