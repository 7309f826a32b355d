"""The ``diffxas`` command line.

Each subcommand is a pair of functions, ``_add_<name>(subparsers)`` (defines the parser
and sets ``func``) and ``_run_<name>(args) -> int``, registered in :data:`COMMANDS`;
adding a command means writing the pair and appending ``_add_<name>`` to the list.

Errors caused by the user's input (:class:`diffxas.errors.DiffxasError`, missing or
unreadable files) print exactly one line ``diffxas: error: <message>`` on stderr and exit
with code 2; Ctrl-C exits with 130. Heavy modules (jax, h5py) are imported inside the
``_run_*`` functions so that ``diffxas --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import DiffxasError

PROG = "diffxas"


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def error_line(msg: object) -> str:
    """The single stderr line of a user-facing error."""
    return f"{PROG}: error: {_one_line(msg)}"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line (like every other diffxas error)."""

    def error(self, message):  # noqa: D401 - argparse API
        sys.stderr.write(error_line(f"{message} (see '{self.prog} --help')") + "\n")
        sys.exit(2)


# ---- info -----------------------------------------------------------------------------
def _add_info(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="summarise a CXI input, results or ground-truth file",
        description="Print a summary of a multi-energy CXI input file (energies, frames, geometry, "
                    "dose, mask, illumination), a diffxas results file (method, maps, history, "
                    "clusters) or a ground-truth sidecar. The file type is detected automatically.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="file(s) to summarise")
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    from .io import summarize

    texts = [summarize(path) for path in args.files]
    print("\n\n".join(texts))
    return 0


#: Subcommand registration functions, in the order shown by ``--help``.
COMMANDS: list[Callable] = [_add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Differentiable X-ray spectroscopic ptychography: chemical-state maps from "
                    "multi-energy ptychography data.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full Python traceback of errors (for debugging)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(subparsers)
    return parser


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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        sys.stderr.write(error_line("interrupted") + "\n")
        return 130
    except (DiffxasError, OSError) as e:
        if args.traceback:
            raise
        msg = str(e)
        if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
            msg = f"{e.filename}: {e.strerror or msg}"
        sys.stderr.write(error_line(msg or type(e).__name__) + "\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
