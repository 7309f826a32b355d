"""Commands that make or inspect data files: ``info``, ``export``, ``orientation``, ``simulate``.

Each command is ``_add_<name>(subparsers)`` (its parser, ``func`` set) and
``_run_<name>(args) -> int``. The data modules (h5py, and jax through the dataset classes)
are imported inside the ``_run_*`` functions: ``diffxas --help`` imports none of them.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from diffxas.app.cli.common import (
    PROG,
    add_config_options,
    add_progress_option,
    parse_energy_list,
    positive_float,
    positive_int,
    progress,
    require_file,
    simulate_section,
)
from diffxas.data.orientation import check_centring, check_orientation
from diffxas.maps import MAP_FIELDS


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
    from diffxas.data.info import summarize  # h5py + jax (the readers)

    texts = [summarize(path) + _info_checks(path) for path in args.files]
    print("\n\n".join(texts))
    return 0


def _info_checks(path) -> str:
    """Lines for ``diffxas info``: what :mod:`diffxas.data.checks` would refuse or mask in a CXI
    input; map values that are NaN/inf inside the valid pixels of a results file (each
    also one warning line on stderr)."""
    from diffxas.data import cxi as io_cxi  # h5py + jax
    from diffxas.data import info as io_info  # h5py + jax
    from diffxas.data import results as io_results  # h5py

    kind = io_info.file_kind(path)
    lines = []
    if kind == "cxi":
        from diffxas.data.checks import findings  # jax; only for CXI inputs

        lines = findings(io_cxi.open_cxi(path))
    elif kind == "result":
        m = io_results.read_result(path).maps
        v = np.asarray(m.valid, bool)
        for name in MAP_FIELDS:
            bad = int(np.sum(v & ~np.isfinite(np.asarray(getattr(m, name), np.float64))))
            if bad:
                lines.append(f"{name}: {bad} of {int(v.sum())} valid pixels are NaN/inf")
    for line in lines:
        sys.stderr.write(f"{PROG}: warning: {path}: {line}\n")
    return "".join(f"\n  check: {line}" for line in lines)


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
    from diffxas.app.pipeline import check_output_path  # the pipeline imports the solvers (jax)
    from diffxas.data.cxi import export_cxi_entry  # h5py + jax

    require_file(args.data, "CXI file")
    out = check_output_path(args.output, "exported CXI file", inputs=[args.data])
    path, energy, n = export_cxi_entry(args.data, args.energy, out, translation=args.translation)
    print(
        f"wrote {path}: the entry at {energy:.6g} eV ({n} frames) as /entry_1, translation = "
        + ("probe position (x, y, 0)" if args.translation == "probe" else "sample translation (-x, -y, 0)")
    )
    return 0


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
    from diffxas.app.pipeline import check_output_path  # the pipeline imports the solvers (jax)
    from diffxas.data import cxi as io_cxi  # h5py + jax
    from diffxas.data import files as io_files  # h5py

    require_file(args.data, "CXI input")
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
        type=positive_float,
        default=None,
        metavar="PHOTONS",
        help="incident photons per frame (default: the preset's)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--energies",
        type=positive_int,
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
    add_config_options(p, "simulate")
    add_progress_option(p)
    p.set_defaults(func=_run_simulate)


def _run_simulate(args) -> int:
    from diffxas.app.config import build_config, sim_config  # ~10-15 ms, not needed by --help or info
    from diffxas.app.pipeline import (  # the pipeline imports the solvers (jax)
        check_output_path,
        default_truth_path,
        select_energies,
        simulate_files,
    )
    from diffxas.data import cxi as io_cxi  # h5py + jax
    from diffxas.simulate.presets import SimConfig  # jax

    sect = simulate_section(args)
    if args.energy_list is not None:
        sect["energies"] = parse_energy_list(args.energy_list)
    cfg = sim_config(sect)
    if args.energies is not None:
        cfg = build_config(
            SimConfig, {"energies": select_energies(cfg.energies, args.energies)}, section="simulate", base=cfg
        )
    truth = args.truth if args.truth is not None else default_truth_path(args.out)
    check_output_path(args.out, "CXI file")
    check_output_path(truth, "ground-truth file", inputs=[args.out])
    t0 = time.perf_counter()
    sim, cxi, truth = simulate_files(cfg, args.out, truth, progress=progress(args))
    wall = time.perf_counter() - t0
    print(io_cxi.cxi_summary(cxi))
    lab = sim.truth.labels
    print(
        f"{truth}: ground truth on {lab.shape[0]} x {lab.shape[1]} pixels "
        f"({len(sim.truth.domain_names)} domain types; {100 * (lab >= 0).mean():.3g} % particle)"
    )
    print(f"simulated preset {cfg.preset!r}, seed {cfg.seed} in {wall:.1f} s")
    return 0
