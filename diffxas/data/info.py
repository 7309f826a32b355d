"""`diffxas info`: the kind of a file and its one-screen summary."""

from __future__ import annotations

from pathlib import Path

from diffxas.data.cxi import cxi_summary
from diffxas.data.files import _attr_value, _err, _open_h5
from diffxas.data.nexus import is_nxcxi_ptycho, nexus_summary
from diffxas.data.results import RESULT_FORMAT, summarize_result
from diffxas.data.truth import TRUTH_FORMAT, _is_truth, summarize_truth

__all__ = ["file_kind", "summarize"]


def file_kind(path) -> str:
    """ "cxi", "nexus" (NXcxi_ptycho), "result" or "truth" (InputError for anything else)."""
    path = Path(path)
    with _open_h5(path) as f:
        fmt = _attr_value(f.attrs["format"]) if "format" in f.attrs else None
        if fmt == RESULT_FORMAT:
            return "result"
        if fmt == TRUTH_FORMAT:
            return "truth"

        if is_nxcxi_ptycho(f):
            return "nexus"
        if "cxi_version" in f or "entry_1" in f:
            return "cxi"
        if "maps" in f and "method" in f.attrs:
            return "result"
        if _is_truth(f):
            return "truth"
    raise _err(path, None, "not a CXI, diffxas results or ground-truth file")


def summarize(path) -> str:
    """Summary of any file diffxas reads or writes (CXI input, results, ground truth)."""
    kind = file_kind(path)
    if kind == "nexus":
        return nexus_summary(path)
    return {"cxi": cxi_summary, "result": summarize_result, "truth": summarize_truth}[kind](path)
