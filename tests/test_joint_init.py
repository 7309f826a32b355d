"""Tests of the joint solver's start (diffxas.solvers.joint.init): the initial shape search,
the STXM start without a probe, warm starts from a results file, per-domain parameters.

References are named per test (finite differences through the parameter -> intensity chain
with jax.test_util.check_grads, closed forms, the simulator's ground truth, brute force).
The simulated datasets ``small3`` (3 energies) and ``clean`` (18 energies, noise-free) are
session-scoped fixtures in tests/conftest.py: several of these files use them, and each is
simulated once per test process, as when these tests were one module.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from diffxas.data import stxm as joint_stxm
from diffxas.errors import ConfigError
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import init as joint_init
from diffxas.solvers.joint import loss as joint_loss
from diffxas.solvers.joint import model as joint_model
from diffxas.solvers.joint import run as joint_run


def test_stxm_start_without_a_probe_warns(small3, caplog):
    import logging

    ds = dataclasses.replace(small3.dataset, illumination=None)
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        _, _, ctx = joint_run.prepare_joint(ds, joint_config.JointConfig.make(init="stxm", steps=1, probe_fwhm=1.5e-7))
    assert any("no illumination" in r.getMessage() and "150 nm" in r.getMessage() for r in caplog.records)
    assert "KB focus of 150 nm" in ctx["init_info"]["probes_from"]


def test_per_domain_parameters(small3, tmp_path):
    """Per-domain leaves: one value per domain of a /clusters/labels map (plus one for the
    unlabelled pixels), spread over the map. Reference: the chain rule -- the gradient of
    the loss w.r.t. a domain's value equals the sum over its pixels of the gradient w.r.t.
    the same parameter made per pixel (same values), tolerance 1e-4 of the largest."""
    import equinox as eqx

    from diffxas.data import results as io_results

    ds = small3.dataset
    path = str(tmp_path / "pass1.h5")
    io_results.write_result(
        path, joint_run.reconstruct_joint(ds, joint_config.JointConfig.make(steps=1, prior="none", init="stxm"))
    )
    shape = ds.common_grid().shape
    lab = np.where(np.arange(shape[1])[None, :] < shape[1] // 2, 0, 1) * np.ones(shape, int)
    lab[:, :3] = -1
    io_results.write_clusters(path, {"labels": lab})
    cfg = joint_config.JointConfig.make(steps=2, prior="none", per_domain=("c12", "c13"), domains=path, init="stxm")
    solver, state, ctx = joint_run.prepare_joint(ds, cfg)
    assert ctx["init_info"]["domains"]["n_domains"] == 2
    assert state.params.raw["c12"].shape == (3,) and state.params.raw["b2"].ndim == 2
    dom = np.asarray(solver.prob.domain)
    np.testing.assert_array_equal(dom, np.where(lab >= 0, lab, 2))
    p = joint_model.physical(state.params, solver.prob.scales, None, solver.prob.domain)
    for d in range(3):
        vals = np.asarray(p.c12)[dom == d]
        assert np.ptp(vals) == 0.0
    # chain rule against the per-pixel parameterisation at the same values
    cfg_pp = joint_config.JointConfig.make(
        steps=2, prior="none", per_pixel=cfg.spectra.per_pixel + ("c12", "c13"), init="stxm"
    )
    solver_pp, state_pp, _ = joint_run.prepare_joint(ds, cfg_pp)
    raw_pp = dict(state.params.raw, c12=state.params.raw["c12"][dom], c13=state.params.raw["c13"][dom])
    params_pp = eqx.tree_at(lambda q: q.raw, state.params, raw_pp)
    g_dom = eqx.filter_grad(joint_loss.total_loss)(state.params, solver.prob, None, solver.static).raw
    g_pix = eqx.filter_grad(joint_loss.total_loss)(params_pp, solver_pp.prob, None, solver_pp.static).raw
    for k in ("c12", "c13"):
        ref = np.asarray([np.asarray(g_pix[k], np.float64)[dom == d].sum() for d in range(3)])
        np.testing.assert_allclose(np.asarray(g_dom[k], np.float64), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    res = joint_run.reconstruct_joint(ds, cfg)
    assert res.config["init"]["domains"]["file"] == path
    assert len(np.unique(res.maps.extra["c12"])) <= 3


def test_per_domain_config_errors(small3, tmp_path):
    with pytest.raises(ConfigError, match="both per_pixel and per_domain"):
        joint_config.JointConfig.make(per_domain=("b2",), domains="x.h5")
    with pytest.raises(ConfigError, match="needs domains"):
        joint_config.JointConfig.make(per_domain=("c12",))
    with pytest.raises(ConfigError, match="unknown"):
        joint_config.JointConfig.make(per_domain=("zz",), domains="x.h5")
    from diffxas.data import results as io_results

    path = str(tmp_path / "nolabels.h5")
    io_results.write_result(
        path,
        joint_run.reconstruct_joint(small3.dataset, joint_config.JointConfig.make(steps=1, prior="none", init="stxm")),
    )
    with pytest.raises(ConfigError, match="diffxas cluster"):
        joint_run.prepare_joint(
            small3.dataset, joint_config.JointConfig.make(steps=1, per_domain=("c12",), domains=path)
        )


def test_warm_start_shared_parameters_and_probes(small3, tmp_path):
    """Warm start from a results file whose per-pixel maps are NaN off the sample (as the
    two-step writes them): shared parameters start from the sample's values, not from a
    median over the zero-filled membrane (regression: c12 started at the scan's lower end
    and c13 at its minimum, 0.3 eV). The result's probes, 4 % too bright (as ePIE's, whose
    object includes the membrane), are rescaled so that sum |P|^2 equals a membrane-only
    frame's counts (reference: ``membrane_counts``, tolerance 1e-4 relative)."""
    import equinox as eqx  # noqa: F401

    from diffxas.data import results as io_results

    ds = small3.dataset
    res = joint_run.reconstruct_joint(ds, joint_config.JointConfig.make(steps=1, prior="none", init="stxm"))
    v = np.asarray(res.maps.valid).astype(bool)
    res.maps.extra["c12"] = np.where(v, 5466.3, np.nan)
    res.maps.extra["c13"] = np.where(v, 1.2, np.nan)
    res.probes = (np.asarray(ds.illumination) * 1.04).astype(np.complex64)
    path = str(tmp_path / "warm.h5")
    io_results.write_result(path, res)
    for probes in ("result", "file"):
        cfg = joint_config.JointConfig.make(steps=1, prior="none", init="result", init_result=path, init_probes=probes)
        solver, state, ctx = joint_run.prepare_joint(ds, cfg)
        p = joint_model.physical(state.params, solver.prob.scales)
        assert float(p.c12) == pytest.approx(5466.3, abs=1e-2) and float(p.c13) == pytest.approx(1.2, abs=1e-3)
        assert ctx["init_info"]["init_probes"] == probes
        pw = np.sum(np.asarray(state.params.probe_re) ** 2 + np.asarray(state.params.probe_im) ** 2, axis=(1, 2))
        if probes == "file":
            np.testing.assert_allclose(pw, np.sum(np.abs(np.asarray(ds.illumination)) ** 2, axis=(1, 2)), rtol=1e-5)
        else:
            # the result's probes at the membrane counts: their far-field power on the used
            # detector pixels (stxm.probes_at_membrane_counts) equals a membrane frame's counts
            pr = np.asarray(state.params.probe_re) + 1j * np.asarray(state.params.probe_im)
            far = np.abs(np.fft.fftshift(np.fft.fft2(pr, norm="ortho"), axes=(-2, -1))) ** 2
            np.testing.assert_allclose(
                np.sum(far * np.asarray(ds.mask), axis=(1, 2)), joint_stxm.membrane_counts(ds), rtol=1e-4
            )


def test_warm_start_takes_the_results_background(small3, tmp_path):
    """A warm start (``init = "result"``) from a result with a fitted background starts the
    joint's background from it, in the joint's own mode and layout: "map" from a map is the
    map (the file's centred layout moved to the solver's, exact), "flat" from a map is each
    energy's mean (1e-6 relative); energies the result does not hold fall back to the
    darkest-block start."""
    from diffxas.data import results as io_results

    ds = small3.dataset
    res = joint_run.reconstruct_joint(ds, joint_config.JointConfig.make(steps=1, prior="none", init="stxm"))
    k, m = ds.n_energies, ds.frame_size
    rng = np.random.default_rng(3)
    res.background = (0.2 + rng.random((k, m, m))).astype(np.float32)
    path = str(tmp_path / "warm_bg.h5")
    io_results.write_result(path, res)
    cfg = joint_config.JointConfig.make(steps=1, prior="none", init="result", init_result=path, background="map")
    solver, state, ctx = joint_run.prepare_joint(ds, cfg)
    np.testing.assert_array_equal(np.fft.fftshift(np.asarray(solver.prob.background0), axes=(-2, -1)), res.background)
    assert ctx["init_info"]["background_from"] == "the warm start's results file"
    solver, state, ctx = joint_run.prepare_joint(ds, cfg.replace(background="flat"))
    np.testing.assert_allclose(np.asarray(solver.prob.background0), res.background.mean(axis=(1, 2)), rtol=1e-6)
    assert joint_init._background_for(res.background, np.asarray(ds.energies) + 1.0, np.asarray(ds.energies)) is None


@pytest.mark.parametrize("n", [3, 4, 5])
def test_initial_shape_search_with_few_energies(n):
    """At the boundary of the two routes of the initial shape search (<= 4 energies: the
    least-squares pick; 5 and more: the staged non-negative search, which needs at least
    as many energies as design columns): finite shapes and amplitudes, b2 inside the
    scanned range, and with <= 4 energies the amplitudes interpolate the spectrum (4
    amplitudes, residual < 1e-6 of its scale)."""
    from diffxas.data.dataset import even_indices
    from diffxas.physics.spectra import XanesParams, absorption, linear_design
    from diffxas.simulate.presets import _tiny_energies

    e = np.asarray(_tiny_energies())[even_indices(len(_tiny_energies()), n)]
    p = XanesParams(
        a=0.004,
        b1=0.016,
        b2=5480.0,
        b3=4.0,
        c11=0.006,
        c12=5466.0,
        c13=1.2,
        c21=0.0006,
        c22=5470.0,
        c23=2.0,
        n_other=0.0,
    )
    y = np.asarray(absorption(p, jnp.asarray(e)), np.float64)
    v = joint_init.fit_shape_and_amplitudes(y[:, None, None], e, np.ones((1, 1), bool))
    assert all(np.all(np.isfinite(x)) for x in v.values())
    assert e.min() <= float(v["b2"].flat[0]) <= e.max()
    if n <= 4:
        f = lambda k: float(v[k].flat[0])  # noqa: E731
        dm = np.asarray(
            linear_design(jnp.asarray(e), f("b2"), f("b3"), f("c12"), f("c13"), f("c22"), f("c23")), np.float64
        )
        fit = dm @ np.array([f("a"), f("b1"), f("c11"), f("c21")])
        assert np.max(np.abs(fit - y)) < 1e-6 * np.max(np.abs(y))


def test_initial_shape_search_finds_the_main_pre_edge_peak():
    """A broad main pre-edge peak (c13 = 2 eV) looks like the grid's second peak (2 eV
    wide, tied 4 eV up): a single unconstrained search put that second peak on it (c12 4 eV
    too low, c11 < 0), as on a `tiny` scan with 20 nm position errors. Reference: the
    generating parameters; tolerance 1 eV (twice the grid step) on c12, the amplitudes of the
    chosen start non-negative, b2 within 1 eV."""
    from diffxas.physics.spectra import XanesParams, absorption
    from diffxas.simulate.presets import _tiny_energies

    e = np.asarray(_tiny_energies())
    p = XanesParams(
        a=0.004,
        b1=0.016,
        b2=5480.0,
        b3=4.0,
        c11=0.006,
        c12=5466.0,
        c13=2.0,
        c21=0.0006,
        c22=5470.0,
        c23=2.0,
        n_other=0.0,
    )
    y = np.asarray(absorption(p, jnp.asarray(e)), np.float64)
    v = joint_init.fit_shape_and_amplitudes(y[:, None, None], e, np.ones((1, 1), bool))
    assert abs(float(v["c12"].flat[0]) - 5466.0) <= 1.0
    assert abs(float(v["b2"].flat[0]) - 5480.0) <= 1.0
    assert float(v["c11"].flat[0]) > 0
