"""Tests of the diffxas command line (diffxas.cli): the info command and error handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffxas import __version__, cli, io
from diffxas.dataset import Dataset
from diffxas.errors import ConfigError

ENERGIES = np.array([5420.0, 5480.0, 5540.0])


def make_dataset(k=3, n=5, m=16, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(frames=rng.poisson(10.0, (k * n, m, m)).astype(np.float32),
                   positions=rng.uniform(-1e-6, 1e-6, (k * n, 2)),
                   energy_index=np.repeat(np.arange(k, dtype=np.int32), n), energies=ENERGIES[:k].copy(),
                   mask=np.ones((k, m, m), np.float32), illumination=None, distance=0.5, detector_pixel=75e-6)


@pytest.fixture
def cxi(tmp_path) -> Path:
    return io.write_cxi(tmp_path / "data.cxi", make_dataset())


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


def test_info_several_files(cxi, tmp_path, capsys):
    other = io.write_cxi(tmp_path / "b.cxi", make_dataset(k=2, seed=1))
    assert cli.main(["info", str(cxi), str(other)]) == 0
    out = capsys.readouterr().out
    assert str(cxi) in out and str(other) in out and "2 entries" in out


def test_info_result_and_truth(tmp_path, capsys):
    # build the files with the io tests' helpers (plain module import from tests/)
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import test_io
    finally:
        sys.path.pop(0)
    r = io.write_result(tmp_path / "r.h5", test_io.make_result())
    t = io.write_truth(tmp_path / "t.h5", test_io.make_truth())
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
    p = io.write_cxi(tmp_path / "t.cxi", make_dataset())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p, "truncated or corrupt"


def _ev_energy(tmp_path):
    import h5py

    p = io.write_cxi(tmp_path / "ev.cxi", make_dataset())
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

    monkeypatch.setattr(io, "summarize", config_error)
    assert cli.main(["info", str(cxi)]) == 2
    assert_one_error_line(capsys.readouterr().err, "bad value for iterations: -1 (second line is folded)")

    def permission(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io, "summarize", permission)
    assert cli.main(["info", str(cxi)]) == 2
    assert_one_error_line(capsys.readouterr().err, "Permission denied", str(cxi))

    def interrupt(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "summarize", interrupt)
    assert cli.main(["info", str(cxi)]) == 130
    assert_one_error_line(capsys.readouterr().err, "interrupted")
    # --traceback re-raises for debugging
    monkeypatch.setattr(io, "summarize", config_error)
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
    proc = subprocess.run([str(exe), "info", "missing.cxi"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, "missing.cxi: no such file")
