"""What every command module of the CLI shares: the one-line error, the parser class,
argparse number types, the ``--config``/``--set`` and ``--no-progress`` options, input-file
checks and the option parsing two commands need (``--energy-list``, the [simulate] section).

Imports here are cheap (stdlib and modules already loaded by ``import diffxas``); the
configuration module (~10-15 ms, not needed by ``--help``) is imported inside
:func:`config_mapping`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffxas.errors import ConfigError, InputError

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


# ---- argparse number types --------------------------------------------------------------
def _number_type(convert, ok, what: str, echo_text: bool = False):
    """An argparse ``type``: ``convert(text)``, refused with "expected WHAT, got ..." when it
    does not parse or ``ok(value)`` is false (``echo_text``: quote the text, not the value)."""

    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text if echo_text else v}")
        return v

    return parse


positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
nonneg_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda v: 0 < v < float("inf"), "a positive number", echo_text=True)


# ---- options shared by several commands ---------------------------------------------------
def add_config_options(p, default_section: str | None) -> None:
    where = f" (a key without a section means [{default_section}])" if default_section else ""
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML configuration file with sections [simulate], [twostep], [joint], [cluster] "
        "(see docs/cli.md and examples/)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one configuration value, e.g. joint.steps=50 or twostep.epie.epochs=20{where}; "
        "VALUE is a TOML value (quotes optional for plain words); repeatable",
    )


def add_progress_option(p) -> None:
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown when stderr is a terminal)"
    )


def progress(args) -> bool:
    if getattr(args, "no_progress", False):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def config_mapping(args, default_section: str | None, extra: dict | None = None) -> dict:
    """--config FILE, then --set overrides, then ``extra`` (dotted keys from dedicated flags)."""
    from diffxas.app.config import apply_overrides, load_config, parse_overrides, validate_config  # ~10-15 ms

    mapping = load_config(args.config) if getattr(args, "config", None) else {}
    mapping = apply_overrides(
        mapping, parse_overrides(getattr(args, "overrides", None), default_section), default_section=default_section
    )
    if extra:
        mapping = apply_overrides(mapping, extra)
    validate_config(mapping)
    return mapping


def require_file(path, what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file ({what})")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a file ({what})")


# ---- option parsing shared by simulate, reconstruct and design-energies -------------------
def parse_energy_list(text: str) -> tuple[float, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = tuple(float(t) for t in items)
    except ValueError:
        raise ConfigError(f"--energy-list: expected comma-separated energies in eV, got {text!r}") from None
    if len(values) < 2:
        raise ConfigError(f"--energy-list: need at least two energies, got {text!r}")
    return values


def simulate_section(args) -> dict:
    """The [simulate] section of --config/--set with --preset, --seed and --dose applied."""
    sect = dict(config_mapping(args, "simulate").get("simulate") or {})
    for key in ("preset", "seed", "dose"):
        if getattr(args, key) is not None:
            sect[key] = getattr(args, key)
    return sect
