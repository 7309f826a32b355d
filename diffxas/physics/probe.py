"""Probes: a Kirkpatrick-Baez-like focus computed from its pupil, and initialisers.

The KB mirrors define a rectangular pupil of fixed numerical aperture, so the focus
(FWHM ~ 0.886 lambda / (2 NA) for each axis) scales with the wavelength. The probe on
an energy's object grid is the back-propagated pupil (same FFT convention as the
forward model), optionally defocused and aberrated, normalised so that
sum |P|^2 = photons per frame.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffxas.physics.forward import back_propagate, fourier_shift


def kb_probe(
    frame_size: int,
    pixel_size: float,
    wavelength_m: float,
    numerical_aperture: float,
    photons: float = 1.0,
    defocus_m: float = 0.0,
    edge_softness: float = 0.08,
    aberrations: dict | None = None,
    shift_m: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """KB-like probe on an ``frame_size``-square grid of ``pixel_size`` (complex64 numpy).

    Args:
        frame_size: M (probe array side).
        pixel_size: object-plane pixel, m (may be finer than the data's, for oversampling).
        wavelength_m: photon wavelength, m.
        numerical_aperture: half-angle of the (square) pupil, rad.
        photons: sum |P|^2 of the result.
        defocus_m: propagation distance from the focus, m (adds exp(-i pi lambda dz u^2)).
        edge_softness: width of the pupil edge roll-off relative to the pupil half-width.
        aberrations: optional {"astig": rad, "coma": rad} Zernike-like pupil phases (peak).
        shift_m: (x, y) displacement of the probe centre, m (energy-dependent drift).
    """
    m = frame_size
    u = (np.arange(m) - m // 2) / (m * pixel_size)  # spatial frequency of detector pixels, 1/m
    u0 = numerical_aperture / wavelength_m
    if u0 > u.max():
        raise ValueError("pupil larger than the detector: numerical aperture too large for this sampling")

    def edge(v):
        w = edge_softness * u0
        return 0.5 * (1 - np.tanh((np.abs(v) - u0) / max(w, 1e-30)))

    uy, ux = np.meshgrid(u, u, indexing="ij")
    pupil = edge(ux) * edge(uy)
    ph = -np.pi * wavelength_m * defocus_m * (ux**2 + uy**2)
    if aberrations:
        rx, ry = ux / u0, uy / u0
        ph = (
            ph
            + aberrations.get("astig", 0.0) * (rx**2 - ry**2)
            + aberrations.get("coma", 0.0) * (rx**2 + ry**2 - 0.5) * rx
        )
    pupil = pupil * np.exp(1j * ph)
    probe = np.asarray(back_propagate(jnp.asarray(np.fft.ifftshift(np.fft.fftshift(pupil)), jnp.complex64)))
    # back_propagate expects a centred far field; the probe comes out centred at pixel 0:
    probe = np.fft.fftshift(probe)
    if shift_m != (0.0, 0.0):
        probe = np.asarray(
            fourier_shift(
                jnp.asarray(probe), jnp.asarray([shift_m[1] / pixel_size, shift_m[0] / pixel_size], jnp.float32)
            )
        )
    probe = probe * np.sqrt(photons / np.sum(np.abs(probe) ** 2))
    return probe.astype(np.complex64)


def numerical_aperture_for_fwhm(fwhm_m: float, wavelength_m: float) -> float:
    """NA of a square pupil whose in-focus intensity FWHM (per axis) is ``fwhm_m``.

    The focus of a hard-edged pupil is sinc(2 u0 x)^2, FWHM = 0.8859 / (2 u0) with
    u0 = NA / lambda.
    """
    return 0.8859 * wavelength_m / (2.0 * fwhm_m)


def probe_from_frames(mean_frame: np.ndarray, photons: float) -> np.ndarray:
    """Initial probe from the mean diffraction pattern: sqrt(mean intensity) as a flat-phase pupil."""
    amp = np.sqrt(np.maximum(mean_frame, 0.0))
    probe = np.fft.fftshift(np.asarray(back_propagate(jnp.asarray(amp, jnp.complex64))))
    probe *= np.sqrt(photons / max(np.sum(np.abs(probe) ** 2), 1e-30))
    return probe.astype(np.complex64)


def probe_centre(probe: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Centre (row, col) of a probe's bright core in pixels relative to the window centre
    (M//2, M//2): the centroid of ``|P|^2 - threshold x peak`` where positive (the core:
    far, faint tails and reconstruction noise do not pull it; the soft cut keeps the
    estimate continuous in the probe's sub-pixel position)."""
    inten = np.abs(np.asarray(probe)) ** 2
    m = inten.shape[-1]
    core = np.clip(inten - threshold * inten.max(), 0.0, None)  # soft cut: no jump as pixels cross it
    q = np.arange(m) - m // 2
    total = core.sum()
    return np.asarray([(core.sum(1) * q).sum() / total, (core.sum(0) * q).sum() / total])


def centred_probe(probe: np.ndarray, threshold: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """``(probe shifted so that its core is centred, the shift applied (row, col) px)``.

    Why: ptychography cannot tell a probe and an object both moved by ``d`` from the
    original pair (``P(u - d) O(x - d)`` gives the same frames), so a probe refined from a
    guess drifts, and the object with it, off the scan positions. The positions mean the
    probe *centre*; re-centring the core puts the object back where the positions say
    (the object must then be moved by the same shift). A Fourier shift (circular, exact
    for band-limited fields)."""
    d = probe_centre(probe, threshold)
    out = np.asarray(fourier_shift(jnp.asarray(probe, jnp.complex64), jnp.asarray(-d, jnp.float32)))
    return out.astype(np.complex64), -d


def detected_power(probes, mask) -> np.ndarray:
    """Photons of a bare-beam frame on the used detector pixels: ``sum mask |F(P)|^2`` of
    each probe (host side, float64), ``probes`` (..., M, M) on its object pixels, ``mask``
    (..., M, M) detector weights with zero frequency at (M/2, M/2).

    What a probe's power must be compared with when frames are summed over the mask: not
    ``sum |P|^2`` times the used fraction of the detector, since a beamstop holds far more
    than its share of a bright-field frame's photons and a masked outer ring none."""
    p = np.asarray(probes).astype(np.complex128)
    far = np.fft.fftshift(np.fft.fft2(p, norm="ortho"), axes=(-2, -1))
    return np.sum((far.real**2 + far.imag**2) * np.asarray(mask, np.float64), axis=(-2, -1))
