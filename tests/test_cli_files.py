"""Tests of the file commands of the command line (diffxas.app.cli.files): info, simulate,
orientation.

The commands run in-process (cli_helpers._run) on small files: the ``cxi`` fixture below (a
fresh 3-energy file per test), and the session-scoped ``sim_dir`` (`diffxas simulate` of
`tiny`) and ``joint_dir`` (a 2-step joint reconstruction of it) in tests/conftest.py, shared
by the tests/test_cli*.py files and run once per test process as when they were one module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import (
    BAD_CXI,
    TINY_ENERGIES,
    _ev_energy,
    _missing,
    _run,
    _text,
    _truncated,
    assert_one_error_line,
    make_dataset,
)

from diffxas.app import cli
from diffxas.app import pipeline as demo_pipeline
from diffxas.data import cxi as io_cxi
from diffxas.data import files as io_files
from diffxas.data import results as io_results
from diffxas.data import truth as io_truth


@pytest.fixture
def cxi(tmp_path) -> Path:
    return io_cxi.write_cxi(tmp_path / "data.cxi", make_dataset())


def test_info_cxi(cxi, capsys):
    assert cli.main(["info", str(cxi)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "multi-energy CXI file" in out and "3 entries, 5420.00 .. 5540.00 eV" in out
    assert "frames per energy: 5 (total 15)" in out and "illumination:      absent" in out


def test_info_several_files(cxi, tmp_path, capsys):
    other = io_cxi.write_cxi(tmp_path / "b.cxi", make_dataset(k=2, seed=1))
    assert cli.main(["info", str(cxi), str(other)]) == 0
    out = capsys.readouterr().out
    assert str(cxi) in out and str(other) in out and "2 entries" in out


def test_info_result_and_truth(tmp_path, capsys):
    # build the files with the data tests' helpers (plain module import from tests/)
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import data_helpers
    finally:
        sys.path.pop(0)
    r = io_results.write_result(tmp_path / "r.h5", data_helpers.make_result())
    t = io_truth.write_truth(tmp_path / "t.h5", data_helpers.make_truth())
    assert cli.main(["info", str(r)]) == 0
    assert "diffxas results file" in capsys.readouterr().out
    assert cli.main(["info", str(t)]) == 0
    assert "ground-truth file" in capsys.readouterr().out


@pytest.mark.parametrize("make_bad", [_missing, _text, _truncated, _ev_energy])
def test_info_bad_input(tmp_path, capsys, make_bad):
    path, words = make_bad(tmp_path)
    assert cli.main(["info", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, str(path), words)


@pytest.mark.parametrize("make_bad", BAD_CXI)
def test_info_bad_cxi_values(tmp_path, capsys, make_bad):
    path, words = make_bad(tmp_path)
    assert cli.main(["info", str(path)]) == 2
    assert_one_error_line(capsys.readouterr().err, str(path), words)


def test_simulate_writes_readable_cxi_and_truth(sim_dir):
    cxi, truth = sim_dir / "tiny.cxi", sim_dir / "tiny.truth.h5"
    assert sorted(p.name for p in sim_dir.iterdir()) == ["simulate.stdout", "tiny.cxi", "tiny.truth.h5"]
    ds = io_cxi.read_cxi(cxi)
    np.testing.assert_allclose(ds.energies, [float(e) for e in TINY_ENERGIES.split(",")])
    assert ds.frame_size == 32 and ds.illumination is not None
    assert np.all(np.asarray(ds.frames) >= 0)
    t = io_truth.read_truth(truth)
    assert t.attrs["preset"] == "tiny" and t.attrs["seed"] == 1
    assert (t.labels >= 0).any()
    np.testing.assert_allclose(t.energies, ds.energies)
    out = (sim_dir / "simulate.stdout").read_text()
    assert "multi-energy CXI file" in out and "6 entries" in out and "tiny.truth.h5" in out
    assert "attr preset: tiny" in out


def test_simulate_option_precedence(tmp_path, monkeypatch):
    """preset < --config [simulate] < --set < dedicated flags; --energies N spreads evenly in index."""
    seen = {}

    def fake_simulate_files(cfg, cxi, truth=None, progress=False):
        seen["cfg"], seen["cxi"], seen["truth"] = cfg, Path(cxi), Path(truth)
        raise KeyboardInterrupt  # stop here: nothing is simulated or written

    monkeypatch.setattr(demo_pipeline, "simulate_files", fake_simulate_files)
    conf = tmp_path / "c.toml"
    conf.write_text('[simulate]\npreset = "tiny"\nseed = 5\ndose = 1e4\nframe_size = 48\n')
    rc, _, err = _run(
        [
            "simulate",
            tmp_path / "x.cxi",
            "--config",
            conf,
            "--set",
            "seed=6",
            "--set",
            "simulate.jitter=0.1",
            "--dose",
            "2e5",
            "--energies",
            4,
        ]
    )
    assert rc == 130 and "interrupted" in err
    cfg = seen["cfg"]
    from diffxas.simulate.presets import PRESETS

    tiny = PRESETS["tiny"]["energies"]
    assert cfg.preset == "tiny" and cfg.seed == 6 and cfg.dose == 2e5 and cfg.frame_size == 48 and cfg.jitter == 0.1
    assert cfg.energies == (tiny[0], tiny[5], tiny[9], tiny[14])  # round(linspace(0, 14, 4)) = 0, 5, 9, 14
    assert seen["truth"] == tmp_path / "x.truth.h5"
    rc, _, _ = _run(
        [
            "simulate",
            tmp_path / "y.cxi",
            "--preset",
            "tiny",
            "--energy-list",
            "5420, 5480,5500",
            "--truth",
            tmp_path / "t" / "truth.h5",
        ]
    )
    assert seen["cfg"].energies == (5420.0, 5480.0, 5500.0) and seen["truth"] == tmp_path / "t" / "truth.h5"
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob("*.cxi"))


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--preset", "nope"], ["unknown preset 'nope'"]),
        (["--preset", "tiny", "--set", "frame_sizee=3"], ["[simulate] unknown key 'frame_sizee'", "valid keys:"]),
        (["--preset", "tiny", "--set", "frame_size"], ["bad --set 'frame_size': expected KEY=VALUE"]),
        (["--preset", "tiny", "--set", "jont.steps=3"], ["[simulate] unknown key 'jont'"]),
        (["--preset", "tiny", "--set", "frame_size=big"], ["[simulate] frame_size: expected an integer, got 'big'"]),
        (["--preset", "tiny", "--energies", "99"], ["energy count 99 is more than the 15 energies available"]),
        (["--preset", "tiny", "--energies", "1"], ["energy count must be at least 2"]),
        (["--preset", "tiny", "--energies", "0"], ["argument --energies: expected a positive integer"]),
        (["--preset", "tiny", "--energy-list", "8.68e-16,8.8e-16"], ["energies must be in eV"]),
        (["--preset", "tiny", "--energy-list", "5420,abc"], ["--energy-list: expected comma-separated energies"]),
        (["--preset", "tiny", "--energy-list", "5480,5420"], ["strictly increasing"]),
        (["--preset", "tiny", "--dose", "-5"], ["argument --dose: expected a positive number"]),
        (["--preset", "tiny", "--energies", "3", "--energy-list", "5420,5480"], ["not allowed with argument"]),
    ],
)
def test_simulate_bad_input(tmp_path, argv, words):
    rc, out, err = _run(["simulate", tmp_path / "o.cxi"] + argv)
    assert rc == 2 and out == ""
    assert_one_error_line(err, *words)
    assert list(tmp_path.iterdir()) == []


def test_simulate_bad_config_and_output(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[simulate]\npreset = 'tiny'\nnoise_level = 3\n")
    rc, _, err = _run(["simulate", tmp_path / "o.cxi", "--config", conf])
    assert rc == 2
    assert_one_error_line(err, "[simulate] unknown key 'noise_level'")
    rc, _, err = _run(["simulate", tmp_path / "o.cxi", "--config", tmp_path / "none.toml"])
    assert rc == 2
    assert_one_error_line(err, "none.toml: no such configuration file")
    (tmp_path / "adir").mkdir()
    rc, _, err = _run(["simulate", tmp_path / "adir", "--preset", "tiny"])
    assert rc == 2
    assert_one_error_line(err, "is a directory")
    rc, _, err = _run(["simulate", tmp_path / "o.cxi", "--preset", "tiny", "--truth", tmp_path / "o.cxi"])
    assert rc == 2
    assert_one_error_line(err, "would overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "c.toml"]


def test_orientation_command_and_auto_reorientation(sim_dir, tmp_path):
    """A file whose frames are rotated (what an ifft2-propagating simulator writes): `diffxas
    orientation` names the fix, and `reconstruct` (--orientation auto) undoes it, giving
    exactly the maps of the original file; --orientation none keeps the frames."""
    from diffxas.data.orientation import reorient

    cxi = sim_dir / "tiny.cxi"
    rot = io_cxi.write_cxi(tmp_path / "rot.cxi", reorient(io_cxi.read_cxi(cxi), "rot90"))
    rc, stdout, err = _run(["orientation", rot, "--json", tmp_path / "o.json"])
    assert rc == 0 and err == "", err
    assert "--orientation rot270" in stdout and "<- best" in stdout

    rec = json.loads((tmp_path / "o.json").read_text())
    assert rec["best"] == "rot270" and rec["confident"] and rec["input_sha256"] == io_files.sha256_file(rot)
    common = ["--method", "joint", "--steps", 2, "--no-progress", "--no-checkpoint", "--set", "init=stxm"]
    rc, _, err = _run(["reconstruct", cxi, "-o", tmp_path / "a.h5"] + common)
    assert rc == 0, err
    rc, _, err = _run(["reconstruct", rot, "-o", tmp_path / "b.h5"] + common)
    assert rc == 0, err
    assert "the frames are re-oriented (rot270)" in err
    a, b = io_results.read_result(tmp_path / "a.h5"), io_results.read_result(tmp_path / "b.h5")
    assert b.config["input_selection"]["orientation"]["applied"] == "rot270"
    # the same frames in the same order: the same computation (float32 tolerance)
    np.testing.assert_allclose(b.maps.edge_energy, a.maps.edge_energy, rtol=0, atol=1e-3, equal_nan=True)
    rc, _, err = _run(["reconstruct", rot, "-o", tmp_path / "c.h5", "--orientation", "none"] + common)
    assert rc == 0 and "re-oriented" not in err
    c = io_results.read_result(tmp_path / "c.h5")
    assert c.config["input_selection"]["orientation"] == {"requested": "none", "applied": "none"}
    rc, _, err = _run(["reconstruct", rot, "-o", tmp_path / "d.h5", "--orientation", "sideways"] + common)
    assert rc == 2
    assert_one_error_line(err, "--orientation", "sideways")
