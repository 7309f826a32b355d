"""Energy design (diffxas.app.design): toy problems with known optima, information algebra, CLI.

Toy references: linear regression y = t0 + t1 x on x in [-1, 1] (two points: the endpoints,
variances 1/2 each in closed form) and quadratic regression (three points: -1, 0, 1, checked
against exhaustive enumeration of every 3-point design).
"""

import itertools
import json

import numpy as np
import pytest

from diffxas.app import design as D
from diffxas.app import design_information as DI
from diffxas.app.cli import main


def _poly_info(degree, n_cand=21, ridge=1e-9):
    x = np.linspace(-1.0, 1.0, n_cand)
    U = np.stack([x**j for j in range(degree + 1)], axis=-1)[None, :, :, None]  # (1, K, n, 1)
    grads = {f"t{j}": np.eye(degree + 1)[j][None] for j in range(degree + 1)}
    return x, DI.from_factors(x, U, grads, ridge=ridge)


# ---------------------------------------------------------------------------- (a) known optima


def test_linear_two_points_are_the_endpoints():
    x, ci = _poly_info(1)
    out = D.greedy_design(ci, 2)
    assert out["indices"] == [0, x.size - 1]
    v = D.descriptor_variances(ci, out["indices"])
    # closed form for x = -1, 1: var t0 = (x1^2 + x2^2)/(x1 - x2)^2 = 1/2, var t1 = 2/(x1 - x2)^2 = 1/2
    assert v["t0"][0] == pytest.approx(0.5, rel=1e-6) and v["t1"][0] == pytest.approx(0.5, rel=1e-6)
    # normalised criterion: reference = every candidate (var t0 = 1/K, var t1 = 1/sum x^2)
    expect = 0.5 * (0.5 * x.size + 0.5 * np.sum(x**2))
    assert out["criterion"] == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("degree, n", [(2, 3), (3, 4)])
def test_polynomial_designs_match_exhaustive_search(degree, n):
    x, ci = _poly_info(degree)
    out = D.greedy_design(ci, n)
    best = min(itertools.combinations(range(x.size), n), key=lambda s: D.criterion(ci, list(s)))
    assert out["indices"] == sorted(best)
    assert out["criterion"] == pytest.approx(D.criterion(ci, list(best)), rel=1e-9)
    if degree == 2:
        # quadratic, 3 points: -1, 0, 1; greedy alone stops at -0.7, 0, 0.7 (twice the criterion)
        assert list(x[out["indices"]]) == [-1.0, 0.0, 1.0]
        assert np.allclose(x[out["greedy_indices"]], [-0.7, 0.0, 0.7])
        assert out["greedy_criterion"] > 1.5 * out["criterion"]


def test_included_points_stay_and_spacing_is_respected():
    x, ci = _poly_info(1)
    out = D.greedy_design(ci, 3, include=[10], min_spacing=0.45)
    assert 10 in out["indices"]
    e = np.sort(x[out["indices"]])
    assert np.all(np.diff(e) >= 0.45 - 1e-9)
    with pytest.raises(D.ConfigError, match="minimum spacing"):
        D.greedy_design(ci, 6, min_spacing=0.5)  # only 5 points fit at 0.5 spacing in [-1, 1]
    with pytest.raises(D.ConfigError):
        D.greedy_design(ci, 0)


# ---------------------------------------------------------------------------- (b) information algebra


def _random_info(seed=0, P=5, K=25, n=4):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(P, K, n, 2)) * rng.uniform(0.1, 10, size=(1, 1, n, 1))
    grads = {"d0": rng.normal(size=(P, n)), "d1": rng.normal(size=(P, n))}
    return DI.from_factors(np.arange(K, dtype=float), U, grads, ridge=1e-3)


@pytest.mark.parametrize("shared", [False, True])
def test_information_is_additive_and_criterion_monotone(shared):
    ci = _random_shared()[0] if shared else _random_info()
    rng = np.random.default_rng(1)
    prior = D.fisher_of(ci, [])
    for _ in range(10):
        s = list(rng.choice(ci.n_candidates, 6, replace=False))
        a, b = s[:3], s[3:]
        for fs, fa, fb, f0 in zip(D.fisher_of(ci, s), D.fisher_of(ci, a), D.fisher_of(ci, b), prior):
            np.testing.assert_allclose(fs - f0, (fa - f0) + (fb - f0), rtol=1e-10, atol=1e-12)
        phi = D.criterion(ci, s)
        v = D.descriptor_variances(ci, s)
        for k in range(ci.n_candidates):
            if k in s:
                continue
            assert D.criterion(ci, s + [k]) <= phi * (1 + 1e-12)
            v2 = D.descriptor_variances(ci, s + [k])
            for d in v:
                assert np.all(v2[d] <= v[d] * (1 + 1e-10))
    # every candidate: criterion 1 by construction
    assert D.criterion(ci, range(ci.n_candidates)) == pytest.approx(1.0)


def _random_shared(seed=0, P=4, K=25, n=3, s=2, weight=1.0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(P, K, n, 2)) * rng.uniform(0.1, 10, size=(1, 1, n, 1))
    V = rng.normal(size=(P, K, s, 2)) * rng.uniform(0.1, 10, size=(1, 1, s, 1))
    g = {"d0": rng.normal(size=(P, n)), "d1": rng.normal(size=(P, n))}
    h = {"d0": rng.normal(size=(P, s)), "d1": np.zeros((P, s))}
    return DI.from_factors(np.arange(K, dtype=float), U, g, V=V, grads_shared=h, weight=weight, ridge=1e-3), (
        U,
        V,
        g,
        h,
    )


@pytest.mark.parametrize("weight", [1.0, 2.0])
def test_shared_parameters_match_the_dense_fisher_matrix(weight):
    """Block-arrow variances = the dense inverse over every pixel's and the shared parameters
    (weight 2 = every pixel present twice)."""
    ci, (U, V, g, h) = _random_shared(weight=weight)
    P, K, n, _ = U.shape
    s = V.shape[2]
    idx = [1, 4, 9, 16, 20]
    reps = int(weight)
    Pd = P * reps
    N = Pd * n + s
    F = np.zeros((N, N))
    for q in range(Pd):
        p = q % P
        W = np.concatenate([U[p, idx], V[p, idx]], axis=1)  # (k, n+s, 2)
        f = np.einsum("kim,kjm->ij", W, W)
        sl = list(range(q * n, (q + 1) * n)) + list(range(Pd * n, N))
        F[np.ix_(sl, sl)] += f
    # the ridge, in the same (rescaled) units
    dp = np.concatenate([ci.scale[q % P] for q in range(Pd)])
    F += np.diag(np.concatenate([dp**2 * ci.prior[0], ci.scale_shared**2 * ci.prior_shared[0]]))
    cov = np.linalg.inv(F)
    v = D.descriptor_variances(ci, idx)
    for d in g:
        for p in range(P):
            gv = np.zeros(N)
            gv[p * n : (p + 1) * n] = g[d][p]
            gv[Pd * n :] = h[d][p]
            assert v[d][p] == pytest.approx(gv @ cov @ gv, rel=1e-8)


@pytest.mark.parametrize("shared", [False, True])
def test_woodbury_scores_equal_direct_criterion(shared):
    ci = _random_shared(seed=3)[0] if shared else _random_info(seed=3)
    s = [2, 7, 11]
    scores = DI._scores(ci, DI._state(ci, s), block=7)
    for k in (0, 5, 19, 24):
        assert scores[k] == pytest.approx(D.criterion(ci, s + [k]), rel=1e-9)
    out = D.greedy_design(ci, 8, exchange=False)
    assert np.all(np.diff(out["path"]) <= 1e-12)  # each greedy addition lowers the criterion


def test_candidate_information_matches_parameter_information():
    """Per-candidate factors of the XANES model sum to uncertainty.parameter_information."""
    import jax.numpy as jnp

    from diffxas.physics.scattering import VEdge
    from diffxas.physics.spectra import XanesParams, absorption
    from diffxas.physics.uncertainty import isotropic_information, parameter_information

    P = 3
    vals = dict(a=0.01, b1=0.05, b2=5478.0, b3=4.0, c11=0.01, c12=5466.0, c13=1.2, c21=0.004, c22=5470.0, c23=2.0)
    params = {k: np.full(P, v) + (np.arange(P) * 0.5 if k == "b2" else 0.0) for k, v in vals.items()}
    params["n_other"] = np.full(P, 2.0e24)
    names = ("a", "b1", "b2", "b3", "c11", "c21", "n_other")
    model = D.SampleModel(params=params, fluence=np.full(P, 1e5), names=names, reference_energy=5420.0)
    e = np.array([5420.0, 5466.0, 5478.0, 5500.0, 5540.0])
    ci = D.candidate_information(model, e)
    p = XanesParams(**{k: jnp.asarray(v[None], jnp.float32) for k, v in params.items()})  # (1, P)
    A = absorption(p, jnp.asarray(e, jnp.float32))
    info = isotropic_information(jnp.full((1, P), 1e5, jnp.float32), A)
    ref = parameter_information(p, e, VEdge.from_tables("V"), info, names)[0]  # (P, n, n)
    got = ci.physical_fisher(range(e.size))
    scale = np.sqrt(np.einsum("pii->pi", ref))
    np.testing.assert_allclose(
        got / scale[:, :, None] / scale[:, None, :], ref / scale[:, :, None] / scale[:, None, :], atol=2e-3
    )


def test_ensemble_design():
    """An ensemble of identical sample models designs like one; its criterion is the members' mean."""
    x, ci = _poly_info(2)
    _, ci3 = _poly_info(3)
    one = D.greedy_design(ci, 4)
    two = D.greedy_design([ci, ci], 4)
    assert one["indices"] == two["indices"] and one["criterion"] == pytest.approx(two["criterion"])
    cj = _random_info(seed=5, P=1, K=21, n=3)
    idx = [0, 5, 10, 20]
    assert D.ensemble_criterion([ci, cj], idx) == pytest.approx(0.5 * (D.criterion(ci, idx) + D.criterion(cj, idx)))
    m = D.SampleModel(
        params={"b2": np.array([5478.0]), "c12": np.array([5466.0]), "c22": np.array([5470.0]), "b3": np.array([4.0])},
        fluence=np.ones(1),
        names=("b2",),
        reference_energy=5420.0,
    )
    s = D.shifted(m, -3.0)
    assert s.params["b2"][0] == 5475.0 and s.params["c12"][0] == 5463.0 and s.params["c22"][0] == 5467.0
    assert s.params["b3"][0] == 4.0 and m.params["b2"][0] == 5478.0


def test_comparison_samplings():
    grid = D.candidate_grid(5420.0, 5540.0, 0.25)
    assert grid.size == 481 and grid[-1] == 5540.0
    u = D.uniform_energies(grid, 5)
    np.testing.assert_allclose(grid[u], [5420, 5450, 5480, 5510, 5540])
    s = D.seed_like_energies(grid, 40)
    from diffxas.simulate.presets import SEED_ENERGIES

    np.testing.assert_allclose(grid[s], SEED_ENERGIES)
    assert D.seed_like_energies(D.candidate_grid(5700.0, 5710.0), 3) is None  # no seed energies there
    assert D.support([5420, 5420.25, 5420.5, 5466, 5480, 5480.25], 0.5) == [(5420.25, 3), (5466.0, 1), (5480.125, 2)]


# ---------------------------------------------------------------------------- (c) the command line


def test_cli_design_writes_a_simconfig_file(tmp_path, capsys):
    from diffxas.app.config import load_config, sim_config

    out = tmp_path / "energies.toml"
    rc = main(["design-energies", "--budget", "6", "--preset", "tiny", "--pixels", "40", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "designed 6 energies" in text and "seed-like" in text and "uniform" in text
    cfg = sim_config(load_config(out)["simulate"], preset="tiny")
    e = np.asarray(cfg.energies)
    assert e.size == 6 and e[0] == 5420.0 and e[-1] <= 5520.0 and np.all(np.diff(e) > 0)
    rec = json.loads("\n".join(line[4:] for line in out.read_text().splitlines() if line.startswith("#   ")))
    assert (
        rec["budget"] == 6
        and rec["version"]
        and rec["criterion"]["descriptors"] == ["edge_energy", "pre_edge_norm", "ne_eff_per_nv"]
    )
    assert rec["samplings"]["designed"]["criterion"] <= rec["samplings"]["seed-like"]["criterion"]
    assert rec["samplings"]["designed"]["criterion"] <= rec["samplings"]["uniform"]["criterion"]
    # the other formats from the same design
    d = D.Design(energies=list(e), budget=6, samplings={}, inputs={}, criterion={}, optimiser={})
    D.write_design(tmp_path / "beamline.txt", d)
    assert [float(s) for s in (tmp_path / "beamline.txt").read_text().split()] == list(e)
    D.write_design(tmp_path / "d.json", d)
    assert json.loads((tmp_path / "d.json").read_text())["energies"] == list(e)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_design_range_beyond_the_default_model_window(tmp_path, capsys):
    """A --range that brackets the edge but reaches below the V model's default window
    (5300-5700 eV, scattering.model_window) is designed on a widened f' model
    (VEdge.for_energies), as a scan that wide is reconstructed: the design starts at the
    range start and stays inside it."""
    out = tmp_path / "wide.json"
    rc = main(
        [
            "design-energies",
            "--budget",
            "4",
            "--preset",
            "tiny",
            "--pixels",
            "40",
            "--range",
            "5250",
            "5560",
            "--step",
            "2",
            "-o",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    e = json.loads(out.read_text())["energies"]
    assert len(e) == 4 and e[0] == 5250.0 and max(e) <= 5560.0 and any(x > 5465.1 for x in e)


def _fake_result(path, input_path=""):
    """A joint-like results file whose per-pixel parameters are a realistic V sample."""
    import jax.numpy as jnp

    from diffxas.data import results as io_results
    from diffxas.maps import ChemMaps, Result
    from diffxas.physics.scattering import VEdge
    from diffxas.physics.spectra import n_v

    h, w = 6, 7
    rng = np.random.default_rng(0)
    b1 = rng.uniform(0.03, 0.06, (h, w))
    vals = dict(
        a=0.3 * b1,
        b1=b1,
        b2=rng.uniform(5476, 5484, (h, w)),
        b3=np.full((h, w), 4.0),
        c11=0.012 * b1 / 0.05,
        c12=np.full((h, w), 5466.0),
        c13=np.full((h, w), 1.2),
        c21=0.004 * b1 / 0.05,
        c22=np.full((h, w), 5470.0),
        c23=np.full((h, w), 2.0),
    )
    nv = np.asarray(n_v(jnp.asarray(b1), VEdge.from_tables("V")), np.float64)
    vals["n_other"] = nv * 15.0
    valid = np.ones((h, w), bool)
    valid[0, :] = False
    maps = ChemMaps(
        edge_energy=vals["b2"],
        edge_width=vals["b3"],
        edge_jump=b1,
        pre_edge=np.pi * vals["c11"] * 1.2,
        pre_edge_norm=np.pi * vals["c11"] * 1.2 / b1,
        n_v=nv,
        ne_eff_per_nv=np.full((h, w), 40.0),
        valid=valid,
        pixel_size=6e-8,
        origin=(0.0, 0.0),
        reference_energy=5420.0,
        delta_f2_v=3.9,
        scattering_table="chantler",
        extra=vals,
    )
    e = np.array([5420.0, 5466.0, 5478.0, 5490.0, 5520.0])
    k = e.size
    res = Result(
        method="joint",
        maps=maps,
        energies=e,
        absorption=np.zeros((k, h, w)),
        phase=np.zeros((k, h, w)),
        probes=np.ones((k, 8, 8), np.complex64),
        probe_pixel_size=np.full(k, 6e-8),
        history={},
        config={"joint": {"per_pixel": ["a", "b1", "b2", "b3", "c11", "c21", "n_other"]}},
        input_path=input_path,
    )
    io_results.write_result(path, res)
    return path


def test_cli_design_from_results_file(tmp_path, capsys):
    res = _fake_result(tmp_path / "r.h5", input_path=str(tmp_path / "missing.cxi"))
    out = tmp_path / "e.txt"
    rc = main(["design-energies", "--budget", "5", "--from", str(res), "--fluence", "1e5", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    e = [float(s) for s in out.read_text().split()]
    assert len(e) == 5 and e[0] == 5420.0 and e[-1] <= 5520.0
    # without a fluence and without the input scan: a one-line error naming --fluence
    rc = main(["design-energies", "--budget", "5", "--from", str(res), "-o", str(tmp_path / "e2.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and "--fluence" in err and len(err.strip().splitlines()) == 1
    # a range outside the result's energies
    rc = main(
        [
            "design-energies",
            "--budget",
            "5",
            "--from",
            str(res),
            "--fluence",
            "1e5",
            "--range",
            "5400",
            "5520",
            "-o",
            str(tmp_path / "e3.txt"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "outside the energies" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- (d) bad input


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "0"], "positive integer"),
        (["--budget", "x"], "positive integer"),
        (["--budget", "4", "--range", "5480", "5540"], "do not bracket the V K edge"),
        (["--budget", "4", "--range", "5500", "5420"], "E0 < E1"),
        (["--budget", "9", "--range", "5464.5", "5465.5"], "exceeds the 5 candidate energies"),
        (["--budget", "4", "--from", "nope.h5"], "no such file"),
        (["--budget", "4", "--from", "nope.h5", "--seed", "3"], "do not apply"),
        (["--budget", "4", "--preset", "huge"], "unknown preset"),
        (["--budget", "4", "--nv-fraction", "1.5"], "--nv-fraction"),
        (["--budget", "4", "--params", "a,zz"], "per-pixel parameters"),
    ],
)
def test_cli_bad_input_one_line(tmp_path, capsys, argv, message):
    rc = main(["design-energies"] + argv + ["-o", str(tmp_path / "e.toml")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffxas: error:") and message in lines[0], err
    assert not (tmp_path / "e.toml").exists()
