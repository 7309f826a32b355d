"""Tests of diffxas.data.cxi's summary (cxi_summary, diffxas/data/_cxi_summary.py; what
`diffxas info` prints for a CXI file).

Reference values are the in-memory objects written; tolerances are stated per check
(exact where the stored dtype equals the in-memory dtype). The shared small datasets,
results and truths are built by tests/data_helpers.py; the ``cxi`` fixture (a small CXI
file per test) is in tests/conftest.py.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
from data_helpers import DET, K, M, _replace, make_dataset

from diffxas.data import cxi as io_cxi
from diffxas.data import info as io_info


def test_cxi_summary(cxi):
    text = io_cxi.cxi_summary(cxi)
    assert str(cxi) in text
    assert "3 entries, 5420.00 .. 5540.25 eV" in text
    assert "frames per energy: 5 (total 15)" in text
    assert 'K edges in range:  V (5465 eV) -> element = "V"' in text  # xraydb's Elam K edge
    assert "16 x 16" in text and "75 um" in text and "illumination:      present (" in text
    # dose: mean counts per frame in the unmasked pixels, reference = the dataset itself,
    # 1e-3 relative (4 digits shown)
    ds = make_dataset()
    used_px = np.asarray(ds.mask)[np.asarray(ds.energy_index)] > 0
    dose = float(np.where(used_px, np.asarray(ds.frames), 0).sum(axis=(1, 2)).mean())
    shown = float(text.split("dose:")[1].split()[1])
    assert shown == pytest.approx(dose, rel=1e-3)
    # darkest pixels: background.darkest_level of each energy's mean frame (3 digits shown)
    from diffxas.physics.background import darkest_level

    ei, fr, mk = np.asarray(ds.energy_index), np.asarray(ds.frames), np.asarray(ds.mask)
    lv = [darkest_level(fr[ei == k].mean(axis=0), mk[k]) for k in range(ds.n_energies)]
    lo, hi = (float(x) for x in text.split("darkest pixels:")[1].split()[0:3:2])
    assert lo == pytest.approx(min(lv), rel=2e-3) and hi == pytest.approx(max(lv), rel=2e-3)
    # brightest count: the largest unmasked count and how often it occurs (reference: the
    # dataset itself); Poisson(20) counts stay below the saturation rule's 100 counts
    used = np.where(mk[ei] > 0, fr, -np.inf)
    top = used.max()
    assert (
        f"brightest count:   {top:.10g} in {int((used == top).sum())} unmasked pixel(s) of "
        f"{int((used == top).any(axis=(1, 2)).sum())} of 15 frames\n"
    ) in text
    assert "direct beam:       recorded" in text
    assert io_info.summarize(cxi) == text


def test_cxi_summary_names_saturation_and_a_beamstop(tmp_path):
    """Frames clipped at 250 counts (a counter's limit) and a mask over the central 3x3
    pixels at one energy: ``info`` names both."""
    import dataclasses

    ds = make_dataset()
    clipped = np.minimum(np.asarray(ds.frames) * 10.0, 250.0).astype(np.float32)
    mask = np.asarray(ds.mask).copy()
    mask[1, M // 2 - 1 : M // 2 + 2, M // 2 - 1 : M // 2 + 2] = 0.0
    path = io_cxi.write_cxi(tmp_path / "sat.cxi", dataclasses.replace(ds, frames=clipped, mask=mask))
    text = io_cxi.cxi_summary(path)
    assert "brightest count:   250 in" in text and "a repeated maximum: saturated or flagged pixels?" in text
    assert "direct beam:       masked (central 3x3 detector pixels) at 1 of 3 energies" in text


def test_info_dose_counts_only_unmasked_pixels(tmp_path):
    """Gap pixels holding 2^32 - 1 and masked (0x200, CXI_PIXEL_IS_MISSING) do not count.
    Reference: the frames' sum over the unmasked pixels, 1e-3 relative (4 digits shown)."""
    ds = make_dataset(illumination=False)
    frames = np.asarray(ds.frames).copy()
    frames[:, :, 8] = 2**32 - 1  # a gap column
    path = io_cxi.write_cxi(tmp_path / "gap.cxi", dataclasses.replace(ds, frames=frames))
    with h5py.File(path, "r+") as f:
        for k in range(K):
            mk = f[f"entry_{k + 1}/{DET}/mask"][()]
            mk[:, 8] |= 0x200
            _replace(f, f"entry_{k + 1}/{DET}/mask", mk)
    text = io_cxi.cxi_summary(path)
    shown = float(text.split("dose:")[1].split()[1])
    used = np.asarray(ds.mask)[np.asarray(ds.energy_index)] > 0
    used[:, :, 8] = False
    ref = float(np.where(used, frames, 0).sum(axis=(1, 2)).mean())
    assert ref < 1e4  # Poisson(20) x 256 pixels, not 2^32 per gap pixel
    assert shown == pytest.approx(ref, rel=1e-3)
