"""Parameterisation of the joint model: raw <-> physical parameters, the problem (frames on device, grids), objects and probes of a parameter set."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import eigh

from diffxas.data.dataset import Dataset, in_memory, read_frames, relative_monitor
from diffxas.physics.forward import (
    frame_geometry,
    illumination_map,
    resample_matrices,
    resample_stack,
    transmission,
)
from diffxas.physics.geometry import Grid
from diffxas.physics.scattering import VEdge
from diffxas.physics.spectra import XanesParams, absorption, phase
from diffxas.solvers.joint.config import (
    ALL_PARAMS,
    AMPLITUDES,
    POSITIONS,
    WIDTH_MIN,
    JointConfig,
)


class Scales(eqx.Module):
    """Static transforms between raw leaves and physical parameters."""

    amp: float = eqx.field(static=True)
    n_other: float = eqx.field(static=True)
    e_mid: float = eqx.field(static=True)
    e_half: float = eqx.field(static=True)
    # amplitudes whose raw leaf is their ratio to b1 (dimensionless, O(0.1-1))
    relative: tuple = eqx.field(static=True, default=())


class JointParams(eqx.Module):
    """Trainable leaves (all real)."""

    raw: dict  # name -> (H, W) or () raw values
    probe_re: jax.Array  # (K, M, M) per-energy probes, or (J, M, M) shared arrays of the smooth probe model
    probe_im: jax.Array
    dpos: jax.Array  # (F, 2) position corrections, pixels of each frame's energy grid (row, col)
    dscale: jax.Array  # (F,) log intensity scale of each frame (gauge: mean 0 per energy, see frame_nuisances)
    probe_gain: jax.Array  # (K,) log amplitude gain of each energy's probe (trained from step 0 with lr_gain)
    # (K,) or (K, M, M) log factor on the starting background level Problem.background0
    # (JointConfig.background.mode "flat" / "map"); None: no background term
    background: Any = None


def _softplus_inv(y):
    return np.log(np.expm1(np.maximum(y, 1e-6)))


def to_raw(name: str, value, sc: Scales):
    """Physical -> raw (numpy). A relative amplitude (``sc.relative``) takes its ratio to
    b1 as ``value`` (see :func:`relative_values`)."""
    v = np.asarray(value, np.float64)
    if name in sc.relative:
        return v
    if name in AMPLITUDES:
        return v / sc.amp
    if name == "n_other":
        return v / sc.n_other
    if name in POSITIONS:
        z = np.clip((v - sc.e_mid) / sc.e_half, -0.999, 0.999)
        return sc.e_half * np.arctanh(z)
    return _softplus_inv(v - WIDTH_MIN[name])


def from_raw(name: str, raw, sc: Scales):
    """Raw -> physical (JAX); for a relative amplitude the ratio to b1 (:func:`physical`
    multiplies)."""
    if name in sc.relative:
        return raw
    if name in AMPLITUDES:
        return sc.amp * raw
    if name == "n_other":
        return sc.n_other * raw
    if name in POSITIONS:
        return sc.e_mid + sc.e_half * jnp.tanh(raw / sc.e_half)
    return WIDTH_MIN[name] + jax.nn.softplus(raw)


def physical(params: JointParams, sc: Scales, keep=None, domain=None) -> XanesParams:
    """Physical parameters; amplitudes (a, b1, c11, c21, n_other) multiplied by ``keep`` (1 = sample, 0 = pinned empty).

    Per-domain leaves (1-D, one value per domain) are spread over the map by ``domain``
    (H, W) int, the domain index of every pixel.
    """
    out = {k: from_raw(k, params.raw[k] if params.raw[k].ndim != 1 else params.raw[k][domain], sc) for k in ALL_PARAMS}
    for k in sc.relative:
        out[k] = out["b1"] * out[k]
    if keep is not None:
        for k in AMPLITUDES + ("n_other",):
            out[k] = out[k] * keep
    return XanesParams(**out)


class Problem(eqx.Module):
    """Everything the step needs that is not trained (arrays on device, shapes static).

    Per-frame arrays are stored in a chunked layout ``(n_chunks, chunk, ...)`` (padded with
    frame id -1): a full-batch loss scans over chunks (memory of one chunk at a time, with
    rematerialisation), and sharding the ``chunk`` axis across devices splits every chunk's
    frames between them (see :mod:`diffxas.solvers.joint.parallel`).
    """

    frames: jax.Array  # (C, B, M, M)
    frame_id: jax.Array  # (C, B) index into the dataset's frames, -1 = padding
    energy_index: jax.Array  # (C, B)
    corner: jax.Array  # (C, B, 2)
    frac: jax.Array  # (C, B, 2)
    weight: jax.Array  # (K, M, M) detector mask
    energies: jax.Array  # (K,)
    ry: jax.Array  # (K, N, H) common -> energy grid
    rx: jax.Array  # (K, N, W)
    illuminated: jax.Array  # (H, W) bool
    empty: jax.Array  # (H, W) 1 in the empty (membrane-only) reference region, else 0
    edge: VEdge
    scales: Scales
    # weights of the total variation of each raw map (ALL_PARAMS order): (n,) ones for an
    # explicit tv_weight, (n, H, W) per-pixel maps from the noise rule for prior="tv"
    tv_scale: jax.Array = eqx.field(default_factory=lambda: jnp.ones(len(ALL_PARAMS), jnp.float32))
    # (H, W) int32 domain index of every pixel for per-domain parameters (None: no domains)
    domain: Any = None
    # (F,) energy index of every frame in the dataset's order (gauge of the frame scales)
    frame_energy: Any = None
    # (K, J) Legendre basis of the smooth probe model (None: one free probe per energy)
    probe_basis: Any = None
    # (F,) log of each frame's relative incident flux from the dataset's monitor
    # (diffxas.data.dataset.relative_monitor; None: no monitor); added to the trained log scales
    log_monitor: Any = None
    # (K,) or (K, M, M) starting incoherent background, photons per detector pixel per frame,
    # maps with zero frequency at (0, 0) like the frames here (None: not modelled)
    background0: Any = None


def chunk_layout(n_frames: int, chunk: int, n_shards: int = 1) -> tuple[int, int]:
    """(n_chunks, chunk) with chunk a multiple of ``n_shards`` and n_chunks * chunk >= n_frames."""
    n_chunks = -(-n_frames // max(1, min(chunk, n_frames)))
    per_chunk = -(-n_frames // n_chunks)  # ceil: balanced chunks
    chunk = -(-per_chunk // n_shards) * n_shards  # rounded up to a multiple of n_shards
    return n_chunks, chunk


def energy_grids(ds: Dataset, common: Grid) -> list[Grid]:
    """Each energy's grid (:meth:`Dataset.energy_grids`), padded to one shape keeping its centre."""
    return ds.energy_grids(common, same_shape=True)


@eqx.filter_jit(donate="all-except-first")
def _put_chunk(c, buf, block):
    """``buf[c] = ifftshift(block)`` in place (``buf`` donated)."""
    return buf.at[c].set(jnp.fft.ifftshift(block, axes=(-2, -1)))


def _device_frames(frames, nchunk: int, chunk: int) -> jax.Array:
    """The chunked, ifftshifted device copy of a lazy frame source (e.g. :class:`diffxas.data.cxi.CxiFrames`),
    filled one chunk at a time: the host holds one chunk, never all frames."""
    n, m = int(frames.shape[0]), int(frames.shape[-1])
    buf = jnp.zeros((nchunk, chunk, m, m), jnp.float32)
    block = np.zeros((chunk, m, m), np.float32)
    for c in range(nchunk):
        a, b = c * chunk, min((c + 1) * chunk, n)
        block[: b - a] = read_frames(frames, a, b)
        block[b - a :] = 0.0
        buf = _put_chunk(jnp.asarray(c, jnp.int32), buf, jnp.asarray(block))
    return buf


def build_problem(
    ds: Dataset,
    cfg: JointConfig,
    edge: VEdge,
    scales: Scales,
    common: Grid | None = None,
    n_shards: int = 1,
    frames_on_device: bool = True,
    place_frames=None,
) -> tuple[Problem, Grid, list[Grid]]:
    """The :class:`Problem` of ``ds``. ``frames_on_device=False`` (streaming mode): the
    problem holds no frames (``frames`` has shape ``(n_chunks, chunk, 0, 0)``); the
    streaming solver reads them chunk by chunk (:mod:`diffxas.solvers.joint.stream`).
    ``place_frames(frames, n_chunks, chunk)``: builds the chunked, ifftshifted frames array
    itself (:func:`diffxas.solvers.joint.parallel.frames_placer`: each process reads only its share)."""
    common = ds.common_grid() if common is None else common
    grids = energy_grids(ds, common)
    M = ds.frame_size
    ei = np.asarray(ds.energy_index)
    pos = np.asarray(ds.positions, np.float64)
    corner = np.zeros((ds.n_frames, 2), np.int32)
    frac = np.zeros((ds.n_frames, 2), np.float32)
    ry, rx = [], []
    for k, g in enumerate(grids):
        idx = np.nonzero(ei == k)[0]
        c, f = frame_geometry(pos[idx], g, M)
        corner[idx], frac[idx] = c, f
        a, b = resample_matrices(common, g)
        ry.append(a)
        rx.append(b)
    # illuminated area on the common grid: footprint of all frames of the lowest energy
    # (its grid has the common pixel), probe intensity from the illumination or a disc.
    k0 = int(np.argmax(ds.pixel_sizes()))
    idx0 = np.nonzero(ei == k0)[0]
    c0, f0 = frame_geometry(pos[idx0], common, M)
    if ds.illumination is not None:
        pint = np.abs(np.asarray(ds.illumination[k0])) ** 2
    else:
        yy, xx = np.mgrid[:M, :M] - M // 2
        pint = (xx**2 + yy**2 < (M / 8) ** 2).astype(np.float32)
    ill = np.asarray(
        illumination_map(jnp.asarray(pint[None], jnp.float32), np.zeros(len(idx0), np.int32), c0, f0, common.shape)
    )[0]
    illuminated = ill > 0.1 * np.max(ill) * 1.0 if ill.max() > 0 else np.zeros(common.shape, bool)
    # require full-dose coverage: at least 25 % of the median of the covered interior
    med = np.median(ill[ill > 0.5 * ill.max()]) if ill.max() > 0 else 0.0
    illuminated = ill >= 0.25 * med
    nchunk, chunk = chunk_layout(ds.n_frames, cfg.memory.chunk_size, n_shards)
    pad = nchunk * chunk - ds.n_frames

    def lay(x, fill=0):
        x = np.asarray(x)
        x = np.concatenate([x, np.full((pad,) + x.shape[1:], fill, x.dtype)]) if pad else x
        return jnp.asarray(x.reshape((nchunk, chunk) + x.shape[1:]))

    # frames and mask with zero frequency at (0, 0): the model skips the fftshift (forward.uncenter)
    if not frames_on_device:
        frames = jnp.zeros((nchunk, chunk, 0, 0), jnp.float32)
    elif place_frames is not None:
        frames = place_frames(ds.frames, nchunk, chunk)
    elif in_memory(ds.frames):
        frames = lay(np.fft.ifftshift(np.asarray(ds.frames, np.float32), axes=(-2, -1)))
    else:
        frames = _device_frames(ds.frames, nchunk, chunk)
    prob = Problem(
        frames=frames,
        frame_id=lay(np.arange(ds.n_frames, dtype=np.int32), -1),
        energy_index=lay(ei.astype(np.int32)),
        corner=lay(corner),
        frac=lay(frac),
        weight=jnp.asarray(np.fft.ifftshift(np.asarray(ds.mask, np.float32), axes=(-2, -1))),
        energies=jnp.asarray(ds.energies, jnp.float32),
        ry=jnp.asarray(np.stack(ry), jnp.float32),
        rx=jnp.asarray(np.stack(rx), jnp.float32),
        illuminated=jnp.asarray(illuminated),
        empty=jnp.zeros(common.shape, jnp.float32),
        edge=edge,
        scales=scales,
        frame_energy=jnp.asarray(ei, jnp.int32),
        log_monitor=None if ds.monitor is None else jnp.asarray(np.log(relative_monitor(ds)), jnp.float32),
    )
    return prob, common, grids


def model_fields(params: JointParams, prob: Problem):
    """Absorption and phase stacks (K, H, W) on the common grid from the parameters.

    The empty (membrane-only) reference region carries no sample: its amplitudes are pinned
    to zero (:func:`physical`), so absorption and phase are relative to the membrane, as in
    the two-step path's alignment. Without the pin, a uniform offset of the maps is exactly
    degenerate with the probe's amplitude and phase (the membrane's transmission) and leaks
    into ``a`` and ``n_other`` inside the particles.
    """
    p = physical(params, prob.scales, 1.0 - prob.empty, prob.domain)
    return absorption(p, prob.energies), phase(p, prob.energies, prob.edge)


def model_objects(params: JointParams, prob: Problem):
    """Complex transmission of every energy on its own grid (K, N, N)."""
    a, phi = model_fields(params, prob)
    return transmission(resample_stack(a, prob.ry, prob.rx), resample_stack(phi, prob.ry, prob.rx))


TV_EPS = 1e-8


def _tv(x, mask, weight=1.0):
    """Isotropic total variation of ``x`` over ``mask``: a forward difference counts only
    where both of its pixels are in the mask (no artificial jump at the mask's border).
    ``weight``: a scalar or an (H, W) map weighting each pixel's gradient magnitude."""
    m = mask.astype(x.dtype)
    dy = jnp.diff(x, axis=-2) * (m[1:, :] * m[:-1, :])
    dx = jnp.diff(x, axis=-1) * (m[:, 1:] * m[:, :-1])
    w = weight[:-1, :-1] if jnp.ndim(weight) == 2 else weight
    # eps: smooth at zero (|step| << 1e-4 is quadratic: float32 noise between equal pixels
    # gives no gradient kicks); far below any step that matters (raw units ~ 1e-2..1)
    return jnp.sum(w * jnp.sqrt(dy[:, :-1] ** 2 + dx[:-1, :] ** 2 + TV_EPS))


def frame_nuisances(params: JointParams, prob: Problem):
    """Per-frame nuisances ``(dpos (F, 2), log scale (F,))``. The log scale of a frame is the
    log of its monitor's relative flux (fixed; 0 without a monitor) plus the trained
    correction ``dscale``; the sum has its mean over each energy's frames removed: a common
    factor of one energy's frames is the same thing as its probe's amplitude, so without
    this gauge it would drift freely."""
    s = params.dscale if prob.log_monitor is None else params.dscale + prob.log_monitor
    if prob.frame_energy is None:
        return params.dpos, s
    k = prob.energies.shape[0]
    tot = jax.ops.segment_sum(s, prob.frame_energy, k)
    cnt = jax.ops.segment_sum(jnp.ones_like(s), prob.frame_energy, k)
    return params.dpos, s - (tot / jnp.maximum(cnt, 1.0))[prob.frame_energy]


def probe_basis(energies, degree: int) -> np.ndarray:
    """(K, degree + 1) Legendre polynomials of the energies scaled to [-1, 1] (float32).

    The smooth probe model: ``P_k = exp(g_k) sum_j B[k, j] Q_j``. Why smooth in energy on
    each energy's own pixel grid: with mirror (KB) focusing of a fixed aperture the pupil
    sits at fixed detector pixels whatever the energy (its angle NA is fixed, the
    detector pixel's angle p/z too), so the probe is nearly the same array in each
    energy's own pixels (object pixel lambda z/(M p)); what changes is the defocus phase
    (proportional to 1/lambda: 2.2 % over the seed's 5420-5540 eV, linear to first order)
    and the incident flux (the gains). Degree 2 leaves room for a slow drift of the focus.
    Chromatic optics (zone plates, focal length proportional to E) move the focus by tens
    of um over such a scan: use ``probe_model = "per-energy"`` there.
    """
    e = np.asarray(energies, np.float64)
    span = float(e.max() - e.min())
    x = (e - 0.5 * (e.max() + e.min())) / (0.5 * span) if span > 0 else np.zeros_like(e)
    return np.stack([np.polynomial.legendre.Legendre.basis(j)(x) for j in range(degree + 1)], axis=1).astype(np.float32)


def probes(params: JointParams, prob: Problem) -> jax.Array:
    """The complex probe of every energy (K, M, M) from the trainable leaves."""
    q = params.probe_re + 1j * params.probe_im
    if prob.probe_basis is not None:  # the smooth model: every energy's array from the shared ones
        q = jnp.einsum("kj,jmn->kmn", prob.probe_basis.astype(q.dtype), q)
    return q * jnp.exp(params.probe_gain)[:, None, None]


#: Largest initial log gain of the smooth probe model taken from the exact fit (e^2: a
#: flux 7x off the mean); beyond it the gains come from the probes' powers.
GAIN_LIMIT = 2.0


def fit_probe_model(probes0: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Initial leaves ``(Q (J, M, M) complex, log gains (K,))`` of the smooth probe model.

    With ``h_k = exp(-g_k)`` the model says that the rescaled probes ``h_k P_k`` lie in the
    span of the basis over the energies, ``(I - B B^+) diag(h) P = 0``: linear in ``h``.
    ``h`` minimises the fraction of the rescaled probes' power outside that span, the
    generalised eigenproblem ``G h = lambda D h`` with ``G = R o Re(conj(P) P^T)`` (``R = I -
    B B^+``, Hadamard product) and ``D = diag(|P_k|^2)``: exact for probes of the model's
    form. (Without ``D`` the smallest eigenvector can sit on a few energies, gains of
    e^8 measured on noisy ePIE start probes, and the run diverges.) Where that says nothing
    (as many basis functions as energies) or gives a non-positive gain or one beyond
    ``GAIN_LIMIT``, the gains come from each probe's power. Then ``Q`` by linear least
    squares; the mean log gain is 0 (the gauge: a common factor belongs to ``Q``).
    """
    p = np.asarray(probes0, np.complex128)
    b = np.asarray(basis, np.float64)
    flat = p.reshape(len(p), -1)
    power = np.sum(np.abs(flat) ** 2, axis=1)
    g = 0.5 * np.log(np.maximum(power, 1e-30) / max(float(np.mean(power)), 1e-30))
    r = np.eye(len(b)) - b @ np.linalg.pinv(b)
    if np.max(np.abs(r)) > 1e-8:
        _, v = eigh(r * np.real(np.conj(flat) @ flat.T), np.diag(np.maximum(power, 1e-30)))
        h = v[:, 0] * np.sign(v[:, 0].sum())
        if np.all(h > 0):
            g_eig = -np.log(h)
            g_eig = g_eig - np.mean(g_eig)
            if np.max(np.abs(g_eig)) < GAIN_LIMIT:
                g = g_eig
    q, *_ = np.linalg.lstsq(b, flat / np.exp(g)[:, None], rcond=None)
    return q.reshape((b.shape[1],) + p.shape[1:]), g


def background_counts(params: JointParams, prob: Problem):
    """The incoherent background of every energy (:mod:`diffxas.physics.background`): ``(K,)`` or
    ``(K, M, M)`` photons per detector pixel per frame (zero frequency at (0, 0)), the
    starting level times ``exp`` of the trained log factor; None when not modelled."""
    if params.background is None or prob.background0 is None:
        return None
    return prob.background0 * jnp.exp(params.background)


def model_objects_and_probes(params: JointParams, prob: Problem):
    """(objects (K, N, N), fft2 of the probes (K, M, M), nuisances (position corrections,
    log intensity scales, background)): everything the per-frame loss needs from the
    parameters (the streaming step pulls its gradient back through this)."""
    dpos, lsc = frame_nuisances(params, prob)
    return model_objects(params, prob), jnp.fft.fft2(probes(params, prob)), (dpos, lsc, background_counts(params, prob))
