r"""The jitted ePIE epoch: the per-frame update kernel, vmapped over a batch of energies.

Maiden & Rodenburg, Ultramicroscopy 109, 1256 (2009). For every frame ``j`` (visited
sequentially, in the order :func:`diffxas.solvers.twostep.epie_batches.frame_orders` draws)::

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

Imports no other ePIE module (the batches that feed it are built by
:mod:`diffxas.solvers.twostep.epie_batches`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffxas.physics.forward import (
    amplitude_projection,
    extract_patch,
    modulus_update,
    shifted_probe,
)


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
    (0, 0), :func:`forward.uncenter`: done once in :func:`~diffxas.solvers.twostep.epie_batches._make_batches`), so
    no frame pays an fftshift/ifftshift; ``mask`` and ``bg`` (M, M) come centred and are
    uncentred here once per epoch, and the background share is centred again at the end.

    ``bg`` (M, M): the incoherent background (zeros without one). With ``with_background``
    the scan also sums the background's expected share of the counts,
    ``valid mask n b / (|F psi|^2 + b)`` (its EM update,
    :class:`~diffxas.solvers.twostep.epie_config.EpieConfig`), else zeros.

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
    (:func:`forward.uncenter`, as :func:`~diffxas.solvers.twostep.epie_batches._make_batches` stores them); ``mask``,
    ``bg`` and the share: centred. ``bg``: the incoherent background (zeros for none); the
    share is summed only ``with_background`` (zeros otherwise). ``common_offset``: every
    real frame of each energy has the sub-pixel offset of its first frame
    (:attr:`~diffxas.solvers.twostep.epie_batches._Batch.common_offset`), the 2-FFT route of :func:`_epoch_single`.
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
