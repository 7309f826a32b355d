"""Tests of the simulator (diffxas.simulate).

References: an independent plain-numpy recomputation of a simulated frame (sign and
centring convention), the scattering tables for the membrane, the truth's own definitions.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from diffxas.errors import ConfigError
from diffxas.physics.forward import crop_center
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import absorption, phase
from diffxas.simulate import presets as sm

ENERGIES = (5420.0, 5466.0, 5480.0, 5530.0)


@pytest.fixture(scope="module")
def sim():
    return sm.simulate(sm.preset("tiny", energies=ENERGIES, noise=False, bad_pixel_fraction=0.0))


def test_frame_recomputed_with_numpy(sim):
    """Recompute frame j of energy k with plain numpy from the phantom on the simulator's
    sampling grid: integer patch, numpy Fourier shift of the probe, numpy fft2 with
    norm='ortho', fftshift, crop. Tolerance 1e-3 relative to the frame maximum (float32)."""
    cfg = sim.config
    edge = VEdge.from_tables("V")
    k, j = 2, 17
    g = sim.sampling_grids[k]
    os_ = cfg.oversample
    M = cfg.frame_size * os_
    xs, ys = g.coords()
    X, Y = np.meshgrid(xs, ys)
    p, _, _ = sm.phantom_fields(sm.make_phantom(cfg), X, Y, edge, ENERGIES[0])
    mem_a, mem_phi = sm.membrane(np.array(ENERGIES), cfg.membrane_thickness)
    A = np.asarray(absorption(p, jnp.asarray([ENERGIES[k]]))[0], np.float64) + mem_a[k]
    phi = np.asarray(phase(p, jnp.asarray([ENERGIES[k]]), edge)[0], np.float64) + mem_phi[k]
    obj = np.exp(-A + 1j * phi)
    from diffxas.physics.geometry import wavelength
    from diffxas.physics.probe import kb_probe, numerical_aperture_for_fwhm

    na = numerical_aperture_for_fwhm(cfg.probe_fwhm, wavelength(ENERGIES[0]))
    probe = kb_probe(
        M, g.pixel_size, wavelength(ENERGIES[k]), na, photons=cfg.dose, defocus_m=cfg.probe_defocus
    ).astype(np.complex128)
    n_pos = sim.dataset.n_frames // len(ENERGIES)
    pos = sim.true_positions[k * n_pos + j]
    # probe centre (x, y) -> continuous (row, col) on the grid; x along columns
    col = (pos[0] - g.origin[0]) / g.pixel_size
    row = (pos[1] - g.origin[1]) / g.pixel_size
    r0, c0 = int(np.round(row)), int(np.round(col))
    kk = np.fft.fftfreq(M)
    ramp = np.exp(-2j * np.pi * (kk[:, None] * (row - r0) + kk[None, :] * (col - c0)))
    pr = np.fft.ifft2(np.fft.fft2(probe) * ramp)
    patch = obj[r0 - M // 2 : r0 + M // 2, c0 - M // 2 : c0 + M // 2]
    far = np.fft.fftshift(np.fft.fft2(pr * patch, norm="ortho"))
    ref = np.asarray(crop_center(np.abs(far) ** 2, cfg.frame_size))
    got = np.asarray(sim.dataset.frames[k * n_pos + j])
    np.testing.assert_allclose(got, ref, atol=1e-3 * ref.max())
    # centring: the bright field (unscattered beam) is centred on pixel (M/2, M/2)
    yy, xx = np.mgrid[: cfg.frame_size, : cfg.frame_size]
    com = (np.sum(yy * got) / got.sum(), np.sum(xx * got) / got.sum())
    assert abs(com[0] - cfg.frame_size // 2) < 1.0 and abs(com[1] - cfg.frame_size // 2) < 1.0


def test_dose_is_photons_per_frame(sim):
    # sum |P|^2 = dose; the membrane and particle absorb a little: 0.8 < sum/dose <= 1.
    sums = np.asarray(sim.dataset.frames).sum(axis=(1, 2))
    assert np.all(sums <= sim.config.dose * 1.0001)
    assert np.all(sums > 0.8 * sim.config.dose)
    np.testing.assert_allclose(
        np.sum(np.abs(np.asarray(sim.dataset.illumination)) ** 2, axis=(1, 2)), sim.config.dose, rtol=1e-4
    )


def test_truth_has_seed_like_domains(sim):
    t = sim.truth
    labels = t.labels
    assert set(np.unique(labels)) >= {-1, 4}  # background and the surface shell
    assert len(set(np.unique(labels[labels >= 0]))) >= 4
    inside = labels >= 0
    ee = t.maps["edge_energy"][inside]
    assert 5470 < np.nanmin(ee) and np.nanmax(ee) < 5490
    # surface domains carry about twice the electrons per V of the bulk
    surf = np.nanmedian(t.maps["ne_eff_per_nv"][labels == 4])
    bulk = np.nanmedian(t.maps["ne_eff_per_nv"][(labels >= 0) & (labels < 4)])
    assert 1.6 < surf / bulk < 2.4
    # N_V from a V density and ~1 um thickness: order 1e22 m^-2
    assert 5e21 < np.nanmax(t.maps["n_v"]) < 5e22


def test_membrane_matches_tables():
    # Si3N4, 500 nm, 3.1 g/cm3 at 5420 eV: A ~ 1e-2, phi ~ -0.3 rad (xraydb delta/beta order).
    a, phi = sm.membrane(np.array([5420.0]), 500e-9)
    assert 1e-3 < a[0] < 5e-2
    assert -1.0 < phi[0] < -0.05


def test_presets_and_errors():
    assert sm.preset("paper").energies == sm.SEED_ENERGIES
    assert len(sm.SEED_ENERGIES) == 40 and sm.SEED_ENERGIES[0] == 5420.0 and sm.SEED_ENERGIES[-1] == 5540.0
    with pytest.raises(ConfigError, match="unknown preset"):
        sm.preset("huge")
    with pytest.raises(ConfigError, match="unknown simulation option"):
        sm.preset("tiny", dosee=3)
    with pytest.raises(ConfigError, match="eV"):
        sm.preset("tiny", energies=(8.7e-16, 8.8e-16))
    with pytest.raises(ConfigError, match="dose"):
        sm.preset("tiny", dose=-1)


def test_other_absorber_moves_energies_and_phantom():
    # Mn: the preset's V energies and the phantom's spectral types move by the table edge
    # difference (6539.0 - 5465.1 eV, rounded to 0.1 eV); explicit energies are kept.
    from diffxas.app.config import sim_config
    from diffxas.physics.scattering import table_edge_energy

    shift = sm.edge_shift("Mn")
    assert shift == pytest.approx(table_edge_energy("Mn") - table_edge_energy("V"), abs=0.05)
    cfg = sim_config({"preset": "tiny", "element": "Mn"})
    np.testing.assert_allclose(cfg.energies, np.asarray(sm.preset("tiny").energies) + shift, atol=1e-9)
    assert sim_config({"preset": "tiny", "element": "Mn", "energies": [6500.0, 6600.0]}).energies == (6500.0, 6600.0)
    # the same phantom, its energies moved (float32 fields at ~6.5 keV: 2e-3 eV)
    from diffxas.physics.scattering import VEdge

    xs = np.linspace(-0.5e-6, 0.5e-6, 41)
    X, Y = np.meshgrid(xs, xs)
    pv, lv, _ = sm.phantom_fields(sm.make_phantom(sm.preset("tiny", seed=2)), X, Y, VEdge.from_tables("V"), 5420.0)
    pm, lm, _ = sm.phantom_fields(
        sm.make_phantom(sm.preset("tiny", seed=2, element="Mn")), X, Y, VEdge.from_tables("Mn"), 5420.0 + shift
    )
    np.testing.assert_array_equal(np.asarray(lv), np.asarray(lm))
    for k in ("b2", "c12", "c22"):
        np.testing.assert_allclose(np.asarray(getattr(pm, k)), np.asarray(getattr(pv, k)) + shift, atol=2e-3)
    for k in ("b3", "c13", "c23"):
        np.testing.assert_allclose(np.asarray(getattr(pm, k)), np.asarray(getattr(pv, k)), atol=1e-6)
    mn = sm.simulate(sm.preset("tiny", energies=(5420.0 + shift, 5480.0 + shift), seed=2, element="Mn"))
    e = mn.truth.maps["edge_energy"]
    b2s = [t["b2"] + shift for t in list(sm.DOMAIN_TYPES.values()) + [sm.SURFACE_TYPE[1]]]
    assert min(b2s) - 3.0 < np.nanmin(e) and np.nanmax(e) < max(b2s) + 3.0
    with pytest.raises(ConfigError, match="do not bracket the Mn K edge"):
        sm.simulate(sm.preset("tiny", energies=(5420.0, 5480.0), element="Mn"))
    with pytest.raises(ConfigError, match="chemical symbol"):
        sm.preset("tiny", element="mn")


def test_reproducible_with_seed():
    a = sm.simulate(sm.preset("tiny", energies=(5420.0, 5480.0), seed=3))
    b = sm.simulate(sm.preset("tiny", energies=(5420.0, 5480.0), seed=3))
    np.testing.assert_array_equal(np.asarray(a.dataset.frames), np.asarray(b.dataset.frames))


def test_probe_drift_simulates():
    # regression: a drifting probe (Fourier-shifted) used to be written in place into a read-only array
    s = sm.simulate(sm.preset("tiny", energies=(5420.0, 5480.0), probe_drift=50e-9))
    assert np.all(np.isfinite(np.asarray(s.dataset.frames)))
    # the true probes of the two energies differ by the drift; the nominal illumination does not
    assert not np.allclose(s.true_probes[0], s.true_probes[1], atol=1e-3 * np.abs(s.true_probes).max())


def test_monitor_records_the_flux():
    """``monitor_noise``: the dataset carries readings 1e5 x flux factor x (1 + error);
    with a perfect monitor (0) they are exactly 1e5 x the true flux factors; with 1e-3 the
    reading errors have RMS 1e-3 (+-15 %, 242 frames: chi-square spread ~9 %); without
    ``monitor_noise`` there is no monitor, and the frames are the same in all three (the
    monitor has its own random stream)."""
    kw = dict(energies=(5420.0, 5480.0), flux_jitter=0.05, seed=4)
    none = sm.simulate(sm.preset("tiny", **kw))
    perfect = sm.simulate(sm.preset("tiny", monitor_noise=0.0, **kw))
    noisy = sm.simulate(sm.preset("tiny", monitor_noise=1e-3, **kw))
    assert none.dataset.monitor is None
    np.testing.assert_allclose(np.asarray(perfect.dataset.monitor), 1e5 * perfect.true_scales, rtol=1e-12)
    err = np.asarray(noisy.dataset.monitor) / (1e5 * noisy.true_scales) - 1.0
    assert np.sqrt(np.mean(err**2)) == pytest.approx(1e-3, rel=0.15)
    np.testing.assert_array_equal(np.asarray(none.dataset.frames), np.asarray(noisy.dataset.frames))
    with pytest.raises(ConfigError, match="monitor_noise"):
        sm.preset("tiny", monitor_noise=-0.1)
