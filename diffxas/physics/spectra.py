r"""The one spectral model: the seed's eq. 1 (absorption) and the KK-consistent phase.

Absorption (amplitude attenuation A = -ln|O|, the seed's "mu t"), Uematsu et al.,
PCCP 25, 3867 (2023), eq. 1::

    A(E) = a + b1/2 (1 + erf((E - b2)/b3)) + sum_{i=1,2} c_i1 / (1 + ((E - c_i2)/c_i3)^2)

Phase (rad), consistent with the absorption through Kramers-Kronig::

    phi(E) = -r_e lambda(E) [ N_V (Z_V + f'_V(E)) + n_other ]
    N_V    = b1 / (r_e lambda_0 Delta f''_V)                      (eq. 2)
    f'_V(E) = f'_bg(E) + Delta f''_V [ K_erf(E; b2, b3) + sum_i (c_i1/b1) K_L(E; c_i2, c_i3) ]

where ``f'_bg`` is the tabulated f'_V with its edge singularity removed and ``K_erf``,
``K_L`` are the closed-form KK partners of the erf step and of a Lorentzian
(:mod:`diffxas.physics.scattering`). Multiplying out, ``N_V Delta f''_V (c_i1/b1) = c_i1/(r_e lambda_0)``,
so the phase is computed without dividing by b1 (pixels without V are safe)::

    phi(E) = -(lambda/lambda_0) [ b1 ((Z_V + f'_bg)/Delta f''_V + K_erf) + sum_i c_i1 K_L,i ]
             - r_e lambda n_other

``lambda_0`` is the wavelength at the tabulated edge energy (fixed, so N_V is a linear
function of b1). ``n_other`` is the electron count per m^2 of all non-V atoms
(sum_j N_j (Z_j + f'_j)), taken as energy independent: over 5.4-5.6 keV f' of Li changes by
2e-4 electrons and f' of O by 5e-3 (0.01-0.015 e per V with 2-3 O per V, 0.03 % of
Re[Ne]/N_V; docs/physics.md). The membrane and any uniform background are the
reference (zero) of absorption and phase, as in the seed's alignment.

"V" stands for the absorber: the model holds for any element with a K edge in the table
(``VEdge.from_tables(element)``; ``Z_V`` is ``edge.z``), and the seed's names (N_V,
Re[N_e^eff]/N_V) are kept for the maps whatever the element.

All functions broadcast: parameter leaves may be scalars or per-pixel arrays of one
shape ``S``; energies are ``(K,)``; outputs are ``(K, *S)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf
from jaxtyping import Array, Float

from diffxas.physics.constants import R_E
from diffxas.physics.geometry import wavelength
from diffxas.physics.scattering import VEdge, kk_erf_step, kk_lorentzian

PARAM_NAMES = ("a", "b1", "b2", "b3", "c11", "c12", "c13", "c21", "c22", "c23")


class XanesParams(eqx.Module):
    """Parameters of eq. 1 (per pixel or shared) plus the composition ``n_other``.

    Units: a, b1, c11, c21 dimensionless (amplitude attenuation); b2, b3, c12, c13, c22,
    c23 in eV; n_other in electrons per m^2.
    """

    a: Float[Array, ...]
    b1: Float[Array, ...]
    b2: Float[Array, ...]
    b3: Float[Array, ...]
    c11: Float[Array, ...]
    c12: Float[Array, ...]
    c13: Float[Array, ...]
    c21: Float[Array, ...]
    c22: Float[Array, ...]
    c23: Float[Array, ...]
    n_other: Float[Array, ...] = 0.0

    @classmethod
    def from_dict(cls, d) -> XanesParams:
        return cls(
            **{k: jnp.asarray(d[k], jnp.float32) for k in PARAM_NAMES},
            n_other=jnp.asarray(d.get("n_other", 0.0), jnp.float32),
        )

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in PARAM_NAMES + ("n_other",)}


def _e(energies, ref) -> Float[Array, "energy ..."]:
    e = jnp.asarray(energies, jnp.float32)
    return e.reshape(e.shape + (1,) * jnp.ndim(ref))


def _shape_of(p: XanesParams):
    return jnp.broadcast_shapes(*(jnp.shape(getattr(p, k)) for k in PARAM_NAMES + ("n_other",)))


def _broadcast(p: XanesParams) -> XanesParams:
    """All leaves broadcast to one pixel shape (shared scalars next to per-pixel maps)."""
    s = _shape_of(p)
    return XanesParams(**{k: jnp.broadcast_to(jnp.asarray(v), s) for k, v in p.as_dict().items()})


def edge_step(energies, b2, b3):
    """The erf step 0.5 (1 + erf((E - b2)/b3)), shape (K, *S)."""
    e = _e(energies, jnp.broadcast_to(b2, jnp.broadcast_shapes(jnp.shape(b2), jnp.shape(b3))))
    return 0.5 * (1.0 + erf((e - b2) / b3))


def lorentzian(energies, c1, c2, c3):
    """c1 / (1 + ((E - c2)/c3)^2), shape (K, *S)."""
    ref = jnp.zeros(jnp.broadcast_shapes(jnp.shape(c1), jnp.shape(c2), jnp.shape(c3)))
    e = _e(energies, ref)
    return c1 / (1.0 + ((e - c2) / c3) ** 2)


def absorption(p: XanesParams, energies: Float[Array, " energy"]) -> Float[Array, "energy ..."]:
    """A(E) of eq. 1 (dimensionless amplitude attenuation), shape (K, *S)."""
    p = _broadcast(p)
    return (
        p.a
        + p.b1 * edge_step(energies, p.b2, p.b3)
        + lorentzian(energies, p.c11, p.c12, p.c13)
        + lorentzian(energies, p.c21, p.c22, p.c23)
    )


def n_v(b1, edge: VEdge):
    """N_V (m^-2) from the edge jump, eq. 2: b1 / (r_e lambda_0 Delta f''_V)."""
    return b1 / (R_E * wavelength(edge.edge_ev) * edge.delta_f2)


def phase(p: XanesParams, energies: Float[Array, " energy"], edge: VEdge) -> Float[Array, "energy ..."]:
    """phi(E) in rad, KK-consistent with :func:`absorption`, shape (K, *S)."""
    p = _broadcast(p)
    s = _shape_of(p)
    e = _e(energies, jnp.zeros(s))
    lam = wavelength(e)
    lam0 = wavelength(edge.edge_ev)
    bg = (edge.z + edge.f1_background(e)) / edge.delta_f2
    disp = (
        p.b1 * (bg + kk_erf_step(e, p.b2, p.b3))
        + p.c11 * kk_lorentzian(e, p.c12, p.c13)
        + p.c21 * kk_lorentzian(e, p.c22, p.c23)
    )
    return -(lam / lam0) * disp - R_E * lam * p.n_other


def f1_v(p: XanesParams, energies, edge: VEdge):
    """The per-pixel KK-consistent f'_V(E) (electrons); NaN-free only where b1 > 0."""
    p = _broadcast(p)
    e = _e(energies, jnp.zeros(_shape_of(p)))
    return edge.f1_background(e) + edge.delta_f2 * (
        kk_erf_step(e, p.b2, p.b3)
        + (p.c11 / p.b1) * kk_lorentzian(e, p.c12, p.c13)
        + (p.c21 / p.b1) * kk_lorentzian(e, p.c22, p.c23)
    )


# ----------------------------------------------------------------------------- derived quantities


def pre_edge(p: XanesParams):
    """Pre-edge intensity PE = pi c11 c13 (eV): the area of the first Lorentzian."""
    return jnp.pi * p.c11 * p.c13


def pre_edge_norm(p: XanesParams):
    """PE / Delta-mu-t = pi c11 c13 / b1 (eV)."""
    return pre_edge(p) / p.b1


def ne_eff_per_nv(phase_ref, b1, reference_energy, edge: VEdge):
    """Re[N_e^eff]/N_V at the reference energy from a measured/model phase (eq. 3 over eq. 2).

    ``-phi(E_ref) / (r_e lambda(E_ref))`` divided by N_V from b1; the same formula serves
    the two-step path (phase from ePIE) and the joint path (phase from the model).
    """
    # = [-phi / (r_e lambda_ref)] / [b1 / (r_e lambda_0 Delta f'')], written without the
    # ~1e22 m^-2 factors so that float32 derivatives (delta-method errors) do not overflow
    return -phase_ref * (wavelength(edge.edge_ev) / wavelength(reference_energy)) * edge.delta_f2 / b1


def maps_from_params(
    params: Mapping[str, object], phase_ref, reference_energy: float, edge: VEdge
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The seven chemical-state maps (:data:`diffxas.maps.MAP_FIELDS`) from the fitted eq. 1.

    The one parameters -> maps block of both methods (the two-step's
    :func:`diffxas.solvers.twostep.run.maps_from_fit`, the joint's
    :func:`diffxas.solvers.joint.result.make_result`); each method keeps only what differs:
    where ``phase_ref`` comes from (the two-step: the aligned ePIE phase; the joint: the
    model's phase) and its own validity rule.

    Args:
        params: :data:`PARAM_NAMES` -> per-pixel values ``(H, W)`` (float64 or float32;
            other keys, e.g. ``n_other``, are ignored).
        phase_ref: ``(H, W)`` phase (rad) at ``reference_energy``.
        reference_energy: eV, the energy of ``ne_eff_per_nv``.
        edge: the absorber's K edge (``delta_f2``, ``edge_ev``).

    Returns:
        ``(maps, finite)``: ``maps`` name -> ``(H, W)`` float64, unmasked: ``edge_energy``,
        ``edge_width``, ``edge_jump`` are ``b2``, ``b3``, ``b1`` as given; ``pre_edge`` =
        pi c11 c13 (eV), ``pre_edge_norm`` = PE / b1 (eV), ``n_v`` (eq. 2, m^-2) and
        ``ne_eff_per_nv`` (:func:`ne_eff_per_nv`) are computed in float32 (JAX) and widened.
        ``finite`` ``(H, W)`` bool: every map finite there; callers AND it into their validity.

    A pixel with any non-finite parameter gets NaN in every derived map (decision: the
    derived maps are computed on ``nan_to_num`` copies, so that no NaN enters JAX, and a
    missing c11 must not come out as a finite PE of 0). Division by b1 = 0 gives inf/NaN,
    hence ``finite`` False, as before.
    """
    full = {k: np.asarray(params[k], np.float64) for k in PARAM_NAMES}
    known = np.all([np.isfinite(v) for v in full.values()], axis=0)
    p = XanesParams(**{k: jnp.asarray(np.nan_to_num(v), jnp.float32) for k, v in full.items()})
    phi = jnp.asarray(np.asarray(phase_ref, np.float64), jnp.float32)
    derived = {
        "pre_edge": pre_edge(p),
        "pre_edge_norm": pre_edge_norm(p),
        "n_v": n_v(p.b1, edge),
        "ne_eff_per_nv": ne_eff_per_nv(phi, p.b1, float(reference_energy), edge),
    }
    maps = {"edge_energy": full["b2"], "edge_width": full["b3"], "edge_jump": full["b1"]}
    with np.errstate(divide="ignore", invalid="ignore"):
        maps.update({k: np.where(known, np.asarray(v, np.float64), np.nan) for k, v in derived.items()})
    finite = np.all([np.isfinite(v) for v in maps.values()], axis=0)
    return maps, finite


def linear_design(energies, b2, b3, c12, c13, c22, c23) -> Float[Array, "energy ... 4"]:
    """Design matrix of eq. 1 in its linear amplitudes (a, b1, c11, c21) for fixed shape parameters.

    ``absorption(p, E) = design @ [a, b1, c11, c21]``: used for variable-projection fits
    (the amplitudes are solved exactly by least squares while b2, b3 ... are searched).
    """
    step = edge_step(energies, b2, b3)
    l1 = lorentzian(energies, 1.0, c12, c13)
    l2 = lorentzian(energies, 1.0, c22, c23)
    shape = jnp.broadcast_shapes(step.shape, l1.shape, l2.shape)
    return jnp.stack(
        [jnp.ones(shape), jnp.broadcast_to(step, shape), jnp.broadcast_to(l1, shape), jnp.broadcast_to(l2, shape)],
        axis=-1,
    )
