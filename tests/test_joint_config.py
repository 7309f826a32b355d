"""JointConfig's option groups (diffxas/solvers/joint/config.py): nested TOML as the canonical
form, the earlier flat keys as aliases (TOML, --set, sweep axes), one-line errors naming the
key, and the round trip through a results file (new nested records and old flat ones).

References: the expected values are the ones written in each test (the TOML text and the
overrides given), compared exactly; no numerics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from diffxas.app import config as C
from diffxas.app.sweep import spec as sweep_spec
from diffxas.data import results as io_results
from diffxas.errors import ConfigError
from diffxas.maps import MAP_FIELDS, ChemMaps, Result
from diffxas.solvers.joint import config as joint_config
from diffxas.solvers.joint.config import (
    FLAT_ALIASES,
    GROUPS,
    TOP_LEVEL,
    JointConfig,
    OptimOptions,
    PriorOptions,
)

NESTED = """
[joint]
element = "V"

[joint.optim]
steps = 50
seed = 3

[joint.prior]
mode = "none"
tv_weight = 1e-3

[joint.probe]
lr = 0.02
start = 5

[joint.init]
mode = "flat"

[joint.memory]
mode = "device"
chunk_size = 64
"""

FLAT = """
[joint]
element = "V"
steps = 50
seed = 3
prior = "none"
tv_weight = 1e-3
lr_probe = 0.02
probe_start = 5
init = "flat"
memory = "device"
chunk_size = 64
"""


def _build(text: str, overrides=None) -> JointConfig:
    m = C.loads_config(text)
    if overrides:
        m = C.apply_overrides(m, C.parse_overrides(overrides, "joint"), default_section="joint")
    return C.build_section(m, "joint")


def test_aliases_cover_every_group_field_once():
    """Every group field has exactly one flat alias (the earlier flat JointConfig had 42
    fields: 38 in groups + 4 at the top), and every alias names an existing field."""
    fields = [(g, f.name) for g, cls in GROUPS.items() for f in dataclasses.fields(cls)]
    assert sorted(FLAT_ALIASES.values()) == sorted(fields)
    assert len(FLAT_ALIASES) + len(TOP_LEVEL) == 42
    assert not set(FLAT_ALIASES) & set(TOP_LEVEL)


def test_nested_toml_and_flat_aliases_build_the_same_config():
    nested, flat = _build(NESTED), _build(FLAT)
    assert nested == flat
    assert nested.optim == OptimOptions(steps=50, seed=3)
    assert nested.prior == PriorOptions(mode="none", tv_weight=1e-3)
    assert (nested.probe.lr, nested.probe.start, nested.init.mode) == (0.02, 5, "flat")
    assert (nested.memory.mode, nested.memory.chunk_size) == ("device", 64)
    # fields not named keep their defaults
    assert nested.spectra == JointConfig().spectra and nested.background == JointConfig().background
    # the Python counterpart of a flat table
    assert JointConfig.make(steps=50, seed=3, prior="none", tv_weight=1e-3, lr_probe=0.02, probe_start=5,
                            init="flat", memory="device", chunk_size=64) == nested  # fmt: skip


@pytest.mark.parametrize("text", [NESTED, FLAT], ids=["nested-file", "flat-file"])
@pytest.mark.parametrize(
    "overrides",
    [
        ["joint.steps=7", "joint.tv_weight=0.5", "joint.prior=none", "joint.probe_start=2"],
        ["joint.optim.steps=7", "joint.prior.tv_weight=0.5", "joint.prior.mode=none", "joint.probe.start=2"],
        ["steps=7", "prior.tv_weight=0.5", "joint.prior=none", "probe.start=2"],  # default section
    ],
    ids=["flat-set", "nested-set", "bare-set"],
)
def test_set_wins_over_the_file_in_either_spelling(text, overrides):
    c = _build(text, overrides)
    assert c.optim.steps == 7 and c.prior.tv_weight == 0.5 and c.prior.mode == "none" and c.probe.start == 2
    # the rest of the file is kept
    assert c.optim.seed == 3 and c.probe.lr == 0.02 and c.memory.chunk_size == 64


def test_mode_alias_and_group_table_mix():
    """``--set joint.prior=tv`` over a ``[joint.prior]`` table sets its mode and keeps the
    table's other keys; ``joint.prior.strength`` over a flat ``prior = "none"`` keeps the mode."""
    c = _build("[joint.prior]\nstrength = 1.5\n", ["joint.prior=tv"])
    assert c.prior == PriorOptions(mode="tv", strength=1.5)
    c = _build('[joint]\nprior = "none"\n', ["joint.prior.strength=2"])
    assert c.prior == PriorOptions(mode="none", strength=2.0)
    # --init's overrides (the CLI's extra keys) over a nested [joint.init]
    m = C.apply_overrides(C.loads_config('[joint.init]\nmode = "stxm"\nepochs = 3\n'),
                          {"joint.init": "result", "joint.init_result": "x.h5"})  # fmt: skip
    c = C.build_section(m, "joint")
    assert (c.init.mode, c.init.result, c.init.epochs) == ("result", "x.h5", 3)


def test_sweep_axes_on_flat_and_nested_bases():
    """A sweep axis in either spelling replaces the base's option in either spelling; a base
    without the other spelling keeps its mapping (point ids of existing sweeps unchanged)."""
    for base in (
        {"joint": {"tv_weight": 1.0, "prior": "none"}},
        {"joint": {"prior": {"mode": "none", "tv_weight": 1.0}}},
    ):
        for axis in ("joint.tv_weight", "joint.prior.tv_weight"):
            pts = sweep_spec.expand_points(sweep_spec.load_spec({"base": base, "axes": {axis: [0.1, 0.2]}}))
            got = [C.build_section(p["config"], "joint").prior for p in pts]
            assert got == [PriorOptions(mode="none", tv_weight=w) for w in (0.1, 0.2)], (base, axis)
    # no other spelling: the flat key stays as written (what the point id hashes)
    pts = sweep_spec.expand_points(
        sweep_spec.load_spec({"base": {"joint": {"prior": "none"}}, "axes": {"joint.tv_weight": [0.1]}})
    )
    assert pts[0]["config"]["joint"] == {"prior": "none", "tv_weight": 0.1}


@pytest.mark.parametrize(
    "mapping, words",
    [
        ({"steps": -1}, ["[joint.optim]", "steps must be >= 0"]),
        ({"optim": {"steps": -1}}, ["[joint.optim]", "steps must be >= 0"]),
        ({"prior": {"strenght": 1}}, ["[joint.prior]", "unknown key 'strenght'", "strength"]),
        ({"stepz": 1}, ["[joint]", "unknown key 'stepz'", "optim", "flat alias", "steps"]),
        ({"tv_weight": 1.0, "prior": {"tv_weight": 2.0}}, ["[joint]", "tv_weight and prior.tv_weight"]),
        ({"probe_fwhm": -1.0}, ["[joint.probe]", "probe.fwhm", "probe_fwhm"]),
        ({"prior": {"mode": "tv", "tv_weight": 1.0}}, ["[joint.prior]", "prior='none'"]),
        ({"memory": {"chunk_size": "big"}}, ["[joint.memory]", "chunk_size: expected an integer"]),
        ({"init": "result"}, ["[joint.init]", "init.result"]),
    ],
)
def test_bad_key_or_value_is_one_line_naming_it(mapping, words):
    with pytest.raises(ConfigError) as e:
        C.build_config(JointConfig, mapping, section="joint")
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_bad_set_items_are_one_line():
    with pytest.raises(ConfigError, match=r"^\[joint.optim\] steps: expected an integer"):
        _build(FLAT, ["joint.steps=many"])
    with pytest.raises(ConfigError, match=r"'steps.x'"):  # a value is not a table
        C.apply_overrides({"joint": {"steps": 3}}, {"joint.steps.x": 1})


def _result(config: dict) -> Result:
    h, w, k = 4, 5, 2
    rng = np.random.default_rng(0)
    maps = ChemMaps(
        **{name: rng.normal(size=(h, w)) for name in MAP_FIELDS},
        valid=np.ones((h, w), bool),
        pixel_size=2.5e-8,
        origin=(0.0, 0.0),
        reference_energy=5480.0,
        delta_f2_v=3.9,
        scattering_table="chantler",
    )
    return Result(
        method="joint",
        maps=maps,
        energies=np.array([5460.0, 5480.0]),
        absorption=np.zeros((k, h, w), np.float32),
        phase=np.zeros((k, h, w), np.float32),
        probes=np.ones((k, 8, 8), np.complex64),
        probe_pixel_size=np.array([1e-7, 1e-7]),
        history={"loss": np.ones(3)},
        config=config,
    )


def test_results_file_round_trip_nested_and_old_flat(tmp_path):
    cfg = _build(NESTED, ["joint.holdout=0.25", 'joint.per_pixel=["a", "b1"]'])
    io_results.write_result(tmp_path / "new.h5", _result({"joint": cfg.to_dict(), "method": "joint"}))
    rec = io_results.read_result(tmp_path / "new.h5").config["joint"]
    assert rec["optim"]["steps"] == 50 and rec["stopping"]["holdout"] == 0.25  # recorded nested
    assert C.build_config(JointConfig, rec, section="joint") == cfg
    assert rec == C.config_to_dict(cfg)
    # printed/recorded TOML reads back to the same config
    assert C.build_section(C.loads_config(C.dumps_toml({"joint": cfg})), "joint") == cfg
    # a results file written before the option groups (a flat record) still reads
    flat = {
        "steps": 50, "seed": 3, "prior": "none", "tv_weight": 1e-3, "lr_probe": 0.02, "probe_start": 5,
        "init": "flat", "memory": "device", "chunk_size": 64, "holdout": 0.25, "per_pixel": ["a", "b1"],
        "log_every": 10, "checkpoint_every": 50, "element": "V", "table": "chantler", "reference_energy": None,
    }  # fmt: skip
    io_results.write_result(tmp_path / "old.h5", _result({"joint": flat, "method": "joint"}))
    old = io_results.read_result(tmp_path / "old.h5").config["joint"]
    assert C.build_config(JointConfig, old, section="joint") == cfg
    assert JointConfig.get_option(old, "per_pixel") == ["a", "b1"] == JointConfig.get_option(rec, "per_pixel")
    assert JointConfig.get_option(old, "optim.steps") == 50 == JointConfig.get_option(rec, "steps")


def test_replace_and_make():
    c = JointConfig.make(steps=10, prior={"mode": "none"})
    assert c.replace(tv_weight=0.3).prior == PriorOptions(mode="none", tv_weight=0.3)
    assert c.replace(optim=OptimOptions(steps=4)).optim.steps == 4
    assert c.replace(reference_energy=5480.0).reference_energy == 5480.0
    with pytest.raises(ConfigError, match="tv_weight and prior.tv_weight"):
        c.replace(tv_weight=0.3, prior={"tv_weight": 0.1})
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        c.replace(steps=-1)


def test_flat_records_of_sweeps_and_checkpoints_still_match():
    """A sweep point finished, or a checkpoint written, before the option groups recorded the
    joint config flat: it must still count as the same configuration (no rerun, resume works),
    and a different value must not."""
    from diffxas.app import pipeline
    from diffxas.app.sweep import summary

    cfg = JointConfig.make(steps=7, tv_weight=0.1, prior="none")
    now = {"joint": C.config_to_dict(cfg), "methods": ["joint"]}
    flat = {"steps": 7, "tv_weight": 0.1, "prior": "none", "per_pixel": list(cfg.spectra.per_pixel)}
    assert summary._same_regrouped({"joint": flat, "methods": ["joint"]}, now)
    assert not summary._same_regrouped({"joint": {**flat, "steps": 8}, "methods": ["joint"]}, now)
    meta = pipeline._checkpoint_meta("joint", cfg, "0" * 64)["config"]
    assert "record" not in meta  # logging intervals do not block a resume
    assert pipeline._same_config("joint", {**flat, "log_every": 3}, meta)
    assert not pipeline._same_config("joint", {**flat, "tv_weight": 0.2}, meta)


def test_config_validation():
    with pytest.raises(ConfigError, match="loss"):
        joint_config.JointConfig.make(loss="l2")
    with pytest.raises(ConfigError, match="per_pixel"):
        joint_config.JointConfig.make(per_pixel=("b2", "zz"))
    with pytest.raises(ConfigError, match="init_result"):
        joint_config.JointConfig.make(init="result")
    with pytest.raises(ConfigError, match="steps"):
        joint_config.JointConfig.make(steps=-1)
    with pytest.raises(ConfigError, match="chemical symbol"):
        joint_config.JointConfig.make(element="mn")
    with pytest.raises(ConfigError, match="probe_fwhm"):
        joint_config.JointConfig.make(probe_fwhm=0.0)


def test_prior_config_validation():
    with pytest.raises(ConfigError, match="prior"):
        joint_config.JointConfig.make(prior="l1")
    with pytest.raises(ConfigError, match="not both"):
        joint_config.JointConfig.make(prior="tv", tv_weight=1.0)
    with pytest.raises(ConfigError, match="prior_strength"):
        joint_config.JointConfig.make(prior_strength=-1.0)
