"""Sweeps: spec parsing and point expansion (fast), an end-to-end tiny sweep with resume and a
failing point, and the parallel (spawn) path with failing points."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time

import pytest

from diffxas.app.sweep import cache as sweep_cache
from diffxas.app.sweep import cli as sweep_cli
from diffxas.app.sweep import runner as sweep_runner
from diffxas.app.sweep import spec as sweep_spec
from diffxas.app.sweep import summary as sweep_summary
from diffxas.errors import ConfigError

#: A few energies of the tiny preset's range (fast: the simulation loops over energies).
ENERGIES = [5440.0, 5462.0, 5466.0, 5470.0, 5476.0, 5480.0, 5484.0, 5490.0, 5500.0]
HAS_TWOSTEP = importlib.util.find_spec("diffxas.solvers.twostep.run") is not None


def _tiny_base(methods=("joint",)):
    base = {
        "methods": list(methods),
        "simulate": {
            "preset": "tiny",
            "energies": ENERGIES,
            "scan_step": 250e-9,
            "oversample": 1,
            "truth_oversample": 1,
        },
        "joint": {
            "steps": 3,
            "checkpoint_every": 2,
            "init": "stxm",
            "prior": "none",
        },  # sweep mechanics, not quality: the cheapest start
        "cluster": {"k": 3, "seeds": 1, "n_init": 2},
    }
    if "two-step" in methods:
        base["twostep"] = _fast_twostep()
    return base


def _fast_twostep() -> dict:
    """The fewest epochs/iterations the two-step config accepts (keys checked against its fields)."""
    import dataclasses

    from diffxas.solvers.twostep.run import TwoStepConfig

    out: dict = {}
    for f in dataclasses.fields(TwoStepConfig):
        d = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )  # type: ignore[misc]
        if f.name == "epochs":
            out["epochs"] = 2
        elif f.name in ("epie", "fit") and dataclasses.is_dataclass(d):
            names = {g.name for g in dataclasses.fields(d)}
            want = {
                "epochs": 2,
                "probe_update_start": 1,
                "kk_start": "none",
                "kk_every": "none",
                "decay_start": "none",
                "iterations": 3,
            }
            out[f.name] = {k: v for k, v in want.items() if k in names}
    return out


# ----------------------------------------------------------------------------- spec and points


def test_expand_product_points_linked_axes_and_profiles():
    spec = {
        "sweep": {"name": "t"},
        "base": {"methods": ["joint", "twostep"], "simulate": {"preset": "tiny"}, "joint": {"steps": 10}},
        "axes": {
            "simulate.dose": [1e4, 1e5],
            "simulate.seed": [0, 1, 2],
            "prior": [
                {"label": "none", "joint.prior": "none"},
                {"label": "tv", "joint.prior": "none", "joint.tv_weight": 1e-3, "two-step.fit.smooth_sigma": 1.0},
            ],
        },
        "points": [
            {"simulate.dose": 1e7, "label": "extra"},
            {"simulate.dose": 1e4, "simulate.seed": 0, "joint.prior": "none"},
        ],
        "profiles": {"quick": {"joint.steps": 2, "axes": {"simulate.seed": [0], "prior": []}}},
    }
    s = sweep_spec.load_spec(spec)
    assert s.base["methods"] == ["two-step", "joint"]  # normalised, in run order
    pts = sweep_spec.expand_points(s)
    # 2 x 3 x 2 product + 1 new explicit point (the second equals a product point)
    assert len(pts) == 13
    assert len({p["id"] for p in pts}) == 13 and len({p["dir"] for p in pts}) == 13
    tv = [p for p in pts if p["axes"].get("prior") == "tv"]
    assert len(tv) == 6 and all(p["config"]["twostep"]["fit"]["smooth_sigma"] == 1.0 for p in tv)
    assert all(p["config"]["joint"]["tv_weight"] == 1e-3 for p in tv)
    assert pts[0]["dir"].startswith(pts[0]["id"] + "_dose=10000_seed=0_prior=none")
    assert pts[-1]["axes"]["point"] == "extra" and pts[-1]["config"]["simulate"]["dose"] == 1e7
    # hashes depend on the resolved config only
    again = sweep_spec.expand_points(sweep_spec.load_spec(spec))
    assert [p["id"] for p in again] == [p["id"] for p in pts]
    q = sweep_spec.expand_points(sweep_spec.load_spec(spec, profile="quick"))
    assert len(q) == 2 + 2  # dose axis only (seed [0], prior removed) + 2 explicit points
    assert all(p["config"]["joint"]["steps"] == 2 for p in q)
    z = sweep_spec.expand_points(
        sweep_spec.load_spec(
            {"sweep": {"combine": "zip"}, "axes": {"simulate.dose": [1e4, 1e5], "simulate.seed": [3, 4]}}
        )
    )
    assert [(p["config"]["simulate"]["dose"], p["config"]["simulate"]["seed"]) for p in z] == [(1e4, 3), (1e5, 4)]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"axes": {"simulate.dose": 1e4}}, "must be a list"),
        ({"axes": {"nosuch.key": [1]}}, "unknown section"),
        ({"axes": {"dose": [1, 2]}}, "linked axis"),
        ({"base": {"methods": ["epie"]}}, "unknown method"),
        ({"extra": {}}, "unknown top-level"),
        ({"sweep": {"combine": "zip"}, "axes": {"simulate.dose": [1, 2], "simulate.seed": [1]}}, "equal length"),
    ],
)
def test_bad_specs_raise_one_line_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        sweep_spec.expand_points(sweep_spec.load_spec(bad))


def test_spec_from_toml_file_and_missing_profile(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        '[base]\nmethods = ["joint"]\n[base.simulate]\npreset = "tiny"\n'
        '[axes]\n"simulate.seed" = [0, 1]\n"energies.count" = [4, 8]\n'
        '[profiles.quick]\n"joint.steps" = 5\n'
    )
    s = sweep_spec.load_spec(f)
    assert s.name == "s" and len(sweep_spec.expand_points(s)) == 4
    with pytest.raises(ConfigError, match="no profile"):
        sweep_spec.load_spec(f, profile="full")
    f.write_text("[base\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        sweep_spec.load_spec(f)


def test_select_energies_uniform_and_edge():
    from diffxas.simulate.presets import SEED_ENERGIES

    u = sweep_spec.select_energies(SEED_ENERGIES, 8)
    assert len(u) == 8 and u[0] == SEED_ENERGIES[0] and u[-1] == SEED_ENERGIES[-1]
    assert list(u) == sorted(set(u))
    e = sweep_spec.select_energies(SEED_ENERGIES, 8, "edge", edge_ev=5465.0)
    assert len(e) == 8 and e[0] == 5420.0 and e[-1] == 5540.0
    assert all(5460.0 <= x <= 5490.0 for x in e[1:-1])  # pre-edge + edge window [-5, +25] eV
    assert sweep_spec.select_energies(SEED_ENERGIES, 40) == tuple(SEED_ENERGIES)
    # a window with too few energies is filled with the nearest ones outside it
    w = sweep_spec.select_energies(SEED_ENERGIES, 6, "edge", window=(0.0, 1.0), edge_ev=5465.0)
    assert len(w) == 6 and {5465.0, 5465.5, 5466.0} <= set(w)
    # two or three energies: the ends, plus (for three) the window's first energy, the one
    # index floor(linspace(0, L - 1, 1) + 0.5) = 0 picks (dataset.even_indices)
    assert sweep_spec.select_energies(SEED_ENERGIES, 2, "edge", edge_ev=5465.0) == (5420.0, 5540.0)
    inner = [x for x in SEED_ENERGIES[1:-1] if 5460.0 <= x <= 5490.0]
    assert sweep_spec.select_energies(SEED_ENERGIES, 3, "edge", edge_ev=5465.0) == (5420.0, inner[0], 5540.0)
    with pytest.raises(ConfigError):
        sweep_spec.select_energies(SEED_ENERGIES, 41)
    with pytest.raises(ConfigError):
        sweep_spec.select_energies(SEED_ENERGIES, 8, "random")


def test_point_passes_the_simulated_absorber_to_the_methods():
    # [simulate] element = "Mn": the preset's energies move to the Mn edge, both methods
    # model Mn unless their section names an element, and "edge" energies centre on Mn's edge
    pc = sweep_spec.build_point(
        {"simulate": {"preset": "tiny", "element": "Mn"}, "energies": {"count": 6, "choice": "edge"}}
    )
    assert pc.sim.element == "Mn" and min(pc.sim.energies) > 6400.0
    assert pc.method_configs["joint"].element == "Mn" and pc.method_configs["two-step"].element == "Mn"
    assert all(6534.0 <= x <= 6564.0 for x in pc.sim.energies[1:-1])  # [-5, +25] eV about 6539 eV
    own = sweep_spec.build_point({"simulate": {"preset": "tiny", "element": "Mn"}, "joint": {"element": "Fe"}})
    assert own.method_configs["joint"].element == "Fe"  # the section's own value wins (and then fails loudly)


def test_group_stats_over_seeds():
    rows = [
        {"status": "ok", "method": "joint", "dose": d, "seed": s, "m": d * 0 + s} for d in (1, 2) for s in (0, 1, 2)
    ]
    rows.append({"status": "failed", "method": "joint", "dose": 2, "seed": 3, "m": None})
    g = sweep_summary.group_stats(rows, ["method", "dose"], "m")
    assert [(x["dose"], x["mean"], x["n"], x["n_failed"]) for x in g] == [(1, 1.0, 3, 0), (2, 1.0, 3, 1)]
    assert g[0]["std"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- end to end


def _mtimes(out, pts):
    return {
        p["dir"]: os.stat(out / p["dir"] / sweep_spec.DONE).st_mtime_ns
        for p in pts
        if (out / p["dir"] / sweep_spec.DONE).exists()
    }


def test_tiny_sweep_resume_and_failing_point(tmp_path):
    methods = ("two-step", "joint") if HAS_TWOSTEP else ("joint",)
    spec = {
        "sweep": {"name": "tiny"},
        "base": _tiny_base(methods),
        "axes": {"simulate.dose": [1e5, 1e6], "simulate.seed": [0, 1]},
        "points": [{"simulate.dose": -1.0}],  # invalid: fails, the others complete
    }
    out = tmp_path / "sw"
    before = dict(sweep_cache.COUNTERS)
    s = sweep_runner.run(spec, out, workers=1, progress=False)
    nm = len(methods)
    assert s.counts == {"total": 5, "skipped": 0, "ran": 5, "ok": 4, "failed": 1}
    assert len(s) == 5 * nm
    # one simulation per point, shared by the methods
    assert sweep_cache.COUNTERS["simulations"] - before.get("simulations", 0) == 4
    ok = [r for r in s if r["status"] == "ok"]
    assert len(ok) == 4 * nm
    for r in ok:
        assert r["coverage"] is not None and r["edge_energy_rmse"] is not None and r["ari"] is not None
        # the joint's plausibility checks ran (tiny, 3 steps: whatever they found is counted)
        assert (
            (isinstance(r["n_warnings"], int) and r["n_warnings"] >= 0)
            if r["method"] == "joint"
            else r["n_warnings"] is None
        )
        assert {r["simulate.dose"], r["simulate.seed"]} <= {1e5, 1e6, 0, 1}
        d = out / r["dir"]
        for name in (
            "config.json",
            "data.cxi",
            "truth.h5",
            f"result-{r['method']}.h5",
            f"metrics-{r['method']}.json",
            "done.json",
        ):
            assert (d / name).is_file(), name
        assert not (d / "joint.ckpt").exists()  # checkpoints removed after success
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["resolved"]["simulate"]["dose"] == r["simulate.dose"]
        assert cfg["resolved"]["joint"]["optim"]["steps"] == 3  # recorded nested
    bad = [r for r in s if r["status"] == "failed"]
    assert len(bad) == nm and all("dose must be positive" in r["error"] for r in bad)
    bad_dir = out / bad[0]["dir"]
    assert (bad_dir / "error.txt").is_file() and not (bad_dir / "done.json").exists()
    assert "ConfigError" in (bad_dir / "error.txt").read_text()
    # the summary files hold the same rows
    assert sweep_summary.read_summary(out) == json.loads(json.dumps(list(s)))
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["point", "dir", "method", "status"] and "ari" in header and header[-1] == "error"
    # results files are readable and carry the clusters
    from diffxas.data.results import read_result

    res = read_result(out / ok[0]["dir"] / f"result-{ok[0]['method']}.h5")
    assert res.clusters is not None and "labels" in res.clusters

    # rerunning into the same folder without --resume is refused
    with pytest.raises(ConfigError, match="--resume"):
        sweep_runner.run(spec, out, workers=1, progress=False)

    # delete one point: resume recomputes it (and retries the failing one); a finished point
    # whose recorded resolved configuration differs from what the code resolves now (e.g. a
    # changed default) is not trusted either: recomputed from scratch
    pts = s.points
    gone = next(
        p for p in pts if p["config"]["simulate"].get("dose") == 1e6 and p["config"]["simulate"].get("seed") == 1
    )
    kept = _mtimes(out, pts)
    del kept[gone["dir"]]
    shutil.rmtree(out / gone["dir"])
    other = next(p for p in pts if p["dir"] in kept)
    del kept[other["dir"]]
    assert sweep_summary._same_resolved(out / other["dir"], other)
    cfg_path = out / other["dir"] / "config.json"
    rec = json.loads(cfg_path.read_text())
    rec["resolved"]["joint"]["lr_amp"] = 123.0  # as if the default had been different
    cfg_path.write_text(json.dumps(rec))
    assert not sweep_summary._same_resolved(out / other["dir"], other)
    # an interrupted point (its data files and one method finished, no done.json): resume
    # reads the data back from its files and runs only the missing method
    third = next(p for p in pts if p["dir"] in kept)
    del kept[third["dir"]]
    third_data = (out / third["dir"] / "data.cxi").stat().st_mtime_ns
    for name in ("done.json", "result-joint.h5", "metrics-joint.json"):
        (out / third["dir"] / name).unlink()
    time.sleep(0.01)
    runs_before = {m: sweep_cache.COUNTERS[f"method:{m}"] for m in methods}
    resumed = sweep_runner.run(spec, out, workers=1, resume=True, progress=False)
    assert resumed.counts == {"total": 5, "skipped": 1, "ran": 4, "ok": 4, "failed": 1}
    assert {m: sweep_cache.COUNTERS[f"method:{m}"] - runs_before[m] for m in methods} == {
        m: 3 if m == "joint" else 2 for m in methods
    }
    assert (out / third["dir"] / "data.cxi").stat().st_mtime_ns == third_data
    assert (out / third["dir"] / "done.json").is_file()
    now = _mtimes(out, pts)
    assert all(now[k] == v for k, v in kept.items())  # untouched
    assert gone["dir"] in now and (out / gone["dir"] / "data.cxi").is_file()
    assert sweep_summary._same_resolved(out / other["dir"], other)
    assert len(resumed) == len(s)
    # rows of the recomputed points equal the original ones except the timings (deterministic runs)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "sim_wall_s")} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(s)


def test_parallel_workers_record_failures(tmp_path):
    """The spawn path: two workers, every point invalid (fails fast), all recorded."""
    spec = {
        "base": {"methods": ["joint"], "simulate": {"preset": "tiny"}},
        "axes": {"simulate.dose": [-1.0, -2.0], "joint.steps": [-1]},
    }
    s = sweep_runner.run(spec, tmp_path / "par", workers=2, progress=False)
    assert s.counts["failed"] == 2 and s.counts["ok"] == 0
    assert all(r["status"] == "failed" and "ConfigError" in r["error"] for r in s)
    for r in s:
        assert (tmp_path / "par" / r["dir"] / "error.txt").is_file()


def test_cli_dry_run_and_exit_codes(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text('[base]\nmethods = ["joint"]\n[base.simulate]\npreset = "tiny"\n[axes]\n"simulate.dose" = [-1.0]\n')
    assert sweep_cli.main([str(f), "-o", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "1 point(s)" in capsys.readouterr().out
    assert sweep_cli.main([str(f), "-o", str(tmp_path / "o"), "-q"]) == 1  # the point fails
    assert "dose must be positive" in capsys.readouterr().out
    assert sweep_cli.main([str(tmp_path / "nope.toml"), "-o", str(tmp_path / "o")]) == 2
    assert "no such sweep file" in capsys.readouterr().err


def test_worker_env_round_robin_gpus_and_single_thread(monkeypatch):
    """Dask workers: GPU by worker index (round-robin), single-threaded XLA/BLAS env."""
    import types

    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    monkeypatch.setattr(os, "environ", env)
    env["CUDA_VISIBLE_DEVICES"] = "3,5"
    assert sweep_runner.visible_gpus() == ["3", "5"]
    import distributed

    seen = []
    for name in (0, 1, 2):
        env.pop("DIFFXAS_GPU_ASSIGNED", None)
        monkeypatch.setattr(distributed, "get_worker", lambda n=name: types.SimpleNamespace(name=n))
        sweep_runner._assign_gpu(["3", "5"], 3)
        seen.append(env["CUDA_VISIBLE_DEVICES"])
    assert seen == ["3", "5", "3"]
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # 3 workers share 2 GPUs
    t = sweep_runner._thread_env()
    assert "--xla_cpu_multi_thread_eigen=false" in t["XLA_FLAGS"]
    assert "intra_op_parallelism_threads=1" in t["XLA_FLAGS"] and t["OMP_NUM_THREADS"] == "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    assert sweep_runner.visible_gpus() == []
