"""Clustering of chemical-state maps: separable synthetic cases with known partitions."""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from diffxas.analysis.clustering import (
    ClusterConfig,
    cluster_maps,
    cluster_result,
    format_clusters,
    knee_point,
    robust_standardise,
    write_cluster_csv,
)
from diffxas.errors import ConfigError
from diffxas.maps import ChemMaps, Result

# Four well separated states (edge energy eV, pre-edge/jump eV, Ne_eff/N_V), listed in
# increasing edge energy; domain d occupies one quadrant of a disc particle.
STATES = np.array([[5478.0, 0.9, 18.0], [5479.5, 0.3, 21.0], [5481.0, 1.4, 20.0], [5482.5, 0.6, 23.0]])
NOISE = np.array([0.08, 0.03, 0.2])


def make_maps(n=48, states=STATES, seed=0, outliers=True, order=None):
    """Disc particle (radius 0.42 n) split into angular sectors, one per state.

    Thin rim (outer 2 px) has n_v 5 % of the core and wild descriptor values: the n_v rule
    (0.25 x P99) must exclude it. Returns (ChemMaps, true labels with -1 outside/rim).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(xx, yy)
    ang = np.mod(np.arctan2(yy, xx), 2 * np.pi)
    ns = len(states)
    dom = np.minimum((ang / (2 * np.pi) * ns).astype(int), ns - 1)
    if order is not None:
        dom = np.asarray(order)[dom]
    core = r < 0.42 * n - 2
    rim = (r >= 0.42 * n - 2) & (r < 0.42 * n)
    valid = core | rim
    vals = states[dom] + NOISE * rng.standard_normal((n, n, 3))
    nv = np.where(core, 1.0e20 * (1 + 0.05 * rng.standard_normal((n, n))), 0.0)
    if outliers:
        nv = np.where(rim, 5e18, nv)
        vals[rim] = [5470.0, 3.0, 40.0] + rng.standard_normal((rim.sum(), 3)) * [4.0, 1.0, 5.0]
    else:
        valid = core
    f = {
        k: np.where(valid, vals[..., i], np.nan)
        for i, k in enumerate(("edge_energy", "pre_edge_norm", "ne_eff_per_nv"))
    }
    nan = np.full((n, n), np.nan)
    maps = ChemMaps(
        edge_energy=f["edge_energy"],
        edge_width=np.where(valid, 2.0, np.nan),
        edge_jump=np.where(valid, 0.1, np.nan),
        pre_edge=np.where(valid, 0.05, np.nan),
        pre_edge_norm=f["pre_edge_norm"],
        n_v=np.where(valid, nv, nan),
        ne_eff_per_nv=f["ne_eff_per_nv"],
        valid=valid,
        pixel_size=20e-9,
        origin=(0.0, 0.0),
        reference_energy=5450.0,
        delta_f2_v=3.4,
        scattering_table="test",
    )
    truth = np.where(core, dom, -1)
    return maps, truth


FAST = dict(n_init=4, seeds=3, k_max=8)


def test_separable_case_ari_one_and_rim_excluded():
    # Reference: the known sector partition; tolerance 0 (ARI exactly 1).
    maps, truth = make_maps()
    cl = cluster_maps(maps, ClusterConfig(k=4, **FAST))
    lab = cl["labels"]
    assert lab.dtype == np.int16 and lab.shape == maps.shape
    # The n_v rule: exactly the core is clustered (rim, outside: -1).
    np.testing.assert_array_equal(lab >= 0, truth >= 0)
    core = truth >= 0
    assert adjusted_rand_score(truth[core], lab[core]) == 1.0
    # Ordering by edge energy: the states are listed by increasing edge energy.
    np.testing.assert_array_equal(lab[core], truth[core])
    assert np.all(np.diff(cl["centers"][:, 0]) > 0)
    # Centres within 3 noise standard errors of the true states (physical units).
    np.testing.assert_allclose(cl["centers"], STATES, atol=0.05)
    assert cl["stability"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(cl["fractions"].sum(), 1.0, rtol=1e-12)
    assert cl["features"] == ["edge_energy", "pre_edge_norm", "ne_eff_per_nv"]


def test_nv_weighted_fractions():
    # Reference: sum of n_v per domain over the clustered pixels / total (exact, rtol 1e-12).
    maps, truth = make_maps()
    cl = cluster_maps(maps, ClusterConfig(k=4, **FAST))
    core = truth >= 0
    nv = maps.n_v
    expect = np.array([nv[core & (truth == d)].sum() for d in range(4)]) / nv[core].sum()
    np.testing.assert_allclose(cl["fractions"], expect, rtol=1e-12)


def test_label_order_independent_of_domain_layout_and_seed():
    # Same partition from a different random_state -> identical labels (tolerance 0).
    maps, truth = make_maps(order=[2, 0, 3, 1])
    a = cluster_maps(maps, ClusterConfig(k=4, random_state=0, **FAST))["labels"]
    b = cluster_maps(maps, ClusterConfig(k=4, random_state=12345, **FAST))["labels"]
    np.testing.assert_array_equal(a, b)
    core = truth >= 0
    np.testing.assert_array_equal(a[core], truth[core])  # label = rank of edge energy


def test_ordering_ties_broken_by_pre_edge():
    # Two states share the edge energy (centres differ by noise only, << 0.1 eV).
    states = np.array([[5480.0, 1.2, 20.0], [5480.0, 0.2, 20.0], [5483.0, 1.2, 20.0]])
    maps, truth = make_maps(states=states, outliers=False)
    cl = cluster_maps(maps, ClusterConfig(k=3, **FAST))
    core = truth >= 0
    # Domain 1 (same edge energy, lower pre-edge) gets label 0; domain 0 label 1.
    np.testing.assert_array_equal(cl["labels"][core], np.array([1, 0, 2])[truth[core]])


def test_auto_k_elbow_four_and_three():
    # Reference: the number of generating states; exact.
    maps, _ = make_maps()
    cl = cluster_maps(maps, ClusterConfig(k="auto", **FAST))
    assert cl["k"] == 4 and cl["k_elbow"] == 4
    assert cl["k_silhouette"] == 4
    assert len(cl["elbow_inertia"]) == 8 and np.isnan(cl["silhouette"][0])
    assert np.all(np.diff(cl["elbow_inertia"]) <= 1e-9 * cl["elbow_inertia"][0])
    maps3, _ = make_maps(states=STATES[[0, 2, 3]], seed=3)
    cl3 = cluster_maps(maps3, ClusterConfig(k="auto", **FAST))
    assert cl3["k"] == 3


def test_knee_point_simple_curves():
    k = np.arange(1, 11)
    assert knee_point(k, np.r_[100, 60, 25, 5, 4.5, 4, 3.5, 3, 2.5, 2]) == 4
    assert knee_point(k, np.r_[100, 10, 9, 8, 7, 6, 5, 4, 3, 2]) == 2
    assert knee_point(k, np.ones(10)) == 1


def test_robust_standardise():
    # Median 0 / MAD-based scale; outlier does not move the centre. Exact references.
    x = np.array([[-1.0, 5.0], [0.0, 5.0], [1.0, 5.0], [1000.0, 5.0], [-2.0, 5.0]])
    z, c, s = robust_standardise(x)
    assert c[0] == 0.0 and s[0] == pytest.approx(1.4826)
    assert s[1] == 1.0  # MAD = std = 0 -> 1
    np.testing.assert_allclose(z * s + c, x)


def test_unweighted_and_feature_subset():
    maps, truth = make_maps()
    cl = cluster_maps(maps, ClusterConfig(k=4, features=("edge_energy",), weight=None, **FAST))
    core = truth >= 0
    assert adjusted_rand_score(truth[core], cl["labels"][core]) == 1.0
    assert cl["centers"].shape == (4, 1)
    # Fractions stay N_V-weighted (seed Fig. 3c) whatever the k-means weight.
    nv = maps.n_v
    expect = np.array([nv[core & (truth == d)].sum() for d in range(4)]) / nv[core].sum()
    np.testing.assert_allclose(cl["fractions"], expect, rtol=1e-12)


def test_config_validation():
    with pytest.raises(ConfigError):
        ClusterConfig(k=0)
    with pytest.raises(ConfigError):
        ClusterConfig(k="many")
    with pytest.raises(ConfigError):
        ClusterConfig(features=("edge_energy", "bogus"))
    with pytest.raises(ConfigError):
        ClusterConfig(weight="pixels")
    with pytest.raises(ConfigError):
        ClusterConfig(min_nv_fraction=1.5)
    assert ClusterConfig(k="3").k == 3
    assert ClusterConfig(k="AUTO").k == "auto"
    assert ClusterConfig(features="edge_energy, n_v").features == ("edge_energy", "n_v")


def test_cluster_result_mean_spectra_and_csv(tmp_path):
    maps, truth = make_maps(n=32)
    K = 5
    e = np.linspace(5460, 5500, K)
    lab_t = np.where(truth >= 0, truth, 0)
    # absorption at energy i of a domain-d pixel = d + i (exact cluster means).
    absorption = (lab_t[None] + np.arange(K)[:, None, None]).astype(np.float64)
    phase = -absorption
    res = Result(
        method="two-step",
        maps=maps,
        energies=e,
        absorption=absorption,
        phase=phase,
        probes=np.ones((K, 8, 8), np.complex64),
        probe_pixel_size=np.full(K, 20e-9),
        history={},
        config={},
    )
    cl = cluster_result(res, ClusterConfig(k=4, **FAST))
    assert cl["mean_absorption"].shape == (K, 4)
    np.testing.assert_allclose(cl["mean_absorption"], np.arange(K)[:, None] + np.arange(4)[None], atol=1e-12)
    np.testing.assert_allclose(cl["mean_phase"], -cl["mean_absorption"], atol=1e-12)
    p = write_cluster_csv(tmp_path / "c.csv", cl)
    rows = open(p).read().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("cluster,n_pixels,nv_fraction,edge_energy_center [eV]")


# --------------------------------------------------------------------------- assignment confidence


def with_std(maps, scale=1.0):
    """The maps with std maps of the three descriptors = scale x the synthetic noise NOISE."""
    std = {
        k: np.where(np.asarray(maps.valid, bool), scale * NOISE[i], np.nan)
        for i, k in enumerate(("edge_energy", "pre_edge_norm", "ne_eff_per_nv"))
    }
    return dataclasses.replace(maps, std=std)


def test_assignment_confidence_two_centres_closed_form():
    # Reference: 1-D, centres -1 and +1, pixel at z0 with std s assigned to +1:
    # P(draw > 0) = Phi(z0 / s). 20000 draws: Monte Carlo s.e. <= 0.0035; tolerance 0.012.
    from scipy.stats import norm

    from diffxas.analysis.clustering import assignment_confidence

    z0 = np.array([0.3, 1.0, -0.2, 2.0])
    s = np.array([0.5, 1.0, 0.4, 0.0])
    lab = np.array([1, 1, 0, 1])
    conf = assignment_confidence(z0[:, None], s[:, None], np.array([[-1.0], [1.0]]), lab, n_samples=20000)
    expect = np.array([norm.cdf(0.6), norm.cdf(1.0), norm.cdf(0.5), 1.0])
    np.testing.assert_allclose(conf, expect, atol=0.012)
    # Seeded: the same inputs give the same numbers; a non-finite std gives NaN.
    again = assignment_confidence(z0[:, None], s[:, None], np.array([[-1.0], [1.0]]), lab, n_samples=20000)
    np.testing.assert_array_equal(conf, again)
    s_bad = s.copy()
    s_bad[1] = np.nan
    c2 = assignment_confidence(z0[:, None], s_bad[:, None], np.array([[-1.0], [1.0]]), lab, n_samples=64)
    assert np.isnan(c2[1]) and np.isfinite(c2[[0, 2, 3]]).all()


def test_confidence_map_from_std_maps():
    maps, truth = make_maps(n=40)
    cfg = ClusterConfig(k=4, **FAST)
    # Without std maps (the two-step path): no confidence, no error.
    cl = cluster_maps(maps, cfg)
    assert "confidence" not in cl and "confidence_mean" not in cl
    assert "n/a" in format_clusters(cl)
    # Std maps equal to the true noise: the states are ~7 noise widths apart in edge
    # energy, so nearly every pixel is confidently assigned; NaN exactly where not clustered.
    cl = cluster_maps(with_std(maps), cfg)
    conf = cl["confidence"]
    assert conf.shape == maps.shape
    clustered = cl["labels"] >= 0
    assert np.all(np.isnan(conf[~clustered])) and np.all(np.isfinite(conf[clustered]))
    assert np.all((conf[clustered] >= 0) & (conf[clustered] <= 1))
    assert cl["confidence_mean"] > 0.97 and cl["cluster_confidence"].shape == (4,)
    assert "assignment confidence" in format_clusters(cl) and f"{cl['confidence_mean']:.3f}" in format_clusters(cl)
    # Ten times the noise: assignments become uncertain (lower mean confidence).
    big = cluster_maps(with_std(maps, 10.0), cfg)
    np.testing.assert_array_equal(big["labels"], cl["labels"])  # std maps do not change the clustering
    assert big["confidence_mean"] < 0.95
    # A std map missing for one feature: no confidence; confidence_samples = 0 disables it.
    part = dataclasses.replace(maps, std={"edge_energy": with_std(maps).std["edge_energy"]})
    assert "confidence" not in cluster_maps(part, cfg)
    assert "confidence" not in cluster_maps(with_std(maps), ClusterConfig(k=4, confidence_samples=0, **FAST))
    with pytest.raises(ConfigError):
        ClusterConfig(confidence_samples=-1)


def test_confidence_round_trip_through_results_file(tmp_path):
    io = pytest.importorskip("diffxas.data")
    from diffxas.analysis.clustering import cluster_file

    maps, _ = make_maps(n=32)
    K = 3
    res = Result(
        method="joint",
        maps=with_std(maps),
        energies=np.linspace(5460, 5500, K),
        absorption=np.zeros((K, 32, 32)),
        phase=np.zeros((K, 32, 32)),
        probes=np.ones((K, 8, 8), np.complex64),
        probe_pixel_size=np.full(K, 20e-9),
        history={},
        config={},
    )
    path = tmp_path / "r.h5"
    io.write_result(path, res)
    cl = cluster_file(path, ClusterConfig(k=4, **FAST))
    back = io.read_result(path).clusters
    np.testing.assert_array_equal(back["confidence"], cl["confidence"])
    np.testing.assert_allclose(back["cluster_confidence"], cl["cluster_confidence"])
    assert back["confidence_mean"] == pytest.approx(cl["confidence_mean"])
    assert "mean_confidence" in open(cl["csv_path"]).readline()
    assert "assignment confidence" in io.summarize_result(path)
