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
import math
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


# A [sweep.cluster] table as a user writes it; ``cluster_from_spec(..., scale=False)`` builds
# the dask-jobqueue cluster (a local scheduler, no batch job submitted: no sbatch/qsub is
# needed) and the test reads the job script it would submit.
_CLUSTER_TOML = """
[sweep.cluster]
kind = "{kind}"
jobs = 3
cores = 8
memory = "16GB"
walltime = "02:30:00"
queue = "gpu"
job_extra_directives = ["{extra}"]
job_script_prologue = ["module load cuda"]
scheduler_options = {{dashboard_address = ":0"}}

[base]
methods = ["joint"]

[base.simulate]
preset = "tiny"
"""


def _cluster_settings(tmp_path, kind, extra):
    p = tmp_path / f"sweep-{kind}.toml"
    p.write_text(_CLUSTER_TOML.format(kind=kind, extra=extra))
    return sweep_spec.load_spec(p).settings["cluster"]


def _check_worker_settings(script):
    # one point per worker, one thread each: cores=8 -> 8 worker processes of 1 thread
    # (dask-jobqueue's own default for 8 cores would be 4 workers of 2 threads)
    assert "--nthreads 1" in script and "--nworkers 8" in script, script
    # single-threaded XLA and BLAS, exported before the user's own prologue line
    lines = script.splitlines()
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        assert f"export {v}=1" in lines, v
    xla = next(ln for ln in lines if ln.startswith("export XLA_FLAGS="))
    assert "--xla_cpu_multi_thread_eigen=false" in xla and "intra_op_parallelism_threads=1" in xla
    assert lines.index(xla) < lines.index("module load cuda")
    worker = next(ln for ln in lines if "--nthreads" in ln)
    assert lines.index("module load cuda") < lines.index(worker)


def test_cluster_spec_builds_a_slurm_job_script_without_submitting(tmp_path):
    import pytest

    pytest.importorskip("dask_jobqueue")
    cluster = sweep_runner.cluster_from_spec(_cluster_settings(tmp_path, "slurm", "--gpus=1"), scale=False)
    try:
        assert type(cluster).__name__ == "SLURMCluster"
        script = cluster.job_script()
        for line in ("#SBATCH -p gpu", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:30:00", "#SBATCH --gpus=1"):
            assert line in script.splitlines(), (line, script)
        # memory "16GB" = 16e9 B; dask-jobqueue writes it in GiB rounded up: ceil(16e9 / 2**30) = 15
        assert f"#SBATCH --mem={math.ceil(16e9 / 2**30)}G" in script.splitlines(), script
        _check_worker_settings(script)
        assert len(cluster.workers) == 0  # nothing submitted
    finally:
        cluster.close()


def test_cluster_spec_builds_a_pbs_job_script_without_submitting(tmp_path):
    import pytest

    pytest.importorskip("dask_jobqueue")
    cluster = sweep_runner.cluster_from_spec(_cluster_settings(tmp_path, "pbs", "-l ngpus=1"), scale=False)
    try:
        assert type(cluster).__name__ == "PBSCluster"
        script = cluster.job_script()
        for line in ("#PBS -q gpu", "#PBS -l walltime=02:30:00", "#PBS -l ngpus=1"):
            assert line in script.splitlines(), (line, script)
        # memory "16GB" = 16e9 B in GiB rounded up, as for SLURM: ceil(16e9 / 2**30) = 15
        assert f"#PBS -l select=1:ncpus=8:mem={math.ceil(16e9 / 2**30)}GB" in script.splitlines(), script
        _check_worker_settings(script)
        assert len(cluster.workers) == 0
    finally:
        cluster.close()


def test_cluster_spec_bad_key_or_value_is_one_config_error_line():
    import pytest

    pytest.importorskip("dask_jobqueue")
    from diffxas.errors import ConfigError

    base = {"kind": "slurm", "cores": 4, "memory": "16GB"}
    with pytest.raises(ConfigError) as e:
        sweep_runner.cluster_from_spec({**base, "walltme": "01:00:00"}, scale=False)
    msg = str(e.value)
    assert "\n" not in msg and "'walltme'" in msg and "SLURMCluster" in msg and "walltime" in msg, msg
    with pytest.raises(ConfigError) as e:  # no memory: dask-jobqueue's multi-line ValueError, made one line
        sweep_runner.cluster_from_spec({"kind": "pbs", "cores": 4}, scale=False)
    assert "\n" not in str(e.value) and str(e.value).startswith("[cluster]:"), str(e.value)
