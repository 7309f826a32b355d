"""The common currency of both reconstruction paths: chemical-state maps and results.

Both the two-step path (ePIE + per-pixel fit) and the joint solver end in a
:class:`ChemMaps` on the common map grid and a :class:`Result`; clustering,
evaluation and plotting read only these (through the results file written by
:mod:`diffxas.data`), never anything method-specific.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: Map name -> (unit, description). Float maps are NaN where ``valid`` is 0.
MAP_FIELDS: dict[str, tuple[str, str]] = {
    "edge_energy": ("eV", "edge energy b2 of eq. 1"),
    "edge_width": ("eV", "edge width b3 of eq. 1"),
    "edge_jump": ("1", "edge jump b1 = Delta A (amplitude attenuation)"),
    "pre_edge": ("eV", "pre-edge intensity PE = pi c11 c13"),
    "pre_edge_norm": ("eV", "PE / Delta-mu-t = pi c11 c13 / b1"),
    "n_v": ("m^-2", "V atoms per area, eq. 2: b1 / (r_e lambda Delta f''_V)"),
    "ne_eff_per_nv": ("1", "Re[N_e^eff] / N_V at the reference energy, eq. 3-4"),
}

#: The seed's three clustering descriptors.
DESCRIPTORS = ("edge_energy", "pre_edge_norm", "ne_eff_per_nv")


@dataclasses.dataclass(frozen=True)
class ChemMaps:
    """Chemical-state maps on the common grid (host side, numpy).

    All float maps are ``(H, W)``; NaN where ``valid`` is False. ``std`` holds optional
    per-pixel standard errors keyed by map name; ``extra`` holds optional additional maps
    (e.g. ``fit_residual``, the per-pixel parameters ``a``, ``c12`` ...).

    Attributes:
        pixel_size: m.
        origin: (x, y) of the centre of pixel [0, 0], m, same frame as the probe positions.
        reference_energy: energy (eV) at which ``ne_eff_per_nv`` is evaluated.
        delta_f2_v: Delta f''_V used in eq. 2 (electrons).
        scattering_table: name of the scattering-factor table.
        absorber: chemical symbol of the absorbing element whose K edge was scanned ("V"
            for the seed; N_V and Re[N_e^eff]/N_V are then per atom of this element).
    """

    edge_energy: np.ndarray
    edge_width: np.ndarray
    edge_jump: np.ndarray
    pre_edge: np.ndarray
    pre_edge_norm: np.ndarray
    n_v: np.ndarray
    ne_eff_per_nv: np.ndarray
    valid: np.ndarray
    pixel_size: float
    origin: tuple[float, float]
    reference_energy: float
    delta_f2_v: float
    scattering_table: str
    absorber: str = "V"
    std: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        shape = np.shape(self.valid)
        for name in MAP_FIELDS:
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"map {name} has shape {np.shape(getattr(self, name))}, expected {shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.valid))

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in MAP_FIELDS}

    def masked(self) -> ChemMaps:
        """A copy with every float map set to NaN where not valid."""
        v = np.asarray(self.valid).astype(bool)
        kw = {name: np.where(v, np.asarray(getattr(self, name), dtype=np.float64), np.nan) for name in MAP_FIELDS}
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass
class Result:
    """Everything a reconstruction writes (host side). See docs/formats.md.

    Attributes:
        method: "two-step" or "joint".
        maps: the chemical-state maps.
        energies: (K,) eV.
        absorption: (K, H, W) -ln|O| on the map grid, relative to the empty region.
        phase: (K, H, W) rad on the map grid, relative to the empty region.
        probes: (K, M, M) complex64, each on its energy's object pixel size.
        probe_pixel_size: (K,) m.
        history: name -> 1-D array (loss, time per iteration, ...).
        config: the full configuration (JSON-serialisable dict).
        input_path, input_sha256: the input data file and its checksum.
        clusters: optional clustering output (labels, centers, fractions, attrs).
        background: optional incoherent detector background the reconstruction fitted
            (:mod:`diffxas.physics.background`): (K,) one level per energy ("flat") or (K, M, M)
            ("map", zero frequency at (M/2, M/2) like the data file's frames), photons per
            detector pixel per frame; None: not modelled.
    """

    method: str
    maps: ChemMaps
    energies: np.ndarray
    absorption: np.ndarray
    phase: np.ndarray
    probes: np.ndarray
    probe_pixel_size: np.ndarray
    history: dict[str, np.ndarray]
    config: dict[str, Any]
    input_path: str = ""
    input_sha256: str = ""
    clusters: dict[str, Any] | None = None
    background: np.ndarray | None = None


@dataclasses.dataclass
class Truth:
    """Ground truth of a simulated sample (host side), written next to the CXI file.

    Attributes:
        maps: name -> (H, W) float map on the truth grid, same names and units as
            :data:`MAP_FIELDS` (NaN/0 outside particles as documented in docs/formats.md).
        labels: (H, W) int16 domain label, -1 where there is no particle.
        domain_names: name of each label value 0..n-1.
        params: name -> (H, W) per-pixel parameters of eq. 1 (a, b1, b2, b3, c11 ... c23)
            and composition (``n_other``: non-V electrons per m^2).
        pixel_size: m; origin: (x, y) of pixel [0, 0] centre, m.
        energies: (K,) eV of the simulated data; reference_energy: eV.
        attrs: anything else (preset, seed, dose, version).
    """

    maps: dict[str, np.ndarray]
    labels: np.ndarray
    domain_names: list[str]
    params: dict[str, np.ndarray]
    pixel_size: float
    origin: tuple[float, float]
    energies: np.ndarray
    reference_energy: float
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
