"""Analysis of maps: clustering, evaluation against a truth."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> submodule that defines it. Resolved on first access (PEP 562), so that importing one
#: submodule does not import the others (the CLI's light commands must not import JAX).
_API = {
    "ClusterConfig": "clustering",
    "EXTENSIVE": "resample",
    "MAD_TO_STD": "clustering",
    "MAX_MATCHED_BLUR_PX": "evaluate",
    "MIN_MATCHED_BLUR_PX": "evaluate",
    "NEAR_BOUNDARY_M": "anatomy",
    "anatomy_section": "anatomy",
    "assignment_confidence": "clustering",
    "blur_error_curve": "evaluate",
    "blur_matched_error": "evaluate",
    "boundary_distance": "anatomy",
    "calibration": "anatomy",
    "check_split_pair": "evaluate",
    "check_truth_matches": "evaluate",
    "cluster_agreement": "evaluate",
    "cluster_attrs": "clustering",
    "cluster_file": "clustering",
    "cluster_maps": "clustering",
    "cluster_mean_spectra": "clustering",
    "cluster_result": "clustering",
    "default_csv_path": "clustering",
    "default_json_path": "evaluate",
    "error_anatomy": "anatomy",
    "evaluate_file": "evaluate",
    "format_anatomy": "anatomy",
    "format_clusters": "clustering",
    "format_metrics": "evaluate",
    "frc_files": "frc",
    "frc_maps": "frc",
    "history_summary": "evaluate",
    "jsonable": "evaluate",
    "knee_point": "clustering",
    "resample_truth": "resample",
    "resolution": "frc",
    "robust_standardise": "clustering",
    "select_pixels": "clustering",
    "smooth_stack": "smoothing",
    "threshold_curve": "frc",
    "truth_boundary_distance": "anatomy",
    "write_cluster_csv": "clustering",
}

if TYPE_CHECKING:
    from .anatomy import NEAR_BOUNDARY_M as NEAR_BOUNDARY_M
    from .anatomy import anatomy_section as anatomy_section
    from .anatomy import boundary_distance as boundary_distance
    from .anatomy import calibration as calibration
    from .anatomy import error_anatomy as error_anatomy
    from .anatomy import format_anatomy as format_anatomy
    from .anatomy import truth_boundary_distance as truth_boundary_distance
    from .clustering import MAD_TO_STD as MAD_TO_STD
    from .clustering import ClusterConfig as ClusterConfig
    from .clustering import assignment_confidence as assignment_confidence
    from .clustering import cluster_attrs as cluster_attrs
    from .clustering import cluster_file as cluster_file
    from .clustering import cluster_maps as cluster_maps
    from .clustering import cluster_mean_spectra as cluster_mean_spectra
    from .clustering import cluster_result as cluster_result
    from .clustering import default_csv_path as default_csv_path
    from .clustering import format_clusters as format_clusters
    from .clustering import knee_point as knee_point
    from .clustering import robust_standardise as robust_standardise
    from .clustering import select_pixels as select_pixels
    from .clustering import write_cluster_csv as write_cluster_csv
    from .evaluate import MAX_MATCHED_BLUR_PX as MAX_MATCHED_BLUR_PX
    from .evaluate import MIN_MATCHED_BLUR_PX as MIN_MATCHED_BLUR_PX
    from .evaluate import blur_error_curve as blur_error_curve
    from .evaluate import blur_matched_error as blur_matched_error
    from .evaluate import check_split_pair as check_split_pair
    from .evaluate import check_truth_matches as check_truth_matches
    from .evaluate import cluster_agreement as cluster_agreement
    from .evaluate import default_json_path as default_json_path
    from .evaluate import evaluate_file as evaluate_file
    from .evaluate import format_metrics as format_metrics
    from .evaluate import history_summary as history_summary
    from .evaluate import jsonable as jsonable
    from .frc import frc_files as frc_files
    from .frc import frc_maps as frc_maps
    from .frc import resolution as resolution
    from .frc import threshold_curve as threshold_curve
    from .resample import EXTENSIVE as EXTENSIVE
    from .resample import resample_truth as resample_truth
    from .smoothing import smooth_stack as smooth_stack


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
