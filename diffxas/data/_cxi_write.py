"""Writing CXI 1.6 files: a whole multi-energy dataset (:func:`write_cxi`) and one energy as a
plain single-entry file for single-energy ptychography codes (:func:`export_cxi_entry`).

Every file is written atomically (to a temporary file in the target directory, then
:func:`os.replace`), so a failing or interrupted write never leaves a partial file.
Units: energies eV in, J in the file; lengths m.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np

from diffxas import __version__
from diffxas.data._cxi_layout import (
    _DET,
    _MON,
    _PROBE_CONVENTION,
    _SRC,
    _TRANS,
    _TRANSLATION_SIGN,
    CXI_PIXEL_IS_INVALID,
    CXI_VERSION,
)
from diffxas.data._cxi_read import read_cxi
from diffxas.data._cxi_scan import _scan_cxi
from diffxas.data.dataset import Dataset
from diffxas.data.files import _atomic_h5, _err, _open_h5, _set_attr
from diffxas.errors import InputError
from diffxas.physics.constants import ELEMENTARY_CHARGE


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
