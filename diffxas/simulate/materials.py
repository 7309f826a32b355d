"""The simulator's materials: the phantom's spectral domain types, their per-point
properties turned into eq. 1's parameters, the shift of a V-edge phantom to another absorber,
and the Si3N4 membrane.

No physics of its own: absorption and phase come from :mod:`diffxas.physics.spectra` (eq. 1
and the KK-consistent phase) and :mod:`diffxas.physics.scattering` (tables). Shared by the
fixed phantom (:mod:`diffxas.simulate.phantom`) and the randomized family
(:mod:`diffxas.simulate.family`), so that both go through the same physics.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffxas.physics.constants import AVOGADRO, R_E, Z
from diffxas.physics.geometry import wavelength
from diffxas.physics.scattering import VEdge, anomalous_factors, table_edge_energy
from diffxas.physics.spectra import XanesParams, f1_v

#: Domain types: edge energy b2 (eV), edge width b3 (eV), PE/Delta-mu-t (eV), pre-edge
#: peak position/width (eV), second-peak ratio/position/width, Re[N_e^eff]/N_V.
#: Values chosen to resemble the seed's ranges (V3+ vs V5+ edges ~5 eV apart; octahedral
#: weak vs tetrahedral strong pre-edge; Li/O-rich vs -poor compositions 35-44 e per V;
#: surface ~2x). They are a phantom, not measured data.
DOMAIN_TYPES = {
    "V3+ oct, Li/O-rich": dict(b2=5477.5, b3=4.0, pen=0.8, c12=5465.8, c13=1.3, r21=0.35, c22=5470.0, c23=2.0, ne=41.0),
    "V3+ tet, Li/O-poor": dict(b2=5478.5, b3=4.0, pen=2.0, c12=5466.0, c13=1.2, r21=0.30, c22=5470.0, c23=2.0, ne=36.0),
    "V5+ oct, Li/O-rich": dict(b2=5482.5, b3=3.5, pen=1.2, c12=5466.5, c13=1.2, r21=0.40, c22=5470.5, c23=2.0, ne=44.0),
    "V5+ tet, Li/O-poor": dict(b2=5483.5, b3=3.5, pen=2.6, c12=5466.8, c13=1.1, r21=0.30, c22=5470.5, c23=2.0, ne=35.5),
}
SURFACE_TYPE = (
    "surface",
    dict(b2=5480.5, b3=4.0, pen=1.5, c12=5466.3, c13=1.3, r21=0.35, c22=5470.0, c23=2.0, ne=80.0),
)
_PROPS = ("b2", "b3", "pen", "c12", "c13", "r21", "c22", "c23", "ne")


def edge_shift(element: str, table: str = "chantler") -> float:
    """Table K edge of ``element`` minus that of V (eV, rounded to 0.1 eV): how far the
    phantom's V energies (:data:`DOMAIN_TYPES`, the presets' energies) move for ``element``."""
    if element == "V":
        return 0.0
    return round(table_edge_energy(element, table) - table_edge_energy("V", table), 1)


def xanes_from_properties(P, ne_target, nv, inside, edge: VEdge, reference_energy: float) -> XanesParams:
    """Eq. 1's parameters from the phantom's per-point properties (the simulator's physics,
    shared by :func:`diffxas.simulate.phantom.phantom_fields` and :mod:`diffxas.simulate.family`).

    Args:
        P: mapping with ``b2, b3`` (eV), ``pen`` (PE/Delta-mu-t, eV), ``c12, c13`` (eV),
            ``r21`` (second-peak amplitude / first), ``c22, c23`` (eV); arrays of the points' shape.
        ne_target: Re[N_e^eff]/N_V at ``reference_energy`` (electrons per V atom).
        nv: V atoms per m^2; inside: bool, points inside a particle.
    Returns XanesParams with a, b1, c11, c21, n_other zero outside particles.
    """
    lam0 = wavelength(edge.edge_ev)
    b1 = R_E * lam0 * edge.delta_f2 * nv
    c13 = P["c13"]
    c11 = P["pen"] * b1 / (jnp.pi * c13)
    c21 = P["r21"] * c11
    # pre-edge absorption of V (table trend below the edge) and O (2.33 per V, Li negligible)
    f2_o = float(anomalous_factors("O", np.array([reference_energy]))[1][0])
    a = R_E * lam0 * nv * (edge.f2_below(jnp.float32(reference_energy)) + 2.33 * f2_o)
    zero = jnp.zeros_like(nv)
    p = XanesParams(
        a=jnp.where(inside, a, zero),
        b1=jnp.where(inside, b1, zero),
        b2=P["b2"],
        b3=P["b3"],
        c11=jnp.where(inside, c11, zero),
        c12=P["c12"],
        c13=c13,
        c21=jnp.where(inside, c21, zero),
        c22=P["c22"],
        c23=P["c23"],
        n_other=zero,
    )
    # composition: n_other so that -phi(E_ref)/(r_e lambda)/N_V equals the target
    p_safe = XanesParams(**{**p.as_dict(), "b1": jnp.where(inside, b1, 1.0)})  # f'_V divides by b1
    f1 = f1_v(p_safe, jnp.asarray([reference_energy]), edge)[0]
    n_other = jnp.where(inside, nv * (ne_target - edge.z - f1), zero)
    return XanesParams(**{**p.as_dict(), "n_other": n_other})


def membrane(energies_ev, thickness_m: float, table: str = "chantler", density_g_cm3: float = 3.1):
    """Absorption A and phase phi (rad) of a Si3N4 membrane at each energy (tables)."""
    e = np.asarray(energies_ev, float)
    molar = 3 * 28.0855 + 4 * 14.0067  # g/mol
    n_formula = density_g_cm3 * 1e6 / molar * AVOGADRO * thickness_m  # formula units per m^2
    f1si, f2si = anomalous_factors("Si", e, table)
    f1n, f2n = anomalous_factors("N", e, table)
    lam = wavelength(e)
    a = R_E * lam * n_formula * (3 * f2si + 4 * f2n)
    phi = -R_E * lam * n_formula * (3 * (Z["Si"] + f1si) + 4 * (Z["N"] + f1n))
    return a, phi
