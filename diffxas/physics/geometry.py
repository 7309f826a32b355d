"""Energy, wavelength, object-plane sampling and object grids.

Conventions (used everywhere in diffxas):

* A :class:`Grid` is a regular square-pixel grid on the object plane. Pixel ``[r, c]``
  (row, column) has its centre at ``(x, y) = (origin[0] + c * pixel_size,
  origin[1] + r * pixel_size)``: x runs along columns, y along rows, metres.
* A frame's probe centre lies at object coordinate ``(x, y) = -translation[:, :2]``
  (CXI sample translation); diffxas stores this *probe position* directly
  (``Dataset.positions``) so that no sign flip happens anywhere else.
* The object-plane pixel of a far-field frame of ``M x M`` detector pixels of size
  ``p`` at distance ``z`` is ``lambda z / (M p)``; it changes with energy (2.2 %
  between 5420 and 5540 eV), so each energy has its own natural grid, and all
  energies share one *common grid* (the map grid) whose pixel is the largest of them
  (lowest energy). Resampling between them is exact for band-limited fields (see
  :mod:`diffxas.physics.forward`).
"""

from __future__ import annotations

import math

import equinox as eqx
import numpy as np

from diffxas.errors import ConfigError
from diffxas.physics.constants import HC_EV_M


def wavelength(energy_ev):
    """Photon wavelength in m for energy in eV: lambda = h c / E (works on arrays)."""
    return HC_EV_M / energy_ev


def energy_from_wavelength(wavelength_m):
    """Photon energy in eV for wavelength in m."""
    return HC_EV_M / wavelength_m


def object_pixel_size(energy_ev, distance_m: float, detector_pixel_m: float, frame_size: int):
    """Object-plane pixel size (m) of a far-field frame: lambda z / (M p)."""
    return wavelength(energy_ev) * distance_m / (frame_size * detector_pixel_m)


class Grid(eqx.Module):
    """A regular grid on the object plane (host-side description, static under jit).

    Attributes:
        pixel_size: pixel pitch, m.
        shape: (ny, nx).
        origin: (x, y) of the centre of pixel [0, 0], m.
    """

    pixel_size: float = eqx.field(static=True)
    shape: tuple[int, int] = eqx.field(static=True)
    origin: tuple[float, float] = eqx.field(static=True)

    def __check_init__(self):
        if not (self.pixel_size > 0 and math.isfinite(self.pixel_size)):
            raise ConfigError(f"grid pixel_size must be positive and finite, got {self.pixel_size}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ConfigError(f"grid shape must be two positive integers, got {self.shape}")

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the pixel *edges*, m (for imshow)."""
        h = 0.5 * self.pixel_size
        x0, y0 = self.origin
        ny, nx = self.shape
        return (x0 - h, x0 + (nx - 0.5) * self.pixel_size, y0 - h, y0 + (ny - 0.5) * self.pixel_size)

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) of the geometric centre of the grid, m."""
        ny, nx = self.shape
        return (self.origin[0] + 0.5 * (nx - 1) * self.pixel_size, self.origin[1] + 0.5 * (ny - 1) * self.pixel_size)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """1-D pixel-centre coordinates (x of columns, y of rows), m."""
        ny, nx = self.shape
        x = self.origin[0] + self.pixel_size * np.arange(nx)
        y = self.origin[1] + self.pixel_size * np.arange(ny)
        return x, y

    def to_pixels(self, xy):
        """Continuous (row, col) pixel coordinates of points ``xy[..., (x, y)]`` in m."""
        xy = np.asarray(xy, dtype=np.float64)
        col = (xy[..., 0] - self.origin[0]) / self.pixel_size
        row = (xy[..., 1] - self.origin[1]) / self.pixel_size
        return np.stack([row, col], axis=-1)


def grid_covering(positions_m, pixel_size: float, frame_size: int, margin_px: int = 2, center=None) -> Grid:
    """Smallest grid of ``pixel_size`` that holds every ``frame_size`` patch around ``positions_m``.

    Args:
        positions_m: probe centres, (frame, 2) as (x, y), m.
        pixel_size: m.
        frame_size: M (patch side, pixels).
        margin_px: extra pixels on every side (room for sub-pixel shifts and position refinement).
        center: (x, y) to centre the grid on; default the centre of the positions' bounding box.
    """
    pos = np.asarray(positions_m, dtype=np.float64).reshape(-1, 2)
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    if center is None:
        center = 0.5 * (lo + hi)
    center = np.asarray(center, dtype=np.float64)
    half_span = np.maximum(np.abs(hi - center), np.abs(lo - center))  # m, (x, y)
    n = 2 * np.ceil(half_span / pixel_size + 0.5 * frame_size + 1 + margin_px).astype(int)
    nx, ny = int(n[0]), int(n[1])
    origin = (float(center[0] - 0.5 * (nx - 1) * pixel_size), float(center[1] - 0.5 * (ny - 1) * pixel_size))
    return Grid(pixel_size=float(pixel_size), shape=(ny, nx), origin=origin)


def grid_like(grid: Grid, pixel_size: float, margin_px: int = 0) -> Grid:
    """A grid of another pixel size covering (at least) the same field, with the same centre."""
    ny, nx = grid.shape
    wy, wx = ny * grid.pixel_size, nx * grid.pixel_size
    nx2 = int(2 * math.ceil(0.5 * wx / pixel_size) + 2 * margin_px)
    ny2 = int(2 * math.ceil(0.5 * wy / pixel_size) + 2 * margin_px)
    cx, cy = grid.center
    origin = (cx - 0.5 * (nx2 - 1) * pixel_size, cy - 0.5 * (ny2 - 1) * pixel_size)
    return Grid(pixel_size=float(pixel_size), shape=(ny2, nx2), origin=origin)
