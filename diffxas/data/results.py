"""Result files: writer, reader, clusters and their summary."""

from __future__ import annotations

import datetime
import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from diffxas import __version__
from diffxas.data.files import (
    _atomic_h5,
    _attr_value,
    _dataset,
    _err,
    _get_attrs,
    _group,
    _human_size,
    _open_h5,
    _read,
    _set_attr,
    _si,
    check_free_space,
    dumps_json,
)
from diffxas.errors import DiffxasError, DiskFullError
from diffxas.maps import MAP_FIELDS, ChemMaps, Result
from diffxas.physics.background import summary as background_summary

__all__ = ["read_result", "summarize_result", "write_clusters", "write_result"]


#: ``format`` root attribute of the files diffxas writes besides CXI.
RESULT_FORMAT = "diffxas-result"


_OBJ_COMPRESSION = {"compression": "gzip", "compression_opts": 4}


def _write_clusters_group(f: h5py.File, clusters: Mapping[str, Any], shape: tuple[int, int]) -> None:
    g = f.create_group("clusters")
    for key, value in clusters.items():
        key = str(key)
        if key == "labels":
            labels = np.asarray(value)
            if labels.shape != tuple(shape):
                raise ValueError(f"clusters labels have shape {labels.shape}, expected the map shape {shape}")
            g.create_dataset("labels", data=labels.astype(np.int16))
        elif key == "confidence":
            conf = np.asarray(value, dtype=np.float64)
            if conf.shape != tuple(shape):
                raise ValueError(f"clusters confidence has shape {conf.shape}, expected the map shape {shape}")
            d = g.create_dataset("confidence", data=conf)
            d.attrs["units"] = "1"
            d.attrs["description"] = (
                "probability that the pixel belongs to its cluster given its std maps; NaN = not clustered"
            )
        elif (
            key in ("centers", "fractions")
            or isinstance(value, np.ndarray)
            or (hasattr(value, "__array__") and hasattr(value, "shape") and np.ndim(value) > 0)
        ):
            g.create_dataset(key, data=np.asarray(value))
        else:
            _set_attr(g, key, value)


def _read_clusters_group(path, g: h5py.Group, shape) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, obj in g.items():
        if isinstance(obj, h5py.Dataset):
            out[key] = _read(path, obj)
    for key in ("labels", "confidence"):
        if key in out and out[key].shape != tuple(shape):
            raise _err(path, f"/clusters/{key}", f"shape {out[key].shape} differs from the map shape {tuple(shape)}")
    out.update(_get_attrs(g))
    return out


def result_bytes(result: Result) -> int:
    """Upper estimate of a results file's size (bytes, uncompressed arrays + 1 MiB)."""
    n = 1 << 20
    for a in (result.absorption, result.phase, result.probes, result.background):
        if a is not None:
            n += int(np.size(a)) * (8 if np.iscomplexobj(a) else 4)
    n += (len(MAP_FIELDS) + 1 + len(result.maps.std or {})) * 8 * int(np.prod(result.maps.shape))
    return n


def write_result_or_keep(path, result: Result) -> Path:
    """:func:`write_result`; on a full disk write it to a new temporary folder instead
    and raise one :class:`~diffxas.errors.DiskFullError` line naming both files (the
    finished reconstruction is not lost)."""
    try:
        return write_result(path, result)
    except DiskFullError as e:
        first = str(e)
        try:
            alt = Path(tempfile.mkdtemp(prefix="diffxas-")) / Path(path).name
            write_result(alt, result)
        except (OSError, DiffxasError) as e2:
            raise DiskFullError(f"{first}; could not keep the result elsewhere either ({e2})") from None
        raise DiskFullError(f"{first}; the result was saved to {alt} instead (move it where there is room)") from None


def write_result(path, result: Result) -> Path:
    """Write a reconstruction's :class:`Result` to an HDF5 results file, atomically.

    Parent directories are created. Float maps are written NaN where not valid. The
    configuration is stored as JSON (numpy-safe; a non-serialisable value raises
    TypeError and nothing is written). Returns the path written.
    """
    path = Path(path)
    maps = result.maps
    shape = tuple(maps.shape)
    config_json = dumps_json(result.config if result.config is not None else {})
    energies = np.asarray(result.energies, dtype=np.float64).ravel()
    k = energies.size
    absorption = np.asarray(result.absorption, dtype=np.float32)
    phase = np.asarray(result.phase, dtype=np.float32)
    probes = np.asarray(result.probes).astype(np.complex64)
    probe_px = np.asarray(result.probe_pixel_size, dtype=np.float64).ravel()
    if absorption.shape != (k, *shape) or phase.shape != (k, *shape):
        raise ValueError(
            f"absorption/phase have shapes {absorption.shape}/{phase.shape}, "
            f"expected ({k}, {shape[0]}, {shape[1]}) (energies x map grid)"
        )
    if probes.ndim != 3 or probes.shape[0] != k or probe_px.shape != (k,):
        raise ValueError(f"probes {probes.shape} / probe_pixel_size {probe_px.shape} do not match {k} energies")
    bg = None if result.background is None else np.asarray(result.background, np.float32)
    if bg is not None and not (bg.shape == (k,) or bg.shape == (k, *probes.shape[1:])):
        raise ValueError(f"background has shape {bg.shape}, expected ({k},) or ({k}, M, M)")
    history = {str(n): np.asarray(v) for n, v in (result.history or {}).items()}
    for n, v in history.items():
        if v.ndim > 1:
            raise ValueError(f"history {n!r} must be 1-D, got shape {v.shape}")
    valid = np.asarray(maps.valid).astype(bool)
    masked = maps.masked()
    check_free_space(path, result_bytes(result), "results file")
    with _atomic_h5(path) as f:
        f.attrs["format"] = RESULT_FORMAT
        f.attrs["method"] = str(result.method)
        f.attrs["diffxas_version"] = __version__
        f.attrs["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        f.attrs["input"] = str(result.input_path or "")
        f.attrs["input_sha256"] = str(result.input_sha256 or "")
        f.attrs["config"] = config_json
        g = f.create_group("maps")
        g.attrs["pixel_size"] = float(maps.pixel_size)
        g.attrs["origin"] = np.asarray(maps.origin, dtype=np.float64).reshape(2)
        g.attrs["reference_energy"] = float(maps.reference_energy)
        g.attrs["delta_f2_v"] = float(maps.delta_f2_v)
        g.attrs["scattering_table"] = str(maps.scattering_table)
        g.attrs["absorber"] = str(maps.absorber)
        for name, (unit, desc) in MAP_FIELDS.items():
            d = g.create_dataset(name, data=np.asarray(getattr(masked, name), dtype=np.float64))
            d.attrs["units"] = unit
            d.attrs["description"] = desc
        d = g.create_dataset("valid", data=valid.astype(np.uint8))
        d.attrs["units"] = "1"
        d.attrs["description"] = "1 where the maps are valid"
        for name, arr in (maps.std or {}).items():
            arr = np.asarray(arr, dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"std map {name!r} has shape {arr.shape}, expected {shape}")
            d = g.create_dataset(f"{name}_std", data=np.where(valid, arr, np.nan))
            d.attrs["units"] = MAP_FIELDS.get(name, ("", ""))[0]
            d.attrs["description"] = f"standard error of {name}"
        if maps.extra:
            gx = g.create_group("extra")
            for name, arr in maps.extra.items():
                gx.create_dataset(str(name), data=np.asarray(arr))
        o = f.create_group("object")
        chunks = (1, *shape) if k and min(shape) > 0 else None
        d = o.create_dataset("absorption", data=absorption, chunks=chunks, **(_OBJ_COMPRESSION if chunks else {}))
        d.attrs["units"] = "1"
        d.attrs["description"] = "-ln|O| on the map grid"
        d = o.create_dataset("phase", data=phase, chunks=chunks, **(_OBJ_COMPRESSION if chunks else {}))
        d.attrs["units"] = "rad"
        d = o.create_dataset("energies", data=energies)
        d.attrs["units"] = "eV"
        p = f.create_group("probe")
        d = p.create_dataset("illumination", data=probes)
        d.attrs["units"] = "sqrt(photons) per object pixel"
        d = p.create_dataset("pixel_size", data=probe_px)
        d.attrs["units"] = "m"
        h = f.create_group("history")
        for n, v in history.items():
            h.create_dataset(n, data=np.atleast_1d(v))
        if result.clusters is not None:
            _write_clusters_group(f, result.clusters, shape)
        if bg is not None:
            d = f.create_group("detector").create_dataset("background", data=bg)
            d.attrs["units"] = "photons per detector pixel per frame"
            d.attrs["description"] = (
                "incoherent background the reconstruction fitted: (K,) one level per energy, "
                "or (K, M, M) per detector pixel, zero frequency at (M/2, M/2)"
            )
    return path


#: The methods whose results diffxas writes (and reads): the built-in ones here; a method added
#: through :func:`diffxas.solvers.registry.register` is added by it (data/ cannot import the
#: registry, which sits above it), so a results file of an unknown method is still refused.
RESULT_METHODS: set[str] = {"two-step", "joint"}


def known_result_method(name: str) -> None:
    """Let results files of method ``name`` be read (called by the method registry)."""
    RESULT_METHODS.add(str(name))


def _check_result_file(path, f: h5py.File) -> None:
    fmt = f.attrs.get("format")
    if fmt is not None and _attr_value(fmt) not in (RESULT_FORMAT,):
        raise _err(path, None, f"not a diffxas results file (format {_attr_value(fmt)!r})")
    if "maps" not in f or "method" not in f.attrs:
        raise _err(path, None, "not a diffxas results file (no /maps group or 'method' attribute)")
    method = str(_attr_value(f.attrs["method"]))
    if method not in RESULT_METHODS:
        raise _err(
            path,
            None,
            f"unknown method {method!r} in the results file; diffxas writes {', '.join(sorted(RESULT_METHODS))}",
        )


def _map_attr(path, g: h5py.Group, name: str):
    if name not in g.attrs:
        raise _err(path, g.name, f"missing attribute {name!r}")
    return _attr_value(g.attrs[name])


def read_result(path) -> Result:
    """Read a results file written by :func:`write_result` (validated; one-line InputError)."""
    path = Path(path)
    with _open_h5(path) as f:
        _check_result_file(path, f)
        g = _group(path, f, "maps")
        valid_ds = _dataset(path, g, "valid")
        valid = _read(path, valid_ds)
        if valid.ndim != 2:
            raise _err(path, valid_ds.name, f"must be 2-D (H, W), got shape {valid.shape}")
        shape = valid.shape
        fields = {}
        for name in MAP_FIELDS:
            ds = _dataset(path, g, name)
            if ds.shape != shape:
                raise _err(path, ds.name, f"shape {ds.shape} differs from /maps/valid {shape}")
            fields[name] = _read(path, ds, dtype=np.float64)
        std, extra = {}, {}
        for name, obj in g.items():
            if isinstance(obj, h5py.Dataset) and name.endswith("_std"):
                if obj.shape != shape:
                    raise _err(path, obj.name, f"shape {obj.shape} differs from /maps/valid {shape}")
                std[name[: -len("_std")]] = _read(path, obj, dtype=np.float64)
        if "extra" in g:
            for name, obj in _group(path, g, "extra").items():
                if isinstance(obj, h5py.Dataset):
                    extra[name] = _read(path, obj)
        origin = np.asarray(_map_attr(path, g, "origin"), dtype=np.float64).ravel()
        if origin.shape != (2,):
            raise _err(path, g.name, f"attribute 'origin' must be [x, y], got {origin.tolist()}")
        pixel_size = float(_map_attr(path, g, "pixel_size"))
        if not (pixel_size > 0 and math.isfinite(pixel_size)):
            raise _err(path, g.name, f"attribute 'pixel_size' must be positive, got {pixel_size}")
        maps = ChemMaps(
            **fields,
            valid=valid.astype(bool),
            pixel_size=pixel_size,
            origin=(float(origin[0]), float(origin[1])),
            reference_energy=float(_map_attr(path, g, "reference_energy")),
            delta_f2_v=float(_map_attr(path, g, "delta_f2_v")),
            scattering_table=str(_map_attr(path, g, "scattering_table")),
            # files before the attribute existed are all V K-edge results
            absorber=str(_attr_value(g.attrs["absorber"])) if "absorber" in g.attrs else "V",
            std=std,
            extra=extra,
        )
        o = _group(path, f, "object")
        en_ds = _dataset(path, o, "energies")
        energies = _read(path, en_ds, dtype=np.float64)
        if energies.ndim != 1:
            raise _err(path, en_ds.name, f"must be 1-D, got shape {energies.shape}")
        k = energies.size
        obj_arrays = {}
        for name in ("absorption", "phase"):
            ds = _dataset(path, o, name)
            if ds.shape != (k, *shape):
                raise _err(path, ds.name, f"must have shape ({k}, {shape[0]}, {shape[1]}), got {ds.shape}")
            obj_arrays[name] = _read(path, ds)
        p = _group(path, f, "probe")
        il_ds = _dataset(path, p, "illumination")
        if il_ds.ndim != 3 or il_ds.shape[0] != k or il_ds.shape[1] != il_ds.shape[2]:
            raise _err(path, il_ds.name, f"must have shape ({k}, M, M), got {il_ds.shape}")
        probes = _read(path, il_ds).astype(np.complex64)
        px_ds = _dataset(path, p, "pixel_size")
        if px_ds.shape != (k,):
            raise _err(path, px_ds.name, f"must have shape ({k},), got {px_ds.shape}")
        probe_px = _read(path, px_ds, dtype=np.float64)
        history = {}
        if "history" in f:
            for name, obj in _group(path, f, "history").items():
                if isinstance(obj, h5py.Dataset):
                    history[name] = _read(path, obj)
        clusters = _read_clusters_group(path, _group(path, f, "clusters"), shape) if "clusters" in f else None
        background = None
        if "detector" in f and "background" in _group(path, f, "detector"):
            bg_ds = _dataset(path, _group(path, f, "detector"), "background")
            if bg_ds.shape not in ((k,), (k, *il_ds.shape[1:])):
                raise _err(path, bg_ds.name, f"must have shape ({k},) or ({k}, M, M), got {bg_ds.shape}")
            background = _read(path, bg_ds, dtype=np.float32)
        try:
            config = json.loads(_attr_value(f.attrs.get("config", "{}")))
        except (json.JSONDecodeError, TypeError) as e:
            raise _err(path, "/ (attribute config)", f"is not valid JSON: {e}") from None
        return Result(
            method=str(_attr_value(f.attrs["method"])),
            maps=maps,
            energies=energies,
            absorption=obj_arrays["absorption"],
            phase=obj_arrays["phase"],
            probes=probes,
            probe_pixel_size=probe_px,
            history=history,
            config=config,
            input_path=str(_attr_value(f.attrs.get("input", ""))),
            input_sha256=str(_attr_value(f.attrs.get("input_sha256", ""))),
            clusters=clusters,
            background=background,
        )


def write_clusters(path, clusters: Mapping[str, Any]) -> Path:
    """Add (or replace) the ``/clusters`` group of an existing results file, atomically.

    ``clusters`` is a flat mapping: ``labels`` (H, W) (stored int16, -1 = not clustered),
    ``centers``, ``fractions`` and any other arrays become datasets; scalars, strings and
    lists of strings (e.g. ``k``, ``features``) become attributes, anything else JSON
    attributes. The rest of the file is copied unchanged.
    """
    path = Path(path)
    with _open_h5(path) as src:
        _check_result_file(path, src)
        shape = _dataset(path, src, "maps/valid").shape
    with h5py.File(path, "r") as src:
        with _atomic_h5(path) as dst:
            for name, value in src.attrs.items():
                dst.attrs[name] = value
            for name in src.keys():
                if name != "clusters":
                    src.copy(src[name], dst, name=name)
            _write_clusters_group(dst, clusters, shape)
    return path


def _stats(a: np.ndarray) -> str:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return "no finite values"
    q = np.percentile(a, [5, 50, 95])
    return f"median {q[1]:.5g} (5-95 %: {q[0]:.5g} .. {q[2]:.5g})"


def summarize_result(path) -> str:
    """A human-readable multi-line summary of a results file (for ``diffxas info``)."""
    path = Path(path)
    r = read_result(path)
    with _open_h5(path) as f:
        created = str(_attr_value(f.attrs.get("created", "?")))
        version = str(_attr_value(f.attrs.get("diffxas_version", "?")))
    m = r.maps
    h, w = m.shape
    valid = np.asarray(m.valid, bool)
    lines = [
        f"{path}: diffxas results file ({_human_size(path.stat().st_size)})",
        f"  method:            {r.method} (diffxas {version}, created {created})",
        f"  input:             {r.input_path or '?'}"
        + (f" (sha256 {r.input_sha256[:16]}...)" if r.input_sha256 else ""),
    ]
    sel = (r.config or {}).get("input_selection") or {}
    part = []
    if sel.get("energy_indices") is not None:
        part.append(
            f"{len(sel['energy_indices'])} of its {sel.get('n_energies_in_file', '?')} energies "
            f"(indices {', '.join(str(i) for i in sel['energy_indices'])})"
        )
    if sel.get("half"):
        part.append(f"the {sel['half']} half of the frames")
    if part:
        lines.append(f"  input part:        {'; '.join(part)}")
    lines += [
        f"  map grid:          {h} x {w} pixels of {_si(m.pixel_size, 'm')}, origin "
        f"({_si(m.origin[0], 'm')}, {_si(m.origin[1], 'm')}); {100 * valid.mean():.3g} % valid",
        f"  energies:          {r.energies.size}"
        + (f", {r.energies.min():.2f} .. {r.energies.max():.2f} eV" if r.energies.size else "")
        + f"; {m.absorber} K edge; reference {m.reference_energy:.2f} eV; table {m.scattering_table}",
    ]
    for name, (unit, _) in MAP_FIELDS.items():
        lines.append(f"  {name + ':':18s} {_stats(getattr(m, name)[valid])} {unit}")
    if m.std:
        lines.append(f"  std maps:          {', '.join(sorted(m.std))}")
    if m.extra:
        lines.append(f"  extra maps:        {', '.join(sorted(m.extra))}")
    if r.probes.size:
        lines.append(
            f"  probe:             {r.probes.shape[0]} x {r.probes.shape[1]} x {r.probes.shape[2]}, "
            f"mean sum |P|^2 = {np.mean(np.sum(np.abs(r.probes) ** 2, axis=(1, 2))):.4g} photons"
        )
    if r.background is not None:
        bs = background_summary(r.background)
        lines.append(
            f"  background:        {bs['mode']}, {np.mean(bs['mean_per_energy']):.4g} photons per detector pixel "
            f"per frame ({bs['min']:.4g}-{bs['max']:.4g} over the energies)"
        )
    for name, v in r.history.items():
        v = np.asarray(v)
        last = f", last {float(v[-1]):.5g}" if v.size and v.dtype.kind in "iuf" else ""
        lines.append(f"  history {name}: {v.size} values{last}")
    if r.clusters is not None:
        c = r.clusters
        desc = [f"k = {c['k']}"] if "k" in c else []
        if "features" in c:
            desc.append(f"features {', '.join(map(str, c['features']))}")
        if "fractions" in c:
            desc.append("fractions " + ", ".join(f"{x:.3f}" for x in np.asarray(c["fractions"], float).ravel()))
        if "confidence_mean" in c:
            desc.append(f"mean assignment confidence {float(c['confidence_mean']):.3f}")
        lines.append(f"  clusters:          {'; '.join(desc) or 'present'}")
    for w in (r.config or {}).get("warnings") or []:  # the solver's plausibility checks
        lines.append(f"  WARNING:           {w}")
    return "\n".join(lines)
