"""Tests of `diffxas reconstruct` (diffxas.app.cli.reconstruction): results written,
option precedence, bad options and bad CXI files, resume, energy subsets and halves, no
files left by a failure, the two-step's iterations, holdout, background.

The commands run in-process (cli_helpers._run) on small files: the ``cxi`` fixture below (a
fresh 3-energy file per test), and the session-scoped ``sim_dir`` (`diffxas simulate` of
`tiny`) and ``joint_dir`` (a 2-step joint reconstruction of it) in tests/conftest.py, shared
by the tests/test_cli*.py files and run once per test process as when they were one module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import BAD_CXI, _run, assert_one_error_line, make_dataset

from diffxas.app import cli
from diffxas.app import pipeline as demo_pipeline
from diffxas.data import cxi as io_cxi
from diffxas.data import files as io_files
from diffxas.data import results as io_results
from diffxas.errors import DivergenceError
from diffxas.solvers.joint.config import JointConfig


@pytest.fixture
def cxi(tmp_path) -> Path:
    return io_cxi.write_cxi(tmp_path / "data.cxi", make_dataset())


def test_reconstruct_joint_writes_result(sim_dir, joint_dir):
    cxi, res = sim_dir / "tiny.cxi", joint_dir / "joint.h5"
    r = io_results.read_result(res)
    assert r.method == "joint"
    assert r.input_sha256 == io_files.sha256_file(cxi) and len(r.input_sha256) == 64
    assert Path(r.input_path) == cxi.resolve()
    assert (
        r.config["method"] == "joint"
        and r.config["joint"]["optim"]["steps"] == 2
        and r.config["joint"]["record"]["log_every"] == 1
    )
    assert r.config["joint"]["spectra"]["per_pixel"] == list(JointConfig().spectra.per_pixel)  # full config, nested
    assert r.energies.size == 6 and list(r.history["step"]) == [1, 2]
    # the default checkpoint (RESULT.h5.ckpt) is removed after success
    assert sorted(p.name for p in joint_dir.iterdir()) == ["joint.h5", "reconstruct.stdout"]
    out = (joint_dir / "reconstruct.stdout").read_text()
    assert "joint: 6 energies" in out and f"wrote {res}" in out


def test_reconstruct_config_precedence(sim_dir, joint_dir, tmp_path, monkeypatch):
    """defaults < --config < --set < --steps/--init; recorded config is the one used."""
    seen = {}
    prior = io_results.read_result(joint_dir / "joint.h5")

    def fake_reconstruct(ds, method, cfg, **kw):
        seen.update(method=method, cfg=cfg, **kw)
        prior.config = {"joint": "from the solver"}
        return prior

    monkeypatch.setattr(demo_pipeline, "reconstruct", fake_reconstruct)
    conf = tmp_path / "j.toml"
    conf.write_text("[joint]\nsteps = 7\nlr_amp = 0.5\nseed = 3\n[cluster]\nk = 3\n")
    rc, _, err = _run(
        [
            "reconstruct",
            sim_dir / "tiny.cxi",
            "--method",
            "joint",
            "-o",
            tmp_path / "r.h5",
            "--config",
            conf,
            "--set",
            "lr_amp=0.25",
            "--set",
            "joint.steps=8",
            "--steps",
            9,
            "--init",
            joint_dir / "joint.h5",
            "--no-progress",
        ]
    )
    assert rc == 0, err
    cfg = seen["cfg"]
    assert seen["method"] == "joint" and cfg.optim.steps == 9 and cfg.spectra.lr_amp == 0.25 and cfg.optim.seed == 3
    assert cfg.init.mode == "result" and cfg.init.result == str(joint_dir / "joint.h5")
    assert seen["checkpoint"] == tmp_path / "r.h5.ckpt" and seen["resume"] is False
    assert seen["input_sha256"] == io_files.sha256_file(sim_dir / "tiny.cxi")
    assert io_results.read_result(tmp_path / "r.h5").method == "joint"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--method", "joint", "--iterations", "5"], ["--iterations sets the two-step ePIE epochs"]),
        (["--method", "two-step", "--steps", "5"], ["--steps sets the joint solver's steps"]),
        (["--method", "two-step", "--init", "x.h5"], ["--init (warm start) applies to --method joint only"]),
        (
            ["--method", "joint", "--set", "joint.stepz=3"],
            ["[joint] unknown key 'stepz'", "valid keys: optim", "flat alias: steps"],
        ),
        (["--method", "joint", "--set", "stepz=3"], ["[joint] unknown key 'stepz'"]),
        (["--method", "joint", "--set", "joint.loss=l2"], ["[joint.optim] loss must be 'amplitude' or 'poisson'"]),
        (["--method", "joint", "--set", "steps"], ["bad --set 'steps': expected KEY=VALUE"]),
        (["--method", "joint", "--set", "cluster.k=zero"], ["[cluster]"]),
        (["--method", "joint", "--steps", "-1"], ["argument --steps: expected an integer >= 0"]),
        (["--method", "joint", "--set", "element=Mn"], ["do not bracket the Mn K edge", 'set element = "V"']),
        (["--method", "two-step", "--set", "element=Ni"], ["do not bracket the Ni K edge", "--set element=V"]),
        (["--method", "joint", "--set", "element=mn"], ["[joint] element must be a chemical symbol as written"]),
        (["--method", "nope"], ["argument --method: invalid choice"]),
        (["--method", "joint", "--init", "missing.h5"], ["missing.h5: no such file"]),
        (["--method", "joint", "--no-checkpoint", "--resume"], ["--no-checkpoint cannot be combined"]),
        ([], ["the following arguments are required: --method"]),
    ],
)
def test_reconstruct_bad_options(cxi, tmp_path, argv, words):
    out = tmp_path / "res.h5"
    if "-o" not in argv and argv:
        argv = argv + ["-o", out]
    rc, stdout, err = _run(["reconstruct", cxi] + argv)
    assert rc == 2 and stdout == ""
    assert_one_error_line(err, *words)
    assert not out.exists() and not list(tmp_path.glob("res.h5*"))


def test_reconstruct_unknown_config_key_in_file(cxi, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[joint]\nstep = 3\n")
    rc, _, err = _run(["reconstruct", cxi, "--method", "joint", "-o", tmp_path / "r.h5", "--config", conf])
    assert rc == 2
    assert_one_error_line(err, "[joint] unknown key 'step'", "valid keys:")
    conf.write_text("[joint]\nsteps = 'many'\n")
    rc, _, err = _run(["reconstruct", cxi, "--method", "joint", "-o", tmp_path / "r.h5", "--config", conf])
    assert rc == 2
    assert_one_error_line(err, "[joint.optim] steps: expected an integer, got 'many' (str)")
    conf.write_text("[joint\n")
    rc, _, err = _run(["reconstruct", cxi, "--method", "joint", "-o", tmp_path / "r.h5", "--config", conf])
    assert rc == 2
    assert_one_error_line(err, "invalid TOML")
    assert not (tmp_path / "r.h5").exists()


def test_reconstruct_refuses_to_overwrite_input(cxi, capsys):
    before = cxi.read_bytes()
    assert cli.main(["reconstruct", str(cxi), "--method", "joint", "-o", str(cxi)]) == 2
    assert_one_error_line(capsys.readouterr().err, "would overwrite the input file")
    assert cxi.read_bytes() == before


@pytest.mark.parametrize("make_bad", BAD_CXI)
def test_reconstruct_bad_cxi(tmp_path, make_bad):
    path, words = make_bad(tmp_path)
    out = tmp_path / "out" / "res.h5"
    rc, stdout, err = _run(["reconstruct", path, "--method", "joint", "-o", out, "--steps", 1])
    assert rc == 2 and stdout == ""
    assert_one_error_line(err, str(path), words)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ---- resume ----------------------------------------------------------------------------
def test_reconstruct_resume(sim_dir, tmp_path):
    cxi = sim_dir / "tiny.cxi"
    out, ck = tmp_path / "r.h5", tmp_path / "ck" / "state.eqx"
    base = [
        "reconstruct",
        cxi,
        "--method",
        "joint",
        "-o",
        out,
        "--steps",
        2,
        "--checkpoint",
        ck,
        "--no-progress",
        "--set",
        "checkpoint_every=1",
    ]
    rc, _, err = _run(base)
    assert rc == 0, err
    assert ck.exists() and (tmp_path / "ck" / "state.eqx.meta.json").exists()  # explicit checkpoints are kept
    first = io_results.read_result(out)
    # a different configuration is refused
    rc, _, err = _run(base[:-1] + ["lr_amp=0.5", "--resume"])
    assert rc == 2
    assert_one_error_line(err, "checkpoint was made with a different method or configuration")
    # the same configuration on another part of the same file is refused too
    rc, _, err = _run(base + ["--resume", "--half", "even"])
    assert rc == 2
    assert_one_error_line(err, "checkpoint was made from another part of the input")
    sel = dict(first.config["input_selection"])
    orient = sel.pop("orientation")
    assert sel == {"half": None, "energy_indices": None, "energies_ev": None, "n_energies_in_file": 6}
    # --orientation auto (the default) checked the simulator's frames and kept them
    assert orient["requested"] == "auto" and orient["applied"] == "none" and orient["check"]["confident"]
    # a checkpoint of other orientation is another input
    assert not demo_pipeline._same_part({**sel, "orientation": {"applied": "rot180"}}, first.config["input_selection"])
    # a checkpoint from before the record (no input_selection in its metadata) is the whole file
    assert demo_pipeline._same_part(None, first.config["input_selection"])
    assert not demo_pipeline._same_part(None, {"half": "even", "energy_indices": None})
    # same configuration: continues from step 2 (nothing left to do) and gives the same maps
    out.unlink()
    rc, _, err = _run(base + ["--resume"])
    assert rc == 0, err
    assert "resuming from checkpoint" in err
    again = io_results.read_result(out)
    np.testing.assert_array_equal(again.maps.edge_energy, first.maps.edge_energy)
    assert again.config["init"]["resumed_from_step"] == 2


def test_reconstruct_energy_subset_and_half(sim_dir, joint_dir, tmp_path, monkeypatch):
    """--energies N / --energy-list pick the file's energies (the one spread rule), --half
    the frames; the part is handed to the solver and recorded (config + checkpoint meta)."""
    seen = {}
    prior = io_results.read_result(joint_dir / "joint.h5")

    def fake_reconstruct(ds, method, cfg, **kw):
        seen.update(ds=ds, **kw)
        return prior

    monkeypatch.setattr(demo_pipeline, "reconstruct", fake_reconstruct)
    cxi = sim_dir / "tiny.cxi"
    full = io_cxi.read_cxi(cxi)
    e_file = np.asarray(full.energies)
    rc, _, err = _run(
        ["reconstruct", cxi, "--method", "joint", "-o", tmp_path / "a.h5", "--energies", 3, "--no-progress"]
    )
    assert rc == 0, err
    # the spread rule on 6 energies: floor(linspace(0, 5, 3) + 0.5) = [0, 3, 5] (2.5 rounds up)
    assert seen["selection"]["energy_indices"] == [0, 3, 5] and seen["selection"]["half"] is None
    np.testing.assert_array_equal(np.asarray(seen["ds"].energies), e_file[[0, 3, 5]])
    assert seen["ds"].n_frames == sum(int(np.sum(np.asarray(full.energy_index) == k)) for k in (0, 3, 5))
    rc, _, err = _run(
        [
            "reconstruct",
            cxi,
            "--method",
            "joint",
            "-o",
            tmp_path / "b.h5",
            "--energy-list",
            "5462,5480.004",
            "--half",
            "odd",
            "--no-progress",
        ]
    )
    assert rc == 0, err
    sel = seen["selection"]
    assert sel["energy_indices"] == [0, 4] and sel["half"] == "odd" and sel["n_energies_in_file"] == 6
    assert seen["ds"].n_frames == sum(
        int(np.sum(np.asarray(full.energy_index) == k)) // 2 for k in (0, 4)
    )  # odd: 1, 3, ...
    for argv, words in [
        (["--energies", 7], ["energy count 7 is more than the 6 energies available"]),
        (["--energies", 1], ["energy count must be at least 2"]),
        (["--energy-list", "5466,5467"], ["5467 eV is not one of the 6 energies available", "nearest 5466.00"]),
        (
            ["--energy-list", "5466,5466.001"],
            ["listed energies 5466 eV and 5466.001 eV both match the energy 5466.00 eV"],
        ),
        (["--energies", 3, "--energy-list", "5466,5480"], ["not allowed with argument"]),
    ]:
        rc, stdout, err = _run(["reconstruct", cxi, "--method", "joint", "-o", tmp_path / "c.h5"] + argv)
        assert rc == 2 and stdout == ""
        assert_one_error_line(err, *words)
        assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("method", ["joint", "two-step"])
def test_reconstruct_failure_leaves_no_files(cxi, tmp_path, monkeypatch, method):
    """A run that fails after reading the data leaves neither a result nor checkpoint
    files (nor the folders made for them)."""

    def fail(*a, **kw):
        raise DivergenceError("diverged at step 3: loss is nan")

    import diffxas.solvers.joint.config
    import diffxas.solvers.joint.run

    monkeypatch.setattr(diffxas.solvers.joint.run, "reconstruct_joint", fail)
    import diffxas.solvers.twostep.run

    monkeypatch.setattr(diffxas.solvers.twostep.run, "reconstruct_two_step", fail)
    monkeypatch.setattr(demo_pipeline, "method_config", lambda m, mapping: diffxas.solvers.joint.config.JointConfig())
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "o" / "deeper" / "r.h5"
    # (--orientation none: the random frames have no orientation to detect, and its warning is not the point)
    rc, stdout, err = _run(
        ["reconstruct", cxi, "--method", method, "-o", out, "--no-progress", "--orientation", "none"]
    )
    assert rc == 2 and stdout == ""
    assert_one_error_line(err, "diverged at step 3: loss is nan")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_reconstruct_twostep_iterations(sim_dir, joint_dir, tmp_path, monkeypatch):
    """--iterations sets the ePIE epochs and keeps the (scaled) default schedule valid."""
    seen = {}
    prior = io_results.read_result(joint_dir / "joint.h5")

    def fake_reconstruct(ds, method, cfg, **kw):
        seen.update(method=method, cfg=cfg, **kw)
        return prior

    monkeypatch.setattr(demo_pipeline, "reconstruct", fake_reconstruct)
    rc, _, err = _run(
        [
            "reconstruct",
            sim_dir / "tiny.cxi",
            "--method",
            "two-step",
            "-o",
            tmp_path / "t.h5",
            "--iterations",
            5,
            "--set",
            "fit.iterations=7",
            "--no-progress",
        ]
    )
    assert rc == 0, err
    cfg = seen["cfg"]
    assert seen["method"] == "two-step" and cfg.epie.epochs == 5 and cfg.fit.iterations == 7
    assert seen["checkpoint"] == tmp_path / "t.h5.ckpt.d"
    assert cfg.epie.decay_start is None or cfg.epie.decay_start < 5


def test_reconstruct_joint_holdout_says_it(sim_dir, tmp_path):
    """--set joint.holdout: the summary line names the held-out frames and their loss, and
    the results file records them."""
    rc, out, err = _run(
        [
            "reconstruct",
            sim_dir / "tiny.cxi",
            "--method",
            "joint",
            "-o",
            tmp_path / "h.h5",
            "--steps",
            1,
            "--set",
            "joint.holdout=0.2",
            "--no-progress",
        ]
    )
    assert rc == 0, err
    assert "frames held out, their loss" in out
    r = io_results.read_result(tmp_path / "h.h5")
    assert r.config["init"]["holdout"]["heldout_frames"] > 0 and len(r.history["heldout_loss"]) == 1


def test_reconstruct_with_a_background_both_methods(sim_dir, tmp_path):
    """`--set joint.background=map` / `--set twostep.epie.background=flat` from the command
    line: the results file holds /detector/background in the documented shapes, its config
    the background's summary, stderr the one log line, and `diffxas info` names it."""
    cxi = sim_dir / "tiny.cxi"
    rc, out, err = _run(
        [
            "reconstruct",
            cxi,
            "--method",
            "joint",
            "-o",
            tmp_path / "j.h5",
            "--steps",
            2,
            "--set",
            "joint.background=map",
            "--no-progress",
        ]
    )
    assert rc == 0, err
    r = io_results.read_result(tmp_path / "j.h5")
    m = r.probes.shape[-1]
    assert r.background.shape == (6, m, m) and np.all(r.background > 0)
    assert r.config["background"]["mode"] == "map" and "joint: incoherent background (map)" in err
    rc, out, err = _run(
        [
            "reconstruct",
            cxi,
            "--method",
            "two-step",
            "-o",
            tmp_path / "t.h5",
            "--iterations",
            6,
            "--set",
            "twostep.epie.background=flat",
            "--no-progress",
        ]
    )
    assert rc == 0, err
    t = io_results.read_result(tmp_path / "t.h5")
    assert t.background.shape == (6,) and t.config["background"]["mode"] == "flat"
    assert "two-step: incoherent background (flat)" in err
    rc, out, err = _run(["info", tmp_path / "t.h5"])
    assert rc == 0 and "background:        flat" in out
    rc, out, err = _run(
        ["reconstruct", cxi, "--method", "joint", "-o", tmp_path / "x.h5", "--set", "joint.background=on"]
    )
    assert rc == 2 and "background must be one of" in err and "Traceback" not in err
