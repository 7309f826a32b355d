r"""The one forward model: object grids, patches, sub-pixel shifts, propagation, losses.

Every path in diffxas (simulator, ePIE, joint solver) calls these functions; there is
no other FFT, shift or patch code in the package.

Conventions
-----------
* Far field: ``frame = |fftshift(fft2(P * O_patch, norm="ortho"))|^2`` with numpy's
  forward FFT sign; zero spatial frequency at pixel ``(M/2, M/2)``.
* A frame's probe centre lies at object coordinate ``(x, y) = positions[j]`` (= -CXI
  translation). The patch of object pixels ``[r0:r0+M, c0:c0+M]`` is cut at the
  nearest integer corner, and the remaining sub-pixel offset ``frac`` (in ``[-0.5,
  0.5]`` pixels, (row, col)) is applied to the probe by an exact Fourier shift: the exit
  wave is ``psi[m, n] = P(m - M/2 - frac_r, n - M/2 - frac_c) * O[r0 + m, c0 + n]``.
  (Shifting the exit wave as a whole only adds a phase ramp in the far field, so this
  equals the "interpolated object patch centred on the probe" convention in intensity.)
* Per-energy pixel size: each energy has its natural grid (pixel ``lambda z / (M p)``).
  Fields on the common (map) grid are brought onto an energy's grid with
  :func:`resample`, separable periodic band-limited (Dirichlet-kernel) interpolation,
  which is exact for fields band-limited to the source grid's Nyquist band. The
  common grid takes the *largest* pixel (lowest energy) so that resampling only ever
  interpolates inside the representable band, never invents frequencies.
* Losses are sums over frames and detector pixels, weighted by the detector mask
  (1 = used). Poisson: ``sum w (I - n ln I)`` (constant ``ln n!`` dropped);
  amplitude: ``sum w (sqrt(I) - sqrt(n))^2``.
  ``I`` is the model intensity: ``|F(P O)|^2`` times the frame's relative flux, plus an
  incoherent detector background when one is modelled (:mod:`diffxas.physics.background`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, Int

from diffxas.errors import ConfigError
from diffxas.physics.geometry import Grid

# ----------------------------------------------------------------------------- resampling


def dirichlet_matrix(n_src: int, coords) -> np.ndarray:
    """Periodic band-limited interpolation weights, ``(len(coords), n_src)`` float64.

    ``f(u) = sum_n W[u, n] f[n]`` evaluates the trigonometric interpolant of the samples
    ``f[0..n_src-1]`` (period ``n_src``) at continuous pixel coordinates ``coords``.
    Exact for trigonometric polynomials of the source grid (for even ``n_src`` the
    Nyquist term is taken as a cosine).
    """
    u = np.asarray(coords, dtype=np.float64)[:, None] - np.arange(n_src)[None, :]
    t = np.pi * u / n_src
    s = np.sin(np.pi * u)
    with np.errstate(divide="ignore", invalid="ignore"):
        if n_src % 2:
            w = s / (n_src * np.sin(t))
        else:
            w = s / (n_src * np.tan(t))
    near = np.abs(np.sin(t)) < 1e-12
    # limit at integer offsets: 1 where u = 0 mod n_src
    w = np.where(near, np.where(np.abs(np.cos(t)) > 0.5, 1.0, 0.0) * np.where(np.round(u) % n_src == 0, 1.0, 0.0), w)
    return w


def resample_matrices(src: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Separable interpolation matrices taking a field on ``src`` to ``dst``.

    Returns ``(Ry, Rx)`` with shapes ``(ny_dst, ny_src)`` and ``(nx_dst, nx_src)`` such that
    ``field_dst = Ry @ field_src @ Rx.T`` (see :func:`resample`).
    """
    xd, yd = dst.coords()
    cols = (xd - src.origin[0]) / src.pixel_size
    rows = (yd - src.origin[1]) / src.pixel_size
    return dirichlet_matrix(src.shape[0], rows), dirichlet_matrix(src.shape[1], cols)


def resample(
    field: Float[Array, "... ny nx"], ry: Float[Array, "my ny"], rx: Float[Array, "mx nx"]
) -> Float[Array, "... my mx"]:
    """Apply separable resampling matrices to the last two axes of ``field``."""
    hi = jax.lax.Precision.HIGHEST
    tmp = jnp.einsum("...yx,mx->...ym", field, rx, precision=hi)
    return jnp.einsum("ny,...ym->...nm", ry, tmp, precision=hi)


def resample_stack(
    fields: Float[Array, "energy ny nx"], ry: Float[Array, "energy my ny"], rx: Float[Array, "energy mx nx"]
) -> Float[Array, "energy my mx"]:
    """Resample each energy's field with its own matrices (batched :func:`resample`)."""
    hi = jax.lax.Precision.HIGHEST
    tmp = jnp.einsum("kyx,kmx->kym", fields, rx, precision=hi)
    return jnp.einsum("kny,kym->knm", ry, tmp, precision=hi)


# ----------------------------------------------------------------------------- frame geometry


def frame_geometry(positions_m, grid: Grid, frame_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer patch corners and sub-pixel remainders of frames on ``grid`` (host side).

    Args:
        positions_m: (frame, 2) probe centres (x, y), m.
        grid: the object grid the patches are cut from.
        frame_size: M.

    Returns:
        corner: (frame, 2) int32 (row, col) of patch pixel [0, 0].
        frac: (frame, 2) float32 (row, col) sub-pixel offset of the probe centre from the
            patch pixel (M/2, M/2), in ``[-0.5, 0.5]`` pixels.
    """
    rc = grid.to_pixels(positions_m)  # continuous (row, col) of the probe centre
    near = np.round(rc)
    corner = (near - frame_size // 2).astype(np.int32)
    frac = (rc - near).astype(np.float32)
    ny, nx = grid.shape
    if corner.size and (
        corner.min() < 0 or corner[:, 0].max() + frame_size > ny or corner[:, 1].max() + frame_size > nx
    ):
        raise ValueError(f"frame patches fall outside the object grid {grid.shape}: enlarge the grid")
    return corner, frac


def fourier_shift(field: Complex[Array, "M M"], shift: Float[Array, 2]) -> Complex[Array, "M M"]:
    """Shift a field by ``shift`` = (rows, cols) pixels (exact for band-limited fields, circular)."""
    return jnp.fft.ifft2(jnp.fft.fft2(field) * _ramp(field.shape, shift))


def shifted_probe(probe_hat: Complex[Array, "M M"], shift: Float[Array, 2]) -> Complex[Array, "M M"]:
    """Probe shifted by ``shift`` pixels, from its precomputed spectrum ``fft2(probe)``."""
    return jnp.fft.ifft2(probe_hat * _ramp(probe_hat.shape, shift))


def _ramp(shape, shift):
    """Separable Fourier shift ramp exp(-2 pi i (k0 s0 + k1 s1)): 2M exponentials, not M^2."""
    k0 = jnp.fft.fftfreq(shape[0]).astype(jnp.float32)
    k1 = jnp.fft.fftfreq(shape[1]).astype(jnp.float32)
    return jnp.exp(-2j * jnp.pi * k0 * shift[0])[:, None] * jnp.exp(-2j * jnp.pi * k1 * shift[1])[None, :]


def extract_patch(obj: Complex[Array, "ny nx"], corner: Int[Array, 2], size: int) -> Complex[Array, "M M"]:
    """``obj[r0:r0+M, c0:c0+M]`` with a traced corner (dynamic_slice, no gather)."""
    return jax.lax.dynamic_slice(obj, (corner[0], corner[1]), (size, size))


def far_field(psi: Complex[Array, "... M M"]) -> Complex[Array, "... M M"]:
    """Centred far field ``fftshift(fft2(psi, norm="ortho"))`` over the last two axes."""
    return jnp.fft.fftshift(jnp.fft.fft2(psi, norm="ortho"), axes=(-2, -1))


def back_propagate(field: Complex[Array, "... M M"]) -> Complex[Array, "... M M"]:
    """Inverse of :func:`far_field`."""
    return jnp.fft.ifft2(jnp.fft.ifftshift(field, axes=(-2, -1)), norm="ortho")


def crop_center(frames: Float[Array, "... N N"], size: int) -> Float[Array, "... M M"]:
    """Central ``size x size`` detector region, keeping zero frequency at (M/2, M/2)."""
    n = frames.shape[-1]
    o = n // 2 - size // 2
    return frames[..., o : o + size, o : o + size]


def exit_wave(
    obj: Complex[Array, "ny nx"], probe_hat: Complex[Array, "M M"], corner: Int[Array, 2], frac: Float[Array, 2]
) -> Complex[Array, "M M"]:
    """Exit wave of one frame: Fourier-shifted probe times the object patch."""
    m = probe_hat.shape[-1]
    return shifted_probe(probe_hat, frac) * extract_patch(obj, corner, m)


def model_intensity(obj, probe_hat, corner, frac, crop: int | None = None, centered: bool = True):
    """Intensity of one frame (``crop``: keep the central ``crop`` pixels, for oversampled simulation).

    ``centered=False`` skips the fftshift (zero frequency at pixel (0, 0)); solvers compare
    with frames and masks ifftshifted once (:func:`uncenter`), saving two shifts per frame.
    """
    if centered:
        f = far_field(exit_wave(obj, probe_hat, corner, frac))
    else:
        f = jnp.fft.fft2(exit_wave(obj, probe_hat, corner, frac), norm="ortho")
    i = jnp.real(f) ** 2 + jnp.imag(f) ** 2
    return i if crop is None else crop_center(i, crop)


def uncenter(frames):
    """Frames/masks with zero frequency moved from (M/2, M/2) to (0, 0) (ifftshift)."""
    return jnp.fft.ifftshift(frames, axes=(-2, -1))


def intensities(
    objects: Complex[Array, "energy ny nx"],
    probes_hat: Complex[Array, "energy M M"],
    energy_index: Int[Array, " frame"],
    corner: Int[Array, "frame 2"],
    frac: Float[Array, "frame 2"],
    crop: int | None = None,
    centered: bool = True,
) -> Float[Array, "frame M M"]:
    """Model intensities of a batch of frames of any energies.

    Args:
        objects: complex transmission of every energy on that energy's grid (all grids of
            one shape, see :meth:`Dataset.energy_grids`).
        probes_hat: ``fft2`` of each energy's probe (on that energy's pixel size).
        energy_index, corner, frac: per-frame energy, patch corner, sub-pixel offset.
        centered: zero frequency at (M/2, M/2) (the file convention) or at (0, 0).
    """
    m = probes_hat.shape[-1]

    def one(k, c, f):
        # one dynamic_slice over (energy, row, col): no gather of a whole object per frame
        patch = jax.lax.dynamic_slice(objects, (k, c[0], c[1]), (1, m, m))[0]
        psi = shifted_probe(probes_hat[k], f) * patch
        ff = far_field(psi) if centered else jnp.fft.fft2(psi, norm="ortho")
        i = jnp.real(ff) ** 2 + jnp.imag(ff) ** 2
        return i if crop is None else crop_center(i, crop)

    return jax.vmap(one)(energy_index, corner, frac)


# ----------------------------------------------------------------------------- transmission


def transmission(absorption: Float[Array, ...], phase: Float[Array, ...]) -> Complex[Array, ...]:
    """O = exp(-A + i phi) (complex64 for float32 inputs)."""
    return jnp.exp(-absorption + 1j * phase)


# ----------------------------------------------------------------------------- losses

#: Floor added to model intensities inside the Poisson log (photons); avoids log(0) where
#: the model is dark. Far below one photon, so it does not bias lit pixels.
POISSON_EPS = 1e-6


def poisson_nll(model: Float[Array, "... M M"], counts: Float[Array, "... M M"], weight) -> Float[Array, ""]:
    """Poisson negative log-likelihood ``sum w (I - n ln(I + eps))`` (constants dropped)."""
    return jnp.sum(weight * (model - counts * jnp.log(model + POISSON_EPS)))


def amplitude_loss(model: Float[Array, "... M M"], counts: Float[Array, "... M M"], weight) -> Float[Array, ""]:
    """Amplitude (Gaussian on sqrt counts) loss ``sum w (sqrt(I) - sqrt(n))^2``."""
    return jnp.sum(weight * (jnp.sqrt(model + 1e-12) - jnp.sqrt(counts)) ** 2)


LOSSES = {"poisson": poisson_nll, "amplitude": amplitude_loss}


def loss_with_background(
    lf, coherent: Float[Array, "... M M"], background: Float[Array, "... M M"], counts: Float[Array, "... M M"], weight
) -> Float[Array, ""]:
    """The loss ``lf`` of the model ``coherent + background``, with the background's
    gradient taken from the Poisson likelihood whatever ``lf`` is.

    Value: ``lf(coherent + b)``. Gradient: w.r.t. the coherent intensity that of ``lf``;
    w.r.t. ``b`` that of :func:`poisson_nll` at the same model. Why: under Poisson noise the
    amplitude loss fits ``E[sqrt(n)]^2``, which is below the mean count where the counts
    are a fraction of a photon (0.19 for a mean of 0.5, 0.003 for 0.05), exactly where a
    background is told apart from the coherent signal; so it estimates the level far too
    low (measured on noisy `tiny` with 0.5 photons per pixel: 0.11-0.14). The Poisson
    gradient is the maximum-likelihood estimate of the level given the coherent model (the
    same one ePIE's expectation-maximisation step converges to). For ``lf =
    poisson_nll`` this is the plain Poisson gradient.
    """
    if lf is poisson_nll:  # both gradients are the Poisson likelihood's already
        return poisson_nll(coherent + background, counts, weight)
    sg = jax.lax.stop_gradient
    pois = poisson_nll(sg(coherent) + background, counts, weight)
    return lf(coherent + sg(background), counts, weight) + (pois - sg(pois))


def loss_fn(name: str):
    """The loss function called ``name`` ("poisson" or "amplitude")."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None


def amplitude_projection(
    psi: Complex[Array, "... M M"], counts: Float[Array, "... M M"], weight, background=0.0
) -> Complex[Array, "... M M"]:
    """ePIE's projection: the far field ``f`` scaled by ``sqrt(n) / sqrt(|f|^2 + b)`` where the
    detector is used.

    Without a background (``b = 0``) that replaces the modulus by ``sqrt(counts)``. With an
    incoherent background ``b`` (photons per pixel, :mod:`diffxas.physics.background`) it is
    ``f - dL/d(f*)`` of the amplitude loss of the model ``|f|^2 + b``: ``L = (sqrt(|f|^2 + b) -
    sqrt(n))^2``, ``dL/d(f*) = f (1 - sqrt(n) / sqrt(|f|^2 + b))``; the same relation as
    without a background, so ePIE stays the amplitude loss's scaled steepest descent
    (tests/test_epie.py).
    """
    return back_propagate(modulus_update(far_field(psi), counts, weight, background))


def modulus_update(
    f: Complex[Array, "... M M"], counts: Float[Array, "... M M"], weight, background=0.0
) -> Complex[Array, "... M M"]:
    """The far-field half of :func:`amplitude_projection` (``f`` centred, as :func:`far_field`)."""
    den = jnp.sqrt(jnp.real(f) ** 2 + jnp.imag(f) ** 2 + background)
    return jnp.where(weight > 0, jnp.sqrt(counts) * f / jnp.maximum(den, 1e-12), f)


# ----------------------------------------------------------------------------- illumination


def illumination_map(
    probe_intensity: Float[Array, "energy M M"], energy_index, corner, frac, shape: tuple[int, int]
) -> Float[Array, "energy ny nx"]:
    """Sum of the (sub-pixel shifted) probe intensity over all frames, per energy.

    The scan's footprint on a grid of ``shape``: pixels that no frame illuminates carry no
    information and are excluded from the maps.
    """
    k_e, m = probe_intensity.shape[0], probe_intensity.shape[-1]
    phat = jnp.fft.fft2(probe_intensity.astype(jnp.complex64))

    def body(acc, inp):
        k, c, f = inp
        patch = jnp.real(shifted_probe(phat[k], f))
        cur = jax.lax.dynamic_slice(acc[k], (c[0], c[1]), (m, m))
        return acc.at[k].set(jax.lax.dynamic_update_slice(acc[k], cur + patch, (c[0], c[1]))), None

    acc0 = jnp.zeros((k_e,) + tuple(shape), jnp.float32)
    acc, _ = jax.lax.scan(body, acc0, (jnp.asarray(energy_index), jnp.asarray(corner), jnp.asarray(frac)))
    return acc
