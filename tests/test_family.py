"""Tests of the randomized sample family (diffxas.simulate.family).

References: the documented ranges (diffxas.simulate.family.RANGES, docs/family.md) and the draw's own
definitions (reproducibility from the seed is exact equality, not a tolerance).
"""

import numpy as np
import pytest

from diffxas.app.config import sim_config
from diffxas.errors import ConfigError
from diffxas.physics.scattering import VEdge
from diffxas.simulate import family as fam
from diffxas.simulate import presets as sm

SEEDS = range(12)


def _truth_like(seed, n=96):
    """Labels and parameters of draw ``seed`` on an n x n grid over the family-tiny field."""
    cfg = sm.preset("family-tiny", seed=seed)
    ph = sm.make_phantom(cfg)
    g = np.linspace(-0.75e-6, 0.75e-6, n)
    X, Y = np.meshgrid(g, g)
    p, lab, th = sm.phantom_fields(ph, X, Y, VEdge.from_tables("V"), 5420.0)
    return ph, {k: np.asarray(v) for k, v in p.as_dict().items()}, np.asarray(lab), np.asarray(th)


def test_same_seed_same_draw_different_seed_differs():
    """Exact reproducibility: the draw and the evaluated truth of one seed are identical
    twice; two seeds differ."""
    assert fam.draw_family(3) == fam.draw_family(3)
    assert fam.draw_conditions(3) == fam.draw_conditions(3)
    assert fam.draw_family(3) != fam.draw_family(4)
    _, p1, l1, _ = _truth_like(3, 48)
    _, p2, l2, _ = _truth_like(3, 48)
    _, p3, l3, _ = _truth_like(4, 48)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(p1["b2"], p2["b2"])
    assert not np.array_equal(l1, l3) or not np.array_equal(p1["b2"], p3["b2"])


def test_conditions_through_preset_and_sweep_section():
    """``preset("family", seed=N)`` and a [simulate] section with preset/seed give the same
    drawn conditions; explicit values win over the draw."""
    cond = fam.draw_conditions(7)
    cfg = sm.preset("family", seed=7)
    assert (cfg.dose, cfg.scan_step, cfg.position_error, cfg.probe_drift) == (
        cond["dose"],
        cond["scan_step"],
        cond["position_error"],
        cond["probe_drift"],
    )
    cfg2 = sim_config({"preset": "family", "seed": 7})
    assert cfg2 == cfg
    assert sim_config({"preset": "family", "seed": 7, "dose": 1e7}).dose == 1e7
    assert sim_config({"preset": "family", "seed": 8}).dose == fam.draw_conditions(8)["dose"]
    with pytest.raises(ConfigError):
        sm.preset("family", bogus=1)


@pytest.mark.parametrize("seed", SEEDS)
def test_draw_within_documented_ranges(seed):
    R = fam.RANGES
    d = fam.draw_family(seed, 1.5e-6)
    c = fam.draw_conditions(seed)
    for k in ("dose", "scan_step", "position_error", "probe_drift"):
        assert R[k][0] <= c[k] * (1 + 1e-9) and c[k] <= R[k][1] * (1 + 1e-9), k
    assert R["n_particles"][0] <= len(d["particles"]) <= R["n_particles"][1]
    for p in d["particles"]:
        assert R["diameter"][0] <= p["diameter_drawn"] <= R["diameter"][1]
        assert p["ay"] <= p["ax"] * (1 + 1e-12)
        assert R["thickness_max"][0] <= p["t_max"] <= R["thickness_max"][1]
        assert R["profile_power"][0] <= p["power"] <= R["profile_power"][1]
        assert p["geometry"] in fam.GEOMETRIES
        # the particle (bounding circle) lies inside the scanned field
        assert max(abs(p["centre"][0]), abs(p["centre"][1])) + p["ax"] <= 0.75e-6 - fam._FIELD_MARGIN + 1e-12
    for dom in d["domains"]:
        pr = dom["props"]
        for k in ("b2", "b3", "pen", "c12", "c13", "r21", "c23", "valence", "tetrahedral"):
            assert R[k][0] - 1e-9 <= pr[k] <= R[k][1] + 1e-9, (k, pr[k])
        assert R["c22_offset"][0] - 1e-9 <= pr["c22"] - pr["c12"] <= R["c22_offset"][1] + 1e-9
        if dom["kind"] == "surface":
            assert R["surface_thickness"][0] <= dom["thickness"] <= R["surface_thickness"][1]
        else:
            assert R["ne"][0] <= pr["ne"] <= R["ne"][1]
        for t, a in dom["texture"].items():
            assert R["tex_" + t][0] <= a <= R["tex_" + t][1]
    assert R["texture_length"][0] <= d["texture_length"] <= R["texture_length"][1]


def test_per_domain_shapes_differ_and_labels_exist():
    """Every draw: >= 2 domains with their own pre-edge position, width and second peak
    (no two domains share a shape), and every domain's label appears on a fine grid."""
    for seed in range(6):
        ph, p, lab, th = _truth_like(seed)
        doms = ph.draw["domains"]
        assert len(doms) >= 2 and len(ph.domain_names) == len(doms)
        shapes = {(round(d["props"]["c12"], 6), round(d["props"]["c13"], 6), round(d["props"]["c22"], 6)) for d in doms}
        assert len(shapes) == len(doms)
        seen = set(np.unique(lab)) - {-1}
        assert len(seen) >= 2
        assert seen <= set(range(len(doms)))
        # outside the particles: no absorber; inside: thickness > 0 and the domain's edge energy
        assert np.all(p["b1"][lab < 0] == 0) and np.all(th[lab >= 0] > 0)
        inside = lab >= 0
        assert np.all((p["b2"][inside] > 5470) & (p["b2"][inside] < 5490))


def test_within_domain_texture_is_smooth_but_present():
    """The edge energy varies inside a domain (texture) by a fraction of an eV, not by
    pixel noise: neighbouring 12.5 nm points differ far less than the domain's spread."""
    _, p, lab, _ = _truth_like(2)
    b2 = p["b2"]
    for dl in set(np.unique(lab)) - {-1}:
        m = lab == dl
        inner = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
        if inner.sum() < 50:
            continue
        spread = np.std(b2[inner])
        step = np.abs(b2 - np.roll(b2, 1, 1))[inner & np.roll(inner, 1, 1)]
        assert spread > 0.01
        assert np.median(step) < 0.5 * spread + 1e-3


def test_family_tiny_simulates_with_domain_truth():
    """A whole family-tiny simulation (3 energies, noise-free): the truth carries one label per
    domain, their names and the draw."""
    cfg = sm.preset("family-tiny", seed=1, energies=(5420.0, 5470.0, 5500.0), noise=False)
    sim = sm.simulate(cfg)
    t = sim.truth
    assert t.attrs["family"]["seed"] == 1
    assert len(t.domain_names) == len(t.attrs["family"]["domains"])
    labs = set(np.unique(t.labels)) - {-1}
    assert len(labs) >= 2 and max(labs) < len(t.domain_names)
    assert np.all(np.isfinite(np.asarray(sim.dataset.frames)))
