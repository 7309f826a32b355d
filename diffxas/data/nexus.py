"""Multi-energy NeXus ``NXcxi_ptycho`` files: one NXentry per photon energy.

``NXcxi_ptycho`` is the NeXus application definition of a ptychography scan (compatible
with CXI 1.6). Beamlines that write it for a spectroscopic scan write one ``NXentry`` per
energy. :func:`read_nxcxi_ptycho` reads such a file into the same
:class:`diffxas.data.dataset.Dataset` as :func:`diffxas.data.cxi.read_cxi`; ``read_cxi``, ``open_cxi``
and ``diffxas info`` dispatch here by content (:func:`is_nxcxi_ptycho`: a root group with
``NX_class = "NXentry"`` whose ``definition`` is ``NXcxi_ptycho``, or ``NXptycho`` as
early versions of the definition say), whatever the entries are called.

What is read from each NXentry (groups found by their ``NX_class``, the CXI names
``instrument_1``, ``detector_1``, ... preferred where several exist):

* frames: ``NXdetector/data``, shape (N, M, M) (arbitrary scan) or (npts_x, npts_y, M, M)
  (raster; flattened in C order, the order of the definition's (npts_x*npts_y, 3)
  translation);
* photon energy: ``NXbeam/incident_energy``, ``energy`` or ``incident_beam_energy``, or
  else ``incident_wavelength``, with their ``units`` (eV, keV, J; m, nm, Angstrom).
  ``NXsource/energy`` is *not* used: the definition says it is the energy of the
  machine (e.g. 3 GeV), not of the photons;
* geometry: ``NXdetector`` ``distance``, ``x_pixel_size``, ``y_pixel_size`` with units;
* positions: ``NXdetector/translation`` (N, 3) (or its links ``data_1/translation``,
  ``sample_1/geometry_1/translation``), else the sample motors ``NXsample/transformations``
  ``x`` and ``y``; both are sample positions (CXI's meaning), so the probe centre is
  ``-(x, y)`` as in :mod:`diffxas.data`;
* mask (optional): ``NXdetector/pixel_mask`` (NeXus bits: every defined bit is a defect,
  so any set bit excludes the pixel) or ``mask`` (CXI 1.6 bits, as ``read_cxi``);
* monitor (optional): ``NXmonitor/data``, one reading per frame.

Missing ``units`` are taken as SI (the definition asks for SI units to stay CXI
compatible); every value then passes :mod:`diffxas.data`'s plausibility checks. Every
problem is one :class:`diffxas.errors.InputError` line naming the file and HDF5 path.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (compressed detector data, as in diffxas.data)
import numpy as np

from diffxas.data._cxi_layout import cxi_mask_weights
from diffxas.data._cxi_scan import _check_frames, _select
from diffxas.data.dataset import Dataset
from diffxas.data.files import _err as io_err
from diffxas.data.files import _open_h5, _read
from diffxas.data.files import _scalar as io_scalar
from diffxas.errors import InputError
from diffxas.physics.constants import ELEMENTARY_CHARGE, HC_EV_M

__all__ = ["DEFINITIONS", "is_nxcxi_ptycho", "nexus_entries", "nexus_summary", "read_nxcxi_ptycho"]

#: ``definition`` values read as NXcxi_ptycho (the early contributed version said NXptycho).
DEFINITIONS = ("NXcxi_ptycho", "NXptycho")

_LENGTH = {
    "m": 1.0,
    "metre": 1.0,
    "meter": 1.0,
    "mm": 1e-3,
    "um": 1e-6,
    "µm": 1e-6,
    "micron": 1e-6,
    "microns": 1e-6,
    "nm": 1e-9,
    "angstrom": 1e-10,
    "a": 1e-10,
    "å": 1e-10,
    "pm": 1e-12,
}
_ENERGY_EV = {"ev": 1.0, "kev": 1e3, "j": 1.0 / ELEMENTARY_CHARGE, "mev": 1e6}
#: NeXus pixel_mask: every bit the NXdetector base class defines (0 gap, 1 dead, 2 under-
#: and 3 over-responding, 4 noisy, 6 cluster, 8 user mask, 31 virtual) is a defect.


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return _text(value.ravel()[0]) if value.size else ""
    return str(value)


def _nx_class(obj) -> str:
    return _text(obj.attrs.get("NX_class", "")) if obj is not None else ""


def _definition(g: h5py.Group) -> str:
    d = g.get("definition")
    if isinstance(d, h5py.Dataset):
        try:
            return _text(d[()]).strip()
        except (OSError, ValueError, TypeError):
            return ""
    return ""


def nexus_entries(f: h5py.File) -> list[str]:
    """Names of the root NXentry groups whose definition is NXcxi_ptycho (file order)."""
    out = []
    for name in f:
        try:
            g = f.get(name)
        except (OSError, KeyError, RuntimeError):
            continue
        if isinstance(g, h5py.Group) and _nx_class(g) == "NXentry" and _definition(g) in DEFINITIONS:
            out.append(name)
    return out


def is_nxcxi_ptycho(f: h5py.File) -> bool:
    """True if the open file holds at least one NXcxi_ptycho NXentry."""
    return bool(nexus_entries(f))


def _child(path, g: h5py.Group, nx_class: str, prefer: str, required: bool = True):
    """The child group of class ``nx_class`` (the one called ``prefer`` if several)."""
    if isinstance(g.get(prefer), h5py.Group):
        return g[prefer]
    found = [g[k] for k in g if isinstance(g.get(k), h5py.Group) and _nx_class(g[k]) == nx_class]
    if found:
        return found[0]
    if required:
        raise _err(path, g.name, f"no {nx_class} group (NXcxi_ptycho needs {prefer})")
    return None


def _err(path, where, msg) -> InputError:
    return io_err(path, where, msg)


def _units(ds: h5py.Dataset) -> str:
    return _text(ds.attrs.get("units", "")).strip()


def _length_scale(path, ds: h5py.Dataset) -> float:
    u = _units(ds)
    if not u:
        return 1.0  # SI, as the definition asks for CXI compatibility
    s = _LENGTH.get(u, _LENGTH.get(u.lower()))
    if s is None:
        raise _err(path, ds.name, f"unknown length unit {u!r} (m, mm, um, nm, angstrom)")
    return s


def _scalar(path, g: h5py.Group, name: str) -> tuple[float, h5py.Dataset]:
    return io_scalar(path, g, name), g[name]


def _energy_ev(path, entry: h5py.Group, instrument: h5py.Group) -> float:
    beam = _child(path, instrument, "NXbeam", "beam_1", required=False)
    if beam is None:
        beam = _child(path, entry, "NXbeam", "beam_1", required=False)
    where = instrument.name + "/beam_1"
    if beam is not None:
        for name in ("incident_energy", "energy", "incident_beam_energy"):
            if name in beam:
                v, ds = _scalar(path, beam, name)
                u = _units(ds) or "J"
                scale = _ENERGY_EV.get(u.lower())
                if scale is None:
                    raise _err(path, ds.name, f"unknown energy unit {u!r} (eV, keV, J)")
                ev = v * scale
                if not (10.0 <= ev <= 6.2e6):
                    raise _err(
                        path,
                        ds.name,
                        f"photon energy {v:g} {u} ({ev:.4g} eV) is not a plausible X-ray "
                        "energy (check the units attribute)",
                    )
                return ev
        if "incident_wavelength" in beam:
            v, ds = _scalar(path, beam, "incident_wavelength")
            lam = v * _length_scale(path, ds)
            ev = HC_EV_M / lam if lam > 0 else -1.0
            if not (10.0 <= ev <= 6.2e6):
                raise _err(
                    path,
                    ds.name,
                    f"wavelength {v:g} {_units(ds) or 'm'} is not a plausible X-ray wavelength "
                    "(check the units attribute)",
                )
            return ev
        where = beam.name
    raise _err(
        path,
        where,
        "no photon energy (NXbeam incident_energy, energy or incident_wavelength; the "
        "NXsource energy is the machine's, not the photons')",
    )


def _real(path, ds: h5py.Dataset) -> np.ndarray:
    """``ds`` as float64, or a one-line error when it does not hold real numbers."""
    if ds.dtype.kind not in "biuf":
        raise _err(path, ds.name, f"has dtype {ds.dtype}, expected real numbers")

    return _read(path, ds, dtype=np.float64)


def _positions(path, entry: h5py.Group, det: h5py.Group, n: int) -> np.ndarray:
    """Probe centres (n, 2) in m: -(x, y) of the sample translation or motors."""
    for g, name in ((det, "translation"), (entry, "data_1/translation"), (entry, "sample_1/geometry_1/translation")):
        ds = g.get(name)
        if isinstance(ds, h5py.Dataset):
            tr = _real(path, ds) * _length_scale(path, ds)
            if tr.shape != (n, 3) and tr.shape != (n, 2):
                raise _err(path, ds.name, f"must have shape ({n}, 3), one row per frame, got {tr.shape}")
            return -tr[:, :2]
    sample = _child(path, entry, "NXsample", "sample_1", required=False)
    tf = None if sample is None else sample.get("transformations")
    if isinstance(tf, h5py.Group) and isinstance(tf.get("x"), h5py.Dataset) and isinstance(tf.get("y"), h5py.Dataset):
        xy = []
        for ax in ("x", "y"):
            ds = tf[ax]
            v = _real(path, ds).ravel() * _length_scale(path, ds)
            if v.size != n:
                raise _err(path, ds.name, f"has {v.size} positions for {n} frames")
            xy.append(v)
        return -np.stack(xy, axis=1)
    raise _err(path, det.name + "/translation", "missing dataset (no translation and no sample_1/transformations x, y)")


def _read_entry(path, f: h5py.File, name: str):
    """One NXentry: (energy eV, frames (N, M, M) float32, positions (N, 2), mask weights
    (M, M), distance m, pixel m, monitor (N,) or None)."""

    entry = f[name]
    inst = _child(path, entry, "NXinstrument", "instrument_1")
    det = _child(path, inst, "NXdetector", "detector_1")
    energy = _energy_ev(path, entry, inst)
    ds = det.get("data")
    if not isinstance(ds, h5py.Dataset):
        raise _err(path, det.name + "/data", "missing dataset")
    if ds.dtype.kind not in "iuf":
        raise _err(path, ds.name, f"has dtype {ds.dtype}, expected real photon counts")
    if ds.ndim == 4:
        shape = (ds.shape[0] * ds.shape[1],) + ds.shape[2:]
    elif ds.ndim == 3:
        shape = ds.shape
    else:
        raise _err(path, ds.name, f"must have shape (N, M, M) or (npts_x, npts_y, M, M), got {ds.shape}")
    n, m = int(shape[0]), int(shape[1])
    if shape[1] != shape[2] or n < 1 or m < 2:
        raise _err(path, ds.name, f"frames must be square and non-empty, got {ds.shape}")
    frames = _read(path, ds, dtype=np.float32).reshape(n, m, m)
    _check_frames(path, ds, frames)
    geo = {}
    for key in ("distance", "x_pixel_size", "y_pixel_size"):
        v, d = _scalar(path, det, key)
        geo[key] = v * _length_scale(path, d)
    if not (0 < geo["distance"] <= 1e3):
        raise _err(path, det.name + "/distance", f"distance {geo['distance']:g} m is not plausible")
    for key in ("x_pixel_size", "y_pixel_size"):
        if not (0 < geo[key] <= 1e-2):
            raise _err(path, f"{det.name}/{key}", f"pixel size {geo[key]:g} m is not plausible")
    if not math.isclose(geo["x_pixel_size"], geo["y_pixel_size"], rel_tol=1e-6):
        raise _err(path, det.name + "/y_pixel_size", "non-square pixels")
    pos = _positions(path, entry, det, n)
    if not np.isfinite(pos).all() or np.abs(pos).max() > 1.0:
        raise _err(path, det.name + "/translation", "positions not finite or beyond 1 m (check the units attribute)")
    weights = np.ones((m, m), np.float32)
    for key, nexus_bits in (("pixel_mask", True), ("mask", False)):
        mk = det.get(key)
        if isinstance(mk, h5py.Dataset):
            a = _real(path, mk).astype(np.int64) if mk.dtype.kind in "iu" else _real(path, mk)
            if a.shape != (m, m):
                raise _err(path, mk.name, f"must have shape ({m}, {m}), got {a.shape}")
            weights = (a == 0).astype(np.float32) if nexus_bits else cxi_mask_weights(a)
            if weights.mean() < 0.1:
                raise _err(path, mk.name, f"excludes {100 * (1 - weights.mean()):.1f} % of the pixels (inverted?)")
            break
    monitor = None
    mon = _child(path, inst, "NXmonitor", "monitor_1", required=False) or _child(
        path, entry, "NXmonitor", "monitor_1", required=False
    )
    if mon is not None and isinstance(mon.get("data"), h5py.Dataset):
        mo = _real(path, mon["data"]).ravel()
        if mo.size != n or not (np.isfinite(mo).all() and (mo > 0).all()):
            raise _err(path, mon["data"].name, f"must hold {n} finite positive readings, one per frame")
        monitor = mo
    return energy, frames, pos, weights, geo["distance"], geo["x_pixel_size"], monitor


def read_nxcxi_ptycho(path, energies=None) -> Dataset:
    """Read a multi-energy NXcxi_ptycho file (one NXentry per energy) into a Dataset.

    Same result layout as :func:`diffxas.data.cxi.read_cxi`: entries sorted by energy, each
    entry's frames in file order, positions = probe centres in m, energies in eV, mask
    weights (1 = use). ``energies`` selects entries by 0-based index into the sorted
    entries (None, int, slice or list). Raises InputError (one line) on any problem.
    """

    path = Path(path)
    with _open_h5(path) as f:
        names = nexus_entries(f)
        if not names:
            raise _err(path, None, "no NXentry with definition NXcxi_ptycho")
        read = [(_read_entry(path, f, nm), nm) for nm in names]
    read.sort(key=lambda r: r[0][0])
    for (a, na), (b, nb) in itertools.pairwise(read):
        if not b[0] > a[0]:
            raise _err(path, f"/{nb}", f"two entries at one energy: {b[0]:.6g} eV, also in /{na}")
    first = read[0][0]
    for r, nm in read[1:]:
        if r[1].shape[1:] != first[1].shape[1:]:
            raise _err(path, f"/{nm}", f"frame size {r[1].shape[1]} differs from {first[1].shape[1]}")
        if not (math.isclose(r[4], first[4], rel_tol=1e-9) and math.isclose(r[5], first[5], rel_tol=1e-9)):
            raise _err(path, f"/{nm}", "detector distance or pixel size differs between entries")
    chosen = [read[i][0] for i in _select(path, len(read), energies)]
    mons = [c[6] for c in chosen]
    if any(m is None for m in mons) and not all(m is None for m in mons):
        raise _err(path, None, "a monitor (NXmonitor data) is given for some energies only")
    return Dataset(
        frames=np.concatenate([c[1] for c in chosen]),
        positions=np.concatenate([c[2] for c in chosen]).astype(np.float64),
        energy_index=np.concatenate([np.full(len(c[1]), k, np.int32) for k, c in enumerate(chosen)]),
        energies=np.array([c[0] for c in chosen], np.float64),
        mask=np.stack([c[3] for c in chosen]).astype(np.float32),
        illumination=None,
        distance=float(first[4]),
        detector_pixel=float(first[5]),
        monitor=None if mons[0] is None else np.concatenate(mons),
    )


def nexus_summary(path) -> str:
    """``diffxas info`` for an NXcxi_ptycho file (validates like :func:`read_nxcxi_ptycho`)."""
    ds = read_nxcxi_ptycho(path)
    e = np.asarray(ds.energies)
    counts = np.bincount(np.asarray(ds.energy_index), minlength=e.size)
    used = np.asarray(ds.mask)[np.asarray(ds.energy_index)] > 0
    dose = float(np.where(used, np.asarray(ds.frames), 0).sum(dtype=np.float64)) / counts.sum()
    m = ds.frames.shape[-1]
    return "\n".join(
        [
            f"{path}: multi-energy NeXus NXcxi_ptycho file",
            f"  energies:          {e.size} entries, {e[0]:.2f} .. {e[-1]:.2f} eV",
            f"  frames per energy: {counts.min()}"
            + (f" .. {counts.max()}" if counts.max() != counts.min() else "")
            + f" (total {counts.sum()})",
            f"  frame size M:      {m} x {m} pixels",
            f"  detector:          distance {ds.distance:.4g} m, pixel {ds.detector_pixel:.4g} m",
            f"  dose:              mean {dose:.4g} counts per frame in unmasked pixels",
            f"  mask:              {100 * (1 - np.asarray(ds.mask).mean()):.3g} % of detector pixels not used",
        ]
    )
