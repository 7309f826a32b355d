"""Tests of the workflow commands of the command line (diffxas.app.cli.workflows): demo.

The commands run in-process (cli_helpers._run) on small files: the ``cxi`` fixture below (a
fresh 3-energy file per test), and the session-scoped ``sim_dir`` (`diffxas simulate` of
`tiny`) and ``joint_dir`` (a 2-step joint reconstruction of it) in tests/conftest.py, shared
by the tests/test_cli*.py files and run once per test process as when they were one module.
"""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import _run, assert_one_error_line

from diffxas.data import results as io_results


# ---- demo ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, words",
    [
        (["--preset", "nope"], ["unknown preset 'nope'"]),
        (["--set", "joint.stepz=1"], ["[joint] unknown key 'stepz'"]),
        (["--set", "steps=1"], ["the key needs a section"]),
        (["--methods", "joint,magic"], ["--methods: choose from two-step, joint"]),
    ],
)
def test_demo_bad_input(tmp_path, argv, words):
    out = tmp_path / "demo"
    rc, stdout, err = _run(["demo", "--out", out, "--no-progress"] + argv)
    assert rc == 2
    assert_one_error_line(err, *words)
    assert not out.exists()


def test_demo_reconstruct_records_the_input_part(sim_dir, tmp_path):
    """The real path: config["input_selection"] in the results file, shown by `info`."""
    cxi = sim_dir / "tiny.cxi"
    out = tmp_path / "r.h5"
    rc, _, err = _run(
        [
            "reconstruct",
            cxi,
            "--method",
            "joint",
            "-o",
            out,
            "--steps",
            1,
            "--energies",
            4,
            "--half",
            "even",
            "--no-progress",
            "--set",
            "init=stxm",
        ]
    )
    assert rc == 0, err
    r = io_results.read_result(out)
    sel = dict(r.config["input_selection"])
    assert sel.pop("orientation")["applied"] == "none"
    assert sel == {
        "half": "even",
        "energy_indices": [0, 2, 3, 5],
        "energies_ev": [float(e) for e in r.energies],
        "n_energies_in_file": 6,
    }
    np.testing.assert_allclose(r.energies, [5462, 5470, 5475, 5484], atol=1e-3)
    rc, stdout, _ = _run(["info", out])
    assert (
        rc == 0 and "input part:        4 of its 6 energies (indices 0, 2, 3, 5); the even half of the frames" in stdout
    )
