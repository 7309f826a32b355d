"""Tests of the diffxas command line's frame (diffxas.app.cli and cli/common.py): help,
version, usage errors, one-line errors and exit codes, interrupts, the command registry and
the console script. The commands themselves: tests/test_cli_files.py (info, simulate,
orientation), test_cli_reconstruction.py, test_cli_analysis.py (cluster, evaluate,
report), test_cli_workflows.py (demo).

The commands run in-process (cli_helpers._run) on small files: the ``cxi`` fixture below (a
fresh 3-energy file per test), and the session-scoped ``sim_dir`` (`diffxas simulate` of
`tiny`) and ``joint_dir`` (a 2-step joint reconstruction of it) in tests/conftest.py, shared
by the tests/test_cli*.py files and run once per test process as when they were one module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, make_dataset

from diffxas import __version__
from diffxas.app import cli
from diffxas.data import cxi as io_cxi
from diffxas.data import info as io_info
from diffxas.errors import ConfigError


@pytest.fixture
def cxi(tmp_path) -> Path:
    return io_cxi.write_cxi(tmp_path / "data.cxi", make_dataset())


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
