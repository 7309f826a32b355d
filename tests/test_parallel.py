"""Frames split over 4 (forced host) CPU devices give the single-device joint step.

Runs in a subprocess because the device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``). The dataset is a tiny synthetic
one (4 energies x 25 frames of 32x32, frames from the forward model of a smooth object
and a KB probe, Poisson noise), built in well under a second; the joint solver is the
real one (``prepare_joint``, ``solver.step``).

Tolerances (float32; only the order of the sums differs between the runs):
* loss: 2e-4 relative (observed ~4e-5: a float32 sum of ~1e5 positive terms);
* gradients (Adam's first moment after step 1 = 0.1 x gradient): 1e-4 relative L2 per
  leaf (observed ~6e-6);
* parameters after 3 Adam steps, without TV: 1e-3 of the parameter change, relative L2
  per leaf (observed <= 1.1e-4). Adam normalises each element by its gradient RMS, so
  elements whose gradient is ~0 (the TV term on flat regions) amplify rounding
  differences; with TV on only loss and gradients are compared.

Two tests (one subprocess each): full batch without TV (3 steps),
``ShardedJointSolver.loss`` and the ``reconstruct_joint_sharded`` wrapper (2 steps); a
mini-batch of 37 frames (not a multiple of the 4 devices; the same random frames as the
single-device step) with TV (2 steps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r"""
    import json, sys, time
    import jax, jax.numpy as jnp, numpy as np
    from diffxas.data.dataset import Dataset
    from diffxas.physics.forward import frame_geometry, intensities, transmission
    from diffxas.physics.geometry import grid_covering, object_pixel_size, wavelength
    from diffxas.solvers.joint import JointConfig, prepare_joint
    from diffxas.physics.probe import kb_probe, numerical_aperture_for_fwhm
    from diffxas.solvers.joint import parallel

    assert len(jax.devices()) == 4, jax.devices()
    t0 = time.perf_counter()

    def tiny(M=32, side=5, energies=(5462.0, 5466.0, 5469.0, 5472.0), seed=0):
        rng = np.random.default_rng(seed)
        e = np.asarray(energies); K = len(e); z, p = 0.63, 75e-6
        dx = object_pixel_size(e, z, p, M)
        step = 4 * dx[0]
        g = (np.arange(side) - 0.5 * (side - 1)) * step
        yy, xx = np.meshgrid(g, g, indexing="ij")
        pos = np.stack([xx.ravel(), yy.ravel()], -1) + rng.uniform(-0.2, 0.2, (side * side, 2)) * step
        na = numerical_aperture_for_fwhm(6 * dx[0], wavelength(e[0]))
        illum = np.stack([kb_probe(M, dx[k], wavelength(e[k]), na, photons=1e5, defocus_m=1e-6) for k in range(K)])
        frames = []
        for k in range(K):
            grid = grid_covering(pos, dx[k], M, margin_px=2)
            ny, nx = grid.shape
            r2 = ((np.arange(ny)[:, None] - ny / 2) ** 2 + (np.arange(nx)[None, :] - nx / 2) ** 2) / (0.25 * ny) ** 2
            obj = transmission(jnp.asarray(0.3 * np.exp(-r2) * (1 + 0.3 * k / K), jnp.float32),
                               jnp.asarray(-0.5 * np.exp(-r2), jnp.float32))
            c, f = frame_geometry(pos, grid, M)
            inten = intensities(obj[None], jnp.fft.fft2(jnp.asarray(illum[k]))[None], jnp.zeros(len(pos), jnp.int32),
                                jnp.asarray(c), jnp.asarray(f))
            frames.append(rng.poisson(np.maximum(np.asarray(inten), 0)).astype(np.float32))
        n = len(pos)
        return Dataset(frames=jnp.asarray(np.concatenate(frames)), positions=jnp.asarray(np.tile(pos, (K, 1)), jnp.float32),
                       energy_index=jnp.asarray(np.repeat(np.arange(K), n).astype(np.int32)),
                       energies=jnp.asarray(e, jnp.float32), mask=jnp.ones((K, M, M), jnp.float32),
                       illumination=jnp.asarray(illum), distance=z, detector_pixel=p)

    def rel(x, y):
        x = np.asarray(x, np.float64); y = np.asarray(y, np.float64)
        return float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30))

    ds = tiny()
    mesh = parallel.frames_mesh()
    out = {}
    part = sys.argv[1]
    cases = {"full": [("full", None, 0.0, 3)], "minibatch": [("minibatch_tv", 37, 1.0, 2)]}[part]
    for name, bs, tv, steps in cases:
        cfg = JointConfig.make(steps=10, chunk_size=40, probe_start=0, lr_positions=0.01, batch_size=bs, prior="none", tv_weight=tv)
        solver, state0, _ = prepare_joint(ds, cfg, n_shards=4)
        sh = parallel.shard_solver(solver, mesh)
        st = parallel.shard_state(state0, mesh)
        a, b, la, lb = state0, st, [], []
        for i in range(steps):
            a, l1 = solver.step(a)
            b, l4 = sh.step(b)
            la.append(float(l1)); lb.append(float(l4))
            if i == 0:
                grad_rel = max(rel(x, y) for x, y in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state)))
        par_rel = max(rel(np.asarray(x) - np.asarray(x0), np.asarray(y) - np.asarray(x0))
                      for x0, x, y in zip(jax.tree.leaves(state0.params), jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
        out[name] = dict(loss_single=la, loss_sharded=lb,
                         loss_rel=float(np.max(np.abs(np.asarray(lb) / np.asarray(la) - 1))),
                         grad_rel=grad_rel, param_rel=par_rel,
                         shard_shape=list(sh.prob.frames.addressable_shards[0].data.shape),
                         frames_shape=list(sh.prob.frames.shape),
                         params_replicated=bool(b.params.raw["a"].sharding.is_fully_replicated))
        if name == "full":  # the loss alone (the step returns the loss at its input parameters)
            out["loss_fn_rel"] = abs(float(sh.loss(st.params)) / la[0] - 1)
        out[name]["t"] = time.perf_counter() - t0
    if part == "full":  # the prepare -> shard -> loop wrapper (same problem as the full-batch case)
        cfg = JointConfig.make(steps=2, chunk_size=40, probe_start=0, lr_positions=0.01, log_every=1, prior="none")
        res = parallel.reconstruct_joint_sharded(ds, cfg)
        out["wrapper"] = dict(first_loss=float(res.history["loss"][0]) * ds.n_frames * ds.frame_size ** 2,
                              n_hist=len(res.history["loss"]), finite=bool(np.isfinite(res.absorption).all()),
                              n_devices=int(res.config["init"].get("n_devices", 4)))
    out["seconds"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(out))
""")


def _run(part: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, part], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line[-1][len("RESULT ") :])


def test_sharded_full_batch_step_matches_single_device():
    r = _run("full")
    full = r["full"]
    # layout: 100 frames, chunk 40 -> 3 balanced chunks of 36 (a multiple of 4 devices), 9 frames per device per chunk
    assert full["frames_shape"] == [3, 36, 32, 32]
    assert full["shard_shape"] == [3, 9, 32, 32]
    assert full["params_replicated"]
    assert full["loss_rel"] < 2e-4, full
    assert full["grad_rel"] < 1e-4, full
    assert full["param_rel"] < 1e-3, full
    assert r["loss_fn_rel"] < 2e-4, r
    w = r["wrapper"]
    assert w["n_hist"] == 2 and w["finite"], w
    # the wrapper's first logged loss is the loss at the initial parameters
    assert w["first_loss"] == pytest.approx(full["loss_single"][0], rel=2e-4)


def test_sharded_minibatch_step_matches_single_device():
    r = _run("minibatch")
    mb = r["minibatch_tv"]
    assert mb["loss_rel"] < 2e-4, mb
    assert mb["grad_rel"] < 1e-4, mb
