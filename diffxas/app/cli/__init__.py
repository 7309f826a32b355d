"""The ``diffxas`` command line.

Each subcommand is a pair of functions, ``_add_<name>(subparsers)`` (defines the parser
and sets ``func``) and ``_run_<name>(args) -> int``, registered in :data:`COMMANDS`;
adding a command means writing the pair and appending ``_add_<name>`` to the list. The
commands live in modules by concern:

- :mod:`~diffxas.app.cli.common`: the one-line error, the parser class, argparse number
  types, ``--config``/``--set``/``--no-progress``, input-file checks;
- :mod:`~diffxas.app.cli.files`: ``info``, ``export``, ``orientation``, ``simulate``;
- :mod:`~diffxas.app.cli.reconstruction`: ``reconstruct``, ``refit`` (the ``--method``
  choices are the method registry's names, read lazily);
- :mod:`~diffxas.app.cli.analysis`: ``cluster``, ``evaluate``, ``report``;
- :mod:`~diffxas.app.cli.workflows`: ``demo``, ``sweep``, ``design-energies``;
- this module: :func:`build_parser`, :func:`main` (errors, exit codes) and the persistent
  compilation cache.

Errors caused by the user's input (:class:`diffxas.errors.DiffxasError`, missing or
unreadable files) print exactly one line ``diffxas: error: <message>`` on stderr and exit
with code 2; Ctrl-C exits with 130. Heavy modules (jax, h5py, matplotlib) are imported inside
the ``_run_*`` functions, each such import with a comment saying why, so that ``diffxas
--help`` and ``diffxas info``'s start are fast (the parser imports no jax:
tests/test_cli.py::test_building_the_parser_does_not_import_jax).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from diffxas import __version__
from diffxas.app import compile_cache
from diffxas.app.cli.analysis import _add_cluster, _add_evaluate, _add_report
from diffxas.app.cli.common import PROG as PROG
from diffxas.app.cli.common import _Parser
from diffxas.app.cli.common import error_line as error_line
from diffxas.app.cli.files import _add_export, _add_info, _add_orientation, _add_simulate
from diffxas.app.cli.files import _run_info as _run_info
from diffxas.app.cli.reconstruction import MethodNames as MethodNames
from diffxas.app.cli.reconstruction import _add_reconstruct, _add_refit
from diffxas.app.cli.workflows import _add_demo, _add_design_energies, _add_sweep
from diffxas.errors import DiffxasError

#: Subcommand registration functions, in the order shown by ``--help``.
COMMANDS: list[Callable] = [
    _add_info,
    _add_export,
    _add_orientation,
    _add_simulate,
    _add_reconstruct,
    _add_refit,
    _add_cluster,
    _add_evaluate,
    _add_report,
    _add_demo,
    _add_sweep,
    _add_design_energies,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Differentiable X-ray spectroscopic ptychography: chemical-state maps from "
        "multi-energy ptychography data.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full Python traceback of errors (for debugging)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(subparsers)
    return parser


#: Environment variable of the persistent compilation cache: unset -> the user cache
#: directory (``$XDG_CACHE_HOME/diffxas/jax``, default ``~/.cache/diffxas/jax``); ``0``/``off``
#: -> no cache; any other value -> that directory.
COMPILATION_CACHE_ENV = "DIFFXAS_COMPILATION_CACHE"


def _compilation_cache() -> str | None:
    """Switch on JAX's persistent compilation cache for this command; returns its directory.

    Decision (issue #27, start-up): a joint run compiles ~150 programs before its first step
    (ePIE start, Fisher information, the step); from the cache the second run of the same
    shapes starts in a third of the time (`tiny`: ``prepare_joint`` 19.6 s -> 6.9 s wall,
    10.2 s -> 3.3 s CPU, docs/scaling.md). Every compilation is cached (minimum compile time
    and entry size 0: most are small ones, under the default 1 s threshold); the cache of
    `tiny` is under 1 MB. The default folder has one subfolder per host CPU and XLA's spurious
    loader warning is silenced (:mod:`diffxas.app.compile_cache`). Left alone when the user configured JAX's own cache
    (``JAX_COMPILATION_CACHE_DIR``), and off under pytest unless the variable names a
    directory (tests must not write into the user's home).
    """
    val = os.environ.get(COMPILATION_CACHE_ENV)
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if val is not None and val.strip().lower() in ("0", "off", "false", "no", ""):
        return None
    if val is None and "PYTEST_CURRENT_TEST" in os.environ:
        return None
    if val is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        val = compile_cache.cache_dir(os.path.join(base, "diffxas", "jax"))
    compile_cache.enable(val)
    return val


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    _compilation_cache()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        sys.stderr.write(error_line("interrupted") + "\n")
        return 130
    except BrokenPipeError:  # the reader of stdout left (`diffxas info X | head`): no message
        try:  # and no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a killed writer
    except (DiffxasError, OSError) as e:
        if args.traceback:
            raise
        msg = str(e)
        if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
            msg = f"{e.filename}: {e.strerror or msg}"
        sys.stderr.write(error_line(msg or type(e).__name__) + "\n")
        return 2
    except Exception as e:  # a bug, not the user's input: still one line (details with --traceback)
        if args.traceback:
            raise
        sys.stderr.write(
            error_line(
                f"internal error: {type(e).__name__}: {e} (rerun with --traceback for details and please report it)"
            )
            + "\n"
        )
        return 1
