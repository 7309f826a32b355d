"""The ePIE's per-energy data: grids, initial probes, frame tables and padded batches, frame
orders, and the host-side gathering of a batched run (objects, probes, background).

Each energy is reconstructed on its own natural grid (``Dataset.energy_grids``, padded to
one shape, same centre), starting from O = 1 and the dataset's illumination (or a KB
probe of ``probe_fwhm`` when absent). Energies are batched with ``vmap`` (frames padded to
equal counts; padded frames have a zero validity flag that makes them exact no-ops in
:func:`diffxas.solvers.twostep.epie_kernel.epoch_fn`).

Imports :mod:`~diffxas.solvers.twostep.epie_config` and
:mod:`~diffxas.solvers.twostep.epie_kernel` (the shift ramps), never the driver.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffxas.data.dataset import Dataset, relative_monitor, take_frames
from diffxas.errors import InputError
from diffxas.physics.background import FLOOR
from diffxas.physics.forward import frame_geometry
from diffxas.physics.geometry import Grid, wavelength
from diffxas.physics.probe import detected_power, kb_probe, numerical_aperture_for_fwhm
from diffxas.solvers.twostep.epie_config import EpieConfig
from diffxas.solvers.twostep.epie_kernel import shift_ramps


def reconstruction_grids(dataset: Dataset, common: Grid | None = None) -> tuple[Grid, list[Grid]]:
    """The common grid and each energy's natural grid, padded to one shape (same centre).

    ``Dataset.energy_grids`` gives each energy's pixel size covering the common field;
    the shapes may differ by a few pixels, so all are enlarged to the largest shape
    around the common centre (needed to batch energies with ``vmap``).
    """
    common = dataset.common_grid() if common is None else common
    out = dataset.energy_grids(common, same_shape=True)
    return common, out


def initial_probes(
    dataset: Dataset, grids: list[Grid], probe_fwhm: float = 300e-9, use_illumination: bool = True
) -> np.ndarray:
    """Initial probe of each energy (K, M, M) complex64 on its own pixel size.

    The dataset's illumination when present (and ``use_illumination``); otherwise a KB focus of ``probe_fwhm`` (at
    the lowest energy; the numerical aperture is fixed, so it scales with lambda),
    scaled so that its far field on the used detector pixels holds the mean masked counts
    of a frame of that energy.
    """
    if dataset.illumination is not None and use_illumination:
        return np.asarray(dataset.illumination, np.complex64)
    m = dataset.frame_size
    e = np.asarray(dataset.energies, np.float64)
    na = numerical_aperture_for_fwhm(probe_fwhm, float(wavelength(e.min())))
    mask = np.asarray(dataset.mask)
    out = np.zeros((len(e), m, m), np.complex64)
    for k in range(len(e)):  # one energy's frames at a time (a lazy source is read, never all at once)
        idx = dataset.frames_of(k)
        # the mean masked counts of a frame, matched on the same used detector pixels of
        # the probe's far field (probe.detected_power)
        counts = float((take_frames(dataset.frames, idx) * mask[k]).sum(axis=(1, 2)).mean()) if idx.size else 1.0
        p = kb_probe(m, grids[k].pixel_size, float(wavelength(e[k])), na, photons=1.0)
        out[k] = p * np.sqrt(max(counts, 1.0) / max(float(detected_power(p, mask[k])), 1e-30))
    return out


@dataclasses.dataclass
class _Batch:
    """Device arrays of one batch of energies (padded to the same frame count)."""

    energies: np.ndarray  # indices into the dataset's energies
    corners: jax.Array
    rows: jax.Array
    cols: jax.Array
    counts: jax.Array
    mask: jax.Array
    valid: jax.Array
    n_frames: np.ndarray  # real frames per energy
    #: every real frame of each energy has the sub-pixel offset of its first frame (e.g. all
    #: on the pixel grid): the epoch takes the 2-FFT route (:func:`~diffxas.solvers.twostep.epie_kernel._epoch_single`)
    common_offset: bool = False


def _frame_tables(dataset: Dataset, grids: list[Grid]):
    """Per energy: frame indices, corners and fracs on its grid."""
    pos = np.asarray(dataset.positions, np.float64)
    m = dataset.frame_size
    out = []
    for k, g in enumerate(grids):
        idx = dataset.frames_of(k)
        if idx.size == 0:
            raise InputError(f"energy {float(dataset.energies[k]):.1f} eV has no frames")
        corner, frac = frame_geometry(pos[idx], g, m)
        out.append((idx, corner, frac))
    return out


#: Sub-pixel offsets (pixels) that differ by at most this are taken as one (the first
#: frame's), so that an energy scanned on the pixel grid takes the 2-FFT route of
#: :func:`~diffxas.solvers.twostep.epie_kernel._epoch_single` although float32
#: positions put its offsets ~1e-6 pixel apart. 1e-3 pixel (0.05 nm at 50 nm pixels) is
#: far below any scan's position accuracy; the probe phase it changes is at most
#: 2 pi 0.5e-3 = 3e-3 rad at the Nyquist frequency.
OFFSET_TOL = 1e-3


def _make_batches(dataset: Dataset, tables, batch: int | None) -> list[_Batch]:
    k_all = len(tables)
    bsz = k_all if batch is None else min(batch, k_all)
    n_max = max(t[0].size for t in tables)
    m = dataset.frame_size
    frames = np.asarray(dataset.frames, np.float32)
    mask = np.asarray(dataset.mask, np.float32)
    # incident-flux monitor: frame f is modelled as rel[f] |F(P O)|^2, so its amplitude
    # projection uses sqrt(n / rel[f]) (= the counts divided by rel[f]; exact for the
    # amplitude loss up to a per-frame weight of rel[f], which changes nothing at the fixed point)
    rel = relative_monitor(dataset).astype(np.float32)
    out = []
    for s in range(0, k_all, bsz):
        ks = np.arange(s, min(s + bsz, k_all))
        b = len(ks)
        corners = np.zeros((b, n_max, 2), np.int32)
        fracs = np.zeros((b, n_max, 2), np.float32)
        counts = np.zeros((b, n_max, m, m), np.float32)
        valid = np.zeros((b, n_max), np.float32)
        nf = np.zeros(b, np.int64)
        same = True
        for i, k in enumerate(ks):
            idx, corner, frac = tables[k]
            n = idx.size
            corners[i, :n] = corner
            corners[i, n:] = corner[0]  # padded frames: a legal patch, zero validity
            if np.max(np.abs(frac - frac[0])) <= OFFSET_TOL:
                frac = np.broadcast_to(frac[0], frac.shape)  # one offset (see OFFSET_TOL)
            else:
                same = False
            fracs[i, :n] = frac
            fracs[i, n:] = frac[0]  # padded frames: the first frame's offset (no-ops either way)
            # uncentred layout (zero frequency at (0, 0)): the epoch needs no per-frame fftshift
            counts[i, :n] = np.fft.ifftshift(frames[idx] / rel[idx, None, None], axes=(-2, -1))
            valid[i, :n] = 1.0
            nf[i] = n
        rows, cols = shift_ramps(fracs.reshape(-1, 2), m)
        out.append(
            _Batch(
                energies=ks,
                corners=jnp.asarray(corners),
                rows=jnp.asarray(rows.reshape(b, n_max, m)),
                cols=jnp.asarray(cols.reshape(b, n_max, m)),
                counts=jnp.asarray(counts),
                mask=jnp.asarray(mask[ks]),
                valid=jnp.asarray(valid),
                n_frames=nf,
                common_offset=same,
            )
        )
    return out


def frame_orders(seed: int, epoch: int, n_frames: int, energies) -> jax.Array:
    """Random frame order of every energy for one epoch, ``(len(energies), n_frames)`` int32.

    Each frame ``j`` of energy ``E`` draws a uniform key from ``jax.random`` keyed by
    (seed, epoch, E in centi-eV, j) and frames are visited in key order. The real frames'
    order therefore does not depend on how many padded frames follow them, nor on which
    other energies are in the dataset, and a resumed run repeats it.
    """
    tags = jnp.asarray(np.round(np.asarray(energies, np.float64) * 100).astype(np.int64) % (2**31), jnp.int32)
    # one jitted call (eager, the key arithmetic cost ~7 ms of CPU per epoch: 20 % of a
    # 400-frame 64 x 64 pass); the same jax.random operations, the same orders
    return _frame_orders_jit(jnp.int32(seed), jnp.int32(epoch), tags, int(n_frames))


@functools.partial(jax.jit, static_argnums=(3,))
def _frame_orders_jit(seed, epoch, tags, n_frames: int):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)

    def one(tag):
        ke = jax.random.fold_in(key, tag)
        u = jax.vmap(lambda j: jax.random.uniform(jax.random.fold_in(ke, j)))(jnp.arange(n_frames))
        return jnp.argsort(u)

    return jax.vmap(one)(tags).astype(jnp.int32)


def _background_em(share, b: _Batch, mode: str) -> jax.Array:
    """One expectation-maximisation step of the background (objects and probes held): the
    mean over the energy's frames (and, for "flat", its used pixels) of the background's
    expected share of the counts, ``n b / (|F psi|^2 + b)`` (``share``: its sum over frames)."""
    nf = jnp.asarray(np.maximum(b.n_frames, 1), jnp.float32)[:, None, None]
    if mode == "map":
        # unused pixels keep their level (they have no counts to estimate it from)
        return jnp.where(b.mask > 0, share / nf, jnp.zeros_like(share)) + jnp.where(b.mask > 0, 0.0, 1.0) * FLOOR
    used = jnp.maximum(jnp.sum(b.mask > 0, axis=(1, 2)), 1)[:, None, None]
    level = jnp.sum(share, axis=(1, 2), keepdims=True) / (nf * used)
    return jnp.broadcast_to(level, share.shape)


def _gather_background(bgm, batches, kn: int, config: EpieConfig) -> np.ndarray | None:
    if config.background == "none":
        return None
    out = np.zeros((kn,) + tuple(bgm[0].shape[1:]), np.float32)
    for g, b in zip(bgm, batches):
        out[b.energies] = np.asarray(g)
    return out[:, 0, 0].copy() if config.background == "flat" else out


def _gather(objs, batches, kn) -> np.ndarray:
    first = np.asarray(objs[0])
    out = np.zeros((kn,) + first.shape[1:], np.complex64)
    for o, b in zip(objs, batches):
        out[b.energies] = np.asarray(o)
    return out


def _gather_probes(phat, batches, kn) -> np.ndarray:
    return _gather([jnp.fft.ifft2(p) for p in phat], batches, kn)
