"""Tests of the spectral model (diffxas.physics.spectra): eq. 1, derived quantities, KK-consistent phase.

References: the seed's eq. 1-4 written out by hand in numpy; brute-force principal-value
integrals (scipy.integrate.quad, weight='cauchy'); finite differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import integrate
from scipy.special import erf

from diffxas.physics import spectra
from diffxas.physics.constants import R_E, Z
from diffxas.physics.geometry import wavelength
from diffxas.physics.scattering import VEdge

P = dict(
    a=0.01, b1=0.05, b2=5480.0, b3=4.0, c11=0.012, c12=5466.0, c13=1.2, c21=0.004, c22=5470.0, c23=2.0, n_other=3e23
)


@pytest.fixture(scope="module")
def edge():
    return VEdge.from_tables("V")


def test_absorption_is_eq1():
    # Reference: eq. 1 of Uematsu et al. (2023) in numpy; tolerance 1e-6 relative (float32).
    e = np.linspace(5420, 5540, 61)
    p = spectra.XanesParams.from_dict(P)
    ref = (
        P["a"]
        + P["b1"] / 2 * (1 + erf((e - P["b2"]) / P["b3"]))
        + P["c11"] / (1 + ((e - P["c12"]) / P["c13"]) ** 2)
        + P["c21"] / (1 + ((e - P["c22"]) / P["c23"]) ** 2)
    )
    np.testing.assert_allclose(np.asarray(spectra.absorption(p, e)), ref, rtol=1e-5)


def test_broadcasting_over_pixels():
    d = dict(P)
    d["b2"] = np.array([[5478.0, 5482.0], [5480.0, 5484.0]])
    p = spectra.XanesParams.from_dict(d)
    out = spectra.absorption(p, np.array([5420.0, 5480.0, 5540.0]))
    assert out.shape == (3, 2, 2)
    assert float(out[1, 0, 0]) > float(out[1, 0, 1])  # earlier edge absorbs more at 5480 eV


def test_derived_quantities():
    p = spectra.XanesParams.from_dict(P)
    assert float(spectra.pre_edge(p)) == pytest.approx(np.pi * 0.012 * 1.2, rel=1e-6)
    assert float(spectra.pre_edge_norm(p)) == pytest.approx(np.pi * 0.012 * 1.2 / 0.05, rel=1e-6)


def test_n_v_is_eq2(edge):
    # eq. 2: N_V = Delta(mu t) / (r_e lambda Delta f''); tolerance 1e-6 relative.
    nv = float(spectra.n_v(jnp.float32(0.05), edge))
    assert nv == pytest.approx(0.05 / (R_E * wavelength(float(edge.edge_ev)) * float(edge.delta_f2)), rel=1e-5)


def test_phase_far_below_edge_is_tabulated(edge):
    """Far below the edge the model's f'_V is the tabulated background plus the KK tails;
    the phase equals -r_e lambda (N_V (Z_V + f'_V) + n_other) with f'_V from f1_v.
    Reference: eq. 3 written out; tolerance 1e-4 relative (float32)."""
    p = spectra.XanesParams.from_dict(P)
    e = np.array([5420.0, 5466.0, 5480.0, 5540.0])
    phi = np.asarray(spectra.phase(p, e, edge), np.float64)
    f1 = np.asarray(spectra.f1_v(p, e, edge), np.float64)
    nv = float(spectra.n_v(jnp.float32(P["b1"]), edge))
    lam = wavelength(e)
    # the model uses N_V from lambda_0 and scales the V term by lambda/lambda_0
    ref = -R_E * lam * (nv * (Z["V"] + f1) + P["n_other"])
    np.testing.assert_allclose(phi, ref, rtol=1e-4)


def test_f1_is_kk_of_modelled_f2(edge):
    """The model's f'_V(E) minus its background equals the brute-force principal-value
    Hilbert transform of the modelled f''_V edge structure minus the tabulated step
    (plus the tabulated step's own log term). Reference: scipy quad(weight='cauchy');
    tolerance 2e-3 electrons (float32 evaluation of the model)."""
    p = spectra.XanesParams.from_dict(P)
    df2 = float(edge.delta_f2)
    e0 = float(edge.edge_ev)

    def f2_struct(x):
        step = 0.5 * (1 + erf((x - P["b2"]) / P["b3"])) - (x > e0)
        lor = (P["c11"] / P["b1"]) / (1 + ((x - P["c12"]) / P["c13"]) ** 2) + (P["c21"] / P["b1"]) / (
            1 + ((x - P["c22"]) / P["c23"]) ** 2
        )
        return df2 * (step + lor)

    for E in (5440.0, 5466.3, 5478.7, 5500.0):
        lo, hi = E - 4000.0, E + 4000.0
        pv = -integrate.quad(f2_struct, lo, hi, weight="cauchy", wvar=E, limit=800)[0] / np.pi
        # Lorentzian tails beyond +-4000 eV: analytic remainder of (1/pi) int c/(1+u^2)/(E-x)
        model = (
            float(spectra.f1_v(p, np.array([E]), edge)[0])
            - float(edge.f1_background(jnp.float32(E)))
            - df2 / np.pi * np.log(abs(E - e0))
        )
        assert model == pytest.approx(pv, abs=2e-3), E


def test_linear_design_reproduces_absorption():
    p = spectra.XanesParams.from_dict(P)
    e = np.linspace(5420, 5540, 30)
    dm = np.asarray(spectra.linear_design(e, P["b2"], P["b3"], P["c12"], P["c13"], P["c22"], P["c23"]))
    np.testing.assert_allclose(
        dm @ np.array([P["a"], P["b1"], P["c11"], P["c21"]]), np.asarray(spectra.absorption(p, e)), rtol=1e-5
    )


def test_gradients_of_phase_and_absorption(edge):
    # check_grads (finite differences, order 1, rev) w.r.t. every parameter, float64.
    with jax.enable_x64(True):
        e = jnp.asarray([5440.0, 5466.0, 5479.0, 5500.0])
        x0 = jnp.asarray([P[k] for k in spectra.PARAM_NAMES], jnp.float64)

        def f(x):
            p = spectra.XanesParams(**dict(zip(spectra.PARAM_NAMES, x)), n_other=jnp.float64(0.0))
            return jnp.sum(spectra.absorption(p, e) ** 2) + jnp.sum(spectra.phase(p, e, edge) ** 2)

        check_grads(f, (x0,), order=1, modes=("rev",), eps=1e-4, rtol=1e-3)


@pytest.mark.parametrize("element", ["Mn", "Ni"])
def test_phase_other_absorber_uses_its_z(element):
    """Another absorber (K edge in the table): the phase is -r_e lambda (N (Z + f') + n_other)
    with that element's Z and f' (its own VEdge), the V parameters moved to its edge.
    Reference: eq. 3 written out with Z from xraydb; tolerance 1e-4 relative (float32)."""
    import xraydb

    ed = VEdge.from_tables(element)
    assert ed.element == element and ed.z == xraydb.atomic_number(element)
    shift = float(ed.edge_ev) - 5465.1
    p = spectra.XanesParams.from_dict({**P, **{k: P[k] + shift for k in ("b2", "c12", "c22")}})
    e = np.array([5420.0, 5466.0, 5480.0, 5540.0]) + shift
    phi = np.asarray(spectra.phase(p, e, ed), np.float64)
    f1 = np.asarray(spectra.f1_v(p, e, ed), np.float64)
    nv = float(spectra.n_v(jnp.float32(P["b1"]), ed))
    ref = -R_E * wavelength(e) * (nv * (xraydb.atomic_number(element) + f1) + P["n_other"])
    np.testing.assert_allclose(phi, ref, rtol=1e-4)
    # and it is not V's Z: the phase with V's Z differs by r_e lambda N (Z - 23), far above 1e-4
    assert np.all(np.abs(ref - (-R_E * wavelength(e) * (nv * (Z["V"] + f1) + P["n_other"]))) > 1e-3 * np.abs(ref))


# ----------------------------------------------------------------------------- parameters -> maps

#: four pixels (1, 4): the fixture P; a V-poorer pixel with a later, sharper edge and a
#: smaller pre-edge peak; no edge (b1 = 0: PE/dmt and the ratios undefined); c11 unknown (NaN)
MAP_PIXELS = [
    P,
    dict(P, b1=0.02, b2=5482.5, b3=2.5, c11=0.003, c13=0.7),
    dict(P, b1=0.0),
    dict(P, c11=np.nan),
]
PHASE_REF = np.array([[-0.30, -0.12, -0.05, -0.20]])  # rad at the reference energy


def _pixel_maps():
    return {k: np.array([[px[k] for px in MAP_PIXELS]], np.float64) for k in spectra.PARAM_NAMES}


def test_maps_from_params_is_the_closed_form(edge):
    """The seven maps against eq. 1-4 of Uematsu et al. (2023) written out in float64 numpy:
    PE = pi c11 c13, PE/dmt = PE / b1, N_V = b1 / (r_e lambda(E_edge) Delta f''_V),
    Re[N_e^eff]/N_V = [-phi(E_ref) / (r_e lambda(E_ref))] / N_V; the edge maps are b2, b3, b1
    exactly. Tolerance 2e-6 relative (the block evaluates in float32: a few roundings of 6e-8)."""
    e_ref = 5420.0
    maps, finite = spectra.maps_from_params(_pixel_maps(), PHASE_REF, e_ref, edge)
    assert set(maps) == {
        "edge_energy",
        "edge_width",
        "edge_jump",
        "pre_edge",
        "pre_edge_norm",
        "n_v",
        "ne_eff_per_nv",
    }
    assert all(v.dtype == np.float64 and v.shape == (1, 4) for v in maps.values())
    np.testing.assert_array_equal(finite, [[True, True, False, False]])
    for k, name in (("b2", "edge_energy"), ("b3", "edge_width"), ("b1", "edge_jump")):
        np.testing.assert_array_equal(maps[name], _pixel_maps()[k])
    lam0 = wavelength(float(edge.edge_ev))
    for i, px in enumerate(MAP_PIXELS[:2]):
        pe = np.pi * px["c11"] * px["c13"]
        nv = px["b1"] / (R_E * lam0 * float(edge.delta_f2))
        ne = -PHASE_REF[0, i] / (R_E * wavelength(e_ref)) / nv
        got = {k: maps[k][0, i] for k in ("pre_edge", "pre_edge_norm", "n_v", "ne_eff_per_nv")}
        want = {"pre_edge": pe, "pre_edge_norm": pe / px["b1"], "n_v": nv, "ne_eff_per_nv": ne}
        for k in got:
            assert got[k] == pytest.approx(want[k], rel=2e-6), (i, k)
    # b1 = 0: PE is defined, the ratios are not (inf/NaN, hence not finite)
    assert maps["pre_edge"][0, 2] == pytest.approx(np.pi * P["c11"] * P["c13"], rel=2e-6)
    assert maps["n_v"][0, 2] == 0.0 and not np.isfinite(maps["pre_edge_norm"][0, 2])
    # an unknown parameter: every derived map NaN (not the PE of a zero c11)
    assert all(np.isnan(maps[k][0, 3]) for k in ("pre_edge", "pre_edge_norm", "n_v", "ne_eff_per_nv"))


def spy_maps_from_params(monkeypatch, module) -> list:
    """Replace ``module.maps_from_params`` by a wrapper of the real one that records each
    call's output."""
    calls = []
    real = spectra.maps_from_params

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(module, "maps_from_params", spy)
    return calls


def test_two_step_maps_are_the_one_block(edge, monkeypatch):
    """The two-step's maps_from_fit (reconstruct_two_step and refit_two_step) calls
    maps_from_params once, and its maps are that block's output masked by the fit's
    validity, illumination and finiteness. Reference: the block's own output (exact).
    The joint's side: tests/test_joint_result.py::test_joint_maps_are_the_one_block."""
    from types import SimpleNamespace

    from diffxas.physics.geometry import Grid
    from diffxas.solvers.twostep import run

    calls = spy_maps_from_params(monkeypatch, run)
    fit = SimpleNamespace(
        params=_pixel_maps(),
        valid=np.array([[True, False, True, True]]),
        residual=np.zeros((1, 4)),
        sigma=np.zeros((1, 4)),
    )
    phase_stack = np.stack([PHASE_REF, 2 * PHASE_REF])  # (K=2, 1, 4)
    ill = np.ones((1, 4), bool)
    grid = Grid(pixel_size=5e-8, shape=(1, 4), origin=(0.0, 0.0))
    maps = run.maps_from_fit(fit, phase_stack, [5420.0, 5540.0], 5425.0, edge, grid, ill, "chantler")
    assert len(calls) == 1
    m, finite = calls[0]
    valid = fit.valid & finite
    np.testing.assert_array_equal(maps.valid, valid.astype(np.uint8))
    assert valid.tolist() == [[True, False, False, False]]
    for k, v in m.items():
        np.testing.assert_array_equal(getattr(maps, k), np.where(valid, v, np.nan))
