r"""Detector orientation: which of the 8 flips and rotations of the frames matches the scan.

diffxas's convention (docs/formats.md) ties three things together: the scan positions
(probe centre, x along object columns, y along rows), the frames (zero frequency at pixel
(M/2, M/2), numpy's forward FFT of the exit wave, row index = k_y, column index = k_x)
and the object (``O = exp(-A + i phi)`` with ``phi < 0`` where there is matter). Beamline
files and other simulators often differ from it by a flip or a rotation of the detector:

* a detector mounted or read out rotated or mirrored, or x and y swapped between the
  scan and the detector axes (common when the scan stage and camera come from
  different software);
* an exit wave propagated with the *inverse* FFT (``ifft2``) instead of the forward one,
  or the opposite sign convention for the refractive index, ``n = 1 - delta - i beta``:
  both give frames rotated by 180 degrees. Ptychography then still converges, but to the
  conjugate twin of the object, whose phase is *positive* inside the particle; the
  two-step's composition (Re[N_e]/N_V) comes out with the wrong sign and the joint
  solver, whose phase model cannot be positive, fails entirely (measured on `tiny`:
  edge-energy error 1.2 eV instead of 0.21 eV).

The 8 candidates form the symmetry group of the square (dihedral group D4). Each is a
signed permutation ``R`` of the centred detector coordinates ``q = (row, col) - M//2``:
the re-oriented frame is ``new[q] = old[R q]`` (indices modulo M, so the zero-frequency
pixel stays where it is). Names follow numpy: ``flipud`` reverses the rows, ``rot90`` is
:func:`numpy.rot90` (counter-clockwise as displayed with row 0 on top).

**Detection** (:func:`check_orientation`) needs no reconstruction. Every frame's centre
of mass is the probe-averaged phase gradient of the object under it (differential phase
contrast, :mod:`diffxas.data.stxm`), and the frame's total counts its transmission (bright
field). Matter shifts the phase negatively where it absorbs (``delta, beta > 0``), so in
the right orientation the phase gradient points *against* the absorption gradient:
``grad phi = -kappa grad A`` with ``kappa > 0`` (``delta / beta``, about 3-30 for
transition-metal oxides around a K edge). For each candidate ``R`` the centres of mass
are re-oriented (``R^T c``: the centre of mass of the re-oriented frame), spread on the map
grid like :func:`diffxas.data.stxm.dpc_phase` does, and compared with the bright-field
absorption's gradient (mean over the energies): the score is the correlation
``-<g_R, grad A> / (|g| |grad A|)`` over the scanned area, in [-1, 1]. The right
orientation scores highest, its 180-degree twin exactly the negative of it, the other six
about 0. One pass over the frames, no FFT: seconds for thousands of frames.

When it cannot work: a sample without absorption contrast (pure phase object), a probe
with strong phase curvature far out of focus (its own phase gradient, weighted by the
transmission, adds to the centre of mass), or too few frames over the particle. The check
then reports a low score or a small margin and :func:`resolve` keeps the frames as they
are (with a warning).

**Masked pixels (a beamstop).** Only unmasked pixels give evidence, and only pixels that
stay unmasked under every candidate: the sums and centres of mass are taken over the
mask's intersection with its 8 re-orientations (:func:`symmetric_mask`), so the candidates
are compared on the same pixels and ``R^T c`` is exactly the re-oriented frame's centre
of mass. A mask over the direct beam leaves a second trap: the unmasked counts are then
mostly light scattered by the sample (dark field), which is *higher* over the particle,
not lower, so the "absorption" changes sign and the 180-degree twin wins (measured on
`tiny`, 32 x 32 frames: a central 4 x 4 to 12 x 12 mask gave ``rot180`` with score
0.4-0.6 on correctly oriented frames). The check therefore asks whether the unmasked
counts still behave as bright field: in a bright field the empty-membrane frames, the
most common level of the frame sums, are the *brightest* frames; in a dark field the
darkest. :func:`bright_field_index` puts the sums' mode within their 2-98 % range (1: at
the top, 0: at the bottom); below :data:`MIN_BRIGHT_FIELD` the check is not decisive and
:func:`resolve` keeps the frames ("undecided, frames kept").
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from diffxas.data.sources import LazyFrames
from diffxas.errors import ConfigError, InputError

if TYPE_CHECKING:  # the dataset module imports JAX; `diffxas --help` lists CHOICES without it
    from diffxas.data.dataset import Dataset

log = logging.getLogger("diffxas")

#: name -> R (2x2 signed permutation acting on centred (row, col) detector coordinates);
#: the re-oriented frame is ``new[q] = old[R q]``.
ORIENTATIONS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "none": ((1, 0), (0, 1)),
    "flipud": ((-1, 0), (0, 1)),
    "fliplr": ((1, 0), (0, -1)),
    "rot180": ((-1, 0), (0, -1)),
    "transpose": ((0, 1), (1, 0)),
    "antitranspose": ((0, -1), (-1, 0)),
    "rot90": ((0, 1), (-1, 0)),
    "rot270": ((0, -1), (1, 0)),
}

#: the choices of ``--orientation`` (``auto``: detect, :func:`resolve`)
CHOICES = ("auto",) + tuple(ORIENTATIONS)

#: :func:`resolve` re-orients the frames only when the best candidate scores at least this
#: correlation ...
MIN_SCORE = 0.3
#: ... and leads the runner-up by at least this much (see docs/formats.md, "Detector
#: orientation", for the scores measured on simulated data of every preset and dose).
MIN_MARGIN = 0.2
#: ... and the unmasked counts behave as bright field (:func:`bright_field_index` at least
#: this; measured: 0.8-1.0 with the direct beam visible, 0.0-0.3 with it hidden).
MIN_BRIGHT_FIELD = 0.5
#: the words :func:`resolve` and :meth:`OrientationCheck.summary` use when the check is not
#: decisive
UNDECIDED = "undecided, frames kept"


def matrix(name: str) -> np.ndarray:
    """The signed permutation ``R`` (2, 2) int of orientation ``name``."""
    if name not in ORIENTATIONS:
        raise ConfigError(f"unknown orientation {name!r}; choose one of {', '.join(CHOICES)}")
    return np.asarray(ORIENTATIONS[name], np.int64)


def name_of(r: np.ndarray) -> str:
    """The orientation name of a signed permutation ``R``."""
    r = np.asarray(r, np.int64)
    for name, m in ORIENTATIONS.items():
        if np.array_equal(r, np.asarray(m)):
            return name
    raise ValueError(f"not a detector orientation: {r.tolist()}")


def inverse(name: str) -> str:
    """The orientation that undoes ``name`` (``R^-1 = R^T``): rot90 <-> rot270, every other its own."""
    return name_of(matrix(name).T)


def compose(first: str, then: str) -> str:
    """The single orientation equal to applying ``first`` and then ``then`` to a frame."""
    # new1[q] = old[R1 q]; new2[q] = new1[R2 q] = old[R1 R2 q]
    return name_of(matrix(first) @ matrix(then))


def _index_maps(r: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    c = m // 2
    q = np.arange(m) - c
    qr, qc = np.meshgrid(q, q, indexing="ij")
    src_r = (r[0, 0] * qr + r[0, 1] * qc + c) % m
    src_c = (r[1, 0] * qr + r[1, 1] * qc + c) % m
    return src_r, src_c


def orient(frames: np.ndarray, name: str) -> np.ndarray:
    """``frames`` (..., M, M) re-oriented by ``name`` about the zero-frequency pixel (M//2, M//2)."""
    a = np.asarray(frames)
    r = matrix(name)
    if name == "none":
        return a
    if a.shape[-1] != a.shape[-2]:
        raise InputError(f"frames must be square, got {a.shape[-2:]}")
    src_r, src_c = _index_maps(r, a.shape[-1])
    return np.ascontiguousarray(a[..., src_r, src_c])


class OrientedFrames(LazyFrames):
    """A lazy frame source (:class:`diffxas.data.cxi.CxiFrames` or another) read through an
    orientation: the same protocol (:class:`diffxas.data.sources.LazyFrames`), each block
    re-oriented right after it is read."""

    def __init__(self, base, name: str):
        self.base = base
        self.orientation = name
        matrix(name)

    @property
    def path(self):
        return getattr(self.base, "path", None)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.base.shape)

    def __repr__(self) -> str:
        return f"OrientedFrames({self.base!r}, {self.orientation!r})"

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            return orient(np.asarray(self.base[key], np.float32), self.orientation)
        if isinstance(key, tuple) or key is Ellipsis:
            return np.asarray(self)[key]
        return OrientedFrames(self.base[key], self.orientation)

    def read(self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        a = orient(self.base.read(start, stop), self.orientation).astype(np.float32, copy=False)
        if out is None:
            return a
        out[...] = a
        return out

    def take(self, positions, out: np.ndarray | None = None) -> np.ndarray:
        a = orient(self.base.take(positions), self.orientation).astype(np.float32, copy=False)
        if out is None:
            return a
        out[...] = a
        return out


def reorient(ds: Dataset, name: str) -> Dataset:
    """``ds`` with every frame and the detector mask re-oriented by ``name``.

    Positions, energies and the illumination (an object-plane quantity) are unchanged; a
    lazy frame source stays lazy (:class:`OrientedFrames`), re-orienting twice composes."""
    from diffxas.data.dataset import in_memory  # jax: `diffxas --help` imports this module (CHOICES)

    matrix(name)  # validates the name
    if name == "none":
        return ds
    f = ds.frames
    if in_memory(f):
        frames = orient(np.asarray(f), name)
    elif isinstance(f, OrientedFrames):
        total = compose(f.orientation, name)
        frames = f.base if total == "none" else OrientedFrames(f.base, total)
    else:
        frames = OrientedFrames(f, name)
    return dataclasses.replace(ds, frames=frames, mask=orient(np.asarray(ds.mask), name))


@dataclasses.dataclass(frozen=True)
class OrientationCheck:
    """What :func:`check_orientation` found.

    Attributes:
        scores: orientation name -> correlation of its phase gradient with minus the
            absorption gradient, in [-1, 1] (the right one is high, its 180-degree twin
            the negative of it).
        best: the highest-scoring name; ``margin``: its lead over the runner-up.
        confident: ``best`` scores at least :data:`MIN_SCORE` with a margin of at least
            :data:`MIN_MARGIN`.
        pixels: map pixels the scores are computed over (the scanned area).
        absorption_contrast: RMS of the bright-field absorption over those pixels (its
            spatial variation; about 0 means nothing to compare the phase with).
    """

    scores: dict[str, float]
    best: str
    margin: float
    confident: bool
    pixels: int
    absorption_contrast: float
    #: :func:`bright_field_index` of the unmasked frame sums (median over the energies)
    bright_field: float = 1.0
    #: detector pixels left out (masked, or masked under one of the 8 candidates), most of any energy
    excluded_pixels: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": {k: round(float(v), 4) for k, v in self.scores.items()},
            "best": self.best,
            "margin": round(float(self.margin), 4),
            "confident": bool(self.confident),
            "decision": self.best if self.confident else UNDECIDED,
            "pixels": int(self.pixels),
            "absorption_contrast": float(self.absorption_contrast),
            "bright_field": round(float(self.bright_field), 4),
            "excluded_pixels": int(self.excluded_pixels),
            "min_score": MIN_SCORE,
            "min_margin": MIN_MARGIN,
            "min_bright_field": MIN_BRIGHT_FIELD,
        }

    def reason(self) -> str:
        """Why the check is not decisive ('' when it is)."""
        if self.confident:
            return ""
        if not self.bright_field >= MIN_BRIGHT_FIELD:
            return (
                f"the unmasked counts look like dark field, not bright field (index {self.bright_field:.2f} < "
                f"{MIN_BRIGHT_FIELD}; {self.excluded_pixels} detector pixels masked or masked under a flip: "
                "a beamstop over the direct beam?)"
            )
        return (
            f"needs a best score >= {MIN_SCORE} and a margin >= {MIN_MARGIN} (little absorption contrast, "
            "few frames on the sample, or a strongly defocused probe?)"
        )

    def summary(self) -> str:
        lines = ["orientation      score   (correlation of the DPC phase gradient with -grad(absorption))"]
        for name, s in sorted(self.scores.items(), key=lambda kv: -kv[1]):
            mark = "  <- best" if name == self.best else ""
            lines.append(f"  {name:<14s} {s:+.3f}{mark}")
        lines.append(
            f"margin {self.margin:.3f} over the runner-up; {self.pixels} map pixels; "
            f"absorption contrast {self.absorption_contrast:.3g}; bright-field index "
            f"{self.bright_field:.2f}; {self.excluded_pixels} detector pixels excluded"
        )
        if not self.confident:
            lines.append(f"{UNDECIDED}: {self.reason()}")
        elif self.best == "none":
            lines.append("the frames match diffxas's convention: no re-orientation needed (--orientation none)")
        else:
            lines.append(
                f"the frames need re-orienting: --orientation {self.best} "
                f"(what `--orientation auto`, the default of `diffxas reconstruct`, does)"
            )
        return "\n".join(lines)


def check_centring(ds: Dataset, max_frames: int = 64) -> tuple[int, int]:
    """Raise an InputError when the frames are not centred (the zero frequency, i.e. the
    bright direct beam, is not near pixel (M/2, M/2)); returns the peak's (row, col).

    Looks at the mean of up to ``max_frames`` frames of the lowest energy: the brightest
    pixel, when it is a peak (10x the median or more), must lie within M/4 of the centre.
    Frames written without ``numpy.fft.fftshift`` have it in a corner."""
    from diffxas.data.dataset import take_frames  # jax: `diffxas --help` imports this module (CHOICES)

    block = take_frames(ds.frames, ds.frames_of(0)[:max_frames])
    mean = np.asarray(block, np.float64).mean(axis=0) * np.asarray(ds.mask[0], np.float64)
    m = ds.frame_size
    r, c = np.unravel_index(int(np.argmax(mean)), mean.shape)
    # a direct beam stands out by orders of magnitude; a flat or noisy frame has no peak to judge
    beam = mean[r, c] > 10.0 * max(float(np.median(mean)), 1e-12)
    if beam and max(abs(r - m // 2), abs(c - m // 2)) > m // 4:
        raise InputError(
            f"the frames' brightest pixel (the direct beam) is at (row {r}, col {c}), not near the centre "
            f"({m // 2}, {m // 2}): diffxas expects the zero frequency at (M/2, M/2) "
            "(numpy.fft.fftshift order; docs/formats.md)"
        )
    return int(r), int(c)


def symmetric_mask(mask) -> np.ndarray:
    """``mask`` (K, M, M) (or (M, M)) reduced to the pixels unmasked under all 8
    orientations: 1 where ``orient(mask, name)`` is nonzero for every ``name``, else 0
    (float32, same shape). Statistics over it compare every candidate on the same pixels."""
    m = np.asarray(mask) > 0
    out = np.ones(m.shape, bool)
    for name in ORIENTATIONS:
        out &= orient(m, name)
    return out.astype(np.float32)


def bright_field_index(sums: np.ndarray, energy_index: np.ndarray) -> float:
    """Where the frame sums' most common level lies within their range, median over the
    energies: 1 = at the top (bright field: the empty-membrane frames are the brightest),
    0 = at the bottom (dark field: the sample scatters light into the unmasked pixels).

    Per energy: the mode is the middle of the shortest interval holding 10 % of the
    frames (at least 3), placed within the 2-98 % percentiles. An energy with fewer than
    3 finite sums or no spread gives no value; none at all gives NaN."""
    ei = np.asarray(energy_index)
    sums = np.asarray(sums, np.float64)
    vals = []
    for k in np.unique(ei):
        v = np.sort(sums[(ei == k) & np.isfinite(sums)])
        if v.size < 3:
            continue
        lo, hi = np.percentile(v, [2, 98])
        if not hi > lo:
            continue
        w = max(3, v.size // 10)
        widths = v[w - 1 :] - v[: v.size - w + 1]
        i = int(np.argmin(widths))
        mode = 0.5 * (v[i] + v[i + w - 1])
        vals.append(float(np.clip((mode - lo) / (hi - lo), 0.0, 1.0)))
    return float(np.median(vals)) if vals else float("nan")


def check_orientation(ds: Dataset, moments=None) -> OrientationCheck:
    """Score the 8 detector orientations of ``ds`` (module docstring). ``moments``: the
    frames' ``(sums, centres)`` when already computed (:func:`diffxas.data.stxm.frame_moments`)
    over :func:`symmetric_mask` of ``ds.mask``; otherwise they are computed here that way."""
    from diffxas.data.stxm import (  # jax: `diffxas --help` imports this module (CHOICES)
        dpc_gradient,
        frame_moments,
        scan_kernel_width,
        stxm_absorption,
    )

    sym = symmetric_mask(ds.mask)
    excluded = int((sym.reshape(-1, *sym.shape[-2:]) == 0).sum(axis=(1, 2)).max())
    # evidence only from pixels unmasked under every candidate orientation
    ds = dataclasses.replace(ds, mask=sym)
    sums, com = frame_moments(ds) if moments is None else moments
    bright = bright_field_index(sums, ds.energy_index)
    common = ds.common_grid()
    sigma = scan_kernel_width(ds)
    if not np.isfinite(com).all(axis=1).any():
        raise InputError("too few frames with counts to check the detector orientation")
    grad, cover = dpc_gradient(ds, common, sigma, (sums, com))  # raw centres of mass as phase gradients
    absorption = stxm_absorption(ds, common, sigma, sums=sums).mean(axis=0)
    ga_r, ga_c = np.gradient(absorption)
    if cover.max() <= 0:
        raise InputError("too few frames with counts to check the detector orientation")
    inside = np.median(cover[cover > 0.5 * cover.max()])
    # well inside the scan: the kernel mean extrapolates beyond the outermost frames
    from scipy import ndimage  # scipy.ndimage: ~0.5 s to import, only for the orientation check

    scanned = ndimage.binary_erosion(cover > 0.5 * inside, iterations=2)
    if scanned.sum() < 16:
        scanned = cover > 0.5 * inside
    gr, gc = grad[0][scanned], grad[1][scanned]
    ar, ac = ga_r[scanned], ga_c[scanned]
    norm = np.sqrt((gr**2 + gc**2).sum() * (ar**2 + ac**2).sum())
    scores = {}
    for name in ORIENTATIONS:
        r = matrix(name)
        # the re-oriented frame's centre of mass is R^T c (new[q] = old[R q])
        nr = r[0, 0] * gr + r[1, 0] * gc
        nc = r[0, 1] * gr + r[1, 1] * gc
        scores[name] = float(-(nr * ar + nc * ac).sum() / norm) if norm > 0 else 0.0
    order = sorted(scores, key=lambda n: -scores[n])
    best, margin = order[0], scores[order[0]] - scores[order[1]]
    a_in = absorption[scanned]
    contrast = float(np.sqrt(np.mean((a_in - a_in.mean()) ** 2)))
    confident = scores[best] >= MIN_SCORE and margin >= MIN_MARGIN and bright >= MIN_BRIGHT_FIELD
    return OrientationCheck(
        scores=scores,
        best=best,
        margin=float(margin),
        confident=bool(confident),
        pixels=int(scanned.sum()),
        absorption_contrast=contrast,
        bright_field=bright,
        excluded_pixels=excluded,
    )


def resolve(ds: Dataset, requested: str = "auto") -> tuple[Dataset, dict[str, Any]]:
    """Apply the orientation a user asked for (``--orientation``), detecting it for ``"auto"``.

    Returns the (re-oriented) dataset and the record for the results file:
    ``{"requested", "applied", "check"}`` (``check``: :meth:`OrientationCheck.to_dict`, for
    ``"auto"`` only). ``"auto"`` first checks the frames' centring (:func:`check_centring`),
    then re-orients only when the check is confident; otherwise it keeps the frames and
    logs why. A named orientation is applied as given, without a check (this saves the
    pass over the frames)."""
    if requested not in CHOICES:
        raise ConfigError(f"unknown orientation {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        return reorient(ds, requested), {"requested": requested, "applied": requested}
    check_centring(ds)
    try:
        chk = check_orientation(ds)
    except InputError as e:
        log.warning("detector orientation not checked (%s): frames used as they are", e)
        return ds, {"requested": "auto", "applied": "none", "check": None}
    rec = {"requested": "auto", "check": chk.to_dict()}
    if not chk.confident:
        log.warning(
            "detector orientation %s (best %s, score %.2f, margin %.2f; %s); "
            "run `diffxas orientation DATA.cxi` for the table",
            UNDECIDED,
            chk.best,
            chk.scores[chk.best],
            chk.margin,
            chk.reason(),
        )
        rec["applied"] = "none"
        return ds, rec
    rec["applied"] = chk.best
    if chk.best != "none":
        log.warning(
            "the frames are re-oriented (%s): their phase-gradient/absorption correlation is %.2f that way "
            "and %.2f as written (diffxas's convention: docs/formats.md; --orientation none keeps them)",
            chk.best,
            chk.scores[chk.best],
            chk.scores["none"],
        )
    return reorient(ds, chk.best), rec
