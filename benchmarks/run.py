"""Run the benchmark suites: ``python -m benchmarks.run --suite quick|full [--out FILE.json]``.

Prints one JSON document to stdout (progress lines go to stderr) and writes it to ``--out``
when given. Suites:

* ``quick`` (a few minutes on a 2-core CPU): joint-step throughput vs frames (64-1024),
  frame size (32-128), energies (2-32) and batch size, each with its FFT floor;
* ``full``: the same sweeps to 4096 frames, frame size 64-512, 40 energies, chunk size;
* ``--profile``: also time the pieces of one step and candidate optimisations
  (:func:`benchmarks.bench_joint.profile_step`);
* the ePIE epoch, from ``benchmarks/bench_epie.py`` when that module exists (skipped
  otherwise): ``run(suite[, log]) -> list[dict]`` if it has one, else its command-line
  ``main(argv) -> dict`` (``["--quick"]`` for the quick suite; its printout is discarded).

See ``benchmarks/README.md`` for the fields of the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import sys
import time


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_epie(suite: str) -> dict:
    """The ePIE cases from ``benchmarks.bench_epie`` (absent: a 'skipped' record)."""
    try:
        mod = importlib.import_module("benchmarks.bench_epie")
    except ModuleNotFoundError as e:
        if e.name in ("benchmarks.bench_epie",):
            return {"status": "skipped", "reason": "benchmarks/bench_epie.py not present"}
        return {"status": "error", "reason": f"import failed: {e}"}
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "reason": f"import failed: {type(e).__name__}: {e}"}
    fn = getattr(mod, "run", None) or getattr(mod, "run_suite", None)
    try:
        if fn is not None:
            params = inspect.signature(fn).parameters
            cases = fn(suite, **({"log": _log} if "log" in params else {}))
        elif getattr(mod, "main", None) is not None:
            # command-line entry point: main(argv) -> dict, printing its JSON (kept off our stdout)
            with contextlib.redirect_stdout(io.StringIO()):
                cases = mod.main(["--quick"] if suite == "quick" else [])
        else:
            return {"status": "error", "reason": "benchmarks.bench_epie has neither run(suite) nor main(argv)"}
    except SystemExit as e:
        return {"status": "error", "reason": f"bench_epie exited ({e.code})"}
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "reason": f"{type(e).__name__}: {e}"}
    if isinstance(cases, dict):
        cases = cases.get("cases", [cases])

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "?"

    for c in cases or []:
        for v in (c.get("variants") or c.get("kernel") or []) if isinstance(c, dict) else []:
            if isinstance(v, dict):
                _log(
                    f"[epie] update_probe={v.get('update_probe')} batch_energies={v.get('batch_energies')}: "
                    f"{num(v.get('frames_epochs_per_s'), '.0f')} frames x epochs / s, "
                    + (
                        f"x{num(v.get('ratio_to_fft_floor'), '.1f')} its floor"
                        if v.get("ratio_to_fft_floor") is not None
                        else "MEASUREMENT ERROR (below the physical minimum)"
                    )
                    + f", compile {num(v.get('compile_s'), '.1f')} s"
                )
    return {"status": "ok", "cases": list(cases or [])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--suite",
        choices=("quick", "full", "profile"),
        default="quick",
        help="quick: minutes on a laptop CPU; full: bigger shapes (GPU or patience); profile: only the step profile",
    )
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--profile", action="store_true", help="add the step profile (pieces and candidate optimisations)")
    ap.add_argument("--only", nargs="*", help="only these joint case ids (see bench_joint.suite_cases)")
    ap.add_argument("--no-epie", action="store_true", help="skip the ePIE cases")
    args = ap.parse_args(argv)

    from . import bench_joint, common

    t0 = time.perf_counter()
    doc = {
        "suite": args.suite,
        "environment": common.env_info(),
        "fft_floor_definition": "fastest of several batchings (all frames in one call; chunks of 32/64/256 frames scanned in one "
        "jitted call) of bare jnp fft2, ifft2, fft2, ifft2 of (frames per step, M, M) complex64 (4 passes per "
        "frame: forward + backward of a step), timed interleaved with the step (step, each batching, step, "
        "...) in the same process. The joint step does 6 passes (2 forward, 2 recomputed under "
        "jax.checkpoint, 2 adjoint), so a ratio below 6/4 = 1.5 is physically impossible: it is flagged "
        "(ratio_measurement_error) and its ratio is null",
        "timing": "compile_s = trace + lower + compile (AOT); first_call_s = compile_s + first run; step_median_s = median "
        "wall time of steady steps (block_until_ready); step_cpu_median_s = median process CPU time "
        "(time.process_time, all threads); frames_per_s = frames per step / step_median_s; loadavg = "
        "os.getloadavg() (1, 5, 15 min) at the start and end of each case; setup_s = prepare_joint with "
        "init='flat' (the step timed is the same as after the default init='epie'; only the start values differ)",
    }
    _log(
        f"[env] {doc['environment']['device_kind']} ({doc['environment']['cpu_model']}, nproc {doc['environment']['nproc']}), "
        f"jax {doc['environment']['jax']}, load {doc['environment']['load_average_at_start']}"
    )
    if args.suite != "profile":
        doc["joint"] = bench_joint.run_suite(args.suite, log=_log, only=args.only)
        doc["sweeps"] = {k: {"x": list(v)} for k, v in bench_joint.SWEEP_X.items()}
        doc["epie"] = {"status": "skipped", "reason": "--no-epie"} if args.no_epie else run_epie(args.suite)
        if doc["epie"]["status"] != "ok":
            _log(f"[epie] {doc['epie']['status']}: {doc['epie'].get('reason')}")
        if not args.no_epie:
            from . import bench_numpy_epie

            doc["numpy_epie"] = bench_numpy_epie.run(args.suite, log=_log)
    if args.profile or args.suite == "profile":
        kw = dict(n_energies=4, frames_per_energy=64, frame_size=64, min_time=1.0)
        if args.suite == "full":
            kw.update(frames_per_energy=256, frame_size=128)
        doc["profile"] = bench_joint.profile_step(**kw, log=_log)
    doc["total_s"] = time.perf_counter() - t0
    doc["environment"]["load_average_at_end"] = common.loadavg3()
    text = json.dumps(doc, indent=1, default=float)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        _log(f"[done] {args.out} ({doc['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
