"""The multi-energy ptychography dataset (frames in memory, or lazily in the CXI file).

Frames of all energies live in one array with an energy index per frame, which keeps
batching over (energy, frame) simple. Units: m for lengths, eV for energies,
photon counts for frames. :mod:`diffxas.data` converts from/to the CXI file (J, CXI
translation sign).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, Int

from diffxas.data.energies import energy_indices as energy_indices
from diffxas.data.energies import even_indices as even_indices
from diffxas.data.energies import index_selection
from diffxas.data.energies import spread_indices as spread_indices
from diffxas.errors import InputError
from diffxas.physics.geometry import Grid, grid_covering, grid_like, object_pixel_size


class Dataset(eqx.Module):
    """Diffraction patterns of all energies.

    Attributes:
        frames: ``Float[Array, "frame M M"]`` photon counts, zero frequency at pixel (M/2, M/2).
            Either an array (numpy/JAX; :func:`diffxas.data.cxi.read_cxi`) or a lazy read-only
            array-like that stays in the file (:class:`diffxas.data.cxi.CxiFrames` from
            :func:`diffxas.data.cxi.open_cxi`: ``shape``, ``read(start, stop)``, ``take(idx)``,
            first-axis views; ``np.asarray(frames)`` reads them all). The selections below
            keep a lazy source lazy.
        positions: ``Float[Array, "frame 2"]`` probe centre (x, y) on the object plane, m
            (= -CXI translation[:, :2]).
        energy_index: ``Int[Array, "frame"]`` index into ``energies`` of each frame.
        energies: ``Float[Array, "energy"]`` photon energies, eV, strictly increasing.
        mask: ``Float[Array, "energy M M"]`` detector weights, 1 = pixel used, 0 = not used.
        illumination: ``Complex[Array, "energy M M"]`` or None: initial probe on each energy's
            object pixel size, sum |P|^2 = photons per frame.
        distance: sample-detector distance, m.
        detector_pixel: detector pixel size, m (square pixels).
        monitor: ``Float[Array, "frame"]`` or None: the incident-flux monitor reading of
            every frame (I0: ion chamber, diode; any unit, only ratios between the frames of
            one energy are used, see :func:`relative_monitor`). None: the flux is taken as
            constant within each energy.
    """

    frames: Float[Array, "frame M M"]
    positions: Float[Array, "frame 2"]
    energy_index: Int[Array, " frame"]
    energies: Float[Array, " energy"]
    mask: Float[Array, "energy M M"]
    illumination: Complex[Array, "energy M M"] | None
    distance: float = eqx.field(static=True)
    detector_pixel: float = eqx.field(static=True)
    monitor: Float[Array, " frame"] | None = None

    def __check_init__(self):
        f = self.frames
        if f.ndim != 3 or f.shape[1] != f.shape[2]:
            raise InputError(f"frames must be (frame, M, M), got shape {tuple(f.shape)}")
        n = f.shape[0]
        if self.positions.shape != (n, 2):
            raise InputError(f"positions must be ({n}, 2), got {tuple(self.positions.shape)}")
        if self.energy_index.shape != (n,):
            raise InputError(f"energy_index must be ({n},), got {tuple(self.energy_index.shape)}")
        k = self.energies.shape[0]
        if self.mask.shape != (k, f.shape[1], f.shape[2]):
            raise InputError(f"mask must be ({k}, M, M), got {tuple(self.mask.shape)}")
        if self.illumination is not None and self.illumination.shape != (k, f.shape[1], f.shape[2]):
            raise InputError(f"illumination must be ({k}, M, M), got {tuple(self.illumination.shape)}")
        if not (self.distance > 0 and self.detector_pixel > 0):
            raise InputError("distance and detector_pixel must be positive")
        if self.monitor is not None:
            if tuple(self.monitor.shape) != (n,):
                raise InputError(f"monitor must be ({n},), one reading per frame, got {tuple(self.monitor.shape)}")
            mon = None if isinstance(self.monitor, jax.core.Tracer) else np.asarray(self.monitor)
            if mon is not None and not (np.all(np.isfinite(mon)) and np.all(mon > 0)):
                bad = int(np.argmin(np.isfinite(mon) & (mon > 0)))
                raise InputError(
                    f"monitor reading of frame {bad} is {mon[bad]:g}; readings must be finite and positive"
                )

    # ---- derived, host side -------------------------------------------------
    @property
    def frame_size(self) -> int:
        return int(self.frames.shape[-1])

    @property
    def n_energies(self) -> int:
        return int(self.energies.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    def pixel_sizes(self) -> np.ndarray:
        """Object pixel size of every energy, m: lambda z / (M p)."""
        return np.asarray(
            object_pixel_size(
                np.asarray(self.energies, np.float64), self.distance, self.detector_pixel, self.frame_size
            )
        )

    def common_grid(self, margin_px: int = 4) -> Grid:
        """The map grid: pixel of the lowest energy (the largest), covering all scans."""
        dx0 = float(self.pixel_sizes().max())
        return grid_covering(np.asarray(self.positions), dx0, self.frame_size, margin_px=margin_px)

    def energy_grids(self, common: Grid | None = None, same_shape: bool = False) -> list[Grid]:
        """Each energy's natural grid, centred like ``common`` and covering at least its field.

        ``same_shape=True``: all grids enlarged to the largest shape around the common
        centre (the solvers batch energies, so they need one array shape).
        """
        common = self.common_grid() if common is None else common
        gs = [grid_like(common, float(d)) for d in self.pixel_sizes()]
        if not same_shape:
            return gs
        ny = max(g.shape[0] for g in gs)
        nx = max(g.shape[1] for g in gs)
        cx, cy = common.center
        return [
            Grid(
                pixel_size=g.pixel_size,
                shape=(ny, nx),
                origin=(cx - 0.5 * (nx - 1) * g.pixel_size, cy - 0.5 * (ny - 1) * g.pixel_size),
            )
            for g in gs
        ]

    def select_energies(self, idx) -> Dataset:
        """A dataset with only the energies ``idx`` (indices into ``energies``: an int, a slice or
        a list, as :func:`diffxas.data.energies.index_selection` reads them), re-indexed.
        InputError (one line) on a non-integer or out-of-range index or an empty selection."""
        idx = np.asarray(index_selection(self.n_energies, idx))
        ei = np.asarray(self.energy_index)
        keep = np.isin(ei, idx)
        remap = -np.ones(self.n_energies, dtype=np.int32)
        remap[idx] = np.arange(idx.size, dtype=np.int32)
        return Dataset(
            frames=self.frames[keep],
            positions=self.positions[keep],
            energy_index=jnp.asarray(remap[ei[keep]]),
            energies=self.energies[idx],
            mask=self.mask[idx],
            illumination=None if self.illumination is None else self.illumination[idx],
            distance=self.distance,
            detector_pixel=self.detector_pixel,
            monitor=None if self.monitor is None else self.monitor[keep],
        )

    def frames_of(self, k: int) -> np.ndarray:
        """Indices of the frames of energy ``k``."""
        return np.nonzero(np.asarray(self.energy_index) == k)[0]

    def half(self, which: str) -> Dataset:
        """Every other frame of each energy (``"even"`` or ``"odd"`` in scan order): the two
        independent halves whose reconstructions give a Fourier-ring-correlation resolution."""
        if which not in ("even", "odd"):
            raise InputError(f"half must be 'even' or 'odd', got {which!r}")
        ei = np.asarray(self.energy_index)
        keep = np.zeros(ei.shape, bool)
        for k in range(self.n_energies):
            idx = np.nonzero(ei == k)[0]
            keep[idx[(0 if which == "even" else 1) :: 2]] = True
        return self.subset(keep)

    def subset(self, keep) -> Dataset:
        """The frames where the boolean ``keep`` (frame,) is true, in their order; all
        energies kept (an energy may be left without frames)."""
        keep = np.asarray(keep, bool)
        return Dataset(
            frames=self.frames[keep],
            positions=self.positions[keep],
            energy_index=self.energy_index[keep],
            energies=self.energies,
            mask=self.mask,
            illumination=self.illumination,
            distance=self.distance,
            detector_pixel=self.detector_pixel,
            monitor=None if self.monitor is None else self.monitor[keep],
        )

    def holdout_mask(self, fraction: float) -> np.ndarray:
        """``(frame,)`` bool: the frames held out of a fit for validation.

        Of each energy's frames in scan order, every n-th with n = round(1 / fraction),
        starting at the (n // 2)-th, so the held-out frames are spread over the scan (a
        raster's neighbours in scan order are neighbours in space) and the scan's first
        frame stays in the fit. Every energy keeps at least one frame in the fit and holds
        out at least one; ``0 < fraction <= 0.5``."""
        if not (0.0 < float(fraction) <= 0.5):
            raise InputError(f"holdout fraction must be in (0, 0.5], got {fraction}")
        n = max(2, int(round(1.0 / float(fraction))))
        ei = np.asarray(self.energy_index)
        held = np.zeros(ei.shape, bool)
        for k in range(self.n_energies):
            idx = np.nonzero(ei == k)[0]
            if idx.size < 2:
                raise InputError(f"energy {k} has {idx.size} frame(s): a hold-out needs at least 2 per energy")
            pick = idx[n // 2 :: n]
            held[pick if pick.size else idx[-1:]] = True
        return held

    def split_holdout(self, fraction: float) -> tuple[Dataset, Dataset]:
        """``(fit, held_out)``: the dataset without and with only :meth:`holdout_mask`'s frames."""
        held = self.holdout_mask(fraction)
        return self.subset(~held), self.subset(held)


def relative_monitor(ds: Dataset) -> np.ndarray:
    """``(F,)`` float64: each frame's incident flux relative to the mean over its energy's
    frames (all ones without a monitor).

    Why per energy: a flux common to all frames of one energy is the same thing as that
    energy's probe amplitude, which every solver fits anyway; only the frame-to-frame
    fluctuation is information the probe cannot carry. The solvers model frame ``f`` as
    ``relative_monitor[f] * |F(P O)|^2`` (joint: a fixed log intensity scale; ePIE: the
    measured amplitudes divided by its square root; bright field: the frame sums divided
    by it).
    """
    n = ds.n_frames
    if ds.monitor is None:
        return np.ones(n, np.float64)
    mon = np.asarray(ds.monitor, np.float64)
    ei = np.asarray(ds.energy_index)
    k = ds.n_energies
    mean = np.bincount(ei, weights=mon, minlength=k) / np.maximum(np.bincount(ei, minlength=k), 1)
    return mon / mean[ei]


# ----------------------------------------------------------------------------- frame sources


def in_memory(frames) -> bool:
    """True for frames held in memory (numpy or JAX array), False for a lazy source."""
    return isinstance(frames, (np.ndarray, jax.Array))


def read_frames(frames, start: int, stop: int) -> np.ndarray:
    """Frames ``start:stop`` of an in-memory array or a lazy source (``read``), float32 on the host."""
    if in_memory(frames):
        return np.asarray(frames[start:stop], np.float32)
    return frames.read(start, stop)


def take_frames(frames, idx) -> np.ndarray:
    """Frames ``idx`` (any order) of an in-memory array or a lazy source (``take``), float32 on the host."""
    idx = np.asarray(idx, np.int64)
    if isinstance(frames, np.ndarray):
        return np.asarray(frames[idx], np.float32)
    if in_memory(frames):  # a JAX array
        return np.asarray(frames[jnp.asarray(idx)], np.float32)
    return frames.take(idx)


def mean_frames(ds, block: int = 256) -> np.ndarray:
    """(K, M, M) float64: each energy's frames averaged over its frames, in the file's
    layout (zero frequency at (M/2, M/2)); counts divided by each frame's relative flux when
    there is a monitor. One pass over the frames (a lazy source is read in ranges)."""
    ei = np.asarray(ds.energy_index)
    m, kn = ds.frame_size, ds.n_energies
    rel = relative_monitor(ds)
    acc = np.zeros((kn, m, m), np.float64)
    for a in range(0, ds.n_frames, block):
        b = min(a + block, ds.n_frames)
        f = read_frames(ds.frames, a, b).astype(np.float64) / rel[a:b, None, None]
        np.add.at(acc, ei[a:b], f)
    n = np.bincount(ei, minlength=kn).astype(np.float64)
    return acc / np.maximum(n, 1.0)[:, None, None]
