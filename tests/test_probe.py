"""Tests of diffxas.physics.probe's centring (probe_centre, centred_probe).

Reference: a Gaussian focus with a known sub-pixel offset (closed form: its intensity
centroid is the offset) and the shift identity of the far field.
"""

import numpy as np
import pytest

from diffxas.physics.probe import centred_probe, probe_centre


def _gaussian(m, centre, sigma=2.5, curvature=0.3):
    y, x = np.mgrid[:m, :m] - m // 2
    r2 = ((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / sigma**2
    return (np.exp(-0.5 * r2 + 1j * curvature * r2)).astype(np.complex64)


@pytest.mark.parametrize("centre", [(0.0, 0.0), (1.3, -0.7), (-2.2, 2.9)])
def test_centre_of_a_shifted_focus(centre):
    p = _gaussian(32, centre)
    # the core (above 20 % of the peak) of a symmetric focus is centred on it: to 0.02 px
    np.testing.assert_allclose(probe_centre(p), centre, atol=0.02)
    c, shift = centred_probe(p)
    np.testing.assert_allclose(shift, -np.asarray(centre), atol=0.02)
    np.testing.assert_allclose(probe_centre(c), (0.0, 0.0), atol=0.02)
    # a pure shift: same power, and the far-field intensity is unchanged (to float32 rounding)
    assert np.sum(np.abs(c) ** 2) == pytest.approx(np.sum(np.abs(p) ** 2), rel=1e-4)
    np.testing.assert_allclose(
        np.abs(np.fft.fft2(c)), np.abs(np.fft.fft2(p)), rtol=0, atol=1e-3 * np.abs(np.fft.fft2(p)).max()
    )
    # and it is the centred focus itself, to 1 % of the peak amplitude (the chirped,
    # sampled Gaussian is not exactly band-limited, so the Fourier shift is not exact)
    np.testing.assert_allclose(c, _gaussian(32, (0.0, 0.0)), atol=1e-2)


def test_faint_tails_do_not_pull_the_centre():
    p = _gaussian(32, (0.5, 0.5))
    p[2, 28] += 0.1  # a speck at 1 % of the peak intensity, far out
    np.testing.assert_allclose(probe_centre(p), (0.5, 0.5), atol=0.02)
