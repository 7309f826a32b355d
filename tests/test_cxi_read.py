"""Tests of diffxas.data.cxi's readers (read_cxi, open_cxi and its lazy CxiFrames,
diffxas/data/_cxi_read.py and _cxi_scan.py): energy selections, every bad input as one
InputError line naming file / entry / dataset, the incident-flux monitor, and what the CXI
1.6 specification allows besides diffxas's own layout (wavelength, data_1, mask bits,
bitshuffle/LZ4 frames).

Reference values are the in-memory objects written; tolerances are stated per check
(exact where the stored dtype equals the in-memory dtype). The shared small datasets,
results and truths are built by tests/data_helpers.py; the ``cxi`` fixture (a small CXI
file per test) is in tests/conftest.py.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from data_helpers import (
    BAD,
    DET,
    ENERGIES,
    MON,
    SRC,
    K,
    M,
    N,
    _bitshuffle_copy,
    _replace,
    _with_monitor,
    assert_one_line_error,
    assert_same_dataset,
    make_dataset,
)

from diffxas.data import cxi as io_cxi
from diffxas.errors import InputError


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
