"""Reconstruction commands: ``reconstruct`` (any registered method, optionally several
processes) and ``refit`` (the two-step's per-pixel fit again on a result's stacks).

The method names come from the registry (:data:`diffxas.solvers.registry.METHODS`) through
:class:`MethodNames`, read when a value is checked or the help is printed, never when the
parser is built: the registry imports the solvers (jax), which ``diffxas --help`` and
``diffxas info`` must not pay.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np

from diffxas.app.cli.common import (
    add_config_options,
    add_progress_option,
    error_line,
    nonneg_int,
    parse_energy_list,
    positive_int,
    progress,
    require_file,
)
from diffxas.data.orientation import CHOICES as ORIENTATIONS
from diffxas.errors import ConfigError, DiffxasError


class MethodNames:
    """The registered method names, as argparse ``choices`` (``in``, iteration) and as a
    comma-separated text (``str``, a default shown by ``%(default)s``).

    Read from :data:`diffxas.solvers.registry.METHODS` at each use, so a method registered
    after the parser was built (or before :func:`diffxas.app.cli.main`) is accepted and shown
    without a change here. Set as ``choices`` after ``add_argument`` (see
    :func:`_add_reconstruct`): argparse formats the choices of a new argument once, which
    would import the registry when the parser is built.
    """

    @staticmethod
    def names() -> list[str]:
        from diffxas.solvers.registry import METHODS  # jax (the solvers): only when a name is checked or shown

        return list(METHODS)

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name) -> bool:
        return name in self.names()

    def __len__(self) -> int:
        return len(self.names())

    def __str__(self) -> str:
        return ",".join(self.names())


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
    method = p.add_argument("--method", required=True, help="reconstruction method")
    method.choices = MethodNames()  # after add_argument: see MethodNames
    p.add_argument(
        "--half",
        choices=["even", "odd"],
        default=None,
        help="use every other frame of each energy (two independent halves for `evaluate --split`)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--energies",
        type=positive_int,
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
        choices=ORIENTATIONS,
        metavar="NAME",
        help="flip or rotation applied to every frame (and the mask) before use: auto (default: detected "
        "from the frames, see `diffxas orientation`), none, flipud, fliplr, rot180, transpose, "
        'antitranspose, rot90, rot270 (docs/formats.md, "Detector orientation")',
    )
    p.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        metavar="N",
        help="two-step: number of ePIE epochs; the epoch-indexed parts of the ePIE schedule "
        "(probe start, KK start and period, step-decay start) not set explicitly are scaled "
        "with it",
    )
    p.add_argument("--steps", type=nonneg_int, default=None, metavar="N", help="joint: number of optimiser steps")
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
    d.add_argument("--num-processes", type=positive_int, default=None, metavar="N", help="number of processes")
    d.add_argument("--process-id", type=nonneg_int, default=None, metavar="I", help="this process, 0..N-1")
    add_config_options(p, "the method's section")
    add_progress_option(p)
    p.set_defaults(func=_run_reconstruct)


def _start_distributed(args) -> bool:
    """``--distributed`` / ``--coordinator``: join the multi-process job before any JAX
    computation (:func:`diffxas.solvers.joint.parallel.initialize_distributed`); True when several processes run."""
    explicit = args.coordinator is not None or args.num_processes is not None or args.process_id is not None
    if not (args.distributed or explicit):
        return False
    if args.method != "joint":
        raise ConfigError("--distributed runs the joint solver (--method joint); the two-step runs in one process")
    from diffxas.solvers.joint import parallel  # jax: only for a multi-process run

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


def _select_input(ds, args):
    """The part of the data file a reconstruction uses (``--half``, ``--energies``,
    ``--energy-list``) and its record for the results file and the checkpoint metadata:
    ``{"half": "even"|"odd"|None, "energy_indices": [...] or None (all), "energies_ev":
    [...] or None, "n_energies_in_file": K}``."""
    from diffxas.data.dataset import energy_indices  # jax (the dataset classes)

    sel = {"half": args.half, "energy_indices": None, "energies_ev": None, "n_energies_in_file": int(ds.n_energies)}
    if args.energies is not None or args.energy_list is not None:
        listed = parse_energy_list(args.energy_list) if args.energy_list is not None else None
        idx = energy_indices(np.asarray(ds.energies), count=args.energies, listed=listed)
        ds = ds.select_energies(idx)
        sel["energy_indices"] = [int(i) for i in idx]
        sel["energies_ev"] = [float(e) for e in np.asarray(ds.energies)]
    if args.half is not None:
        ds = ds.half(args.half)
    return ds, sel


def _run_reconstruct(args) -> int:
    from diffxas.app.config import apply_overrides, load_config, parse_overrides, validate_config  # ~10-15 ms
    from diffxas.app.pipeline import (  # the pipeline imports the solvers (jax)
        METHODS,
        check_output_path,
        default_checkpoint,
        method_config,
        run,
        set_iterations,
    )
    from diffxas.data import cxi as io_cxi  # h5py + jax
    from diffxas.data import files as io_files  # h5py
    from diffxas.data import results as io_results  # h5py

    method = args.method
    section = METHODS[method].section
    distributed = _start_distributed(args)  # before any JAX computation
    primary = True
    if distributed:
        import jax  # only a multi-process run asks which process it is

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
    mapping = load_config(args.config) if args.config else {}
    mapping = apply_overrides(mapping, parse_overrides(args.overrides, section), default_section=section)
    mapping = apply_overrides(mapping, extra)
    if args.iterations is not None:
        mapping = set_iterations(mapping, "two-step", args.iterations)
    if args.steps is not None:
        mapping = set_iterations(mapping, "joint", args.steps)
    validate_config(mapping)
    cfg = method_config(method, mapping)
    require_file(args.data, "CXI input")
    out = check_output_path(args.output, "results file", inputs=[args.data] + ([args.init] if args.init else []))
    ckpt = None
    if not args.no_checkpoint:
        ckpt = args.checkpoint if args.checkpoint is not None else default_checkpoint(method, out)
        if args.checkpoint is not None:
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
                progress=progress(args) and primary,
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
    add_config_options(p, "twostep")
    p.set_defaults(func=_run_refit)


def _run_refit(args) -> int:
    from diffxas.app.config import apply_overrides, build_config, load_config, parse_overrides  # ~10-15 ms
    from diffxas.app.pipeline import check_output_path  # the pipeline imports the solvers (jax)
    from diffxas.data import files as io_files  # h5py
    from diffxas.data import results as io_results  # h5py
    from diffxas.solvers.twostep.fitting import FitConfig  # jax
    from diffxas.solvers.twostep.run import refit_two_step  # jax

    over = parse_overrides(args.overrides, "twostep")
    bad = [k for k in over if not k.startswith("twostep.fit.")]
    if bad:
        raise ConfigError(f"refit changes only the fit settings (fit.KEY=VALUE); cannot set {', '.join(bad)}")
    mapping = load_config(args.config) if args.config else {}
    tw = mapping.get("twostep") or {}
    fit_map = dict(tw.get("fit") or {}) if isinstance(tw, dict) else {}
    fit_map = apply_overrides({"twostep": {"fit": fit_map}}, over)["twostep"]["fit"]
    require_file(args.result, "results file")
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
