"""A randomized sample family for judging reconstructions on data they were not tuned on.

``diffxas simulate data.cxi --preset family --seed N`` (or ``preset = "family"`` and
``seed = N`` in a ``[simulate]`` section) simulates one draw of the family: everything
about the sample and the experimental conditions is drawn from ``N`` alone (numpy
Generators seeded by ``N``; the draw is independent of the machine and of other options
except ``scan_width``, which bounds where the particles are placed). ``family-tiny`` is the
same family on a ``tiny``-like frame (32 px, 15 energies, 1.2 um field) for tests.

This module draws; it has no physics of its own. Each point's spectral properties
(edge energy, widths, pre-edge intensity, peaks, composition, V per area) go through
:func:`diffxas.simulate.materials.xanes_from_properties` into eq. 1 and the KK-consistent phase,
exactly as the fixed phantom's do. The ranges and their physical justification are in
docs/family.md and in :data:`RANGES`; :func:`draw_family` returns the draw as plain
numbers (it is also written into the truth file's attributes under ``family``).

What is drawn, per draw:

* 1-3 particles: ellipses with random axes (major diameter 0.5-2 um, log-uniform, then
  shrunk together until they fit the field without touching), rotation, and a thickness
  profile ``t_max (1 - rho^2)^p`` (p = 0.5: an ellipsoid; smaller: flatter platelets);
* per particle a domain geometry: ``voronoi`` (3-6 cells with wavy boundaries),
  ``blobs`` (1-3 round inclusions in a matrix), ``gradient`` (2-3 bands across the
  particle plus a strong linear trend of the edge energy) or ``core-shell``;
* per domain its own spectral *shape*: valence 3-5 and tetrahedral character 0-1 set the
  edge energy, pre-edge position and intensity; pre-edge width, second pre-edge peak
  (ratio, position on the rising edge, width), edge width and composition are drawn too;
* a surface layer (probability 0.8 per particle, 20-100 nm, reduced valence, ~1.3-2.2x
  Re[N_e^eff]/N_V);
* smooth textures inside the domains: Gaussian random fields (correlation length
  100-250 nm) of every spectral parameter, of the composition and of N_V, with
  per-domain amplitudes; the boundaries are sharp (softened over ``blur`` 5-12 nm);
* experimental conditions (:func:`draw_conditions`): dose, scan step, position errors,
  probe drift between energies.

Ground truth: the truth labels are the domain index (one label per domain, bulk and
surface layers, numbered particle by particle), ``Truth.domain_names`` describes each one;
the distance of a pixel to the nearest domain boundary or particle rim follows from the
labels (:func:`diffxas.analysis.anatomy.boundary_distance`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffxas.simulate.materials import edge_shift, xanes_from_properties

#: Documented ranges of every drawn quantity (docs/family.md gives the sources). Energies
#: in eV, lengths in m. "rel" = relative RMS of a texture.
RANGES: dict[str, tuple[float, float]] = {
    # particles (milled cathode particles, 0.5-2 um)
    "n_particles": (1, 3),
    "diameter": (0.5e-6, 2.0e-6),  # major axis before fitting into the field
    "aspect": (0.6, 1.0),  # minor / major axis
    "thickness_ratio": (0.5, 1.0),  # t_max / major diameter
    "thickness_max": (0.25e-6, 1.5e-6),
    "profile_power": (0.3, 0.7),
    # spectral shape per domain (V K edge of V3+ .. V5+ oxides)
    "valence": (3.0, 5.0),
    "tetrahedral": (0.0, 1.0),
    "b2": (5476.0, 5484.0),
    "b3": (2.5, 5.0),
    "pen": (0.4, 3.0),
    "c12": (5467.0, 5470.0),
    "c13": (0.8, 1.6),
    "r21": (0.1, 0.6),
    "c22_offset": (2.5, 5.0),  # second peak above the first, on the rising edge
    "c23": (1.5, 3.0),
    "ne": (34.0, 46.0),
    # surface layer
    "surface_thickness": (20e-9, 100e-9),
    "surface_reduction": (0.3, 1.5),  # valence below the particle's bulk mean
    "surface_ne_factor": (1.3, 2.2),
    # textures (Gaussian random fields)
    "texture_length": (100e-9, 250e-9),
    "tex_b2": (0.05, 0.4),  # eV RMS
    "tex_b3": (0.0, 0.08),  # rel
    "tex_pen": (0.0, 0.12),  # rel
    "tex_c12": (0.0, 0.15),  # eV RMS (moves both pre-edge peaks)
    "tex_c13": (0.0, 0.08),  # rel
    "tex_r21": (0.0, 0.1),  # rel
    "tex_c23": (0.0, 0.08),  # rel
    "tex_ne": (0.0, 0.03),  # rel
    "tex_nv": (0.0, 0.06),  # rel
    "warp": (0.0, 40e-9),  # RMS displacement that makes boundaries wavy
    "blur": (5e-9, 12e-9),  # boundary softness
    "gradient_b2": (0.5, 2.5),  # eV across a "gradient" particle's major axis
    "trend_b2": (0.0, 0.3),  # eV across other particles
    # experimental conditions
    "dose": (1e6, 1e7),  # photons per frame, log-uniform
    "scan_step": (120e-9, 180e-9),
    "position_error": (0.0, 8e-9),
    "probe_drift": (0.0, 30e-9),
}

#: Domain geometries and their probabilities per particle.
GEOMETRIES = {"voronoi": 0.4, "blobs": 0.2, "gradient": 0.2, "core-shell": 0.2}
SURFACE_PROBABILITY = 0.8
#: Texture fields, in this order (index into the per-domain amplitude rows).
TEXTURES = ("b2", "b3", "pen", "c12", "c13", "r21", "c23", "ne", "nv")
_PROPS = ("b2", "b3", "pen", "c12", "c13", "r21", "c22", "c23", "ne")
_WAVES = 16  # cosines per random field
_FIELD_MARGIN = (
    0.05e-6  # particles stay this far inside the outermost scan positions (the probe reaches ~150 nm beyond)
)
_MAX_DOMAINS = 32  # >= 3 particles x (6 cells + surface)
_MAX_PARTICLES = int(RANGES["n_particles"][1])  # particles keep this far from the scan's edge (the probe's half width)


def _u(rng, name):
    lo, hi = RANGES[name]
    return float(rng.uniform(lo, hi))


def _logu(rng, name):
    lo, hi = RANGES[name]
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_conditions(seed: int) -> dict[str, Any]:
    """Experimental conditions of draw ``seed`` (SimConfig fields): dose (log-uniform),
    scan step, position errors (RMS), probe drift over the energy range."""
    rng = np.random.default_rng([int(seed), 1])
    return {
        "dose": round(_logu(rng, "dose"), -3),
        "scan_step": _u(rng, "scan_step"),
        "position_error": _u(rng, "position_error"),
        "probe_drift": _u(rng, "probe_drift"),
    }


def _bulk_props(rng) -> dict[str, float]:
    """One bulk domain's spectral shape (eV; see RANGES and docs/family.md)."""
    v, tet = _u(rng, "valence"), _u(rng, "tetrahedral")
    return _props_for(rng, v, tet) | {"valence": v, "tetrahedral": tet, "ne": _u(rng, "ne")}


def _props_for(rng, v: float, tet: float) -> dict[str, float]:
    x = (v - 3.0) / 2.0  # 0 (V3+) .. 1 (V5+)
    lo, hi = RANGES["b2"]
    b2 = float(np.clip(lo + (hi - lo) * x + rng.uniform(-0.5, 0.5), lo, hi))
    lo, hi = RANGES["pen"]
    s = float(np.clip(0.3 * x + 0.7 * tet + rng.normal(0.0, 0.05), 0.0, 1.0))
    pen = lo + (hi - lo) * s
    lo, hi = RANGES["c12"]
    c12 = float(np.clip(lo + 0.2 + 2.5 * x + rng.uniform(-0.3, 0.3), lo, hi))
    return {
        "b2": b2,
        "b3": _u(rng, "b3"),
        "pen": pen,
        "c12": c12,
        "c13": _u(rng, "c13"),
        "r21": _u(rng, "r21"),
        "c22": c12 + _u(rng, "c22_offset"),
        "c23": _u(rng, "c23"),
    }


def _place(rng, n: int, half: float):
    """Centres, semi-axes (a >= b), angles of ``n`` non-touching ellipses inside
    [-half, half]^2 (bounding circles of radius a); sizes shrink by 0.9 until they fit."""
    d = np.array([_logu(rng, "diameter") for _ in range(n)])
    aspect = np.array([_u(rng, "aspect") for _ in range(n)])
    ang = rng.uniform(0, np.pi, n)
    scale = 1.0
    while True:
        a = 0.5 * d * scale
        if np.all(a < half):
            for _ in range(200):
                c = np.stack([rng.uniform(-half + a, half - a), rng.uniform(-half + a, half - a)], axis=-1)
                dist = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1))
                gap = dist - (a[:, None] + a[None]) - 50e-9
                if n == 1 or np.all(gap[np.triu_indices(n, 1)] > 0):
                    return c, a, a * aspect, ang, d, scale
        scale *= 0.9


def draw_family(seed: int, scan_width: float = 1.5e-6) -> dict[str, Any]:
    """The sample of draw ``seed`` as plain numbers (JSON-ready); see the module docstring.

    Returns ``particles`` (list of dicts: centre, semi-axes, angle, t_max, power, geometry,
    drawn diameter), ``domains`` (list of dicts: particle, kind, centre/offset/q of its
    score, spectral props, texture amplitudes), ``texture_length``, ``warp``, ``blur``.
    """
    rng = np.random.default_rng([int(seed), 2])
    lo, hi = RANGES["n_particles"]
    n = int(rng.integers(lo, hi + 1))
    half = 0.5 * scan_width - _FIELD_MARGIN
    centres, ax, ay, ang, d_drawn, scale = _place(rng, n, half)
    particles, domains = [], []
    geo_names, geo_p = list(GEOMETRIES), np.array(list(GEOMETRIES.values()))
    for p in range(n):
        geom = str(rng.choice(geo_names, p=geo_p / geo_p.sum()))
        t_max = float(np.clip(2 * ax[p] * _u(rng, "thickness_ratio"), *RANGES["thickness_max"]))
        rot = np.array([[np.cos(ang[p]), -np.sin(ang[p])], [np.sin(ang[p]), np.cos(ang[p])]])
        c = centres[p]
        # direction of the edge-energy trend (eV per m), along a random direction
        tdir = rng.uniform(0, 2 * np.pi)
        span = _u(rng, "gradient_b2") if geom == "gradient" else _u(rng, "trend_b2")
        grad = (span / (2 * ax[p]) * np.array([np.cos(tdir), np.sin(tdir)])).tolist()
        particles.append(
            {
                "centre": c.tolist(),
                "ax": float(ax[p]),
                "ay": float(ay[p]),
                "angle": float(ang[p]),
                "t_max": t_max,
                "power": _u(rng, "profile_power"),
                "geometry": geom,
                "diameter_drawn": float(d_drawn[p]),
                "size_scale": float(scale),
                "b2_gradient": grad,
            }
        )

        def local(u, v, c=c, rot=rot, a=ax[p], b=ay[p]):
            return (c + rot @ np.array([u * a, v * b])).tolist()

        cells = []  # (centre, offset, q): score = offset - q * |x - centre|
        size_n = max(1, round(2 * ax[p] / 0.35e-6))  # fewer domains in small particles
        if geom == "voronoi":
            k = min(int(rng.integers(3, 7)), max(2, size_n))
            for _ in range(k):
                r, th = 0.8 * np.sqrt(rng.uniform(0.0, 1.0)), rng.uniform(0, 2 * np.pi)
                cells.append((local(r * np.cos(th), r * np.sin(th)), 0.0, 1.0))
        elif geom == "blobs":
            cells.append((c.tolist(), 0.0, 0.0))  # the matrix
            for _ in range(int(rng.integers(1, 4))):
                r, th = 0.6 * np.sqrt(rng.uniform(0.0, 1.0)), rng.uniform(0, 2 * np.pi)
                cells.append((local(r * np.cos(th), r * np.sin(th)), float(ay[p] * rng.uniform(0.2, 0.45)), 1.0))
        elif geom == "gradient":
            k = int(rng.integers(2, 4))
            th = rng.uniform(0, 2 * np.pi)
            for i in range(k):
                s = (i - 0.5 * (k - 1)) * 1.4 / k
                cells.append((local(s * np.cos(th), s * np.sin(th)), 0.0, 1.0))
        else:  # core-shell
            cells.append((local(*rng.uniform(-0.15, 0.15, 2)), float(ay[p] * rng.uniform(0.35, 0.7)), 1.0))
            cells.append((c.tolist(), 0.0, 0.0))
        bulk = []
        for centre, off, q in cells:
            pr = _bulk_props(rng)
            bulk.append(pr)
            domains.append(
                {
                    "particle": p,
                    "kind": geom,
                    "centre": centre,
                    "offset": off,
                    "q": q,
                    "props": pr,
                    "texture": {t: _u(rng, "tex_" + t) for t in TEXTURES},
                }
            )
        if rng.uniform() < SURFACE_PROBABILITY:
            v_bulk = float(np.mean([b["valence"] for b in bulk]))
            v = float(np.clip(v_bulk - _u(rng, "surface_reduction"), *RANGES["valence"]))
            tet = _u(rng, "tetrahedral")
            ne = float(np.mean([b["ne"] for b in bulk])) * _u(rng, "surface_ne_factor")
            pr = _props_for(rng, v, tet) | {"valence": v, "tetrahedral": tet, "ne": ne}
            domains.append(
                {
                    "particle": p,
                    "kind": "surface",
                    "centre": c.tolist(),
                    "offset": 0.0,
                    "q": 0.0,
                    "props": pr,
                    "thickness": _u(rng, "surface_thickness"),
                    "texture": {t: _u(rng, "tex_" + t) for t in TEXTURES},
                }
            )
    ell = _u(rng, "texture_length")
    fields = len(TEXTURES) + 2  # + the two components of the boundary warp
    # random Fourier features of a Gaussian covariance exp(-r^2 / (2 ell^2)): k ~ N(0, 1/(2 pi ell)^2)
    k = rng.normal(0.0, 1.0 / (2 * np.pi * ell), size=(fields, _WAVES, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(fields, _WAVES))
    return {
        "seed": int(seed),
        "scan_width": float(scan_width),
        "particles": particles,
        "domains": domains,
        "texture_length": ell,
        "texture_k": k.tolist(),
        "texture_phase": phase.tolist(),
        "warp": _u(rng, "warp"),
        "blur": _u(rng, "blur"),
    }


def domain_name(d: dict[str, Any]) -> str:
    pr = d["props"]
    return (
        f"particle {d['particle']} {d['kind']}: V{pr['valence']:.2f}+ tet {pr['tetrahedral']:.2f} "
        f"(b2 {pr['b2']:.2f} eV, PE/dmt {pr['pen']:.2f} eV, Ne/NV {pr['ne']:.1f})"
    )


class FamilyPhantom:
    """One draw of the family, evaluable anywhere (the simulator's ``phantom_fields``
    dispatches to :meth:`fields`). Lengths in m, energies in eV."""

    def __init__(self, draw: dict[str, Any], v_density: float, energy_shift: float = 0.0):
        self.draw = draw
        self.domain_names = [domain_name(d) for d in draw["domains"]]
        P = draw["particles"]
        D = draw["domains"]
        self.particles = jnp.asarray(
            [[*p["centre"], p["ax"], p["ay"], p["angle"], p["t_max"], p["power"], *p["b2_gradient"]] for p in P],
            jnp.float32,
        )
        props = np.array([[d["props"][k] for k in _PROPS] for d in D], np.float64)
        for col in ("b2", "c12", "c22"):
            props[:, _PROPS.index(col)] += energy_shift
        # padded to _MAX_DOMAINS (particle -1: never anyone's) so that one compiled kernel serves every draw
        pad = _MAX_DOMAINS - len(D)
        if pad < 0:
            raise ValueError(f"draw has {len(D)} domains, more than {_MAX_DOMAINS}")
        self.props = jnp.asarray(np.pad(props, ((0, pad), (0, 0)), constant_values=1.0), jnp.float32)
        amp = np.array([[d["texture"][t] for t in TEXTURES] for d in D], np.float64)
        self.amp = jnp.asarray(np.pad(amp, ((0, pad), (0, 0))), jnp.float32)
        score = np.array([[*d["centre"], d["offset"], d["q"]] for d in D], np.float64)
        self.score = jnp.asarray(np.pad(score, ((0, pad), (0, 0))), jnp.float32)
        self.dom_particle = jnp.asarray([d["particle"] for d in D] + [-1] * pad, jnp.int32)
        self.is_surface = jnp.asarray([d["kind"] == "surface" for d in D] + [False] * pad)
        self.surf_thick = jnp.asarray([d.get("thickness", 0.0) for d in D] + [0.0] * pad, jnp.float32)
        # absent particles: far away (1 km), zero thickness, so no point is ever theirs
        parts = np.array(self.particles, np.float64)
        far = np.array([[1e3, 1e3, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0, 0.0]] * (_MAX_PARTICLES - len(P))).reshape(-1, 9)
        self.particles = jnp.asarray(np.concatenate([parts, far]), jnp.float32)
        self.n_particles = len(P)
        self.tex_k = jnp.asarray(draw["texture_k"], jnp.float32)
        self.tex_phase = jnp.asarray(draw["texture_phase"], jnp.float32)
        self.warp, self.blur = float(draw["warp"]), float(draw["blur"])
        self.v_density = float(v_density)

    def fields(self, x, y, edge, reference_energy: float):
        """``(XanesParams, labels, thickness)`` at points (x, y) (m, any equal shapes), like
        :func:`diffxas.simulate.phantom.phantom_fields`; labels are domain indices, -1 outside."""
        x = jnp.asarray(x, jnp.float32)
        y = jnp.asarray(y, jnp.float32)
        P, nv, inside, labels, thickness = _family_props(
            self.particles,
            self.props,
            self.amp,
            self.score,
            self.dom_particle,
            self.is_surface,
            self.surf_thick,
            self.tex_k,
            self.tex_phase,
            self.warp,
            self.blur,
            self.v_density,
            x,
            y,
        )
        p = xanes_from_properties(P, P["ne"], nv, inside, edge, reference_energy)
        return p, labels, thickness


@jax.jit
def _family_props(
    particles, props, amp, score, dom_particle, is_surface, surf_thick, tex_k, tex_phase, warp, blur, v_density, x, y
):
    def bc(a):  # (N,) -> (N, 1, ..., 1) against the points
        return a.reshape((-1,) + (1,) * x.ndim)

    cx, cy, ax, ay, ang, tmax, power = (bc(particles[:, i]) for i in range(7))
    dx, dy = x[None] - cx, y[None] - cy
    u = (jnp.cos(ang) * dx + jnp.sin(ang) * dy) / ax
    v = (-jnp.sin(ang) * dx + jnp.cos(ang) * dy) / ay
    rho2 = u**2 + v**2  # (P, ...)
    thick_p = tmax * jnp.clip(1.0 - rho2, 0.0, None) ** power
    thickness = jnp.sum(thick_p, axis=0)
    inside = thickness > 0
    which = jnp.argmin(rho2, axis=0)
    # distance to the rim of the own particle, to first order in (1 - rho): (1 - rho) / |grad rho|
    rho = jnp.sqrt(rho2)
    grad = jnp.sqrt((u / ax) ** 2 + (v / ay) ** 2) / jnp.maximum(rho, 1e-6)
    d_rim_p = (1.0 - rho) / jnp.maximum(grad, 1e-3 / jnp.maximum(ax, ay))
    d_rim = jnp.take_along_axis(d_rim_p, which[None], axis=0)[0]

    def field(i):
        k = tex_k[i]
        ph = bc(k[:, 0]) * x[None] + bc(k[:, 1]) * y[None]
        return jnp.sqrt(2.0 / k.shape[0]) * jnp.sum(jnp.cos(2 * jnp.pi * ph + bc(tex_phase[i])), axis=0)

    nt = len(TEXTURES)
    xw, yw = x + warp * field(nt), y + warp * field(nt + 1)
    dist = jnp.sqrt((xw[None] - bc(score[:, 0])) ** 2 + (yw[None] - bc(score[:, 1])) ** 2)
    s = bc(score[:, 2]) - bc(score[:, 3]) * dist  # (D, ...), metres
    own = bc(dom_particle) == which[None]
    s = jnp.where(own & ~bc(is_surface), s, -jnp.inf)
    w_bulk = jax.nn.softmax(s / blur, axis=0)
    # surface layer of the own particle: sigmoid over its thickness, zero without one
    st = jnp.where(own & bc(is_surface), bc(surf_thick), 0.0)
    has = jnp.any(own & bc(is_surface), axis=0)
    w_s = jnp.where(has, jax.nn.sigmoid((jnp.max(st, axis=0) - d_rim) / blur), 0.0)
    w = jnp.where(bc(is_surface), (own & bc(is_surface)) * w_s[None], (1.0 - w_s)[None] * w_bulk)
    tex = {name: field(i) for i, name in enumerate(TEXTURES)}

    def mix(col, tname, relative):
        base = bc(props[:, _PROPS.index(col)])
        a = bc(amp[:, TEXTURES.index(tname)]) if tname else 0.0
        t = tex[tname] if tname else 0.0
        val = base * (1.0 + a * t[None]) if relative else base + a * t[None]
        return jnp.sum(w * val, axis=0)

    gx_w, gy_w = jnp.take(particles[:, 7], which), jnp.take(particles[:, 8], which)
    cx_w, cy_w = jnp.take(particles[:, 0], which), jnp.take(particles[:, 1], which)
    P = {
        "b2": mix("b2", "b2", False) + gx_w * (x - cx_w) + gy_w * (y - cy_w),
        "b3": mix("b3", "b3", True),
        "pen": mix("pen", "pen", True),
        "c12": mix("c12", "c12", False),
        "c13": mix("c13", "c13", True),
        "r21": mix("r21", "r21", True),
        "c22": mix("c22", "c12", False),  # the second peak moves with the first
        "c23": mix("c23", "c23", True),
        "ne": mix("ne", "ne", True),
    }
    nv_tex = jnp.sum(w * (1.0 + bc(amp[:, TEXTURES.index("nv")]) * tex["nv"][None]), axis=0)
    nv = v_density * thickness * nv_tex
    labels = jnp.where(inside, jnp.argmax(w, axis=0), -1)
    return P, nv, inside, labels, thickness


def make_family_phantom(cfg, center=(0.0, 0.0)) -> FamilyPhantom:
    """The family draw of ``cfg.seed`` (``cfg.preset`` is a family preset), placed around
    ``center`` (m), with energies moved to ``cfg.element``'s edge like the fixed phantom."""
    draw = draw_family(cfg.seed, cfg.scan_width)
    if tuple(center) != (0.0, 0.0):
        for p in draw["particles"]:
            p["centre"] = [p["centre"][0] + center[0], p["centre"][1] + center[1]]
        for d in draw["domains"]:
            d["centre"] = [d["centre"][0] + center[0], d["centre"][1] + center[1]]
    return FamilyPhantom(draw, cfg.v_density, edge_shift(cfg.element, cfg.table))
