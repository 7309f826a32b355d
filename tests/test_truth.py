"""Tests of diffxas.data.truth: the ground-truth sidecar file.

Reference values are the in-memory objects written; tolerances are stated per check
(exact where the stored dtype equals the in-memory dtype). The shared small datasets,
results and truths are built by tests/data_helpers.py; the ``cxi`` fixture (a small CXI
file per test) is in tests/conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import make_result, make_truth

from diffxas.data import info as io_info
from diffxas.data import results as io_results
from diffxas.data import truth as io_truth
from diffxas.errors import InputError


def test_truth_round_trip(tmp_path):
    t = make_truth()
    path = io_truth.write_truth(tmp_path / "d.truth.h5", t)
    back = io_truth.read_truth(path)
    np.testing.assert_array_equal(back.labels, t.labels)
    assert back.labels.dtype == np.int16
    assert back.domain_names == t.domain_names
    assert sorted(back.maps) == sorted(t.maps) and sorted(back.params) == sorted(t.params)
    for name in t.maps:
        np.testing.assert_array_equal(back.maps[name], t.maps[name])  # float64, exact incl. NaN
    for name in t.params:
        np.testing.assert_array_equal(back.params[name], t.params[name])
    assert back.pixel_size == t.pixel_size and back.origin == t.origin
    assert back.reference_energy == t.reference_energy
    np.testing.assert_array_equal(back.energies, t.energies)
    assert back.attrs == t.attrs
    text = io_info.summarize(path)
    assert "ground-truth" in text and "LiFePO4" in text
    with pytest.raises(InputError) as ei:
        io_truth.read_truth(io_results.write_result(tmp_path / "r.h5", make_result()))
    assert "not a diffxas ground-truth file" in str(ei.value)
