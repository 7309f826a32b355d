"""Host-side starts of the per-pixel fit of eq. 1 by variable projection (numpy, float64).

Grid searches over the nonlinear parameters with the linear amplitudes solved exactly
(:func:`varpro_grid`, exact non-negative least squares for the pre-edge peaks): the mean
spectrum's ten parameters (:func:`fit_global`), the pre-edge shape shared by the material
pixels (:func:`fit_shared_shape`), every pixel's start with that shape fixed
(:func:`init_pixels`), and the closed-form re-placement of one pre-edge peak per pixel
(:func:`peak_grid`). The method is described in :mod:`diffxas.solvers.twostep.fitting`.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from diffxas.physics.spectra import PARAM_NAMES
from diffxas.solvers.twostep.fit_config import PRE_EDGE_SHAPE, FitConfig
from diffxas.solvers.twostep.fit_lm import _bounds_array, _shape_solver, bounds_for, from_raw, lm_fit, to_raw


# float64 numpy, elementwise-broadcasting twins of spectra.edge_step / spectra.lorentzian
# (the one spectral model, JAX, energy axis first) for the host-side grid search over
# thousands of candidate shapes; tests/test_fitting.py ties them to the model.
def _step(e, b2, b3):
    return 0.5 * (1.0 + erf((e - b2) / b3))


def _lor(e, c2, c3):
    return 1.0 / (1.0 + ((e - c2) / c3) ** 2)


def _ls_all(qt, rinv, Y, yy):
    """rss (C, N) and coefficients (C, p, N) of every design for every spectrum."""
    proj = np.matmul(qt, Y)  # (C, p, N), batched BLAS
    rss = yy[None] - np.sum(proj * proj, axis=1)
    return rss, np.matmul(rinv, proj)


def varpro_grid(
    Y: np.ndarray, designs: np.ndarray, nonneg: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best design per spectrum: ``Y`` (K, N), ``designs`` (C, K, p).

    Returns ``(best index (N,), coefficients (N, p), rss (N,))`` of the linear least-squares
    fits ``Y[:, n] ~ designs[c] @ coef``, minimised over c. Columns listed in ``nonneg``
    get non-negative coefficients (exact NNLS by enumerating which of them are held at
    zero: the optimum is the best feasible unconstrained fit over those subsets).
    """
    Y = np.asarray(Y, np.float64)
    designs = np.asarray(designs, np.float64)
    n = Y.shape[1]
    c_all, k_rows, p = designs.shape
    if k_rows < p:
        # every design would fit exactly (rss 0): the pick would be meaningless; callers
        # with so few energies take another route (e.g. joint.fit_shape_and_amplitudes)
        raise ValueError(
            f"varpro_grid: {k_rows} samples for {p} design columns; needs at least as many samples as columns"
        )
    subsets = [tuple(s) for r in range(len(nonneg) + 1) for s in itertools.combinations(nonneg, r)]
    facts = []
    for drop in subsets:
        keep = [j for j in range(p) if j not in drop]
        q, r = np.linalg.qr(designs[:, :, keep])
        rinv = np.linalg.inv(r + 1e-12 * np.eye(len(keep)))
        facts.append((keep, np.ascontiguousarray(np.swapaxes(q, 1, 2)), rinv))
    yy = np.sum(Y * Y, axis=0)
    best = np.zeros(n, np.int64)
    best_rss = np.full(n, np.inf)
    best_coef = np.zeros((n, p))
    step = max(1, int(4e6 // max(1, n * p)))
    cols = np.arange(n)
    for s in range(0, c_all, step):
        sl = slice(s, min(s + step, c_all))
        rss_b = np.full((sl.stop - s, n), np.inf)
        coef_b = np.zeros((sl.stop - s, p, n))
        for keep, qt, rinv in facts:
            rss, coef = _ls_all(qt[sl], rinv[sl], Y, yy)
            full = np.zeros((rss.shape[0], p, n))
            full[:, keep] = coef
            ok = np.all(full[:, list(nonneg)] >= 0, axis=1) if nonneg else np.ones_like(rss, bool)
            better = ok & (rss < rss_b)
            rss_b = np.where(better, rss, rss_b)
            coef_b = np.where(better[:, None], full, coef_b)
        i = np.argmin(rss_b, axis=0)
        v = rss_b[i, cols]
        upd = v < best_rss
        best[upd] = s + i[upd]
        best_rss[upd] = v[upd]
        best_coef[upd] = coef_b[i[upd], :, cols[upd]]
    return best, best_coef, np.maximum(best_rss, 0.0)


def _edge_grid(e, cfg: FitConfig, coarsen: int = 1):
    lo, hi = float(e.min()), float(e.max())
    b2 = np.arange(lo, hi + 1e-9, cfg.b2_step * coarsen)
    b3 = np.asarray(cfg.b3_grid, np.float64)
    return np.array([(x, w) for x in b2 for w in b3])


def fit_global(y: np.ndarray, energies, cfg: FitConfig) -> dict[str, float]:
    """All ten parameters of one spectrum (the material pixels' mean), robust start + LM."""
    e = np.asarray(energies, np.float64)
    y = np.asarray(y, np.float64)
    eg = _edge_grid(e, cfg)
    des = np.stack([np.stack([np.ones_like(e), _step(e, b2, b3)], 1) for b2, b3 in eg])
    i, coef, _ = varpro_grid(y[:, None], des)
    b2, b3 = eg[i[0]]
    top = max(b2 - cfg.pre_edge_margin * b3, e.min() + 1.0)  # pre-edge peaks stay below this
    # first pre-edge peak: below the edge
    wlo, whi = cfg.width_bounds
    widths = np.clip(np.array([0.6, 1.0, 1.5, 2.5]), wlo, whi)
    c12s = np.arange(e.min(), max(e.min() + 0.5, top), 0.25)
    cand = [(c, w) for c in c12s for w in widths]
    des = np.stack([np.stack([np.ones_like(e), _step(e, b2, b3), _lor(e, c, w)], 1) for c, w in cand])
    i, coef, _ = varpro_grid(y[:, None], des, nonneg=(2,))
    c12, c13 = cand[i[0]]
    # second peak: between the first and the edge position
    c22s = np.arange(c12 + 1.0, max(c12 + 1.5, top), 0.5)
    widths2 = np.clip(np.array([1.0, 2.0, 3.0]), wlo, whi)
    cand2 = [(c, w) for c in c22s for w in widths2]
    des = np.stack(
        [np.stack([np.ones_like(e), _step(e, b2, b3), _lor(e, c12, c13), _lor(e, c, w)], 1) for c, w in cand2]
    )
    i, coef, _ = varpro_grid(y[:, None], des, nonneg=(2, 3))
    c22, c23 = cand2[i[0]]
    a, b1, c11, c21 = coef[0]
    start = dict(a=a, b1=b1, b2=b2, b3=b3, c11=c11, c12=c12, c13=c13, c21=c21, c22=c22, c23=c23)
    bounds = bounds_for(e, cfg, pre_edge_max=top)
    u, _ = lm_fit(y[None], to_raw(start, bounds)[None], e, bounds, iterations=max(200, cfg.iterations), chunk=cfg.chunk)
    out = {k: float(v) for k, v in from_raw(jnp.asarray(u[0]), bounds).items()}
    out["pre_edge_max"] = float(top)
    return out


def init_pixels(
    Y: np.ndarray, energies, shape: dict[str, float], cfg: FitConfig, return_rss: bool = False, coarsen: int = 1
):
    """Per-pixel start by variable projection: grid over (b2, b3), pre-edge shape fixed.

    The linear amplitudes (a, b1, c11, c21) are solved exactly for every pixel at every
    grid point (one thin QR per grid point; all pixels projected in one product).
    """
    e = np.asarray(energies, np.float64)
    eg = _edge_grid(e, cfg, coarsen)
    l1 = _lor(e, shape["c12"], shape["c13"])
    l2 = _lor(e, shape["c22"], shape["c23"])
    des = np.empty((len(eg), len(e), 4))
    des[:, :, 0] = 1.0
    des[:, :, 1] = _step(e[None, :], eg[:, :1], eg[:, 1:])
    des[:, :, 2] = l1
    des[:, :, 3] = l2
    i, coef, rss = varpro_grid(Y, des, nonneg=(2, 3))
    if return_rss:
        return float(rss.sum())
    n = Y.shape[1]
    return {
        "a": coef[:, 0],
        "b1": coef[:, 1],
        "b2": eg[i, 0],
        "b3": eg[i, 1],
        "c11": coef[:, 2],
        "c21": coef[:, 3],
        **{k: np.full(n, shape[k]) for k in PRE_EDGE_SHAPE},
    }


def fit_shared_shape(
    Y: np.ndarray, energies, start: dict[str, float], cfg: FitConfig, rounds: int = 4, max_pixels: int = 400
) -> dict[str, float]:
    """Pre-edge shape (c12, c13, c22, c23) shared by the pixels ``Y`` (K, N), fitted jointly.

    Alternates (``rounds`` times) a per-pixel fit of the six other parameters (shape fixed)
    and an LM fit of the four shared ones over all pixels' residuals (per-pixel fixed).
    Uses at most ``max_pixels`` pixels (those with the largest crude edge jumps).
    """
    e = np.asarray(energies, np.float64)
    bounds = bounds_for(e, cfg, start.get("pre_edge_max"))
    if Y.shape[1] > max_pixels:
        n3 = min(3, len(e) // 3)
        jump = Y[-n3:].mean(axis=0) - Y[:n3].mean(axis=0)
        Y = Y[:, np.argsort(jump)[-max_pixels:]]
    shape = {k: float(start[k]) for k in PRE_EDGE_SHAPE}
    # the second peak overlaps the edge onset: choose its start by a joint grid search
    # (total variable-projection residual of all pixels, per-pixel edge grid)
    top = bounds["c22"][1]
    best = (np.inf, shape["c22"], shape["c23"])
    wlo, whi = cfg.width_bounds
    for c22 in np.arange(shape["c12"] + 1.0, max(shape["c12"] + 1.5, top), 1.0):
        for c23 in np.clip([1.0, 2.0, 3.0], wlo, whi):
            st = init_pixels(Y, e, {**start, **shape, "c22": c22, "c23": c23}, cfg, return_rss=True, coarsen=2)
            if st < best[0]:
                best = (st, c22, c23)
    shape["c22"], shape["c23"] = float(best[1]), float(best[2])
    free = [n not in PRE_EDGE_SHAPE for n in PARAM_NAMES]
    sidx = [PARAM_NAMES.index(n) for n in PRE_EDGE_SHAPE]
    solver = _shape_solver(30)
    for _ in range(rounds):
        st = init_pixels(Y, e, {**start, **shape}, cfg)
        u, _ = lm_fit(Y.T, to_raw(st, bounds), e, bounds, free=free, iterations=cfg.iterations, chunk=cfg.chunk)
        sh0 = jnp.asarray(u[0, sidx], jnp.float32)
        npix = Y.shape[1]
        pad = max_pixels - npix  # one compiled shape: pad with zero-weight pixels
        up = np.concatenate([u, np.repeat(u[:1], pad, 0)]) if pad > 0 else u
        yp = np.concatenate([Y, np.repeat(Y[:, :1], pad, 1)], axis=1) if pad > 0 else Y
        wp = np.concatenate([np.ones(npix), np.zeros(max(pad, 0))])
        sh, _ = solver(
            jnp.asarray(up, jnp.float32),
            jnp.asarray(yp, jnp.float32),
            jnp.asarray(wp, jnp.float32),
            sh0,
            jnp.asarray(e, jnp.float32),
            _bounds_array(bounds),
        )
        full = np.array(u[0], np.float64)
        full[sidx] = np.asarray(sh)
        p = from_raw(jnp.asarray(full), bounds)
        shape = {k: float(p[k]) for k in PRE_EDGE_SHAPE}
    return shape


def peak_grid(
    Y: np.ndarray, energies, p: dict[str, np.ndarray], bounds, peak: int = 2, block: int = 4096
) -> dict[str, np.ndarray]:
    """Per pixel, the pre-edge peak ``peak`` (1 or 2: c{peak}1 >= 0, c{peak}2, c{peak}3)
    that best fits what the rest of eq. 1 (``p``, physical, (N,) each) leaves of ``Y``
    (K, N): a grid of the position over
    the measured energies inside its bounds (and their midpoints) times widths 0.3-3 eV
    (inside the width bounds), the amplitude by non-negative least squares (closed form)."""
    e = np.asarray(energies, np.float64)
    amp, cen, wid = (f"c{peak}1", f"c{peak}2", f"c{peak}3")
    other = 3 - peak
    lo, hi = bounds[cen]
    wlo, whi = bounds[wid]
    es = np.unique(e)
    pos = np.unique(np.concatenate([es, 0.5 * (es[1:] + es[:-1])]))
    pos = pos[(pos >= lo) & (pos <= hi)]
    if pos.size == 0:
        return {}
    widths = np.unique(np.clip([0.3, 0.6, 1.0, 2.0, 3.0], wlo, whi))
    cand = np.array([(c, w) for c in pos for w in widths])  # (C, 2)
    L = _lor(e[None, :], cand[:, :1], cand[:, 1:])  # (C, K)
    LL = np.sum(L * L, axis=1)  # (C,)
    q = {k: np.asarray(v, np.float64) for k, v in p.items()}
    rest = (
        q["a"]
        + q["b1"] * _step(e[:, None], q["b2"], q["b3"])
        + q[f"c{other}1"] * _lor(e[:, None], q[f"c{other}2"], q[f"c{other}3"])
    )
    R = np.asarray(Y, np.float64) - rest  # (K, N)
    n = R.shape[1]
    out = {amp: np.array(q[amp]), cen: np.array(q[cen]), wid: np.array(q[wid])}
    for a in range(0, n, block):
        r = R[:, a : a + block]
        proj = np.maximum(L @ r, 0.0)  # (C, n)
        gain = proj * proj / LL[:, None]  # decrease of the rss
        i = np.argmax(gain, axis=0)
        cols = np.arange(r.shape[1])
        out[amp][a : a + block] = proj[i, cols] / LL[i]
        out[cen][a : a + block] = cand[i, 0]
        out[wid][a : a + block] = cand[i, 1]
    return out
