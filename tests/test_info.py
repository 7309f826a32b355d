"""Tests of diffxas.data.info: `diffxas info`'s dispatch on the kind of file.

Reference values are the in-memory objects written; tolerances are stated per check
(exact where the stored dtype equals the in-memory dtype). The shared small datasets,
results and truths are built by tests/data_helpers.py; the ``cxi`` fixture (a small CXI
file per test) is in tests/conftest.py.
"""

from __future__ import annotations

import h5py
import pytest
from data_helpers import assert_one_line_error

from diffxas.data import info as io_info
from diffxas.errors import InputError


def test_summarize_unknown_hdf5(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError) as ei:
        io_info.summarize(path)
    assert_one_line_error(ei, path, "not a CXI, diffxas results or ground-truth file")
