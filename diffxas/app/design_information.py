"""The information side of the energy design: the sample model, the candidate grid, each candidate
energy's Fisher information for the descriptors (from the joint model's Cramér-Rao bound), the
A-optimal criterion and the greedy + exchange search (used by :mod:`diffxas.app.design`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from diffxas.errors import ConfigError
from diffxas.maps import DESCRIPTORS
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import XanesParams, absorption
from diffxas.physics.uncertainty import (
    descriptor_functions,
    descriptor_gradients,
    isotropic_information,
    parameter_scales,
    spectral_jacobian,
)
from diffxas.simulate.presets import SEED_ENERGIES
from diffxas.solvers.joint.config import ALL_PARAMS, JointConfig

#: Default candidate spacing (eV): the seed's finest step is 0.5 eV; 0.25 eV is below any
#: monochromator bandwidth that matters here (~0.7 eV for Si(111) at 5.5 keV).
DEFAULT_STEP = 0.25
#: Default ridge prior, relative to an average candidate energy's information.
DEFAULT_RIDGE = 1e-3
# ============================================================================ sample model


@dataclasses.dataclass(frozen=True)
class SampleModel:
    """Representative pixels of a sample: what the design is optimised for.

    Attributes:
        params: parameter name -> (P,) float64, every eq.-1 parameter and ``n_other``.
        fluence: (P,) photons per map pixel per energy.
        names: the per-pixel (free) parameters; the others are held fixed (shared).
        reference_energy: eV, where Re[N_e^eff]/N_V is defined.
        extra_absorption: the absorption A(E) of anything else in the beam that the
            fluence does not already include (the membrane), as ``(energies, A)`` arrays for
            interpolation, or None.
        weight: sample pixels per model pixel (the sample's pixels in the region over the
            model's): the shared parameters are estimated from every pixel of the sample.
        source: a JSON-able record of where the model came from.
        absorber: the element whose K edge the model describes (chemical symbol).
    """

    params: dict[str, np.ndarray]
    fluence: np.ndarray
    names: tuple[str, ...]
    reference_energy: float
    extra_absorption: tuple[np.ndarray, np.ndarray] | None = None
    weight: float = 1.0
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    absorber: str = "V"

    @property
    def n_pixels(self) -> int:
        return int(np.asarray(self.params["b1"]).size)

    def xanes(self):
        """The parameters as a :class:`~diffxas.physics.spectra.XanesParams` of (P,) float32 leaves."""
        return XanesParams(**{k: jnp.asarray(np.asarray(v, np.float64), jnp.float32) for k, v in self.params.items()})


def _default_names() -> tuple[str, ...]:
    return tuple(JointConfig().spectra.per_pixel)


def _check_names(names) -> tuple[str, ...]:
    names = tuple(names)
    bad = sorted(set(names) - set(ALL_PARAMS))
    if not names or bad:
        raise ConfigError(f"per-pixel parameters must be a non-empty subset of {list(ALL_PARAMS)}, got {list(names)}")
    return tuple(k for k in ALL_PARAMS if k in names)


def _spread(n_total: int, n: int) -> np.ndarray:
    """``min(n, n_total)`` indices spread evenly over ``range(n_total)`` (deterministic)."""
    if n_total <= n:
        return np.arange(n_total)
    return np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int))


# ============================================================================ information


def candidate_grid(e0: float, e1: float, step: float = DEFAULT_STEP) -> np.ndarray:
    """Candidate energies ``e0, e0 + step, ...`` up to ``e1`` (included when on the grid), eV."""
    if not (math.isfinite(e0) and math.isfinite(e1) and e1 > e0):
        raise ConfigError(f"energy range must have E0 < E1, got {e0:g} .. {e1:g}")
    if not (step > 0 and math.isfinite(step)):
        raise ConfigError(f"candidate step must be positive, got {step}")
    n = int(math.floor((e1 - e0) / step + 1e-9)) + 1
    if n > 20000:
        raise ConfigError(f"{n} candidate energies ({e0:g}..{e1:g} eV every {step:g} eV); use a coarser --step")
    return np.round(e0 + step * np.arange(n), 6)


@dataclasses.dataclass
class CandidateInfo:
    """Information of every candidate energy, in equilibrated units.

    Parameters are of two kinds, as in the joint fit: ``n`` per-pixel parameters (their
    own values in every pixel) and ``s`` shared parameters (one value for the whole
    sample, e.g. the pre-edge peak positions and widths). Candidate ``k`` adds, at pixel
    ``p``, the information ``[U; V] [U; V]^T`` with ``U[p, k]`` (n, m) and ``V[p, k]`` (s, m)
    (rank m = 2: absorption and phase). The sample's Fisher matrix is block-arrow shaped
    (per-pixel blocks ``A_p``, couplings ``B_p`` to the shared block ``C = weight * sum_p
    C_p``); each model pixel stands for ``weight`` pixels of the sample in the shared sums.

    Units are rescaled so that every candidate together has a unit diagonal (per pixel for
    ``U``, over the sample for ``V``): ``F_physical = s F s`` with ``scale`` (P, n) and
    ``scale_shared`` (s,). ``grads[d]`` (P, n) and ``grads_shared[d]`` (P, s): descriptor
    gradients in the same units. ``prior``/``prior_shared``: the diagonal ridge.
    ``reference[d]``: mean variance of descriptor d with every candidate (the
    normalisation of :func:`criterion`). Variances are invariant under the rescaling, so
    they come out in the descriptors' physical units.
    """

    energies: np.ndarray
    U: np.ndarray
    V: np.ndarray
    grads: dict[str, np.ndarray]
    grads_shared: dict[str, np.ndarray]
    prior: np.ndarray
    prior_shared: np.ndarray
    weight: float = 1.0
    scale: np.ndarray | None = None
    scale_shared: np.ndarray | None = None
    reference: dict[str, float] = dataclasses.field(default_factory=dict)
    names: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()

    @property
    def n_candidates(self) -> int:
        return int(self.U.shape[1])

    @property
    def n_shared(self) -> int:
        return int(self.V.shape[2])

    def physical_fisher(self, idx) -> np.ndarray:
        """Per-pixel block ``sum_{k in idx} F_k`` (P, n, n) in the parameters' own units (no prior)."""
        idx = np.asarray(idx, int).reshape(-1)
        f = np.einsum("pkim,pkjm->pij", self.U[:, idx], self.U[:, idx])
        s = np.ones((self.U.shape[0], self.U.shape[2])) if self.scale is None else self.scale
        return f * s[:, :, None] * s[:, None, :]


def from_factors(
    energies,
    U,
    grads: Mapping[str, np.ndarray],
    V=None,
    grads_shared: Mapping[str, np.ndarray] | None = None,
    weight: float = 1.0,
    ridge: float = DEFAULT_RIDGE,
    names: Sequence[str] = (),
    shared: Sequence[str] = (),
) -> CandidateInfo:
    """A :class:`CandidateInfo` from information factors (the generic entry point; the toy
    problems of the tests use it).

    ``U`` (P, K, n, m): per-pixel parameters; ``V`` (P, K, s, m) or None: shared
    parameters; ``grads``/``grads_shared``: descriptor name -> (P, n) / (P, s) gradients.
    Rescales (see :class:`CandidateInfo`) and computes the every-candidate reference.
    """
    U = np.asarray(U, np.float64)
    if U.ndim != 4:
        raise ValueError(f"U must be (pixels, candidates, params, m), got shape {U.shape}")
    P, K, n, m = U.shape
    V = np.zeros((P, K, 0, m)) if V is None else np.asarray(V, np.float64)
    if V.shape[:2] != (P, K) or V.shape[3] != m:
        raise ValueError(f"V must be ({P}, {K}, s, {m}), got shape {V.shape}")
    if not ridge >= 0:
        raise ConfigError(f"ridge must be >= 0, got {ridge}")
    if not weight > 0:
        raise ConfigError(f"weight must be positive, got {weight}")
    s = V.shape[2]
    gs = {
        d: (np.zeros((P, s)) if grads_shared is None else np.asarray(grads_shared[d], np.float64).reshape(P, s))
        for d in grads
    }
    diag = np.einsum("pkim,pkim->pi", U, U)  # (P, n)
    dp = np.sqrt(np.where(diag > 0, diag, 1.0))
    diag_s = weight * np.einsum("pkim,pkim->i", V, V)  # (s,)
    ds = np.sqrt(np.where(diag_s > 0, diag_s, 1.0))
    ci = CandidateInfo(
        energies=np.asarray(energies, np.float64),
        U=U / dp[:, None, :, None],
        V=V / ds[None, None, :, None],
        grads={d: np.asarray(g, np.float64) / dp for d, g in grads.items()},
        grads_shared={d: g / ds for d, g in gs.items()},
        prior=np.full(n, ridge / K),
        prior_shared=np.full(s, ridge / K),  # ridge x an average candidate's diagonal
        weight=float(weight),
        scale=dp,
        scale_shared=ds,
        names=tuple(names),
        shared=tuple(shared),
    )
    ci.reference = {k: float(np.mean(v)) for k, v in descriptor_variances(ci, np.arange(K)).items()}
    return ci


def fisher_of(ci: CandidateInfo, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample's Fisher matrix (plus the ridge) for candidate indices ``idx``, equilibrated units,
    as its block-arrow parts: per-pixel blocks ``A`` (P, n, n), couplings ``B`` (P, n, s) and
    the shared block ``C`` (s, s) summed over the sample."""
    idx = np.asarray(idx, int).reshape(-1)
    U, V = ci.U[:, idx], ci.V[:, idx]
    A = np.einsum("pkim,pkjm->pij", U, U) + np.diag(ci.prior)
    B = np.einsum("pkim,pkjm->pij", U, V)
    C = ci.weight * np.einsum("pkim,pkjm->ij", V, V) + np.diag(ci.prior_shared)
    return A, B, C


def _variances(ci: CandidateInfo, Ainv, B, C) -> dict[str, np.ndarray]:
    """Per-pixel descriptor variances from the block-arrow parts.

    ``[g; h]^T F^-1 [g; h] = g^T A^-1 g + t^T S^-1 t``, ``t = B^T A^-1 g - h``, with the
    Schur complement ``S = C - weight * sum_p B_p^T A_p^-1 B_p`` (the shared block's
    information left after the per-pixel parameters are estimated too). Shapes: ``Ainv``
    (P, *L, n, n), ``B`` (P, *L, n, s), ``C`` (*L, s, s) for any leading ``L`` (candidates).
    """
    out = {}
    lead = Ainv.shape[1:-2]
    has_shared = ci.n_shared > 0
    if has_shared:
        AiB = Ainv @ B
        Bt = _t(B)
        S = C - ci.weight * np.sum(Bt @ AiB, axis=0)
        Si = np.linalg.inv(S)
    for d, g in ci.grads.items():
        gg = g.reshape(g.shape[:1] + (1,) * len(lead) + g.shape[1:] + (1,))  # (P, *1, n, 1)
        u = Ainv @ gg  # (P, *L, n, 1)
        v = np.sum(gg * u, axis=(-2, -1))
        if has_shared:
            h = ci.grads_shared[d]
            hh = h.reshape(h.shape[:1] + (1,) * len(lead) + h.shape[1:] + (1,))
            t = Bt @ u - hh  # (P, *L, s, 1)
            v = v + np.sum(t * (Si @ t), axis=(-2, -1))
        out[d] = v
    return out


def descriptor_variances(ci: CandidateInfo, idx) -> dict[str, np.ndarray]:
    """Per-pixel Cramér-Rao variance (P,) of every descriptor for the candidate set ``idx``
    (per-pixel and shared parameters all estimated)."""
    A, B, C = fisher_of(ci, idx)
    return _variances(ci, np.linalg.inv(A), B, C)


def criterion(ci: CandidateInfo, idx) -> float:
    """``Phi(S)``: mean over descriptors of (mean variance / mean variance with every candidate)."""
    v = descriptor_variances(ci, idx)
    return float(np.mean([np.mean(v[d]) / ci.reference[d] for d in ci.grads]))


def _state(ci: CandidateInfo, idx):
    A, B, C = fisher_of(ci, idx)
    return np.linalg.inv(A), B, C


def _t(x: np.ndarray) -> np.ndarray:
    """Contiguous matrix transpose of the last two axes (batched matmul is much slower on views)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2))


def _scores(ci: CandidateInfo, state, block: int = 64) -> np.ndarray:
    """``Phi(S + {k})`` for every candidate k from the state of S (``A^-1, B, C``).

    The per-pixel inverse is updated by the rank-m Woodbury identity, ``(A + U U^T)^-1 =
    A^-1 - A^-1 U (I + U^T A^-1 U)^-1 U^T A^-1``; ``B`` and ``C`` by their additive terms;
    the (s x s) Schur complement is formed and inverted per candidate.
    """
    Ainv, B, C = state
    P, K, n, m = ci.U.shape
    out = np.zeros(K)
    eye = np.eye(m)
    for s0 in range(0, K, block):
        Ub, Vb = ci.U[:, s0 : s0 + block], ci.V[:, s0 : s0 + block]
        Vt = _t(Vb)
        AiU = Ainv[:, None] @ Ub  # (P, b, n, m)
        M = np.linalg.inv(_t(Ub) @ AiU + eye)
        Ai2 = Ainv[:, None] - (AiU @ M) @ _t(AiU)
        B2 = B[:, None] + Ub @ Vt
        C2 = C[None] + ci.weight * np.sum(Vb @ Vt, axis=0)
        v = _variances(ci, Ai2, B2, C2)
        out[s0 : s0 + block] = np.mean([v[d].mean(axis=0) / ci.reference[d] for d in ci.grads], axis=0)
    return out


def candidate_information(
    model: SampleModel,
    energies,
    descriptors: Sequence[str] = DESCRIPTORS,
    ridge: float = DEFAULT_RIDGE,
    shared: Sequence[str] | None = None,
    detector_fraction: float = 1.0,
) -> CandidateInfo:
    """Information of each candidate energy for each pixel of ``model`` (see the module docstring).

    ``[U; V][p, k] = [sqrt(g_AA) dA/dtheta, sqrt(g_pp) dphi/dtheta]`` with ``g`` from
    :func:`diffxas.physics.uncertainty.isotropic_information` at the model's absorption (plus
    ``model.extra_absorption``) and the Jacobian from
    :func:`diffxas.physics.uncertainty.spectral_jacobian`, over the per-pixel parameters
    ``model.names`` (``U``) and the ``shared`` ones (``V``; default: every other parameter,
    as the joint fit estimates them; ``()`` holds them fixed like the error maps do);
    descriptor gradients from :func:`diffxas.physics.uncertainty.descriptor_gradients`.
    """
    e = np.asarray(energies, np.float64)
    names = tuple(model.names)
    shared = tuple(k for k in ALL_PARAMS if k not in names) if shared is None else tuple(shared)
    bad = sorted(set(shared) - set(ALL_PARAMS)) + sorted(set(shared) & set(names))
    if bad:
        raise ConfigError(f"shared parameters must be parameters that are not per pixel, got {bad}")
    edge = VEdge.for_energies(model.absorber, e, check=False)
    funcs = descriptor_functions(edge, model.reference_energy)
    bad = [d for d in descriptors if d not in funcs]
    if bad or not descriptors:
        raise ConfigError(f"unknown descriptor(s) {bad}; known: {sorted(funcs)}")
    allp = names + shared
    n = len(names)
    p = model.xanes()
    sc = parameter_scales(allp, edge)
    dA, dphi = spectral_jacobian(p, jnp.asarray(e, jnp.float32), edge, allp, sc)  # (n+s, K, P), per theta/sc
    A = np.asarray(absorption(p, jnp.asarray(e, jnp.float32)), np.float64)  # (K, P)
    if model.extra_absorption is not None:
        A = A + np.interp(e, *model.extra_absorption)[:, None]
    info = np.asarray(
        isotropic_information(
            jnp.asarray(model.fluence[None, :], jnp.float32), jnp.asarray(A, jnp.float32), detector_fraction
        ),
        np.float64,
    )  # (K, 3, P)
    g_aa, g_pp = np.clip(info[:, 0], 0, None), np.clip(info[:, 1], 0, None)
    dA = np.asarray(dA, np.float64) / sc[:, None, None]  # physical units
    dphi = np.asarray(dphi, np.float64) / sc[:, None, None]
    W = np.stack([np.sqrt(g_aa)[None] * dA, np.sqrt(g_pp)[None] * dphi], axis=-1)  # (n+s, K, P, 2)
    W = np.transpose(W, (2, 1, 0, 3))  # (P, K, n+s, 2)
    g_all = descriptor_gradients(p, allp, {d: funcs[d] for d in descriptors})
    g_all = {d: np.asarray(g_all[d], np.float64).T for d in descriptors}  # (P, n+s) physical
    if not (np.all(np.isfinite(W)) and all(np.all(np.isfinite(g)) for g in g_all.values())):
        raise ConfigError("the sample model gives non-finite information (check its parameters)")
    return from_factors(
        e,
        W[:, :, :n],
        {d: g[:, :n] for d, g in g_all.items()},
        V=W[:, :, n:],
        grads_shared={d: g[:, n:] for d, g in g_all.items()},
        weight=model.weight,
        ridge=ridge,
        names=names,
        shared=shared,
    )


def _allowed(energies: np.ndarray, chosen: Sequence[int], min_spacing: float) -> np.ndarray:
    ok = np.ones(energies.size, bool)
    if len(chosen):
        c = np.asarray(chosen, int)
        ok[c] = False
        if min_spacing > 0:
            dist = np.min(np.abs(energies[:, None] - energies[c][None, :]), axis=1)
            ok &= dist >= min_spacing - 1e-9
    return ok


def _members(ci) -> list[CandidateInfo]:
    return [ci] if isinstance(ci, CandidateInfo) else list(ci)


def ensemble_criterion(ci, idx) -> float:
    """Mean of :func:`criterion` over the members of an ensemble (a CandidateInfo or a list of them)."""
    return float(np.mean([criterion(c, idx) for c in _members(ci)]))


def _ensemble_scores(ci, chosen) -> np.ndarray:
    return np.mean([_scores(c, _state(c, chosen)) for c in _members(ci)], axis=0)


def greedy_design(
    ci,
    budget: int,
    include: Sequence[int] = (),
    min_spacing: float = 0.0,
    exchange: bool = True,
    max_passes: int = 20,
    tol: float = 1e-10,
) -> dict[str, Any]:
    """Greedy forward selection of ``budget`` candidate indices, then Fedorov exchange.

    ``ci``: a :class:`CandidateInfo`, or a list of them on the same candidates (an
    ensemble of sample models: the criterion is their mean, a pseudo-Bayesian design).
    ``include``: indices always in the design (not exchanged). Returns ``{"indices"
    (sorted), "criterion", "greedy_indices", "greedy_criterion", "path" (criterion after
    each greedy addition), "exchanges", "passes"}``. ConfigError if the budget cannot be
    met (fewer allowed candidates than ``budget``).
    """
    members = _members(ci)
    include = [int(i) for i in dict.fromkeys(int(i) for i in include)]
    if budget < 1:
        raise ConfigError(f"budget must be at least 1 energy, got {budget}")
    if budget < len(include):
        raise ConfigError(f"budget {budget} is smaller than the {len(include)} energies that must be included")
    e = members[0].energies
    chosen = list(include)
    path = []
    while len(chosen) < budget:
        ok = _allowed(e, chosen, min_spacing)
        if not ok.any():
            raise ConfigError(
                f"only {len(chosen)} candidate energies fit between {e[0]:g} and {e[-1]:g} eV "
                f"at a minimum spacing of {min_spacing:g} eV; budget {budget}"
            )
        s = _ensemble_scores(members, chosen)
        s[~ok] = np.inf
        chosen.append(int(np.argmin(s)))
        path.append(float(s[chosen[-1]]))
    greedy = sorted(chosen)
    greedy_phi = ensemble_criterion(members, greedy) if chosen else float("nan")
    phi = greedy_phi
    n_exch, passes = 0, 0
    fixed = set(include)
    if exchange:
        for _ in range(max_passes):
            improved = False
            for pos in range(len(chosen)):
                if chosen[pos] in fixed:
                    continue
                rest = chosen[:pos] + chosen[pos + 1 :]
                s = _ensemble_scores(members, rest)
                s[~_allowed(e, rest, min_spacing)] = np.inf
                k = int(np.argmin(s))
                if s[k] < phi * (1 - tol) and k != chosen[pos]:
                    chosen[pos] = k
                    phi = float(s[k])
                    n_exch += 1
                    improved = True
            if not improved:
                break
    idx = sorted(chosen)
    return {
        "indices": idx,
        "criterion": ensemble_criterion(members, idx),
        "greedy_indices": greedy,
        "greedy_criterion": greedy_phi,
        "path": path,
        "exchanges": n_exch,
        "passes": passes,
    }


# ============================================================================ comparison designs


def _snap(grid: np.ndarray, values) -> list[int]:
    """Nearest candidate index of each value, made distinct (a taken index moves to the nearest free one)."""
    out: list[int] = []
    for v in values:
        order = np.argsort(np.abs(grid - v), kind="stable")
        out.append(int(next(i for i in order if int(i) not in out)))
    return sorted(out)


def uniform_energies(grid: np.ndarray, n: int) -> list[int]:
    """``n`` candidates equally spaced in energy over the grid (ends included), as indices."""
    if n > grid.size:
        raise ConfigError(f"budget {n} exceeds the {grid.size} candidate energies")
    return _snap(grid, np.linspace(grid[0], grid[-1], n) if n > 1 else [grid[0]])


def seed_like_energies(grid: np.ndarray, n: int, pattern: Sequence[float] | None = None) -> list[int] | None:
    """``n`` of the seed's 40 energies inside the grid's range, spread evenly in index (first
    and last included), snapped to the grid; None if fewer than ``n`` lie in the range.

    This is what ``diffxas simulate --energies N`` does with the seed's list: it keeps the
    seed's denser sampling of the pre-edge and edge.
    """
    pat = np.asarray(SEED_ENERGIES if pattern is None else pattern, np.float64)
    pat = pat[(pat >= grid[0] - 1e-9) & (pat <= grid[-1] + 1e-9)]
    if pat.size < n:
        return None
    return _snap(grid, pat[_spread(pat.size, n)] if n > 1 else pat[:1])
