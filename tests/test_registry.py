"""The method registry: one signature for every method, and a third method added from a test.

A toy method (constant maps) is registered with one line and run through the pipeline's
`reconstruct` (configuration section, checkpoint metadata, recorded configuration) and the
results file; nothing in the pipeline names it.
"""

import dataclasses
import inspect
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from diffxas.app import pipeline
from diffxas.data import results as io_results
from diffxas.data.results import read_result, write_result
from diffxas.errors import ConfigError
from diffxas.maps import MAP_FIELDS, ChemMaps, Result
from diffxas.solvers import registry


@dataclasses.dataclass
class ToyConfig:
    edge_energy: float = 5480.0  # eV, written into every pixel
    size: int = 4  # map side, pixels


def toy_reconstruct(dataset, config, *, progress=False, checkpoint=None, resume=False) -> Result:
    """Constant maps on a `size` x `size` grid; writes `checkpoint` (a file) when given."""
    n = config.size
    e = np.asarray(dataset.energies, float)
    maps = ChemMaps(
        **{k: np.full((n, n), 1.0) for k in MAP_FIELDS if k != "edge_energy"},
        edge_energy=np.full((n, n), config.edge_energy),
        valid=np.ones((n, n), bool),
        pixel_size=40e-9,
        origin=(0.0, 0.0),
        reference_energy=float(e[0]),
        delta_f2_v=3.4,
        scattering_table="toy",
    )
    if checkpoint is not None:
        checkpoint.write_text("toy state")
    return Result(
        method="toy",
        maps=maps,
        energies=e,
        absorption=np.zeros((e.size, n, n)),
        phase=np.zeros((e.size, n, n)),
        probes=np.ones((e.size, 4, 4), np.complex64),
        probe_pixel_size=np.full(e.size, 40e-9),
        history={"loss": np.zeros(1)},
        config={},
    )


@pytest.fixture
def toy(monkeypatch):
    method = registry.Method(
        "toy", ToyConfig, toy_reconstruct, section="toy", checkpoint="file", iterations_key=None, result_name="toy.h5"
    )
    # undone after the test: the registry entry and the results reader's list of methods
    monkeypatch.setitem(registry.METHODS, "toy", method)
    monkeypatch.setattr(io_results, "RESULT_METHODS", set(io_results.RESULT_METHODS))
    registry.register(method)  # the one registry line (its results files read back too)
    return method


def test_every_method_has_the_one_signature():
    want = ["dataset", "config", "progress", "checkpoint", "resume"]
    for name, (config_cls, reconstruct) in registry.METHODS.items():
        params = inspect.signature(reconstruct).parameters
        assert list(params) == want, name
        assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in want[2:]), name
        assert dataclasses.is_dataclass(config_cls), name


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of two-step, joint"):
        registry.get("nope")


def test_toy_method_runs_through_the_pipeline(toy, tmp_path):
    ds = types.SimpleNamespace(energies=np.array([5450.0, 5480.0, 5500.0]))
    cfg = pipeline.method_config("toy", {"toy": {"edge_energy": 5477.5}})  # its section, from the registry
    assert cfg == ToyConfig(edge_energy=5477.5)
    out = tmp_path / "r.h5"
    ckpt = pipeline.default_checkpoint("toy", out)
    assert ckpt == tmp_path / "r.h5.ckpt"  # a file checkpoint, by the registry entry
    res = pipeline.reconstruct(ds, "toy", cfg, checkpoint=ckpt, input_sha256="abc", log=lambda s: None)
    assert res.config["toy"] == {"edge_energy": 5477.5, "size": 4} and res.config["method"] == "toy"
    meta = json.loads((tmp_path / "r.h5.ckpt.meta.json").read_text())
    assert meta["method"] == "toy" and meta["input_sha256"] == "abc"
    write_result(out, res)
    back = read_result(out)
    assert back.method == "toy" and np.all(back.maps.edge_energy == 5477.5)  # exact: a constant written and read


def test_a_registered_method_is_a_cli_choice(toy, tmp_path, capsys):
    """The CLI reads `reconstruct --method`'s choices (and the demo's default `--methods`)
    from the registry when it checks or shows them: the toy method, registered by the fixture
    after `diffxas.app.cli` was imported, is listed by `--help`, accepted by the parser and
    runs through `diffxas reconstruct` to a results file, with no edit of the CLI."""
    from diffxas.app import cli
    from diffxas.data import cxi as io_cxi
    from diffxas.data.dataset import Dataset

    assert cli.main(["reconstruct", "--help"]) == 0
    assert "--method {two-step,joint,toy}" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["demo", "--help"]) == 0
    assert "(default two-step,joint,toy)" in " ".join(capsys.readouterr().out.split())
    args = cli.build_parser().parse_args(["reconstruct", "d.cxi", "--method", "toy", "-o", "r.h5"])
    assert args.method == "toy"
    # an unregistered name is still refused, the registered ones named
    assert cli.main(["reconstruct", "d.cxi", "--method", "nope", "-o", "r.h5"]) == 2
    assert "invalid choice: 'nope' (choose from 'two-step', 'joint', 'toy')" in capsys.readouterr().err

    rng = np.random.default_rng(0)
    k, n, m = 3, 5, 16
    ds = Dataset(
        frames=rng.poisson(10.0, (k * n, m, m)).astype(np.float32),
        positions=rng.uniform(-1e-6, 1e-6, (k * n, 2)),
        energy_index=np.repeat(np.arange(k, dtype=np.int32), n),
        energies=np.array([5420.0, 5480.0, 5540.0]),
        mask=np.ones((k, m, m), np.float32),
        illumination=None,
        distance=0.5,
        detector_pixel=75e-6,
    )
    data = io_cxi.write_cxi(tmp_path / "data.cxi", ds)
    out = tmp_path / "toy.h5"
    argv = ["reconstruct", str(data), "--method", "toy", "-o", str(out), "--orientation", "none", "--no-progress"]
    assert cli.main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    back = read_result(out)
    assert back.method == "toy" and np.all(back.maps.edge_energy == 5480.0)  # exact: ToyConfig's constant, read back
    assert not (tmp_path / "toy.h5.ckpt").exists()  # its file checkpoint, removed after success


def test_method_names_without_the_solvers():
    """`reconstruct --help` lists the registered methods without importing jax (the solvers
    are "module:name" references resolved on first use): the help stays a fraction of a
    second instead of the seconds of importing jax."""
    code = (
        "import contextlib, io, sys\n"
        "from diffxas.app.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    main(['reconstruct', '--help'])\n"
        "assert 'two-step' in out.getvalue() and 'joint' in out.getvalue(), out.getvalue()\n"
        "print('jax' in sys.modules)\n"
    )
    env = {**os.environ, "DIFFXAS_COMPILATION_CACHE": "0"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_a_registered_method_is_a_sweep_method(toy):
    """Sweeps read their methods from the registry: a registered method is accepted in
    ``[base] methods`` and is part of the default list, after the built-in ones."""
    from diffxas.app.sweep import spec

    assert spec.methods()[-1] == "toy"
    assert spec._norm_methods(["toy", "twostep"], "sweep.toml") == ["two-step", "toy"]
    with pytest.raises(ConfigError, match="choose from two-step, joint, toy"):
        spec._norm_methods(["nope"], "sweep.toml")
