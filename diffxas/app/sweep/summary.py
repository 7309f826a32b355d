"""Metrics rows and the summary table of a sweep."""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffxas.app.sweep.cache import _write_json
from diffxas.app.sweep.spec import CONFIG, _fmt_value, _one_line, build_point
from diffxas.errors import ConfigError

__all__ = ["SweepSummary", "group_stats", "read_summary"]


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
        from diffxas.analysis.evaluate import jsonable  # scipy, h5py: `diffxas --help` imports this module

        now = json.loads(json.dumps(jsonable(build_point(point["config"]).record()), allow_nan=False, default=str))
    except Exception:  # noqa: BLE001 - unreadable or unbuildable: do not trust it
        return False
    return stored == now or _same_regrouped(stored, now)


def _same_regrouped(stored: Any, now: Mapping[str, Any]) -> bool:
    """Whether ``stored`` equals ``now`` once a section recorded flat before its config class
    had option groups (the joint's, ``[joint]``) is read through the flat aliases."""
    if not isinstance(stored, Mapping) or set(stored) != set(now):
        return False
    from diffxas.analysis.evaluate import jsonable  # scipy, h5py: `diffxas --help` imports this module
    from diffxas.app.config import build_config, config_to_dict, section_class  # ~5-15 ms: as above

    fixed = dict(stored)
    for name, value in stored.items():
        if value == now[name] or not isinstance(value, Mapping):
            continue
        try:
            cls = section_class(name)
            if not hasattr(cls, "nest_options"):
                return False
            built = config_to_dict(build_config(cls, value, section=name))
            fixed[name] = json.loads(json.dumps(jsonable(built), allow_nan=False, default=str))
        except Exception:  # noqa: BLE001 - not a config section, or not buildable: different
            return False
    return fixed == now


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


def group_stats(
    rows: Sequence[Mapping[str, Any]], by: Sequence[str], metric: str, where: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Mean, standard deviation (ddof 1; 0 for one value), standard error and count of
    ``metric`` over the ok rows grouped by the columns ``by`` (e.g. over seeds).

    Returns one dict per group (sorted by the group's values): the ``by`` values plus
    ``mean``, ``std``, ``sem``, ``n`` and ``n_failed`` (rows of the group without a
    finite value).
    """
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
        out.append(
            {
                **dict(zip(by, key)),
                "mean": float(vals.mean()) if n else float("nan"),
                "std": std,
                "sem": std / math.sqrt(n) if n else float("nan"),
                "n": int(n),
                "n_failed": int(failed[key]),
            }
        )
    return out
