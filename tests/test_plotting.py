"""Figures and report without a display: non-empty PNG/PDF for synthetic results."""

import dataclasses
import os

import numpy as np
import pytest

from diffxas.analysis.clustering import ClusterConfig, cluster_result
from diffxas.maps import MAP_FIELDS, ChemMaps, Result, Truth

STATES = [  # (name, edge energy eV, pre-edge/jump eV, Ne_eff/N_V)
    ("V3+", 5479.0, 0.35, 20.5),
    ("V4+", 5480.5, 0.70, 19.8),
    ("V5+ bulk", 5482.0, 1.10, 19.0),
    ("V5+ surface", 5483.0, 0.90, 18.4),
]
TRUE_PX = 20e-9


def synthetic(n_truth=96, factor=2, noise=0.0, seed=0, iters=30):
    """A disc particle with four domains on a 20 nm truth grid; results on the 40 nm grid.

    Returns (truth, result) where result.maps is the block-averaged truth plus ``noise``
    (relative) and absorption/phase stacks follow a simple edge-step model.
    """
    rng = np.random.default_rng(seed)
    n = n_truth
    d = TRUE_PX
    yy, xx = (np.mgrid[:n, :n] - (n - 1) / 2) * d
    r = np.hypot(xx, yy)
    R = 0.38 * n * d
    part = r < R
    ang = np.arctan2(yy, xx)
    lab = np.where(r < 0.45 * R, 0, np.where(ang > 0, 1, 2))
    lab = np.where((r > 0.85 * R) & (ang < -1.5), 3, lab)
    lab = np.where(part, lab, -1).astype(np.int16)
    st = np.array([s[1:] for s in STATES])
    nv = np.where(part, 1.5e21 * np.sqrt(np.clip(1 - (r / R) ** 2, 0, 1)) + 1e19, 0.0)
    tm = {
        "n_v": nv,
        "edge_energy": np.where(part, st[lab, 0], np.nan),
        "pre_edge_norm": np.where(part, st[lab, 1], np.nan),
        "ne_eff_per_nv": np.where(part, st[lab, 2], np.nan),
        "edge_width": np.where(part, 2.0, np.nan),
        "edge_jump": nv * 2e-23,
        "pre_edge": nv * 2e-23 * np.where(part, st[lab, 1], 0),
    }
    origin_t = (-(n - 1) / 2 * d, -(n - 1) / 2 * d)
    energies = np.linspace(5450.0, 5520.0, 36)
    truth = Truth(
        maps=tm,
        labels=lab,
        domain_names=[s[0] for s in STATES],
        params={},
        pixel_size=d,
        origin=origin_t,
        energies=energies,
        reference_energy=5450.0,
    )
    from diffxas.analysis.resample import resample_truth

    H = n // factor
    px = d * factor
    origin = (origin_t[0] + 0.5 * (factor - 1) * d,) * 2
    tr = resample_truth(truth, px, origin, (H, H))
    valid = np.isfinite(tr["edge_energy"]) & (tr["n_v"] > 0)
    maps = {}
    for k in MAP_FIELDS:
        v = tr[k] * (1 + noise * rng.standard_normal((H, H)) * (0.002 if k == "edge_energy" else 1))
        maps[k] = np.where(valid, v, np.nan)
    cm = ChemMaps(
        **maps,
        valid=valid,
        pixel_size=px,
        origin=origin,
        reference_energy=5450.0,
        delta_f2_v=3.4,
        scattering_table="test",
    )
    jump = np.nan_to_num(tr["edge_jump"])
    e0 = np.nan_to_num(tr["edge_energy"], nan=5481.0)
    pe = np.nan_to_num(tr["pre_edge_norm"])
    E = energies[:, None, None]
    step = 0.5 + np.arctan((E - e0) / 1.5) / np.pi
    peak = pe * np.exp(-0.5 * ((E - 5469.0) / 1.2) ** 2) / (1.2 * np.sqrt(2 * np.pi))
    absorption = jump * (0.3 + step + peak) + 0.002 * rng.standard_normal((len(energies), H, H))
    phase = -jump * (12.0 - 3.0 * np.exp(-0.5 * ((E - e0) / 3) ** 2)) * 0.1
    K = len(energies)
    res = Result(
        method="two-step",
        maps=cm,
        energies=energies,
        absorption=absorption,
        phase=phase,
        probes=np.ones((K, 16, 16), np.complex64),
        probe_pixel_size=np.full(K, px),
        history={"loss": np.geomspace(10, 1, iters), "time": np.full(iters, 0.1)},
        config={"method": "two-step"},
    )
    return truth, res


FAST = ClusterConfig(k="auto", n_init=3, seeds=3, k_max=7)


@pytest.fixture(scope="module")
def data():
    truth, res = synthetic(noise=0.01)
    res.clusters = cluster_result(res, FAST)
    _, joint = synthetic(noise=0.02, seed=1)
    joint = dataclasses.replace(joint, method="joint")
    joint.clusters = cluster_result(joint, ClusterConfig(k=4, n_init=3, seeds=2))
    return truth, res, joint


def _check(paths):
    assert paths
    for p in paths:
        assert os.path.getsize(p) > 1000, p
        with open(p, "rb") as fh:
            head = fh.read(8)
        assert head.startswith(b"\x89PNG") if p.endswith(".png") else head.startswith(b"%PDF")


def test_synthetic_clusters_recover_domains(data):
    # Sanity of the fixture (and of clustering on a realistic layout): auto k = 4.
    truth, res, _ = data
    assert res.clusters["k"] in (3, 4)  # the 3 % surface domain may merge


def test_figures_single_result_with_and_without_clusters(tmp_path, data):
    from diffxas.report.plotting import plot_all

    truth, res, _ = data
    written, notes = plot_all([res], tmp_path / "a")
    names = {os.path.basename(p) for p in written}
    assert {"projections.png", "maps.pdf", "clusters.png", "cluster_spectra.pdf", "elbow.png"} <= names
    _check(written)
    bare = dataclasses.replace(res, clusters=None)
    written, notes = plot_all([bare], tmp_path / "b")
    names = {os.path.basename(p) for p in written}
    assert "clusters.png" not in names and "maps.png" in names
    assert any("clusters" in n for n in notes)
    _check(written)


def test_report_two_results_with_truth(tmp_path, data):
    from diffxas.report.report import report_results

    truth, res, joint = data
    out = tmp_path / "rep"
    written = report_results([res, joint], out, truth=truth, labels=["two-step", "joint"])
    names = {os.path.basename(p) for p in written}
    assert {
        "summary.md",
        "metrics.json",
        "maps.png",
        "maps.pdf",
        "clusters.png",
        "projections.png",
        "blur_match.png",
    } <= names
    _check([p for p in written if p.endswith((".png", ".pdf"))])
    md = open(out / "summary.md").read()
    assert "| two-step |" in md and "| joint |" in md and "ARI" in md and "E0 matched blur (px)" in md
    assert "eV (V K) |" in md  # the absorber of each result


def test_blur_match_figure_needs_truth_n_v(data):
    import dataclasses

    from diffxas.report.plotting import fig_blur_match

    truth, res, joint = data
    fig = fig_blur_match([res, joint], truth, ["two-step", "joint"])
    assert fig is not None and len(fig.axes) == 3
    assert len(fig.axes[0].lines) == 4  # a curve and its best-match marker per result
    no_nv = dataclasses.replace(truth, maps={k: v for k, v in truth.maps.items() if k != "n_v"})
    assert fig_blur_match([res], no_nv) is None
    empty = dataclasses.replace(truth, maps=dict(truth.maps, n_v=np.zeros_like(truth.maps["n_v"])))
    assert fig_blur_match([res], empty) is None  # no V anywhere: nothing to compare


def test_report_without_clusters_or_truth(tmp_path, data):
    from diffxas.report.report import report_results

    truth, res, _ = data
    bare = dataclasses.replace(res, clusters=None, history={})
    written = report_results([bare], tmp_path / "r")
    md = open(tmp_path / "r" / "summary.md").read()
    assert "no /clusters group" in md
    assert not any(os.path.basename(p).startswith("clusters") for p in written)


def test_frc_figure(tmp_path):
    from diffxas.analysis.frc import frc_maps
    from diffxas.report.figure_style import save_figure
    from diffxas.report.plotting import fig_frc

    _, a = synthetic(noise=0.01, seed=2)
    _, b = synthetic(noise=0.01, seed=3)
    d = frc_maps(a.maps, b.maps, "edge_energy")
    _check(save_figure(fig_frc([d]), tmp_path, "frc"))


def test_file_entry_points(tmp_path, data):
    # Round trip through diffxas.data: cluster_file, evaluate_file, report on paths.
    io = pytest.importorskip("diffxas.data")
    from diffxas.analysis.clustering import cluster_file
    from diffxas.analysis.evaluate import evaluate_file
    from diffxas.report.report import report

    truth, res, _ = data
    rp, tp = tmp_path / "res.h5", tmp_path / "truth.h5"
    io.write_result(rp, dataclasses.replace(res, clusters=None))
    io.write_truth(tp, truth)
    cl = cluster_file(rp, ClusterConfig(k=4, n_init=2, seeds=2))
    assert os.path.exists(cl["csv_path"])
    back = io.read_result(rp)
    np.testing.assert_array_equal(back.clusters["labels"], cl["labels"])
    m = evaluate_file(rp, tp)
    assert os.path.exists(m["json_path"]) and m["clusters"]["ari"] > 0.5
    written = report([str(rp)], tmp_path / "rep", truth_path=str(tp), formats=("png",))
    assert any(p.endswith("summary.md") for p in written)


def _with_std(res, nan_field=None):
    """The result with std maps of every map (1 % of the map value; edge energy 0.1 eV);
    ``nan_field``'s std map all NaN (a degenerate case that must not warn)."""
    m = res.maps
    valid = np.asarray(m.valid, bool)
    std = {}
    for k in MAP_FIELDS:
        v = np.abs(np.asarray(getattr(m, k), dtype=np.float64))
        std[k] = np.where(valid, 0.1 if k == "edge_energy" else 0.01 * v, np.nan)
    if nan_field is not None:
        std[nan_field] = np.full(m.shape, np.nan)
    return dataclasses.replace(res, maps=dataclasses.replace(m, std=std))


def test_uncertainty_figure_and_report(tmp_path, data):
    import warnings

    from diffxas.report.map_figures import fig_uncertainty
    from diffxas.report.plotting import plot_all
    from diffxas.report.report import report_results

    truth, res, joint = data
    joint_u = _with_std(joint, nan_field="ne_eff_per_nv")
    joint_u.clusters = cluster_result(joint_u, ClusterConfig(k=4, n_init=3, seeds=2, confidence_samples=64))
    assert "confidence" in joint_u.clusters and "confidence" not in res.clusters
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-NaN / empty-slice warnings from numpy or matplotlib
        written, notes = plot_all([res, joint_u], tmp_path / "a", labels=["two-step", "joint"], formats=("png",))
        fig = fig_uncertainty([joint_u])
    assert fig is not None
    names = {os.path.basename(p) for p in written}
    assert "uncertainty.png" in names
    _check(written)
    # Without std maps and confidence: no figure, a note, no error.
    assert fig_uncertainty([res]) is None
    written, notes = plot_all([res], tmp_path / "b", formats=("png",))
    assert "uncertainty.png" not in {os.path.basename(p) for p in written}
    assert any("uncertainty" in n for n in notes)
    # Report: confidence in the cluster section, a sigma table; a result without std reads n/a.
    out = tmp_path / "rep"
    report_results([res, joint_u], out, truth=truth, labels=["two-step", "joint"], formats=("png",))
    md = open(out / "summary.md").read()
    assert "Assignment confidence" in md and "mean confidence" in md and "## Uncertainty" in md
    assert "uncertainty.png" in md
    report_results([res], tmp_path / "rep2", formats=("png",))
    md = open(tmp_path / "rep2" / "summary.md").read()
    assert "No result carries standard-error maps" in md


def test_preedge_shape_maps(tmp_path, data):
    """fig_shape_maps: only the pre-edge parameters that vary in some result get a row
    (c12 per pixel here, c13 shared), one column per result + the truth's N_V-weighted
    parameters; None (and a note in plot_all) when every result shares the shape."""
    from diffxas.analysis.resample import resample_truth
    from diffxas.report.map_figures import fig_shape_maps
    from diffxas.report.plotting import plot_all

    truth, res, joint = data
    m = joint.maps
    lab = resample_truth(truth, m.pixel_size, m.origin, m.shape)["labels"]
    c12 = np.where(lab >= 0, 5466.0 + 0.3 * lab, 5466.5)
    pp = dataclasses.replace(joint, maps=dataclasses.replace(m, extra={"c12": c12, "c13": np.full(m.shape, 1.2)}))
    tparams = {
        "c12": np.where(truth.labels >= 0, 5466.0 + 0.3 * truth.labels, np.nan),
        "c13": np.full(truth.labels.shape, 1.2),
    }
    t = dataclasses.replace(truth, params=tparams)
    assert fig_shape_maps([res]) is None  # two-step: no per-pixel shape
    fig = fig_shape_maps([res, pp], ["two-step", "pp"], t)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 2  # c12 of "pp" and of the truth; c13 varies nowhere -> no row
    shown = images[0].get_images()[0].get_array()
    from diffxas.report.map_figures import display_mask

    drawn = display_mask(m)  # the display mask: the valid pixels but the thinnest rim
    assert drawn.sum() > 0.9 * np.asarray(m.valid, bool).sum()
    np.testing.assert_allclose(np.ma.filled(shown, np.nan)[drawn], c12[drawn])
    assert np.isnan(np.ma.filled(shown, np.nan)[~drawn]).all()
    written, notes = plot_all([res, pp], tmp_path / "f", ["two-step", "pp"], truth=t)
    assert any(p.endswith("preedge_shape.png") for p in written)
    _check(written)
    written, notes = plot_all([res], tmp_path / "g")
    assert any("pre-edge shape maps" in n for n in notes)


def test_map_labels_name_the_absorber(data):
    # N_V reads N_Mn on a Mn result's colour bars; V results keep the seed's labels
    from diffxas.report import plotting

    _, res, _ = data
    mn = dataclasses.replace(res, maps=dataclasses.replace(res.maps, absorber="Mn"))
    for r, want, not_want in ((mn, r"N_\mathrm{Mn}", r"N_\mathrm{V}"), (res, r"N_\mathrm{V}", r"N_\mathrm{Mn}")):
        fig = plotting.fig_maps([r], fields=("n_v", "ne_eff_per_nv"))
        text = " ".join(ax.get_ylabel() for ax in fig.axes)
        assert want in text and not_want not in text, text


def test_background_figure(tmp_path, data):
    """A result with a fitted background gets the "background" figure (level per energy,
    radial profile) in the report, for "flat" and "map" alike; without one the report
    notes why it is missing. The radial profile of a flat level is that level (closed
    form: the ring means of a constant)."""
    from diffxas.report.plotting import fig_background
    from diffxas.report.report import report_results

    truth, res, joint = data
    k, m = len(res.energies), res.probes.shape[-1]
    flat = dataclasses.replace(res, background=np.linspace(0.1, 0.2, k).astype(np.float32))
    yy, xx = np.mgrid[:m, :m] - m // 2
    radial = (0.5 / (1 + (xx**2 + yy**2) / 16.0)).astype(np.float32)
    mapped = dataclasses.replace(joint, background=np.broadcast_to(radial, (k, m, m)).copy())
    fig = fig_background([flat, mapped], ["flat", "map"])
    lines = fig.axes[1].get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), np.mean(flat.background), rtol=1e-6)
    assert lines[1].get_ydata()[0] == pytest.approx(0.5, rel=1e-6) and lines[1].get_ydata()[10] < 0.1
    written = report_results([flat, mapped], tmp_path / "r", labels=["flat", "map"])
    assert "background.png" in {os.path.basename(p) for p in written}
    _check([p for p in written if os.path.basename(p).startswith("background")])
    assert fig_background([res]) is None
    report_results([res], tmp_path / "n")
    assert "no result fitted one" in open(tmp_path / "n" / "summary.md").read()


# ---------------------------------------------------------------- map figure (issue: readable maps)


def _with_membrane(res, seed=5):
    """The two-step result with every bare-membrane pixel valid and fitted to noise, as the
    seed's missing-data rule lets through: edge energies anywhere in the scan (5420-5540
    eV), N_V = |noise| of ~2 % of the particle's maximum."""
    m = res.maps
    rng = np.random.default_rng(seed)
    mem = ~np.asarray(m.valid, bool)
    d = {}
    for f, (lo, hi) in {"edge_energy": (5420, 5540), "pre_edge_norm": (0, 5), "ne_eff_per_nv": (-50, 80)}.items():
        d[f] = np.where(mem, rng.uniform(lo, hi, m.shape), getattr(m, f))
    d["n_v"] = np.where(mem, 3e19 * np.abs(rng.standard_normal(m.shape)), m.n_v)
    maps = dataclasses.replace(m, valid=np.ones(m.shape, bool), **d)
    return dataclasses.replace(res, maps=maps), mem


def _panels(fig):
    """The image axes of a figure, row-major (colour-bar axes hold no AxesImage)."""
    return [ax for ax in fig.axes if ax.get_images()]


def test_maps_colour_limits_span_the_particle_not_the_scan(data):
    """The edge-energy panels' colour limits lie inside the particle's range of edge
    energies (truth: 5479-5483 eV), not the membrane's 5420-5540 eV, and are the same for
    both methods. The old 2-98 % of all valid pixels gave about (5422, 5538) here."""
    from diffxas.report.map_figures import fig_maps

    _, res, joint = data
    noisy, _ = _with_membrane(res)
    fig = fig_maps([noisy, joint], ["two-step", "joint"])
    p = _panels(fig)
    assert len(p) == 8  # 2 rows (no std maps) x 4 fields
    lo, hi = p[0].get_images()[0].get_clim()
    assert 5478.5 <= lo < hi <= 5483.5, (lo, hi)
    assert p[4].get_images()[0].get_clim() == (lo, hi)  # joint, same column: same limits
    assert hi - lo > 3.0  # and the domains' 4 eV of contrast are spread over the scale


def test_maps_membrane_pixels_blank_in_two_step(data):
    """Pixels of bare membrane (valid by the seed's rule, N_V ~2 % of the particle's) are
    masked in every panel of the two-step's row; the particle's pixels are drawn. The
    figure states the threshold; the result itself is not changed."""
    from diffxas.report.map_figures import fig_maps

    _, res, joint = data
    noisy, mem = _with_membrane(res)
    fig = fig_maps([noisy, joint], ["two-step", "joint"], crop=False)
    for ax in _panels(fig)[:4]:
        shown = ax.get_images()[0].get_array()
        blank = np.ma.getmaskarray(shown) | ~np.isfinite(np.ma.filled(shown, np.nan))
        assert blank[mem].all()
        assert not blank[np.asarray(res.maps.valid, bool)].mean() > 0.05  # the particle is drawn (its rim may not be)
    assert "10 %" in fig._suptitle.get_text() and "99th percentile" in fig._suptitle.get_text()
    assert np.asarray(noisy.maps.valid).all()  # display only


def test_display_mask_threshold_and_isolated_pixels():
    """Closed form: with N_V = 1 on a block (the 99th percentile is 1), a pixel at 0.11 is
    drawn and one at 0.09 is not (threshold 10 %); an isolated pixel at full N_V is blank."""
    from diffxas.report.map_figures import display_mask

    nv = np.zeros((12, 12))
    nv[2:8, 2:8] = 1.0
    nv[2, 8] = 0.11  # touches the block: drawn
    nv[3, 8] = 0.09  # below 10 %: blank
    nv[10, 10] = 1.0  # isolated: blank
    cm = ChemMaps(
        **{k: np.where(nv > 0, 1.0, np.nan) for k in MAP_FIELDS if k != "n_v"},
        n_v=nv,
        valid=nv > 0,
        pixel_size=15e-9,
        origin=(0.0, 0.0),
        reference_energy=5450.0,
        delta_f2_v=3.4,
        scattering_table="test",
    )
    dm = display_mask(cm)
    assert dm[2:8, 2:8].all() and dm[2, 8] and not dm[3, 8] and not dm[10, 10]
    assert dm.sum() == 37


def test_maps_error_rows_symmetric_with_rmse(data):
    """With a truth: rows two-step, joint, truth, two-step - truth, joint - truth; error
    panels on a diverging map with symmetric limits shared by both methods; each title's
    RMSE equals diffxas.analysis.evaluate.evaluate's (same region; printed to 3 significant digits)."""
    from diffxas.analysis.evaluate import evaluate
    from diffxas.report.map_figures import fig_maps

    truth, res, joint = data
    fig = fig_maps([res, joint], ["two-step", "joint"], truth=truth)
    p = _panels(fig)
    assert len(p) == 5 * 4
    for c in range(4):
        e1, e2 = p[12 + c].get_images()[0], p[16 + c].get_images()[0]
        lo, hi = e1.get_clim()
        assert lo == -hi and hi > 0 and e2.get_clim() == (lo, hi)
        assert e1.get_cmap().name.startswith("RdBu_r")
    for r, ax in ((res, p[12]), (joint, p[16])):
        want = evaluate(r, truth)["edge_energy"]["rmse"]
        assert f"RMSE {want:.3g} eV" in ax.get_title()
    nv_rel = evaluate(joint, truth)["n_v"]["rel_rms"]
    assert f"rel. RMS {nv_rel:.3g}" in p[19].get_title()


def test_maps_colour_bars_with_units_and_std_rows(data):
    """Every panel has its own colour bar whose label names the unit; without a truth a
    result with std maps gets a row of standard-error maps (sequential, from 0)."""
    from diffxas.report.map_figures import fig_maps

    _, res, joint = data
    ju = _with_std(joint)
    fig = fig_maps([res, ju], ["two-step", "joint"])
    p = _panels(fig)
    assert len(p) == 3 * 4  # two-step, joint, joint's sigma
    units = ["(eV)", "(eV)", r"N_\mathrm{V}", r"m$^{-2}$)"]
    for i, ax in enumerate(p):
        cb = ax.get_images()[0].colorbar
        assert cb is not None and units[i % 4] in cb.ax.get_ylabel(), (i, cb and cb.ax.get_ylabel())
    assert p[8].get_images()[0].get_clim()[0] == 0.0 and "σ" in p[8].get_images()[0].colorbar.ax.get_ylabel()


def test_save_figure_atomic(tmp_path, data):
    """A failed save leaves neither the figure nor a temporary file; a good one leaves
    exactly the figure."""
    from diffxas.report.figure_style import save_figure
    from diffxas.report.map_figures import fig_maps

    _, res, _ = data
    fig = fig_maps([res])
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path, "maps", formats=("nosuchformat",))
    assert os.listdir(tmp_path) == []
    paths = save_figure(fig, tmp_path, "maps", formats=("png",))
    assert sorted(os.listdir(tmp_path)) == ["maps.png"]
    _check(paths)
    (tmp_path / "plain.txt").write_text("x")  # the figure has a plain file's permissions (umask), not 0600
    assert os.stat(paths[0]).st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777


def test_maps_crop_keeps_a_thin_second_particle():
    """The crop keeps every particle drawn (a second one at 20 % of the first's N_V, above
    the 10 % threshold) and leaves out a stray membrane pixel, which the header counts. Shapes by construction: blocks at rows/cols 5-14 and 25-32 of a 60 x 60 grid."""
    from diffxas.report.map_figures import fig_maps

    nv = np.zeros((60, 60))
    nv[5:15, 5:15] = 1e22
    nv[25:33, 25:33] = 0.2e22  # thin particle
    nv[55, 54:57] = 0.5e22  # stray row of 3: the ends have 1 neighbour (blank), the middle 2 (drawn, alone)
    valid = nv > 0
    f = {k: np.where(valid, 1.0, np.nan) for k in MAP_FIELDS if k != "n_v"}
    f["edge_energy"] = np.where(valid, 5480.0, np.nan)
    cm = ChemMaps(
        **f,
        n_v=nv,
        valid=valid,
        pixel_size=15e-9,
        origin=(0.0, 0.0),
        reference_energy=5450.0,
        delta_f2_v=3.4,
        scattering_table="test",
    )
    fig = fig_maps([cm], ["x"])
    img = _panels(fig)[3].get_images()[0]
    x0, x1, y0, y1 = img.get_extent()
    px = 15e-3  # um
    assert x0 < 5 * px and x1 > 32 * px and y1 < 50 * px  # both particles in, the stray row out
    assert "1 drawn pixel(s) outside" in fig._suptitle.get_text()  # only the triple's middle pixel is drawn
    assert "15 nm pixels" in fig._suptitle.get_text()
