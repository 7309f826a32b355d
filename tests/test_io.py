"""Tests of diffxas.data: CXI input, results files, ground-truth sidecars.

Reference values are the in-memory objects written; tolerances are stated per check
(exact where the stored dtype equals the in-memory dtype).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from diffxas.data import cxi as io_cxi
from diffxas.data import files as io_files
from diffxas.data import info as io_info
from diffxas.data import results as io_results
from diffxas.data import truth as io_truth
from diffxas.data.dataset import Dataset
from diffxas.errors import InputError
from diffxas.maps import MAP_FIELDS, ChemMaps, Result, Truth
from diffxas.physics.constants import ELEMENTARY_CHARGE

K, N, M = 3, 5, 16
ENERGIES = np.array([5420.0, 5465.5, 5540.25])  # eV
DET = "instrument_1/detector_1"
SRC = "instrument_1/source_1"
TRANS = "sample_1/geometry_1/translation"


def make_dataset(seed=0, integral=True, illumination=True, interleave=False, k=K, n=N, m=M) -> Dataset:
    """A small synthetic multi-energy dataset (k energies x n frames of m x m)."""
    rng = np.random.default_rng(seed)
    if integral:
        frames = rng.poisson(20.0, (k * n, m, m)).astype(np.float32)
    else:
        frames = rng.gamma(2.0, 3.0, (k * n, m, m)).astype(np.float32)
    ei = np.repeat(np.arange(k, dtype=np.int32), n)
    if interleave:
        ei = np.tile(np.arange(k, dtype=np.int32), n)
    positions = rng.uniform(-2e-6, 3e-6, (k * n, 2))  # m, deliberately not centred
    mask = np.ones((k, m, m), np.float32)
    mask[:, 0, :3] = 0.0  # a few dead pixels
    mask[1, 5, 5] = 0.0
    illum = None
    if illumination:
        illum = (rng.normal(size=(k, m, m)) + 1j * rng.normal(size=(k, m, m))).astype(np.complex64)
    return Dataset(
        frames=frames,
        positions=positions,
        energy_index=ei,
        energies=ENERGIES[:k].copy(),
        mask=mask,
        illumination=illum,
        distance=0.734,
        detector_pixel=75e-6,
    )


@pytest.fixture
def cxi(tmp_path) -> Path:
    path = tmp_path / "data.cxi"
    io_cxi.write_cxi(path, make_dataset())
    return path


def assert_same_dataset(a: Dataset, b: Dataset):
    """b read back from the file written from a (frames grouped by energy)."""
    assert b.n_energies == a.n_energies and b.n_frames == a.n_frames
    # energies: eV -> J -> eV, 1e-9 relative (double precision round trip, ~1e-16 expected)
    np.testing.assert_allclose(np.asarray(b.energies), np.asarray(a.energies), rtol=1e-9, atol=0)
    for k in range(a.n_energies):
        ia, ib = a.frames_of(k), b.frames_of(k)
        # frames float32 in and out: exact
        np.testing.assert_array_equal(np.asarray(b.frames)[ib], np.asarray(a.frames)[ia])
        # positions float64 in and out, sign flipped twice: exact
        np.testing.assert_array_equal(np.asarray(b.positions)[ib], np.asarray(a.positions)[ia])
    np.testing.assert_array_equal(np.asarray(b.mask), np.asarray(a.mask))
    if a.illumination is None:
        assert b.illumination is None
    else:
        np.testing.assert_array_equal(np.asarray(b.illumination), np.asarray(a.illumination))
    assert b.distance == a.distance and b.detector_pixel == a.detector_pixel


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


@pytest.mark.parametrize(
    "sel,expected",
    [([0, 2], [0, 2]), (slice(1, None), [1, 2]), (1, [1]), ([-1], [2]), ([2, 0, 2], [0, 2]), (None, [0, 1, 2])],
)
def test_cxi_subset(cxi, sel, expected):
    ds = make_dataset()
    back = io_cxi.read_cxi(cxi, energies=sel)
    assert_same_dataset(ds.select_energies(expected), back)


def test_cxi_subset_does_not_read_other_entries(cxi):
    # corrupt the frame data of entry_2 (NaN): reading all entries fails, reading 0 and 2 does not
    with h5py.File(cxi, "r+") as f:
        d = f[f"entry_2/{DET}/data"]
        del f[f"entry_2/{DET}/data"]
        f.create_dataset(f"entry_2/{DET}/data", data=np.full(d.shape, np.nan, np.float32))
    with pytest.raises(InputError, match="entry_2"):
        io_cxi.read_cxi(cxi)
    back = io_cxi.read_cxi(cxi, energies=[0, 2])
    np.testing.assert_allclose(back.energies, ENERGIES[[0, 2]], rtol=1e-9)


@pytest.mark.parametrize("sel", [[3], [-4], slice(5, None), [], [0.5]])
def test_cxi_bad_selection(cxi, sel):
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(cxi, energies=sel)
    assert str(cxi) in str(ei.value) and "\n" not in str(ei.value)


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


def test_cxi_entries_in_any_energy_order_are_read_sorted(cxi, tmp_path):
    """A scan measured from high to low energy: entry_1 holds the highest energy. The
    reader (in memory and lazy) returns the same dataset as from the sorted file."""
    import shutil

    rev = tmp_path / "reversed.cxi"
    shutil.copy(cxi, rev)
    with h5py.File(rev, "r+") as f:
        for i in range(1, K + 1):
            f.move(f"entry_{i}", f"tmp_{i}")
        for i in range(1, K + 1):
            f.move(f"tmp_{i}", f"entry_{K + 1 - i}")
    want = io_cxi.read_cxi(cxi)
    for got in (io_cxi.read_cxi(rev), io_cxi.open_cxi(rev)):
        np.testing.assert_array_equal(np.asarray(got.energies), np.asarray(want.energies))
        np.testing.assert_array_equal(np.asarray(got.frames), np.asarray(want.frames))
        np.testing.assert_array_equal(np.asarray(got.positions), np.asarray(want.positions))
        np.testing.assert_array_equal(np.asarray(got.illumination), np.asarray(want.illumination))
        np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(want.mask))
    np.testing.assert_array_equal(
        np.asarray(io_cxi.read_cxi(rev, energies=[0]).frames), np.asarray(want.frames)[want.frames_of(0)]
    )


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


# ----------------------------------------------------------------------------------------
# CXI validation: every bad input is one InputError line naming file / entry / dataset
# ----------------------------------------------------------------------------------------
def _replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


def _mut_missing_distance(f):
    del f[f"entry_2/{DET}/distance"]


def _mut_missing_translation(f):
    del f[f"entry_1/{TRANS}"]


def _mut_data_2d(f):
    _replace(f, f"entry_3/{DET}/data", np.zeros((N, M * M), np.float32))


def _mut_data_not_square(f):
    _replace(f, f"entry_1/{DET}/data", np.zeros((N, M, M + 2), np.float32))


def _mut_translation_shape(f):
    _replace(f, f"entry_2/{TRANS}", np.zeros((N, 2)))


def _mut_translation_count(f):
    _replace(f, f"entry_2/{TRANS}", np.zeros((N + 1, 3)))


def _mut_mask_shape(f):
    _replace(f, f"entry_1/{DET}/mask", np.zeros((M, M + 1), np.uint8))


def _mut_illum_shape(f):
    _replace(f, f"entry_3/{SRC}/illumination", np.zeros((M - 2, M - 2), np.complex64))


def _mut_illum_missing_one(f):
    del f[f"entry_2/{SRC}/illumination"]


def _mut_frame_size_differs(f):
    _replace(f, f"entry_2/{DET}/data", np.zeros((N, M // 2, M // 2), np.float32))
    del f[f"entry_2/{DET}/mask"], f[f"entry_2/{SRC}/illumination"]


def _mut_distance_differs(f):
    _replace(f, f"entry_3/{DET}/distance", 0.9)


def _mut_pixel_differs(f):
    _replace(f, f"entry_2/{DET}/x_pixel_size", 55e-6)
    _replace(f, f"entry_2/{DET}/y_pixel_size", 55e-6)


def _mut_non_square_pixels(f):
    _replace(f, f"entry_1/{DET}/y_pixel_size", 55e-6)


def _mut_nan_counts(f):
    d = f[f"entry_2/{DET}/data"][()].astype(np.float32)
    d[3, 4, 5] = np.nan
    _replace(f, f"entry_2/{DET}/data", d)


def _mut_inf_counts(f):
    d = f[f"entry_2/{DET}/data"][()].astype(np.float32)
    d[1, 0, 0] = np.inf
    _replace(f, f"entry_2/{DET}/data", d)


def _mut_negative_counts(f):
    d = f[f"entry_3/{DET}/data"][()].astype(np.float32)
    d[2, 7, 7] = -1.0
    _replace(f, f"entry_3/{DET}/data", d)


def _mut_energy_ev(f):
    _replace(f, f"entry_1/{SRC}/energy", 5420.0)


def _mut_energy_tiny(f):
    _replace(f, f"entry_1/{SRC}/energy", 1e-25)


def _mut_mask_inverted(f):
    mk = f[f"entry_1/{DET}/mask"][()]
    _replace(f, f"entry_1/{DET}/mask", (mk == 0).astype(np.uint8))  # 1 = good pixel: inverted


def _mut_energy_equal(f):
    _replace(f, f"entry_2/{SRC}/energy", f[f"entry_1/{SRC}/energy"][()])


def _mut_energy_nan(f):
    _replace(f, f"entry_1/{SRC}/energy", np.nan)


def _mut_distance_negative(f):
    _replace(f, f"entry_1/{DET}/distance", -0.5)


def _mut_distance_absurd(f):
    for k in (1, 2, 3):
        _replace(f, f"entry_{k}/{DET}/distance", 5000.0)


def _mut_pixel_absurd(f):
    _replace(f, f"entry_1/{DET}/x_pixel_size", 75.0)
    _replace(f, f"entry_1/{DET}/y_pixel_size", 75.0)


def _mut_translation_absurd(f):
    t = f[f"entry_2/{TRANS}"][()]
    t[1, 0] = 2.5
    _replace(f, f"entry_2/{TRANS}", t)


def _mut_translation_nan(f):
    t = f[f"entry_1/{TRANS}"][()]
    t[0, 1] = np.nan
    _replace(f, f"entry_1/{TRANS}", t)


def _mut_no_cxi_version(f):
    del f["cxi_version"]


def _mut_entry_gap(f):
    f.move("entry_3", "entry_4")


def _mut_no_entries(f):
    for k in (1, 2, 3):
        del f[f"entry_{k}"]


def _mut_mask_all(f):
    _replace(f, f"entry_2/{DET}/mask", np.ones((M, M), np.uint8))


def _mut_complex_data(f):
    _replace(f, f"entry_1/{DET}/data", np.zeros((N, M, M), np.complex64))


BAD = [
    # (mutation, HDF5 path that must appear in the message, words that must appear)
    (_mut_missing_distance, f"/entry_2/{DET}/distance", "missing dataset"),
    (_mut_missing_translation, f"/entry_1/{TRANS}", "missing dataset"),
    (_mut_data_2d, f"/entry_3/{DET}/data", "shape"),
    (_mut_data_not_square, f"/entry_1/{DET}/data", "shape"),
    (_mut_translation_shape, f"/entry_2/{TRANS}", "shape"),
    (_mut_translation_count, f"/entry_2/{TRANS}", "shape"),
    (_mut_mask_shape, f"/entry_1/{DET}/mask", "shape"),
    (_mut_illum_shape, f"/entry_3/{SRC}/illumination", "shape"),
    (_mut_illum_missing_one, f"/entry_2/{SRC}/illumination", "missing"),
    (_mut_frame_size_differs, f"/entry_2/{DET}/data", "frame size"),
    (_mut_distance_differs, f"/entry_3/{DET}/distance", "differs"),
    (_mut_pixel_differs, f"/entry_2/{DET}/x_pixel_size", "differs"),
    (_mut_non_square_pixels, f"/entry_1/{DET}/y_pixel_size", "non-square"),
    (_mut_nan_counts, f"/entry_2/{DET}/data", "frame 3 contains NaN"),
    (_mut_inf_counts, f"/entry_2/{DET}/data", "frame 1 contains NaN or inf"),
    (_mut_negative_counts, f"/entry_3/{DET}/data", "frame 2 contains negative"),
    (_mut_energy_ev, f"/entry_1/{SRC}/energy", "energy 5420 looks like eV; CXI stores J"),
    (_mut_energy_tiny, f"/entry_1/{SRC}/energy", "CXI stores J"),
    (_mut_energy_equal, f"/entry_2/{SRC}/energy", "two entries at one energy"),
    (_mut_mask_inverted, f"/entry_1/{DET}/mask", "is this one inverted"),
    (_mut_energy_nan, f"/entry_1/{SRC}/energy", "not finite"),
    (_mut_distance_negative, f"/entry_1/{DET}/distance", "not plausible"),
    (_mut_distance_absurd, f"/entry_1/{DET}/distance", "not plausible"),
    (_mut_pixel_absurd, f"/entry_1/{DET}/x_pixel_size", "not plausible"),
    (_mut_translation_absurd, f"/entry_2/{TRANS}", "row 1"),
    (_mut_translation_nan, f"/entry_1/{TRANS}", "row 0 is not finite"),
    (_mut_no_cxi_version, "/cxi_version", "not a CXI file"),
    (_mut_entry_gap, "/entry_3", "missing entry"),
    (_mut_no_entries, "", "no /entry_1"),
    (_mut_mask_all, f"/entry_2/{DET}/mask", "excludes every pixel"),
    (_mut_complex_data, f"/entry_1/{DET}/data", "dtype"),
]


def assert_one_line_error(excinfo, path, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("mutate,where,words", BAD, ids=[b[0].__name__[5:] for b in BAD])
def test_cxi_bad_input(cxi, mutate, where, words):
    with h5py.File(cxi, "r+") as f:
        mutate(f)
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(cxi)
    assert_one_line_error(ei, cxi, where, words)
    # the summary validates the same way
    with pytest.raises(InputError) as ei2:
        io_cxi.cxi_summary(cxi)
    assert str(ei2.value) == str(ei.value)


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


def test_corrupt_chunk(tmp_path):
    """A damaged compressed chunk is reported with the dataset that holds it."""
    path = io_cxi.write_cxi(tmp_path / "d.cxi", make_dataset(integral=False), compression="gzip")
    with h5py.File(path) as f:
        ds = f[f"entry_2/{DET}/data"]
        info = ds.id.get_chunk_info(0)
        offset, size = info.byte_offset, info.size
    raw = bytearray(path.read_bytes())
    raw[offset : offset + size] = b"\xff" * size
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(path)
    assert_one_line_error(ei, path, f"/entry_2/{DET}/data", "corrupt")


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


def test_sha256_file(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    # FIPS 180-2 test vector for "abc"
    assert io_files.sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = os.urandom(3 * (1 << 20) + 17)
    p.write_bytes(big)
    assert io_files.sha256_file(p) == hashlib.sha256(big).hexdigest()


# ----------------------------------------------------------------------------------------
# results files
# ----------------------------------------------------------------------------------------
H, W = 12, 10


def make_result(seed=0, clusters=True) -> Result:
    rng = np.random.default_rng(seed)
    valid = np.zeros((H, W), bool)
    valid[2:10, 1:8] = True
    fields = {name: rng.normal(size=(H, W)) for name in MAP_FIELDS}
    maps = ChemMaps(
        **fields,
        valid=valid,
        pixel_size=2.5e-8,
        origin=(-1.5e-7, 2.0e-7),
        reference_energy=5480.0,
        delta_f2_v=3.9,
        scattering_table="chantler",
        std={"edge_energy": np.abs(rng.normal(size=(H, W))), "n_v": np.abs(rng.normal(size=(H, W)))},
        extra={
            "fit_residual": rng.normal(size=(H, W)),
            "a": rng.normal(size=(3, H, W)),
            "count": rng.integers(0, 9, (H, W)).astype(np.int32),
        },
    )
    cl = None
    if clusters:
        labels = np.where(valid, rng.integers(0, 3, (H, W)), -1)
        cl = {
            "labels": labels,
            "centers": rng.normal(size=(3, 3)),
            "fractions": np.array([0.2, 0.3, 0.5]),
            "k": 3,
            "features": ["edge_energy", "pre_edge_norm", "ne_eff_per_nv"],
            "method": "kmeans",
            "inertia": 12.5,
            "standardize": {"mean": [1.0, 2.0], "scale": [0.5, 0.25]},
        }
    return Result(
        method="two-step",
        maps=maps,
        energies=ENERGIES.copy(),
        absorption=rng.normal(size=(K, H, W)).astype(np.float32),
        phase=rng.normal(size=(K, H, W)).astype(np.float32),
        probes=(rng.normal(size=(K, M, M)) + 1j * rng.normal(size=(K, M, M))).astype(np.complex64),
        probe_pixel_size=np.array([9.5e-8, 9.4e-8, 9.3e-8]),
        history={"loss": np.linspace(1.0, 0.1, 20), "time": np.arange(20, dtype=np.float64)},
        config={
            "method": "two-step",
            "iterations": np.int64(20),
            "lr": np.float32(0.5),
            "energies": np.array([1.0, 2.0]),
            "path": Path("/data/x.cxi"),
            "nested": {"tuple": (1, 2)},
            "nan": float("nan"),
        },
        input_path="/data/x.cxi",
        input_sha256="0" * 64,
        clusters=cl,
    )


def assert_same_result(a: Result, b: Result, check_clusters=True):
    assert b.method == a.method and b.input_path == a.input_path and b.input_sha256 == a.input_sha256
    valid = np.asarray(a.maps.valid, bool)
    np.testing.assert_array_equal(b.maps.valid, valid)
    for name in MAP_FIELDS:
        # float64 in and out: exact where valid, NaN elsewhere
        expected = np.where(valid, getattr(a.maps, name), np.nan)
        np.testing.assert_array_equal(getattr(b.maps, name), expected)
    assert sorted(b.maps.std) == sorted(a.maps.std)
    for name, arr in a.maps.std.items():
        np.testing.assert_array_equal(b.maps.std[name], np.where(valid, arr, np.nan))
    assert sorted(b.maps.extra) == sorted(a.maps.extra)
    for name, arr in a.maps.extra.items():
        np.testing.assert_array_equal(b.maps.extra[name], arr)
        assert b.maps.extra[name].dtype == np.asarray(arr).dtype
    for attr in ("pixel_size", "origin", "reference_energy", "delta_f2_v", "scattering_table", "absorber"):
        assert getattr(b.maps, attr) == getattr(a.maps, attr)
    np.testing.assert_array_equal(b.energies, a.energies)
    # absorption/phase stored float32 (input float32 here): exact
    np.testing.assert_array_equal(b.absorption, a.absorption)
    np.testing.assert_array_equal(b.phase, a.phase)
    np.testing.assert_array_equal(b.probes, a.probes)
    assert b.probes.dtype == np.complex64
    np.testing.assert_array_equal(b.probe_pixel_size, a.probe_pixel_size)
    assert sorted(b.history) == sorted(a.history)
    for name in a.history:
        np.testing.assert_array_equal(b.history[name], a.history[name])
    assert json.dumps(b.config, sort_keys=True) == io_files.dumps_json(a.config, sort_keys=True)
    if check_clusters:
        assert_same_clusters(a.clusters, b.clusters)


def assert_same_clusters(a, b):
    if a is None:
        assert b is None
        return
    assert sorted(b) == sorted(a)
    assert b["labels"].dtype == np.int16
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(b[key], value)
        else:
            assert b[key] == value, key


def test_result_round_trip(tmp_path):
    r = make_result()
    path = io_results.write_result(tmp_path / "deep" / "dir" / "result.h5", r)
    back = io_results.read_result(path)
    assert_same_result(r, back)
    assert back.config["iterations"] == 20 and back.config["path"] == "/data/x.cxi"
    assert np.isnan(back.config["nan"])
    with h5py.File(path) as f:
        assert f.attrs["method"] == "two-step" and f.attrs["diffxas_version"]
        assert f.attrs["created"].startswith("20")
        assert f["maps/valid"].dtype == np.uint8
        for name, (unit, _) in MAP_FIELDS.items():
            assert f[f"maps/{name}"].attrs["units"] == unit
        assert f["maps/edge_energy_std"].attrs["units"] == "eV"
        assert "fit_residual" in f["maps/extra"]
        assert f["object/absorption"].shape == (K, H, W)
        assert f["probe/illumination"].dtype == np.complex64
        assert f["clusters/labels"].dtype == np.int16
        assert f["clusters"].attrs["k"] == 3
        assert list(f["clusters"].attrs["features"]) == ["edge_energy", "pre_edge_norm", "ne_eff_per_nv"]


def test_result_absorber_round_trip_and_default(tmp_path):
    # the absorber is recorded; files from before the attribute existed read as V (all were V)
    r = make_result(clusters=False)
    r.maps = dataclasses.replace(r.maps, absorber="Mn")
    path = io_results.write_result(tmp_path / "mn.h5", r)
    assert io_results.read_result(path).maps.absorber == "Mn"
    assert "Mn K edge" in io_results.summarize_result(path)
    with h5py.File(path, "r+") as f:
        del f["maps"].attrs["absorber"]
    assert io_results.read_result(path).maps.absorber == "V"


def test_result_round_trip_minimal(tmp_path):
    r = make_result(clusters=False)
    r.maps = dataclasses.replace(r.maps, std={}, extra={})
    r.history = {}
    back = io_results.read_result(io_results.write_result(tmp_path / "r.h5", r))
    assert_same_result(r, back)
    assert back.clusters is None


def test_result_write_atomic_on_bad_config(tmp_path):
    target = tmp_path / "r.h5"
    r = make_result()
    r.config = {"callback": object()}
    with pytest.raises(TypeError, match="JSON"):
        io_results.write_result(target, r)
    assert list(tmp_path.iterdir()) == []


def test_result_write_atomic_midway(tmp_path, monkeypatch):
    target = tmp_path / "r.h5"
    io_results.write_result(target, make_result(seed=1))
    before = target.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(io_results, "_write_clusters_group", boom)  # after maps, object, probe, history
    with pytest.raises(RuntimeError, match="simulated"):
        io_results.write_result(target, make_result(seed=2))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


def test_write_clusters(tmp_path):
    r = make_result(clusters=False)
    path = io_results.write_result(tmp_path / "r.h5", r)
    with h5py.File(path) as f:
        created = f.attrs["created"]
    rng = np.random.default_rng(5)
    c1 = {
        "labels": np.where(r.maps.valid, rng.integers(0, 2, (H, W)), -1),
        "centers": np.ones((2, 3)),
        "fractions": np.array([0.4, 0.6]),
        "k": 2,
        "features": ["edge_energy", "pre_edge_norm", "n_v"],
        "scores": {"silhouette": 0.5},
    }
    io_results.write_clusters(path, c1)
    back = io_results.read_result(path)
    assert_same_result(r, back, check_clusters=False)
    assert_same_clusters(c1, back.clusters)
    c2 = {"labels": np.full((H, W), -1), "k": 4, "features": ["edge_energy"]}
    io_results.write_clusters(path, c2)  # replaces, does not merge
    back = io_results.read_result(path)
    assert_same_clusters(c2, back.clusters)
    assert_same_result(r, back, check_clusters=False)
    with h5py.File(path) as f:
        assert f.attrs["created"] == created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]
    with pytest.raises(ValueError, match="shape"):
        io_results.write_clusters(path, {"labels": np.zeros((3, 3))})
    assert_same_clusters(c2, io_results.read_result(path).clusters)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


def test_read_result_bad_inputs(tmp_path, cxi):
    with pytest.raises(InputError) as ei:
        io_results.read_result(cxi)
    assert_one_line_error(ei, cxi, "not a diffxas results file")
    with pytest.raises(InputError):
        io_results.write_clusters(cxi, {"k": 1})
    path = io_results.write_result(tmp_path / "r.h5", make_result())
    with h5py.File(path, "r+") as f:
        del f["maps/pre_edge"]
    with pytest.raises(InputError) as ei:
        io_results.read_result(path)
    assert_one_line_error(ei, path, "/maps/pre_edge", "missing dataset")
    path = io_results.write_result(tmp_path / "r2.h5", make_result())
    with h5py.File(path, "r+") as f:
        _replace(f, "object/phase", np.zeros((K, H, W + 1), np.float32))
    with pytest.raises(InputError) as ei:
        io_results.read_result(path)
    assert_one_line_error(ei, path, "/object/phase", "shape")
    path = io_results.write_result(tmp_path / "r3.h5", make_result())
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = "{not json"
    with pytest.raises(InputError) as ei:
        io_results.read_result(path)
    assert_one_line_error(ei, path, "config", "JSON")


def test_summarize_result(tmp_path):
    path = io_results.write_result(tmp_path / "r.h5", make_result())
    text = io_info.summarize(path)
    assert text == io_results.summarize_result(path)
    assert "method:            two-step" in text and "12 x 10 pixels" in text
    for name in MAP_FIELDS:
        assert name in text
    assert "history loss: 20 values" in text and "k = 3" in text
    assert "WARNING" not in text
    # the solver's plausibility warnings (config["warnings"]) are shown, one line each
    r = make_result()
    r = dataclasses.replace(
        r, config={**(r.config or {}), "warnings": ["edge width b3 = 16 eV (median) is above 15 eV"]}
    )
    text = io_info.summarize(io_results.write_result(tmp_path / "w.h5", r))
    assert "WARNING:           edge width b3 = 16 eV" in text


# ----------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------
def make_truth(seed=0) -> Truth:
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 3, (H, W)).astype(np.int16)
    maps = {name: np.where(labels >= 0, rng.normal(size=(H, W)), np.nan) for name in MAP_FIELDS}
    params = {name: rng.normal(size=(H, W)) for name in ("a", "b1", "b2", "b3", "c11", "n_other")}
    return Truth(
        maps=maps,
        labels=labels,
        domain_names=["LiFePO4", "FePO4", "mixed"],
        params=params,
        pixel_size=1e-8,
        origin=(-3e-7, -2e-7),
        energies=ENERGIES.copy(),
        reference_energy=5480.0,
        attrs={"preset": "two-phase", "seed": 7, "dose": 1e5, "nested": {"x": [1, 2]}, "version": "0.1.0"},
    )


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


def test_summarize_unknown_hdf5(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError) as ei:
        io_info.summarize(path)
    assert_one_line_error(ei, path, "not a CXI, diffxas results or ground-truth file")


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


# ----------------------------------------------------------------------------------------
# lazy CXI source (open_cxi): frames read from the file a range at a time
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression,chunk_frames", [("gzip", 3), ("lzf", 1), (None, 4)])
@pytest.mark.parametrize("integral", [True, False])
def test_open_cxi_frames_equal_read_cxi(tmp_path, compression, chunk_frames, integral):
    """Reference: read_cxi of the same file; float32 frames in both, so every comparison is exact."""
    ds = make_dataset(integral=integral, n=7, interleave=True)
    path = io_cxi.write_cxi(tmp_path / "d.cxi", ds, compression=compression, chunk_frames=chunk_frames)
    eager, lazy = io_cxi.read_cxi(path), io_cxi.open_cxi(path)
    assert isinstance(lazy.frames, io_cxi.CxiFrames)
    assert lazy.frames.shape == eager.frames.shape and lazy.frames.dtype == np.float32
    assert lazy.frames.nbytes == eager.frames.nbytes
    ref = np.asarray(eager.frames)
    np.testing.assert_array_equal(np.asarray(lazy.frames), ref)
    for name in ("positions", "energy_index", "energies", "mask", "illumination"):
        np.testing.assert_array_equal(np.asarray(getattr(lazy, name)), np.asarray(getattr(eager, name)), err_msg=name)
    assert (lazy.distance, lazy.detector_pixel) == (eager.distance, eager.detector_pixel)
    fr = lazy.frames
    # ranges across entry boundaries (7 frames per entry), in any chunk size
    for start, stop in [(0, 21), (5, 9), (6, 7), (13, 21), (20, 30)]:
        np.testing.assert_array_equal(fr.read(start, stop), ref[start:stop])
    # arbitrary order, repeats, sparse and dense selections
    idx = np.array([20, 0, 3, 3, 14, 8, 7, 1])
    np.testing.assert_array_equal(fr.take(idx), ref[idx])
    np.testing.assert_array_equal(fr[4], ref[4])
    np.testing.assert_array_equal(fr[-1], ref[-1])
    np.testing.assert_array_equal(fr[2, 3:5], ref[2, 3:5])
    # first-axis views stay lazy and compose
    view = fr[::2]
    assert isinstance(view, io_cxi.CxiFrames) and view.shape == ref[::2].shape
    np.testing.assert_array_equal(np.asarray(view), ref[::2])
    np.testing.assert_array_equal(np.asarray(view[np.array([True, False] * 5 + [True])]), ref[::2][::2])
    np.testing.assert_array_equal(view.read(2, 6), ref[::2][2:6])
    # the dataset methods that select frames keep them lazy and give read_cxi's values
    for a, b in [(lazy.select_energies([0, 2]), eager.select_energies([0, 2])), (lazy.half("odd"), eager.half("odd"))]:
        assert isinstance(a.frames, io_cxi.CxiFrames)
        np.testing.assert_array_equal(np.asarray(a.frames), np.asarray(b.frames))
        np.testing.assert_array_equal(np.asarray(a.energy_index), np.asarray(b.energy_index))
    # energy subsets like read_cxi
    np.testing.assert_array_equal(
        np.asarray(io_cxi.open_cxi(path, energies=[1]).frames), np.asarray(io_cxi.read_cxi(path, energies=[1]).frames)
    )
    with pytest.raises(IndexError):
        fr[21]


def test_open_cxi_errors(tmp_path, cxi):
    """Structure errors when opening, value errors when the frames are read: one line each."""
    with pytest.raises(InputError) as ei:
        io_cxi.open_cxi(tmp_path / "missing.cxi")
    assert_one_line_error(ei, tmp_path / "missing.cxi", "no such file")
    lazy = io_cxi.open_cxi(cxi)
    with h5py.File(cxi, "r+") as f:  # a NaN in the middle of entry 2 (frames stored as uint32 -> rewrite as float)
        d = f[f"entry_2/{DET}/data"]
        data = d[()].astype(np.float32)
        data[3, 1, 1] = np.nan
        del f[f"entry_2/{DET}/data"]
        f[f"entry_2/{DET}"].create_dataset("data", data=data, chunks=(2, M, M), compression="gzip")
    lazy.frames.read(0, 5)  # entry 1 is fine
    with pytest.raises(InputError) as ei:
        lazy.frames.read(4, 10)
    assert_one_line_error(ei, cxi, f"/entry_2/{DET}/data", "frame 3 contains NaN")
    with h5py.File(cxi, "r+") as f:
        del f[f"entry_3/{DET}/data"]
        f[f"entry_3/{DET}"].create_dataset("data", data=np.zeros((2, M, M), np.float32))
    with pytest.raises(InputError) as ei:
        lazy.frames.read(10, 15)
    assert_one_line_error(ei, cxi, f"/entry_3/{DET}/data", "changed since it was opened")


# ----------------------------------------------------------------------------------------
# incident-flux monitor (I0): /entry_k/instrument_1/monitor_1/data, one reading per frame
# ----------------------------------------------------------------------------------------
MON = "instrument_1/monitor_1/data"


def _with_monitor(ds: Dataset, seed=5) -> Dataset:
    mon = np.random.default_rng(seed).uniform(0.9e5, 1.1e5, ds.n_frames)
    return Dataset(
        frames=ds.frames,
        positions=ds.positions,
        energy_index=ds.energy_index,
        energies=ds.energies,
        mask=ds.mask,
        illumination=ds.illumination,
        distance=ds.distance,
        detector_pixel=ds.detector_pixel,
        monitor=mon,
    )


def test_monitor_round_trip_and_selections(tmp_path):
    """The monitor readings survive write_cxi -> read_cxi / open_cxi exactly (float64),
    follow the frames through energy selection and halves, and relative_monitor has mean 1
    over each energy's frames (exact ratios of the readings, 1e-12)."""
    from diffxas.data.dataset import relative_monitor

    ds = _with_monitor(make_dataset(interleave=True))
    path = io_cxi.write_cxi(tmp_path / "m.cxi", ds)
    with h5py.File(path, "r") as f:
        assert f[f"entry_2/{MON}"].shape == (N,)
    for back in (io_cxi.read_cxi(path), io_cxi.open_cxi(path)):
        order = np.argsort(np.asarray(ds.energy_index), kind="stable")  # the file groups frames by energy
        np.testing.assert_array_equal(np.asarray(back.monitor), np.asarray(ds.monitor)[order])
    back = io_cxi.read_cxi(path)
    sub = back.select_energies([0, 2])
    np.testing.assert_array_equal(sub.monitor, np.asarray(back.monitor)[np.asarray(back.energy_index) != 1])
    half = back.half("odd")
    assert half.monitor.shape == (half.n_frames,)
    rel = relative_monitor(back)
    ei = np.asarray(back.energy_index)
    for k in range(K):
        assert rel[ei == k].mean() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(
            rel[ei == k] / rel[ei == k][0], back.monitor[ei == k] / back.monitor[ei == k][0], rtol=1e-12
        )
    np.testing.assert_array_equal(relative_monitor(make_dataset()), np.ones(K * N))
    assert "monitor (I0):      present" in io_cxi.cxi_summary(path)
    assert "monitor (I0):      absent" in io_cxi.cxi_summary(io_cxi.write_cxi(tmp_path / "n.cxi", make_dataset()))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda f: f[f"entry_2/{MON}"].__setitem__(3, 0.0), r"entry_2/instrument_1/monitor_1/data: reading 3 is 0"),
        (
            lambda f: f[f"entry_1/{MON}"].__setitem__(0, np.nan),
            r"entry_1/instrument_1/monitor_1/data: reading 0 is nan",
        ),
        (
            lambda f: _replace(f, f"entry_3/{MON}", np.ones(N + 1)),
            r"entry_3/instrument_1/monitor_1/data: must have shape \(5,\)",
        ),
        (
            lambda f: f.__delitem__(f"entry_2/{MON}"),
            r"entry_2/instrument_1/monitor_1/data: missing dataset \(present in /entry_1",
        ),
    ],
)
def test_monitor_errors(tmp_path, mutate, match):
    """A bad monitor is one InputError line naming the entry and dataset."""
    path = io_cxi.write_cxi(tmp_path / "m.cxi", _with_monitor(make_dataset()))
    with h5py.File(path, "r+") as f:
        mutate(f)
    for fn in (io_cxi.read_cxi, io_cxi.open_cxi):
        with pytest.raises(InputError, match=match):
            fn(path)


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


@pytest.mark.parametrize("shape", ["flat", "map"])
def test_result_background_round_trip_and_validation(tmp_path, shape):
    """The fitted incoherent background (diffxas.physics.background) is stored under
    /detector/background, exactly (float32 in and out), with its units; a file without it
    reads None; `diffxas info` names it; a background of another shape is a ValueError
    before anything is written."""
    r = make_result(clusters=False)
    rng = np.random.default_rng(5)
    r.background = (rng.random(K) if shape == "flat" else rng.random((K, M, M))).astype(np.float32)
    path = io_results.write_result(tmp_path / "bg.h5", r)
    back = io_results.read_result(path)
    np.testing.assert_array_equal(back.background, r.background)
    with h5py.File(path) as f:
        assert f["detector/background"].attrs["units"] == "photons per detector pixel per frame"
    assert "background:        " + shape in io_results.summarize_result(path)  # `diffxas info`
    assert (
        io_results.read_result(io_results.write_result(tmp_path / "none.h5", make_result(clusters=False))).background
        is None
    )
    r.background = np.zeros((K + 1,), np.float32)
    with pytest.raises(ValueError, match="background"):
        io_results.write_result(tmp_path / "bad.h5", r)
    assert not (tmp_path / "bad.h5").exists()


# ----------------------------------------------------------------------------------------
# What the CXI 1.6 specification allows besides diffxas's own layout
# ----------------------------------------------------------------------------------------
def test_cxi_energy_from_wavelength_only(cxi):
    """source_1/wavelength (m) alone: E = h c / lambda. Reference: the energies written,
    1e-12 relative (h, c, e exact; double precision)."""
    from diffxas.physics.constants import HC_EV_M

    with h5py.File(cxi, "r+") as f:
        for k in range(K):
            del f[f"entry_{k + 1}/{SRC}/energy"]
            f[f"entry_{k + 1}/{SRC}/wavelength"] = np.array([HC_EV_M / ENERGIES[k]])  # shape (1,)
    back = io_cxi.read_cxi(cxi)
    np.testing.assert_allclose(back.energies, ENERGIES, rtol=1e-12)
    assert_same_dataset(make_dataset(), back)


@pytest.mark.parametrize(
    "value,words", [(2.3e-10 * 1e10, "not a plausible X-ray wavelength"), (-1e-10, "must be positive")]
)
def test_cxi_bad_wavelength(cxi, value, words):
    with h5py.File(cxi, "r+") as f:
        del f[f"entry_2/{SRC}/energy"]
        f[f"entry_2/{SRC}/wavelength"] = value
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(cxi)
    assert_one_line_error(ei, cxi, f"/entry_2/{SRC}/wavelength", words)


def test_cxi_no_energy_at_all(cxi):
    with h5py.File(cxi, "r+") as f:
        del f[f"entry_3/{SRC}/energy"]
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(cxi)
    assert_one_line_error(ei, cxi, f"/entry_3/{SRC}/energy", "missing dataset", "wavelength")


def test_cxi_frames_only_under_data_1(cxi):
    """Frames only in /entry_k/data_1/data (the Data class every entry must have): read
    and streamed the same as from detector_1/data (exact: the same stored values)."""
    ref = make_dataset()
    with h5py.File(cxi, "r+") as f:
        for k in range(K):
            e = f[f"entry_{k + 1}"]
            data = e[f"{DET}/data"][()]
            del e["data_1/data"], e[f"{DET}/data"]
            e["data_1/data"] = data
    assert_same_dataset(ref, io_cxi.read_cxi(cxi))
    lazy = io_cxi.open_cxi(cxi)
    np.testing.assert_array_equal(np.asarray(lazy.frames), np.asarray(ref.frames))
    np.testing.assert_array_equal(lazy.frames[[3, 11]], np.asarray(ref.frames)[[3, 11]])
    assert "dose:" in io_cxi.cxi_summary(cxi)


@pytest.mark.parametrize(
    "bits,used",
    [
        (0x1, False),
        (0x2, False),
        (0x4, False),
        (0x8, False),
        (0x10, False),
        (0x80, False),
        (0x200, False),
        (0x400, False),
        (0x1000, True),
        (0x10000, True),
        (0x1000 | 0x200, False),
        (0x80000000, True),
    ],
)
def test_cxi_mask_bits_by_meaning(cxi, bits, used):
    """CXI 1.6 pixel-mask table: the defect bits exclude a pixel; 0x1000 (signal above
    background), 0x10000 (inside support) and the user bits do not."""
    with h5py.File(cxi, "r+") as f:
        mk = np.zeros((M, M), np.uint32)
        mk[4:6, 7] = bits
        _replace(f, f"entry_2/{DET}/mask", mk)
    w = np.asarray(io_cxi.read_cxi(cxi).mask)[1]
    assert (w[4:6, 7] == 1.0).all() == used and (w[4:6, 7] == 0.0).all() == (not used)
    assert w.sum() == M * M - (0 if used else 2)


def test_cxi_mask_signed_and_legacy_types(cxi):
    """int32 -1 (all bits) excludes; bool and float masks: non-zero excludes."""
    for data, n_bad in (
        (np.full((M, M), 0, np.int32), 0),
        (np.eye(M, dtype=bool), M),
        (np.eye(M, dtype=np.float32) * 0.5, M),
    ):
        data = data.copy()
        if data.dtype == np.int32:
            data[0, :5] = -1
            n_bad = 5
        with h5py.File(cxi, "r+") as f:
            _replace(f, f"entry_1/{DET}/mask", data)
        assert np.asarray(io_cxi.read_cxi(cxi).mask)[0].sum() == M * M - n_bad


def test_cxi_mask_bits_only_signal_is_not_inverted(cxi):
    """A mask flagging every pixel 'has signal' (0x1000) excludes none (no 'inverted' error)."""
    with h5py.File(cxi, "r+") as f:
        _replace(f, f"entry_1/{DET}/mask", np.full((M, M), 0x1000, np.uint32))
    assert np.asarray(io_cxi.read_cxi(cxi).mask)[0].all()


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


def _bitshuffle_copy(src: Path, dst: Path) -> Path:
    """The file with every entry's frames rewritten bitshuffle-LZ4 compressed with plain
    h5py + hdf5plugin (as EIGER / DECTRIS filewriters store them)."""
    import shutil

    import hdf5plugin

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for k in range(K):
            name = f"entry_{k + 1}/{DET}/data"
            data = f[name][()]
            del f[name]
            f.create_dataset(name, data=data, chunks=(1, M, M), **hdf5plugin.Bitshuffle(cname="lz4"))
            assert "32008" in f[name]._filters  # the bitshuffle filter id
    return dst


def test_cxi_bitshuffle_lz4_read_and_lazy(cxi, tmp_path):
    """Bitshuffle/LZ4 frames: read, opened lazily and summarised like the gzip file
    (exact: lossless compression of the same integers)."""
    path = _bitshuffle_copy(cxi, tmp_path / "bslz4.cxi")
    ref = make_dataset()
    assert_same_dataset(ref, io_cxi.read_cxi(path))
    lazy = io_cxi.open_cxi(path)
    np.testing.assert_array_equal(lazy.frames.read(2, 9), np.asarray(ref.frames)[2:9])
    np.testing.assert_array_equal(lazy.frames[[14, 0, 7]], np.asarray(ref.frames)[[14, 0, 7]])
    assert "dose:" in io_cxi.cxi_summary(path)


def test_cxi_bitshuffle_lz4_streamed_chunks(cxi, tmp_path):
    """The joint's stream mode reads bitshuffle/LZ4 frames chunk by chunk in its prefetch
    thread (StreamSolver._chunks over a CxiFrames source, the path of memory = "stream"):
    the chunks equal the frames written (exact), the last one zero-padded.
    (A full streamed joint step is tested on gzip data in tests/test_stream.py; compiling
    one here would cost ~30 s for no other code path.)"""
    from diffxas.solvers.joint import stream

    path = _bitshuffle_copy(cxi, tmp_path / "bslz4.cxi")
    src = io_cxi.open_cxi(path).frames
    assert isinstance(src, io_cxi.CxiFrames)
    chunk, n = 4, K * N
    n_chunks = -(-n // chunk)
    solver = object.__new__(stream.StreamSolver)  # only the chunk loader: no problem to compile
    solver.frames, solver.prefetch, solver.frame_size = src, True, M
    rows = np.arange(n_chunks * chunk)
    solver._fid = np.where(rows < n, rows, -1).astype(np.int32)
    solver._k = np.zeros(rows.size, np.int32)
    solver._corner = np.zeros((rows.size, 2), np.int32)
    solver._frac = np.zeros((rows.size, 2), np.float32)
    plans = [((c * chunk, min((c + 1) * chunk, n)), np.arange(c * chunk, (c + 1) * chunk)) for c in range(n_chunks)]
    got = np.concatenate([np.asarray(x[0]) for x in solver._chunks(plans)])
    ref = np.asarray(make_dataset().frames)
    np.testing.assert_array_equal(got[:n], ref)
    assert not got[n:].any()
