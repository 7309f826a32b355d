"""Data loss, regulariser and prior of the joint problem."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffxas.physics.forward import intensities, loss_fn, loss_with_background
from diffxas.physics.scattering import VEdge
from diffxas.physics.uncertainty import covariance, parameter_information, parameter_scales, scaled_information
from diffxas.solvers.joint.config import ALL_PARAMS, JointConfig
from diffxas.solvers.joint.model import (
    JointParams,
    Problem,
    _tv,
    from_raw,
    model_objects_and_probes,
    physical,
)
from diffxas.solvers.joint.result import object_information_joint


def chunk_loss(obj, phat, nuis, weight, lf, frames, fid, k, corner, frac):
    """Data loss of one chunk of frames (``fid`` -1 = padding, weight 0); frames with zero
    frequency at (0, 0); ``nuis`` = (position corrections, log intensity scales) of all
    frames and the background of every energy (None: none). The model intensity is
    ``scale |F(P O)|^2 + b`` (forward.py, "Losses"); the background's gradient is the
    Poisson likelihood's whatever the loss (:func:`forward.loss_with_background`)."""
    dpos, lsc, bg = nuis
    ok = fid >= 0
    j = jnp.where(ok, fid, 0)
    inten = intensities(obj, phat, k, corner, frac + dpos[j], centered=False) * jnp.exp(lsc[j])[:, None, None]
    w = weight[k] * ok[:, None, None]
    if bg is not None:
        return loss_with_background(lf, inten, bg[k][:, None, None] if bg.ndim == 1 else bg[k], frames, w)
    return lf(inten, frames, w)


def _frames_loss(params: JointParams, prob: Problem, obj, phat, nuis, lf, frames, fid, k, corner, frac):
    return chunk_loss(obj, phat, nuis, prob.weight, lf, frames, fid, k, corner, frac)


def data_loss(params: JointParams, prob: Problem, idx: jax.Array | None, loss_name: str, chunk: int):
    """Data loss over all frames (``idx=None``: scan over the chunked layout) or frames ``idx``.

    Each chunk is rematerialised in the backward pass, so memory holds one chunk of
    exit waves at a time.
    """
    obj, phat, nuis = model_objects_and_probes(params, prob)
    lf = loss_fn(loss_name)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    if idx is None:
        xs = (prob.frames, prob.frame_id, prob.energy_index, prob.corner, prob.frac)
    else:
        n = idx.shape[0]
        nch = -(-n // chunk)
        idx = jnp.pad(idx, (0, nch * chunk - n), constant_values=0)
        valid = jnp.arange(nch * chunk) < n
        sel = lambda x: flat(x)[idx].reshape((nch, chunk) + x.shape[2:])  # noqa: E731
        fid = jnp.where(valid, flat(prob.frame_id)[idx], -1).reshape(nch, chunk)
        xs = (sel(prob.frames), fid, sel(prob.energy_index), sel(prob.corner), sel(prob.frac))

    def one_chunk(x):
        return _frames_loss(params, prob, obj, phat, nuis, lf, *x)

    if xs[0].shape[0] == 1:  # one chunk: no scan, no rematerialisation
        return one_chunk(tuple(x[0] for x in xs))
    one_chunk = jax.checkpoint(one_chunk)

    def body(acc, x):
        return acc + one_chunk(x), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.result_type(params.probe_re.dtype, prob.frames.dtype)), xs)
    return total


def total_loss(params, prob, idx, cfg_static):
    loss_name, chunk, tv_weight, n_frames_total = cfg_static
    d = data_loss(params, prob, idx, loss_name, chunk)
    if idx is not None:
        d = d * (n_frames_total / idx.shape[0])
    if tv_weight > 0:
        d = d + tv_weight * regulariser(params, prob)
    return d


def regulariser(params: JointParams, prob: Problem):
    """Total variation of each per-pixel raw map over the illuminated area, times its
    per-parameter weight ``prob.tv_scale`` (the noise rule, :func:`prior_weights`)."""
    reg = 0.0
    for i, k in enumerate(ALL_PARAMS):
        r = params.raw[k]
        if r.ndim == 2:
            reg = reg + _tv(r, prob.illuminated, prob.tv_scale[i])
    return reg


#: Data loss per unit of negative log-likelihood (the amplitude loss sum (sqrt I - sqrt n)^2
#: is a Gaussian on sqrt(n) of variance 1/4, i.e. half the NLL; the Poisson loss is the NLL).
LOSS_PER_NLL = {"amplitude": 0.5, "poisson": 1.0}


#: Per-pixel standard errors are clipped to this factor around their median before they
#: set the weights (pixels without V have no edge-energy information at all).
SIGMA_CLIP = 10.0


def prior_weights(params: JointParams, prob: Problem, cfg: JointConfig, edge: VEdge, _eager: bool = False):
    r"""Total-variation weights of the per-pixel maps from the noise level (``prior="tv"``).

    The rule (docs/physics.md, "Spatial prior"): near the solution the data term of pixel
    p is ``(theta_p - theta_hat_p)^2 / (2 sigma_p^2)`` in NLL units, with ``sigma_p`` the
    Cramer-Rao standard error of that pixel's parameter (:mod:`diffxas.physics.uncertainty`,
    evaluated at the initial maps and probes). Weighting the pixel's gradient magnitude by
    ``w_p = c / sigma_p`` makes each map a Rudin-Osher-Fatemi denoising of the per-pixel
    estimate with the local threshold ``lambda_p = c sigma_p``: a step between neighbours
    smaller than about ``c`` local noise standard errors is flattened, larger ones (domain
    boundaries, particle rims) are kept, at every pixel whatever its own noise (thin rims,
    dose). ``sigma_p`` is clipped to ``[median / SIGMA_CLIP, median * SIGMA_CLIP]``, the
    median over the particles' pixels (illuminated, edge jump above
    ``valid_jump_fraction``, outside the empty reference region); non-finite values take the
    median. ``c = prior_strength`` (default 0.5); weights in data-loss units (times
    :data:`LOSS_PER_NLL`).

    Returns ``(record, maps)``: name -> {"sigma_raw" (median), "weight" (median weight)}
    for the results file, and name -> (H, W) weight map. A parameter without any particle
    pixel of finite error (e.g. a membrane-only scan) gets weight 0 and ``sigma_raw``
    None: no prior, rather than a guess.

    The information, the physical maps and the transforms' derivatives are computed in one
    jitted call (:func:`_prior_information`): one compilation instead of ~150 small eager
    ones (the start-up of every joint run; ``_eager=True`` keeps the step-by-step route,
    the reference of tests/test_joint_loss.py::test_prior_weights_fused_equals_eager).
    """
    names = [k for k in ALL_PARAMS if k in cfg.spectra.per_pixel and params.raw[k].ndim == 2]
    if not names:
        return {}, {}
    fisher, p, dphys = (_prior_information_eager if _eager else _prior_information)(params, prob, edge, names)
    cov = covariance(fisher)
    b1 = np.asarray(p["b1"], np.float64)
    ill = np.asarray(prob.illuminated, bool) & (np.asarray(prob.empty) < 0.5)
    thr = cfg.valid_jump_fraction * (np.percentile(b1[ill], 99) if ill.any() else 0.0)
    region = ill & (b1 > thr)
    scale = cfg.prior.strength * LOSS_PER_NLL[cfg.optim.loss]
    out, maps = {}, {}
    for i, k in enumerate(names):
        if k in prob.scales.relative and "b1" in names:
            # raw = c / b1: delta method, g = (d raw / d b1, d raw / d c) = (-c / b1^2, 1 / b1)
            j = names.index("b1")
            c = np.asarray(p[k], np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                g1, g2 = -c / b1**2, 1.0 / b1
                s = np.sqrt(np.abs(g1 * g1 * cov[..., j, j] + 2 * g1 * g2 * cov[..., i, j] + g2 * g2 * cov[..., i, i]))
        else:
            # d physical / d raw, elementwise (the transforms act pixel by pixel)
            d = np.asarray(dphys[k], np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.sqrt(np.abs(cov[..., i, i])) / np.maximum(np.abs(d), 1e-30)
        good = np.isfinite(s) & (s > 0)
        vals = s[region & good]
        if vals.size == 0:
            out[k] = {"sigma_raw": None, "weight": 0.0}
            continue
        sig = float(np.median(vals))
        s = np.clip(np.where(good, s, sig), sig / SIGMA_CLIP, sig * SIGMA_CLIP)
        maps[k] = (scale / s).astype(np.float32)
        out[k] = {"sigma_raw": sig, "weight": float(scale / sig)}
    return out, maps


def _raw_derivative(k: str, raw, scales):
    """d physical / d raw of per-pixel map ``k``, elementwise (H, W): the transforms act pixel by pixel."""
    return jax.grad(lambda r: jnp.sum(from_raw(k, r, scales)))(raw)


def _prior_information_eager(params: JointParams, prob: Problem, edge: VEdge, names):
    """The step-by-step route of :func:`prior_weights` (eager JAX, one compilation per small
    operation): per-pixel Fisher matrices (H, W, n, n) float64 of ``names`` (physical units),
    the physical maps by name (b1 and ``names``), and d physical / d raw per name."""
    info = np.asarray(eqx.filter_jit(object_information_joint)(params, prob))
    p = physical(params, prob.scales, 1.0 - prob.empty, prob.domain)
    fisher = parameter_information(p, prob.energies, edge, info, names)
    maps = {k: np.asarray(getattr(p, k)) for k in set(names) | {"b1"}}
    return fisher, maps, {k: np.asarray(_raw_derivative(k, params.raw[k], prob.scales)) for k in names}


def _prior_information(params: JointParams, prob: Problem, edge: VEdge, names):
    """Same outputs as :func:`_prior_information_eager` from one jitted call
    (:func:`_prior_information_fused`); the float64 rescaling is done on the host."""
    sc = parameter_scales(names, edge)
    f, maps, d = _prior_information_fused(params, prob, edge, tuple(names), tuple(float(x) for x in sc))
    fisher = np.asarray(f, np.float64) / (sc[:, None] * sc[None, :])
    return fisher, {k: np.asarray(v) for k, v in maps.items()}, {k: np.asarray(v) for k, v in d.items()}


@eqx.filter_jit
def _prior_information_fused(params: JointParams, prob: Problem, edge: VEdge, names: tuple, sc: tuple):
    """Object information on the common grid, the spectral chain and the raw-map derivatives
    in one XLA program (``names``, ``sc`` static). Scaled Fisher matrices (H, W, n, n) float32
    as :func:`diffxas.physics.uncertainty.parameter_information` computes them before its
    float64 rescaling."""
    info = object_information_joint(params, prob)
    p = physical(params, prob.scales, 1.0 - prob.empty, prob.domain)
    f = scaled_information(
        p, jnp.asarray(prob.energies, jnp.float32), edge, jnp.asarray(info, jnp.float32), names, sc, batched=True
    )
    maps = {k: getattr(p, k) for k in set(names) | {"b1"}}
    return f, maps, {k: _raw_derivative(k, params.raw[k], prob.scales) for k in names}
