"""Provenance (versions, git state) and the cache of simulated datasets."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from diffxas import __version__
from diffxas.app.sweep.spec import DATA, TRUTH, PointConfig, _canon


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (NaN -> null)."""
    from diffxas.analysis.evaluate import jsonable  # scipy, h5py: `diffxas --help` imports this module

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(jsonable(obj), fh, indent=2, allow_nan=False, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {"diffxas": __version__, "python": sys.version.split()[0]}
    out.update(git_state())
    try:
        import jax  # jax: `diffxas --help` imports this module

        out["jax"] = jax.__version__
        out["devices"] = [str(d) for d in jax.devices()]
    except Exception:  # pragma: no cover
        pass
    return out


_GIT: dict[str, Any] | None = None


def git_state() -> dict[str, Any]:
    """The git commit of the diffxas checkout and whether diffxas/ has uncommitted changes
    (empty when not a git checkout); computed once per process."""
    global _GIT
    if _GIT is None:
        _GIT = {}
        pkg = Path(__file__).resolve().parent
        try:
            head = subprocess.run(
                ["git", "-C", str(pkg), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
            )
            if head.returncode == 0:
                dirty = subprocess.run(
                    ["git", "-C", str(pkg), "status", "--porcelain", "--", "."],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
                _GIT = {"git_commit": head.stdout.strip(), "git_dirty": bool(dirty)}
        except (OSError, subprocess.SubprocessError):
            pass
    return dict(_GIT)


#: Per-process cache of the last simulation: sim-config hash -> (Simulation, folder holding its files).
_SIM_CACHE: collections.OrderedDict = collections.OrderedDict()


_SIM_CACHE_SIZE = 1


#: Counters of this process (tests, logs): simulations run, method runs.
COUNTERS: collections.Counter = collections.Counter()


def _sim_key(sim_cfg) -> str:
    return hashlib.sha1(_canon(sim_cfg.to_dict()).encode()).hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _get_simulation(pc: PointConfig, d: Path, reuse_files: bool):
    """The point's simulation: files in ``d`` (resume), this process's cache, or simulate."""
    from diffxas.data import cxi as dio_cxi  # jax: `diffxas --help` imports this module
    from diffxas.data import truth as dio_truth  # jax: as above
    from diffxas.simulate.presets import Simulation, simulate  # jax: as above

    key = _sim_key(pc.sim)
    data, truth = d / DATA, d / TRUTH
    if reuse_files and data.exists() and truth.exists():
        ds = dio_cxi.read_cxi(data)
        tr = dio_truth.read_truth(truth)
        sim = Simulation(
            dataset=ds, truth=tr, config=pc.sim, true_positions=None, true_probes=None, sampling_grids=None
        )
        return sim, {"source": "files", "wall_s": 0.0}
    if key in _SIM_CACHE:
        sim, src_dir = _SIM_CACHE[key]
        _SIM_CACHE.move_to_end(key)
        try:
            for name in (DATA, TRUTH):
                _link_or_copy(src_dir / name, d / name)
        except OSError:
            _write_sim(sim, d)
        return sim, {"source": "cache", "wall_s": 0.0}
    t0 = time.perf_counter()
    sim = simulate(pc.sim)
    wall = time.perf_counter() - t0
    COUNTERS["simulations"] += 1
    _write_sim(sim, d)
    _SIM_CACHE[key] = (sim, d)
    while len(_SIM_CACHE) > _SIM_CACHE_SIZE:
        _SIM_CACHE.popitem(last=False)
    return sim, {"source": "simulated", "wall_s": wall}


def _write_sim(sim, d: Path) -> None:
    from diffxas.data import cxi as dio_cxi  # jax: `diffxas --help` imports this module
    from diffxas.data import truth as dio_truth  # jax: as above

    dio_cxi.write_cxi(d / DATA, sim.dataset, extra_attrs={"simulation": sim.config.to_dict()})
    dio_truth.write_truth(d / TRUTH, sim.truth)
