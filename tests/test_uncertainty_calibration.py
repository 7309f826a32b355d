"""Calibration of the joint solver's standard-error maps (/maps/*_std) against repeated noise.

Reference: two Poisson noise realisations (``noise_seed`` 0 and 1) of one ``tiny``
phantom, scan and probe, each reconstructed by the joint solver at its defaults without
the spatial prior (``JointConfig.make(prior="none")``, 300 steps): the sigma maps are the
Cramer-Rao errors of the per-pixel likelihood, which is what this test calibrates. With
the default TV prior the maps scatter less than that (measured on the same kind of pair:
RMS z 0.51-0.88 over the five maps), so there they are conservative (README,
"Uncertainty"). On the evaluation region (truth N_V >= 25 % of its
maximum, valid in both, finite predicted sigma: ~90 pixels), the per-pixel difference
``z = (x_0 - x_1) / sqrt(sigma_0^2 + sigma_1^2)`` is N(0, 1) if the sigma maps describe
the noise (no truth involved; a bias common to both realisations cancels).

Measured with ``experiments/calibration.py --quick`` (4 realisations, same phantom):
about the realisation mean, edge energy 70 % / 96 % within 1 / 2 sigma, RMS empirical /
predicted sigma 0.96; edge width 67 % / 95 %, 1.01; truth within 2 sigma of the edge
energy 93 %.

Tolerances (for edge energy and edge width): fraction of |z| <= 1 in [0.55, 0.85] (the
binomial standard error with ~90 pixels is 0.05, so the band is about -2.6 / +3.4 s.e.
around 0.68), fraction of |z| <= 2 >= 0.85 (0.95 expected), RMS of z in [0.7, 1.4]; edge
energy truth within 2 sigma >= 0.8. A sigma map off by a factor 2 either way gives RMS z
of 0.5 or 2 and 1-sigma fractions of ~0.95 or ~0.38, outside these bands; the test
asserts that it would fail in both cases.

Last run (2 realisations): edge energy 70 % / 97 % within 1 / 2 sigma, RMS z 0.92; edge
width 74 % / 99 %, 0.89; edge energy truth within 2 sigma 92 %.

Runtime: two simulations and two default joint runs of ``tiny`` (a joint run is ~27 s on
2 idle CPU cores), so about 60-75 s expected on 2 idle cores. Measured: 154 s wall, 79 s
user CPU, with the 2 cores shared by about 7 runnable processes (load average 7).
"""

import numpy as np
import pytest

from diffxas.analysis.resample import resample_truth
from diffxas.simulate.presets import preset, simulate
from diffxas.solvers.joint.config import JointConfig
from diffxas.solvers.joint.run import reconstruct_joint

NV_FRACTION = 0.25
NOISE_MAPS = ("edge_energy", "edge_width")


@pytest.fixture(scope="module")
def realisations():
    maps = []
    for seed in (0, 1):
        sim = simulate(preset("tiny", noise_seed=seed))
        maps.append(reconstruct_joint(sim.dataset, JointConfig.make(prior="none")).maps)
    m0 = maps[0]
    assert maps[1].shape == m0.shape and np.allclose(maps[1].origin, m0.origin)
    tr = resample_truth(sim.truth, m0.pixel_size, m0.origin, m0.shape)
    region = np.isfinite(tr["n_v"]) & (tr["n_v"] >= NV_FRACTION * np.nanmax(tr["n_v"]))
    for m in maps:
        region &= np.asarray(m.valid).astype(bool)
    return maps, tr, region


def _pairs(maps, region, name):
    x = np.stack([np.asarray(getattr(m, name), np.float64)[region] for m in maps])
    s = np.stack([np.asarray(m.std[name], np.float64)[region] for m in maps])
    ok = np.all(np.isfinite(x) & np.isfinite(s) & (s > 0), axis=0)
    return x[:, ok], s[:, ok], ok


def _calibrated(z):
    """(ok, numbers): the tolerance bands of the module docstring."""
    a = np.abs(z)
    f1, f2, rms = float(np.mean(a <= 1)), float(np.mean(a <= 2)), float(np.sqrt(np.mean(z**2)))
    return (0.55 <= f1 <= 0.85) and f2 >= 0.85 and (0.7 <= rms <= 1.4), dict(within1=f1, within2=f2, rms=rms)


def test_std_maps_present_and_finite(realisations):
    maps, _, region = realisations
    assert region.sum() >= 60
    for m in maps:
        assert {"edge_energy", "edge_width", "edge_jump", "pre_edge", "pre_edge_norm", "n_v", "ne_eff_per_nv"} <= set(
            m.std
        )
        for name, s in m.std.items():
            s = np.asarray(s)[region]
            assert np.mean(np.isfinite(s) & (s > 0)) >= 0.9, name


@pytest.mark.parametrize("name", NOISE_MAPS)
def test_scatter_between_realisations_matches_predicted_sigma(realisations, name):
    maps, _, region = realisations
    x, s, _ = _pairs(maps, region, name)
    assert x.shape[1] >= 60
    z = (x[0] - x[1]) / np.sqrt(s[0] ** 2 + s[1] ** 2)
    ok, num = _calibrated(z)
    print(name, num)
    assert ok, f"{name}: {num}"
    # The test can fail: the same data with sigma off by 2x either way is rejected.
    assert not _calibrated(2.0 * z)[0] and not _calibrated(0.5 * z)[0]


def test_edge_energy_truth_within_two_sigma(realisations):
    maps, tr, region = realisations
    x, s, ok = _pairs(maps, region, "edge_energy")
    t = np.asarray(tr["edge_energy"], np.float64)[region][ok]
    fin = np.isfinite(t)
    within2 = float(np.mean(np.abs(x[:, fin] - t[None, fin]) <= 2 * s[:, fin]))
    print("edge_energy truth within 2 sigma", within2)
    assert within2 >= 0.8, within2
