r"""The two-step baseline: ePIE per energy (+ KK constraint), alignment, per-pixel fit of eq. 1.

This is the seed study's pipeline (Uematsu et al., PCCP 25, 3867 (2023)), built as well
as we can: see docs/twostep.md. ``reconstruct_two_step(dataset, config)`` returns a
:class:`diffxas.maps.Result` with chemical-state maps on the common map grid.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np

from diffxas.analysis.smoothing import smooth_stack
from diffxas.data.checks import check_reference_energy, ensure_checked
from diffxas.data.dataset import Dataset
from diffxas.data.stxm import (
    NO_EMPTY_REGION,
    dpc_phase,
    empty_region,
    illumination_at_counts,
)
from diffxas.errors import ConfigError, InputError
from diffxas.maps import ChemMaps, Result
from diffxas.physics.background import describe
from diffxas.physics.background import summary as background_summary
from diffxas.physics.geometry import Grid
from diffxas.physics.scattering import VEdge, check_element
from diffxas.physics.spectra import PARAM_NAMES, maps_from_params
from diffxas.solvers.twostep.align import align_stack, illumination_map
from diffxas.solvers.twostep.epie import EpieConfig, run_epie
from diffxas.solvers.twostep.fitting import FitConfig, fit_stack


@dataclasses.dataclass(frozen=True)
class TwoStepConfig:
    """Options of the two-step pipeline (frozen, validated).

    The defaults are the recommended baseline (docs/twostep.md): 200 ePIE epochs with the
    probe refined from epoch 10, the KK constraint from epoch 120 every 20 epochs, step
    decay over the last 50 epochs, and a per-pixel fit with the pre-edge peak shape
    (c12, c13, c22, c23) shared by all pixels. :meth:`seed` is the seed's own schedule,
    :meth:`fast` a short one for tests.

    Attributes:
        epie: ePIE options (:class:`diffxas.solvers.twostep.epie.EpieConfig`).
        fit: per-pixel fit options (:class:`diffxas.solvers.twostep.fitting.FitConfig`).
        reference_energy: energy (eV) of the Re[N_e^eff]/N_V map; None = the lowest.
        register: register energies to each other (sub-pixel) before fitting.
        illum_fraction: pixels with scan coverage >= this fraction of the maximum are
            "illuminated" (fitted, may be valid).
        well_lit_fraction: coverage fraction of the region searched for the empty membrane.
        element, table: absorber (chemical symbol; any element with a K edge in the
            table, "V" is the seed's) and scattering-factor table (for N_V and
            Re[N_e^eff]). The data's energies must bracket the element's K edge.
    """

    epie: EpieConfig = dataclasses.field(
        default_factory=lambda: EpieConfig(
            epochs=200, probe_update_start=10, kk_start=120, kk_every=20, decay_start=150
        )
    )
    fit: FitConfig = dataclasses.field(default_factory=lambda: FitConfig(tie_pre_edge=True))
    reference_energy: float | None = None
    register: bool = True
    illum_fraction: float = 0.2
    well_lit_fraction: float = 0.5
    element: str = "V"
    table: str = "chantler"

    def __post_init__(self):
        if not isinstance(self.epie, EpieConfig):
            raise ConfigError(f"two-step epie must be an EpieConfig, got {type(self.epie).__name__}")
        if not isinstance(self.fit, FitConfig):
            raise ConfigError(f"two-step fit must be a FitConfig, got {type(self.fit).__name__}")
        if not (0.0 < self.illum_fraction <= self.well_lit_fraction <= 1.0):
            raise ConfigError(
                "two-step needs 0 < illum_fraction <= well_lit_fraction <= 1, got "
                f"{self.illum_fraction}, {self.well_lit_fraction}"
            )
        if self.reference_energy is not None and not (1000.0 <= self.reference_energy <= 100000.0):
            raise ConfigError(f"two-step reference_energy must be in eV, got {self.reference_energy}")
        check_element(self.element, "two-step element")

    @classmethod
    def seed(cls, **overrides) -> TwoStepConfig:
        """The seed's schedule: 800 ePIE epochs, KK every 50 epochs after the 500th, all ten
        parameters fitted per pixel, no spatial prior."""
        kw: dict[str, Any] = dict(epie=EpieConfig.seed_schedule(), fit=FitConfig(tie_pre_edge=False))
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def fast(cls, **overrides) -> TwoStepConfig:
        """Short schedule for tests and quick looks: 60 epochs, KK at 40, 50, 60, step decay from
        epoch 45, all ten parameters per pixel (the seed's fit)."""
        kw: dict[str, Any] = dict(
            epie=EpieConfig(epochs=60, probe_update_start=5, kk_start=40, kk_every=10, decay_start=45),
            fit=FitConfig(iterations=40),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epie": self.epie.to_dict(),
            "fit": self.fit.to_dict(),
            "reference_energy": self.reference_energy,
            "register": self.register,
            "illum_fraction": self.illum_fraction,
            "well_lit_fraction": self.well_lit_fraction,
            "element": self.element,
            "table": self.table,
        }


def _edge(cfg: TwoStepConfig, energies):
    return VEdge.for_energies(cfg.element, energies, cfg.table)


def maps_from_fit(
    fit,
    phase_stack: np.ndarray,
    energies,
    reference_energy: float,
    edge,
    common,
    illuminated,
    table: str,
    smooth_sigma: float = 0.0,
) -> ChemMaps:
    """ChemMaps from a :class:`diffxas.solvers.twostep.fitting.FitResult` and the aligned phase stack.

    The phase at the reference energy (nearest measured energy) is smoothed like the
    fitted absorption stack (``smooth_sigma``, the fit's spatial prior) so that the
    numerator and denominator of Re[N_e^eff]/N_V carry the same resolution.
    """
    e = np.asarray(energies, np.float64)
    k_ref = int(np.argmin(np.abs(e - reference_energy)))
    full = {k: np.asarray(fit.params[k], np.float64) for k in PARAM_NAMES}
    phi_ref = np.asarray(phase_stack[k_ref], np.float64)
    if smooth_sigma > 0:
        phi_ref = smooth_stack(phi_ref[None], np.asarray(illuminated, bool), smooth_sigma)[0]
    m, finite = maps_from_params(full, phi_ref, float(e[k_ref]), edge)  # the one block of both methods
    valid = np.asarray(fit.valid, bool) & np.asarray(illuminated, bool) & finite
    extra = {k: v for k, v in full.items()}
    extra.update(
        {
            "fit_residual": np.asarray(fit.residual, np.float64),
            "noise_sigma": np.asarray(fit.sigma, np.float64),
            "illuminated": np.asarray(illuminated, np.float64),
        }
    )
    return ChemMaps(
        **{k: np.where(valid, v, np.nan) for k, v in m.items()},
        valid=valid.astype(np.uint8),
        pixel_size=float(common.pixel_size),
        origin=tuple(float(o) for o in common.origin),
        reference_energy=float(e[k_ref]),
        delta_f2_v=float(edge.delta_f2),
        scattering_table=table,
        absorber=edge.element,
        extra=extra,
    )


def reconstruct_two_step(
    dataset: Dataset,
    config: TwoStepConfig | None = None,
    progress: bool = False,
    checkpoint_dir=None,
    resume: bool = False,
) -> Result:
    """ePIE per energy -> aligned stack on the common grid -> per-pixel fit -> maps.

    Args:
        dataset: the multi-energy measurement.
        config: :class:`TwoStepConfig` (default ``TwoStepConfig()``).
        progress: tqdm progress over ePIE epochs.
        checkpoint_dir: folder for the ePIE checkpoint (``epie.npz``), written every
            ``config.epie.checkpoint_every`` epochs.
        resume: continue ePIE from the checkpoint in ``checkpoint_dir`` when present.

    Data checks: a dataset checked by the pipeline (:func:`diffxas.app.pipeline.check_data`)
    is trusted as it is; an unchecked one (a direct call from Python) is checked here once
    (:func:`diffxas.data.checks.ensure_checked`: refuse, drop broken frames, warn), so both
    routes refuse and warn alike and neither does the work twice.
    """
    cfg = TwoStepConfig() if config is None else config
    t0 = time.perf_counter()
    dataset, found = ensure_checked(dataset)  # trusted when the pipeline checked it
    e = np.asarray(dataset.energies, np.float64)
    check_reference_energy(cfg.reference_energy, e, "twostep.reference_energy")
    edge = _edge(cfg, e)  # before the ePIE: a wrong element fails now, not after an hour
    e_ref = float(e.min()) if cfg.reference_energy is None else float(cfg.reference_energy)
    ck = None
    if checkpoint_dir is not None:
        os.makedirs(os.fspath(checkpoint_dir), exist_ok=True)
        ck = os.path.join(os.fspath(checkpoint_dir), "epie.npz")
    # a probe guess at another power than the frames' is put at the counts (stxm.illumination_at_counts)
    dataset, power = illumination_at_counts(dataset)
    quantum = found.get("count_quantum")
    er = run_epie(dataset, cfg.epie, progress=progress, checkpoint=ck, resume=resume)
    if er.background is not None:
        logging.getLogger("diffxas").info(describe(er.background, "two-step"))
    t_epie = time.perf_counter() - t0
    coverage = illumination_map(er.probes, er.corners, er.grids, er.common)
    st = align_stack(
        er.objects,
        er.grids,
        er.common,
        e,
        register=cfg.register,
        illum_fraction=cfg.illum_fraction,
        well_lit_fraction=cfg.well_lit_fraction,
        coverage=coverage,
    )
    t_align = time.perf_counter() - t0 - t_epie
    # the alignment always finds some "empty" pixels (its fallback takes the least material);
    # whether the scan saw bare membrane at all is told by the frames' DPC phase, as in the joint
    seen = empty_region(-dpc_phase(dataset, er.common), st.illuminated)
    if not seen.any():
        logging.getLogger("diffxas").warning(f"two-step: warning: {NO_EMPTY_REGION}")
    fit = fit_stack(st.absorption, e, st.illuminated, cfg.fit)
    t_fit = time.perf_counter() - t0 - t_epie - t_align
    maps = maps_from_fit(fit, st.phase, e, e_ref, edge, er.common, st.illuminated, cfg.table, cfg.fit.smooth_sigma)
    wall = time.perf_counter() - t0
    loss = er.history["loss"]
    history = {
        "loss": loss.sum(axis=1),
        "time": er.history["time"],
        "wall_time": np.asarray([wall]),
        "epie_s": np.asarray([t_epie]),
        "align_s": np.asarray([t_align]),
        "fit_s": np.asarray([t_fit]),
        "kk_epochs": er.history["kk_epochs"].astype(np.float64),
    }
    for k in range(len(e)):
        history[f"loss_e{k:02d}"] = loss[:, k]
    config = cfg.to_dict()
    config.update(
        {
            "grid": {
                "pixel_size": er.common.pixel_size,
                "shape": list(er.common.shape),
                "origin": list(er.common.origin),
            },
            "registration_shifts_px": st.shifts.tolist(),
            "global_fit": fit.global_params,
            "noise_energies": fit.noise_energies.tolist(),
            "empty_pixels": int(st.empty.sum()),
            "membrane_pixels_dpc": int(seen.sum()),
            "illumination_power": power,
            "count_quantum": quantum,
            "background": None if er.background is None else background_summary(er.background),
            "wall_time": wall,
        }
    )
    return Result(
        method="two-step",
        maps=maps,
        energies=e,
        absorption=st.absorption.astype(np.float64),
        phase=st.phase.astype(np.float64),
        probes=er.probes.astype(np.complex64),
        probe_pixel_size=np.asarray([g.pixel_size for g in er.grids], np.float64),
        history=history,
        config=config,
        background=er.background,
    )


def refit_two_step(
    result: Result, fit: FitConfig, source: str | None = None, source_sha256: str | None = None
) -> Result:
    """Step 2 again: the per-pixel fit of a two-step result's aligned stacks with ``fit``.

    The ePIE reconstruction and the alignment (the expensive step 1) are taken from the
    results file as they are: its aligned absorption and phase stacks, its common grid,
    its illuminated area (``/maps/extra/illuminated``), its reference energy, element and
    table. Only the maps (and the fit's records: ``fit``, ``global_fit``,
    ``noise_energies``) change; ``config["refit"]`` records the fit that was replaced, the
    source file and its checksum and the fit's wall time. With the run's own fit
    configuration the maps are those of the file (up to the fit's float arithmetic).
    Clusters of the source are dropped (they were computed from the old maps).
    """
    where = f"{source}: " if source else ""
    if result.method != "two-step":
        raise InputError(
            f"{where}refit needs a two-step result (its aligned ePIE stacks), got a {result.method!r} result"
        )
    m = result.maps
    ill = (m.extra or {}).get("illuminated")
    if ill is None:
        raise InputError(f"{where}no /maps/extra/illuminated map: written by an older diffxas; rerun the two-step")
    ill = np.asarray(ill) > 0.5
    cfg = dict(result.config or {})
    table = cfg.get("table", m.scattering_table)
    e = np.asarray(result.energies, np.float64)
    edge = VEdge.for_energies(cfg.get("element", m.absorber), e, table)
    common = Grid(pixel_size=float(m.pixel_size), shape=tuple(m.shape), origin=tuple(float(o) for o in m.origin))
    t0 = time.perf_counter()
    fr = fit_stack(result.absorption, e, ill, fit)
    maps = maps_from_fit(fr, result.phase, e, float(m.reference_energy), edge, common, ill, table, fit.smooth_sigma)
    t_fit = time.perf_counter() - t0
    history = dict(result.history or {})
    history["fit_s"] = np.asarray([t_fit])
    cfg.update(
        {
            "fit": fit.to_dict(),
            "global_fit": fr.global_params,
            "noise_energies": fr.noise_energies.tolist(),
            "refit": {
                "previous_fit": (result.config or {}).get("fit"),
                "source": source,
                "source_sha256": source_sha256,
                "fit_s": t_fit,
                "previous_refit": (result.config or {}).get("refit"),
            },
        }
    )
    return dataclasses.replace(result, maps=maps, history=history, config=cfg, clusters=None)
