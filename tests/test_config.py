import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from odelab.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    OutputConfig,
    SolverConfig,
    TrainingConfig,
    config_to_dict,
    dump_config,
    load_config,
)


DEFAULT_YAML = (
    Path(__file__).resolve().parents[1] / "configs" / "neural_ode_spiral.yaml"
)
CLASSES = [
    Config,
    ModelConfig,
    DataConfig,
    OptimizerConfig,
    SolverConfig,
    TrainingConfig,
    OutputConfig,
]


def _documented_fields(cls) -> dict[str, str]:
    """`{field: description}` from the `**Fields:**` list of `cls`'s docstring."""
    text = cls.__doc__.split("**Fields:**", 1)[1]
    entries = re.findall(r"^\s*- `(\w+)`: (.*?)(?=^\s*- `|\Z)", text, re.M | re.S)
    return {name: " ".join(body.split()) for name, body in entries}


def _default_text(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        return f"{field.default_factory.__name__}()"
    value = field.default
    return f'"{value}"' if isinstance(value, str) else repr(value)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_documented_with_its_default(cls):
    documented = _documented_fields(cls)
    fields = dataclasses.fields(cls)
    assert list(documented) == [field.name for field in fields]
    for field in fields:
        assert f"Default `{_default_text(field)}`." in documented[field.name], (
            field.name
        )


def test_defaults():
    config = load_config({})
    assert config == Config()
    assert config.name == "neural_ode_spiral"
    assert (config.model.kind, config.model.width, config.model.depth) == (
        "neural_ode",
        64,
        2,
    )
    assert config.data.kind == "spirals"
    assert config.optimizer.learning_rate == 3e-3
    assert config.solver.dt0 is None and config.solver.max_steps == 4096
    assert config.training.steps == 1000
    assert config.output.plots is True


def test_yaml_file_equals_defaults():
    assert load_config(DEFAULT_YAML) == Config()
    # Written out in full: every key of every section is spelled in the file.
    raw = yaml.safe_load(DEFAULT_YAML.read_text())
    assert raw == config_to_dict(Config())


def test_round_trip_dict_config_dict():
    tree = config_to_dict(Config())
    tree["name"] = "other"
    tree["model"].update(kind="augmented_neural_ode", augment_dims=3, width=32)
    tree["optimizer"].update(name="sgd", grad_clip_norm=None, learning_rate=0.5)
    tree["solver"].update(dt0=0.1, steps=40)
    tree["output"]["plots"] = False
    config = load_config(tree)
    assert config_to_dict(config) == tree
    assert load_config(config_to_dict(config)) == config


def test_dict_input_is_not_mutated():
    tree = {"model": {"width": 8}}
    load_config(tree, ["model.depth=3"])
    assert tree == {"model": {"width": 8}}


def test_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "name: small\n"
        "model: {width: 16}\n"
        "optimizer:\n  learning_rate: 3e-3\n  schedule: constant\n"
        "solver:\n  steps: 50\n"
    )
    config = load_config(path)
    assert config.name == "small"
    assert config.model.width == 16 and config.model.depth == 2
    # PyYAML alone reads `3e-3` as a string; the config loader reads YAML 1.2 floats.
    assert config.optimizer.learning_rate == 3e-3
    assert config.optimizer.schedule == "constant"
    assert config.solver.steps == 50
    assert load_config(str(path)) == config


@pytest.mark.parametrize(
    "text", ["", "# only a comment\n", "model:\n  # width: 3\n"], ids=repr
)
def test_empty_file_and_empty_section_are_defaults(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert load_config(path) == Config()


def test_dump_config_round_trip_and_atomic(tmp_path):
    config = load_config({}, ["name=dumped", "solver.dt0=1e-8", "model.width=7"])
    path = tmp_path / "nested" / "config.yaml"
    dump_config(config, path)
    assert load_config(path) == config
    path.write_text("stale")
    dump_config(Config(), path)
    assert load_config(path) == Config()
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize(
    "override, section, key, expected",
    [
        ("model.width=128", "model", "width", 128),
        ("optimizer.learning_rate=0.01", "optimizer", "learning_rate", 0.01),
        ("optimizer.learning_rate=1e-4", "optimizer", "learning_rate", 1e-4),
        ("optimizer.learning_rate=1", "optimizer", "learning_rate", 1.0),
        ("output.plots=false", "output", "plots", False),
        ("optimizer.grad_clip_norm=null", "optimizer", "grad_clip_norm", None),
        ("solver.steps=100", "solver", "steps", 100),
        ("data.kind=moons", "data", "kind", "moons"),
        ("output.dir = /tmp/x", "output", "dir", "/tmp/x"),
    ],
)
def test_overrides(override, section, key, expected):
    value = getattr(getattr(load_config({}, [override]), section), key)
    assert value == expected and type(value) is type(expected)


def test_overrides_apply_in_order_after_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {width: 16}\n")
    overrides = ["model.width=32", "name=wide", "model.width=48", "training.seed=7"]
    config = load_config(path, overrides)
    assert (config.name, config.model.width, config.training.seed) == ("wide", 48, 7)


def test_int_accepted_where_float_expected():
    config = load_config({"data": {"noise": 0}, "solver": {"dt0": 1}})
    assert config.data.noise == 0.0 and type(config.data.noise) is float
    assert type(config.solver.dt0) is float


def test_frozen_and_hashable():
    config = load_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.width = 3  # type: ignore[misc]
    assert hash(config) == hash(Config())
    wider = dataclasses.replace(
        config, model=dataclasses.replace(config.model, width=8)
    )
    assert wider.model.width == 8 and config.model.width == 64


def test_direct_construction_is_checked():
    with pytest.raises(ConfigError, match=r"`model\.width` must be int, got str"):
        ModelConfig(width="64")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"`model` must be a ModelConfig, got dict"):
        Config(model={"width": 3})  # type: ignore[arg-type]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(path)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


def test_unparsable_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel:\n  width: 3\n   depth: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*not valid YAML.*line 4") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_duplicate_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model: {width: 3}\ndata: {}\nmodel: {depth: 1}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'model'.*line 3"):
        load_config(path)


@pytest.mark.parametrize("raw", [[1, 2], "text", 3])
def test_top_level_not_a_mapping(tmp_path, raw):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"must be a mapping with keys name, model"):
        load_config(path)


def test_section_not_a_mapping():
    with pytest.raises(ConfigError, match=r"section `model` must be a mapping.*int 3"):
        load_config({"model": 3})


def test_unknown_section():
    with pytest.raises(
        ConfigError,
        match=r"unknown config section `modle`; valid: name, model, data, optimizer, "
        r"solver, training, regularizer, output \(did you mean `model`\?\)",
    ):
        load_config({"modle": {}})


def test_unknown_key_names_key_section_valid_keys_and_suggestion():
    with pytest.raises(
        ConfigError,
        match=r"unknown key `widht` in config section `model`; valid keys: kind, "
        r"width, depth, activation, augment_dims \(did you mean `width`\?\)",
    ):
        load_config({"model": {"widht": 3}})


def test_unknown_key_without_close_match():
    with pytest.raises(ConfigError, match=r"unknown key `zzz`.*augment_dims$"):
        load_config({"model": {"zzz": 3}})


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"model": {"width": "wide"}}, r"`model\.width` must be int, got str 'wide'"),
        ({"model": {"width": 64.0}}, r"`model\.width` must be int, got float 64\.0"),
        (
            {"training": {"steps": True}},
            r"`training\.steps` must be int, got bool True",
        ),
        ({"data": {"noise": "low"}}, r"`data\.noise` must be float, got str 'low'"),
        ({"data": {"noise": False}}, r"`data\.noise` must be float, got bool False"),
        ({"output": {"plots": 1}}, r"`output\.plots` must be bool, got int 1"),
        ({"output": {"dir": None}}, r"`output\.dir` must be str, got NoneType None"),
        (
            {"solver": {"steps": 1.5}},
            r"`solver\.steps` must be int or None, got float 1\.5",
        ),
        (
            {"optimizer": {"grad_clip_norm": "x"}},
            r"`optimizer\.grad_clip_norm` must be float or None, got str 'x'",
        ),
        ({"name": 3}, r"`name` must be str, got int 3"),
        ({"solver": {"rtol": float("nan")}}, r"`solver\.rtol` must be a finite"),
    ],
)
def test_wrong_type(tree, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tree)


@pytest.mark.parametrize(
    "tree, message",
    [
        (
            {"optimizer": {"name": "adamm"}},
            r"`optimizer\.name` must be one of adam, adamw, sgd; got 'adamm' "
            r"\(did you mean `adam`\?\)",
        ),
        (
            {"optimizer": {"schedule": "linear"}},
            r"`optimizer\.schedule` must be one of constant, cosine, warmup_cosine",
        ),
        (
            {"model": {"kind": "neural_sde"}},
            r"`model\.kind` must be one of neural_ode, augmented_neural_ode",
        ),
        (
            {"data": {"kind": "spiral"}},
            r"`data\.kind` must be one of spirals, moons, .*digits; got 'spiral' "
            r"\(did you mean `spirals`\?\)",
        ),
        ({"model": {"activation": "tahn"}}, r"`model\.activation` must be one of"),
    ],
)
def test_unknown_choice(tree, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tree)


def test_solver_and_adjoint_names_are_free_strings():
    config = load_config({"solver": {"name": "my_solver", "adjoint": "mine"}})
    assert (config.solver.name, config.solver.adjoint) == ("my_solver", "mine")


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"training": {"batch_size": 0}}, r"`training\.batch_size` must be > 0, got 0"),
        ({"optimizer": {"learning_rate": -1}}, r"`optimizer\.learning_rate` must be"),
        ({"data": {"val_fraction": 1}}, r"`data\.val_fraction` must be in \[0, 1\)"),
        ({"solver": {"steps": 0}}, r"`solver\.steps` must be > 0"),
        ({"name": "a/b"}, r"`name` must be a plain directory name"),
        ({"name": ""}, r"`name` must be a plain directory name"),
    ],
)
def test_out_of_range(tree, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tree)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.width", r"malformed override 'model\.width': expected"),
        ("=3", r"malformed override '=3'"),
        ("model.=3", r"malformed override"),
        ("a.b.c=3", r"malformed override"),
        (
            "model.widht=3",
            r"override 'model\.widht=3': unknown key `widht` in config section "
            r"`model`.*\(did you mean `width`\?\)",
        ),
        ("modle.width=3", r"override 'modle\.width=3': unknown config section `modle`"),
        ("model=3", r"set one key of section `model` at a time, e\.g\. 'model\.kind"),
        ("nmae=x", r"unknown config section `nmae`.*\(did you mean `name`\?\)"),
        ("model.width=[1,", r"value of override 'model\.width=\[1,' is not valid YAML"),
        ("model.width=abc", r"`model\.width` must be int, got str 'abc'"),
    ],
)
def test_bad_override(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config({}, [override])


def test_overrides_must_be_a_sequence_not_a_string():
    with pytest.raises(TypeError, match="wrap it in a list"):
        load_config({}, "model.width=3")  # type: ignore[arg-type]


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_regularizer_kinds_match_the_library():
    # config.py names them without importing JAX; the two lists must agree.
    from odelab.config import REGULARIZERS
    from odelab.regularizers import KINDS

    assert REGULARIZERS == KINDS
