"""File input/output: multi-energy CXI data, results files and ground-truth sidecars.

Every file written here is written atomically (to a temporary file in the target
directory, then :func:`os.replace`), so a failing or interrupted write never leaves a
partial file at the target path. Every reader validates its input and raises
:class:`diffxas.errors.InputError` with one line naming the file, the HDF5 entry and
the dataset on the first problem. The layouts are documented in ``docs/formats.md``.

Units: energies are eV inside diffxas and J in the CXI file (the conversion happens only
here); lengths are m. The CXI sample translation is the negative of the probe position
(``Dataset.positions = -translation[:, :2]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers bitshuffle/LZ4, Blosc, ... filters: EIGER-style compressed frames)
import numpy as np

from . import __version__
from .constants import ELEMENTARY_CHARGE, HC_EV_M
from .dataset import Dataset
from .errors import DiffxasError, DiskFullError, InputError, is_disk_full
from .geometry import object_pixel_size
from .maps import MAP_FIELDS, ChemMaps, Result, Truth
from .sources import LazyFrames

__all__ = [
    "CXI_VERSION",
    "write_cxi",
    "read_cxi",
    "open_cxi",
    "export_cxi_entry",
    "CxiFrames",
    "cxi_summary",
    "sha256_file",
    "write_result",
    "read_result",
    "write_clusters",
    "summarize_result",
    "write_truth",
    "read_truth",
    "summarize_truth",
    "summarize",
    "file_kind",
    "to_jsonable",
    "dumps_json",
]

#: CXI version written to ``/cxi_version`` (CXI 1.6: version x 100). Any integer is read.
CXI_VERSION = 160

# CXI 1.6 pixel-mask bits (specification, Detector class, member ``mask``: a 32-bit field,
# "a pixel with no bits set corresponds to an ideal pixel").
CXI_PIXEL_IS_INVALID = 0x00000001
CXI_PIXEL_IS_SATURATED = 0x00000002
CXI_PIXEL_IS_HOT = 0x00000004
CXI_PIXEL_IS_DEAD = 0x00000008
CXI_PIXEL_IS_SHADOWED = 0x00000010
CXI_PIXEL_IS_BAD = 0x00000080
CXI_PIXEL_IS_MISSING = 0x00000200  # gap between the modules of a modular detector
CXI_PIXEL_IS_NOISY = 0x00000400
CXI_PIXEL_HAS_SIGNAL = 0x00001000  # "signal above the background": not a defect
#: The bits that exclude a pixel: every defect the specification defines. Decision: bits
#: without a defect meaning (0x1000 "has signal", 0x10000 "inside support" of the Image
#: class, and the bits the specification leaves to users) do not exclude a pixel; a
#: shadowed pixel (0x10, e.g. under a beamstop) holds no usable signal and is excluded.
CXI_MASK_EXCLUDE = (CXI_PIXEL_IS_INVALID | CXI_PIXEL_IS_SATURATED | CXI_PIXEL_IS_HOT | CXI_PIXEL_IS_DEAD
                    | CXI_PIXEL_IS_SHADOWED | CXI_PIXEL_IS_BAD | CXI_PIXEL_IS_MISSING | CXI_PIXEL_IS_NOISY)

#: ``format`` root attribute of the files diffxas writes besides CXI.
RESULT_FORMAT = "diffxas-result"
TRUTH_FORMAT = "diffxas-truth"

# Plausibility limits of the CXI reader (anything outside is almost surely a unit error).
_ENERGY_MAX_J = 1e-12  # 6.2 MeV; a 5 keV photon is 8e-16 J
_ENERGY_MIN_J = 10.0 * ELEMENTARY_CHARGE  # 10 eV
_PIXEL_MAX_M = 1e-2  # 1 cm detector pixel
_DISTANCE_MAX_M = 1e3  # 1 km
_TRANSLATION_MAX_M = 1.0  # 1 m scan range

_DET = "instrument_1/detector_1"
_SRC = "instrument_1/source_1"
_TRANS = "sample_1/geometry_1/translation"
#: translation = sign x probe position, per write_cxi(translation=...)
_TRANSLATION_SIGN = {"sample": -1.0, "probe": 1.0}
#: the ``convention`` attribute of a translation holding probe positions (diffxas export)
_PROBE_CONVENTION = "probe position"
#: where CXI 1.6 also allows the frames (NXdata): read when detector_1/data is absent
_DATA = "data_1/data"
#: optional incident-flux monitor (NXmonitor): one reading per frame, shape (N,), any unit
_MON = "instrument_1/monitor_1/data"
_ENTRY_RE = re.compile(r"^entry_(\d+)$")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_READ_ERRORS = (OSError, RuntimeError, ValueError, TypeError, KeyError)


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
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
    import shutil

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
        raise DiskFullError(f"{path}: disk full: the {what} needs about {_mb(need_bytes)}, only {_mb(free)} free "
                            f"in {Path(path).parent}")


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


# --------------------------------------------------------------------------------------
# CXI
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Entry:
    """Metadata of one CXI entry (scalars and shapes; no frame data read)."""

    name: str
    energy_ev: float
    distance: float
    pixel: float
    n_frames: int
    frame_size: int
    has_mask: bool
    has_illumination: bool
    has_monitor: bool = False
    #: the frames' dataset: detector_1/data, or data_1/data where only that exists
    data_path: str = ""


def _entry_energy_j(path, e: h5py.Group, where: str) -> float:
    """An entry's photon energy in J: ``source_1/energy`` (J), or, where only that is
    given, ``source_1/wavelength`` (m; E = h c / lambda), as CXI 1.6's Source class allows."""
    en_name, wl_name = f"{_SRC}/energy", f"{_SRC}/wavelength"
    if en_name not in e and wl_name in e:
        wl = _scalar(path, e, wl_name)
        if wl <= 0:
            raise _err(path, f"{where}/{wl_name}", f"wavelength {wl:g} m must be positive")
        energy_j = HC_EV_M / wl * ELEMENTARY_CHARGE
        if not (_ENERGY_MIN_J <= energy_j <= _ENERGY_MAX_J):
            raise _err(path, f"{where}/{wl_name}",
                       f"wavelength {wl:g} m ({HC_EV_M / wl:.4g} eV) is not a plausible X-ray wavelength; CXI "
                       f"stores m (5420 eV = {HC_EV_M / 5420:.4g} m)")
        return energy_j
    if en_name not in e:
        raise _err(path, f"{where}/{en_name}", "missing dataset (give the photon energy in J, or source_1/wavelength "
                   "in m)")
    energy_j = _scalar(path, e, en_name)
    if energy_j > _ENERGY_MAX_J:
        raise _err(path, f"{where}/{en_name}",
                   f"energy {energy_j:g} looks like eV; CXI stores J (5420 eV = {5420 * ELEMENTARY_CHARGE:.4g} J)")
    if energy_j < _ENERGY_MIN_J:
        raise _err(path, f"{where}/{en_name}",
                   f"energy {energy_j:g} J ({energy_j / ELEMENTARY_CHARGE:.3g} eV) is not a plausible X-ray "
                   "photon energy; CXI stores J")
    return energy_j


def _frames_dataset(path, e: h5py.Group) -> h5py.Dataset:
    """The entry's frames: ``instrument_1/detector_1/data``, or ``data_1/data`` (the
    entry's NXdata, CXI 1.6's mandatory Data class) where the detector has none."""
    if f"{_DET}/data" not in e and _DATA in e:
        return _dataset(path, e, _DATA)
    return _dataset(path, e, f"{_DET}/data")


def cxi_mask_weights(mask: np.ndarray) -> np.ndarray:
    """Weights (1 = pixel used, 0 = not) of a CXI detector mask, float32, same shape.

    Integer masks are read as the CXI 1.6 32-bit field: a pixel is excluded when any
    defect bit (:data:`CXI_MASK_EXCLUDE`: invalid, saturated, hot, dead, shadowed, bad,
    missing/gap, noisy) is set; 0x1000 "has signal" and the bits without a standard
    meaning do not exclude it. Boolean and floating-point masks (not CXI's type, written
    by some tools) exclude every non-zero pixel.
    """
    mk = np.asarray(mask)
    if mk.dtype.kind in "iu":
        return ((mk.astype(np.int64) & CXI_MASK_EXCLUDE) == 0).astype(np.float32)
    return (mk == 0).astype(np.float32)


def _scan_entry(path, f: h5py.File, name: str) -> _Entry:
    e = _group(path, f, name, "missing entry")
    where = f"/{name}"
    # energy (J in the file)
    energy_j = _entry_energy_j(path, e, where)
    # detector geometry
    distance = _scalar(path, e, f"{_DET}/distance")
    if not (0 < distance <= _DISTANCE_MAX_M):
        raise _err(path, f"{where}/{_DET}/distance",
                   f"distance {distance:g} m is not plausible (must be in (0, {_DISTANCE_MAX_M:g}] m)")
    px = _scalar(path, e, f"{_DET}/x_pixel_size")
    py = _scalar(path, e, f"{_DET}/y_pixel_size")
    for nm, v in (("x_pixel_size", px), ("y_pixel_size", py)):
        if not (0 < v <= _PIXEL_MAX_M):
            raise _err(path, f"{where}/{_DET}/{nm}",
                       f"pixel size {v:g} m is not plausible (must be in (0, {_PIXEL_MAX_M:g}] m)")
    if not math.isclose(px, py, rel_tol=1e-6):
        raise _err(path, f"{where}/{_DET}/y_pixel_size",
                   f"non-square pixels: x_pixel_size {px:g} m != y_pixel_size {py:g} m")
    # frames
    data = _frames_dataset(path, e)
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise _err(path, data.name, f"must have shape (N, M, M), got {data.shape}")
    _check_dtype(path, data, "iuf", "real photon counts")
    n, m = int(data.shape[0]), int(data.shape[1])
    if n < 1:
        raise _err(path, data.name, "has no frames")
    if m < 2:
        raise _err(path, data.name, f"frame size {m} is too small")
    # scan positions
    tr = _dataset(path, e, _TRANS)
    if tr.shape != (n, 3):
        raise _err(path, tr.name, f"must have shape ({n}, 3) to match {data.name}, got {tr.shape}")
    _check_dtype(path, tr, "iuf", "real positions in m")
    # optional mask and illumination
    has_mask = has_illum = False
    mk = e.get(f"{_DET}/mask")
    if mk is not None:
        mk = _dataset(path, e, f"{_DET}/mask")
        if mk.shape != (m, m):
            raise _err(path, mk.name, f"must have shape ({m}, {m}), got {mk.shape}")
        _check_dtype(path, mk, "biuf", "an integer mask (CXI pixel-mask bits)")
        has_mask = True
    il = e.get(f"{_SRC}/illumination")
    if il is not None:
        il = _dataset(path, e, f"{_SRC}/illumination")
        if il.shape != (m, m):
            raise _err(path, il.name, f"must have shape ({m}, {m}), got {il.shape}")
        _check_dtype(path, il, "iufc", "a complex probe")
        has_illum = True
    has_mon = False
    mo = e.get(_MON)
    if mo is not None:
        mo = _dataset(path, e, _MON)
        if mo.shape != (n,):
            raise _err(path, mo.name, f"must have shape ({n},), one reading per frame of {data.name}, got {mo.shape}")
        _check_dtype(path, mo, "iuf", "real monitor readings")
        has_mon = True
    return _Entry(name, energy_j / ELEMENTARY_CHARGE, distance, px, n, m, has_mask, has_illum, has_mon,
                  data_path=data.name)


#: A detector mask may exclude at most this fraction of the pixels (more looks inverted).
_MASK_MIN_USED = 0.1


def _scan_cxi(path, f: h5py.File) -> list[_Entry]:
    """Validate the file-level structure and every entry's metadata (no frame data read)."""
    if "cxi_version" not in f:
        raise _err(path, "/cxi_version", "missing dataset (not a CXI file)")
    ver = _dataset(path, f, "cxi_version")
    if ver.shape not in ((), (1,)) or ver.dtype.kind not in "iu":
        raise _err(path, "/cxi_version", f"must be an integer scalar, got dtype {ver.dtype} shape {ver.shape}")
    numbers = sorted(int(m.group(1)) for k in f.keys() if (m := _ENTRY_RE.match(k)))
    if not numbers:
        raise _err(path, None, "no /entry_1 group (not a multi-energy CXI file)")
    for i, num in enumerate(numbers, start=1):
        if num != i:
            raise _err(path, f"/entry_{i}", f"missing entry (entries must be entry_1 .. entry_{len(numbers)})")
    entries = [_scan_entry(path, f, f"entry_{i}") for i in numbers]
    # Entries may come in any order (a scan measured from high to low energy, or
    # interleaved): diffxas uses them sorted by energy. Two at one energy are refused.
    entries = sorted(entries, key=lambda en: en.energy_ev)
    first = entries[0]
    for prev, cur in zip(entries[:-1], entries[1:]):
        if not cur.energy_ev > prev.energy_ev:
            raise _err(path, f"/{cur.name}/{_SRC}/energy",
                       f"two entries at one energy: {cur.energy_ev:.6g} eV, also in /{prev.name} "
                       "(merge them into one entry)")
    for cur in entries[1:]:
        if cur.frame_size != first.frame_size:
            raise _err(path, f"/{cur.name}/{_DET}/data",
                       f"frame size {cur.frame_size} differs from {first.frame_size} in /{first.name}")
        if not math.isclose(cur.distance, first.distance, rel_tol=1e-9):
            raise _err(path, f"/{cur.name}/{_DET}/distance",
                       f"distance {cur.distance:g} m differs from {first.distance:g} m in /{first.name}")
        if not math.isclose(cur.pixel, first.pixel, rel_tol=1e-9):
            raise _err(path, f"/{cur.name}/{_DET}/x_pixel_size",
                       f"pixel size {cur.pixel:g} m differs from {first.pixel:g} m in /{first.name}")
    return entries


def _select(path, n_entries: int, energies) -> list[int]:
    """0-based entry indices selected by ``energies`` (None, int, slice or sequence of ints)."""
    if energies is None:
        return list(range(n_entries))
    if isinstance(energies, slice):
        idx = list(range(n_entries)[energies])
    else:
        raw = [energies] if np.ndim(energies) == 0 else list(np.asarray(energies).ravel())
        idx = []
        for i in raw:
            if isinstance(i, (bool, np.bool_)) or not float(i).is_integer():
                raise _err(path, None, f"energy index {i!r} is not an integer")
            i = int(i)
            if not -n_entries <= i < n_entries:
                raise _err(path, None, f"energy index {i} out of range 0..{n_entries - 1}")
            idx.append(i % n_entries)
        idx = sorted(set(idx))
    if not idx:
        raise _err(path, None, f"no energies selected by {energies!r}")
    return idx


def _chosen_entries(path, f, energies) -> tuple[list[_Entry], bool]:
    """The validated entries selected by ``energies`` and whether they carry illumination
    (the common start of :func:`read_cxi` and :func:`open_cxi`)."""
    entries = _scan_cxi(path, f)
    chosen = [entries[i] for i in _select(path, len(entries), energies)]
    return chosen, _check_illumination_all_or_none(path, chosen)


def _all_or_none(path, chosen: list[_Entry], attr: str, dataset: str) -> bool:
    """True if every chosen entry has the optional ``dataset`` (flag ``attr``), False if
    none has it; an InputError naming the first entry without it otherwise."""
    flags = [getattr(en, attr) for en in chosen]
    if any(flags) and not all(flags):
        missing, have = chosen[flags.index(False)], chosen[flags.index(True)]
        raise _err(path, f"/{missing.name}/{dataset}",
                   f"missing dataset (present in /{have.name}; give it for every energy or none)")
    return all(flags)


def _check_illumination_all_or_none(path, chosen: list[_Entry]) -> bool:
    return _all_or_none(path, chosen, "has_illumination", f"{_SRC}/illumination")


def _check_monitor_all_or_none(path, chosen: list[_Entry]) -> bool:
    return _all_or_none(path, chosen, "has_monitor", _MON)


def _load_monitor(path, f: h5py.File, en: _Entry) -> np.ndarray:
    """One entry's monitor readings (N_k,) float64, validated finite and positive."""
    ds = f[en.name][_MON]
    mon = _read(path, ds, dtype=np.float64)
    ok = np.isfinite(mon) & (mon > 0)
    if not ok.all():
        bad = int(np.argmin(ok))
        raise _err(path, ds.name, f"reading {bad} is {mon[bad]:g}; monitor readings must be finite and positive")
    return mon


def _load_entry(path, f: h5py.File, en: _Entry, frames: np.ndarray, with_illumination: bool):
    """Read one entry's frames into ``frames`` (shape (N_k, M, M), float32) and return
    (positions (N_k, 2), mask weights (M, M), illumination (M, M) or None), validating values."""
    ds = f[en.data_path]
    try:  # straight into the caller's block (HDF5 converts the type)
        ds.read_direct(frames)
    except _READ_ERRORS as exc:
        raise _err(path, ds.name, f"cannot read (truncated or corrupt file?): {exc}") from None
    _check_frames(path, ds, frames)
    return _load_entry_meta(path, f, en, with_illumination)


def _check_frames(path, ds: h5py.Dataset, frames: np.ndarray, local_index=None) -> None:
    """One-line InputError if a frame read from ``ds`` has NaN/inf or negative counts;
    ``local_index[i]`` is the entry's frame number of ``frames[i]`` (default ``i``)."""
    def where(i):
        return int(i) if local_index is None else int(local_index[i])

    finite = np.isfinite(frames).all(axis=(1, 2))
    if not finite.all():
        bad = int(np.argmin(finite))
        raise _err(path, ds.name, f"frame {where(bad)} contains NaN or inf counts")
    if ds.dtype.kind != "u":
        neg = (frames < 0).any(axis=(1, 2))
        if neg.any():
            bad = int(np.argmax(neg))
            raise _err(path, ds.name, f"frame {where(bad)} contains negative counts (min {frames[bad].min():g}); "
                       "background-subtracted frames: clip them at 0 and mask the pixels without signal "
                       "(docs/formats.md)")


def _load_entry_meta(path, f: h5py.File, en: _Entry, with_illumination: bool):
    """Read and validate one entry's small datasets: (positions (N_k, 2), mask weights (M, M),
    illumination (M, M) or None); the frames are not read."""
    e = f[en.name]
    m = en.frame_size
    # positions: probe centre = -translation[:, :2]
    tds = e[_TRANS]
    tr = _read(path, tds, dtype=np.float64)
    if not np.isfinite(tr).all():
        bad = int(np.argmin(np.isfinite(tr).all(axis=1)))
        raise _err(path, tds.name, f"row {bad} is not finite")
    if np.abs(tr).max() > _TRANSLATION_MAX_M:
        bad = int(np.argmax(np.abs(tr).max(axis=1)))
        raise _err(path, tds.name,
                   f"row {bad} = [{', '.join(f'{v:.4g}' for v in tr[bad])}] m is not plausible (|translation| > "
                   f"{_TRANSLATION_MAX_M:g} m; CXI stores m)")
    # the probe position, x the sign of diffxas's own "probe"-convention exports
    positions = -tr[:, :2] if _attr_value(tds.attrs.get("convention")) != _PROBE_CONVENTION else tr[:, :2].copy()
    # mask: non-zero = not used  ->  weight 0
    weights = np.ones((m, m), dtype=np.float32)
    if en.has_mask:
        mds = e[f"{_DET}/mask"]
        mk = _read(path, mds)
        if mds.dtype.kind == "f" and not np.isfinite(mk).all():
            raise _err(path, mds.name, "contains NaN or inf")
        weights = cxi_mask_weights(mk)
        if not weights.any():
            raise _err(path, mds.name, "excludes every pixel")
        if weights.mean() < _MASK_MIN_USED:
            # an inverted mask (1 = good pixel, the opposite of CXI) would otherwise keep
            # only the few bad pixels and the run would silently fit them
            raise _err(path, mds.name, f"excludes {100 * (1 - weights.mean()):.1f} % of the pixels: CXI masks mark the "
                       "pixels NOT to use (bit 0x1 invalid, 0x200 gap, ...); is this one inverted?")
    probe = None
    if with_illumination:
        ids = e[f"{_SRC}/illumination"]
        p = _read(path, ids)
        if not np.isfinite(p).all():
            raise _err(path, ids.name, "contains NaN or inf")
        probe = p.astype(np.complex64)
    return positions, weights, probe


def _is_nexus(path) -> bool:
    """True if ``path`` is a NeXus NXcxi_ptycho file (:mod:`diffxas.nexus`)."""
    from .nexus import is_nxcxi_ptycho

    with _open_h5(path) as f:
        return is_nxcxi_ptycho(f)


def read_cxi(path, energies: slice | list[int] | int | None = None) -> Dataset:
    """Read (a subset of the energies of) a multi-energy CXI file into a :class:`Dataset`.

    Args:
        path: the CXI file (layout in docs/formats.md).
        energies: which entries to load, as 0-based indices into the energy-sorted entries
            (``entry_{i+1}``): None (all), an int, a slice or a list of ints. Entries not
            selected have only their metadata read (for validation of the whole file).

    Returns:
        A Dataset of host (numpy) arrays: frames float32 grouped by energy, positions
        float64 = -translation[:, :2], energies float64 in eV, mask float32 weights
        (1 = use), illumination complex64 or None.

    A NeXus NXcxi_ptycho file (one NXentry per energy) is read by
    :func:`diffxas.nexus.read_nxcxi_ptycho` into the same Dataset (dispatch by content).

    Raises:
        InputError: one line naming the file, entry and dataset of the first problem.
    """
    path = Path(path)
    if _is_nexus(path):
        from .nexus import read_nxcxi_ptycho

        return read_nxcxi_ptycho(path, energies)
    with _open_h5(path) as f:
        chosen, with_illum = _chosen_entries(path, f, energies)
        m = chosen[0].frame_size
        n_total = sum(en.n_frames for en in chosen)
        frames = np.empty((n_total, m, m), dtype=np.float32)
        positions = np.empty((n_total, 2), dtype=np.float64)
        energy_index = np.empty(n_total, dtype=np.int32)
        mask = np.ones((len(chosen), m, m), dtype=np.float32)
        illum = np.empty((len(chosen), m, m), dtype=np.complex64) if with_illum else None
        monitor = np.empty(n_total, dtype=np.float64) if _check_monitor_all_or_none(path, chosen) else None
        start = 0
        for k, en in enumerate(chosen):
            stop = start + en.n_frames
            pos, mask[k], probe = _load_entry(path, f, en, frames[start:stop], with_illum)
            positions[start:stop] = pos
            energy_index[start:stop] = k
            if illum is not None:
                illum[k] = probe
            if monitor is not None:
                monitor[start:stop] = _load_monitor(path, f, en)
            start = stop
        return Dataset(
            frames=frames,
            positions=positions,
            energy_index=energy_index,
            energies=np.array([en.energy_ev for en in chosen], dtype=np.float64),
            mask=mask,
            illumination=illum,
            distance=float(chosen[0].distance),
            detector_pixel=float(chosen[0].pixel),
            monitor=monitor,
        )


class CxiFrames(LazyFrames):
    """Lazy, read-only frames of a CXI file: an ``(n, M, M)`` float32 array-like.

    Frames are read from the file only when asked for (:meth:`read`, :meth:`take`,
    ``np.asarray``), a range or a list of frames at a time, through h5py: chunked and
    compressed (gzip, lzf, ...) detector datasets work, and only the HDF5 chunks holding
    the requested frames are decompressed. Every read opens the file, checks that the
    entry still has the shape seen by :func:`open_cxi` and validates the counts like
    :func:`read_cxi` (finite, non-negative), with the same one-line InputErrors.

    The frame order is that of :func:`read_cxi`: the selected entries in energy order,
    each entry's frames in file order. Indexing the first axis with a slice, an integer
    array or a boolean mask returns another lazy view (nothing is read), so
    :meth:`Dataset.select_energies` and :meth:`Dataset.half` stay lazy; an integer index
    returns one frame (a numpy array).
    """

    def __init__(self, path, entries, frame_size: int, index=None, data_paths=None):
        self.path = Path(path)
        self.entries = tuple((str(name), int(n)) for name, n in entries)
        self.frame_size = int(frame_size)
        # each entry's frames dataset (detector_1/data by default; data_1/data where only that exists)
        self.data_paths = (tuple(f"/{name}/{_DET}/data" for name, _ in self.entries) if data_paths is None
                           else tuple(str(p) for p in data_paths))
        self._starts = np.concatenate([[0], np.cumsum([n for _, n in self.entries], dtype=np.int64)]).astype(np.int64)
        self._index = None if index is None else np.asarray(index, np.int64).ravel()

    # ---- array-like ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1]) if self._index is None else int(self._index.size)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.frame_size, self.frame_size)

    def __repr__(self) -> str:
        return f"CxiFrames({os.fspath(self.path)!r}, shape={self.shape}, {len(self.entries)} entries)"

    def _positions(self, key) -> np.ndarray:
        """View positions selected by a first-axis key (slice, int array or bool mask)."""
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n, dtype=np.int64)[key]
        k = np.asarray(key)
        if k.dtype == bool:
            if k.shape != (n,):
                raise IndexError(f"boolean index of shape {k.shape} does not match {n} frames")
            return np.nonzero(k)[0].astype(np.int64)
        if k.dtype.kind not in "iu" or k.ndim != 1:
            raise IndexError(f"CxiFrames supports int, slice, 1-D integer or boolean indices, got {key!r}")
        k = k.astype(np.int64)
        if k.size and (k.min() < -n or k.max() >= n):
            raise IndexError(f"frame index out of range for {n} frames")
        return np.where(k < 0, k + n, k)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if not key:
                return self
            head, rest = key[0], key[1:]
            if rest == () or all(r is Ellipsis for r in rest):
                return self[head]
            sub = np.asarray(self[head])
            return sub[rest] if isinstance(head, (int, np.integer)) else sub[(slice(None),) + rest]
        if key is Ellipsis:
            return self
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            n = len(self)
            if not -n <= int(key) < n:
                raise IndexError(f"frame {int(key)} out of range for {n} frames")
            return self.take([int(key) % n])[0]
        pos = self._positions(key)
        file_pos = pos if self._index is None else self._index[pos]
        return CxiFrames(self.path, self.entries, self.frame_size, index=file_pos, data_paths=self.data_paths)

    # ---- reading ------------------------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start:stop`` (view positions) as a new float32 array (or into ``out``)."""
        n = len(self)
        stop = n if stop is None else min(int(stop), n)
        start = max(0, int(start))
        return self.take(np.arange(start, max(start, stop), dtype=np.int64), out=out)

    def take(self, positions, out: np.ndarray | None = None) -> np.ndarray:
        """Frames at view ``positions`` (any order, repeats allowed) as float32 ``(len, M, M)``."""
        pos = np.asarray(positions, np.int64).ravel()
        n, m = len(self), self.frame_size
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            raise IndexError(f"frame index out of range for {n} frames")
        g = pos if self._index is None else self._index[pos]
        if out is None:
            out = np.empty((g.size, m, m), np.float32)
        elif out.shape != (g.size, m, m) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {(g.size, m, m)}, got {out.dtype} {out.shape}")
        if not g.size:
            return out
        with _open_h5(self.path) as f:
            for e, (name, count) in enumerate(self.entries):
                sel = np.nonzero((g >= self._starts[e]) & (g < self._starts[e + 1]))[0]
                if sel.size:
                    ds = _dataset(self.path, f, self.data_paths[e])
                    if ds.shape != (count, m, m):
                        raise _err(self.path, ds.name, f"has shape {ds.shape}, expected {(count, m, m)} "
                                   "(the file changed since it was opened?)")
                    self._read_entry(ds, g[sel] - self._starts[e], out, sel)
        return out

    def _read_entry(self, ds: h5py.Dataset, local: np.ndarray, out: np.ndarray, sel: np.ndarray) -> None:
        lo, hi = int(local.min()), int(local.max()) + 1
        try:
            if hi - lo == local.size and np.all(np.diff(local) == 1) and np.all(np.diff(sel) == 1):
                # one contiguous range into one contiguous block (the streaming case): no copy
                dst = out[int(sel[0]):int(sel[0]) + local.size]
                ds.read_direct(dst, source_sel=np.s_[lo:hi])
                _check_frames(self.path, ds, dst, np.arange(lo, hi))
                return
            if hi - lo <= 4 * local.size:  # dense: read the covering range once
                uniq = np.arange(lo, hi)
                buf = np.empty((hi - lo, self.frame_size, self.frame_size), np.float32)
                ds.read_direct(buf, source_sel=np.s_[lo:hi])
            else:  # sparse: h5py point selection (increasing, unique)
                uniq = np.unique(local)
                buf = np.asarray(ds.astype(np.float32)[uniq], np.float32)
        except _READ_ERRORS as exc:
            raise _err(self.path, ds.name, f"cannot read (truncated or corrupt file?): {exc}") from None
        need = np.searchsorted(uniq, local)
        out[sel] = buf[need]
        _check_frames(self.path, ds, out[sel], local)


def open_cxi(path, energies: slice | list[int] | int | None = None) -> Dataset:
    """Open a multi-energy CXI file as a :class:`Dataset` whose frames stay in the file.

    Like :func:`read_cxi` (same validation of the file's structure and metadata, same
    frame order, same units), except that ``frames`` is a lazy :class:`CxiFrames`: the
    frames are read from the file when needed, a range at a time, so a file larger than
    the host memory can be used by the joint solver's streaming mode
    (``JointConfig.memory``). Positions, energies, mask and illumination are small and
    loaded (and validated) here; the counts are validated as they are read.

    Raises:
        InputError: one line naming the file, entry and dataset of the first problem.
    """
    path = Path(path)
    if _is_nexus(path):  # NXcxi_ptycho: read into memory (frames in any NeXus layout)
        from .nexus import read_nxcxi_ptycho

        return read_nxcxi_ptycho(path, energies)
    with _open_h5(path) as f:
        chosen, with_illum = _chosen_entries(path, f, energies)
        m = chosen[0].frame_size
        positions, energy_index, masks, probes = [], [], [], []
        with_mon = _check_monitor_all_or_none(path, chosen)
        monitor = [_load_monitor(path, f, en) for en in chosen] if with_mon else None
        for k, en in enumerate(chosen):
            pos, w, probe = _load_entry_meta(path, f, en, with_illum)
            positions.append(pos)
            energy_index.append(np.full(en.n_frames, k, np.int32))
            masks.append(w)
            probes.append(probe)
    return Dataset(
        frames=CxiFrames(path, [(en.name, en.n_frames) for en in chosen], m,
                         data_paths=[en.data_path for en in chosen]),
        positions=np.concatenate(positions).astype(np.float64),
        energy_index=np.concatenate(energy_index),
        energies=np.array([en.energy_ev for en in chosen], dtype=np.float64),
        mask=np.stack(masks).astype(np.float32),
        illumination=np.stack(probes).astype(np.complex64) if with_illum else None,
        distance=float(chosen[0].distance),
        detector_pixel=float(chosen[0].pixel),
        monitor=None if monitor is None else np.concatenate(monitor),
    )


def write_cxi(path, dataset: Dataset, extra_attrs: dict | None = None, compression: str | None = "gzip",
              chunk_frames: int = 16, translation: str = "sample") -> Path:
    """Write ``dataset`` as a multi-energy CXI file (one entry per energy), atomically.

    Args:
        path: target file; parent directories are created.
        dataset: the data (energies strictly increasing, every energy with >= 1 frame).
        extra_attrs: attributes of the root group (e.g. simulation preset, seed); values
            that HDF5 cannot store natively are JSON-encoded.
        compression: h5py compression filter for the frames ("gzip", "lzf" or None).
        chunk_frames: frames per HDF5 chunk of the detector data.
        translation: "sample" (default; the CXI specification's meaning: translation =
            (-x, -y, 0) of the probe centre) or "probe" (translation = (x, y, 0), the probe
            position, as ptychodus and PtyPy take it; the dataset then carries the
            attribute ``convention = "probe position"`` and diffxas reads it back right).

    Frames are stored as uint32 when all counts are integral (as in measured or Poisson-
    noisy data), float32 otherwise. Returns the path written.
    """
    path = Path(path)
    frames = np.asarray(dataset.frames)
    pos = np.asarray(dataset.positions, dtype=np.float64)
    ei = np.asarray(dataset.energy_index)
    energies = np.asarray(dataset.energies, dtype=np.float64)
    mask = np.asarray(dataset.mask)
    illum = None if dataset.illumination is None else np.asarray(dataset.illumination).astype(np.complex64)
    monitor = None if dataset.monitor is None else np.asarray(dataset.monitor, np.float64)
    m = frames.shape[-1]
    if energies.size == 0:
        raise InputError(f"cannot write {path}: the dataset has no energies")
    if not (np.isfinite(energies).all() and (energies > 0).all() and (np.diff(energies) > 0).all()):
        raise InputError(f"cannot write {path}: energies must be positive and strictly increasing, "
                         f"got {energies.tolist()}")
    if not np.isfinite(frames).all() or (frames < 0).any():
        raise InputError(f"cannot write {path}: frames must be finite and non-negative")
    if not np.isfinite(pos).all():
        raise InputError(f"cannot write {path}: positions must be finite")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if translation not in _TRANSLATION_SIGN:
        raise ValueError(f"translation must be one of {sorted(_TRANSLATION_SIGN)}, got {translation!r}")
    integral = bool(frames.size) and bool(np.all(frames == np.rint(frames))) and float(frames.max()) < 2**32
    fdtype = np.uint32 if integral else np.float32
    per_energy = [np.nonzero(ei == k)[0] for k in range(energies.size)]
    for k, idx in enumerate(per_energy):
        if idx.size == 0:
            raise InputError(f"cannot write {path}: energy {k} ({energies[k]:g} eV) has no frames")
    with _atomic_h5(path) as f:
        f.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
        f.create_dataset("number_of_entries", data=np.int64(energies.size))
        f.attrs["creator"] = f"diffxas {__version__}"
        for key, value in (extra_attrs or {}).items():
            _set_attr(f, str(key), value)
        for k, idx in enumerate(per_energy):
            e = f.create_group(f"entry_{k + 1}")
            src = e.create_group(_SRC)
            d = src.create_dataset("energy", data=np.float64(energies[k] * ELEMENTARY_CHARGE))
            d.attrs["units"] = "J"
            if illum is not None:
                d = src.create_dataset("illumination", data=illum[k])
                d.attrs["units"] = "sqrt(photons) per object pixel"
            det = e.create_group(_DET)
            block = frames[idx].astype(fdtype)
            d = det.create_dataset("data", data=block, chunks=(min(chunk_frames, idx.size), m, m),
                                   compression=compression)
            d.attrs["units"] = "counts"
            d.attrs["axes"] = "translation:y:x"
            for name, value in (("distance", dataset.distance), ("x_pixel_size", dataset.detector_pixel),
                                ("y_pixel_size", dataset.detector_pixel)):
                d = det.create_dataset(name, data=np.float64(value))
                d.attrs["units"] = "m"
            # CXI 1.6 32-bit pixel mask: an unused pixel is CXI_PIXEL_IS_INVALID (0x1)
            det.create_dataset("mask", data=np.where(mask[k] == 0, CXI_PIXEL_IS_INVALID, 0).astype(np.uint32))
            if monitor is not None:
                e.create_dataset(_MON, data=monitor[idx]).attrs["units"] = "arbitrary (incident flux; ratios used)"
            geo = e.create_group("sample_1/geometry_1")
            tr = np.zeros((idx.size, 3), dtype=np.float64)
            tr[:, :2] = _TRANSLATION_SIGN[translation] * pos[idx]
            d = geo.create_dataset("translation", data=tr)
            d.attrs["units"] = "m"
            if translation == "probe":
                d.attrs["convention"] = _PROBE_CONVENTION
            # CXI 1.6 "Dimension Scales": the dataset named by each axes entry ("translation"
            # of "translation:y:x"), or a link to it, lies in the group of the data it
            # describes: detector_1 and data_1 (whose data is itself a link)
            det["translation"] = h5py.SoftLink(f"/entry_{k + 1}/{_TRANS}")
            data_1 = e.create_group("data_1")
            data_1["data"] = h5py.SoftLink(f"/entry_{k + 1}/{_DET}/data")
            data_1["translation"] = h5py.SoftLink(f"/entry_{k + 1}/{_TRANS}")
    return path


#: ``diffxas export --energy E`` picks the entry within this many eV of E (energies are
#: stored in J, so a typed 5465.5 eV reads back as 5465.4999999...).
EXPORT_ENERGY_TOL_EV = 0.01


def export_cxi_entry(src, energy_ev: float, out, translation: str = "probe") -> tuple[Path, float, int]:
    """Write the entry of ``src`` at photon energy ``energy_ev`` (eV) as a plain
    single-entry CXI file ``out`` (``/entry_1`` only, CXI 1.6 layout, atomically), for
    single-energy ptychography codes that read only ``entry_1`` (ptychodus, PtyPy, ...).

    ``translation``: "probe" (default) writes translation = (x, y, 0), the probe position,
    the sign ptychodus and PtyPy's position loaders take; "sample" keeps the CXI
    specification's sample translation (-x, -y, 0), the sign diffxas and CDTools read.
    docs/formats.md, "Other ptychography codes", compares the conventions.

    Returns (path written, the entry's energy in eV, its number of frames). Raises
    InputError (one line) when no entry lies within :data:`EXPORT_ENERGY_TOL_EV` of
    ``energy_ev`` (the message lists the nearest energies).
    """
    src, out = Path(src), Path(out)
    if not math.isfinite(energy_ev):
        raise InputError(f"--energy must be a finite photon energy in eV, got {energy_ev}")
    with _open_h5(src) as f:
        entries = _scan_cxi(src, f)
    en = np.array([e.energy_ev for e in entries])
    k = int(np.argmin(np.abs(en - energy_ev)))
    if abs(en[k] - energy_ev) > EXPORT_ENERGY_TOL_EV:
        near = ", ".join(f"{v:.6g}" for v in en[np.argsort(np.abs(en - energy_ev))[:3]])
        raise _err(src, None, f"no entry at {energy_ev:g} eV (within {EXPORT_ENERGY_TOL_EV:g} eV); nearest: {near} eV "
                   f"({en.size} energies, {en.min():.6g} .. {en.max():.6g} eV)")
    ds = read_cxi(src, energies=[k])
    write_cxi(out, ds, extra_attrs={"exported_from": os.fspath(src), "exported_energy_eV": float(en[k]),
                                    "translation_convention": translation}, translation=translation)
    return out, float(en[k]), int(ds.n_frames)


def _scan_summary_stats(path, f, entries: list[_Entry]) -> dict[str, Any]:
    """Per-energy mean counts per frame, mask fraction, scan extent; validates every value
    exactly like :func:`read_cxi` (one entry in memory at a time)."""
    with_illum = _check_illumination_all_or_none(path, entries)
    with_mon = _check_monitor_all_or_none(path, entries)
    from .background import darkest_level
    from .stxm import beam_masked, brightest_count, whole_counts

    dose, masked, lo, hi, illum_photons, mon_rms, dark = [], [], None, None, [], [], []
    top, top_pixels, top_frames, beam_hidden, counts = -np.inf, 0, 0, 0, True
    for en in entries:
        frames = np.empty((en.n_frames, en.frame_size, en.frame_size), dtype=np.float32)
        pos, weights, probe = _load_entry(path, f, en, frames, with_illum)
        beam_hidden += int(beam_masked(weights))
        counts = counts and whole_counts(frames)  # as stxm.check_saturation
        t, n_pix, n_fr = brightest_count(frames, weights > 0)
        if t >= top:
            top, top_pixels, top_frames = (t, top_pixels + n_pix, top_frames + n_fr) if t == top else (t, n_pix, n_fr)
        # dose: counts in the pixels used only (gap pixels of a modular detector hold
        # 2^32 - 1 and are masked; counting them gave 1.4e11 instead of ~1e6 per frame)
        frame_sum = frames.sum(axis=0, dtype=np.float64)
        dose.append(float(frame_sum[weights > 0].sum()) / en.n_frames)
        dark.append(darkest_level(frames.mean(axis=0, dtype=np.float64), weights))
        masked.append(float((weights == 0).mean()))
        lo = pos.min(0) if lo is None else np.minimum(lo, pos.min(0))
        hi = pos.max(0) if hi is None else np.maximum(hi, pos.max(0))
        if probe is not None:
            illum_photons.append(float((np.abs(probe.astype(np.complex128)) ** 2).sum()))
        if with_mon:
            mon = _load_monitor(path, f, en)
            mon_rms.append(float(np.std(mon) / np.mean(mon)))
    return {"dose": np.array(dose), "masked": np.array(masked), "lo": lo, "hi": hi,
            "illum_photons": np.array(illum_photons), "monitor_rms": np.array(mon_rms), "darkest": np.array(dark),
            "brightest": (top, top_pixels, top_frames), "whole_counts": counts, "beam_hidden": beam_hidden}


def cxi_summary(path) -> str:
    """A human-readable multi-line summary of a CXI file (for ``diffxas info``).

    Validates the whole file like :func:`read_cxi` (same errors), reading one entry at a time.
    """
    path = Path(path)
    with _open_h5(path) as f:
        entries = _scan_cxi(path, f)
        stats = _scan_summary_stats(path, f, entries)
        ver = int(np.asarray(f["cxi_version"][()]).ravel()[0])
        root_attrs = {k: v for k, v in _get_attrs(f).items()}
    en = np.array([e.energy_ev for e in entries])
    nf = np.array([e.n_frames for e in entries])
    first = entries[0]
    dx = object_pixel_size(en, first.distance, first.pixel, first.frame_size)
    lines = [
        f"{path}: multi-energy CXI file (cxi_version {ver}), {_human_size(path.stat().st_size)}",
        f"  energies:          {en.size} entries, {en[0]:.2f} .. {en[-1]:.2f} eV"
        + (f" (mean step {np.diff(en).mean():.3g} eV)" if en.size > 1 else ""),
        f"  K edges in range:  {_k_edges_line(en)}",
        f"  frames per energy: {nf.min()}" + (f" .. {nf.max()}" if nf.max() != nf.min() else "")
        + f" (total {nf.sum()})",
        f"  frame size M:      {first.frame_size} x {first.frame_size} pixels",
        f"  detector:          distance {first.distance:.4g} m, pixel {_si(first.pixel, 'm')}",
        f"  object pixel:      {_si(dx.min(), 'm')} .. {_si(dx.max(), 'm')}",
        f"  dose:              mean {stats['dose'].mean():.4g} counts per frame in unmasked pixels"
        + (f" ({stats['dose'].min():.4g} .. {stats['dose'].max():.4g} over energies)" if en.size > 1 else ""),
        f"  mask:              {100 * stats['masked'].mean():.3g} % of detector pixels not used",
        f"  darkest pixels:    {stats['darkest'].min():.3g} .. {stats['darkest'].max():.3g} counts per pixel per frame "
        "(darkest 4x4 detector block of the mean frame: coherent signal plus any background; docs/physics.md, "
        "\"Detector background\")",
        _brightest_line(stats["brightest"], int(nf.sum()), stats["whole_counts"]),
        "  direct beam:       "
        + (f"masked (central 3x3 detector pixels) at {stats['beam_hidden']} of {en.size} energies: a beamstop? The "
           "bright-field estimates assume the direct beam is recorded (docs/your-data.md)"
           if stats["beam_hidden"] else "recorded (central 3x3 detector pixels used)"),
        "  illumination:      "
        + (f"present (mean sum |P|^2 = {stats['illum_photons'].mean():.4g} photons per frame)"
           if stats["illum_photons"].size else "absent"),
        "  monitor (I0):      "
        + (f"present (frame-to-frame RMS {100 * stats['monitor_rms'].mean():.3g} % of the mean, averaged over energies)"
           if stats["monitor_rms"].size else "absent (flux taken as constant within each energy)"),
        f"  scan (probe x, y): x {_si(stats['lo'][0], 'm')} .. {_si(stats['hi'][0], 'm')}, "
        f"y {_si(stats['lo'][1], 'm')} .. {_si(stats['hi'][1], 'm')}",
    ]
    shown = {k: v for k, v in root_attrs.items() if k != "creator"}
    if "creator" in root_attrs:
        lines.append(f"  creator:           {root_attrs['creator']}")
    for k, v in shown.items():
        lines.append(f"  attr {k}: {_short(v)}")
    return "\n".join(lines)


def _brightest_line(brightest: tuple[float, int, int], n_frames: int, whole_counts: bool = True) -> str:
    """``diffxas info``'s line on the brightest unmasked count: where it repeats in frames
    of whole counts (the criteria of :func:`diffxas.stxm.check_saturation`), saturated or
    flagged pixels."""
    from .stxm import looks_saturated

    top, pixels, frames = brightest
    line = f"  brightest count:   {top:.10g} in {pixels} unmasked pixel(s) of {frames} of {n_frames} frames"
    if whole_counts and looks_saturated(top, pixels, frames):
        line += " (a repeated maximum: saturated or flagged pixels? mask them; docs/your-data.md)"
    return line


def _short(v: Any, n: int = 100) -> str:
    s = v if isinstance(v, str) else json.dumps(to_jsonable(v)) if not isinstance(v, np.ndarray) else np.array2string(v)
    s = _one_line(s)
    return s if len(s) <= n else s[: n - 3] + "..."


# --------------------------------------------------------------------------------------
# results file
# --------------------------------------------------------------------------------------
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
            d.attrs["description"] = "probability that the pixel belongs to its cluster given its std maps; NaN = not clustered"
        elif key in ("centers", "fractions") or isinstance(value, np.ndarray) or (
                hasattr(value, "__array__") and hasattr(value, "shape") and np.ndim(value) > 0):
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
    import tempfile

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
        raise ValueError(f"absorption/phase have shapes {absorption.shape}/{phase.shape}, "
                         f"expected ({k}, {shape[0]}, {shape[1]}) (energies x map grid)")
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
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
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
            d.attrs["description"] = ("incoherent background the reconstruction fitted: (K,) one level per energy, "
                                      "or (K, M, M) per detector pixel, zero frequency at (M/2, M/2)")
    return path


#: The methods whose results diffxas writes (and reads).
RESULT_METHODS = ("two-step", "joint")


def _check_result_file(path, f: h5py.File) -> None:
    fmt = f.attrs.get("format")
    if fmt is not None and _attr_value(fmt) not in (RESULT_FORMAT,):
        raise _err(path, None, f"not a diffxas results file (format {_attr_value(fmt)!r})")
    if "maps" not in f or "method" not in f.attrs:
        raise _err(path, None, "not a diffxas results file (no /maps group or 'method' attribute)")
    method = str(_attr_value(f.attrs["method"]))
    if method not in RESULT_METHODS:
        raise _err(path, None, f"unknown method {method!r} in the results file; diffxas writes "
                               f"{', '.join(RESULT_METHODS)}")


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
        part.append(f"{len(sel['energy_indices'])} of its {sel.get('n_energies_in_file', '?')} energies "
                    f"(indices {', '.join(str(i) for i in sel['energy_indices'])})")
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
        lines.append(f"  probe:             {r.probes.shape[0]} x {r.probes.shape[1]} x {r.probes.shape[2]}, "
                     f"mean sum |P|^2 = {np.mean(np.sum(np.abs(r.probes) ** 2, axis=(1, 2))):.4g} photons")
    if r.background is not None:
        from .background import summary

        bs = summary(r.background)
        lines.append(f"  background:        {bs['mode']}, {np.mean(bs['mean_per_energy']):.4g} photons per detector pixel "
                     f"per frame ({bs['min']:.4g}-{bs['max']:.4g} over the energies)")
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


# --------------------------------------------------------------------------------------
# ground-truth sidecar
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------
def file_kind(path) -> str:
    """"cxi", "nexus" (NXcxi_ptycho), "result" or "truth" (InputError for anything else)."""
    path = Path(path)
    with _open_h5(path) as f:
        fmt = _attr_value(f.attrs["format"]) if "format" in f.attrs else None
        if fmt == RESULT_FORMAT:
            return "result"
        if fmt == TRUTH_FORMAT:
            return "truth"
        from .nexus import is_nxcxi_ptycho

        if is_nxcxi_ptycho(f):
            return "nexus"
        if "cxi_version" in f or "entry_1" in f:
            return "cxi"
        if "maps" in f and "method" in f.attrs:
            return "result"
        if _is_truth(f):
            return "truth"
    raise _err(path, None, "not a CXI, diffxas results or ground-truth file")


def _k_edges_line(en) -> str:
    """The K edges (xraydb) inside the scanned energies: the `element` to reconstruct with."""
    from .scattering import k_edges_between, k_edges_text

    if en.size < 2:
        return "n/a (one energy)"
    c = k_edges_between(float(en.min()), float(en.max()))
    if not c:
        return "none (diffxas models a K edge inside the scan)"
    return k_edges_text(c) + (" -> element = " + (f'"{c[0][0]}"' if len(c) == 1 else "one of them"))


def summarize(path) -> str:
    """Summary of any file diffxas reads or writes (CXI input, results, ground truth)."""
    kind = file_kind(path)
    if kind == "nexus":
        from .nexus import nexus_summary

        return nexus_summary(path)
    return {"cxi": cxi_summary, "result": summarize_result, "truth": summarize_truth}[kind](path)
