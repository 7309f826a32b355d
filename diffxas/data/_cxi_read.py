"""Reading a multi-energy CXI file: into memory (:func:`read_cxi`) or lazily, frames left in
the file and read a range at a time, chunked/compressed datasets included (:func:`open_cxi`,
:class:`CxiFrames`).

Units: energies are eV inside diffxas and J in the CXI file; lengths are m. The CXI sample
translation is the negative of the probe position (``Dataset.positions = -translation[:, :2]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from diffxas.data._cxi_layout import _DET
from diffxas.data._cxi_scan import (
    _check_frames,
    _check_monitor_all_or_none,
    _chosen_entries,
    _load_entry,
    _load_entry_meta,
    _load_monitor,
)
from diffxas.data.dataset import Dataset
from diffxas.data.files import _READ_ERRORS, _dataset, _err, _open_h5
from diffxas.data.nexus import is_nxcxi_ptycho, read_nxcxi_ptycho
from diffxas.data.sources import LazyFrames


def _is_nexus(path) -> bool:
    """True if ``path`` is a NeXus NXcxi_ptycho file (:mod:`diffxas.data.nexus`)."""

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
