"""Where does the two-step's edge-energy error come from on a family draw? (train seeds only)

Usage (after ``diffxas simulate d.cxi --preset family-tiny --seed S`` and
``diffxas reconstruct d.cxi --method two-step -o t.h5``)::

    python experiments/twostep_family_diag.py t.h5 d.truth.h5 [--set fit.tie_pre_edge=false ...]

Separates the two steps:

1. **the stacks**: the true absorption A(E) = eq. 1 of the truth's per-pixel parameters,
   area-averaged onto the result's map grid (A is an amount per area, so the area mean is
   exact for mixed pixels), against the two-step's aligned ePIE absorption stack, per
   energy (RMS and mean error over the evaluation region, relative to the edge jump);
2. **the fit**: the two-step's own per-pixel fit (:func:`fit_stack`, the result's fit
   configuration unless overridden) of the *true* stack, scored like ``diffxas evaluate``
   (edge energy against the N_V-weighted truth, RMSE and bias over the evaluation region,
   bulk and near-boundary).

If the fit of the true stack is already off by eV, the error is the fit's (its model or
its bounds against the family's shapes); if not, it is in the stacks (ePIE, alignment).
Also fits the ePIE stack with the same configuration (so that a changed fit option can be
judged on both) and prints the fitted global shape against the draw's domain shapes.
"""

from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np

from diffxas.analysis.evaluate import (
    _overlap_matrix,
    resample_truth,
    truth_boundary_distance,
)
from diffxas.data.results import read_result
from diffxas.data.truth import read_truth
from diffxas.physics.spectra import PARAM_NAMES, XanesParams, absorption
from diffxas.solvers.twostep.fitting import FitConfig, fit_stack


def true_stack(truth, pixel_size, origin, shape, energies) -> np.ndarray:
    """(K, H, W) eq. 1 of the truth's parameters, area-averaged onto the map grid."""
    p = XanesParams(**{k: jnp.asarray(np.nan_to_num(truth.params[k]), jnp.float32) for k in PARAM_NAMES})
    a_t = np.asarray(absorption(p, jnp.asarray(energies, jnp.float32)), np.float64)  # (K, th, tw)
    tny, tnx = a_t.shape[1:]
    wx = _overlap_matrix(shape[1], origin[0], pixel_size, tnx, truth.origin[0], truth.pixel_size)
    wy = _overlap_matrix(shape[0], origin[1], pixel_size, tny, truth.origin[1], truth.pixel_size)
    area = pixel_size**2
    return np.einsum("yi,kij,xj->kyx", wy, a_t, wx) / area


def score(b2: np.ndarray, valid: np.ndarray, tr: dict, region: np.ndarray, near: np.ndarray) -> dict:
    m = region & valid & np.isfinite(b2)
    err = b2 - tr["edge_energy"]
    out = {"n": int(m.sum()), "rmse": float(np.sqrt(np.mean(err[m] ** 2))), "bias": float(np.mean(err[m]))}
    for name, sel in (("bulk", m & ~near), ("near", m & near)):
        out[name] = float(np.sqrt(np.mean(err[sel] ** 2))) if sel.any() else None
    lab = tr["labels"]
    out["domains"] = {
        int(d): [round(float(np.mean(err[m & (lab == d)])), 2), int((m & (lab == d)).sum())] for d in np.unique(lab[m])
    }
    return out


def truth_only(seed: int, preset_name: str = "family-tiny", energies=None, oversample: int = 4):
    """A family draw's true absorption stack on its map grid, without simulating frames.

    The phantom (the simulator's own fields) is evaluated on a grid ``oversample`` x finer
    than the map pixel of the lowest energy (lambda z / (M p), as the two-step's common grid),
    and eq. 1 of each point is area-averaged onto the map pixels (exact for mixed pixels:
    absorption is an amount per area). Returns ``(stack (K, H, W), edge_energy (H, W): the
    N_V-weighted mean of b2, n_v (H, W), labels (H, W): majority domain, energies)``.
    """
    from diffxas.physics.geometry import object_pixel_size
    from diffxas.physics.scattering import VEdge
    from diffxas.simulate.presets import make_phantom, phantom_fields, preset

    cfg = preset(preset_name, seed=int(seed))
    e = np.asarray(cfg.energies if energies is None else energies, np.float64)
    edge = VEdge.for_energies(cfg.element, e, cfg.table)
    ph = make_phantom(cfg)
    px = float(object_pixel_size(e.min(), cfg.distance, cfg.detector_pixel, cfg.frame_size))
    n = int(np.ceil((cfg.scan_width + 0.4e-6) / px))
    d = px / oversample
    xs = (np.arange(n * oversample) - 0.5 * (n * oversample - 1)) * d
    X, Y = np.meshgrid(xs, xs)
    p, labels, _ = phantom_fields(ph, X, Y, edge, float(e[0]))
    a = np.asarray(absorption(p, jnp.asarray(e, jnp.float32)), np.float64)  # (K, n os, n os)

    def blocks(f):  # area mean over oversample x oversample blocks
        return f.reshape(f.shape[:-2] + (n, oversample, n, oversample)).mean(axis=(-3, -1))

    nv = np.asarray(p.b1, np.float64)
    w = blocks(nv)
    with np.errstate(invalid="ignore", divide="ignore"):
        b2 = np.where(w > 0, blocks(np.asarray(p.b2, np.float64) * nv) / np.where(w > 0, w, 1.0), np.nan)
    lab = np.asarray(labels)
    vals = np.unique(lab)
    counts = np.stack([blocks((lab == v).astype(np.float64)) for v in vals])
    return blocks(a), b2, w, vals[np.argmax(counts, axis=0)], e


def fit_only_study(seeds, preset_name: str, energies, cfg: FitConfig, noise: float = 0.0, noise_seed: int = 0):
    """Edge-energy RMSE and bias of the two-step's fit of true stacks (:func:`truth_only`),
    optionally with white Gaussian noise of ``noise`` x the region's mean edge jump added
    (a stand-in for the ePIE stack's error). Region: N_V >= 25 % of its maximum."""
    rows = []
    for s in seeds:
        A, b2t, nv, lab, e = truth_only(s, preset_name, energies)
        region = np.isfinite(b2t) & (nv >= 0.25 * np.nanmax(nv))
        jump = float(np.mean(nv[region]))  # b1 is the edge jump
        if noise > 0:
            A = A + np.random.default_rng([noise_seed, int(s)]).normal(0.0, noise * jump, A.shape)
        f = fit_stack(A, e, np.ones(A.shape[1:], bool), cfg)
        m = region & f.valid
        err = (f.params["b2"] - b2t)[m]
        dom = [float(np.mean(err[lab[m] == d])) for d in np.unique(lab[m])]
        rows.append(
            {
                "seed": int(s),
                "n": int(m.sum()),
                "rmse": float(np.sqrt(np.mean(err**2))),
                "bias": float(np.mean(err)),
                "domain_mean_max": float(np.max(np.abs(dom))),
                "c22": f.global_params["c22"],
                "b2_mean": f.global_params["b2"],
            }
        )
        print(
            f"seed {s:3d}: n {rows[-1]['n']:4d}  edge energy RMSE {rows[-1]['rmse']:.3f} eV, bias "
            f"{rows[-1]['bias']:+.3f}, worst domain {rows[-1]['domain_mean_max']:.2f}; global c22 "
            f"{rows[-1]['c22']:.2f} (mean-spectrum b2 {rows[-1]['b2_mean']:.2f})",
            flush=True,
        )
    r = np.array([x["rmse"] for x in rows])
    print(f"mean RMSE {r.mean():.3f} eV, median {np.median(r):.3f}, max {r.max():.3f} over {len(rows)} draws")
    return rows


def parse_set(items) -> dict:
    kw = {}
    for s in items:
        k, v = s.split("=", 1)
        k = k.removeprefix("fit.")
        v = json.loads(v)
        kw[k] = tuple(v) if isinstance(v, list) else v
    return kw


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", nargs="?")
    ap.add_argument("truth", nargs="?")
    ap.add_argument("--fit-only", metavar="SEEDS", help="fit true stacks of these train draws (e.g. 0-19), no frames")
    ap.add_argument("--preset", default="family-tiny")
    ap.add_argument("--noise", type=float, default=0.0, help="fit-only: white noise, x the mean edge jump")
    ap.add_argument("--set", action="append", default=[], help="fit option, e.g. fit.tie_pre_edge=false")
    ap.add_argument("--skip-epie-fit", action="store_true")
    a = ap.parse_args(argv)
    if a.fit_only:
        lo, _, hi = a.fit_only.partition("-")
        seeds = range(int(lo), int(hi or lo) + 1)
        if max(seeds) >= 100:
            ap.error("--fit-only: train draws are seeds 0-99 (docs/generalization.md)")
        return {"rows": fit_only_study(seeds, a.preset, None, FitConfig(**parse_set(a.set)), a.noise)}
    res = read_result(a.result)
    truth = read_truth(a.truth)
    maps = res.maps
    e = np.asarray(res.energies, np.float64)
    fd = dict((res.config or {}).get("fit", {}))
    fd = {k: (tuple(v) if isinstance(v, list) else v) for k, v in fd.items()}
    fd.update(parse_set(a.set))
    cfg = FitConfig(**fd)
    tr = resample_truth(truth, maps.pixel_size, maps.origin, maps.shape)
    nv_t = tr["n_v"]
    region = np.isfinite(nv_t) & (nv_t >= 0.25 * np.nanmax(nv_t))
    near = truth_boundary_distance(truth, maps.pixel_size, maps.origin, maps.shape) < 45e-9
    ill = np.asarray(maps.extra["illuminated"]) > 0.5
    At = true_stack(truth, maps.pixel_size, maps.origin, maps.shape, e)
    Ae = np.asarray(res.absorption, np.float64)
    jump = tr.get("edge_jump")
    if jump is None:
        jump = np.nanmax(At, axis=0) - np.nanmin(At, axis=0)
    mj = float(np.nanmean(jump[region]))
    print(f"region {int(region.sum())} px (bulk {int((region & ~near).sum())}); mean edge jump {mj:.4f}")
    print("stack error (ePIE - true) over the region, per energy: energy, RMS/jump, mean/jump")
    d = Ae - At
    for k in range(len(e)):
        print(
            f"  {e[k]:7.1f}  rms {np.sqrt(np.mean(d[k][region] ** 2)) / mj:6.3f}  mean {np.mean(d[k][region]) / mj:+6.3f}"
        )
    # the error relative to a per-pixel affine map of the true spectrum (a, b1 scale-offset: an
    # amplitude/offset error of the stack does not move b2)
    out = {"fit_config": cfg.to_dict()}
    out["fit_true"] = f_t = fit_stack(At, e, ill, cfg)
    s_t = score(f_t.params["b2"], f_t.valid, tr, region, near)
    print(
        f"fit of the TRUE stack:  edge energy RMSE {s_t['rmse']:.3f} eV, bias {s_t['bias']:+.3f} "
        f"(bulk {s_t['bulk']}, near {s_t['near']}), n {s_t['n']}"
    )
    print("   per domain (bias, n):", s_t["domains"])
    print("   global shape:", {k: round(v, 2) for k, v in f_t.global_params.items() if k[0] in "bc"})
    if not a.skip_epie_fit:
        f_e = fit_stack(Ae, e, ill, cfg)
        s_e = score(f_e.params["b2"], f_e.valid, tr, region, near)
        print(
            f"fit of the ePIE stack:  edge energy RMSE {s_e['rmse']:.3f} eV, bias {s_e['bias']:+.3f} "
            f"(bulk {s_e['bulk']}, near {s_e['near']}), n {s_e['n']}"
        )
        print("   per domain (bias, n):", s_e["domains"])
        print("   global shape:", {k: round(v, 2) for k, v in f_e.global_params.items() if k[0] in "bc"})
    s_r = score(np.asarray(maps.edge_energy), np.isfinite(maps.edge_energy), tr, region, near)
    print(f"result file's maps:     edge energy RMSE {s_r['rmse']:.3f} eV, bias {s_r['bias']:+.3f}")
    fam = (truth.attrs or {}).get("family")
    if isinstance(fam, str):
        fam = json.loads(fam)
    if fam:
        print("draw's domains (label: b2 b3 c12 c13 c22 c23 r21 pen):")
        for i, dd in enumerate(fam["domains"]):
            p = dd["props"]
            print(
                f"  {i}: {dd['kind']:10s} {p['b2']:.1f} {p['b3']:.2f} {p['c12']:.2f} {p['c13']:.2f} "
                f"{p['c22']:.2f} {p['c23']:.2f} {p['r21']:.2f} {p['pen']:.2f}"
            )
    return out


if __name__ == "__main__":
    main()
