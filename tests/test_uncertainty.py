"""Fisher information of the forward model (diffxas.physics.uncertainty) against brute force.

References: the dense Fisher matrix F = J^T diag(w / I) J of a small problem, with J the
full Jacobian of every detector pixel of every frame from jax.jacfwd (float64), and the
closed form of a linear-Gaussian model.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffxas.physics import uncertainty as U
from diffxas.physics.forward import intensities, transmission, uncenter
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import XanesParams, absorption, phase

jax.config.update("jax_enable_x64", False)


def _problem(seed=0, m=8, n=14, k_e=2, n_frames=5):
    rng = np.random.default_rng(seed)
    A = 0.3 * rng.random((k_e, n, n))
    phi = rng.normal(0, 0.8, (k_e, n, n))
    yy, xx = np.mgrid[:m, :m] - m / 2
    probe = np.exp(-(xx**2 + yy**2) / 6.0) * np.exp(1j * 0.3 * xx) * 30.0
    probes = np.stack([probe * (1 + 0.2 * k) for k in range(k_e)])
    ei = rng.integers(0, k_e, n_frames).astype(np.int32)
    corner = rng.integers(0, n - m + 1, (n_frames, 2)).astype(np.int32)
    frac = rng.uniform(-0.5, 0.5, (n_frames, 2)).astype(np.float32)
    w = np.ones((k_e, m, m), np.float32)
    w[:, 0, 1:3] = 0.0  # a masked detector region (centred layout)
    w[1, 5, 5] = 0.0
    return A, phi, probes, ei, corner, frac, w


def _dense_blocks(A, phi, probes, ei, corner, frac, w, background=None):
    """Exact per-pixel 2x2 blocks from the dense Fisher matrix (float64 brute force);
    ``background`` (K, M, M) uncentred: the counts are Poisson of I + b, F = J^T diag(w / (I + b)) J."""
    with jax.enable_x64(True):
        phat = jnp.fft.fft2(jnp.asarray(probes, jnp.complex128))
        wu = uncenter(jnp.asarray(w, jnp.float64))

        def model(x):
            obj = transmission(x[0], x[1])
            return intensities(
                obj, phat, jnp.asarray(ei), jnp.asarray(corner), jnp.asarray(frac, jnp.float64), centered=False
            )

        x = jnp.asarray(np.stack([A, phi]), jnp.float64)
        inten = np.asarray(model(x))
        J = np.asarray(jax.jacfwd(model)(x))  # (F, M, M, 2, K, N, N)
    wt = np.asarray(wu)[ei]  # (F, M, M)
    Jf = J.reshape(-1, *J.shape[3:])
    b = 0.0 if background is None else np.asarray(background, np.float64)[ei]
    ww = (wt / (inten + b)).reshape(-1)
    out = np.zeros((A.shape[0], 3) + A.shape[1:])
    out[:, 0] = np.einsum("q,qkyx,qkyx->kyx", ww, Jf[:, 0], Jf[:, 0])
    out[:, 1] = np.einsum("q,qkyx,qkyx->kyx", ww, Jf[:, 1], Jf[:, 1])
    out[:, 2] = np.einsum("q,qkyx,qkyx->kyx", ww, Jf[:, 0], Jf[:, 1])
    return out


def test_object_information_matches_dense_fisher():
    A, phi, probes, ei, corner, frac, w = _problem()
    ref = _dense_blocks(A, phi, probes, ei, corner, frac, w)
    got = np.asarray(
        U.object_information(
            transmission(jnp.asarray(A, jnp.float32), jnp.asarray(phi, jnp.float32)),
            jnp.fft.fft2(jnp.asarray(probes, jnp.complex64)),
            jnp.asarray(ei),
            jnp.asarray(corner),
            jnp.asarray(frac),
            uncenter(jnp.asarray(w)),
        )
    )
    scale = np.abs(ref).max()
    # float32 FFTs against the float64 dense Jacobian: 1e-4 of the largest block
    np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=0)
    assert np.abs(ref[:, 2]).max() > 1e-2 * scale  # the absorption-phase coupling is not trivially zero


def test_object_information_with_background_matches_dense_fisher():
    # Reference: the dense Fisher matrix of Poisson(I + b), J^T diag(w / (I + b)) J
    # (float64 brute force); a background map of the order of the frames' faint pixels.
    A, phi, probes, ei, corner, frac, w = _problem(seed=1)
    obj = transmission(jnp.asarray(A, jnp.float32), jnp.asarray(phi, jnp.float32))
    phat = jnp.fft.fft2(jnp.asarray(probes, jnp.complex64))
    inten = np.asarray(intensities(obj, phat, jnp.asarray(ei), jnp.asarray(corner), jnp.asarray(frac), centered=False))
    rng = np.random.default_rng(5)
    bg = (np.median(inten) * rng.uniform(0.5, 2.0, (2, 8, 8))).astype(np.float32)
    ref = _dense_blocks(A, phi, probes, ei, corner, frac, w, bg)
    got = np.asarray(
        U.object_information(
            obj,
            phat,
            jnp.asarray(ei),
            jnp.asarray(corner),
            jnp.asarray(frac),
            uncenter(jnp.asarray(w)),
            background=jnp.asarray(bg),
        )
    )
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=0)  # float32 against float64, as above
    plain = _dense_blocks(A, phi, probes, ei, corner, frac, w)
    assert ref[:, :2].sum() < 0.95 * plain[:, :2].sum()  # the background costs information here


def test_information_sum_rule_counts_photons():
    # closed form: sum over pixels of F_AA + F_pp = 4 * wbar * photons in the frame
    A, phi, probes, ei, corner, frac, _ = _problem(seed=3, n_frames=1)
    w = np.ones((2, 8, 8), np.float32)
    obj = transmission(jnp.asarray(A, jnp.float32), jnp.asarray(phi, jnp.float32))
    info = np.asarray(
        U.object_information(
            obj,
            jnp.fft.fft2(jnp.asarray(probes, jnp.complex64)),
            jnp.asarray(ei),
            jnp.asarray(corner),
            jnp.asarray(frac),
            jnp.asarray(w),
        )
    )
    photons = float(
        np.sum(
            intensities(
                obj,
                jnp.fft.fft2(jnp.asarray(probes, jnp.complex64)),
                jnp.asarray(ei),
                jnp.asarray(corner),
                jnp.asarray(frac),
            )
        )
    )
    np.testing.assert_allclose(info[:, 0].sum() + info[:, 1].sum(), 4 * photons, rtol=1e-4)


def _xanes(shape, rng):
    return XanesParams(
        a=jnp.asarray(0.02 + 0.01 * rng.random(shape), jnp.float32),
        b1=jnp.asarray(0.1 + 0.05 * rng.random(shape), jnp.float32),
        b2=jnp.asarray(5480 + 2 * rng.random(shape), jnp.float32),
        b3=jnp.asarray(4.0 + rng.random(shape), jnp.float32),
        c11=jnp.asarray(0.02 + 0.01 * rng.random(shape), jnp.float32),
        c12=jnp.asarray(5469.0),
        c13=jnp.asarray(1.5),
        c21=jnp.asarray(0.01 + 0.01 * rng.random(shape), jnp.float32),
        c22=jnp.asarray(5474.0),
        c23=jnp.asarray(2.0),
        n_other=jnp.asarray(1e23 * (1 + rng.random(shape)), jnp.float32),
    )


NAMES = ("a", "b1", "b2", "b3", "c11", "c21", "n_other")


def test_parameter_information_matches_dense_chain():
    """Parameters -> (A, phi) -> intensities, identity grids: per-pixel blocks of the dense Fisher."""
    rng = np.random.default_rng(1)
    n, m = 10, 8
    edge = VEdge.from_tables("V")
    e = np.array([5440.0, 5468.0, 5478.0, 5485.0, 5520.0])
    p = _xanes((n, n), rng)
    yy, xx = np.mgrid[:m, :m] - m / 2
    probe = np.exp(-(xx**2 + yy**2) / 5.0) * 50.0
    probes = np.stack([probe] * len(e))
    n_fr = 12
    ei = np.arange(n_fr, dtype=np.int32) % len(e)
    corner = rng.integers(0, n - m + 1, (n_fr, 2)).astype(np.int32)
    frac = np.zeros((n_fr, 2), np.float32)
    w = np.ones((len(e), m, m), np.float32)
    ej = jnp.asarray(e, jnp.float32)
    phat = jnp.fft.fft2(jnp.asarray(probes, jnp.complex64))
    fixed = p.as_dict()

    def model(vec):  # vec: (n_par, H, W) physical values
        q = XanesParams(**{**fixed, **{k: vec[i] for i, k in enumerate(NAMES)}})
        obj = transmission(absorption(q, ej), phase(q, ej, edge))
        return intensities(obj, phat, jnp.asarray(ei), jnp.asarray(corner), jnp.asarray(frac), centered=False)

    x0 = jnp.stack([jnp.broadcast_to(getattr(p, k), (n, n)) for k in NAMES])
    # scale each parameter to O(1) so float32 jacfwd is well conditioned
    scl = jnp.asarray([0.01, 0.1, 1.0, 1.0, 0.01, 0.01, 1e23])[:, None, None]
    J = np.asarray(jax.jacfwd(lambda z: model(z * scl))(x0 / scl), np.float64)  # (F, M, M, n, H, W)
    inten = np.asarray(model(x0), np.float64)
    Jf = J.reshape(-1, len(NAMES), n, n)
    dense = (
        np.einsum("q,qiyx,qjyx->yxij", 1.0 / inten.reshape(-1), Jf, Jf)
        / np.asarray(scl)[:, 0, 0][None, None, :, None]
        / np.asarray(scl)[:, 0, 0][None, None, None, :]
    )
    obj = transmission(absorption(p, ej), phase(p, ej, edge))
    info = U.object_information(obj, phat, jnp.asarray(ei), jnp.asarray(corner), jnp.asarray(frac), jnp.asarray(w))
    got = np.asarray(U.parameter_information(p, ej, edge, info, NAMES), np.float64)
    seen = np.asarray(info[:, 0].sum(0)) > 1e-3 * float(info[:, 0].sum(0).max())
    d = np.sqrt(np.einsum("yxii->yxi", dense))
    rel = np.abs(got - dense) / (d[..., :, None] * d[..., None, :] + 1e-300)
    # correlation-scaled agreement (float32 chain vs the float32 jacfwd): 1e-3
    assert rel[seen].max() < 1e-3


def test_batched_spectral_jacobian_equals_loop():
    """``spectral_jacobian(batched=True)`` (one vmap over the tangents, the start-up's route)
    against the per-parameter JVP loop (the reference; itself checked against the dense
    chain above), also jitted with scales as ``prior_weights`` uses it: float32 rounding in
    the derivative chains (Clenshaw sums of the KK terms), 1e-5 of each parameter's largest
    derivative (measured 1.1e-6)."""
    rng = np.random.default_rng(3)
    edge = VEdge.from_tables("V")
    ej = jnp.asarray([5440.0, 5468.0, 5478.0, 5485.0, 5520.0], jnp.float32)
    p = _xanes((6, 7), rng)
    sc = U.parameter_scales(NAMES, edge)
    ref = U.spectral_jacobian(p, ej, edge, NAMES, sc)
    for got in (
        U.spectral_jacobian(p, ej, edge, NAMES, sc, batched=True),
        jax.jit(lambda q: U.spectral_jacobian(q, ej, edge, NAMES, sc, batched=True))(p),
    ):
        for r, g in zip(ref, got):
            assert g.shape == r.shape == (len(NAMES), 5, 6, 7)
            big = np.max(np.abs(np.asarray(r)), axis=(1, 2, 3), keepdims=True)
            assert np.max(np.abs(np.asarray(g) - np.asarray(r)) / np.maximum(big, 1e-30)) < 1e-5


def test_covariance_linear_gaussian_closed_form():
    """y = X theta + noise(sigma): Fisher X^T X / sigma^2 and covariance sigma^2 (X^T X)^-1."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    sigma = 0.2
    fisher = (X.T @ X / sigma**2)[None, None]
    cov = U.covariance(fisher)[0, 0]
    np.testing.assert_allclose(cov, sigma**2 * np.linalg.inv(X.T @ X), rtol=1e-10)
    # delta method on g = theta_0 + 2 theta_2: var = g^T C g
    g = np.array([1.0, 0.0, 2.0])
    std = U.descriptor_std(U.covariance(fisher), {"g": g[:, None, None]})["g"][0, 0]
    np.testing.assert_allclose(std, np.sqrt(g @ cov @ g), rtol=1e-10)


def test_covariance_singular_pixel_is_nan():
    f = np.zeros((2, 1, 2, 2))
    f[0, 0] = [[2.0, 0.0], [0.0, 3.0]]
    f[1, 0] = [[1.0, 1.0], [1.0, 1.0]]  # rank one: one combination unknown
    c = U.covariance(f)
    np.testing.assert_allclose(c[0, 0], np.diag([0.5, 1 / 3.0]))
    assert np.all(np.isnan(c[1, 0]))
