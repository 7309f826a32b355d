"""Smoke tests of the benchmarks' floor logic and the plain numpy ePIE reference (fast)."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: benchmarks/

from benchmarks import common
from benchmarks.bench_epie import epoch_passes
from benchmarks.bench_numpy_epie import NumpyEpie, object_error


def test_ratio_below_the_physical_minimum_is_a_measurement_error():
    """A step of 6 FFT passes per frame cannot run in less than 6/4 of a 4-pass floor."""
    bad = common.judge_ratio(1.2, 1.0, common.JOINT_STEP_PASSES, common.FLOOR_PASSES)
    assert bad["ratio"] is None and bad["physical_min"] == 1.5
    assert "below the physical minimum" in bad["measurement_error"] and bad["ratio_measured"] == 1.2
    ok = common.judge_ratio(3.0, 1.0, 6, 4)
    assert ok["ratio"] == 3.0 and "measurement_error" not in ok
    assert common.judge_ratio(1.5, 1.0, 6, 4)["ratio"] == 1.5  # at the minimum: a (perfect) result
    # ePIE: 2 passes on the pixel grid, 4 with per-frame shifts and the probe updated
    assert common.judge_ratio(1.9, 1.0, epoch_passes(True, False), 2)["ratio"] is None
    assert common.judge_ratio(1.9, 1.0, epoch_passes(True, True), 2)["ratio"] == 1.9
    assert (epoch_passes(False, False), epoch_passes(True, False), epoch_passes(True, True)) == (3, 4, 2)


def test_floor_batchings():
    assert common.floor_batchings(1024) == [1024, 256, 64, 32]
    assert common.floor_batchings(40) == [40, 32]
    assert common.floor_batchings(16) == [16]


def test_floor_calls_do_the_transforms_and_are_interleaved_with_the_case():
    """The floor really transforms every measured frame (fft2 then ifft2 returns the input,
    float32 round-off), and the timing alternates case and floor batchings."""
    floors = common.fft_floor_calls(70, 8, passes=2, chunks=(32,))
    assert sorted(floors) == [32, 70]
    assert floors[32][1] == 64 and floors[70][1] == 70  # whole chunks only
    order = []

    def tagged(tag, call):
        def f():
            order.append(tag)
            return call()

        return f

    fl = {b: (tagged(f"floor{b}", c), n) for b, (c, n) in floors.items()}
    t = common.interleaved(tagged("case", lambda: jnp.zeros(3)), fl, 70, min_reps=2, min_time=0.0)
    assert order[:3] == ["case", "floor70", "floor32"]  # the first (untimed) run and the warm-ups
    assert order[3:] == ["case", "floor70", "floor32"] * t["reps"]
    assert t["floor"]["batch"] in (32, 70) and set(t["floor"]["batchings"]) == {"32", "70"}
    assert t["floor"]["median_s"] == min(v["median_s"] for v in t["floor"]["batchings"].values())
    assert len(t["loadavg"]["start"]) == 3 and "best_cpu_fft" not in t
    call, _ = floors[32]
    x_out = np.asarray(call())
    rng = np.random.default_rng(0)
    x_in = (rng.standard_normal((70, 8, 8)) + 1j * rng.standard_normal((70, 8, 8))).astype(np.complex64)
    # fft_floor_calls draws the all-frames batch first, then the chunked one; both from rng(0) in turn
    assert x_out.shape == (2, 32, 8, 8)
    assert np.all(np.isfinite(x_out))
    big = np.asarray(floors[70][0]()).reshape(70, 8, 8)
    np.testing.assert_allclose(big, x_in, atol=1e-5)


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch") is not None, reason="torch is importable")
def test_best_cpu_fft_is_skipped_without_torch():
    assert common.torch_fft_calls(64, 16) is None


def test_best_cpu_fft_with_torch():
    pytest.importorskip("torch")
    calls = common.torch_fft_calls(64, 16, passes=2)
    t = common.interleaved(
        lambda: jnp.zeros(1), common.fft_floor_calls(64, 16, passes=2), 64, min_reps=2, min_time=0.0, reference=calls
    )
    assert t["best_cpu_fft"]["library"] == "torch" and t["best_cpu_fft"]["median_s"] > 0


def test_numpy_epie_frame_update_is_the_classic_update():
    """Reference: diffxas.solvers.twostep.epie.epie_update (the 2009 ePIE update of one frame, checked against the
    amplitude loss's gradient in tests/test_epie.py); one frame, alpha = beta = 1; float32."""
    from diffxas.physics import forward
    from diffxas.solvers.twostep.epie import epie_update

    rng = np.random.default_rng(2)
    m = 16
    probe = (rng.standard_normal((m, m)) + 1j * rng.standard_normal((m, m))).astype(np.complex64)
    patch = np.exp(-0.1 * rng.random((m, m)) + 1j * rng.normal(0, 0.4, (m, m))).astype(np.complex64)
    truth = patch * np.exp(1j * rng.normal(0, 0.3, (m, m))).astype(np.complex64)
    counts = np.abs(np.asarray(forward.far_field(jnp.asarray(probe * truth)))) ** 2
    ref_o, ref_p = epie_update(jnp.asarray(patch), jnp.asarray(probe), jnp.asarray(counts), jnp.ones((m, m)))
    npe = NumpyEpie(counts[None].astype(np.float32), np.zeros((1, 2), int), patch, probe)
    npe.epoch(1.0, 1.0)
    scale = np.abs(np.asarray(ref_o)).max()
    np.testing.assert_allclose(npe.obj, np.asarray(ref_o), atol=2e-5 * scale)
    np.testing.assert_allclose(npe.probe, np.asarray(ref_p), atol=2e-5 * np.abs(np.asarray(ref_p)).max())


def test_object_error_removes_scale_and_phase_ramp():
    """Closed form: c * exp(i (a y + b x)) * truth has error 0; a 10 % amplitude change does not."""
    rng = np.random.default_rng(0)
    truth = np.exp(-0.2 * rng.random((24, 24)) + 1j * rng.normal(0, 0.5, (24, 24)))
    yy, xx = np.indices(truth.shape)
    lit = np.zeros(truth.shape, bool)
    lit[4:20, 3:21] = True
    est = 0.7 * np.exp(1j * (0.9 + 0.11 * yy - 0.07 * xx)) * truth
    assert object_error(est, truth, lit) < 1e-6
    bumped = est * np.where(xx > 12, 1.1, 1.0)
    assert object_error(bumped, truth, lit) > 0.02
