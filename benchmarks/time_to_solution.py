"""Time to solution: each method's map errors against wall time on the same data (issue #27, item 4).

For every dataset (default: preset ``tiny`` seed 0 and a *train* draw of the sample family,
``family-tiny`` seed 0; never seeds >= 1000, the family's held-out draws) this runs, in
one process on the same simulated frames:

* the two-step (ePIE per energy + per-pixel fit, default :class:`TwoStepConfig`);
* the joint with several fixed step counts (default 100, 200, 300: each a full run with its
  own schedule, since the learning rates decay over ``steps``), so that the joint's
  (wall time, map error) pairs form its time-to-solution curve;
* the joint with the convergence criterion (``tol``, ``tol_window``; steps taken recorded).

Each run records its wall time (``time.perf_counter``), process CPU time
(``time.process_time``, all threads), the load average before and after, its map errors
against the truth (:func:`diffxas.analysis.evaluate.evaluate`: RMSE of the edge energy and of
PE/dmt in eV, relative RMS of N_V) and an FFT count (frame-sized 2-D FFT passes per frame,
below). The first run of each method in a process pays its compilations; the JSON keeps
``compile_s`` where the method reports it.

FFT counts (frame-sized transforms): a joint step is ``common.JOINT_STEP_PASSES`` (6) passes
per frame of the batch, plus 2 per frame for the prior weights' Fisher information and 2
for the result's standard-error maps; the two-step's ePIE is 2 passes per frame per epoch
on the pixel grid (4 with sub-pixel positions, ``per_frame_shift``); the two-step's fit
uses no FFT. These are counts of the algorithm, not measurements.

Usage::

    python -m benchmarks.time_to_solution [--out benchmarks/results/time-to-solution-<commit>.json]
        [--steps 100 200 300] [--tol 1e-4] [--tol-window 20] [--datasets tiny:0 family-tiny:0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks import common

#: the maps whose errors make the time-to-solution curves (key in evaluate()'s output, metric)
MAPS = (("edge_energy", "rmse"), ("pre_edge_norm", "rmse"), ("n_v", "rel_rms"))


def _errors(res, truth) -> dict:
    from diffxas.analysis.evaluate import evaluate

    ev = evaluate(res, truth)
    out = {}
    for key, metric in MAPS:
        v = ev.get(key)
        out[f"{key}_{metric}"] = None if not isinstance(v, dict) or v.get(metric) is None else float(v[metric])
    out["coverage"] = ev.get("coverage")
    return out


def _timed(fn):
    l0 = os.getloadavg()
    t, c = time.perf_counter(), time.process_time()
    res = fn()
    return res, {
        "wall_s": time.perf_counter() - t,
        "cpu_s": time.process_time() - c,
        "loadavg_before": list(l0),
        "loadavg_after": list(os.getloadavg()),
    }


def run_dataset(
    name: str,
    seed: int,
    steps=(100, 200, 300),
    tol: float = 1e-4,
    tol_window: int = 20,
    log=print,
    two_step: bool = True,
) -> dict:
    """All runs on one simulated dataset; a JSON-ready dict."""
    from diffxas.simulate.presets import preset, simulate
    from diffxas.solvers.joint.config import JointConfig
    from diffxas.solvers.joint.run import reconstruct_joint
    from diffxas.solvers.twostep.run import TwoStepConfig, reconstruct_two_step

    if seed >= 1000 and name.startswith("family"):
        raise SystemExit("family seeds >= 1000 are the held-out draws: use a train draw (seed < 1000)")
    sim = simulate(preset(name, seed=seed))
    ds, truth = sim.dataset, sim.truth
    n_frames = int(ds.n_frames)
    rec = {
        "dataset": name,
        "seed": seed,
        "n_frames": n_frames,
        "n_energies": int(ds.n_energies),
        "frame_size": int(ds.frame_size),
        "runs": [],
    }

    if two_step:
        tcfg = TwoStepConfig()
        res, t = _timed(lambda: reconstruct_two_step(ds, tcfg))
        epochs = int(getattr(tcfg.epie, "epochs", 0) or 0)
        shift = bool(getattr(tcfg.epie, "per_frame_shift", False))
        run = {
            "method": "two-step",
            **t,
            "epochs": epochs,
            "fft_passes": (4 if shift else 2) * n_frames * epochs,
            **_errors(res, truth),
        }
        rec["runs"].append(run)
        log(f"{name}:{seed} two-step: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU, {run}")

    variants = [(f"joint-{s}", JointConfig.make(steps=s)) for s in steps]
    variants.append(
        (
            f"joint-tol{tol:g}-w{tol_window}",
            JointConfig.make(steps=max(steps), tol=tol, tol_window=tol_window),
        )
    )
    for label, cfg in variants:
        res, t = _timed(lambda cfg=cfg: reconstruct_joint(ds, cfg))
        taken = int(np.asarray(res.history.get("steps_taken", [cfg.optim.steps]))[-1])
        bs = n_frames if cfg.optim.batch_size is None else min(cfg.optim.batch_size, n_frames)
        run = {
            "method": "joint",
            "label": label,
            **t,
            "steps": cfg.optim.steps,
            "steps_taken": taken,
            "tol": cfg.stopping.tol,
            "tol_window": cfg.stopping.tol_window,
            "compile_s": float(np.asarray(res.history.get("compile_s", [np.nan]))[-1]),
            "fft_passes": common.JOINT_STEP_PASSES * bs * taken + 4 * n_frames,
            "final_loss": float(np.asarray(res.history["loss"])[-1]),
            **_errors(res, truth),
        }
        rec["runs"].append(run)
        log(
            f"{name}:{seed} {label}: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU, steps {taken}, "
            + ", ".join(f"{k} {run[k]}" for k in run if k.endswith(("rmse", "rel_rms")))
        )
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out",
        default=None,
        help="JSON file (default benchmarks/results/time-to-solution-<commit>.json)",
    )
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300])
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--tol-window", type=int, default=20)
    ap.add_argument(
        "--datasets",
        nargs="+",
        default=["tiny:0", "family-tiny:0"],
        help="preset:seed (family seeds < 1000)",
    )
    ap.add_argument("--no-two-step", action="store_true", help="joint runs only")
    a = ap.parse_args(argv)
    env = common.env_info()
    out = a.out
    if out is None:
        commit = (env.get("git") or {}).get("git_commit") or "nocommit"
        out = os.path.join(os.path.dirname(__file__), "results", f"time-to-solution-{str(commit)[:7]}.json")
    doc = {
        "kind": "time_to_solution",
        "environment": env,
        "settings": {**vars(a), "out": out},
        "datasets": [],
    }
    for spec in a.datasets:
        name, _, seed = spec.partition(":")
        doc["datasets"].append(
            run_dataset(
                name,
                int(seed or 0),
                tuple(a.steps),
                a.tol,
                a.tol_window,
                two_step=not a.no_two_step,
            )
        )
        doc["environment"]["load_average_at_end"] = list(os.getloadavg())
        tmp = out + ".tmp"
        with open(tmp, "w") as f:  # after every dataset: a partial run keeps what it measured
            json.dump(doc, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        os.replace(tmp, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
