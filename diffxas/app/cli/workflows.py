"""Commands that run whole studies: ``demo`` (simulate -> every method -> cluster ->
evaluate -> report), ``sweep`` (many points from a TOML file, arguments defined by
:mod:`diffxas.app.sweep.cli`) and ``design-energies`` (the energies to measure).

The demo, the pipeline and the design's sample models (jax, h5py) are imported inside the
``_run_*`` functions: ``diffxas --help`` imports none of them.
"""

from __future__ import annotations

import math

from diffxas.app.cli.common import (
    add_config_options,
    add_progress_option,
    config_mapping,
    positive_float,
    positive_int,
    progress,
    require_file,
    simulate_section,
)
from diffxas.app.cli.reconstruction import MethodNames
from diffxas.errors import ConfigError, InputError


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
    # default: every registered method (read when shown or used, see MethodNames)
    p.add_argument("--methods", default=MethodNames(), metavar="M1,M2", help="methods to run (default %(default)s)")
    add_config_options(p, None)
    add_progress_option(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from diffxas.app.demo import run_demo  # the pipeline and the solvers (jax)
    from diffxas.app.pipeline import METHODS  # the registry's table (jax)

    text = str(args.methods)  # the default, MethodNames: every registered method, comma-separated
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        raise ConfigError(f"--methods: choose from {', '.join(METHODS)}, got {text!r}")
    mapping = config_mapping(args, None)
    outcome = run_demo(
        args.out,
        args.preset,
        quick=args.quick,
        seed=args.seed,
        config=mapping,
        methods=methods,
        progress=progress(args),
    )
    print()
    print(outcome.table)
    return 1 if outcome.failures else 0


# ---- sweep (diffxas.app.sweep defines the arguments) ----------------------------------------
def _add_sweep(subparsers) -> None:
    try:
        from diffxas.app.sweep import cli as sweep_cli  # local, in a try: optional (~20 ms, no jax)
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
    from diffxas.app.sweep import cli as sweep_cli  # optional module, see _add_sweep (loaded there already)

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
    p.add_argument("--budget", required=True, type=positive_int, metavar="N", help="number of energies to choose")
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
        "--step", type=positive_float, default=0.25, metavar="EV", help="candidate spacing, eV (default 0.25)"
    )
    p.add_argument(
        "--dose",
        type=positive_float,
        default=None,
        metavar="PHOTONS",
        help="preset: photons per frame (default the preset's); fluence = dose x pixel^2 / scan_step^2",
    )
    p.add_argument(
        "--fluence",
        type=positive_float,
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
        type=positive_int,
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
    add_config_options(p, "simulate")
    p.set_defaults(func=_run_design_energies)


def _run_design_energies(args) -> int:
    from diffxas.app import design  # ~20 ms (its sample models import jax when called), not needed by --help
    from diffxas.app.pipeline import check_output_path  # the pipeline imports the solvers (jax)

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
        require_file(args.from_result, "results file")
        inputs = [args.from_result]
    out = check_output_path(args.output, "energy list", inputs=inputs)
    if args.from_result is not None:
        from diffxas.data.results import read_result  # h5py; only with --from

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
        from diffxas.app.config import sim_config  # ~10-15 ms; only for a preset's sample

        cfg = sim_config(simulate_section(args))
        e_range = (float(min(cfg.energies)), float(max(cfg.energies))) if args.range is None else tuple(args.range)
        from diffxas.physics.scattering import VEdge  # jax; only for a preset's sample

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
