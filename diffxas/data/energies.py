"""Which energies of a scan to use: the rules, in one place.

Every way diffxas chooses a subset of a list of photon energies lives here, as pure
numpy functions (no file, no JAX):

* :func:`spread_indices` / :func:`spread_energies`: ``N`` of ``K`` energies spread evenly
  *in index*, first and last included, indices ``floor(linspace(0, K - 1, N) + 0.5)``
  (:func:`even_indices` is the rule without the checks). ``simulate --energies N``,
  ``reconstruct --energies N``, the demo's quick mode and the sweeps' ``"uniform"`` choice;
* :func:`match_energies`: a listed set of energies (eV), each matched to one of the
  available energies within :data:`ENERGY_MATCH_TOL_EV` (``reconstruct --energy-list``);
* :func:`energy_indices`: either of the two (by count or by list);
* :func:`choose_energies`: the sweeps' ``[energies]`` choice, ``"uniform"`` or ``"edge"``
  (the ends plus energies inside a window around the absorption edge);
* :func:`index_selection`: energies by 0-based index (None, an int, a slice or a list),
  as :func:`diffxas.data.cxi.read_cxi` and :meth:`diffxas.data.dataset.Dataset.select_energies`
  take them.

Errors are :class:`diffxas.errors.ConfigError` (a count, choice or list that cannot work
for any file) or :class:`diffxas.errors.InputError` (a listed energy or an index that the
given energies do not have), one line each. Decision: the messages name the value and the
energies, never a command-line option, because the same rule serves the CLI, config files
and Python; a caller that knows the option may re-word them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffxas.errors import ConfigError, InputError

__all__ = [
    "EDGE_WINDOW",
    "ENERGY_CHOICES",
    "ENERGY_MATCH_TOL_EV",
    "choose_energies",
    "energy_indices",
    "even_indices",
    "index_selection",
    "match_energies",
    "spread_energies",
    "spread_indices",
]

#: A listed energy matches an available one within this many eV: far below any scan step
#: (>= 0.1 eV), above the rounding of energies stored as float32 or converted from J.
ENERGY_MATCH_TOL_EV = 0.01

#: The ways :func:`choose_energies` picks ``count`` energies.
ENERGY_CHOICES = ("uniform", "edge")

#: ``"edge"`` choice: energies from 5 eV below to 25 eV above the tabulated edge (the
#: pre-edge peak and the rising edge of the V K edge).
EDGE_WINDOW = (-5.0, 25.0)


def even_indices(n_total: int, n: int) -> np.ndarray:
    """The spread rule itself, unchecked: index ``i`` of ``n`` is
    ``floor(i (n_total - 1) / (n - 1) + 1/2)``, i.e. ``floor(linspace(0, n_total - 1, n) + 0.5)``
    with halves rounded up; int array of shape ``(n,)``. ``n = 0`` gives no index, ``n = 1``
    the first; for ``2 <= n <= n_total`` the indices are distinct, increasing, and include
    0 and ``n_total - 1``. :func:`spread_indices` checks a user's count first.

    Decision: computed in integers, ``(2 i (K - 1) + N - 1) // (2 (N - 1))``, so that a tie
    (an exact half) always rounds up as documented; the float ``linspace`` form rounds some
    ties down (e.g. K = 35, N = 29: the 22nd value is 25.5, linspace gives 25.4999...). The two agree
    for every N at the presets' K = 40 and 15 (tests/test_energies.py).
    """
    n_total, n = int(n_total), int(n)
    if n <= 1:
        return np.zeros(max(n, 0), dtype=int)
    i = np.arange(n, dtype=np.int64)
    return ((2 * i * (n_total - 1) + (n - 1)) // (2 * (n - 1))).astype(int)


def _count(n) -> int:
    """``n`` as an int: ints and whole floats (a TOML/JSON 8.0) pass, anything else (bools too) fails."""
    if isinstance(n, (bool, np.bool_)):
        raise ConfigError(f"energy count must be a whole number, got {n!r}")
    if isinstance(n, (int, np.integer)):
        return int(n)
    if isinstance(n, (float, np.floating)) and float(n).is_integer():
        return int(n)
    raise ConfigError(f"energy count must be a whole number, got {n!r}")


def spread_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` indices out of ``range(n_total)`` spread evenly *in index*, first and last
    always included: :func:`even_indices` after checking ``2 <= n <= n_total``.

    Args:
        n_total: ``K``, the number of energies available.
        n: ``N``, how many to keep (an int, or a whole float).

    Returns:
        int array of shape ``(N,)``, strictly increasing, ``[0, ..., K - 1]``. With the
        seed's energy list (denser over the pre-edge and the edge) the choice keeps that
        denser sampling.

    Raises:
        ConfigError: ``n`` not a whole number, below 2 or above ``n_total``.
    """
    n = _count(n)
    if n < 2:
        raise ConfigError(f"energy count must be at least 2 (the first and the last energy), got {n}")
    if n > n_total:
        raise ConfigError(f"energy count {n} is more than the {n_total} energies available")
    return even_indices(int(n_total), n)


def spread_energies(energies: Sequence[float], n: int) -> tuple[float, ...]:
    """``n`` of ``energies`` (eV, in the given order) spread evenly in index
    (:func:`spread_indices`), as a tuple of floats in eV."""
    e = [float(x) for x in energies]
    return tuple(e[i] for i in spread_indices(len(e), n))


def match_energies(energies, listed, tol_ev: float = ENERGY_MATCH_TOL_EV) -> np.ndarray:
    """Indices into ``energies`` of the energies ``listed``, each matched within ``tol_ev``.

    Args:
        energies: ``(K,)`` the available energies, eV (a file's).
        listed: ``(L,)`` the wanted energies, eV, any order; ``L >= 2``.
        tol_ev: largest accepted ``|available - listed|``, eV.

    Returns:
        int array ``(L,)`` of distinct indices into ``energies``, sorted increasing.

    Raises:
        ConfigError: fewer than two listed energies, or two listed energies matching the
            same available one.
        InputError: a listed energy with no available energy within ``tol_ev`` (the message
            gives the nearest one and the range available).
    """
    e = np.asarray(energies, dtype=np.float64).ravel()
    want = np.asarray(listed, dtype=np.float64).ravel()
    if want.size < 2:
        raise ConfigError(f"need at least two listed energies, got {want.size}")
    idx: dict[int, float] = {}
    for x in want:
        i = int(np.argmin(np.abs(e - x)))
        if not abs(e[i] - x) <= tol_ev:
            raise InputError(
                f"{x:.10g} eV is not one of the {e.size} energies available within {tol_ev:g} eV "
                f"(nearest {e[i]:.2f} eV; they run from {e.min():.2f} to {e.max():.2f} eV)"
            )
        if i in idx:
            raise ConfigError(
                f"listed energies {idx[i]:.10g} eV and {x:.10g} eV both match the energy {e[i]:.2f} eV; list each once"
            )
        idx[i] = float(x)
    return np.asarray(sorted(idx), dtype=int)


def energy_indices(energies, count: int | None = None, listed=None, tol_ev: float = ENERGY_MATCH_TOL_EV) -> np.ndarray:
    """Indices into ``energies`` (``(K,)`` eV, increasing) of a subset: ``count`` spread
    evenly in index (:func:`spread_indices`), or the energies ``listed`` (eV) matched within
    ``tol_ev`` (:func:`match_energies`). Exactly one of the two; int array, increasing.
    Raises ConfigError / InputError (one line) as those two do."""
    e = np.asarray(energies, dtype=np.float64).ravel()
    if (count is None) == (listed is None):
        raise ConfigError("choose the energies either by count or by a list, not both (or neither)")
    if count is not None:
        return spread_indices(e.size, count)
    return match_energies(e, listed, tol_ev)


def choose_energies(
    energies: Sequence[float],
    count: int,
    choice: str = "uniform",
    window: Sequence[float] = EDGE_WINDOW,
    edge_ev: float | None = None,
) -> tuple[float, ...]:
    """``count`` of ``energies`` (eV, any order; used sorted), as a sorted tuple in eV.

    * ``"uniform"``: :func:`spread_indices` on the sorted energies (first and last included);
    * ``"edge"``: the first and last energies (baseline below, level above the edge), the
      other ``count - 2`` spread evenly in index (:func:`even_indices`) among the energies
      inside ``window`` (``[lo, hi]`` eV relative to the edge energy ``edge_ev``, eV, which
      ``"edge"`` needs); if the window holds too few, the energies nearest to it outside
      fill up.

    ``count`` equal to the number of energies returns them all, whatever the choice.

    Raises:
        ConfigError: a count outside ``2..K`` or not whole, an unknown ``choice``, a bad
            ``window``, or ``"edge"`` without ``edge_ev``.
    """
    e = np.asarray(sorted(float(x) for x in energies))
    k = e.size
    count = _count(count)
    if choice not in ENERGY_CHOICES:
        raise ConfigError(f"energy choice must be one of {', '.join(ENERGY_CHOICES)}, got {choice!r}")
    idx = spread_indices(k, count)  # validates the count
    if count == k or choice == "uniform":
        return tuple(float(x) for x in e[idx])
    if len(window) != 2 or not window[0] < window[1]:
        raise ConfigError(f"edge window must be [lo, hi] eV relative to the edge, lo < hi, got {window!r}")
    if edge_ev is None:
        raise ConfigError("the 'edge' energy choice needs the edge energy in eV")
    lo, hi = float(edge_ev) + window[0], float(edge_ev) + window[1]
    chosen = {0, k - 1}
    inner = [i for i in range(1, k - 1) if lo <= e[i] <= hi]
    need = count - 2
    if len(inner) >= need:
        chosen.update(inner[j] for j in even_indices(len(inner), need))
    else:
        chosen.update(inner)
        rest = sorted(
            (i for i in range(1, k - 1) if i not in chosen), key=lambda i: min(abs(e[i] - lo), abs(e[i] - hi))
        )
        chosen.update(rest[: need - len(inner)])
    return tuple(float(x) for x in e[sorted(chosen)])


def index_selection(n_total: int, selection) -> list[int]:
    """0-based indices into ``n_total`` energies selected by ``selection``: None (all), an
    int, a slice, or a sequence/array of ints (negative ones count from the end, as in
    Python). Returns sorted distinct indices (a list of ints, at least one).

    Raises:
        InputError: a non-integer or out-of-range index, or a selection of no energy.
    """
    if selection is None:
        return list(range(n_total))
    if isinstance(selection, slice):
        idx = list(range(n_total)[selection])
    else:
        raw = [selection] if np.ndim(selection) == 0 else list(np.asarray(selection).ravel())
        idx = []
        for i in raw:
            if isinstance(i, (bool, np.bool_)) or not float(i).is_integer():
                raise InputError(f"energy index {i} is not an integer")
            i = int(i)
            if not -n_total <= i < n_total:
                raise InputError(f"energy index {i} out of range 0..{n_total - 1}")
            idx.append(i % n_total)
        idx = sorted(set(idx))
    if not idx:
        raise InputError(f"no energies selected by {selection!r}")
    return idx
