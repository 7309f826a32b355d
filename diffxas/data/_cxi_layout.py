"""The CXI 1.6 layout diffxas reads and writes: version, entry paths, pixel-mask bits, plausibility limits.

Constants and the small pure helpers that only know the layout (no file is opened here).
:mod:`diffxas.data._cxi_scan` validates a file against them, :mod:`diffxas.data._cxi_read`
and :mod:`diffxas.data._cxi_write` read and write it; :mod:`diffxas.data.cxi` is the public
face. The layout is documented in ``docs/formats.md``.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from diffxas.physics.constants import ELEMENTARY_CHARGE

#: CXI version written to ``/cxi_version`` (CXI 1.6: version x 100). Any integer is read.
CXI_VERSION = 160


# CXI 1.6 pixel-mask bits (specification, Detector class, member ``mask``: a 32-bit field,
# "a pixel with no bits set corresponds to an ideal pixel").
CXI_PIXEL_IS_INVALID = 0x00000001


CXI_PIXEL_IS_SATURATED = 0x00000002


CXI_PIXEL_IS_HOT = 0x00000004


CXI_PIXEL_IS_DEAD = 0x00000008


CXI_PIXEL_IS_SHADOWED = 0x00000010


CXI_PIXEL_IS_BAD = 0x00000080


CXI_PIXEL_IS_MISSING = 0x00000200  # gap between the modules of a modular detector


CXI_PIXEL_IS_NOISY = 0x00000400


CXI_PIXEL_HAS_SIGNAL = 0x00001000  # "signal above the background": not a defect


#: The bits that exclude a pixel: every defect the specification defines. Decision: bits
#: without a defect meaning (0x1000 "has signal", 0x10000 "inside support" of the Image
#: class, and the bits the specification leaves to users) do not exclude a pixel; a
#: shadowed pixel (0x10, e.g. under a beamstop) holds no usable signal and is excluded.
CXI_MASK_EXCLUDE = (
    CXI_PIXEL_IS_INVALID
    | CXI_PIXEL_IS_SATURATED
    | CXI_PIXEL_IS_HOT
    | CXI_PIXEL_IS_DEAD
    | CXI_PIXEL_IS_SHADOWED
    | CXI_PIXEL_IS_BAD
    | CXI_PIXEL_IS_MISSING
    | CXI_PIXEL_IS_NOISY
)


# Plausibility limits of the CXI reader (anything outside is almost surely a unit error).
_ENERGY_MAX_J = 1e-12  # 6.2 MeV; a 5 keV photon is 8e-16 J


_ENERGY_MIN_J = 10.0 * ELEMENTARY_CHARGE  # 10 eV


_PIXEL_MAX_M = 1e-2  # 1 cm detector pixel


_DISTANCE_MAX_M = 1e3  # 1 km


_TRANSLATION_MAX_M = 1.0  # 1 m scan range


_DET = "instrument_1/detector_1"


_SRC = "instrument_1/source_1"


_TRANS = "sample_1/geometry_1/translation"


#: translation = sign x probe position, per write_cxi(translation=...)
_TRANSLATION_SIGN = {"sample": -1.0, "probe": 1.0}


#: the ``convention`` attribute of a translation holding probe positions (diffxas export)
_PROBE_CONVENTION = "probe position"


#: where CXI 1.6 also allows the frames (NXdata): read when detector_1/data is absent
_DATA = "data_1/data"


#: optional incident-flux monitor (NXmonitor): one reading per frame, shape (N,), any unit
_MON = "instrument_1/monitor_1/data"


_ENTRY_RE = re.compile(r"^entry_(\d+)$")


@dataclasses.dataclass
class _Entry:
    """Metadata of one CXI entry (scalars and shapes; no frame data read)."""

    name: str
    energy_ev: float
    distance: float
    pixel: float
    n_frames: int
    frame_size: int
    has_mask: bool
    has_illumination: bool
    has_monitor: bool = False
    #: the frames' dataset: detector_1/data, or data_1/data where only that exists
    data_path: str = ""


def cxi_mask_weights(mask: np.ndarray) -> np.ndarray:
    """Weights (1 = pixel used, 0 = not) of a CXI detector mask, float32, same shape.

    Integer masks are read as the CXI 1.6 32-bit field: a pixel is excluded when any
    defect bit (:data:`CXI_MASK_EXCLUDE`: invalid, saturated, hot, dead, shadowed, bad,
    missing/gap, noisy) is set; 0x1000 "has signal" and the bits without a standard
    meaning do not exclude it. Boolean and floating-point masks (not CXI's type, written
    by some tools) exclude every non-zero pixel.
    """
    mk = np.asarray(mask)
    if mk.dtype.kind in "iu":
        return ((mk.astype(np.int64) & CXI_MASK_EXCLUDE) == 0).astype(np.float32)
    return (mk == 0).astype(np.float32)


#: A detector mask may exclude at most this fraction of the pixels (more looks inverted).
_MASK_MIN_USED = 0.1
