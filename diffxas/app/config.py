"""TOML configuration files, dotted overrides and typed construction of config objects.

A configuration file has up to four sections, one per stage of the pipeline::

    [simulate]          # diffxas.simulate.presets.SimConfig, through preset(name, **overrides)
    preset = "small"
    seed = 1

    [twostep]           # diffxas.solvers.twostep.run.TwoStepConfig (nested tables for nested configs)
    [twostep.epie]
    epochs = 200

    [joint]             # diffxas.solvers.joint.config.JointConfig (option groups as tables;
    [joint.optim]       # the earlier flat keys, ``[joint] steps = 500``, are aliases)
    steps = 500

    [cluster]           # diffxas.analysis.clustering.ClusterConfig
    k = "auto"

Every key is a field of the section's (frozen) config class; keys left out keep the
class default (for ``[simulate]``: the preset's value). TOML has no null: write the string
``"none"`` for an optional field that should be None. Lists become tuples.

:func:`build_config` constructs (possibly nested) frozen dataclasses or equinox Modules
from such a mapping, checking every key and the type of every value against the class's
annotations; any problem raises a one-line :class:`~diffxas.errors.ConfigError` naming
the section and key (unknown keys list the valid ones). :func:`apply_overrides` applies
dotted overrides (``{"joint.steps": 50}``; the CLI's ``--set joint.steps=50``, parsed by
:func:`parse_overrides`); :func:`config_to_dict` turns a config object back into plain
JSON/TOML types for recording, :func:`dumps_toml` writes a mapping as TOML.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffxas.errors import ConfigError

__all__ = [
    "SECTIONS",
    "load_config",
    "loads_config",
    "section_class",
    "build_config",
    "build_section",
    "sim_config",
    "validate_config",
    "config_to_dict",
    "apply_overrides",
    "option_setter",
    "parse_value",
    "parse_overrides",
    "dumps_toml",
]

#: The sections of a configuration file, in pipeline order.
SECTIONS = ("simulate", "twostep", "joint", "cluster")

#: Class of each section as (module, class name); imported lazily (``twostep`` may be absent).
_SECTION_CLASSES = {
    "simulate": ("diffxas.simulate", "SimConfig"),
    "twostep": ("diffxas.solvers.twostep.run", "TwoStepConfig"),
    "joint": ("diffxas.solvers.joint", "JointConfig"),
    "cluster": ("diffxas.analysis.clustering", "ClusterConfig"),
}

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NONE_WORDS = ("none", "null")


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


# ----------------------------------------------------------------------------- files


def loads_config(text: str, source: str = "<string>") -> dict[str, Any]:
    """Parse TOML text into a configuration mapping (sections checked, values not)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {_one_line(e)}") from None
    _check_sections(data, source)
    return data


def load_config(path) -> dict[str, Any]:
    """Read a TOML configuration file into a plain dict ``{section: {key: value}}``.

    Only the sections in :data:`SECTIONS` are allowed, and each must be a table; values
    are checked later, when the section is built (:func:`build_section`,
    :func:`validate_config`). Raises a one-line ConfigError naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such configuration file")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a TOML configuration file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text (UTF-8 TOML) file") from None
    return loads_config(text, str(p))


def _check_sections(data: Mapping[str, Any], source: str) -> None:
    for name, value in data.items():
        if name not in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: key {name!r} must be inside a section ([{'], ['.join(SECTIONS)}])")
            raise ConfigError(f"{source}: unknown section [{name}]; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: [{name}] must be a table of key = value pairs, got {value!r}")


def section_class(name: str) -> type:
    """The config class of section ``name`` (ConfigError if unknown or not installed).

    A section that is not one of the built-in ones may be a registered method's
    (:func:`diffxas.solvers.registry.by_section`): a method added to the registry gets its
    section without an edit here."""
    if name not in _SECTION_CLASSES:
        from diffxas.solvers import registry  # h5py, the solvers (jax): only for a non-built-in section

        method = registry.by_section(name)
        if method is not None:
            return method.config
        raise ConfigError(f"unknown section [{name}]; valid sections: {', '.join(SECTIONS)}")
    mod_name, cls_name = _SECTION_CLASSES[name]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise ConfigError(f"[{name}]: {mod_name} is not available in this installation") from None
        raise
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise ConfigError(f"[{name}]: {mod_name} has no {cls_name}")
    return cls


# ----------------------------------------------------------------------------- typed construction


def _is_config_class(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations (e.g. forward references): infer from defaults
        return {}


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _describe(value) -> str:
    s = repr(value)
    if len(s) > 60:
        s = s[:57] + "..."
    return f"{s} ({type(value).__name__})"


class _Mismatch(Exception):
    """A value does not fit a type; the message says what was expected."""


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return '"none"'
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple or tp is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return "a list"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if _is_config_class(tp):
        return f"a table ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp, where: str):
    """Convert ``value`` to type ``tp`` (raise _Mismatch); nested configs via build_config."""
    if tp is Any or tp is object or tp is None:
        return _plain(value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except _Mismatch:
                continue
        raise _Mismatch(_type_name(tp))
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        raise _Mismatch('"none"')
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch(_type_name(tp))
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch("an integer")
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise _Mismatch("an integer")
    if tp is float:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch("a number")
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        raise _Mismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch("a string")
    if origin is tuple or tp is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(_type_name(tp))
        if not args:
            return tuple(_plain(v) for v in value)
        if len(args) == 2 and args[1] is Ellipsis:
            out = []
            for i, v in enumerate(value):
                try:
                    out.append(_convert(v, args[0], where))
                except _Mismatch as m:
                    raise _Mismatch(f"{_type_name(tp)} (item {i}: expected {m}, got {_describe(v)})") from None
            return tuple(out)
        if len(value) != len(args):
            raise _Mismatch(f"a list of {len(args)} values")
        return tuple(_convert(v, a, where) for v, a in zip(value, args))
    if origin in (list, list) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch("a list")
        args = typing.get_args(tp)
        return [(_convert(v, args[0], where) if args else _plain(v)) for v in value]
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch("a table")
        return dict(value)
    if _is_config_class(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch(_type_name(tp))
        return build_config(tp, value, section=where)
    # anything else (numpy arrays, custom classes): pass through
    return _plain(value)


def _plain(value):
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def _infer_type(default):
    """A type for a field without a usable annotation, from its default value."""
    if default is dataclasses.MISSING or default is None:
        return Any
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return type(default)
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, tuple):
        return tuple
    return Any


def build_config(cls, mapping: Mapping[str, Any] | None, section: str | None = None, base=None):
    """Construct the (frozen) dataclass or equinox Module ``cls`` from ``mapping``.

    Args:
        cls: a dataclass (or ``eqx.Module``) type; nested config fields are built from
            nested mappings (TOML sub-tables).
        mapping: ``{field: value}``; fields left out keep ``base``'s value (if given) or
            the class default. Lists become tuples, ``"none"`` becomes None for optional
            fields, integral floats are accepted for ints and ints for floats.
        section: name used in error messages (``"joint"``, ``"twostep.epie"``; default
            the class name).
        base: an instance of ``cls`` to start from (e.g. a preset).

    Raises:
        ConfigError: one line ``[section] ...`` for an unknown key (listing the valid
            keys), a value of the wrong type, or a value the class itself rejects.
    """
    if not _is_config_class(cls):
        raise TypeError(f"build_config needs a dataclass type, got {cls!r}")
    section = section or cls.__name__
    mapping = dict(mapping or {})
    nest = getattr(cls, "nest_options", None)  # a config of option groups with flat aliases (JointConfig)
    if nest is not None:
        mapping = nest(mapping, section)
    fields = _fields(cls)
    names = [f.name for f in fields]
    for key in mapping:
        if not isinstance(key, str) or key not in names:
            aliases = list(getattr(cls, "flat_aliases", ()))
            also = f" (or a flat alias: {', '.join(aliases)})" if aliases else ""
            raise ConfigError(f"[{section}] unknown key {key!r}; valid keys: {', '.join(names)}{also}")
    hints = _type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        if f.name in mapping:
            value = mapping[f.name]
            default = getattr(base, f.name) if base is not None else _field_default(f)
            tp = hints.get(f.name)
            if tp is None or isinstance(tp, str):
                tp = _infer_type(default)
            sub = f"{section}.{f.name}"
            if _is_config_class(tp) and isinstance(value, Mapping):
                nested_base = default if isinstance(default, tp) else None
                kwargs[f.name] = build_config(tp, value, section=sub, base=nested_base)
                continue
            try:
                kwargs[f.name] = _convert(value, tp, sub)
            except _Mismatch as m:
                raise ConfigError(f"[{section}] {f.name}: expected {m}, got {_describe(value)}") from None
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = _one_line(e)
        raise ConfigError(msg if msg.startswith("[") else f"[{section}] {msg}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{section}] {_one_line(e)}") from None


def sim_config(mapping: Mapping[str, Any] | None = None, **defaults):
    """A :class:`~diffxas.simulate.presets.SimConfig` from a ``[simulate]`` mapping.

    ``preset`` (default ``defaults.get("preset", "small")``) picks the preset, every other
    key overrides a preset value (checked like :func:`build_config`). ``defaults`` are
    applied before the mapping (e.g. the CLI's ``--seed``).
    """
    from diffxas.simulate.presets import SimConfig, preset  # jax: config files load without the simulator

    m = dict(defaults)
    m.update(mapping or {})
    name = m.pop("preset", None) or "small"
    if not isinstance(name, str):
        raise ConfigError(f"[simulate] preset: expected a string, got {_describe(name)}")
    # another absorber without explicit energies moves the preset's energies to its edge
    el, tab = m.get("element"), m.get("table")
    shift_to = el if isinstance(el, str) and m.get("energies") is None else None
    # a family preset draws its experimental conditions from the seed (diffxas.simulate.family)
    seed = m.get("seed") if isinstance(m.get("seed"), int) and not isinstance(m.get("seed"), bool) else None
    base = preset(name, element=shift_to, table=tab if isinstance(tab, str) and shift_to else None, seed=seed)
    return build_config(SimConfig, m, section="simulate", base=base)


def build_section(config: Mapping[str, Any] | None, name: str, **defaults):
    """Build the config object of section ``name`` from a whole configuration mapping.

    ``defaults`` are keys applied under the file's values (file values win), for
    example values chosen by the caller; use :func:`apply_overrides` for values that
    must win over the file.
    """
    config = config or {}
    mapping = dict(defaults)
    sect = config.get(name) or {}
    if not isinstance(sect, Mapping):
        raise ConfigError(f"[{name}] must be a table of key = value pairs, got {sect!r}")
    mapping.update(sect)
    if name == "simulate":
        return sim_config(mapping)
    return build_config(section_class(name), mapping, section=name)


def validate_config(config: Mapping[str, Any], skip_unavailable: bool = True) -> None:
    """Build every section present in ``config`` once (to report errors early).

    Sections whose module is not installed (``twostep`` while it is being written) are
    skipped when ``skip_unavailable``.
    """
    _check_sections(config, "configuration")
    for name in SECTIONS:
        if name not in config:
            continue
        try:
            section_class(name)
        except ConfigError:
            if skip_unavailable:
                continue
            raise
        build_section(config, name)


# ----------------------------------------------------------------------------- recording


def config_to_dict(obj) -> Any:
    """A config object (dataclass / eqx Module, possibly nested) as plain JSON/TOML types.

    Tuples become lists, numpy scalars Python numbers, paths strings; mappings and lists
    are converted recursively. Other values are returned unchanged.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


# ----------------------------------------------------------------------------- overrides


def _split_key(key: str) -> list[str]:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"bad override key {key!r}: expected section.key (e.g. joint.steps)")
    parts = key.split(".")
    for p in parts:
        if not _KEY_RE.match(p):
            raise ConfigError(f"bad override key {key!r}: expected section.key (e.g. joint.steps)")
    return parts


def option_setter(section: str):
    """The ``set_option(section_mapping, key_parts, value)`` of a section whose config class
    has option groups with flat aliases (:meth:`diffxas.solvers.joint.config.JointConfig.set_option`),
    else None (a plain dotted set). Imports the section's class."""
    if section not in _SECTION_CLASSES:
        return None
    try:
        cls = section_class(section)
    except ConfigError:
        return None
    return getattr(cls, "set_option", None)


def apply_overrides(
    mapping: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | Iterable[tuple[str, Any]],
    default_section: str | None = None,
) -> dict[str, Any]:
    """A copy of ``mapping`` with dotted overrides applied.

    ``overrides`` maps ``"section.key"`` (or ``"section.sub.key"`` for nested configs) to
    a value, e.g. ``{"joint.steps": 50, "twostep.epie.epochs": 20}``; a key without a dot
    goes to ``default_section`` (ConfigError if None). Sections must be among
    :data:`SECTIONS`; keys are checked when the section is built.
    """
    out = copy.deepcopy(dict(mapping or {}))
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for key, value in items:
        parts = _split_key(key)
        if len(parts) == 1:
            if default_section is None:
                raise ConfigError(
                    f"override {key!r} needs a section: write section.{key} (sections: {', '.join(SECTIONS)})"
                )
            parts = [default_section] + parts
        if parts[0] not in SECTIONS:
            raise ConfigError(f"override {key!r}: unknown section {parts[0]!r}; valid sections: {', '.join(SECTIONS)}")
        setter = option_setter(parts[0]) if len(parts) > 1 else None
        if setter is not None:  # option groups with flat aliases: the override wins over any spelling
            sect = out.get(parts[0])
            if sect is not None and not isinstance(sect, Mapping):
                raise ConfigError(f"override {key!r}: {parts[0]} is a value, not a table")
            sect = dict(sect or {})
            setter(sect, parts[1:], value)
            out[parts[0]] = sect
            continue
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = {}
                node[p] = nxt
            elif not isinstance(nxt, Mapping):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])} is a value, not a table")
            elif not isinstance(nxt, dict):
                nxt = dict(nxt)
                node[p] = nxt
            node = nxt
        if isinstance(node.get(parts[-1]), Mapping) and not isinstance(value, Mapping):
            raise ConfigError(f"override {key!r}: {'.'.join(parts)} is a table; set one of its keys instead")
        node[parts[-1]] = value
    return out


def parse_value(text: str) -> Any:
    """Parse a command-line value as a TOML value (``50``, ``1e-3``, ``true``,
    ``[1, 2]``, ``"text"``); anything that is not valid TOML is taken as a plain string
    (so ``--set joint.init=flat`` needs no quotes)."""
    s = text.strip()
    if not s:
        raise ConfigError("empty value")
    try:
        return tomllib.loads(f"v = {s}")["v"]
    except tomllib.TOMLDecodeError:
        return s


def parse_overrides(items: Iterable[str] | None, default_section: str | None = None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings (the CLI's ``--set``) into ``{"section.key": value}``.

    Values are parsed by :func:`parse_value`; keys that do not start with a section
    (``steps``, ``epie.epochs``) are taken relative to ``default_section``. Raises a one-line ConfigError for a malformed item.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"bad --set {item!r}: expected KEY=VALUE (e.g. joint.steps=50)")
        key, _, raw = item.partition("=")
        key = key.strip()
        parts = _split_key(key) if key else None
        if not parts:
            raise ConfigError(f"bad --set {item!r}: expected KEY=VALUE (e.g. joint.steps=50)")
        if parts[0] not in SECTIONS:
            if default_section is None:
                if len(parts) == 1:
                    raise ConfigError(f"bad --set {item!r}: the key needs a section, e.g. joint.{key}")
                raise ConfigError(
                    f"bad --set {item!r}: unknown section {parts[0]!r}; valid sections: {', '.join(SECTIONS)}"
                )
            key = f"{default_section}.{key}"  # e.g. fit.iterations -> twostep.fit.iterations
        try:
            out[key] = parse_value(raw)
        except ConfigError as e:
            raise ConfigError(f"bad --set {item!r}: {e}") from None
    return out


# ----------------------------------------------------------------------------- writing TOML


def _toml_key(k: str) -> str:
    return k if _KEY_RE.match(k) else '"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(v) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_toml_value(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)) + "]"
    if isinstance(v, os.PathLike):
        return _toml_value(os.fspath(v))
    raise ConfigError(f"cannot write a value of type {type(v).__name__} to TOML: {v!r:.60}")


def dumps_toml(mapping: Mapping[str, Any]) -> str:
    """Write a configuration mapping (sections of key/values, nested tables allowed; config
    objects are converted with :func:`config_to_dict`) as TOML text. None is written as
    ``"none"``, which :func:`build_config` reads back as None."""
    lines: list[str] = []

    def table(path: list[str], m: Mapping[str, Any]):
        m = config_to_dict(m)
        scalars = [(k, v) for k, v in m.items() if not isinstance(v, Mapping)]
        subs = [(k, v) for k, v in m.items() if isinstance(v, Mapping)]
        if path and (scalars or not subs):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars:
            lines.append(f"{_toml_key(str(k))} = {_toml_value(v)}")
        for k, v in subs:
            table(path + [str(k)], v)

    table([], config_to_dict(mapping))
    return "\n".join(lines) + "\n"
