"""`odelab train CONFIG` with `task: classify_digits`: implicit and continuous-depth
classifiers on scikit-learn's embedded 8×8 digits.

```yaml
task: classify_digits
name: digits_deq
model: {kind: deq, hidden: 64, solver: anderson, gradient: implicit}
training: {epochs: 30, batch_size: 128, learning_rate: 0.003, seed: 0}
run: {out_dir: runs/digits}
```

`model.kind`: `mlp` (the explicit baseline, `depth` hidden layers of `hidden`),
`neural_ode` and `augmented_neural_ode` (`odelab.models.ODEClassifier`: Tsit5 at
`rtol`/`atol`, the batch as one state; `augment_dims` extra zeros), `deq`
(`odelab.models.DEQClassifier`: `solver` anderson | fixed_point | newton, `gradient`
implicit | phantom | unrolled), `homoode` and `homoode_shared`
(`odelab.models.HomoODEClassifier`, `field` learned | newton; `_shared` adds the
shared learnable initial point and its loss). The data: 1797 images shuffled by `data.seed`, the
last `test_fraction` held out. `metrics.json` has the test accuracy, the training
time (total and the median step, compile excluded), the prediction time, the
compiled training step's temporary memory (`memory_analysis`) and the loss history;
`model.eqx` the weights (both written atomically). For the DEQ the metrics also
report the fraction of equilibrium solves that did not converge (worst training batch,
test set): a non-converged solve is used as it stands (its last iterate) and counted,
never hidden.
"""

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import ClassVar

from .config import ConfigError, _fraction, _positive, _Section, read_job_config


MODELS = (
    "mlp",
    "neural_ode",
    "augmented_neural_ode",
    "deq",
    "homoode",
    "homoode_shared",
)
"""Values accepted for `model.kind` of `classify_digits`."""


@dataclasses.dataclass(frozen=True)
class DigitsModelConfig(_Section):
    """The model: `kind` (`MODELS`), `hidden` (the state), `width` and `depth` (the
    ODE's MLP; the baseline's hidden layers), `augment_dims`, the HomoODE's `field`
    (`learned`, `newton`), and the solve: `solver` (default: tsit5 for the ODEs,
    anderson for the DEQ), `gradient` (DEQ), `adjoint` (ODEs), `rtol`, `atol`,
    `max_steps`."""

    _section: ClassVar[str] = "model"
    _choices: ClassVar[dict] = {
        "kind": MODELS,
        "gradient": ("implicit", "phantom", "unrolled"),
        "field": ("learned", "newton"),
    }
    _limits: ClassVar[dict] = {
        "hidden": _positive,
        "width": _positive,
        "rtol": _positive,
        "atol": _positive,
        "max_steps": _positive,
    }
    kind: str = "deq"
    hidden: int = 64
    width: int = 64
    depth: int = 1
    augment_dims: int = 0
    solver: str | None = None
    gradient: str = "implicit"
    field: str = "learned"
    adjoint: str = "checkpoint"
    rtol: float = 1e-3
    atol: float = 1e-3
    max_steps: int = 100


@dataclasses.dataclass(frozen=True)
class DigitsDataConfig(_Section):
    """`test_fraction` held out (default 0.2) and the shuffling `seed`."""

    _section: ClassVar[str] = "data"
    _limits: ClassVar[dict] = {"test_fraction": _fraction}
    test_fraction: float = 0.2
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DigitsTrainingConfig(_Section):
    """Adam's `epochs`, `batch_size`, `learning_rate`, and the initialisation and
    batching `seed`."""

    _section: ClassVar[str] = "training"
    _limits: ClassVar[dict] = {
        "epochs": _positive,
        "batch_size": _positive,
        "learning_rate": _positive,
    }
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DigitsRunConfig(_Section):
    """Where outputs go: `out_dir/name/`."""

    _section: ClassVar[str] = "run"
    out_dir: str = "runs/digits"


_SECTIONS = {
    "model": DigitsModelConfig,
    "data": DigitsDataConfig,
    "training": DigitsTrainingConfig,
    "run": DigitsRunConfig,
}


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    task: str = "classify_digits"
    name: str = "digits"
    model: DigitsModelConfig = dataclasses.field(default_factory=DigitsModelConfig)
    data: DigitsDataConfig = dataclasses.field(default_factory=DigitsDataConfig)
    training: DigitsTrainingConfig = dataclasses.field(
        default_factory=DigitsTrainingConfig
    )
    run: DigitsRunConfig = dataclasses.field(default_factory=DigitsRunConfig)


def load_task_config(source, overrides: Sequence[str] = ()) -> DigitsConfig:
    """Read a `classify_digits` config (YAML path or mapping)."""
    tops, sections = read_job_config(
        source, overrides, _SECTIONS, "digits", top=("name", "task")
    )
    config = DigitsConfig(**tops, **sections)
    if config.task != "classify_digits":
        raise ConfigError(f"unknown `task: {config.task}`; valid: classify_digits")
    return config


def make_model(model: DigitsModelConfig, key):
    """The classifier of `model` for 64 features and 10 classes."""
    import equinox as eqx
    import jax

    from .models import DEQClassifier, HomoODEClassifier, ODEClassifier

    if model.kind == "mlp":
        return eqx.nn.MLP(64, 10, model.hidden, model.depth + 1, jax.nn.relu, key=key)
    if model.kind == "deq":
        return DEQClassifier(
            64,
            10,
            model.hidden,
            key=key,
            solver=model.solver or "anderson",
            gradient=model.gradient,
            rtol=model.rtol,
            atol=model.atol,
            max_steps=model.max_steps,
        )
    if model.kind.startswith("homoode"):
        return HomoODEClassifier(
            64,
            10,
            model.hidden,
            key=key,
            field=model.field,
            shared_initial=model.kind == "homoode_shared",
            solver=model.solver or "tsit5",
            adjoint=model.adjoint,
            rtol=model.rtol,
            atol=model.atol,
            max_steps=model.max_steps,
        )
    return ODEClassifier(
        64,
        10,
        model.hidden,
        model.width,
        model.depth,
        key=key,
        augment_dims=model.augment_dims if model.kind != "neural_ode" else 0,
        solver=model.solver or "tsit5",
        adjoint=model.adjoint,
        rtol=model.rtol,
        atol=model.atol,
        max_steps=model.max_steps,
        joint_batch=True,
    )


def _logits(model, x):
    # (logits, fraction of the batch whose equilibrium solve did not converge,
    # extra loss: the HomoODE's shared initial point).
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optimistix as optx

    from .models import DEQClassifier, HomoODEClassifier

    zero = jnp.zeros(())
    if isinstance(model, eqx.nn.MLP):
        return jax.vmap(model)(x), zero, zero
    if isinstance(model, DEQClassifier):
        logits, stats = model.solve(x)
        failed = stats["result"] != optx.RESULTS.successful
        return logits, jnp.mean(failed.astype(logits.dtype)), zero
    if isinstance(model, HomoODEClassifier):
        logits, extra = model.logits_and_extra_loss(x)
        return logits, zero, extra
    return model(x), zero, zero


def train_step_memory(step, carry, *batch) -> int | None:
    """Temporary bytes of the compiled `step(*carry, *batch)` (XLA's
    `memory_analysis`, deterministic), or `None` where the backend has none."""
    import equinox as eqx
    import jax

    dynamic, static = eqx.partition(carry, eqx.is_array)

    def pure(dyn, *args):
        return eqx.filter(step(*eqx.combine(dyn, static), *args), eqx.is_array)

    analysis = jax.jit(pure).lower(dynamic, *batch).compile().memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def train_digits(config: DigitsConfig, progress=None) -> tuple[object, dict]:
    """Train the config's classifier; returns the model and its metrics."""
    import statistics

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    from .data import digits

    d, tr = config.data, config.training
    data = digits(jr.key(d.seed))
    n_test = int(round(len(data) * d.test_fraction))
    x_train, y_train = data.ys[n_test:], data.labels[n_test:]
    x_test, y_test = data.ys[:n_test], data.labels[:n_test]
    batch = min(tr.batch_size, x_train.shape[0])
    key = jr.key(tr.seed)
    model = make_model(config.model, jr.fold_in(key, 0))
    optimizer = optax.adam(tr.learning_rate)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    def loss_fn(m, xb, yb):
        logits, failed, extra = _logits(m, xb)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        return jnp.mean(ce) + extra, (jnp.mean(ce), failed)

    def one_step(m, s, xb, yb):
        (_, (loss, failed)), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            m, xb, yb
        )
        updates, s = optimizer.update(grads, s, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), s, loss, failed

    step = eqx.filter_jit(one_step)

    memory = train_step_memory(
        one_step, (model, state), x_train[:batch], y_train[:batch]
    )
    losses, step_times, unconverged = [], [], []
    for epoch in range(tr.epochs):
        perm = jr.permutation(jr.fold_in(key, epoch + 1), x_train.shape[0])
        for b in range(x_train.shape[0] // batch):
            idx = perm[b * batch : (b + 1) * batch]
            start = time.perf_counter()
            model, state, loss, failed = step(model, state, x_train[idx], y_train[idx])
            losses.append(float(loss))
            unconverged.append(float(failed))
            step_times.append(time.perf_counter() - start)
            if progress is not None:
                progress(len(losses) - 1, losses[-1])

    predict = eqx.filter_jit(_logits)
    jax.block_until_ready(predict(model, x_test))
    times = []
    for _ in range(10):
        start = time.perf_counter()
        logits, test_failed, _ = jax.block_until_ready(predict(model, x_test))
        times.append(time.perf_counter() - start)
    metrics = dict(
        kind=config.model.kind,
        test_accuracy=float(jnp.mean(jnp.argmax(logits, -1) == y_test)),
        final_loss=float(sum(losses[-10:]) / len(losses[-10:])),
        train_seconds=sum(step_times),
        train_step_ms=1000 * statistics.median(step_times[1:] or step_times),
        predict_ms=1000 * statistics.median(times),
        train_step_temp_bytes=memory,
        # DEQ: the fraction of equilibrium solves that hit `max_steps` (reported,
        # never silent): the worst training batch and the test set.
        unconverged_train_max=max(unconverged),
        unconverged_test=float(test_failed),
        losses=losses,
    )
    return model, metrics


def run_task(source, overrides: Sequence[str] = ()) -> dict:
    """Load the config, train, write `metrics.json` and `model.eqx`; returns the
    metrics (without the loss history)."""
    from .config import write_run

    config = load_task_config(source, overrides)
    model, metrics = train_digits(config)
    return write_run(os.path.join(config.run.out_dir, config.name), model, metrics)
