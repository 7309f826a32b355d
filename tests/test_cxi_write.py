"""Tests of diffxas.data.cxi's writer (write_cxi, diffxas/data/_cxi_write.py): the round
trip through read_cxi, the file layout docs/formats.md describes, atomic writes.

Reference values are the in-memory objects written; tolerances are stated per check
(exact where the stored dtype equals the in-memory dtype). The shared small datasets,
results and truths are built by tests/data_helpers.py; the ``cxi`` fixture (a small CXI
file per test) is in tests/conftest.py.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from data_helpers import DET, ENERGIES, SRC, TRANS, K, M, N, assert_same_dataset, make_dataset

from diffxas.data import cxi as io_cxi
from diffxas.data.dataset import Dataset
from diffxas.errors import InputError
from diffxas.physics.constants import ELEMENTARY_CHARGE


# ----------------------------------------------------------------------------------------
# CXI round trip and layout
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["gzip", None])
@pytest.mark.parametrize("integral", [True, False])
def test_cxi_round_trip(tmp_path, compression, integral):
    ds = make_dataset(integral=integral)
    path = io_cxi.write_cxi(tmp_path / "sub" / "d.cxi", ds, compression=compression, chunk_frames=2)
    back = io_cxi.read_cxi(path)
    assert_same_dataset(ds, back)
    assert back.frames.dtype == np.float32 and back.energies.dtype == np.float64
    with h5py.File(path) as f:
        d = f[f"entry_1/{DET}/data"]
        assert d.compression == compression
        assert d.chunks == (2, M, M)
        assert d.dtype == (np.uint32 if integral else np.float32)


def test_cxi_round_trip_interleaved_no_illumination(tmp_path):
    ds = make_dataset(illumination=False, interleave=True, seed=3)
    back = io_cxi.read_cxi(io_cxi.write_cxi(tmp_path / "d.cxi", ds, compression=None))
    assert_same_dataset(ds, back)
    np.testing.assert_array_equal(np.asarray(back.energy_index), np.repeat(np.arange(K), N))


def test_cxi_layout(tmp_path):
    """The file is laid out exactly as docs/formats.md says."""
    ds = make_dataset()
    path = io_cxi.write_cxi(tmp_path / "d.cxi", ds, extra_attrs={"preset": "lfp", "seed": 7, "dose": {"a": 1}})
    pos = np.asarray(ds.positions)
    with h5py.File(path) as f:
        assert f["cxi_version"][()] == 160  # CXI 1.6
        assert f["number_of_entries"][()] == K
        assert sorted(k for k in f if k.startswith("entry_")) == ["entry_1", "entry_2", "entry_3"]
        assert f.attrs["preset"] == "lfp" and f.attrs["seed"] == 7
        for k in range(K):
            e = f[f"entry_{k + 1}"]
            # energy in J: 1e-12 relative to E[eV] * e (double precision)
            np.testing.assert_allclose(e[f"{SRC}/energy"][()], ENERGIES[k] * ELEMENTARY_CHARGE, rtol=1e-12)
            assert 1e-16 < e[f"{SRC}/energy"][()] < 1e-15
            idx = ds.frames_of(k)
            np.testing.assert_array_equal(e[f"{DET}/data"][()], np.asarray(ds.frames)[idx])
            # translation = [-x, -y, 0] of the probe positions: exact
            tr = e[TRANS][()]
            assert tr.shape == (N, 3)
            np.testing.assert_array_equal(tr[:, :2], -pos[idx])
            np.testing.assert_array_equal(tr[:, 2], 0.0)
            # mask: CXI 1.6 uint32 bit field, unused pixel = 0x1 (CXI_PIXEL_IS_INVALID)
            mk = e[f"{DET}/mask"]
            assert mk.dtype == np.uint32 and mk.shape == (M, M)
            np.testing.assert_array_equal(mk[()], (np.asarray(ds.mask)[k] == 0).astype(np.uint32))
            # the translation links the axes attribute "translation:y:x" names
            for grp in (DET, "data_1"):
                assert e.get(f"{grp}/translation", getlink=True).path == f"/entry_{k + 1}/{TRANS}"
            assert e[f"{DET}/data"].attrs["axes"] == "translation:y:x"
            assert mk[0, 0] == 1 and mk[8, 8] == 0
            il = e[f"{SRC}/illumination"]
            assert il.dtype == np.complex64 and il.shape == (M, M)
            assert e[f"{DET}/distance"][()] == 0.734
            assert e[f"{DET}/x_pixel_size"][()] == 75e-6 == e[f"{DET}/y_pixel_size"][()]
            # data_1/data is a soft link to the detector data
            link = e.get("data_1/data", getlink=True)
            assert isinstance(link, h5py.SoftLink)
            assert link.path == f"/entry_{k + 1}/{DET}/data"
            np.testing.assert_array_equal(e["data_1/data"][()], e[f"{DET}/data"][()])


def test_cxi_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "d.cxi"
    io_cxi.write_cxi(target, make_dataset(seed=1))
    before = target.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(h5py, "SoftLink", boom)  # fails after entry_1's data is written
    with pytest.raises(RuntimeError, match="simulated"):
        io_cxi.write_cxi(target, make_dataset(seed=2))
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.cxi"]  # no temp files left
    with pytest.raises(RuntimeError):
        io_cxi.write_cxi(tmp_path / "new.cxi", make_dataset(seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.cxi"]


def test_cxi_write_refuses_invalid_dataset(tmp_path):
    ds = make_dataset()
    bad = Dataset(
        frames=ds.frames,
        positions=ds.positions,
        energy_index=ds.energy_index,
        energies=ENERGIES[::-1].copy(),
        mask=ds.mask,
        illumination=ds.illumination,
        distance=ds.distance,
        detector_pixel=ds.detector_pixel,
    )
    with pytest.raises(InputError, match="strictly increasing"):
        io_cxi.write_cxi(tmp_path / "d.cxi", bad)
    assert not list(tmp_path.iterdir())
