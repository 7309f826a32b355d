r"""Per-pixel uncertainty of the chemical maps: Fisher information of the forward model.

The joint model's likelihood is Poisson in every detector pixel ``q`` of every frame
``j``; its Fisher information for any parameters ``theta`` is

    F = sum_j sum_q w_q (dI_jq/dtheta)(dI_jq/dtheta)^T / I_jq

(the amplitude loss, a Gaussian on sqrt(n) of variance 1/4, has the same Fisher
information). We evaluate it at the reconstruction, in three exact or documented steps:

1. **Object space, exact per-pixel blocks.** For the absorption ``A_s`` and phase ``phi_s``
   of one object pixel ``s`` seen by frame ``j`` (exit wave ``psi = P O``, far field
   ``Psi = fft2(psi, "ortho")``), ``dPsi_q/dA_s = -psi_s F_qs`` and ``dPsi_q/dphi_s =
   i psi_s F_qs`` with ``F_qs = exp(-2 pi i q.s/M)/M``. Writing ``u_q = (conj Psi_q / |Psi_q|)^2``
   and ``U = fft2(w u)`` (unnormalised), the 2x2 block of that pixel is, exactly,

       F_AA = 2 |psi_s|^2 wbar + 2 Re(psi_s^2 U[2s mod M]) / M^2
       F_pp = 2 |psi_s|^2 wbar - 2 Re(psi_s^2 U[2s mod M]) / M^2
       F_Ap =                    2 Im(psi_s^2 U[2s mod M]) / M^2

   (``wbar`` = used fraction of the detector). So the block costs two FFTs per frame and
   no dense matrix; :func:`object_information` sums it over the frames of each energy on
   that energy's grid. The first term is the photon count through the pixel; the second
   says how the far-field phases split it between absorption and phase.
2. **Neighbours held fixed.** Only these diagonal blocks are kept: each pixel's
   information is that of its own parameters with the probe, the positions and all other
   pixels known. (Off-diagonal object blocks exist only through the ``U`` term; the
   marginal variances of a full inversion are larger, so these errors are lower bounds
   in that sense; their calibration is measured, see ``experiments/calibration.py``.)
   Information on an energy's grid is carried to the common map grid with the squared
   interpolation weights, ``G_c[p] = sum_s R_sp^2 G[s]`` (exact where the grids coincide;
   the diagonal of ``R^T G R`` for slowly varying ``G`` otherwise).
3. **Parameters.** With ``J_k(p) = d(A_k, phi_k)(p) / d theta_p`` from the one spectral
   model (JAX forward-mode, one JVP per parameter for all pixels at once),
   ``F_theta(p) = sum_k J_k^T G_k(p) J_k``: a small (n x n) matrix per pixel over the
   parameters that are per pixel in the fit (shared ones held fixed). Standard errors of
   any derived map ``g(theta)`` follow by the delta method, ``var = grad g^T F^-1 grad g``.

Everything is in physical units (eV, dimensionless attenuation, electrons per m^2), so
the same information matrices serve the energy design (:mod:`diffxas.app.design`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, Int

from diffxas.physics.constants import R_E
from diffxas.physics.forward import shifted_probe
from diffxas.physics.geometry import wavelength
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import (
    XanesParams,
    _broadcast,
    absorption,
    n_v,
    ne_eff_per_nv,
    phase,
    pre_edge,
    pre_edge_norm,
)

#: Order of the three object-space information components.
OBJECT_COMPONENTS = ("AA", "pp", "Ap")


def frame_information(
    obj_patch: Complex[Array, "M M"],
    probe: Complex[Array, "M M"],
    weight: Float[Array, "M M"],
    background: Float[Array, "M M"] | None = None,
) -> Float[Array, "3 M M"]:
    """Exact 2x2 Fisher blocks (F_AA, F_pp, F_Ap) of every pixel of one frame's patch.

    Args:
        obj_patch: the object under the frame (transmission, on the frame's pixels).
        probe: the (already sub-pixel shifted) probe on the same pixels.
        weight: detector mask with zero frequency at (0, 0) (uncentred layout).
        background: incoherent background, photons per detector pixel (same layout; a
            scalar broadcasts), or None. The counts are then Poisson of ``I + b`` and each
            pixel's information ``(dI)^2 / (I + b)`` is that without background times
            ``I / (I + b)``: the same formula with the weight ``w I / (I + b)``.

    Counts are photons and the propagator is the unitary FFT (the forward model's
    convention), so ``sum_s F_AA + F_pp = 4 wbar * (photons in the frame)`` without a
    background.
    """
    m = obj_patch.shape[-1]
    psi = probe * obj_patch
    big = jnp.fft.fft2(psi, norm="ortho")
    inten = jnp.real(big) ** 2 + jnp.imag(big) ** 2
    if background is not None:
        weight = weight * inten / jnp.maximum(inten + background, 1e-30)
    lit = inten > 1e-30
    u = jnp.where(lit, jnp.conj(big) ** 2 / jnp.where(lit, inten, 1.0), 0.0)
    uhat = jnp.fft.fft2(weight * u) / (m * m)
    idx = (2 * jnp.arange(m)) % m
    u2 = uhat[idx][:, idx]  # U[2s mod M]
    wbar = jnp.mean(weight)
    p2 = psi * psi
    a = 2.0 * (jnp.real(psi) ** 2 + jnp.imag(psi) ** 2) * wbar
    c = 2.0 * p2 * u2
    return jnp.stack([a + jnp.real(c), a - jnp.real(c), jnp.imag(c)])


def object_information(
    objects: Complex[Array, "energy ny nx"],
    probes_hat: Complex[Array, "energy M M"],
    energy_index: Int[Array, " frame"],
    corner: Int[Array, "frame 2"],
    frac: Float[Array, "frame 2"],
    weight: Float[Array, "energy M M"],
    valid: Array | None = None,
    background: Float[Array, "energy M M"] | None = None,
) -> Float[Array, "energy 3 ny nx"]:
    """Per-pixel object-space Fisher blocks summed over all frames, per energy, on each energy's grid.

    Same geometry arguments as :func:`diffxas.physics.forward.intensities`; ``weight`` is the
    detector mask per energy in the uncentred layout (:func:`diffxas.physics.forward.uncenter`);
    ``valid`` (frame,) excludes padding frames; ``background`` (K, M, M) photons per
    detector pixel per frame, uncentred (None: none; :func:`frame_information`). Returns (K, 3, N, N) with components
    :data:`OBJECT_COMPONENTS`. One frame's blocks at a time (a scan), so memory is that
    of the output.
    """
    m = probes_hat.shape[-1]
    k_e = objects.shape[0]
    valid = jnp.ones(energy_index.shape, bool) if valid is None else valid

    def body(acc, inp):
        k, c, f, ok = inp
        patch = jax.lax.dynamic_slice(objects, (k, c[0], c[1]), (1, m, m))[0]
        bk = None if background is None else background[k]
        blk = frame_information(patch, shifted_probe(probes_hat[k], f), weight[k], bk) * ok
        cur = jax.lax.dynamic_slice(acc, (k, 0, c[0], c[1]), (1, 3, m, m))
        return jax.lax.dynamic_update_slice(acc, cur + blk[None], (k, 0, c[0], c[1])), None

    acc0 = jnp.zeros((k_e, 3) + tuple(objects.shape[-2:]), jnp.float32)
    acc, _ = jax.lax.scan(
        body, acc0, (jnp.asarray(energy_index), jnp.asarray(corner), jnp.asarray(frac), jnp.asarray(valid))
    )
    return acc


def to_common_grid(
    info: Float[Array, "energy 3 ny nx"], ry: Float[Array, "energy ny H"], rx: Float[Array, "energy nx W"]
) -> Float[Array, "energy 3 H W"]:
    """Carry object information from each energy's grid to the common grid: ``G_c[p] = sum_s R_sp^2 G[s]``."""
    hi = jax.lax.Precision.HIGHEST
    tmp = jnp.einsum("kcyx,kxw->kcyw", info, rx**2, precision=hi)
    return jnp.einsum("kyh,kcyw->kchw", ry**2, tmp, precision=hi)


def isotropic_information(
    fluence: Float[Array, "... H W"], absorption_: Float[Array, "energy H W"], detector_fraction: float = 1.0
) -> Float[Array, "energy 3 H W"]:
    """Object information predicted before measuring: ``F_AA = F_pp = 2 wbar n |O|^2``, ``F_Ap = 0``.

    ``fluence``: photons per pixel per energy (sum over frames of |P|^2 at the pixel);
    ``absorption_``: A(E) of the sample model. This is the first (phase-independent) term
    of :func:`frame_information`; the second averages out over a scan of many positions
    and is data-dependent, so the energy design uses this form.
    """
    t = 2.0 * detector_fraction * fluence * jnp.exp(-2.0 * absorption_)
    return jnp.stack([t, t, jnp.zeros_like(t)], axis=1)


def parameter_scales(names: Sequence[str], edge: VEdge) -> np.ndarray:
    """Typical size of each parameter, used internally so float32 products stay in range.

    ``n_other`` (electrons per m^2, ~1e23) enters the phase as ``r_e lambda n_other``
    (~1e-25 per electron/m^2): its squared derivative underflows float32, so the
    information is computed per ``1/(r_e lambda_0)`` electrons/m^2 (one radian of phase)
    and converted back in float64.
    """
    return np.asarray(
        [1.0 / (R_E * float(wavelength(edge.edge_ev))) if n == "n_other" else 1.0 for n in names], np.float64
    )


def spectral_jacobian(
    p: XanesParams,
    energies: Float[Array, " energy"],
    edge: VEdge,
    names: Sequence[str],
    scales=None,
    batched: bool = False,
):
    """d(A, phi)/d theta for each name: two arrays (n, K, *S) (one JVP per parameter, all pixels at once).

    ``scales``: derivatives with respect to ``theta_i / scales[i]`` (default 1).
    ``batched``: the n JVPs as one ``vmap`` over the tangent directions (one traced graph
    instead of n: the jitted start-up, :func:`diffxas.solvers.joint.loss.prior_weights`, compiles
    a seventh of the spectral chain); the same derivatives up to float32 rounding.
    """
    p = _broadcast(p)
    scales = np.ones(len(names)) if scales is None else np.asarray(scales)

    def f(q):
        return absorption(q, energies), phase(q, energies, edge)

    if batched:
        fields = p.as_dict()
        tangents = XanesParams(
            **{
                k: jnp.stack(
                    [jnp.full_like(v, sc) if name == k else jnp.zeros_like(v) for name, sc in zip(names, scales)]
                )
                for k, v in fields.items()
            }
        )
        return jax.vmap(lambda t: jax.jvp(f, (p,), (t,))[1])(tangents)
    zero = jax.tree_util.tree_map(jnp.zeros_like, p)
    dA, dp = [], []
    for name, sc in zip(names, scales):
        t = XanesParams(**{**zero.as_dict(), name: jnp.full_like(getattr(p, name), sc)})
        _, (a, ph) = jax.jvp(f, (p,), (t,))
        dA.append(a)
        dp.append(ph)
    return jnp.stack(dA), jnp.stack(dp)


def parameter_information(
    p: XanesParams, energies, edge: VEdge, info: Float[Array, "energy 3 H W"], names: Sequence[str]
) -> np.ndarray:
    """Per-pixel Fisher matrix (H, W, n, n) float64 of the parameters ``names`` (physical units): ``sum_k J_k^T G_k J_k``."""
    sc = parameter_scales(names, edge)
    f = scaled_information(
        p, jnp.asarray(energies, jnp.float32), edge, jnp.asarray(info, jnp.float32), tuple(names), tuple(sc)
    )
    return np.asarray(f, np.float64) / (sc[:, None] * sc[None, :])


def scaled_information(
    p: XanesParams,
    energies: Float[Array, " energy"],
    edge: VEdge,
    info: Float[Array, "energy 3 H W"],
    names: Sequence[str],
    sc: Sequence[float],
    batched: bool = False,
) -> Float[Array, "H W n n"]:
    """``sum_k J_k^T G_k J_k`` per pixel with derivatives per ``theta_i / sc[i]`` (float32,
    pure JAX: jittable with ``names`` and ``sc`` static, as in
    :func:`diffxas.solvers.joint.loss.prior_weights`); :func:`parameter_information` divides
    by ``sc_i sc_j`` in float64. ``batched``: :func:`spectral_jacobian`'s one-vmap route."""
    dA, dp = spectral_jacobian(p, energies, edge, names, sc, batched)  # (n, K, H, W)
    g_aa, g_pp, g_ap = info[:, 0], info[:, 1], info[:, 2]
    f = (
        jnp.einsum("ikhw,khw,jkhw->hwij", dA, g_aa, dA)
        + jnp.einsum("ikhw,khw,jkhw->hwij", dp, g_pp, dp)
        + jnp.einsum("ikhw,khw,jkhw->hwij", dA, g_ap, dp)
        + jnp.einsum("ikhw,khw,jkhw->hwij", dp, g_ap, dA)
    )
    return f


def descriptor_functions(edge: VEdge, reference_energy: float) -> dict[str, Callable[[XanesParams], Array]]:
    """Map name -> function of the (per-pixel) parameters, for the delta method."""
    e_ref = jnp.asarray([reference_energy], jnp.float32)

    def ne(p):
        return ne_eff_per_nv(phase(p, e_ref, edge)[0], p.b1, reference_energy, edge)

    return {
        "edge_energy": lambda p: p.b2,
        "edge_width": lambda p: p.b3,
        "edge_jump": lambda p: p.b1,
        "pre_edge": pre_edge,
        "pre_edge_norm": pre_edge_norm,
        "n_v": lambda p: n_v(p.b1, edge),
        "ne_eff_per_nv": ne,
    }


def descriptor_gradients(
    p: XanesParams, names: Sequence[str], funcs: dict[str, Callable]
) -> dict[str, Float[Array, "n H W"]]:
    """Gradient of each descriptor with respect to the parameters ``names``, per pixel."""
    p = _broadcast(p)
    zero = jax.tree_util.tree_map(jnp.zeros_like, p)
    out = {}
    for key, fn in funcs.items():
        gs = []
        for name in names:
            t = XanesParams(**{**zero.as_dict(), name: jnp.ones_like(getattr(p, name))})
            _, g = jax.jvp(fn, (p,), (t,))
            gs.append(jnp.broadcast_to(g, jnp.shape(p.b1)))
        out[key] = jnp.stack(gs)
    return out


def covariance(fisher: np.ndarray, max_condition: float = 1e12) -> np.ndarray:
    """Per-pixel inverse of (..., n, n) Fisher matrices (float64); NaN where singular.

    Equilibrated by the diagonal before inversion (parameters have very different
    units); a pixel whose equilibrated matrix has condition number above
    ``max_condition`` (or a non-positive diagonal) carries no usable information on
    some combination of its parameters and gets NaN.
    """
    f = np.asarray(fisher, np.float64)
    d = np.einsum("...ii->...i", f)
    ok = np.all(d > 0, axis=-1) & np.all(np.isfinite(f), axis=(-1, -2))
    s = 1.0 / np.sqrt(np.where(d > 0, d, 1.0))
    fe = f * s[..., :, None] * s[..., None, :]
    fe = np.where(ok[..., None, None], fe, np.eye(f.shape[-1]))
    w = np.linalg.eigvalsh(fe)
    cond = w[..., -1] / np.maximum(w[..., 0], 1e-300)
    ok &= (w[..., 0] > 0) & (cond < max_condition)
    inv = np.linalg.inv(np.where(ok[..., None, None], fe, np.eye(f.shape[-1])))
    cov = inv * s[..., :, None] * s[..., None, :]
    return np.where(ok[..., None, None], cov, np.nan)


def descriptor_std(cov: np.ndarray, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Delta-method standard errors ``sqrt(g^T C g)`` per pixel; ``grads`` name -> (n, H, W)."""
    out = {}
    for key, g in grads.items():
        g = np.moveaxis(np.asarray(g, np.float64), 0, -1)  # (H, W, n)
        var = np.einsum("...i,...ij,...j->...", g, cov, g)
        out[key] = np.sqrt(np.where(var >= 0, var, np.nan))
    return out


def map_std(
    p: XanesParams,
    energies,
    edge: VEdge,
    info_common: np.ndarray,
    names: Sequence[str],
    reference_energy: float,
    maps: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Standard-error maps of the chemical maps from common-grid object information.

    ``names``: the per-pixel parameters (others held fixed). ``maps``: which map names
    (default all of :func:`descriptor_functions`); a map none of whose inputs is per pixel
    is left out (its error is that of a shared, global parameter).
    """
    funcs = descriptor_functions(edge, reference_energy)
    if maps is not None:
        funcs = {k: v for k, v in funcs.items() if k in maps}
    fisher = parameter_information(p, energies, edge, info_common, names)
    cov = covariance(fisher)
    grads = {k: np.asarray(v) for k, v in descriptor_gradients(p, names, funcs).items()}
    grads = {k: g for k, g in grads.items() if np.any(np.abs(g) > 0)}
    return descriptor_std(cov, grads)
