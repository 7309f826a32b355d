"""Validation of a CXI file's structure and metadata, and reading one entry's small datasets.

Every check raises :class:`diffxas.errors.InputError` with one line naming the file, the
HDF5 entry and the dataset of the first problem. Shared by the eager reader, the lazy
reader and ``diffxas info`` (:mod:`diffxas.data._cxi_read`, :mod:`diffxas.data._cxi_summary`).
Units: energies J in the file, eV returned; lengths m.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

from diffxas.data._cxi_layout import (
    _DATA,
    _DET,
    _DISTANCE_MAX_M,
    _ENERGY_MAX_J,
    _ENERGY_MIN_J,
    _ENTRY_RE,
    _MASK_MIN_USED,
    _MON,
    _PIXEL_MAX_M,
    _PROBE_CONVENTION,
    _SRC,
    _TRANS,
    _TRANSLATION_MAX_M,
    _Entry,
    cxi_mask_weights,
)
from diffxas.data.energies import index_selection
from diffxas.data.files import (
    _READ_ERRORS,
    _attr_value,
    _check_dtype,
    _dataset,
    _err,
    _group,
    _read,
    _scalar,
)
from diffxas.errors import InputError
from diffxas.physics.constants import ELEMENTARY_CHARGE, HC_EV_M


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
    """0-based entry indices selected by ``energies`` (None, int, slice or sequence of ints):
    :func:`diffxas.data.energies.index_selection`, its errors prefixed with the file."""
    try:
        return index_selection(n_entries, energies)
    except InputError as exc:
        raise _err(path, None, str(exc)) from None


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
