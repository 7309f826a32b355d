"""Tests of the scanning images from the frames alone (diffxas.data.stxm).

References: closed forms (the far-field centre of mass of a phase ramp, the integral of an
analytic gradient field) and the simulator's truth (where the particles are).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from diffxas.analysis.resample import resample_truth
from diffxas.data import stxm
from diffxas.data import stxm as joint_stxm
from diffxas.data.dataset import Dataset
from diffxas.simulate.presets import preset, simulate
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import run as joint_run


def _dataset(frames, positions, pixel=75e-6):
    f = np.asarray(frames, np.float32)
    m = f.shape[-1]
    return Dataset(
        frames=jnp.asarray(f),
        positions=jnp.asarray(positions, jnp.float32),
        energy_index=jnp.zeros(len(f), jnp.int32),
        energies=jnp.asarray([5420.0], jnp.float32),
        mask=jnp.ones((1, m, m), jnp.float32),
        illumination=None,
        distance=0.63,
        detector_pixel=pixel,
    )


def test_centre_of_mass_of_a_phase_ramp():
    """Exit wave P exp(2 pi i (u0 x + v0 y) / M), P a Gaussian: the centred far field's
    centre of mass is (v0, u0) detector pixels from the zero frequency (closed form, numpy
    FFT sign; the Gaussian's own spectrum is symmetric), to 1e-6 pixel. The counts do not
    move it: the same frame x 7 gives the same centre."""
    m = 32
    y, x = np.mgrid[:m, :m] - m // 2
    probe = np.exp(-(x**2 + y**2) / (2 * 4.0**2))
    frames = []
    for u0, v0 in ((3, 0), (-2, 5)):
        psi = probe * np.exp(2j * np.pi * (u0 * x + v0 * y) / m)
        frames.append(np.abs(np.fft.fftshift(np.fft.fft2(psi, norm="ortho"))) ** 2)
    frames.append(7.0 * frames[-1])
    sums, com = stxm.frame_moments(_dataset(frames, np.zeros((3, 2))))
    np.testing.assert_allclose(com, [[0, 3], [5, -2], [5, -2]], atol=1e-4)
    assert sums[2] == pytest.approx(7 * sums[1], rel=1e-5)


def test_integrate_gradient_of_a_gaussian():
    """Frankot-Chellappa integration of the analytic gradient of a Gaussian bump (depth
    0.5 rad, width 6 px, well inside a 64 x 64 field) returns the bump up to a constant
    (max error below 2 % of its depth)."""
    h = w = 64
    y, x = np.mgrid[:h, :w].astype(float)
    s = 6.0
    phi = -0.5 * np.exp(-((x - 30) ** 2 + (y - 34) ** 2) / (2 * s**2))
    gy = -phi * (y - 34) / s**2
    gx = -phi * (x - 30) / s**2
    rec = stxm.integrate_gradient(gy, gx)
    rec = rec - np.median(rec[:8, :8]) + phi[:8, :8].mean()
    assert np.max(np.abs(rec - phi)) < 0.02 * 0.5


@pytest.fixture(scope="module")
def jittered():
    base = dict(noise=False, bad_pixel_fraction=0.0)
    return simulate(preset("tiny", **base)), simulate(preset("tiny", flux_jitter=0.03, **base))


def test_dpc_phase_does_not_see_the_flux(jittered):
    """Noise-free `tiny` with and without a 3 % per-frame flux jitter: the DPC phase maps
    agree to 1e-4 rad (centres of mass are ratios of counts), the particle's phase is
    negative (matter), and the empty region found on it holds no pixel of the particles
    (truth N_V > 0 on the map grid) and at least 50 pixels in both cases (measured 101-106)."""
    clean, jit = jittered
    common = clean.dataset.common_grid()
    p0 = stxm.dpc_phase(clean.dataset, common)
    p1 = stxm.dpc_phase(jit.dataset, common)
    assert np.max(np.abs(p0 - p1)) < 1e-4
    tr = resample_truth(clean.truth, common.pixel_size, common.origin, common.shape)
    particle = np.nan_to_num(tr["n_v"]) > 0
    assert np.median(p0[particle]) < -0.05
    solver, state, ctx = joint_run.prepare_joint(
        jit.dataset, joint_config.JointConfig.make(steps=0, init="stxm", prior="none")
    )
    empty = np.asarray(solver.prob.empty) > 0.5
    assert ctx["init_info"]["empty_pixels"] == int(empty.sum()) >= 50
    assert not (empty & particle).any()


def test_monitor_makes_the_bright_field_flux_independent(jittered):
    """Noise-free `tiny` with a 3 % flux jitter: with the true flux factors as the monitor,
    the bright-field absorption stack equals the jitter-free one to 1e-6 (frame sums divided
    by the relative flux; the membrane counts are a percentile of those); without the
    monitor it differs by more than 1e-3 (the check can fail)."""
    import equinox as eqx

    clean, jit = jittered
    common = clean.dataset.common_grid()
    with_mon = eqx.tree_at(lambda d: d.monitor, jit.dataset, jnp.asarray(jit.true_scales), is_leaf=lambda x: x is None)
    a0 = stxm.stxm_absorption(clean.dataset, common)
    assert np.max(np.abs(stxm.stxm_absorption(with_mon, common) - a0)) < 1e-6
    assert np.max(np.abs(stxm.stxm_absorption(jit.dataset, common) - a0)) > 1e-3


def test_flux_scatter_measures_the_jitter(jittered, caplog):
    """The flux scatter of the membrane-only frames (empty region from the DPC phase):
    noise-free `tiny` with 3 % per-frame jitter gives 3 % within 25 % (the simulator's
    flux_jitter is the reference; measured 3.6 % on noisy data, 3 % jitter, and 0.34 % /
    1.2 % at 0.3 % / 1 %); without jitter it is below 0.05 %. The joint solver records it
    and warns once about the jittered data (no monitor), not about the clean data."""
    import logging

    clean, jit = jittered
    common = clean.dataset.common_grid()
    empty = joint_stxm.empty_region(-stxm.dpc_phase(clean.dataset, common), np.ones(common.shape, bool))
    assert stxm.flux_scatter(jit.dataset, empty, common) == pytest.approx(0.03, rel=0.25)
    assert stxm.flux_scatter(clean.dataset, empty, common) < 5e-4
    assert stxm.flux_scatter(clean.dataset, np.zeros(common.shape, bool), common) is None
    cfg = joint_config.JointConfig.make(steps=0, init="stxm", prior="none")
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        _, _, ctx = joint_run.prepare_joint(jit.dataset, cfg)
        assert ctx["init_info"]["flux_scatter"] > 0.02
        _, _, ctx = joint_run.prepare_joint(clean.dataset, cfg)
        assert ctx["init_info"]["flux_scatter"] < 5e-4
    warned = [r.getMessage() for r in caplog.records if "beyond Poisson" in r.getMessage()]
    assert len(warned) == 1 and "no monitor" in warned[0]


def test_illumination_at_counts(jittered, caplog):
    """A probe guess written at another power than the frames' is put at the counts of a
    membrane-only frame; within ILLUMINATION_TOLERANCE it is kept as written.

    Reference: the simulator's own probe (the bare beam, sum |P|^2 = photons per frame)
    against its noise-free frames: a membrane-only frame has the beam's power times the
    membrane's transmission, so the recorded power ratio is 1 / T_membrane, a few per cent
    above 1 (500 nm Si3N4 at these energies) and inside the 3 % tolerance."""
    import dataclasses
    import logging

    ds = jittered[0].dataset
    same, rec = stxm.illumination_at_counts(ds)
    assert same is ds and rec["rescaled"] == []
    assert all(1.0 < r < 1.0 + stxm.ILLUMINATION_TOLERANCE for r in rec["power_ratio"]), rec
    # peak-normalised guess (another convention): rescaled at every energy, one log line
    p = np.asarray(ds.illumination)
    peak1 = p / np.abs(p).max(axis=(1, 2), keepdims=True)
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        fixed, rec = stxm.illumination_at_counts(dataclasses.replace(ds, illumination=peak1))
    assert rec["rescaled"] == list(range(ds.n_energies))
    assert sum("rescaled to the counts" in r.getMessage() for r in caplog.records) == 1
    counts = stxm.membrane_counts(ds)
    power = np.sum(np.abs(np.asarray(fixed.illumination)) ** 2, axis=(1, 2))
    np.testing.assert_allclose(power, counts, rtol=1e-4)  # (mask all ones here)
    # the probe's shape is untouched, only its scale
    np.testing.assert_allclose(
        np.asarray(fixed.illumination) / np.sqrt(power)[:, None, None],
        p / np.sqrt(np.sum(np.abs(p) ** 2, axis=(1, 2)))[:, None, None],
        atol=1e-6,
    )
    # one energy off by 10 % in power: only that one is rescaled
    q = p.copy()
    q[2] *= np.sqrt(1.1)
    _, rec = stxm.illumination_at_counts(dataclasses.replace(ds, illumination=q))
    assert rec["rescaled"] == [2]
    # a noisy membrane level widens the tolerance: 1e3 photons per frame and 5 % flux
    # jitter put the right probe at 0.95-0.99 of the counts, which must not be rescaled
    for kw in (dict(dose=1e3), dict(flux_jitter=0.05)):
        noisy = simulate(preset("tiny", energies=(5420.0, 5466.0, 5480.0, 5540.0), **kw)).dataset
        _, rec = stxm.illumination_at_counts(noisy)
        assert rec["rescaled"] == [] and min(rec["power_ratio"]) < 0.99, rec
    bare = dataclasses.replace(ds, illumination=None)
    kept, rec = stxm.illumination_at_counts(bare)
    assert kept is bare and rec is None


def test_probe_power_counts_only_used_detector_pixels(jittered):
    """The probe's power is compared with masked frame sums on the same pixels: its far
    field's intensity summed over the mask, not ``sum |P|^2`` times the used fraction.

    Reference (closed form): membrane-only frames ``T |F(P)|^2`` (T = 0.9) behind a beamstop
    (the central 5x5 detector pixels masked and dark) and with an outer detector ring
    masked give the power ratio 1 / T exactly. The used-pixel fraction would read the
    beamstop case ~20x off (it holds most of a bright-field frame's photons on 2 % of the
    pixels) and the ring case 1 / (used fraction) off."""
    import dataclasses

    ds = jittered[0].dataset
    p = np.asarray(ds.illumination)
    far = np.abs(np.fft.fftshift(np.fft.fft2(p, norm="ortho"), axes=(-2, -1))) ** 2
    m, c = ds.frame_size, ds.frame_size // 2
    stop = np.ones((m, m), np.float32)
    stop[c - 2 : c + 3, c - 2 : c + 3] = 0.0
    ring = np.zeros((m, m), np.float32)
    ring[m // 4 : 3 * m // 4, m // 4 : 3 * m // 4] = 1.0
    ei = np.asarray(ds.energy_index)
    for mask in (stop, ring):
        frames = (0.9 * far[ei] * mask).astype(np.float32)
        membrane = dataclasses.replace(ds, frames=frames, mask=np.broadcast_to(mask, ds.mask.shape).copy())
        _, gains = stxm.probes_at_membrane_counts(membrane, p)
        np.testing.assert_allclose(1.0 / np.square(gains), 1.0 / 0.9, rtol=1e-4)  # float32 frames


def test_check_direct_beam(jittered, caplog):
    """A mask hiding the central 3x3 detector pixels (a beamstop) at some energies is named
    in one warning; the simulator's masks (random bad pixels) give none."""
    import dataclasses
    import logging

    ds = jittered[0].dataset
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        assert stxm.check_direct_beam(ds) == []
        mask = np.asarray(ds.mask).copy()
        c = ds.frame_size // 2
        mask[1:3, c - 2 : c + 3, c - 2 : c + 3] = 0.0
        assert stxm.check_direct_beam(dataclasses.replace(ds, mask=mask)) == [1, 2]
    warned = [r.getMessage() for r in caplog.records if "direct beam" in r.getMessage()]
    assert len(warned) == 1 and f"at 2 of {ds.n_energies} energies" in warned[0]


def test_check_saturation(jittered, caplog):
    """Unmasked pixels clipped at one value (a counter's limit) or carrying a flag
    (2^32 - 1) are named in one warning; the simulator's Poisson frames (1e6 photons),
    frames whose clipped pixels are masked and non-integer (noise-free) frames, even
    identical ones, give none."""
    import dataclasses
    import logging

    ds = jittered[0].dataset
    noisy = simulate(preset("tiny", energies=(5420.0, 5466.0, 5480.0, 5540.0))).dataset
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        assert stxm.check_saturation(noisy) is None
        f = np.asarray(noisy.frames).copy()
        clipped = dataclasses.replace(noisy, frames=np.minimum(f, 2000.0))  # a counter's limit below the direct beam
        rec = stxm.check_saturation(clipped)
        assert rec is not None and rec["value"] == 2000.0 and rec["frames"] >= stxm.SATURATION_MIN_FRAMES
        flagged = f.copy()
        flagged[:, 3, 5] = 4294967295.0  # an Eiger gap pixel
        rec = stxm.check_saturation(dataclasses.replace(noisy, frames=flagged))
        assert rec["value"] == np.float32(4294967295.0) and rec["pixels"] == rec["frames"] == rec["looked_at"]
        mask = np.asarray(noisy.mask).copy()
        mask[:, 3, 5] = 0.0
        assert stxm.check_saturation(dataclasses.replace(noisy, frames=flagged, mask=mask)) is None
        assert stxm.check_saturation(ds) is None  # noise-free frames are not checked
        same = np.repeat(np.asarray(ds.frames)[:1] * 1e3, ds.n_frames, axis=0)  # identical, non-integer
        assert stxm.check_saturation(dataclasses.replace(ds, frames=same)) is None
    warned = [r.getMessage() for r in caplog.records if "brightest count" in r.getMessage()]
    assert len(warned) == 2 and "count, 2000, occurs in" in warned[0]


def test_count_quantum(jittered, caplog):
    """Counts times a constant take only its whole multiples: the constant is found exactly
    (reference: the multiplier itself); plain counts, counts times an integer and
    noise-free (continuous) frames give None; a warning only for the scaled counts."""
    import dataclasses
    import logging

    noisy = simulate(preset("tiny", energies=(5420.0, 5466.0, 5480.0, 5540.0)))
    ds = noisy.dataset
    assert stxm.count_quantum(ds) is None
    f = np.asarray(ds.frames, np.float64)
    for c in (1e-3, 0.37, 1 / 3):
        scaled = dataclasses.replace(ds, frames=(f * c).astype(np.float32))
        assert stxm.count_quantum(scaled) == pytest.approx(c, rel=1e-6)
    assert stxm.count_quantum(dataclasses.replace(ds, frames=(f * 20).astype(np.float32))) is None
    assert stxm.count_quantum(jittered[0].dataset) is None  # noise-free
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        assert stxm.check_counts(dataclasses.replace(ds, frames=(f * 1e-3).astype(np.float32))) == pytest.approx(1e-3)
        stxm.check_counts(ds)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "photon counts times 0.001" in msgs[0] and "divide the frames by 0.001" in msgs[0]


def test_a_scan_without_bare_membrane_is_flagged(caplog):
    """A scan inside the particle (`tiny` scanned 0.5 um wide, particle 1.2 um across) has
    no membrane-only region: the DPC empty region is empty, and the joint warns (measured:
    edge energy 0.67 eV, PE/dmt 1.31 eV there, against 0.21 / 0.13 eV with the default
    scan; the two-step 11 eV). The default scan has one (reference: the simulator's truth,
    test_dpc_phase_does_not_see_the_flux)."""
    import logging

    tight = simulate(preset("tiny", scan_width=0.5e-6, energies=(5420.0, 5466.0, 5480.0, 5540.0)))
    ds = tight.dataset
    common = ds.common_grid()
    ill = np.ones(common.shape, bool)
    assert not stxm.empty_region(-stxm.dpc_phase(ds, common), ill).any()
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        _, _, ctx = joint_run.prepare_joint(ds, joint_config.JointConfig.make(init="stxm", steps=1))
    assert ctx["init_info"]["empty_pixels"] == 0
    assert any("no empty (membrane-only) region" in r.getMessage() for r in caplog.records)
