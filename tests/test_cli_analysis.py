"""Tests of the analysis commands of the command line (diffxas.app.cli.analysis): cluster,
evaluate and report on the joint result, and their bad inputs.

The commands run in-process (cli_helpers._run) on small files: the ``cxi`` fixture below (a
fresh 3-energy file per test), and the session-scoped ``sim_dir`` (`diffxas simulate` of
`tiny`) and ``joint_dir`` (a 2-step joint reconstruction of it) in tests/conftest.py, shared
by the tests/test_cli*.py files and run once per test process as when they were one module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import _run, assert_one_error_line, make_dataset

from diffxas.data import cxi as io_cxi
from diffxas.data import results as io_results


@pytest.fixture
def cxi(tmp_path) -> Path:
    return io_cxi.write_cxi(tmp_path / "data.cxi", make_dataset())


# ---- cluster / evaluate / report on the joint result ------------------------------------
@pytest.fixture
def result_copy(joint_dir, tmp_path) -> Path:
    dst = tmp_path / "joint.h5"
    shutil.copy(joint_dir / "joint.h5", dst)
    return dst


def test_cluster_evaluate_report(result_copy, sim_dir, tmp_path):
    truth = sim_dir / "tiny.truth.h5"
    rc, out, err = _run(["cluster", result_copy, "--k", 2, "--seeds", 2, "--features", "edge_energy,pre_edge_norm"])
    assert rc == 0, err
    assert "k = 2" in out and "wrote /clusters" in out
    r = io_results.read_result(result_copy)
    assert r.clusters is not None and int(r.clusters["k"]) == 2
    assert list(r.clusters["features"]) == ["edge_energy", "pre_edge_norm"]
    assert (tmp_path / "joint_clusters.csv").exists()

    rc, out, err = _run(["evaluate", result_copy, "--truth", truth, "--json", tmp_path / "m.json"])
    assert rc == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["method"] == "joint" and m["n_region"] > 0 and "edge_energy" in m and m["clusters"] is not None
    assert "coverage" in out and "wrote" in out
    # without --truth: the sidecar next to the input named in the results file
    rc, out, err = _run(["evaluate", result_copy])
    assert rc == 0, err
    assert (tmp_path / "joint_eval.json").exists()

    rc, out, err = _run(
        [
            "report",
            result_copy,
            result_copy,
            "-o",
            tmp_path / "rep",
            "--truth",
            truth,
            "--labels",
            "a,b",
            "--formats",
            "png",
        ]
    )
    assert rc == 0, err
    names = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert "summary.md" in names and "metrics.json" in names and "maps.png" in names
    assert not any(n.endswith(".pdf") for n in names)
    assert "| a |" in (tmp_path / "rep" / "summary.md").read_text()


def _bad_result_files(tmp_path, result_copy, cxi):
    trunc = tmp_path / "trunc.h5"
    data = result_copy.read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    text = tmp_path / "notes.h5"
    text.write_text("hello\n" * 50)
    return [
        (tmp_path / "missing.h5", "no such file"),
        (text, "not an HDF5 file"),
        (trunc, "truncated or corrupt"),
        (cxi, "not a diffxas results file"),
    ]


def test_cluster_evaluate_report_bad_inputs(result_copy, cxi, sim_dir, tmp_path):
    truth = sim_dir / "tiny.truth.h5"
    before = result_copy.read_bytes()
    for path, words in _bad_result_files(tmp_path, result_copy, cxi):
        for argv in (
            ["cluster", path],
            ["evaluate", path, "--truth", truth],
            ["report", path, "-o", tmp_path / "rep"],
            ["report", result_copy, path, "-o", tmp_path / "rep"],
        ):
            rc, out, err = _run(argv)
            assert rc == 2 and out == "", argv
            assert_one_error_line(err, str(path), words)
    assert not (tmp_path / "rep").exists()
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.json"))
    # bad truth files
    for path, words in [
        (tmp_path / "none.h5", "no such file"),
        (result_copy, "not a diffxas ground-truth file"),
        (cxi, "not a diffxas ground-truth file"),
    ]:
        for argv in (
            ["evaluate", result_copy, "--truth", path],
            ["report", result_copy, "-o", tmp_path / "rep", "--truth", path],
        ):
            rc, out, err = _run(argv)
            assert rc == 2 and out == "", argv
            assert_one_error_line(err, str(path), words)
    assert not (tmp_path / "rep").exists() and not list(tmp_path.glob("*.json"))
    # bad options
    for argv, words in [
        (["cluster", result_copy, "--k", "zero"], "cluster k must be an integer >= 1 or 'auto'"),
        (["cluster", result_copy, "--features", "edge_energy,bogus"], "unknown cluster feature 'bogus'"),
        (["cluster", result_copy, "--set", "cluster.kk=3"], "[cluster] unknown key 'kk'"),
        (["cluster", result_copy, "--weight", "mass"], "argument --weight: invalid choice"),
        (["evaluate", result_copy, "--truth", truth, "--nv-fraction", "2"], "--nv-fraction must be in"),
        (["report", result_copy, "-o", tmp_path / "rep", "--labels", "a,b"], "--labels needs 1"),
        (["report", result_copy, "-o", tmp_path / "rep", "--formats", "gif"], "--formats"),
        (["report", result_copy, "-o", result_copy], "exists and is not a directory"),
        (["report", "-o", tmp_path / "rep"], "the following arguments are required: RESULT.h5"),
    ]:
        rc, out, err = _run(argv)
        assert rc == 2 and out == "", argv
        assert_one_error_line(err, words)
    assert result_copy.read_bytes() == before  # never modified by a failing command
    assert not (tmp_path / "rep").exists()


def test_evaluate_without_truth_sidecar(result_copy, tmp_path, monkeypatch):
    import h5py

    with h5py.File(result_copy, "r+") as f:
        f.attrs["input"] = str(tmp_path / "elsewhere.cxi")
    rc, out, err = _run(["evaluate", result_copy])
    assert rc == 2
    assert_one_error_line(err, "no --truth given and no ground-truth file at", "elsewhere.truth.h5")
