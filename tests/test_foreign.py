"""End to end on data from an independent simulator, written to the documented file format.

Nothing of diffxas is used to make the data: the simulator below is plain numpy and
xraydb, and the CXI file is written with h5py from docs/formats.md (energies in J, the
translation as the *sample* position, frames in fftshift order, each energy's own object
pixel size lambda z / (M p), probe power = photons per frame). Our own simulator shares
the forward model with the reconstructions, so it cannot catch a convention that the code
gets consistently wrong against its documentation; this test can.

The sample is physical rather than eq. 1: a V oxide sphere (N_V = 2.5e28 m^-3, 19 other
electrons per V as in LiVO2) on a Si3N4-like membrane, whose V scattering factor is
Chantler's f' + i f'' broadened by a Gaussian (sigma 1.5 eV, applied to both parts, so
they stay a Kramers-Kronig pair) and shifted by +1.5 eV in the left half (x < 0) and
-1.5 eV in the right half. No pre-edge peaks. What any correct reconstruction must give,
whatever the spectral model:

* the left half's edge 3.0 eV above the right half's (a mirrored or transposed map, a
  wrong translation sign or a wrong per-energy pixel size would not);
* N_V (atoms per area) = 2.5e28 x the sphere's thickness;
* Re[Ne]/N_V at the lowest energy = Z_V + f'_V(E_ref - shift) + 19 (truth computed from
  the same broadened table).

Tolerances are stated at each assertion, with the measured values.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from diffxas.data import cxi as io_cxi
from diffxas.data import orientation
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint import init as joint_init
from diffxas.solvers.joint import run as joint_run
from diffxas.solvers.twostep import run as twostep

xraydb = pytest.importorskip("xraydb")

R_E = 2.8179403262e-15  # m
HC_EVM = 1.23984198e-6  # eV m
EV_J = 1.602176634e-19
ENERGIES = np.array([5430.0, 5450, 5458, 5462, 5465, 5468, 5471, 5474, 5478, 5485, 5500, 5530])
M, DIST, PIX = 32, 0.63, 75e-6
N_V, N_OTHER, RADIUS, SHIFT = 2.5e28, 19.0, 0.45e-6, 1.5


def broadened_f(energies, shift):
    """Chantler f', f'' of V, Gaussian-broadened (sigma 1.5 eV), at ``energies - shift``."""
    grid = np.arange(5250.0, 5750.0, 0.1)
    f1, f2 = xraydb.f1_chantler("V", grid), xraydb.f2_chantler("V", grid)
    k = np.arange(-60, 61) * 0.1
    w = np.exp(-0.5 * (k / 1.5) ** 2)
    w /= w.sum()
    f1b, f2b = np.convolve(f1, w, "same"), np.convolve(f2, w, "same")
    e = np.asarray(energies, float) - shift
    return np.interp(e, grid, f1b), np.interp(e, grid, f2b)


def exit_object(x, y, e_ev):
    """Transmission (membrane included) at points (x, y), m, and energy e_ev: the sphere
    on a 500 nm membrane (phase -0.08 rad, |O|^2 0.98)."""
    lam = HC_EVM / e_ev
    t = 2 * np.sqrt(np.clip(RADIUS**2 - x**2 - y**2, 0, None))
    shift = np.where(x < 0, SHIFT, -SHIFT)
    out = np.empty(x.shape, complex)
    for s in (SHIFT, -SHIFT):
        f1, f2 = broadened_f([e_ev], s)
        sel = shift == s
        absorb = R_E * lam * N_V * f2[0] * t[sel]
        phase = -R_E * lam * N_V * (23 + f1[0] + N_OTHER) * t[sel]
        out[sel] = np.exp(-absorb + 1j * phase)
    return out * np.exp(-0.01 - 0.08j)


def write_foreign_cxi(path, dose=1e6, seed=0, guess=None, background=0.0):
    """``guess``: (FWHM m, curvature) of a Gaussian probe guess written as the illumination
    (the true probe: 300 nm, 0.4); None writes none. ``background``: expected incoherent
    counts per detector pixel per frame added to every frame before the noise (flat)."""
    rng = np.random.default_rng(seed)
    g = np.arange(-0.9e-6, 0.9001e-6, 0.12e-6)
    xs, ys = np.meshgrid(g, g)
    pos = np.stack([xs.ravel(), ys.ravel()], 1) + rng.uniform(-20e-9, 20e-9, (xs.size, 2))  # probe centres (x, y)
    q = np.arange(M) - M // 2
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 150
        for k, e in enumerate(ENERGIES):
            dx = HC_EVM / e * DIST / (M * PIX)
            xx, yy = np.meshgrid(q * dx, q * dx)  # probe window: column = x, row = y
            r2 = (xx**2 + yy**2) / (300e-9 / 2.3548) ** 2
            probe = np.exp(-0.5 * r2 + 0.4j * r2)
            probe *= np.sqrt(dose / np.sum(np.abs(probe) ** 2))
            frames = np.empty((len(pos), M, M), np.uint32)
            for j, (px, py) in enumerate(pos):
                psi = probe * exit_object(px + xx, py + yy, e)
                frames[j] = rng.poisson(np.abs(np.fft.fftshift(np.fft.fft2(psi, norm="ortho"))) ** 2 + background)
            en = f.create_group(f"entry_{k + 1}")
            inst = en.create_group("instrument_1")
            inst["source_1/energy"] = e * EV_J
            det = inst.create_group("detector_1")
            det["data"] = frames
            det["distance"] = DIST
            det["x_pixel_size"] = PIX
            det["y_pixel_size"] = PIX
            en["sample_1/geometry_1/translation"] = np.concatenate([-pos, np.zeros((len(pos), 1))], 1)
            en["data_1/data"] = h5py.SoftLink(f"/entry_{k + 1}/instrument_1/detector_1/data")
            if guess is not None:
                r2g = (xx**2 + yy**2) / (guess[0] / 2.3548) ** 2
                g = np.exp(-0.5 * r2g + 1j * guess[1] * r2g)
                inst["source_1/illumination"] = (g * np.sqrt(dose / np.sum(np.abs(g) ** 2))).astype(np.complex64)
    return path


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    return write_foreign_cxi(tmp_path_factory.mktemp("foreign") / "foreign.cxi")


@pytest.fixture(scope="module")
def foreign_poor_guess(tmp_path_factory):
    """The same scan (same seed) with a poor probe guess in the file: 450 nm, flat phase."""
    return write_foreign_cxi(tmp_path_factory.mktemp("foreign") / "guess.cxi", guess=(450e-9, 0.0))


@pytest.fixture(scope="module")
def foreign_background(tmp_path_factory):
    """The same scan with 1 photon per detector pixel per frame of flat incoherent background."""
    return write_foreign_cxi(tmp_path_factory.mktemp("foreign") / "background.cxi", background=1.0)


def _halves(res):
    """Median maps over the sphere's left and right halves (truth N_V >= 50 % of its
    maximum, at least 2 pixels from the dividing line)."""
    mp = res.maps
    h, w = mp.shape
    xs = mp.origin[0] + np.arange(w) * mp.pixel_size
    ys = mp.origin[1] + np.arange(h) * mp.pixel_size
    x, y = np.meshgrid(xs, ys)
    t = 2 * np.sqrt(np.clip(RADIUS**2 - x**2 - y**2, 0, None))
    core = (t >= 0.5 * 2 * RADIUS) & (np.asarray(mp.valid) > 0)
    left, right = core & (x < -2 * mp.pixel_size), core & (x > 2 * mp.pixel_size)
    out = {}
    for name, sel in (("left", left), ("right", right)):
        nv_rel = np.asarray(mp.n_v)[sel] / (N_V * t[sel])
        out[name] = {
            "edge": float(np.median(np.asarray(mp.edge_energy)[sel])),
            "ne": float(np.median(np.asarray(mp.ne_eff_per_nv)[sel])),
            "nv_rel": float(np.median(nv_rel)),
            "n": int(sel.sum()),
        }
    return out


def _truth_ne(shift):
    f1, _ = broadened_f([ENERGIES[0]], shift)
    return 23 + float(f1[0]) + N_OTHER


def test_reader_and_orientation_agree_with_the_documented_format(foreign):
    ds = io_cxi.read_cxi(foreign)
    np.testing.assert_allclose(ds.energies, ENERGIES, rtol=1e-12)
    assert ds.n_frames == 16 * 16 * len(ENERGIES) and ds.illumination is None
    chk = orientation.check_orientation(ds)
    assert chk.best == "none" and chk.confident, chk.summary()


@pytest.mark.parametrize("method", ["two-step", "joint", "joint, poor probe guess in the file"])
def test_both_methods_on_the_independent_simulator(foreign, foreign_poor_guess, method):
    ds = io_cxi.read_cxi(foreign_poor_guess if "guess" in method else foreign)
    if method == "two-step":
        res = twostep.reconstruct_two_step(ds, twostep.TwoStepConfig.fast())
    else:
        res = joint_run.reconstruct_joint(ds, joint_config.JointConfig.make(steps=300, log_every=100))
    if "guess" in method:
        # the short ePIE moves the guess far (overlap well below joint.FILE_PROBE_OVERLAP),
        # so every energy starts from the refined probe (without this: edge shift 0.12 eV,
        # N_V 0.43x)
        assert res.config["init"]["file_probe_overlap"] < joint_init.FILE_PROBE_OVERLAP
        assert "poor guess" in res.config["init"]["probes_from"]
    h = _halves(res)
    print(method, h, _truth_ne(SHIFT), _truth_ne(-SHIFT))
    assert h["left"]["n"] >= 10 and h["right"]["n"] >= 10
    # Measured (commit ad70ff9; left / right half): two-step (fast) edge difference 2.55 eV,
    # N_V 1.025 / 0.964 of the truth, Re[Ne]/N_V 37.36 / 37.16 (truth 37.16 / 37.07); joint
    # (300 steps) 2.69 eV, 1.004 / 0.992, 37.43 / 38.81; joint with the poor guess (300
    # steps) 3.03 eV, 1.007 / 1.000, 37.89 / 37.30. Before the joint's start probe was
    # re-centred (probe.centred_probe) its maps sat 1.1 px off and N_V read 1.14 / 0.77.
    # The chemical shift between the halves, 3.0 eV: within 0.7 eV (the edge is sampled
    # every 3-4 eV and is not eq. 1's erf; a mirrored, transposed or misplaced map gives
    # -3 or ~0 eV)
    assert h["left"]["edge"] - h["right"]["edge"] == pytest.approx(2 * SHIFT, abs=0.7)
    # N_V per area against 2.5e28 x the sphere's thickness: within 10 %
    for side in ("left", "right"):
        assert h[side]["nv_rel"] == pytest.approx(1.0, abs=0.10)
    # Re[Ne]/N_V at the lowest energy against the table's truth: within 2.5 electrons (7 %)
    assert h["left"]["ne"] == pytest.approx(_truth_ne(SHIFT), abs=2.5)
    assert h["right"]["ne"] == pytest.approx(_truth_ne(-SHIFT), abs=2.5)


@pytest.mark.parametrize("method", ["two-step", "joint"])
def test_both_methods_fit_the_background_of_the_independent_simulator(foreign_background, method):
    """1 photon per pixel per frame of flat background, 15x the darkest 4x4 detector
    block's coherent counts of these frames (0.056-0.068), written by the independent
    simulator; ``background = "flat"`` in both methods. The fitted level of every energy
    is within 15 % of 1 (measured: two-step 1.048-1.067, joint 1.045-1.061; the fit runs
    high by the coherent signal it leaves out of the dark pixels). The maps keep the edge
    and N_V tolerances of the run without a background (measured, left / right half:
    two-step edge difference 2.94 eV, N_V 0.950 / 1.024, Re[Ne]/N_V 36.77 / 37.96; joint
    2.81 eV, 0.955 / 0.963, 39.57 / 39.41; truth 3.0 eV, 1, 37.16 / 37.07). Re[Ne]/N_V
    gets 3 electrons (8 %) instead of 2.5: the joint's reads +2.4 / +2.3 here, against
    +0.3 / +1.7 on the frames without a background (commit ad70ff9), a cost of the
    background not understood (closing note, commit 85db098). On this sphere the half-medians
    barely feel the background even without the term (two-step 2.43 eV, 37.80 / 38.48;
    joint 2.75 eV, 38.27 / 39.38), so this test checks the level against an independent
    implementation, not the gain (docs/physics.md, "Detector background")."""
    import dataclasses

    ds = io_cxi.read_cxi(foreign_background)
    if method == "two-step":
        cfg = twostep.TwoStepConfig.fast()
        res = twostep.reconstruct_two_step(
            ds, dataclasses.replace(cfg, epie=dataclasses.replace(cfg.epie, background="flat"))
        )
    else:
        res = joint_run.reconstruct_joint(
            ds, joint_config.JointConfig.make(steps=300, log_every=100, background="flat")
        )
    h = _halves(res)
    print(method, np.round(res.background, 3), h, _truth_ne(SHIFT), _truth_ne(-SHIFT))
    np.testing.assert_allclose(res.background, 1.0, rtol=0.15)
    assert h["left"]["edge"] - h["right"]["edge"] == pytest.approx(2 * SHIFT, abs=0.7)
    for side in ("left", "right"):
        assert h[side]["nv_rel"] == pytest.approx(1.0, abs=0.10)
    assert h["left"]["ne"] == pytest.approx(_truth_ne(SHIFT), abs=3.0)
    assert h["right"]["ne"] == pytest.approx(_truth_ne(-SHIFT), abs=3.0)
