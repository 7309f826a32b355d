"""The Kramers-Kronig constraint of the ePIE objects (Hirose et al., Opt. Express 25, 8593 (2017)).

Applied between ePIE epochs (``EpieConfig.kk_start``, ``kk_every``) by
:func:`diffxas.solvers.twostep.epie.run_epie`: :func:`kk_matrix` (absorption samples ->
KK-consistent phase), :func:`kk_phase` (per pixel, with a fitted slow baseline) and
:func:`kk_constrain` (objects on their grids -> common grid -> constrained phase change
-> back). Imports no other ePIE module; :mod:`diffxas.solvers.twostep.align` only inside
:func:`kk_constrain`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffxas.physics.forward import resample
from diffxas.physics.geometry import Grid, wavelength
from diffxas.physics.scattering import kk_piecewise_linear_matrix
from diffxas.solvers.twostep import align


def kk_matrix(energies, tail_ev: float = 200.0) -> np.ndarray:
    r"""Linear map from absorption samples to the KK-consistent phase, ``(K, K)`` float64.

    For absorption ``A(E_k)`` (amplitude attenuation, relative to the pre-edge level) the
    phase consistent with it is, in the convention of :mod:`diffxas.physics.spectra`
    (``A = r_e lambda_0 N f''``, ``phi = -r_e lambda N (Z + f')``, ``f' = H[f'']``),

        phi_KK(E) = -(lambda(E) / lambda_0) H[A](E),

    with ``H[g](E) = (1/pi) P∫ g(E') / (E - E') dE'`` (:func:`scattering.kk_piecewise_linear`)
    and ``lambda_0`` the wavelength at the middle of the scanned range (its exact choice
    only rescales the phase by < 1 %). ``A`` is taken piecewise linear on the measured
    energies, extended beyond the last one as a constant for ``tail_ev / 2`` and then
    linearly to zero at ``+tail_ev`` (the edge does not end at the last energy; the
    remaining truncation error is smooth over the scanned range and goes into the
    fitted baseline of :func:`kk_phase`). H is linear, so this is one matrix.
    """
    e = np.asarray(energies, np.float64)
    lam = wavelength(e)
    lam0 = wavelength(0.5 * (e.min() + e.max()))
    kn = len(e)
    if tail_ev > 0:
        nodes = np.concatenate([e, [e[-1] + 0.5 * tail_ev, e[-1] + tail_ev]])
        ext = np.zeros((kn + 2, kn))
        ext[:kn] = np.eye(kn)
        ext[kn, kn - 1] = 1.0  # constant continuation, then zero at the last node
    else:
        nodes, ext = e, np.eye(kn)
    w = np.asarray(kk_piecewise_linear_matrix(nodes, e), np.float64)  # (eval, node)
    return -(lam / lam0)[:, None] * (w @ ext)


def kk_phase(
    absorption: np.ndarray,
    phase: np.ndarray,
    energies,
    weight: float = 1.0,
    tail_ev: float = 200.0,
    n_pre: int | None = None,
) -> np.ndarray:
    """KK-constrained phase stack ``(K, ...)`` from absorption and phase stacks (same shape).

    Per pixel: subtract the pre-edge constant (mean of the ``n_pre`` lowest energies,
    default the lowest two), map through :func:`kk_matrix`, fit ``c0 + c1 (E - mean E)``
    to ``phase - phi_KK`` (least squares over energies: the energy-independent and
    slowly varying non-resonant phase, and the KK truncation error), and return
    ``(1 - weight) phase + weight (baseline + phi_KK)``.
    """
    e = np.asarray(energies, np.float64)
    kn = len(e)
    a = np.asarray(absorption, np.float64).reshape(kn, -1)
    p = np.asarray(phase, np.float64).reshape(kn, -1)
    n_pre = min(2, kn) if n_pre is None else max(1, min(n_pre, kn))
    a0 = a - a[:n_pre].mean(axis=0, keepdims=True)
    kmat = kk_matrix(e, tail_ev)
    phi_kk = kmat @ a0
    basis = np.stack([np.ones(kn), (e - e.mean()) / max(np.ptp(e), 1e-9)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, p - phi_kk, rcond=None)
    model = basis @ coef + phi_kk
    out = (1.0 - weight) * p + weight * model
    return out.reshape(np.shape(phase)).astype(np.float32)


def kk_constrain(
    objects: np.ndarray,
    energies,
    grids: list[Grid],
    common: Grid,
    weight: float = 1.0,
    register: bool = True,
    tail_ev: float = 200.0,
    probes: np.ndarray | None = None,
    tables=None,
    frame_size: int | None = None,
) -> np.ndarray:
    """Apply the KK constraint to every energy's object (Hirose et al. 2017).

    The objects are brought onto the common grid as A = -ln|O| and unwrapped phase
    (:func:`align.to_common`), referenced to the empty region and optionally registered
    (:func:`align.align_stack`); the KK-consistent phase (:func:`kk_phase`) replaces the
    energy-dependent part of the phase; the phase *change* is shifted back (inverse of
    the registration), resampled onto each energy's grid and applied to its object, so
    parts of the object that the constraint does not touch are not resampled at all.
    """
    e = np.asarray(energies, np.float64)
    st = align.align_stack(
        objects, grids, common, e, probes=probes, tables=tables, frame_size=frame_size, register=register
    )
    new_phase = kk_phase(st.absorption, st.phase, e, weight=weight, tail_ev=tail_ev)
    dphi = new_phase - st.phase
    dphi = np.where(st.illuminated[None], dphi, 0.0)
    dphi = align.apply_shifts(dphi, -st.shifts)
    out = np.array(objects, np.complex64, copy=True)
    for k, g in enumerate(grids):
        ry, rx = align.cached_matrices(common, g)
        dk = np.asarray(resample(jnp.asarray(dphi[k], jnp.float32), ry, rx))
        out[k] = out[k] * np.exp(1j * dk).astype(np.complex64)
    return out
