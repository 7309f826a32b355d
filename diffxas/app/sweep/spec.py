"""Sweep specification: parsing, expansion into points, per-point configuration."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffxas.data.energies import EDGE_WINDOW as EDGE_WINDOW
from diffxas.data.energies import ENERGY_CHOICES as ENERGY_CHOICES
from diffxas.data.energies import choose_energies
from diffxas.errors import ConfigError

__all__ = ["methods", "SweepSpec", "build_point", "expand_points", "load_spec", "select_energies"]


def methods() -> tuple[str, ...]:
    """The registered reconstruction methods, in the order they run within a point (the
    registry's order; read at each use, so a method registered later is a sweep method too)."""
    from diffxas.solvers import registry  # h5py (results reader): not for `diffxas --help`

    return tuple(registry.METHODS)


#: Other spellings of method names accepted in sweep files.
_METHOD_ALIASES = {"twostep": "two-step", "two_step": "two-step"}


#: Sections of ``[base]`` built into config objects (diffxas.app.config).
CONFIG_SECTIONS = ("simulate", "twostep", "joint", "cluster")


#: All keys allowed in ``[base]``.
BASE_KEYS = CONFIG_SECTIONS + ("energies", "evaluate", "methods")


_SECTION_ALIASES = {"two-step": "twostep", "two_step": "twostep", "clustering": "cluster", "simulation": "simulate"}


_TOP_KEYS = ("sweep", "base", "axes", "points", "profiles")


DONE = "done.json"


ERROR = "error.txt"


CONFIG = "config.json"


DATA = "data.cxi"


TRUTH = "truth.h5"


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


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
        return {
            "name": self.name,
            "description": self.description,
            "combine": self.combine,
            "source": self.source,
            "profile": self.profile,
            "settings": self.settings,
            "base": self.base,
            "axes": self.axes,
            "points": self.points,
        }


def _section(method: str) -> str:
    """The config section of ``method`` (the registry's)."""
    from diffxas.solvers import registry  # jax (the solvers): `diffxas --help` imports this module

    return registry.get(method).section


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
        raise ConfigError(f"{where}: methods must be a non-empty list of {', '.join(methods())}, got {value!r}")
    known = methods()
    out = []
    for m in value:
        name = str(m).strip().lower()
        mm = _METHOD_ALIASES.get(name, name)
        if mm not in known:
            raise ConfigError(f"{where}: unknown method {m!r}; choose from {', '.join(known)}")
        if mm not in out:
            out.append(mm)
    return [m for m in known if m in out]


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
    out.setdefault("methods", list(methods()))
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
                raise ConfigError(
                    f"{where}: axis {name!r} has no section (write e.g. joint.{name}), or is a linked "
                    f"axis whose values must all be tables of dotted keys"
                )
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
        import tomllib  # ~3 ms, only for a sweep file; `diffxas --help` imports this module

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
            points = [
                _norm_override_map(p, f"{where}: [profiles.{profile}] points[{i}]") for i, p in enumerate(p_points)
            ]
    return SweepSpec(
        base=base,
        axes=axes,
        points=points,
        combine=combine,
        name=str(meta.pop("name", "") or (Path(source).stem if source else "")),
        description=str(meta.pop("description", "")),
        settings=meta,
        source=source,
        profile=profile,
    )


def _apply(mapping: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``mapping`` with dotted ``overrides`` set (``label`` is ignored). In
    ``[joint]`` a flat alias (``joint.tv_weight``) and its group path (``joint.prior.tv_weight``)
    are one option: the override replaces whichever the base used, and leaves the base's
    spelling alone otherwise (the point ids of existing sweeps stay the same)."""
    from diffxas.app.config import option_setter  # ~5-15 ms; `diffxas --help` imports this module

    out = copy.deepcopy(dict(mapping))
    for key, value in overrides.items():
        if key == "label":
            continue
        parts = key.split(".")
        setter = option_setter(parts[0]) if len(parts) > 1 and parts[0] in CONFIG_SECTIONS else None
        if setter is not None:  # [joint]: flat alias or group path, the axis wins over either spelling
            sect = out.get(parts[0])
            if sect is not None and not isinstance(sect, dict):
                raise ConfigError(f"override {key!r}: {parts[0]!r} is a value, not a table")
            out[parts[0]] = sect = sect if sect is not None else {}
            setter(sect, parts[1:], copy.deepcopy(value))
            continue
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
            raise ConfigError(
                f"combine = 'zip' needs axes of equal length, got {dict(zip(names, map(len, value_lists)))}"
            )
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
        points.append(
            {
                "id": pid,
                "dir": _folder_name(pid, shown),
                "index": len(points),
                "overrides": over,
                "axes": shown,
                "config": cfg,
            }
        )
    return points


def _edge_energy_ev(element: str = "V", table: str = "chantler") -> float:
    from diffxas.physics.scattering import table_edge_energy  # jax: `diffxas --help` imports this module

    return float(table_edge_energy(element, table))


def select_energies(
    energies: Sequence[float],
    count: int,
    choice: str = "uniform",
    window: Sequence[float] = EDGE_WINDOW,
    edge_ev: float | None = None,
) -> tuple[float, ...]:
    """``count`` of ``energies`` (sorted, eV) chosen as the ``[energies]`` section says:
    :func:`diffxas.data.energies.choose_energies` (``"uniform"``: evenly in index, first and
    last included, the rule of ``simulate --energies`` and ``reconstruct --energies`` too;
    ``"edge"``: the ends plus energies inside ``window`` around the edge), with ``edge_ev``
    by default the tabulated V K edge. Its errors are prefixed with ``[energies]``, the
    section of the sweep file they come from."""
    if choice == "edge" and edge_ev is None:
        edge_ev = _edge_energy_ev()
    try:
        return choose_energies(energies, count, choice, window, edge_ev)
    except ConfigError as exc:
        raise ConfigError(f"[energies] {exc}") from None


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
        from diffxas.app.config import config_to_dict  # ~5-15 ms; `diffxas --help` imports this module

        out = {
            "simulate": self.sim.to_dict(),
            "methods": list(self.methods),
            "energies": self.energies,
            "evaluate": self.evaluate,
            "cluster": config_to_dict(self.cluster) if self.cluster is not None else None,
        }
        for m, c in self.method_configs.items():
            out[_section(m)] = config_to_dict(c)
        return out


def build_point(mapping: Mapping[str, Any]) -> PointConfig:
    """Build every config object of a resolved point mapping (ConfigError on a bad value)."""
    from diffxas.app.config import build_section, sim_config  # ~5-15 ms; `diffxas --help` imports this module

    mapping = dict(mapping)
    methods_ = _norm_methods(mapping.get("methods", list(methods())), "methods")
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
        sel = select_energies(
            sim.energies, en["count"], str(en.get("choice", "uniform")), en.get("window", EDGE_WINDOW), edge_ev
        )
        en_rec = {
            "count": int(en["count"]),
            "choice": str(en.get("choice", "uniform")),
            "from": list(sim.energies),
            "selected": list(sel),
        }
        sim = dataclasses.replace(sim, energies=sel)
    elif en:
        raise ConfigError("[energies] needs count (choice/window only qualify it)")
    mcfg: dict[str, Any] = {}
    for m in methods_:
        section = _section(m)
        # the methods model the simulated absorber unless their section names one
        mcfg[m] = build_section(mapping, section, element=sim.element)
    cl = mapping.get("cluster")
    cluster = None if cl is False else build_section({"cluster": cl or {}}, "cluster")
    ev = dict(mapping.get("evaluate") or {})
    bad = sorted(set(ev) - {"nv_fraction"})
    if bad:
        raise ConfigError(f"[evaluate] unknown key(s) {bad}; valid: nv_fraction")
    ev.setdefault("nv_fraction", 0.25)
    return PointConfig(sim=sim, methods=methods_, method_configs=mcfg, cluster=cluster, evaluate=ev, energies=en_rec)
