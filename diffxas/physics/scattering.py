"""Scattering factors and Kramers–Kronig (KK) building blocks: the physics core.

Conventions (used everywhere in diffxas)
----------------------------------------
* Photon energies ``E`` in eV, lengths in m, areal densities ``N_j`` in atoms / m^2.
* Atomic scattering factor ``f = f1 + i f2 = (Z + f') + i f''``. In this module
  ``f'`` (``f1p``) is the *anomalous part only*; ``f1 = Z + f'``. ``f''`` is ``f2``.
* Object transmission of a thin specimen::

      O(E) = exp(-A(E) + i phi(E))
      A(E)   =  r_e lambda sum_j N_j f''_j(E)          (amplitude attenuation; the seed's "mu t")
      phi(E) = -r_e lambda sum_j N_j (Z_j + f'_j(E))   (matter shifts the phase negatively)

  so an absorption-edge jump ``b1`` of ``A`` gives ``N_V = b1 / (r_e lambda Delta f''_V)``
  (:func:`n_v_from_edge_jump`, the seed's eq. 2) and the phase gives the effective
  electron density ``Re N_e^eff = -phi / (r_e lambda)`` (:func:`ne_eff_from_phase`, eq. 3).
* Hilbert / KK convention: for a feature localised far from ``E = 0``::

      f'(E) = (1/pi) P∫ f''(E') / (E - E') dE'

  The full KK relation is ``f'(E) = (2/pi) P∫_0^∞ E' f''(E') / (E^2 - E'^2) dE'
  = (1/pi) P∫_0^∞ f''(E') [1/(E - E') - 1/(E + E')] dE'``. For a *difference*
  ``Delta f''`` localised within a few hundred eV of an edge at ~5.5 keV the
  ``1/(E + E')`` term is smooth and nearly constant (|E + E'| ~ 11 keV) and is
  absorbed into the smooth background; it is neglected here. The same holds for
  the finite-range cut-off of every closed form below: any transform of a step
  is defined up to a constant that the smooth background absorbs.
* With this convention a sharp step ``Delta f'' H(E - E0)`` contributes
  ``(Delta f''/pi) ln|E - E0|`` (E in eV inside the ln) to ``f'``: a negative log
  singularity (the anomalous dip) at the edge.

Contents
--------
* Host-side (numpy, wraps ``xraydb``), in :mod:`diffxas.physics.tables` and re-exported here:
  :func:`anomalous_factors`, :func:`edge_jump_f2`, :func:`table_edge_energy`,
  :func:`electrons_per_v`, :data:`SEED_CONSTANTS`, :data:`COMPOSITIONS_PER_V`.
* :class:`VEdge` (this module): tabulated edge parameters plus smooth polynomial backgrounds
  ``f1_background`` (tabulated ``f'`` with the sharp-step ``ln|E - E0|`` removed)
  and ``f2_below`` (pre-edge ``f''`` trend); built host side, used inside jit.
* Pure-JAX (jittable, differentiable, float32-safe, float64 under ``jax.enable_x64``):
  :func:`dawson_integral`, :func:`kk_erf_step`, :func:`kk_lorentzian`,
  :func:`kk_piecewise_linear`, :func:`kk_piecewise_linear_matrix`, :func:`erf_step`,
  :func:`lorentzian` (in :mod:`diffxas.physics.kramers_kronig`, re-exported here), and
  :func:`n_v_from_edge_jump`, :func:`ne_eff_from_phase` (this module).

The KK-consistent model of the V f' used by diffxas is::

    f''_V(E) = f2_below(E) + Delta f'' s(E; b2, b3) + sum_k a_k L(E; c2_k, c3_k)
    f'_V(E)  = f1_background(E) + Delta f'' kk_erf_step(E, b2, b3) + sum_k a_k kk_lorentzian(E, c2_k, c3_k)

where ``s`` is the erf step, ``L`` a Lorentzian: the tabulated ``ln|E - E0|`` cancels
analytically (``f1_background`` has it removed, ``kk_erf_step`` tends to
``(1/pi) ln|E - E0|`` far from the edge).

Sources: Chantler tables through ``xraydb`` (C. T. Chantler, J. Phys. Chem. Ref. Data
29, 597 (2000); xraydb 4.5); seed constants from Uematsu et al., PCCP 25, 3867 (2023).
``xraydb`` carries no Henke f1/f2 table, so only ``table="chantler"`` is supported.
See ``docs/physics-scattering.md``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffxas.errors import ConfigError
from diffxas.physics.constants import R_E
from diffxas.physics.geometry import wavelength

# The host-side tables and the pure-JAX KK building blocks live in their own modules; they are
# re-exported here, where the rest of the package and its users import them from.
from diffxas.physics.kramers_kronig import _DAWSON_ASYM as _DAWSON_ASYM
from diffxas.physics.kramers_kronig import DAWSON_K as DAWSON_K
from diffxas.physics.kramers_kronig import DAWSON_X0 as DAWSON_X0
from diffxas.physics.kramers_kronig import _float_dtype as _float_dtype
from diffxas.physics.kramers_kronig import dawson_integral as dawson_integral
from diffxas.physics.kramers_kronig import erf_step as erf_step
from diffxas.physics.kramers_kronig import kk_erf_step as kk_erf_step
from diffxas.physics.kramers_kronig import kk_lorentzian as kk_lorentzian
from diffxas.physics.kramers_kronig import kk_piecewise_linear as kk_piecewise_linear
from diffxas.physics.kramers_kronig import kk_piecewise_linear_matrix as kk_piecewise_linear_matrix
from diffxas.physics.kramers_kronig import lorentzian as lorentzian
from diffxas.physics.tables import COMPOSITIONS_PER_V as COMPOSITIONS_PER_V
from diffxas.physics.tables import SEED_CONSTANTS as SEED_CONSTANTS
from diffxas.physics.tables import TABLES as TABLES
from diffxas.physics.tables import _atomic_number as _atomic_number
from diffxas.physics.tables import _chantler_nodes as _chantler_nodes
from diffxas.physics.tables import _edge_trends as _edge_trends
from diffxas.physics.tables import _symbol as _symbol
from diffxas.physics.tables import anomalous_factors as anomalous_factors
from diffxas.physics.tables import check_element as check_element
from diffxas.physics.tables import edge_jump_f2 as edge_jump_f2
from diffxas.physics.tables import electrons_per_v as electrons_per_v
from diffxas.physics.tables import k_edges_between as k_edges_between
from diffxas.physics.tables import k_edges_text as k_edges_text
from diffxas.physics.tables import model_window as model_window
from diffxas.physics.tables import table_edge_energy as table_edge_energy

__all__ = [
    "COMPOSITIONS_PER_V",
    "DAWSON_K",
    "DAWSON_X0",
    "SEED_CONSTANTS",
    "TABLES",
    "VEdge",
    "anomalous_factors",
    "dawson_integral",
    "edge_jump_f2",
    "electrons_per_v",
    "erf_step",
    "kk_erf_step",
    "kk_lorentzian",
    "kk_piecewise_linear",
    "kk_piecewise_linear_matrix",
    "lorentzian",
    "n_v_from_edge_jump",
    "ne_eff_from_phase",
    "table_edge_energy",
]


def _horner(coeffs, t):
    """sum_k coeffs[k] t^k (ascending coefficients), elementwise."""
    out = jnp.zeros_like(t) + coeffs[-1]
    for k in range(coeffs.shape[0] - 2, -1, -1):
        out = out * t + coeffs[k]
    return out


def n_v_from_edge_jump(b1, energy_ev, delta_f2):
    """Areal density of V (atoms / m^2) from the edge jump ``b1`` of A: ``b1 / (r_e lambda Delta f''_V)`` (eq. 2)."""
    return b1 / (R_E * wavelength(energy_ev) * delta_f2)


def ne_eff_from_phase(phi, energy_ev):
    """Effective electron areal density (electrons / m^2) from the phase: ``-phi / (r_e lambda)`` (eq. 3)."""
    return -phi / (R_E * wavelength(energy_ev))


# ----------------------------------------------------------------------------------------------
# VEdge
# ----------------------------------------------------------------------------------------------


class VEdge(eqx.Module):
    """Tabulated K-edge description of the absorber (V by default) for the KK-consistent model.

    Built host side (:meth:`from_tables` or :meth:`seed`), then used inside jit; methods are
    elementwise pure JAX. Polynomials are in ``t = (E - center_ev) / scale_ev`` (ascending
    coefficients), ``t`` in [-1, 1] over the fitted range.

    Attributes:
        delta_f2: jump ``Delta f''`` of f'' across the edge (electrons).
        edge_ev: edge energy ``E0`` of the table (eV).
        f1_coeffs: coefficients of ``f1_background``.
        f2_coeffs: coefficients of ``f2_below``.
        center_ev, scale_ev: polynomial variable (static); the fits hold on
            ``[center_ev - scale_ev, center_ev + scale_ev]`` (:meth:`check_energies`).
        source: ``"chantler"`` or ``"seed"`` (static).
        element, z: the absorber's symbol and atomic number (static). The spectral model
            is written for any absorber with a K edge in the table: ``z`` enters the
            phase (``Z + f'``), ``delta_f2`` the edge jump (eq. 2). The maps keep the
            seed's names (N_V, Re[N_e^eff]/N_V) and mean "per absorber atom".
    """

    delta_f2: float
    edge_ev: float
    f1_coeffs: jax.Array
    f2_coeffs: jax.Array
    center_ev: float = eqx.field(static=True)
    scale_ev: float = eqx.field(static=True)
    source: str = eqx.field(static=True, default="chantler")
    element: str = eqx.field(static=True, default="V")
    z: int = eqx.field(static=True, default=23)

    @classmethod
    def from_tables(
        cls,
        element: str = "V",
        table: str = "chantler",
        e_min: float | None = None,
        e_max: float | None = None,
        edge_ev: float | None = None,
        f1_gap_ev: float = 10.0,
        f1_deg: int = 4,
        near_ev: float = 25.0,
        far_ev: float = 300.0,
        f2_deg: int = 1,
    ) -> VEdge:
        """Fit the backgrounds to the table (host side, float64 numpy).

        * ``delta_f2``: :func:`edge_jump_f2` with ``near_ev, far_ev, f2_deg``.
        * ``f1_background``: degree-``f1_deg`` least-squares fit of tabulated
          ``f'(E) - (delta_f2/pi) ln|E - E0|`` on the table nodes in ``[e_min, e_max]``
          with ``|E - E0| > f1_gap_ev``.
        * ``f2_below``: the pre-edge straight line used for ``delta_f2`` (nodes
          ``near_ev..far_ev`` below the edge), so ``f2_below(E0) + delta_f2`` is the
          post-edge trend at the edge.

        ``e_min, e_max`` default to :func:`model_window`: 165 eV below to 235 eV above the
        table's edge, rounded to 10 eV (V: 5300-5700 eV, the range the V defaults were
        measured on; Mn: 6370-6770 eV).
        """
        symbol = _symbol(element)
        if e_min is None or e_max is None:
            lo, hi = model_window(symbol, table)
            e_min = lo if e_min is None else e_min
            e_max = hi if e_max is None else e_max
        if not (e_min < e_max):
            raise ConfigError(f"VEdge needs e_min < e_max, got {e_min:g}, {e_max:g}")
        e0, below, above = _edge_trends(element, edge_ev, table, near_ev, far_ev, f2_deg)
        if not (e_min < e0 < e_max):
            raise ConfigError(f"edge energy {e0:g} eV lies outside [e_min, e_max] = [{e_min:g}, {e_max:g}] eV")
        delta = float(above(0.0) - below(0.0))
        te, f1, _ = _chantler_nodes(_symbol(element))
        center, scale = 0.5 * (e_min + e_max), 0.5 * (e_max - e_min)
        m = (te >= e_min) & (te <= e_max) & (np.abs(te - e0) > f1_gap_ev)
        if m.sum() <= f1_deg:
            raise ConfigError(
                f"too few table nodes ({int(m.sum())}) in [{e_min:g}, {e_max:g}] eV for a degree-{f1_deg} f' background"
            )
        resid = f1[m] - delta / math.pi * np.log(np.abs(te[m] - e0))
        f1_poly = np.polynomial.Polynomial.fit((te[m] - center) / scale, resid, f1_deg, domain=[-1, 1], window=[-1, 1])
        # f2_below in t: below(E - e0) with E - e0 = scale * t + (center - e0).
        lin = np.polynomial.Polynomial([center - e0, scale])
        f2_poly = below(lin)
        return cls(
            delta_f2=delta,
            edge_ev=e0,
            f1_coeffs=jnp.asarray(f1_poly.convert().coef),
            f2_coeffs=jnp.asarray(f2_poly.coef),
            center_ev=float(center),
            scale_ev=float(scale),
            source=table,
            element=symbol,
            z=_atomic_number(symbol),
        )

    @classmethod
    def for_energies(
        cls, element: str, energies_ev, table: str = "chantler", what: str = "the data", check: bool = True
    ) -> VEdge:
        """:meth:`from_tables` for a scan: the default :func:`model_window`, widened (to 10 eV
        beyond the scan, rounded out to 10 eV) where the scan reaches past it; then (``check``)
        :meth:`check_energies`, i.e. the scan must bracket the edge.

        What every reconstruction and the simulator use. For the seed's 5420-5540 eV V scan the
        window stays 5300-5700 eV. A wider scan widens the fit rather than extrapolating it.
        The degree-4 background reproduces Chantler's f' as well over wider windows (V
        5300-6300 eV: 0.026 e; Mn 6370-7100 eV: 0.072 e, at |E - E0| > 10 eV).
        """
        e = np.asarray(energies_ev, np.float64).reshape(-1)
        symbol = _symbol(element)
        lo, hi = model_window(symbol, table)
        if e.size and np.all(np.isfinite(e)):
            lo = min(lo, math.floor((e.min() - 10.0) / 10.0) * 10.0)
            hi = max(hi, math.ceil((e.max() + 10.0) / 10.0) * 10.0)
        edge = cls.from_tables(symbol, table=table, e_min=lo, e_max=hi)
        if check:
            edge.check_energies(e, what)
        return edge

    @classmethod
    def seed(cls, edge_ev: float = 5465.0) -> VEdge:
        """The seed paper's constants: ``delta_f2 = 3.53``, flat ``f'_V = -7.14`` (its value at
        5420 eV), no pre-edge f'' (``f2_below = 0``).

        Here ``f1_background`` is the seed's flat f' itself, *not* a log-removed background:
        it reproduces the seed's numbers and is not meant to be combined with
        :func:`kk_erf_step`.
        """
        return cls(
            delta_f2=float(SEED_CONSTANTS["delta_f2_V"]),
            edge_ev=float(edge_ev),
            f1_coeffs=jnp.asarray([SEED_CONSTANTS["f1p"]["V"]]),
            f2_coeffs=jnp.asarray([0.0]),
            center_ev=float(edge_ev),
            scale_ev=1.0,
            source="seed",
        )

    @property
    def range_ev(self) -> tuple[float, float]:
        """``(e_min, e_max)`` in eV: where the fitted backgrounds hold."""
        return (self.center_ev - self.scale_ev, self.center_ev + self.scale_ev)

    def check_energies(self, energies_ev, what: str = "the data") -> None:
        """Raise a one-line :class:`ConfigError` unless ``energies_ev`` (eV) bracket this edge
        and lie inside :attr:`range_ev`.

        Energies that do not bracket the edge cannot fix eq. 1, and outside the range the f'
        background polynomial would extrapolate and the phase go silently wrong. The first is
        a wrong ``element`` far more often than a wrong scan, so the message names the
        elements whose K edge does lie inside the scanned range.
        """
        e = np.asarray(energies_ev, np.float64).reshape(-1)
        if e.size == 0 or self.source == "seed":
            return
        if not np.all(np.isfinite(e)):
            raise ConfigError(f"{what}'s energies must be finite numbers in eV")
        lo, hi = self.range_ev
        head = f"{what}'s energies {e.min():g}-{e.max():g} eV"
        if not (e.min() < self.edge_ev < e.max()):
            cands = [c for c in k_edges_between(float(e.min()), float(e.max())) if c[0] != self.element]
            if len(cands) == 1:
                s0 = cands[0][0]
                hint = (
                    f"; the K edge inside the scanned range is {k_edges_text(cands)}: "
                    f'set element = "{s0}" (command line: --set element={s0})'
                )
            elif cands:
                hint = f"; K edges inside the scanned range: {k_edges_text(cands)}: set `element`"
            else:
                hint = "; no K edge lies inside the scanned range"
            raise ConfigError(
                f"{head} do not bracket the {self.element} K edge ({self.edge_ev:.1f} eV), which eq. 1 needs{hint}"
            )
        if e.min() < lo - 1e-6 or e.max() > hi + 1e-6:
            raise ConfigError(
                f"{head} reach past the {self.element} K-edge model's range {lo:g}-{hi:g} eV "
                "(build it with VEdge.for_energies, which widens the range to the scan)"
            )

    def _t(self, energy):
        e = jnp.asarray(energy)
        e = e.astype(_float_dtype(e))
        return (e - self.center_ev) / self.scale_ev

    def f1_background(self, energy):
        """Smooth f' background: tabulated f' minus ``(delta_f2/pi) ln|E - E0|`` (E in eV)."""
        t = self._t(energy)
        return _horner(self.f1_coeffs.astype(t.dtype), t)

    def f2_below(self, energy):
        """Pre-edge f'' trend (straight line by default)."""
        t = self._t(energy)
        return _horner(self.f2_coeffs.astype(t.dtype), t)

    def f1_tabulated_model(self, energy):
        """``f1_background(E) + (delta_f2/pi) ln|E - E0|``: the table's f' for a sharp edge (-inf at E0)."""
        e = jnp.asarray(energy)
        return self.f1_background(e) + self.delta_f2 / math.pi * jnp.log(jnp.abs(e - self.edge_ev))

    def f1_step(self, energy, b2, b3):
        """f' of the smooth background plus an erf edge: ``f1_background + delta_f2 kk_erf_step``."""
        return self.f1_background(energy) + self.delta_f2 * kk_erf_step(energy, b2, b3)

    def f2_step(self, energy, b2, b3):
        """f'' of the pre-edge trend plus an erf edge: ``f2_below + delta_f2 erf_step``."""
        return self.f2_below(energy) + self.delta_f2 * erf_step(energy, b2, b3)
