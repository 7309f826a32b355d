"""Ground-truth files of simulations: writer, reader and summary."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from diffxas import __version__
from diffxas.data.files import (
    _atomic_h5,
    _attr_value,
    _dataset,
    _err,
    _group,
    _human_size,
    _open_h5,
    _read,
    _short,
    _si,
    dumps_json,
)
from diffxas.data.results import _stats
from diffxas.maps import MAP_FIELDS, Truth

__all__ = ["read_truth", "summarize_truth", "write_truth"]


TRUTH_FORMAT = "diffxas-truth"


def write_truth(path, truth: Truth) -> Path:
    """Write a simulated sample's :class:`Truth` next to its CXI file, atomically."""
    path = Path(path)
    labels = np.asarray(truth.labels)
    attrs_json = dumps_json(truth.attrs or {})
    with _atomic_h5(path) as f:
        f.attrs["format"] = TRUTH_FORMAT
        f.attrs["diffxas_version"] = __version__
        f.attrs["pixel_size"] = float(truth.pixel_size)
        f.attrs["origin"] = np.asarray(truth.origin, dtype=np.float64).reshape(2)
        f.attrs["reference_energy"] = float(truth.reference_energy)
        f.attrs["domain_names"] = [str(n) for n in truth.domain_names]
        f.attrs["attrs"] = attrs_json
        d = f.create_dataset("energies", data=np.asarray(truth.energies, dtype=np.float64).ravel())
        d.attrs["units"] = "eV"
        f.create_dataset("labels", data=labels.astype(np.int16))
        g = f.create_group("maps")
        for name, arr in truth.maps.items():
            arr = np.asarray(arr)
            if arr.shape != labels.shape:
                raise ValueError(f"truth map {name!r} has shape {arr.shape}, expected {labels.shape}")
            d = g.create_dataset(name, data=arr)
            if name in MAP_FIELDS:
                d.attrs["units"] = MAP_FIELDS[name][0]
        g = f.create_group("params")
        for name, arr in truth.params.items():
            arr = np.asarray(arr)
            if arr.shape != labels.shape:
                raise ValueError(f"truth parameter {name!r} has shape {arr.shape}, expected {labels.shape}")
            g.create_dataset(name, data=arr)
    return path


def _is_truth(f: h5py.File) -> bool:
    fmt = f.attrs.get("format")
    if fmt is not None:
        return _attr_value(fmt) == TRUTH_FORMAT
    return "labels" in f and "params" in f and "maps" in f


def read_truth(path) -> Truth:
    """Read a ground-truth sidecar written by :func:`write_truth` (validated)."""
    path = Path(path)
    with _open_h5(path) as f:
        if not _is_truth(f):
            raise _err(path, None, "not a diffxas ground-truth file (no /labels, /params and /maps)")
        lab_ds = _dataset(path, f, "labels")
        labels = _read(path, lab_ds)
        if labels.ndim != 2:
            raise _err(path, lab_ds.name, f"must be 2-D (H, W), got shape {labels.shape}")
        out: dict[str, dict[str, np.ndarray]] = {}
        for grp in ("maps", "params"):
            out[grp] = {}
            for name, obj in _group(path, f, grp).items():
                if not isinstance(obj, h5py.Dataset):
                    continue
                if obj.shape != labels.shape:
                    raise _err(path, obj.name, f"shape {obj.shape} differs from /labels {labels.shape}")
                out[grp][name] = _read(path, obj)
        for a in ("pixel_size", "origin", "reference_energy", "domain_names"):
            if a not in f.attrs:
                raise _err(path, "/", f"missing attribute {a!r}")
        origin = np.asarray(_attr_value(f.attrs["origin"]), dtype=np.float64).ravel()
        if origin.shape != (2,):
            raise _err(path, "/", f"attribute 'origin' must be [x, y], got {origin.tolist()}")
        names = _attr_value(f.attrs["domain_names"])
        names = [names] if isinstance(names, str) else [str(n) for n in names]
        try:
            attrs = json.loads(_attr_value(f.attrs.get("attrs", "{}")))
        except (json.JSONDecodeError, TypeError) as e:
            raise _err(path, "/ (attribute attrs)", f"is not valid JSON: {e}") from None
        energies = _read(path, _dataset(path, f, "energies"), dtype=np.float64).ravel()
        return Truth(
            maps=out["maps"],
            labels=labels.astype(np.int16),
            domain_names=names,
            params=out["params"],
            pixel_size=float(_attr_value(f.attrs["pixel_size"])),
            origin=(float(origin[0]), float(origin[1])),
            energies=energies,
            reference_energy=float(_attr_value(f.attrs["reference_energy"])),
            attrs=attrs,
        )


def summarize_truth(path) -> str:
    """A human-readable multi-line summary of a ground-truth sidecar."""
    path = Path(path)
    t = read_truth(path)
    h, w = t.labels.shape
    lab = np.asarray(t.labels)
    lines = [
        f"{path}: diffxas ground-truth file ({_human_size(path.stat().st_size)})",
        f"  grid:              {h} x {w} pixels of {_si(t.pixel_size, 'm')}, origin "
        f"({_si(t.origin[0], 'm')}, {_si(t.origin[1], 'm')})",
        f"  energies:          {t.energies.size}"
        + (f", {t.energies.min():.2f} .. {t.energies.max():.2f} eV" if t.energies.size else "")
        + f"; reference {t.reference_energy:.2f} eV",
        f"  particles:         {100 * (lab >= 0).mean():.3g} % of pixels",
    ]
    for i, name in enumerate(t.domain_names):
        lines.append(f"  domain {i} {name}: {100 * (lab == i).mean():.3g} % of pixels")
    for name, arr in t.maps.items():
        lines.append(f"  map {name}: {_stats(np.asarray(arr)[lab >= 0])} {MAP_FIELDS.get(name, ('', ''))[0]}")
    if t.params:
        lines.append(f"  params:            {', '.join(t.params)}")
    for k, v in t.attrs.items():
        lines.append(f"  attr {k}: {_short(v)}")
    return "\n".join(lines)
