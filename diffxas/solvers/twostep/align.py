r"""From per-energy ePIE objects to an aligned absorption/phase stack on the map grid.

Steps (:func:`align_stack`):

1. **Fields on the common grid.** Each energy's object ``O_k`` (on its own natural grid)
   gives ``A_k = -ln|O_k|`` and the unwrapped phase ``phi_k`` (least-squares unwrapping,
   :func:`unwrap_phase`, made congruent with the wrapped phase); both real fields are
   brought onto the common grid with the forward model's exact band-limited resampling
   (:func:`diffxas.physics.forward.resample`).
2. **Illuminated area.** The probe intensity summed over each energy's scan (``|P|^2``
   placed at every frame's patch corner, resampled to the common grid, averaged over
   energies, normalised to its maximum): ``illuminated`` = coverage >= ``illum_fraction``
   (default 0.2); ``well_lit`` = coverage >= ``well_lit_fraction`` (default 0.5).
3. **Empty (membrane-only) region**, detected automatically inside ``well_lit``
   (:func:`find_empty_region`): a "material score" ``s = A/scale_A - phi/scale_phi`` of
   the energy-averaged, Gaussian-smoothed (1 px) fields (material absorbs, A > 0, and
   retards the phase, phi < 0; scales are robust MADs) is split in two classes by Otsu's
   threshold; the low class, with a low phase-gradient magnitude (below the class's
   median + 2 MAD) and eroded by ``erode_px`` pixels to keep away from particle borders,
   is the empty region. Fallback: the ``fallback_fraction`` of well-lit pixels with the
   lowest score. Detected twice: after a first background removal with all well-lit
   pixels, then with the first estimate.
4. **Background removal.** Per energy, a plane ``c0 + cx x + cy y`` is fitted to the phase
   over the empty region and subtracted everywhere (ePIE's global phase and linear phase
   ramp ambiguities); the mean of ``A`` over the empty region is subtracted (the
   object/probe amplitude-scale ambiguity). The membrane is then the zero of A and phi,
   as in :mod:`diffxas.physics.spectra`.
5. **Registration.** Sub-pixel translation of each energy's phase image against the
   energy-averaged phase (two passes: first against the reference energy), by
   windowed cross-correlation with upsampled-DFT refinement (Guizar-Sicairos et al.,
   Opt. Lett. 33, 156 (2008)) to 1/``upsample`` pixel; the shifts' mean is removed
   (the scan's own frame is kept) and they are applied with exact Fourier shifts
   (:func:`diffxas.physics.forward.fourier_shift`); background removal is then repeated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy.fft import dctn, idctn

from diffxas.physics.forward import fourier_shift, resample, resample_matrices
from diffxas.physics.forward import illumination_map as footprint
from diffxas.physics.geometry import Grid

# ----------------------------------------------------------------------------- resampling


@functools.lru_cache(maxsize=256)
def _matrices(src_key, dst_key):
    src = Grid(pixel_size=src_key[0], shape=src_key[1], origin=src_key[2])
    dst = Grid(pixel_size=dst_key[0], shape=dst_key[1], origin=dst_key[2])
    ry, rx = resample_matrices(src, dst)
    return jnp.asarray(ry, jnp.float32), jnp.asarray(rx, jnp.float32)


def _key(g: Grid):
    return (float(g.pixel_size), tuple(int(s) for s in g.shape), tuple(float(o) for o in g.origin))


def cached_matrices(src: Grid, dst: Grid):
    """:func:`forward.resample_matrices` from ``src`` to ``dst`` as float32 device arrays (cached)."""
    return _matrices(_key(src), _key(dst))


def resample_field(field, src: Grid, dst: Grid) -> np.ndarray:
    """A real field (``(..., ny, nx)``) on ``src`` resampled onto ``dst`` (float32 numpy)."""
    ry, rx = cached_matrices(src, dst)
    return np.asarray(resample(jnp.asarray(field, jnp.float32), ry, rx))


# ----------------------------------------------------------------------------- phase unwrapping


def _wrap(x):
    return (x + np.pi) % (2 * np.pi) - np.pi


def unwrap_phase(wrapped: np.ndarray) -> np.ndarray:
    """2-D phase unwrapping: unweighted least squares (Ghiglia & Romero 1994), made congruent.

    The Poisson equation for the wrapped phase differences is solved with a DCT
    (Neumann boundaries); the result ``phi_ls`` is then snapped onto the wrapped data,
    ``phi = phi_ls + wrap(wrapped - phi_ls)``, so that it differs from the input by
    multiples of 2 pi only. Where the phase never wraps this returns the input up to a
    constant multiple of 2 pi (removed: the result is brought to the input's median).
    """
    w = np.asarray(wrapped, np.float64)
    dy = _wrap(np.diff(w, axis=0))
    dx = _wrap(np.diff(w, axis=1))
    rho = np.zeros_like(w)
    rho[:-1, :] += dy
    rho[1:, :] -= dy
    rho[:, :-1] += dx
    rho[:, 1:] -= dx
    ny, nx = w.shape
    r = dctn(rho, type=2, norm="ortho")
    ky = np.cos(np.pi * np.arange(ny) / ny)[:, None]
    kx = np.cos(np.pi * np.arange(nx) / nx)[None, :]
    den = 2 * (ky + kx - 2)
    den[0, 0] = 1.0
    p = r / den
    p[0, 0] = 0.0
    phi_ls = idctn(p, type=2, norm="ortho")
    phi = phi_ls + _wrap(w - phi_ls)
    # keep the input's branch on average
    k = np.round(np.median(phi - w) / (2 * np.pi))
    return phi - 2 * np.pi * k


# ----------------------------------------------------------------------------- illumination


def illumination_map(
    probes: np.ndarray, corners: list[np.ndarray], grids: list[Grid], common: Grid, energies_subset=None
) -> np.ndarray:
    """Scan coverage ``sum_j |P(r - r_j)|^2`` on the common grid, averaged over energies, max 1.

    The footprint on each energy's grid is the forward model's
    :func:`diffxas.physics.forward.illumination_map` with ``|P|^2`` at each frame's integer patch
    corner (the sub-pixel remainder is irrelevant for a coverage mask), then resampled.
    """
    kn = len(grids)
    ks = range(kn) if energies_subset is None else energies_subset
    acc = np.zeros(common.shape, np.float64)
    n = 0
    for k in ks:
        c = np.asarray(corners[k], np.int32).reshape(-1, 2)
        p2 = np.abs(np.asarray(probes[k], np.complex64)) ** 2
        cov = np.asarray(
            footprint(
                p2[None].astype(np.float32),
                np.zeros(len(c), np.int32),
                c,
                np.zeros((len(c), 2), np.float32),
                grids[k].shape,
            )[0],
            np.float64,
        )
        acc += resample_field(cov, grids[k], common)
        n += 1
    acc /= max(n, 1)
    acc = np.clip(acc, 0.0, None)
    return acc / max(acc.max(), 1e-300)


# ----------------------------------------------------------------------------- empty region


def _otsu(x: np.ndarray, bins: int = 256) -> float:
    x = x[np.isfinite(x)]
    if x.size < 2 or np.ptp(x) == 0:
        return float(np.median(x)) if x.size else 0.0
    h, edges = np.histogram(x, bins=bins)
    c = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(h)
    w1 = w0[-1] - w0
    m0 = np.cumsum(h * c) / np.maximum(w0, 1)
    m1 = (np.sum(h * c) - np.cumsum(h * c)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(c[int(np.argmax(between))])


def _mad(x):
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 1.0
    s = 1.4826 * np.median(np.abs(x - np.median(x)))
    return float(s) if s > 0 else float(np.std(x) or 1.0)


def find_empty_region(
    absorption: np.ndarray,
    phase: np.ndarray,
    well_lit: np.ndarray,
    erode_px: int = 2,
    fallback_fraction: float = 0.15,
    min_fraction: float = 0.03,
) -> np.ndarray:
    """Membrane-only pixels inside ``well_lit`` (see the module docstring, step 3).

    Args:
        absorption, phase: (K, H, W) stacks (any constant offsets) or (H, W) images.
    """
    a = np.asarray(absorption, np.float64)
    p = np.asarray(phase, np.float64)
    if a.ndim == 3:
        a = a.mean(axis=0)
        p = p.mean(axis=0)
    wl = np.asarray(well_lit, bool)
    if wl.sum() < 10:
        return wl.copy()
    a_s = ndimage.gaussian_filter(a, 1.0)
    p_s = ndimage.gaussian_filter(p, 1.0)
    gy, gx = np.gradient(p_s)
    grad = np.hypot(gy, gx)
    sa = (a_s - np.median(a_s[wl])) / _mad(a_s[wl])
    sp = (p_s - np.median(p_s[wl])) / _mad(p_s[wl])
    score = sa - sp
    thr = _otsu(score[wl])
    low = wl & (score <= thr)
    if low.sum() >= 10:
        g = grad[low]
        low &= grad <= np.median(g) + 2.0 * _mad(g)
    empty = ndimage.binary_erosion(low, iterations=erode_px, border_value=0) if erode_px > 0 else low
    if empty.sum() < min_fraction * wl.sum():
        q = np.quantile(score[wl], fallback_fraction)
        empty = wl & (score <= q)
    return empty


def remove_background(absorption: np.ndarray, phase: np.ndarray, empty: np.ndarray, ramp: bool = True):
    """Subtract each energy's phase plane (offset + linear ramp) and mean absorption over ``empty``.

    Returns ``(absorption, phase, coefficients (K, 4): a0, c0, cy, cx)``; the plane is in
    pixel units of the maps' grid, centred on the image centre.
    """
    a = np.array(absorption, np.float64, copy=True)
    p = np.array(phase, np.float64, copy=True)
    kn, ny, nx = a.shape
    yy, xx = np.mgrid[:ny, :nx]
    yy = (yy - 0.5 * (ny - 1)) / ny
    xx = (xx - 0.5 * (nx - 1)) / nx
    e = np.asarray(empty, bool)
    if ramp:
        basis = np.stack([np.ones(e.sum()), yy[e], xx[e]], axis=1)
    else:
        basis = np.ones((e.sum(), 1))
    coefs = np.zeros((kn, 4))
    for k in range(kn):
        c, *_ = np.linalg.lstsq(basis, p[k][e], rcond=None)
        c = np.concatenate([c, np.zeros(3 - c.size)])
        p[k] -= c[0] + c[1] * yy + c[2] * xx
        a0 = a[k][e].mean()
        a[k] -= a0
        coefs[k] = [a0, *c]
    return a, p, coefs


# ----------------------------------------------------------------------------- registration


def _upsampled_dft(data, region: int, upsample: int, offsets):
    """Upsampled DFT of ``data`` on a ``region x region`` patch at ``offsets`` (rows, cols), matrix form."""
    out = data
    for n, off in list(zip(data.shape, offsets))[::-1]:
        kern = np.exp(-2j * np.pi * (np.arange(region) - off)[:, None] * np.fft.fftfreq(n, upsample)[None, :])
        out = np.tensordot(kern, out, axes=(1, -1))
    return out


def estimate_shift(
    ref: np.ndarray, img: np.ndarray, weight: np.ndarray | None = None, upsample: int = 100, gradient: bool = False
) -> np.ndarray:
    """Sub-pixel translation ``s`` (rows, cols) with ``apply_shifts(img, s) ~= ref``.

    Cross-correlation of the mean-removed (weighted mean, with ``weight``) and windowed
    images, or, with ``gradient``, of their two gradient components (summed): removing the
    gradients' means makes the estimate blind to residual phase offsets *and* linear ramps
    that differ between energies. The correlation peak is refined on an upsampled DFT
    grid in a 1.5-pixel neighbourhood (Guizar-Sicairos et al., Opt. Lett. 33, 156 (2008)).
    """
    r = np.asarray(ref, np.float64)
    i = np.asarray(img, np.float64)
    w = np.ones_like(r) if weight is None else np.asarray(weight, np.float64)
    sw = max(w.sum(), 1e-300)
    comps = list(zip(np.gradient(r), np.gradient(i))) if gradient else [(r, i)]
    prod = 0.0
    for cr, ci in comps:
        cr = (cr - (cr * w).sum() / sw) * w
        ci = (ci - (ci * w).sum() / sw) * w
        prod = prod + np.fft.fft2(cr) * np.conj(np.fft.fft2(ci))
    cc = np.real(np.fft.ifft2(prod))  # real images: the peak is a positive correlation
    shape = np.array(cc.shape)
    peak = np.array(np.unravel_index(np.argmax(cc), cc.shape), np.float64)
    mid = np.fix(shape / 2)
    peak[peak > mid] -= shape[peak > mid]
    if upsample <= 1:
        return peak
    shift = np.round(peak * upsample) / upsample
    region = int(np.ceil(upsample * 1.5))
    dft_shift = np.fix(region / 2.0)
    cc_up = np.real(np.conj(_upsampled_dft(np.conj(prod), region, upsample, dft_shift - shift * upsample)))
    mx = np.array(np.unravel_index(np.argmax(cc_up), cc_up.shape), np.float64)
    return shift + (mx - dft_shift) / upsample


def apply_shifts(fields: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift each real field ``fields[k]`` by ``shifts[k]`` (rows, cols) pixels (exact Fourier shift)."""
    f = np.asarray(fields, np.float32)
    s = np.asarray(shifts, np.float32).reshape(-1, 2)
    if not np.any(s):
        return f.copy()
    out = jax.vmap(lambda x, d: jnp.real(fourier_shift(x.astype(jnp.complex64), d)))(jnp.asarray(f), jnp.asarray(s))
    return np.asarray(out, np.float32)


def register_stack(
    phase: np.ndarray,
    weight: np.ndarray,
    ref_index: int = 0,
    upsample: int = 100,
    passes: int = 3,
    gradient: bool = True,
) -> np.ndarray:
    """Shifts (K, 2) that align every energy's phase image to the others (mean shift zero).

    Pass 1 registers against the reference energy, later passes against the mean of the
    aligned stack; each pass estimates the *residual* shift of the already shifted images
    (a fixed window biases a single estimate towards zero; iterating removes the bias).
    Gradient-based correlation by default (see :func:`estimate_shift`).
    """
    p = np.asarray(phase, np.float64)
    kn = p.shape[0]
    shifts = np.zeros((kn, 2))
    target = p[ref_index]
    cur = p
    for _ in range(passes):
        shifts += np.stack([estimate_shift(target, cur[k], weight, upsample, gradient) for k in range(kn)])
        shifts -= shifts.mean(axis=0, keepdims=True)
        cur = apply_shifts(p, shifts)
        target = cur.mean(axis=0)
    return shifts


# ----------------------------------------------------------------------------- the whole chain


@dataclasses.dataclass
class AlignedStack:
    """Absorption/phase stacks on the common grid (membrane-referenced, registered).

    Attributes:
        absorption, phase: (K, H, W) float32.
        illuminated, well_lit, empty: (H, W) bool.
        coverage: (H, W) scan coverage (max 1).
        shifts: (K, 2) applied shifts (rows, cols) in map pixels.
        background: (K, 4) removed absorption offset and phase plane (a0, c0, cy, cx).
    """

    absorption: np.ndarray
    phase: np.ndarray
    illuminated: np.ndarray
    well_lit: np.ndarray
    empty: np.ndarray
    coverage: np.ndarray
    shifts: np.ndarray
    background: np.ndarray
    grid: Grid


def to_common(objects: np.ndarray, grids: list[Grid], common: Grid) -> tuple[np.ndarray, np.ndarray]:
    """A = -ln|O| and unwrapped phase of every energy, resampled onto ``common`` ((K, H, W) each)."""
    kn = len(grids)
    A = np.zeros((kn,) + common.shape, np.float32)
    P = np.zeros_like(A)
    for k in range(kn):
        o = np.asarray(objects[k], np.complex128)
        a = -np.log(np.maximum(np.abs(o), 1e-12))
        ph = np.angle(o)
        A[k] = resample_field(a, grids[k], common)
        P[k] = resample_field(unwrap_phase(ph), grids[k], common)
    return A, P


def align_stack(
    objects: np.ndarray,
    grids: list[Grid],
    common: Grid,
    energies,
    probes: np.ndarray | None = None,
    tables=None,
    frame_size: int | None = None,
    register: bool = True,
    illum_fraction: float = 0.2,
    well_lit_fraction: float = 0.5,
    ref_index: int = 0,
    upsample: int = 100,
    erode_px: int = 2,
    coverage: np.ndarray | None = None,
) -> AlignedStack:
    """Steps 1-5 of the module docstring.

    ``probes`` (K, M, M) and ``tables`` (per energy ``(frame indices, corners, fracs)`` as
    built by :mod:`diffxas.solvers.twostep.epie`) give the scan coverage; alternatively pass ``coverage``
    (H, W) directly. Without either, every pixel counts as illuminated.
    """
    A, P = to_common(objects, grids, common)
    if coverage is None:
        if probes is not None and tables is not None:
            corners = [t[1] for t in tables]
            sub = np.unique(np.linspace(0, len(grids) - 1, min(len(grids), 5)).round().astype(int))
            coverage = illumination_map(probes, corners, grids, common, energies_subset=sub)
        else:
            coverage = np.ones(common.shape)
    ill = coverage >= illum_fraction
    wl = coverage >= well_lit_fraction
    # first pass: background from all well-lit pixels, then the empty region, twice
    _, p0, _ = remove_background(A, P, wl)
    empty = find_empty_region(A, p0, wl, erode_px=erode_px)
    a1, p1, bg = remove_background(A, P, empty)
    empty = find_empty_region(a1, p1, wl, erode_px=erode_px)
    a1, p1, bg = remove_background(A, P, empty)
    shifts = np.zeros((len(grids), 2))
    if register and len(grids) > 1:
        w = ndimage.gaussian_filter(wl.astype(np.float64), 2.0)
        shifts = register_stack(p1, w, ref_index=ref_index, upsample=upsample)
        A = apply_shifts(A, shifts)
        P = apply_shifts(P, shifts)
        a1, p1, bg = remove_background(A, P, empty)
    return AlignedStack(
        absorption=a1.astype(np.float32),
        phase=p1.astype(np.float32),
        illuminated=ill,
        well_lit=wl,
        empty=empty,
        coverage=coverage,
        shifts=shifts,
        background=bg,
        grid=common,
    )
