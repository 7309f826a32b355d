"""The fault campaign of issue #25 ("Bad inputs and faults"), one case per failure found.

Every bad input: one line on stderr naming the file or option and what is wrong, exit
code 2, no traceback, no output file. Every fault (a full disk, simulated by raising
``OSError(ENOSPC)`` from the write): one "disk full" line naming the file, nothing
half-written left, the finished reconstruction kept. The CLI runs in-process
(``diffxas.app.cli.main``) on small hand-made files (16 x 16 frames, 4 energies around the
V K edge, a 6 x 6 raster), written once per module, so the whole module runs in seconds.
"""

import dataclasses
import errno
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_checks import (  # tests/ is on sys.path (pytest prepend import mode)
    ENERGIES,
    make_dataset,
)

from diffxas.app.cli import main
from diffxas.data import cxi as io_cxi
from diffxas.data import files as io_files
from diffxas.data import results as io_results
from diffxas.data import truth as io_truth
from diffxas.maps import MAP_FIELDS, ChemMaps, Result, Truth

H = W = 12
PX = 2e-7


# ----------------------------------------------------------------------------- helpers


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(capsys, *argv, words=(), absent=()):
    """Run the CLI; assert exit 2 and exactly one error line holding ``words``; return it."""
    rc, _out, err = run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("diffxas: error:"), err
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    for p in absent:
        assert not Path(p).exists(), p
    return lines[0]


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp" in p.name or p.name.endswith(".partial"))


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def fake_result(sha="", half=None, seed=0, nan_inside=False, selection=True) -> Result:
    """A results record on the truth grid (maps = the truth's n_v and constants)."""
    rng = np.random.default_rng(seed)
    valid = np.ones((H, W), bool)
    fields = {n: np.full((H, W), 1.0) + 0.01 * rng.standard_normal((H, W)) for n in MAP_FIELDS}
    fields["edge_energy"] = 5470.0 + rng.standard_normal((H, W))
    if nan_inside:
        fields["edge_energy"][3, 4] = np.nan
    maps = ChemMaps(
        **fields,
        valid=valid,
        pixel_size=PX,
        origin=(0.0, 0.0),
        reference_energy=5450.0,
        delta_f2_v=3.9,
        scattering_table="chantler",
    )
    k = len(ENERGIES)
    cfg = {"input_selection": {"half": half}} if selection else {}
    return Result(
        method="joint",
        maps=maps,
        energies=ENERGIES.copy(),
        absorption=np.zeros((k, H, W), np.float32),
        phase=np.zeros((k, H, W), np.float32),
        probes=np.ones((k, 4, 4), np.complex64),
        probe_pixel_size=np.full(k, PX),
        history={"loss": np.array([1.0, 0.5])},
        config=cfg,
        input_path="",
        input_sha256=sha,
    )


def fake_truth(attrs) -> Truth:
    nv = np.ones((H, W))
    maps = {n: np.ones((H, W)) for n in MAP_FIELDS}
    maps.update(n_v=nv, edge_energy=np.full((H, W), 5470.0))
    return Truth(
        maps=maps,
        labels=np.zeros((H, W), np.int16),
        domain_names=["a"],
        params={},
        pixel_size=PX,
        origin=(0.0, 0.0),
        energies=ENERGIES.copy(),
        reference_energy=5450.0,
        attrs=attrs,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The hand-made data once per module: good and broken CXI files, results, truths."""
    d = tmp_path_factory.mktemp("bad")
    ds = make_dataset()
    f = {}

    def cxi(name, data, **attrs):
        p = d / f"{name}.cxi"
        io_cxi.write_cxi(p, data, extra_attrs=attrs or None)
        f[name] = p

    cxi("good", ds, preset="hand", seed=1, dose=1e5)
    fr = np.array(ds.frames)
    z = fr.copy()
    z[ds.frames_of(1)[:18]] = 0
    cxi("zero_half", dataclasses.replace(ds, frames=z))
    z = fr.copy()
    z[ds.frames_of(2)] = 0
    cxi("zero_energy", dataclasses.replace(ds, frames=z))
    z = fr.copy()
    z[5, 3, 3] = 3e38
    cxi("huge_pixel", dataclasses.replace(ds, frames=z))
    cxi("same_pos", dataclasses.replace(ds, positions=np.zeros_like(np.asarray(ds.positions))))
    cxi("pos_mm", dataclasses.replace(ds, positions=np.asarray(ds.positions) * 1e3))
    cxi("pos_um", dataclasses.replace(ds, positions=np.asarray(ds.positions) * 1e6))
    e = ENERGIES.copy()
    e[2] = e[1] + 5e-7
    cxi("near_dup_e", make_dataset(energies=e))
    cxi("det2x2", make_dataset(m=2))
    f["sha_good"] = io_files.sha256_file(f["good"])
    # results and truths
    f["result"] = io_results.write_result(d / "result.h5", fake_result(sha=f["sha_good"]))
    f["even"] = io_results.write_result(d / "even.h5", fake_result(sha=f["sha_good"], half="even", seed=1))
    f["odd"] = io_results.write_result(d / "odd.h5", fake_result(sha=f["sha_good"], half="odd", seed=2))
    f["full2"] = io_results.write_result(d / "full2.h5", fake_result(sha=f["sha_good"], seed=3))
    f["truth"] = io_truth.write_truth(d / "good.truth.h5", fake_truth({"data_sha256": f["sha_good"]}))
    f["other_truth"] = io_truth.write_truth(d / "other.truth.h5", fake_truth({"data_sha256": "f" * 64}))
    return f


# ----------------------------------------------------------------------------- broken frames and positions


@pytest.mark.parametrize(
    "name, words",
    [
        (
            "zero_energy",
            ["zero_energy.cxi", "energy 5480 eV", "0 usable of 36", "--energy-list 5450,5465,5500"],
        ),
        ("same_pos", ["same_pos.cxi", "less than one object pixel"]),
        ("pos_mm", ["pos_mm.cxi", "translations in mm or um"]),
        ("pos_um", ["pos_um.cxi", "translations in mm or um"]),
        ("near_dup_e", ["near_dup_e.cxi", "apart", "one energy written twice"]),
        ("det2x2", ["det2x2.cxi", "2 x 2", "at least 8 x 8"]),
    ],
)
@pytest.mark.parametrize("method", ["joint", "two-step"])
def test_reconstruct_refuses_data_that_cannot_support_maps(files, capsys, tmp_path, name, words, method):
    out = tmp_path / "r.h5"
    refused(
        capsys,
        "reconstruct",
        files[name],
        "--method",
        method,
        "-o",
        out,
        "--no-checkpoint",
        words=words,
        absent=[out],
    )


@pytest.mark.parametrize(
    "name, words",
    [
        ("zero_half", ["18 frame(s)", "5465 eV", "empty"]),
        ("huge_pixel", ["1 frame(s)", "5450 eV", "above"]),
    ],
)
def test_info_names_the_frames_a_run_would_drop(files, capsys, name, words):
    rc, out, err = run(capsys, "info", files[name])
    assert rc == 0
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and all(w in warn[0] for w in words) and str(files[name]) in warn[0]
    assert "check:" in out


def test_info_on_clean_data_has_no_check_lines(files, capsys):
    rc, out, err = run(capsys, "info", files["good"])
    assert rc == 0 and "check:" not in out and not err.strip()


def test_run_masks_the_broken_frames(files, caplog):
    """The data of a run: the 18 empty frames are dropped with one warning, the rest kept."""
    from diffxas.data.checks import check_dataset

    ds = io_cxi.read_cxi(files["zero_half"])
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        kept = check_dataset(ds, source=files["zero_half"])
    assert kept.n_frames == ds.n_frames - 18 and "dropped" in caplog.text


# ----------------------------------------------------------------------------- full disk


class _FullH5:
    """h5py.File that fails with ENOSPC when writing inside ``folder`` (after creating
    the file: a half-written temporary file is what a full disk leaves)."""

    def __init__(self, folder):
        self.folder = Path(folder).resolve()
        self.real = h5py.File

    def __call__(self, name, mode="r", *a, **k):
        if mode != "r" and Path(name).resolve().parent == self.folder:
            Path(name).write_bytes(b"\x89HDF partial")
            enospc()
        return self.real(name, mode, *a, **k)


def test_full_disk_keeps_the_result_elsewhere_and_leaves_nothing(tmp_path, monkeypatch):
    from diffxas.errors import DiskFullError

    monkeypatch.setattr(h5py, "File", _FullH5(tmp_path))
    target = tmp_path / "r.h5"
    with pytest.raises(DiskFullError) as e:
        io_results.write_result_or_keep(target, fake_result())
    msg = str(e.value)
    assert str(target) in msg and "disk full" in msg and "saved to" in msg
    kept = Path(msg.split("saved to ")[1].split(" instead")[0])
    assert kept.is_file() and kept.parent != tmp_path
    monkeypatch.undo()
    assert io_results.read_result(kept).method == "joint"
    assert not target.exists() and leftovers(tmp_path) == []


def test_reconstruct_refused_before_the_run_without_room(files, capsys, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    out = tmp_path / "r.h5"
    refused(
        capsys,
        "reconstruct",
        files["good"],
        "--method",
        "joint",
        "-o",
        out,
        words=["disk full", str(out)],
        absent=[out, tmp_path / "r.h5.ckpt"],
    )


def test_cluster_on_a_full_disk(files, capsys, tmp_path, monkeypatch):
    res = tmp_path / "c.h5"
    io_results.write_result(res, fake_result(sha=files["sha_good"]))
    before = io_files.sha256_file(res)
    monkeypatch.setattr(h5py, "File", _FullH5(tmp_path))
    refused(
        capsys,
        "cluster",
        res,
        "--k",
        "2",
        "--seeds",
        "1",
        words=["disk full", str(res)],
        absent=[tmp_path / "c_clusters.csv"],
    )
    monkeypatch.undo()
    assert io_files.sha256_file(res) == before and leftovers(tmp_path) == []


def test_report_on_a_full_disk_leaves_no_empty_figure(files, capsys, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, fname, *a, **k):
        Path(fname).write_bytes(b"")  # what matplotlib leaves when the write fails
        enospc()

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "rep"
    refused(capsys, "report", files["result"], "-o", out, "--formats", "png", words=["disk full"])
    assert not out.exists() or [p.name for p in out.iterdir() if p.suffix == ".png"] == []
    assert not out.exists() or [p for p in out.iterdir() if p.stat().st_size == 0] == []


def test_joint_checkpoint_on_a_full_disk(tmp_path, monkeypatch, caplog):
    """The previous checkpoint stays whole, no *.tmp is left, one warning names the file."""
    import equinox as eqx
    import jax.numpy as jnp

    from diffxas.solvers.joint.solver import _load_checkpoint, _save_checkpoint

    class S(eqx.Module):
        x: object
        step: object

    path = str(tmp_path / "r.h5.ckpt")
    _save_checkpoint(path, S(jnp.ones(3), jnp.asarray(5)), {"loss": [1.0]})
    good = Path(path).read_bytes()
    monkeypatch.setattr(np, "savez", enospc)
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        _save_checkpoint(path, S(jnp.zeros(3), jnp.asarray(10)), {"loss": [1.0, 0.5]})
    monkeypatch.undo()
    assert "disk full" in caplog.text and path in caplog.text and "TreePath" not in caplog.text
    assert Path(path).read_bytes() == good and leftovers(tmp_path) == []
    state, hist = _load_checkpoint(path, S(jnp.zeros(3), jnp.asarray(0)))
    assert int(state.step) == 5 and hist["loss"] == [1.0]


def test_epie_checkpoint_on_a_full_disk(tmp_path, monkeypatch, caplog):
    from diffxas.solvers.twostep.epie import save_checkpoint

    path = tmp_path / "epie.npz"
    monkeypatch.setattr(np, "savez", enospc)
    with caplog.at_level(logging.WARNING, logger="diffxas"):
        save_checkpoint(path, np.ones((1, 2, 2)), np.ones((1, 2, 2)), 3, [[1.0]], [0.1], [], "fp")
    assert "disk full" in caplog.text and not path.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- cross-checks


def test_evaluate_refuses_another_datasets_truth(files, capsys, tmp_path):
    js = tmp_path / "e.json"
    refused(
        capsys,
        "evaluate",
        files["result"],
        "--truth",
        files["other_truth"],
        "--json",
        js,
        words=["other.truth.h5", "another dataset"],
        absent=[js],
    )
    assert run(capsys, "evaluate", files["result"], "--truth", files["truth"], "--json", js)[0] == 0
    assert js.is_file()


def test_report_refuses_another_datasets_truth(files, capsys, tmp_path):
    refused(
        capsys,
        "report",
        files["result"],
        "-o",
        tmp_path / "rep",
        "--truth",
        files["other_truth"],
        words=["another dataset"],
        absent=[tmp_path / "rep"],
    )


def test_truth_checked_against_the_simulation_record_without_checksum(files, tmp_path):
    """A truth without data_sha256 (older files): its (preset, seed, dose) against the
    input CXI's."""
    from diffxas.analysis.evaluate import check_truth_matches
    from diffxas.errors import InputError

    r = dataclasses.replace(fake_result(), input_path=str(files["good"]))
    check_truth_matches(r, fake_truth({"preset": "hand", "seed": 1, "dose": 1e5}), "r.h5", "t.h5")
    with pytest.raises(InputError, match="another dataset"):
        check_truth_matches(r, fake_truth({"preset": "hand", "seed": 2, "dose": 1e5}), "r.h5", "t.h5")


def test_simulation_records_its_data_checksum_in_the_truth(tmp_path):
    from types import SimpleNamespace

    from diffxas.app.pipeline import write_simulation

    cfg = SimpleNamespace(to_dict=dict, preset="hand", seed=1, dose=1e5)
    sim = SimpleNamespace(config=cfg, dataset=make_dataset(), truth=fake_truth({"seed": 1}))
    cxi, truth = write_simulation(sim, tmp_path / "s.cxi")
    assert io_truth.read_truth(truth).attrs["data_sha256"] == io_files.sha256_file(cxi)


@pytest.mark.parametrize(
    "pair, words",
    [
        (("result", "result"), ["the same results"]),
        (("result", "full2"), ["a result of all frames"]),
        (("even", "even"), ["the same results"]),
    ],
)
def test_split_refuses_what_is_not_two_halves(files, capsys, tmp_path, pair, words):
    js = tmp_path / "frc.json"
    refused(
        capsys,
        "evaluate",
        files[pair[0]],
        "--split",
        files[pair[1]],
        "--json",
        js,
        words=words,
        absent=[js],
    )


def test_split_of_two_halves_names_its_figure_after_the_json(files, capsys, tmp_path):
    a, b = tmp_path / "a_frc.json", tmp_path / "b_frc.json"
    assert run(capsys, "evaluate", files["even"], "--split", files["odd"], "--json", a)[0] == 0
    assert run(capsys, "evaluate", files["even"], "--split", files["odd"], "--json", b)[0] == 0
    assert (tmp_path / "a_frc.png").is_file() and (tmp_path / "b_frc.png").is_file()


# ----------------------------------------------------------------------------- values outside physics


@pytest.mark.parametrize(
    "method, opts, words",
    [
        ("joint", ["--set", "joint.reference_energy=1"], ["reference_energy"]),
        ("joint", ["--set", "joint.reference_energy=5000"], ["outside the scanned energies"]),
        ("two-step", ["--set", "twostep.reference_energy=5600"], ["outside the scanned energies"]),
        ("joint", ["--set", "joint.valid_jump_fraction=nan"], ["valid_jump_fraction"]),
        ("two-step", ["--set", "fit.smooth_sigma=nan"], ["smooth_sigma"]),
        ("two-step", ["--set", "fit.smooth_sigma=inf"], ["smooth_sigma"]),
        ("joint", ["--steps", "1000000000"], ["steps must be <="]),
        ("two-step", ["--iterations", "1000000000"], ["epochs must be <="]),
        ("joint", ["--set", "joint.log_every=0"], ["log_every"]),
        ("joint", ["--set", "joint.checkpoint_every=0"], ["checkpoint_every"]),
    ],
)
def test_values_outside_physics_refused_before_work(files, capsys, tmp_path, method, opts, words):
    out = tmp_path / "r.h5"
    refused(
        capsys,
        "reconstruct",
        files["good"],
        "--method",
        method,
        "-o",
        out,
        *opts,
        words=words,
        absent=[out, tmp_path / "r.h5.ckpt", tmp_path / "r.h5.ckpt.d"],
    )


# ----------------------------------------------------------------------------- smaller


def test_nan_inside_valid_pixels(tmp_path, capsys, files):
    """info warns; evaluate counts such a pixel as not covered (coverage < 1)."""
    from diffxas.analysis.evaluate import evaluate

    r = fake_result(sha=files["sha_good"], nan_inside=True)
    p = io_results.write_result(tmp_path / "nan.h5", r)
    rc, _out, err = run(capsys, "info", p)
    assert rc == 0 and "edge_energy: 1 of 144 valid pixels are NaN/inf" in err
    m = evaluate(r, fake_truth({}))
    assert m["coverage"] == pytest.approx(143 / 144) and m["n_valid_nonfinite"] == 1


def test_info_on_a_fifo_does_not_hang(tmp_path):
    """A subprocess with a timeout: opening a FIFO blocks inside C code, where no signal
    handler of the test process could interrupt it."""
    import subprocess
    import sys

    fifo = tmp_path / "pipe.cxi"
    os.mkfifo(fifo)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "diffxas.app.cli", "info", str(fifo)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("diffxas info blocked on a FIFO")
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "not a regular file" in lines[0] and str(fifo) in lines[0]


def test_unknown_method_in_results_refused(tmp_path, capsys):
    p = io_results.write_result(tmp_path / "foo.h5", fake_result())
    with h5py.File(p, "r+") as f:
        f.attrs["method"] = "foo"
    refused(capsys, "info", p, words=["foo.h5", "unknown method 'foo'"])


SWEEP = """
[base]
methods = ["joint"]
[base.simulate]
preset = "tiny"
[base.joint]
steps = 2
[axes]
{axis} = [1, 2]
"""


@pytest.mark.parametrize(
    "axis, extra, words",
    [
        ('"joint.stepz"', [], ["unknown key", "stepz"]),
        ('"joint.steps"', ["--set", "joint.lr_ampp=1"], ["unknown key", "lr_ampp"]),
        ('"joint.steps"', ["--workers", "0"], ["--workers"]),
        ('"joint.steps"', ["-o", "FILE"], ["is not a folder"]),
    ],
)
def test_sweep_dry_run_rejects_typos_and_bad_options(tmp_path, capsys, axis, extra, words):
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP.format(axis=axis))
    (tmp_path / "FILE").write_text("x")
    out = ["-o", tmp_path / "FILE"] if "-o" in extra else ["-o", tmp_path / "out"]
    extra = [e for e in extra if e not in ("-o", "FILE")]
    refused(capsys, "sweep", spec, *out, "--dry-run", *extra, words=words, absent=[tmp_path / "out"])


def test_empty_probe_is_named_not_divergence():
    from diffxas.errors import InputError
    from diffxas.solvers.twostep.epie import EpieConfig, run_epie

    ds = make_dataset()
    ds = dataclasses.replace(ds, illumination=np.zeros((ds.n_energies, 16, 16), np.complex64))
    with pytest.raises(InputError, match="initial probe of energy 5450.0 eV is empty"):
        run_epie(ds, EpieConfig(epochs=1))


def test_resume_refusal_names_the_orientation(tmp_path):
    from diffxas.app.pipeline import _checkpoint_meta, _meta_path, reconstruct
    from diffxas.errors import InputError
    from diffxas.solvers.joint.config import JointConfig

    cfg = JointConfig.make(steps=1)
    ckpt = tmp_path / "r.h5.ckpt"
    ckpt.write_bytes(b"x")
    sel = {"half": None, "energy_indices": None, "orientation": {"applied": "rot180"}}
    _meta_path("joint", ckpt).write_text(json.dumps(_checkpoint_meta("joint", cfg, "abc", sel)))
    now = dict(sel, orientation={"applied": "none"})
    with pytest.raises(InputError, match="orientation differs: rot180 then, none now; pass --orientation rot180"):
        reconstruct(
            make_dataset(),
            "joint",
            cfg,
            checkpoint=ckpt,
            resume=True,
            input_sha256="abc",
            selection=now,
        )


def test_simulate_refuses_near_duplicate_energies(capsys, tmp_path):
    out = tmp_path / "s.cxi"
    refused(
        capsys,
        "simulate",
        out,
        "--preset",
        "tiny",
        "--energy-list",
        "5420,5420.0000005,5500",
        words=["closer than 1e-3 eV"],
        absent=[out],
    )
