"""Evaluation against ground truth (hand-made maps with known errors) and FRC."""

import json

import numpy as np
import pytest

from diffxas.analysis.evaluate import blur_matched_error, cluster_agreement, evaluate, format_metrics, history_summary
from diffxas.analysis.frc import frc, frc_maps, resolution, threshold_curve
from diffxas.analysis.resample import resample_truth
from diffxas.maps import MAP_FIELDS, ChemMaps, Result, Truth

PX = 40e-9  # coarse (result) pixel, m


def coarse_truth(h=12, w=16):
    """Coarse truth: two domains in a rectangle particle (rows 2..9, cols 2..13), rim
    of low n_v (row 1) that the 0.25 x max rule excludes, vacuum elsewhere."""
    lab = np.full((h, w), -1, np.int16)
    lab[2:10, 2:8] = 0
    lab[2:10, 8:14] = 1
    nv = np.zeros((h, w))
    nv[2:10, 2:14] = 1e20
    nv[2:10, 8:14] = 2e20
    nv[1, 2:14] = 0.1e20  # thin edge, below 0.25 * max
    part = nv > 0
    ee = np.where(lab == 1, 5482.0, 5480.0)
    maps = {
        "n_v": nv,
        "edge_energy": np.where(part, ee, np.nan),
        "pre_edge_norm": np.where(part, np.where(lab == 1, 0.4, 0.9), np.nan),
        "ne_eff_per_nv": np.where(part, np.where(lab == 1, 21.0, 19.0), np.nan),
        "edge_width": np.where(part, 2.0, np.nan),
        "edge_jump": nv * 1e-21,
        "pre_edge": nv * 1e-22,
    }
    return maps, lab


def fine_truth(maps, lab, f=2):
    """The coarse truth sampled f x finer (piecewise constant blocks), aligned grids."""
    d = PX / f
    o = -0.5 * PX + 0.5 * d  # fine pixel [0, 0] centre so that block edges coincide
    up = lambda a: np.kron(a, np.ones((f, f)))  # noqa: E731
    return Truth(
        maps={k: up(v) for k, v in maps.items()},
        labels=up(lab).astype(np.int16),
        domain_names=["V4+", "V5+"],
        params={},
        pixel_size=d,
        origin=(o, o),
        energies=np.linspace(5460, 5500, 5),
        reference_energy=5450.0,
    )


def chem(maps, valid=None, **over):
    m = dict(maps)
    m.update(over)
    if valid is None:
        valid = np.isfinite(m["edge_energy"])
    return ChemMaps(
        **{k: np.where(valid, m[k], np.nan) for k in MAP_FIELDS},
        valid=valid,
        pixel_size=PX,
        origin=(0.0, 0.0),
        reference_energy=5450.0,
        delta_f2_v=3.4,
        scattering_table="test",
    )


def test_resample_exact_on_blocks():
    # Reference: the coarse maps the fine truth was made from; exact (rtol 1e-12).
    maps, lab = coarse_truth()
    tr = resample_truth(fine_truth(maps, lab), PX, (0.0, 0.0), lab.shape)
    for k, v in maps.items():
        np.testing.assert_allclose(tr[k], v, rtol=1e-12, equal_nan=True, err_msg=k)
    np.testing.assert_array_equal(tr["labels"], lab)
    np.testing.assert_allclose(tr["area_fraction"], 1.0)
    # 3x finer too (odd ratio): still exact.
    tr3 = resample_truth(fine_truth(maps, lab, f=3), PX, (0.0, 0.0), lab.shape)
    np.testing.assert_allclose(tr3["edge_energy"], maps["edge_energy"], rtol=1e-12, equal_nan=True)


def test_resample_mixed_pixel_weights():
    # A coarse pixel straddling two fine columns of different content, by hand:
    # extensive = area mean, intensive = n_v-weighted mean. Exact to 1e-12.
    d = PX / 2
    nv = np.array([[1e20, 3e20]] * 2)
    ee = np.array([[5480.0, 5484.0]] * 2)
    t = Truth(
        maps={"n_v": nv, "edge_energy": ee},
        labels=np.array([[0, 1]] * 2, np.int16),
        domain_names=["a", "b"],
        params={},
        pixel_size=d,
        origin=(-0.5 * d, -0.5 * d),
        energies=np.zeros(1),
        reference_energy=0.0,
    )
    tr = resample_truth(t, PX, (0.0, 0.0), (1, 1))
    assert tr["n_v"][0, 0] == pytest.approx(2e20, rel=1e-12)
    assert tr["edge_energy"][0, 0] == pytest.approx((5480 * 1 + 5484 * 3) / 4, rel=1e-12)
    # Outside the truth grid: NaN, label -1.
    tr = resample_truth(t, PX, (10 * PX, 0.0), (1, 1))
    assert np.isnan(tr["n_v"][0, 0]) and tr["labels"][0, 0] == -1


def test_constant_offset_bias_and_rmse():
    # Reference: edge energy + 0.5 eV everywhere -> bias 0.5, RMSE 0.5 (rtol 1e-9).
    maps, lab = coarse_truth()
    truth = fine_truth(maps, lab)
    res = chem(maps, edge_energy=maps["edge_energy"] + 0.5)
    m = evaluate(res, truth)
    assert m["n_region"] == 8 * 12  # the thin edge row is excluded
    assert m["coverage"] == 1.0
    assert m["edge_energy"]["bias"] == pytest.approx(0.5, rel=1e-9)
    assert m["edge_energy"]["rmse"] == pytest.approx(0.5, rel=1e-9)
    assert m["pre_edge_norm"]["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert m["n_v"]["rel_rms"] == pytest.approx(0.0, abs=1e-12)
    json.dumps(m, allow_nan=False)


def test_alternating_error_and_coverage_and_nv():
    # Reference: +-0.3 eV checkerboard -> RMSE 0.3, bias 0 (abs 1e-9); 24 of the 96
    # region pixels invalid -> coverage 0.75 (exact); n_v x1.1 on half the valid pixels,
    # x0.8 on the other half -> relative RMS sqrt((0.1^2 + 0.2^2)/2), median |.| 0.15.
    maps, lab = coarse_truth()
    truth = fine_truth(maps, lab)
    rr, cc = np.indices(lab.shape)
    sign = np.where((rr + cc) % 2 == 0, 1.0, -1.0)
    valid = np.isfinite(maps["edge_energy"]).copy()
    valid[2:4, 2:14] = False  # 24 pixels, 12 of each checkerboard sign
    nvf = np.where(cc % 2 == 0, 1.1, 0.8)  # columns alternate: equal counts in the valid part
    res = chem(maps, valid=valid, edge_energy=maps["edge_energy"] + 0.3 * sign, n_v=maps["n_v"] * nvf)
    m = evaluate(res, truth)
    assert m["coverage"] == 0.75
    assert m["edge_energy"]["n"] == 72
    assert m["edge_energy"]["rmse"] == pytest.approx(0.3, rel=1e-9)
    assert m["edge_energy"]["bias"] == pytest.approx(0.0, abs=1e-9)
    assert m["n_v"]["rel_rms"] == pytest.approx(np.sqrt((0.01 + 0.04) / 2), rel=1e-9)
    assert m["n_v"]["rel_median_abs"] == pytest.approx(0.15, rel=1e-9)
    assert m["n_v"]["rel_bias"] == pytest.approx(-0.05, rel=1e-9)


def _texture(shape=(72, 80), seed=0):
    """A smooth random field (white noise blurred by 4 px, std ~1) inside an ellipse; NaN outside."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.normal(size=shape), 4.0)
    f = f / f.std()
    yy, xx = np.indices(shape)
    inside = ((yy - shape[0] / 2) / (0.42 * shape[0])) ** 2 + ((xx - shape[1] / 2) / (0.42 * shape[1])) ** 2 < 1
    return np.where(inside, f, np.nan), inside


@pytest.mark.parametrize("sigma,noise", [(0.0, 0.05), (1.3, 0.05), (2.5, 0.1)])
def test_blur_matched_error_recovers_blur_and_noise(sigma, noise):
    # Reference: the map is the truth blurred (inside its support, the same normalised
    # convolution) by a known sigma plus white noise of known std, so the best match is at
    # that sigma (tolerance 0.15 px: the noise realisation moves the minimum a little) and
    # the RMSE there is the noise's (rel 5 %: ~4000 pixels), while the plain RMSE is larger.
    from diffxas.analysis.evaluate import _gaussian_blur_in_support

    ref, inside = _texture()
    est = _gaussian_blur_in_support(ref, inside, sigma) + noise * np.random.default_rng(1).normal(size=ref.shape)
    r = blur_matched_error(est, ref, inside, pixel_size=15e-9)
    assert r["matched_blur_px"] == pytest.approx(sigma, abs=0.15)
    assert r["matched_blur_m"] == pytest.approx(r["matched_blur_px"] * 15e-9, rel=1e-12)
    assert r["matched_rmse"] == pytest.approx(noise, rel=0.05)
    assert r["rmse_unblurred"] >= r["matched_rmse"]
    if sigma > 0:
        assert r["rmse_unblurred"] > 1.5 * noise
    assert not r["at_bound"]


def test_blur_error_curve_agrees_with_the_search():
    # the curve at the searched sigma equals the reported matched RMSE (rel 1e-12), and no
    # point of a fine curve lies below it by more than the search tolerance allows (1e-3)
    from diffxas.analysis.evaluate import _gaussian_blur_in_support, blur_error_curve

    ref, inside = _texture()
    est = _gaussian_blur_in_support(ref, inside, 1.7) + 0.05 * np.random.default_rng(2).normal(size=ref.shape)
    r = blur_matched_error(est, ref, inside)
    c = blur_error_curve(est, ref, inside, [r["matched_blur_px"]])
    assert c[0] == pytest.approx(r["matched_rmse"], rel=1e-12)
    fine = blur_error_curve(est, ref, inside, np.linspace(0, 4, 81))
    assert fine.min() >= r["matched_rmse"] * (1 - 1e-3)
    assert np.all(np.isnan(blur_error_curve(est, ref, np.zeros_like(inside), [0.0, 1.0])))


def test_blur_matched_error_edge_cases():
    ref, inside = _texture()
    # exact map: best match is the unblurred truth, RMSE 0 (abs 1e-12)
    r = blur_matched_error(ref.copy(), ref, inside)
    assert r["matched_blur_px"] == 0.0 and r["matched_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert r["matched_blur_m"] is None  # no pixel size given
    # a map blurrier than the search range is reported at the bound
    from diffxas.analysis.evaluate import _gaussian_blur_in_support

    r = blur_matched_error(_gaussian_blur_in_support(ref, inside, 8.0), ref, inside, max_sigma_px=2.0)
    assert r["at_bound"] and r["matched_blur_px"] == pytest.approx(2.0, abs=0.02)
    # nothing to compare: all None
    r = blur_matched_error(ref, ref, np.zeros_like(inside))
    assert all(v is None for v in r.values())


def test_evaluate_reports_blur_matched_error():
    # evaluate() adds the resolution-matched numbers for the descriptors (not edge_width)
    # and the CLI summary prints them; an exact offset has nothing to gain from blurring.
    maps, lab = coarse_truth()
    truth = fine_truth(maps, lab)
    m = evaluate(chem(maps, edge_energy=maps["edge_energy"] + 0.5), truth)
    assert m["edge_energy"]["matched_blur_px"] == 0.0
    assert m["edge_energy"]["matched_rmse"] == pytest.approx(0.5, rel=1e-9)
    assert "matched_rmse" not in m["edge_width"]
    assert "best match: truth blurred by sigma 0.00 px" in format_metrics(m)
    json.dumps(m, allow_nan=False)


def test_cluster_ari_confusion_and_history():
    maps, lab = coarse_truth()
    truth = fine_truth(maps, lab)
    res_maps = chem(maps)
    K = 3
    # Clusters = truth domains with swapped ids -> ARI 1 (exact), matched accuracy 1.
    clab = np.where(lab >= 0, 1 - lab, -1).astype(np.int16)
    clab[1, 2:14] = -1
    result = Result(
        method="joint",
        maps=res_maps,
        energies=np.linspace(5460, 5500, K),
        absorption=np.zeros((K,) + lab.shape),
        phase=np.zeros((K,) + lab.shape),
        probes=np.ones((K, 4, 4), np.complex64),
        probe_pixel_size=np.full(K, PX),
        history={"loss": np.array([5.0, 2.0, 1.5, np.nan]), "time": np.array([1.0, 1.0, 0.5])},
        config={},
        clusters={"labels": clab, "k": 2},
    )
    m = evaluate(result, truth)
    cl = m["clusters"]
    assert cl["ari"] == 1.0 and cl["matched_accuracy"] == 1.0
    assert {(p["domain"], p["cluster"]) for p in cl["matching"]} == {("V4+", 1), ("V5+", 0)}
    assert m["history"]["final_loss"] == 1.5 and m["history"]["iterations"] == 4
    assert m["history"]["wall_time_s"] == 2.5
    assert m["method"] == "joint"
    json.dumps(m, allow_nan=False)


def test_cluster_agreement_known_confusion():
    # 10 pixels of domain 0, 10 of domain 1; 2 of domain 1 put in domain 0's cluster.
    t = np.array([0] * 10 + [1] * 10)
    c = np.array([5] * 12 + [7] * 8)
    r = cluster_agreement(c, t, np.ones(20, bool), ["a", "b"])
    assert r["confusion"] == [[10, 0], [2, 8]]
    assert r["matched_accuracy"] == pytest.approx(18 / 20, rel=1e-12)
    assert 0 < r["ari"] < 1


def test_history_summary_cumulative():
    h = history_summary({"loss": [3.0, 2.0], "elapsed": [1.0, 4.0]})
    assert h == {"final_loss": 2.0, "iterations": 2, "wall_time_s": 4.0, "loss_key": "loss", "final_heldout_loss": None}
    assert history_summary({})["final_loss"] is None


def test_history_summary_joint_layout():
    # the joint solver logs every 10 steps with a cumulative "time" and one whole-run wall_s:
    # iterations = last logged step (not the number of log entries), wall time = wall_s (not a sum)
    h = history_summary(
        {"step": [1, 10, 20, 30], "loss": [4.0, 3.0, 2.0, 1.5], "time": [5.0, 6.0, 7.0, 8.0], "wall_s": [8.5]}
    )
    assert h["iterations"] == 30
    assert h["wall_time_s"] == 8.5
    # with holdout: the held-out loss's last finite value, never taken for the fit loss
    h = history_summary({"step": [1, 10], "heldout_loss": [5.0, 4.0], "loss": [3.0, 2.0]})
    assert h["final_heldout_loss"] == 4.0 and h["final_loss"] == 2.0 and h["loss_key"] == "loss"
    h = history_summary({"heldout_loss": [5.0, float("nan")], "fit_loss": [3.0, 2.5]})
    assert h["final_heldout_loss"] == 5.0 and h["loss_key"] == "fit_loss"


def _bandlimited(n, fc, rng):
    """White noise low-passed to radial frequency fc (cycles/pixel)."""
    f = np.fft.fftfreq(n)
    keep = np.hypot(f[:, None], f[None, :]) <= fc
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * keep).real


@pytest.mark.parametrize("fc", [0.15, 0.3])
def test_frc_bandlimited_resolution(fc):
    # Reference: the cutoff fc -> resolution pixel/fc; tolerance 10 %. Signal power
    # inside the band >> noise; outside it, only independent noise in the two halves.
    rng = np.random.default_rng(1)
    n, px = 256, 10e-9
    s = _bandlimited(n, fc, rng)
    s /= s.std()
    # In-band SNR 20: unit signal variance spread over pi fc^2 of the frequency plane.
    noise = np.sqrt(1.0 / (20 * np.pi * fc**2))
    a = s + noise * rng.standard_normal((n, n))
    b = s + noise * rng.standard_normal((n, n))
    freq, c, counts = frc(a, b, px, return_counts=True)
    for thr in ("1/7", "halfbit"):
        res = resolution(freq, c, thr, counts)
        assert res == pytest.approx(px / fc, rel=0.10), thr
    # Default ring counts (2 pi r) give the same answer here.
    assert resolution(freq, c, "halfbit") == pytest.approx(px / fc, rel=0.10)


def test_frc_identical_and_nan():
    rng = np.random.default_rng(2)
    img = rng.standard_normal((64, 80))  # non-square
    img[:5, :7] = np.nan
    freq, c = frc(img, img, 1e-8)
    assert np.all(np.isfinite(c))
    np.testing.assert_allclose(c[1:], 1.0, atol=1e-12)  # identical -> FRC 1
    assert freq[1] == pytest.approx(1 / (80 * 1e-8))
    # Never crosses: limited by the sampling (two pixels, 1/freq[-1]).
    assert resolution(freq, c, "1/7") == pytest.approx(2e-8, rel=1e-12)
    # Independent noise -> FRC scatters around 0 with ~ 1/sqrt(ring count).
    _, c2, counts = frc(rng.standard_normal((128, 128)), rng.standard_normal((128, 128)), 1e-8, return_counts=True)
    assert np.all(np.abs(c2[4:]) < 5 / np.sqrt(counts[4:]))


def test_thresholds():
    # Half-bit -> 0.2071/1.2071 = 0.1716 for large rings; one-bit -> 1/3; 1/7 constant.
    assert threshold_curve("halfbit", [1e12])[0] == pytest.approx(0.2071 / 1.2071, rel=1e-5)
    assert threshold_curve("onebit", [1e12])[0] == pytest.approx(1 / 3, rel=1e-5)
    assert threshold_curve("1/7", [5])[0] == pytest.approx(1 / 7)
    assert threshold_curve("halfbit", [1])[0] == pytest.approx((0.2071 + 1.9102) / (1.2071 + 0.9102))
    with pytest.raises(ValueError):
        threshold_curve("bogus", [1])


def test_frc_maps_split():
    rng = np.random.default_rng(3)
    n, fc = 96, 0.2
    s = _bandlimited(n, fc, rng)
    s = 5480 + s / s.std()
    noise = np.sqrt(1.0 / (20 * np.pi * fc**2))  # in-band SNR 20
    valid = np.ones((n, n), bool)
    valid[:4] = False

    sigma = noise

    def mk(noise):
        e = s + sigma * noise
        return ChemMaps(
            **{k: np.full((n, n), 1.0) for k in MAP_FIELDS if k != "edge_energy"},
            edge_energy=np.where(valid, e, np.nan),
            valid=valid,
            pixel_size=PX,
            origin=(0.0, 0.0),
            reference_energy=5450.0,
            delta_f2_v=3.4,
            scattering_table="t",
        )

    r = frc_maps(mk(rng.standard_normal((n, n))), mk(rng.standard_normal((n, n))), "edge_energy")
    assert r["resolution_1_7"] == pytest.approx(PX / fc, rel=0.15)
    assert not r["sampling_limited_1_7"]
    assert r["freq"].shape == r["frc"].shape == r["counts"].shape


def test_frc_files_roundtrip(tmp_path):
    io = pytest.importorskip("diffxas.data")
    from diffxas.analysis.frc import frc_files

    rng = np.random.default_rng(4)
    n = 64
    s = 5480 + _bandlimited(n, 0.2, rng) * 20
    paths = []
    for i in range(2):
        e = s + 0.1 * rng.standard_normal((n, n))
        maps = ChemMaps(
            **{k: np.full((n, n), 1.0) for k in MAP_FIELDS if k != "edge_energy"},
            edge_energy=e,
            valid=np.ones((n, n), bool),
            pixel_size=PX,
            origin=(0.0, 0.0),
            reference_energy=5450.0,
            delta_f2_v=3.4,
            scattering_table="t",
        )
        r = Result(
            method="two-step",
            maps=maps,
            energies=np.array([5450.0, 5500.0]),
            absorption=np.zeros((2, n, n)),
            phase=np.zeros((2, n, n)),
            probes=np.ones((2, 4, 4), np.complex64),
            probe_pixel_size=np.full(2, PX),
            history={},
            config={},
        )
        paths.append(tmp_path / f"half{i}.h5")
        io.write_result(paths[-1], r)
    out = frc_files(*paths, json_path=tmp_path / "frc.json")
    from diffxas.report.figure_style import save_figure
    from diffxas.report.plotting import fig_frc  # the figure: drawn by the caller

    save_figure(fig_frc(list(out.values()), labels=list(out)), tmp_path, "frc")
    assert set(out) == {"edge_energy", "pre_edge_norm", "ne_eff_per_nv"}
    assert json.load(open(tmp_path / "frc.json"))["edge_energy"]["resolution_1_7"] > 0
    assert (tmp_path / "frc.png").stat().st_size > 1000


# --------------------------------------------------------------------------- error anatomy

from diffxas.analysis.anatomy import (  # noqa: E402
    boundary_distance,
    calibration,
    error_anatomy,
    truth_boundary_distance,
)


def test_boundary_distance_closed_form():
    """Two half-planes (columns < 10: label 0, >= 10: label 1) of pixel 15 nm: column j is
    |j - 9.5| pixels from the boundary (closed form), exactly."""
    lab = np.zeros((20, 20), np.int16)
    lab[:, 10:] = 1
    d = boundary_distance(lab, 15e-9)
    expect = np.abs(np.arange(20) - 9.5) * 15e-9
    np.testing.assert_allclose(d, np.broadcast_to(expect, (20, 20)), rtol=0, atol=1e-15)
    # a disk of radius 30 px in vacuum: its centre pixel is ~30 px from the rim (pixelised
    # disk: the nearest vacuum pixel centre is at 30.5 +- 1 px; minus half a pixel)
    yy, xx = np.mgrid[:81, :81] - 40
    disk = np.where(xx**2 + yy**2 <= 30**2, 0, -1)
    assert abs(boundary_distance(disk, 1.0)[40, 40] - 30.0) <= 1.0
    assert np.all(np.isinf(boundary_distance(np.zeros((4, 4)), 1.0)))


def test_truth_boundary_distance_on_coarser_grid():
    """Read at result-pixel centres (2x coarser, aligned so every result centre is a truth
    centre): equals the truth-grid distance there."""
    lab = np.zeros((20, 20), np.int16)
    lab[:, 10:] = 1
    t = Truth(
        maps={},
        labels=lab,
        domain_names=["a", "b"],
        params={},
        pixel_size=1.0,
        origin=(0.0, 0.0),
        energies=np.array([1.0, 2.0]),
        reference_energy=1.0,
    )
    d = truth_boundary_distance(t, 2.0, (0.0, 0.0), (10, 10))
    np.testing.assert_allclose(d[0], np.abs(np.arange(0, 20, 2) - 9.5))


def test_anatomy_constant_offset_per_domain():
    """Error = a constant offset per domain (closed form): bias_d = offset_d, scatter_d = 0,
    domain-mean RMS = sqrt(sum n_d off_d^2 / N), within-domain RMS = 0; and with errors put
    only near the boundary, the bulk RMSE is 0 and the near RMSE carries everything."""
    lab = np.zeros((20, 20), np.int16)
    lab[:, 10:] = 1
    ref = np.full((20, 20), 5480.0)
    off = {0: 0.3, 1: -0.1}
    est = ref + np.where(lab == 0, off[0], off[1])
    mask = np.ones((20, 20), bool)
    a = error_anatomy(est, ref, lab, mask, domain_names=["x", "y"])
    by = {d["label"]: d for d in a["per_domain"]}
    for lv in (0, 1):
        assert by[lv]["bias"] == pytest.approx(off[lv], abs=1e-9)
        assert by[lv]["scatter"] == pytest.approx(0.0, abs=1e-9)
        assert by[lv]["n"] == 200
    assert a["domain_mean_rms"] == pytest.approx(np.sqrt((0.3**2 + 0.1**2) / 2), rel=1e-9)
    assert a["within_domain_rms"] == pytest.approx(0.0, abs=1e-9)
    assert by[0]["name"] == "x"
    # errors only within 3 px of the boundary
    dist = boundary_distance(lab, 15e-9)
    est2 = ref + np.where(dist < 45e-9, 1.0, 0.0)
    b = error_anatomy(est2, ref, lab, mask, distance=dist)
    assert b["bulk"]["rmse"] == 0.0 and b["near"]["rmse"] == pytest.approx(1.0)
    assert b["near"]["n"] == 20 * 6 and b["near_fraction"] == pytest.approx(0.3)
    # RMSE^2 = domain part^2 + within part^2 (exact identity)
    rng = np.random.default_rng(0)
    est3 = ref + rng.normal(0, 0.2, ref.shape) + 0.1 * lab
    c = error_anatomy(est3, ref, lab, mask)
    assert c["rmse"] ** 2 == pytest.approx(c["domain_mean_rms"] ** 2 + c["within_domain_rms"] ** 2, rel=1e-12)


@pytest.mark.parametrize("scale, f1, f2, z", [(1.0, 0.6827, 0.9545, 0.6745), (2.0, 0.3829, 0.6827, 1.349)])
def test_calibration_gaussian(scale, f1, f2, z):
    """Gaussian errors of standard deviation scale x sigma against std maps of sigma: the
    fractions within 1 and 2 sigma are P(|N| <= 1/scale), P(|N| <= 2/scale) (closed form,
    erf) within 4 binomial standard errors for N = 40000 pixels (<= 0.01); the median
    |z| is scale x 0.6745 within 0.02."""
    rng = np.random.default_rng(1)
    sig = rng.uniform(0.05, 0.5, 40000)
    err = rng.normal(0.0, 1.0, sig.size) * sig * scale
    c = calibration(err, sig)
    tol = 4 * np.sqrt(0.25 / sig.size)
    assert c["within_1sigma"] == pytest.approx(f1, abs=tol)
    assert c["within_2sigma"] == pytest.approx(f2, abs=tol)
    assert c["median_abs_z"] == pytest.approx(z, abs=0.02)
    assert c["n"] == sig.size
    assert calibration(err, np.zeros_like(sig))["n"] == 0


def test_evaluate_reports_anatomy():
    """evaluate() writes the anatomy into its metrics and format_metrics prints it: a map
    offset by +0.5 eV in domain 1 only, with std maps of 0.6 eV in domain 1 (|z| = 0.83:
    all within 1 sigma) and 0.1 eV in domain 0 (zero error): all pixels within 1 sigma."""
    maps_t, lab = coarse_truth()
    t = fine_truth(maps_t, lab)
    ee = np.where(lab == 1, maps_t["edge_energy"] + 0.5, maps_t["edge_energy"])
    cm = chem({**maps_t, "edge_energy": ee})
    cm = ChemMaps(
        **{
            **{f: getattr(cm, f) for f in MAP_FIELDS},
            "valid": cm.valid,
            "pixel_size": cm.pixel_size,
            "origin": cm.origin,
            "reference_energy": cm.reference_energy,
            "delta_f2_v": cm.delta_f2_v,
            "scattering_table": cm.scattering_table,
            "std": {"edge_energy": np.where(lab == 1, 0.6, 0.1)},
        }
    )
    m = evaluate(cm, t)
    a = m["anatomy"]["edge_energy"]
    by = {d["label"]: d for d in a["per_domain"]}
    assert by[1]["bias"] == pytest.approx(0.5, abs=1e-6) and by[0]["bias"] == pytest.approx(0.0, abs=1e-6)
    assert a["within_domain_rms"] == pytest.approx(0.0, abs=1e-6)
    assert a["calibration"]["within_1sigma"] == pytest.approx(1.0)
    assert a["near"]["n"] + a["bulk"]["n"] == a["n"]
    json.dumps(m, allow_nan=False)
    text = format_metrics(m)
    assert "error anatomy" in text and "within 1 sigma" in text
