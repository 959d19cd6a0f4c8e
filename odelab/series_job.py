"""`odelab train CONFIG` with `task: classify_series` or `task: fit_sde`: the neural
CDE and the stable neural SDEs on irregular, partially observed series, and a neural
SDE fitted to an Ornstein–Uhlenbeck or geometric-Brownian-motion process.

```yaml
task: classify_series
name: oscillators_lnsde
model: {kind: lnsde, hidden: 16, width: 32, depth: 1, steps: 32}
data: {kind: oscillators, n_series: 1024, n_times: 50, missing_rate: 0.5, seed: 0}
training: {iterations: 400, batch_size: 128, learning_rate: 0.003, seed: 1}
run: {out_dir: runs/series}
```

`model.kind` is `neural_cde` (`odelab.models.NeuralCDE`, fixed RK4 steps over the
backward-Hermite path) or a stable SDE (`lsde`, `lnsde`, `gsde`:
`odelab.models.StableNeuralSDE`, Euler–Maruyama). `data.kind` is `oscillators`
(`odelab.data.irregular_series`: under- vs overdamped) or `spirals`
(`odelab.data.irregular_spirals`: the direction). A quarter of the series (another
draw of the same generator) is held out; `metrics.json` has the held-out accuracy
and the loss history, `model.eqx` the trained weights (written atomically).

```yaml
task: fit_sde
name: ou
model: {width: 32, depth: 2, steps: 50}
data: {kind: ou, n_paths: 1024, n_times: 26, t1: 2.5}
training: {iterations: 300, batch_size: 256, learning_rate: 0.01, seed: 1}
```

`fit_sde` fits `odelab.models.NeuralSDE` (time-dependent drift and diagonal
diffusion, Euler–Maruyama, `brownian="increments"`) by a kernel maximum mean
discrepancy between simulated and data paths, differentiated through the solver; the
metrics compare the fitted model's marginal mean and standard deviation and its
autocovariance with the process's exact ones.
"""

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import ClassVar

from .config import (
    ConfigError,
    RegularizerConfig,
    _fraction,
    _positive,
    _Section,
    read_job_config,
)


CLASSIFIERS = ("neural_cde", "lsde", "lnsde", "gsde")
SERIES = ("oscillators", "spirals")
PROCESSES = ("ou", "gbm")


@dataclasses.dataclass(frozen=True)
class SeriesModelConfig(_Section):
    """The model: `kind` (classifiers: `neural_cde`, `lsde`, `lnsde`, `gsde`; ignored
    by the other tasks), hidden size `hidden` (the classifiers' latent, the latent
    ODE's encoder), the latent ODE's `latent` size, the vector field's `width` and
    `depth`, the fixed `steps` of the solve (the latent ODE: per observation gap),
    the control path's `interpolation`, the `solver` (default per model: RK4 for the
    CDE and the latent ODE, Euler–Maruyama for the SDEs, reversible Heun for a
    Stratonovich `fit_sde`) and `adjoint` by name (`odelab.solve`), and for `fit_sde`
    the SDE's `interpretation` (`ito`, `stratonovich`) and `brownian` path
    (`increments`, `virtual_tree`; default `increments`)."""

    _section: ClassVar[str] = "model"
    _choices: ClassVar[dict] = {
        "kind": CLASSIFIERS,
        "interpolation": ("hermite", "rectilinear"),
        "interpretation": ("ito", "stratonovich"),
    }
    _limits: ClassVar[dict] = {
        "hidden": _positive,
        "width": _positive,
        "steps": _positive,
    }
    kind: str = "neural_cde"
    hidden: int = 16
    latent: int = 4
    width: int = 32
    depth: int = 1
    steps: int = 32
    interpolation: str = "hermite"
    solver: str | None = None
    adjoint: str = "checkpoint"
    interpretation: str = "ito"
    brownian: str | None = None


@dataclasses.dataclass(frozen=True)
class SeriesDataConfig(_Section):
    """The data: `kind` (`oscillators`, `spirals` for classification; `ou`, `gbm`
    for `fit_sde`), sizes, the `missing_rate` of the series, the process's `t1`,
    `theta` (OU), `mu`, `sigma` (default: OU 0, 0.5; GBM 0.1, 0.2) and `x0`, the
    latent ODE's context/target `split` and its `observed_fraction`, and the
    generator's `seed`."""

    _section: ClassVar[str] = "data"
    _choices: ClassVar[dict] = {
        "kind": (*SERIES, *PROCESSES),
        "split": ("interpolation", "extrapolation"),
    }
    _limits: ClassVar[dict] = {
        "n_series": _positive,
        "n_times": _positive,
        "missing_rate": _fraction,
        "n_paths": _positive,
        "t1": _positive,
    }
    kind: str = "oscillators"
    n_series: int = 1024
    n_times: int = 50
    missing_rate: float = 0.3
    n_paths: int = 1024
    t1: float = 2.5
    theta: float = 1.0
    mu: float | None = None
    sigma: float | None = None
    x0: float = 1.0
    split: str = "interpolation"
    observed_fraction: float = 0.5
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SeriesTrainingConfig(_Section):
    """Adam's `iterations`, `batch_size` and `learning_rate`, and the `seed` of the
    initialisation, the batches and the Brownian motions."""

    _section: ClassVar[str] = "training"
    _limits: ClassVar[dict] = {
        "iterations": _positive,
        "batch_size": _positive,
        "learning_rate": _positive,
    }
    iterations: int = 400
    batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 1


@dataclasses.dataclass(frozen=True)
class SeriesRunConfig(_Section):
    """Where outputs go: `out_dir/name/`."""

    _section: ClassVar[str] = "run"
    out_dir: str = "runs/series"


_SECTIONS = {
    "model": SeriesModelConfig,
    "data": SeriesDataConfig,
    "training": SeriesTrainingConfig,
    "run": SeriesRunConfig,
    "regularizer": RegularizerConfig,
}

SERIES_REGULARIZERS = ("none", "local_error", "local_stiffness")
"""`regularizer.kind` values the series tasks take: the one-step estimates of the
solver heuristics (`NeuralCDE.local_heuristics`, `NeuralSDE.local_heuristics`), which
leave the model's fixed-step training solve as it is."""


@dataclasses.dataclass(frozen=True)
class SeriesConfig:
    task: str = "classify_series"
    name: str = "series"
    model: SeriesModelConfig = dataclasses.field(default_factory=SeriesModelConfig)
    data: SeriesDataConfig = dataclasses.field(default_factory=SeriesDataConfig)
    training: SeriesTrainingConfig = dataclasses.field(
        default_factory=SeriesTrainingConfig
    )
    run: SeriesRunConfig = dataclasses.field(default_factory=SeriesRunConfig)
    regularizer: RegularizerConfig = dataclasses.field(
        default_factory=RegularizerConfig
    )


def load_task_config(source, overrides: Sequence[str] = ()) -> SeriesConfig:
    """Read a `classify_series` or `fit_sde` config (YAML path or mapping)."""
    tops, sections = read_job_config(
        source, overrides, _SECTIONS, "series", top=("name", "task")
    )
    config = SeriesConfig(**tops, **sections)
    if config.task not in TASKS:
        raise ConfigError(f"unknown `task: {config.task}`; valid: {', '.join(TASKS)}")
    kind = config.regularizer.kind
    if kind != "none" and (
        kind not in SERIES_REGULARIZERS
        or config.task == "latent_ode"
        or (config.task == "classify_series" and config.model.kind != "neural_cde")
    ):
        raise ConfigError(
            f"`regularizer.kind: {kind}` is not available for task {config.task} "
            f"(model {config.model.kind}); the series tasks take "
            f"{', '.join(SERIES_REGULARIZERS)} with `task: fit_sde` or the neural_cde "
            "classifier"
        )
    wanted = PROCESSES if config.task == "fit_sde" else SERIES
    if config.data.kind not in wanted:
        raise ConfigError(
            f"`data.kind: {config.data.kind}` does not fit `task: {config.task}`; "
            f"valid: {', '.join(wanted)}"
        )
    return config


def _series(data, n, seed):
    import jax.random as jr

    from . import data as datasets

    make = (
        datasets.irregular_series
        if data.kind == "oscillators"
        else datasets.irregular_spirals
    )
    return make(jr.key(seed), n, data.n_times, missing_rate=data.missing_rate)


def make_classifier(model, n_classes: int, key):
    """The classifier of `model` (a `SeriesModelConfig`) for 2-channel series."""
    from .models import NeuralCDE, StableNeuralSDE

    common = (2, model.hidden, n_classes, model.width, model.depth)
    if model.kind == "neural_cde":
        return NeuralCDE(
            *common,
            key=key,
            intensity=True,
            interpolation=model.interpolation,
            solver=model.solver or "rk4",
            adjoint=model.adjoint,
            steps=model.steps,
        )
    return StableNeuralSDE(
        model.kind,
        *common,
        key=key,
        interpolation=model.interpolation,
        steps=model.steps,
        solver=model.solver or "euler",
        adjoint=model.adjoint,
        brownian=model.brownian or "increments",
    )


def _logits(model, batch, key):
    from .models import NeuralCDE

    if isinstance(model, NeuralCDE):
        return model.batch(batch.ts, batch.ys, batch.mask)
    return model.batch(batch.ts, batch.ys, batch.mask, key=key)


def train_classifier(config: SeriesConfig, progress=None) -> tuple[object, dict]:
    """Train the config's classifier; returns the model and its metrics."""
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    from . import data as datasets

    d, tr = config.data, config.training
    train_set = _series(d, d.n_series, d.seed)
    val_set = _series(d, max(d.n_series // 4, 1), d.seed + 1000)
    key = jr.key(tr.seed)
    model = make_classifier(config.model, 2, jr.fold_in(key, 0))
    opt = optax.adam(tr.learning_rate)
    state = opt.init(eqx.filter(model, eqx.is_array))

    reg = config.regularizer

    def loss_fn(m, batch, k, weight):
        logits = _logits(m, batch, k)
        loss = jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels)
        )
        if reg.kind == "none":
            return loss, loss
        r = m.local_heuristics(
            batch.ts, batch.ys, batch.mask, key=jr.fold_in(k, 7), sampling=reg.sampling
        )
        return loss + weight * r[reg.kind == "local_stiffness"], loss

    @eqx.filter_jit
    def step(m, s, batch, k, weight):
        (_, loss), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            m, batch, k, weight
        )
        updates, s = opt.update(grads, s, m)
        return eqx.apply_updates(m, updates), s, loss

    @eqx.filter_jit
    def accuracy(m, batch, k):
        return jnp.mean(jnp.argmax(_logits(m, batch, k), -1) == batch.labels)

    batch_size = min(tr.batch_size, len(train_set))
    losses, start = [], time.perf_counter()
    for i in range(tr.iterations):
        k = jr.fold_in(key, i + 1)
        batch = datasets.sample_batch(train_set, batch_size, k)
        weight = reg.weight_at(i, tr.iterations)
        model, state, loss = step(model, state, batch, jr.fold_in(k, 1), weight)
        losses.append(float(loss))
        if progress is not None:
            progress(i, losses[-1])
    train_time = time.perf_counter() - start
    metrics = dict(
        kind=config.model.kind,
        missing_rate=d.missing_rate,
        val_accuracy=float(accuracy(model, val_set, jr.fold_in(key, 2**31 - 1))),
        final_loss=float(sum(losses[-20:]) / len(losses[-20:])),
        train_seconds=train_time,
        losses=losses,
    )
    return model, metrics


def train_latent_ode(config: SeriesConfig, progress=None) -> tuple[object, dict]:
    """Train a `LatentODE` on the config's interpolation or extrapolation task;
    returns it and the held-out reconstruction MSE before and after training."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    from . import data as datasets
    from .models import LatentODE

    d, tr, m = config.data, config.training, config.model
    key = jr.key(tr.seed)
    train_set = _series(d, d.n_series, d.seed)
    val_set = _series(d, max(d.n_series // 4, 1), d.seed + 1000)
    train_c, train_t = datasets.split_times(
        train_set, d.split, d.observed_fraction, jr.fold_in(key, 1)
    )
    val_c, val_t = datasets.split_times(
        val_set, d.split, d.observed_fraction, jr.fold_in(key, 2)
    )
    model = LatentODE(
        2,
        m.latent,
        m.hidden,
        m.width,
        m.depth,
        key=jr.fold_in(key, 3),
        steps=m.steps,
        solver=m.solver or "rk4",
        adjoint=m.adjoint,
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adam(tr.learning_rate)
    state = opt.init(params)
    batch_size = min(tr.batch_size, d.n_series)

    @jax.jit
    def mse(p):
        ys = jax.vmap(eqx.combine(p, static))(val_c.ts, val_c.ys, val_c.mask, val_t.ts)
        squared = jnp.where(val_t.mask, (ys - val_t.ys) ** 2, 0.0)
        return jnp.sum(squared) / jnp.sum(val_t.mask)

    @jax.jit
    def step(p, s, k):
        index_key, elbo_key = jr.split(k)
        index = jr.choice(index_key, d.n_series, (batch_size,), replace=False)
        c, t = jax.tree.map(lambda x: x[index], (train_c, train_t))

        def loss(p):
            elbo = jax.vmap(eqx.combine(p, static).elbo)(
                c.ts, c.ys, c.mask, t.ts, t.ys, t.mask, jr.split(elbo_key, batch_size)
            )
            return -jnp.sum(elbo) / jnp.sum(t.mask)

        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    before = float(mse(params))
    losses, start = [], time.perf_counter()
    for i in range(tr.iterations):
        params, state, loss = step(params, state, jr.fold_in(key, i + 10))
        losses.append(float(loss))
        if progress is not None:
            progress(i, losses[-1])
    metrics = dict(
        split=d.split,
        val_mse_untrained=before,
        val_mse=float(mse(params)),
        final_loss=float(sum(losses[-20:]) / len(losses[-20:])),
        train_seconds=time.perf_counter() - start,
        losses=losses,
    )
    return eqx.combine(params, static), metrics


def fit_sde(config: SeriesConfig, progress=None) -> tuple[object, dict]:
    """Fit a `NeuralSDE` to the config's OU or GBM paths; returns it and metrics."""
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax

    from . import data as datasets
    from .metrics import mmd
    from .models import NeuralSDE

    d, tr, m = config.data, config.training, config.model
    key = jr.key(tr.seed)
    default_mu, default_sigma = (0.0, 0.5) if d.kind == "ou" else (0.1, 0.2)
    mu = default_mu if d.mu is None else d.mu
    sigma = default_sigma if d.sigma is None else d.sigma
    if d.kind == "ou":
        paths = datasets.ou_process(
            jr.key(d.seed), d.n_paths, d.n_times, d.t1, d.theta, mu, sigma, d.x0
        )
    else:
        paths = datasets.gbm_process(
            jr.key(d.seed), d.n_paths, d.n_times, d.t1, mu, sigma, d.x0
        )
    ts, ys = paths.ts, paths.ys[..., 0]
    x0 = jnp.asarray(d.x0, ys.dtype)
    # One solver step per observation interval times `steps // (n_times - 1)`.
    per = max(m.steps // (d.n_times - 1), 1)
    model = NeuralSDE(
        1,
        m.width,
        m.depth,
        key=jr.fold_in(key, 0),
        time_dependent=True,
        steps=per * (d.n_times - 1),
        interpretation=m.interpretation,
        solver=m.solver,
        adjoint=m.adjoint,
        brownian=m.brownian,
    )
    opt = optax.adam(tr.learning_rate)
    state = opt.init(eqx.filter(model, eqx.is_array))

    def simulate(mdl, n, k):
        y0 = jnp.full((n, 1), x0)
        return mdl.batch_solution(ts, y0, key=k).ys[..., 0].T  # (n, n_times)

    reg = config.regularizer
    dt = (ts[-1] - ts[0]) / model.steps

    def loss_fn(mdl, batch, k, weight):
        sims = simulate(mdl, batch.shape[0], k)
        loss = mmd(sims, batch)
        if reg.kind == "none":
            return loss, loss
        r = mdl.local_heuristics(ts, sims[..., None], key=jr.fold_in(k, 7), dt=dt)
        return loss + weight * r[reg.kind == "local_stiffness"], loss

    @eqx.filter_jit
    def step(mdl, s, batch, k, weight):
        (_, loss), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            mdl, batch, k, weight
        )
        updates, s = opt.update(grads, s, mdl)
        return eqx.apply_updates(mdl, updates), s, loss

    losses, start = [], time.perf_counter()
    batch_size = min(tr.batch_size, d.n_paths)
    for i in range(tr.iterations):
        k = jr.fold_in(key, i + 1)
        idx = jr.choice(k, d.n_paths, (batch_size,), replace=False)
        weight = reg.weight_at(i, tr.iterations)
        model, state, loss = step(model, state, ys[idx], jr.fold_in(k, 1), weight)
        losses.append(float(loss))
        if progress is not None:
            progress(i, losses[-1])
    train_time = time.perf_counter() - start
    sims = np.asarray(simulate(model, 4096, jr.fold_in(key, 2**31 - 1)))
    if d.kind == "ou":
        mean, var = datasets.ou_moments(ts, d.theta, mu, sigma, d.x0)
    else:
        mean, var = datasets.gbm_moments(ts, mu, sigma, d.x0)
    mean, std = np.asarray(mean), np.sqrt(np.asarray(var))
    metrics = dict(
        process=d.kind,
        max_mean_error=float(np.max(np.abs(sims.mean(0) - mean))),
        max_std_error=float(np.max(np.abs(sims.std(0) - std))),
        max_std=float(np.max(std)),
        final_mmd=float(np.mean(losses[-20:])),
        train_seconds=train_time,
        losses=losses,
    )
    if d.kind == "ou":
        # Cov(x_s, x_t) at the last time against every earlier one: the process's
        # memory, which matching the marginals alone does not test.
        ts_np = np.asarray(ts)
        exact = np.asarray(
            datasets.ou_covariance(
                ts_np, np.full_like(ts_np, ts_np[-1]), d.theta, sigma
            )
        )
        centred = sims - sims.mean(0)
        model_cov = np.mean(centred * centred[:, -1:], axis=0)
        metrics.update(
            max_autocov_error=float(np.max(np.abs(model_cov - exact))),
            max_autocov=float(np.max(np.abs(exact))),
        )
    return model, metrics


def run_task(source, overrides: Sequence[str] = ()) -> dict:
    """Load the config, train, write `metrics.json` and `model.eqx`; returns the
    metrics (without the loss history)."""
    from .config import write_run

    config = load_task_config(source, overrides)
    model, metrics = TASKS[config.task](config)
    return write_run(os.path.join(config.run.out_dir, config.name), model, metrics)


TASKS = {
    "classify_series": train_classifier,
    "latent_ode": train_latent_ode,
    "fit_sde": fit_sde,
}
