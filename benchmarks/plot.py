"""Scaling plots from a benchmark JSON: ``python -m benchmarks.plot RESULTS.json [--out DIR]``.

Writes ``<stem>_scaling.png`` (one row per sweep: frames per second, ratio to the FFT floor
(wall and CPU time), compile time) and, when the JSON has a profile, ``<stem>_profile.png``
(where the time of one step goes and the candidate optimisations).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

SWEEP_LABEL = {
    "frames": "frames per step (all energies)",
    "frame_size": "frame size M (pixels)",
    "energies": "number of energies",
    "batch": "batch size (frames per step)",
    "chunk": "chunk size (frames)",
}


def _x(rec, sweep):
    s = rec["shapes"]
    return {
        "frames": s["n_frames"],
        "frame_size": s["frame_size"],
        "energies": s["n_energies"],
        "batch": s["batch"],
        "chunk": s["chunk"],
    }[sweep]


def scaling_figure(doc: dict, path: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r for r in doc.get("joint", []) if "error" not in r]
    sweeps = [s for s in SWEEP_LABEL if any(s in r["sweeps"] for r in cases)]
    if not sweeps:
        return None
    env = doc.get("environment", {})
    fig, axes = plt.subplots(len(sweeps), 3, figsize=(13, 3.2 * len(sweeps)), squeeze=False)
    for row, sw in zip(axes, sweeps):
        rs = sorted((r for r in cases if sw in r["sweeps"]), key=lambda r: _x(r, sw))
        x = [_x(r, sw) for r in rs]
        row[0].plot(x, [r["frames_per_s"] for r in rs], "o-", label="joint step (wall)")
        row[0].plot(
            x, [r["frames_per_step"] / r["step_cpu_median_s"] for r in rs], "s--", alpha=0.7, label="per CPU-second"
        )
        row[0].plot(x, [r["frames_per_step"] / r["fft_floor"]["median_s"] for r in rs], "k:", label="FFT floor (wall)")
        row[0].set_ylabel("frames / s")
        row[1].plot(x, [r["ratio_to_fft_floor"] for r in rs], "o-", label="wall time")
        row[1].plot(x, [r["cpu_ratio_to_fft_floor"] for r in rs], "s--", label="CPU time")
        row[1].axhline(1.5, color="k", ls=":", lw=1, label="6 FFT passes (remat)")
        row[1].set_ylabel("step / FFT floor")
        row[1].set_ylim(bottom=0)
        row[2].plot(x, [r["compile_s"] for r in rs], "o-", label="compile")
        row[2].plot(x, [r["step_median_s"] for r in rs], "s--", label="one step")
        row[2].set_ylabel("seconds")
        for ax in row:
            ax.set_xscale("log", base=2)
            ax.set_xlabel(SWEEP_LABEL[sw])
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        row[0].set_yscale("log")
        row[2].set_yscale("log")
        fixed = rs[0]["config"]
        row[0].set_title(
            f"{sw}: K={fixed['n_energies'] if sw != 'energies' else 'var'}, "
            f"M={fixed['frame_size'] if sw != 'frame_size' else 'var'}",
            fontsize=9,
            loc="left",
        )
    fig.suptitle(
        f"diffxas joint step, suite {doc.get('suite')}: {env.get('device_kind')} "
        f"({env.get('cpu_model')}, {env.get('nproc')} cores), jax {env.get('jax')}, {env.get('date', '')[:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def profile_figure(doc: dict, path: str) -> str | None:
    prof = doc.get("profile")
    if not prof:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    bd = prof.get("breakdown_cpu_s") or prof.get("breakdown_wall_s")
    names = list(bd)
    # pieces are timed separately, so differences can come out slightly negative (noise): shown as 0
    axes[0].barh(range(len(names)), [max(0.0, 1e3 * bd[n]) for n in names])
    axes[0].set_yticks(range(len(names)), [n.split(" (")[0] for n in names], fontsize=8)
    axes[0].axvline(1e3 * prof["pieces"]["fft_floor"]["cpu_median_s"], color="k", ls=":", label="FFT floor (4 passes)")
    axes[0].set_xlabel("ms (process CPU time)")
    axes[0].set_title(
        f"one step: {1e3 * prof['step_cpu_s']:.0f} ms CPU, {prof['cpu_ratio_to_fft_floor']:.1f}x floor", fontsize=9
    )
    axes[0].legend(fontsize=7)
    cand = prof["candidates"]
    names = ["frames_vjp"] + list(cand)
    vals = [prof["pieces"]["frames_vjp"]["cpu_median_s"]] + [cand[n]["cpu_median_s"] for n in cand]
    axes[1].barh(range(len(names)), [1e3 * v for v in vals], color=["C1"] + ["C2"] * len(cand))
    axes[1].set_yticks(range(len(names)), ["as is (frames fwd+bwd)"] + names[1:], fontsize=8)
    axes[1].axvline(1.5e3 * prof["pieces"]["fft_floor"]["cpu_median_s"], color="k", ls=":", label="6 FFT passes")
    axes[1].set_xlabel("ms (process CPU time), frames part of the step")
    axes[1].set_title("candidate optimisations (same loss)", fontsize=9)
    axes[1].legend(fontsize=7)
    c = prof["config"]
    fig.suptitle(
        f"profile: K={c['n_energies']}, {c['frames_per_energy']} frames/energy, M={c['frame_size']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot")
    ap.add_argument("json", help="output of python -m benchmarks.run")
    ap.add_argument("--out", help="directory for the PNGs (default: next to the JSON)")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        doc = json.load(f)
    out = args.out or os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.json))[0]
    for fn, suffix in ((scaling_figure, "scaling"), (profile_figure, "profile")):
        p = fn(doc, os.path.join(out, f"{stem}_{suffix}.png"))
        if p:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
