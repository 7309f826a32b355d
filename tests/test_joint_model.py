"""Tests of the joint model (diffxas.solvers.joint.model): raw-parameter transforms, the
masked TV, the probe models (per-energy gains, the smooth Legendre model), relative
pre-edge amplitudes, per-frame intensity scales.

References are named per test (finite differences through the parameter -> intensity chain
with jax.test_util.check_grads, closed forms, the simulator's ground truth, brute force).
The simulated datasets ``small3`` (3 energies) and ``clean`` (18 energies, noise-free) are
session-scoped fixtures in tests/conftest.py: several of these files use them, and each is
simulated once per test process, as when these tests were one module.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from joint_helpers import ENERGIES

from diffxas.errors import ConfigError
from diffxas.simulate.presets import preset, simulate
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import model as joint_model
from diffxas.solvers.joint import run as joint_run


def test_raw_transforms_round_trip():
    sc = joint_model.Scales(amp=0.05, n_other=1e23, e_mid=5480.0, e_half=61.0)
    for name, v in dict(
        a=0.01, b1=0.04, b2=5477.3, b3=3.7, c11=0.01, c12=5466.2, c13=1.1, c21=0.003, c22=5470.0, c23=2.1, n_other=3e23
    ).items():
        r = joint_model.to_raw(name, v, sc)
        assert float(joint_model.from_raw(name, jnp.asarray(r, jnp.float32), sc)) == pytest.approx(v, rel=1e-5), name


def test_shared_parameters_are_scalars(small3):
    cfg = joint_config.JointConfig.make(steps=2, per_pixel=("a", "b1", "b2", "c11", "n_other"))
    solver, state, _ = joint_run.prepare_joint(small3.dataset, cfg)
    assert state.params.raw["c13"].shape == ()
    assert state.params.raw["b2"].ndim == 2
    state, loss = solver.step(state)
    assert np.isfinite(float(loss))


def test_per_energy_gain_scales_the_probes(small3):
    """The per-energy probe model's probes are (probe_re + i probe_im) x exp(gain_k)
    (closed form, float32 1e-6 relative); the gains start at 0 (the start probes
    unchanged) and train from step 0 (``lr_gain``), before the probes themselves
    (``probe_start``), in both probe models; ``lr_gain = 0`` keeps them fixed."""
    ds = small3.dataset
    cfg = joint_config.JointConfig.make(steps=3, init="stxm", prior="none", log_every=1)
    solver, state, _ = joint_run.prepare_joint(ds, cfg)
    assert np.all(np.asarray(state.params.probe_gain) == 0.0)
    q = np.asarray(state.params.probe_re) + 1j * np.asarray(state.params.probe_im)
    g = np.array([0.1, -0.2, 0.05], np.float32)
    p = np.asarray(joint_model.probes(dataclasses.replace(state.params, probe_gain=jnp.asarray(g)), solver.prob))
    np.testing.assert_allclose(p, q * np.exp(g)[:, None, None], rtol=1e-6, atol=1e-6 * np.abs(q).max())
    for model, lr, moved in (
        ("per-energy", 0.01, True),
        ("per-energy", 0.0, False),
        ("smooth", 0.01, True),
        ("smooth", 0.0, False),
    ):
        solver, state0, _ = joint_run.prepare_joint(ds, cfg.replace(lr_gain=lr, probe_model=model, probe_degree=1))
        state = state0
        for _ in range(3):
            state, _ = solver.step(state)
        moved_now = np.asarray(state.params.probe_gain) != np.asarray(state0.params.probe_gain)
        assert bool(np.any(moved_now)) is moved, (model, lr)
        # the probes themselves are still frozen before probe_start (20 steps)
        np.testing.assert_array_equal(np.asarray(state.params.probe_re), np.asarray(state0.params.probe_re))


def test_masked_tv_closed_form():
    """Reference: closed form. A step of height h across columns of an 8 x 8 map has
    isotropic TV = h x 7 (the 7 rows where both forward differences exist); a map that is
    constant on a mask and zero outside has TV 0 over that mask (no jump at its border);
    tolerance 1e-5 relative (the 1e-12 smoothing inside the square root)."""
    h = 0.3
    x = jnp.where(jnp.arange(8)[None, :] >= 4, h, 0.0) * jnp.ones((8, 8))
    ones = jnp.ones((8, 8), bool)
    eps = joint_model.TV_EPS
    assert float(joint_model._tv(x, ones)) == pytest.approx(7 * np.sqrt(h * h + eps) + 42 * np.sqrt(eps), rel=1e-5)
    left = jnp.arange(8)[None, :] < 4
    assert float(joint_model._tv(x, jnp.broadcast_to(left, (8, 8)))) == pytest.approx(49 * np.sqrt(eps), abs=1e-6)
    disc = (jnp.arange(8)[:, None] - 3.5) ** 2 + (jnp.arange(8)[None, :] - 3.5) ** 2 < 9
    assert float(joint_model._tv(2.0 * disc, disc)) == pytest.approx(49 * np.sqrt(eps), abs=1e-6)


def test_frame_scales_recover_flux_jitter():
    """Per-frame intensity scales (``lr_scale``) on noise-free data with 3 % incident-flux
    jitter (simulator ``flux_jitter``). Reference: the simulator's true factors with their
    per-energy mean removed (the gauge of ``frame_nuisances``); after 100 steps the
    recovered log scales correlate with them (> 0.95; measured 0.986) and their RMS error
    is below 30 % of the jitter (measured 17 %)."""
    sim = simulate(preset("tiny", energies=ENERGIES, noise=False, bad_pixel_fraction=0.0, flux_jitter=0.03))
    ds = sim.dataset
    ei = np.asarray(ds.energy_index)
    t = np.log(sim.true_scales)
    t = t - np.asarray([t[ei == k].mean() for k in range(len(ENERGIES))])[ei]
    cfg = joint_config.JointConfig.make(steps=100, prior="none", lr_scale=0.01)
    solver, state, _ = joint_run.prepare_joint(ds, cfg)
    for _ in range(cfg.optim.steps):
        state, _ = solver.step(state)
    _, s = joint_model.frame_nuisances(state.params, solver.prob)
    s = np.asarray(s, np.float64)
    for k in range(len(ENERGIES)):  # the gauge holds exactly
        assert abs(s[ei == k].mean()) < 1e-6
    assert np.corrcoef(s, t)[0, 1] > 0.95
    assert np.sqrt(np.mean((s - t) ** 2)) < 0.3 * np.sqrt(np.mean(t**2))
    with pytest.raises(ConfigError, match="lr_scale"):
        joint_config.JointConfig.make(lr_scale=-1.0)


def test_probe_basis_and_exact_fit():
    """Legendre basis over the scanned energies (column 0 = 1, column 1 = energy scaled to
    [-1, 1], column 2 = (3x^2 - 1)/2, closed forms) and the initial fit: probes that are of
    the model's form exp(g_k) sum_j B_kj Q_j are reproduced exactly (float64, 1e-10 relative)."""
    e = np.array([5420.0, 5450.0, 5480.0, 5540.0])
    b = joint_model.probe_basis(e, 2)
    x = (e - 5480.0) / 60.0
    np.testing.assert_allclose(b, np.stack([np.ones(4), x, 0.5 * (3 * x**2 - 1)], 1), atol=1e-6)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 6, 6)) + 1j * rng.normal(size=(3, 6, 6))
    q[0] += 5.0  # a dominant shared part, as a real probe
    g = np.array([0.1, -0.05, 0.0, 0.2])
    p = np.exp(g)[:, None, None] * np.einsum("kj,jmn->kmn", b.astype(np.float64), q)
    q_fit, g_fit = joint_model.fit_probe_model(p, b.astype(np.float64))
    p_fit = np.exp(g_fit)[:, None, None] * np.einsum("kj,jmn->kmn", b.astype(np.float64), q_fit)
    assert np.max(np.abs(p_fit - p)) < 1e-10 * np.max(np.abs(p))
    with pytest.raises(ConfigError, match="probe_model"):
        joint_config.JointConfig.make(probe_model="shared")
    with pytest.raises(ConfigError, match="probe_degree"):
        joint_config.JointConfig.make(probe_model="smooth", probe_degree=-1)


def test_smooth_probe_model_gradients_and_run(small3):
    """The smooth probe model on 3 energies (degree 1): the simulator's KB probes are one
    array in every energy's own pixels (fixed aperture, achromatic mirrors), so the initial
    fit reproduces the file's illumination (relative error < 1e-4; measured 7e-8 on tiny);
    check_grads (finite differences, float64) of a scalar of the probes w.r.t. the shared
    arrays and the log gains (the rest of the chain is checked through the per-energy
    probes in test_gradients_through_full_chain); a few steps lower the loss, move the
    gains and write per-energy probes to the result."""
    ds = small3.dataset
    cfg = joint_config.JointConfig.make(
        steps=6, probe_model="smooth", probe_degree=1, probe_start=0, prior="none", init="stxm", log_every=1
    )
    solver, state, ctx = joint_run.prepare_joint(ds, cfg)
    assert state.params.probe_re.shape == (2, ds.frame_size, ds.frame_size) and state.params.probe_gain.shape == (3,)
    assert ctx["init_info"]["probe_model_fit"] < 1e-4
    with jax.enable_x64(True):
        prob = jax.tree.map(
            lambda x: (
                jnp.asarray(x, jnp.float64) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x
            ),
            solver.prob,
        )
        w = jnp.asarray(np.random.default_rng(1).normal(size=(3, ds.frame_size, ds.frame_size)))

        def f(re, im, gain):
            params = joint_model.JointParams(
                raw=state.params.raw,
                probe_re=re,
                probe_im=im,
                dpos=state.params.dpos,
                dscale=state.params.dscale,
                probe_gain=gain,
            )
            p = joint_model.probes(params, prob)
            return jnp.sum(w * jnp.abs(p) ** 2) / 1e4 + jnp.sum(w * jnp.real(p)) / 1e2

        args = tuple(
            jnp.asarray(np.asarray(a), jnp.float64)
            for a in (
                state.params.probe_re,
                state.params.probe_im,
                state.params.probe_gain + jnp.array([0.1, -0.1, 0.05]),
            )
        )
        check_grads(f, args, order=1, modes=("rev",), eps=1e-6, rtol=1e-4)
    res = joint_run.reconstruct_joint(ds, cfg)
    assert res.history["loss"][-1] < res.history["loss"][0]
    assert res.probes.shape == (3, ds.frame_size, ds.frame_size)
    assert res.config["joint"]["probe"]["model"] == "smooth"


def test_relative_pre_edge_amplitudes(small3):
    """``relative=("c11", "c21")``: the raw leaves are the ratios to b1, physical() gives
    back the starting c11, c21 on the sample's pixels (float32, 1e-5 relative) and b1 x the
    sample's median ratio elsewhere; the noise-rule prior weights of the ratios (delta
    method) are positive and finite; a step runs; bad names are config errors."""
    ds = small3.dataset
    cfg = joint_config.JointConfig.make(steps=1, relative=("c11", "c21"), init="stxm")
    solver, state, ctx = joint_run.prepare_joint(ds, cfg)
    sc = solver.prob.scales
    assert sc.relative == ("c11", "c21")
    p = joint_model.physical(state.params, sc)
    b1 = np.asarray(p.b1, np.float64)
    sample = b1 > 0.1 * np.percentile(b1, 99)
    r = np.asarray(state.params.raw["c11"], np.float64)
    np.testing.assert_allclose(np.asarray(p.c11)[sample], (b1 * r)[sample], rtol=1e-5)
    assert np.ptp(r[~sample]) < 1e-6  # one median ratio off the sample
    pw = ctx["init_info"]["prior_weights"]
    assert pw["c11"]["weight"] > 0 and np.isfinite(pw["c11"]["sigma_raw"])
    state, loss = solver.step(state)
    assert np.isfinite(float(loss))
    with pytest.raises(ConfigError, match="relative"):
        joint_config.JointConfig.make(relative=("a",))
    solver, state, _ = joint_run.prepare_joint(
        ds, joint_config.JointConfig.make(steps=1, init="stxm", per_pixel=("a", "b2", "c11", "n_other"))
    )
    assert solver.prob.scales.relative == ()  # b1 shared: absolute amplitudes


def test_monitor_sets_the_frame_scales():
    """A dataset with an incident-flux monitor (simulator ``monitor_noise=0``: readings
    exactly 1e5 x the true flux factors, 3 % jitter): before any step the joint model's
    per-frame log scales equal the true log factors with each energy's mean removed (the
    gauge), to 1e-6; they stay fixed while ``lr_scale = 0`` (one step changes nothing); and
    without the monitor they are all 0."""
    kw = dict(energies=(5420.0, 5466.0, 5484.0), noise=False, bad_pixel_fraction=0.0, flux_jitter=0.03)
    sim = simulate(preset("tiny", monitor_noise=0.0, **kw))
    ds = sim.dataset
    ei = np.asarray(ds.energy_index)
    t = np.log(sim.true_scales)
    t = t - np.asarray([t[ei == k].mean() for k in range(3)])[ei]
    cfg = joint_config.JointConfig.make(steps=2, prior="none", init="stxm")
    solver, state, _ = joint_run.prepare_joint(ds, cfg)
    s0 = np.asarray(joint_model.frame_nuisances(state.params, solver.prob)[1], np.float64)
    np.testing.assert_allclose(s0, t, atol=1e-6)
    state, _ = solver.step(state)
    np.testing.assert_array_equal(np.asarray(joint_model.frame_nuisances(state.params, solver.prob)[1], np.float64), s0)
    solver2, state2, _ = joint_run.prepare_joint(simulate(preset("tiny", **kw)).dataset, cfg)
    assert not np.any(np.asarray(joint_model.frame_nuisances(state2.params, solver2.prob)[1]))
