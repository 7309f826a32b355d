"""Tests of the joint solver's steps (diffxas.solvers.joint.solver): a step on a GPU, the
L-BFGS polish, the held-out loss, the convergence criterion.

References are named per test (finite differences through the parameter -> intensity chain
with jax.test_util.check_grads, closed forms, the simulator's ground truth, brute force).
The simulated datasets ``small3`` (3 energies) and ``clean`` (18 energies, noise-free) are
session-scoped fixtures in tests/conftest.py: several of these files use them, and each is
simulated once per test process, as when these tests were one module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffxas.errors import ConfigError
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import model as joint_model
from diffxas.solvers.joint import run as joint_run
from diffxas.solvers.joint import solver as joint_solver


@pytest.mark.gpu
def test_joint_step_on_gpu(small3):
    gpu = [d for d in jax.devices() if d.platform == "gpu"][0]
    with jax.default_device(gpu):
        solver, state, _ = joint_run.prepare_joint(small3.dataset, joint_config.JointConfig.make(steps=2))
        state, loss = solver.step(state)
        assert np.isfinite(float(loss))


def test_lbfgs_polish_lowers_the_loss(small3):
    """L-BFGS polish (optax.lbfgs with a zoom line search) after a few Adam steps: the
    line search guarantees a non-increasing loss, so the polished loss is <= the Adam
    endpoint's and the sample parameters move; probes stay exactly as they were."""
    cfg = joint_config.JointConfig.make(steps=5, init="stxm", log_every=1)
    solver, state, _ = joint_run.prepare_joint(small3.dataset, cfg)
    for _ in range(cfg.optim.steps):
        state, _ = solver.step(state)
    hist = {}
    polished = joint_solver.lbfgs_polish(solver, state, 4, hist)
    l0, l1 = float(solver.loss(state.params)), float(solver.loss(polished.params))
    assert l1 <= l0 * (1 + 1e-6)
    assert l1 < l0  # it does something
    assert len(hist["lbfgs_loss"]) == 4
    np.testing.assert_array_equal(np.asarray(polished.params.probe_re), np.asarray(state.params.probe_re))
    with pytest.raises(ConfigError):
        joint_config.JointConfig.make(lbfgs_steps=-1)


def test_heldout_loss_matches_a_direct_forward_model(small3):
    """The held-out loss (the fit's model on the held-out frames, nominal positions) equals
    the loss summed frame by frame with diffxas.physics.forward on those frames' own geometry
    (reference: forward.frame_geometry + forward.intensities + the loss; rtol 1e-4, float32
    sums of ~24 frames x 4096 pixels)."""
    from diffxas.physics.forward import frame_geometry, intensities, loss_fn

    ds = small3.dataset
    held = ds.holdout_mask(0.1)
    fit_ds, held_ds = ds.subset(~held), ds.subset(held)
    cfg = joint_config.JointConfig.make(steps=2, init="stxm", holdout=0.1)
    solver, state, ctx = joint_run.prepare_joint(fit_ds, cfg, common=ds.common_grid())
    state, _ = solver.step(state)
    state, _ = solver.step(state)
    hold = joint_solver.heldout_problem(solver.prob, held_ds, cfg, ctx["common"])
    got = float(joint_solver.heldout_loss(state.params, hold, cfg.optim.loss, 32))
    obj, phat, _ = joint_model.model_objects_and_probes(state.params, solver.prob)
    ref = 0.0
    lf = loss_fn(cfg.optim.loss)
    ei = np.asarray(held_ds.energy_index)
    for k, g in enumerate(ctx["grids"]):
        idx = np.nonzero(ei == k)[0]
        corner, frac = frame_geometry(np.asarray(held_ds.positions, np.float64)[idx], g, ds.frame_size)
        inten = intensities(
            obj, phat, jnp.full(idx.size, k, jnp.int32), jnp.asarray(corner), jnp.asarray(frac), centered=True
        )
        ref += float(
            lf(
                inten,
                jnp.asarray(np.asarray(held_ds.frames)[idx], jnp.float32),
                jnp.asarray(np.asarray(ds.mask)[k])[None],
            )
        )
    assert got == pytest.approx(ref, rel=1e-4)


def test_convergence_rule_brute_force():
    """``solver.Convergence`` stops at the first step >= ``earliest`` where the window means
    of a loss curve 1 + exp(-s / 10) differ by <= tol relative (reference: the same rule
    written out over the whole curve); tol = 0 never stops; bad settings are ConfigError."""
    cfg = joint_config.JointConfig.make(steps=200, tol=1e-3, tol_window=5)
    conv = joint_solver.Convergence(cfg)
    assert conv.earliest == 50 + 2 * 5  # shape_start = steps // 4 = 50 > probe_start = 20
    loss = 1.0 + np.exp(-np.arange(1, 201) / 10.0)
    got = next(s for s in range(1, 201) if conv.update(s, loss[s - 1]))
    want = next(
        s
        for s in range(conv.earliest, 201)
        if abs(loss[s - 10 : s - 5].mean() - loss[s - 5 : s].mean()) <= 1e-3 * loss[s - 5 : s].mean()
    )
    assert got == want and got > conv.earliest  # the loss still moves at `earliest`
    off = joint_solver.Convergence(joint_config.JointConfig.make(steps=200))
    assert not any(off.update(s, 1.0) for s in range(1, 201))
    for bad in ({"tol": -1.0}, {"tol": float("nan")}, {"tol_window": 0}):
        with pytest.raises(ConfigError, match="tol"):
            joint_solver.Convergence(joint_config.JointConfig.make(**bad))


def test_convergence_stops_the_run_and_records_steps(small3):
    """With tol = 1 (any two window means within 100 %) the run stops at ``earliest``
    (probe_start 4, shape_start 3, window 2: step 8 of 30) and records it in
    history["steps_taken"] and as the last logged step; without tol all steps run."""
    kw = {"steps": 30, "prior": "none", "init": "stxm", "probe_start": 4, "shape_start": 3, "log_every": 50}
    res = joint_run.reconstruct_joint(small3.dataset, joint_config.JointConfig.make(tol=1.0, tol_window=2, **kw))
    assert res.history["steps_taken"].tolist() == [8.0]
    assert res.history["step"][-1] == 8
    res = joint_run.reconstruct_joint(small3.dataset, joint_config.JointConfig.make(**kw))
    assert res.history["steps_taken"].tolist() == [30.0]
