r"""Parameter sweeps: many simulate -> reconstruct -> cluster -> evaluate runs from one TOML file.

A sweep file names a base configuration and the axes to vary::

    [sweep]                       # optional: name, description, combine, workers
    name = "dose"
    combine = "product"           # "product" (default) or "zip" (axes of equal length)

    [base]
    methods = ["two-step", "joint"]

    [base.simulate]               # diffxas.simulate.preset(preset, **overrides)
    preset = "tiny"
    [base.energies]               # optional derived selection from the preset's energies
    count = 11                    #   N of them ...
    choice = "uniform"            #   ... "uniform" in index, or "edge" (pre-edge + edge)
    [base.twostep]                # diffxas.twostep.TwoStepConfig (nested tables allowed)
    [base.joint]                  # diffxas.joint.JointConfig
    steps = 200
    [base.cluster]                # diffxas.clustering.ClusterConfig
    k = 5
    [base.evaluate]               # options of diffxas.evaluate.evaluate
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
* ``metrics-<method>.json``: :func:`diffxas.evaluate.evaluate` (with the cluster ARI)
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

import argparse
import collections
import copy
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, DiffxasError

__all__ = [
    "METHODS",
    "SweepSpec",
    "SweepSummary",
    "load_spec",
    "expand_points",
    "select_energies",
    "build_point",
    "run_point",
    "run",
    "read_summary",
    "group_stats",
    "add_arguments",
    "main_cli",
]

#: Reconstruction methods, in the order they run within a point.
METHODS = ("two-step", "joint")
_METHOD_ALIASES = {"two-step": "two-step", "twostep": "two-step", "two_step": "two-step", "joint": "joint"}
#: Sections of ``[base]`` built into config objects (diffxas.config).
CONFIG_SECTIONS = ("simulate", "twostep", "joint", "cluster")
#: All keys allowed in ``[base]``.
BASE_KEYS = CONFIG_SECTIONS + ("energies", "evaluate", "methods")
_SECTION_ALIASES = {"two-step": "twostep", "two_step": "twostep", "clustering": "cluster", "simulation": "simulate"}
_TOP_KEYS = ("sweep", "base", "axes", "points", "profiles")
ENERGY_CHOICES = ("uniform", "edge")
#: Default window of the "edge" energy choice, eV relative to the tabulated absorption edge.
EDGE_WINDOW = (-5.0, 25.0)

DONE = "done.json"
ERROR = "error.txt"
CONFIG = "config.json"
DATA = "data.cxi"
TRUTH = "truth.h5"


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


# ============================================================================ the spec


@dataclasses.dataclass
class SweepSpec:
    """A parsed sweep file.

    Attributes:
        base: the base mapping (sections of :data:`BASE_KEYS`).
        axes: axis name -> list of values, in file order. A dotted name sets that key; a
            name without a dot is a linked axis whose values are mappings of dotted keys.
        points: explicit points, each a mapping of dotted keys (optional ``label``).
        combine: "product" or "zip".
        name, description: from ``[sweep]``.
        settings: the rest of ``[sweep]`` (e.g. ``workers``).
        source: the file it came from ("" for a mapping).
        profile: the profile applied, if any.
    """

    base: dict[str, Any]
    axes: dict[str, list]
    points: list[dict[str, Any]]
    combine: str = "product"
    name: str = ""
    description: str = ""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""
    profile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "combine": self.combine, "source": self.source,
                "profile": self.profile, "settings": self.settings, "base": self.base, "axes": self.axes,
                "points": self.points}


def _norm_section(name: str) -> str:
    return _SECTION_ALIASES.get(name, name)


def _norm_key(key: str, where: str) -> str:
    """Check a dotted key (``section.key[.sub]`` or ``methods``) and normalise its section."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: bad key {key!r}: expected a dotted key like joint.steps")
    parts = key.split(".")
    parts[0] = _norm_section(parts[0])
    if parts[0] not in BASE_KEYS:
        raise ConfigError(f"{where}: key {key!r}: unknown section {parts[0]!r}; valid: {', '.join(BASE_KEYS)}")
    if parts[0] == "methods" and len(parts) > 1:
        raise ConfigError(f"{where}: key {key!r}: methods is a list, not a table")
    if parts[0] != "methods" and len(parts) < 2:
        raise ConfigError(f"{where}: key {key!r}: name a key of the section, e.g. {parts[0]}.<key>")
    if any(not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", p) for p in parts):
        raise ConfigError(f"{where}: bad key {key!r}: expected a dotted key like joint.steps")
    return ".".join(parts)


def _norm_methods(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where}: methods must be a non-empty list of {', '.join(METHODS)}, got {value!r}")
    out = []
    for m in value:
        mm = _METHOD_ALIASES.get(str(m).strip().lower())
        if mm is None:
            raise ConfigError(f"{where}: unknown method {m!r}; choose from {', '.join(METHODS)}")
        if mm not in out:
            out.append(mm)
    return [m for m in METHODS if m in out]


def _norm_base(base: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(base, Mapping):
        raise ConfigError(f"{where}: [base] must be a table")
    out: dict[str, Any] = {}
    for k, v in base.items():
        kk = _norm_section(str(k))
        if kk not in BASE_KEYS:
            raise ConfigError(f"{where}: unknown key [base.{k}]; valid: {', '.join(BASE_KEYS)}")
        if kk == "methods":
            out[kk] = _norm_methods(v, where)
        elif kk == "cluster" and v is False:  # no clustering (no ARI)
            out[kk] = False
        elif not isinstance(v, Mapping):
            raise ConfigError(f"{where}: [base.{k}] must be a table of key = value pairs")
        else:
            out[kk] = copy.deepcopy(dict(v))
    out.setdefault("methods", list(METHODS))
    return out


def _norm_override_map(m: Mapping[str, Any], where: str, allow_label: bool = True) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        raise ConfigError(f"{where}: expected a table of dotted keys, got {m!r}")
    out: dict[str, Any] = {}
    for k, v in m.items():
        if k == "label" and allow_label:
            out["label"] = str(v)
            continue
        nk = _norm_key(k, where)
        out[nk] = _norm_methods(v, where) if nk == "methods" else v
    return out


def _norm_axes(axes: Mapping[str, Any], where: str) -> dict[str, list]:
    if not isinstance(axes, Mapping):
        raise ConfigError(f"{where}: [axes] must be a table")
    out: dict[str, list] = {}
    for name, values in axes.items():
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"{where}: axis {name!r} must be a list of values, got {values!r}")
        values = list(values)
        if "." in name or _norm_section(name) == "methods":
            key = _norm_key(name, where)
            if key == "methods":
                values = [_norm_methods(v, where) for v in values]
            out[key] = values
        else:
            if not all(isinstance(v, Mapping) for v in values):
                raise ConfigError(f"{where}: axis {name!r} has no section (write e.g. joint.{name}), or is a linked "
                                  f"axis whose values must all be tables of dotted keys")
            out[name] = [_norm_override_map(v, f"{where}: axis {name!r}") for v in values]
    return out


def load_spec(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec, profile: str | None = None) -> SweepSpec:
    """Read a sweep file (TOML path) or mapping into a :class:`SweepSpec`, applying ``profile``.

    Raises a one-line :class:`ConfigError` for a malformed file (values are checked per
    point, when the point runs: a bad value fails that point only).
    """
    if isinstance(spec, SweepSpec):
        if profile is None:
            return copy.deepcopy(spec)
        raise ConfigError("apply a profile when loading the file, not to a parsed SweepSpec")
    source = ""
    if isinstance(spec, Mapping):
        data = copy.deepcopy(dict(spec))
    else:
        import tomllib

        p = Path(spec)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: no such sweep file")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: invalid TOML: {_one_line(e)}") from None
    where = source or "sweep"
    bad = sorted(set(data) - set(_TOP_KEYS))
    if bad:
        raise ConfigError(f"{where}: unknown top-level key(s) {bad}; valid: {', '.join(_TOP_KEYS)}")
    meta = dict(data.get("sweep") or {})
    combine = str(meta.pop("combine", "product"))
    if combine not in ("product", "zip"):
        raise ConfigError(f"{where}: [sweep] combine must be 'product' or 'zip', got {combine!r}")
    base = _norm_base(data.get("base") or {}, where)
    axes = _norm_axes(data.get("axes") or {}, where)
    pts_raw = data.get("points") or []
    if not isinstance(pts_raw, list):
        raise ConfigError(f"{where}: points must be an array of tables ([[points]])")
    points = [_norm_override_map(p, f"{where}: points[{i}]") for i, p in enumerate(pts_raw)]
    profiles = data.get("profiles") or {}
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"{where}: no profile {profile!r}; defined: {', '.join(sorted(profiles)) or 'none'}")
        prof = dict(profiles[profile])
        p_axes = prof.pop("axes", None)
        p_points = prof.pop("points", None)
        if "combine" in prof:
            combine = str(prof.pop("combine"))
        over = _norm_override_map(prof, f"{where}: [profiles.{profile}]", allow_label=False)
        base = _apply(base, over)
        if p_axes is not None:
            for k, v in _norm_axes(p_axes, f"{where}: [profiles.{profile}.axes]").items():
                if v:
                    axes[k] = v
                else:
                    axes.pop(k, None)
        if p_points is not None:
            points = [_norm_override_map(p, f"{where}: [profiles.{profile}] points[{i}]") for i, p in enumerate(p_points)]
    return SweepSpec(base=base, axes=axes, points=points, combine=combine, name=str(meta.pop("name", "") or
                     (Path(source).stem if source else "")), description=str(meta.pop("description", "")),
                     settings=meta, source=source, profile=profile)


# ============================================================================ points


def _apply(mapping: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``mapping`` with dotted ``overrides`` set (``label`` is ignored)."""
    out = copy.deepcopy(dict(mapping))
    for key, value in overrides.items():
        if key == "label":
            continue
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                if nxt is not None:
                    raise ConfigError(f"override {key!r}: {p!r} is a value, not a table")
                nxt = {}
                node[p] = nxt
            node = nxt
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt_value(x) for x in v) or "none"
    if isinstance(v, Mapping):
        return str(v.get("label")) if "label" in v else "+".join(f"{_short(k)}={_fmt_value(x)}" for k, x in v.items())
    return str(v)


def _short(key: str) -> str:
    return key.split(".")[-1]


def _folder_name(pid: str, labels: Mapping[str, Any]) -> str:
    shorts = [_short(k) for k in labels]
    parts = []
    for k, v in labels.items():
        name = _short(k) if shorts.count(_short(k)) == 1 else k
        parts.append(f"{name}={_fmt_value(v)}")
    readable = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts))[:100].strip("-_")
    return f"{pid}_{readable}" if readable else pid


def expand_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The points of ``spec``: product (or zip) of the axes, then the explicit points.

    Each point is a dict: ``id`` (8 hex digits), ``dir`` (folder name), ``index``,
    ``overrides`` (dotted key -> value, linked axes expanded), ``axes`` (axis name ->
    value, or the label of a linked value; what the summary shows) and ``config`` (the
    resolved mapping). Duplicates (same resolved mapping) are dropped.
    """
    names = list(spec.axes)
    value_lists = [spec.axes[n] for n in names]
    if spec.combine == "zip":
        lens = {len(v) for v in value_lists}
        if len(lens) > 1:
            raise ConfigError(f"combine = 'zip' needs axes of equal length, got {dict(zip(names, map(len, value_lists)))}")
        combos = list(zip(*value_lists)) if value_lists else [()]
    else:
        combos = list(itertools.product(*value_lists)) if value_lists else [()]
    raw: list[tuple[dict, dict]] = []
    for combo in combos:
        over: dict[str, Any] = {}
        shown: dict[str, Any] = {}
        for n, v in zip(names, combo):
            if "." in n or n == "methods":
                over[n] = v
                shown[n] = v
            else:
                over.update({k: x for k, x in v.items() if k != "label"})
                shown[n] = v.get("label", _fmt_value(v))
        raw.append((over, shown))
    for p in spec.points:
        over = {k: v for k, v in p.items() if k != "label"}
        shown = dict(over)
        if "label" in p:
            shown = {"point": p["label"], **shown}
        raw.append((over, shown))
    if not raw:
        raw = [({}, {})]
    points, seen = [], set()
    for over, shown in raw:
        cfg = _apply(spec.base, over)
        pid = hashlib.sha1(_canon(cfg).encode()).hexdigest()[:8]
        if pid in seen:
            continue
        seen.add(pid)
        points.append({"id": pid, "dir": _folder_name(pid, shown), "index": len(points), "overrides": over,
                       "axes": shown, "config": cfg})
    return points


# ============================================================================ energies


def _edge_energy_ev(element: str = "V", table: str = "chantler") -> float:
    from .scattering import table_edge_energy

    return float(table_edge_energy(element, table))


def select_energies(energies: Sequence[float], count: int, choice: str = "uniform",
                    window: Sequence[float] = EDGE_WINDOW, edge_ev: float | None = None) -> tuple[float, ...]:
    """``count`` of ``energies`` (sorted, eV).

    * ``"uniform"``: uniform in index, ``floor(linspace(0, K-1, count) + 0.5)`` (first and last
      always included; with the seed's list this already follows its denser sampling of
      the pre-edge and edge; :func:`diffxas.dataset.spread_indices`, the rule of
      ``simulate --energies`` and ``reconstruct --energies`` too);
    * ``"edge"``: the first and last energies (baseline below, level above the edge),
      the other ``count - 2`` uniform in index among the energies inside ``window`` (eV,
      relative to the tabulated absorption edge ``edge_ev``, by default the V K edge:
      the pre-edge peak and the rising edge); if the window holds too few, the nearest
      energies outside it fill up.
    """
    import numpy as np

    e = np.asarray(sorted(float(x) for x in energies))
    k = e.size
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) and not (isinstance(count, float) and float(count).is_integer()):
        raise ConfigError(f"energies.count must be an integer, got {count!r}")
    count = int(count)
    if not 2 <= count <= k:
        raise ConfigError(f"energies.count must be between 2 and the {k} available energies, got {count}")
    if choice not in ENERGY_CHOICES:
        raise ConfigError(f"energies.choice must be one of {', '.join(ENERGY_CHOICES)}, got {choice!r}")
    if count == k:
        return tuple(float(x) for x in e)
    if choice == "uniform":
        from .dataset import spread_indices

        return tuple(float(x) for x in e[spread_indices(k, count, "energies.count")])
    if len(window) != 2 or not window[0] < window[1]:
        raise ConfigError(f"energies.window must be [lo, hi] eV relative to the edge, got {window!r}")
    e0 = _edge_energy_ev() if edge_ev is None else float(edge_ev)
    chosen = {0, k - 1}
    inner = [i for i in range(1, k - 1) if e0 + window[0] <= e[i] <= e0 + window[1]]
    need = count - 2
    if len(inner) >= need:
        from .dataset import even_indices

        chosen.update(inner[j] for j in even_indices(len(inner), need))
    else:
        chosen.update(inner)
        lo, hi = e0 + window[0], e0 + window[1]
        rest = sorted((i for i in range(1, k - 1) if i not in chosen), key=lambda i: min(abs(e[i] - lo), abs(e[i] - hi)))
        chosen.update(rest[: need - len(inner)])
    return tuple(float(x) for x in e[sorted(chosen)])


# ============================================================================ building a point


@dataclasses.dataclass
class PointConfig:
    """The config objects of one point."""

    sim: Any
    methods: list[str]
    method_configs: dict[str, Any]
    cluster: Any
    evaluate: dict[str, Any]
    energies: dict[str, Any]

    def record(self) -> dict[str, Any]:
        from .config import config_to_dict

        out = {"simulate": self.sim.to_dict(), "methods": list(self.methods), "energies": self.energies,
               "evaluate": self.evaluate, "cluster": config_to_dict(self.cluster) if self.cluster is not None else None}
        for m, c in self.method_configs.items():
            out["twostep" if m == "two-step" else m] = config_to_dict(c)
        return out


def build_point(mapping: Mapping[str, Any]) -> PointConfig:
    """Build every config object of a resolved point mapping (ConfigError on a bad value)."""
    from .config import build_section, sim_config

    mapping = dict(mapping)
    methods = _norm_methods(mapping.get("methods", list(METHODS)), "methods")
    sim = sim_config(mapping.get("simulate") or {})
    en = dict(mapping.get("energies") or {})
    unknown = sorted(set(en) - {"count", "choice", "window", "edge_ev"})
    if unknown:
        raise ConfigError(f"[energies] unknown key(s) {unknown}; valid: count, choice, window, edge_ev")
    en_rec: dict[str, Any] = {}
    if en.get("count") is not None:
        edge_ev = en.get("edge_ev")
        if edge_ev is None and str(en.get("choice", "uniform")) == "edge":
            edge_ev = _edge_energy_ev(sim.element, sim.table)
        sel = select_energies(sim.energies, en["count"], str(en.get("choice", "uniform")),
                              en.get("window", EDGE_WINDOW), edge_ev)
        en_rec = {"count": int(en["count"]), "choice": str(en.get("choice", "uniform")),
                  "from": list(sim.energies), "selected": list(sel)}
        sim = dataclasses.replace(sim, energies=sel)
    elif en:
        raise ConfigError("[energies] needs count (choice/window only qualify it)")
    mcfg: dict[str, Any] = {}
    for m in methods:
        section = "twostep" if m == "two-step" else m
        # the methods model the simulated absorber unless their section names one
        mcfg[m] = build_section(mapping, section, element=sim.element)
    cl = mapping.get("cluster")
    cluster = None if cl is False else build_section({"cluster": cl or {}}, "cluster")
    ev = dict(mapping.get("evaluate") or {})
    bad = sorted(set(ev) - {"nv_fraction"})
    if bad:
        raise ConfigError(f"[evaluate] unknown key(s) {bad}; valid: nv_fraction")
    ev.setdefault("nv_fraction", 0.25)
    return PointConfig(sim=sim, methods=methods, method_configs=mcfg, cluster=cluster, evaluate=ev, energies=en_rec)


# ============================================================================ running a point


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (NaN -> null)."""
    from .evaluate import jsonable

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(jsonable(obj), fh, indent=2, allow_nan=False, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def _versions() -> dict[str, Any]:
    from . import __version__

    out: dict[str, Any] = {"diffxas": __version__, "python": sys.version.split()[0]}
    out.update(git_state())
    try:
        import jax

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
            head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                  text=True, timeout=10)
            if head.returncode == 0:
                dirty = subprocess.run(["git", "-C", str(pkg), "status", "--porcelain", "--", "."],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
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
    from . import io as dio
    from .simulate import Simulation, simulate

    key = _sim_key(pc.sim)
    data, truth = d / DATA, d / TRUTH
    if reuse_files and data.exists() and truth.exists():
        ds = dio.read_cxi(data)
        tr = dio.read_truth(truth)
        sim = Simulation(dataset=ds, truth=tr, config=pc.sim, true_positions=None, true_probes=None, sampling_grids=None)
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
    from . import io as dio

    dio.write_cxi(d / DATA, sim.dataset, extra_attrs={"simulation": sim.config.to_dict()})
    dio.write_truth(d / TRUTH, sim.truth)


def _reconstruct(method: str, ds, cfg, d: Path):
    if method == "joint":
        from .joint import reconstruct_joint

        ckpt = d / "joint.ckpt"
        res = reconstruct_joint(ds, cfg, progress=False, checkpoint=str(ckpt), resume=True)
        for p in (ckpt, Path(str(ckpt) + ".hist.npz")):
            if p.exists():
                p.unlink()
        return res
    if method == "two-step":
        try:
            from .twostep import reconstruct_two_step
        except ImportError as e:
            raise ConfigError(f"the two-step method is not available in this installation ({e})") from None
        ck = d / "twostep-ckpt"
        res = reconstruct_two_step(ds, cfg, progress=False, checkpoint_dir=str(ck), resume=True)
        shutil.rmtree(ck, ignore_errors=True)
        return res
    raise ConfigError(f"unknown method {method!r}")


#: Scalar metric columns of the summary, from an evaluate() dict.
_MAP_METRICS = ("edge_energy", "pre_edge_norm", "ne_eff_per_nv", "edge_width")


def flatten_metrics(m: Mapping[str, Any] | None) -> dict[str, Any]:
    """The summary columns of one metrics dict (evaluate() output + timing)."""
    m = m or {}
    out: dict[str, Any] = {"coverage": m.get("coverage"), "n_region": m.get("n_region"), "n_valid": m.get("n_valid")}
    for name in _MAP_METRICS:
        st = m.get(name) or {}
        for s in ("rmse", "bias", "mae", "matched_blur_px", "matched_rmse"):
            if s in ("rmse", "bias", "mae") or name != "edge_width":  # edge_width has no matched numbers
                out[f"{name}_{s}"] = st.get(s)
    nv = m.get("n_v") or {}
    out["n_v_rel_rms"] = nv.get("rel_rms")
    out["n_v_rel_bias"] = nv.get("rel_bias")
    cl = m.get("clusters") or {}
    out["ari"] = cl.get("ari")
    out["matched_accuracy"] = cl.get("matched_accuracy")
    ci = m.get("cluster_info") or {}
    out["cluster_k"] = ci.get("k")
    h = m.get("history") or {}
    out["final_loss"] = h.get("final_loss")
    out["heldout_loss"] = h.get("final_heldout_loss")
    out["iterations"] = h.get("iterations")
    w = m.get("warnings")
    out["n_warnings"] = len(w) if isinstance(w, list) else None  # None: no checks (two-step, older runs)
    t = m.get("timing") or {}
    out["wall_s"] = t.get("method_wall_s")
    out["sim_wall_s"] = t.get("sim_wall_s")
    return out


def _row(point: Mapping[str, Any], method: str, status: str, metrics=None, error: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"point": point["id"], "dir": point["dir"], "method": method, "status": status}
    for k, v in point["axes"].items():
        row[k] = v if isinstance(v, (int, float, str, bool)) or v is None else _fmt_value(v)
    row.update(flatten_metrics(metrics))
    row["error"] = error
    return row


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _same_resolved(d: Path, point: Mapping[str, Any]) -> bool:
    """Whether the finished point in ``d`` ran with the configuration objects this code
    resolves its values to now (``config.json`` -> ``resolved``; False if unknown)."""
    try:
        stored = json.loads((d / CONFIG).read_text()).get("resolved")
        from .evaluate import jsonable

        now = json.loads(json.dumps(jsonable(build_point(point["config"]).record()), allow_nan=False, default=str))
    except Exception:  # noqa: BLE001 - unreadable or unbuildable: do not trust it
        return False
    return stored == now


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

    methods = _norm_methods(point["config"].get("methods", list(METHODS)), "methods")
    record: dict[str, Any] = {"point": point["id"], "dir": point["dir"], "overrides": point["overrides"],
                              "axes": point["axes"], "mapping": point["config"]}
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
    from . import io as dio
    from .evaluate import evaluate

    t0 = time.perf_counter()
    res = _reconstruct(method, sim.dataset, pc.method_configs[method], d)
    wall = time.perf_counter() - t0
    COUNTERS[f"method:{method}"] += 1
    clusters, cluster_info = None, {}
    if pc.cluster is not None:
        from .clustering import cluster_attrs, cluster_result

        try:
            clusters = cluster_result(res, pc.cluster)
            res.clusters = clusters
            a = cluster_attrs(clusters)
            cluster_info = {"k": a.get("k"), "stability": a.get("stability"), "n_pixels": a.get("n_pixels")}
        except DiffxasError as e:  # e.g. no valid pixel to cluster: metrics still count
            cluster_info = {"error": _error_text(e)}
    res.input_path = str((d / DATA).resolve())
    dio.write_result(d / f"result-{method}.h5", res)
    metrics = evaluate(res, sim.truth, nv_fraction=float(pc.evaluate["nv_fraction"]), clusters=clusters)
    metrics["cluster_info"] = cluster_info
    metrics["timing"] = {"method_wall_s": wall, "sim_wall_s": sim_info.get("wall_s"), "sim_source": sim_info.get("source")}
    metrics["method"] = method
    # the solver's plausibility checks (the joint's; None for a method without them)
    metrics["warnings"] = (res.config or {}).get("warnings")
    _write_json(d / f"metrics-{method}.json", metrics)
    return metrics


def _finish(point, d: Path, rows, errors, t_start) -> dict[str, Any]:
    wall = time.perf_counter() - t_start
    ok = bool(rows) and all(r["status"] == "ok" for r in rows)
    err = None
    if errors:
        (d / ERROR).write_text("\n".join(errors))
        err = "; ".join(r["error"] for r in rows if r.get("error"))
    out = {"id": point["id"], "dir": point["dir"], "status": "ok" if ok else "failed", "rows": rows, "error": err,
           "wall_s": wall, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if ok:
        _write_json(d / DONE, out)
    return out


def _failure(point: Mapping[str, Any], out_dir, message: str) -> dict[str, Any]:
    """Record a point whose worker died (the parent writes error.txt and the rows)."""
    d = Path(out_dir) / point["dir"]
    d.mkdir(parents=True, exist_ok=True)
    (d / ERROR).write_text(message + "\n")
    methods = _norm_methods(point["config"].get("methods", list(METHODS)), "methods")
    return {"id": point["id"], "dir": point["dir"], "status": "failed", "error": message, "wall_s": None,
            "rows": [_row(point, m, "failed", error=message) for m in methods]}


# ============================================================================ workers


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
    add = [f for f in ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1") if f.split("=")[0] not in flags]
    env = {"XLA_FLAGS": " ".join([flags] + add).strip()}
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[v] = "1"
    return env


def _enable_compile_cache(cache_dir: str) -> None:
    """Persistent XLA compilation cache shared by the workers (identical programs compile once)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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
        import signal

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
        methods = _norm_methods(point["config"].get("methods", list(METHODS)), "methods")
        return _finish(point, d, [_row(point, m, "ok", {"fake": 1.0}) for m in methods], [], t0)
    return None


def _assign_gpu(gpus: list[str], n_workers: int) -> None:
    """In a Dask worker: ``CUDA_VISIBLE_DEVICES`` round-robin by the worker's index (its
    name on a LocalCluster), set before the first JAX computation of the process."""
    if not gpus or os.environ.get("DIFFXAS_GPU_ASSIGNED"):
        return
    try:
        from distributed import get_worker

        name = get_worker().name
        idx = int(name) if str(name).isdigit() else abs(hash(name))
    except (ImportError, ValueError):
        idx = 0
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[idx % len(gpus)]
    if n_workers > len(gpus):  # workers share a GPU: no preallocation of 75 % of its memory each
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    os.environ["DIFFXAS_GPU_ASSIGNED"] = "1"


def _run_point_task(point: dict, out_dir: str, reuse: bool, gpus: list[str] | None = None, n_workers: int = 1,
                    cache_dir: str | None = None) -> dict[str, Any]:
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
WORKER_DIED = ("worker process died while this point ran (killed for memory? a crash in a native library?); "
               "rerun with --resume to retry")


def cluster_from_spec(spec: Mapping[str, Any]):
    """A dask-jobqueue cluster from the sweep file's ``[cluster]`` table, e.g.
    ``{kind = "slurm", jobs = 4, cores = 8, memory = "32GB", walltime = "02:00:00"}``:
    ``kind`` picks ``SLURMCluster``/``PBSCluster``/``SGECluster``/``LSFCluster``, ``jobs``
    how many batch jobs to scale to, the rest goes to the cluster class unchanged."""
    spec = dict(spec)
    kind = str(spec.pop("kind", "slurm")).lower()
    jobs = int(spec.pop("jobs", 1))
    classes = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
    if kind not in classes:
        raise ConfigError(f"[cluster] kind must be one of {', '.join(classes)}, got {kind!r}")
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError("[cluster] needs dask-jobqueue (pip install dask-jobqueue); or start a scheduler "
                          "yourself and pass --scheduler ADDRESS") from None
    try:
        cluster = getattr(dask_jobqueue, classes[kind])(**spec)
    except TypeError as e:
        raise ConfigError(f"[cluster]: {_one_line(e)}") from None
    cluster.scale(jobs=jobs)
    return cluster


def _run_dask(points, out_dir, workers, reuse_of, on_result, compile_cache, scheduler: str | None = None,
              cluster_spec: Mapping[str, Any] | None = None):
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
    import dask
    from distributed import Client, LocalCluster, as_completed
    from distributed.scheduler import KilledWorker

    gpus = visible_gpus() if scheduler is None and cluster_spec is None else []
    cluster = None
    # worker-saturation 1.0: a worker holds only the point it runs (queued points stay on the
    # scheduler), so a dying worker takes no innocent queued point with it
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": 1.0,
                          "distributed.worker.daemon": False,
                          "distributed.admin.tick.limit": "1h"}):
        if scheduler is not None:
            client = Client(scheduler)
        else:
            if cluster_spec is not None:
                cluster = cluster_from_spec(cluster_spec)
            else:
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, env=_thread_env(), silence_logs=40)
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
                    f = client.submit(_run_point_task, p, str(out_dir), reuse_of(p), gpus, workers, compile_cache,
                                      pure=False, key=f"point-{p['id']}", workers=[a], allow_other_workers=False)
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


# ============================================================================ summary


class SweepSummary(list):
    """The summary table: a list of row dicts (one per point x method), plus

    ``out_dir``, ``counts`` (points: total, ran, skipped, ok, failed), ``points`` and
    ``paths`` (summary.csv, summary.json)."""

    out_dir: Path
    counts: dict[str, int]
    points: list[dict[str, Any]]
    paths: dict[str, Path]

    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self if r.get("status") != "ok"]


_LEAD = ("point", "dir", "method", "status")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = list(_LEAD)
    for r in rows:
        for k in r:
            if k not in cols and k != "error":
                cols.append(k)
    cols.append("error")
    return cols


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def write_summary(out_dir, rows: list[dict[str, Any]], extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``summary.csv`` and ``summary.json`` (atomically) in ``out_dir``."""
    out_dir = Path(out_dir)
    cols = _columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_csv_value(r.get(c)) for c in cols])
    csv_path, json_path = out_dir / "summary.csv", out_dir / "summary.json"
    tmp = csv_path.with_name(csv_path.name + f".tmp{os.getpid()}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, csv_path)
    _write_json(json_path, {**(extra or {}), "columns": cols, "rows": rows})
    return {"csv": csv_path, "json": json_path}


def read_summary(path) -> list[dict[str, Any]]:
    """The rows of a sweep's ``summary.json`` (``path``: the file or the sweep folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    if not p.exists():
        raise ConfigError(f"{p}: no sweep summary (run the sweep first)")
    return json.loads(p.read_text())["rows"]


def group_stats(rows: Sequence[Mapping[str, Any]], by: Sequence[str], metric: str,
                where: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Mean, standard deviation (ddof 1; 0 for one value), standard error and count of
    ``metric`` over the ok rows grouped by the columns ``by`` (e.g. over seeds).

    Returns one dict per group (sorted by the group's values): the ``by`` values plus
    ``mean``, ``std``, ``sem``, ``n`` and ``n_failed`` (rows of the group without a
    finite value).
    """
    import numpy as np

    groups: dict[tuple, list] = {}
    failed: collections.Counter = collections.Counter()
    for r in rows:
        if where and any(r.get(k) != v for k, v in where.items()):
            continue
        key = tuple(r.get(b) for b in by)
        v = r.get(metric)
        groups.setdefault(key, [])
        if r.get("status") == "ok" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            groups[key].append(float(v))
        else:
            failed[key] += 1

    def sort_key(k):
        return tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)) for x in k)

    out = []
    for key in sorted(groups, key=sort_key):
        vals = np.asarray(groups[key])
        n = vals.size
        std = float(vals.std(ddof=1)) if n > 1 else (0.0 if n == 1 else float("nan"))
        out.append({**dict(zip(by, key)), "mean": float(vals.mean()) if n else float("nan"), "std": std,
                    "sem": std / math.sqrt(n) if n else float("nan"), "n": int(n), "n_failed": int(failed[key])})
    return out


# ============================================================================ run


def run(sweep: str | os.PathLike | Mapping[str, Any] | SweepSpec, out_dir: str | os.PathLike, workers: int = 1,
        resume: bool = False, progress: bool = True, profile: str | None = None, overwrite: bool = False,
        overrides: Mapping[str, Any] | None = None, compile_cache: str | bool | None = None,
        scheduler: str | None = None, cluster: Mapping[str, Any] | None = None) -> SweepSummary:
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
        raise ConfigError(f"{out}: already holds {len(done_before)} finished point(s) of this sweep; "
                          "use --resume to continue it or --overwrite to recompute everything")
    _write_json(out / "sweep.json", {"spec": spec.to_dict(), "points": [
        {k: p[k] for k in ("id", "dir", "index", "overrides", "axes")} for p in points]})
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
        print(f"{len(stale)} finished point(s) ran with different resolved configurations (changed defaults?): "
              "recomputing them", file=sys.stderr)
    counts = {"total": len(points), "skipped": len(results), "ran": 0, "ok": len(results), "failed": 0}
    t_start = time.time()
    meta = {"name": spec.name, "source": spec.source, "profile": spec.profile, "out_dir": str(out),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workers": workers}

    def rows_now():
        rows = []
        for p in points:
            r = results.get(p["id"])
            if r is not None:
                rows.extend(r["rows"])
        return rows

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(points), initial=len(results), unit="point", desc=spec.name or "sweep",
                   dynamic_ncols=True, file=sys.stderr)
        bar.set_postfix(done=counts["ok"], failed=0, left=len(todo))

    def on_result(res):
        results[res["id"]] = res
        counts["ran"] += 1
        counts["ok" if res["status"] == "ok" else "failed"] += 1
        write_summary(out, rows_now(), {**meta, "counts": counts})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(done=counts["ok"], failed=counts["failed"], left=counts["total"] - counts["ok"] - counts["failed"])
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
                _run_dask(todo, out, min(workers, len(todo)), lambda p: resume and p["id"] not in stale, on_result, cache,
                          scheduler=scheduler, cluster_spec=cluster_spec)
    finally:
        if bar is not None:
            bar.close()
    rows = rows_now()
    paths = write_summary(out, rows, {**meta, "counts": counts, "wall_s": time.time() - t_start})
    summary = SweepSummary(rows)
    summary.out_dir, summary.counts, summary.points, summary.paths = out, counts, points, paths
    return summary


# ============================================================================ command line


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``diffxas sweep`` arguments to ``p`` (used by diffxas.cli and ``python -m diffxas.sweep``)."""
    p.add_argument("spec", metavar="SWEEP.toml", help="sweep file: [base], [axes], [[points]], [profiles.*]")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (one sub-folder per point)")
    p.add_argument("-j", "--workers", type=int, default=1, metavar="N",
                   help="worker processes of a local Dask cluster, one point each (default 1: run in this "
                        "process); with several GPUs visible, workers are assigned to them round-robin")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the points on the workers of a running Dask scheduler (e.g. tcp://host:8786); "
                        "see docs/distributed.md")
    p.add_argument("--resume", action="store_true", help="skip finished points (done.json), finish the others")
    p.add_argument("--overwrite", action="store_true", help="recompute every point even if the folder holds results")
    p.add_argument("--profile", metavar="NAME", help="apply [profiles.NAME] of the sweep file (e.g. quick)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base key, e.g. --set joint.steps=50 (repeatable)")
    p.add_argument("--compile-cache", nargs="?", const=True, default=None, metavar="DIR",
                   help="share a persistent XLA compilation cache between points/workers "
                        "(default folder OUT/.jax_cache)")
    p.add_argument("--dry-run", action="store_true", help="list the points and their folders, run nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    from .config import parse_value

    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"bad --set {item!r}: expected KEY=VALUE (e.g. joint.steps=50)")
        k, _, v = item.partition("=")
        out[_norm_key(k.strip(), "--set")] = parse_value(v)
    return out


def check_points(points: Sequence[Mapping[str, Any]], where: str, values: bool = False) -> None:
    """Build every point's configuration (:func:`build_point`) and raise the first
    unknown-key error (with ``values``: any configuration error) as one ConfigError line
    naming the sweep file and the point's folder."""
    for p in points:
        try:
            build_point(p["config"])
        except ConfigError as e:
            if values or "unknown key" in str(e):
                raise ConfigError(f"{where}: point {p['dir']}: {_one_line(e)}") from None


def main_cli(args: argparse.Namespace) -> int:
    """The ``diffxas sweep`` command: 0 if every point succeeded, 1 if some failed.

    Configuration errors raise :class:`ConfigError` (the CLI prints one line, exit 2).
    """
    overrides = _parse_set(getattr(args, "overrides", None) or [])
    workers = getattr(args, "workers", 1)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"-o {args.out}: exists and is not a folder (the sweep writes one sub-folder per point)")
    spec = load_spec(args.spec, profile=getattr(args, "profile", None))
    if overrides:
        spec.base = _apply(spec.base, overrides)
    # key typos (in [base], an axis, a point or --set) fail every point: refuse them before
    # anything runs (a bad value stays that point's failure, recorded; the others run)
    check_points(expand_points(spec), spec.source or str(args.spec))
    if getattr(args, "dry_run", False):
        pts = expand_points(spec)
        out = Path(args.out)
        for p in pts:
            state = "done" if (out / p["dir"] / DONE).exists() else "todo"
            print(f"{p['dir']}  [{state}]  {', '.join(f'{k}={_fmt_value(v)}' for k, v in p['axes'].items())}")
        print(f"{len(pts)} point(s)")
        return 0
    s = run(args.spec, args.out, workers=args.workers, resume=args.resume, progress=not getattr(args, "quiet", False),
            profile=getattr(args, "profile", None), overwrite=getattr(args, "overwrite", False),
            overrides=overrides, compile_cache=getattr(args, "compile_cache", None),
            scheduler=getattr(args, "scheduler", None))
    c = s.counts
    print(f"{c['total']} point(s): {c['ok']} ok ({c['skipped']} skipped as done), {c['failed']} failed; "
          f"summary: {s.paths['csv']}")
    for r in s.failed():
        print(f"  failed: {r['dir']} [{r['method']}]: {r['error']}")
    return 0 if c["failed"] == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diffxas.sweep`` (same arguments as ``diffxas sweep``)."""
    p = add_arguments(argparse.ArgumentParser(prog="python -m diffxas.sweep", description=__doc__.split("\n\n")[0]))
    args = p.parse_args(argv)
    try:
        return main_cli(args)
    except DiffxasError as e:
        sys.stderr.write(f"diffxas sweep: error: {_one_line(e)}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
