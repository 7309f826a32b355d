"""Data: the Dataset, CXI/NeXus files, result and truth files, data checks, bright field, orientation."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> submodule that defines it. Resolved on first access (PEP 562), so that importing one
#: submodule does not import the others (the CLI's light commands must not import JAX).
_API = {
    "CHOICES": "orientation",
    "CXI_VERSION": "cxi",
    "CxiFrames": "cxi",
    "DEFINITIONS": "nexus",
    "Dataset": "dataset",
    "EDGE_WINDOW": "energies",
    "ENERGY_CHOICES": "energies",
    "ENERGY_MATCH_TOL_EV": "energies",
    "ENERGY_TOL_EV": "checks",
    "HIGH_FACTOR": "checks",
    "ILLUMINATION_TOLERANCE": "stxm",
    "LOW_FRACTION": "checks",
    "LazyFrames": "sources",
    "MAX_COUNT": "checks",
    "MAX_SPAN_M": "checks",
    "MIN_BRIGHT_FIELD": "orientation",
    "MIN_FRAMES": "checks",
    "MIN_FRAME_SIZE": "checks",
    "MIN_MARGIN": "orientation",
    "MIN_MEDIAN_PHOTONS": "checks",
    "MIN_SCORE": "orientation",
    "MIN_SPREAD_PX": "checks",
    "NO_EMPTY_REGION": "stxm",
    "ORIENTATIONS": "orientation",
    "OUTLIER_Z": "checks",
    "OrientationCheck": "orientation",
    "OrientedFrames": "orientation",
    "SATURATION_MIN_COUNT": "stxm",
    "SATURATION_MIN_FRAMES": "stxm",
    "SATURATION_MIN_PIXELS": "stxm",
    "UNDECIDED": "orientation",
    "bad_frames": "checks",
    "checked_findings": "checks",
    "choose_energies": "energies",
    "data_findings": "checks",
    "ensure_checked": "checks",
    "beam_masked": "stxm",
    "bright_field_index": "orientation",
    "brightest_count": "stxm",
    "check_centring": "orientation",
    "check_counts": "stxm",
    "check_dataset": "checks",
    "check_direct_beam": "stxm",
    "check_layout": "checks",
    "check_orientation": "orientation",
    "check_positions": "checks",
    "check_reference_energy": "checks",
    "check_saturation": "stxm",
    "compose": "orientation",
    "count_quantum": "stxm",
    "cxi_summary": "cxi",
    "dpc_gradient": "stxm",
    "dpc_phase": "stxm",
    "dumps_json": "files",
    "empty_region": "stxm",
    "energy_indices": "energies",
    "even_indices": "energies",
    "export_cxi_entry": "cxi",
    "file_kind": "info",
    "findings": "checks",
    "flux_scatter": "stxm",
    "frame_moments": "stxm",
    "frame_statistics": "checks",
    "frame_sums": "stxm",
    "illumination_at_counts": "stxm",
    "in_memory": "dataset",
    "index_selection": "energies",
    "integrate_gradient": "stxm",
    "inverse": "orientation",
    "is_checked": "checks",
    "is_nxcxi_ptycho": "nexus",
    "looks_saturated": "stxm",
    "mark_checked": "checks",
    "match_energies": "energies",
    "matrix": "orientation",
    "mean_frames": "dataset",
    "membrane_counts": "stxm",
    "name_of": "orientation",
    "nexus_entries": "nexus",
    "nexus_summary": "nexus",
    "object_pixel_sizes": "checks",
    "open_cxi": "cxi",
    "orient": "orientation",
    "probes_at_membrane_counts": "stxm",
    "read_cxi": "cxi",
    "read_frames": "dataset",
    "read_nxcxi_ptycho": "nexus",
    "read_result": "results",
    "read_truth": "truth",
    "relative_monitor": "dataset",
    "reorient": "orientation",
    "resolve": "orientation",
    "scan_kernel_width": "stxm",
    "sha256_file": "files",
    "spread": "stxm",
    "spread_energies": "energies",
    "spread_indices": "energies",
    "stxm_absorption": "stxm",
    "summarize": "info",
    "summarize_result": "results",
    "summarize_truth": "truth",
    "symmetric_mask": "orientation",
    "take_frames": "dataset",
    "to_jsonable": "files",
    "whole_counts": "stxm",
    "write_clusters": "results",
    "write_cxi": "cxi",
    "write_result": "results",
    "write_truth": "truth",
}

if TYPE_CHECKING:
    from .checks import ENERGY_TOL_EV as ENERGY_TOL_EV
    from .checks import HIGH_FACTOR as HIGH_FACTOR
    from .checks import LOW_FRACTION as LOW_FRACTION
    from .checks import MAX_COUNT as MAX_COUNT
    from .checks import MAX_SPAN_M as MAX_SPAN_M
    from .checks import MIN_FRAME_SIZE as MIN_FRAME_SIZE
    from .checks import MIN_FRAMES as MIN_FRAMES
    from .checks import MIN_MEDIAN_PHOTONS as MIN_MEDIAN_PHOTONS
    from .checks import MIN_SPREAD_PX as MIN_SPREAD_PX
    from .checks import OUTLIER_Z as OUTLIER_Z
    from .checks import bad_frames as bad_frames
    from .checks import check_dataset as check_dataset
    from .checks import check_layout as check_layout
    from .checks import check_positions as check_positions
    from .checks import check_reference_energy as check_reference_energy
    from .checks import checked_findings as checked_findings
    from .checks import data_findings as data_findings
    from .checks import ensure_checked as ensure_checked
    from .checks import findings as findings
    from .checks import frame_statistics as frame_statistics
    from .checks import is_checked as is_checked
    from .checks import mark_checked as mark_checked
    from .checks import object_pixel_sizes as object_pixel_sizes
    from .cxi import CXI_VERSION as CXI_VERSION
    from .cxi import CxiFrames as CxiFrames
    from .cxi import cxi_summary as cxi_summary
    from .cxi import export_cxi_entry as export_cxi_entry
    from .cxi import open_cxi as open_cxi
    from .cxi import read_cxi as read_cxi
    from .cxi import write_cxi as write_cxi
    from .dataset import Dataset as Dataset
    from .dataset import in_memory as in_memory
    from .dataset import mean_frames as mean_frames
    from .dataset import read_frames as read_frames
    from .dataset import relative_monitor as relative_monitor
    from .dataset import take_frames as take_frames
    from .energies import EDGE_WINDOW as EDGE_WINDOW
    from .energies import ENERGY_CHOICES as ENERGY_CHOICES
    from .energies import ENERGY_MATCH_TOL_EV as ENERGY_MATCH_TOL_EV
    from .energies import choose_energies as choose_energies
    from .energies import energy_indices as energy_indices
    from .energies import even_indices as even_indices
    from .energies import index_selection as index_selection
    from .energies import match_energies as match_energies
    from .energies import spread_energies as spread_energies
    from .energies import spread_indices as spread_indices
    from .files import dumps_json as dumps_json
    from .files import sha256_file as sha256_file
    from .files import to_jsonable as to_jsonable
    from .info import file_kind as file_kind
    from .info import summarize as summarize
    from .nexus import DEFINITIONS as DEFINITIONS
    from .nexus import is_nxcxi_ptycho as is_nxcxi_ptycho
    from .nexus import nexus_entries as nexus_entries
    from .nexus import nexus_summary as nexus_summary
    from .nexus import read_nxcxi_ptycho as read_nxcxi_ptycho
    from .orientation import CHOICES as CHOICES
    from .orientation import MIN_BRIGHT_FIELD as MIN_BRIGHT_FIELD
    from .orientation import MIN_MARGIN as MIN_MARGIN
    from .orientation import MIN_SCORE as MIN_SCORE
    from .orientation import ORIENTATIONS as ORIENTATIONS
    from .orientation import UNDECIDED as UNDECIDED
    from .orientation import OrientationCheck as OrientationCheck
    from .orientation import OrientedFrames as OrientedFrames
    from .orientation import bright_field_index as bright_field_index
    from .orientation import check_centring as check_centring
    from .orientation import check_orientation as check_orientation
    from .orientation import compose as compose
    from .orientation import inverse as inverse
    from .orientation import matrix as matrix
    from .orientation import name_of as name_of
    from .orientation import orient as orient
    from .orientation import reorient as reorient
    from .orientation import resolve as resolve
    from .orientation import symmetric_mask as symmetric_mask
    from .results import read_result as read_result
    from .results import summarize_result as summarize_result
    from .results import write_clusters as write_clusters
    from .results import write_result as write_result
    from .sources import LazyFrames as LazyFrames
    from .stxm import ILLUMINATION_TOLERANCE as ILLUMINATION_TOLERANCE
    from .stxm import NO_EMPTY_REGION as NO_EMPTY_REGION
    from .stxm import SATURATION_MIN_COUNT as SATURATION_MIN_COUNT
    from .stxm import SATURATION_MIN_FRAMES as SATURATION_MIN_FRAMES
    from .stxm import SATURATION_MIN_PIXELS as SATURATION_MIN_PIXELS
    from .stxm import beam_masked as beam_masked
    from .stxm import brightest_count as brightest_count
    from .stxm import check_counts as check_counts
    from .stxm import check_direct_beam as check_direct_beam
    from .stxm import check_saturation as check_saturation
    from .stxm import count_quantum as count_quantum
    from .stxm import dpc_gradient as dpc_gradient
    from .stxm import dpc_phase as dpc_phase
    from .stxm import empty_region as empty_region
    from .stxm import flux_scatter as flux_scatter
    from .stxm import frame_moments as frame_moments
    from .stxm import frame_sums as frame_sums
    from .stxm import illumination_at_counts as illumination_at_counts
    from .stxm import integrate_gradient as integrate_gradient
    from .stxm import looks_saturated as looks_saturated
    from .stxm import membrane_counts as membrane_counts
    from .stxm import probes_at_membrane_counts as probes_at_membrane_counts
    from .stxm import scan_kernel_width as scan_kernel_width
    from .stxm import spread as spread
    from .stxm import stxm_absorption as stxm_absorption
    from .stxm import whole_counts as whole_counts
    from .truth import read_truth as read_truth
    from .truth import summarize_truth as summarize_truth
    from .truth import write_truth as write_truth


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
