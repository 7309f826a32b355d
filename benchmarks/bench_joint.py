"""Joint-solver benchmarks: step throughput vs frames, frame size, energies, batch; profile.

Every case builds a synthetic dataset of the requested shape (:func:`common.synthetic_dataset`),
prepares the real solver (``prepare_joint``), compiles ``JointSolver.step`` ahead of time and
times it (:mod:`benchmarks.common` for the conventions), and times the FFT floor on the same
shapes in the same run: the bare batched fft2/ifft2/fft2/ifft2 of (frames per step, M, M)
complex64. ``ratio_to_fft_floor`` = step time / floor time.

:func:`profile_step` times the pieces of one step (the object model with its resampling,
the per-frame forward, the loss, the backward, the optimiser) and candidate optimisations
implemented locally (the package is not changed).
"""

from __future__ import annotations

import gc
import time

import numpy as np

from . import common


def _layout(solver, ds) -> dict:
    prob = solver.prob
    n_chunks, chunk = (int(s) for s in prob.frames.shape[:2])
    return {
        "n_frames": int(ds.n_frames),
        "n_energies": int(ds.n_energies),
        "frame_size": int(ds.frame_size),
        "frames_per_energy": int(ds.n_frames // ds.n_energies),
        "map_shape": [int(s) for s in prob.illuminated.shape],
        "energy_grid_shape": [int(prob.ry.shape[1]), int(prob.rx.shape[1])],
        "n_chunks": n_chunks,
        "chunk": chunk,
        "padded_frames": int(n_chunks * chunk - ds.n_frames),
        "batch": int(solver.batch),
        "step_chunk": int(solver.static[1]),
    }


def joint_case(
    case_id: str,
    n_energies: int,
    frames_per_energy: int,
    frame_size: int,
    batch_size: int | None = None,
    chunk_size: int = 512,
    loss: str = "amplitude",
    min_time: float = 1.0,
    sweeps=(),
    seed: int = 0,
    init: str = "flat",
) -> dict:
    """One timed configuration of the joint step; a JSON-ready dict."""
    import equinox as eqx
    import jax

    from diffxas.solvers.joint.config import JointConfig
    from diffxas.solvers.joint.run import prepare_joint

    gc.collect()
    common.reset_peak_rss()
    rss0 = common.host_memory()["rss_mib"]
    rec = {
        "id": case_id,
        "kind": "joint_step",
        "sweeps": list(sweeps),
        "config": {
            "n_energies": n_energies,
            "frames_per_energy": frames_per_energy,
            "frame_size": frame_size,
            "batch_size": batch_size,
            "chunk_size": chunk_size,
            "loss": loss,
            "init": init,
        },
    }
    t0 = time.perf_counter()
    ds = common.synthetic_dataset(n_energies, frames_per_energy, frame_size, seed=seed)
    rec["data_s"] = time.perf_counter() - t0
    # init="flat": the start-up (prepare_joint) without the default init="epie"'s short ePIE
    # (28-53 s per case on a 2-core CPU); the step timed is the same step (same shapes,
    # same compiled function), only its starting values differ (see docs/scaling.md)
    cfg = JointConfig.make(
        steps=1000, batch_size=batch_size, chunk_size=chunk_size, loss=loss, probe_start=0, init=init
    )
    t0 = time.perf_counter()
    solver, state, _ = prepare_joint(ds, cfg)
    jax.block_until_ready(state)
    rec["setup_s"] = time.perf_counter() - t0
    rec["shapes"] = _layout(solver, ds)
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(eqx.filter(state.params, eqx.is_array)))
    rec["shapes"]["n_trainable"] = n_params
    compiled, rec["compile_s"] = common.aot(type(solver).step, solver, state)
    holder = {"state": state}

    def call():
        holder["state"], loss_v = compiled(solver, holder["state"])  # noqa: F821
        return loss_v

    frames_step = int(solver.batch)
    floors = common.fft_floor_calls(frames_step, frame_size, common.FLOOR_PASSES)
    ref = common.torch_fft_calls(frames_step, frame_size, common.FLOOR_PASSES)
    t = common.interleaved(call, floors, frames_step, min_time=min_time, reference=ref)
    rec.update(
        first_run_s=t["first_run_s"],
        first_call_s=rec["compile_s"] + t["first_run_s"],
        step_median_s=t["median_s"],
        step_min_s=t["min_s"],
        step_max_s=t["max_s"],
        step_cpu_median_s=t["cpu_median_s"],
        reps=t["reps"],
        loadavg=t["loadavg"],
    )
    rec["frames_per_step"] = frames_step
    rec["frames_per_s"] = frames_step / t["median_s"]
    rec["loss_finite"] = bool(np.isfinite(float(call())))
    rec["host_memory"] = dict(common.host_memory(), rss_before_case_mib=rss0)
    rec["device_memory"] = common.device_memory()
    xc = common.xla_compiled(compiled)
    rec["xla_memory"] = common.compiled_memory(xc)
    rec["xla_cost"] = common.compiled_cost(xc)
    rec["fft_floor"] = dict(
        t["floor"],
        frames=frames_step,
        frame_size=frame_size,
        passes=common.FLOOR_PASSES,
        timing="interleaved with the step",
    )
    rec["best_cpu_fft"] = t.get("best_cpu_fft", {"status": "skipped", "reason": "torch not importable"})
    for tag, a, b in (
        ("", t["median_s"], t["floor"]["median_s"]),
        ("cpu_", t["cpu_median_s"], t["floor"]["cpu_median_s"]),
    ):
        j = common.judge_ratio(a, b, common.JOINT_STEP_PASSES, common.FLOOR_PASSES)
        rec[tag + "ratio_to_fft_floor"] = j["ratio"]
        rec["physical_min_ratio"] = j["physical_min"]
        if j["ratio"] is None:
            rec[tag + "ratio_measurement_error"] = j["measurement_error"]
            rec[tag + "ratio_measured"] = j["ratio_measured"]
    del compiled, holder, solver, state, ds, floors
    gc.collect()
    return rec


# ----------------------------------------------------------------------------- suites


def _base(fpe=64, k=4, m=64):
    return dict(n_energies=k, frames_per_energy=fpe, frame_size=m)


def suite_cases(suite: str) -> list[dict]:
    """Case specifications of a suite (id, kwargs, sweeps); shared cases appear once."""
    if suite == "quick":
        specs = {
            # frames (K = 4, M = 64): 64, 256, 1024 frames
            "f64": (_base(16), ["frames"]),
            "f256": (_base(64), ["frames", "frame_size"]),
            "f1024": (_base(256), ["frames", "batch"]),
            # frame size (K = 4, 64 frames per energy)
            "m32": (_base(64, m=32), ["frame_size"]),
            "m128": (_base(64, m=128), ["frame_size"]),
            # energies (16 frames per energy, M = 64)
            "k2": (_base(16, k=2), ["energies"]),
            "k8": (_base(16, k=8), ["energies"]),
            "k32": (_base(16, k=32), ["energies"]),
            # batch (1024 frames)
            "b64": (dict(_base(256), batch_size=64), ["batch"]),
            "b256": (dict(_base(256), batch_size=256), ["batch"]),
        }
        min_time = 0.5
    elif suite == "full":
        specs = {
            "f64": (_base(16), ["frames"]),
            "f256": (_base(64), ["frames", "frame_size"]),
            "f1024": (_base(256), ["frames"]),
            "f4096": (_base(1024), ["frames", "batch"]),
            "m128": (_base(64, m=128), ["frame_size"]),
            "m256": (_base(64, m=256), ["frame_size"]),
            "m512": (_base(16, m=512), ["frame_size"]),
            "k2": (_base(16, k=2), ["energies"]),
            "k8": (_base(16, k=8), ["energies"]),
            "k16": (_base(16, k=16), ["energies"]),
            "k40": (_base(16, k=40), ["energies"]),
            "b64": (dict(_base(1024), batch_size=64), ["batch"]),
            "b256": (dict(_base(1024), batch_size=256), ["batch"]),
            "b1024": (dict(_base(1024), batch_size=1024), ["batch"]),
            "c128": (dict(_base(256), chunk_size=128), ["chunk"]),
            "c1024": (dict(_base(256), chunk_size=1024), ["chunk"]),
        }
        # f1024 (chunk 512) is the middle point of the chunk sweep
        specs["f1024"] = (specs["f1024"][0], specs["f1024"][1] + ["chunk"])
        min_time = 1.0
    else:
        raise ValueError(f"unknown suite {suite!r}")
    return [dict(id=k, kwargs=dict(v[0], min_time=min_time), sweeps=v[1]) for k, v in specs.items()]


#: x value of each sweep (a key of the case's "shapes"/"config")
SWEEP_X = {
    "frames": ("shapes", "n_frames"),
    "frame_size": ("shapes", "frame_size"),
    "energies": ("shapes", "n_energies"),
    "batch": ("shapes", "batch"),
    "chunk": ("shapes", "chunk"),
}


def _ratio_text(rec) -> str:
    r = rec.get("ratio_to_fft_floor")
    cr = rec.get("cpu_ratio_to_fft_floor")
    w = f"x{r:5.2f}" if r is not None else "MEASUREMENT ERROR (below the physical minimum)"
    c = f"cpu x{cr:5.2f}" if cr is not None else "cpu: MEASUREMENT ERROR"
    return f"{w} ({c}, floor batch {rec['fft_floor']['batch']})"


def run_suite(suite: str, log=print, only=None) -> list[dict]:
    out = []
    for spec in suite_cases(suite):
        if only and spec["id"] not in only:
            continue
        t0 = time.perf_counter()
        try:
            rec = joint_case(spec["id"], sweeps=spec["sweeps"], **spec["kwargs"])
        except Exception as e:  # noqa: BLE001 - record and go on (e.g. out of memory)
            rec = {
                "id": spec["id"],
                "kind": "joint_step",
                "sweeps": spec["sweeps"],
                "error": f"{type(e).__name__}: {e}",
            }
        rec["wall_s"] = time.perf_counter() - t0
        out.append(rec)
        if "error" in rec:
            log(f"[joint] {spec['id']:>6}: ERROR {rec['error']}")
        else:
            s = rec["shapes"]
            log(
                f"[joint] {spec['id']:>6}: {s['n_frames']:5d} frames K={s['n_energies']:2d} M={s['frame_size']:3d} "
                f"batch={s['batch']:5d}: {rec['step_median_s'] * 1e3:9.1f} ms/step {rec['frames_per_s']:8.1f} frames/s "
                f"{_ratio_text(rec)} floor, compile {rec['compile_s']:5.1f} s (case {rec['wall_s']:.0f} s)"
            )
    return out


# ----------------------------------------------------------------------------- profile


def profile_step(
    n_energies: int = 4,
    frames_per_energy: int = 64,
    frame_size: int = 64,
    chunk_size: int = 512,
    loss: str = "amplitude",
    min_time: float = 1.0,
    log=print,
) -> dict:
    """Where the time of one full-batch joint step goes, and what candidate changes would save.

    Pieces (each jitted and timed alone, same shapes):
      objects_fwd       params -> objects of every energy (spectral model, 2 resampling matmuls, exp)
      objects_vjp       the same plus its backward (gradient w.r.t. the parameter maps)
      frames_fwd        objects -> loss over all frames (patch, probe shift, 2 FFTs, |.|^2, loss), scanned in chunks
      frames_vjp        the same plus its backward (with the solver's rematerialisation)
      loss_grad         value_and_grad of the total loss (= objects_vjp + frames_vjp, fused)
      step              the solver's step (loss_grad + Adam)
      fft_floor         bare fft2/ifft2/fft2/ifft2 of (frames, M, M)
    Candidates (frames_vjp re-implemented here with one change each):
      patch_slice       cut the patch with one dynamic_slice on the (K, N, N) object stack instead of
                        objects[k] then dynamic_slice (vmap turns objects[k] into a gather of whole
                        objects, and its transpose into a scatter-add of whole objects per frame)
      no_fftshift       compare in the unshifted detector layout (frames and mask ifftshifted once at
                        setup) so no fftshift/ifftshift runs per frame and per pass
      separable_ramp    build the sub-pixel phase ramp exp(-2 pi i (k0 f0 + k1 f1)) as the outer product
                        of two length-M ramps (2M complex exponentials per frame instead of M^2)
      all_three         patch_slice + no_fftshift + separable_ramp
      no_remat          no jax.checkpoint (memory of all exit waves; shows the remat cost)
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from diffxas.physics import forward as fw
    from diffxas.solvers.joint import config as jt_config
    from diffxas.solvers.joint import loss as jt_loss
    from diffxas.solvers.joint import model as jt_model
    from diffxas.solvers.joint import run as jt_run

    ds = common.synthetic_dataset(n_energies, frames_per_energy, frame_size)
    cfg = jt_config.JointConfig.make(steps=1000, chunk_size=chunk_size, loss=loss, probe_start=0)
    solver, state, _ = jt_run.prepare_joint(ds, cfg)
    prob, params = solver.prob, state.params
    lf = fw.loss_fn(loss)
    M = ds.frame_size
    res = {
        "config": {
            "n_energies": n_energies,
            "frames_per_energy": frames_per_energy,
            "frame_size": frame_size,
            "chunk_size": chunk_size,
            "loss": loss,
        },
        "shapes": _layout(solver, ds),
        "pieces": {},
        "candidates": {},
    }

    def timed(name, fn, *args, group="pieces"):
        jfn = jax.jit(fn)
        compiled, t_comp = common.aot(jfn, *args)
        t = common.time_compiled(lambda: compiled(*args), min_time=min_time)
        mem = common.compiled_memory(compiled) or {}
        res[group][name] = {
            "median_s": t["median_s"],
            "cpu_median_s": t["cpu_median_s"],
            "compile_s": t_comp,
            "reps": t["reps"],
            "loadavg": t["loadavg"],
            "xla_temp_bytes": mem.get("temp_size_in_bytes"),
        }
        log(
            f"[profile] {name:>14}: {t['median_s'] * 1e3:9.2f} ms wall {t['cpu_median_s'] * 1e3:9.2f} ms cpu (compile {t_comp:.1f} s)"
        )
        return t["median_s"]

    def obj_of(p):
        return jt_model.model_objects(p, prob)

    timed("objects_fwd", obj_of, params)

    def obj_vjp(p):
        o, vjp = jax.vjp(obj_of, p)
        return vjp(jnp.ones_like(o))

    timed("objects_vjp", obj_vjp, params)
    obj = obj_of(params)
    phat = jnp.fft.fft2(jt_model.probes(params, prob))
    xs = (prob.frames, prob.frame_id, prob.energy_index, prob.corner, prob.frac)

    # ---- the frames part, as the solver does it, and candidate variants
    def ffl_ref(obj, phat, dpos, frames, fid, k, corner, frac, weight, shift=True, patch="gather", sep=False):
        ok = fid >= 0
        j = jnp.where(ok, fid, 0)
        fr = frac + dpos[j]

        def one(kk, c, f):
            if patch == "gather":
                pat = fw.extract_patch(obj[kk], c, M)
            else:
                pat = jax.lax.dynamic_slice(obj, (kk, c[0], c[1]), (1, M, M))[0]
            if sep:  # separable phase ramp: 2M complex exponentials instead of M^2
                k0 = jnp.fft.fftfreq(M).astype(jnp.float32)
                ramp = jnp.exp(-2j * jnp.pi * k0 * f[0])[:, None] * jnp.exp(-2j * jnp.pi * k0 * f[1])[None, :]
                psi = jnp.fft.ifft2(phat[kk] * ramp) * pat
            else:
                psi = fw.shifted_probe(phat[kk], f) * pat
            if shift:
                f2 = fw.far_field(psi)
            else:
                f2 = jnp.fft.fft2(psi, norm="ortho")
            return jnp.real(f2) ** 2 + jnp.imag(f2) ** 2

        inten = jax.vmap(one)(k, corner, fr)
        w = weight[k] * ok[:, None, None]
        return lf(inten, frames, w)

    def frames_loss(obj, phat, dpos, remat=True, shift=True, patch="gather", sep=False, xs=xs, weight=prob.weight):
        def chunk_fn(x):
            return ffl_ref(obj, phat, dpos, *x, weight, shift=shift, patch=patch, sep=sep)

        if remat:
            chunk_fn = jax.checkpoint(chunk_fn)

        def body(acc, x):
            return acc + chunk_fn(x), None

        return jax.lax.scan(body, jnp.float32(0.0), xs)[0]

    timed("frames_fwd", lambda o, ph, d: frames_loss(o, ph, d), obj, phat, params.dpos)
    grad3 = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2))  # noqa: E731
    timed("frames_vjp", grad3(lambda o, ph, d: frames_loss(o, ph, d)), obj, phat, params.dpos)
    timed("loss_grad", lambda p: eqx.filter_value_and_grad(jt_loss.total_loss)(p, prob, None, solver.static), params)
    compiled, t_comp = common.aot(type(solver).step, solver, state)
    t = common.time_compiled(lambda: compiled(solver, state), min_time=min_time)
    res["pieces"]["step"] = {
        "median_s": t["median_s"],
        "cpu_median_s": t["cpu_median_s"],
        "compile_s": t_comp,
        "reps": t["reps"],
        "loadavg": t["loadavg"],
    }
    log(
        f"[profile] {'step':>14}: {t['median_s'] * 1e3:9.2f} ms wall {t['cpu_median_s'] * 1e3:9.2f} ms cpu (compile {t_comp:.1f} s)"
    )
    floor = common.fft_floor(ds.n_frames, M, min_time=min_time)
    res["pieces"]["fft_floor"] = {k: floor.get(k) for k in ("median_s", "cpu_median_s", "batch", "loadavg")}
    log(
        f"[profile] {'fft_floor':>14}: {floor['median_s'] * 1e3:9.2f} ms wall {floor['cpu_median_s'] * 1e3:9.2f} ms cpu"
    )

    # candidates: same loss value (checked), different cost
    sh = lambda x: jnp.fft.ifftshift(x, axes=(-2, -1))  # noqa: E731
    xs_u = (sh(prob.frames),) + xs[1:]
    w_u = sh(prob.weight)
    ref_val = float(jax.jit(lambda o, ph, d: frames_loss(o, ph, d))(obj, phat, params.dpos))
    variants = {
        "patch_slice": dict(patch="slice"),
        "no_fftshift": dict(shift=False, xs=xs_u, weight=w_u),
        "separable_ramp": dict(sep=True),
        "all_three": dict(patch="slice", shift=False, sep=True, xs=xs_u, weight=w_u),
        "no_remat": dict(remat=False),
    }
    for name, kw in variants.items():
        f = lambda o, ph, d, kw=kw: frames_loss(o, ph, d, **kw)  # noqa: E731
        val = float(jax.jit(f)(obj, phat, params.dpos))
        timed(name, grad3(f), obj, phat, params.dpos, group="candidates")
        res["candidates"][name]["loss_rel_diff"] = abs(val / ref_val - 1)
        for key in ("median_s", "cpu_median_s"):
            res["candidates"][name]["speedup_" + key.replace("median_s", "") + "vs_frames_vjp"] = (
                res["pieces"]["frames_vjp"][key] / res["candidates"][name][key]
            )

    for key in ("median_s", "cpu_median_s"):
        p = {k: v[key] for k, v in res["pieces"].items()}
        tag = "wall" if key == "median_s" else "cpu"
        res[f"breakdown_{tag}_s"] = {
            "objects_forward (spectral model + resample + exp)": p["objects_fwd"],
            "objects_backward": p["objects_vjp"] - p["objects_fwd"],
            "frames_forward (patch, shift, FFTs, |.|^2, loss)": p["frames_fwd"],
            "frames_backward (incl. remat forward)": p["frames_vjp"] - p["frames_fwd"],
            "fusion_gain (loss_grad - objects_vjp - frames_vjp)": p["loss_grad"] - p["objects_vjp"] - p["frames_vjp"],
            "optimizer (step - loss_grad)": p["step"] - p["loss_grad"],
        }
        res[f"step_{tag}_s"] = p["step"]
        res[f"{tag}_ratio_to_fft_floor"] = p["step"] / p["fft_floor"]
        res[f"{tag}_frames_part_ratio_to_fft_floor"] = p["frames_vjp"] / p["fft_floor"]
    return res


# ----------------------------------------------------------------------------- streaming


def stream_case(
    case_id: str,
    n_energies: int = 4,
    frames_per_energy: int = 64,
    frame_size: int = 64,
    chunk_size: int = 64,
    min_time: float = 1.0,
    sources=("device", "host", "raw", "gzip"),
    tmpdir: str | None = None,
    log=print,
) -> dict:
    """Time of one full-batch joint step with the frames on the device vs streamed (same shapes).

    Sources: ``device`` (frames resident, ``JointSolver.step``), ``host`` (streamed from an
    in-memory array), ``raw`` / ``gzip`` (streamed from a CXI file opened with
    :func:`diffxas.data.cxi.open_cxi`, uncompressed / gzip with 16-frame HDF5 chunks, read every
    step: the host cache is switched off). Also the time of reading all frames from each
    file once (the I/O floor of a streamed step) and the loss of every variant (they agree
    to float32 rounding).
    """
    import os
    import tempfile

    import jax

    from diffxas.data import cxi as io_cxi
    from diffxas.solvers.joint import stream
    from diffxas.solvers.joint.config import JointConfig
    from diffxas.solvers.joint.run import prepare_joint

    ds = common.synthetic_dataset(n_energies, frames_per_energy, frame_size)
    cfg = JointConfig.make(steps=1000, chunk_size=chunk_size, init="flat", probe_start=0, shape_start=0)
    rec = {
        "id": case_id,
        "kind": "joint_stream",
        "config": {
            "n_energies": n_energies,
            "frames_per_energy": frames_per_energy,
            "frame_size": frame_size,
            "chunk_size": chunk_size,
        },
        "frames_mib": common.nbytes_mib(ds.n_frames * frame_size**2 * 4),
        "variants": {},
    }
    tmp = tempfile.mkdtemp(dir=tmpdir)
    saved = stream.host_available_bytes
    stream.host_available_bytes = lambda: 0  # files are read every step
    try:
        for src in sources:
            data = ds
            if src in ("raw", "gzip"):
                path = os.path.join(tmp, f"{src}.cxi")
                io_cxi.write_cxi(path, ds, compression=None if src == "raw" else "gzip", chunk_frames=16)
                data = io_cxi.open_cxi(path)
                t0 = time.perf_counter()
                stream.load_frames(data.frames, chunk_size)
                read_s = time.perf_counter() - t0
            else:
                read_s = None
            mem = "device" if src == "device" else "stream"
            solver, state, ctx = prepare_joint(data, cfg.replace(memory=mem))
            holder = {"state": state}
            t0 = time.perf_counter()
            holder["state"], loss0 = solver.step(state)
            jax.block_until_ready(loss0)
            first = time.perf_counter() - t0

            def call():
                holder["state"], loss_v = solver.step(holder["state"])  # noqa: F821, B023
                return loss_v

            t = common.time_compiled(call, min_time=min_time)
            rec["n_chunks"], rec["chunk"] = ctx["memory"]["n_chunks"], ctx["memory"]["chunk"]
            rec["variants"][src] = {
                "mode": ctx["memory"]["mode"],
                "first_step_s": first,
                "step_median_s": t["median_s"],
                "step_cpu_median_s": t["cpu_median_s"],
                "reps": t["reps"],
                "loss_step1": float(loss0),
                "read_all_frames_s": read_s,
                "loadavg": t["loadavg"],
            }
            v = rec["variants"][src]
            log(
                f"[stream] {case_id}: {src:>6} ({v['mode']}): {v['step_median_s'] * 1e3:8.1f} ms/step "
                f"(CPU {v['step_cpu_median_s'] * 1e3:8.1f} ms), loss {v['loss_step1']:.6g}"
                + (f", read all frames {read_s * 1e3:.1f} ms" if read_s is not None else "")
            )
            del solver, state, holder
            gc.collect()
    finally:
        stream.host_available_bytes = saved
    return rec


if __name__ == "__main__":  # python -m benchmarks.bench_joint [--out FILE.json]: streamed vs in-memory steps
    import argparse
    import json

    ap = argparse.ArgumentParser(description="joint step: frames on the device vs streamed (host array, files)")
    ap.add_argument("--out")
    ap.add_argument("--large", action="store_true", help="also 1024 frames (K = 4, M = 64, chunks of 256)")
    a = ap.parse_args()
    recs = [stream_case("s256", 4, 64, 64, chunk_size=64)]
    if a.large:
        recs.append(stream_case("s1024", 4, 256, 64, chunk_size=256))
    doc = {"environment": common.env_info(), "stream": recs}
    text = json.dumps(doc, indent=1, default=float)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
