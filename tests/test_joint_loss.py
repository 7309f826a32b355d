"""Tests of the joint loss (diffxas.solvers.joint.loss): gradients through the full chain
and through the background, the noise-rule prior weights.

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

from diffxas.errors import ConfigError
from diffxas.physics import forward as joint_forward
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import loss as joint_loss
from diffxas.solvers.joint import model as joint_model
from diffxas.solvers.joint import run as joint_run


def test_gradients_through_full_chain(small3):
    """check_grads (finite differences, order 1, reverse mode, float64) of the total loss
    w.r.t. per-pixel edge energy, edge jump, composition, the probe and the per-frame
    intensity scales: the whole parameter -> transmission -> resampling -> patch -> far
    field -> intensity -> loss chain, with the default spatial prior."""
    ds = small3.dataset.select_energies([0, 1, 2])
    solver, state, _ = joint_run.prepare_joint(ds, joint_config.JointConfig.make(steps=1, chunk_size=64))
    with jax.enable_x64(True):
        p64 = jax.tree.map(
            lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, state.params
        )
        prob = jax.tree.map(
            lambda x: (
                jnp.asarray(x, jnp.float64) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x
            ),
            solver.prob,
        )

        names = ("b2", "b1", "n_other", "c11")

        def f(b2, b1, n_other, c11, probe_re, dscale):
            raw = dict(p64.raw, b2=b2, b1=b1, n_other=n_other, c11=c11)
            params = joint_model.JointParams(
                raw=raw,
                probe_re=probe_re,
                probe_im=p64.probe_im,
                dpos=p64.dpos,
                dscale=dscale,
                probe_gain=p64.probe_gain,
            )
            return joint_loss.total_loss(params, prob, None, solver.static) / 1e6

        rng = np.random.default_rng(0)
        args = tuple(p64.raw[n] for n in names) + (p64.probe_re, jnp.asarray(rng.normal(0, 0.05, p64.dscale.shape)))
        check_grads(f, args, order=1, modes=("rev",), eps=1e-5, rtol=2e-3, atol=1e-6)


def test_prior_weights_follow_the_noise_level(small3):
    """The noise rule (weight = c * loss-per-NLL / sigma_CRB per pixel): four times the counts (frames x4,
    probes x2, same noise pattern, hence identical initial maps) quadruples the Fisher
    information, halves every sigma and doubles every weight (reference: that scaling,
    tolerance 2e-3 relative, float32 information); prior_strength scales the weights
    linearly; the Poisson loss (loss = NLL) gets twice the amplitude loss's weights."""
    ds = small3.dataset
    cfg = joint_config.JointConfig.make(steps=1, prior="tv", prior_strength=0.5)
    _, _, ctx = joint_run.prepare_joint(ds, cfg)
    w1 = ctx["init_info"]["prior_weights"]
    assert set(w1) == set(cfg.spectra.per_pixel)
    ds4 = dataclasses.replace(ds, frames=np.asarray(ds.frames) * 4.0, illumination=np.asarray(ds.illumination) * 2.0)
    _, _, ctx4 = joint_run.prepare_joint(ds4, cfg)
    w4 = ctx4["init_info"]["prior_weights"]
    for k in w1:
        assert w4[k]["weight"] == pytest.approx(2.0 * w1[k]["weight"], rel=2e-3), k
        assert w4[k]["sigma_raw"] == pytest.approx(0.5 * w1[k]["sigma_raw"], rel=2e-3), k
    solver, state, ctx2 = joint_run.prepare_joint(ds, cfg.replace(prior_strength=1.0, loss="poisson"))
    w2 = ctx2["init_info"]["prior_weights"]
    for k in w1:
        assert w2[k]["weight"] == pytest.approx(4.0 * w1[k]["weight"], rel=1e-6), k
    # the weight maps are c * L / sigma_p (median weight recorded), and the loss adds exactly
    # sum_k TV_{w_k}(raw_k) (multiplier 1) to the data term
    ts = np.asarray(solver.prob.tv_scale)
    for i, k in enumerate(joint_config.ALL_PARAMS):
        if k in w2:
            assert np.all(ts[i] > 0)
            assert np.median(ts[i][np.asarray(solver.prob.illuminated)]) == pytest.approx(w2[k]["weight"], rel=0.5)
        else:
            assert np.all(ts[i] == 0)
    reg = sum(
        float(joint_model._tv(state.params.raw[k], solver.prob.illuminated, ts[i]))
        for i, k in enumerate(joint_config.ALL_PARAMS)
        if k in w2
    )
    assert solver.static[2] == 1.0
    assert float(joint_loss.regulariser(state.params, solver.prob)) == pytest.approx(reg, rel=1e-5)
    assert float(joint_loss.total_loss(state.params, solver.prob, None, solver.static)) == pytest.approx(
        float(joint_loss.data_loss(state.params, solver.prob, None, "poisson", solver.static[1])) + reg, rel=1e-6
    )


def test_prior_weights_fused_equals_eager(clean):
    """The start-up's one jitted call for the prior weights (object information, physical maps,
    spectral Jacobian, raw-map derivatives: ``loss._prior_information``) gives the step-by-step
    eager route's results (reference: ``prior_weights(..., _eager=True)``, the route before the
    fusion). Tolerances from float32: the per-pixel Fisher matrices agree to 1e-6 of their
    largest entry (measured 1.4e-7 on `tiny`: XLA fuses the elementwise chain); the weight
    maps are sigma^-1 through a 7x7 inversion of condition number up to ~2e3, so rounding at
    6e-8 becomes up to ~1e-4 per pixel (measured: max 2.9e-5, median 5e-7 on `tiny`) and the
    recorded median weights 1e-5 (measured 1.4e-6). On 18 energies: with 3 (``small3``) the
    7 per-pixel parameters meet 6 numbers per pixel, the matrices are singular up to
    rounding and no two routes agree on their inverses."""
    ds = clean.dataset
    cfg = joint_config.JointConfig.make(steps=1, prior="none", init="stxm")
    solver, state, ctx = joint_run.prepare_joint(ds, cfg)
    edge = ctx["edge"]
    names = [k for k in joint_config.ALL_PARAMS if k in cfg.spectra.per_pixel]
    fe, pe, de = joint_loss._prior_information_eager(state.params, solver.prob, edge, names)
    ff, pf, df = joint_loss._prior_information(state.params, solver.prob, edge, names)
    assert fe.shape == ff.shape == solver.prob.illuminated.shape + (len(names), len(names))
    big = np.max(np.abs(fe), axis=(-1, -2), keepdims=True)
    assert np.max(np.abs(ff - fe) / np.maximum(big, 1e-30)) < 1e-6
    for k in pe:
        np.testing.assert_array_equal(pf[k], pe[k])
    for k in de:  # fused elementwise chains: a float32 ulp (6e-8) or two
        np.testing.assert_allclose(df[k], de[k], rtol=1e-6)
    cfg_tv = cfg.replace(prior="tv")
    rec_e, maps_e = joint_loss.prior_weights(state.params, solver.prob, cfg_tv, edge, _eager=True)
    rec_f, maps_f = joint_loss.prior_weights(state.params, solver.prob, cfg_tv, edge)
    assert set(rec_e) == set(rec_f) == set(names) and set(maps_e) == set(maps_f)
    for k in rec_e:
        assert rec_f[k]["weight"] == pytest.approx(rec_e[k]["weight"], rel=1e-5), k
        assert rec_f[k]["sigma_raw"] == pytest.approx(rec_e[k]["sigma_raw"], rel=1e-5), k
        np.testing.assert_allclose(maps_f[k], maps_e[k], rtol=1e-4)


def test_gradients_through_the_background(small3):
    """check_grads (finite differences, float64) of the total loss w.r.t. the background's
    log factors ("map": one per energy and detector pixel) with the Poisson loss, and the
    background enters the model intensity as ``+ b``: the data loss with a background
    equals the loss of forward.intensities + b computed by hand (float32 sums, 1e-5
    relative)."""
    from diffxas.physics.forward import poisson_nll

    ds = small3.dataset
    solver, state, _ = joint_run.prepare_joint(
        ds, joint_config.JointConfig.make(steps=1, chunk_size=64, background="map", loss="poisson", prior="none")
    )
    p = state.params
    assert p.background.shape == (3, ds.frame_size, ds.frame_size)
    rng = np.random.default_rng(1)
    logb = jnp.asarray(rng.normal(0, 0.3, p.background.shape), jnp.float32)
    p1 = dataclasses.replace(p, background=logb)
    obj, phat, (dpos, lsc, bg) = joint_model.model_objects_and_probes(p1, solver.prob)
    prob = solver.prob
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    ok = np.asarray(flat(prob.frame_id)) >= 0
    k = flat(prob.energy_index)[ok]
    inten = joint_forward.intensities(obj, phat, k, flat(prob.corner)[ok], flat(prob.frac)[ok], centered=False) + bg[k]
    by_hand = float(poisson_nll(inten, flat(prob.frames)[ok], prob.weight[k]))
    # float32 sums over ~1e5 terms in another order: 1e-5 relative (measured 1.7e-6)
    assert float(joint_loss.data_loss(p1, prob, None, "poisson", 64)) == pytest.approx(by_hand, rel=1e-5)
    np.testing.assert_allclose(np.asarray(bg), np.asarray(prob.background0) * np.exp(np.asarray(logb)), rtol=1e-6)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, p1)
        prob64 = jax.tree.map(
            lambda x: (
                jnp.asarray(x, jnp.float64) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x
            ),
            prob,
        )

        def f(lb):
            return joint_loss.total_loss(dataclasses.replace(p64, background=lb), prob64, None, solver.static) / 1e6

        check_grads(f, (p64.background,), order=1, modes=("rev",), eps=1e-5, rtol=2e-3, atol=1e-6)
    with pytest.raises(ConfigError, match="background"):
        joint_config.JointConfig.make(background="constant")
