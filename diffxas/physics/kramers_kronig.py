"""Pure-JAX Kramers–Kronig (KK) building blocks: the erf step, the Lorentzian, the Dawson
integral and their KK partners, and the closed-form transform of a piecewise-linear f''.

Jittable, differentiable, float32-safe (float64 under ``jax.enable_x64``), elementwise.
Hilbert / KK convention (derivation in :mod:`diffxas.physics.scattering`): for a feature
localised far from ``E = 0``, ``f'(E) = (1/pi) P∫ f''(E') / (E - E') dE'``; each closed form
is defined up to a constant that the smooth background absorbs. See
``docs/physics-scattering.md``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from diffxas.errors import ConfigError

__all__ = [
    "DAWSON_K",
    "DAWSON_X0",
    "dawson_integral",
    "erf_step",
    "kk_erf_step",
    "kk_lorentzian",
    "kk_piecewise_linear",
    "kk_piecewise_linear_matrix",
    "lorentzian",
]


def _float_dtype(*xs):
    return jnp.result_type(*[jnp.asarray(x) for x in xs], jnp.float32)


def erf_step(energy, b2, b3):
    """Erf edge step ``s(E) = 0.5 (1 + erf((E - b2) / b3))`` (0 below, 1 above)."""
    return 0.5 * (1.0 + jax.scipy.special.erf((energy - b2) / b3))


def lorentzian(energy, c2, c3):
    """Unit-height Lorentzian ``1 / (1 + ((E - c2) / c3)^2)`` (c3 = half width at half maximum)."""
    x = (energy - c2) / c3
    return 1.0 / (1.0 + x * x)


# ----------------------------------------------------------------------------------------------
# Dawson integral F(x) = ∫_0^x D(s) ds
# ----------------------------------------------------------------------------------------------

#: Joint between the Chebyshev fit (|x| <= X0) and the asymptotic expansion.
DAWSON_X0 = 6.0

#: K = lim_{x->inf} F(x) - ln(x)/2 = (gamma + 2 ln 2)/4 = 0.49087750650... (closed form;
#: the tests confirm it against quad(dawsn) to 1e-10).
DAWSON_K = (np.euler_gamma + 2.0 * np.log(2.0)) / 4.0

# Asymptotic expansion: D(x) ~ sum_n (2n-1)!! / (2^(n+1) x^(2n+1)), so
# F(x) ~ K + ln(x)/2 - sum_{n>=1} (2n-1)!! / (2^(n+1) 2n x^(2n))
#      = K + ln x/2 - 1/(8x^2) - 3/(32x^4) - 15/(96x^6) - 105/(256x^8) - 945/(640x^10) - ...
# Terms n = 1..8 are kept; at x = 6 the first omitted one (n = 9) is 1.8e-11.
_DAWSON_ASYM = tuple(
    float(math.prod(range(1, 2 * n, 2)) / (2 ** (n + 1) * 2 * n)) for n in range(1, 9)
)  # 1/8, 3/32, 15/96, 105/256, 945/640, ...


def _dawson_chebyshev() -> np.ndarray:
    """Chebyshev coefficients of F in u = 2 (x/X0)^2 - 1 on |x| <= X0 (float64, computed once).

    D is interpolated at Chebyshev points on [-X0, X0] (scipy.special.dawsn), integrated
    exactly in the Chebyshev basis, and the even coefficients c_2k of F in x/X0 are the
    coefficients c_k in u (T_2k(y) = T_k(2y^2 - 1)).
    """
    d = np.polynomial.Chebyshev.interpolate(scipy.special.dawsn, 100, domain=[-DAWSON_X0, DAWSON_X0])
    f = d.integ()
    f = f - f(0.0)
    c = np.asarray(f.coef[0::2], dtype=np.float64)
    keep = np.nonzero(np.abs(c) > 1e-14)[0]
    return c[: keep[-1] + 1]


_DAWSON_CHEB = _dawson_chebyshev()


def _clenshaw(coeffs: np.ndarray, u):
    b1 = jnp.zeros_like(u)
    b2 = jnp.zeros_like(u)
    two_u = 2.0 * u
    for c in coeffs[:0:-1]:
        b1, b2 = two_u * b1 - b2 + float(c), b1
    return u * b1 - b2 + float(coeffs[0])


def dawson_integral(x):
    """``F(x) = ∫_0^x D(s) ds`` with D Dawson's function (even in x, F'(x) = D(x)).

    Even Chebyshev series on ``|x| <= DAWSON_X0`` (6), asymptotic expansion
    ``K + ln|x|/2 - 1/(8x^2) - 3/(32x^4) - 15/(96x^6) - 105/(256x^8) - ...`` (8 terms)
    beyond. Absolute error ~1e-10 in float64 (a few float32 ulps, < 1e-6, in float32);
    the two branches agree to ~1e-10 in value and slope at the joint. Elementwise, jittable,
    differentiable.
    """
    x = jnp.asarray(x)
    x = x.astype(_float_dtype(x))
    ax = jnp.abs(x)
    inner = ax <= DAWSON_X0
    # Chebyshev branch (u clipped to [-1, 1] where unused, keeping both branches finite).
    xi = jnp.where(inner, x, 0.0)
    u = 2.0 * (xi / DAWSON_X0) ** 2 - 1.0
    f_inner = _clenshaw(_DAWSON_CHEB, u)
    # Asymptotic branch.
    xo = jnp.where(inner, DAWSON_X0, ax)
    w = 1.0 / (xo * xo)
    tail = jnp.zeros_like(w)
    for a in _DAWSON_ASYM[::-1]:
        tail = (tail + a) * w
    f_outer = DAWSON_K + 0.5 * jnp.log(xo) - tail
    return jnp.where(inner, f_inner, f_outer)


# ----------------------------------------------------------------------------------------------
# KK partners
# ----------------------------------------------------------------------------------------------


def kk_erf_step(energy, b2, b3):
    """KK partner (f' per unit f'' jump) of the erf step ``s(E) = 0.5 (1 + erf((E - b2)/b3))``.

    ``kk_erf_step(E, b2, b3) = (2/pi) (F(x) - K) + (1/pi) ln(b3)``, ``x = (E - b2)/b3``,
    F the Dawson integral, b3 in eV. It satisfies, for any E0,

        kk_erf_step(E, b2, b3) - (1/pi) ln|E - E0| = (1/pi) P∫ [s(E') - H(E' - E0)] / (E - E') dE'

    (derivation: H[erf](x) = (4/pi) F(x) + const because H[exp(-x^2)] = (2/sqrt(pi)) D(x);
    the constant follows from H[erf - sgn] -> 0 as x -> inf). Far from the edge it tends to
    ``(1/pi) ln|E - b2|`` and as b3 -> 0 to ``(1/pi) ln|E - b2|``: the KK partner of a sharp
    step with the ``(1/pi) ln|E - E0|`` of :meth:`VEdge.f1_background` put back.
    """
    x = (energy - b2) / b3
    return (2.0 / math.pi) * (dawson_integral(x) - DAWSON_K) + jnp.log(b3) / math.pi


def kk_lorentzian(energy, c2, c3):
    """KK partner ``x / (1 + x^2)``, ``x = (E - c2)/c3``, of the Lorentzian ``1 / (1 + x^2)``."""
    x = (energy - c2) / c3
    return x / (1.0 + x * x)


def kk_piecewise_linear_matrix(e_nodes, e_eval):
    """Matrix ``W`` (len(e_eval), len(e_nodes)) with ``kk_piecewise_linear(e_nodes, f, e_eval) = W @ f``.

    Segment ``[t_i, t_i+1]`` (width h_i) contributes, with ``xi = (E - t_i)/h_i`` and
    ``a(xi) = ln|xi / (xi - 1)|`` (``= ∫_0^1 du / (xi - u)``),
    ``f_i ((1 - xi) a + 1) + f_i+1 (xi a - 1)`` to ``pi * H``. Away from the segment
    ``a = -log1p(-1/xi)`` keeps float32 accurate; near it ``a = ln|E - t_i| - ln|E - t_i+1|``
    (eV) with ``ln|0|`` read as 0, so that at an interior node the two cancelling
    singularities drop out exactly (the finite limit) and at an end node with a non-zero
    end value the result is the finite part (the divergent ``f_0 ln|E - t_0|`` omitted).
    """
    t = jnp.asarray(e_nodes)
    x = jnp.asarray(e_eval)
    dtype = _float_dtype(t, x)
    t = t.astype(dtype)
    x = jnp.atleast_1d(x.astype(dtype))
    if t.ndim != 1 or t.shape[0] < 2:
        raise ConfigError(f"kk_piecewise_linear needs a 1-D array of at least 2 energy nodes, got shape {t.shape}")
    if not isinstance(t, jax.core.Tracer) and not bool(np.all(np.diff(np.asarray(t)) > 0)):
        raise ConfigError("kk_piecewise_linear needs strictly increasing energy nodes")
    h = t[1:] - t[:-1]  # (n-1,)
    d_lo = x[:, None] - t[None, :-1]  # (m, n-1): E - t_i
    d_hi = x[:, None] - t[None, 1:]  # E - t_{i+1}
    xi = d_lo / h
    near = (xi >= -1.0) & (xi <= 2.0)

    def safe_log(d):
        ad = jnp.abs(d)
        nz = ad > 0
        return jnp.where(nz, jnp.log(jnp.where(nz, ad, 1.0)), 0.0)

    xi_far = jnp.where(near, -2.0, xi)
    a_far = -jnp.log1p(-1.0 / xi_far)
    a_near = safe_log(d_lo) - safe_log(d_hi)
    a = jnp.where(near, a_near, a_far)
    # xi * a at a node (xi = 0 or 1) is 0 * a_near with a finite a_near: the limit xi ln|xi| -> 0.
    w_lo = (1.0 - xi) * a + 1.0
    w_hi = xi * a - 1.0
    zeros = jnp.zeros_like(x)[:, None]
    w = jnp.concatenate([w_lo, zeros], axis=1) + jnp.concatenate([zeros, w_hi], axis=1)
    return w / math.pi


def kk_piecewise_linear(e_nodes, f2_nodes, e_eval):
    """``(1/pi) P∫ g(E') / (E - E') dE'`` of the piecewise-linear interpolant g of samples.

    Args:
        e_nodes: (n,) strictly increasing energies, any spacing, eV (g = 0 outside
            ``[e_nodes[0], e_nodes[-1]]``).
        f2_nodes: (..., n) samples; leading axes (e.g. pixels) are batched.
        e_eval: scalar or (m,) energies, eV, anywhere (at a node, inside or outside the range).

    Returns:
        (..., m) (or (...) for scalar ``e_eval``). Closed form, see
        :func:`kk_piecewise_linear_matrix`; finite at interior nodes; at an end node with a
        non-zero end value it returns the finite part of the (log-divergent) transform.
    """
    f = jnp.asarray(f2_nodes)
    w = kk_piecewise_linear_matrix(e_nodes, e_eval)
    f = f.astype(jnp.result_type(f, w))
    if f.shape[-1] != w.shape[1]:
        raise ConfigError(f"f2_nodes has {f.shape[-1]} samples on its last axis but e_nodes has {w.shape[1]}")
    out = jnp.einsum("...n,mn->...m", f, w.astype(f.dtype), precision=jax.lax.Precision.HIGHEST)
    return out[..., 0] if jnp.ndim(e_eval) == 0 else out
