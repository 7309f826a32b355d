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

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from diffxas import __version__
from diffxas.data.dataset import Dataset
from diffxas.data.files import (
    _READ_ERRORS,
    _atomic_h5,
    _attr_value,
    _check_dtype,
    _dataset,
    _err,
    _get_attrs,
    _group,
    _human_size,
    _one_line,
    _open_h5,
    _read,
    _scalar,
    _set_attr,
    _si,
    to_jsonable,
)
from diffxas.data.sources import LazyFrames
from diffxas.errors import InputError
from diffxas.physics.constants import ELEMENTARY_CHARGE, HC_EV_M
from diffxas.physics.geometry import object_pixel_size

__all__ = ["CXI_VERSION", "CxiFrames", "cxi_summary", "export_cxi_entry", "open_cxi", "read_cxi", "write_cxi"]


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
CXI_MASK_EXCLUDE = (
    CXI_PIXEL_IS_INVALID
    | CXI_PIXEL_IS_SATURATED
    | CXI_PIXEL_IS_HOT
    | CXI_PIXEL_IS_DEAD
    | CXI_PIXEL_IS_SHADOWED
    | CXI_PIXEL_IS_BAD
    | CXI_PIXEL_IS_MISSING
    | CXI_PIXEL_IS_NOISY
)


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
            raise _err(
                path,
                f"{where}/{wl_name}",
                f"wavelength {wl:g} m ({HC_EV_M / wl:.4g} eV) is not a plausible X-ray wavelength; CXI "
                f"stores m (5420 eV = {HC_EV_M / 5420:.4g} m)",
            )
        return energy_j
    if en_name not in e:
        raise _err(
            path, f"{where}/{en_name}", "missing dataset (give the photon energy in J, or source_1/wavelength in m)"
        )
    energy_j = _scalar(path, e, en_name)
    if energy_j > _ENERGY_MAX_J:
        raise _err(
            path,
            f"{where}/{en_name}",
            f"energy {energy_j:g} looks like eV; CXI stores J (5420 eV = {5420 * ELEMENTARY_CHARGE:.4g} J)",
        )
    if energy_j < _ENERGY_MIN_J:
        raise _err(
            path,
            f"{where}/{en_name}",
            f"energy {energy_j:g} J ({energy_j / ELEMENTARY_CHARGE:.3g} eV) is not a plausible X-ray "
            "photon energy; CXI stores J",
        )
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
        raise _err(
            path,
            f"{where}/{_DET}/distance",
            f"distance {distance:g} m is not plausible (must be in (0, {_DISTANCE_MAX_M:g}] m)",
        )
    px = _scalar(path, e, f"{_DET}/x_pixel_size")
    py = _scalar(path, e, f"{_DET}/y_pixel_size")
    for nm, v in (("x_pixel_size", px), ("y_pixel_size", py)):
        if not (0 < v <= _PIXEL_MAX_M):
            raise _err(
                path,
                f"{where}/{_DET}/{nm}",
                f"pixel size {v:g} m is not plausible (must be in (0, {_PIXEL_MAX_M:g}] m)",
            )
    if not math.isclose(px, py, rel_tol=1e-6):
        raise _err(
            path, f"{where}/{_DET}/y_pixel_size", f"non-square pixels: x_pixel_size {px:g} m != y_pixel_size {py:g} m"
        )
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
    return _Entry(
        name, energy_j / ELEMENTARY_CHARGE, distance, px, n, m, has_mask, has_illum, has_mon, data_path=data.name
    )


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
            raise _err(
                path,
                f"/{cur.name}/{_SRC}/energy",
                f"two entries at one energy: {cur.energy_ev:.6g} eV, also in /{prev.name} (merge them into one entry)",
            )
    for cur in entries[1:]:
        if cur.frame_size != first.frame_size:
            raise _err(
                path,
                f"/{cur.name}/{_DET}/data",
                f"frame size {cur.frame_size} differs from {first.frame_size} in /{first.name}",
            )
        if not math.isclose(cur.distance, first.distance, rel_tol=1e-9):
            raise _err(
                path,
                f"/{cur.name}/{_DET}/distance",
                f"distance {cur.distance:g} m differs from {first.distance:g} m in /{first.name}",
            )
        if not math.isclose(cur.pixel, first.pixel, rel_tol=1e-9):
            raise _err(
                path,
                f"/{cur.name}/{_DET}/x_pixel_size",
                f"pixel size {cur.pixel:g} m differs from {first.pixel:g} m in /{first.name}",
            )
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
        raise _err(
            path,
            f"/{missing.name}/{dataset}",
            f"missing dataset (present in /{have.name}; give it for every energy or none)",
        )
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
            raise _err(
                path,
                ds.name,
                f"frame {where(bad)} contains negative counts (min {frames[bad].min():g}); "
                "background-subtracted frames: clip them at 0 and mask the pixels without signal "
                "(docs/formats.md)",
            )


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
        raise _err(
            path,
            tds.name,
            f"row {bad} = [{', '.join(f'{v:.4g}' for v in tr[bad])}] m is not plausible (|translation| > "
            f"{_TRANSLATION_MAX_M:g} m; CXI stores m)",
        )
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
            raise _err(
                path,
                mds.name,
                f"excludes {100 * (1 - weights.mean()):.1f} % of the pixels: CXI masks mark the "
                "pixels NOT to use (bit 0x1 invalid, 0x200 gap, ...); is this one inverted?",
            )
    probe = None
    if with_illumination:
        ids = e[f"{_SRC}/illumination"]
        p = _read(path, ids)
        if not np.isfinite(p).all():
            raise _err(path, ids.name, "contains NaN or inf")
        probe = p.astype(np.complex64)
    return positions, weights, probe


def _is_nexus(path) -> bool:
    """True if ``path`` is a NeXus NXcxi_ptycho file (:mod:`diffxas.data.nexus`)."""
    from diffxas.data.nexus import is_nxcxi_ptycho

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
    :func:`diffxas.data.nexus.read_nxcxi_ptycho` into the same Dataset (dispatch by content).

    Raises:
        InputError: one line naming the file, entry and dataset of the first problem.
    """
    path = Path(path)
    if _is_nexus(path):
        from diffxas.data.nexus import read_nxcxi_ptycho

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
        self.data_paths = (
            tuple(f"/{name}/{_DET}/data" for name, _ in self.entries)
            if data_paths is None
            else tuple(str(p) for p in data_paths)
        )
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
            for e, (_name, count) in enumerate(self.entries):
                sel = np.nonzero((g >= self._starts[e]) & (g < self._starts[e + 1]))[0]
                if sel.size:
                    ds = _dataset(self.path, f, self.data_paths[e])
                    if ds.shape != (count, m, m):
                        raise _err(
                            self.path,
                            ds.name,
                            f"has shape {ds.shape}, expected {(count, m, m)} (the file changed since it was opened?)",
                        )
                    self._read_entry(ds, g[sel] - self._starts[e], out, sel)
        return out

    def _read_entry(self, ds: h5py.Dataset, local: np.ndarray, out: np.ndarray, sel: np.ndarray) -> None:
        lo, hi = int(local.min()), int(local.max()) + 1
        try:
            if hi - lo == local.size and np.all(np.diff(local) == 1) and np.all(np.diff(sel) == 1):
                # one contiguous range into one contiguous block (the streaming case): no copy
                dst = out[int(sel[0]) : int(sel[0]) + local.size]
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
        from diffxas.data.nexus import read_nxcxi_ptycho

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
        frames=CxiFrames(
            path, [(en.name, en.n_frames) for en in chosen], m, data_paths=[en.data_path for en in chosen]
        ),
        positions=np.concatenate(positions).astype(np.float64),
        energy_index=np.concatenate(energy_index),
        energies=np.array([en.energy_ev for en in chosen], dtype=np.float64),
        mask=np.stack(masks).astype(np.float32),
        illumination=np.stack(probes).astype(np.complex64) if with_illum else None,
        distance=float(chosen[0].distance),
        detector_pixel=float(chosen[0].pixel),
        monitor=None if monitor is None else np.concatenate(monitor),
    )


def write_cxi(
    path,
    dataset: Dataset,
    extra_attrs: dict | None = None,
    compression: str | None = "gzip",
    chunk_frames: int = 16,
    translation: str = "sample",
) -> Path:
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
        raise InputError(
            f"cannot write {path}: energies must be positive and strictly increasing, got {energies.tolist()}"
        )
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
            d = det.create_dataset(
                "data", data=block, chunks=(min(chunk_frames, idx.size), m, m), compression=compression
            )
            d.attrs["units"] = "counts"
            d.attrs["axes"] = "translation:y:x"
            for name, value in (
                ("distance", dataset.distance),
                ("x_pixel_size", dataset.detector_pixel),
                ("y_pixel_size", dataset.detector_pixel),
            ):
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
        raise _err(
            src,
            None,
            f"no entry at {energy_ev:g} eV (within {EXPORT_ENERGY_TOL_EV:g} eV); nearest: {near} eV "
            f"({en.size} energies, {en.min():.6g} .. {en.max():.6g} eV)",
        )
    ds = read_cxi(src, energies=[k])
    write_cxi(
        out,
        ds,
        extra_attrs={
            "exported_from": os.fspath(src),
            "exported_energy_eV": float(en[k]),
            "translation_convention": translation,
        },
        translation=translation,
    )
    return out, float(en[k]), int(ds.n_frames)


def _scan_summary_stats(path, f, entries: list[_Entry]) -> dict[str, Any]:
    """Per-energy mean counts per frame, mask fraction, scan extent; validates every value
    exactly like :func:`read_cxi` (one entry in memory at a time)."""
    with_illum = _check_illumination_all_or_none(path, entries)
    with_mon = _check_monitor_all_or_none(path, entries)
    from diffxas.data.stxm import beam_masked, brightest_count, whole_counts
    from diffxas.physics.background import darkest_level

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
    return {
        "dose": np.array(dose),
        "masked": np.array(masked),
        "lo": lo,
        "hi": hi,
        "illum_photons": np.array(illum_photons),
        "monitor_rms": np.array(mon_rms),
        "darkest": np.array(dark),
        "brightest": (top, top_pixels, top_frames),
        "whole_counts": counts,
        "beam_hidden": beam_hidden,
    }


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
        f"  frames per energy: {nf.min()}"
        + (f" .. {nf.max()}" if nf.max() != nf.min() else "")
        + f" (total {nf.sum()})",
        f"  frame size M:      {first.frame_size} x {first.frame_size} pixels",
        f"  detector:          distance {first.distance:.4g} m, pixel {_si(first.pixel, 'm')}",
        f"  object pixel:      {_si(dx.min(), 'm')} .. {_si(dx.max(), 'm')}",
        f"  dose:              mean {stats['dose'].mean():.4g} counts per frame in unmasked pixels"
        + (f" ({stats['dose'].min():.4g} .. {stats['dose'].max():.4g} over energies)" if en.size > 1 else ""),
        f"  mask:              {100 * stats['masked'].mean():.3g} % of detector pixels not used",
        f"  darkest pixels:    {stats['darkest'].min():.3g} .. {stats['darkest'].max():.3g} counts per pixel per frame "
        "(darkest 4x4 detector block of the mean frame: coherent signal plus any background; docs/physics.md, "
        '"Detector background")',
        _brightest_line(stats["brightest"], int(nf.sum()), stats["whole_counts"]),
        "  direct beam:       "
        + (
            f"masked (central 3x3 detector pixels) at {stats['beam_hidden']} of {en.size} energies: a beamstop? The "
            "bright-field estimates assume the direct beam is recorded (docs/your-data.md)"
            if stats["beam_hidden"]
            else "recorded (central 3x3 detector pixels used)"
        ),
        "  illumination:      "
        + (
            f"present (mean sum |P|^2 = {stats['illum_photons'].mean():.4g} photons per frame)"
            if stats["illum_photons"].size
            else "absent"
        ),
        "  monitor (I0):      "
        + (
            f"present (frame-to-frame RMS {100 * stats['monitor_rms'].mean():.3g} % of the mean, averaged over energies)"
            if stats["monitor_rms"].size
            else "absent (flux taken as constant within each energy)"
        ),
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
    of whole counts (the criteria of :func:`diffxas.data.stxm.check_saturation`), saturated or
    flagged pixels."""
    from diffxas.data.stxm import looks_saturated

    top, pixels, frames = brightest
    line = f"  brightest count:   {top:.10g} in {pixels} unmasked pixel(s) of {frames} of {n_frames} frames"
    if whole_counts and looks_saturated(top, pixels, frames):
        line += " (a repeated maximum: saturated or flagged pixels? mask them; docs/your-data.md)"
    return line


def _short(v: Any, n: int = 100) -> str:
    s = v if isinstance(v, str) else json.dumps(to_jsonable(v)) if not isinstance(v, np.ndarray) else np.array2string(v)
    s = _one_line(s)
    return s if len(s) <= n else s[: n - 3] + "..."


def _k_edges_line(en) -> str:
    """The K edges (xraydb) inside the scanned energies: the `element` to reconstruct with."""
    from diffxas.physics.scattering import k_edges_between, k_edges_text

    if en.size < 2:
        return "n/a (one energy)"
    c = k_edges_between(float(en.min()), float(en.max()))
    if not c:
        return "none (diffxas models a K edge inside the scan)"
    return k_edges_text(c) + (" -> element = " + (f'"{c[0][0]}"' if len(c) == 1 else "one of them"))
