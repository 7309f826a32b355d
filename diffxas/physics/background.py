r"""Incoherent detector background: an additive count level that no wave explains.

Real frames hold counts that do not come from the coherent exit wave: air and window
scattering along the flight path, stray light from the optics, detector dark counts or a
slightly wrong dark/flat correction. They are incoherent with the exit wave, so the
measured intensity is ``I = |F(P O)|^2 + b`` with ``b >= 0`` in expected photons per
detector pixel per frame. A solver without ``b`` has to make ``|F(P O)|^2`` fill the dark
high-angle pixels, i.e. put fine structure into the object and the probe that is not
there; the chemical maps then carry it (measured on `tiny` at 0.5 % of the dose: edge
energy 0.27 -> 0.50 eV, Re[Ne]/N_V 2.7 -> 15; docs/physics.md, "Detector background").

The modes (``JointConfig.background.mode`` and ``EpieConfig.background``, the same names):

* ``"none"`` (default): no background term, as in the seed study;
* ``"flat"``: one level per energy, the same at every detector pixel (dark counts, a
  residual offset, a broad diffuse background);
* ``"map"``: one level per energy and detector pixel, the same for every frame of that
  energy (air/window scattering around the direct beam, whose profile falls with angle).

Why per energy and not per frame: the scatterers along the beam path are the same for
every position of one energy's scan; the flux changes between energies (the
beamline's throughput), and so does the air's absorption. Why not scaled by each
frame's monitor reading: dark counts and residual offsets do not follow the flux, and
the fluctuations a monitor corrects are a few per cent of a level that is itself a
small fraction of the frame's counts.

This module is numpy-only (it runs at the edges: estimates from the frames, layouts);
the solvers add ``b`` inside their own loss (:func:`diffxas.physics.forward.amplitude_projection`
for ePIE, ``diffxas.solvers.joint.loss.chunk_loss`` for the joint).
"""

from __future__ import annotations

import numpy as np

from diffxas.errors import ConfigError

#: The background models, in the order of their number of unknowns.
MODES = ("none", "flat", "map")

#: Smallest starting level (photons per pixel per frame): the solvers move the level
#: multiplicatively (the joint in log units, ePIE by expectation maximisation), so it
#: must start above zero.
FLOOR = 1e-3

#: Side of the detector blocks whose mean counts give the starting level (pixels).
BLOCK = 4


def check_mode(mode: str, what: str = "background") -> str:
    """``mode`` if it is one of :data:`MODES`, else a one-line ConfigError."""
    if mode not in MODES:
        raise ConfigError(f"{what} must be one of {list(MODES)}, got {mode!r}")
    return mode


def darkest_level(mean_counts: np.ndarray, mask: np.ndarray, block: int = BLOCK) -> float:
    """Mean counts of the darkest ``block x block`` detector block with every pixel used.

    ``mean_counts``: (M, M) one energy's counts averaged over its frames; ``mask``: (M, M),
    1 = used. The block mean of the darkest corner of the detector is the mean background
    plus the weakest mean signal there, so it is an upper bound of a flat background and
    the starting level of both solvers (at least :data:`FLOOR`); averaging over a block
    keeps the Poisson noise of single pixels out of the minimum. A detector with no fully
    used block falls back to the pixel minimum over used pixels.
    """
    c = np.asarray(mean_counts, np.float64)
    w = np.asarray(mask, np.float64) > 0
    m = c.shape[-1]
    nb = m // block
    if nb >= 1:
        cb = c[: nb * block, : nb * block].reshape(nb, block, nb, block)
        wb = w[: nb * block, : nb * block].reshape(nb, block, nb, block).all(axis=(1, 3))
        if wb.any():
            return max(float(cb.mean(axis=(1, 3))[wb].min()), FLOOR)
    return max(float(c[w].min()) if w.any() else FLOOR, FLOOR)


def initial_background(frames_mean: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray | None:
    """Starting background of every energy, in the frames' own layout.

    Args:
        frames_mean: (K, M, M) each energy's frames averaged over its frames (counts, any
            layout: the result has the same one).
        mask: (K, M, M) detector mask, 1 = used.
        mode: one of :data:`MODES`.

    Returns:
        None for ``"none"``; (K,) for ``"flat"``; (K, M, M) (float32) for ``"map"``, each
        energy's map starting flat at its :func:`darkest_level`.
    """
    check_mode(mode)
    if mode == "none":
        return None
    fm = np.asarray(frames_mean, np.float64)
    mk = np.asarray(mask)
    lv = np.asarray([darkest_level(fm[k], mk[k]) for k in range(fm.shape[0])], np.float32)
    if mode == "flat":
        return lv
    return np.broadcast_to(lv[:, None, None], fm.shape).astype(np.float32).copy()


def as_maps(background, n_energies: int, frame_size: int) -> np.ndarray:
    """(K, M, M) float32 maps from a background of any mode (None -> zeros, (K,) -> flat)."""
    if background is None:
        return np.zeros((n_energies, frame_size, frame_size), np.float32)
    b = np.asarray(background, np.float32)
    if b.ndim == 1:
        return np.broadcast_to(b[:, None, None], (n_energies, frame_size, frame_size)).copy()
    return b


def per_energy(background) -> np.ndarray:
    """(K,) float64 mean level of each energy: the levels of "flat", the map means of "map"."""
    b = np.asarray(background, np.float64)
    return b if b.ndim == 1 else b.reshape(b.shape[0], -1).mean(axis=1)


def summary(background) -> dict | None:
    """A JSON-safe summary for logs and result records: mode, the mean level per energy and
    its range over the energies (photons per pixel per frame)."""
    if background is None:
        return None
    per_e = per_energy(background)
    return {
        "mode": "flat" if np.ndim(background) == 1 else "map",
        "mean_per_energy": [float(x) for x in per_e],
        "min": float(per_e.min()),
        "max": float(per_e.max()),
    }


def describe(background, method: str) -> str:
    """One log line on a fitted background: mode, mean level and its range over the energies."""
    s = summary(background)
    return (
        f"{method}: incoherent background ({s['mode']}): {np.mean(s['mean_per_energy']):.3g} photons per detector pixel "
        f"per frame ({s['min']:.3g}-{s['max']:.3g} over {len(s['mean_per_energy'])} energies)"
    )
