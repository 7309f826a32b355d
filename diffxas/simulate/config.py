"""Simulation options: :class:`SimConfig` (every knob, validated), the named presets and
:func:`preset`, which applies overrides to one of them.

A family preset (:data:`FAMILY_PRESETS`) also draws its experimental conditions from the
seed (:func:`diffxas.simulate.family.draw_conditions`); a preset for another absorber than V
moves its energies by :func:`diffxas.simulate.materials.edge_shift`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from diffxas.errors import ConfigError
from diffxas.physics.tables import _symbol, check_element
from diffxas.simulate.family import draw_conditions
from diffxas.simulate.materials import edge_shift

#: The seed's 40 energies (eV), 5420-5540: four below the pre-edge, 0.5 eV steps over the
#: pre-edge peak (~5466 eV), 1 eV steps over the edge (5475-5485 eV), sparse above.
SEED_ENERGIES = (
    5420.0,
    5440.0,
    5455.0,
    5460.0,
    5463.0,
    5464.0,
    5465.0,
    5465.5,
    5466.0,
    5466.5,
    5467.0,
    5468.0,
    5469.0,
    5470.0,
    5471.0,
    5472.0,
    5473.0,
    5474.0,
    5475.0,
    5476.0,
    5477.0,
    5478.0,
    5479.0,
    5480.0,
    5481.0,
    5482.0,
    5483.0,
    5484.0,
    5485.0,
    5486.0,
    5488.0,
    5490.0,
    5493.0,
    5496.0,
    5500.0,
    5505.0,
    5510.0,
    5520.0,
    5530.0,
    5540.0,
)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """All knobs of a simulation (SI units except energies in eV). Frozen and validated."""

    preset: str = "small"
    seed: int = 0
    energies: tuple[float, ...] = SEED_ENERGIES
    frame_size: int = 64
    detector_pixel: float = 75e-6
    distance: float = 0.63
    probe_fwhm: float = 300e-9
    probe_defocus: float = 2e-6
    probe_astigmatism: float = 0.0
    probe_drift: float = 0.0
    scan_step: float = 150e-9
    scan_width: float = 1.5e-6
    jitter: float = 0.15
    position_error: float = 0.0
    #: relative RMS of the incident flux per frame (beam-intensity fluctuations; 0 = none)
    flux_jitter: float = 0.0
    #: record an incident-flux monitor (I0) per frame in the dataset: None = no monitor; a
    #: number = the monitor reading's own relative RMS error (0 = a perfect monitor; an ion
    #: chamber is ~1e-3). Readings are ``1e5 * flux factor * (1 + error)`` (arbitrary units).
    monitor_noise: float | None = None
    dose: float = 1e6
    bad_pixel_fraction: float = 1e-3
    #: simulation grid = each energy's object pixel / oversample (patches of oversample * M,
    #: far field cropped to M). 4, not 2: the phantom's sharp rims (thickness ~ sqrt(1 - rho^2))
    #: alias into 2x-simulated frames by more than the reconstructions' own errors. Measured
    #: with the joint solver on noise-free `tiny` (RMSE over truth N_V >= 25 %, edge energy
    #: eV / PE/dmt eV / Re[Ne]/N_V): oversample 2: 0.164 / 0.097 / 4.25; 4: 0.155 / 0.085 /
    #: 1.52; 8 (truth 8x): 0.155 / 0.080 / 1.77, i.e. converged at 4 (docs/physics.md).
    oversample: int = 4
    n_particles: int = 1
    particle_radius: float = 0.6e-6
    particle_thickness: float = 1.0e-6
    domains_per_particle: int = 6
    v_density: float = 2.5e28
    membrane_thickness: float = 500e-9
    texture: float = 1.0
    #: the absorber (chemical symbol). The phantom's spectral types are written for the V K
    #: edge (the seed's); for another element every type's energies (edge, pre-edge peaks)
    #: move by the difference of the two table edges (:func:`edge_shift`, e.g. Mn +1073.9 eV),
    #: and so do a preset's energies when none are given: a V-like phantom at that edge.
    element: str = "V"
    table: str = "chantler"
    truth_oversample: int = 2
    noise: bool = True
    #: seed of the Poisson noise alone (None: drawn from ``seed`` like everything else);
    #: repeated noise realisations of one phantom, scan and probe vary only this.
    noise_seed: int | None = None
    #: incoherent detector background (diffxas.physics.background): mean expected photons per
    #: detector pixel per frame, added to every frame before the noise, the same for
    #: every frame and energy and not scaled by flux_jitter (dark counts, stray light);
    #: 0 = none (the default, as before)
    background: float = 0.0
    #: its profile over the detector: "flat", or "radial" (air/window scattering around the
    #: direct beam: proportional to 1 / (1 + (q / q0)^2) with q0 = M / 8 pixels from the
    #: zero frequency, scaled to the same mean)
    background_profile: str = "flat"

    def __post_init__(self):
        e = np.asarray(self.energies, float)
        if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
            raise ConfigError("energies must be at least two strictly increasing values in eV")
        if e.min() < 1000 or e.max() > 100000:
            raise ConfigError(f"energies must be in eV (1e3..1e5), got {e.min()}..{e.max()}")
        if np.any(np.diff(e) < 1e-3):  # checks.ENERGY_TOL_EV: one energy written twice
            raise ConfigError(f"energies closer than 1e-3 eV: {e[np.argmin(np.diff(e))]:.7g} eV twice?")
        if self.frame_size < 8 or self.frame_size % 2:
            raise ConfigError(f"frame_size must be even and >= 8, got {self.frame_size}")
        for name in (
            "detector_pixel",
            "distance",
            "probe_fwhm",
            "scan_step",
            "scan_width",
            "particle_radius",
            "particle_thickness",
            "v_density",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.dose > 0:
            raise ConfigError(f"dose must be positive (photons per frame), got {self.dose}")
        if not (0.0 <= self.flux_jitter < 0.5):
            raise ConfigError(f"flux_jitter must be in [0, 0.5) (relative RMS per frame), got {self.flux_jitter}")
        if self.monitor_noise is not None and not (0.0 <= self.monitor_noise < 0.5):
            raise ConfigError(
                f"monitor_noise must be None (no monitor) or in [0, 0.5) (relative RMS), got {self.monitor_noise}"
            )
        if not (math.isfinite(self.background) and self.background >= 0):
            raise ConfigError(f"background must be >= 0 (photons per detector pixel per frame), got {self.background}")
        if self.background_profile not in ("flat", "radial"):
            raise ConfigError(f"background_profile must be 'flat' or 'radial', got {self.background_profile!r}")
        if self.oversample < 1 or self.truth_oversample < 1:
            raise ConfigError("oversample factors must be >= 1")

        check_element(self.element)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["energies"] = list(self.energies)
        return d


def _tiny_energies():
    return (
        5420.0,
        5450.0,
        5462.0,
        5465.0,
        5466.0,
        5467.0,
        5469.0,
        5472.0,
        5475.0,
        5478.0,
        5481.0,
        5484.0,
        5488.0,
        5495.0,
        5520.0,
    )


#: Presets: ``tiny`` (tests, seconds), ``small`` (the demo), ``paper`` (the seed's sampling,
#: a few um field of view; for a GPU).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        energies=_tiny_energies(),
        frame_size=32,
        scan_width=1.2e-6,
        particle_radius=0.4e-6,
        particle_thickness=0.8e-6,
        domains_per_particle=4,
        dose=1e6,
        scan_step=150e-9,
    ),
    "small": dict(energies=SEED_ENERGIES, frame_size=64, scan_width=1.5e-6, particle_radius=0.65e-6, dose=1e6),
    "paper": dict(
        energies=SEED_ENERGIES,
        frame_size=128,
        scan_width=3.0e-6,
        particle_radius=0.8e-6,
        n_particles=2,
        domains_per_particle=7,
        dose=1e6,
    ),
}
#: The randomized sample family (:mod:`diffxas.simulate.family`, docs/family.md): sample and
#: experimental conditions are drawn from ``seed``; these are only the fixed frame and field.
#: ``family``: cost like ``small``; ``family-tiny``: like ``tiny`` (tests, quick studies).
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "family": dict(energies=SEED_ENERGIES, frame_size=64, scan_width=1.5e-6),
    "family-tiny": dict(energies=_tiny_energies(), frame_size=32, scan_width=1.2e-6),
}
PRESETS.update(FAMILY_PRESETS)


def preset(name: str, **overrides) -> SimConfig:
    """The named preset with ``overrides`` applied (unknown names give a ConfigError).

    With ``element`` other than V and no ``energies``, the preset's (V) energies move by
    :func:`edge_shift`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown simulation option(s) {bad}; known: {sorted(fields)}")
    kw = dict(PRESETS[name])
    if name in FAMILY_PRESETS:  # this seed's experimental conditions (dose, step, errors, drift)
        kw.update(draw_conditions(int(overrides.get("seed") or 0)))
    el = overrides.get("element")
    if el is not None and el != "V" and overrides.get("energies") is None and isinstance(el, str):
        if _symbol(el) == el:  # a bad symbol is reported by SimConfig
            shift = edge_shift(el, overrides.get("table") or "chantler")
            kw["energies"] = tuple(round(e + shift, 3) for e in kw["energies"])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if "energies" in kw:
        kw["energies"] = tuple(float(e) for e in kw["energies"])
    return SimConfig(preset=name, **kw)
