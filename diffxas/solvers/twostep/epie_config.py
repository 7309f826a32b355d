"""ePIE options: :class:`EpieConfig` (frozen, validated), the step decay and the KK schedule.

Part of the ePIE of the two-step baseline (:mod:`diffxas.solvers.twostep.epie`, the public
face that re-exports it). Imports nothing of the other ePIE modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from diffxas.errors import ConfigError
from diffxas.physics.background import check_mode


@dataclasses.dataclass(frozen=True)
class EpieConfig:
    """ePIE options (frozen, validated).

    Attributes:
        epochs: number of passes over all frames of every energy.
        alpha: object step (ePIE's alpha), in (0, 2].
        beta: probe step (ePIE's beta), in [0, 2]; 0 = probe fixed.
        probe_update_start: first epoch (0-based) at which the probe is updated.
        seed: seed of the frame orders (``jax.random``).
        kk_start: first epoch after which the KK constraint is applied (None = off).
        kk_every: apply the KK constraint every ``kk_every`` epochs after ``kk_start``
            (None = only once, at ``kk_start``).
        kk_weight: blend of the KK-consistent phase into the reconstructed one (1 = replace
            the energy-dependent part).
        kk_register: register energies to each other (sub-pixel) before the KK step.
        kk_tail_ev: the absorption is extended beyond the last energy (constant, then
            linearly to zero over ``kk_tail_ev``) to tame the truncation of the KK integral.
        batch_energies: energies per vmapped batch (None = all at once; 1 = loop).
        probe_fwhm: FWHM (m) of the KB focus used as initial probe when the dataset has no
            illumination (or ``use_illumination`` is False).
        use_illumination: start from the data file's illumination when it has one. False:
            from the KB focus of ``probe_fwhm`` all the same, for a file whose probe guess is
            poor (docs/formats.md, "A poor probe guess": a 450 nm flat guess for a 300 nm
            defocused probe made the two-step's maps garbage).
        probe_power_limit: divergence threshold: probe power over its initial value.
        checkpoint_every: epochs between checkpoints (when a checkpoint path is given).
        decay_start: first epoch of a linear decay of alpha and beta (None = constant
            steps). With noisy data ePIE at full step keeps hopping around the solution;
            shrinking the steps over the last epochs averages the frames' updates (the
            standard ePIE remedy for noise) and lowers the noise of the objects.
        decay_final: step factor reached at the last epoch (the decay is linear from 1).
        background: incoherent detector background per energy (:mod:`diffxas.physics.background`):
            "none" (the seed's ePIE), "flat" (one level per energy) or "map" (one level per
            energy and detector pixel). It enters the projection
            (:func:`forward.amplitude_projection`) and is re-estimated after every epoch
            from ``background_start`` on by the expectation-maximisation step of the
            Poisson likelihood with the objects and probes held:
            ``b <- mean over frames and (flat) pixels of n b / (|F psi|^2 + b)``; it starts
            at the darkest detector block's mean counts (:func:`background.initial_background`).
        background_start: first epoch (0-based) whose end updates the background.
        per_frame_shift: always shift the probe frame by frame (4 FFTs per frame with the
            probe updated). False (default): energies whose frames all share one sub-pixel
            offset (e.g. all on the pixel grid) take the equivalent 2-FFT route
            (:func:`~diffxas.solvers.twostep.epie_kernel._epoch_single`); the same result to float32
            round-off. For comparisons.
    """

    epochs: int = 100
    alpha: float = 1.0
    beta: float = 1.0
    probe_update_start: int = 5
    seed: int = 0
    kk_start: int | None = None
    kk_every: int | None = None
    kk_weight: float = 1.0
    kk_register: bool = True
    kk_tail_ev: float = 200.0
    batch_energies: int | None = None
    probe_fwhm: float = 300e-9
    use_illumination: bool = True
    probe_power_limit: float = 100.0
    checkpoint_every: int = 25
    decay_start: int | None = None
    decay_final: float = 0.2
    background: str = "none"
    background_start: int = 5
    per_frame_shift: bool = False

    def __post_init__(self):
        if not (isinstance(self.epochs, (int, np.integer)) and self.epochs >= 1):
            raise ConfigError(f"epie epochs must be a positive integer, got {self.epochs!r}")
        if self.epochs > 1_000_000:  # the seed runs 800; a million epochs of even tiny data take days
            raise ConfigError(f"epie epochs must be <= 1e6 (the seed's schedule is 800), got {self.epochs:g}")
        if not (0.0 < self.alpha <= 2.0):
            raise ConfigError(f"epie alpha must be in (0, 2], got {self.alpha}")
        if not (0.0 <= self.beta <= 2.0):
            raise ConfigError(f"epie beta must be in [0, 2], got {self.beta}")
        if self.probe_update_start < 0:
            raise ConfigError(f"epie probe_update_start must be >= 0, got {self.probe_update_start}")
        if self.kk_start is not None and self.kk_start < 0:
            raise ConfigError(f"epie kk_start must be >= 0 or None, got {self.kk_start}")
        if self.kk_every is not None and self.kk_every < 1:
            raise ConfigError(f"epie kk_every must be >= 1 or None, got {self.kk_every}")
        if self.kk_every is not None and self.kk_start is None:
            raise ConfigError("epie kk_every is set but kk_start is None (KK off): set kk_start too")
        if not (0.0 <= self.kk_weight <= 1.0):
            raise ConfigError(f"epie kk_weight must be in [0, 1], got {self.kk_weight}")
        if not self.kk_tail_ev >= 0:
            raise ConfigError(f"epie kk_tail_ev must be >= 0, got {self.kk_tail_ev}")
        if self.batch_energies is not None and self.batch_energies < 1:
            raise ConfigError(f"epie batch_energies must be >= 1 or None, got {self.batch_energies}")
        if not self.probe_fwhm > 0:
            raise ConfigError(f"epie probe_fwhm must be positive, got {self.probe_fwhm}")
        if not isinstance(self.use_illumination, (bool, np.bool_)):
            raise ConfigError(f"epie use_illumination must be true or false, got {self.use_illumination!r}")
        if not self.probe_power_limit > 1:
            raise ConfigError(f"epie probe_power_limit must be > 1, got {self.probe_power_limit}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"epie checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.decay_start is not None and not (0 <= self.decay_start < self.epochs):
            raise ConfigError(f"epie decay_start must be in [0, epochs) or None, got {self.decay_start}")
        if not (0.0 < self.decay_final <= 1.0):
            raise ConfigError(f"epie decay_final must be in (0, 1], got {self.decay_final}")
        check_mode(self.background, "epie background")
        if self.background_start < 0:
            raise ConfigError(f"epie background_start must be >= 0, got {self.background_start}")

    def step_factor(self, epoch: int) -> float:
        """Multiplier of alpha and beta at 0-based ``epoch`` (the linear decay, 1 before it)."""
        if self.decay_start is None or epoch < self.decay_start:
            return 1.0
        span = max(self.epochs - 1 - self.decay_start, 1)
        t = min(max((epoch - self.decay_start) / span, 0.0), 1.0)
        return 1.0 - t * (1.0 - self.decay_final)

    @classmethod
    def seed_schedule(cls, **overrides) -> EpieConfig:
        """The seed study's schedule: 800 epochs, KK every 50 epochs after the 500th."""
        kw = dict(epochs=800, kk_start=500, kk_every=50)
        kw.update(overrides)
        return cls(**kw)

    def kk_due(self, epoch_done: int) -> bool:
        """Whether the KK constraint is applied after ``epoch_done`` epochs (1-based count)."""
        if self.kk_start is None or epoch_done < self.kk_start or epoch_done >= self.epochs + 1:
            return False
        if epoch_done == self.kk_start:
            return True
        return self.kk_every is not None and (epoch_done - self.kk_start) % self.kk_every == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
