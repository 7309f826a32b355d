"""Can these data support maps? Checks of the frames and the scan positions before a run.

One concern: whether a dataset is physically usable by either reconstruction. The
pipeline (:func:`diffxas.app.pipeline.check_data`, for ``diffxas reconstruct``, the demo and
sweeps) runs :func:`check_dataset` before the orientation check and :func:`ensure_checked`
after it; both solvers call :func:`ensure_checked` on entry, which costs nothing for a
dataset checked there and checks one given to them from Python (``diffxas info`` reports
the same findings through :func:`findings`). What cannot work is refused with one
:class:`~diffxas.errors.InputError` line; what can work once some frames are left out is
masked (the frames dropped) with one warning on the "diffxas" logger naming the energy and
the frame indices.

Decisions (the issue is silent on the thresholds; the reasons are given here):

* A frame is **empty** when its unmasked counts sum to zero, and **nearly empty** when the
  sum is below ``LOW_FRACTION`` (10 %) of its energy's median frame: no sample absorbs
  90 % of a hard X-ray beam within one scan (a closed shutter or a lost beam does).
  Such frames are dropped. A frame **brighter than** ``HIGH_FACTOR`` (2x) its energy's
  median (and more than ``OUTLIER_Z`` robust standard deviations, median absolute
  deviation x 1.4826, above it) is dropped too: an absorbing sample only removes photons,
  so twice a membrane-only frame is a detector or beam fault. The relative limits are wide
  on purpose: frames over a particle legitimately differ from the membrane's by tens of
  percent, far beyond their Poisson scatter, so a plain MAD rule would drop real data.
  These relative rules are skipped for an energy whose median frame holds fewer than
  ``MIN_MEDIAN_PHOTONS`` (50) photons (an empty frame is then Poisson noise) or whose mask
  hides the direct beam (behind a beamstop the sums follow the sample, not the beam); an
  energy whose median frame is empty has all its empty frames flagged (and is refused).
* A frame with a **non-finite** unmasked pixel (NaN, inf) or a count above
  ``MAX_COUNT`` (2^32, more than any counting detector's counter holds; 3e38 is a float32
  overflow, not photons) is dropped: one such pixel dominates every loss (loss 2.4e32).
  Masked pixels are not looked at (gap pixels flagged 2^32 - 1 and masked are fine).
* An energy left with **fewer than** ``MIN_FRAMES`` (2) usable frames is refused (the
  reconstruction of that energy has no data); the message names the energy and suggests
  ``--energy-list`` without it.
* **Positions**: a scan whose positions span less than ``MIN_SPREAD_PX`` (1) object pixel
  at some energy (e.g. all translations identical) is refused: ptychography needs
  overlapping, *displaced* views. A scan spanning more than ``MAX_SPAN_M`` (1 mm) is
  refused before any grid is allocated, with a hint about units (translations written in
  mm or um read as m give grids of GiB to PiB); ptychographic XANES scans of particles
  span micrometres to a few hundred. Repeated positions within one energy are allowed
  (repeated exposures) and give one warning.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np

from diffxas.data.dataset import Dataset, read_frames, relative_monitor
from diffxas.data.stxm import beam_masked, check_counts, check_direct_beam, check_saturation
from diffxas.errors import ConfigError, InputError

#: Counts above this in an unmasked pixel are no photon counts (2^32: a 32-bit counter's range).
MAX_COUNT = float(2**32)
#: Frames below this fraction of their energy's median total counts are (nearly) empty.
LOW_FRACTION = 0.10
#: Frames above this multiple of their energy's median total counts are outliers ...
HIGH_FACTOR = 2.0
#: ... when they also lie this many robust standard deviations above the median.
OUTLIER_Z = 8.0
#: An energy needs at least this many usable frames.
MIN_FRAMES = 2
#: The relative (empty, bright) rules apply only where the energy's median frame holds at
#: least this many photons (and the direct beam is not masked).
MIN_MEDIAN_PHOTONS = 50.0
#: The scan must span at least this many object pixels at every energy.
MIN_SPREAD_PX = 1.0
#: A scan wider than this (m) is taken for translations in the wrong unit.
MAX_SPAN_M = 1e-3
#: Energies closer than this (eV) are one energy written twice (monochromator steps are
#: >= 0.05 eV; 1e-3 eV is far below any beamline's resolution).
ENERGY_TOL_EV = 1e-3
#: Frames smaller than this (pixels a side) cannot carry a ptychographic reconstruction
#: (the simulator's minimum as well).
MIN_FRAME_SIZE = 8

log = logging.getLogger("diffxas")

#: id(dataset) -> (weak reference, findings of :func:`ensure_checked` or None): the datasets
#: that passed :func:`check_dataset` (an entry goes when its dataset is garbage-collected).
_checked: dict[int, tuple[weakref.ref, dict | None]] = {}


def _where(source) -> str:
    return f"{source}: " if source else ""


def _list(idx, n: int = 8) -> str:
    idx = [int(i) for i in idx]
    s = ", ".join(str(i) for i in idx[:n])
    return s + (f", ... ({len(idx)} in all)" if len(idx) > n else "")


def mark_checked(ds: Dataset, findings: dict | None = None) -> Dataset:
    """Record that ``ds`` passed :func:`check_dataset` (a later call returns it as it is);
    ``findings``: what :func:`ensure_checked` found (then a later call of it does nothing)."""
    key = id(ds)
    _checked[key] = (weakref.ref(ds, lambda _r, key=key: _checked.pop(key, None)), findings)
    return ds


def is_checked(ds: Dataset) -> bool:
    r = _checked.get(id(ds))
    return r is not None and r[0]() is ds


def checked_findings(ds: Dataset) -> dict | None:
    """The findings :func:`ensure_checked` recorded for ``ds`` (None: not run on it)."""
    r = _checked.get(id(ds))
    return r[1] if r is not None and r[0]() is ds else None


def data_findings(ds: Dataset) -> dict:
    """The warnings of a usable dataset, one line each on the "diffxas" logger, and their
    record: ``count_quantum`` (:func:`~diffxas.data.stxm.check_counts`: frames that are
    counts times a constant), ``beam_masked`` (energies whose mask hides the direct beam,
    :func:`~diffxas.data.stxm.check_direct_beam`) and ``saturation``
    (:func:`~diffxas.data.stxm.check_saturation`: clipped or flagged pixels)."""
    return {"count_quantum": check_counts(ds), "beam_masked": check_direct_beam(ds), "saturation": check_saturation(ds)}


def ensure_checked(ds: Dataset, source=None) -> tuple[Dataset, dict]:
    """Every data check a reconstruction needs, once per dataset: :func:`check_dataset`
    (refuse, or drop broken frames) then :func:`data_findings` (warnings). Returns the
    dataset to use and the findings; the pair is recorded with the dataset, so a second
    call (the pipeline checked, the solver asks again) costs nothing and warns nothing.

    The pipeline (:func:`diffxas.app.pipeline.check_data`) calls it after the orientation
    is resolved; the solvers call it on entry, which does the work only for a dataset that
    came to them from Python without the pipeline.
    """
    found = checked_findings(ds)
    if found is not None:
        return ds, found
    ds = check_dataset(ds, source=source)
    found = checked_findings(ds)
    if found is None:
        found = data_findings(ds)
        mark_checked(ds, found)
    return ds, found


def object_pixel_sizes(ds: Dataset) -> np.ndarray:
    """Object pixel size (K,) of every energy, m: lambda z / (M d)."""
    return np.asarray(ds.pixel_sizes(), np.float64).reshape(-1)


def check_layout(ds: Dataset, source=None) -> None:
    """Refuse frames below :data:`MIN_FRAME_SIZE` pixels a side and energies closer than
    :data:`ENERGY_TOL_EV` (the exact "strictly increasing" test lets 5e-7 eV pass)."""
    m = ds.frame_size
    if m < MIN_FRAME_SIZE:
        raise InputError(
            f"{_where(source)}frames of {m} x {m} detector pixels: a reconstruction needs at least "
            f"{MIN_FRAME_SIZE} x {MIN_FRAME_SIZE}"
        )
    e = np.asarray(ds.energies, np.float64)
    d = np.diff(e)
    if d.size and np.min(d) < ENERGY_TOL_EV:
        j = int(np.argmin(d))
        raise InputError(
            f"{_where(source)}energies {e[j]:.7g} and {e[j + 1]:.7g} eV are {d[j]:.3g} eV apart (less "
            f"than {ENERGY_TOL_EV:g} eV): one energy written twice? merge or remove one"
        )


def check_reference_energy(value, energies, what: str = "reference_energy") -> None:
    """Refuse a reference energy (eV) outside the scanned range (+- :data:`ENERGY_TOL_EV`):
    Re[N_e^eff]/N_V is read at it from the fitted model, which the data constrain only
    inside the scan (1 eV gave Re[Ne]/N_V = -27229)."""
    if value is None:
        return

    e = np.asarray(energies, np.float64)
    v = float(value)
    if not (np.isfinite(v) and e.min() - ENERGY_TOL_EV <= v <= e.max() + ENERGY_TOL_EV):
        raise ConfigError(
            f"{what} = {v:g} eV lies outside the scanned energies {e.min():g}..{e.max():g} eV; "
            "choose one inside the scan (default: the lowest)"
        )


def check_positions(ds: Dataset, source=None, warn: bool = True) -> dict:
    """Refuse scans that cannot support maps (identical positions, a span beyond
    :data:`MAX_SPAN_M`); warn about repeated positions. Cheap: no frame is read.

    Returns ``{"span_m", "duplicates": {energy index: count}}``."""
    pos = np.asarray(ds.positions, np.float64)
    ei = np.asarray(ds.energy_index)
    e = np.asarray(ds.energies, np.float64)
    if not np.all(np.isfinite(pos)):
        bad = np.nonzero(~np.all(np.isfinite(pos), axis=1))[0]
        raise InputError(f"{_where(source)}positions of frames {_list(bad)} are not finite")
    span = float(np.max(np.ptp(pos, axis=0))) if pos.shape[0] else 0.0
    if span > MAX_SPAN_M:
        px = float(np.min(object_pixel_sizes(ds)))
        raise InputError(
            f"{_where(source)}the scan positions span {span:.4g} m ({span / px:.3g} object pixels of {px:.3g} m): "
            f"more than {MAX_SPAN_M * 1e3:g} mm, translations in mm or um rather than m? The CXI translation "
            "is in metres (docs/formats.md)"
        )
    px = object_pixel_sizes(ds)
    dups = {}
    for k in range(ds.n_energies):
        p = pos[ei == k]
        if p.shape[0] == 0:
            continue
        s = float(np.max(np.ptp(p, axis=0)))
        if s < MIN_SPREAD_PX * px[k]:
            raise InputError(
                f"{_where(source)}all {p.shape[0]} scan positions of energy {e[k]:g} eV lie within {s:.3g} m, less "
                f"than one object pixel ({px[k]:.3g} m): ptychography needs displaced, overlapping views"
            )
        q = np.round(p / (1e-3 * px[k]))  # identical to 1/1000 of a pixel
        n_unique = np.unique(q, axis=0).shape[0]
        if n_unique < p.shape[0]:
            dups[k] = int(p.shape[0] - n_unique)
    if dups and warn:
        parts = [f"{e[k]:g} eV: {n}" for k, n in list(dups.items())[:6]]
        log.warning(
            "%srepeated scan positions (%s%s): repeated exposures are used as they are",
            _where(source),
            "; ".join(parts),
            ", ..." if len(dups) > 6 else "",
        )
    return {"span_m": span, "duplicates": dups}


def frame_statistics(ds: Dataset, block: int = 256) -> dict[str, np.ndarray]:
    """One pass over the frames (a lazy source is read in ranges): per frame (F,) the
    unmasked total counts (at the mean flux of its energy with a monitor), the largest
    finite unmasked count and the number of non-finite unmasked pixels."""
    w = np.asarray(ds.mask, np.float64) > 0
    ei = np.asarray(ds.energy_index)
    n = ds.n_frames
    sums, top, nonfinite = np.zeros(n), np.zeros(n), np.zeros(n, np.int64)
    minpos = np.full(n, np.inf)
    for a in range(0, n, block):
        b = min(a + block, n)
        f = read_frames(ds.frames, a, b).astype(np.float64)
        used = w[ei[a:b]]
        fin = np.isfinite(f)
        nonfinite[a:b] = np.sum(used & ~fin, axis=(1, 2))
        g = np.where(used & fin, f, 0.0)
        sums[a:b] = g.sum(axis=(1, 2))
        top[a:b] = g.max(axis=(1, 2)) if g.size else 0.0
        minpos[a:b] = np.where(g > 0, g, np.inf).min(axis=(1, 2)) if g.size else np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        sums = sums / relative_monitor(ds)
    return {"sums": sums, "max": top, "nonfinite": nonfinite, "minpos": minpos}


def bad_frames(ds: Dataset, stats: dict | None = None) -> dict[str, np.ndarray]:
    """Boolean (F,) masks of the frames to drop, by reason: ``nonfinite``, ``beyond``
    (a count above :data:`MAX_COUNT`), ``empty`` (no counts or below :data:`LOW_FRACTION`
    of the energy's median) and ``bright`` (above :data:`HIGH_FACTOR` x the median and
    :data:`OUTLIER_Z` robust standard deviations)."""
    st = frame_statistics(ds) if stats is None else stats
    ei = np.asarray(ds.energy_index)
    nonfinite = st["nonfinite"] > 0
    beyond = st["max"] > MAX_COUNT
    usable = ~(nonfinite | beyond)
    empty = np.zeros(ds.n_frames, bool)
    bright = np.zeros_like(empty)
    mask = np.asarray(ds.mask)
    for k in range(ds.n_energies):
        sel = (ei == k) & usable
        s = st["sums"][sel]
        if s.size == 0:
            continue
        med = float(np.median(s))
        if med <= 0:  # most frames empty: the energy has (nearly) no data
            empty[sel] = s <= 0
            continue
        # the median in photons (the smallest positive value is one photon for counts and
        # counts times a constant): at a few photons per frame an empty frame is Poisson
        # noise, not a fault; behind a beamstop the frame sums follow the sample, not the beam
        q = float(np.min(st["minpos"][sel]))
        if not np.isfinite(q) or med / q < MIN_MEDIAN_PHOTONS or beam_masked(mask[k]):
            continue
        sig = 1.4826 * float(np.median(np.abs(s - med)))
        empty[sel] = (s <= 0) | (s < LOW_FRACTION * med)
        bright[sel] = (s > HIGH_FACTOR * med) & (s > med + OUTLIER_Z * sig)
    empty &= usable
    return {"nonfinite": nonfinite, "beyond": beyond, "empty": empty, "bright": bright}


_REASON = {
    "nonfinite": "non-finite (NaN/inf) pixel values",
    "beyond": f"counts above {MAX_COUNT:.4g} (no detector)",
    "empty": "empty (no counts, or < 10 % of the energy's median)",
    "bright": "more than twice the energy's median counts",
}


def findings(ds: Dataset, source=None) -> list[str]:
    """Every problem :func:`check_dataset` would refuse or mask, one line each, without
    raising or logging (for ``diffxas info``)."""
    out = []
    try:
        check_positions(ds, source=None, warn=False)
    except InputError as e:
        out.append(f"refused: {e}")
    dup = {}
    try:
        dup = check_positions(ds, warn=False)["duplicates"]
    except InputError:
        pass
    e = np.asarray(ds.energies, np.float64)
    if dup:
        out.append("repeated positions: " + "; ".join(f"{e[k]:g} eV: {n}" for k, n in dup.items()))
    bad = bad_frames(ds)
    ei = np.asarray(ds.energy_index)
    drop = np.zeros(ds.n_frames, bool)
    for why, m in bad.items():
        drop |= m
        for k in np.unique(ei[m]):
            idx = np.nonzero(m & (ei == k))[0]
            out.append(f"{e[k]:g} eV: {idx.size} frame(s) {_REASON[why]}: {_list(idx)}")
    for k in range(ds.n_energies):
        n_ok = int(np.sum((ei == k) & ~drop))
        if n_ok < MIN_FRAMES:
            out.append(f"refused: energy {e[k]:g} eV has {n_ok} usable frame(s)")
    return out


def check_dataset(ds: Dataset, source=None) -> Dataset:
    """The dataset a reconstruction may use: refuses (InputError, one line) what cannot
    work, returns ``ds`` without the frames that must be masked (one warning per reason
    naming the energies and frame indices). A dataset returned here (or marked with
    :func:`mark_checked`) is returned as it is by a second call."""
    if is_checked(ds):
        return ds
    check_layout(ds, source=source)
    check_positions(ds, source=source)
    bad = bad_frames(ds)
    ei = np.asarray(ds.energy_index)
    e = np.asarray(ds.energies, np.float64)
    drop = np.zeros(ds.n_frames, bool)
    for m in bad.values():
        drop |= m
    for k in range(ds.n_energies):
        n_all = int(np.sum(ei == k))
        n_ok = int(np.sum((ei == k) & ~drop))
        if n_ok < MIN_FRAMES:
            reasons = sorted({_REASON[w] for w, m in bad.items() if np.any(m & (ei == k))})
            others = ",".join(f"{x:g}" for j, x in enumerate(e) if j != k)
            raise InputError(
                f"{_where(source)}energy {e[k]:g} eV (index {k}) has {n_ok} usable of {n_all} frames"
                + (f" ({'; '.join(reasons)})" if reasons else "")
                + f": no maps from it; leave it out (--energy-list {others})"
            )
    if not drop.any():
        return mark_checked(ds)
    for why, m in bad.items():
        if not m.any():
            continue
        parts = []
        for k in np.unique(ei[m]):
            idx = np.nonzero(m & (ei == k))[0]
            parts.append(f"{e[k]:g} eV frames {_list(idx)}")
        log.warning(
            "%s%d frame(s) dropped, %s: %s",
            _where(source),
            int(m.sum()),
            _REASON[why],
            "; ".join(parts),
        )
    return mark_checked(ds.subset(~drop))
