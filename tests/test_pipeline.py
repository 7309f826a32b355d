"""The one pipeline (diffxas.app.pipeline.run): the CLI, the demo and sweeps go through it,
and the data checks run once per dataset (the pipeline checks, the solvers trust it).

No numbers are computed here: these tests are about which code runs, and how often. The
simulation is the demo tests' synthetic stand-in (a small Poisson dataset), the
reconstructions are stopped right after their data checks.
"""

from __future__ import annotations

import contextlib
import io as _stdio

import numpy as np
import pytest
from test_demo import fake_simulation

from diffxas.app import cli, pipeline
from diffxas.app import demo as demo_app
from diffxas.app import pipeline as demo_pipeline
from diffxas.app.sweep import runner as sweep_runner
from diffxas.data import checks
from diffxas.data import cxi as io_cxi
from diffxas.data.dataset import Dataset
from diffxas.errors import DiffxasError, InputError

SENTINEL = "stopped in the pipeline's data checks"


class _Stop(Exception):
    """Raised by a patched solver step once the checks are done."""


def small_dataset(seed: int = 0) -> Dataset:
    """3 energies x 5 Poisson(10) frames of 16 x 16 pixels over a 1.2 um scan (passes the checks)."""
    rng = np.random.default_rng(seed)
    k, n, m = 3, 5, 16
    return Dataset(
        frames=rng.poisson(10.0, (k * n, m, m)).astype(np.float32),
        positions=rng.uniform(-6e-7, 6e-7, (k * n, 2)),
        energy_index=np.repeat(np.arange(k, dtype=np.int32), n),
        energies=np.array([5420.0, 5480.0, 5540.0]),
        mask=np.ones((k, m, m), np.float32),
        illumination=None,
        distance=0.5,
        detector_pixel=75e-6,
    )


@pytest.fixture
def stop_in_checks(monkeypatch):
    """``pipeline.check_data`` replaced by a recorder that raises one InputError line."""
    calls = []

    def check_data(ds, **kw):
        calls.append(kw)
        raise InputError(SENTINEL)

    monkeypatch.setattr(pipeline, "check_data", check_data)
    return calls


@pytest.fixture
def fake_sim(monkeypatch):
    import diffxas.simulate.presets

    monkeypatch.setattr(diffxas.simulate.presets, "simulate", lambda cfg, progress=False: fake_simulation(cfg))


def _quiet(fn, *a, **kw):
    out, err = _stdio.StringIO(), _stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        r = fn(*a, **kw)
    return r, out.getvalue(), err.getvalue()


def test_cli_demo_and_sweep_run_the_same_checks(stop_in_checks, fake_sim, tmp_path):
    """One step of the pipeline, patched once, is hit by `diffxas reconstruct`, the demo and a
    sweep point: there is one chain, not three."""
    data = io_cxi.write_cxi(tmp_path / "d.cxi", small_dataset())
    rc, out, err = _quiet(
        cli.main, ["reconstruct", str(data), "--method", "joint", "-o", str(tmp_path / "r.h5"), "--no-progress"]
    )
    assert rc == 2 and out == "" and err.strip() == f"diffxas: error: {SENTINEL}"
    assert stop_in_checks[-1]["orientation"] == "auto" and stop_in_checks[-1]["source"] == str(data)
    assert not (tmp_path / "r.h5").exists()

    with pytest.raises(DiffxasError, match=f"every reconstruction failed: two-step: {SENTINEL}; joint: {SENTINEL}"):
        _quiet(demo_app.run_demo, tmp_path / "demo", "tiny")
    assert stop_in_checks[-1]["orientation"] is None  # simulated frames: no orientation search
    assert len(stop_in_checks) == 2  # once for both methods of the demo

    spec = {"base": {"methods": ["joint"], "simulate": {"preset": "tiny", "energies": [5420.0, 5480.0, 5540.0]}}}
    summary = sweep_runner.run(spec, tmp_path / "sweep", progress=False)
    rows = list(summary)
    assert len(rows) == 1 and rows[0]["status"] == "failed" and SENTINEL in rows[0]["error"]
    assert len(stop_in_checks) == 3


def test_checks_run_once_and_the_solvers_trust_them(monkeypatch):
    """The pipeline checks a dataset once (bad_frames: the pass over the frames; data_findings: the warnings);
    both solvers take the checked dataset as it is (no second pass over the frames), and
    check an unchecked one themselves, once."""
    import diffxas.solvers.joint.run as joint_run
    import diffxas.solvers.twostep.run as twostep_run
    from diffxas.solvers.joint.config import JointConfig
    from diffxas.solvers.twostep.run import TwoStepConfig

    counts = {"bad_frames": 0, "data_findings": 0}
    for name in counts:
        real = getattr(checks, name)

        def counted(*a, _real=real, _name=name, **kw):
            counts[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(checks, name, counted)
    seen = {}

    def stop_joint(ds, cfg, **kw):
        seen["joint"] = (ds, kw.get("findings"))
        raise _Stop

    def stop_twostep(ds, sums=None):
        seen["two-step"] = ds
        raise _Stop

    monkeypatch.setattr(joint_run, "prepare_joint", stop_joint)
    monkeypatch.setattr(twostep_run, "illumination_at_counts", stop_twostep)

    ds = pipeline.check_data(small_dataset())
    assert counts == {"bad_frames": 1, "data_findings": 1}
    found = checks.checked_findings(ds)
    assert set(found) == {"count_quantum", "beam_masked", "saturation"}
    with pytest.raises(_Stop):
        joint_run.reconstruct_joint(ds, JointConfig.make(steps=1))
    with pytest.raises(_Stop):
        twostep_run.reconstruct_two_step(ds, TwoStepConfig.fast())
    assert counts == {"bad_frames": 1, "data_findings": 1}  # trusted: nothing checked again
    assert seen["joint"][0] is ds and seen["joint"][1] is found and seen["two-step"] is ds

    # a dataset that reaches a solver from Python unchecked is checked there, once
    fresh = small_dataset(seed=1)
    with pytest.raises(_Stop):
        joint_run.reconstruct_joint(fresh, JointConfig.make(steps=1))
    assert counts == {"bad_frames": 2, "data_findings": 2}
    assert checks.is_checked(seen["joint"][0]) and checks.checked_findings(seen["joint"][0]) is seen["joint"][1]


def test_run_keeps_going_and_names_the_failed_step(monkeypatch, tmp_path):
    """keep_going (the demo): a method whose config fails the checks is recorded with its one
    line and the other runs; without it (CLI, sweep) the error is raised."""
    from diffxas.solvers.joint.config import JointConfig

    ran = []

    def fake_reconstruct(ds, method, cfg, **kw):
        ran.append(method)
        assert checks.is_checked(ds)
        raise _Stop

    monkeypatch.setattr(pipeline, "reconstruct", fake_reconstruct)
    ds = small_dataset()
    bad = JointConfig.make(reference_energy=5600.0)  # outside the energies: refused by check_config
    events = []
    with pytest.raises(_Stop):
        pipeline.run(ds, {"joint": JointConfig()}, log=lambda s: None)
    runs = pipeline.run(ds, {"joint": bad}, keep_going=True, on_step=lambda *a: events.append(a[:2]))
    assert runs["joint"].error is not None and "joint.reference_energy" in runs["joint"].error
    assert ("failed", "joint") in events and ran == ["joint"]  # the bad config never reached the solver
    with pytest.raises(DiffxasError, match="joint.reference_energy"):
        pipeline.run(ds, {"joint": bad})


def test_demo_and_cli_reconstruct_through_run(monkeypatch, fake_sim, tmp_path):
    """`pipeline.run` itself is what both call (patched here: both reach the patch)."""
    calls = []

    def fake_run(ds, configs, **kw):
        calls.append((sorted(configs), kw.get("orientation")))
        raise InputError("stopped in pipeline.run")

    monkeypatch.setattr(pipeline, "run", fake_run)  # one patch
    data = io_cxi.write_cxi(tmp_path / "d.cxi", small_dataset())
    rc, _, err = _quiet(cli.main, ["reconstruct", str(data), "--method", "two-step", "-o", str(tmp_path / "r.h5")])
    assert rc == 2 and "stopped in pipeline.run" in err
    with pytest.raises(InputError, match="stopped in pipeline.run"):
        _quiet(demo_app.run_demo, tmp_path / "demo", "tiny")
    assert calls == [(["two-step"], "auto"), (["joint", "two-step"], None)]


def test_spread_indices():
    assert demo_pipeline.spread_indices(40, 40).tolist() == list(range(40))
    assert demo_pipeline.spread_indices(40, 2).tolist() == [0, 39]
    for k in range(2, 41):
        idx = demo_pipeline.spread_indices(40, k)
        assert len(set(idx.tolist())) == k and idx[0] == 0 and idx[-1] == 39
    assert demo_pipeline.select_energies([1.0, 2.0, 3.0, 4.0, 5.0], 3) == (1.0, 3.0, 5.0)
    # halves round up (np.round would give [0, 2, 5]: round half to even)
    assert demo_pipeline.spread_indices(6, 3).tolist() == [0, 3, 5]
    # one rule: simulate --energies, reconstruct --energies and the sweeps' "uniform" agree
    from diffxas.app.sweep import spec as sweep_spec

    e = [5420.0 + 3 * i for i in range(40)]
    for k in range(2, 41):
        assert sweep_spec.select_energies(e, k, "uniform") == demo_pipeline.select_energies(e, k)
