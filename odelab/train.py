r"""The training loop: a config in, a trained model, metrics, checkpoints and plots out.

Data flow of one training step (one `eqx.filter_jit`-ed function, `_train_step`):

```
config ─► dataset (odelab.data.spirals → split) ─► train set (arrays)
step s ─► key_s = fold_in(base_key, s) ─► sample_batch(train, batch_size, key_s)
batch.ys[:, 0] ─► vmap(model)(batch.ts, ·) ─► odelab.solve (solver, adjoint) ─► ŷ
loss = mean((ŷ - batch.ys)²) + w(step) R ─► eqx.filter_value_and_grad ─► optax update
```

The task is trajectory fitting: from the first observation of each trajectory the model
solves to every observation time, and the loss is the mean squared error against the
data. Everything the step depends on is in the checkpoint (parameters, optimiser state
with its schedule count, the step and the base PRNG key), and the batch of step $s$ is a
function of the base key and $s$ only, so a resumed run is bitwise identical to an
uninterrupted one on the same device.

A run writes to `<out_root or output.dir>/<name>/`:

- `config.yaml`: the config (`odelab.config.dump_config`);
- `metrics.jsonl`: one JSON object per logged step (`step`, `loss` (the MSE),
  `grad_norm`, `steps_per_s`, `nfe_per_step`, `regularizer` ($R$, when one is
  configured), and `val_mse`/`nfe` at evaluations);
- `checkpoint.eqx` + `checkpoint.json`: the last good state and its config, each
  replaced atomically;
- `loss.png`, `trajectories.png` if `output.plots`.
"""

import functools
import json
import math
import os
import time
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from . import data as _data
from ._engine import _MAX_STEPS_MSG
from .config import Config, ConfigError, atomic_write, config_to_dict, dump_config
from .models import AugmentedNeuralODE, NeuralODE
from .regularizers import check_kind, regularized_solution


CHECKPOINT = "checkpoint.eqx"
"""File name of the checkpoint's arrays in the run directory."""

CHECKPOINT_META = "checkpoint.json"
"""File name of the checkpoint's sidecar (config and step)."""

METRICS = "metrics.jsonl"
"""File name of the metrics log in the run directory."""

_TRAINABLE_DATA = ("spirals",)


def run_dir(config: Config, out_root: str | None = None) -> str:
    """The directory a run writes to: `os.path.join(out_root or output.dir, name)`."""
    return os.path.join(out_root or config.output.dir, config.name)


def make_dataset(config: Config) -> tuple[_data.Dataset, _data.Dataset]:
    """The `(train, val)` datasets of `config.data`, generated from `data.seed`.

    With `val_fraction == 0` nothing is held out and `val` is the training set.

    **Raises:** `ConfigError` if `data.kind` is not a trajectory dataset.
    """
    section = config.data
    if section.kind not in _TRAINABLE_DATA:
        raise ConfigError(
            f"`data.kind` {section.kind!r} is not trainable by the neural-ODE task yet; "
            f"use one of {', '.join(_TRAINABLE_DATA)}"
        )
    data_key, split_key = jr.split(jr.key(section.seed))
    dataset = _data.spirals(
        data_key,
        section.n_trajectories,
        section.n_times,
        noise=section.noise,
        direction=section.direction,
    )
    if section.val_fraction == 0:
        return dataset, dataset
    return _data.split(dataset, section.val_fraction, split_key)


def make_model(config: Config, key) -> NeuralODE | AugmentedNeuralODE:
    """The model of `config.model`, solving as `config.solver` says (state dim 2)."""
    section, solver = config.model, config.solver
    activation = jnp.tanh if section.activation == "tanh" else None
    activation = activation or getattr(jax.nn, section.activation)
    kwargs = dict(
        key=key,
        activation=activation,
        solver=solver.name,
        adjoint=solver.adjoint,
        rtol=solver.rtol,
        atol=solver.atol,
        dt0=solver.dt0,
        steps=solver.steps,
        max_steps=solver.max_steps,
        joint_batch=solver.joint_batch,
    )
    if section.kind == "augmented_neural_ode":
        return AugmentedNeuralODE(
            2, section.width, section.depth, section.augment_dims, **kwargs
        )
    return NeuralODE(2, section.width, section.depth, **kwargs)


@functools.lru_cache(maxsize=16)
def make_optimizer(
    config: Config,
) -> optax.GradientTransformation:
    """The optax optimiser of `config.optimizer`, scheduled over `training.steps`.

    Cached per config: the same config gives the same object, so a second `train`
    reuses the compiled step.
    """
    section, steps = config.optimizer, config.training.steps
    lr = section.learning_rate
    if section.schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, steps)
    elif section.schedule == "warmup_cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, lr, section.warmup_steps, max(steps, section.warmup_steps + 1)
        )
    if section.name == "adam":
        optimizer = optax.adam(lr)
    elif section.name == "adamw":
        optimizer = optax.adamw(lr, weight_decay=section.weight_decay)
    else:
        optimizer = optax.sgd(lr)
    if section.grad_clip_norm is not None:
        optimizer = optax.chain(
            optax.clip_by_global_norm(section.grad_clip_norm), optimizer
        )
    return optimizer


def data_mesh(batch_size: int) -> Mesh | None:
    """A one-axis device mesh `("batch",)` over all visible devices, or `None` for one.

    Multi-host runs call `jax.distributed.initialize()` before training; the mesh then
    spans every process's devices.

    **Raises:** `ConfigError` if the batch does not split evenly over the devices.
    """
    devices = jax.devices()
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ConfigError(
            f"`training.batch_size` ({batch_size}) must be a multiple of the "
            f"{len(devices)} devices to shard the batch over them"
        )
    return Mesh(np.asarray(devices), ("batch",))


def _replicate(tree, mesh):
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.device_put(x, replicated) if eqx.is_array(x) else x, tree
    )


def _mse(model, ts, ys):
    return _mse_nfe(model, ts, ys)[0]


def _mse_nfe(model, ts, ys):
    sol = model.batch_solution(ts, ys[:, 0])
    predicted = jnp.swapaxes(sol.ys, 0, 1)
    if isinstance(model, AugmentedNeuralODE):
        predicted = predicted[..., : model.dim]
    # Per trajectory (vmap), the step costs the largest of the evaluation counts;
    # jointly, the batch's one count.
    return jnp.mean((predicted - ys) ** 2), sol.stats["nfe"]


def _regularized_loss(model, ts, ys, regularizer, weight, key):
    # MSE + w R (odelab.regularizers); returns (loss, (mse, R, nfe)).
    predicted, r, nfe = regularized_solution(
        model,
        ts,
        ys[:, 0],
        kind=regularizer.kind,
        key=key,
        sampling=regularizer.sampling,
        taylor_order=regularizer.taylor_order,
    )
    predicted = jnp.swapaxes(predicted, 0, 1)[..., : ys.shape[-1]]
    mse = jnp.mean((predicted - ys) ** 2)
    return mse + weight * r, (mse, r, nfe)


@eqx.filter_jit
def _train_step(
    model,
    opt_state,
    train_set,
    base_key,
    step,
    optimizer,
    batch_size,
    mesh,
    regularizer=None,
    total=1,
):
    step_key = jr.fold_in(base_key, step)
    batch = _data.sample_batch(train_set, batch_size, step_key)
    ys = batch.ys
    if mesh is not None:
        # Data parallelism: the batch axis is split over the devices, everything else
        # is replicated; XLA inserts the all-reduce of the loss and gradients.
        ys = jax.lax.with_sharding_constraint(ys, NamedSharding(mesh, P("batch")))
    if regularizer is None or regularizer.kind == "none":
        (loss, nfe), grads = eqx.filter_value_and_grad(_mse_nfe, has_aux=True)(
            model, batch.ts, ys
        )
        r = jnp.zeros((), loss.dtype)
    else:
        weight = regularizer.weight_at(step, total)
        (_, (loss, r, nfe)), grads = eqx.filter_value_and_grad(
            _regularized_loss, has_aux=True
        )(model, batch.ts, ys, regularizer, weight, jr.fold_in(step_key, 1))
    updates, opt_state = optimizer.update(
        grads, opt_state, eqx.filter(model, eqx.is_array)
    )
    model = eqx.apply_updates(model, updates)
    return model, opt_state, loss, optax.tree.norm(grads), nfe, r


def _diagnose(model, train_set, base_key, step, batch_size) -> str:
    # Name the cause of a non-finite loss from the solve's own result code (which
    # works whether run-time checks raise or, under `odelab train`, trace as NaN; see
    # `_checks.errors_as_nan`): re-solve the same batch without throwing.
    batch = _data.sample_batch(train_set, batch_size, jr.fold_in(base_key, step))
    sol = jax.vmap(lambda y0: model.solution(batch.ts, y0, throw=False))(batch.ys[:, 0])
    codes = np.unique(np.asarray(sol.result._value))
    failed = [c for c in codes if c != diffrax.RESULTS.successful._value]
    if failed:
        if failed[0] == diffrax.RESULTS.max_steps_reached._value:
            message = _MAX_STEPS_MSG
        else:
            message = diffrax.RESULTS._index_to_message[int(failed[0])]
        return f" (the solve failed: {message})"
    if not np.all(np.isfinite(np.asarray(sol.ys))):
        return " (the solution contains NaN or inf: the vector field blew up)"
    return ""


@eqx.filter_jit
def _evaluate(model, val_set):
    mse = _mse(model, val_set.ts, val_set.ys)
    nfe = model.solution(val_set.ts, val_set.ys[0, 0]).stats["nfe"]
    return mse, nfe


def _save_checkpoint(directory, config, model, opt_state, step, base_key) -> None:
    state = (model, opt_state, jnp.asarray(step, jnp.int32), jr.key_data(base_key))
    atomic_write(
        os.path.join(directory, CHECKPOINT),
        lambda file: eqx.tree_serialise_leaves(file, state),
    )
    meta = {"step": step, "config": config_to_dict(config)}
    text = json.dumps(meta, indent=2).encode()
    atomic_write(
        os.path.join(directory, CHECKPOINT_META), lambda file: file.write(text)
    )


def _differing_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def load_checkpoint(config: Config, directory: str):
    """Read the checkpoint of the run in `directory`, trained with `config`.

    **Returns:** `(model, opt_state, step, base_key)`.

    **Raises:** `FileNotFoundError` if there is no checkpoint; `ConfigError` if it was
    written with a different `model` section (naming the differing keys).
    """
    path = os.path.join(directory, CHECKPOINT)
    meta_path = os.path.join(directory, CHECKPOINT_META)
    if not (os.path.exists(path) and os.path.exists(meta_path)):
        raise FileNotFoundError(
            f"cannot resume: no checkpoint at {path!r}; train without resume first"
        )
    with open(meta_path, encoding="utf-8") as file:
        meta = json.load(file)
    old_model = meta["config"]["model"]
    new_model = config_to_dict(config)["model"]
    keys = _differing_keys(old_model, new_model)
    if keys:
        changes = ", ".join(
            f"{k} {old_model.get(k)!r} -> {new_model.get(k)!r}" for k in keys
        )
        raise ConfigError(
            f"cannot resume from {path!r}: its `model` section differs in {changes}; "
            "use the original model config or a new run name"
        )
    like_model = make_model(config, jr.key(0))
    like_opt = make_optimizer(config).init(eqx.filter(like_model, eqx.is_array))
    like = (
        like_model,
        like_opt,
        jnp.asarray(0, jnp.int32),
        jr.key_data(jr.key(0)),
    )
    model, opt_state, step, key_data = eqx.tree_deserialise_leaves(path, like)
    return model, opt_state, int(step), jr.wrap_key_data(key_data)


def _kept(checkpoint_path: str) -> str:
    if os.path.exists(checkpoint_path):
        return f"the last good checkpoint is kept at {checkpoint_path!r}"
    return "no checkpoint was written yet"


def _error_line(error: Exception) -> str:
    """The message of an `EquinoxRuntimeError` without equinox's debugging advice."""
    prefix = "EquinoxRuntimeError: "
    lines = str(error).splitlines()
    for line in lines:
        if prefix in line:
            return line.split(prefix, 1)[1].strip()
    return next((line.strip() for line in lines if line.strip()), type(error).__name__)


def _append_metrics(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drop records after `last_step`, written by a run that stopped after it."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as file:
        lines = [line for line in file if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= last_step]
    text = "".join(kept).encode()
    atomic_write(path, lambda file: file.write(text))


def train(
    config: Config,
    *,
    resume: bool = False,
    progress: bool = True,
    out_root: str | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    r"""Train the model of `config` to fit the trajectories of its dataset.

    Per step $s = 1, \dots, S$ (`training.steps`): the batch is
    `sample_batch(train, batch_size, fold_in(base_key, s - 1))`, the loss
    $\frac{1}{B T d}\sum (\hat y - y)^2$ with $\hat y$ = the model solved from each
    trajectory's first observation, and one optax update. Every `log_every` steps a
    metrics record is appended; every `eval_every` steps the validation MSE is
    computed; every `checkpoint_every` steps and at the end the checkpoint is replaced.

    **Arguments:**

    - `config`: the run's `Config`.
    - `resume`: continue from the run directory's checkpoint instead of starting over.
    - `progress`: show a tqdm progress bar with the loss and steps/s.
    - `out_root`: parent of the run directory; `None` uses `config.output.dir`.
    - `stop_after`: stop (and checkpoint) after this many steps in total, without
        changing the schedule, which still spans `training.steps`; for interrupting
        a run that is resumed later.

    **Returns:** a dict with `steps` (completed), `loss` (last step's), `val_mse`,
    `nfe` (of one validation solve), `run_dir`.

    **Raises:**

    - `ConfigError` if `data.kind` cannot be trained by this task, or on resume the
        checkpoint's model section differs from `config.model`.
    - `FileNotFoundError` on resume without a checkpoint.
    - `RuntimeError` if the loss or gradient norm is not finite; the checkpoint of the
        last good step is kept.

    ```python
    metrics = train(load_config("configs/neural_ode_spiral.yaml"))
    ```
    """
    directory = run_dir(config, out_root)
    train_set, val_set = make_dataset(config)
    section = config.training
    if section.batch_size > len(train_set):
        raise ConfigError(
            f"`training.batch_size` ({section.batch_size}) exceeds the {len(train_set)} "
            "training examples (data.n_trajectories minus the validation part); "
            "lower it or generate more data"
        )
    mesh = data_mesh(section.batch_size)
    try:
        check_kind(
            config.regularizer.kind,
            config.regularizer.sampling,
            make_model(config, jr.key(0)),
        )
    except ValueError as error:
        raise ConfigError(f"`regularizer`: {error}") from None
    total = section.steps if stop_after is None else min(stop_after, section.steps)
    optimizer = make_optimizer(config)
    metrics_path = os.path.join(directory, METRICS)
    if resume:
        model, opt_state, start, base_key = load_checkpoint(config, directory)
        _truncate_metrics(metrics_path, start)
    else:
        init_key, base_key = jr.split(jr.key(section.seed))
        model = make_model(config, init_key)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
        start = 0
        os.makedirs(directory, exist_ok=True)
        with open(metrics_path, "w", encoding="utf-8"):
            pass
    dump_config(config, os.path.join(directory, "config.yaml"))
    checkpoint_path = os.path.join(directory, CHECKPOINT)
    if mesh is not None:
        model, opt_state, train_set = _replicate((model, opt_state, train_set), mesh)

    loss = math.nan
    val_mse = nfe = None
    bar = tqdm(
        total=section.steps, initial=start, disable=not progress, desc=config.name
    )
    last_time, last_step = time.perf_counter(), start
    with bar:
        for step in range(start + 1, total + 1):
            try:
                (
                    model_next,
                    opt_next,
                    loss_array,
                    grad_norm_array,
                    nfe_array,
                    reg_array,
                ) = _train_step(
                    model,
                    opt_state,
                    train_set,
                    base_key,
                    jnp.asarray(step - 1, jnp.int32),
                    optimizer,
                    section.batch_size,
                    mesh,
                    config.regularizer,
                    section.steps,
                )
                loss, grad_norm = float(loss_array), float(grad_norm_array)
            except eqx.EquinoxRuntimeError as error:
                # A run-time check raising inside the step (the default outside the
                # CLI): report it like a non-finite loss.
                raise RuntimeError(
                    f"the solve failed at step {step} ({_error_line(error)}); "
                    + _kept(checkpoint_path)
                ) from error
            for name, value in (("loss", loss), ("gradient norm", grad_norm)):
                if not math.isfinite(value):
                    cause = _diagnose(
                        model, train_set, base_key, step - 1, section.batch_size
                    )
                    raise RuntimeError(
                        f"{name} is {value} at step {step}{cause}; "
                        + _kept(checkpoint_path)
                    )
            model, opt_state = model_next, opt_next
            bar.update(1)
            is_last = step == total
            record = None
            if step % section.log_every == 0 or is_last:
                now = time.perf_counter()
                rate = (step - last_step) / max(now - last_time, 1e-12)
                last_time, last_step = now, step
                record = {
                    "step": step,
                    "loss": loss,
                    "grad_norm": grad_norm,
                    "steps_per_s": rate,
                    "nfe_per_step": int(nfe_array),
                }
                if config.regularizer.kind != "none":
                    record["regularizer"] = float(reg_array)
                bar.set_postfix(
                    loss=f"{loss:.4g}", nfe=int(nfe_array), steps_per_s=f"{rate:.3g}"
                )
            if step % section.eval_every == 0 or is_last:
                mse, val_nfe = _evaluate(model, val_set)
                val_mse, nfe = float(mse), int(val_nfe)
                record = record or {"step": step}
                record.update(val_mse=val_mse, nfe=nfe)
            if record is not None:
                _append_metrics(metrics_path, record)
            if step % section.checkpoint_every == 0 or is_last:
                _save_checkpoint(directory, config, model, opt_state, step, base_key)

    if val_mse is None:
        mse, val_nfe = _evaluate(model, val_set)
        val_mse, nfe = float(mse), int(val_nfe)
    if config.output.plots and total == section.steps:
        _plot(directory, metrics_path, model, val_set)
    return {
        "steps": max(total, start),
        "loss": loss,
        "val_mse": val_mse,
        "nfe": nfe,
        "run_dir": directory,
    }


def _plot(directory, metrics_path, model, val_set, n_shown: int = 8) -> None:
    """`loss.png` (training loss and validation MSE) and `trajectories.png`."""
    from matplotlib.figure import Figure

    with open(metrics_path, encoding="utf-8") as file:
        records = [json.loads(line) for line in file if line.strip()]
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    logged = [r for r in records if "loss" in r]
    axes.semilogy(
        [r["step"] for r in logged], [r["loss"] for r in logged], label="loss"
    )
    evaluated = [r for r in records if "val_mse" in r]
    axes.semilogy(
        [r["step"] for r in evaluated],
        [r["val_mse"] for r in evaluated],
        "o-",
        label="validation MSE",
    )
    axes.set_xlabel("step")
    axes.legend()
    figure.savefig(os.path.join(directory, "loss.png"), dpi=100)

    n = min(n_shown, len(val_set))
    ys = np.asarray(val_set.ys[:n])
    predicted = np.asarray(
        jax.vmap(model, in_axes=(None, 0))(val_set.ts, val_set.ys[:n, 0])
    )
    figure = Figure(figsize=(4.5, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for i in range(n):
        (line,) = axes.plot(ys[i, :, 0], ys[i, :, 1], ".", alpha=0.6)
        axes.plot(predicted[i, :, 0], predicted[i, :, 1], "-", color=line.get_color())
    axes.set_title("validation: data (dots) and model (lines)")
    axes.set_aspect("equal")
    figure.savefig(os.path.join(directory, "trajectories.png"), dpi=100)


__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_META",
    "METRICS",
    "load_checkpoint",
    "make_dataset",
    "make_model",
    "make_optimizer",
    "run_dir",
    "train",
]
