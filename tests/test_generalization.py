"""Smoke tests of experiments/generalization.py (the train/test protocol), without running a
sweep: the fixed split, the sweep spec it builds, and the analysis of hand-made metrics
(ratios checked against hand computation)."""

import importlib.util
import json
from pathlib import Path

import pytest

from diffxas.app.sweep import spec as sweep_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("generalization", ROOT / "experiments" / "generalization.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_is_fixed_and_disjoint(gen):
    assert list(gen.SPLITS["train"]) == list(range(100))
    assert list(gen.SPLITS["test"]) == list(range(1000, 1100))
    assert not set(gen.SPLITS["train"]) & set(gen.SPLITS["test"])
    assert gen.seeds_of("test", 3) == [1000, 1001, 1002]


def test_spec_expands_to_both_cases_and_split_seeds(gen):
    """Full spec: 2 doses x 2 energy counts x the split's seeds, preset family; quick: family-tiny
    with 8 and 15 energies and the first QUICK_SEEDS seeds."""
    full = sweep_spec.load_spec(gen.spec_mapping("test", 2, quick=False))
    pts = sweep_spec.expand_points(full)
    assert len(pts) == 2 * 2 * 2
    cfgs = [sweep_spec.build_point(p["config"]) for p in pts]
    assert {c.sim.preset for c in cfgs} == {"family"}
    assert {c.sim.seed for c in cfgs} == {1000, 1001}
    assert {c.sim.dose for c in cfgs} == {1e6, 1e7}
    assert {len(c.sim.energies) for c in cfgs} == {16, 40}
    quick = sweep_spec.load_spec(gen.spec_mapping("train", None, quick=True), profile="quick")
    qc = [sweep_spec.build_point(p["config"]) for p in sweep_spec.expand_points(quick)]
    assert {c.sim.preset for c in qc} == {"family-tiny"}
    assert {c.sim.seed for c in qc} == set(range(gen.QUICK_SEEDS))
    assert {len(c.sim.energies) for c in qc} == {8, 15}


def test_analysis_of_handmade_metrics(gen, tmp_path):
    """Two draws with joint errors 0.5x and 1.5x the two-step's: the per-draw ratios are
    0.50x and 1.50x and their mean ± std is 1 ± 0.71 (hand computation)."""
    rows = []
    for seed, r in ((0, 0.5), (1, 1.5)):
        for method, scale in (("two-step", 1.0), ("joint", r)):
            d = f"p{seed}"
            (tmp_path / d).mkdir(exist_ok=True)
            an = {
                name: {
                    "bulk": {"rmse": 0.1 * scale},
                    "near": {"rmse": 0.3 * scale},
                    "domain_mean_rms": 0.05,
                    "within_domain_rms": 0.05,
                    "near_fraction": 0.6,
                    "calibration_bulk": {"within_1sigma": 0.7},
                }
                for name in gen.DESCRIPTORS
            }
            m = {
                "coverage": 1.0,
                "clusters": {"ari": 0.8},
                "n_v": {"rel_rms": 0.04 * scale},
                "timing": {"method_wall_s": 10.0},
                "anatomy": an,
                **{name: {"rmse": 0.2 * scale} for name in gen.DESCRIPTORS},
            }
            (tmp_path / d / f"metrics-{method}.json").write_text(json.dumps(m))
            rows.append(
                {
                    "dir": d,
                    "method": method,
                    "status": "ok",
                    "simulate.seed": seed,
                    "simulate.dose": 1e6,
                    "energies.count": 16,
                }
            )
    recs = [gen.point_record(tmp_path, r) for r in rows]
    text = gen.analyse(recs, {"mode": "quick", "split": "train", "wall_s": 1.0})
    assert "= 0.50x" in text and "= 1.50x" in text
    assert "1 ± 0.71 (n=2)x" in text
    assert gen.point_record(tmp_path, {**rows[0], "status": "failed"}) is None
