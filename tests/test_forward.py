"""Tests of the one forward model (diffxas.physics.forward).

References: closed forms (trigonometric polynomials are reproduced exactly by the
Dirichlet resampling), an independent plain-numpy frame computation, the DFT shift
theorem, and finite differences (jax.test_util.check_grads).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffxas.physics import forward as fw
from diffxas.physics.geometry import Grid, grid_like, object_pixel_size


def trig_field(grid: Grid, x, y, modes):
    """Band-limited periodic field of the common grid evaluated at coordinates (x, y) in m."""
    ny, nx = grid.shape
    Lx, Ly = nx * grid.pixel_size, ny * grid.pixel_size
    u = (x - grid.origin[0]) / Lx
    v = (y - grid.origin[1]) / Ly
    out = np.zeros(np.broadcast(u, v).shape)
    for kx, ky, amp, ph in modes:
        out = out + amp * np.cos(2 * np.pi * (kx * u + ky * v) + ph)
    return out


def test_dirichlet_resampling_exact_for_band_limited_fields():
    # Reference: analytic trigonometric polynomial; tolerance 1e-10 (float64 matrices).
    src = Grid(pixel_size=10e-9, shape=(40, 48), origin=(-2e-7, -1.9e-7))
    dst = grid_like(src, 9.78e-9)
    modes = [(1, 2, 0.3, 0.1), (5, -3, 0.1, 1.0), (11, 7, 0.05, -0.4), (0, 0, 0.2, 0.0)]
    xs, ys = src.coords()
    f_src = trig_field(src, xs[None, :], ys[:, None], modes)
    ry, rx = fw.resample_matrices(src, dst)
    xd, yd = dst.coords()
    expect = trig_field(src, xd[None, :], yd[:, None], modes)
    got = ry @ f_src @ rx.T
    assert np.max(np.abs(got - expect)) < 1e-10


def numpy_frame(obj, probe, grid, position, M):
    """Independent reference: integer patch, numpy Fourier shift of the probe, numpy FFT."""
    col = (position[0] - grid.origin[0]) / grid.pixel_size
    row = (position[1] - grid.origin[1]) / grid.pixel_size
    r0, c0 = int(np.round(row)), int(np.round(col))
    fr, fc = row - r0, col - c0
    k = np.fft.fftfreq(M)
    ramp = np.exp(-2j * np.pi * (k[:, None] * fr + k[None, :] * fc))
    p = np.fft.ifft2(np.fft.fft2(probe) * ramp)
    patch = obj[r0 - M // 2 : r0 - M // 2 + M, c0 - M // 2 : c0 - M // 2 + M]
    f = np.fft.fftshift(np.fft.fft2(p * patch, norm="ortho"))
    return np.abs(f) ** 2


def _probe(M, width=3.0):
    yy, xx = np.mgrid[:M, :M] - M // 2
    return (np.exp(-(xx**2 + yy**2) / (2 * width**2)) * np.exp(0.3j * xx / M)).astype(np.complex128) * 100


def test_frames_from_common_grid_equal_true_per_energy_sampling():
    """A band-limited phantom sampled on each energy's own grid (the 'true' sampling) gives
    the same frames as the forward model from the common grid (resampling + Fourier
    shift). Reference: numpy frames on the true sampling; tolerance 2e-4 relative
    (float32 FFTs)."""
    M = 16
    energies = np.array([5420.0, 5540.0])
    dxs = object_pixel_size(energies, 0.3, 75e-6, M)
    common = Grid(pixel_size=float(dxs.max()), shape=(48, 48), origin=(-1.4e-6, -1.4e-6))
    modes_a = [(1, 0, 0.05, 0.0), (3, 4, 0.02, 0.5), (7, -5, 0.01, 1.3)]
    modes_p = [(2, 1, 0.3, 0.2), (-4, 6, 0.1, -0.7), (9, 2, 0.05, 0.0)]
    xs, ys = common.coords()
    A0 = trig_field(common, xs[None, :], ys[:, None], modes_a)
    P0 = trig_field(common, xs[None, :], ys[:, None], modes_p)
    rng = np.random.default_rng(1)
    positions = rng.uniform(-0.3e-6, 0.3e-6, size=(5, 2))
    probe = _probe(M)
    for dx in dxs:
        g = grid_like(common, float(dx))
        xe, ye = g.coords()
        obj_true = np.exp(
            -trig_field(common, xe[None, :], ye[:, None], modes_a)
            + 1j * trig_field(common, xe[None, :], ye[:, None], modes_p)
        )
        ref = np.stack([numpy_frame(obj_true, probe, g, p, M) for p in positions])
        ry, rx = fw.resample_matrices(common, g)
        A = fw.resample(jnp.asarray(A0, jnp.float32), jnp.asarray(ry, jnp.float32), jnp.asarray(rx, jnp.float32))
        P = fw.resample(jnp.asarray(P0, jnp.float32), jnp.asarray(ry, jnp.float32), jnp.asarray(rx, jnp.float32))
        obj = fw.transmission(A, P)
        corner, frac = fw.frame_geometry(positions, g, M)
        got = fw.intensities(
            obj[None],
            jnp.fft.fft2(jnp.asarray(probe, jnp.complex64))[None],
            jnp.zeros(5, jnp.int32),
            jnp.asarray(corner),
            jnp.asarray(frac),
        )
        np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-4, atol=2e-4 * ref.max())


def test_shifting_object_equals_shifting_positions():
    """O(x - d) scanned at p equals O scanned at p - d (shift theorem, band-limited object).
    Tolerance 1e-4 relative to the frame maximum (float32)."""
    M = 16
    g = Grid(pixel_size=20e-9, shape=(64, 64), origin=(-0.63e-6, -0.63e-6))
    xs, ys = g.coords()
    modes = [(2, 1, 0.3, 0.2), (-4, 6, 0.1, -0.7), (9, 2, 0.05, 0.0)]
    obj = np.exp(
        1j * trig_field(g, xs[None, :], ys[:, None], modes) - 0.1 * trig_field(g, xs[None, :], ys[:, None], modes[:2])
    )
    d = np.array([37e-9, -13e-9])  # (x, y), m: 1.85 and -0.65 pixels
    shifted = fw.fourier_shift(
        jnp.asarray(obj, jnp.complex64), jnp.asarray([d[1] / g.pixel_size, d[0] / g.pixel_size], jnp.float32)
    )
    pos = np.array([[0.0, 0.0], [0.11e-6, -0.07e-6], [-0.2e-6, 0.15e-6]])
    probe_hat = jnp.fft.fft2(jnp.asarray(_probe(M, 1.8), jnp.complex64))[
        None
    ]  # ~0 at the window edge: the sub-pixel shift is circular
    c1, f1 = fw.frame_geometry(pos, g, M)
    c2, f2 = fw.frame_geometry(pos - d, g, M)
    i1 = fw.intensities(shifted[None], probe_hat, jnp.zeros(3, jnp.int32), jnp.asarray(c1), jnp.asarray(f1))
    i2 = fw.intensities(
        jnp.asarray(obj, jnp.complex64)[None], probe_hat, jnp.zeros(3, jnp.int32), jnp.asarray(c2), jnp.asarray(f2)
    )
    np.testing.assert_allclose(np.asarray(i1), np.asarray(i2), atol=1e-4 * float(np.max(i2)))


def test_far_field_sign_and_centring():
    """Numpy's forward-FFT sign: an object exp(+2 pi i q n / M) along columns puts all
    intensity at pixel (M/2, M/2 + q); a flat object at (M/2, M/2). Exact (1e-6 relative)."""
    M, q = 32, 5
    n = np.arange(M)
    wave = np.exp(2j * np.pi * q * n / M)[None, :] * np.ones((M, 1))
    f = np.abs(np.asarray(fw.far_field(jnp.asarray(wave, jnp.complex64)))) ** 2
    assert np.unravel_index(np.argmax(f), f.shape) == (M // 2, M // 2 + q)
    assert f[M // 2, M // 2 + q] == pytest.approx(M * M, rel=1e-6)  # ortho: Parseval, all M^2 photons


def test_back_propagate_inverts_far_field():
    rng = np.random.default_rng(0)
    psi = (rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))).astype(np.complex64)
    back = np.asarray(fw.back_propagate(fw.far_field(jnp.asarray(psi))))
    np.testing.assert_allclose(back, psi, atol=1e-5)


def test_losses_closed_form():
    # Reference: hand-computed sums; tolerance 1e-6 relative.
    model = jnp.array([[1.0, 4.0], [9.0, 0.5]])
    counts = jnp.array([[0.0, 1.0], [16.0, 2.0]])
    w = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    amp = float(fw.amplitude_loss(model, counts, w))
    assert amp == pytest.approx(1.0 + 1.0 + 1.0, rel=1e-5)
    poi = float(fw.poisson_nll(model, counts, w))
    expect = (1.0 - 0.0) + (4.0 - np.log(4.0)) + (9.0 - 16 * np.log(9.0))
    assert poi == pytest.approx(expect, rel=1e-5)


def test_loss_with_background_takes_the_background_gradient_from_poisson():
    """forward.loss_with_background: the value is the loss of coherent + b; the gradient
    w.r.t. the coherent intensity is that loss's, w.r.t. b the Poisson likelihood's
    (closed forms: d/dI of (sqrt(I + b) - sqrt(n))^2 = 1 - sqrt(n / (I + b)); d/db of
    I + b - n ln(I + b) = 1 - n / (I + b); float32, 1e-5 relative)."""
    coh = jnp.array([[1.0, 4.0], [9.0, 0.5]])
    b = jnp.array([[0.5, 0.25], [1.0, 2.0]])
    n = jnp.array([[0.0, 1.0], [16.0, 2.0]])
    w = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    for lf in (fw.amplitude_loss, fw.poisson_nll):
        v = float(fw.loss_with_background(lf, coh, b, n, w))
        assert v == pytest.approx(float(lf(coh + b, n, w)), rel=1e-6)
    g_coh, g_b = jax.grad(lambda c, bb: fw.loss_with_background(fw.amplitude_loss, c, bb, n, w), argnums=(0, 1))(coh, b)
    m = np.asarray(coh + b, np.float64)
    np.testing.assert_allclose(
        np.asarray(g_coh), np.asarray(w) * (1 - np.sqrt(np.asarray(n) / m)), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(np.asarray(g_b), np.asarray(w) * (1 - np.asarray(n) / m), rtol=1e-5, atol=1e-7)
    # with the Poisson loss it is the plain Poisson gradient in both
    g2 = jax.grad(lambda c, bb: fw.loss_with_background(fw.poisson_nll, c, bb, n, w), argnums=(0, 1))(coh, b)
    g3 = jax.grad(lambda c, bb: fw.poisson_nll(c + bb, n, w), argnums=(0, 1))(coh, b)
    for a, c in zip(g2, g3):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-6)


def test_gradients_through_forward_model():
    """check_grads (finite differences, order 1, reverse mode) of the amplitude and Poisson
    losses w.r.t. absorption, phase and the probe, in float64."""
    with jax.enable_x64(True):
        M = 8
        rng = np.random.default_rng(3)
        A = jnp.asarray(rng.uniform(0, 0.1, (12, 12)))
        P = jnp.asarray(rng.uniform(-0.3, 0.3, (12, 12)))
        probe = jnp.asarray(_probe(M, 2.0))
        corner = jnp.asarray([[2, 1], [3, 3]], jnp.int32)
        frac = jnp.asarray([[0.2, -0.3], [-0.4, 0.1]])
        counts = jnp.asarray(rng.poisson(50, (2, M, M)).astype(float))
        w = jnp.ones((M, M))

        def loss(a, p, pr, name):
            obj = fw.transmission(a, p)
            i = fw.intensities(obj[None], jnp.fft.fft2(pr)[None], jnp.zeros(2, jnp.int32), corner, frac)
            return fw.loss_fn(name)(i, counts, w)

        for name in ("amplitude", "poisson"):
            check_grads(lambda a, p: loss(a, p, probe, name), (A, P), order=1, modes=("rev",), eps=1e-6)  # noqa: B023
            check_grads(lambda pr: loss(A, P, pr, name), (probe,), order=1, modes=("rev",), eps=1e-6)  # noqa: B023


def test_frame_geometry_rejects_patches_outside_grid():
    g = Grid(pixel_size=10e-9, shape=(20, 20), origin=(0.0, 0.0))
    with pytest.raises(ValueError, match="outside"):
        fw.frame_geometry(np.array([[0.0, 0.0]]), g, 16)


def test_illumination_map_counts_every_frame():
    # Reference: sum over frames of the (integer-shifted) probe intensity; tolerance 1e-4.
    M = 8
    pint = np.zeros((1, M, M), np.float32)
    pint[0, M // 2, M // 2] = 1.0
    corner = np.array([[0, 0], [2, 3]], np.int32)
    frac = np.zeros((2, 2), np.float32)
    acc = np.asarray(fw.illumination_map(jnp.asarray(pint), np.zeros(2, np.int32), corner, frac, (16, 16)))[0]
    assert acc[M // 2, M // 2] == pytest.approx(1.0, abs=1e-4)
    assert acc[2 + M // 2, 3 + M // 2] == pytest.approx(1.0, abs=1e-4)
    assert acc.sum() == pytest.approx(2.0, abs=1e-3)
