"""The one pipeline: checks -> reconstruct -> cluster -> write -> evaluate, and its parts.

:func:`run` is the chain, used by ``diffxas reconstruct`` (checks, reconstruct, write), the
demo (:mod:`diffxas.app.demo`: every step, several methods) and sweeps
(:mod:`diffxas.app.sweep.runner`: every step, one method per call). The data checks run
here and only here for these three (:func:`check_config`, :func:`check_room`,
:func:`check_data`); the solvers trust a dataset checked here (the check is recorded with
the dataset, :func:`diffxas.data.checks.ensure_checked`) and check only one that reaches
them from Python unchecked. Methods are known only through the registry
(:data:`diffxas.solvers.registry.METHODS`): this module has no method names in it.
The building blocks (:func:`write_simulation`, :func:`reconstruct`, ...) are also what the
``diffxas simulate`` and ``diffxas reconstruct`` commands call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Modules that import JAX (the Dataset, the checks, the simulator, the solvers) are imported
# inside the functions that need them: the CLI's light commands (cluster, evaluate, export)
# import this module for check_output_path, and `import diffxas.app.pipeline` stays JAX-free.
from diffxas import __version__
from diffxas.analysis.clustering import cluster_result, default_csv_path, write_cluster_csv
from diffxas.app.config import apply_overrides, build_config, build_section, config_to_dict
from diffxas.data import files as io_files
from diffxas.data import orientation as _orientation
from diffxas.data import results as io_results
from diffxas.data import truth as io_truth

# The energy rules (:mod:`diffxas.data.energies`, numpy only: no JAX for the CLI's light
# commands), under the names this module has always offered: ``select_energies(energies, n)``
# is ``n`` of ``energies`` spread evenly in index.
from diffxas.data.energies import spread_energies as select_energies
from diffxas.data.energies import spread_indices as spread_indices
from diffxas.errors import ConfigError, DiffxasError, InputError
from diffxas.solvers import registry as _registry

__all__ = [
    "METHODS",
    "MethodRun",
    "check_config",
    "check_data",
    "check_room",
    "default_checkpoint",
    "default_truth_path",
    "iterations_key",
    "method_config",
    "reconstruct",
    "run",
    "select_energies",
    "set_iterations",
    "spread_indices",
    "write_simulation",
]


#: Reconstruction methods, as named on the command line (the registry's table).
METHODS = _registry.METHODS


def default_truth_path(cxi_path) -> Path:
    """``DATA.truth.h5`` next to ``DATA.cxi`` (the suffix of the CXI file is replaced)."""
    p = Path(cxi_path)
    return p.with_name(p.stem + ".truth.h5") if p.suffix else p.with_name(p.name + ".truth.h5")


def check_output_path(path, what: str = "output file", inputs: Sequence = ()) -> Path:
    """Fail early (one line) if ``path`` cannot be written: a directory, the same file as
    one of ``inputs``, or a parent folder that is not writable."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a file name for the {what}")
    for src in inputs:
        with contextlib.suppress(OSError):
            if Path(src).exists() and p.exists() and os.path.samefile(src, p):
                raise InputError(f"{p}: the {what} would overwrite the input file")
        if os.path.abspath(src) == os.path.abspath(p):
            raise InputError(f"{p}: the {what} would overwrite the input file")
    parent = p.parent if str(p.parent) else Path(".")
    anc = parent
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise InputError(f"{p}: cannot create the {what}: {anc} is not a directory")
    if anc.exists() and not os.access(anc, os.W_OK):
        raise InputError(f"{p}: cannot write the {what}: permission denied in {anc}")
    return p


def _tmp_name(p: Path) -> Path:
    return p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.partial")


def write_simulation(sim, cxi_path, truth_path=None) -> tuple[Path, Path]:
    """Write a :class:`~diffxas.simulate.presets.Simulation` as CXI + ground-truth sidecar.

    Both files appear together or not at all (each is written to a hidden temporary file
    in its folder, then both are renamed). Returns (cxi path, truth path).
    """
    from diffxas.data import cxi as io_cxi  # jax (the Dataset): kept local, see the imports

    cxi = Path(cxi_path)
    truth = Path(truth_path) if truth_path is not None else default_truth_path(cxi)
    if os.path.abspath(cxi) == os.path.abspath(truth):
        raise InputError(f"{truth}: the truth file must differ from the CXI file")
    check_output_path(cxi, "CXI file")
    check_output_path(truth, "ground-truth file")
    cfg = sim.config
    attrs = {
        "simulation": cfg.to_dict(),
        "preset": cfg.preset,
        "seed": int(cfg.seed),
        "dose": float(cfg.dose),
        "truth_file": truth.name if truth.parent.resolve() == cxi.parent.resolve() else os.path.abspath(truth),
    }
    tmp_cxi, tmp_truth = _tmp_name(cxi), _tmp_name(truth)
    try:
        io_cxi.write_cxi(tmp_cxi, sim.dataset, extra_attrs=attrs)
        # the truth names the data it belongs to (evaluate/report --truth check it against
        # the input SHA-256 a results file records)
        t_attrs = dict(sim.truth.attrs or {}, data_sha256=io_files.sha256_file(tmp_cxi))
        io_truth.write_truth(tmp_truth, dataclasses.replace(sim.truth, attrs=t_attrs))
        os.replace(tmp_cxi, cxi)
        os.replace(tmp_truth, truth)
    finally:
        for t in (tmp_cxi, tmp_truth):
            with contextlib.suppress(OSError):
                t.unlink()
    return cxi, truth


def simulate_files(sim_cfg, cxi_path, truth_path=None, progress: bool = False):
    """Simulate ``sim_cfg`` and write the CXI and truth files; returns (simulation, cxi, truth)."""
    from diffxas.simulate.presets import simulate  # jax: kept local, see the imports

    sim = simulate(sim_cfg, progress=progress)
    cxi, truth = write_simulation(sim, cxi_path, truth_path)
    return sim, cxi, truth


def _config_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def iterations_key(method: str) -> str:
    """The dotted config key that ``--iterations`` (two-step: ePIE epochs) or ``--steps``
    (joint) sets, e.g. ``"twostep.epie.epochs"`` or ``"joint.steps"`` (the registry's
    :attr:`~diffxas.solvers.registry.Method.iterations_key`)."""
    key = _registry.get(method).iterations_key
    if key is None:
        raise ConfigError(f"method {method!r} has no iteration count; use --set <section>.<key>=N")
    return key


#: Epoch-indexed ePIE options that :func:`set_iterations` scales with the epoch count.
EPOCH_SCHEDULE = ("probe_update_start", "kk_start", "kk_every", "decay_start", "background_start")


def _get(mapping: Mapping[str, Any], dotted: str):
    node: Any = mapping
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return dataclasses.MISSING
        node = node[p]
    return node


def set_iterations(config: Mapping[str, Any] | None, method: str, n: int) -> dict[str, Any]:
    """``config`` with the iteration count of ``method`` set to ``n`` (joint: ``steps``;
    two-step: the ePIE ``epochs``).

    For the two-step method the epoch-indexed parts of the ePIE schedule
    (:data:`EPOCH_SCHEDULE`: probe start, KK start and period, step-decay start) that the
    configuration does not set explicitly are scaled by ``n / epochs`` of the configured
    schedule (rounded; starts kept below ``n``, the KK period >= 1), so that ``--iterations``
    runs the same schedule compressed or stretched instead of an invalid one (e.g. a decay
    starting after the last epoch).
    """
    config = dict(config or {})
    key = iterations_key(method)
    if not key.endswith(".epochs") or key.count(".") != 2:
        return apply_overrides(config, {key: n})
    sub = key.rsplit(".", 1)[0]  # "twostep.epie"
    base_ts = build_section(config, sub.split(".")[0])
    base = getattr(base_ts, sub.split(".")[1])
    old = int(base.epochs)
    over: dict[str, Any] = {key: n}
    names = {f.name for f in dataclasses.fields(base)}
    for name in EPOCH_SCHEDULE:
        if name not in names or _get(config, f"{sub}.{name}") is not dataclasses.MISSING:
            continue
        v = getattr(base, name)
        if v is None or old == n:
            continue
        scaled = int(round(v * n / old))
        scaled = max(1, scaled) if name == "kk_every" else min(max(scaled, 0), n - 1)
        over[f"{sub}.{name}"] = scaled
    return apply_overrides(config, over)


def method_config(method: str, config: Mapping[str, Any] | None = None):
    """The config object of ``method`` (a registry name) from a configuration mapping."""
    return build_section(config or {}, _registry.get(method).section)


def default_checkpoint(method: str, result_path) -> Path:
    """``RESULT.h5.ckpt`` (a file) or ``RESULT.h5.ckpt.d`` (a folder), by the method's
    checkpoint kind."""
    return _registry.default_checkpoint(method, result_path)


def _file_checkpoint(method: str) -> bool:
    return _registry.get(method).checkpoint == "file"


def _meta_path(method: str, ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".meta.json") if _file_checkpoint(method) else ckpt / "diffxas-cli.meta.json"


def _checkpoint_exists(method: str, ckpt: Path) -> bool:
    if _file_checkpoint(method):
        return ckpt.is_file()
    return ckpt.is_dir() and any(p.name != "diffxas-cli.meta.json" for p in ckpt.iterdir())


def _checkpoint_meta(method: str, cfg, input_sha256: str, selection: dict | None = None) -> dict[str, Any]:
    return _meta_config_record(method, config_to_dict(cfg), input_sha256, selection)


def _strip_volatile(c: dict[str, Any]) -> dict[str, Any]:
    """A recorded config without the options that do not change the result (logging and
    checkpoint intervals: flat, or the joint's ``record`` group)."""
    c = dict(c)
    for volatile in ("log_every", "checkpoint_every", "record"):
        c.pop(volatile, None)
    return c


def _same_config(method: str, old: Any, new: dict[str, Any]) -> bool:
    """Whether a checkpoint's recorded config ``old`` is ``new``; a flat record of the joint's
    options (a checkpoint from before the option groups) is read through its aliases."""
    if old == new:
        return True
    if not isinstance(old, Mapping):
        return False
    cls = _registry.get(method).config
    if not hasattr(cls, "nest_options"):
        return False
    try:
        old_built = config_to_dict(build_config(cls, _strip_volatile(old), section="checkpoint"))
    except ConfigError:
        return False
    return _strip_volatile(json.loads(json.dumps(old_built))) == new


def _meta_config_record(method: str, c: dict[str, Any], input_sha256: str, selection: dict | None) -> dict[str, Any]:
    c = _strip_volatile(c)
    meta = {"method": method, "input_sha256": input_sha256, "config": c}
    if selection is not None:
        meta["input_selection"] = selection
    return meta


def _same_part(old: dict | None, new: dict | None) -> bool:
    """Whether two checkpoint records of the input part (``input_selection``) agree. A
    record without one (a checkpoint from before the record existed, or from the API
    without ``selection``) means the whole file."""

    def norm(sel):
        sel = json.loads(json.dumps(sel or {}))
        return sel.get("half"), sel.get("energy_indices"), (sel.get("orientation") or {}).get("applied", "none")

    return norm(old) == norm(new)


def remove_checkpoint(method: str, ckpt: Path, owned: bool = False) -> bool:
    """Delete a checkpoint written through :func:`reconstruct` (and its sidecars).

    A file checkpoint: the file, its ``.hist.npz`` and ``.meta.json``. A folder: only if it
    holds the metadata file written by :func:`reconstruct` and is named ``*.ckpt.d`` or
    ``owned`` (the caller named it for the run, e.g. a sweep point's ``<section>-ckpt``): a
    folder the user named for something else is never removed.
    Returns True if something was removed.
    """
    ckpt = Path(ckpt)
    removed = False
    if _file_checkpoint(method):
        for p in (ckpt, ckpt.with_name(ckpt.name + ".hist.npz"), _meta_path(method, ckpt)):
            if p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed = True
    elif ckpt.is_dir() and (owned or ckpt.name.endswith(".ckpt.d")) and _meta_path(method, ckpt).is_file():
        shutil.rmtree(ckpt, ignore_errors=True)
        removed = True
    return removed


def reconstruct(
    dataset,
    method: str,
    cfg,
    *,
    progress: bool = False,
    checkpoint=None,
    resume: bool = False,
    input_path=None,
    input_sha256: str = "",
    log=None,
    selection: dict | None = None,
    sharded: bool = False,
):
    """Run ``method`` on ``dataset`` with config object ``cfg``; returns the Result with
    ``input_path``, ``input_sha256`` and the full configuration recorded.

    ``checkpoint``: a file or a folder, by the method's registry entry (None: no checkpoints). With
    ``resume`` an existing checkpoint is continued; it must come from the same input and
    configuration (checked against a ``.meta.json`` sidecar written here).
    ``log``: callable for one-line notes (default: print to stderr).
    ``selection``: which part of the input file ``dataset`` is (e.g. ``{"half": "even",
    "energy_indices": [0, 4, ...]}``, as the CLI's ``--half``/``--energies`` make it);
    recorded as ``config["input_selection"]`` and in the checkpoint metadata, so a resume
    with another part of the same file is refused.
    ``sharded``: joint only, the frames split over all devices of all processes
    (:func:`diffxas.solvers.joint.parallel.reconstruct_joint_sharded`); only process 0 writes the
    checkpoint and its metadata.
    """
    primary = True
    if sharded:
        import jax  # jax: only for a sharded run; kept local, see the imports

        primary = jax.process_index() == 0
    log = log or (lambda msg: print(msg, file=sys.stderr))
    spec = _registry.get(method)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    meta = _checkpoint_meta(method, cfg, input_sha256, selection)
    if ckpt is not None:
        mpath = _meta_path(method, ckpt)
        exists = _checkpoint_exists(method, ckpt)
        if spec.checkpoint == "file" and ckpt.is_dir():
            raise InputError(f"{ckpt}: the {method} checkpoint must be a file, not a directory")
        if spec.checkpoint == "folder" and ckpt.exists() and not ckpt.is_dir():
            raise InputError(f"{ckpt}: the {method} checkpoint must be a folder, not a file")
        if resume and exists:
            if mpath.is_file():
                try:
                    old = json.loads(mpath.read_text())
                except (OSError, ValueError) as e:
                    raise InputError(f"{mpath}: unreadable checkpoint metadata: {e}") from None
                if old.get("input_sha256") != meta["input_sha256"] and meta["input_sha256"]:
                    raise InputError(
                        f"{ckpt}: checkpoint was made from a different input file; delete it or run without --resume"
                    )
                if old.get("method") != method or not _same_config(
                    method, old.get("config"), json.loads(json.dumps(meta["config"]))
                ):
                    raise InputError(
                        f"{ckpt}: checkpoint was made with a different method or configuration; "
                        "delete it or run without --resume"
                    )
                if not _same_part(old.get("input_selection"), meta.get("input_selection")):
                    o_sel, n_sel = old.get("input_selection") or {}, meta.get("input_selection") or {}
                    o_or = (o_sel.get("orientation") or {}).get("applied", "none")
                    n_or = (n_sel.get("orientation") or {}).get("applied", "none")
                    # name what differs: an orientation found by --orientation auto is no --half
                    what = (
                        f"the frames' orientation differs: {o_or} then, {n_or} now; pass --orientation {o_or}"
                        if o_or != n_or
                        else "--half, --energies or --energy-list differ"
                    )
                    raise InputError(
                        f"{ckpt}: checkpoint was made from another part of the input ({what}); delete it "
                        "or run without --resume"
                    )
            else:
                log(f"note: {ckpt} has no metadata; cannot check that it matches this input and configuration")
            log(f"resuming from checkpoint {ckpt}")
        elif resume:
            log(f"note: no checkpoint at {ckpt}; starting from the beginning")
        elif exists:
            log(f"note: existing checkpoint {ckpt} will be overwritten (use --resume to continue it)")
            if spec.checkpoint == "file" and primary:  # a stale file must not be resumed later under the new metadata
                remove_checkpoint(method, ckpt)
        folder = ckpt if spec.checkpoint == "folder" else ckpt.parent
        created_dirs = []  # folders made here, deepest first (removed again if the run leaves nothing)
        d = folder
        while not d.exists() and d.parent != d:
            created_dirs.append(d)
            d = d.parent
        folder.mkdir(parents=True, exist_ok=True)
        if primary:
            tmp = mpath.with_name(mpath.name + ".tmp")
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, mpath)
    t0 = time.perf_counter()
    try:
        run = spec.reconstruct
        if sharded:
            if spec.reconstruct_sharded is None:
                raise ConfigError(f"the {method} method has no sharded variant")
            run = spec.reconstruct_sharded
        result = run(dataset, cfg, progress=progress, checkpoint=ckpt, resume=resume)
    except BaseException:
        # keep a checkpoint to resume from; but no metadata (or empty folder) without one
        if ckpt is not None and not _checkpoint_exists(method, ckpt):
            with contextlib.suppress(OSError):
                _meta_path(method, ckpt).unlink()
            for d in created_dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty
        raise
    wall = time.perf_counter() - t0
    config = dict(result.config or {})
    config[spec.section] = config_to_dict(cfg)
    config["method"] = method
    config["diffxas_version"] = __version__
    config.setdefault("wall_time_s", wall)
    if selection is not None:
        config["input_selection"] = selection
    result.config = config
    result.method = result.method or method
    if input_path is not None:
        result.input_path = os.path.abspath(os.fspath(input_path))
    result.input_sha256 = input_sha256 or result.input_sha256
    return result


# ---- the chain -------------------------------------------------------------------------
def check_config(ds, method: str, cfg) -> None:
    """The configuration against the data, before any pass over the frames: the absorber's
    K edge within the energies (``cfg.element``) and ``cfg.reference_energy`` among them
    (for a method whose config has these fields)."""
    from diffxas.data.checks import check_reference_energy  # jax (the Dataset): kept local, see the imports

    element = getattr(cfg, "element", None)
    if element is not None:
        from diffxas.physics.scattering import VEdge  # jax: kept local, see the imports

        VEdge.for_energies(element, ds.energies, getattr(cfg, "table", "chantler"))
    check_reference_energy(
        getattr(cfg, "reference_energy", None), ds.energies, f"{_registry.get(method).section}.reference_energy"
    )


def check_room(ds, out, ckpt=None, source=None) -> None:
    """Refuse a run whose results file (and checkpoint) cannot fit the free disk space,
    before the run: stacks K x H x W (absorption, phase; float32) on the scan's map grid,
    probes K x M x M (complex64), maps; a checkpoint holds about three times the result
    (parameters and the optimiser's two moments). The layout and the positions are checked
    first (a 2x2 detector, near-duplicate energies, translations in the wrong unit) so that
    the grid is never sized from nonsense."""
    from diffxas.data.checks import check_layout, check_positions  # jax: kept local, see the imports

    check_layout(ds, source=source)
    check_positions(ds, source=source, warn=False)
    h, w = ds.common_grid().shape
    k, m = ds.n_energies, ds.frame_size
    need = (1 << 20) + k * h * w * 8 + k * m * m * 8 + 16 * h * w * 8
    io_files.check_free_space(out, need, "results file")
    if ckpt is not None:
        if os.path.dirname(os.path.abspath(ckpt)) == os.path.dirname(os.path.abspath(out)):
            io_files.check_free_space(out, 4 * need, "results file and checkpoint")
        else:
            io_files.check_free_space(os.path.join(ckpt, "x"), 3 * need, "checkpoint")


def check_data(ds, *, source=None, orientation: str | None = None, selection: dict | None = None):
    """The data checks, once per dataset: broken frames and positions
    (:func:`diffxas.data.checks.check_dataset`: refuse, or drop frames with one warning),
    then the frames' orientation (``orientation``: a ``--orientation`` choice; None keeps
    the frames as they are, the simulator's own files), then the warnings of a usable
    dataset (counts, direct beam, saturation: :func:`diffxas.data.checks.ensure_checked`).
    The returned dataset is marked checked: the solvers take it as it is.

    ``selection`` (the input part's record, see :func:`reconstruct`) gets
    ``frames_dropped_by_checks`` and ``orientation``. Warnings go to the "diffxas" logger.
    """
    from diffxas.data.checks import check_dataset, ensure_checked, mark_checked  # jax: as above

    n_before = ds.n_frames
    ds = check_dataset(ds, source=source)  # before the orientation check: broken frames, positions
    if selection is not None and ds.n_frames < n_before:  # recorded with the input selection
        selection["frames_dropped_by_checks"] = int(n_before - ds.n_frames)
    if orientation is not None:
        ds, applied = _orientation.resolve(ds, orientation)
        if selection is not None:
            selection["orientation"] = applied
        mark_checked(ds)  # the same frames and positions, re-oriented
    ds, _ = ensure_checked(ds, source=source)  # counts, direct beam, saturation (on the oriented frames)
    return ds


@dataclasses.dataclass
class MethodRun:
    """One method's way through :func:`run`.

    ``result``: the :class:`~diffxas.maps.Result` (None if the method failed; on a process
    other than 0 of a sharded run, the replicated result that was not written);
    ``path``: the results file written; ``clusters`` (None: not clustered, or
    ``cluster_error`` says why); ``metrics``: :func:`diffxas.analysis.evaluate.evaluate`
    (None without a truth); ``error``: one line, why the method failed (checks,
    reconstruction or writing); ``wall_s``: checks + reconstruction + writing, s;
    ``dataset``: the checked dataset the method ran on.
    """

    method: str
    result: Any = None
    path: Path | None = None
    clusters: dict | None = None
    cluster_error: str | None = None
    metrics: dict | None = None
    error: str | None = None
    wall_s: float = 0.0
    dataset: Any = None


def _one_line(e) -> str:
    return " ".join(str(e).split())


def run(
    ds,
    configs: Mapping[str, Any],
    *,
    source=None,
    input_sha256: str = "",
    input_path=None,
    orientation: str | None = None,
    selection: dict | None = None,
    out: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    resume: bool = False,
    keep_checkpoint: Mapping[str, bool] | bool = True,
    progress: bool = False,
    sharded: bool = False,
    cluster=None,
    cluster_csv: bool = False,
    truth=None,
    truth_path=None,
    nv_fraction: float = 0.25,
    eval_json: bool = False,
    keep_going: bool = False,
    log=None,
    on_step=None,
) -> dict[str, MethodRun]:
    """The chain checks -> reconstruct -> cluster -> write -> evaluate for the methods of
    ``configs`` (``{method: config object}``, in that order) on one dataset.

    Steps, each over every method before the next:

    1. checks: :func:`check_config` and, with ``out``, :func:`check_room` per method; then
       :func:`check_data` once (``source`` names the input in messages, ``orientation``,
       ``selection`` as there);
    2. reconstruct (:func:`reconstruct`: ``checkpoint[method]``, ``resume``, ``progress``,
       ``sharded``; ``input_path``/``input_sha256``/``selection`` recorded in the result);
    3. cluster, in memory, when ``cluster`` (a :class:`~diffxas.analysis.clustering.ClusterConfig`)
       is given: the clusters go into the result (a failure is recorded, not raised);
    4. write ``out[method]`` (a results file, atomic; on a full disk the result is kept in a
       temporary folder, named in the error) and, with ``cluster_csv``, the clusters' CSV
       next to it; the checkpoint is removed unless ``keep_checkpoint`` (a bool or one per
       method). Only process 0 of a sharded run writes;
    5. evaluate against ``truth`` (a :class:`~diffxas.maps.Truth`) when given, with
       ``nv_fraction``; with ``eval_json`` the metrics go to ``<results stem>_eval.json``
       (with ``result_path``, ``truth_path`` and ``json_path``, as ``diffxas evaluate`` writes).

    ``keep_going``: a method's failure (any :class:`~diffxas.errors.DiffxasError`) is
    recorded in its :class:`MethodRun` and the others go on (the demo); otherwise it is
    raised (the CLI, a sweep point). ``log``: one-line notes (default stderr);
    ``on_step(step, method, run)``: called with ``method=None`` when a step starts
    ("checks", "reconstruct", "cluster", "write", "evaluate"), with the method before its
    reconstruction, and with ``step + "ed"`` / ``"written"`` after each method's
    reconstruction, clustering, writing and evaluation, and ``"failed"`` when a method
    fails under ``keep_going`` (the demo prints its progress from it).
    Returns ``{method: MethodRun}``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    step = on_step or (lambda *a: None)
    out = dict(out or {})
    ckpts = dict(checkpoint or {})
    runs = {m: MethodRun(m) for m in configs}
    primary = True
    if sharded:
        import jax  # jax: only for a sharded run; kept local, see the imports

        primary = jax.process_index() == 0

    def fail(m, e):
        if not keep_going:
            raise e
        runs[m].error = _one_line(e)
        step("failed", m, runs[m])

    def live():
        return [m for m, r in runs.items() if r.error is None]

    step("checks", None, None)
    t_check = {}
    for m, cfg in configs.items():
        t0 = time.perf_counter()
        try:
            check_config(ds, m, cfg)
            if out.get(m) is not None:
                check_room(ds, out[m], ckpts.get(m), source=source)
        except DiffxasError as e:
            fail(m, e)
        t_check[m] = time.perf_counter() - t0
    checked = None
    if live():
        t0 = time.perf_counter()
        try:
            checked = check_data(ds, source=source, orientation=orientation, selection=selection)
        except DiffxasError as e:
            for m in live():
                fail(m, e)
        for m in runs:
            t_check[m] += (time.perf_counter() - t0) / max(len(runs), 1)
    step("reconstruct", None, None)
    for m in live():
        step("reconstruct", m, runs[m])
        runs[m].dataset = checked
        t0 = time.perf_counter()
        try:
            runs[m].result = reconstruct(
                checked,
                m,
                configs[m],
                progress=progress,
                checkpoint=ckpts.get(m),
                resume=resume,
                input_path=input_path,
                input_sha256=input_sha256,
                log=log,
                selection=selection,
                sharded=sharded,
            )
        except DiffxasError as e:
            fail(m, e)
            continue
        runs[m].wall_s = t_check[m] + time.perf_counter() - t0
        step("reconstructed", m, runs[m])
    if cluster is not None and live():
        step("cluster", None, None)
        for m in live():
            try:
                runs[m].clusters = cluster_result(runs[m].result, cluster)
                runs[m].result.clusters = runs[m].clusters
            except DiffxasError as e:  # e.g. no valid pixel to cluster: the maps still count
                runs[m].cluster_error = _one_line(e)
            step("clustered", m, runs[m])
    if out and primary and live():
        step("write", None, None)
        for m in live():
            if out.get(m) is None:
                continue
            t0 = time.perf_counter()
            try:
                runs[m].path = io_results.write_result_or_keep(out[m], runs[m].result)
            except DiffxasError as e:
                fail(m, e)
                continue
            if cluster_csv and runs[m].clusters is not None:
                csv = default_csv_path(runs[m].path)
                write_cluster_csv(csv, runs[m].clusters)
                runs[m].clusters["csv_path"] = csv
            keep = keep_checkpoint.get(m, True) if isinstance(keep_checkpoint, Mapping) else keep_checkpoint
            if ckpts.get(m) is not None and not keep:
                remove_checkpoint(m, Path(ckpts[m]), owned=True)
            runs[m].wall_s += time.perf_counter() - t0
            step("written", m, runs[m])
    if truth is not None and live():
        from diffxas.analysis.evaluate import default_json_path, evaluate  # scipy: ~0.3 s, only with a truth

        step("evaluate", None, None)
        for m in live():
            metrics = evaluate(runs[m].result, truth, nv_fraction=nv_fraction, clusters=runs[m].clusters)
            if eval_json and runs[m].path is not None:
                jpath = default_json_path(runs[m].path)
                metrics["result_path"] = os.fspath(runs[m].path)
                if truth_path is not None:
                    metrics["truth_path"] = os.fspath(truth_path)
                metrics["json_path"] = jpath
                io_files.write_text_atomic(jpath, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
            runs[m].metrics = metrics
            step("evaluated", m, runs[m])
    return runs
