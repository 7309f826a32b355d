"""Multi-energy CXI files: the public face of the CXI reader and writer.

The work is split by concern (each module imports only the ones above it in this list):

* :mod:`diffxas.data._cxi_layout`: the CXI 1.6 layout (version, entry paths, pixel-mask
  bits and their meaning, plausibility limits);
* :mod:`diffxas.data._cxi_scan`: validation of a file's structure and metadata, reading
  one entry's small datasets;
* :mod:`diffxas.data._cxi_read`: :func:`read_cxi` (into memory) and :func:`open_cxi`
  (lazy :class:`CxiFrames`, streamed from chunked/compressed datasets);
* :mod:`diffxas.data._cxi_write`: :func:`write_cxi` (CXI 1.6, atomic) and
  :func:`export_cxi_entry`;
* :mod:`diffxas.data._cxi_summary`: :func:`cxi_summary` (``diffxas info``).

Every reader validates its input and raises :class:`diffxas.errors.InputError` with one
line naming the file, the HDF5 entry and the dataset on the first problem; every file is
written atomically. The layouts are documented in ``docs/formats.md``.

Units: energies are eV inside diffxas and J in the CXI file (the conversion happens only
in these modules); lengths are m. The CXI sample translation is the negative of the probe
position (``Dataset.positions = -translation[:, :2]``).

Decision: callers keep importing from here (``from diffxas.data import cxi``), so the split
changes no import outside :mod:`diffxas.data`; the names below are re-exported explicitly.
"""

from __future__ import annotations

from diffxas.data._cxi_layout import CXI_MASK_EXCLUDE as CXI_MASK_EXCLUDE
from diffxas.data._cxi_layout import CXI_PIXEL_HAS_SIGNAL as CXI_PIXEL_HAS_SIGNAL
from diffxas.data._cxi_layout import CXI_PIXEL_IS_BAD as CXI_PIXEL_IS_BAD
from diffxas.data._cxi_layout import CXI_PIXEL_IS_DEAD as CXI_PIXEL_IS_DEAD
from diffxas.data._cxi_layout import CXI_PIXEL_IS_HOT as CXI_PIXEL_IS_HOT
from diffxas.data._cxi_layout import CXI_PIXEL_IS_INVALID as CXI_PIXEL_IS_INVALID
from diffxas.data._cxi_layout import CXI_PIXEL_IS_MISSING as CXI_PIXEL_IS_MISSING
from diffxas.data._cxi_layout import CXI_PIXEL_IS_NOISY as CXI_PIXEL_IS_NOISY
from diffxas.data._cxi_layout import CXI_PIXEL_IS_SATURATED as CXI_PIXEL_IS_SATURATED
from diffxas.data._cxi_layout import CXI_PIXEL_IS_SHADOWED as CXI_PIXEL_IS_SHADOWED
from diffxas.data._cxi_layout import CXI_VERSION as CXI_VERSION
from diffxas.data._cxi_layout import cxi_mask_weights as cxi_mask_weights
from diffxas.data._cxi_read import CxiFrames as CxiFrames
from diffxas.data._cxi_read import open_cxi as open_cxi
from diffxas.data._cxi_read import read_cxi as read_cxi
from diffxas.data._cxi_summary import cxi_summary as cxi_summary
from diffxas.data._cxi_write import EXPORT_ENERGY_TOL_EV as EXPORT_ENERGY_TOL_EV
from diffxas.data._cxi_write import export_cxi_entry as export_cxi_entry
from diffxas.data._cxi_write import write_cxi as write_cxi

__all__ = ["CXI_VERSION", "CxiFrames", "cxi_summary", "export_cxi_entry", "open_cxi", "read_cxi", "write_cxi"]
