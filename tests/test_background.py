"""Incoherent detector background (diffxas.physics.background) and the simulator's background.

References: closed forms (a flat floor under a bright centre; the simulator's profile and
its mean), noise-free frames of the forward model.
"""

import numpy as np
import pytest

from diffxas.errors import ConfigError
from diffxas.physics import background
from diffxas.simulate.presets import background_profile, preset, simulate


def test_darkest_level_is_the_floor_under_a_bright_centre():
    """A frame that is a flat floor of 0.3 counts plus a bright Gaussian centre: the darkest
    4x4 block is the floor (exact to 1e-6 relative: the Gaussian is 0 to float precision
    there); masked pixels are left out of every block; an all-zero frame gives FLOOR."""
    m = 32
    yy, xx = np.mgrid[:m, :m] - m // 2
    frame = 0.3 + 1e5 * np.exp(-(xx**2 + yy**2) / 8.0)
    mask = np.ones((m, m))
    assert background.darkest_level(frame, mask) == pytest.approx(0.3, rel=1e-6)
    # a dead (masked, zero) pixel in the darkest corner does not pull the level to 0
    f2 = frame.copy()
    f2[0, 0] = 0.0
    mask2 = mask.copy()
    mask2[0, 0] = 0.0
    assert background.darkest_level(f2, mask2) == pytest.approx(0.3, rel=1e-6)
    assert background.darkest_level(np.zeros((m, m)), mask) == background.FLOOR


def test_initial_background_modes_and_errors():
    k, m = 3, 16
    mean = np.full((k, m, m), 2.0) + np.arange(k)[:, None, None]
    mask = np.ones((k, m, m))
    assert background.initial_background(mean, mask, "none") is None
    flat = background.initial_background(mean, mask, "flat")
    np.testing.assert_allclose(flat, [2.0, 3.0, 4.0])
    maps = background.initial_background(mean, mask, "map")
    assert maps.shape == (k, m, m)
    np.testing.assert_allclose(maps, np.broadcast_to(flat[:, None, None], (k, m, m)))
    np.testing.assert_allclose(background.as_maps(flat, k, m), maps)
    assert background.as_maps(None, k, m).sum() == 0.0
    s = background.summary(flat)
    assert s["mode"] == "flat" and s["min"] == pytest.approx(2.0) and s["max"] == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="background must be one of"):
        background.initial_background(mean, mask, "constant")


@pytest.mark.parametrize("profile", ["flat", "radial"])
def test_simulator_background_adds_its_profile(profile):
    """Noise-free frames with a background minus the same frames without it equal the
    profile in every frame (to the float32 rounding of the frames);
    the profile's mean is the configured level (closed form, 1e-6 relative); the radial
    profile falls from the centre outwards."""
    kw = dict(energies=(5420.0, 5480.0), noise=False, bad_pixel_fraction=0.0)
    a = simulate(preset("tiny", **kw))
    b = simulate(preset("tiny", background=0.4, background_profile=profile, **kw))
    prof = background_profile(a.dataset.frame_size, 0.4, profile)
    np.testing.assert_allclose(b.true_background, prof)
    assert float(prof.mean()) == pytest.approx(0.4, rel=1e-6)
    fb = np.asarray(b.dataset.frames, np.float64)
    diff = fb - np.asarray(a.dataset.frames, np.float64)
    # float32 frames: one rounding of each sum, half an ulp of the frame value (+ one of the profile)
    tol = 0.5 * np.finfo(np.float32).eps * (np.abs(fb) + 1.0)
    assert np.all(np.abs(diff - prof) <= tol)
    if profile == "radial":
        m = prof.shape[0]
        assert prof[m // 2, m // 2] > prof[m // 2, m // 4] > prof[m // 2, 0]
    with pytest.raises(ConfigError, match="background"):
        preset("tiny", background=-1.0)
    with pytest.raises(ConfigError, match="background_profile"):
        preset("tiny", background_profile="gauss")
