"""Sweeps on Dask: a real LocalCluster of 2 worker processes (one thread each).

The points use the sweep's test-only hook (``diffxas.app.sweep.runner.TEST_HOOK_ENV``, read in the
workers): ``fake`` replaces each point's methods by a 0.2 s no-op that succeeds, so the
test exercises the pool (scheduling, per-point folders, done.json, the summary, resume,
a killed worker), not the methods (real points run in tests/test_sweep.py). One point
SIGKILLs its worker process mid-point: it must be recorded as failed with the
worker-died message, and every other point must finish. ``--resume`` then reruns only
the killed point.
"""

from __future__ import annotations

import json
import os

from diffxas.app.sweep import runner as sweep_runner
from diffxas.app.sweep import spec as sweep_spec


def _spec():
    # 4 points from one axis; the values are never used by the fake methods
    return {
        "base": {"methods": ["joint"], "simulate": {"preset": "tiny"}},
        "axes": {"simulate.dose": [1.0, 2.0, 3.0, 4.0]},
    }


def test_dask_local_cluster_killed_worker_is_recorded_and_resume_finishes(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    points = sweep_spec.expand_points(sweep_spec.load_spec(_spec()))
    victim = points[1]["dir"]
    monkeypatch.setenv(sweep_runner.TEST_HOOK_ENV, json.dumps({"fake": True, "kill": [victim]}))
    s = sweep_runner.run(_spec(), out, workers=2, progress=False)
    assert s.counts["total"] == 4 and s.counts["ok"] == 3 and s.counts["failed"] == 1, s.counts
    failed = s.failed()
    assert [r["dir"] for r in failed] == [victim] and failed[0]["error"] == sweep_runner.WORKER_DIED
    assert (out / victim / "error.txt").read_text().strip() == sweep_runner.WORKER_DIED
    assert not (out / victim / "done.json").exists()
    for p in points:
        if p["dir"] != victim:
            done = json.loads((out / p["dir"] / "done.json").read_text())
            assert done["status"] == "ok" and done["id"] == p["id"]
    assert not list(out.rglob("*.tmp"))  # done.json and the summary written atomically
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1

    # resume without the kill: the 3 finished points are skipped, the killed one runs
    monkeypatch.setenv(sweep_runner.TEST_HOOK_ENV, json.dumps({"fake": True}))
    s2 = sweep_runner.run(_spec(), out, workers=2, resume=True, progress=False)
    assert s2.counts == {"total": 4, "skipped": 3, "ran": 1, "ok": 4, "failed": 0}, s2.counts
    assert (out / victim / "done.json").is_file() and not (out / victim / "error.txt").exists()


def test_cluster_spec_without_dask_jobqueue_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    import pytest

    from diffxas.errors import ConfigError

    real = builtins.__import__

    def no_jobqueue(name, *a, **k):
        if name == "dask_jobqueue":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_jobqueue)
    with pytest.raises(ConfigError, match="needs dask-jobqueue"):
        sweep_runner.cluster_from_spec({"kind": "slurm", "jobs": 2, "cores": 4})
    with pytest.raises(ConfigError, match="kind must be one of"):
        sweep_runner.cluster_from_spec({"kind": "k8s"})
    assert os.environ.get(sweep_runner.TEST_HOOK_ENV) is None
