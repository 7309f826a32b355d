"""The JAX side of the per-pixel fit of eq. 1: the smooth reparameterisation of the bounded
and positive parameters, and a fixed-step Levenberg-Marquardt solver ``vmap``-ed over pixels.

Bounded parameters: ``x = lo + (hi - lo) sigmoid(u)`` (:func:`bounds_for`); the pre-edge peak
amplitudes ``c11, c21``: ``softplus(u)``; ``a, b1`` free. The solver: column-scaled normal
equations, Marquardt damping that shrinks on success and grows on failure, a step accepted
only if it lowers the residual (:func:`levenberg_marquardt`). The method is described in
:mod:`diffxas.solvers.twostep.fitting`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from diffxas.physics.spectra import PARAM_NAMES, XanesParams, absorption
from diffxas.solvers.twostep.fit_config import PRE_EDGE_SHAPE, FitConfig

# ----------------------------------------------------------------------------- parameterisation


def bounds_for(energies, cfg: FitConfig, pre_edge_max: float | None = None) -> dict[str, tuple[float, float]]:
    """Bounds of the reparameterised parameters (eV).

    b2 inside the scanned range; the pre-edge peak positions c12, c22 between the lowest
    energy and ``pre_edge_max`` (the edge position of the mean spectrum: pre-edge peaks lie
    below the edge; without this bound the second Lorentzian can migrate onto the edge
    and trade off against b2 and b3); widths in ``b3_bounds`` / ``width_bounds``.
    """
    e = np.asarray(energies, np.float64)
    top = float(e.max()) if pre_edge_max is None else float(min(max(pre_edge_max, e.min() + 1.0), e.max()))
    return {
        "b2": (float(e.min()), float(e.max())),
        "b3": tuple(map(float, cfg.b3_bounds)),
        "c12": (float(e.min()), top),
        "c13": tuple(map(float, cfg.width_bounds)),
        "c22": (float(e.min()), top),
        "c23": tuple(map(float, cfg.width_bounds)),
    }


#: Pre-edge peak amplitudes are absorption features, kept positive: ``c = softplus(u)``.
POSITIVE = ("c11", "c21")
_POS_FLOOR = 1e-7


def to_raw(values: dict[str, np.ndarray], bounds) -> np.ndarray:
    """Physical parameters -> unconstrained vector (..., 10) (inverse sigmoid / softplus, clipped inside)."""
    out = []
    for n in PARAM_NAMES:
        v = np.asarray(values[n], np.float64)
        if n in POSITIVE:
            v = np.maximum(v, _POS_FLOOR)
            v = v + np.log(-np.expm1(-v))  # inverse softplus, stable for small and large v
        elif n in bounds:
            lo, hi = bounds[n]
            t = np.clip((v - lo) / (hi - lo), 1e-4, 1 - 1e-4)
            v = np.log(t) - np.log1p(-t)
        out.append(v)
    return np.stack(np.broadcast_arrays(*out), axis=-1)


def from_raw(u, bounds) -> dict[str, Any]:
    """Unconstrained vector (..., 10) -> physical parameters (JAX)."""
    out = {}
    for i, n in enumerate(PARAM_NAMES):
        v = u[..., i]
        if n in POSITIVE:
            v = jax.nn.softplus(v)
        elif n in bounds:
            lo, hi = bounds[n]
            v = lo + (hi - lo) * jax.nn.sigmoid(v)
        out[n] = v
    return out


# ----------------------------------------------------------------------------- LM solver


def levenberg_marquardt(resid, x0, iterations, free=None, lam0: float = 1e-2):
    """Damped Gauss-Newton with a fixed number of iterations (pure JAX, vmappable).

    Column-scaled normal equations ``(Js^T Js + lam I) d = -Js^T r``; a step is taken only
    if it lowers ``sum r^2`` (then ``lam *= 0.3``, else ``lam *= 8``). ``free`` (0/1 per
    parameter, traced) holds the others fixed (their rows of the system become identity).
    ``iterations`` may be traced. Returns ``(x, cost)``.
    """
    n = x0.shape[0]
    free = jnp.ones(n, x0.dtype) if free is None else jnp.asarray(free, x0.dtype)
    r0 = resid(x0)
    c0 = jnp.sum(r0 * r0)
    eye = jnp.eye(n, dtype=x0.dtype)

    def body(_, st):
        x, lam, cost = st
        r = resid(x)
        J = jax.jacfwd(resid)(x) * free[None, :]
        s = jnp.where(free > 0, jnp.sqrt(jnp.sum(J * J, axis=0)) + 1e-12, 1.0)
        Js = J / s
        H = Js.T @ Js + (1.0 - free)[:, None] * eye
        g = Js.T @ r
        step = free * jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(H + lam * eye), -g) / s
        xn = x + step
        rn = resid(xn)
        cn = jnp.sum(rn * rn)
        ok = jnp.isfinite(cn) & (cn < cost)
        return (jnp.where(ok, xn, x), jnp.where(ok, lam * 0.3, jnp.minimum(lam * 8.0, 1e8)), jnp.where(ok, cn, cost))

    x, _, cost = jax.lax.fori_loop(0, iterations, body, (x0, jnp.asarray(lam0, x0.dtype), c0))
    return x, cost


BOUNDED = ("b2", "b3", "c12", "c13", "c22", "c23")


def _bounds_array(bounds) -> jnp.ndarray:
    return jnp.asarray([bounds[n] for n in BOUNDED], jnp.float32)


def _bounds_dict(barr):
    return {n: (barr[j, 0], barr[j, 1]) for j, n in enumerate(BOUNDED)}


@functools.lru_cache(maxsize=8)
def _lm_solver():
    """Jitted, pixel-vmapped LM for eq. 1. Energies, bounds, free mask and iteration count are
    runtime inputs, so one compilation serves every call with the same shapes."""

    def solve_one(u0, y, e, barr, free, iterations):
        bounds = _bounds_dict(barr)

        def resid(u):
            return absorption(XanesParams(**from_raw(u, bounds)), e) - y

        return levenberg_marquardt(resid, u0, iterations, free)

    return jax.jit(jax.vmap(solve_one, in_axes=(0, 0, None, None, None, None)))


@functools.lru_cache(maxsize=8)
def _shape_solver(iterations: int):
    """LM over the four shared pre-edge shape parameters with per-pixel parameters fixed."""
    idx = jnp.asarray([PARAM_NAMES.index(n) for n in PRE_EDGE_SHAPE])

    def solve(u_pix, y, w, shape0, e, barr):
        bounds = _bounds_dict(barr)

        def resid(sh):
            u = u_pix.at[:, idx].set(sh[None, :])
            return ((absorption(XanesParams(**from_raw(u, bounds)), e) - y) * w[None, :]).ravel()

        return levenberg_marquardt(resid, shape0, iterations)

    return jax.jit(solve)


def lm_fit(y: np.ndarray, u0: np.ndarray, energies, bounds, free=None, iterations: int = 60, chunk: int = 1024):
    """LM fit of eq. 1 to spectra ``y`` (N, K) from raw starts ``u0`` (N, 10).

    Pixels go through in chunks of ``chunk`` (the last one padded), so one compiled
    program serves every call with the same energies and bounds.
    Returns ``(u (N, 10), cost (N,))`` (cost = sum of squared residuals).
    """
    free = np.ones(len(PARAM_NAMES), np.float32) if free is None else np.asarray(free, np.float32)
    fn = _lm_solver()
    e = jnp.asarray(np.asarray(energies, np.float64), jnp.float32)
    barr = _bounds_array(bounds)
    n = y.shape[0]
    if n == 0:
        return np.zeros((0, len(PARAM_NAMES)), np.float32), np.zeros(0, np.float32)
    us, cs = [], []
    for s in range(0, n, chunk):
        yy = np.asarray(y[s : s + chunk], np.float32)
        uu = np.asarray(u0[s : s + chunk], np.float32)
        pad = chunk - yy.shape[0]
        if pad:  # keep one compiled shape
            yy = np.concatenate([yy, np.repeat(yy[-1:], pad, 0)])
            uu = np.concatenate([uu, np.repeat(uu[-1:], pad, 0)])
        u, c = fn(jnp.asarray(uu), jnp.asarray(yy), e, barr, jnp.asarray(free), jnp.int32(iterations))
        m = chunk - pad
        us.append(np.asarray(u)[:m])
        cs.append(np.asarray(c)[:m])
    return np.concatenate(us), np.concatenate(cs)
