"""Masked image smoothing shared by the two-step fit's spatial prior and the evaluation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_stack(stack: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of every energy's image, normalised inside ``mask`` (pixels)."""
    if sigma <= 0:
        return np.asarray(stack, np.float64)
    m = np.asarray(mask, np.float64)
    den = ndimage.gaussian_filter(m, sigma)
    out = np.stack([ndimage.gaussian_filter(np.asarray(s, np.float64) * m, sigma) for s in stack])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-6, out / np.maximum(den, 1e-12), 0.0)
    return out
