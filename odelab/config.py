"""Typed run configuration: YAML in, frozen dataclasses out.

A config file holds a top-level `name` and six sections, each a mapping of keys to
values. Every key is optional and falls back to its documented default, so the empty
file is the default config, which trains a small neural ODE on 2-D spirals (written out
in full in `configs/neural_ode_spiral.yaml`):

```yaml
name: spiral_wide
model: {width: 128}
optimizer: {learning_rate: 0.01, schedule: constant}
```

An unknown section or key, a value of the wrong type, a name outside a fixed set of
choices or a value out of range raises `ConfigError` with a one-line message that says
what is wrong and what is valid. Solver and adjoint names stay free strings here:
`odelab.solve` owns those registries and rejects unknown names itself.
"""

import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import tempfile
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml


class ConfigError(ValueError):
    """A config that cannot be used: a missing or unparsable file, an unknown section
    or key, a value of the wrong type, an unknown choice or a malformed override.

    The message is one line that names the offending file, key or value and says what
    is valid, so the CLI can print it as is.
    """


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that reads `3e-3` as a float and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        # PyYAML keeps the last of two equal keys; a duplicated section would silently
        # drop every setting of the first one.
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML implements YAML 1.1, whose floats need a dot: `3e-3` would load as the string
# "3e-3". This resolver is YAML 1.2's float syntax, so it loads as 0.003.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _positive(value) -> bool:
    return value > 0


def _nonnegative(value) -> bool:
    return value >= 0


def _fraction(value) -> bool:
    return 0 <= value < 1


def _zero_or_one(value) -> bool:
    return value in (0, 1)


_LIMIT_TEXT = {
    _positive: "> 0",
    _nonnegative: ">= 0",
    _fraction: "in [0, 1)",
    _zero_or_one: "0 or 1",
}


class _Section:
    """Checks shared by the section dataclasses: types, choices and ranges."""

    _section: ClassVar[str]
    _choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    _limits: ClassVar[dict[str, Callable[[Any], bool]]] = {}

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            where = f"{self._section}.{field.name}"
            value = _check_type(where, getattr(self, field.name), hints[field.name])
            # Frozen: the int -> float conversion has to bypass `__setattr__`.
            object.__setattr__(self, field.name, value)
            choices = self._choices.get(field.name)
            # None is a section's "default" (e.g. the sampler of the model kind).
            if choices is not None and value is not None and value not in choices:
                raise ConfigError(
                    f"`{where}` must be one of {', '.join(choices)}; got {value!r}"
                    + _did_you_mean(value, choices)
                )
            limit = self._limits.get(field.name)
            if limit is not None and value is not None and not limit(value):
                raise ConfigError(
                    f"`{where}` must be {_LIMIT_TEXT[limit]}, got {_short(value)}"
                )


MODEL_KINDS = ("neural_ode", "augmented_neural_ode")
"""Values accepted for `model.kind`."""

ACTIVATIONS = ("tanh", "relu", "softplus", "gelu", "silu", "elu", "sigmoid")
"""Values accepted for `model.activation`: names of functions in `jax.nn`."""

DATA_KINDS = (
    "spirals",
    "moons",
    "eight_gaussians",
    "checkerboard",
    "swiss_roll",
    "irregular",
    "digits",
)
"""Values accepted for `data.kind`: the datasets of `odelab.data`."""

OPTIMIZERS = ("adam", "adamw", "sgd")
"""Values accepted for `optimizer.name`: optax optimisers."""

SCHEDULES = ("constant", "cosine", "warmup_cosine")
"""Values accepted for `optimizer.schedule`."""


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The model: a neural ODE whose vector field is an MLP.

    **Fields:**

    - `kind`: the model, one of `"neural_ode"` or `"augmented_neural_ode"` (the state
        padded with `augment_dims` zeros; Dupont, Doucet, Teh, "Augmented Neural ODEs",
        2019, arXiv:1904.01681). Default `"neural_ode"`.
    - `width`: hidden width of the MLP vector field. Default `64`.
    - `depth`: hidden layers of the MLP, counted as `equinox.nn.MLP` counts them
        (`2` is in → width → width → out). Default `2`.
    - `activation`: activation between layers, a name in `ACTIVATIONS`.
        Default `"tanh"`.
    - `augment_dims`: zero dimensions appended to the state by
        `"augmented_neural_ode"`. Default `0`.
    """

    _section: ClassVar[str] = "model"
    _choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "kind": MODEL_KINDS,
        "activation": ACTIVATIONS,
    }
    _limits: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "width": _positive,
        "depth": _nonnegative,
        "augment_dims": _nonnegative,
    }

    kind: str = "neural_ode"
    width: int = 64
    depth: int = 2
    activation: str = "tanh"
    augment_dims: int = 0


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """The dataset, generated in code from a fixed seed.

    **Fields:**

    - `kind`: the dataset, a name in `DATA_KINDS`. Default `"spirals"`.
    - `n_trajectories`: examples generated (trajectories for the time series, points
        for the 2-D densities). Default `256`.
    - `n_times`: time points per trajectory (time-series datasets only). Default `20`.
    - `noise`: standard deviation of the Gaussian observation noise. Default `0.01`.
    - `direction`: spirals only: `"clockwise"`, `"anticlockwise"` or `"both"` (a
        plain neural ODE cannot fit both from the same start points). Default
        `"clockwise"`.
    - `val_fraction`: fraction of the examples held out for validation, in [0, 1).
        Default `0.2`.
    - `seed`: PRNG seed for generating and splitting the data. Default `0`.
    """

    _section: ClassVar[str] = "data"
    _choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "kind": DATA_KINDS,
        "direction": ("clockwise", "anticlockwise", "both"),
    }
    _limits: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "n_trajectories": _positive,
        "n_times": _positive,
        "noise": _nonnegative,
        "val_fraction": _fraction,
    }

    kind: str = "spirals"
    n_trajectories: int = 256
    n_times: int = 20
    noise: float = 0.01
    direction: str = "clockwise"
    val_fraction: float = 0.2
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """The optax optimiser and its learning-rate schedule.

    **Fields:**

    - `name`: the optimiser, one of `"adam"`, `"adamw"` or `"sgd"`. Default `"adam"`.
    - `learning_rate`: peak learning rate. Default `0.003`.
    - `schedule`: `"constant"`; `"cosine"` (cosine decay to zero over
        `training.steps`); or `"warmup_cosine"` (linear warm-up over `warmup_steps`,
        then cosine decay). Default `"cosine"`.
    - `warmup_steps`: steps of linear warm-up for `"warmup_cosine"`. Default `0`.
    - `weight_decay`: weight-decay coefficient; `0.0` turns it off. Default `0.0`.
    - `grad_clip_norm`: gradients are clipped to this global norm; `None` turns
        clipping off. Default `1.0`.
    """

    _section: ClassVar[str] = "optimizer"
    _choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "name": OPTIMIZERS,
        "schedule": SCHEDULES,
    }
    _limits: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "learning_rate": _positive,
        "warmup_steps": _nonnegative,
        "weight_decay": _nonnegative,
        "grad_clip_norm": _positive,
    }

    name: str = "adam"
    learning_rate: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 1.0


@dataclasses.dataclass(frozen=True)
class SolverConfig(_Section):
    """How the model's ODE is solved and differentiated; passed on to `odelab.solve`,
    which validates the names.

    **Fields:**

    - `name`: the solver, a name `odelab.solve` accepts. Default `"tsit5"`.
    - `adjoint`: how gradients are taken, a name `odelab.solve` accepts.
        Default `"checkpoint"`.
    - `rtol`: relative tolerance of adaptive stepping. Default `0.001`.
    - `atol`: absolute tolerance of adaptive stepping. Default `0.001`.
    - `dt0`: initial step size; `None` lets the solver choose. Default `None`.
    - `steps`: if set, this many fixed steps instead of adaptive stepping.
        Default `None`.
    - `max_steps`: most steps one solve may take. Default `4096`.
    - `joint_batch`: solve a training batch as one state (one step size and error
        norm for all trajectories, as torchdiffeq) instead of each trajectory on its
        own steps; 1.9x faster per step in `odelab bench train-step`, the same result
        with fixed steps. Default `False`.
    """

    _section: ClassVar[str] = "solver"
    _limits: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "rtol": _positive,
        "atol": _positive,
        "dt0": _positive,
        "steps": _positive,
        "max_steps": _positive,
    }

    name: str = "tsit5"
    adjoint: str = "checkpoint"
    rtol: float = 1e-3
    atol: float = 1e-3
    dt0: float | None = None
    steps: int | None = None
    max_steps: int = 4096
    joint_batch: bool = False


REGULARIZERS = (
    "none",
    "error",
    "stiffness",
    "local_error",
    "local_stiffness",
    "kinetic",
    "jacobian",
    "taylor",
)
"""Values accepted for `regularizer.kind` (`odelab.regularizers.KINDS`)."""

WEIGHT_SCHEDULES = ("constant", "linear", "exponential")
"""Values accepted for `regularizer.schedule`."""


@dataclasses.dataclass(frozen=True)
class RegularizerConfig(_Section):
    r"""A regularizer added to the training loss (`odelab.regularizers`).

    The loss of step $s$ of $S$ is $\mathrm{MSE} + w(s) R$, with $R$ of `kind` and
    $w$ going from `weight` to `final_weight` as `schedule` says.

    **Fields:**

    - `kind`: `none`, the solver heuristics `error` ($R_E$) and `stiffness` ($R_S$;
        both need adaptive steps and a discrete adjoint), their one-step estimates
        `local_error` and `local_stiffness` (any adjoint), or the integral baselines
        `kinetic`, `jacobian` (RNODE) and `taylor` (TayNODE). Default `"none"`.
    - `weight`: $w(0)$. Default `0.0`.
    - `final_weight`: $w(S)$; `None` keeps `weight`. Default `None`.
    - `schedule`: `constant`, `linear` or `exponential` (geometric) from `weight`
        to `final_weight`. Default `"constant"`.
    - `sampling`: how the local kinds pick their step: `unbiased` (the step at a
        uniform time) or `biased` (a uniform step). Default `"unbiased"`.
    - `taylor_order`: $K$ of `taylor`. Default `2`.
    """

    _section: ClassVar[str] = "regularizer"
    _choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "kind": REGULARIZERS,
        "schedule": WEIGHT_SCHEDULES,
        "sampling": ("unbiased", "biased"),
    }
    _limits: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "weight": _nonnegative,
        "final_weight": _nonnegative,
        "taylor_order": _positive,
    }

    kind: str = "none"
    weight: float = 0.0
    final_weight: float | None = None
    schedule: str = "constant"
    sampling: str = "unbiased"
    taylor_order: int = 2

    def weight_at(self, step, total: int):
        """$w$ at `step` (0-based, may be traced) of `total` steps."""
        end = self.weight if self.final_weight is None else self.final_weight
        frac = step / max(total, 1)
        if self.schedule == "linear":
            return self.weight + (end - self.weight) * frac
        if self.schedule == "exponential" and self.weight > 0 and end > 0:
            return self.weight * (end / self.weight) ** frac
        return self.weight + 0 * frac


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Section):
    """The training loop.

    **Fields:**

    - `steps`: optimiser steps in the whole run. Default `1000`.
    - `batch_size`: examples per step. Default `64`.
    - `seed`: PRNG seed for initialisation and batching. Default `0`.
    - `eval_every`: steps between validation evaluations. Default `100`.
    - `checkpoint_every`: steps between checkpoints (a final one is always written).
        Default `200`.
    - `log_every`: steps between metric records. Default `10`.
    """

    _section: ClassVar[str] = "training"
    _limits: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "steps": _positive,
        "batch_size": _positive,
        "eval_every": _positive,
        "checkpoint_every": _positive,
        "log_every": _positive,
    }

    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 200
    log_every: int = 10


@dataclasses.dataclass(frozen=True)
class OutputConfig(_Section):
    """Where a run writes; its directory is `<dir>/<name>/`.

    **Fields:**

    - `dir`: parent directory of run directories. Default `"runs"`.
    - `plots`: write PNG plots at the end of training. Default `True`.
    """

    _section: ClassVar[str] = "output"

    dir: str = "runs"
    plots: bool = True


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run: a name and one frozen dataclass per section.

    Build one with `load_config`; change one with `dataclasses.replace`. Configs are
    hashable, so they can be static arguments of `jax.jit`.

    **Fields:**

    - `name`: the run's name and the name of its directory under `output.dir`.
        Default `"neural_ode_spiral"`.
    - `model`: a `ModelConfig`. Default `ModelConfig()`.
    - `data`: a `DataConfig`. Default `DataConfig()`.
    - `optimizer`: an `OptimizerConfig`. Default `OptimizerConfig()`.
    - `solver`: a `SolverConfig`. Default `SolverConfig()`.
    - `training`: a `TrainingConfig`. Default `TrainingConfig()`.
    - `regularizer`: a `RegularizerConfig` (none unless set). Default
        `RegularizerConfig()`.
    - `output`: an `OutputConfig`. Default `OutputConfig()`.
    """

    name: str = "neural_ode_spiral"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    regularizer: RegularizerConfig = dataclasses.field(
        default_factory=RegularizerConfig
    )
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def __post_init__(self):
        name = _check_type("name", self.name, str)
        # The name becomes a directory: it must not escape `output.dir`.
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise ConfigError(
                f"`name` must be a plain directory name (no '/' or '\\'), got {name!r}"
            )
        for section, cls in _SECTIONS.items():
            value = getattr(self, section)
            if not isinstance(value, cls):
                raise ConfigError(
                    f"`{section}` must be a {cls.__name__}, got "
                    f"{type(value).__name__}; build configs from dicts with "
                    "`load_config`"
                )


_SECTIONS: dict[str, type[_Section]] = {
    field.name: typing.get_type_hints(Config)[field.name]
    for field in dataclasses.fields(Config)
    if field.name != "name"
}
_TOP_KEYS = ("name", *_SECTIONS)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word, options) -> str:
    matches = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean `{matches[0]}`?)" if matches else ""


def _type_name(annotation) -> str:
    args = typing.get_args(annotation)
    if not args:
        return annotation.__name__
    return " or ".join("None" if a is type(None) else a.__name__ for a in args)


def _check_type(where: str, value, annotation):
    """Return `value` (an int converted to float where a float is expected), or raise
    `ConfigError` naming `where`, the expected type and the value."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    (base,) = [a for a in args if a is not type(None)] or [annotation]
    if value is None and optional:
        return None
    # `bool` subclasses `int`, but `true` for a step count is a mistake, not a 1.
    if isinstance(value, bool):
        ok = base is bool
    elif base is float:
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, base)
    if not ok:
        raise ConfigError(
            f"`{where}` must be {_type_name(annotation)}, got "
            f"{type(value).__name__} {_short(value)}"
        )
    if base is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"`{where}` must be a finite number, got {value!r}")
    return value


def _unknown_section(section) -> ConfigError:
    return ConfigError(
        f"unknown config section `{section}`; valid: {', '.join(_TOP_KEYS)}"
        + _did_you_mean(section, _TOP_KEYS)
    )


def _check_key(section: str, key, prefix: str = "") -> None:
    names = [field.name for field in dataclasses.fields(_SECTIONS[section])]
    if key not in names:
        raise ConfigError(
            f"{prefix}unknown key `{key}` in config section `{section}`; "
            f"valid keys: {', '.join(names)}" + _did_you_mean(key, names)
        )


def _yaml_error(where: str, error: yaml.YAMLError) -> ConfigError:
    problem = getattr(error, "problem", None) or str(error)
    mark = getattr(error, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return ConfigError(f"{where} is not valid YAML: {' '.join(problem.split())}{at}")


def _read_yaml(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConfigError(f"cannot read config file {str(path)!r}: {reason}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise _yaml_error(f"config file {str(path)!r}", error) from None


def _as_tree(raw) -> dict[str, Any]:
    """A fresh `{"name": ..., section: {key: value}}` dict with known sections only."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"a config must be a mapping with keys {', '.join(_TOP_KEYS)}; "
            f"got {type(raw).__name__} {_short(raw)}"
        )
    tree: dict[str, Any] = {}
    for section, values in raw.items():
        if section == "name":
            tree["name"] = values
        elif section not in _SECTIONS:
            raise _unknown_section(section)
        elif values is None:
            # `model:` with every key commented out.
            tree[section] = {}
        elif not isinstance(values, Mapping):
            raise ConfigError(
                f"config section `{section}` must be a mapping of keys to values, "
                f"got {type(values).__name__} {_short(values)}"
            )
        else:
            tree[section] = dict(values)
    return tree


def _apply_override(tree: dict[str, Any], text: str) -> None:
    key, sep, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts) or len(parts) > 2:
        raise ConfigError(
            f"malformed override {text!r}: expected 'section.key=value' or "
            "'name=value', e.g. 'optimizer.learning_rate=0.01'"
        )
    prefix = f"override {text!r}: "
    if parts == ["name"]:
        section = key = None
    elif len(parts) == 1:
        if parts[0] in _SECTIONS:
            raise ConfigError(
                f"{prefix}set one key of section `{parts[0]}` at a time, "
                f"e.g. '{parts[0]}.{dataclasses.fields(_SECTIONS[parts[0]])[0].name}"
                "=...'"
            )
        raise ConfigError(prefix + str(_unknown_section(parts[0])))
    else:
        section, key = parts
        if section not in _SECTIONS:
            raise ConfigError(prefix + str(_unknown_section(section)))
        _check_key(section, key, prefix)
    try:
        value = yaml.load(value_text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise _yaml_error(f"the value of override {text!r}", error) from None
    if section is None:
        tree["name"] = value
    else:
        tree.setdefault(section, {})[key] = value


def load_config(
    source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()
) -> Config:
    """Read a config from a YAML file or a dict, apply overrides, and check it.

    **Arguments:**

    - `source`: the path of a YAML file, or a mapping of the same shape
        (`{"name": ..., "model": {...}, ...}`). Missing keys take their defaults.
    - `overrides`: strings `"section.key=value"` (or `"name=value"`), applied in order
        after `source`, as `odelab train --set` passes them. The value is read as
        YAML, so `0.01`, `3e-3`, `true` and `null` are a float, a float, a bool and
        `None`; quote a string that would read otherwise (`'data.kind="moons"'`).

    **Returns:**

    A frozen `Config`.

    **Raises:**

    `ConfigError` (a `ValueError`) with a one-line message if the file is missing or
    not valid YAML, its top level is not a mapping, a section or key is unknown (with
    the valid ones and a "did you mean"), a value has the wrong type, a name is not
    one of its choices, a value is out of range, or an override is malformed.

    ```python
    config = load_config("configs/neural_ode_spiral.yaml", ["model.width=128"])
    assert config.model.width == 128
    ```
    """
    if isinstance(overrides, str):
        raise TypeError(
            "`overrides` must be a sequence of 'section.key=value' strings, not one "
            "string; wrap it in a list"
        )
    if isinstance(source, Mapping):
        raw = source
    elif isinstance(source, (str, os.PathLike)):
        raw = _read_yaml(Path(source))
    else:
        raise TypeError(
            "`source` must be a path to a YAML file or a mapping, got "
            f"{type(source).__name__}"
        )
    tree = _as_tree(raw)
    for text in overrides:
        _apply_override(tree, text)
    sections = {}
    for section, cls in _SECTIONS.items():
        values = tree.get(section, {})
        for key in values:
            _check_key(section, key)
        sections[section] = cls(**values)
    if "name" in tree:
        sections["name"] = tree["name"]
    return Config(**sections)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts, `name` first, in the shape `load_config`
    reads: `load_config(config_to_dict(c)) == c`.

    **Arguments:**

    - `config`: a `Config`.

    **Returns:**

    `{"name": str, "model": {...}, "data": {...}, ...}` of Python scalars.
    """
    return dataclasses.asdict(config)


def dump_config(config: Config, path: str | os.PathLike) -> None:
    """Write the config as YAML, atomically: to a temporary file in the same directory,
    then `os.replace`, so a reader never sees half a file and an existing file is
    kept if writing fails. Creates missing parent directories.

    **Arguments:**

    - `config`: a `Config`.
    - `path`: where to write; `load_config(path) == config` afterwards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    atomic_write(os.fspath(path), lambda file: file.write(text.encode("utf-8")))


def write_run(directory: str, model, metrics: dict) -> dict:
    """Write a job's `metrics.json` and `model.eqx` (equinox leaves) into
    `directory`, each atomically; returns the metrics without their `losses`
    history (what the CLI prints)."""
    import equinox as eqx

    os.makedirs(directory, exist_ok=True)
    text = json.dumps(metrics, indent=1).encode()
    atomic_write(os.path.join(directory, "metrics.json"), lambda f: f.write(text))
    atomic_write(
        os.path.join(directory, "model.eqx"),
        lambda f: eqx.tree_serialise_leaves(f, model),
    )
    return {k: v for k, v in metrics.items() if k != "losses"}


def atomic_write(path: str, write) -> None:
    """Write a file all or nothing: `write(file)` into a temporary file in the same
    folder (binary mode), flush it to disk, then rename it over `path`.

    A crash or an exception leaves the old file (if any) untouched and no temporary
    file behind.
    """
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def read_job_config(
    source,
    overrides: Sequence[str],
    sections: Mapping[str, type],
    what: str,
    top: Sequence[str] = ("name",),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a job config (a YAML path or a mapping) made of top-level values (`top`,
    e.g. `name`, `task`) and sections of `_Section` dataclasses, applying
    `section.key=value` (or `name=value`) overrides; returns `(top values given,
    {section: instance})`. Unknown sections and keys, non-mapping sections and
    malformed overrides raise `ConfigError` with a one-line message (and a
    did-you-mean); what each section's dataclass checks, it checks itself. Shared by
    `odelab sample` and the `odelab train` tasks other than the neural ODE."""
    raw = dict(source) if isinstance(source, Mapping) else _read_yaml(Path(source))
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"a {what} config must be a mapping of sections")
    tree: dict[str, Any] = {
        k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()
    }
    for text in overrides:
        key, sep, value = text.partition("=")
        section, dot, field = key.partition(".")
        if not sep or (not dot and section not in top):
            raise ConfigError(f"override {text!r} must look like section.key=value")
        value = yaml.load(value, Loader=_Loader)
        if not dot:
            tree[section] = value
            continue
        if not isinstance(tree.setdefault(section, {}), dict):
            raise ConfigError(f"section `{section}` must be a mapping")
        tree[section][field] = value
    tops = {k: tree.pop(k) for k in top if k in tree}
    built = {}
    for section, values in tree.items():
        if section not in sections:
            valid = [*top, *sections]
            raise ConfigError(
                f"unknown section `{section}`; valid: {', '.join(valid)}"
                + _did_you_mean(section, valid)
            )
        if not isinstance(values, dict):
            raise ConfigError(f"section `{section}` must be a mapping")
        names = [f.name for f in dataclasses.fields(sections[section])]
        for key in values:
            if key not in names:
                raise ConfigError(
                    f"unknown key `{key}` in section `{section}`; valid keys: "
                    f"{', '.join(names)}" + _did_you_mean(key, names)
                )
        built[section] = sections[section](**values)
    if "name" in tops and (not isinstance(tops["name"], str) or not tops["name"]):
        raise ConfigError("`name` must be a non-empty string")
    return tops, built
