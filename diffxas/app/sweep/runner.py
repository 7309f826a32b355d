"""Parameter sweeps: many simulate -> reconstruct -> cluster -> evaluate runs from one TOML file.

A sweep file names a base configuration and the axes to vary::

    [sweep]                       # optional: name, description, combine, workers
    name = "dose"
    combine = "product"           # "product" (default) or "zip" (axes of equal length)

    [base]
    methods = ["two-step", "joint"]

    [base.simulate]               # diffxas.simulate.presets.preset(preset, **overrides)
    preset = "tiny"
    [base.energies]               # optional derived selection from the preset's energies
    count = 11                    #   N of them ...
    choice = "uniform"            #   ... "uniform" in index, or "edge" (pre-edge + edge)
    [base.twostep]                # diffxas.solvers.twostep.run.TwoStepConfig (nested tables allowed)
    [base.joint]                  # diffxas.solvers.joint.config.JointConfig
    steps = 200
    [base.cluster]                # diffxas.analysis.clustering.ClusterConfig
    k = 5
    [base.evaluate]               # options of diffxas.analysis.evaluate.evaluate
    nv_fraction = 0.25

    [axes]                        # any key in dotted form -> list of values
    "simulate.dose" = [1e4, 1e5, 1e6]
    "simulate.seed" = [0, 1, 2]
    # a *linked* axis: a name without a dot whose values are tables of dotted overrides
    # (and an optional "label"), to change several keys together:
    prior = [{label = "none", "joint.prior" = "none"},
             {label = "tv", "joint.prior" = "tv", "twostep.fit.smooth_sigma" = 1.0}]

    [[points]]                    # explicit extra points (dotted overrides of [base])
    "simulate.dose" = 1e7

    [profiles.quick]              # named variants (run(..., profile="quick"), --profile quick):
    "joint.steps" = 50            #   dotted overrides of [base] ...
    [profiles.quick.axes]         #   ... and replacement axes ([] removes an axis)
    "simulate.seed" = [0]

The points are the Cartesian product of the axes (or their zip), plus the explicit
points; identical points are run once. Every point gets its own folder
``<hash>_<key=value ...>`` (``hash``: the first 8 hex digits of the SHA-1 of the point's
fully resolved mapping, so editing the base config gives new folders) holding

* ``config.json``: the point's overrides, resolved mapping and every built config object;
* ``data.cxi`` and ``truth.h5``: the simulated data and its ground truth (one simulation
  per point, shared by all methods);
* ``result-<method>.h5``: each method's results file (with its clusters);
* ``metrics-<method>.json``: :func:`diffxas.analysis.evaluate.evaluate` (with the cluster ARI)
  plus timings;
* ``error.txt``: the traceback(s) of whatever failed;
* ``done.json``: written last (atomically) when every method succeeded; it holds the
  point's summary rows. ``resume=True`` skips points that have it; incomplete points
  reuse their data files and finished methods and recompute the rest.

``summary.csv`` / ``summary.json`` in the output folder collect one row per point x
method (axis values, status, error, metrics) and are rewritten after every point;
``sweep.json`` records the spec and the list of points.

Points run in worker processes (``workers > 1``: concurrent.futures with the spawn
context; each worker limits XLA and BLAS to one thread, and with several visible GPUs the
workers are assigned to them round-robin through ``CUDA_VISIBLE_DEVICES``); with
``workers=1`` they run one after the other in this process. A failed point (bad value,
diverged solver, out of memory, even a crashed worker) is recorded with its error and
the others go on.
"""

from __future__ import annotations

import collections
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffxas.app import compile_cache as jax_compile_cache
from diffxas.app.sweep.cache import COUNTERS, _get_simulation, _versions, _write_json
from diffxas.app.sweep.spec import (
    CONFIG,
    DATA,
    DONE,
    ERROR,
    PointConfig,
    SweepSpec,
    _apply,
    _norm_methods,
    _norm_override_map,
    _one_line,
    build_point,
    expand_points,
    load_spec,
)
from diffxas.app.sweep.spec import (
    methods as registered_methods,
)
from diffxas.app.sweep.summary import (
    SweepSummary,
    _error_text,
    _row,
    _same_resolved,
    write_summary,
)
from diffxas.errors import ConfigError

__all__ = ["run", "run_point"]


def _checkpoint(method: str, d: Path) -> Path:
    """The point's checkpoint of ``method``: ``<section>.ckpt`` (a file) or ``<section>-ckpt``
    (a folder) in the point's folder; resumed when a killed run left one, removed after success."""
    from diffxas.solvers import registry  # jax: `diffxas --help` imports this module

    spec = registry.get(method)
    return d / (f"{spec.section}.ckpt" if spec.checkpoint == "file" else f"{spec.section}-ckpt")


def run_point(point: Mapping[str, Any], out_dir: str | os.PathLike, reuse: bool = True) -> dict[str, Any]:
    """Run one point into ``out_dir/point['dir']``; never raises for the point's own failures.

    ``reuse``: keep the point's existing data files and finished methods (resume);
    otherwise the folder is emptied first. Returns ``{"id", "dir", "status" ("ok" or
    "failed"), "rows", "error", "wall_s"}``.
    """
    t_start = time.perf_counter()
    d = Path(out_dir) / point["dir"]
    if not reuse and d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    for stale in (DONE, ERROR):
        if (d / stale).exists():
            (d / stale).unlink()
    errors: list[str] = []
    rows: list[dict[str, Any]] = []

    def fail_all(methods, exc, what):
        msg = f"{what}: {_error_text(exc)}"
        errors.append(f"== {what}\n{traceback.format_exc()}")
        for m in methods:
            rows.append(_row(point, m, "failed", error=msg))
        return msg

    methods = _norm_methods(point["config"].get("methods", list(registered_methods())), "methods")
    record: dict[str, Any] = {
        "point": point["id"],
        "dir": point["dir"],
        "overrides": point["overrides"],
        "axes": point["axes"],
        "mapping": point["config"],
    }
    try:
        pc = build_point(point["config"])
        record["resolved"] = pc.record()
    except Exception as e:  # noqa: BLE001 - a bad value fails this point only
        msg = fail_all(methods, e, "config")
        record["error"] = msg
        _write_json(d / CONFIG, record)
        return _finish(point, d, rows, errors, t_start)
    record["versions"] = _versions()
    _write_json(d / CONFIG, record)
    try:
        sim, sim_info = _get_simulation(pc, d, reuse)
    except Exception as e:  # noqa: BLE001
        fail_all(pc.methods, e, "simulate")
        return _finish(point, d, rows, errors, t_start)
    for method in pc.methods:
        mpath = d / f"metrics-{method}.json"
        if reuse and mpath.exists() and (d / f"result-{method}.h5").exists():
            try:
                metrics = json.loads(mpath.read_text())
                rows.append(_row(point, method, "ok", metrics))
                continue
            except (OSError, ValueError):
                pass
        try:
            metrics = _run_method(method, pc, sim, sim_info, d)
            rows.append(_row(point, method, "ok", metrics))
        except Exception as e:  # noqa: BLE001
            fail_all([method], e, method)
    return _finish(point, d, rows, errors, t_start)


def _run_method(method: str, pc: PointConfig, sim, sim_info: Mapping[str, Any], d: Path) -> dict[str, Any]:
    """One method on the point's simulation through the one pipeline
    (:func:`diffxas.app.pipeline.run`: checks -> reconstruct -> cluster -> write -> evaluate)."""
    from diffxas.app import pipeline  # jax: `diffxas --help` imports this module

    # the simulator writes its frames in the file convention: no orientation search
    r = pipeline.run(
        sim.dataset,
        {method: pc.method_configs[method]},
        source=d / DATA,
        input_path=(d / DATA).resolve(),
        out={method: d / f"result-{method}.h5"},
        checkpoint={method: _checkpoint(method, d)},
        resume=True,
        keep_checkpoint=False,
        cluster=pc.cluster,
        truth=sim.truth,
        nv_fraction=float(pc.evaluate["nv_fraction"]),
        log=lambda msg: None,
    )[method]
    COUNTERS[f"method:{method}"] += 1
    cluster_info: dict[str, Any] = {}
    if r.cluster_error is not None:  # e.g. no valid pixel to cluster: metrics still count
        cluster_info = {"error": r.cluster_error}
    elif r.clusters is not None:
        from diffxas.analysis.clustering import cluster_attrs  # h5py: `diffxas --help` imports this module

        a = cluster_attrs(r.clusters)
        cluster_info = {"k": a.get("k"), "stability": a.get("stability"), "n_pixels": a.get("n_pixels")}
    metrics = r.metrics
    metrics["cluster_info"] = cluster_info
    metrics["timing"] = {
        "method_wall_s": r.wall_s,
        "sim_wall_s": sim_info.get("wall_s"),
        "sim_source": sim_info.get("source"),
    }
    metrics["method"] = method
    # the solver's plausibility checks (the joint's; None for a method without them)
    metrics["warnings"] = (r.result.config or {}).get("warnings")
    _write_json(d / f"metrics-{method}.json", metrics)
    return metrics


def _finish(point, d: Path, rows, errors, t_start) -> dict[str, Any]:
    wall = time.perf_counter() - t_start
    ok = bool(rows) and all(r["status"] == "ok" for r in rows)
    err = None
    if errors:
        (d / ERROR).write_text("\n".join(errors))
        err = "; ".join(r["error"] for r in rows if r.get("error"))
    out = {
        "id": point["id"],
        "dir": point["dir"],
        "status": "ok" if ok else "failed",
        "rows": rows,
        "error": err,
        "wall_s": wall,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if ok:
        _write_json(d / DONE, out)
    return out


def _failure(point: Mapping[str, Any], out_dir, message: str) -> dict[str, Any]:
    """Record a point whose worker died (the parent writes error.txt and the rows)."""
    d = Path(out_dir) / point["dir"]
    d.mkdir(parents=True, exist_ok=True)
    (d / ERROR).write_text(message + "\n")
    methods = _norm_methods(point["config"].get("methods", list(registered_methods())), "methods")
    return {
        "id": point["id"],
        "dir": point["dir"],
        "status": "failed",
        "error": message,
        "wall_s": None,
        "rows": [_row(point, m, "failed", error=message) for m in methods],
    }


def visible_gpus() -> list[str]:
    """GPU ids visible to this process, without initialising CUDA (for round-robin)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        return [] if ids in ([], ["-1"]) else ids
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def _thread_env() -> dict[str, str]:
    flags = os.environ.get("XLA_FLAGS", "")
    add = [
        f
        for f in ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
        if f.split("=")[0] not in flags
    ]
    env = {"XLA_FLAGS": " ".join([flags] + add).strip()}
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[v] = "1"
    return env


def _enable_compile_cache(cache_dir: str) -> None:
    """Persistent XLA compilation cache shared by the workers (identical programs compile once;
    one subfolder per host CPU, :mod:`diffxas.app.compile_cache`)."""
    jax_compile_cache.enable(jax_compile_cache.cache_dir(str(cache_dir)))


#: Test-only hook (read in the worker): JSON ``{"fake": true, "kill": ["<point dir>", ...]}``.
#: ``fake`` replaces the point's methods by a 0.2 s no-op that succeeds (to test the pool,
#: not the methods); a point whose folder is listed in ``kill`` SIGKILLs its worker process.
TEST_HOOK_ENV = "DIFFXAS_SWEEP_TEST_HOOK"


def _test_hook(point: Mapping[str, Any], out_dir: str) -> dict[str, Any] | None:
    raw = os.environ.get(TEST_HOOK_ENV)
    if not raw:
        return None
    hook = json.loads(raw)
    if point["dir"] in hook.get("kill", ()):
        os.kill(os.getpid(), signal.SIGKILL)
    if hook.get("fake"):
        t0 = time.perf_counter()
        d = Path(out_dir) / point["dir"]
        d.mkdir(parents=True, exist_ok=True)
        for stale in (DONE, ERROR):
            if (d / stale).exists():
                (d / stale).unlink()
        _write_json(d / CONFIG, {"point": point["id"], "resolved": build_point(point["config"]).record()})
        time.sleep(0.2)
        methods = _norm_methods(point["config"].get("methods", list(registered_methods())), "methods")
        return _finish(point, d, [_row(point, m, "ok", {"fake": 1.0}) for m in methods], [], t0)
    return None


def _assign_gpu(gpus: list[str], n_workers: int) -> None:
    """In a Dask worker: ``CUDA_VISIBLE_DEVICES`` round-robin by the worker's index (its
    name on a LocalCluster), set before the first JAX computation of the process."""
    if not gpus or os.environ.get("DIFFXAS_GPU_ASSIGNED"):
        return
    try:
        from distributed import get_worker  # distributed: ~0.3 s, only in a Dask worker

        name = get_worker().name
        idx = int(name) if str(name).isdigit() else abs(hash(name))
    except (ImportError, ValueError):
        idx = 0
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[idx % len(gpus)]
    if n_workers > len(gpus):  # workers share a GPU: no preallocation of 75 % of its memory each
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    os.environ["DIFFXAS_GPU_ASSIGNED"] = "1"


def _run_point_task(
    point: dict,
    out_dir: str,
    reuse: bool,
    gpus: list[str] | None = None,
    n_workers: int = 1,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """One point as a Dask task (in a worker process): GPU, compile cache, then :func:`run_point`."""
    _assign_gpu(gpus or [], n_workers)
    os.environ.setdefault("MPLBACKEND", "Agg")
    fake = _test_hook(point, out_dir)
    if fake is not None:
        return fake
    if cache_dir:
        _enable_compile_cache(cache_dir)
    return run_point(point, out_dir, reuse=reuse)


#: Message recorded for a point whose worker process died.
WORKER_DIED = (
    "worker process died while this point ran (killed for memory? a crash in a native library?); "
    "rerun with --resume to retry"
)


def _jobqueue_prologue() -> list[str]:
    """Shell lines that give a batch-job worker the LocalCluster's thread settings (:func:`_thread_env`).

    ``XLA_FLAGS`` is extended on the node (its own value kept), not copied from this host."""
    lines = [
        'export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"'
    ]
    lines += [f"export {v}=1" for v in _thread_env() if v != "XLA_FLAGS"]
    return lines


def cluster_from_spec(spec: Mapping[str, Any], scale: bool = True):
    """A dask-jobqueue cluster from the sweep file's ``[cluster]`` table, e.g.
    ``{kind = "slurm", jobs = 4, cores = 8, memory = "32GB", walltime = "02:00:00"}``:
    ``kind`` picks ``SLURMCluster``/``PBSCluster``/``SGECluster``/``LSFCluster``, ``jobs``
    how many batch jobs to scale to (``scale=False``: none submitted, e.g. to inspect
    ``cluster.job_script()``), the rest goes to the cluster class.

    The workers get the LocalCluster's settings: one thread per worker (``processes``
    defaults to ``cores``: the runner runs one point per worker, so a second thread would
    idle; an explicit ``processes`` wins) and single-threaded XLA and BLAS, exported at the
    top of the job script before the table's own ``job_script_prologue`` lines (or the dask
    config's), which may override them. A key no cluster/job class takes is one
    :class:`ConfigError` line naming it."""
    spec = dict(spec)
    kind = str(spec.pop("kind", "slurm")).lower()
    jobs = int(spec.pop("jobs", 1))
    classes = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
    if kind not in classes:
        raise ConfigError(f"[cluster] kind must be one of {', '.join(classes)}, got {kind!r}")
    try:
        import dask  # dask: ~0.1 s, only for a batch-system cluster
        import dask_jobqueue  # optional (the "cluster" extra)
    except ImportError:
        raise ConfigError(
            "[cluster] needs dask-jobqueue (pip install dask-jobqueue); or start a scheduler "
            "yourself and pass --scheduler ADDRESS"
        ) from None

    cls = getattr(dask_jobqueue, classes[kind])
    known = set(inspect.signature(cls.__init__).parameters)
    for c in cls.job_cls.__mro__:
        if "__init__" in vars(c):
            known |= set(inspect.signature(c.__init__).parameters)
    known -= {"self", "args", "kwargs", "job_kwargs", "base_class_kwargs", "scheduler", "job_cls", "loop"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(
            f"[cluster] unknown key(s) {', '.join(map(repr, unknown))} for {classes[kind]} "
            f"(known: kind, jobs, {', '.join(sorted(known))})"
        )
    cfg = str(spec.get("config_name", kind))
    if "processes" not in spec and spec.get("cores") is not None:
        spec["processes"] = int(spec["cores"])  # one thread per worker
    own, old = spec.pop("job_script_prologue", None), spec.pop("env_extra", None)  # env_extra: the old name
    if own is None:
        own = old
    if own is None:
        own = dask.config.get(f"jobqueue.{cfg}.job-script-prologue", None)
    if own is None:
        own = dask.config.get(f"jobqueue.{cfg}.env-extra", None)
    spec["job_script_prologue"] = _jobqueue_prologue() + list(own or [])
    try:
        cluster = cls(**spec)
    except (TypeError, ValueError) as e:  # e.g. no memory given, a wrong type
        raise ConfigError(f"[cluster]: {_one_line(e)}") from None
    if scale:
        cluster.scale(jobs=jobs)
    return cluster


def _run_dask(
    points,
    out_dir,
    workers,
    reuse_of,
    on_result,
    compile_cache,
    scheduler: str | None = None,
    cluster_spec: Mapping[str, Any] | None = None,
):
    """Run ``points`` as Dask tasks, one point per worker thread, ``on_result`` as each finishes.

    Where: ``scheduler`` (an address, e.g. ``tcp://host:8786``: a cluster started
    elsewhere), else ``cluster_spec`` (dask-jobqueue, :func:`cluster_from_spec`), else a
    ``LocalCluster`` of ``workers`` processes with one thread each, single-threaded XLA and
    BLAS (:func:`_thread_env`) and the visible GPUs assigned round-robin.

    A point whose worker dies is recorded as failed (:data:`WORKER_DIED`) and the sweep goes
    on: on a cluster started here the scheduler does not retry it
    (``distributed.scheduler.allowed-failures = 0``; a point that killed one worker would
    likely kill the next); a scheduler started elsewhere applies its own setting.
    """
    import dask  # dask, distributed: ~0.4 s; `diffxas --help` imports this module
    from distributed import Client, LocalCluster, as_completed  # as above
    from distributed.scheduler import KilledWorker  # as above

    gpus = visible_gpus() if scheduler is None and cluster_spec is None else []
    cluster = None
    # worker-saturation 1.0: a worker holds only the point it runs (queued points stay on the
    # scheduler), so a dying worker takes no innocent queued point with it
    with dask.config.set(
        {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.scheduler.worker-saturation": 1.0,
            "distributed.worker.daemon": False,
            "distributed.admin.tick.limit": "1h",
        }
    ):
        if scheduler is not None:
            client = Client(scheduler)
        else:
            if cluster_spec is not None:
                cluster = cluster_from_spec(cluster_spec)
            else:
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    env=_thread_env(),
                    silence_logs=40,
                )
            client = Client(cluster)
        try:
            # Each point is pinned to an idle worker (one point per worker at a time), so a
            # dying worker takes only its own point with it: the scheduler would otherwise
            # queue points on workers ahead of time and fail those too.
            pending = collections.deque(points)
            busy: dict = {}  # future -> (point, worker address)
            ac = as_completed()
            while pending or busy:
                taken = {a for _, a in busy.values()}
                free = [a for a in client.scheduler_info(n_workers=-1)["workers"] if a not in taken]
                while pending and free:
                    p, a = pending.popleft(), free.pop(0)
                    f = client.submit(
                        _run_point_task,
                        p,
                        str(out_dir),
                        reuse_of(p),
                        gpus,
                        workers,
                        compile_cache,
                        pure=False,
                        key=f"point-{p['id']}",
                        workers=[a],
                        allow_other_workers=False,
                    )
                    busy[f] = (p, a)
                    ac.add(f)
                if not busy:  # no worker yet (a batch-system cluster scaling up)
                    client.wait_for_workers(1)
                    continue
                f = next(ac)
                p, _ = busy.pop(f)
                try:
                    res = f.result()
                except KilledWorker:
                    res = _failure(p, out_dir, WORKER_DIED)
                except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
                    res = _failure(p, out_dir, f"worker error: {_error_text(e)}")
                on_result(res)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def run(
    sweep: str | os.PathLike | Mapping[str, Any] | SweepSpec,
    out_dir: str | os.PathLike,
    workers: int = 1,
    resume: bool = False,
    progress: bool = True,
    profile: str | None = None,
    overwrite: bool = False,
    overrides: Mapping[str, Any] | None = None,
    compile_cache: str | bool | None = None,
    scheduler: str | None = None,
    cluster: Mapping[str, Any] | None = None,
) -> SweepSummary:
    """Run a sweep; returns the summary table (also written to ``out_dir/summary.{csv,json}``).

    Args:
        sweep: a sweep file (TOML), its mapping or a :class:`SweepSpec`.
        out_dir: output folder (created).
        workers: worker processes of a Dask ``LocalCluster`` (1: run the points in this
            process, one at a time).
        scheduler: address of a running Dask scheduler (``tcp://host:8786``): the points
            run on its workers (``workers`` is then ignored).
        cluster: a dask-jobqueue spec (:func:`cluster_from_spec`; default: the sweep file's
            ``[sweep.cluster]`` table) to start a batch-system cluster for the points.
        resume: skip points whose ``done.json`` exists; incomplete points keep their data
            and finished methods.
        progress: show a tqdm bar (points done/failed/remaining, ETA) on stderr.
        profile: apply ``[profiles.<name>]`` of the file (e.g. "quick").
        overwrite: allow rerunning everything into a folder that already holds finished
            points (without it, and without ``resume``, that is an error).
        overrides: dotted overrides of the base config (the CLI's ``--set``).
        compile_cache: a folder for a persistent XLA compilation cache shared by the
            workers (True: ``out_dir/.jax_cache``); off by default.
    """
    spec = load_spec(sweep, profile=profile)
    if overrides:
        spec.base = _apply(spec.base, _norm_override_map(overrides, "overrides", allow_label=False))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    points = expand_points(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done_before = {p["id"] for p in points if (out / p["dir"] / DONE).exists()}
    if done_before and not resume and not overwrite:
        raise ConfigError(
            f"{out}: already holds {len(done_before)} finished point(s) of this sweep; "
            "use --resume to continue it or --overwrite to recompute everything"
        )
    _write_json(
        out / "sweep.json",
        {
            "spec": spec.to_dict(),
            "points": [{k: p[k] for k in ("id", "dir", "index", "overrides", "axes")} for p in points],
        },
    )
    cache = None
    if compile_cache:
        cache = str(out / ".jax_cache") if compile_cache is True else str(compile_cache)

    results: dict[str, dict[str, Any]] = {}
    todo, stale = [], set()
    for p in points:
        if resume and p["id"] in done_before:
            if not _same_resolved(out / p["dir"], p):
                # the point's id hashes the sweep file's values only; the defaults behind them
                # (config classes) may have changed since it ran: recompute it from scratch
                stale.add(p["id"])
                todo.append(p)
                continue
            try:
                results[p["id"]] = {**json.loads((out / p["dir"] / DONE).read_text()), "skipped": True}
                continue
            except (OSError, ValueError):
                pass
        todo.append(p)
    if stale and progress:
        print(
            f"{len(stale)} finished point(s) ran with different resolved configurations (changed defaults?): "
            "recomputing them",
            file=sys.stderr,
        )
    counts = {"total": len(points), "skipped": len(results), "ran": 0, "ok": len(results), "failed": 0}
    t_start = time.time()
    meta = {
        "name": spec.name,
        "source": spec.source,
        "profile": spec.profile,
        "out_dir": str(out),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workers": workers,
    }

    def rows_now():
        rows = []
        for p in points:
            r = results.get(p["id"])
            if r is not None:
                rows.extend(r["rows"])
        return rows

    bar = None
    if progress and todo:
        from tqdm import tqdm  # tqdm: ~20-50 ms; `diffxas --help` imports this module

        bar = tqdm(
            total=len(points),
            initial=len(results),
            unit="point",
            desc=spec.name or "sweep",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        bar.set_postfix(done=counts["ok"], failed=0, left=len(todo))

    def on_result(res):
        results[res["id"]] = res
        counts["ran"] += 1
        counts["ok" if res["status"] == "ok" else "failed"] += 1
        write_summary(out, rows_now(), {**meta, "counts": counts})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                done=counts["ok"], failed=counts["failed"], left=counts["total"] - counts["ok"] - counts["failed"]
            )
        elif progress:
            pass

    try:
        if todo:
            cluster_spec = cluster if cluster is not None else spec.settings.get("cluster")
            if workers == 1 and scheduler is None and cluster_spec is None:
                if cache:
                    _enable_compile_cache(cache)
                for p in todo:
                    on_result(run_point(p, out, reuse=resume and p["id"] not in stale))
            else:
                _run_dask(
                    todo,
                    out,
                    min(workers, len(todo)),
                    lambda p: resume and p["id"] not in stale,
                    on_result,
                    cache,
                    scheduler=scheduler,
                    cluster_spec=cluster_spec,
                )
    finally:
        if bar is not None:
            bar.close()
    rows = rows_now()
    paths = write_summary(out, rows, {**meta, "counts": counts, "wall_s": time.time() - t_start})
    summary = SweepSummary(rows)
    summary.out_dir, summary.counts, summary.points, summary.paths = out, counts, points, paths
    return summary
