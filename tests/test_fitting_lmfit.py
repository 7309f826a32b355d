"""The per-pixel fit of eq. 1 against lmfit (reference: lmfit's Levenberg-Marquardt,
``leastsq`` with MINUIT-style bounds, the least-squares library XAS users fit with, e.g.
through xraylarch; a test-only dependency, never used by diffxas itself).

Synthetic spectra at the seed's 40 energies (``diffxas.simulate.presets.SEED_ENERGIES``,
5420-5540 eV): eq. 1 with parameters drawn around the phantom's four domain types
(``diffxas.simulate.presets.DOMAIN_TYPES``), every pixel with its own pre-edge shape, plus white
Gaussian noise of known sigma. lmfit fits the same model (written here in numpy) with the
same bounds from a generic start (edge at the steepest point, peaks at 5466 and 5470 eV).
The chi-square is ``sum(residual^2) / sigma^2``.

Criterion (issue #25): at most 1 % of the spectra end with diffxas's chi-square more than
1 above lmfit's (lmfit sometimes ends far *above* diffxas from its generic start; that is
not counted). Measured on 200 spectra per noise level (slow test), before the restarts of
:func:`diffxas.solvers.twostep.fitting.multistart_fit`: 1.5 % (sigma 0.003) and 8.5 % (sigma 0.01) with
``FitConfig(tie_pre_edge=False)`` (the seed's fit), 1.5 % and 9.0 % with 40 iterations
(``TwoStepConfig.fast()``); after: 0 % and 0 % (seed), 0 % and 0.5 % (fast); the tied
default 0 % throughout.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from diffxas.physics.spectra import PARAM_NAMES, XanesParams, absorption
from diffxas.simulate.presets import DOMAIN_TYPES, SEED_ENERGIES
from diffxas.solvers.twostep.fitting import FitConfig, bounds_for, fit_stack

lmfit = pytest.importorskip("lmfit")

E = np.asarray(SEED_ENERGIES, np.float64)
NOISES = (0.003, 0.01)
SHAPE = ("c12", "c13", "c22", "c23")


def spectra(n: int, noise: float, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(K, n) noisy spectra of eq. 1 and their true parameters (n,) each."""
    rng = np.random.default_rng(seed)
    types = list(DOMAIN_TYPES.values())
    t = [types[i] for i in rng.integers(0, len(types), n)]

    def g(k):
        return np.array([d[k] for d in t])

    b1 = rng.uniform(0.1, 0.4, n)
    c13 = g("c13") + rng.uniform(-0.15, 0.15, n)
    pen = g("pen") * rng.uniform(0.8, 1.2, n)
    true = {
        "a": rng.uniform(0.02, 0.08, n),
        "b1": b1,
        "b2": g("b2") + rng.uniform(-1, 1, n),
        "b3": g("b3") + rng.uniform(-0.3, 0.3, n),
        "c11": pen * b1 / (np.pi * c13),
        "c12": g("c12") + rng.uniform(-0.3, 0.3, n),
        "c13": c13,
        "c21": g("r21") * pen * b1 / (np.pi * c13),
        "c22": g("c22") + rng.uniform(-0.5, 0.5, n),
        "c23": g("c23") + rng.uniform(-0.3, 0.3, n),
    }
    clean = absorption(
        XanesParams(**{k: jnp.asarray(v, jnp.float32) for k, v in true.items()}),
        jnp.asarray(E, jnp.float32),
    )
    return np.asarray(clean, np.float64) + noise * rng.standard_normal((len(E), n)), true


def model(p: dict[str, float], e: np.ndarray) -> np.ndarray:
    """Eq. 1 in plain numpy (independent of diffxas.physics.spectra)."""
    return (
        p["a"]
        + 0.5 * p["b1"] * (1 + erf((e - p["b2"]) / p["b3"]))
        + p["c11"] / (1 + ((e - p["c12"]) / p["c13"]) ** 2)
        + p["c21"] / (1 + ((e - p["c22"]) / p["c23"]) ** 2)
    )


def lmfit_rss(y: np.ndarray, bounds, fixed: dict[str, float] | None = None) -> float:
    """lmfit's sum of squared residuals from a generic start, with diffxas's bounds."""
    P = lmfit.Parameters()
    a0 = y[:3].mean()
    P.add("a", a0)
    P.add("b1", y[-3:].mean() - a0)
    P.add("b2", float(E[np.argmax(np.gradient(y, E))]), min=bounds["b2"][0], max=bounds["b2"][1])
    P.add("b3", 3.0, min=bounds["b3"][0], max=bounds["b3"][1])
    for amp, (pos, width), (pname, wname) in (
        ("c11", (5466.0, 1.0), ("c12", "c13")),
        ("c21", (5470.0, 2.0), ("c22", "c23")),
    ):
        P.add(amp, 0.01, min=0.0)
        P.add(pname, pos, min=bounds[pname][0], max=bounds[pname][1])
        P.add(wname, width, min=bounds[wname][0], max=bounds[wname][1])
    for k, v in (fixed or {}).items():
        P[k].set(value=v, vary=False)
    r = lmfit.minimize(lambda p: model(p.valuesdict(), E) - y, P, method="leastsq", max_nfev=20000)
    return float(np.sum(r.residual**2))


def excess_chi2(n: int, noise: float, cfg: FitConfig, seed: int = 1) -> np.ndarray:
    """diffxas's chi-square minus lmfit's, per spectrum (n,)."""
    Y, _ = spectra(n, noise, seed)
    fr = fit_stack(Y.reshape(len(E), 1, n), E, np.ones((1, n), bool), cfg)
    gp = fr.global_params
    bounds = bounds_for(E, cfg, gp["pre_edge_max"])
    p = {k: fr.params[k][0] for k in PARAM_NAMES}
    fixed = {k: gp[k] for k in SHAPE} if cfg.tie_pre_edge else None
    ours = np.array([np.sum((model({k: p[k][i] for k in PARAM_NAMES}, E) - Y[:, i]) ** 2) for i in range(n)])
    ref = np.array([lmfit_rss(Y[:, i], bounds, fixed) for i in range(n)])
    return (ours - ref) / noise**2


@pytest.mark.parametrize("noise", NOISES)
def test_ten_parameter_fit_reaches_lmfits_minimum(noise):
    """40 spectra per noise level, the seed's ten-parameter fit (the default-run version of
    the slow test below). 40 spectra cannot resolve a 1 % rate, so this asks for at most
    one spectrum (2.5 %) more than 1 above lmfit's chi-square and none more than 2 above.
    Measured at this commit: sigma 0.003: none above; sigma 0.01: one, by 1.07 (a narrow
    second peak on one noisy point next to the first peak, which lmfit reaches by moving
    both peaks at once). Before the restarts: sigma 0.003: one by 8.4; sigma 0.01: three,
    by 2.4, 3.2 and 4.3 (this test failed at both noise levels)."""
    d = excess_chi2(40, noise, FitConfig(tie_pre_edge=False, chunk=256))
    assert np.sum(d > 1.0) <= 1 and d.max() <= 2.0, np.sort(d)[-5:]


@pytest.mark.slow
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize(
    "name, cfg",
    [
        ("seed", FitConfig(tie_pre_edge=False)),
        ("fast", FitConfig(iterations=40)),
        ("tied", FitConfig(tie_pre_edge=True)),
    ],
)
def test_fit_reaches_lmfits_minimum_200(noise, name, cfg):
    """Issue #25's criterion on 200 spectra per noise level: at most 1 % (2 spectra) more
    than 1 above lmfit's chi-square, for the seed's fit, the fast schedule's (40 LM
    iterations) and the tied default (shape fixed at the global values; lmfit then fits
    the same six parameters)."""
    d = excess_chi2(200, noise, cfg)
    assert np.mean(d > 1.0) <= 0.01, (name, np.sort(d)[-5:])
