"""Host-side scattering-factor tables: ``xraydb`` (Chantler) access, edge energies and jumps.

numpy and float64 throughout, no JAX: what :class:`diffxas.physics.scattering.VEdge` is fitted
to, what the simulator reads for the membrane and the other elements, and what the file
summary uses to name the K edges inside a scan. ``f'`` (``f1p``) is the anomalous part only
(``f1 = Z + f'``); the conventions are in :mod:`diffxas.physics.scattering`.

Sources: Chantler tables through ``xraydb`` (C. T. Chantler, J. Phys. Chem. Ref. Data
29, 597 (2000); xraydb 4.5); seed constants from Uematsu et al., PCCP 25, 3867 (2023).
``xraydb`` carries no Henke f1/f2 table, so only ``table="chantler"`` is supported.
See ``docs/physics-scattering.md``.
"""

from __future__ import annotations

import functools

import numpy as np

from diffxas.errors import ConfigError
from diffxas.physics.constants import Z

__all__ = [
    "COMPOSITIONS_PER_V",
    "SEED_CONSTANTS",
    "TABLES",
    "anomalous_factors",
    "check_element",
    "edge_jump_f2",
    "electrons_per_v",
    "k_edges_between",
    "k_edges_text",
    "model_window",
    "table_edge_energy",
]

#: Scattering-factor tables this module can read (xraydb has no Henke f1/f2 table).
TABLES = ("chantler",)

#: The seed paper's constants (Uematsu et al., PCCP 25, 3867 (2023)): anomalous f'
#: at 5420 eV (pre-edge) per element, and the V K-edge jump of f''.
SEED_CONSTANTS = {
    "energy_ev": 5420.0,
    "f1p": {"V": -7.14, "Li": 0.00278, "O": 0.0757},
    "delta_f2_V": 3.53,
    "source": "Uematsu et al., PCCP 25, 3867 (2023)",
}

#: Atoms per V atom of the seed's three phases.
COMPOSITIONS_PER_V = {
    "Li10/7V6/7O2": {"V": 1.0, "Li": 10.0 / 6.0, "O": 14.0 / 6.0},
    "LiVO2": {"V": 1.0, "Li": 1.0, "O": 2.0},
    "LiVO3": {"V": 1.0, "Li": 1.0, "O": 3.0},
}


# ----------------------------------------------------------------------------------------------
# Host-side table access
# ----------------------------------------------------------------------------------------------


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ConfigError(
            f"unknown scattering table {table!r}: only 'chantler' is available (xraydb carries no Henke f1/f2 table)"
        )


def _xraydb():
    """The ``xraydb`` module, imported on first use: its import takes ~1 s (scipy.interpolate,
    SQLAlchemy), which code that only uses this module's jitted functions should not pay."""
    import xraydb  # xraydb: heavy (~1 s), imported only when a table is read

    return xraydb


def _symbol(element) -> str:
    xraydb = _xraydb()
    try:
        return xraydb.atomic_symbol(xraydb.atomic_number(element))
    except Exception:  # xraydb raises ValueError / KeyError / TypeError for unknown input
        raise ConfigError(f"unknown element {element!r} (expected a chemical symbol such as 'V')") from None


def check_element(element, what: str = "element") -> None:
    """One-line ConfigError unless ``element`` is a chemical symbol as written ('V', 'Mn')."""
    if not isinstance(element, str) or _symbol(element) != element:
        raise ConfigError(f"{what} must be a chemical symbol as written (e.g. 'V', 'Mn'), got {element!r}")


def _atomic_number(symbol: str) -> int:
    if symbol in Z:
        return Z[symbol]
    xraydb = _xraydb()
    return int(xraydb.atomic_number(symbol))


@functools.lru_cache(maxsize=16)
def _chantler_nodes(symbol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chantler tabulation nodes (E in eV, f', f'') for an element, float64."""
    xraydb = _xraydb()
    te = np.asarray(xraydb.chantler_energies(symbol), dtype=np.float64)
    # xraydb's f1 is an interpolating (s=0) spline and its f2 a log-log interpolation: both are
    # exact at the nodes, so these are the tabulated values.
    f1 = np.asarray(xraydb.f1_chantler(symbol, te), dtype=np.float64)
    f2 = np.asarray(xraydb.f2_chantler(symbol, te), dtype=np.float64)
    return te, f1, f2


@functools.lru_cache(maxsize=65536)
def _f1_scalar(symbol: str, energy_ev: float) -> float:
    xraydb = _xraydb()
    return float(xraydb.f1_chantler(symbol, energy_ev))


def anomalous_factors(element: str, energy_ev, table: str = "chantler") -> tuple[np.ndarray, np.ndarray]:
    """Tabulated anomalous scattering factors ``(f', f'')`` of ``element`` at ``energy_ev`` (eV).

    ``xraydb.f1_chantler`` returns the anomalous part ``f'`` (``f1 - Z``; e.g. V at
    5420 eV: -4.62), so no ``Z`` is subtracted. ``f'`` is evaluated per energy, i.e. it
    equals ``xraydb.f1_chantler(element, e)`` called with each energy alone: xraydb fits
    its interpolating spline on a window set by the requested range, so a batched xraydb
    call can differ by ~0.01 e and would make a value depend on its neighbours.

    Returns:
        ``(f1p, f2)``: float64 numpy arrays of the shape of ``energy_ev``.

    Raises:
        ConfigError: unknown element or table, or energies outside the table.
    """
    _check_table(table)
    symbol = _symbol(element)
    e = np.asarray(energy_ev, dtype=np.float64)
    te, _, _ = _chantler_nodes(symbol)
    if e.size and not (np.all(np.isfinite(e)) and e.min() >= te[0] and e.max() <= te[-1]):
        raise ConfigError(
            f"photon energies for {symbol} must lie in the Chantler table range [{te[0]:g}, {te[-1]:g}] eV"
        )
    flat = e.reshape(-1)
    f1p = np.array([_f1_scalar(symbol, float(x)) for x in flat], dtype=np.float64).reshape(e.shape)
    xraydb = _xraydb()
    f2 = (
        np.asarray(xraydb.f2_chantler(symbol, flat), dtype=np.float64).reshape(e.shape)
        if flat.size
        else np.zeros(e.shape)
    )
    return f1p, f2


def table_edge_energy(element: str = "V", table: str = "chantler") -> float:
    """K-edge energy (eV) of the table itself: centre of the node pair with the largest f'' rise.

    Chantler tabulates symmetrically about its own edge energy; for V this gives
    5465.10 eV (xraydb's Elam edge table says 5465.0 eV).
    """
    _check_table(table)
    xraydb = _xraydb()
    symbol = _symbol(element)
    e_elam = float(xraydb.xray_edge(symbol, "K").energy)
    te, _, f2 = _chantler_nodes(symbol)
    near = np.nonzero(np.abs(te - e_elam) < 30.0)[0]
    if near.size < 2:
        return e_elam
    i = near[np.argmax(f2[near[1:]] / f2[near[:-1]])]
    return float(0.5 * (te[i] + te[i + 1]))


def model_window(element: str = "V", table: str = "chantler") -> tuple[float, float]:
    """Default energy range (eV) of :meth:`VEdge.from_tables`: from 165 eV below to 235 eV above
    the table's K edge, each end rounded to 10 eV (V: 5300-5700 eV; Mn: 6370-6770 eV).

    The offsets are the V defaults (chosen around the seed's 5420-5540 eV scan) carried to
    any absorber, so every element gets the same span of its own spectrum.
    """
    e0 = table_edge_energy(element, table)
    return float(round((e0 - 165.0) / 10.0) * 10.0), float(round((e0 + 235.0) / 10.0) * 10.0)


@functools.lru_cache(maxsize=256)
def k_edges_between(e_lo: float, e_hi: float) -> tuple[tuple[str, float], ...]:
    """``(symbol, K-edge energy eV)`` of the elements (Z 3-92, xraydb's Elam table) whose K
    edge lies strictly inside ``(e_lo, e_hi)`` eV."""
    xraydb = _xraydb()
    out = []
    for zz in range(3, 93):
        sym = xraydb.atomic_symbol(zz)
        try:
            ek = float(xraydb.xray_edge(sym, "K").energy)
        except Exception:  # no K edge tabulated
            continue
        if e_lo < ek < e_hi:
            out.append((sym, ek))
    return tuple(out)


def k_edges_text(edges) -> str:
    """``"Mn (6539 eV), Fe (7112 eV)"`` for the ``(symbol, eV)`` pairs of :func:`k_edges_between`."""
    return ", ".join(f"{s} ({v:.0f} eV)" for s, v in edges)


def _side_fit(te, f2, edge_ev, lo, hi, deg):
    """Least-squares polynomial (numpy ``Polynomial`` in E - edge_ev) through nodes with lo <= E - E0 <= hi."""
    m = (te - edge_ev >= lo) & (te - edge_ev <= hi)
    if m.sum() <= deg:
        raise ConfigError(
            f"too few table nodes ({int(m.sum())}) between {lo:g} and {hi:g} eV from the edge for a degree-{deg} fit"
        )
    return np.polynomial.Polynomial.fit(te[m] - edge_ev, f2[m], deg).convert()


def _edge_trends(element, edge_ev, table, near_ev, far_ev, deg):
    _check_table(table)
    symbol = _symbol(element)
    if edge_ev is None:
        edge_ev = table_edge_energy(symbol, table)
    if not (0.0 <= near_ev < far_ev):
        raise ConfigError(f"edge-jump window needs 0 <= near_ev < far_ev, got {near_ev:g}, {far_ev:g}")
    te, _, f2 = _chantler_nodes(symbol)
    below = _side_fit(te, f2, edge_ev, -far_ev, -near_ev, deg)
    above = _side_fit(te, f2, edge_ev, near_ev, far_ev, deg)
    return float(edge_ev), below, above


def edge_jump_f2(
    element: str = "V",
    edge_ev: float | None = None,
    table: str = "chantler",
    near_ev: float = 25.0,
    far_ev: float = 300.0,
    deg: int = 1,
) -> float:
    """Jump ``Delta f''`` of the tabulated f'' across the K edge.

    Each side's tabulated nodes with ``near_ev <= |E - E0| <= far_ev`` are fitted with a
    degree-``deg`` polynomial (default a straight line), and the two fits are
    extrapolated to ``E0`` (default :func:`table_edge_energy`, 5465.10 eV for V).
    The default window starts 25 eV from the edge because Chantler's f'' is broadened
    there (V: 0.466 at -15 eV and 3.918 at +15 eV against far trends of 0.445 and
    3.96); windows starting nearer the edge underestimate the jump (5-30 eV: 3.33).
    For V with the defaults this gives 3.512 (the seed used 3.53).
    """
    e0, below, above = _edge_trends(element, edge_ev, table, near_ev, far_ev, deg)
    return float(above(0.0) - below(0.0))


def electrons_per_v(
    composition: dict[str, float],
    energy_ev: float,
    table: str = "chantler",
    f1_override: dict[str, float] | None = None,
) -> float:
    """``Re[N_e^eff] / N_V = sum_j n_j (Z_j + f'_j(E))`` for ``n_j`` atoms per V atom.

    Args:
        composition: element -> atoms per V atom (V itself 1), e.g.
            ``COMPOSITIONS_PER_V["LiVO2"]``.
        energy_ev: photon energy, eV.
        table: f' table for elements not in ``f1_override``.
        f1_override: element -> f' used instead of the table (e.g. ``SEED_CONSTANTS["f1p"]``).
    """
    override = dict(f1_override or {})
    total = 0.0
    for element, n in composition.items():
        symbol = _symbol(element)
        if element in override:
            f1p = float(override[element])
        elif symbol in override:
            f1p = float(override[symbol])
        else:
            f1p = float(anomalous_factors(symbol, float(energy_ev), table)[0])
        total += float(n) * (_atomic_number(symbol) + f1p)
    return total
