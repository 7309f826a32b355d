"""Tests of the diffxas command line (diffxas.app.cli): the info command and error handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffxas import __version__
from diffxas.app import cli
from diffxas.data import cxi as io_cxi
from diffxas.data import files as io_files
from diffxas.data import info as io_info
from diffxas.data import results as io_results
from diffxas.data import truth as io_truth
from diffxas.data.dataset import Dataset
from diffxas.errors import ConfigError, DivergenceError
from diffxas.solvers.joint.config import JointConfig

ENERGIES = np.array([5420.0, 5480.0, 5540.0])


def make_dataset(k=3, n=5, m=16, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        frames=rng.poisson(10.0, (k * n, m, m)).astype(np.float32),
        positions=rng.uniform(-1e-6, 1e-6, (k * n, 2)),
        energy_index=np.repeat(np.arange(k, dtype=np.int32), n),
        energies=ENERGIES[:k].copy(),
        mask=np.ones((k, m, m), np.float32),
        illumination=None,
        distance=0.5,
        detector_pixel=75e-6,
    )


@pytest.fixture
def cxi(tmp_path) -> Path:
    return io_cxi.write_cxi(tmp_path / "data.cxi", make_dataset())


def assert_one_error_line(err: str, *needles):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diffxas: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


def test_info_cxi(cxi, capsys):
    assert cli.main(["info", str(cxi)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "multi-energy CXI file" in out and "3 entries, 5420.00 .. 5540.00 eV" in out
    assert "frames per energy: 5 (total 15)" in out and "illumination:      absent" in out


def test_closed_stdout_pipe_is_quiet(cxi):
    # `diffxas info ... | head -1`: the reader leaves; no traceback, no error line, exit 141
    # (200 summaries, ~0.2 MB, overflow the 64 kB pipe buffer, so the write does fail)
    p = subprocess.Popen(
        [sys.executable, "-m", "diffxas.app.cli", "info"] + [str(cxi)] * 200,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout.readline().startswith(str(cxi).encode())
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert err == ""


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


def _text(tmp_path):
    p = tmp_path / "notes.cxi"
    p.write_text("hello\n" * 100)
    return p, "not an HDF5 file"


def _missing(tmp_path):
    return tmp_path / "missing.cxi", "no such file"


def _truncated(tmp_path):
    p = io_cxi.write_cxi(tmp_path / "t.cxi", make_dataset())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p, "truncated or corrupt"


def _ev_energy(tmp_path):
    import h5py

    p = io_cxi.write_cxi(tmp_path / "ev.cxi", make_dataset())
    with h5py.File(p, "r+") as f:
        del f["entry_1/instrument_1/source_1/energy"]
        f["entry_1/instrument_1/source_1/energy"] = 5420.0
    return p, "energy 5420 looks like eV; CXI stores J"


@pytest.mark.parametrize("make_bad", [_missing, _text, _truncated, _ev_energy])
def test_info_bad_input(tmp_path, capsys, make_bad):
    path, words = make_bad(tmp_path)
    assert cli.main(["info", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, str(path), words)


def test_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: diffxas" in out and "info" in out
    assert cli.main(["info", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: diffxas info" in out and "FILE" in out


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"diffxas {__version__}"


def test_no_command(capsys):
    assert cli.main([]) == 2
    assert "usage: diffxas" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bogus"], ["info"], ["info", "x", "--nope"]])
def test_usage_errors_are_one_line(capsys, argv):
    assert cli.main(argv) == 2
    assert_one_error_line(capsys.readouterr().err)


def test_errors_and_interrupt(monkeypatch, capsys, cxi):
    def config_error(path):
        raise ConfigError("bad value for iterations: -1\n(second line is folded)")

    monkeypatch.setattr(io_info, "summarize", config_error)
    assert cli.main(["info", str(cxi)]) == 2
    assert_one_error_line(capsys.readouterr().err, "bad value for iterations: -1 (second line is folded)")

    def permission(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io_info, "summarize", permission)
    assert cli.main(["info", str(cxi)]) == 2
    assert_one_error_line(capsys.readouterr().err, "Permission denied", str(cxi))

    def interrupt(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_info, "summarize", interrupt)
    assert cli.main(["info", str(cxi)]) == 130
    assert_one_error_line(capsys.readouterr().err, "interrupted")
    # --traceback re-raises for debugging
    monkeypatch.setattr(io_info, "summarize", config_error)
    with pytest.raises(ConfigError):
        cli.main(["--traceback", "info", str(cxi)])


def test_commands_registry():
    assert cli._add_info in cli.COMMANDS
    parser = cli.build_parser()
    args = parser.parse_args(["info", "a.cxi"])
    assert args.func is cli._run_info and args.files == ["a.cxi"]


def test_console_script(tmp_path):
    exe = Path(sys.executable).parent / "diffxas"
    if not exe.exists():
        pytest.skip(f"console script not installed at {exe}")
    proc = subprocess.run([str(exe), "info", "missing.cxi"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, "missing.cxi: no such file")


# =======================================================================================
# simulate / reconstruct / cluster / evaluate / report (on a tiny simulated sample)
# =======================================================================================
import contextlib  # noqa: E402
import io as _stdio  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

from diffxas.app import pipeline as demo_pipeline  # noqa: E402

#: Six energies over the edge (the two-step fit needs >= 6; a narrow range keeps the joint
#: solver's initial grid search short).
TINY_ENERGIES = "5462,5466,5470,5475,5480,5484"


def _run(argv) -> tuple[int, str, str]:
    out, err = _stdio.StringIO(), _stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    """`diffxas simulate` of the tiny preset (the command under test, run once per module)."""
    d = tmp_path_factory.mktemp("sim")
    rc, out, err = _run(
        ["simulate", d / "tiny.cxi", "--preset", "tiny", "--seed", "1", "--energy-list", TINY_ENERGIES, "--no-progress"]
    )
    assert rc == 0, err
    (d / "simulate.stdout").write_text(out)
    return d


@pytest.fixture(scope="module")
def joint_dir(sim_dir, tmp_path_factory) -> Path:
    """`diffxas reconstruct --method joint` with 2 steps on the tiny file (run once)."""
    d = tmp_path_factory.mktemp("joint")
    rc, out, err = _run(
        [
            "reconstruct",
            sim_dir / "tiny.cxi",
            "--method",
            "joint",
            "-o",
            d / "joint.h5",
            "--steps",
            2,
            "--set",
            "joint.log_every=1",
            "--no-progress",
        ]
    )
    assert rc == 0, err
    (d / "reconstruct.stdout").write_text(out)
    return d


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


def test_spread_indices():
    assert demo_pipeline.spread_indices(40, 40).tolist() == list(range(40))
    assert demo_pipeline.spread_indices(40, 2).tolist() == [0, 39]
    for k in range(2, 41):
        idx = demo_pipeline.spread_indices(40, k)
        assert len(set(idx.tolist())) == k and idx[0] == 0 and idx[-1] == 39
    assert demo_pipeline.select_energies([1.0, 2.0, 3.0, 4.0, 5.0], 3) == (1.0, 3.0, 5.0)
    # halves round up (np.round would give [0, 2, 5]: round half to even)
    assert demo_pipeline.spread_indices(6, 3).tolist() == [0, 3, 5]
    # one rule: simulate --energies, reconstruct --energies and the sweeps' "uniform" agree
    from diffxas.app.sweep import spec as sweep_spec

    e = [5420.0 + 3 * i for i in range(40)]
    for k in range(2, 41):
        assert sweep_spec.select_energies(e, k, "uniform") == demo_pipeline.select_energies(e, k)


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


# ---- bad CXI files, for every command that reads one ---------------------------------------
def _cxi_edit(tmp_path, name, edit):
    import h5py

    p = io_cxi.write_cxi(tmp_path / name, make_dataset())
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


_DATA = "entry_1/instrument_1/detector_1/data"


def _missing_dataset(tmp_path):
    def edit(f):
        del f["entry_1/instrument_1/detector_1/distance"]

    return _cxi_edit(tmp_path, "nodist.cxi", edit), "/entry_1/instrument_1/detector_1/distance: missing dataset"


def _wrong_shape(tmp_path):
    def edit(f):
        del f[_DATA]
        f[_DATA] = np.ones((5, 16, 15), np.float32)

    return _cxi_edit(tmp_path, "shape.cxi", edit), "must have shape (N, M, M), got (5, 16, 15)"


def _nan_counts(tmp_path):
    def edit(f):
        a = f[_DATA][()].astype(np.float32)
        a[2, 3, 4] = np.nan
        del f[_DATA]
        f[_DATA] = a

    return _cxi_edit(tmp_path, "nan.cxi", edit), "frame 2 contains NaN or inf counts"


def _negative_counts(tmp_path):
    def edit(f):
        a = f[_DATA][()].astype(np.float32)
        a[1, 0, 0] = -3.0
        del f[_DATA]
        f[_DATA] = a

    return _cxi_edit(tmp_path, "neg.cxi", edit), "frame 1 contains negative counts"


BAD_CXI = [_missing, _text, _truncated, _missing_dataset, _wrong_shape, _nan_counts, _negative_counts, _ev_energy]


@pytest.mark.parametrize("make_bad", BAD_CXI)
def test_reconstruct_bad_cxi(tmp_path, make_bad):
    path, words = make_bad(tmp_path)
    out = tmp_path / "out" / "res.h5"
    rc, stdout, err = _run(["reconstruct", path, "--method", "joint", "-o", out, "--steps", 1])
    assert rc == 2 and stdout == ""
    assert_one_error_line(err, str(path), words)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("make_bad", BAD_CXI)
def test_info_bad_cxi_values(tmp_path, capsys, make_bad):
    path, words = make_bad(tmp_path)
    assert cli.main(["info", str(path)]) == 2
    assert_one_error_line(capsys.readouterr().err, str(path), words)


# ---- cluster / evaluate / report on the joint result ------------------------------------
@pytest.fixture
def result_copy(joint_dir, tmp_path) -> Path:
    dst = tmp_path / "joint.h5"
    shutil.copy(joint_dir / "joint.h5", dst)
    return dst


def test_cluster_evaluate_report(result_copy, sim_dir, tmp_path):
    truth = sim_dir / "tiny.truth.h5"
    rc, out, err = _run(["cluster", result_copy, "--k", 2, "--seeds", 2, "--features", "edge_energy,pre_edge_norm"])
    assert rc == 0, err
    assert "k = 2" in out and "wrote /clusters" in out
    r = io_results.read_result(result_copy)
    assert r.clusters is not None and int(r.clusters["k"]) == 2
    assert list(r.clusters["features"]) == ["edge_energy", "pre_edge_norm"]
    assert (tmp_path / "joint_clusters.csv").exists()

    rc, out, err = _run(["evaluate", result_copy, "--truth", truth, "--json", tmp_path / "m.json"])
    assert rc == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["method"] == "joint" and m["n_region"] > 0 and "edge_energy" in m and m["clusters"] is not None
    assert "coverage" in out and "wrote" in out
    # without --truth: the sidecar next to the input named in the results file
    rc, out, err = _run(["evaluate", result_copy])
    assert rc == 0, err
    assert (tmp_path / "joint_eval.json").exists()

    rc, out, err = _run(
        [
            "report",
            result_copy,
            result_copy,
            "-o",
            tmp_path / "rep",
            "--truth",
            truth,
            "--labels",
            "a,b",
            "--formats",
            "png",
        ]
    )
    assert rc == 0, err
    names = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert "summary.md" in names and "metrics.json" in names and "maps.png" in names
    assert not any(n.endswith(".pdf") for n in names)
    assert "| a |" in (tmp_path / "rep" / "summary.md").read_text()


def _bad_result_files(tmp_path, result_copy, cxi):
    trunc = tmp_path / "trunc.h5"
    data = result_copy.read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    text = tmp_path / "notes.h5"
    text.write_text("hello\n" * 50)
    return [
        (tmp_path / "missing.h5", "no such file"),
        (text, "not an HDF5 file"),
        (trunc, "truncated or corrupt"),
        (cxi, "not a diffxas results file"),
    ]


def test_cluster_evaluate_report_bad_inputs(result_copy, cxi, sim_dir, tmp_path):
    truth = sim_dir / "tiny.truth.h5"
    before = result_copy.read_bytes()
    for path, words in _bad_result_files(tmp_path, result_copy, cxi):
        for argv in (
            ["cluster", path],
            ["evaluate", path, "--truth", truth],
            ["report", path, "-o", tmp_path / "rep"],
            ["report", result_copy, path, "-o", tmp_path / "rep"],
        ):
            rc, out, err = _run(argv)
            assert rc == 2 and out == "", argv
            assert_one_error_line(err, str(path), words)
    assert not (tmp_path / "rep").exists()
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.json"))
    # bad truth files
    for path, words in [
        (tmp_path / "none.h5", "no such file"),
        (result_copy, "not a diffxas ground-truth file"),
        (cxi, "not a diffxas ground-truth file"),
    ]:
        for argv in (
            ["evaluate", result_copy, "--truth", path],
            ["report", result_copy, "-o", tmp_path / "rep", "--truth", path],
        ):
            rc, out, err = _run(argv)
            assert rc == 2 and out == "", argv
            assert_one_error_line(err, str(path), words)
    assert not (tmp_path / "rep").exists() and not list(tmp_path.glob("*.json"))
    # bad options
    for argv, words in [
        (["cluster", result_copy, "--k", "zero"], "cluster k must be an integer >= 1 or 'auto'"),
        (["cluster", result_copy, "--features", "edge_energy,bogus"], "unknown cluster feature 'bogus'"),
        (["cluster", result_copy, "--set", "cluster.kk=3"], "[cluster] unknown key 'kk'"),
        (["cluster", result_copy, "--weight", "mass"], "argument --weight: invalid choice"),
        (["evaluate", result_copy, "--truth", truth, "--nv-fraction", "2"], "--nv-fraction must be in"),
        (["report", result_copy, "-o", tmp_path / "rep", "--labels", "a,b"], "--labels needs 1"),
        (["report", result_copy, "-o", tmp_path / "rep", "--formats", "gif"], "--formats"),
        (["report", result_copy, "-o", result_copy], "exists and is not a directory"),
        (["report", "-o", tmp_path / "rep"], "the following arguments are required: RESULT.h5"),
    ]:
        rc, out, err = _run(argv)
        assert rc == 2 and out == "", argv
        assert_one_error_line(err, words)
    assert result_copy.read_bytes() == before  # never modified by a failing command
    assert not (tmp_path / "rep").exists()


def test_evaluate_without_truth_sidecar(result_copy, tmp_path, monkeypatch):
    import h5py

    with h5py.File(result_copy, "r+") as f:
        f.attrs["input"] = str(tmp_path / "elsewhere.cxi")
    rc, out, err = _run(["evaluate", result_copy])
    assert rc == 2
    assert_one_error_line(err, "no --truth given and no ground-truth file at", "elsewhere.truth.h5")


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
    import json

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


def test_building_the_parser_does_not_import_jax():
    """`diffxas --help` stays fast: the parser (with every command's choices) imports no JAX
    (the module docstring's rule; orientation.CHOICES once broke it)."""
    code = "import sys, diffxas.app.cli as c; c.build_parser(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_new_commands_have_help(capsys):
    for name in ("simulate", "reconstruct", "cluster", "evaluate", "report", "demo", "orientation"):
        assert cli.main([name, "--help"]) == 0
        assert f"usage: diffxas {name}" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("simulate", "reconstruct", "cluster", "evaluate", "report", "demo"):
        assert name in out
    try:
        import diffxas.app.sweep  # noqa: F401
    except Exception:
        return
    assert cli._add_sweep in cli.COMMANDS and "sweep" in out
    assert cli.main(["sweep", "--help"]) == 0
    assert "usage: diffxas sweep" in capsys.readouterr().out


def test_internal_errors_are_one_line(monkeypatch, cxi, capsys):
    def bug(path):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(io_info, "summarize", bug)
    assert cli.main(["info", str(cxi)]) == 1
    assert_one_error_line(capsys.readouterr().err, "internal error: ZeroDivisionError: division by zero", "--traceback")


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
