"""Tests of diffxas.data.dataset: the Dataset's own checks and frame selections.

References are stated per test.
"""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import make_dataset

from diffxas.data.dataset import Dataset
from diffxas.errors import ConfigError, InputError
from diffxas.solvers.joint import config as joint_config


def test_dataset_refuses_bad_monitor():
    ds = make_dataset()
    kw = dict(
        frames=ds.frames,
        positions=ds.positions,
        energy_index=ds.energy_index,
        energies=ds.energies,
        mask=ds.mask,
        illumination=None,
        distance=ds.distance,
        detector_pixel=ds.detector_pixel,
    )
    with pytest.raises(InputError, match=r"monitor must be \(15,\)"):
        Dataset(**kw, monitor=np.ones(14))
    with pytest.raises(InputError, match="monitor reading of frame 2 is -1"):
        Dataset(**kw, monitor=np.array([1.0, 1.0, -1.0] + [1.0] * 12))


def test_holdout_mask_spreads_and_keeps_every_energy(small3):
    """Every n-th frame of each energy in scan order (n = round(1/fraction)), from the
    (n//2)-th; at least one frame of every energy on each side; bad fractions refused."""
    from diffxas.errors import InputError

    ds = small3.dataset
    ei = np.asarray(ds.energy_index)
    held = ds.holdout_mask(0.1)
    for k in range(ds.n_energies):
        idx = np.nonzero(ei == k)[0]
        np.testing.assert_array_equal(np.nonzero(held[idx])[0], np.arange(5, idx.size, 10))
    fit, out = ds.split_holdout(0.1)
    assert fit.n_frames + out.n_frames == ds.n_frames and out.n_frames == int(held.sum())
    np.testing.assert_array_equal(np.asarray(out.positions), np.asarray(ds.positions)[held])
    assert ds.holdout_mask(0.5).sum() == sum((np.sum(ei == k) + 0) // 2 for k in range(ds.n_energies))
    for bad in (0.0, 0.6, -0.1):
        with pytest.raises(InputError, match="holdout fraction"):
            ds.holdout_mask(bad)
    with pytest.raises(ConfigError, match="holdout"):
        joint_config.JointConfig.make(holdout=0.7)
