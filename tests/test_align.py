"""Alignment: phase unwrapping, sub-pixel registration, empty-region detection, background removal."""

import numpy as np
import pytest

from diffxas.physics.geometry import Grid
from diffxas.solvers.twostep.align import (
    align_stack,
    apply_shifts,
    estimate_shift,
    find_empty_region,
    illumination_map,
    register_stack,
    remove_background,
    to_common,
    unwrap_phase,
)


def blobs(n=48, seed=0):
    """Smooth 'particle' image: a few Gaussian blobs, zero background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n].astype(float)
    img = np.zeros((n, n))
    for _ in range(4):
        cy, cx = rng.uniform(0.35 * n, 0.65 * n, 2)
        s = rng.uniform(2.5, 5.0)
        img += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return img


def test_unwrap_phase_recovers_large_smooth_phase():
    n = 48
    yy, xx = np.mgrid[:n, :n]
    ph = 5.0 * np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / (2 * 8.0**2)) + 0.05 * xx - 2.0
    w = np.angle(np.exp(1j * ph))
    u = unwrap_phase(w)
    d = u - ph
    assert np.ptp(d) < 1e-9  # exact up to a constant multiple of 2 pi
    assert abs(d.mean() / (2 * np.pi) - round(d.mean() / (2 * np.pi))) < 1e-9
    # small phases pass unchanged
    small = 0.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    np.testing.assert_allclose(unwrap_phase(small), small, atol=1e-12)


@pytest.mark.parametrize("shift", [(0.3, -1.7), (2.25, 0.1), (-0.43, 0.61)])
def test_estimate_shift_subpixel(shift):
    img = blobs()
    moved = apply_shifts(img[None], np.array([shift]))[0]
    est = estimate_shift(img, moved, upsample=100)
    np.testing.assert_allclose(est, -np.asarray(shift), atol=0.02)
    # and applying the estimate brings it back
    back = apply_shifts(moved[None], est[None])[0]
    assert np.abs(back - img).max() < 0.02 * np.abs(img).max()


def test_register_stack_zero_mean_and_noise_robust():
    rng = np.random.default_rng(1)
    img = blobs()
    true = np.array([[0.0, 0.0], [0.4, -0.3], [-0.25, 0.5], [1.1, 0.2]])
    stack = np.stack([apply_shifts(img[None], s[None])[0] for s in true]) + 0.01 * rng.standard_normal((4,) + img.shape)
    est = register_stack(stack, np.ones_like(img), ref_index=0)
    expect = -(true - true.mean(axis=0))
    np.testing.assert_allclose(est, expect, atol=0.05)
    np.testing.assert_allclose(est.mean(axis=0), 0.0, atol=1e-9)


def test_empty_region_and_background_removal():
    rng = np.random.default_rng(2)
    n, kn = 48, 5
    part = np.clip(blobs(n) - 0.1, 0.0, None)  # compact particles on an exactly empty membrane
    mat = part > 0
    yy, xx = np.mgrid[:n, :n]
    yn, xn = (yy - 0.5 * (n - 1)) / n, (xx - 0.5 * (n - 1)) / n
    A = np.stack([0.3 * part + 0.05 * k for k in range(kn)])  # per-energy amplitude offsets
    P = np.stack([-0.8 * part + 0.3 * k + 0.4 * yn - 0.7 * k * xn for k in range(kn)])  # offsets and ramps
    A += 0.002 * rng.standard_normal(A.shape)
    P += 0.002 * rng.standard_normal(P.shape)
    wl = np.zeros((n, n), bool)
    wl[4:-4, 4:-4] = True
    empty = find_empty_region(A, P, wl)
    assert empty.sum() > 0.2 * wl.sum()
    assert not np.any(empty & mat)  # never on the particle
    assert np.all(empty <= wl)
    a, p, coef = remove_background(A, P, empty)
    np.testing.assert_allclose(a[:, wl], np.broadcast_to(0.3 * part, A.shape)[:, wl], atol=0.01)
    np.testing.assert_allclose(p[:, wl], np.broadcast_to(-0.8 * part, P.shape)[:, wl], atol=0.01)


def test_to_common_and_illumination():
    common = Grid(pixel_size=10e-9, shape=(40, 40), origin=(-195e-9, -195e-9))
    fine = Grid(
        pixel_size=9.8e-9, shape=(42, 42), origin=(common.center[0] - 20.5 * 9.8e-9, common.center[1] - 20.5 * 9.8e-9)
    )
    x, y = fine.coords()
    X, Y = np.meshgrid(x, y)
    A = 0.2 * np.exp(-(X**2 + Y**2) / (2 * (60e-9) ** 2))
    P = -0.6 * np.exp(-(X**2 + Y**2) / (2 * (60e-9) ** 2))
    obj = np.exp(-A + 1j * P)[None]
    a_c, p_c = to_common(obj, [fine], common)
    xc, yc = common.coords()
    Xc, Yc = np.meshgrid(xc, yc)
    ref = np.exp(-(Xc**2 + Yc**2) / (2 * (60e-9) ** 2))
    np.testing.assert_allclose(a_c[0], 0.2 * ref, atol=2e-3)
    np.testing.assert_allclose(p_c[0], -0.6 * ref, atol=5e-3)
    probe = np.zeros((8, 8), np.complex64)
    probe[3:5, 3:5] = 1
    corners = [np.array([[10, 10], [10, 20], [20, 10], [20, 20]])]
    cov = illumination_map(probe[None], corners, [fine], common)
    assert cov.max() == pytest.approx(1.0)
    assert cov[0, 0] < 0.05 and cov[20, 20] < 0.05


def test_align_stack_end_to_end_with_offsets():
    """Two energies on slightly different grids, different phase offsets/ramps and a shift."""
    common = Grid(pixel_size=10e-9, shape=(64, 64), origin=(-315e-9, -315e-9))
    grids = [
        common,
        Grid(
            pixel_size=9.9e-9,
            shape=(64, 64),
            origin=(common.center[0] - 31.5 * 9.9e-9, common.center[1] - 31.5 * 9.9e-9),
        ),
    ]
    objs = []
    shift_true = np.array([0.0, 0.35])  # (rows, cols) in pixels of energy 1
    for k, g in enumerate(grids):
        x, y = g.coords()
        X, Y = np.meshgrid(x, y)
        if k == 1:
            X = X - shift_true[1] * g.pixel_size
            Y = Y - shift_true[0] * g.pixel_size
        r2 = (X / 90e-9) ** 2 + (Y / 70e-9) ** 2
        blob = np.exp(-r2 / 2) + 0.5 * np.exp(-((X - 50e-9) ** 2 + Y**2) / (2 * (30e-9) ** 2))
        A = 0.1 * blob + (0.02 if k else 0.0)
        lit = np.exp(-(((X**2 + Y**2) / (250e-9) ** 2) ** 8))  # ePIE's offsets/ramps live where it is lit
        P = -0.5 * blob + lit * ((0.8 if k else -0.3) + 1e6 * k * X)
        objs.append(np.exp(-A * lit + 1j * P))
    xc, yc = common.coords()
    cov = np.exp(-(((xc[None, :] ** 2 + yc[:, None] ** 2) / (190e-9) ** 2) ** 4))
    st = align_stack(np.stack(objs), grids, common, [5420.0, 5480.0], register=True, coverage=cov)
    # energy 1 is displaced by +0.35 px (its pixels) along columns relative to energy 0
    assert abs((st.shifts[0, 1] - st.shifts[1, 1]) - 0.35 * 0.99) < 0.03, st.shifts
    assert st.empty.sum() > 100
    # after alignment the two energies agree
    d = st.phase[1] - st.phase[0]
    assert np.sqrt(np.mean(d[st.well_lit] ** 2)) < 0.01
    assert np.abs(st.absorption[:, st.empty].mean(axis=1)).max() < 1e-4  # membrane is the zero of A
