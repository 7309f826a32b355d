"""Tests of diffxas.app (the end-to-end demo) and the `diffxas demo` command.

The fast tests replace the simulation and the reconstructions by synthetic stand-ins (a
small dataset, a truth with four domains, results equal to the truth plus noise) and run
everything else for real: CXI/truth/results files, clustering, evaluation, report, table.
The slow test runs the real pipeline on the tiny preset with a few iterations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _stdio
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from diffxas.app import cli
from diffxas.app import demo as demo_demo
from diffxas.app import pipeline as demo_pipeline
from diffxas.data import files as io_files
from diffxas.data import results as io_results
from diffxas.data.dataset import Dataset
from diffxas.errors import DivergenceError
from diffxas.maps import MAP_FIELDS, ChemMaps, Result, Truth

H = W = 20
PX = 5e-8
ORIGIN = (-H / 2 * PX, -W / 2 * PX)
DOMAIN_VALUES = {  # per domain: edge_energy, pre_edge_norm, ne_eff_per_nv
    0: (5477.5, 0.8, 41.0),
    1: (5478.5, 2.0, 36.0),
    2: (5482.5, 1.2, 44.0),
    3: (5483.5, 2.6, 35.5),
}


def _labels():
    lab = -np.ones((H, W), np.int16)
    lab[2:10, 2:10], lab[2:10, 10:18], lab[10:18, 2:10], lab[10:18, 10:18] = 0, 1, 2, 3
    return lab


def _truth_maps(lab, rng=None, noise=0.0):
    maps = {name: np.full((H, W), np.nan) for name in MAP_FIELDS}
    inside = lab >= 0
    for d, (e0, pe, ne) in DOMAIN_VALUES.items():
        m = lab == d
        maps["edge_energy"][m], maps["pre_edge_norm"][m], maps["ne_eff_per_nv"][m] = e0, pe, ne
    maps["edge_width"][inside] = 4.0
    maps["n_v"] = np.where(inside, 1e22, 0.0)
    maps["edge_jump"] = np.where(inside, 0.05, 0.0)
    maps["pre_edge"] = np.where(inside, maps["pre_edge_norm"] * 0.05, 0.0)
    if rng is not None:
        for name in ("edge_energy", "pre_edge_norm", "ne_eff_per_nv"):
            maps[name] = maps[name] + noise * rng.normal(size=(H, W)) * np.nanstd(maps[name])
    return maps


def fake_simulation(cfg):
    """A Simulation-like object for ``cfg``: a tiny valid dataset (its scan spans more than one
    object pixel at every energy: the pipeline's data checks pass) and a four-domain truth."""
    rng = np.random.default_rng(0)
    e = np.asarray(cfg.energies, np.float64)
    k, n, m = e.size, 4, 16
    ds = Dataset(
        frames=rng.poisson(10.0, (k * n, m, m)).astype(np.float32),
        positions=rng.uniform(-3e-7, 3e-7, (k * n, 2)),
        energy_index=np.repeat(np.arange(k, dtype=np.int32), n),
        energies=e,
        mask=np.ones((k, m, m), np.float32),
        illumination=None,
        distance=0.5,
        detector_pixel=75e-6,
    )
    lab = _labels()
    truth = Truth(
        maps=_truth_maps(lab),
        labels=lab,
        domain_names=["a", "b", "c", "d"],
        params={},
        pixel_size=PX,
        origin=ORIGIN,
        energies=e,
        reference_energy=float(e[0]),
        attrs={"preset": cfg.preset},
    )
    return types.SimpleNamespace(dataset=ds, truth=truth, config=cfg)  # what the demo uses of a Simulation


def fake_result(method: str, energies, noise: float, seed: int) -> Result:
    rng = np.random.default_rng(seed)
    lab = _labels()
    maps = _truth_maps(lab, rng, noise)
    valid = lab >= 0
    cm = ChemMaps(
        **maps,
        valid=valid,
        pixel_size=PX,
        origin=ORIGIN,
        reference_energy=float(energies[0]),
        delta_f2_v=3.9,
        scattering_table="chantler",
    )
    k = len(energies)
    return Result(
        method=method,
        maps=cm,
        energies=np.asarray(energies, np.float64),
        absorption=rng.normal(size=(k, H, W)) * 0.01,
        phase=rng.normal(size=(k, H, W)) * 0.01,
        probes=np.ones((k, 16, 16), np.complex64),
        probe_pixel_size=np.full(k, PX),
        history={"loss": np.linspace(1, 0.5, 5), "step": np.arange(1, 6, dtype=float)},
        config={},
    )


@dataclasses.dataclass(frozen=True)
class FakeEpie:
    epochs: int = 100


@dataclasses.dataclass(frozen=True)
class FakeTwoStepConfig:
    epie: FakeEpie = dataclasses.field(default_factory=FakeEpie)
    register: bool = True


@pytest.fixture
def fakes(monkeypatch):
    """Replace the simulation and the reconstructions; record what they were given."""
    seen = {"configs": {}, "sim": None}

    def simulate(cfg, progress=False):
        seen["sim"] = cfg
        return fake_simulation(cfg)

    def reconstruct_joint(ds, cfg, progress=False, checkpoint=None, resume=False):
        seen["configs"]["joint"] = cfg
        return fake_result("joint", np.asarray(ds.energies), 0.05, 1)

    def reconstruct_two_step(ds, cfg, progress=False, checkpoint_dir=None, resume=False):
        seen["configs"]["two-step"] = cfg
        if seen.get("twostep_fails"):
            raise DivergenceError("ePIE diverged at energy 3 (5466 eV), epoch 7")
        return fake_result("two-step", np.asarray(ds.energies), 0.3, 2)

    FakeTwoStep = types.ModuleType("fake_twostep")
    FakeTwoStep.TwoStepConfig = FakeTwoStepConfig
    FakeTwoStep.reconstruct_two_step = reconstruct_two_step

    import diffxas.app.config
    import diffxas.simulate.presets
    import diffxas.solvers.joint.run

    monkeypatch.setitem(sys.modules, "fake_twostep", FakeTwoStep)
    monkeypatch.setitem(diffxas.app.config._SECTION_CLASSES, "twostep", ("fake_twostep", "TwoStepConfig"))
    monkeypatch.setattr(diffxas.simulate.presets, "simulate", simulate)
    monkeypatch.setattr(diffxas.solvers.joint.run, "reconstruct_joint", reconstruct_joint)
    import diffxas.solvers.twostep.run

    monkeypatch.setattr(diffxas.solvers.twostep.run, "reconstruct_two_step", reconstruct_two_step)
    seen["FakeTwoStep"] = FakeTwoStep
    return seen


def _quiet(fn, *a, **kw):
    out, err = _stdio.StringIO(), _stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        r = fn(*a, **kw)
    return r, out.getvalue(), err.getvalue()


FAST_CLUSTER = {"cluster": {"seeds": 2, "n_init": 2, "k_max": 5}}


def test_demo_pipeline_and_outputs(fakes, tmp_path):
    out = tmp_path / "demo"
    o, stdout, stderr = _quiet(demo_demo.run_demo, out, "tiny", config=FAST_CLUSTER, report_formats=("png",))
    assert o.failures == {} and o.notes == []
    assert set(o.results) == {"two-step", "joint"}
    names = sorted(p.name for p in out.iterdir())
    for n in (
        "config.toml",
        "data.cxi",
        "data.truth.h5",
        "demo.json",
        "joint.h5",
        "joint_clusters.csv",
        "joint_eval.json",
        "report",
        "summary.txt",
        "twostep.h5",
        "twostep_clusters.csv",
        "twostep_eval.json",
    ):
        assert n in names, names
    assert (out / "report" / "summary.md").exists() and (out / "report" / "metrics.json").exists()
    # the simulation went through the CXI file; results record the input and its checksum
    sha = io_files.sha256_file(out / "data.cxi")
    for m, p in o.results.items():
        r = io_results.read_result(p)
        assert r.input_sha256 == sha and r.method == m
        assert r.clusters is not None  # clustered in place
    # both methods clustered with the same settings
    a = [io_results.read_result(p).clusters for p in o.results.values()]
    assert list(a[0]["features"]) == list(a[1]["features"]) == ["edge_energy", "pre_edge_norm", "ne_eff_per_nv"]
    # default configs of every method (nothing tuned); the demo's only choices are preset and seed
    from diffxas.solvers.joint.config import JointConfig

    assert fakes["configs"]["joint"] == JointConfig()
    assert fakes["configs"]["two-step"] == FakeTwoStepConfig()
    assert fakes["sim"].preset == "tiny" and fakes["sim"].seed == 0
    from diffxas.simulate.presets import preset

    assert fakes["sim"] == preset("tiny")
    # the table: one row per method, joint (truth + small noise) is the better one here
    assert "method" in o.table and "coverage" in o.table and "ARI" in o.table and "wall (s)" in o.table
    rows = {ln.split()[0]: ln.split() for ln in o.table.splitlines() if ln.startswith(("two-step", "joint"))}
    assert set(rows) == {"two-step", "joint"}
    assert float(rows["joint"][1]) == 1.0  # coverage
    assert o.metrics["joint"]["edge_energy"]["rmse"] < o.metrics["two-step"]["edge_energy"]["rmse"]
    assert (out / "summary.txt").read_text().strip() == o.table.strip()
    d = json.loads((out / "demo.json").read_text())
    assert d["preset"] == "tiny" and set(d["results"]) == {"two-step", "joint"} and "joint" in d["wall_s"]
    assert "[1/7] simulating preset 'tiny'" in stdout and "[7/7] writing the report" in stdout
    # config.toml records what was used, and reads back to the same configs
    from diffxas.app.config import build_section, load_config

    used = load_config(out / "config.toml")
    assert build_section(used, "joint") == JointConfig()
    assert build_section(used, "simulate") == preset("tiny")


@pytest.fixture
def no_report(monkeypatch):
    """Skip the figures (tested elsewhere) where a test is about the demo's wiring."""
    import diffxas.report

    monkeypatch.setattr(diffxas.report.report, "report", lambda paths, out, **kw: [])


def test_demo_quick_and_config(fakes, no_report, tmp_path):
    o, _, _ = _quiet(
        demo_demo.run_demo,
        tmp_path / "q",
        "tiny",
        quick=True,
        seed=4,
        config={**FAST_CLUSTER, "joint": {"lr_amp": 0.03}},
    )
    from diffxas.simulate.presets import PRESETS

    tiny = PRESETS["tiny"]["energies"]
    assert fakes["sim"].energies == demo_pipeline.select_energies(tiny, 12) and fakes["sim"].seed == 4
    assert fakes["configs"]["joint"].optim.steps == demo_demo.QUICK["joint.steps"]
    assert fakes["configs"]["joint"].spectra.lr_amp == 0.03
    assert fakes["configs"]["two-step"] == FakeTwoStepConfig(epie=FakeEpie(epochs=demo_demo.QUICK["iterations"]))
    assert any("smoke run" in n and "compare nothing" in n for n in o.notes)  # the table is no comparison
    # explicit values win over --quick
    _quiet(
        demo_demo.run_demo,
        tmp_path / "q2",
        "tiny",
        quick=True,
        config={**FAST_CLUSTER, "joint": {"steps": 3}, "simulate": {"energies": [5420.0, 5480.0, 5500.0]}},
    )
    assert fakes["configs"]["joint"].optim.steps == 3 and fakes["sim"].energies == (5420.0, 5480.0, 5500.0)


def test_demo_method_failure_is_reported(fakes, no_report, tmp_path):
    fakes["twostep_fails"] = True
    o, stdout, _ = _quiet(demo_demo.run_demo, tmp_path / "f", "tiny", config=FAST_CLUSTER)
    assert set(o.results) == {"joint"}
    assert o.failures == {"two-step": "ePIE diverged at energy 3 (5466 eV), epoch 7"}
    assert "two-step  FAILED: ePIE diverged at energy 3" in o.table
    assert "FAILED: ePIE diverged" in stdout


def test_demo_cli(fakes, no_report, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[cluster]\nseeds = 2\nn_init = 2\nk_max = 5\n")
    argv = [
        "demo",
        "--out",
        str(tmp_path / "o"),
        "--preset",
        "tiny",
        "--config",
        str(conf),
        "--no-progress",
        "--set",
        "joint.steps=4",
    ]
    rc, stdout, stderr = _quiet(cli.main, argv)
    assert rc == 0, stderr
    assert "method" in stdout and "joint" in stdout and "two-step" in stdout and "output:" in stdout
    assert fakes["configs"]["joint"].optim.steps == 4
    fakes["twostep_fails"] = True
    rc, stdout, stderr = _quiet(cli.main, argv)
    assert rc == 1 and "FAILED" in stdout
    rc, stdout, stderr = _quiet(cli.main, ["demo", "--out", str(conf), "--preset", "tiny"])
    assert rc == 2 and stderr.startswith("diffxas: error: ") and "not a directory" in stderr
    assert len(stderr.splitlines()) == 1


def test_format_table():
    metrics = {
        "joint": {
            "coverage": 0.95,
            "edge_energy": {"rmse": 0.512},
            "pre_edge_norm": {"rmse": 0.1},
            "ne_eff_per_nv": {"rmse": 1.5},
            "n_v": {"rel_rms": 0.05},
            "clusters": {"ari": 0.8},
        }
    }
    t = demo_demo.format_table(metrics, {"joint": 12.34}, {"two-step": "boom"}, {"joint": 4})
    lines = t.splitlines()
    assert lines[0].split()[:3] == ["method", "coverage", "E0"]
    assert lines[2].split() == ["joint", "0.950", "0.512", "0.1", "1.5", "0.050", "4", "0.800", "12.3"]
    assert lines[3].startswith("two-step") and "FAILED: boom" in lines[3]


@pytest.mark.slow
def test_demo_smoke_real(tmp_path):
    """The real pipeline on the tiny preset, 6 energies, 2 steps/epochs (about a minute on 2 CPU cores)."""
    ok = True  # the two-step method is part of the registry
    config = {
        "simulate": {"energies": [5462.0, 5466.0, 5470.0, 5475.0, 5480.0, 5484.0]},
        "joint": {"steps": 2},
        "cluster": {"seeds": 2, "n_init": 2},
    }
    if ok:
        config["twostep"] = {"fit": {"iterations": 5}}
        config = demo_pipeline.set_iterations(config, "two-step", 3)
    o, stdout, stderr = _quiet(demo_demo.run_demo, tmp_path / "demo", "tiny", config=config)
    assert "joint" in o.results and (not ok or "two-step" in o.results or "two-step" in o.failures)
    for m in o.results:
        assert o.metrics[m]["n_region"] > 0
    assert Path(o.out_dir / "report" / "summary.md").exists()
    assert "joint" in o.table
