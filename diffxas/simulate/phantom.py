"""The fixed analytic phantom: random elliptical particles with soft-Voronoi domains of the
spectral types of :data:`diffxas.simulate.materials.DOMAIN_TYPES`, a surface shell, smooth
texture and a linear gradient; an analytic function of (x, y), evaluated wherever the
simulator or the truth needs it (:func:`phantom_fields`). A family preset's phantom is drawn
by :mod:`diffxas.simulate.family` instead.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffxas.physics.scattering import VEdge
from diffxas.simulate.config import FAMILY_PRESETS, SimConfig
from diffxas.simulate.family import make_family_phantom
from diffxas.simulate.materials import _PROPS, DOMAIN_TYPES, SURFACE_TYPE, edge_shift, xanes_from_properties


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
