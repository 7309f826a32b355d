"""diffxas.data.energies: the rules that choose energies (spread in index, listed, sweep choice, by index)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from diffxas.data import energies as E
from diffxas.errors import ConfigError, InputError

# (K, N) -> indices, computed by hand from i (K - 1) / (N - 1) + 1/2, floored:
HAND = {
    (40, 2): [0, 39],
    (6, 3): [0, 3, 5],  # 0, 2.5, 5 -> a tie rounds up: 3
    (10, 4): [0, 3, 6, 9],  # 0, 3, 6, 9
    (5, 4): [0, 1, 3, 4],  # 0, 1.33, 2.67, 4
    (7, 5): [0, 2, 3, 5, 6],  # 0, 1.5, 3, 4.5, 6
    (15, 6): [0, 3, 6, 8, 11, 14],  # 0, 2.8, 5.6, 8.4, 11.2, 14
    (40, 8): [0, 6, 11, 17, 22, 28, 33, 39],  # steps of 39/7 = 5.571
    (4, 4): [0, 1, 2, 3],
}


@pytest.mark.parametrize("kn, want", sorted(HAND.items()))
def test_spread_indices_hand_computed(kn, want):
    k, n = kn
    assert E.spread_indices(k, n).tolist() == want
    assert E.even_indices(k, n).tolist() == want


def test_even_indices_exact_closed_form():
    """Reference: exact rational floor(i (K - 1) / (N - 1) + 1/2) (fractions.Fraction), every
    0 <= N <= K <= 80; exact equality. The float form floor(linspace + 0.5) agrees at the
    presets' K = 40 and 15 for every N, and rounds a tie down at K = 35, N = 29 (value 25.5)."""
    for k in range(1, 81):
        for n in range(0, k + 1):
            ref = [int((Fraction(i * (k - 1), n - 1) + Fraction(1, 2)).__floor__()) if n > 1 else 0 for i in range(n)]
            assert E.even_indices(k, n).tolist() == ref, (k, n)
    for k in (40, 15):
        for n in range(2, k + 1):
            assert E.even_indices(k, n).tolist() == np.floor(np.linspace(0, k - 1, n) + 0.5).astype(int).tolist()
    assert E.even_indices(35, 29)[21] == 26 and np.floor(np.linspace(0, 34, 29)[21] + 0.5) == 25


def test_spread_properties():
    """First and last included, strictly increasing, all distinct, for 2 <= N <= K <= 60."""
    for k in range(2, 61):
        for n in range(2, k + 1):
            idx = E.spread_indices(k, n)
            assert idx[0] == 0 and idx[-1] == k - 1 and np.all(np.diff(idx) > 0) and idx.size == n


def test_spread_energies_and_whole_float_count():
    assert E.spread_energies([1.0, 2.0, 3.0, 4.0, 5.0], 3) == (1.0, 3.0, 5.0)
    assert E.spread_indices(6, 3.0).tolist() == [0, 3, 5]  # a TOML/JSON 3.0 is a count


@pytest.mark.parametrize(
    "n, words",
    [
        (1, "energy count must be at least 2 (the first and the last energy), got 1"),
        (7, "energy count 7 is more than the 6 energies available"),
        (2.5, "energy count must be a whole number, got 2.5"),
        (True, "energy count must be a whole number, got True"),
        ("3", "energy count must be a whole number, got '3'"),
    ],
)
def test_spread_errors_name_the_value_not_an_option(n, words):
    with pytest.raises(ConfigError) as info:
        E.spread_indices(6, n)
    msg = str(info.value)
    assert msg == words and "\n" not in msg and "--" not in msg


FILE = [5420.0, 5450.0, 5465.0, 5466.0, 5480.0, 5540.0]


def test_match_energies_within_tolerance():
    """Listed energies match within ENERGY_MATCH_TOL_EV = 0.01 eV (a J -> eV round trip or
    float32 storage moves 5466 eV by ~1e-4 eV); any order; indices sorted."""
    stored = np.asarray([5420.0, 5465.3, 5466.7, 5540.0], np.float32).astype(np.float64)
    assert stored[1] != 5465.3  # float32 storage moved it (by 2e-4 eV)
    assert E.match_energies(stored, [5540.0, 5465.3, 5420.0]).tolist() == [0, 1, 3]
    assert E.match_energies(FILE, [5466.009, 5480.0 - 0.009]).tolist() == [3, 4]
    assert E.match_energies(FILE, [5466.02, 5480.0], tol_ev=0.05).tolist() == [3, 4]
    with pytest.raises(InputError) as info:
        E.match_energies(FILE, [5466.011, 5480.0])
    assert str(info.value) == (
        "5466.011 eV is not one of the 6 energies available within 0.01 eV "
        "(nearest 5466.00 eV; they run from 5420.00 to 5540.00 eV)"
    )


def test_match_energies_errors():
    with pytest.raises(ConfigError, match="^need at least two listed energies, got 1$"):
        E.match_energies(FILE, [5466.0])
    with pytest.raises(ConfigError) as info:
        E.match_energies(FILE, [5466.0, 5466.001])
    assert str(info.value) == "listed energies 5466 eV and 5466.001 eV both match the energy 5466.00 eV; list each once"


def test_energy_indices_by_count_or_list():
    assert E.energy_indices(FILE, count=3).tolist() == [0, 3, 5]
    assert E.energy_indices(FILE, listed=[5450, 5540]).tolist() == [1, 5]
    for kw in ({}, {"count": 3, "listed": [5450, 5540]}):
        with pytest.raises(ConfigError, match="either by count or by a list"):
            E.energy_indices(FILE, **kw)


def test_old_homes_reexport_the_one_rule():
    """dataset, pipeline and the sweep spec use these functions (no copies left)."""
    from diffxas.app import pipeline
    from diffxas.app.sweep import spec
    from diffxas.data import dataset

    assert dataset.energy_indices is E.energy_indices and dataset.spread_indices is E.spread_indices
    assert dataset.even_indices is E.even_indices
    assert pipeline.spread_indices is E.spread_indices and pipeline.select_energies is E.spread_energies
    assert spec.EDGE_WINDOW is E.EDGE_WINDOW and spec.ENERGY_CHOICES is E.ENERGY_CHOICES


def test_choose_energies_uniform_and_edge():
    """Uniform = spread_indices on the sorted list; edge = the ends plus the window's energies
    spread in index (hand-checked on a 12-energy list with edge 5465 eV, window [-5, 25])."""
    e = [5420.0, 5440.0, 5460.0, 5462.0, 5465.0, 5466.0, 5470.0, 5480.0, 5490.0, 5495.0, 5520.0, 5540.0]
    # uniform, 4 of 12: i 11 / 3 + 1/2 floored = 0, 4, 7, 11 (any input order: sorted first)
    assert E.choose_energies(e[::-1], 4) == (5420.0, 5465.0, 5480.0, 5540.0)
    # inner energies in [5460, 5490]: indices 2..8 (7 of them); 3 of 7 -> 0, 3, 6 -> 5460, 5466, 5490
    assert E.choose_energies(e, 5, "edge", edge_ev=5465.0) == (5420.0, 5460.0, 5466.0, 5490.0, 5540.0)
    assert E.choose_energies(e, 12, "edge", edge_ev=5465.0) == tuple(e)  # all: whatever the choice
    # a window holding one energy (5465): the nearest outside fill up (5466, then 5462)
    assert E.choose_energies(e, 5, "edge", window=(0.0, 0.5), edge_ev=5465.0) == (
        5420.0,
        5462.0,
        5465.0,
        5466.0,
        5540.0,
    )


@pytest.mark.parametrize(
    "args, kw, words",
    [
        ((13,), {}, "energy count 13 is more than the 12 energies available"),
        ((4, "random"), {}, "energy choice must be one of uniform, edge, got 'random'"),
        ((4, "edge"), {"window": (5.0, -5.0), "edge_ev": 5465.0}, "edge window must be [lo, hi]"),
        ((4, "edge"), {}, "the 'edge' energy choice needs the edge energy in eV"),
    ],
)
def test_choose_energies_errors(args, kw, words):
    with pytest.raises(ConfigError) as info:
        E.choose_energies(list(range(5420, 5432)), *args, **kw)
    assert str(info.value).startswith(words)


def test_sweep_spec_prefixes_its_section():
    from diffxas.app.sweep import spec

    with pytest.raises(ConfigError, match=r"^\[energies\] energy count 41 is more than the 40 energies available$"):
        spec.select_energies(list(range(5420, 5460)), 41)


def test_index_selection():
    assert E.index_selection(5, None) == [0, 1, 2, 3, 4]
    assert E.index_selection(5, 2) == [2]
    assert E.index_selection(5, -1) == [4]
    assert E.index_selection(5, slice(1, None, 2)) == [1, 3]
    assert E.index_selection(5, [3, 0, 3, np.int64(1)]) == [0, 1, 3]
    assert E.index_selection(5, np.array([2.0])) == [2]
    for sel, words in [
        ([5], "energy index 5 out of range 0..4"),
        ([-6], "energy index -6 out of range 0..4"),
        ([1.5], "energy index 1.5 is not an integer"),
        ([True], "energy index True is not an integer"),
        ([], "no energies selected by []"),
        (slice(3, 3), "no energies selected by slice(3, 3, None)"),
    ]:
        with pytest.raises(InputError) as info:
            E.index_selection(5, sel)
        assert str(info.value) == words
