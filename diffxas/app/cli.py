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
import os
import sys
from collections.abc import Callable, Sequence

from diffxas import __version__
from diffxas.app import compile_cache
from diffxas.errors import DiffxasError

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
    from diffxas.data.info import summarize

    texts = [summarize(path) + _info_checks(path) for path in args.files]
    print("\n\n".join(texts))
    return 0


# ---- export ------------------------------------------------------------------------------
def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write one energy of a multi-energy CXI file as a plain single-entry CXI file",
        description="Write the entry at photon energy --energy of a multi-energy CXI file as a single-entry CXI "
        "file (/entry_1 only, CXI 1.6 layout) that single-energy ptychography codes read as it is "
        "(ptychodus, PtyPy's HDF5 loader, ...). The translation is written as the probe position "
        "(x, y, 0) by default, the sign those codes take; --translation sample keeps the CXI "
        'specification\'s sample translation (-x, -y, 0). See docs/formats.md, "Other ptychography codes".',
        epilog="example: diffxas export data.cxi --energy 5465.5 -o one.cxi",
    )
    p.add_argument("data", metavar="DATA.cxi", help="multi-energy CXI file")
    p.add_argument(
        "--energy",
        required=True,
        type=float,
        metavar="EV",
        help="photon energy of the entry to export, eV (within 0.01 eV of an entry's energy)",
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="single-entry CXI file to write")
    p.add_argument(
        "--translation",
        choices=("probe", "sample"),
        default="probe",
        help="sign of the written translation: probe = probe position (x, y, 0) as ptychodus and PtyPy "
        "read it (default); sample = CXI's sample translation (-x, -y, 0) as diffxas writes it",
    )
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from diffxas.app.pipeline import check_output_path
    from diffxas.data.cxi import export_cxi_entry

    _require_file(args.data, "CXI file")
    out = check_output_path(args.output, "exported CXI file", inputs=[args.data])
    path, energy, n = export_cxi_entry(args.data, args.energy, out, translation=args.translation)
    print(
        f"wrote {path}: the entry at {energy:.6g} eV ({n} frames) as /entry_1, translation = "
        + ("probe position (x, y, 0)" if args.translation == "probe" else "sample translation (-x, -y, 0)")
    )
    return 0


def _info_checks(path) -> str:
    """Lines for ``diffxas info``: what :mod:`diffxas.data.checks` would refuse or mask in a CXI
    input; map values that are NaN/inf inside the valid pixels of a results file (each
    also one warning line on stderr)."""
    import numpy as np

    from diffxas.data import cxi as io_cxi
    from diffxas.data import info as io_info
    from diffxas.data import results as io_results

    kind = io_info.file_kind(path)
    lines = []
    if kind == "cxi":
        from diffxas.data.checks import findings

        lines = findings(io_cxi.open_cxi(path))
    elif kind == "result":
        from diffxas.maps import MAP_FIELDS

        m = io_results.read_result(path).maps
        v = np.asarray(m.valid, bool)
        for name in MAP_FIELDS:
            bad = int(np.sum(v & ~np.isfinite(np.asarray(getattr(m, name), np.float64))))
            if bad:
                lines.append(f"{name}: {bad} of {int(v.sum())} valid pixels are NaN/inf")
    for line in lines:
        sys.stderr.write(f"{PROG}: warning: {path}: {line}\n")
    return "".join(f"\n  check: {line}" for line in lines)


# ---- orientation -------------------------------------------------------------------------
def _add_orientation(subparsers) -> None:
    p = subparsers.add_parser(
        "orientation",
        help="check which flip or rotation of the frames matches the scan (detector orientation)",
        description="Score the 8 flips and rotations of the detector frames against the scan, from the frames "
        "alone (no reconstruction): each frame's centre of mass is the phase gradient under the probe, "
        "which in the right orientation points against the absorption gradient of the bright-field "
        "image. Prints the scores and the --orientation to use; `diffxas reconstruct` does the same "
        "check by default (--orientation auto). Exit code 0 also when the check is undecided.",
        epilog="example: diffxas orientation data.cxi --json orientation.json",
    )
    p.add_argument("data", metavar="DATA.cxi", help="multi-energy CXI input")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the scores as JSON")
    p.set_defaults(func=_run_orientation)


def _run_orientation(args) -> int:
    import json

    from diffxas.app.pipeline import check_output_path
    from diffxas.data import cxi as io_cxi
    from diffxas.data import files as io_files
    from diffxas.data.orientation import check_centring, check_orientation

    _require_file(args.data, "CXI input")
    out = check_output_path(args.json, "JSON file", inputs=[args.data]) if args.json else None
    ds = io_cxi.open_cxi(args.data)
    check_centring(ds)
    chk = check_orientation(ds)
    print(f"{args.data}: {ds.n_energies} energies, {ds.n_frames} frames of {ds.frame_size} x {ds.frame_size}")
    print(chk.summary())
    if out is not None:
        rec = {"input": str(args.data), "input_sha256": io_files.sha256_file(args.data), **chk.to_dict()}
        io_files.write_text_atomic(out, json.dumps(rec, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


# ---- shared helpers ---------------------------------------------------------------------
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


_positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number_type(float, lambda v: 0 < v < float("inf"), "a positive number", echo_text=True)


def _add_config_options(p, default_section: str | None) -> None:
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


def _add_progress_option(p) -> None:
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown when stderr is a terminal)"
    )


def _progress(args) -> bool:
    if getattr(args, "no_progress", False):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _config_mapping(args, default_section: str | None, extra: dict | None = None) -> dict:
    """--config FILE, then --set overrides, then ``extra`` (dotted keys from dedicated flags)."""
    from diffxas.app.config import (
        apply_overrides,
        load_config,
        parse_overrides,
        validate_config,
    )

    mapping = load_config(args.config) if getattr(args, "config", None) else {}
    mapping = apply_overrides(
        mapping, parse_overrides(getattr(args, "overrides", None), default_section), default_section=default_section
    )
    if extra:
        mapping = apply_overrides(mapping, extra)
    validate_config(mapping)
    return mapping


def _require_file(path, what: str) -> None:
    from pathlib import Path

    from diffxas.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file ({what})")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a file ({what})")


# ---- simulate -------------------------------------------------------------------------
def _add_simulate(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a multi-energy ptychography dataset (CXI) and its ground truth",
        description="Simulate a phantom battery-cathode particle measured by multi-energy ptychography around "
        "the V K edge and write it as a multi-energy CXI file, with the ground-truth maps in a "
        "sidecar file (default OUT.truth.h5: the suffix of OUT replaced by .truth.h5). Values come "
        "from the preset, then [simulate] of --config, then --set, then the options below.",
        epilog="example: diffxas simulate data.cxi --preset small --seed 1 --energies 20",
    )
    p.add_argument("out", metavar="OUT.cxi", help="CXI file to write")
    p.add_argument(
        "--preset",
        default=None,
        help="simulation preset: tiny (tests), small (the demo, default), paper (GPU), family or family-tiny (a randomized sample drawn from --seed; docs/family.md)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed of phantom, scan and noise (default 0)")
    p.add_argument(
        "--dose",
        type=_positive_float,
        default=None,
        metavar="PHOTONS",
        help="incident photons per frame (default: the preset's)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--energies",
        type=_positive_int,
        default=None,
        metavar="N",
        help="use N of the preset's energies, spread evenly in index (first and last included: "
        "indices floor(linspace(0, K-1, N) + 0.5))",
    )
    g.add_argument(
        "--energy-list",
        default=None,
        metavar="E1,E2,...",
        help="comma-separated photon energies in eV, strictly increasing (e.g. 5420,5466,5480,5540)",
    )
    p.add_argument(
        "--truth", default=None, metavar="TRUTH.h5", help="ground-truth file to write (default OUT.truth.h5)"
    )
    _add_config_options(p, "simulate")
    _add_progress_option(p)
    p.set_defaults(func=_run_simulate)


def _parse_energy_list(text: str) -> tuple[float, ...]:
    from diffxas.errors import ConfigError

    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = tuple(float(t) for t in items)
    except ValueError:
        raise ConfigError(f"--energy-list: expected comma-separated energies in eV, got {text!r}") from None
    if len(values) < 2:
        raise ConfigError(f"--energy-list: need at least two energies, got {text!r}")
    return values


def _simulate_section(args) -> dict:
    """The [simulate] section of --config/--set with --preset, --seed and --dose applied."""
    sect = dict(_config_mapping(args, "simulate").get("simulate") or {})
    for key in ("preset", "seed", "dose"):
        if getattr(args, key) is not None:
            sect[key] = getattr(args, key)
    return sect


def _run_simulate(args) -> int:
    import time

    from diffxas.app.config import build_config, sim_config
    from diffxas.app.pipeline import (
        check_output_path,
        default_truth_path,
        select_energies,
        simulate_files,
    )
    from diffxas.data import cxi as io_cxi
    from diffxas.simulate.presets import SimConfig

    sect = _simulate_section(args)
    if args.energy_list is not None:
        sect["energies"] = _parse_energy_list(args.energy_list)
    cfg = sim_config(sect)
    if args.energies is not None:
        cfg = build_config(
            SimConfig, {"energies": select_energies(cfg.energies, args.energies)}, section="simulate", base=cfg
        )
    truth = args.truth if args.truth is not None else default_truth_path(args.out)
    check_output_path(args.out, "CXI file")
    check_output_path(truth, "ground-truth file", inputs=[args.out])
    t0 = time.perf_counter()
    sim, cxi, truth = simulate_files(cfg, args.out, truth, progress=_progress(args))
    wall = time.perf_counter() - t0
    print(io_cxi.cxi_summary(cxi))
    lab = sim.truth.labels
    print(
        f"{truth}: ground truth on {lab.shape[0]} x {lab.shape[1]} pixels "
        f"({len(sim.truth.domain_names)} domain types; {100 * (lab >= 0).mean():.3g} % particle)"
    )
    print(f"simulated preset {cfg.preset!r}, seed {cfg.seed} in {wall:.1f} s")
    return 0


# ---- reconstruct ------------------------------------------------------------------------
def _add_reconstruct(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct chemical-state maps (two-step baseline or joint solver)",
        description="Reconstruct chemical-state maps from a multi-energy CXI file and write a results file. "
        "two-step: ePIE per energy, then a per-pixel fit of the XANES model; joint: the maps are "
        "fitted to all diffraction patterns at once. The configuration is the method's defaults, "
        "then [twostep] or [joint] of --config, then --set, then the options below; the full "
        "configuration, the input path and its SHA-256 are recorded in the results file. "
        "Checkpoints go to RESULT.h5.ckpt (joint, a file) or RESULT.h5.ckpt.d (two-step, a "
        "folder; deleted after success unless --keep-checkpoint) or to --checkpoint PATH (kept); "
        "--resume continues an interrupted run from them.",
        epilog="example: diffxas reconstruct data.cxi --method joint -o joint.h5 --steps 500",
    )
    p.add_argument("data", metavar="DATA.cxi", help="multi-energy CXI input")
    p.add_argument("--method", required=True, choices=["two-step", "joint"], help="reconstruction method")
    p.add_argument(
        "--half",
        choices=["even", "odd"],
        default=None,
        help="use every other frame of each energy (two independent halves for `evaluate --split`)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--energies",
        type=_positive_int,
        default=None,
        metavar="N",
        help="use N of the file's energies, spread evenly in index (first and last included; the rule "
        "of `simulate --energies`): what a shorter energy scan would have measured",
    )
    g.add_argument(
        "--energy-list",
        default=None,
        metavar="E1,E2,...",
        help="use only these of the file's energies (eV, comma-separated, each within 0.01 eV of one in the file)",
    )
    p.add_argument("-o", "--output", required=True, metavar="RESULT.h5", help="results file to write")
    p.add_argument(
        "--orientation",
        default="auto",
        choices=_orientation_choices(),
        metavar="NAME",
        help="flip or rotation applied to every frame (and the mask) before use: auto (default: detected "
        "from the frames, see `diffxas orientation`), none, flipud, fliplr, rot180, transpose, "
        'antitranspose, rot90, rot270 (docs/formats.md, "Detector orientation")',
    )
    p.add_argument(
        "--iterations",
        type=_positive_int,
        default=None,
        metavar="N",
        help="two-step: number of ePIE epochs; the epoch-indexed parts of the ePIE schedule "
        "(probe start, KK start and period, step-decay start) not set explicitly are scaled "
        "with it",
    )
    p.add_argument("--steps", type=_nonneg_int, default=None, metavar="N", help="joint: number of optimiser steps")
    p.add_argument(
        "--init",
        default=None,
        metavar="RESULT.h5",
        help="joint: warm start from a results file (maps and probes; e.g. a two-step result)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="checkpoint file (joint) or folder (two-step); default RESULT.h5.ckpt[.d]",
    )
    p.add_argument("--no-checkpoint", action="store_true", help="write no checkpoints")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint after success")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if there is one")
    d = p.add_argument_group("several processes (joint; docs/distributed.md)")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="run as one of several JAX processes, the frames split over all their devices: the "
        "launcher is detected (SLURM srun, Open MPI mpirun) unless --coordinator is given; each "
        "process reads only its share of the frames, process 0 writes the results",
    )
    d.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="with --num-processes and --process-id: the address of process 0 (implies --distributed)",
    )
    d.add_argument("--num-processes", type=_positive_int, default=None, metavar="N", help="number of processes")
    d.add_argument("--process-id", type=_nonneg_int, default=None, metavar="I", help="this process, 0..N-1")
    _add_config_options(p, "the method's section")
    _add_progress_option(p)
    p.set_defaults(func=_run_reconstruct)


def _start_distributed(args) -> bool:
    """``--distributed`` / ``--coordinator``: join the multi-process job before any JAX
    computation (:func:`diffxas.solvers.joint.parallel.initialize_distributed`); True when several processes run."""
    explicit = args.coordinator is not None or args.num_processes is not None or args.process_id is not None
    if not (args.distributed or explicit):
        return False
    from diffxas.errors import ConfigError

    if args.method != "joint":
        raise ConfigError("--distributed runs the joint solver (--method joint); the two-step runs in one process")
    from diffxas.solvers.joint import parallel

    if not explicit and parallel.distributed_environment() is None:
        raise ConfigError(
            "--distributed: no launcher found (no SLURM srun step, Open MPI mpirun or "
            "JAX_COORDINATOR_ADDRESS); give --coordinator HOST:PORT --num-processes N --process-id I"
        )
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    return True


class _log_to_stderr:
    """Print INFO records of the ``diffxas`` logger to stderr (one line each) while active."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("diffxas")
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        return False


def _orientation_choices():
    from diffxas.data.orientation import CHOICES

    return CHOICES


def _select_input(ds, args):
    """The part of the data file a reconstruction uses (``--half``, ``--energies``,
    ``--energy-list``) and its record for the results file and the checkpoint metadata:
    ``{"half": "even"|"odd"|None, "energy_indices": [...] or None (all), "energies_ev":
    [...] or None, "n_energies_in_file": K}``."""
    import numpy as np

    from diffxas.data.dataset import energy_indices

    sel = {"half": args.half, "energy_indices": None, "energies_ev": None, "n_energies_in_file": int(ds.n_energies)}
    if args.energies is not None or args.energy_list is not None:
        listed = _parse_energy_list(args.energy_list) if args.energy_list is not None else None
        idx = energy_indices(np.asarray(ds.energies), count=args.energies, listed=listed)
        ds = ds.select_energies(idx)
        sel["energy_indices"] = [int(i) for i in idx]
        sel["energies_ev"] = [float(e) for e in np.asarray(ds.energies)]
    if args.half is not None:
        ds = ds.half(args.half)
    return ds, sel


def _run_reconstruct(args) -> int:
    import time

    from diffxas.app.pipeline import (
        METHODS,
        check_output_path,
        default_checkpoint,
        method_config,
        set_iterations,
    )
    from diffxas.data import cxi as io_cxi
    from diffxas.data import files as io_files
    from diffxas.data import results as io_results
    from diffxas.errors import ConfigError

    method = args.method
    section = METHODS[method].section
    distributed = _start_distributed(args)  # before any JAX computation
    primary = True
    if distributed:
        import jax

        primary = jax.process_index() == 0
    if args.iterations is not None and method != "two-step":
        raise ConfigError("--iterations sets the two-step ePIE epochs; use --steps for --method joint")
    if args.steps is not None and method != "joint":
        raise ConfigError("--steps sets the joint solver's steps; use --iterations for --method two-step")
    if args.init is not None and method != "joint":
        raise ConfigError("--init (warm start) applies to --method joint only")
    if args.no_checkpoint and (args.resume or args.checkpoint):
        raise ConfigError("--no-checkpoint cannot be combined with --resume or --checkpoint")
    extra = {}
    if args.init is not None:
        io_results.read_result(args.init)  # validate before the long run (one-line errors)
        extra["joint.init"] = "result"
        extra["joint.init_result"] = args.init
    from diffxas.app.config import (
        apply_overrides,
        load_config,
        parse_overrides,
        validate_config,
    )

    mapping = load_config(args.config) if args.config else {}
    mapping = apply_overrides(mapping, parse_overrides(args.overrides, section), default_section=section)
    mapping = apply_overrides(mapping, extra)
    if args.iterations is not None:
        mapping = set_iterations(mapping, "two-step", args.iterations)
    if args.steps is not None:
        mapping = set_iterations(mapping, "joint", args.steps)
    validate_config(mapping)
    cfg = method_config(method, mapping)
    _require_file(args.data, "CXI input")
    out = check_output_path(args.output, "results file", inputs=[args.data] + ([args.init] if args.init else []))
    ckpt = None
    if not args.no_checkpoint:
        ckpt = args.checkpoint if args.checkpoint is not None else default_checkpoint(method, out)
        if args.checkpoint is not None:
            import os

            for other in [args.data, out] + ([args.init] if args.init else []):
                if os.path.abspath(ckpt) == os.path.abspath(other):
                    raise ConfigError(f"--checkpoint {ckpt} must differ from the input and output files")
            if METHODS[method].checkpoint == "file":
                check_output_path(ckpt, "checkpoint")
    # lazy_frames (joint): frames stay in the file and are read in ranges (streamed every step
    # when they do not fit the device, see JointConfig.memory); otherwise loaded into memory
    ds = io_cxi.open_cxi(args.data) if METHODS[method].lazy_frames else io_cxi.read_cxi(args.data)
    sha = io_files.sha256_file(args.data)
    t0 = time.perf_counter()
    ds, selection = _select_input(ds, args)
    from diffxas.app.pipeline import run

    with _log_to_stderr():  # one-line notes (orientation, the joint's memory mode) on the "diffxas" logger
        try:
            # the one pipeline: checks (config, free space, frames, orientation) -> reconstruct -> write
            runs = run(
                ds,
                {method: cfg},
                source=args.data,
                input_path=args.data,
                input_sha256=sha,
                orientation=args.orientation,
                selection=selection,
                out={method: out},
                checkpoint={method: ckpt},
                resume=args.resume,
                keep_checkpoint=args.checkpoint is not None or args.keep_checkpoint,
                progress=_progress(args) and primary,
                sharded=distributed,
            )
        except DiffxasError as e:
            if not distributed:
                raise
            # one line, then exit at once: jax's shutdown of a broken distributed runtime aborts
            sys.stderr.write(error_line(str(e)) + "\n")
            sys.stderr.flush()
            os._exit(2)
    wall = time.perf_counter() - t0
    if not primary:  # every process holds the same (replicated) result: process 0 wrote it
        return 0
    result, ds = runs[method].result, runs[method].dataset  # ds: the checked frames the method used
    import numpy as np

    valid = np.asarray(result.maps.valid).astype(bool)
    h, w = valid.shape
    loss = np.asarray(result.history.get("loss", [])) if result.history else np.array([])
    last = f"; final loss {float(loss[-1]):.6g}" if loss.size else ""
    ho = ((result.config or {}).get("init") or {}).get("holdout") if method == "joint" else None
    if ho:
        last += f"; {ho['heldout_frames']} frames held out, their loss {ho['final_heldout_loss']:.6g}"
    print(
        f"{method}: {ds.n_energies} energies, {ds.n_frames} frames -> {h} x {w} maps "
        f"({int(valid.sum())} valid pixels){last}; {wall:.1f} s"
    )
    print(f"wrote {out}")
    return 0


# ---- refit ----------------------------------------------------------------------------
def _add_refit(subparsers) -> None:
    p = subparsers.add_parser(
        "refit",
        help="redo the two-step's per-pixel fit on a two-step result's aligned stacks (no new ePIE)",
        description="Fit the XANES model again to the aligned absorption stack of a two-step results file "
        "with other fit settings (e.g. a spatial prior: fit.smooth_sigma), without redoing the "
        "ePIE reconstruction and the alignment, and write a new results file with the new maps "
        "(stacks, probes and ePIE history as they were; the source file, its SHA-256 and the "
        "replaced fit settings are recorded under /config -> refit). Fit settings: those the "
        "source ran with, then [twostep.fit] of --config (other sections are ignored: they "
        "describe the ePIE run), then --set fit.KEY=VALUE.",
        epilog="example: diffxas refit twostep.h5 -o twostep_s1.h5 --set fit.smooth_sigma=1",
    )
    p.add_argument("result", metavar="RESULT.h5", help="two-step results file")
    p.add_argument("-o", "--output", required=True, metavar="NEW.h5", help="results file to write")
    _add_config_options(p, "twostep")
    p.set_defaults(func=_run_refit)


def _run_refit(args) -> int:
    import time

    import numpy as np

    from diffxas.app.config import (
        apply_overrides,
        build_config,
        load_config,
        parse_overrides,
    )
    from diffxas.app.pipeline import check_output_path
    from diffxas.data import files as io_files
    from diffxas.data import results as io_results
    from diffxas.errors import ConfigError
    from diffxas.solvers.twostep.fitting import FitConfig
    from diffxas.solvers.twostep.run import refit_two_step

    over = parse_overrides(args.overrides, "twostep")
    bad = [k for k in over if not k.startswith("twostep.fit.")]
    if bad:
        raise ConfigError(f"refit changes only the fit settings (fit.KEY=VALUE); cannot set {', '.join(bad)}")
    mapping = load_config(args.config) if args.config else {}
    tw = mapping.get("twostep") or {}
    fit_map = dict(tw.get("fit") or {}) if isinstance(tw, dict) else {}
    fit_map = apply_overrides({"twostep": {"fit": fit_map}}, over)["twostep"]["fit"]
    _require_file(args.result, "results file")
    out = check_output_path(args.output, "results file", inputs=[args.result])
    src = io_results.read_result(args.result)
    ran = (src.config or {}).get("fit")
    base = build_config(FitConfig, ran, section="recorded fit") if isinstance(ran, dict) else FitConfig()
    fit = build_config(FitConfig, fit_map, section="twostep.fit", base=base)
    t0 = time.perf_counter()
    res = refit_two_step(src, fit, source=args.result, source_sha256=io_files.sha256_file(args.result))
    io_results.write_result_or_keep(out, res)
    valid = np.asarray(res.maps.valid).astype(bool)
    changed = {k: v for k, v in fit.to_dict().items() if not isinstance(ran, dict) or ran.get(k) != v}
    print(
        f"refit: {len(res.energies)} energies, {valid.shape[0]} x {valid.shape[1]} maps ({int(valid.sum())} valid "
        f"pixels); fit settings changed: {changed or 'none'}; {time.perf_counter() - t0:.1f} s"
    )
    print(f"wrote {out}")
    return 0


# ---- cluster --------------------------------------------------------------------------
def _add_cluster(subparsers) -> None:
    p = subparsers.add_parser(
        "cluster",
        help="k-means clustering of the chemical-state maps of a results file",
        description="Cluster the chemical-state maps of a results file (robustly standardised features, "
        "N_V-weighted k-means, labels ordered by edge energy) and store the clusters in the file's "
        "/clusters group (replaced atomically); a table of centres and fractions goes to "
        "RESULT_clusters.csv. Settings: ClusterConfig defaults, then [cluster] of --config, then "
        "--set, then the options below.",
        epilog="example: diffxas cluster joint.h5 --k auto --features edge_energy,pre_edge_norm,ne_eff_per_nv",
    )
    p.add_argument("result", metavar="RESULT.h5", help="results file (modified in place)")
    p.add_argument("--k", default=None, help="number of clusters, or 'auto' (elbow over 1..k_max; the default)")
    p.add_argument(
        "--features",
        default=None,
        metavar="F1,F2,...",
        help="maps to cluster on (default edge_energy,pre_edge_norm,ne_eff_per_nv)",
    )
    p.add_argument(
        "--weight",
        default=None,
        choices=["n_v", "none"],
        help="n_v: V-density weighted k-means and fractions (default); none: per pixel",
    )
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        metavar="N",
        help="random states of the stability study (default 10; 1 disables it)",
    )
    p.add_argument("--csv", default=None, metavar="FILE.csv", help="table of clusters (default RESULT_clusters.csv)")
    _add_config_options(p, "cluster")
    p.set_defaults(func=_run_cluster)


def _run_cluster(args) -> int:
    from diffxas.analysis.clustering import (
        cluster_file,
        default_csv_path,
        format_clusters,
    )
    from diffxas.app.config import build_section
    from diffxas.app.pipeline import check_output_path

    extra = {}
    if args.k is not None:
        extra["cluster.k"] = args.k
    if args.features is not None:
        extra["cluster.features"] = args.features
    if args.weight is not None:
        extra["cluster.weight"] = None if args.weight == "none" else args.weight
    if args.seeds is not None:
        extra["cluster.seeds"] = args.seeds
    mapping = _config_mapping(args, "cluster", extra)
    cfg = build_section(mapping, "cluster")
    _require_file(args.result, "results file")
    csv = args.csv if args.csv is not None else default_csv_path(args.result)
    check_output_path(csv, "CSV file", inputs=[args.result])
    clusters = cluster_file(args.result, cfg, csv_path=csv)
    print(format_clusters(clusters))
    print(f"wrote /clusters to {args.result} and {clusters.get('csv_path', csv)}")
    return 0


# ---- evaluate -------------------------------------------------------------------------
def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="compare a results file with the ground truth of a simulation",
        description="Compare the maps (and clusters, if present) of a results file with a simulation's "
        "ground truth resampled onto the map grid: coverage, RMSE and bias of the descriptors, "
        "relative error of N_V, adjusted Rand index of the clusters. Prints a summary and writes "
        "all metrics as JSON (default RESULT_eval.json).",
        epilog="example: diffxas evaluate joint.h5 --truth data.truth.h5 --json joint_eval.json",
    )
    p.add_argument("result", metavar="RESULT.h5", help="results file")
    p.add_argument(
        "--truth",
        default=None,
        metavar="TRUTH.h5",
        help="ground-truth file (default: the .truth.h5 file next to the result's input CXI file)",
    )
    p.add_argument("--json", default=None, metavar="OUT.json", help="metrics file to write (default RESULT_eval.json)")
    p.add_argument(
        "--nv-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="evaluation region: truth n_V >= F x its maximum (default 0.25)",
    )
    p.add_argument(
        "--split",
        default=None,
        metavar="OTHER_HALF.h5",
        help="no truth (real data): Fourier ring correlation between RESULT.h5 and the result of the "
        "other half of the frames (reconstruct --half even/odd); resolution at 1/7 and half-bit",
    )
    p.set_defaults(func=_run_evaluate)


def _default_truth_for(result_path) -> str:
    from pathlib import Path

    from diffxas.app.pipeline import default_truth_path
    from diffxas.data import results as io_results
    from diffxas.errors import InputError

    r = io_results.read_result(result_path)
    if not r.input_path:
        raise InputError(f"{result_path}: no --truth given and the results file does not name its input")
    t = default_truth_path(r.input_path)
    if not Path(t).exists():
        raise InputError(f"no --truth given and no ground-truth file at {t} (next to the input {r.input_path})")
    return str(t)


def _run_evaluate(args) -> int:
    from diffxas.analysis.evaluate import default_json_path, evaluate_file, format_metrics
    from diffxas.app.pipeline import check_output_path
    from diffxas.errors import ConfigError

    if not (0.0 < args.nv_fraction < 1.0):
        raise ConfigError(f"--nv-fraction must be in (0, 1), got {args.nv_fraction}")
    _require_file(args.result, "results file")
    if args.split is not None:
        import json as _json
        import os

        from diffxas.analysis.frc import frc_files

        _require_file(args.split, "results file")
        json_path = (
            args.json if args.json is not None else default_json_path(args.result).replace("_eval.json", "_frc.json")
        )
        check_output_path(json_path, "JSON file", inputs=[args.result, args.split])
        out = frc_files(args.result, args.split, json_path=json_path)
        from diffxas.report.figure_style import save_figure
        from diffxas.report.plotting import fig_frc

        # named after the JSON: a second split evaluation in the same folder does not overwrite the first one's figure
        stem = os.path.splitext(os.path.basename(json_path))[0]
        save_figure(
            fig_frc(list(out.values()), labels=list(out)),
            os.path.dirname(os.path.abspath(json_path)),
            stem if stem.endswith("frc") else f"{stem}_frc",
        )
        for name, d in out.items():
            res = {k: v for k, v in d.items() if "resolution" in k} if isinstance(d, dict) else d
            print(f"{name}: {_json.dumps(res, default=str)}")
        print(f"wrote {json_path}")
        return 0
    truth = args.truth if args.truth is not None else _default_truth_for(args.result)
    _require_file(truth, "ground-truth file")
    json_path = args.json if args.json is not None else default_json_path(args.result)
    check_output_path(json_path, "JSON file", inputs=[args.result, truth])
    metrics = evaluate_file(args.result, truth, json_path=json_path, nv_fraction=args.nv_fraction)
    print(format_metrics(metrics))
    print(f"wrote {metrics.get('json_path', json_path)}")
    return 0


# ---- report ---------------------------------------------------------------------------
def _add_report(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="figures and a Markdown summary of one or more results files",
        description="Draw the projections, chemical-state maps, cluster maps and spectra of one or more "
        "results files side by side on common colour scales (PNG and PDF) and write summary.md; "
        "with --truth, add the truth column and a metrics table (metrics.json).",
        epilog="example: diffxas report twostep.h5 joint.h5 -o report --truth data.truth.h5",
    )
    p.add_argument("results", nargs="+", metavar="RESULT.h5", help="results file(s), drawn side by side")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--truth", default=None, metavar="TRUTH.h5", help="ground-truth file (adds truth and metrics)")
    p.add_argument("--labels", default=None, metavar="L1,L2,...", help="column labels (default: the methods)")
    p.add_argument("--formats", default="png,pdf", metavar="png,pdf", help="figure formats (default png,pdf)")
    p.add_argument(
        "--nv-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="evaluation region for the metrics: truth n_V >= F x its maximum (default 0.25)",
    )
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    import os
    from pathlib import Path

    from diffxas.data import results as io_results
    from diffxas.data import truth as io_truth
    from diffxas.errors import ConfigError, InputError
    from diffxas.report.report import report

    labels = None
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.results) or not all(labels):
            raise ConfigError(
                f"--labels needs {len(args.results)} non-empty comma-separated labels, got {args.labels!r}"
            )
    formats = tuple(s.strip().lower() for s in args.formats.split(",") if s.strip())
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if not formats or bad:
        raise ConfigError(f"--formats: choose from png, pdf, svg, got {args.formats!r}")
    if not (0.0 < args.nv_fraction < 1.0):
        raise ConfigError(f"--nv-fraction must be in (0, 1), got {args.nv_fraction}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    # validate every input before anything is written
    for r in args.results:
        _require_file(r, "results file")
        io_results.read_result(r)
    if args.truth is not None:
        from diffxas.analysis.evaluate import check_truth_matches

        _require_file(args.truth, "ground-truth file")
        truth = io_truth.read_truth(args.truth)
        for r in args.results:
            check_truth_matches(io_results.read_result(r), truth, r, args.truth)
    files = report(
        args.results, out, truth_path=args.truth, labels=labels, formats=formats, nv_fraction=args.nv_fraction
    )
    summary = [f for f in files if os.path.basename(f) == "summary.md"]
    print(f"wrote {len(files)} files to {out}/" + (f" (summary: {summary[0]})" if summary else ""))
    return 0


# ---- demo -----------------------------------------------------------------------------
def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="end-to-end demo: simulate, two-step and joint, cluster, evaluate, report",
        description="The whole job on the built-in sample with the default configuration of every method: "
        "simulate (preset small) -> CXI + truth -> two-step -> joint -> cluster both with the "
        "same settings -> evaluate both -> report side by side with the truth -> a summary table "
        "(coverage, RMSEs, ARI, wall time per method). --config/--set change the defaults (the "
        "demo itself tunes nothing).",
        epilog="example: diffxas demo --out demo-output",
    )
    p.add_argument("-o", "--out", default="demo-output", metavar="DIR", help="output folder (default demo-output)")
    p.add_argument("--preset", default="small", help="simulation preset (default small)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument(
        "--quick", action="store_true", help="a fast smoke run: 12 energies, joint 60 steps, two-step 30 ePIE epochs"
    )
    p.add_argument(
        "--methods", default="two-step,joint", metavar="M1,M2", help="methods to run (default two-step,joint)"
    )
    _add_config_options(p, None)
    _add_progress_option(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from diffxas.app.demo import run_demo
    from diffxas.app.pipeline import METHODS
    from diffxas.errors import ConfigError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        raise ConfigError(f"--methods: choose from {', '.join(METHODS)}, got {args.methods!r}")
    mapping = _config_mapping(args, None)
    outcome = run_demo(
        args.out,
        args.preset,
        quick=args.quick,
        seed=args.seed,
        config=mapping,
        methods=methods,
        progress=_progress(args),
    )
    print()
    print(outcome.table)
    return 1 if outcome.failures else 0


# ---- sweep (diffxas.app.sweep defines the arguments) ----------------------------------------
def _add_sweep(subparsers) -> None:
    try:
        from diffxas.app.sweep import cli as sweep_cli
    except Exception:  # a broken optional module must not break the other commands
        return
    p = subparsers.add_parser(
        "sweep",
        help="parameter sweeps: many simulate/reconstruct/evaluate points from a TOML file",
        description="Run a parameter sweep described by a TOML file (base configuration, axes, points, "
        "profiles): one folder per point with data, results and metrics, and a summary table.",
    )
    sweep_cli.add_arguments(p)
    p.set_defaults(func=_run_sweep)


def _run_sweep(args) -> int:
    from diffxas.app.sweep import cli as sweep_cli

    return sweep_cli.main_cli(args)


# ---- design-energies ----------------------------------------------------------------------
def _add_design_energies(subparsers) -> None:
    p = subparsers.add_parser(
        "design-energies",
        help="choose the N photon energies that minimise the predicted map errors",
        description="Choose --budget energies from a candidate grid (--step eV over --range) that minimise the "
        "expected variance of the chemical-state descriptors (edge energy, PE/Delta-mu-t, "
        "Re[Ne]/N_V) for a sample model: the Cramer-Rao bound from the joint model's Fisher "
        "information, normalised A-optimality, greedy selection + exchange (see docs/design.md). "
        "The sample model is a preset's phantom (default small; geometry and dose from the preset, "
        "[simulate] of --config, --set) or the valid pixels of a results file (--from, e.g. a pilot "
        "scan). Prints the energies and the predicted errors of designed, uniform and seed-like "
        "sampling at the same N. Output by suffix: .toml = [simulate] energies (for simulate "
        "--config), .json = energies + full record, anything else = one energy per line (beamline).",
        epilog="example: diffxas design-energies --budget 12 --preset small -o energies.toml",
    )
    p.add_argument("--budget", required=True, type=_positive_int, metavar="N", help="number of energies to choose")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="sample model: this simulation preset's phantom (default small)")
    src.add_argument(
        "--from",
        dest="from_result",
        default=None,
        metavar="RESULT.h5",
        help="sample model: the valid pixels of a results file (two-step or joint)",
    )
    p.add_argument("--seed", type=int, default=None, help="phantom seed of the preset (default 0)")
    p.add_argument(
        "--range",
        nargs=2,
        type=float,
        default=None,
        metavar=("E0", "E1"),
        help="candidate range in eV (default: the preset's or the result's energy range); E0 is always "
        "chosen (the reference energy of Re[Ne]/N_V)",
    )
    p.add_argument(
        "--step", type=_positive_float, default=0.25, metavar="EV", help="candidate spacing, eV (default 0.25)"
    )
    p.add_argument(
        "--dose",
        type=_positive_float,
        default=None,
        metavar="PHOTONS",
        help="preset: photons per frame (default the preset's); fluence = dose x pixel^2 / scan_step^2",
    )
    p.add_argument(
        "--fluence",
        type=_positive_float,
        default=None,
        metavar="PHOTONS",
        help="photons per map pixel per energy (overrides the dose / the result's scan); only scales the "
        "predicted errors, not the design",
    )
    p.add_argument(
        "--min-spacing",
        type=float,
        default=0.0,
        metavar="EV",
        help="minimum distance between chosen energies, eV (default 0: any distinct candidates)",
    )
    p.add_argument(
        "--ridge",
        type=float,
        default=None,
        metavar="R",
        help="ridge prior relative to an average energy's information (default 1e-3)",
    )
    p.add_argument(
        "--shifts",
        default=None,
        metavar="D1,D2,...",
        help="robust design: mean criterion over the sample model with its edge and pre-edge moved by each "
        "shift in eV (default -4,-2,0,2,4; 0 = the local design, see docs/design.md)",
    )
    p.add_argument("--no-exchange", action="store_true", help="greedy selection only (no exchange refinement)")
    p.add_argument(
        "--pixels",
        type=_positive_int,
        default=200,
        metavar="N",
        help="at most N sample-model pixels (evenly spaced; default 200)",
    )
    p.add_argument(
        "--nv-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="sample-model pixels: N_V >= F x its maximum (default 0.25, the evaluation region)",
    )
    p.add_argument(
        "--params",
        default=None,
        metavar="P1,P2,...",
        help="per-pixel parameters (default: the joint solver's per_pixel, or the result's)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="file to write: .toml ([simulate] energies), .json (full record) or text (one energy per line)",
    )
    _add_config_options(p, "simulate")
    p.set_defaults(func=_run_design_energies)


def _run_design_energies(args) -> int:
    import math

    from diffxas.app import design
    from diffxas.app.pipeline import check_output_path
    from diffxas.errors import ConfigError, InputError

    if not (0.0 < args.nv_fraction < 1.0):
        raise ConfigError(f"--nv-fraction must be in (0, 1), got {args.nv_fraction}")
    if not (args.min_spacing >= 0 and math.isfinite(args.min_spacing)):
        raise ConfigError(f"--min-spacing must be >= 0 eV, got {args.min_spacing}")
    ridge = design.DEFAULT_RIDGE if args.ridge is None else args.ridge
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise ConfigError(f"--ridge must be >= 0, got {args.ridge}")
    shifts = design.DEFAULT_SHIFTS
    if args.shifts is not None:
        try:
            shifts = tuple(float(t) for t in args.shifts.split(",") if t.strip())
        except ValueError:
            raise ConfigError(f"--shifts: expected comma-separated numbers in eV, got {args.shifts!r}") from None
        if not shifts or not all(math.isfinite(x) and abs(x) <= 50 for x in shifts):
            raise ConfigError(f"--shifts: expected comma-separated shifts within +-50 eV, got {args.shifts!r}")
    names = None
    if args.params is not None:
        names = [s.strip() for s in args.params.split(",") if s.strip()]
    if args.range is not None and not (args.range[0] < args.range[1]):
        raise ConfigError(f"--range needs E0 < E1, got {args.range[0]:g} {args.range[1]:g}")
    if args.range is not None:
        n_cand = design.candidate_grid(args.range[0], args.range[1], args.step).size
        if args.budget > n_cand:
            raise ConfigError(
                f"--budget {args.budget} exceeds the {n_cand} candidate energies of --range "
                f"{args.range[0]:g} {args.range[1]:g} at --step {args.step:g}"
            )
    inputs = []
    if args.from_result is not None:
        if args.seed is not None or args.dose is not None or args.config or args.overrides:
            raise ConfigError(
                "--seed, --dose, --config and --set describe a preset's sample; they do not apply with --from"
            )
        _require_file(args.from_result, "results file")
        inputs = [args.from_result]
    out = check_output_path(args.output, "energy list", inputs=inputs)
    if args.from_result is not None:
        from diffxas.data.results import read_result

        e = read_result(args.from_result).energies
        lo, hi = float(min(e)), float(max(e))
        e_range = (lo, hi) if args.range is None else tuple(args.range)
        if e_range[0] < lo - 1e-6 or e_range[1] > hi + 1e-6:
            raise InputError(
                f"--range {e_range[0]:g} {e_range[1]:g} eV lies outside the energies of "
                f"{args.from_result} ({lo:g}..{hi:g} eV): its maps constrain the model only there"
            )
        model = design.sample_from_result(
            args.from_result,
            e_range=e_range,
            nv_fraction=args.nv_fraction,
            max_pixels=args.pixels,
            names=names,
            fluence=args.fluence,
        )
    else:
        from diffxas.app.config import sim_config

        cfg = sim_config(_simulate_section(args))
        e_range = (float(min(cfg.energies)), float(max(cfg.energies))) if args.range is None else tuple(args.range)
        from diffxas.physics.scattering import VEdge

        if e_range[0] < e_range[1]:
            # any range that brackets the edge: the sample model's f' window widens to it
            # (VEdge.for_energies, as for a scan); one that does not cannot fix eq. 1
            VEdge.for_energies(cfg.element, e_range, cfg.table, what="--range")
        model = design.sample_from_preset(
            cfg,
            e_range=e_range,
            nv_fraction=args.nv_fraction,
            max_pixels=args.pixels,
            names=names,
            fluence=args.fluence,
        )
    result = design.design_energies(
        model,
        args.budget,
        e_range,
        step=args.step,
        ridge=ridge,
        min_spacing=args.min_spacing,
        exchange=not args.no_exchange,
        shifts=shifts,
    )
    print(design.format_design(result))
    design.write_design(out, result)
    print(f"wrote {out}")
    return 0


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
