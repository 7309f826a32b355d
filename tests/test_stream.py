"""Tests of the streaming joint solver (diffxas.solvers.joint.stream) and the memory-mode choice.

Reference: the in-memory full-batch (or mini-batch) step of diffxas.solvers.joint on the same
``tiny`` data (3 energies, 243 frames of 32 x 32, chunks of 64 -> 4 chunks, the last one
padded). The streamed step reads the frames from a gzip-compressed, chunked CXI file
(``io.open_cxi``); the in-memory one from ``io.read_cxi`` of the same file. Only the order
of float32 sums differs (chunk by chunk on the host vs the scan's forward/backward), so:

* loss: 1e-5 relative (observed <= 1e-7);
* gradients, via Adam's first moment after step 1 (= 0.1 x gradient): 1e-4 relative L2 per
  leaf (observed <= 1.4e-5);
* parameters after 3 Adam steps: 1e-3 of the parameter change, relative L2 per leaf
  (observed <= 6e-5; Adam normalises each element by its gradient RMS, so rounding in
  near-zero gradients is amplified, as in tests/test_parallel.py).
"""

from __future__ import annotations

import logging

import h5py
import jax
import numpy as np
import pytest

from diffxas.data import cxi as io_cxi
from diffxas.data import results as io_results
from diffxas.errors import ConfigError
from diffxas.physics import scattering as joint_scattering
from diffxas.simulate.presets import preset, simulate
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import model as joint_model
from diffxas.solvers.joint import run as joint_run
from diffxas.solvers.joint import stream

ENERGIES = (5420.0, 5466.0, 5484.0)


@pytest.fixture(scope="module")
def cxi(tmp_path_factory):
    sim = simulate(preset("tiny", energies=ENERGIES))
    path = tmp_path_factory.mktemp("stream") / "tiny3.cxi"
    io_cxi.write_cxi(path, sim.dataset, compression="gzip", chunk_frames=16)
    return path


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def _array_leaves(tree):
    return [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]


@pytest.mark.parametrize(
    "kw",
    [
        # full batch, every gradient path (with a flat incoherent background)
        dict(loss="poisson", prior="none", tv_weight=1e3, lr_positions=0.05, background="flat"),
        # mini-batch: 2 chunks of 64, the last one padded; a background map per energy
        dict(batch_size=100, lr_positions=0.05, background="map"),
    ],
    ids=["full-tv-positions-background", "minibatch-background-map"],
)
def test_streamed_step_equals_in_memory(cxi, kw, monkeypatch):
    monkeypatch.setattr(stream, "host_available_bytes", lambda: 0)  # read the file every step (no host cache)
    cfg = joint_config.JointConfig.make(steps=3, chunk_size=64, init="stxm", probe_start=0, shape_start=0, **kw)
    runs = {}
    for mem, ds in (("device", io_cxi.read_cxi(cxi)), ("stream", io_cxi.open_cxi(cxi))):
        solver, state, ctx = joint_run.prepare_joint(ds, cfg.replace(memory=mem))
        assert ctx["memory"]["mode"] == mem
        s0, states, losses = state, [], []
        for _ in range(3):
            state, loss = solver.step(state)
            states.append(state)
            losses.append(float(loss))
        runs[mem] = (s0, states, losses, solver)
    (s0, dev, l_dev, sd), (s0s, st, l_st, ss) = runs["device"], runs["stream"]
    assert isinstance(ss, stream.StreamSolver) and isinstance(ss.frames, io_cxi.CxiFrames)
    assert ss.prob.frames.size == 0  # nothing of the frames on the device
    for a, b in zip(_array_leaves(s0.params), _array_leaves(s0s.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same start
    np.testing.assert_allclose(l_st, l_dev, rtol=1e-5)
    for a, b in zip(_array_leaves(dev[0].opt_state), _array_leaves(st[0].opt_state)):
        assert _rel(a, b) < 1e-4
    p0 = _array_leaves(s0.params)
    for a, b, z in zip(_array_leaves(dev[2].params), _array_leaves(st[2].params), p0):
        change = np.asarray(a, np.float64) - np.asarray(z, np.float64)
        if np.any(change):
            assert _rel(change, np.asarray(b, np.float64) - np.asarray(z, np.float64)) < 1e-3
    assert np.any(np.asarray(dev[2].params.dpos)), "position corrections were not exercised"
    assert np.any(np.asarray(dev[2].params.background)), "the background was not exercised"
    if cfg.optim.batch_size is None:  # the full-batch loss of the parameters, without a step
        assert float(ss.loss(st[2].params)) == pytest.approx(float(sd.loss(st[2].params)), rel=1e-5)


def test_device_mode_from_lazy_source_equals_in_memory(cxi):
    """Device mode with an open_cxi source fills the chunked device array chunk by chunk:
    the same array (exactly) as from read_cxi's in-memory frames."""
    cfg = joint_config.JointConfig.make(chunk_size=64)
    edge = joint_scattering.VEdge.from_tables("V")
    sc = joint_model.Scales(amp=1.0, n_other=1.0, e_mid=5480.0, e_half=61.0)
    a, _, _ = joint_model.build_problem(io_cxi.read_cxi(cxi), cfg, edge, sc)
    b, _, _ = joint_model.build_problem(io_cxi.open_cxi(cxi), cfg, edge, sc)
    assert a.frames.shape == b.frames.shape == (4, 61, 32, 32)
    np.testing.assert_array_equal(np.asarray(a.frames), np.asarray(b.frames))
    c, _, _ = joint_model.build_problem(io_cxi.open_cxi(cxi), cfg, edge, sc, frames_on_device=False)
    assert c.frames.shape == (4, 61, 0, 0)
    np.testing.assert_array_equal(np.asarray(c.frame_id), np.asarray(a.frame_id))


def test_memory_plan_and_log_line(caplog):
    """The mode follows the budget; one INFO line says which and why."""
    args = dict(
        n_frames=28000,
        n_chunks=55,
        chunk=510,
        n_energies=40,
        frame_size=256,
        map_shape=(746, 806),
        grid_shape=(764, 824),
        source="data.cxi",
    )
    est = stream.memory_estimate(55, 510, 40, 256, (746, 806), (764, 824))
    assert est["frames"] == 4 * 256**2 * 55 * 510
    assert est["stream"] < est["device"] - 0.8 * est["frames"]  # the frames leave; chunks in flight + accumulators come
    # the seed-size dataset (docs/scaling.md section 4): ~6.8 GiB of frames, ~10-11 GiB in all
    assert 6.5 < est["frames"] / 2**30 < 7.0 and 9.5 < est["device"] / 2**30 < 11.5
    with caplog.at_level(logging.INFO, logger="diffxas"):
        p = stream.plan_memory(joint_config.JointConfig.make(memory_budget_gib=8.0), **args)
    assert p.mode == "stream" and p.budget_bytes == 8 * 2**30
    (rec,) = [r for r in caplog.records if r.name == "diffxas"]
    assert "\n" not in rec.message
    assert rec.message.startswith("joint: streaming frames from ") and "data.cxi" in rec.message
    assert "in 55 chunks of 510" in rec.message and "> budget 8 GiB (memory_budget_gib)" in rec.message
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffxas"):
        p = stream.plan_memory(joint_config.JointConfig.make(memory_budget_gib=80.0), **args)
    assert p.mode == "device"
    assert "joint: frames on device" in caplog.text and "<= budget 80 GiB" in caplog.text
    assert stream.plan_memory(joint_config.JointConfig.make(memory="stream"), **args).mode == "stream"
    assert (
        stream.plan_memory(joint_config.JointConfig.make(memory="device", memory_budget_gib=1.0), **args).mode
        == "device"
    )
    # several devices: streaming is single-device
    assert stream.plan_memory(joint_config.JointConfig.make(memory_budget_gib=1.0), **args, n_shards=4).mode == "device"
    with pytest.raises(ConfigError, match="one device"):
        stream.plan_memory(joint_config.JointConfig.make(memory="stream"), **args, n_shards=4)
    budget, what = stream.default_budget()  # CPU here: half the available host memory
    assert budget is None or (budget > 0 and what)


def test_config_validation_and_toml(tmp_path):
    from diffxas.app import config as C

    for bad in (dict(memory="disk"), dict(memory_budget_gib=0.0), dict(memory_budget_gib=float("nan"))):
        with pytest.raises(ConfigError) as ei:
            joint_config.JointConfig.make(**bad)
        assert "\n" not in str(ei.value) and "memory" in str(ei.value)
    p = tmp_path / "c.toml"
    p.write_text('[joint]\nmemory = "stream"\nmemory_budget_gib = 2.5\n')
    cfg = C.build_section(C.load_config(p), "joint")
    assert cfg.memory.mode == "stream" and cfg.memory.budget_gib == 2.5
    assert C.build_section({"joint": {"memory_budget_gib": "none"}}, "joint").memory.budget_gib is None


def test_cli_joint_streams_from_the_file(cxi, tmp_path, capsys, monkeypatch):
    """`diffxas reconstruct --method joint` on a file larger than the (forced) budget: stream
    mode from the lazy source, the log line on stderr, the mode recorded in the result."""
    from diffxas.app.cli import main

    monkeypatch.setattr(stream, "host_available_bytes", lambda: 0)
    out = tmp_path / "r.h5"
    rc = main(
        [
            "reconstruct",
            str(cxi),
            "--method",
            "joint",
            "-o",
            str(out),
            "--steps",
            "2",
            "--no-checkpoint",
            "--no-progress",
            "--set",
            "joint.memory_budget_gib=0.001",
            "--set",
            "joint.init=stxm",
            "--set",
            "joint.chunk_size=8",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("joint: ") and "warning" not in ln]
    assert len(lines) == 1 and f"streaming frames from {cxi} (read every step" in lines[0], cap.err
    assert "in 31 chunks of 8" in lines[0] and "> budget 1.02 MiB (memory_budget_gib)" in lines[0]
    r = io_results.read_result(out)
    assert r.config["memory"]["mode"] == "stream" and r.config["memory"]["requested"] == "auto"
    assert r.config["joint"]["memory"]["budget_gib"] == 0.001  # recorded nested
    assert np.isfinite(r.history["loss"]).all()
    # a damaged chunk in the middle of the file: one line, no traceback
    with h5py.File(cxi) as f:
        info = f["entry_2/instrument_1/detector_1/data"].id.get_chunk_info(1)
    bad = tmp_path / "bad.cxi"
    raw = bytearray(cxi.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = b"\xff" * info.size
    bad.write_bytes(bytes(raw))
    rc = main(
        [
            "reconstruct",
            str(bad),
            "--method",
            "joint",
            "-o",
            str(tmp_path / "b.h5"),
            "--steps",
            "1",
            "--no-checkpoint",
            "--no-progress",
            "--set",
            "joint.memory=stream",
            "--set",
            "joint.init=stxm",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("diffxas: error: ") and "/entry_2/instrument_1/detector_1/data" in err[-1]
    assert "Traceback" not in "\n".join(err)
