r"""Scanning-microscopy images from the frames alone: bright field (STXM) and differential phase contrast.

Before any ptychographic reconstruction, every frame already gives two numbers about the
sample under the probe:

* its **integrated counts** (bright field): ``sum_q I_j(q) = I0_j sum_r |P(r - r_j)|^2 |O(r)|^2``,
  the probe-weighted transmission times the incident flux ``I0_j``
  (:func:`stxm_absorption`, which divides by a membrane frame's counts: it needs a stable
  flux, or a monitor to divide by, :func:`diffxas.data.dataset.relative_monitor`);
* its **centre of mass** (differential phase contrast, DPC):
  ``<q> = M/(2 pi) <d phi / d r>_{|psi|^2}`` (detector pixels; the exit wave's phase gradient
  per object pixel, weighted by the transmitted intensity), independent of the flux
  (:func:`frame_moments`, :func:`dpc_phase`). Sign: with numpy's forward FFT an exit wave
  ``exp(2 pi i u0 x / M)`` puts the far-field peak at index ``u0``.

Scattered per-frame values go onto the map grid with a Gaussian kernel of about the scan
step (:func:`spread`). These low-resolution maps start the joint solver
(:mod:`diffxas.solvers.joint`) and find its empty (membrane-only) reference region. The DPC phase
is the robust one for the latter: a 1 % per-frame flux jitter (top-up injection, beam
motion on the optics) already buries the bright field's edge jump of `tiny` in noise
(measured: membrane-pixel scatter 0.0024 against a jump of 0.028), while the centre of mass
does not see the flux at all.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from diffxas.data.dataset import Dataset, read_frames, relative_monitor, take_frames
from diffxas.physics.geometry import Grid
from diffxas.physics.probe import detected_power


def frame_sums(ds: Dataset) -> np.ndarray:
    """Masked total counts of every frame (F,) float64 (a lazy source is read once, in ranges)."""
    return frame_moments(ds)[0]


def frame_moments(ds: Dataset, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Masked total counts (F,) and centres of mass (F, 2) (row, col) of every frame.

    With an incident-flux monitor the counts are divided by the frame's relative flux
    (:func:`diffxas.data.dataset.relative_monitor`: counts at the mean flux of its energy); the
    centres of mass do not depend on the flux. Centres in detector pixels relative to the
    zero frequency (pixel (M/2, M/2)); NaN for a frame without counts. One pass over the
    frames (a lazy source is read in ranges).
    """
    w = np.asarray(ds.mask, np.float64)
    ei = np.asarray(ds.energy_index)
    m = ds.frame_size
    q = np.arange(m, dtype=np.float64) - m // 2
    sums = np.empty(ds.n_frames)
    com = np.full((ds.n_frames, 2), np.nan)
    for a in range(0, ds.n_frames, block):
        b = min(a + block, ds.n_frames)
        f = read_frames(ds.frames, a, b).astype(np.float64) * w[ei[a:b]]
        s = f.sum(axis=(1, 2))
        sums[a:b] = s
        with np.errstate(invalid="ignore", divide="ignore"):
            com[a:b, 0] = np.einsum("fij,i->f", f, q) / s
            com[a:b, 1] = np.einsum("fij,j->f", f, q) / s
    return sums / relative_monitor(ds), com


def membrane_counts(ds: Dataset, sums: np.ndarray | None = None) -> np.ndarray:
    """Counts of a membrane-only frame at each energy (K,): the 90th percentile of the
    masked frame sums of that energy (the scan must see the empty membrane in at least
    ~10 % of its frames, as for the empty reference region)."""
    sums = frame_sums(ds) if sums is None else sums
    ei = np.asarray(ds.energy_index)
    return np.asarray([np.percentile(sums[ei == k], 90) for k in range(ds.n_energies)], np.float64)


def probes_at_membrane_counts(
    ds: Dataset, probes, sums: np.ndarray | None = None
) -> tuple[np.ndarray | None, list[float] | None]:
    """``probes`` (K, M, M) rescaled per energy so that a membrane-only frame gets the
    measured counts (:func:`membrane_counts`), and the gains ``sqrt(counts / power)``.

    ``power`` is the probe's far-field intensity summed over the used detector pixels (the
    frame sums are masked; :func:`diffxas.physics.probe.detected_power`). This is the probe of a model whose object is 1 on the membrane (the joint
    solver's): the beam times the membrane's transmission. A two-step (ePIE) object
    includes the membrane, so its probes are the bare beam (measured on `tiny`: 4 % larger
    in amplitude). It also puts a probe guess written in any normalisation (peak 1, unit
    power, another FFT norm) at the power of the frames. ``None`` or a wrongly shaped
    ``probes`` come back unchanged (gains None). ``sums``: the frames' masked counts when
    already known (:func:`frame_moments`)."""
    if probes is None:
        return None, None
    p = np.asarray(probes)
    if p.ndim != 3 or p.shape[0] != ds.n_energies:
        return p, None
    counts = membrane_counts(ds, sums)
    mask = np.asarray(ds.mask)

    power = detected_power(p, mask)  # on the used pixels, as the masked frame sums
    gain = np.sqrt(np.where(power > 0, counts / np.maximum(power, 1e-30), 1.0))
    return (p * gain[:, None, None]).astype(p.dtype), [float(g) for g in gain]


#: A probe guess in the data file whose power differs from the membrane frames' counts by
#: more than this (relative) is rescaled to them (:func:`illumination_at_counts`). Measured
#: on noisy `tiny` (joint edge-energy RMSE against the guess's power over the counts):
#: 0.205 eV at 1.00, 0.206 at 1.019 (the simulator's bare beam), 0.225 at 1.04, 0.745 at
#: 1.12; 0.207 at 0.998 and 0.212 at 0.968. 3 % keeps a bare beam behind a thin membrane
#: as written and rescales the rest.
ILLUMINATION_TOLERANCE = 0.03


def illumination_at_counts(
    ds: Dataset, sums: np.ndarray | None = None, tolerance: float = ILLUMINATION_TOLERANCE
) -> tuple[Dataset, dict | None]:
    """``ds`` with its illumination (the file's probe guess) put at the frames' power where
    it is off, and the record ``{"power_ratio": [...], "rescaled": [energy indices]}``
    (None without an illumination).

    The convention is ``sum |P|^2`` = photons per frame (docs/formats.md), but a guess
    written with another normalisation (peak 1, unit power, an unnormalised FFT) or frames
    in other units than counts are common in files from elsewhere. Per energy, the ratio of
    the guess's power to a membrane-only frame's counts (:func:`probes_at_membrane_counts`)
    is recorded; where it is more than ``tolerance`` (plus 3x the membrane level's own
    noise, see the code) away from 1 the guess is rescaled to the counts, with one log
    line. Within the tolerance the guess is kept as written: the
    bare beam (a file's probe) is ~2 % brighter than a frame through a 0.5 um Si3N4
    membrane, and the joint measured as well or better with it (noisy
    `tiny`, three data sets: edge-energy RMSE 0.206 / 0.228 / 0.264 eV as written against
    0.205 / 0.226 / 0.260 eV at the membrane counts, PE/Δμt 0.132 / 0.148 / 0.136 against
    0.131 / 0.166 / 0.161 eV). Before its per-energy probe gains (``JointConfig.probe.lr_gain``,
    commit 8d57a46) the joint solver failed outside it: an amplitude 5 % low or high took
    `tiny`'s edge-energy RMSE from 0.21 to 0.35 / 0.74 eV, 30 % to 2.4-3.5 eV. The gains
    now take out errors of a few per cent (0.209 / 0.218 eV at 5 %) but move 0.01 log
    units per step, so gross errors still need this rescaling. The two-step is hurt only
    far out (0.78 instead of 0.59 eV at 1e-3 of the power).
    """
    if ds.illumination is None:
        return ds, None
    p = np.asarray(ds.illumination)
    sums = frame_sums(ds) if sums is None else np.asarray(sums, np.float64)
    scaled, gains = probes_at_membrane_counts(ds, p, sums)
    if gains is None:
        return ds, None
    ratio = 1.0 / np.square(np.asarray(gains, np.float64))
    # The membrane level (90th percentile of the sums) is itself noisy and biased upward by
    # about one frame-to-frame spread (shot noise, flux jitter): measured at 1e3 photons
    # (3 %) and with 5 % flux jitter the right probe read 0.95-0.99. The tolerance grows by
    # 3 x that spread, estimated from the top decile of the sums (whose spread is ~0.41 x
    # the full one, for a Gaussian).
    ei = np.asarray(ds.energy_index)
    spread = np.zeros(ds.n_energies)
    for k in range(ds.n_energies):
        s = sums[(ei == k) & np.isfinite(sums)]
        top = s[s >= np.percentile(s, 90)] if s.size else s
        if top.size >= 3 and top.mean() > 0:
            spread[k] = float(np.std(top, ddof=1) / top.mean() / 0.41)
    tol = tolerance + 3.0 * spread
    off = np.nonzero(np.abs(ratio - 1.0) > tol)[0]
    rec = {
        "power_ratio": [round(float(r), 6) for r in ratio],
        "tolerance": [round(float(t), 4) for t in tol],
        "rescaled": [int(k) for k in off],
    }
    if off.size == 0:
        return ds, rec

    out = p.copy()
    out[off] = scaled[off]
    logging.getLogger("diffxas").warning(
        "the file's illumination (probe guess) has %.3g-%.3g x the photons of a membrane-only frame at %d of %d "
        "energies: rescaled to the counts there (convention: sum |P|^2 = photons per frame)",
        float(ratio[off].min()),
        float(ratio[off].max()),
        off.size,
        ds.n_energies,
    )
    return dataclasses.replace(ds, illumination=out), rec


def whole_counts(values) -> bool:
    """Whether every value is a whole number (photon counts, not noise-free or processed
    frames)."""
    v = np.asarray(values)
    return bool(np.all(v == np.round(v)))


def count_quantum(ds: Dataset, max_frames: int = 64) -> float | None:
    """The photon's value in the frames when they are photon counts times a constant ``q``
    (e.g. divided by an exposure or a flux): ``q``; None when they are plain counts
    (integers) or not quantised at all (noise-free or processed frames).

    Counts times ``q`` take only the values ``q, 2q, 3q, ...``: ``q`` is the smallest
    positive value (one photon), and every faint value (below 1000 q, where float32 keeps
    the steps) is a whole multiple of it. Looks at up to ``max_frames`` frames of the
    lowest energy; needs at least 100 faint positive values."""
    idx = ds.frames_of(0)[:max_frames]
    if idx.size == 0:
        return None
    f = take_frames(ds.frames, idx).astype(np.float64)
    v = f[f > 0]
    if v.size == 0 or whole_counts(v):
        return None
    q = float(v.min())
    r = v[v < 1000 * q] / q
    if r.size < 100 or np.max(np.abs(r - np.round(r))) > 1e-3:
        return None
    return q


def check_counts(ds: Dataset) -> float | None:
    """:func:`count_quantum`, with one warning on the "diffxas" logger when the frames are
    counts times a constant other than 1: both reconstructions' noise models and the
    joint's noise-rule prior weights assume photon counts."""
    q = count_quantum(ds)
    if q is not None and abs(q - 1.0) > 1e-3:
        logging.getLogger("diffxas").warning(
            "the frames look like photon counts times %.4g (every faint value a whole multiple of it): the noise "
            "models and the joint's prior weights assume counts; divide the frames by %.4g (docs/formats.md, "
            '"Photon counts")',
            q,
            q,
        )
    return q


#: :func:`check_saturation`: the brightest count is a clipping level or a flag when it
#: is at least this many photons and occurs in at least ``SATURATION_MIN_PIXELS`` unmasked
#: pixels of at least ``SATURATION_MIN_FRAMES`` of the frames looked at. Photon counts do
#: not pile up on their maximum: the brightest pixel of Poisson frames of 1e6 photons
#: (the simulator's `tiny` and `small`) occurs once or twice among 64 frames.
SATURATION_MIN_COUNT = 100.0
SATURATION_MIN_PIXELS = 10
SATURATION_MIN_FRAMES = 3


def brightest_count(frames: np.ndarray, used: np.ndarray) -> tuple[float, int, int]:
    """(value, pixels, frames) of the brightest count of ``frames`` (F, M, M) over the
    ``used`` pixels ((F, M, M) or (M, M) bool): its value, how many pixels hold it and in
    how many frames; value -inf when nothing is used."""
    f = np.where(used, np.asarray(frames, np.float64), -np.inf)
    top = float(f.max()) if f.size else -np.inf
    if not np.isfinite(top):
        return top, 0, 0
    at = f == top
    return top, int(at.sum()), int(at.any(axis=(-2, -1)).sum())


def looks_saturated(value: float, pixels: int, frames: int) -> bool:
    """Whether a brightest count that repeats this often is a clipping level or a flag
    (:data:`SATURATION_MIN_COUNT` and the two limits after it)."""
    return value >= SATURATION_MIN_COUNT and pixels >= SATURATION_MIN_PIXELS and frames >= SATURATION_MIN_FRAMES


def beam_masked(mask: np.ndarray) -> bool:
    """Whether a detector mask (M, M), zero frequency at (M/2, M/2), hides the direct beam:
    its central 3x3 pixels all unused, as behind a beamstop."""
    c = np.shape(mask)[-1] // 2
    return not np.any(np.asarray(mask)[c - 1 : c + 2, c - 1 : c + 2])


def check_saturation(ds: Dataset, max_frames: int = 64) -> dict | None:
    """Saturated or flagged detector pixels left unmasked, with one warning on the
    "diffxas" logger: ``{"value", "pixels", "frames", "looked_at"}`` or None.

    A counting detector clips at its counter's range (65535, a count-rate limit) and
    flags dead or gap pixels with the integer maximum (2^32 - 1 on an Eiger); a frame
    written without the detector's own pixel mask keeps them. Both losses then follow
    those values. Looks at up to ``max_frames`` frames spread over the dataset (all
    energies): the brightest unmasked count is suspicious when it repeats
    (:data:`SATURATION_MIN_COUNT` and the two limits after it). Only frames of whole
    counts are checked: noise-free frames repeat their maximum in every identical
    membrane-only frame."""
    n = ds.n_frames
    if n == 0:
        return None
    idx = np.unique(np.linspace(0, n - 1, min(n, max_frames)).astype(np.int64))
    used = np.asarray(ds.mask)[np.asarray(ds.energy_index)[idx]] > 0
    f = take_frames(ds.frames, idx)
    if not whole_counts(f):  # not counts (noise-free or processed frames): identical
        return None  # membrane frames would repeat their maximum exactly
    top, pixels, frames = brightest_count(f, used)
    if not looks_saturated(top, pixels, frames):
        return None

    logging.getLogger("diffxas").warning(
        "the brightest count, %.10g, occurs in %d unmasked pixels of %d of the %d frames looked at: saturated or "
        "flagged detector pixels (a counter's limit, 65535, 2^32 - 1)? Mask them (CXI mask), or the fit follows "
        "them (docs/your-data.md)",
        top,
        pixels,
        frames,
        idx.size,
    )
    return {"value": top, "pixels": pixels, "frames": frames, "looked_at": int(idx.size)}


def check_direct_beam(ds: Dataset) -> list[int]:
    """Energies (indices) whose detector mask hides the direct beam: the central 3x3 pixels
    around zero frequency (M/2, M/2) all masked, as behind a beamstop. One warning on the
    "diffxas" logger when there are any.

    Both methods still fit the frames, but the bright-field estimates assume the direct
    beam is recorded: the membrane's counts (the 90th percentile of the masked frame sums,
    :func:`membrane_counts`: behind a beamstop the brightest masked frames are those the
    sample scatters most, not the membrane's), and with them the probe-power check, the
    empty-region search and the STXM absorption start (docs/your-data.md)."""
    mask = np.asarray(ds.mask)
    hidden = [int(k) for k in range(ds.n_energies) if beam_masked(mask[k])]
    if hidden:
        logging.getLogger("diffxas").warning(
            "the detector mask hides the direct beam (the central 3x3 pixels) at %d of %d energies, as behind a "
            "beamstop: the bright-field estimates (membrane counts, probe-power check, STXM start) assume it is "
            "recorded and will be off (docs/your-data.md)",
            len(hidden),
            ds.n_energies,
        )
    return hidden


def scan_kernel_width(ds: Dataset) -> float:
    """Width (m) of the Gaussian that spreads per-frame values on the map grid: 0.6 x the
    median nearest-neighbour distance of the lowest energy's scan positions."""
    ei = np.asarray(ds.energy_index)
    p0 = np.asarray(ds.positions, np.float64)[ei == 0]
    if len(p0) < 2:
        return float(ds.pixel_sizes().max())
    dd = np.sqrt(((p0[:, None, :] - p0[None, :, :]) ** 2).sum(-1)) + np.eye(len(p0)) * 1e9
    return 0.6 * float(np.median(dd.min(axis=1)))


def spread(values: np.ndarray, positions: np.ndarray, grid: Grid, sigma_m: float, return_weight: bool = False):
    """Per-frame ``values`` (f,) at probe ``positions`` (f, 2) (x, y in m) onto ``grid``:
    the Gaussian-weighted mean (Nadaraya-Watson) with width ``sigma_m``; 0 far from every
    position (where the weights underflow). ``return_weight``: also the summed kernel
    weights (H, W) (about 1 per frame inside the scan, falling to 0 outside it)."""
    xs, ys = grid.coords()
    ok = np.isfinite(values)
    v, p = np.asarray(values, np.float64)[ok], np.asarray(positions, np.float64)[ok]
    gx = np.exp(-0.5 * ((xs[None, :] - p[:, 0:1]) / sigma_m) ** 2)  # (f, W)
    gy = np.exp(-0.5 * ((ys[None, :] - p[:, 1:2]) / sigma_m) ** 2)  # (f, H)
    num = np.einsum("f,fh,fw->hw", v, gy, gx)
    den = np.einsum("fh,fw->hw", gy, gx)
    out = num / np.maximum(den, 1e-12)
    return (out, den) if return_weight else out


def flux_scatter(
    ds: Dataset, empty: np.ndarray, common: Grid, sums: np.ndarray | None = None, min_frames: int = 5
) -> float | None:
    """Frame-to-frame scatter of the incident flux beyond Poisson noise (relative RMS),
    from the frames that see only the membrane; None when no energy has ``min_frames`` such frames.

    Frames whose probe centre falls on a pixel of ``empty`` (the empty reference region on
    ``common``, e.g. from :func:`dpc_phase`) should all have the same counts within one
    energy, up to Poisson noise (relative variance ``1 / counts``). Their robust relative
    spread (1.4826 x median absolute deviation over the median) with the Poisson part
    removed in quadrature is the flux jitter left in the data: with a monitor, what the
    monitor did not correct (the sums are flux-normalised, :func:`frame_moments`). Median
    over the energies. Reference: the simulator's ``flux_jitter`` (tests/test_stxm.py).
    """
    sums = frame_sums(ds) if sums is None else np.asarray(sums, np.float64)
    row, col = np.rint(common.to_pixels(ds.positions)).astype(int).T
    inside = (row >= 0) & (row < common.shape[0]) & (col >= 0) & (col < common.shape[1])
    on_empty = np.zeros(len(sums), bool)
    on_empty[inside] = np.asarray(empty, bool)[row[inside], col[inside]]
    ei = np.asarray(ds.energy_index)
    out = []
    for k in range(ds.n_energies):
        v = sums[(ei == k) & on_empty & np.isfinite(sums)]
        if v.size < min_frames:
            continue
        med = float(np.median(v))
        if med <= 0:
            continue
        rel = 1.4826 * float(np.median(np.abs(v - med))) / med
        out.append(np.sqrt(max(rel**2 - 1.0 / med, 0.0)))
    return float(np.median(out)) if out else None


def stxm_absorption(
    ds: Dataset, common: Grid, sigma_m: float | None = None, sums: np.ndarray | None = None
) -> np.ndarray:
    """Low-resolution absorption stack (K, H, W) from integrated frame counts (bright field).

    For each frame, T = sum(counts) / I0 (I0: the 90th percentile of the frame sums of that
    energy, i.e. membrane-only frames) is the probe-weighted mean of |O|^2, so
    A = -ln(T)/2. The scattered values are spread on the map grid with :func:`spread`.
    ``sums``: the frames' masked counts when already known (:func:`frame_moments`).
    """
    ei = np.asarray(ds.energy_index)
    pos = np.asarray(ds.positions, np.float64)
    sums = frame_sums(ds) if sums is None else sums
    i0 = membrane_counts(ds, sums)
    sigma_m = scan_kernel_width(ds) if sigma_m is None else sigma_m
    out = np.zeros((ds.n_energies,) + common.shape)
    for k in range(ds.n_energies):
        idx = ei == k
        a = -0.5 * np.log(np.clip(sums[idx] / i0[k], 1e-3, None))
        out[k] = spread(a, pos[idx], common, sigma_m)
    return out


def integrate_gradient(gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """The field whose gradient is closest to (gy, gx) (per pixel, rows and columns) in the
    least-squares sense (Frankot-Chellappa: ``phi^ = -i (ky G_y^ + kx G_x^) / k^2``), on a
    grid padded 2x with zero gradient against wrap-around; mean over the padded grid 0."""
    h, w = gy.shape
    py, px = np.zeros((2 * h, 2 * w)), np.zeros((2 * h, 2 * w))
    py[:h, :w], px[:h, :w] = gy, gx
    ky = 2 * np.pi * np.fft.fftfreq(2 * h)[:, None]
    kx = 2 * np.pi * np.fft.fftfreq(2 * w)[None, :]
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    f = (-1j * ky * np.fft.fft2(py) - 1j * kx * np.fft.fft2(px)) / k2
    f[0, 0] = 0.0
    return np.real(np.fft.ifft2(f))[:h, :w]


def dpc_gradient(
    ds: Dataset, common: Grid, sigma_m: float | None = None, moments=None
) -> tuple[np.ndarray, np.ndarray]:
    """The frames' phase gradients on the map grid, summed over the energies, and the
    summed kernel weights: ``(grad (2, H, W) rad per m (rows = y, columns = x), cover (H, W))``.

    Each frame's centre of mass minus its energy's median (the probe's own tilt and the
    mask's) is ``M/(2 pi)`` times the probe-averaged phase gradient per pixel of that
    energy's grid (module docstring); :func:`spread` puts every energy's values on the
    map grid. ``moments``: :func:`frame_moments` when already computed."""
    sums, com = frame_moments(ds) if moments is None else moments
    ei = np.asarray(ds.energy_index)
    pos = np.asarray(ds.positions, np.float64)
    dx = np.asarray(ds.pixel_sizes(), np.float64)
    m = ds.frame_size
    sigma_m = scan_kernel_width(ds) if sigma_m is None else sigma_m
    grad = np.zeros((2,) + common.shape)
    cover = np.zeros(common.shape)
    for k in range(ds.n_energies):
        idx = ei == k
        c = com[idx] - np.nanmedian(com[idx], axis=0)
        g = 2 * np.pi * c / (m * dx[k])  # rad per m, (row = y, col = x)
        for a in range(2):
            v, den = spread(g[:, a], pos[idx], common, sigma_m, return_weight=True)
            grad[a] += v
        cover += den
    return grad, cover


def dpc_phase(ds: Dataset, common: Grid, sigma_m: float | None = None, moments=None) -> np.ndarray:
    """Low-resolution phase map (H, W), rad, from the frames' centres of mass (DPC).

    Each frame's centre of mass minus its energy's median (the probe's own tilt and the
    mask's; the median frame sees the membrane or a flat interior) gives the probe-averaged
    phase gradient ``2 pi <q> / M`` per pixel of that energy's grid; the gradients of all
    energies, in rad per m, are averaged, spread on the map grid (:func:`spread`) and
    integrated (:func:`integrate_gradient`). The level is set so that the 90th percentile
    of the scanned area is 0: matter shifts the phase negatively, so the membrane-only area
    (at least ~10 % of the field, as for :func:`membrane_counts`) sits at 0 and particles
    below. Independent of the incident flux.
    """
    grad, cover = dpc_gradient(ds, common, sigma_m, moments)
    # no gradient where no frame looked: the kernel mean extrapolates the outermost
    # frames' values several widths beyond the scan, which integrates to a slope
    inside = np.median(cover[cover > 0.5 * cover.max()]) if cover.max() > 0 else 1.0
    grad *= np.clip(cover / inside, 0.0, 1.0) * common.pixel_size / ds.n_energies  # rad per map pixel
    phi = integrate_gradient(grad[0], grad[1])
    scanned = cover > 0.5 * inside
    level = np.percentile(phi[scanned], 90) if scanned.any() else 0.0
    return phi - level


#: The warning of both methods when the scan shows no membrane-only (empty) region.
NO_EMPTY_REGION = (
    "no empty (membrane-only) region in the scan: absorption and phase have no zero to refer to, and "
    "the maps are not to be trusted; scan beyond the particle over bare membrane (at least ~10 % of "
    "the frames)"
)


def empty_region(
    material: np.ndarray, illuminated: np.ndarray, fraction: float = 0.05, margin_px: int = 2
) -> np.ndarray:
    """The empty (membrane-only) reference region: illuminated pixels where a low-resolution
    ``material`` map (zero on the bare membrane, e.g. minus the DPC phase) has magnitude below
    ``fraction`` of its 99th percentile, shrunk by ``margin_px`` so it stays clear of the
    particles' blurred rims; no region (all False) when fewer than 4 pixels remain."""
    from scipy import ndimage  # scipy.ndimage: ~0.5 s to import, needed only here

    mag = np.abs(np.asarray(material, np.float64))
    ill = np.asarray(illuminated, bool)
    if not ill.any():
        return np.zeros_like(ill)
    top = np.percentile(mag[ill], 99)
    empty = ill & (mag < fraction * top)
    empty = ndimage.binary_erosion(empty, iterations=margin_px)
    return empty if empty.sum() >= 4 else np.zeros_like(empty)
