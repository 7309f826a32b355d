"""Tests of the joint's results (diffxas.solvers.joint.result): the energy-count and
plausibility warnings, the maps from the one parameters-to-maps block.

References are named per test (finite differences through the parameter -> intensity chain
with jax.test_util.check_grads, closed forms, the simulator's ground truth, brute force).
The simulated datasets ``small3`` (3 energies) and ``clean`` (18 energies, noise-free) are
session-scoped fixtures in tests/conftest.py: several of these files use them, and each is
simulated once per test process, as when these tests were one module.
"""

import numpy as np

from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import result as joint_result
from diffxas.solvers.joint import run as joint_run


def test_energy_count_warnings():
    """Fewer energies than per-pixel absorption parameters (n_other excluded: the phase sets
    it) is warned about, not refused; enough energies, or fewer per-pixel parameters, are not."""
    d = joint_config.JointConfig().spectra.per_pixel
    w = joint_result.energy_count_warnings(5, d)
    assert len(w) == 1 and w[0].startswith("5 energies for 6 per-pixel spectral parameters (a, b1, b2, b3, c11, c21)")
    assert joint_result.energy_count_warnings(6, d) == []
    assert joint_result.energy_count_warnings(3, ("b1", "b2", "n_other")) == []
    assert joint_result.energy_count_warnings(1, ("b1", "b2", "n_other"))[0].startswith("1 energy for 2")


def test_plausibility_warnings():
    """Closed cases: typical V K-edge values (widths 1.2 / 2 / 4 eV, PE/dmt 1 eV) give no
    warning; the collapse seen at 1e4 photons (c23 = 12 eV, PE/dmt -21 eV) gives one each;
    the bounds are the two-step fit's (FitConfig: widths <= 8 eV, edge width <= 15 eV)."""
    shape = (4, 5)
    ok = {"b3": np.full(shape, 4.0), "c13": np.full(shape, 1.2), "c23": np.full(shape, 2.0)}
    valid = np.ones(shape, bool)
    assert joint_result.plausibility_warnings(ok, np.full(shape, 1.0), valid) == []
    bad = dict(ok, c23=np.full(shape, 12.0))
    w = joint_result.plausibility_warnings(bad, np.full(shape, -21.0), valid)
    assert len(w) == 2 and "c23 = 12 eV" in w[0] and "negative" in w[1]
    assert joint_result.plausibility_warnings(dict(ok, b3=np.full(shape, 16.0)), np.full(shape, 1.0), valid)[
        0
    ].startswith("edge width")
    # invalid pixels do not count; no valid pixel at all is said
    assert joint_result.plausibility_warnings(bad, np.full(shape, 1.0), np.zeros(shape, bool))[0].startswith(
        "no valid pixel"
    )


def test_joint_maps_are_the_one_block(small3, monkeypatch):
    """make_result turns the parameters into maps with the one block of both methods
    (diffxas.physics.spectra.maps_from_params, called once) and its maps are that block's
    output masked by the joint's validity (illuminated, b1 above valid_jump_fraction, finite).
    Reference: the block's own output (exact equality); the closed form of the block itself
    is tests/test_spectra.py::test_maps_from_params_is_the_closed_form. At the start
    parameters (no step): the block does not care where they come from."""
    calls = []
    real = joint_result.maps_from_params

    def spy(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(joint_result, "maps_from_params", spy)
    cfg = joint_config.JointConfig()
    solver, state, ctx = joint_run.prepare_joint(small3.dataset, cfg)
    res = joint_result.make_result(
        small3.dataset,
        state.params,
        solver.prob,
        ctx["common"],
        ctx["grids"],
        cfg,
        ctx["edge"],
        {},
        ctx["init_info"],
        timing={"wall_s": 0.0, "compile_s": 0.0},
    )
    assert len(calls) == 1
    m, finite = calls[0]
    valid = res.maps.valid.astype(bool)
    assert valid.any() and not (valid & ~finite).any()
    for k, v in m.items():
        np.testing.assert_array_equal(getattr(res.maps, k), np.where(valid, v, np.nan))
