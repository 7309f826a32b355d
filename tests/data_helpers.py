"""Shared builders for the tests of diffxas.data (not a test module): a small synthetic
multi-energy Dataset, a results file's Result and a ground-truth Truth, their comparisons,
the CXI mutations of the bad-input tests and the one-line error check. Imported by
tests/test_cxi_*.py, test_results.py, test_truth.py, test_files.py, test_info.py,
test_nexus.py, test_export.py and test_cli.py (tests/ is on sys.path under pytest's default
import mode).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from diffxas.data import files as io_files
from diffxas.data.dataset import Dataset
from diffxas.maps import MAP_FIELDS, ChemMaps, Result, Truth

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
