"""Tests of diffxas.data.files: the file-level errors every reader shares (missing file,
directory, not HDF5, empty, truncated: one InputError line naming the file), checksums
and JSON conversion.

Reference values are the in-memory objects written; tolerances are stated per check
(exact where the stored dtype equals the in-memory dtype). The shared small datasets,
results and truths are built by tests/data_helpers.py; the ``cxi`` fixture (a small CXI
file per test) is in tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from data_helpers import assert_one_line_error

from diffxas.data import cxi as io_cxi
from diffxas.data import files as io_files
from diffxas.data import info as io_info
from diffxas.data import results as io_results
from diffxas.data import truth as io_truth
from diffxas.errors import InputError


def test_missing_file(tmp_path):
    path = tmp_path / "nope.cxi"
    for fn in (io_cxi.read_cxi, io_cxi.cxi_summary, io_results.read_result, io_truth.read_truth, io_info.summarize):
        with pytest.raises(InputError) as ei:
            fn(path)
        assert_one_line_error(ei, path, "no such file")


def test_directory(tmp_path):
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(tmp_path)
    assert_one_line_error(ei, tmp_path, "directory")


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.cxi"
    path.write_text("energy,counts\n5420,12\n" * 50)
    for fn in (io_cxi.read_cxi, io_results.read_result, io_truth.read_truth, io_info.summarize):
        with pytest.raises(InputError) as ei:
            fn(path)
        assert_one_line_error(ei, path, "not an HDF5 file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.cxi"
    path.write_bytes(b"")
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(path)
    assert_one_line_error(ei, path, "not an HDF5 file")


def test_truncated_file(cxi):
    data = cxi.read_bytes()
    cxi.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(cxi)
    assert_one_line_error(ei, cxi, "truncated or corrupt")


def test_sha256_file(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    # FIPS 180-2 test vector for "abc"
    assert io_files.sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = os.urandom(3 * (1 << 20) + 17)
    p.write_bytes(big)
    assert io_files.sha256_file(p) == hashlib.sha256(big).hexdigest()


def test_to_jsonable():
    obj = {
        "a": np.float32(1.5),
        "b": np.arange(3),
        "c": (1, np.int8(2)),
        "d": Path("x/y"),
        "e": {3, 1},
        "f": 1 + 2j,
        np.int64(4): None,
    }
    assert io_files.to_jsonable(obj) == {
        "a": 1.5,
        "b": [0, 1, 2],
        "c": [1, 2],
        "d": "x/y",
        "e": [1, 3],
        "f": [1.0, 2.0],
        "4": None,
    }
    with pytest.raises(TypeError):
        io_files.dumps_json({"f": lambda x: x})
