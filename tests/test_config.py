"""Tests of diffxas.app.config: TOML loading, typed construction, overrides, recording."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from diffxas.analysis.clustering import ClusterConfig
from diffxas.app import config as C
from diffxas.errors import ConfigError
from diffxas.solvers.joint.config import JointConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclasses.dataclass(frozen=True)
class Inner:
    epochs: int = 10
    alpha: float = 1.0
    start: int | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    energies: tuple[float, ...] = (1.0, 2.0)
    labels: tuple[str, ...] = ("a",)
    k: int | str = "auto"
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_build_nested_and_conversions():
    o = C.build_config(
        Outer,
        {
            "name": "y",
            "flag": True,
            "energies": [5420, 5466.5],
            "labels": "p, q",
            "k": 4,
            "inner": {"epochs": 3, "start": "none", "alpha": 2},
        },
    )
    assert o == Outer(
        name="y",
        flag=True,
        energies=(5420.0, 5466.5),
        labels=("p", "q"),
        k=4,
        inner=Inner(epochs=3, alpha=2.0, start=None),
    )
    assert isinstance(o.energies, tuple) and isinstance(o.energies[0], float)
    assert C.build_config(Outer, {"k": "auto"}).k == "auto"
    assert C.build_config(Outer, {"inner": {"epochs": 5.0}}).inner.epochs == 5  # integral float ok
    # a base instance supplies the unspecified values, nested too
    base = Outer(name="base", inner=Inner(epochs=7, alpha=0.5))
    o = C.build_config(Outer, {"inner": {"epochs": 8}}, base=base)
    assert o.name == "base" and o.inner == Inner(epochs=8, alpha=0.5)
    assert C.build_config(Outer, {}) == Outer()


@pytest.mark.parametrize(
    "mapping, words",
    [
        ({"nmae": 1}, ["[outer] unknown key 'nmae'", "valid keys: name, flag, energies, labels, k, inner"]),
        ({"inner": {"epochz": 1}}, ["[outer.inner] unknown key 'epochz'", "valid keys: epochs, alpha, start"]),
        ({"flag": "yes"}, ["[outer] flag: expected true or false, got 'yes' (str)"]),
        ({"name": 3}, ["[outer] name: expected a string"]),
        ({"energies": [1, "a"]}, ["[outer] energies: expected a list of a number (item 1"]),
        ({"energies": 3.0}, ["[outer] energies: expected a list of a number, got 3.0"]),
        ({"inner": {"epochs": 1.5}}, ["[outer.inner] epochs: expected an integer, got 1.5"]),
        ({"inner": {"epochs": True}}, ["[outer.inner] epochs: expected an integer, got True (bool)"]),
        ({"inner": 3}, ["[outer] inner: expected a table (Inner), got 3"]),
        ({"inner": {"epochs": 0}}, ["[outer.inner] epochs must be >= 1, got 0"]),
        ({"k": 1.5}, ["[outer] k: expected an integer or a string"]),
    ],
)
def test_build_errors(mapping, words):
    with pytest.raises(ConfigError) as e:
        C.build_config(Outer, mapping, section="outer")
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_real_config_classes():
    j = C.build_config(
        JointConfig, {"steps": 5, "per_pixel": ["a", "b1"], "batch_size": "none", "reference_energy": 5420}
    )
    assert j.optim.steps == 5 and j.spectra.per_pixel == ("a", "b1") and j.optim.batch_size is None
    assert j.reference_energy == 5420.0
    with pytest.raises(ConfigError, match=r"^\[joint.optim\] steps must be >= 0"):
        C.build_config(JointConfig, {"steps": -1}, section="joint")
    c = C.build_config(ClusterConfig, {"k": 6, "weight": "none", "features": ["edge_energy", "n_v"]})
    assert c.k == 6 and c.weight is None and c.features == ("edge_energy", "n_v")
    with pytest.raises(ConfigError, match="unknown cluster feature"):
        C.build_config(ClusterConfig, {"features": ["nope"]}, section="cluster")


def test_sim_config_uses_preset():
    from diffxas.simulate.presets import preset

    s = C.sim_config({"preset": "tiny", "seed": 3, "energies": [5420, 5480, 5500]})
    assert s == dataclasses.replace(preset("tiny"), seed=3, energies=(5420.0, 5480.0, 5500.0))
    assert C.sim_config({}).preset == "small"
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        C.sim_config({"preset": "nope"})
    with pytest.raises(ConfigError, match=r"\[simulate\] unknown key 'frame_sz'"):
        C.sim_config({"preset": "tiny", "frame_sz": 3})
    with pytest.raises(ConfigError, match="energies must be in eV"):
        C.sim_config({"preset": "tiny", "energies": [8.7e-16, 8.8e-16]})


def test_load_config(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[joint]\nsteps = 5\nper_pixel = ["a", "b1"]\n\n[cluster]\nk = 4\n\n[simulate]\npreset = "tiny"\n')
    m = C.load_config(p)
    assert m == {"joint": {"steps": 5, "per_pixel": ["a", "b1"]}, "cluster": {"k": 4}, "simulate": {"preset": "tiny"}}
    C.validate_config(m)
    assert C.build_section(m, "joint").optim.steps == 5
    assert C.build_section(m, "cluster").k == 4
    assert C.build_section(m, "simulate").frame_size == 32
    assert C.build_section({}, "joint") == JointConfig()


@pytest.mark.parametrize(
    "text, words",
    [
        ("[joint\nsteps = 5\n", ["invalid TOML"]),
        ("steps = 5\n", ["key 'steps' must be inside a section"]),
        ("[jiont]\nsteps = 5\n", ["unknown section [jiont]", "valid sections: simulate, twostep, joint, cluster"]),
        ("joint = 5\n", ["[joint] must be a table"]),
    ],
)
def test_load_config_errors(tmp_path, text, words):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        C.load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    for w in words:
        assert w in msg, msg


def test_load_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        C.load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        C.load_config(tmp_path)
    b = tmp_path / "bin.toml"
    b.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match="not a text"):
        C.load_config(b)


def test_validate_reports_unknown_keys():
    with pytest.raises(ConfigError, match=r"\[joint\] unknown key 'stepz'"):
        C.validate_config({"joint": {"stepz": 1}})
    with pytest.raises(ConfigError, match=r"\[cluster\] k: expected"):
        C.validate_config({"cluster": {"k": [1]}})


def test_apply_overrides():
    base = {"joint": {"steps": 3, "loss": "amplitude"}}
    out = C.apply_overrides(base, {"joint.steps": 50, "cluster.k": 4, "twostep.epie.epochs": 7})
    assert out == {"joint": {"steps": 50, "loss": "amplitude"}, "cluster": {"k": 4}, "twostep": {"epie": {"epochs": 7}}}
    assert base == {"joint": {"steps": 3, "loss": "amplitude"}}  # not modified
    assert C.apply_overrides({}, {"steps": 9}, default_section="joint") == {"joint": {"steps": 9}}
    assert C.apply_overrides(None, [("joint.seed", 1)]) == {"joint": {"seed": 1}}
    with pytest.raises(ConfigError, match="needs a section"):
        C.apply_overrides({}, {"steps": 9})
    with pytest.raises(ConfigError, match="unknown section 'jont'"):
        C.apply_overrides({}, {"jont.steps": 9})
    with pytest.raises(ConfigError, match="is a value, not a table"):
        C.apply_overrides({"joint": {"steps": 3}}, {"joint.steps.x": 1})
    with pytest.raises(ConfigError, match="bad override key"):
        C.apply_overrides({}, {"joint..steps": 1})
    # the result builds, and an unknown key is reported when the section is built
    assert C.build_section(C.apply_overrides({}, {"joint.steps": 2}), "joint").optim.steps == 2
    with pytest.raises(ConfigError, match=r"\[joint\] unknown key 'stepz'"):
        C.build_section(C.apply_overrides({}, {"joint.stepz": 2}), "joint")


def test_parse_overrides():
    got = C.parse_overrides(
        [
            "joint.steps=50",
            "init=flat",
            "lr_amp = 1e-3",
            "simulate.energies=[5420, 5480]",
            "cluster.features=edge_energy,n_v",
            'joint.table="chantler"',
            "joint.tv_weight=0",
            "cluster.weight=none",
            "joint.per_pixel=[]",
        ],
        default_section="joint",
    )
    assert got == {
        "joint.steps": 50,
        "joint.init": "flat",
        "joint.lr_amp": 1e-3,
        "simulate.energies": [5420, 5480],
        "cluster.features": "edge_energy,n_v",
        "joint.table": "chantler",
        "joint.tv_weight": 0,
        "cluster.weight": "none",
        "joint.per_pixel": [],
    }
    m = C.apply_overrides({}, got)
    assert C.build_section(m, "cluster").features == ("edge_energy", "n_v")
    assert C.build_section(m, "cluster").weight is None
    for bad, words in [
        ("joint.steps", "expected KEY=VALUE"),
        ("=5", "expected KEY=VALUE"),
        ("joint.steps=", "empty value"),
        ("a b=1", "bad override key"),
    ]:
        with pytest.raises(ConfigError, match=words):
            C.parse_overrides([bad], default_section="joint")
    with pytest.raises(ConfigError, match="needs a section"):
        C.parse_overrides(["steps=1"])
    with pytest.raises(ConfigError, match="unknown section 'jont'"):
        C.parse_overrides(["jont.steps=1"])
    # keys relative to the default section, nested too; a typo is reported when built
    assert C.parse_overrides(["epie.epochs=5"], "twostep") == {"twostep.epie.epochs": 5}
    m = C.apply_overrides({}, C.parse_overrides(["jont.steps=1"], "joint"))
    with pytest.raises(ConfigError, match=r"\[joint\] unknown key 'jont'"):
        C.build_section(m, "joint")


def test_config_to_dict_and_toml_roundtrip():
    o = Outer(energies=(1.0, 2.5), inner=Inner(start=None))
    d = C.config_to_dict(o)
    assert d == {
        "name": "x",
        "flag": False,
        "energies": [1.0, 2.5],
        "labels": ["a"],
        "k": "auto",
        "inner": {"epochs": 10, "alpha": 1.0, "start": None},
    }
    import json

    json.dumps(d)
    text = C.dumps_toml({"joint": JointConfig.make(steps=7), "cluster": ClusterConfig(weight=None)})
    m = C.loads_config(text)
    assert C.build_section(m, "joint") == JointConfig.make(steps=7)
    assert C.build_section(m, "cluster") == ClusterConfig(weight=None)
    # nested tables round-trip through build_config
    t = C.dumps_toml({"joint": o})  # any dataclass; written as [joint] + [joint.inner]
    assert "[joint.inner]" in t
    back = C.build_config(Outer, C.loads_config(t)["joint"])
    assert back == o


@pytest.mark.parametrize("name", ["joint.toml", "twostep.toml"])
def test_examples_parse(name):
    m = C.load_config(EXAMPLES / name)
    assert m
    C.validate_config(m)  # the twostep section is skipped while diffxas.solvers.twostep.run is absent


def test_examples_are_the_defaults():
    """examples/*.toml document the defaults: keep them in sync with the config classes."""
    m = C.load_config(EXAMPLES / "joint.toml")
    assert C.build_section(m, "joint") == JointConfig(), "examples/joint.toml no longer lists the JointConfig defaults"
    assert C.build_section(m, "cluster") == ClusterConfig()
    try:
        ts = C.section_class("twostep")
    except ConfigError:
        pytest.skip("diffxas.solvers.twostep.run not available")
    m = C.load_config(EXAMPLES / "twostep.toml")
    assert C.build_section(m, "twostep") == ts(), "examples/twostep.toml no longer lists the TwoStepConfig defaults"


def test_set_iterations_scales_the_epie_schedule():
    from diffxas.app import pipeline as demo_pipeline

    assert demo_pipeline.set_iterations({}, "joint", 7) == {"joint": {"steps": 7}}
    try:
        ts = C.section_class("twostep")
    except ConfigError:
        pytest.skip("diffxas.solvers.twostep.run not available")
    base = ts().epie
    for n in (1, 5, 30, base.epochs, 3 * base.epochs):
        e = C.build_section(demo_pipeline.set_iterations({}, "two-step", n), "twostep").epie  # always valid
        assert e.epochs == n
        for name in demo_pipeline.EPOCH_SCHEDULE:
            v0, v = getattr(base, name), getattr(e, name)
            if v0 is None:
                assert v is None
            elif name == "kk_every":
                assert v == max(1, round(v0 * n / base.epochs))
            else:
                assert v == min(max(round(v0 * n / base.epochs), 0), n - 1)
    # explicitly configured schedule values are kept
    m = demo_pipeline.set_iterations({"twostep": {"epie": {"kk_start": 2}}}, "two-step", 10)
    assert C.build_section(m, "twostep").epie.kk_start == 2
