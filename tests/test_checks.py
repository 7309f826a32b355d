"""diffxas.data.checks: which frames and scans can support maps (refuse / mask / pass).

Hand-made datasets (Poisson frames of a Gaussian beam, 4 energies around the V K edge, a
6 x 6 raster): every case is decided by the checks' stated thresholds, so each test
names the rule it exercises; the clean dataset must pass untouched (no false alarm).
"""

import logging

import numpy as np
import pytest

from diffxas.data import checks
from diffxas.data.dataset import Dataset
from diffxas.errors import ConfigError, InputError

ENERGIES = np.array([5450.0, 5465.0, 5480.0, 5500.0])


def make_dataset(m=16, side=6, step=3e-7, dose=1e5, seed=0, energies=ENERGIES) -> Dataset:
    """Poisson frames (dose photons in a Gaussian spot, +-10 % absorption), a raster scan
    of side x side positions ``step`` apart at every energy (object pixel ~1.9e-7 m)."""
    rng = np.random.default_rng(seed)
    k = len(energies)
    yy, xx = np.mgrid[:m, :m] - m // 2
    spot = np.exp(-(xx**2 + yy**2) / 8.0)
    spot /= spot.sum()
    g = (np.arange(side) - side / 2) * step
    pos = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    n = pos.shape[0]
    frames = np.stack([rng.poisson(dose * (0.9 + 0.1 * rng.random()) * spot) for _ in range(n * k)]).astype(np.float32)
    return Dataset(
        frames=frames,
        positions=np.tile(pos, (k, 1)),
        energy_index=np.repeat(np.arange(k), n),
        energies=np.asarray(energies, np.float64),
        mask=np.ones((k, m, m), np.float32),
        illumination=None,
        distance=1.0,
        detector_pixel=75e-6,
    )


def with_frames(ds, frames):
    import dataclasses

    return dataclasses.replace(ds, frames=frames)


def test_clean_dataset_passes_untouched(caplog):
    ds = make_dataset()
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        out = checks.check_dataset(ds)
    assert out.n_frames == ds.n_frames and not caplog.records
    assert checks.findings(ds) == []


def test_half_the_frames_of_one_energy_empty_are_dropped_and_named(caplog):
    """Rule: a frame with no unmasked counts is dropped (warning names energy and frames)."""
    ds = make_dataset()
    f = np.array(ds.frames)
    idx = ds.frames_of(1)[:18]
    f[idx] = 0
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        out = checks.check_dataset(with_frames(ds, f), source="x.cxi")
    assert out.n_frames == ds.n_frames - 18
    msg = caplog.records[-1].getMessage()
    assert "x.cxi" in msg and "5465 eV" in msg and str(idx[0]) in msg and "18 frame(s)" in msg


@pytest.mark.parametrize("value", [3e38, np.inf, np.nan])
def test_one_absurd_pixel_drops_its_frame(value):
    """Rule: a non-finite pixel or one above 2^32 counts drops exactly that frame."""
    ds = make_dataset()
    f = np.array(ds.frames)
    f[7, 3, 4] = value
    out = checks.check_dataset(with_frames(ds, f))
    assert out.n_frames == ds.n_frames - 1
    assert 7 not in np.nonzero(np.all(np.asarray(out.frames) == f[7], axis=(1, 2)))[0]


def test_masked_flag_pixels_are_not_looked_at():
    """Gap pixels flagged 2^32 - 1 (or NaN) but masked are fine."""
    import dataclasses

    ds = make_dataset()
    f = np.array(ds.frames)
    f[:, 0, 0] = np.nan
    f[:, 0, 1] = 2**32 - 1
    mask = np.array(ds.mask)
    mask[:, 0, :2] = 0
    out = checks.check_dataset(dataclasses.replace(ds, frames=f, mask=mask))
    assert out.n_frames == ds.n_frames


def test_bright_outlier_dropped_but_absorbing_frames_kept():
    """Rule: > 2x the energy's median and > 8 robust sigma is dropped; a frame absorbing
    40 % (far beyond Poisson scatter, but physical) is kept."""
    ds = make_dataset()
    f = np.array(ds.frames)
    f[3] *= 5.0
    f[4] *= 0.6
    out = checks.check_dataset(with_frames(ds, f))
    assert out.n_frames == ds.n_frames - 1


def test_energy_without_usable_frames_refused_with_hint():
    ds = make_dataset()
    f = np.array(ds.frames)
    f[ds.frames_of(2)] = 0
    with pytest.raises(
        InputError,
        match=r"energy 5480 eV \(index 2\) has 0 usable of 36.*--energy-list 5450,5465,5500",
    ):
        checks.check_dataset(with_frames(ds, f))


def test_identical_positions_refused():
    import dataclasses

    ds = make_dataset()
    pos = np.zeros_like(np.asarray(ds.positions))
    with pytest.raises(InputError, match="less than one object pixel"):
        checks.check_dataset(dataclasses.replace(ds, positions=pos))


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_positions_in_mm_or_um_refused_before_allocation(scale):
    """A 1.8 um scan read x1e3 (mm) or x1e6 (um) spans > 1 mm: refused, with the unit hint,
    before any grid is built (check_positions reads no frame and allocates nothing)."""
    import dataclasses

    ds = make_dataset()
    bad = dataclasses.replace(ds, positions=np.asarray(ds.positions) * scale)
    with pytest.raises(InputError, match="translations in mm or um"):
        checks.check_positions(bad)


def test_duplicate_positions_warn(caplog):
    import dataclasses

    ds = make_dataset()
    pos = np.array(ds.positions)
    pos[1] = pos[0]
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        out = checks.check_dataset(dataclasses.replace(ds, positions=pos))
    assert out.n_frames == ds.n_frames
    assert "repeated scan positions" in caplog.text and "5450 eV: 1" in caplog.text


def test_near_duplicate_energies_and_tiny_detector_refused():
    e = ENERGIES.copy()
    e[2] = e[1] + 5e-7
    with pytest.raises(InputError, match="apart"):
        checks.check_dataset(make_dataset(energies=e))
    with pytest.raises(InputError, match="at least 8 x 8"):
        checks.check_dataset(make_dataset(m=2))


def test_reference_energy_must_lie_in_the_scan():
    checks.check_reference_energy(5465.0, ENERGIES)
    checks.check_reference_energy(None, ENERGIES)
    for bad in (1.0, 5400.0, float("nan")):
        with pytest.raises(ConfigError, match="outside the scanned energies"):
            checks.check_reference_energy(bad, ENERGIES)


def test_second_call_on_a_checked_dataset_is_free(monkeypatch):
    ds = checks.check_dataset(make_dataset())
    monkeypatch.setattr(checks, "bad_frames", lambda *a, **k: pytest.fail("checked twice"))
    assert checks.check_dataset(ds) is ds


def test_low_dose_empty_frames_are_poisson_not_faults():
    """At 3 photons per frame (median below 50 photons) zero-count frames occur by chance
    (P = e^-3 = 5 %): none is dropped."""
    ds = make_dataset(dose=3.0)
    sums = np.asarray(ds.frames).sum(axis=(1, 2))
    assert (sums == 0).any()  # the case exists in this dataset
    assert checks.check_dataset(ds).n_frames == ds.n_frames


def test_beamstop_energy_skips_the_relative_rules():
    """With the direct beam masked the frame sums follow the sample: a frame 5x the
    median is kept there (and dropped at an energy without a beamstop)."""
    import dataclasses

    ds = make_dataset()
    f = np.array(ds.frames)
    f[ds.frames_of(0)[3]] *= 5.0
    f[ds.frames_of(1)[3]] *= 5.0
    mask = np.array(ds.mask)
    mask[0, 7:10, 7:10] = 0  # beamstop at energy 0 only
    out = checks.check_dataset(dataclasses.replace(ds, frames=f, mask=mask))
    assert out.n_frames == ds.n_frames - 1
