"""`diffxas sweep` options and its stand-alone entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffxas.app.sweep.runner import run
from diffxas.app.sweep.spec import (
    DONE,
    _apply,
    _fmt_value,
    _norm_key,
    _one_line,
    build_point,
    expand_points,
    load_spec,
)
from diffxas.errors import ConfigError, DiffxasError

__all__ = ["add_arguments", "main_cli"]


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``diffxas sweep`` arguments to ``p`` (used by diffxas.app.cli and ``python -m diffxas.app.sweep``)."""
    p.add_argument("spec", metavar="SWEEP.toml", help="sweep file: [base], [axes], [[points]], [profiles.*]")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (one sub-folder per point)")
    p.add_argument(
        "-j",
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes of a local Dask cluster, one point each (default 1: run in this "
        "process); with several GPUs visible, workers are assigned to them round-robin",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the points on the workers of a running Dask scheduler (e.g. tcp://host:8786); "
        "see docs/distributed.md",
    )
    p.add_argument("--resume", action="store_true", help="skip finished points (done.json), finish the others")
    p.add_argument("--overwrite", action="store_true", help="recompute every point even if the folder holds results")
    p.add_argument("--profile", metavar="NAME", help="apply [profiles.NAME] of the sweep file (e.g. quick)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base key, e.g. --set joint.steps=50 (repeatable)",
    )
    p.add_argument(
        "--compile-cache",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="share a persistent XLA compilation cache between points/workers (default folder OUT/.jax_cache)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the points and their folders, run nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    from diffxas.app.config import parse_value  # ~5-15 ms, only with --set; `diffxas --help` imports this module

    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"bad --set {item!r}: expected KEY=VALUE (e.g. joint.steps=50)")
        k, _, v = item.partition("=")
        out[_norm_key(k.strip(), "--set")] = parse_value(v)
    return out


def check_points(points: Sequence[Mapping[str, Any]], where: str, values: bool = False) -> None:
    """Build every point's configuration (:func:`build_point`) and raise the first
    unknown-key error (with ``values``: any configuration error) as one ConfigError line
    naming the sweep file and the point's folder."""
    for p in points:
        try:
            build_point(p["config"])
        except ConfigError as e:
            if values or "unknown key" in str(e):
                raise ConfigError(f"{where}: point {p['dir']}: {_one_line(e)}") from None


def main_cli(args: argparse.Namespace) -> int:
    """The ``diffxas sweep`` command: 0 if every point succeeded, 1 if some failed.

    Configuration errors raise :class:`ConfigError` (the CLI prints one line, exit 2).
    """
    overrides = _parse_set(getattr(args, "overrides", None) or [])
    workers = getattr(args, "workers", 1)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"-o {args.out}: exists and is not a folder (the sweep writes one sub-folder per point)")
    spec = load_spec(args.spec, profile=getattr(args, "profile", None))
    if overrides:
        spec.base = _apply(spec.base, overrides)
    # key typos (in [base], an axis, a point or --set) fail every point: refuse them before
    # anything runs (a bad value stays that point's failure, recorded; the others run)
    check_points(expand_points(spec), spec.source or str(args.spec))
    if getattr(args, "dry_run", False):
        pts = expand_points(spec)
        out = Path(args.out)
        for p in pts:
            state = "done" if (out / p["dir"] / DONE).exists() else "todo"
            print(f"{p['dir']}  [{state}]  {', '.join(f'{k}={_fmt_value(v)}' for k, v in p['axes'].items())}")
        print(f"{len(pts)} point(s)")
        return 0
    s = run(
        args.spec,
        args.out,
        workers=args.workers,
        resume=args.resume,
        progress=not getattr(args, "quiet", False),
        profile=getattr(args, "profile", None),
        overwrite=getattr(args, "overwrite", False),
        overrides=overrides,
        compile_cache=getattr(args, "compile_cache", None),
        scheduler=getattr(args, "scheduler", None),
    )
    c = s.counts
    print(
        f"{c['total']} point(s): {c['ok']} ok ({c['skipped']} skipped as done), {c['failed']} failed; "
        f"summary: {s.paths['csv']}"
    )
    for r in s.failed():
        print(f"  failed: {r['dir']} [{r['method']}]: {r['error']}")
    return 0 if c["failed"] == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diffxas.app.sweep`` (same arguments as ``diffxas sweep``)."""
    p = add_arguments(argparse.ArgumentParser(prog="python -m diffxas.app.sweep", description=__doc__.split("\n\n")[0]))
    args = p.parse_args(argv)
    try:
        return main_cli(args)
    except DiffxasError as e:
        sys.stderr.write(f"diffxas sweep: error: {_one_line(e)}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
