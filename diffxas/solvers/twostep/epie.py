r"""ePIE: per-energy ptychographic reconstruction (step one of the two-step baseline).

Maiden & Rodenburg, Ultramicroscopy 109, 1256 (2009). For every frame ``j`` (visited
sequentially, in a fresh random order every epoch)::

    psi   = P_j O_j                        (P_j: probe Fourier-shifted by the frame's frac,
                                            O_j: object patch at the frame's integer corner)
    psi'  = amplitude_projection(psi, counts_j, mask)
    O_j  += alpha conj(P_j) / max|P_j|^2 (psi' - psi)
    P    += shift_{-frac_j}[ beta conj(O_j) / max|O_j|^2 (psi' - psi) ]

Sub-pixel positions follow :mod:`diffxas.physics.forward` exactly: the patch is cut at the
integer corner (``frame_geometry``), the probe is shifted by ``frac`` in the Fourier
domain, and the probe update, computed in the shifted frame, is shifted back by
``-frac`` before it is added to the unshifted probe. The probe is carried as its
spectrum ``P_hat = fft2(P)`` so that the shift and the shift-back cost one FFT each
(``ifft2(P_hat * ramp)`` is :func:`forward.shifted_probe`; the ramps are derived from
``forward.shifted_probe`` itself, so the convention cannot drift, see
:func:`shift_ramps`). When every frame of an energy has the same sub-pixel offset (a scan
on the pixel grid: offset 0) the probe is shifted once per epoch instead and carried in
real space: 2 FFTs per frame instead of 4, the same result to round-off
(:func:`_epoch_single`, ``EpieConfig.per_frame_shift``). The counts are kept uncentred
(zero frequency at (0, 0)), so no frame pays an fftshift.

The ePIE object increment is a scaled steepest-descent step of the amplitude loss
``L = sum w (|F psi| - sqrt(n))^2``: by Parseval ``dL/d(psi*) = psi - psi'``, hence
``Delta O = -alpha / max|P|^2 dL/d(O*)``; with JAX's convention (``jax.grad`` of a real
function of a complex array returns ``conj(2 dL/d(O*))``) that is
``Delta O = -alpha / (2 max|P|^2) conj(jax.grad(L)(O))`` (tests/test_epie.py checks it).
The loss logged per epoch is ``sum_j ||psi'_j - psi_j||^2``, which equals the amplitude
loss of the frames (before each frame's update) by Parseval.

Each energy is reconstructed on its own natural grid (``Dataset.energy_grids``, padded to
one shape, same centre), starting from O = 1 and the dataset's illumination (or a KB
probe of ``probe_fwhm`` when absent). One energy's epoch is one jitted ``lax.scan`` over
its shuffled frames; energies are batched with ``vmap`` (frames padded to equal counts;
padded frames have a zero validity flag that makes them exact no-ops).

The optional Kramers-Kronig constraint (Hirose et al., Opt. Express 25, 8593 (2017)) is
applied between epochs, see :func:`kk_constrain`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffxas.data.dataset import Dataset, mean_frames, relative_monitor
from diffxas.errors import ConfigError, DivergenceError, InputError
from diffxas.physics.background import FLOOR, as_maps, initial_background
from diffxas.physics.forward import (
    amplitude_projection,
    extract_patch,
    frame_geometry,
    modulus_update,
    shifted_probe,
)
from diffxas.physics.geometry import Grid, wavelength

# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class EpieConfig:
    """ePIE options (frozen, validated).

    Attributes:
        epochs: number of passes over all frames of every energy.
        alpha: object step (ePIE's alpha), in (0, 2].
        beta: probe step (ePIE's beta), in [0, 2]; 0 = probe fixed.
        probe_update_start: first epoch (0-based) at which the probe is updated.
        seed: seed of the frame orders (``jax.random``).
        kk_start: first epoch after which the KK constraint is applied (None = off).
        kk_every: apply the KK constraint every ``kk_every`` epochs after ``kk_start``
            (None = only once, at ``kk_start``).
        kk_weight: blend of the KK-consistent phase into the reconstructed one (1 = replace
            the energy-dependent part).
        kk_register: register energies to each other (sub-pixel) before the KK step.
        kk_tail_ev: the absorption is extended beyond the last energy (constant, then
            linearly to zero over ``kk_tail_ev``) to tame the truncation of the KK integral.
        batch_energies: energies per vmapped batch (None = all at once; 1 = loop).
        probe_fwhm: FWHM (m) of the KB focus used as initial probe when the dataset has no
            illumination (or ``use_illumination`` is False).
        use_illumination: start from the data file's illumination when it has one. False:
            from the KB focus of ``probe_fwhm`` all the same, for a file whose probe guess is
            poor (docs/formats.md, "A poor probe guess": a 450 nm flat guess for a 300 nm
            defocused probe made the two-step's maps garbage).
        probe_power_limit: divergence threshold: probe power over its initial value.
        checkpoint_every: epochs between checkpoints (when a checkpoint path is given).
        decay_start: first epoch of a linear decay of alpha and beta (None = constant
            steps). With noisy data ePIE at full step keeps hopping around the solution;
            shrinking the steps over the last epochs averages the frames' updates (the
            standard ePIE remedy for noise) and lowers the noise of the objects.
        decay_final: step factor reached at the last epoch (the decay is linear from 1).
        background: incoherent detector background per energy (:mod:`diffxas.physics.background`):
            "none" (the seed's ePIE), "flat" (one level per energy) or "map" (one level per
            energy and detector pixel). It enters the projection
            (:func:`forward.amplitude_projection`) and is re-estimated after every epoch
            from ``background_start`` on by the expectation-maximisation step of the
            Poisson likelihood with the objects and probes held:
            ``b <- mean over frames and (flat) pixels of n b / (|F psi|^2 + b)``; it starts
            at the darkest detector block's mean counts (:func:`background.initial_background`).
        background_start: first epoch (0-based) whose end updates the background.
        per_frame_shift: always shift the probe frame by frame (4 FFTs per frame with the
            probe updated). False (default): energies whose frames all share one sub-pixel
            offset (e.g. all on the pixel grid) take the equivalent 2-FFT route
            (:func:`_epoch_single`); the same result to float32 round-off. For comparisons.
    """

    epochs: int = 100
    alpha: float = 1.0
    beta: float = 1.0
    probe_update_start: int = 5
    seed: int = 0
    kk_start: int | None = None
    kk_every: int | None = None
    kk_weight: float = 1.0
    kk_register: bool = True
    kk_tail_ev: float = 200.0
    batch_energies: int | None = None
    probe_fwhm: float = 300e-9
    use_illumination: bool = True
    probe_power_limit: float = 100.0
    checkpoint_every: int = 25
    decay_start: int | None = None
    decay_final: float = 0.2
    background: str = "none"
    background_start: int = 5
    per_frame_shift: bool = False

    def __post_init__(self):
        if not (isinstance(self.epochs, (int, np.integer)) and self.epochs >= 1):
            raise ConfigError(f"epie epochs must be a positive integer, got {self.epochs!r}")
        if self.epochs > 1_000_000:  # the seed runs 800; a million epochs of even tiny data take days
            raise ConfigError(f"epie epochs must be <= 1e6 (the seed's schedule is 800), got {self.epochs:g}")
        if not (0.0 < self.alpha <= 2.0):
            raise ConfigError(f"epie alpha must be in (0, 2], got {self.alpha}")
        if not (0.0 <= self.beta <= 2.0):
            raise ConfigError(f"epie beta must be in [0, 2], got {self.beta}")
        if self.probe_update_start < 0:
            raise ConfigError(f"epie probe_update_start must be >= 0, got {self.probe_update_start}")
        if self.kk_start is not None and self.kk_start < 0:
            raise ConfigError(f"epie kk_start must be >= 0 or None, got {self.kk_start}")
        if self.kk_every is not None and self.kk_every < 1:
            raise ConfigError(f"epie kk_every must be >= 1 or None, got {self.kk_every}")
        if self.kk_every is not None and self.kk_start is None:
            raise ConfigError("epie kk_every is set but kk_start is None (KK off): set kk_start too")
        if not (0.0 <= self.kk_weight <= 1.0):
            raise ConfigError(f"epie kk_weight must be in [0, 1], got {self.kk_weight}")
        if not self.kk_tail_ev >= 0:
            raise ConfigError(f"epie kk_tail_ev must be >= 0, got {self.kk_tail_ev}")
        if self.batch_energies is not None and self.batch_energies < 1:
            raise ConfigError(f"epie batch_energies must be >= 1 or None, got {self.batch_energies}")
        if not self.probe_fwhm > 0:
            raise ConfigError(f"epie probe_fwhm must be positive, got {self.probe_fwhm}")
        if not isinstance(self.use_illumination, (bool, np.bool_)):
            raise ConfigError(f"epie use_illumination must be true or false, got {self.use_illumination!r}")
        if not self.probe_power_limit > 1:
            raise ConfigError(f"epie probe_power_limit must be > 1, got {self.probe_power_limit}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"epie checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.decay_start is not None and not (0 <= self.decay_start < self.epochs):
            raise ConfigError(f"epie decay_start must be in [0, epochs) or None, got {self.decay_start}")
        if not (0.0 < self.decay_final <= 1.0):
            raise ConfigError(f"epie decay_final must be in (0, 1], got {self.decay_final}")
        from diffxas.physics.background import check_mode

        check_mode(self.background, "epie background")
        if self.background_start < 0:
            raise ConfigError(f"epie background_start must be >= 0, got {self.background_start}")

    def step_factor(self, epoch: int) -> float:
        """Multiplier of alpha and beta at 0-based ``epoch`` (the linear decay, 1 before it)."""
        if self.decay_start is None or epoch < self.decay_start:
            return 1.0
        span = max(self.epochs - 1 - self.decay_start, 1)
        t = min(max((epoch - self.decay_start) / span, 0.0), 1.0)
        return 1.0 - t * (1.0 - self.decay_final)

    @classmethod
    def seed_schedule(cls, **overrides) -> EpieConfig:
        """The seed study's schedule: 800 epochs, KK every 50 epochs after the 500th."""
        kw = dict(epochs=800, kk_start=500, kk_every=50)
        kw.update(overrides)
        return cls(**kw)

    def kk_due(self, epoch_done: int) -> bool:
        """Whether the KK constraint is applied after ``epoch_done`` epochs (1-based count)."""
        if self.kk_start is None or epoch_done < self.kk_start or epoch_done >= self.epochs + 1:
            return False
        if epoch_done == self.kk_start:
            return True
        return self.kk_every is not None and (epoch_done - self.kk_start) % self.kk_every == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- geometry helpers


def reconstruction_grids(dataset: Dataset, common: Grid | None = None) -> tuple[Grid, list[Grid]]:
    """The common grid and each energy's natural grid, padded to one shape (same centre).

    ``Dataset.energy_grids`` gives each energy's pixel size covering the common field;
    the shapes may differ by a few pixels, so all are enlarged to the largest shape
    around the common centre (needed to batch energies with ``vmap``).
    """
    common = dataset.common_grid() if common is None else common
    out = dataset.energy_grids(common, same_shape=True)
    return common, out


def shift_ramps(frac: np.ndarray, frame_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable Fourier shift ramps of :func:`forward.shifted_probe`, per frame.

    Returns ``(rows, cols)``, each ``(frame, M)`` complex64, such that
    ``ifft2(P_hat * rows[j][:, None] * cols[j][None, :]) == shifted_probe(P_hat, frac[j])``.
    They are read off ``forward.shifted_probe`` itself (its output for a flat spectrum,
    transformed back), so the sign and frequency conventions are the forward model's.
    """
    m = frame_size
    frac = np.asarray(frac, np.float32).reshape(-1, 2)
    ones = jnp.ones((m, m), jnp.complex64)

    @jax.jit
    def ramp_of(f):
        r = jnp.fft.fft2(shifted_probe(ones, f))
        return r[:, 0], r[0, :] / r[0, 0]

    if frac.shape[0] == 0:
        z = np.zeros((0, m), np.complex64)
        return z, z
    rows, cols = jax.vmap(ramp_of)(jnp.asarray(frac))
    rows = np.array(rows, np.complex64)
    cols = np.array(cols, np.complex64)
    # the ramps are unimodular by construction; remove float32 round-off of the FFT pair
    rows /= np.abs(rows)
    cols /= np.abs(cols)
    return rows, cols


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
    from diffxas.physics.probe import (
        detected_power,
        kb_probe,
        numerical_aperture_for_fwhm,
    )

    m = dataset.frame_size
    e = np.asarray(dataset.energies, np.float64)
    na = numerical_aperture_for_fwhm(probe_fwhm, float(wavelength(e.min())))
    from diffxas.data.dataset import take_frames

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


# ----------------------------------------------------------------------------- the jitted epoch


def _epoch_single(
    obj,
    probe_hat,
    order,
    corners,
    rows,
    cols,
    counts,
    mask,
    valid,
    bg,
    alpha,
    beta,
    update_probe: bool,
    with_background: bool = False,
    common_offset: bool = False,
):
    """One ePIE epoch of one energy: ``lax.scan`` over the frames in ``order``.

    ``counts`` (N, M, M) are in the *uncentred* detector layout (zero frequency at pixel
    (0, 0), :func:`forward.uncenter`: done once in :func:`_make_batches`), so no frame pays
    an fftshift/ifftshift; ``mask`` and ``bg`` (M, M) come centred and are uncentred here
    once per epoch, and the background share is centred again at the end.

    ``bg`` (M, M): the incoherent background (zeros without one). With ``with_background``
    the scan also sums the background's expected share of the counts,
    ``valid mask n b / (|F psi|^2 + b)`` (its EM update, :class:`EpieConfig`), else zeros.

    ``common_offset`` (static): every frame of this energy has the same sub-pixel offset
    (``frac``; the frames on the pixel grid: 0) so its shift ramp ``rows[0], cols[0]``
    serves all of them. The shifted probe is then formed once per epoch, carried and
    updated in real space, and shifted back once at the end: 2 FFTs per frame (far field
    and back-propagation) instead of 4. Exact: the shift is linear and unitary, so
    ``shift_-f(shift_f(P) + sum dps) = P + sum shift_-f(dps)`` (the per-frame route's
    result) up to float32 round-off (tests/test_epie.py compares the two routes).
    Otherwise each frame shifts the probe (``ifft2``) and, with the probe updated, shifts
    its update back (``fft2``): 4 FFTs per frame (3 with the probe fixed).
    """
    m = probe_hat.shape[-1]
    ortho = 1.0 / m  # norm="ortho" of an M x M transform
    mask_u = jnp.fft.ifftshift(mask, axes=(-2, -1))
    bg_u = jnp.fft.ifftshift(bg, axes=(-2, -1))
    if common_offset:
        ramp0 = rows[0][:, None] * cols[0][None, :]
        probe0 = jnp.fft.ifft2(probe_hat * ramp0)  # the probe shifted by the common offset

    def step(carry, j):
        o, pc, loss, bacc = carry
        c = corners[j]
        if common_offset:
            ps = pc
        else:
            ramp = rows[j][:, None] * cols[j][None, :]
            ps = jnp.fft.ifft2(pc * ramp)  # == forward.shifted_probe(ph, frac[j])
        patch = extract_patch(o, c, m)
        psi = ps * patch
        # forward.amplitude_projection in two halves, uncentred (the far field also gives the background's share)
        f = jnp.fft.fft2(psi) * ortho
        if with_background:
            fi = jnp.real(f) ** 2 + jnp.imag(f) ** 2
            bacc = bacc + (valid[j] * mask_u * counts[j] * bg_u) / jnp.maximum(fi + bg_u, 1e-12)
        d = (jnp.fft.ifft2(modulus_update(f, counts[j], mask_u, bg_u)) * m - psi) * valid[j]
        ip = jnp.real(ps) ** 2 + jnp.imag(ps) ** 2
        new_patch = patch + (alpha / jnp.max(ip)) * jnp.conj(ps) * d
        o = jax.lax.dynamic_update_slice(o, new_patch, (c[0], c[1]))
        if update_probe:
            io = jnp.real(patch) ** 2 + jnp.imag(patch) ** 2
            dps = (beta / jnp.maximum(jnp.max(io), 1e-30)) * jnp.conj(patch) * d
            if common_offset:
                pc = pc + dps
            else:
                pc = pc + jnp.fft.fft2(dps) * jnp.conj(ramp)  # shift back by -frac, into the spectrum
        loss = loss + jnp.sum(jnp.real(d) ** 2 + jnp.imag(d) ** 2)
        return (o, pc, loss, bacc), None

    carry0 = (obj, probe0 if common_offset else probe_hat, jnp.float32(0.0), jnp.zeros((m, m), jnp.float32))
    (obj, pc, loss, bacc), _ = jax.lax.scan(step, carry0, order)
    probe_hat = jnp.fft.fft2(pc) * jnp.conj(ramp0) if common_offset else pc
    power = jnp.sum(jnp.real(probe_hat) ** 2 + jnp.imag(probe_hat) ** 2) / (m * m)
    finite = jnp.all(jnp.isfinite(obj)) & jnp.all(jnp.isfinite(probe_hat))
    return obj, probe_hat, loss, power, finite, jnp.fft.fftshift(bacc, axes=(-2, -1))


def _make_epoch_fn(update_probe: bool, with_background: bool, common_offset: bool = False):
    def fn(obj, probe_hat, orders, corners, rows, cols, counts, mask, valid, bg, alpha, beta):
        f = lambda o, p, od, c, r, cl, n, w, v, b: _epoch_single(
            o,
            p,
            od,
            c,
            r,
            cl,
            n,
            w,
            v,
            b,
            alpha,
            beta,  # noqa: E731
            update_probe,
            with_background,
            common_offset,
        )
        return jax.vmap(f)(obj, probe_hat, orders, corners, rows, cols, counts, mask, valid, bg)

    return jax.jit(fn, donate_argnums=(0, 1))


_EPOCH_FNS: dict[tuple[bool, bool, bool], Callable] = {}


def epoch_fn(update_probe: bool, with_background: bool = False, common_offset: bool = False) -> Callable:
    """The jitted, energy-batched epoch (cached; one compilation per shape and flags).

    ``fn(obj (B,ny,nx), probe_hat (B,M,M), orders (B,N), corners (B,N,2), rows (B,N,M),
    cols (B,N,M), counts (B,N,M,M), mask (B,M,M), valid (B,N), bg (B,M,M), alpha, beta)``
    returns ``(obj, probe_hat, loss (B,), probe_power (B,), finite (B,), background share
    (B,M,M))``; ``obj`` and ``probe_hat`` are donated. ``counts``: uncentred layout
    (:func:`forward.uncenter`, as :func:`_make_batches` stores them); ``mask``, ``bg`` and
    the share: centred. ``bg``: the incoherent background (zeros for none); the share is
    summed only ``with_background`` (zeros otherwise). ``common_offset``: every real frame
    of each energy has the sub-pixel offset of its first frame (:attr:`_Batch.common_offset`),
    the 2-FFT route of :func:`_epoch_single`.
    """
    key = (bool(update_probe), bool(with_background), bool(common_offset))
    if key not in _EPOCH_FNS:
        _EPOCH_FNS[key] = _make_epoch_fn(*key)
    return _EPOCH_FNS[key]


def epie_update(obj_patch, probe, counts, mask, alpha: float = 1.0, beta: float = 1.0, background=0.0):
    """The ePIE update of one frame (unshifted probe, the patch itself); for tests and docs.

    ``background``: incoherent background (photons per pixel, centred layout). Returns
    ``(new_patch, new_probe)``.
    """
    psi = probe * obj_patch
    d = amplitude_projection(psi, counts, mask, background) - psi
    new_patch = obj_patch + alpha * jnp.conj(probe) / jnp.max(jnp.abs(probe) ** 2) * d
    new_probe = probe + beta * jnp.conj(obj_patch) / jnp.max(jnp.abs(obj_patch) ** 2) * d
    return new_patch, new_probe


# ----------------------------------------------------------------------------- per-energy data


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
    #: on the pixel grid): the epoch takes the 2-FFT route (:func:`_epoch_single`)
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
#: :func:`_epoch_single` although float32 positions put its offsets ~1e-6 pixel apart.
#: 1e-3 pixel (0.05 nm at 50 nm pixels) is far below any scan's position accuracy; the
#: probe phase it changes is at most 2 pi 0.5e-3 = 3e-3 rad at the Nyquist frequency.
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


# ----------------------------------------------------------------------------- results, checkpoints


@dataclasses.dataclass
class EpieResult:
    """Output of :func:`run_epie` (host side).

    Attributes:
        objects: (K, ny, nx) complex64, each on ``grids[k]``.
        probes: (K, M, M) complex64, each on its energy's pixel size.
        grids: each energy's grid; common: the map grid.
        energies: (K,) eV.
        history: ``loss`` (epochs, K) amplitude loss per epoch and energy, ``time`` (epochs,)
            seconds per epoch, ``kk_epochs`` epochs after which KK was applied.
        corners, fracs: per energy, the frames' patch corners and sub-pixel offsets.
        epochs_done: completed epochs.
        background: the incoherent background (``EpieConfig.background``): None, (K,)
            ("flat") or (K, M, M) ("map", centred like the frames), photons per pixel per frame.
    """

    objects: np.ndarray
    probes: np.ndarray
    grids: list[Grid]
    common: Grid
    energies: np.ndarray
    history: dict[str, np.ndarray]
    corners: list[np.ndarray]
    fracs: list[np.ndarray]
    epochs_done: int
    compile_time: float = 0.0
    background: np.ndarray | None = None


def _fingerprint(dataset: Dataset, config: EpieConfig) -> str:
    h = hashlib.sha256()
    # per_frame_shift picks an equivalent route (same result to round-off), not another answer
    h.update(
        json.dumps(
            {k: v for k, v in config.to_dict().items() if k not in ("epochs", "checkpoint_every", "per_frame_shift")},
            sort_keys=True,
        ).encode()
    )
    h.update(np.asarray(dataset.energies).tobytes())
    h.update(np.asarray(dataset.positions).tobytes())
    h.update(str(tuple(dataset.frames.shape)).encode())
    if dataset.monitor is not None:
        h.update(np.asarray(dataset.monitor, np.float64).tobytes())
    fr = np.asarray(dataset.frames)
    h.update(fr[:: max(1, fr.shape[0] // 7)].tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(
    path, objects, probes, epoch: int, loss_hist, time_hist, kk_epochs, fingerprint: str, background=None
) -> None:
    """Write an ePIE checkpoint atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".epie-", suffix=".npz", dir=d)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                objects=np.asarray(objects),
                probes=np.asarray(probes),
                epoch=np.int64(epoch),
                loss=np.asarray(loss_hist, np.float64).reshape(-1, np.asarray(objects).shape[0]),
                time=np.asarray(time_hist, np.float64),
                kk_epochs=np.asarray(kk_epochs, np.int64),
                fingerprint=np.asarray(fingerprint),
                **({} if background is None else {"background": np.asarray(background, np.float32)}),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        from diffxas.errors import is_disk_full

        if isinstance(e, Exception) and is_disk_full(e):  # the run goes on; the previous checkpoint is kept
            import logging

            logging.getLogger("diffxas").warning(
                "%s: disk full: checkpoint at epoch %d not written (the previous "
                "one, if any, is kept); the run goes on",
                path,
                int(epoch),
            )
            return
        raise


def load_checkpoint(path) -> dict[str, Any]:
    with np.load(os.fspath(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- driver


def run_epie(
    dataset: Dataset,
    config: EpieConfig | None = None,
    *,
    common: Grid | None = None,
    progress: bool = False,
    checkpoint=None,
    resume: bool = False,
    init_objects: np.ndarray | None = None,
    init_probes: np.ndarray | None = None,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> EpieResult:
    """Reconstruct every energy of ``dataset`` independently with ePIE (+ optional KK).

    Args:
        dataset: the measurement.
        config: :class:`EpieConfig` (default ``EpieConfig()``).
        common: the map grid (default ``dataset.common_grid()``); each energy's grid is
            centred on it (see :func:`reconstruction_grids`).
        progress: show a tqdm bar over epochs.
        checkpoint: path of an ``.npz`` checkpoint written every ``checkpoint_every`` epochs
            and at the end (atomically).
        resume: continue from ``checkpoint`` if it exists and matches the data and config.
        init_objects, init_probes: optional starting guesses (K, ny, nx) / (K, M, M).
        callback: called as ``callback(epoch_done, loss_per_energy)`` after every epoch.

    Raises:
        DivergenceError: NaN/inf in an object or probe, or probe power above
            ``probe_power_limit`` x its initial value; names the energy and epoch.
    """
    config = EpieConfig() if config is None else config
    common, grids = reconstruction_grids(dataset, common)
    energies = np.asarray(dataset.energies, np.float64)
    kn = len(energies)
    m = dataset.frame_size
    tables = _frame_tables(dataset, grids)
    batches = _make_batches(dataset, tables, config.batch_energies)
    n_max = max(t[0].size for t in tables)

    probes0 = np.asarray(
        initial_probes(dataset, grids, config.probe_fwhm, config.use_illumination)
        if init_probes is None
        else init_probes,
        np.complex64,
    )
    if probes0.shape != (kn, m, m):
        raise InputError(f"initial probes must be ({kn}, {m}, {m}), got {probes0.shape}")
    shape = grids[0].shape
    objects0 = np.ones((kn,) + shape, np.complex64) if init_objects is None else np.asarray(init_objects, np.complex64)
    if objects0.shape != (kn,) + shape:
        raise InputError(f"initial objects must be ({kn}, {shape[0]}, {shape[1]}), got {objects0.shape}")
    power0 = np.sum(np.abs(probes0.astype(np.complex128)) ** 2, axis=(1, 2))
    empty = np.nonzero(power0 == 0)[0]  # (a non-finite probe still fails as a divergence at epoch 1)
    if empty.size:  # else the first epoch fails as "diverged ... lower alpha/beta", which it is not
        raise InputError(
            f"the initial probe of energy {energies[empty[0]]:.1f} eV is empty (all zero; "
            f"{empty.size} energies): fix the file's illumination or set epie.use_illumination=false"
        )

    fp = _fingerprint(dataset, config)
    bg0 = None
    if config.background != "none":
        bg0 = initial_background(mean_frames(dataset), np.asarray(dataset.mask), config.background)
    start_epoch = 0
    loss_hist: list[np.ndarray] = []
    time_hist: list[float] = []
    kk_epochs: list[int] = []
    if checkpoint is not None and resume and os.path.exists(os.fspath(checkpoint)):
        ck = load_checkpoint(checkpoint)
        if str(ck["fingerprint"]) != fp:
            raise InputError(
                f"checkpoint {os.fspath(checkpoint)} was written for other data or another ePIE "
                "configuration; remove it or run without resume"
            )
        objects0 = ck["objects"].astype(np.complex64)
        probes0 = ck["probes"].astype(np.complex64)
        start_epoch = int(ck["epoch"])
        loss_hist = [row for row in ck["loss"]]
        time_hist = list(ck["time"])
        kk_epochs = [int(e) for e in ck["kk_epochs"]]
        if "background" in ck:
            bg0 = ck["background"]

    objs = [jnp.asarray(objects0[b.energies]) for b in batches]
    phat = [jnp.fft.fft2(jnp.asarray(probes0[b.energies])) for b in batches]
    with_bg = config.background != "none"
    bgm = [jnp.asarray(as_maps(None if bg0 is None else bg0[b.energies], len(b.energies), m)) for b in batches]

    it = range(start_epoch, config.epochs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            it,
            desc=f"ePIE {kn} energies {energies.min():.1f}-{energies.max():.1f} eV",
            unit="epoch",
            initial=start_epoch,
            total=config.epochs,
        )
        it = bar
    compile_time = 0.0
    for epoch in it:
        t0 = time.perf_counter()
        upd = config.beta > 0 and epoch >= config.probe_update_start
        orders = frame_orders(config.seed, epoch, n_max, energies)
        fac = config.step_factor(epoch)
        alpha = jnp.float32(config.alpha * fac)
        beta = jnp.float32(config.beta * fac)
        loss_e = np.zeros(kn)
        for i, b in enumerate(batches):
            fn = epoch_fn(upd, with_bg, b.common_offset and not config.per_frame_shift)
            objs[i], phat[i], loss, power, finite, share = fn(
                objs[i],
                phat[i],
                orders[b.energies],
                b.corners,
                b.rows,
                b.cols,
                b.counts,
                b.mask,
                b.valid,
                bgm[i],
                alpha,
                beta,
            )
            if with_bg and epoch >= config.background_start:
                bgm[i] = _background_em(share, b, config.background)
            loss = np.asarray(loss)
            power = np.asarray(power)
            finite = np.asarray(finite)
            loss_e[b.energies] = loss
            for j, k in enumerate(b.energies):
                if not finite[j] or not np.isfinite(loss[j]):
                    raise DivergenceError(
                        f"ePIE diverged at energy {energies[k]:.1f} eV, epoch {epoch + 1}: "
                        "non-finite object or probe (lower alpha/beta or start the probe update later)"
                    )
                if power[j] > config.probe_power_limit * power0[k]:
                    raise DivergenceError(
                        f"ePIE diverged at energy {energies[k]:.1f} eV, epoch {epoch + 1}: probe power "
                        f"{power[j] / power0[k]:.3g} x its initial value (limit "
                        f"{config.probe_power_limit:g}); lower beta or start the probe update later"
                    )
        done = epoch + 1
        if config.kk_due(done):
            cur_o = _gather(objs, batches, kn)
            new_o = kk_constrain(
                cur_o,
                energies,
                grids,
                common,
                weight=config.kk_weight,
                register=config.kk_register,
                tail_ev=config.kk_tail_ev,
                probes=_gather_probes(phat, batches, kn),
                tables=tables,
                frame_size=m,
            )
            objs = [jnp.asarray(new_o[b.energies]) for b in batches]
            kk_epochs.append(done)
        dt = time.perf_counter() - t0
        if epoch == start_epoch:
            compile_time = dt
        loss_hist.append(loss_e)
        time_hist.append(dt)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_e.sum():.4g}")
        if callback is not None:
            callback(done, loss_e)
        if checkpoint is not None and (done % config.checkpoint_every == 0 or done == config.epochs):
            save_checkpoint(
                checkpoint,
                _gather(objs, batches, kn),
                _gather_probes(phat, batches, kn),
                done,
                loss_hist,
                time_hist,
                kk_epochs,
                fp,
                background=_gather_background(bgm, batches, kn, config),
            )

    objects = _gather(objs, batches, kn)
    probes = _gather_probes(phat, batches, kn)
    return EpieResult(
        objects=objects,
        probes=probes,
        grids=grids,
        common=common,
        energies=energies,
        history={
            "loss": np.asarray(loss_hist, np.float64).reshape(-1, kn),
            "time": np.asarray(time_hist, np.float64),
            "kk_epochs": np.asarray(kk_epochs, np.int64),
        },
        corners=[t[1] for t in tables],
        fracs=[t[2] for t in tables],
        epochs_done=max(start_epoch, config.epochs),
        compile_time=compile_time,
        background=_gather_background(bgm, batches, kn, config),
    )


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


# ----------------------------------------------------------------------------- KK constraint


def kk_matrix(energies, tail_ev: float = 200.0) -> np.ndarray:
    r"""Linear map from absorption samples to the KK-consistent phase, ``(K, K)`` float64.

    For absorption ``A(E_k)`` (amplitude attenuation, relative to the pre-edge level) the
    phase consistent with it is, in the convention of :mod:`diffxas.physics.spectra`
    (``A = r_e lambda_0 N f''``, ``phi = -r_e lambda N (Z + f')``, ``f' = H[f'']``),

        phi_KK(E) = -(lambda(E) / lambda_0) H[A](E),

    with ``H[g](E) = (1/pi) P∫ g(E') / (E - E') dE'`` (:func:`scattering.kk_piecewise_linear`)
    and ``lambda_0`` the wavelength at the middle of the scanned range (its exact choice
    only rescales the phase by < 1 %). ``A`` is taken piecewise linear on the measured
    energies, extended beyond the last one as a constant for ``tail_ev / 2`` and then
    linearly to zero at ``+tail_ev`` (the edge does not end at the last energy; the
    remaining truncation error is smooth over the scanned range and goes into the
    fitted baseline of :func:`kk_phase`). H is linear, so this is one matrix.
    """
    from diffxas.physics.scattering import kk_piecewise_linear_matrix

    e = np.asarray(energies, np.float64)
    lam = wavelength(e)
    lam0 = wavelength(0.5 * (e.min() + e.max()))
    kn = len(e)
    if tail_ev > 0:
        nodes = np.concatenate([e, [e[-1] + 0.5 * tail_ev, e[-1] + tail_ev]])
        ext = np.zeros((kn + 2, kn))
        ext[:kn] = np.eye(kn)
        ext[kn, kn - 1] = 1.0  # constant continuation, then zero at the last node
    else:
        nodes, ext = e, np.eye(kn)
    w = np.asarray(kk_piecewise_linear_matrix(nodes, e), np.float64)  # (eval, node)
    return -(lam / lam0)[:, None] * (w @ ext)


def kk_phase(
    absorption: np.ndarray,
    phase: np.ndarray,
    energies,
    weight: float = 1.0,
    tail_ev: float = 200.0,
    n_pre: int | None = None,
) -> np.ndarray:
    """KK-constrained phase stack ``(K, ...)`` from absorption and phase stacks (same shape).

    Per pixel: subtract the pre-edge constant (mean of the ``n_pre`` lowest energies,
    default the lowest two), map through :func:`kk_matrix`, fit ``c0 + c1 (E - mean E)``
    to ``phase - phi_KK`` (least squares over energies: the energy-independent and
    slowly varying non-resonant phase, and the KK truncation error), and return
    ``(1 - weight) phase + weight (baseline + phi_KK)``.
    """
    e = np.asarray(energies, np.float64)
    kn = len(e)
    a = np.asarray(absorption, np.float64).reshape(kn, -1)
    p = np.asarray(phase, np.float64).reshape(kn, -1)
    n_pre = min(2, kn) if n_pre is None else max(1, min(n_pre, kn))
    a0 = a - a[:n_pre].mean(axis=0, keepdims=True)
    kmat = kk_matrix(e, tail_ev)
    phi_kk = kmat @ a0
    basis = np.stack([np.ones(kn), (e - e.mean()) / max(np.ptp(e), 1e-9)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, p - phi_kk, rcond=None)
    model = basis @ coef + phi_kk
    out = (1.0 - weight) * p + weight * model
    return out.reshape(np.shape(phase)).astype(np.float32)


def kk_constrain(
    objects: np.ndarray,
    energies,
    grids: list[Grid],
    common: Grid,
    weight: float = 1.0,
    register: bool = True,
    tail_ev: float = 200.0,
    probes: np.ndarray | None = None,
    tables=None,
    frame_size: int | None = None,
) -> np.ndarray:
    """Apply the KK constraint to every energy's object (Hirose et al. 2017).

    The objects are brought onto the common grid as A = -ln|O| and unwrapped phase
    (:func:`align.to_common`), referenced to the empty region and optionally registered
    (:func:`align.align_stack`); the KK-consistent phase (:func:`kk_phase`) replaces the
    energy-dependent part of the phase; the phase *change* is shifted back (inverse of
    the registration), resampled onto each energy's grid and applied to its object, so
    parts of the object that the constraint does not touch are not resampled at all.
    """
    from diffxas.physics.forward import resample
    from diffxas.solvers.twostep import align

    e = np.asarray(energies, np.float64)
    st = align.align_stack(
        objects, grids, common, e, probes=probes, tables=tables, frame_size=frame_size, register=register
    )
    new_phase = kk_phase(st.absorption, st.phase, e, weight=weight, tail_ev=tail_ev)
    dphi = new_phase - st.phase
    dphi = np.where(st.illuminated[None], dphi, 0.0)
    dphi = align.apply_shifts(dphi, -st.shifts)
    out = np.array(objects, np.complex64, copy=True)
    for k, g in enumerate(grids):
        ry, rx = align.cached_matrices(common, g)
        dk = np.asarray(resample(jnp.asarray(dphi[k], jnp.float32), ry, rx))
        out[k] = out[k] * np.exp(1j * dk).astype(np.complex64)
    return out
