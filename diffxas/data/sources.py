"""The lazy frame sources' shared protocol (numpy only: importing it loads no JAX).

A lazy source holds no frames in memory and reads them on demand: ``CxiFrames`` (frames
in a CXI file, :mod:`diffxas.data`) and ``OrientedFrames`` (another source seen through a
detector orientation, :mod:`diffxas.data.orientation`). :mod:`diffxas.data.dataset` reads either
kind, or an in-memory array, through ``read_frames`` / ``take_frames``.
"""

from __future__ import annotations

import numpy as np


class LazyFrames:
    """What every lazy frame source shares (:class:`diffxas.data.cxi.CxiFrames`,
    :class:`diffxas.data.orientation.OrientedFrames`): float32 frames ``(n, M, M)``, the
    array-like attributes derived from ``shape``, and ``np.asarray`` through ``read()``.
    A subclass defines ``__len__``, ``shape``, ``read(start, stop, out)``,
    ``take(positions, out)`` and ``__getitem__`` (first-axis views stay lazy)."""

    dtype = np.dtype(np.float32)
    ndim = 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __array__(self, dtype=None, copy=None):
        a = self.read()
        return a if dtype is None else a.astype(dtype, copy=False)
