"""The end-to-end demo and the pipeline steps shared with the command line.

:func:`run_demo` is the main job on the built-in sample, with the default configuration
of every method (nothing tuned to the phantom)::

    simulate (preset "small")  ->  data.cxi + data.truth.h5
    two-step (ePIE + per-pixel fit)  ->  twostep.h5
    joint solver                     ->  joint.h5
    cluster both (one ClusterConfig) ->  /clusters in each results file + *_clusters.csv
    evaluate both against the truth  ->  *_eval.json
    report, side by side with truth  ->  report/ (figures, summary.md, metrics.json)
    summary table                    ->  stdout, summary.txt, demo.json

The building blocks (:func:`write_simulation`, :func:`reconstruct`, ...) are what the
``diffxas simulate`` and ``diffxas reconstruct`` commands call.

If :mod:`diffxas.twostep` is not installed the demo runs the joint path only and says so
loudly (stderr and the summary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import apply_overrides, build_section, config_to_dict, dumps_toml, validate_config
from .errors import ConfigError, DiffxasError, InputError

__all__ = [
    "METHODS",
    "twostep_available",
    "spread_indices",
    "select_energies",
    "default_truth_path",
    "write_simulation",
    "method_config",
    "iterations_key",
    "set_iterations",
    "reconstruct",
    "default_checkpoint",
    "DemoOutcome",
    "run_demo",
    "format_table",
]

#: Reconstruction methods, as named on the command line.
METHODS = ("two-step", "joint")

#: Config section of each method.
SECTION = {"two-step": "twostep", "joint": "joint"}


# ----------------------------------------------------------------------------- helpers


def twostep_available() -> tuple[bool, str]:
    """(True, "") if :mod:`diffxas.twostep` with the expected API is importable, else
    (False, reason)."""
    try:
        import diffxas.twostep as ts  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name in ("diffxas.twostep",):
            return False, "diffxas.twostep is not installed"
        return False, f"diffxas.twostep cannot be imported: {e}"
    except Exception as e:  # a half-written module must not break the joint path
        return False, f"diffxas.twostep cannot be imported: {type(e).__name__}: {e}"
    missing = [n for n in ("TwoStepConfig", "reconstruct_two_step") if not hasattr(ts, n)]
    if missing:
        return False, f"diffxas.twostep lacks {', '.join(missing)}"
    return True, ""


def _require_twostep():
    ok, why = twostep_available()
    if not ok:
        raise ConfigError(f"the two-step method is not available: {why}")
    import diffxas.twostep as ts

    return ts


def spread_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` indices out of ``range(n_total)`` spread evenly *in index* (first and last
    always included); :func:`diffxas.dataset.spread_indices`, the one rule (imported here,
    not at module level: diffxas.dataset pulls in JAX, which the CLI's light commands do
    not need)."""
    from .dataset import spread_indices as rule

    return rule(n_total, n)


def select_energies(energies: Sequence[float], n: int) -> tuple[float, ...]:
    """``n`` of ``energies`` spread evenly in index (see :func:`spread_indices`)."""
    e = list(energies)
    return tuple(float(e[i]) for i in spread_indices(len(e), n))


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


# ----------------------------------------------------------------------------- simulate


def write_simulation(sim, cxi_path, truth_path=None) -> tuple[Path, Path]:
    """Write a :class:`~diffxas.simulate.Simulation` as CXI + ground-truth sidecar.

    Both files appear together or not at all (each is written to a hidden temporary file
    in its folder, then both are renamed). Returns (cxi path, truth path).
    """
    from . import io

    cxi = Path(cxi_path)
    truth = Path(truth_path) if truth_path is not None else default_truth_path(cxi)
    if os.path.abspath(cxi) == os.path.abspath(truth):
        raise InputError(f"{truth}: the truth file must differ from the CXI file")
    check_output_path(cxi, "CXI file")
    check_output_path(truth, "ground-truth file")
    cfg = sim.config
    attrs = {"simulation": cfg.to_dict(), "preset": cfg.preset, "seed": int(cfg.seed), "dose": float(cfg.dose),
             "truth_file": truth.name if truth.parent.resolve() == cxi.parent.resolve() else os.path.abspath(truth)}
    tmp_cxi, tmp_truth = _tmp_name(cxi), _tmp_name(truth)
    try:
        io.write_cxi(tmp_cxi, sim.dataset, extra_attrs=attrs)
        # the truth names the data it belongs to (evaluate/report --truth check it against
        # the input SHA-256 a results file records)
        t_attrs = dict(sim.truth.attrs or {}, data_sha256=io.sha256_file(tmp_cxi))
        io.write_truth(tmp_truth, dataclasses.replace(sim.truth, attrs=t_attrs))
        os.replace(tmp_cxi, cxi)
        os.replace(tmp_truth, truth)
    finally:
        for t in (tmp_cxi, tmp_truth):
            with contextlib.suppress(OSError):
                t.unlink()
    return cxi, truth


def simulate_files(sim_cfg, cxi_path, truth_path=None, progress: bool = False):
    """Simulate ``sim_cfg`` and write the CXI and truth files; returns (simulation, cxi, truth)."""
    from .simulate import simulate

    sim = simulate(sim_cfg, progress=progress)
    cxi, truth = write_simulation(sim, cxi_path, truth_path)
    return sim, cxi, truth


# ----------------------------------------------------------------------------- reconstruct


def _config_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def iterations_key(method: str) -> str:
    """The dotted config key that ``--iterations`` (two-step: ePIE epochs) or ``--steps``
    (joint) sets, e.g. ``"twostep.epie.epochs"`` or ``"joint.steps"``."""
    if method == "joint":
        return "joint.steps"
    ts = _require_twostep()
    f = _config_fields(ts.TwoStepConfig)
    for name in ("epochs", "iterations"):
        if name in f:
            return f"twostep.{name}"
    import typing

    hints = {}
    with contextlib.suppress(Exception):
        hints = typing.get_type_hints(ts.TwoStepConfig)
    for name, fld in f.items():
        tp = hints.get(name)
        default = None
        if fld.default is not dataclasses.MISSING:
            default = fld.default
        elif fld.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = fld.default_factory()  # type: ignore[misc]
        sub = type(default) if dataclasses.is_dataclass(default) else tp
        if isinstance(sub, type) and dataclasses.is_dataclass(sub) and "epochs" in _config_fields(sub):
            return f"twostep.{name}.epochs"
    raise ConfigError("cannot tell which two-step option counts ePIE epochs; use --set twostep.<key>=N")


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
    if method == "joint" or not key.endswith(".epochs") or key.count(".") != 2:
        return apply_overrides(config, {key: n})
    sub = key.rsplit(".", 1)[0]  # "twostep.epie"
    base_ts = build_section(config, "twostep")
    base = getattr(base_ts, sub.split(".")[1])
    old = int(getattr(base, "epochs"))
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
    """The config object of ``method`` ("two-step" or "joint") from a configuration mapping."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "two-step":
        _require_twostep()
    return build_section(config or {}, SECTION[method])


def default_checkpoint(method: str, result_path) -> Path:
    """``RESULT.h5.ckpt`` (joint, a file) or ``RESULT.h5.ckpt.d`` (two-step, a folder)."""
    p = Path(result_path)
    return p.with_name(p.name + (".ckpt" if method == "joint" else ".ckpt.d"))


def _meta_path(method: str, ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".meta.json") if method == "joint" else ckpt / "diffxas-cli.meta.json"


def _checkpoint_exists(method: str, ckpt: Path) -> bool:
    if method == "joint":
        return ckpt.is_file()
    return ckpt.is_dir() and any(p.name != "diffxas-cli.meta.json" for p in ckpt.iterdir())


def _checkpoint_meta(method: str, cfg, input_sha256: str, selection: dict | None = None) -> dict[str, Any]:
    c = config_to_dict(cfg)
    for volatile in ("log_every", "checkpoint_every"):
        c.pop(volatile, None)
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


def remove_checkpoint(method: str, ckpt: Path) -> bool:
    """Delete a checkpoint written through :func:`reconstruct` (and its sidecars).

    Joint: the checkpoint file, its ``.hist.npz`` and ``.meta.json``. Two-step: the
    folder, but only if it is named ``*.ckpt.d`` and holds the metadata file written by
    :func:`reconstruct` (a folder the user named for something else is never removed).
    Returns True if something was removed.
    """
    ckpt = Path(ckpt)
    removed = False
    if method == "joint":
        for p in (ckpt, ckpt.with_name(ckpt.name + ".hist.npz"), _meta_path(method, ckpt)):
            if p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed = True
    elif ckpt.is_dir() and ckpt.name.endswith(".ckpt.d") and _meta_path(method, ckpt).is_file():
        shutil.rmtree(ckpt, ignore_errors=True)
        removed = True
    return removed


def _call_with_supported(fn, *args, **kwargs):
    """Call ``fn`` passing only the keyword arguments its signature accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args, **kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


def reconstruct(dataset, method: str, cfg, *, progress: bool = False, checkpoint=None, resume: bool = False,
                input_path=None, input_sha256: str = "", log=None, selection: dict | None = None,
                sharded: bool = False):
    """Run ``method`` on ``dataset`` with config object ``cfg``; returns the Result with
    ``input_path``, ``input_sha256`` and the full configuration recorded.

    ``checkpoint``: joint: a file; two-step: a folder (None: no checkpoints). With
    ``resume`` an existing checkpoint is continued; it must come from the same input and
    configuration (checked against a ``.meta.json`` sidecar written here).
    ``log``: callable for one-line notes (default: print to stderr).
    ``selection``: which part of the input file ``dataset`` is (e.g. ``{"half": "even",
    "energy_indices": [0, 4, ...]}``, as the CLI's ``--half``/``--energies`` make it);
    recorded as ``config["input_selection"]`` and in the checkpoint metadata, so a resume
    with another part of the same file is refused.
    ``sharded``: joint only, the frames split over all devices of all processes
    (:func:`diffxas.parallel.reconstruct_joint_sharded`); only process 0 writes the
    checkpoint and its metadata.
    """
    primary = True
    if sharded:
        import jax

        primary = jax.process_index() == 0
    log = log or (lambda msg: print(msg, file=sys.stderr))
    ckpt = Path(checkpoint) if checkpoint is not None else None
    meta = _checkpoint_meta(method, cfg, input_sha256, selection)
    if ckpt is not None:
        mpath = _meta_path(method, ckpt)
        exists = _checkpoint_exists(method, ckpt)
        if method == "joint" and ckpt.is_dir():
            raise InputError(f"{ckpt}: the joint checkpoint must be a file, not a directory")
        if method == "two-step" and ckpt.exists() and not ckpt.is_dir():
            raise InputError(f"{ckpt}: the two-step checkpoint must be a folder, not a file")
        if resume and exists:
            if mpath.is_file():
                try:
                    old = json.loads(mpath.read_text())
                except (OSError, ValueError) as e:
                    raise InputError(f"{mpath}: unreadable checkpoint metadata: {e}") from None
                if old.get("input_sha256") != meta["input_sha256"] and meta["input_sha256"]:
                    raise InputError(f"{ckpt}: checkpoint was made from a different input file; "
                                     "delete it or run without --resume")
                if old.get("method") != method or old.get("config") != json.loads(json.dumps(meta["config"])):
                    raise InputError(f"{ckpt}: checkpoint was made with a different method or configuration; "
                                     "delete it or run without --resume")
                if not _same_part(old.get("input_selection"), meta.get("input_selection")):
                    o_sel, n_sel = old.get("input_selection") or {}, meta.get("input_selection") or {}
                    o_or = (o_sel.get("orientation") or {}).get("applied", "none")
                    n_or = (n_sel.get("orientation") or {}).get("applied", "none")
                    # name what differs: an orientation found by --orientation auto is no --half
                    what = (f"the frames' orientation differs: {o_or} then, {n_or} now; pass --orientation {o_or}"
                            if o_or != n_or else "--half, --energies or --energy-list differ")
                    raise InputError(f"{ckpt}: checkpoint was made from another part of the input ({what}); delete it "
                                     "or run without --resume")
            else:
                log(f"note: {ckpt} has no metadata; cannot check that it matches this input and configuration")
            log(f"resuming from checkpoint {ckpt}")
        elif resume:
            log(f"note: no checkpoint at {ckpt}; starting from the beginning")
        elif exists:
            log(f"note: existing checkpoint {ckpt} will be overwritten (use --resume to continue it)")
            if method == "joint" and primary:  # a stale file must not be resumed later under the new metadata
                remove_checkpoint(method, ckpt)
        folder = ckpt if method == "two-step" else ckpt.parent
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
        if method == "joint":
            from .joint import reconstruct_joint

            if sharded:
                from .parallel import reconstruct_joint_sharded as reconstruct_joint
            result = reconstruct_joint(dataset, cfg, progress=progress,
                                       checkpoint=None if ckpt is None else str(ckpt), resume=resume)
        elif method == "two-step":
            ts = _require_twostep()
            result = _call_with_supported(ts.reconstruct_two_step, dataset, cfg, progress=progress,
                                          checkpoint_dir=None if ckpt is None else str(ckpt), resume=resume)
        else:
            raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
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
    from . import __version__

    config = dict(result.config or {})
    config[SECTION[method]] = config_to_dict(cfg)
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


# ----------------------------------------------------------------------------- demo


@dataclasses.dataclass
class DemoOutcome:
    """What :func:`run_demo` produced."""

    out_dir: Path
    cxi: Path
    truth: Path
    results: dict[str, Path]
    metrics: dict[str, dict]
    wall_s: dict[str, float]
    failures: dict[str, str]
    notes: list[str]
    report_files: list[str]
    table: str
    total_s: float


#: ``--quick``: fewer energies and iterations (a smoke run, not the benchmark).
QUICK = {"energies": 12, "joint.steps": 60, "iterations": 30}


def _stage(msg: str, log) -> None:
    log(msg)


def _fmt(v, spec=".3g") -> str:
    if v is None:
        return "n/a"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return format(v, spec) if np.isfinite(v) else "n/a"


def format_table(metrics: Mapping[str, Mapping], wall_s: Mapping[str, float], failures: Mapping[str, str] | None = None,
                 clusters: Mapping[str, Any] | None = None) -> str:
    """The demo's summary table (one row per method; failed methods say why)."""
    header = ["method", "coverage", "E0 RMSE (eV)", "PE/dmt RMSE (eV)", "Ne/NV RMSE", "nV rel.RMS", "k", "ARI",
              "wall (s)"]
    rows = []
    for method in list(metrics) + [m for m in (failures or {}) if m not in metrics]:
        if failures and method in failures:
            rows.append([method, "FAILED: " + failures[method]] + [""] * (len(header) - 2))
            continue
        m = metrics[method]
        g = lambda name, key: (m.get(name) or {}).get(key)  # noqa: E731
        cl = m.get("clusters") or {}
        k = (clusters or {}).get(method, "n/a")
        rows.append([method, _fmt(m.get("coverage"), ".3f"), _fmt(g("edge_energy", "rmse")),
                     _fmt(g("pre_edge_norm", "rmse")), _fmt(g("ne_eff_per_nv", "rmse")),
                     _fmt(g("n_v", "rel_rms"), ".3f"), str(k), _fmt(cl.get("ari"), ".3f"),
                     _fmt(wall_s.get(method), ".1f")])
    ok_rows = [r for r in rows if not r[1].startswith("FAILED")]
    widths = [max([len(h)] + [len(r[i]) for r in ok_rows]) for i, h in enumerate(header)]
    widths[0] = max([widths[0]] + [len(r[0]) for r in rows])
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        if r[1].startswith("FAILED"):
            lines.append(r[0].ljust(widths[0]) + "  " + r[1])
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def run_demo(out_dir="demo-output", preset: str = "small", *, quick: bool = False, seed: int = 0,
             config: Mapping[str, Any] | None = None, methods: Sequence[str] = METHODS, progress: bool = False,
             report_formats: Sequence[str] = ("png", "pdf"), log=None) -> DemoOutcome:
    """Run the demo (see the module docstring) and return what it produced.

    Args:
        out_dir: output folder (created; files in it are replaced).
        preset: simulation preset (``tiny`` for tests, ``small`` the default sample).
        quick: fewer energies (12, spread evenly in index) and iterations (joint 60 steps,
            two-step 30 ePIE epochs) unless ``config`` sets them.
        seed: simulation seed.
        config: a configuration mapping (``{"joint": {"steps": 5}, ...}``, as read by
            :func:`diffxas.config.load_config`) applied on top of the defaults; empty =
            the default configuration of every method.
        methods: methods to run (default both; the two-step is skipped, loudly, if its
            module is missing).
        progress: tqdm progress bars (stderr).
        report_formats: figure formats of the report.
        log: callable for progress lines (default print to stdout).

    Failures of one method (e.g. divergence) are recorded and the demo goes on with the
    others; a failure of the simulation or of every method raises.
    """
    from . import io
    from .clustering import cluster_file, format_clusters
    from .evaluate import evaluate_file
    from .report import report

    log = log or (lambda msg: print(msg, flush=True))
    t_all = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    config = dict(config or {})
    cfg_map = dict(config)
    sim_sect = dict(cfg_map.get("simulate") or {})
    sim_sect.setdefault("preset", preset)
    sim_sect.setdefault("seed", seed)
    notes: list[str] = []
    failures: dict[str, str] = {}
    run_methods = list(methods)
    if "two-step" in run_methods:
        ok, why = twostep_available()
        if not ok:
            msg = (f"WARNING: the two-step baseline is not available ({why}); "
                   "running the joint path only, there is no method comparison")
            print("!" * 78 + f"\n{msg}\n" + "!" * 78, file=sys.stderr, flush=True)
            notes.append(msg)
            run_methods.remove("two-step")
    if not run_methods:
        raise ConfigError("no reconstruction method to run")
    if quick:
        from .simulate import PRESETS

        if "energies" not in sim_sect:
            base = PRESETS.get(sim_sect["preset"], {}).get("energies")
            if base is not None and len(base) > QUICK["energies"]:
                sim_sect["energies"] = list(select_energies(base, QUICK["energies"]))
        if "steps" not in (cfg_map.get("joint") or {}):
            cfg_map = set_iterations(cfg_map, "joint", QUICK["joint.steps"])
        if "two-step" in run_methods and _get(cfg_map, iterations_key("two-step")) is dataclasses.MISSING:
            cfg_map = set_iterations(cfg_map, "two-step", QUICK["iterations"])
        # said in the summary: a smoke run's table is easily read as a comparison, and the
        # joint's 60 steps are far from converged (`small`, 12 energies: edge energy 1.24 eV
        # against 0.53 for the 30-epoch two-step; at the defaults the joint wins)
        notes.append(f"--quick is a smoke run (unless the configuration sets them: {QUICK['energies']} energies, joint "
                     f"{QUICK['joint.steps']} steps, two-step {QUICK['iterations']} ePIE epochs): its numbers check the "
                     "plumbing and compare nothing; run without --quick for that")
    cfg_map["simulate"] = sim_sect
    validate_config(cfg_map)
    # build every config up front: a bad key fails before minutes of computing
    sim_cfg = build_section(cfg_map, "simulate")
    method_cfgs = {m: method_config(m, cfg_map) for m in run_methods}
    cluster_cfg = build_section(cfg_map, "cluster")

    out.mkdir(parents=True, exist_ok=True)
    used = {"simulate": sim_cfg, **{SECTION[m]: c for m, c in method_cfgs.items()}, "cluster": cluster_cfg}
    (out / "config.toml").write_text("# configuration used by `diffxas demo` (all defaults unless given)\n"
                                     + dumps_toml(used))
    n_stages = 2 + len(run_methods) + 3
    stage = 0

    def head(msg):
        nonlocal stage
        stage += 1
        _stage(f"[{stage}/{n_stages}] {msg}", log)

    wall: dict[str, float] = {}
    head(f"simulating preset {sim_cfg.preset!r} (seed {sim_cfg.seed}, {len(sim_cfg.energies)} energies, "
         f"dose {sim_cfg.dose:g} photons/frame)")
    t0 = time.perf_counter()
    sim, cxi, truth = simulate_files(sim_cfg, out / "data.cxi", out / "data.truth.h5", progress=progress)
    wall["simulate"] = time.perf_counter() - t0
    n_frames = int(np.asarray(sim.dataset.frames).shape[0])
    log(f"    wrote {cxi} ({n_frames} frames) and {truth} in {wall['simulate']:.1f} s")
    del sim

    head(f"reading {cxi}")
    ds = io.read_cxi(cxi)
    sha = io.sha256_file(cxi)

    results: dict[str, Path] = {}
    for m in run_methods:
        head(f"reconstructing with the {m} method")
        t0 = time.perf_counter()
        try:
            res = reconstruct(ds, m, method_cfgs[m], progress=progress, input_path=cxi, input_sha256=sha,
                              log=lambda s: log("    " + s))
            path = out / ("twostep.h5" if m == "two-step" else "joint.h5")
            io.write_result(path, res)
        except DiffxasError as e:
            failures[m] = " ".join(str(e).split())
            log(f"    FAILED: {failures[m]}")
            continue
        wall[m] = time.perf_counter() - t0
        results[m] = path
        valid = int(np.asarray(res.maps.valid).astype(bool).sum())
        log(f"    wrote {path} in {wall[m]:.1f} s ({valid} valid map pixels)")
        del res
    if not results:
        raise DiffxasError("every reconstruction failed: " + "; ".join(f"{m}: {e}" for m, e in failures.items()))

    head(f"clustering ({'k=auto' if cluster_cfg.k == 'auto' else f'k={cluster_cfg.k}'}, features "
         f"{', '.join(cluster_cfg.features)}, same settings for every method)")
    ks: dict[str, Any] = {}
    for m, path in list(results.items()):
        try:
            cl = cluster_file(path, cluster_cfg)
        except DiffxasError as e:
            msg = " ".join(str(e).split())
            notes.append(f"{m}: clustering failed: {msg}")
            log(f"    {m}: clustering failed: {msg}")
            continue
        ks[m] = int(cl["k"]) if cl.get("k") is not None else None
        log(f"    {m}: " + format_clusters(cl).splitlines()[0])

    head("evaluating against the ground truth")
    metrics: dict[str, dict] = {}
    for m, path in results.items():
        stem = path.with_suffix("")
        metrics[m] = evaluate_file(path, truth, json_path=f"{stem}_eval.json")

    head("writing the report")
    labels = list(results)
    rep_dir = out / "report"
    files = report([str(results[m]) for m in labels], rep_dir, truth_path=str(truth), labels=labels,
                   formats=tuple(report_formats))
    total = time.perf_counter() - t_all
    table = format_table(metrics, wall, failures, ks)
    text = [f"diffxas demo: preset {sim_cfg.preset!r}, seed {sim_cfg.seed}, {len(sim_cfg.energies)} energies, "
            f"{n_frames} frames" + (" (--quick)" if quick else ""), "", table, ""]
    text += [f"note: {n}" for n in notes]
    text += [f"simulation {wall['simulate']:.1f} s; total {total:.1f} s. Wall times include JIT compilation.",
             f"output: {out}/ (data.cxi, data.truth.h5, "
             + ", ".join(p.name for p in results.values()) + ", report/summary.md)"]
    summary = "\n".join(text)
    (out / "summary.txt").write_text(summary + "\n")
    (out / "demo.json").write_text(json.dumps({
        "preset": sim_cfg.preset, "seed": sim_cfg.seed, "quick": quick, "n_energies": len(sim_cfg.energies),
        "n_frames": n_frames, "results": {m: str(p) for m, p in results.items()}, "wall_s": wall,
        "total_s": total, "failures": failures, "notes": notes, "k": ks,
        "metrics": {m: {k: v for k, v in mt.items() if k not in ("history",)} for m, mt in metrics.items()},
    }, indent=2, default=str) + "\n")
    return DemoOutcome(out_dir=out, cxi=cxi, truth=truth, results=results, metrics=metrics, wall_s=wall,
                       failures=failures, notes=notes, report_files=files, table=summary, total_s=total)
