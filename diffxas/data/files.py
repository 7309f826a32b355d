"""File helpers shared by the readers and writers: JSON, HDF5 attributes, atomic writes, hashes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from diffxas.errors import DiskFullError, InputError, is_disk_full

__all__ = ["dumps_json", "sha256_file", "to_jsonable"]


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


_READ_ERRORS = (OSError, RuntimeError, ValueError, TypeError, KeyError)


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _err(path, where: str | None, msg: str) -> InputError:
    """An InputError ``<file>: <hdf5 path>: <problem>`` on one line."""
    head = f"{path}: {where}: " if where else f"{path}: "
    return InputError(_one_line(head + msg))


def sha256_file(path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def _human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"  # pragma: no cover


def _si(value: float, unit: str) -> str:
    """Format a length in m with a convenient prefix (e.g. 12.3 nm)."""
    v = abs(value)
    for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p")):
        if v >= scale or scale == 1e-12:
            return f"{value / scale:.4g} {prefix}{unit}"
    return f"{value:g} {unit}"  # pragma: no cover


# ---- JSON (numpy-safe) ----------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` to plain JSON types: numpy/jax scalars and arrays, paths, tuples,
    sets, dataclasses and complex numbers are converted; anything else raises TypeError."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, complex):
        return [obj.real, obj.imag]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(k, np.generic):
                k = k.item()
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"cannot JSON-encode a mapping key of type {type(k).__name__}")
            out[str(k) if not isinstance(k, str) else k] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, np.ndarray) or (hasattr(obj, "__array__") and hasattr(obj, "shape") and hasattr(obj, "dtype")):
        return to_jsonable(np.asarray(obj).tolist())
    raise TypeError(f"cannot JSON-encode an object of type {type(obj).__name__}: {obj!r:.80}")


def dumps_json(obj: Any, **kw) -> str:
    """``json.dumps`` after :func:`to_jsonable` (NaN/inf are written as NaN/Infinity)."""
    return json.dumps(to_jsonable(obj), **kw)


# ---- HDF5 attributes of arbitrary values ------------------------------------------------
_JSON_ATTRS = "_json_attrs"  # names of attributes stored as JSON strings


def _set_attr(obj: h5py.HLObject, name: str, value: Any) -> None:
    """Store ``value`` as an HDF5 attribute: native when possible, else as JSON text."""
    native = False
    if isinstance(value, (str, bool, int, float, np.generic)) and not isinstance(value, complex):
        native = True
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        native = True
    if native:
        obj.attrs[name] = value
        return
    obj.attrs[name] = dumps_json(value)
    names = [str(n) for n in obj.attrs.get(_JSON_ATTRS, [])]
    if name not in names:
        obj.attrs[_JSON_ATTRS] = names + [name]


def _get_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """Read the attributes written by :func:`_set_attr` back to Python values."""
    json_names = {str(n) for n in obj.attrs.get(_JSON_ATTRS, [])}
    out: dict[str, Any] = {}
    for name, value in obj.attrs.items():
        if name == _JSON_ATTRS:
            continue
        if name in json_names:
            out[name] = json.loads(value)
        else:
            out[name] = _attr_value(value)
    return out


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.ravel()]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---- atomic writes ----------------------------------------------------------------------
def _free_bytes(folder) -> float | None:
    """Free bytes in ``folder`` (its nearest existing ancestor); None if unknown."""
    d = Path(folder)
    while not d.exists() and d.parent != d:
        d = d.parent
    try:
        return float(shutil.disk_usage(d).free)
    except OSError:
        return None


def _mb(n: float) -> str:
    return f"{n / 2**20:.3g} MB"


def disk_full_error(path, exc: BaseException | None = None, what: str = "file") -> DiskFullError:
    """The one-line error of a write that failed on a full disk (``nothing written``)."""
    free = _free_bytes(Path(path).parent)
    tail = f"; {_mb(free)} free in {Path(path).parent}" if free is not None else ""
    return DiskFullError(f"{path}: disk full while writing the {what}; nothing written{tail}")


def check_free_space(path, need_bytes: float, what: str = "file") -> None:
    """Refuse (one line, "disk full") before writing ``need_bytes`` to ``path`` when its
    folder has less free space (an estimate: what a write may need, compression ignored)."""
    free = _free_bytes(Path(path).parent)
    if free is not None and need_bytes > free:
        raise DiskFullError(
            f"{path}: disk full: the {what} needs about {_mb(need_bytes)}, only {_mb(free)} free in {Path(path).parent}"
        )


def write_text_atomic(path, text: str) -> str:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written;
    a full disk is one :class:`~diffxas.errors.DiskFullError` line naming ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "x", newline="", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(e):
            raise disk_full_error(path) from None
        raise
    return os.fspath(path)


@contextlib.contextmanager
def _atomic_h5(path) -> Iterator[h5py.File]:
    """Yield an HDF5 file open for writing at a temporary path next to ``path``; on success
    rename it to ``path`` (atomic on POSIX), on any failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with h5py.File(tmp, "x") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(e):  # one line naming the file, not HDF5's error stack
            raise disk_full_error(path) from None
        raise


# ---- reading helpers --------------------------------------------------------------------
def _has_hdf5_signature(path: Path) -> bool:
    """True if the HDF5 signature is at byte 0, 512, 1024, 2048, ... (as the spec allows)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            offset = 0
            while offset + 8 <= size:
                fh.seek(offset)
                if fh.read(8) == _HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else 2 * offset
    except OSError:
        return False
    return False


@contextlib.contextmanager
def _open_h5(path) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; one-line InputError for every way this can fail,
    including errors raised by h5py later while reading (corrupt/truncated data)."""
    p = Path(path)
    if not p.exists():
        raise _err(p, None, "no such file")
    if p.is_dir():
        raise _err(p, None, "is a directory, expected an HDF5 file")
    if not p.is_file():  # a FIFO, socket or device: reading it could block forever
        raise _err(p, None, "is not a regular file (a pipe, socket or device?), expected an HDF5 file")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        if not os.access(p, os.R_OK):
            raise _err(p, None, "permission denied") from None
        if not _has_hdf5_signature(p):
            raise _err(p, None, "not an HDF5 file") from None
        raise _err(p, None, f"cannot open HDF5 file (truncated or corrupt?): {e}") from None
    try:
        yield f
    except InputError:
        raise
    except (OSError, RuntimeError, KeyError) as e:  # what h5py raises on damaged files
        raise _err(p, None, f"cannot read file (truncated or corrupt?): {type(e).__name__}: {e}") from None
    finally:
        with contextlib.suppress(Exception):
            f.close()


def _dataset(path, f: h5py.File | h5py.Group, name: str) -> h5py.Dataset:
    """``f[name]`` as a dataset, or a one-line error naming it."""
    full = f"{f.name.rstrip('/')}/{name}" if not name.startswith("/") else name
    try:
        obj = f.get(name)
    except _READ_ERRORS as e:
        raise _err(path, full, f"cannot read (truncated or corrupt file?): {e}") from None
    if obj is None:
        raise _err(path, full, "missing dataset")
    if not isinstance(obj, h5py.Dataset):
        raise _err(path, full, "is a group, expected a dataset")
    return obj


def _group(path, f: h5py.File | h5py.Group, name: str, what: str = "missing group") -> h5py.Group:
    full = f"{f.name.rstrip('/')}/{name}"
    try:
        obj = f.get(name)
    except _READ_ERRORS as e:
        raise _err(path, full, f"cannot read (truncated or corrupt file?): {e}") from None
    if obj is None:
        raise _err(path, full, what)
    if not isinstance(obj, h5py.Group):
        raise _err(path, full, "is a dataset, expected a group")
    return obj


def _read(path, ds: h5py.Dataset, sel=(), dtype=None) -> np.ndarray:
    """Read ``ds[sel]`` (optionally converted to ``dtype``) with a one-line error on failure."""
    try:
        if dtype is not None:
            return np.asarray(ds.astype(dtype)[sel])
        return np.asarray(ds[sel])
    except _READ_ERRORS as e:
        raise _err(path, ds.name, f"cannot read (truncated or corrupt file?): {e}") from None


def _check_dtype(path, ds: h5py.Dataset, kinds: str, what: str) -> None:
    if ds.dtype.kind not in kinds:
        raise _err(path, ds.name, f"has dtype {ds.dtype}, expected {what}")


def _scalar(path, f, name: str) -> float:
    """A real scalar dataset (shape () or (1,))."""
    ds = _dataset(path, f, name)
    if ds.shape not in ((), (1,)):
        raise _err(path, ds.name, f"must be a scalar, got shape {ds.shape}")
    _check_dtype(path, ds, "iuf", "a real number")
    v = float(np.asarray(_read(path, ds)).ravel()[0])
    if not math.isfinite(v):
        raise _err(path, ds.name, f"is not finite ({v})")
    return v


def _short(v: Any, n: int = 100) -> str:
    """``v`` (an HDF5 attribute value) on one line of at most ``n`` characters (``diffxas info``)."""
    s = v if isinstance(v, str) else json.dumps(to_jsonable(v)) if not isinstance(v, np.ndarray) else np.array2string(v)
    s = _one_line(s)
    return s if len(s) <= n else s[: n - 3] + "..."
