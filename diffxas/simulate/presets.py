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

Modules: this one runs the simulation (:func:`simulate`, scan, background, truth) and is the
public face of the others, whose names it re-exports: :mod:`diffxas.simulate.config`
(:class:`SimConfig`, :data:`PRESETS`, :func:`preset`), :mod:`diffxas.simulate.materials`
(domain types, properties -> eq. 1, membrane) and :mod:`diffxas.simulate.phantom` (the fixed
analytic phantom).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffxas import __version__
from diffxas.data.dataset import Dataset
from diffxas.maps import Truth
from diffxas.physics.forward import frame_geometry, intensities, transmission
from diffxas.physics.geometry import Grid, grid_covering, object_pixel_size, wavelength
from diffxas.physics.probe import kb_probe, numerical_aperture_for_fwhm
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import PARAM_NAMES, absorption, n_v, ne_eff_per_nv, phase, pre_edge, pre_edge_norm

# The options and presets, the materials and the phantom live in their own modules; they are
# re-exported here, where the rest of the package and its users import them from.
from diffxas.simulate.config import FAMILY_PRESETS as FAMILY_PRESETS
from diffxas.simulate.config import PRESETS as PRESETS
from diffxas.simulate.config import SEED_ENERGIES as SEED_ENERGIES
from diffxas.simulate.config import SimConfig as SimConfig
from diffxas.simulate.config import _tiny_energies as _tiny_energies
from diffxas.simulate.config import preset as preset
from diffxas.simulate.materials import DOMAIN_TYPES as DOMAIN_TYPES
from diffxas.simulate.materials import SURFACE_TYPE as SURFACE_TYPE
from diffxas.simulate.materials import edge_shift as edge_shift
from diffxas.simulate.materials import membrane as membrane
from diffxas.simulate.materials import xanes_from_properties as xanes_from_properties
from diffxas.simulate.phantom import Phantom as Phantom
from diffxas.simulate.phantom import make_phantom as make_phantom
from diffxas.simulate.phantom import phantom_fields as phantom_fields

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
