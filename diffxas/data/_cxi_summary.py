"""``diffxas info`` on a CXI file: a multi-line summary that validates the whole file like
:func:`diffxas.data._cxi_read.read_cxi`, one entry in memory at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffxas.data import stxm
from diffxas.data._cxi_layout import _Entry
from diffxas.data._cxi_scan import (
    _check_illumination_all_or_none,
    _check_monitor_all_or_none,
    _load_entry,
    _load_monitor,
    _scan_cxi,
)
from diffxas.data.files import _get_attrs, _human_size, _open_h5, _short, _si
from diffxas.physics.background import darkest_level
from diffxas.physics.geometry import object_pixel_size


def _scan_summary_stats(path, f, entries: list[_Entry]) -> dict[str, Any]:
    """Per-energy mean counts per frame, mask fraction, scan extent; validates every value
    exactly like :func:`read_cxi` (one entry in memory at a time)."""
    with_illum = _check_illumination_all_or_none(path, entries)
    with_mon = _check_monitor_all_or_none(path, entries)
    dose, masked, lo, hi, illum_photons, mon_rms, dark = [], [], None, None, [], [], []
    top, top_pixels, top_frames, beam_hidden, counts = -np.inf, 0, 0, 0, True
    for en in entries:
        frames = np.empty((en.n_frames, en.frame_size, en.frame_size), dtype=np.float32)
        pos, weights, probe = _load_entry(path, f, en, frames, with_illum)
        beam_hidden += int(stxm.beam_masked(weights))
        counts = counts and stxm.whole_counts(frames)  # as stxm.check_saturation
        t, n_pix, n_fr = stxm.brightest_count(frames, weights > 0)
        if t >= top:
            top, top_pixels, top_frames = (t, top_pixels + n_pix, top_frames + n_fr) if t == top else (t, n_pix, n_fr)
        # dose: counts in the pixels used only (gap pixels of a modular detector hold
        # 2^32 - 1 and are masked; counting them gave 1.4e11 instead of ~1e6 per frame)
        frame_sum = frames.sum(axis=0, dtype=np.float64)
        dose.append(float(frame_sum[weights > 0].sum()) / en.n_frames)
        dark.append(darkest_level(frames.mean(axis=0, dtype=np.float64), weights))
        masked.append(float((weights == 0).mean()))
        lo = pos.min(0) if lo is None else np.minimum(lo, pos.min(0))
        hi = pos.max(0) if hi is None else np.maximum(hi, pos.max(0))
        if probe is not None:
            illum_photons.append(float((np.abs(probe.astype(np.complex128)) ** 2).sum()))
        if with_mon:
            mon = _load_monitor(path, f, en)
            mon_rms.append(float(np.std(mon) / np.mean(mon)))
    return {
        "dose": np.array(dose),
        "masked": np.array(masked),
        "lo": lo,
        "hi": hi,
        "illum_photons": np.array(illum_photons),
        "monitor_rms": np.array(mon_rms),
        "darkest": np.array(dark),
        "brightest": (top, top_pixels, top_frames),
        "whole_counts": counts,
        "beam_hidden": beam_hidden,
    }


def cxi_summary(path) -> str:
    """A human-readable multi-line summary of a CXI file (for ``diffxas info``).

    Validates the whole file like :func:`read_cxi` (same errors), reading one entry at a time.
    """
    path = Path(path)
    with _open_h5(path) as f:
        entries = _scan_cxi(path, f)
        stats = _scan_summary_stats(path, f, entries)
        ver = int(np.asarray(f["cxi_version"][()]).ravel()[0])
        root_attrs = {k: v for k, v in _get_attrs(f).items()}
    en = np.array([e.energy_ev for e in entries])
    nf = np.array([e.n_frames for e in entries])
    first = entries[0]
    dx = object_pixel_size(en, first.distance, first.pixel, first.frame_size)
    lines = [
        f"{path}: multi-energy CXI file (cxi_version {ver}), {_human_size(path.stat().st_size)}",
        f"  energies:          {en.size} entries, {en[0]:.2f} .. {en[-1]:.2f} eV"
        + (f" (mean step {np.diff(en).mean():.3g} eV)" if en.size > 1 else ""),
        f"  K edges in range:  {_k_edges_line(en)}",
        f"  frames per energy: {nf.min()}"
        + (f" .. {nf.max()}" if nf.max() != nf.min() else "")
        + f" (total {nf.sum()})",
        f"  frame size M:      {first.frame_size} x {first.frame_size} pixels",
        f"  detector:          distance {first.distance:.4g} m, pixel {_si(first.pixel, 'm')}",
        f"  object pixel:      {_si(dx.min(), 'm')} .. {_si(dx.max(), 'm')}",
        f"  dose:              mean {stats['dose'].mean():.4g} counts per frame in unmasked pixels"
        + (f" ({stats['dose'].min():.4g} .. {stats['dose'].max():.4g} over energies)" if en.size > 1 else ""),
        f"  mask:              {100 * stats['masked'].mean():.3g} % of detector pixels not used",
        f"  darkest pixels:    {stats['darkest'].min():.3g} .. {stats['darkest'].max():.3g} counts per pixel per frame "
        "(darkest 4x4 detector block of the mean frame: coherent signal plus any background; docs/physics.md, "
        '"Detector background")',
        _brightest_line(stats["brightest"], int(nf.sum()), stats["whole_counts"]),
        "  direct beam:       "
        + (
            f"masked (central 3x3 detector pixels) at {stats['beam_hidden']} of {en.size} energies: a beamstop? The "
            "bright-field estimates assume the direct beam is recorded (docs/your-data.md)"
            if stats["beam_hidden"]
            else "recorded (central 3x3 detector pixels used)"
        ),
        "  illumination:      "
        + (
            f"present (mean sum |P|^2 = {stats['illum_photons'].mean():.4g} photons per frame)"
            if stats["illum_photons"].size
            else "absent"
        ),
        "  monitor (I0):      "
        + (
            f"present (frame-to-frame RMS {100 * stats['monitor_rms'].mean():.3g} % of the mean, averaged over energies)"
            if stats["monitor_rms"].size
            else "absent (flux taken as constant within each energy)"
        ),
        f"  scan (probe x, y): x {_si(stats['lo'][0], 'm')} .. {_si(stats['hi'][0], 'm')}, "
        f"y {_si(stats['lo'][1], 'm')} .. {_si(stats['hi'][1], 'm')}",
    ]
    shown = {k: v for k, v in root_attrs.items() if k != "creator"}
    if "creator" in root_attrs:
        lines.append(f"  creator:           {root_attrs['creator']}")
    for k, v in shown.items():
        lines.append(f"  attr {k}: {_short(v)}")
    return "\n".join(lines)


def _brightest_line(brightest: tuple[float, int, int], n_frames: int, whole_counts: bool = True) -> str:
    """``diffxas info``'s line on the brightest unmasked count: where it repeats in frames
    of whole counts (the criteria of :func:`diffxas.data.stxm.check_saturation`), saturated or
    flagged pixels."""
    top, pixels, frames = brightest
    line = f"  brightest count:   {top:.10g} in {pixels} unmasked pixel(s) of {frames} of {n_frames} frames"
    if whole_counts and stxm.looks_saturated(top, pixels, frames):
        line += " (a repeated maximum: saturated or flagged pixels? mask them; docs/your-data.md)"
    return line


def _k_edges_line(en) -> str:
    """The K edges (xraydb) inside the scanned energies: the `element` to reconstruct with."""
    from diffxas.physics.scattering import k_edges_between, k_edges_text  # scipy, xraydb: ~0.4 s; for `diffxas info`

    if en.size < 2:
        return "n/a (one energy)"
    c = k_edges_between(float(en.min()), float(en.max()))
    if not c:
        return "none (diffxas models a K edge inside the scan)"
    return k_edges_text(c) + (" -> element = " + (f'"{c[0][0]}"' if len(c) == 1 else "one of them"))
