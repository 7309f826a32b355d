"""Simulator: phantom particles, KB probe, raster scans, Poisson noise -> multi-energy CXI.

The simulator has no physics of its own: absorption and phase come from
:mod:`diffxas.physics.spectra` (eq. 1 and the KK-consistent phase) and :mod:`diffxas.physics.scattering`
(tables), frames from :mod:`diffxas.physics.forward`. To avoid the "inverse crime" of simulating
on the reconstruction's own discretisation, the phantom is an analytic function of
(x, y) evaluated directly on each energy's own grid, *oversampled* (``oversample`` x
finer pixels, ``oversample * M`` patches whose far field is cropped to the central M
pixels), so frames carry the per-energy sampling exactly and the reconstruction's
common grid never appears in the simulation.

Phantom (mimicking the seed's Li-rich disordered rocksalt particles): elliptical
particles with ellipsoidal thickness (up to ~1 um); bulk domains from a soft Voronoi
partition of random seeds, each of one of four types differing in edge energy (V3+ like
vs V5+ like, ~5 eV apart), pre-edge intensity (octahedral low vs tetrahedral high) and
composition (Re[N_e^eff]/N_V); a surface shell with about twice the Re[N_e^eff]/N_V;
smooth random texture and a linear gradient inside; N_V from a V number density; a
Si3N4 membrane under everything. See :data:`DOMAIN_TYPES`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffxas import __version__
from diffxas.data.dataset import Dataset
from diffxas.errors import ConfigError
from diffxas.maps import Truth
from diffxas.physics.constants import AVOGADRO, R_E, Z
from diffxas.physics.forward import frame_geometry, intensities, transmission
from diffxas.physics.geometry import Grid, grid_covering, object_pixel_size, wavelength
from diffxas.physics.probe import kb_probe, numerical_aperture_for_fwhm
from diffxas.physics.scattering import VEdge, _symbol, anomalous_factors, check_element, table_edge_energy
from diffxas.physics.spectra import (
    PARAM_NAMES,
    XanesParams,
    absorption,
    f1_v,
    n_v,
    ne_eff_per_nv,
    phase,
    pre_edge,
    pre_edge_norm,
)
from diffxas.simulate.family import draw_conditions, make_family_phantom

#: The seed's 40 energies (eV), 5420-5540: four below the pre-edge, 0.5 eV steps over the
#: pre-edge peak (~5466 eV), 1 eV steps over the edge (5475-5485 eV), sparse above.
SEED_ENERGIES = (
    5420.0,
    5440.0,
    5455.0,
    5460.0,
    5463.0,
    5464.0,
    5465.0,
    5465.5,
    5466.0,
    5466.5,
    5467.0,
    5468.0,
    5469.0,
    5470.0,
    5471.0,
    5472.0,
    5473.0,
    5474.0,
    5475.0,
    5476.0,
    5477.0,
    5478.0,
    5479.0,
    5480.0,
    5481.0,
    5482.0,
    5483.0,
    5484.0,
    5485.0,
    5486.0,
    5488.0,
    5490.0,
    5493.0,
    5496.0,
    5500.0,
    5505.0,
    5510.0,
    5520.0,
    5530.0,
    5540.0,
)

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


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """All knobs of a simulation (SI units except energies in eV). Frozen and validated."""

    preset: str = "small"
    seed: int = 0
    energies: tuple[float, ...] = SEED_ENERGIES
    frame_size: int = 64
    detector_pixel: float = 75e-6
    distance: float = 0.63
    probe_fwhm: float = 300e-9
    probe_defocus: float = 2e-6
    probe_astigmatism: float = 0.0
    probe_drift: float = 0.0
    scan_step: float = 150e-9
    scan_width: float = 1.5e-6
    jitter: float = 0.15
    position_error: float = 0.0
    #: relative RMS of the incident flux per frame (beam-intensity fluctuations; 0 = none)
    flux_jitter: float = 0.0
    #: record an incident-flux monitor (I0) per frame in the dataset: None = no monitor; a
    #: number = the monitor reading's own relative RMS error (0 = a perfect monitor; an ion
    #: chamber is ~1e-3). Readings are ``1e5 * flux factor * (1 + error)`` (arbitrary units).
    monitor_noise: float | None = None
    dose: float = 1e6
    bad_pixel_fraction: float = 1e-3
    #: simulation grid = each energy's object pixel / oversample (patches of oversample * M,
    #: far field cropped to M). 4, not 2: the phantom's sharp rims (thickness ~ sqrt(1 - rho^2))
    #: alias into 2x-simulated frames by more than the reconstructions' own errors. Measured
    #: with the joint solver on noise-free `tiny` (RMSE over truth N_V >= 25 %, edge energy
    #: eV / PE/dmt eV / Re[Ne]/N_V): oversample 2: 0.164 / 0.097 / 4.25; 4: 0.155 / 0.085 /
    #: 1.52; 8 (truth 8x): 0.155 / 0.080 / 1.77, i.e. converged at 4 (docs/physics.md).
    oversample: int = 4
    n_particles: int = 1
    particle_radius: float = 0.6e-6
    particle_thickness: float = 1.0e-6
    domains_per_particle: int = 6
    v_density: float = 2.5e28
    membrane_thickness: float = 500e-9
    texture: float = 1.0
    #: the absorber (chemical symbol). The phantom's spectral types are written for the V K
    #: edge (the seed's); for another element every type's energies (edge, pre-edge peaks)
    #: move by the difference of the two table edges (:func:`edge_shift`, e.g. Mn +1073.9 eV),
    #: and so do a preset's energies when none are given: a V-like phantom at that edge.
    element: str = "V"
    table: str = "chantler"
    truth_oversample: int = 2
    noise: bool = True
    #: seed of the Poisson noise alone (None: drawn from ``seed`` like everything else);
    #: repeated noise realisations of one phantom, scan and probe vary only this.
    noise_seed: int | None = None
    #: incoherent detector background (diffxas.physics.background): mean expected photons per
    #: detector pixel per frame, added to every frame before the noise, the same for
    #: every frame and energy and not scaled by flux_jitter (dark counts, stray light);
    #: 0 = none (the default, as before)
    background: float = 0.0
    #: its profile over the detector: "flat", or "radial" (air/window scattering around the
    #: direct beam: proportional to 1 / (1 + (q / q0)^2) with q0 = M / 8 pixels from the
    #: zero frequency, scaled to the same mean)
    background_profile: str = "flat"

    def __post_init__(self):
        e = np.asarray(self.energies, float)
        if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
            raise ConfigError("energies must be at least two strictly increasing values in eV")
        if e.min() < 1000 or e.max() > 100000:
            raise ConfigError(f"energies must be in eV (1e3..1e5), got {e.min()}..{e.max()}")
        if np.any(np.diff(e) < 1e-3):  # checks.ENERGY_TOL_EV: one energy written twice
            raise ConfigError(f"energies closer than 1e-3 eV: {e[np.argmin(np.diff(e))]:.7g} eV twice?")
        if self.frame_size < 8 or self.frame_size % 2:
            raise ConfigError(f"frame_size must be even and >= 8, got {self.frame_size}")
        for name in (
            "detector_pixel",
            "distance",
            "probe_fwhm",
            "scan_step",
            "scan_width",
            "particle_radius",
            "particle_thickness",
            "v_density",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.dose > 0:
            raise ConfigError(f"dose must be positive (photons per frame), got {self.dose}")
        if not (0.0 <= self.flux_jitter < 0.5):
            raise ConfigError(f"flux_jitter must be in [0, 0.5) (relative RMS per frame), got {self.flux_jitter}")
        if self.monitor_noise is not None and not (0.0 <= self.monitor_noise < 0.5):
            raise ConfigError(
                f"monitor_noise must be None (no monitor) or in [0, 0.5) (relative RMS), got {self.monitor_noise}"
            )
        if not (math.isfinite(self.background) and self.background >= 0):
            raise ConfigError(f"background must be >= 0 (photons per detector pixel per frame), got {self.background}")
        if self.background_profile not in ("flat", "radial"):
            raise ConfigError(f"background_profile must be 'flat' or 'radial', got {self.background_profile!r}")
        if self.oversample < 1 or self.truth_oversample < 1:
            raise ConfigError("oversample factors must be >= 1")

        check_element(self.element)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["energies"] = list(self.energies)
        return d


def _tiny_energies():
    return (
        5420.0,
        5450.0,
        5462.0,
        5465.0,
        5466.0,
        5467.0,
        5469.0,
        5472.0,
        5475.0,
        5478.0,
        5481.0,
        5484.0,
        5488.0,
        5495.0,
        5520.0,
    )


#: Presets: ``tiny`` (tests, seconds), ``small`` (the demo), ``paper`` (the seed's sampling,
#: a few um field of view; for a GPU).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        energies=_tiny_energies(),
        frame_size=32,
        scan_width=1.2e-6,
        particle_radius=0.4e-6,
        particle_thickness=0.8e-6,
        domains_per_particle=4,
        dose=1e6,
        scan_step=150e-9,
    ),
    "small": dict(energies=SEED_ENERGIES, frame_size=64, scan_width=1.5e-6, particle_radius=0.65e-6, dose=1e6),
    "paper": dict(
        energies=SEED_ENERGIES,
        frame_size=128,
        scan_width=3.0e-6,
        particle_radius=0.8e-6,
        n_particles=2,
        domains_per_particle=7,
        dose=1e6,
    ),
}
#: The randomized sample family (:mod:`diffxas.simulate.family`, docs/family.md): sample and
#: experimental conditions are drawn from ``seed``; these are only the fixed frame and field.
#: ``family``: cost like ``small``; ``family-tiny``: like ``tiny`` (tests, quick studies).
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "family": dict(energies=SEED_ENERGIES, frame_size=64, scan_width=1.5e-6),
    "family-tiny": dict(energies=_tiny_energies(), frame_size=32, scan_width=1.2e-6),
}
PRESETS.update(FAMILY_PRESETS)


def edge_shift(element: str, table: str = "chantler") -> float:
    """Table K edge of ``element`` minus that of V (eV, rounded to 0.1 eV): how far the
    phantom's V energies (:data:`DOMAIN_TYPES`, the presets' energies) move for ``element``."""
    if element == "V":
        return 0.0
    return round(table_edge_energy(element, table) - table_edge_energy("V", table), 1)


def preset(name: str, **overrides) -> SimConfig:
    """The named preset with ``overrides`` applied (unknown names give a ConfigError).

    With ``element`` other than V and no ``energies``, the preset's (V) energies move by
    :func:`edge_shift`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown simulation option(s) {bad}; known: {sorted(fields)}")
    kw = dict(PRESETS[name])
    if name in FAMILY_PRESETS:  # this seed's experimental conditions (dose, step, errors, drift)
        kw.update(draw_conditions(int(overrides.get("seed") or 0)))
    el = overrides.get("element")
    if el is not None and el != "V" and overrides.get("energies") is None and isinstance(el, str):
        if _symbol(el) == el:  # a bad symbol is reported by SimConfig
            shift = edge_shift(el, overrides.get("table") or "chantler")
            kw["energies"] = tuple(round(e + shift, 3) for e in kw["energies"])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if "energies" in kw:
        kw["energies"] = tuple(float(e) for e in kw["energies"])
    return SimConfig(preset=name, **kw)


# ----------------------------------------------------------------------------- phantom


class Phantom(eqx.Module):
    """Analytic phantom: evaluate anywhere with :func:`phantom_fields`."""

    particles: jax.Array  # (P, 6): cx, cy, ax, ay, angle, t_max  (m, rad)
    seeds: jax.Array  # (D, 2) domain seed positions, m
    seed_type: jax.Array  # (D,) int, index into DOMAIN_TYPES
    seed_particle: jax.Array  # (D,) int
    props: jax.Array  # (T+1, len(_PROPS)) per type (last row: surface)
    tex_k: jax.Array  # (4, W, 2) texture wave vectors, 1/m
    tex_phase: jax.Array  # (4, W)
    v_density: float = eqx.field(static=True)
    texture: float = eqx.field(static=True)
    boundary: float = eqx.field(static=True)


def make_phantom(cfg: SimConfig, center=(0.0, 0.0)) -> Phantom:
    """Random phantom for ``cfg`` (reproducible from ``cfg.seed``); for a family preset
    (:data:`FAMILY_PRESETS`) the family's draw (:func:`diffxas.simulate.family.make_family_phantom`)."""
    if cfg.preset in FAMILY_PRESETS:
        return make_family_phantom(cfg, center)
    rng = np.random.default_rng(cfg.seed)
    types = list(DOMAIN_TYPES.values())
    props = np.array([[t[p] for p in _PROPS] for t in types] + [[SURFACE_TYPE[1][p] for p in _PROPS]])
    shift = edge_shift(cfg.element, cfg.table)  # V-edge energies -> this element's edge
    for col in ("b2", "c12", "c22"):
        props[:, _PROPS.index(col)] += shift
    parts, seeds, stype, spart = [], [], [], []
    r = cfg.particle_radius
    if cfg.n_particles == 1:
        centres = [np.asarray(center)]
    else:
        # place particles side by side along x, touching neither each other nor the scan border
        off = (np.arange(cfg.n_particles) - 0.5 * (cfg.n_particles - 1)) * (cfg.scan_width / cfg.n_particles)
        centres = [np.asarray(center) + np.array([o, rng.uniform(-0.1, 0.1) * r]) for o in off]
        r = min(r, 0.45 * cfg.scan_width / cfg.n_particles)
    for p, c in enumerate(centres):
        ax, ay = r * rng.uniform(0.85, 1.0), r * rng.uniform(0.7, 0.9)
        ang = rng.uniform(0, np.pi)
        parts.append([c[0], c[1], ax, ay, ang, cfg.particle_thickness])
        # every bulk type at least once per particle when possible
        tlist = list(rng.permutation(len(types)))
        while len(tlist) < cfg.domains_per_particle:
            tlist.append(int(rng.integers(len(types))))
        for t in tlist[: cfg.domains_per_particle]:
            rad, th = 0.75 * np.sqrt(rng.uniform(0.05, 1.0)), rng.uniform(0, 2 * np.pi)
            local = np.array([rad * ax * np.cos(th), rad * ay * np.sin(th)])
            rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            seeds.append(c + rot @ local)
            stype.append(int(t))
            spart.append(p)
    w = 8
    kmag = 1.0 / rng.uniform(150e-9, 600e-9, size=(4, w))
    kang = rng.uniform(0, 2 * np.pi, size=(4, w))
    tex_k = np.stack([kmag * np.cos(kang), kmag * np.sin(kang)], axis=-1)
    return Phantom(
        particles=jnp.asarray(parts, jnp.float32),
        seeds=jnp.asarray(seeds, jnp.float32),
        seed_type=jnp.asarray(stype, jnp.int32),
        seed_particle=jnp.asarray(spart, jnp.int32),
        props=jnp.asarray(props, jnp.float32),
        tex_k=jnp.asarray(tex_k, jnp.float32),
        tex_phase=jnp.asarray(rng.uniform(0, 2 * np.pi, size=(4, w)), jnp.float32),
        v_density=float(cfg.v_density),
        texture=float(cfg.texture),
        boundary=25e-9,
    )


def phantom_fields(ph: Phantom, x, y, edge: VEdge, reference_energy: float):
    """Evaluate the phantom at points (x, y) (m, any equal shapes).

    Returns ``(params: XanesParams, labels: int array, thickness: m)``; outside particles
    the spectral amplitudes (a, b1, c11, c21, n_other) are 0 and labels are -1.
    """
    if not isinstance(ph, Phantom):  # a randomized family draw (diffxas.simulate.family)
        return ph.fields(x, y, edge, reference_energy)
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    cx, cy, ax, ay, ang, tmax = (
        ph.particles[:, i][:, None, None] if x.ndim == 2 else ph.particles[:, i].reshape((-1,) + (1,) * x.ndim)
        for i in range(6)
    )
    dx, dy = x[None] - cx, y[None] - cy
    u = (jnp.cos(ang) * dx + jnp.sin(ang) * dy) / ax
    v = (-jnp.sin(ang) * dx + jnp.cos(ang) * dy) / ay
    rho2 = u**2 + v**2  # (P, ...)
    thick_p = tmax * jnp.sqrt(jnp.clip(1.0 - rho2, 0.0, None))
    thickness = jnp.sum(thick_p, axis=0)
    inside = thickness > 0
    which = jnp.argmin(rho2, axis=0)
    rho = jnp.sqrt(jnp.min(rho2, axis=0))

    # soft Voronoi over the seeds of the same particle
    sx = ph.seeds[:, 0].reshape((-1,) + (1,) * x.ndim)
    sy = ph.seeds[:, 1].reshape((-1,) + (1,) * x.ndim)
    d2 = (x[None] - sx) ** 2 + (y[None] - sy) ** 2
    same = ph.seed_particle.reshape((-1,) + (1,) * x.ndim) == which[None]
    d2 = jnp.where(same, d2, jnp.inf)
    tau2 = 2.0 * 400e-9 * ph.boundary
    wts = jax.nn.softmax(-(d2 - jnp.min(d2, axis=0, keepdims=True)) / tau2, axis=0)  # (D, ...)
    nt = ph.props.shape[0] - 1
    onehot = jax.nn.one_hot(ph.seed_type, nt)  # (D, T)
    wtype = jnp.einsum("d...,dt->t...", wts, onehot)  # (T, ...)
    bulk = jnp.einsum("t...,tp->p...", wtype, ph.props[:nt])
    w_s = jax.nn.sigmoid((rho - 0.86) / 0.03)
    prop = (1 - w_s)[None] * bulk + w_s[None] * ph.props[nt].reshape((-1,) + (1,) * x.ndim)
    P = dict(zip(_PROPS, prop))

    def tex(i):
        k = ph.tex_k[i]
        ph_ = k[:, 0].reshape((-1,) + (1,) * x.ndim) * x[None] + k[:, 1].reshape((-1,) + (1,) * x.ndim) * y[None]
        return jnp.sqrt(2.0 / k.shape[0]) * jnp.sum(
            jnp.cos(2 * jnp.pi * ph_ + ph.tex_phase[i].reshape((-1,) + (1,) * x.ndim)), axis=0
        )

    t = ph.texture
    ax_w = jnp.take(ph.particles[:, 2], which)
    cx_w = jnp.take(ph.particles[:, 0], which)
    b2 = P["b2"] + t * (0.35 * tex(0) + 0.5 * (x - cx_w) / ax_w)
    pen = P["pen"] * (1 + t * 0.05 * tex(1))
    ne_target = P["ne"] * (1 + t * 0.02 * tex(2))
    nv = ph.v_density * thickness * (1 + t * 0.04 * tex(3))
    p = xanes_from_properties(dict(P, b2=b2, pen=pen), ne_target, nv, inside, edge, reference_energy)
    labels = jnp.where(w_s > 0.5, nt, jnp.argmax(wtype, axis=0))
    labels = jnp.where(inside, labels, -1)
    return p, labels, thickness


def xanes_from_properties(P, ne_target, nv, inside, edge: VEdge, reference_energy: float) -> XanesParams:
    """Eq. 1's parameters from the phantom's per-point properties (the simulator's physics,
    shared by :func:`phantom_fields` and :mod:`diffxas.simulate.family`).

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


# ----------------------------------------------------------------------------- scan


def raster_positions(cfg: SimConfig, rng, center=(0.0, 0.0)) -> np.ndarray:
    """Raster scan (x, y) probe centres with uniform jitter (fraction of the step), m."""
    n = int(math.floor(cfg.scan_width / cfg.scan_step + 1e-9)) + 1
    g = (np.arange(n) - 0.5 * (n - 1)) * cfg.scan_step
    yy, xx = np.meshgrid(g, g, indexing="ij")
    pos = np.stack([xx.ravel(), yy.ravel()], axis=-1) + np.asarray(center)
    pos = pos + rng.uniform(-cfg.jitter, cfg.jitter, size=pos.shape) * cfg.scan_step
    return pos


# ----------------------------------------------------------------------------- simulate


@dataclasses.dataclass
class Simulation:
    """A simulated dataset and its ground truth."""

    dataset: Dataset
    truth: Truth
    config: SimConfig
    true_positions: np.ndarray
    true_probes: np.ndarray
    sampling_grids: list  # the (oversampled) grid each energy was simulated on
    true_scales: np.ndarray | None = None  # (F,) incident-flux factor of each frame (flux_jitter), None = all 1
    true_background: np.ndarray | None = None  # (M, M) expected background counts per frame (centred), None = none


def simulate(cfg: SimConfig, progress: bool = False) -> Simulation:
    """Simulate a multi-energy ptychography dataset and its ground truth.

    Every energy: phantom fields on that energy's own grid (oversampled), absorption and
    phase from the spectral model plus the membrane, probe from the KB pupil (with
    optional drift/aberrations), exact frames via the forward model, Poisson noise.
    """
    rng = np.random.default_rng(cfg.seed + 7919)
    noise_rng = rng if cfg.noise_seed is None else np.random.default_rng([cfg.noise_seed, 104729])
    energies = np.asarray(cfg.energies, float)
    edge = VEdge.for_energies(cfg.element, energies, cfg.table, "the simulation")
    e_ref = float(energies[0])
    ph = make_phantom(cfg)
    M, os_ = cfg.frame_size, cfg.oversample
    nominal = raster_positions(cfg, rng)
    n_pos = nominal.shape[0]
    dx = np.asarray(object_pixel_size(energies, cfg.distance, cfg.detector_pixel, M), np.float64)
    lam = wavelength(energies)
    na = numerical_aperture_for_fwhm(cfg.probe_fwhm, wavelength(e_ref))
    mem_a, mem_phi = membrane(energies, cfg.membrane_thickness, cfg.table)
    frames = np.zeros((len(energies) * n_pos, M, M), np.float32)
    positions = np.zeros((len(energies) * n_pos, 2))
    true_pos = np.zeros_like(positions)
    eidx = np.repeat(np.arange(len(energies)), n_pos).astype(np.int32)
    illum = np.zeros((len(energies), M, M), np.complex64)
    true_probes = np.zeros_like(illum)
    grids = []
    mask = np.ones((M, M), np.float32)
    bad = rng.random((M, M)) < cfg.bad_pixel_fraction
    bad[M // 2, M // 2] = False
    mask[bad] = 0.0
    # per-frame flux factors from their own stream, so flux_jitter = 0 leaves every other draw as it was
    flux = (
        np.clip(1.0 + np.random.default_rng([cfg.seed, 15485863]).normal(0.0, cfg.flux_jitter, len(frames)), 0.05, None)
        if cfg.flux_jitter > 0
        else None
    )
    monitor = None
    if cfg.monitor_noise is not None:  # its own stream too
        err = (
            np.random.default_rng([cfg.seed, 32452843]).normal(0.0, cfg.monitor_noise, len(frames))
            if cfg.monitor_noise > 0
            else 0.0
        )
        monitor = 1e5 * (np.ones(len(frames)) if flux is None else flux) * np.clip(1.0 + err, 0.05, None)

    bg = background_profile(M, cfg.background, cfg.background_profile) if cfg.background > 0 else None

    @jax.jit
    def frames_of(obj, probe_hat, corner, frac):
        return intensities(obj[None], probe_hat[None], jnp.zeros(corner.shape[0], jnp.int32), corner, frac, crop=M)

    it = range(len(energies))
    if progress:
        it = tqdm(it, desc="simulate", unit="energy")
    for k in it:
        err = rng.normal(0.0, cfg.position_error, size=nominal.shape) if cfg.position_error > 0 else 0.0
        tp = nominal + err
        drift = cfg.probe_drift * (energies[k] - energies[0]) / max(energies[-1] - energies[0], 1e-9)
        d_os = dx[k] / os_
        # one grid shape for all energies (the finest pixel's), so the frame kernel compiles once
        g_fine = grid_covering(
            nominal, dx.min() / os_, os_ * M, margin_px=2 * os_ + int(4 * cfg.position_error / dx.min() * os_) + 2
        )
        grid = Grid(
            pixel_size=float(d_os),
            shape=tuple(int(n) for n in g_fine.shape),
            origin=(
                float(g_fine.center[0] - 0.5 * (g_fine.shape[1] - 1) * d_os),
                float(g_fine.center[1] - 0.5 * (g_fine.shape[0] - 1) * d_os),
            ),
        )
        xs, ys = grid.coords()
        X, Y = np.meshgrid(xs, ys)
        p, _, _ = phantom_fields(ph, X, Y, edge, e_ref)
        A = absorption(p, jnp.asarray([energies[k]]))[0] + mem_a[k]
        phi = phase(p, jnp.asarray([energies[k]]), edge)[0] + mem_phi[k]
        obj = transmission(A, phi).astype(jnp.complex64)
        ab = {"astig": cfg.probe_astigmatism} if cfg.probe_astigmatism else None
        probe_os = kb_probe(
            os_ * M,
            d_os,
            lam[k],
            na,
            photons=cfg.dose,
            defocus_m=cfg.probe_defocus,
            aberrations=ab,
            shift_m=(drift, 0.0),
        )
        true_probes[k] = kb_probe(
            M, dx[k], lam[k], na, photons=cfg.dose, defocus_m=cfg.probe_defocus, aberrations=ab, shift_m=(drift, 0.0)
        )
        illum[k] = kb_probe(M, dx[k], lam[k], na, photons=cfg.dose, defocus_m=cfg.probe_defocus)
        corner, frac = frame_geometry(tp, grid, os_ * M)
        inten = np.asarray(frames_of(obj, jnp.fft.fft2(jnp.asarray(probe_os)), jnp.asarray(corner), jnp.asarray(frac)))
        sl = slice(k * n_pos, (k + 1) * n_pos)
        inten = np.maximum(inten, 0.0)
        if flux is not None:
            inten = inten * flux[sl, None, None]
        if bg is not None:
            inten = inten + bg
        frames[sl] = (noise_rng.poisson(inten).astype(np.float32) if cfg.noise else inten.astype(np.float32)) * mask
        grids.append(grid)
        positions[sl] = nominal
        true_pos[sl] = tp
    ds = Dataset(
        frames=jnp.asarray(frames),
        positions=jnp.asarray(positions, jnp.float32),
        energy_index=jnp.asarray(eidx),
        energies=jnp.asarray(energies, jnp.float32),
        mask=jnp.asarray(np.broadcast_to(mask, (len(energies), M, M)).copy()),
        illumination=jnp.asarray(illum),
        distance=float(cfg.distance),
        detector_pixel=float(cfg.detector_pixel),
        monitor=monitor,
    )
    truth = make_truth(ph, cfg, ds, edge)
    return Simulation(
        dataset=ds,
        truth=truth,
        config=cfg,
        true_positions=true_pos,
        true_probes=true_probes,
        sampling_grids=grids,
        true_scales=flux,
        true_background=bg,
    )


def background_profile(m: int, mean: float, profile: str = "flat") -> np.ndarray:
    """(M, M) float32 expected background counts per frame with mean ``mean``, zero
    frequency at (M/2, M/2): flat, or "radial" ``1 / (1 + (q / q0)^2)``, ``q0 = M / 8``
    pixels (:class:`SimConfig`)."""
    if profile == "flat":
        return np.full((m, m), mean, np.float32)
    yy, xx = np.mgrid[:m, :m] - m // 2
    shape = 1.0 / (1.0 + (xx**2 + yy**2) / (m / 8.0) ** 2)
    return (mean * shape / shape.mean()).astype(np.float32)


def make_truth(ph: Phantom, cfg: SimConfig, ds: Dataset, edge: VEdge) -> Truth:
    """Ground-truth maps on a grid ``truth_oversample`` x finer than the common grid."""
    common = ds.common_grid()
    t_os = cfg.truth_oversample
    d = common.pixel_size / t_os
    grid = Grid(
        pixel_size=d,
        shape=(common.shape[0] * t_os, common.shape[1] * t_os),
        origin=(
            common.origin[0] - 0.5 * common.pixel_size + 0.5 * d,
            common.origin[1] - 0.5 * common.pixel_size + 0.5 * d,
        ),
    )
    xs, ys = grid.coords()
    X, Y = np.meshgrid(xs, ys)
    e_ref = float(cfg.energies[0])
    p, labels, thick = phantom_fields(ph, X, Y, edge, e_ref)
    inside = np.asarray(labels) >= 0
    phi_ref = phase(p, jnp.asarray([e_ref]), edge)[0]

    with np.errstate(invalid="ignore", divide="ignore"):
        maps = {
            "edge_energy": np.asarray(p.b2),
            "edge_width": np.asarray(p.b3),
            "edge_jump": np.asarray(p.b1),
            "pre_edge": np.asarray(pre_edge(p)),
            "pre_edge_norm": np.asarray(pre_edge_norm(p)),
            "n_v": np.asarray(n_v(p.b1, edge)),
            "ne_eff_per_nv": np.asarray(ne_eff_per_nv(phi_ref, p.b1, e_ref, edge)),
        }
    for k in ("edge_energy", "edge_width", "pre_edge_norm", "ne_eff_per_nv"):
        maps[k] = np.where(inside, maps[k], np.nan).astype(np.float64)
    params = {k: np.asarray(getattr(p, k), np.float64) for k in PARAM_NAMES + ("n_other",)}
    params["thickness"] = np.asarray(thick, np.float64)
    names = list(ph.domain_names) if not isinstance(ph, Phantom) else list(DOMAIN_TYPES) + [SURFACE_TYPE[0]]
    attrs_extra = {"family": ph.draw} if not isinstance(ph, Phantom) else {}
    return Truth(
        maps=maps,
        labels=np.asarray(labels, np.int16),
        domain_names=names,
        params=params,
        pixel_size=float(d),
        origin=tuple(float(o) for o in grid.origin),
        energies=np.asarray(cfg.energies, float),
        reference_energy=e_ref,
        attrs={
            "preset": cfg.preset,
            "seed": cfg.seed,
            "dose": cfg.dose,
            "diffxas_version": __version__,
            "config": cfg.to_dict(),
            **attrs_extra,
        },
    )
