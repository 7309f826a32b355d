"""Joint step cost per frame against the number of energies (fixed frames per energy).

Usage::

    python -m benchmarks.joint_energy_scaling [--energies 8 16 32 40] [--fpe 16] [--m 64] [--out FILE.json]

For each K: a synthetic dataset (:func:`benchmarks.common.synthetic_dataset`, ``--fpe``
frames per energy, M = ``--m``), the real solver (``prepare_joint``, ``init="flat"``), and
three jitted pieces timed interleaved with the FFT floor (wall and process CPU time,
medians): ``objects_vjp`` (parameter maps -> every energy's object, the dense resampling of
the map onto each energy's grid, and its backward), ``frames_vjp`` (objects -> loss of every
frame and its backward, as the solver scans it in chunks) and the whole ``step``. The
exponent of CPU time per step against K (log-log least squares) says which piece grows
faster than the work (frames = K x fpe).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import common


def measure(k: int, fpe: int, m: int, min_time: float = 0.5, log=None, chunk_size: int = 512) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from diffxas.solvers.joint import config as jt_config
    from diffxas.solvers.joint import loss as jt_loss
    from diffxas.solvers.joint import model as jt_model
    from diffxas.solvers.joint import run as jt_run

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    ds = common.synthetic_dataset(k, fpe, m)
    solver, state, _ = jt_run.prepare_joint(
        ds, jt_config.JointConfig.make(steps=1000, loss="amplitude", probe_start=0, init="flat", chunk_size=chunk_size)
    )
    prob, params = solver.prob, state.params
    n = int(solver.batch)
    floors = common.fft_floor_calls(n, m, common.FLOOR_PASSES)
    rec = {
        "n_energies": k,
        "frames": n,
        "map_shape": [int(s) for s in prob.illuminated.shape],
        "energy_grid": [int(prob.ry.shape[1]), int(prob.rx.shape[1])],
        "chunks": [int(s) for s in prob.frames.shape[:2]],
        "pieces": {},
    }

    def obj_vjp(p):
        o, vjp = jax.vjp(lambda q: jt_model.model_objects(q, prob), p)
        return vjp(jnp.ones_like(o))

    def loss_grad(p):
        return eqx.filter_value_and_grad(jt_loss.total_loss)(p, prob, None, solver.static)

    pieces = {"objects_vjp": (jax.jit(obj_vjp), (params,)), "loss_grad": (eqx.filter_jit(loss_grad), (params,))}
    for name, (fn, args) in pieces.items():
        jax.block_until_ready(fn(*args))
        t = common.interleaved(lambda fn=fn, args=args: fn(*args), floors, n, min_time=min_time)
        rec["pieces"][name] = {"median_s": t["median_s"], "cpu_median_s": t["cpu_median_s"]}
        rec["floor"] = {
            "median_s": t["floor"]["median_s"],
            "cpu_median_s": t["floor"]["cpu_median_s"],
            "batch": t["floor"]["batch"],
        }
    compiled, _ = common.aot(type(solver).step, solver, state)
    holder = {"s": state}

    def call():
        holder["s"], lv = compiled(solver, holder["s"])
        return lv

    t = common.interleaved(call, floors, n, min_time=min_time)
    rec["pieces"]["step"] = {"median_s": t["median_s"], "cpu_median_s": t["cpu_median_s"]}
    rec["step_cpu_per_frame_ms"] = 1e3 * t["cpu_median_s"] / n
    rec["floor_cpu_per_frame_ms"] = 1e3 * t["floor"]["cpu_median_s"] / n
    rec["loadavg"] = t["loadavg"]
    p = rec["pieces"]
    log(
        f"[K={k:2d}] {n} frames: step {p['step']['cpu_median_s'] * 1e3:.1f} ms cpu ({rec['step_cpu_per_frame_ms']:.3f} "
        f"ms/frame), objects_vjp {p['objects_vjp']['cpu_median_s'] * 1e3:.1f} ms, loss_grad "
        f"{p['loss_grad']['cpu_median_s'] * 1e3:.1f} ms, floor {t['floor']['cpu_median_s'] * 1e3:.1f} ms cpu; load {t['loadavg']}"
    )
    return rec


def exponent(ks, ys) -> float:
    """Slope of log y against log K (least squares)."""
    return float(np.polyfit(np.log(ks), np.log(ys), 1)[0])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--energies", type=int, nargs="+", default=[8, 16, 32, 40])
    ap.add_argument("--fpe", type=int, default=16)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=512, help="JointConfig.chunk_size")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    recs = [measure(k, a.fpe, a.m, chunk_size=a.chunk) for k in a.energies]
    ks = [r["n_energies"] for r in recs]
    doc = {
        "environment": common.env_info(),
        "chunk_size": a.chunk,
        "cases": recs,
        "exponents_cpu": {
            name: exponent(ks, [r["pieces"][name]["cpu_median_s"] for r in recs]) for name in recs[0]["pieces"]
        },
    }
    doc["exponents_cpu"]["floor"] = exponent(ks, [r["floor"]["cpu_median_s"] for r in recs])
    doc["environment"]["load_average_at_end"] = common.loadavg3()
    text = json.dumps(doc, indent=1, default=float)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return doc


if __name__ == "__main__":
    main()
