"""The floor of a perfect reconstruction: how far the seed's per-pixel fit of an *ideal*
absorption stack on the map grid lands from the ground truth, with no noise, no probe and
no solver.

The evaluation's truth on the map grid is the N_V-weighted area mean of the truth's
finer grid (:func:`diffxas.analysis.resample.resample_truth`). A measurement never sees that
directly. This script builds three ideal stacks on the map grid from the truth's finer grid
(``SimConfig.truth_oversample`` x finer; the absorption A(E) of every fine pixel from the
one spectral model), fits each with the two-step's per-pixel fit
(:func:`diffxas.solvers.twostep.fitting.fit_stack`, its defaults) and reports the edge-energy error
against the evaluation's truth:

* ``absorption-mixed``: the area mean of A(E) over each map pixel (the mixing the
  V-weighted truth assumes; its error is the fit's own);
* ``transmission-mixed``: ``-ln`` of the area mean of ``exp(-A(E))`` (what a pixel-sized
  detector element of a transmission measurement would see: the partial-volume effect
  of the exponential);
* ``band-limited``: ``-ln`` of the transmission band-limited to the map grid's band and
  sampled at its pixel centres (what a perfect far-field reconstruction at the detector's
  resolution holds: sinc weights instead of the box, with their ringing at sharp edges).

Region: truth N_V >= 25 % of its maximum (as the evaluation); "rim" = region pixels within
2 pixels of its border. Prints one JSON line per stack.

Usage::

    python experiments/floor.py --preset small      # ~1 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))


def box_mean(x: np.ndarray, s: int) -> np.ndarray:
    """Mean over s x s blocks of the last two axes."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // s, s, w // s, s).mean(axis=(-3, -1))


def band_limited(x: np.ndarray, s: int) -> np.ndarray:
    """``x`` (..., H, W) on the fine grid, band-limited to the s x coarser grid's band and
    sampled at the coarse pixel centres (the centre of each s x s block)."""
    h, w = x.shape[-2:]
    f = np.fft.fft2(x)
    shift = 0.5 * (s - 1)  # block centre, in fine pixels
    f = f * np.exp(2j * np.pi * (np.fft.fftfreq(h)[:, None] * shift + np.fft.fftfreq(w)[None, :] * shift))
    fs = np.fft.fftshift(f, axes=(-2, -1))
    hc, wc = h // s, w // s
    c = fs[..., h // 2 - hc // 2 : h // 2 - hc // 2 + hc, w // 2 - wc // 2 : w // 2 - wc // 2 + wc]
    return np.real(np.fft.ifft2(np.fft.ifftshift(c, axes=(-2, -1)))) / (s * s)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="experiments/floor.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="simulator preset (default small)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    args = p.parse_args(argv)

    import jax.numpy as jnp
    from scipy.ndimage import binary_erosion

    from diffxas.analysis import resample
    from diffxas.errors import DiffxasError
    from diffxas.physics.spectra import PARAM_NAMES, XanesParams, absorption
    from diffxas.simulate import presets as simulate
    from diffxas.solvers.twostep import fitting

    try:
        cfg = simulate.preset(args.preset, seed=args.seed, noise=False)
    except DiffxasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    truth = simulate.simulate(cfg).truth
    s = cfg.truth_oversample
    e = np.asarray(cfg.energies, np.float64)
    par = XanesParams(**{k: jnp.asarray(np.nan_to_num(truth.params[k]), jnp.float32) for k in PARAM_NAMES})
    a_fine = np.asarray(absorption(par, jnp.asarray(e, jnp.float32)), np.float64)  # (K, sH, sW)
    h, w = (n - n % s for n in a_fine.shape[1:])
    a_fine = a_fine[:, :h, :w]
    # the evaluation's own truth on the map grid (N_V-weighted area means) and region
    d = truth.pixel_size * s
    origin = (truth.origin[0] + 0.5 * (s - 1) * truth.pixel_size, truth.origin[1] + 0.5 * (s - 1) * truth.pixel_size)
    coarse = resample.resample_truth(truth, d, origin, (h // s, w // s))
    ref, nv_c = coarse["edge_energy"], np.nan_to_num(coarse["n_v"])
    region = (nv_c >= 0.25 * nv_c.max()) & np.isfinite(ref)
    inner = binary_erosion(region, iterations=2)
    stacks = {
        "absorption-mixed": box_mean(a_fine, s),
        "transmission-mixed": -np.log(box_mean(np.exp(-a_fine), s)),
        "band-limited": -np.log(np.clip(band_limited(np.exp(-a_fine), s), 1e-6, None)),
    }
    rows = []
    for name, st in stacks.items():
        est = fitting.fit_stack(st.astype(np.float32), e, region).params["b2"]
        ok = region & np.isfinite(est)

        def stats(m):
            d = est[m] - ref[m]  # noqa: B023
            return {
                "rmse": round(float(np.sqrt(np.mean(d**2))), 4),
                "bias": round(float(d.mean()), 4),
                "n": int(m.sum()),
            }

        row = {
            "preset": args.preset,
            "seed": args.seed,
            "stack": name,
            "edge_energy_ev": stats(ok),
            "rim": stats(ok & ~inner),
            "inner": stats(ok & inner),
        }
        print(json.dumps(row))
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
