"""Tests of diffxas.data.results: the results file (write_result / read_result round trip,
atomic writes, clusters, the fitted background, its summary).

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
from data_helpers import (
    H,
    K,
    M,
    W,
    _replace,
    assert_one_line_error,
    assert_same_clusters,
    assert_same_result,
    make_result,
)

from diffxas.data import info as io_info
from diffxas.data import results as io_results
from diffxas.errors import InputError
from diffxas.maps import MAP_FIELDS


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
