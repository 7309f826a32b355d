"""k-means clustering of chemical-state maps (seed Fig. 3), host side (numpy + scikit-learn).

Which pixels are clustered (the same rule for the two-step and the joint results):

* the pixel is *valid* (``ChemMaps.valid``, the seed's missing-data rule: the per-pixel
  fit converged and its parameters are physical), every clustering feature is finite, and
* its V density is at least ``min_nv_fraction`` (default 0.25) times the 99th percentile
  of ``n_v`` over the valid pixels. Thin particle edges (few V atoms, low signal, and
  partial-volume mixtures of particle and vacuum) are excluded; the 99th percentile
  instead of the maximum makes the threshold insensitive to a few hot pixels.

Features (default the seed's three descriptors: edge energy, normalised pre-edge
intensity and Re[N_e^eff]/N_V) are standardised robustly before k-means: per feature,
subtract the median and divide by 1.4826 x MAD (median absolute deviation; the factor
makes it equal to the standard deviation for Gaussian data; the standard deviation is
the fallback when MAD = 0). The features have different units and scales (eV
differences of ~1 eV, pre-edge areas of ~0.1-1 eV, electron ratios of ~10), so without
scaling one feature would dominate the Euclidean distance; the median/MAD pair is not
pulled by the outliers that remain at particle borders, unlike mean/std.

k-means (scikit-learn, ``n_init`` restarts, fixed ``random_state``) is weighted by
``n_v`` by default (``weight="n_v"``), so that a cluster's centre and its fraction refer
to V atoms, not to pixels (seed Fig. 3c reports N_V-weighted fractions).

``k="auto"`` fits k = 1..k_max, takes the knee of the within-cluster sum of squares
(inertia) curve by the maximum-distance-to-chord rule (Kneedle) and reports the
silhouette score of each k (computed on a random subsample) as a second opinion.

Clusters are relabelled by increasing edge-energy centre (centres closer than
``order_tolerance`` = 0.1 eV count as tied and are ordered by pre-edge), so label
0 is always the most reduced state and colours mean the same across runs and methods.
Stability is the mean pairwise adjusted Rand index between the partitions obtained with
``seeds`` different random states.

Assignment confidence (:func:`assignment_confidence`): when the maps carry standard-error
maps (``ChemMaps.std``, written by the joint solver) for every clustering feature, each
clustered pixel gets the probability that it belongs to its assigned cluster given its
uncertainty: ``confidence_samples`` (256) Monte Carlo draws of its features from
independent Gaussians with the per-pixel standard errors, each assigned to the nearest
k-means centre in the same standardised space as the fit; the confidence is the fraction
that lands on its own label. Approximations: the descriptors' errors are taken as
independent (the std maps carry no covariances; PE/Delta-mu-t and Re[N_e^eff]/N_V both
divide by the edge jump, so theirs are in fact correlated), Gaussian (delta method), the
centres are held fixed (each averages many pixels), and the std maps describe the noise
only, not a model/solver bias. Results without std maps for all features (e.g. the
two-step path) get no confidence map.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import warnings
from typing import Any

import numpy as np

from diffxas.data import results as io_results
from diffxas.data.files import write_text_atomic
from diffxas.errors import ConfigError, InputError
from diffxas.maps import DESCRIPTORS, MAP_FIELDS, ChemMaps, Result

#: MAD -> standard deviation for normally distributed data (1 / Phi^-1(3/4)).
MAD_TO_STD = 1.4826


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Clustering settings (validated on construction; raises :class:`ConfigError`).

    Attributes:
        k: number of clusters (int >= 1) or ``"auto"`` (elbow over 1..k_max).
        features: ChemMaps map names used as features (default the seed's descriptors).
        weight: ``"n_v"`` (V-density-weighted k-means and fractions) or None (pixels).
        min_nv_fraction: pixels with n_v below this fraction of the ``nv_percentile``-th
            percentile of n_v over valid pixels are not clustered.
        nv_percentile: the percentile of the rule above (99).
        n_init: k-means restarts per fit.
        seeds: number of random states in the stability study (1 disables it).
        k_max: largest k tried by ``k="auto"``.
        random_state: seed of the main fit (the stability study uses random_state + i).
        silhouette_samples: subsample size for silhouette scores.
        order_tolerance: edge-energy centres closer than this (eV) count as tied when
            labels are ordered; ties are ordered by the pre-edge centre.
        confidence_samples: Monte Carlo draws per pixel for the assignment confidence
            (:func:`assignment_confidence`; only when the maps carry std maps of every
            feature); 0 disables it.
    """

    k: int | str = "auto"
    features: tuple[str, ...] = DESCRIPTORS
    weight: str | None = "n_v"
    min_nv_fraction: float = 0.25
    nv_percentile: float = 99.0
    n_init: int = 20
    seeds: int = 10
    k_max: int = 10
    random_state: int = 0
    silhouette_samples: int = 2000
    order_tolerance: float = 0.1
    confidence_samples: int = 256

    def __post_init__(self):
        k = self.k
        if isinstance(k, str):
            if k.strip().lower() != "auto":
                try:
                    k = int(k)
                except ValueError:
                    raise ConfigError(f"cluster k must be an integer >= 1 or 'auto', got {self.k!r}") from None
            else:
                k = "auto"
            object.__setattr__(self, "k", k)
        if k != "auto":
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ConfigError(f"cluster k must be an integer >= 1 or 'auto', got {self.k!r}")
            object.__setattr__(self, "k", int(k))
        feats = self.features
        if isinstance(feats, str):
            feats = tuple(f.strip() for f in feats.split(",") if f.strip())
        feats = tuple(feats)
        if not feats:
            raise ConfigError("cluster features must name at least one map")
        for f in feats:
            if f not in MAP_FIELDS:
                raise ConfigError(f"unknown cluster feature {f!r}; choose from {', '.join(MAP_FIELDS)}")
        if len(set(feats)) != len(feats):
            raise ConfigError(f"cluster features repeat a name: {feats}")
        object.__setattr__(self, "features", feats)
        if self.weight not in ("n_v", None):
            raise ConfigError(f"cluster weight must be 'n_v' or None, got {self.weight!r}")
        if not (0.0 <= float(self.min_nv_fraction) < 1.0):
            raise ConfigError(f"min_nv_fraction must be in [0, 1), got {self.min_nv_fraction}")
        if not (0.0 < float(self.nv_percentile) <= 100.0):
            raise ConfigError(f"nv_percentile must be in (0, 100], got {self.nv_percentile}")
        for name in ("n_init", "seeds", "k_max", "silhouette_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"cluster {name} must be an integer >= 1, got {v!r}")
        v = self.confidence_samples
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ConfigError(f"cluster confidence_samples must be an integer >= 0, got {v!r}")
        if self.k == "auto" and self.k_max < 2:
            raise ConfigError(f"k_max must be >= 2 for k='auto', got {self.k_max}")
        if not (float(self.order_tolerance) >= 0):
            raise ConfigError(f"order_tolerance must be >= 0 eV, got {self.order_tolerance}")
        if not isinstance(self.random_state, (int, np.integer)) or isinstance(self.random_state, bool):
            raise ConfigError(f"random_state must be an integer, got {self.random_state!r}")


# --------------------------------------------------------------------------- helpers


def select_pixels(maps: ChemMaps, config: ClusterConfig) -> tuple[np.ndarray, float]:
    """Boolean (H, W) mask of the pixels to cluster, and the n_v threshold used (m^-2).

    Valid pixels with finite features and n_v >= min_nv_fraction * P_99(n_v | valid).
    """
    valid = np.asarray(maps.valid).astype(bool)
    nv = np.asarray(maps.n_v, dtype=np.float64)
    ok = valid & np.isfinite(nv)
    for f in config.features:
        ok &= np.isfinite(np.asarray(getattr(maps, f), dtype=np.float64))
    if not ok.any():
        return ok, float("nan")
    ref = float(np.percentile(nv[valid & np.isfinite(nv)], config.nv_percentile))
    thr = config.min_nv_fraction * ref
    sel = ok & (nv >= thr)
    if config.weight == "n_v":
        sel &= nv > 0  # a zero weight cannot pull a centre
    return sel, thr


def robust_standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: (x - median) / (1.4826 MAD); std when MAD = 0; 1 when both are 0.

    Returns (z, center, scale) with ``x = z * scale + center``.
    """
    x = np.asarray(x, dtype=np.float64)
    center = np.median(x, axis=0)
    scale = MAD_TO_STD * np.median(np.abs(x - center), axis=0)
    std = np.std(x, axis=0)
    scale = np.where(scale > 0, scale, std)
    scale = np.where(scale > 0, scale, 1.0)
    return (x - center) / scale, center, scale


def knee_point(k: np.ndarray, inertia: np.ndarray) -> int:
    """Knee of a decreasing curve: the point farthest below the chord (Kneedle).

    Both axes are scaled to [0, 1]; the chord joins the first and last points; the knee
    is the k maximising (chord - curve). Returns k[0] for a flat curve.
    """
    k = np.asarray(k, dtype=np.float64)
    y = np.asarray(inertia, dtype=np.float64)
    if len(k) < 3:
        return int(k[0])
    span = y.max() - y.min()
    if not np.isfinite(span) or span <= 0:
        return int(k[0])
    xn = (k - k[0]) / (k[-1] - k[0])
    yn = (y - y.min()) / span
    chord = yn[0] + (yn[-1] - yn[0]) * xn
    d = chord - yn
    return int(k[int(np.argmax(d))])


def _kmeans(z, w, k, n_init, random_state):
    from sklearn.cluster import KMeans  # sklearn: ~2 s to import, only when clustering runs
    from sklearn.exceptions import ConvergenceWarning  # sklearn: as above

    km = KMeans(n_clusters=k, n_init=n_init, random_state=int(random_state))
    with warnings.catch_warnings():
        # Fewer distinct points than k (degenerate toy inputs): the result is still usable.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        km.fit(z, sample_weight=w)
    return km


def _order(keys: np.ndarray, tol: float) -> np.ndarray:
    """new label of each old cluster: sort by keys[:, 0]; runs of centres whose key-0 gaps
    are below ``tol`` count as ties and are sorted by keys[:, 1], then keys[:, 2] ..."""
    k = keys.shape[0]
    order = list(np.lexsort(tuple(keys[:, j] for j in range(keys.shape[1] - 1, -1, -1))))
    if keys.shape[1] > 1 and tol > 0:
        groups, cur = [], [order[0]]
        for a, b in zip(order[:-1], order[1:]):
            if abs(keys[b, 0] - keys[a, 0]) < tol:
                cur.append(b)
            else:
                groups.append(cur)
                cur = [b]
        groups.append(cur)
        order = []
        for g in groups:
            sub = keys[g][:, 1:]
            idx = np.lexsort(tuple(sub[:, j] for j in range(sub.shape[1] - 1, -1, -1)))
            order += [g[i] for i in idx]
    new_of_old = np.empty(k, dtype=np.int64)
    new_of_old[np.asarray(order)] = np.arange(k)
    return new_of_old


def _weighted_mean(v, w):
    sw = np.sum(w)
    return float(np.sum(v * w) / sw) if sw > 0 else float("nan")


def _relabel(labels, k, key_values, w, tol):
    """Relabel 0..k-1 by increasing cluster-mean of key_values[:, 0] (ties within tol:
    then [:, 1] ...)."""
    keys = np.full((k, key_values.shape[1]), np.inf)
    for j in range(k):
        m = labels == j
        if m.any():
            for c in range(key_values.shape[1]):
                keys[j, c] = _weighted_mean(key_values[m, c], w[m])
    new_of_old = _order(keys, tol)
    return new_of_old[labels], new_of_old


def _as_str(x) -> str:
    if isinstance(x, bytes):
        return x.decode()
    return str(x)


def cluster_attrs(clusters: dict) -> dict:
    """The scalar attributes of a clusters dict (top-level scalars/strings/lists of
    strings, plus a nested ``attrs`` dict if one is present); ``features`` as a list."""
    out = {}
    for key, val in clusters.items():
        if key != "attrs" and (
            np.isscalar(val)
            or isinstance(val, (str, bytes))
            or (isinstance(val, (list, tuple)) and all(isinstance(v, (str, bytes)) for v in val))
        ):
            out[key] = val
    out.update(clusters.get("attrs", {}) or {})
    feats = out.get("features")
    if feats is not None:
        if isinstance(feats, (str, bytes)):
            feats = [f for f in _as_str(feats).split(",") if f]
        out["features"] = [_as_str(f) for f in np.atleast_1d(feats).tolist()]
    return out


def assignment_confidence(
    z: np.ndarray,
    z_std: np.ndarray,
    centers_z: np.ndarray,
    labels: np.ndarray,
    n_samples: int = 256,
    random_state: int = 0,
    max_elements: int = 1 << 22,
) -> np.ndarray:
    """Probability that each pixel belongs to its assigned cluster, given its uncertainty.

    Monte Carlo: ``n_samples`` draws per pixel from ``N(z, diag(z_std^2))`` (independent
    Gaussians per feature), each draw assigned to the nearest of ``centers_z`` (Euclidean,
    in the standardised space of the k-means fit, centres held fixed); the confidence is
    the fraction of draws that land on the pixel's own label ``labels``.

    Args:
        z: (n, F) standardised features of the clustered pixels.
        z_std: (n, F) their standard errors in the same standardised units (std / scale).
        centers_z: (k, F) cluster centres in standardised units, indexed by label.
        labels: (n,) assigned label of each pixel.
        n_samples: draws per pixel; the Monte Carlo error is at most 0.5 / sqrt(n_samples).
        random_state: seed (numpy ``default_rng``); the result depends only on the inputs.
        max_elements: memory bound (array elements) of one vectorised chunk of pixels.

    Returns (n,) float64 in [0, 1]; NaN where a feature or its std is not finite or the
    std is negative.
    """
    z = np.asarray(z, dtype=np.float64)
    z_std = np.asarray(z_std, dtype=np.float64)
    centers_z = np.asarray(centers_z, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, nf = z.shape
    k = centers_z.shape[0]
    out = np.full(n, np.nan)
    ok = np.all(np.isfinite(z), axis=1) & np.all(np.isfinite(z_std) & (z_std >= 0), axis=1)
    idx = np.flatnonzero(ok)
    rng = np.random.default_rng(random_state)
    chunk = max(1, int(max_elements) // (int(n_samples) * max(k, 1) * max(nf, 1)))
    for start in range(0, idx.size, chunk):
        ii = idx[start : start + chunk]
        draws = z[ii, None, :] + z_std[ii, None, :] * rng.standard_normal((ii.size, n_samples, nf))  # (c, S, F)
        d2 = np.sum((draws[:, :, None, :] - centers_z[None, None]) ** 2, axis=-1)  # (c, S, k)
        out[ii] = np.mean(np.argmin(d2, axis=-1) == labels[ii, None], axis=1)
    return out


# --------------------------------------------------------------------------- core


def cluster_maps(maps: ChemMaps, config: ClusterConfig | None = None) -> dict[str, Any]:
    """Cluster the chemical-state maps.

    Returns a dict (the results file's ``/clusters`` group):

    * ``labels`` (H, W) int16, -1 where not clustered; 0..k-1 by increasing edge energy;
    * ``centers`` (k, F) cluster centres in physical units (weighted means), F = features;
    * ``center_std`` (k, F) weighted standard deviation of each feature in each cluster;
    * ``fractions`` (k,) N_V-weighted fractions (sum 1); ``pixel_fractions`` (k,);
      ``pixel_counts`` (k,);
    * ``elbow_k``, ``elbow_inertia``, ``silhouette`` (k_max,) when k = "auto"
      (silhouette NaN at k = 1);
    * ``stability_ari`` (pairs,) pairwise ARIs of the stability study;
    * ``confidence`` (H, W) float64, only when ``maps.std`` holds every feature: the
      probability that the pixel belongs to its cluster given its standard errors
      (:func:`assignment_confidence`), NaN where not clustered (or its std is not
      finite); ``cluster_confidence`` (k,) its mean per cluster; attributes
      ``confidence_mean`` (over the clustered pixels), ``confidence_mean_nv``
      (N_V-weighted), ``confidence_samples``, ``confidence_model``;
    * scalar attributes (flat, next to the arrays, as :func:`diffxas.data.results.write_clusters`
      stores them): k, features (list of names), weight, nv_threshold (m^-2), min_nv_fraction, n_pixels,
      n_init, random_state, seeds, k_mode ("fixed"/"auto"), k_elbow, k_silhouette,
      stability (mean pairwise ARI; 1 when seeds = 1); the standardisation centre and
      scale per feature are arrays ``scaler_center``, ``scaler_scale`` (F,).
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score  # sklearn: ~1 s, only here

    config = config or ClusterConfig()
    feats = config.features
    sel, thr = select_pixels(maps, config)
    n = int(sel.sum())
    if n == 0:
        raise InputError("no pixels to cluster: no valid pixel with finite features above the n_v threshold")
    x = np.stack([np.asarray(getattr(maps, f), dtype=np.float64)[sel] for f in feats], axis=1)
    nv = np.asarray(maps.n_v, dtype=np.float64)[sel]
    w = nv if config.weight == "n_v" else np.ones(n)
    z, zc, zs = robust_standardise(x)
    n_distinct = len(np.unique(np.round(z, 12), axis=0))

    out: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    if config.k == "auto":
        kmax = int(min(config.k_max, n_distinct))
        ks = np.arange(1, max(kmax, 1) + 1)
        inertia = np.empty(len(ks))
        sil = np.full(len(ks), np.nan)
        rng = np.random.default_rng(config.random_state)
        sub = rng.choice(n, size=min(n, config.silhouette_samples), replace=False) if n > 2 else np.arange(n)
        for i, kk in enumerate(ks):
            km = _kmeans(z, w, int(kk), config.n_init, config.random_state)
            inertia[i] = km.inertia_
            lab_sub = km.labels_[sub]
            if kk >= 2 and 2 <= len(np.unique(lab_sub)) <= len(sub) - 1:
                sil[i] = silhouette_score(z[sub], lab_sub)
        k = knee_point(ks, inertia) if len(ks) >= 3 else int(ks[-1])
        k_sil = int(ks[int(np.nanargmax(sil))]) if np.isfinite(sil).any() else -1
        out["elbow_k"] = ks.astype(np.int64)
        out["elbow_inertia"] = inertia
        out["silhouette"] = sil
        attrs.update(k_mode="auto", k_elbow=int(k), k_silhouette=k_sil, k_max=int(config.k_max))
    else:
        k = int(config.k)
        if k > n:
            raise InputError(f"cannot form k={k} clusters from {n} clustered pixels")
        attrs.update(k_mode="fixed")

    # Ordering keys: edge energy then pre-edge (always available in ChemMaps), then features.
    key_names = ["edge_energy", "pre_edge_norm"] + [f for f in feats if f not in ("edge_energy", "pre_edge_norm")]
    key_vals = np.stack([np.asarray(getattr(maps, f), dtype=np.float64)[sel] for f in key_names], axis=1)
    key_vals = np.where(np.isfinite(key_vals), key_vals, np.inf)

    partitions = []
    centers_z = None
    for i in range(max(config.seeds, 1)):
        km = _kmeans(z, w, k, config.n_init, config.random_state + i)
        lab, new_of_old = _relabel(km.labels_.astype(np.int64), k, key_vals, w, config.order_tolerance)
        partitions.append(lab)
        if i == 0:  # the main fit's k-means centres, by new label
            centers_z = np.empty_like(km.cluster_centers_, dtype=np.float64)
            centers_z[new_of_old] = km.cluster_centers_
    lab = partitions[0]
    pairs = [adjusted_rand_score(a, b) for a, b in itertools.combinations(partitions, 2)]
    stability = float(np.mean(pairs)) if pairs else 1.0

    centers = np.full((k, len(feats)), np.nan)
    cstd = np.full((k, len(feats)), np.nan)
    fractions = np.zeros(k)
    counts = np.zeros(k, dtype=np.int64)
    nv_all = np.where(np.isfinite(nv), nv, 0.0)
    for j in range(k):
        m = lab == j
        counts[j] = int(m.sum())
        if not m.any():
            continue
        wj = w[m]
        for c in range(len(feats)):
            mu = _weighted_mean(x[m, c], wj)
            centers[j, c] = mu
            cstd[j, c] = np.sqrt(_weighted_mean((x[m, c] - mu) ** 2, wj))
        fractions[j] = nv_all[m].sum()
    tot = fractions.sum()
    fractions = fractions / tot if tot > 0 else counts / max(counts.sum(), 1)

    labels = np.full(maps.shape, -1, dtype=np.int16)
    labels[sel] = lab.astype(np.int16)
    std = maps.std or {}
    if config.confidence_samples > 0 and all(f in std for f in feats):
        s = np.stack([np.asarray(std[f], dtype=np.float64)[sel] for f in feats], axis=1)
        conf = assignment_confidence(
            z, s / zs, centers_z, lab, n_samples=int(config.confidence_samples), random_state=int(config.random_state)
        )
        cmap = np.full(maps.shape, np.nan)
        cmap[sel] = conf
        fin = np.isfinite(conf)
        out["confidence"] = cmap
        out["cluster_confidence"] = np.array(
            [float(np.mean(conf[(lab == j) & fin])) if np.any((lab == j) & fin) else np.nan for j in range(k)]
        )
        attrs.update(
            confidence_mean=float(np.mean(conf[fin])) if fin.any() else float("nan"),
            confidence_mean_nv=_weighted_mean(conf[fin], nv_all[fin]) if fin.any() else float("nan"),
            confidence_samples=int(config.confidence_samples),
            confidence_model="independent Gaussian per feature (std maps), centres fixed, nearest centre in the "
            "standardised k-means space",
        )
    out.update(
        labels=labels,
        centers=centers,
        center_std=cstd,
        fractions=fractions,
        pixel_fractions=counts / counts.sum(),
        pixel_counts=counts,
        stability_ari=np.asarray(pairs, dtype=np.float64),
    )
    attrs.update(
        k=int(k),
        features=list(feats),
        weight=config.weight or "none",
        nv_threshold=float(thr),
        min_nv_fraction=float(config.min_nv_fraction),
        nv_percentile=float(config.nv_percentile),
        n_pixels=n,
        n_init=int(config.n_init),
        random_state=int(config.random_state),
        seeds=int(config.seeds),
        stability=stability,
        standardisation="median / (1.4826 MAD)",
        scaler_center=zc,
        scaler_scale=zs,
    )
    out.update(attrs)
    return out


def cluster_mean_spectra(result: Result, labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-cluster mean (and standard deviation) of the absorption and phase spectra.

    Returns ``mean_absorption``, ``mean_phase``, ``std_absorption``, ``std_phase`` (K, k)
    (plain pixel means over each cluster's pixels, NaN-aware) and ``energies`` (K,) eV.
    """
    labels = np.asarray(labels)
    out = {}
    for name in ("absorption", "phase"):
        stack = np.asarray(getattr(result, name), dtype=np.float64)
        kk = stack.shape[0]
        mean = np.full((kk, k), np.nan)
        std = np.full((kk, k), np.nan)
        if stack.shape[1:] == labels.shape:
            for j in range(k):
                m = labels == j
                if m.any():
                    v = stack[:, m]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", category=RuntimeWarning)
                        mean[:, j] = np.nanmean(v, axis=1)
                        std[:, j] = np.nanstd(v, axis=1)
        out[f"mean_{name}"] = mean
        out[f"std_{name}"] = std
    out["energies"] = np.asarray(result.energies, dtype=np.float64)
    return out


def cluster_result(result: Result, config: ClusterConfig | None = None) -> dict[str, Any]:
    """:func:`cluster_maps` on ``result.maps`` plus the clusters' mean spectra."""
    clusters = cluster_maps(result.maps, config)
    clusters.update(cluster_mean_spectra(result, clusters["labels"], clusters["k"]))
    clusters["method"] = str(result.method)
    return clusters


def write_cluster_csv(path: str | os.PathLike, clusters: dict) -> str:
    """One row per cluster: label, pixel count, fractions, centre and spread of each feature
    (and the mean assignment confidence when the clusters have one)."""
    attrs = cluster_attrs(clusters)
    feats = attrs.get("features", [])
    centers = np.asarray(clusters["centers"])
    cstd = np.asarray(clusters.get("center_std", np.full_like(centers, np.nan)))
    fr = np.asarray(clusters["fractions"])
    counts = np.asarray(clusters.get("pixel_counts", np.full(len(fr), -1)))
    cconf = np.asarray(clusters["cluster_confidence"], dtype=np.float64) if "cluster_confidence" in clusters else None
    header = ["cluster", "n_pixels", "nv_fraction"]
    for f in feats:
        unit = MAP_FIELDS.get(f, ("", ""))[0]
        header += [f"{f}_center [{unit}]", f"{f}_std [{unit}]"]
    if cconf is not None:
        header += ["mean_confidence"]
    path = os.fspath(path)
    fh = io.StringIO(newline="")
    wr = csv.writer(fh)
    wr.writerow(header)
    for j in range(len(fr)):
        row = [j, int(counts[j]), f"{fr[j]:.6g}"]
        for c in range(len(feats)):
            row += [f"{centers[j, c]:.8g}", f"{cstd[j, c]:.6g}"]
        if cconf is not None:
            row += [f"{cconf[j]:.4g}" if j < len(cconf) else "nan"]
        wr.writerow(row)
    write_text_atomic(path, fh.getvalue())  # never half-written; a full disk is one "disk full" line
    return path


def default_csv_path(results_path: str | os.PathLike) -> str:
    """``<results stem>_clusters.csv`` next to the results file."""
    root, _ = os.path.splitext(os.fspath(results_path))
    return root + "_clusters.csv"


def cluster_file(path: str | os.PathLike, config: ClusterConfig | None = None, csv_path=None) -> dict[str, Any]:
    """Cluster a results file in place (the ``diffxas cluster`` command).

    Reads ``path`` (:func:`diffxas.data.results.read_result`), clusters, replaces its ``/clusters``
    group (:func:`diffxas.data.results.write_clusters`) and writes the centre/fraction table to
    ``csv_path`` (default ``<results stem>_clusters.csv`` next to it). Returns the
    clusters dict; ``clusters["csv_path"]`` names the CSV.
    """
    result = io_results.read_result(path)
    clusters = cluster_result(result, config)
    csv_path = os.fspath(csv_path) if csv_path is not None else default_csv_path(path)
    io_results.write_clusters(path, clusters)
    write_cluster_csv(csv_path, clusters)
    clusters["csv_path"] = csv_path
    return clusters


def format_clusters(clusters: dict) -> str:
    """A short human-readable summary (for the CLI)."""
    a = cluster_attrs(clusters)
    feats = a.get("features", [])
    lines = [
        f"k = {a.get('k')} ({a.get('k_mode', 'fixed')}"
        + (f", elbow {a.get('k_elbow')}, best silhouette {a.get('k_silhouette')}" if a.get("k_mode") == "auto" else "")
        + f"); {a.get('n_pixels')} pixels clustered (n_v >= {a.get('nv_threshold', float('nan')):.3g} m^-2); "
        f"stability (mean pairwise ARI over {a.get('seeds')} seeds) = {a.get('stability', float('nan')):.3f}"
    ]
    has_conf = "cluster_confidence" in clusters
    if has_conf:
        lines.append(
            f"assignment confidence (Monte Carlo over the std maps, {a.get('confidence_samples')} draws per "
            f"pixel): mean {a.get('confidence_mean', float('nan')):.3f}, N_V-weighted "
            f"{a.get('confidence_mean_nv', float('nan')):.3f}"
        )
    else:
        lines.append("assignment confidence: n/a (the maps carry no std maps of the features)")
    head = "cluster  N_V-frac  " + "  ".join(f"{f:>16s}" for f in feats) + ("  confidence" if has_conf else "")
    lines.append(head)
    centers = np.asarray(clusters["centers"])
    cc = np.asarray(clusters["cluster_confidence"], dtype=np.float64) if has_conf else None
    for j, fr in enumerate(np.asarray(clusters["fractions"])):
        lines.append(
            f"{j:7d}  {fr:8.3f}  "
            + "  ".join(f"{centers[j, c]:16.6g}" for c in range(len(feats)))
            + (f"  {cc[j]:10.3f}" if cc is not None and j < len(cc) else "")
        )
    return "\n".join(lines)
