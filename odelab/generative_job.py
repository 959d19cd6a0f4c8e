"""`odelab train CONFIG` with `task: generative`: train a flow-matching, diffusion or
continuous-normalizing-flow model on embedded data and score its samples.

```yaml
task: generative
name: flow_matching_moons
data: {dataset: moons, n_train: 8192, n_test: 2048}
model: {kind: flow, width: 128, depth: 3}
loss: {time_sampling: uniform}
training: {steps: 3000, batch_size: 256, learning_rate: 0.002}
sample: {sampler: euler, steps: [1, 2, 4, 32]}
```

`model.kind`: `flow` (an `EpsMLP` predicting the velocity, trained by
`flow_matching_loss`), `diffusion` (an `EpsMLP` predicting `model.prediction`,
optionally wrapped in `EDMPrecond`, trained by `denoising_loss` on `model.schedule`),
`cnf` (`odelab.models.CNF` trained by maximum likelihood). `loss.fokker_planck` adds
the score Fokker–Planck residual (`odelab.regularizers.fokker_planck_loss`) with that
weight. `reflow.rounds: 1` then samples `reflow.pairs` noise–data pairs with the
trained flow's ODE and trains the reflowed flow on them, from the base weights.

Outputs in `run.out_dir/name/`: `metrics.json` (sliced W2 and MMD to held-out data
at every sampling step count, for the base and the reflowed model; the flows'
straightness; NLL where defined: the CNF's exact likelihood, the diffusion model's
through its probability-flow ODE; the ODE–SDE gap with `sample.sde_steps`; training
throughput), `samples.npz`, `samples.png`, `model.eqx` (atomic writes).
"""

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from typing import ClassVar

from .config import (
    ConfigError,
    _fraction,
    _nonnegative,
    _positive,
    _Section,
    _zero_or_one,
    read_job_config,
)


DATASETS = ("moons", "eight_gaussians", "checkerboard", "swiss_roll", "digits")
KINDS = ("flow", "diffusion", "cnf")
SCHEDULES = ("rectified_flow", "vp_linear", "vp_cosine", "ve", "edm", "kinetic_optimal")


@dataclasses.dataclass(frozen=True)
class GenDataConfig(_Section):
    """`dataset` (`DATASETS`; digits are scaled to [-1, 1]), `n_train` and `n_test`
    samples of the 2-D densities (digits: the last `test_fraction` of the 1797
    images is held out), and the data `seed`."""

    _section: ClassVar[str] = "data"
    _choices: ClassVar[dict] = {"dataset": DATASETS}
    _limits: ClassVar[dict] = {
        "n_train": _positive,
        "n_test": _positive,
        "test_fraction": _fraction,
    }
    dataset: str = "moons"
    n_train: int = 8192
    n_test: int = 2048
    test_fraction: float = 0.2
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class GenModelConfig(_Section):
    """`kind` (`KINDS`); the MLP's `width`, `depth` and time `frequencies`;
    diffusion's `prediction` (eps, x0, v, score) and `schedule` (`SCHEDULES`), with
    `precondition: true` for EDM's preconditioning (an x0 model; `sigma_data`); the
    CNF's `trace` (exact, hutchinson) and ODE tolerance `rtol`/`atol`."""

    _section: ClassVar[str] = "model"
    _choices: ClassVar[dict] = {
        "kind": KINDS,
        "prediction": ("eps", "x0", "v", "score"),
        "schedule": SCHEDULES,
        "trace": ("exact", "hutchinson"),
    }
    _limits: ClassVar[dict] = {
        "width": _positive,
        "depth": _positive,
        "sigma_data": _positive,
        "rtol": _positive,
        "atol": _positive,
    }
    kind: str = "flow"
    width: int = 128
    depth: int = 3
    frequencies: int = 4
    prediction: str = "eps"
    schedule: str | None = None
    precondition: bool = False
    sigma_data: float = 0.5
    trace: str = "exact"
    rtol: float = 1e-4
    atol: float = 1e-4


@dataclasses.dataclass(frozen=True)
class GenLossConfig(_Section):
    """`weighting` (`odelab.diffusion.losses.WEIGHTINGS`, default the prediction's own
    MSE), `time_sampling` (uniform, logit_normal, u_shaped, edm), `distance` (l2,
    pseudo_huber), and `fokker_planck`, the weight of the score Fokker–Planck
    residual (diffusion only)."""

    _section: ClassVar[str] = "loss"
    _choices: ClassVar[dict] = {
        "time_sampling": ("uniform", "logit_normal", "u_shaped", "edm"),
        "distance": ("l2", "pseudo_huber"),
        "weighting": (
            "x0", "eps", "v", "score", "flow", "min_snr", "likelihood", "edm"
        ),
    }  # fmt: skip
    _limits: ClassVar[dict] = {"fokker_planck": _nonnegative}
    weighting: str | None = None
    time_sampling: str = "uniform"
    distance: str = "l2"
    fokker_planck: float = 0.0


@dataclasses.dataclass(frozen=True)
class GenTrainingConfig(_Section):
    """Adam with a cosine-decayed `learning_rate` for `steps` of `batch_size`; the
    initialisation and batching `seed`."""

    _section: ClassVar[str] = "training"
    _limits: ClassVar[dict] = {
        "steps": _positive,
        "batch_size": _positive,
        "learning_rate": _positive,
    }
    steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 2e-3
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class GenReflowConfig(_Section):
    """`rounds` (0 or 1): reflow the trained flow on `pairs` noise–sample pairs made
    by `sampler` in `steps`, then train `training_steps` more (U-shaped times by
    default, `time_sampling`)."""

    _section: ClassVar[str] = "reflow"
    _limits: ClassVar[dict] = {
        "rounds": _zero_or_one,
        "pairs": _positive,
        "steps": _positive,
        "training_steps": _positive,
    }
    rounds: int = 0
    pairs: int = 8192
    sampler: str = "dpmpp_2m"
    steps: int = 32
    training_steps: int = 2000
    time_sampling: str = "u_shaped"


@dataclasses.dataclass(frozen=True)
class GenSampleConfig(_Section):
    """Score `n` samples made by `sampler` at each of `steps` (lists of step counts);
    `likelihood` test points get an NLL (0 skips it); `sde_steps` > 0 also samples
    the reverse SDE (Euler–Maruyama) and reports its sliced W2 to the ODE samples
    (the ODE–SDE gap)."""

    _section: ClassVar[str] = "sample"
    _limits: ClassVar[dict] = {
        "n": _positive,
        "likelihood": _nonnegative,
        "sde_steps": _nonnegative,
    }
    sampler: str | None = None
    steps: list = dataclasses.field(default_factory=lambda: [1, 2, 4, 32])
    n: int = 2048
    likelihood: int = 256
    sde_steps: int = 0


@dataclasses.dataclass(frozen=True)
class GenRunConfig(_Section):
    """Where outputs go: `out_dir/name/`."""

    _section: ClassVar[str] = "run"
    out_dir: str = "runs/generative"


_SECTIONS = {
    "data": GenDataConfig,
    "model": GenModelConfig,
    "loss": GenLossConfig,
    "training": GenTrainingConfig,
    "reflow": GenReflowConfig,
    "sample": GenSampleConfig,
    "run": GenRunConfig,
}


@dataclasses.dataclass(frozen=True)
class GenerativeConfig:
    task: str = "generative"
    name: str = "generative"
    data: GenDataConfig = dataclasses.field(default_factory=GenDataConfig)
    model: GenModelConfig = dataclasses.field(default_factory=GenModelConfig)
    loss: GenLossConfig = dataclasses.field(default_factory=GenLossConfig)
    training: GenTrainingConfig = dataclasses.field(default_factory=GenTrainingConfig)
    reflow: GenReflowConfig = dataclasses.field(default_factory=GenReflowConfig)
    sample: GenSampleConfig = dataclasses.field(default_factory=GenSampleConfig)
    run: GenRunConfig = dataclasses.field(default_factory=GenRunConfig)


def load_task_config(source, overrides: Sequence[str] = ()) -> GenerativeConfig:
    """Read a `generative` config (YAML path or mapping); cross-section checks
    raise `ConfigError` naming the keys."""
    tops, sections = read_job_config(
        source, overrides, _SECTIONS, "generative", top=("name", "task")
    )
    config = GenerativeConfig(**tops, **sections)
    if config.task != "generative":
        raise ConfigError(f"unknown `task: {config.task}`; valid: generative")
    m, s = config.model, config.sample
    if not s.steps or not all(
        isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in s.steps
    ):
        raise ConfigError(f"`sample.steps` must be positive integers; got {s.steps}")
    if config.reflow.rounds and m.kind != "flow":
        raise ConfigError("`reflow.rounds: 1` needs `model.kind: flow`")
    if config.loss.fokker_planck and m.kind != "diffusion":
        raise ConfigError("`loss.fokker_planck` needs `model.kind: diffusion`")
    if m.precondition and (m.kind != "diffusion" or m.prediction != "x0"):
        raise ConfigError(
            "`model.precondition: true` is EDM's x0 model: it needs `kind: diffusion` "
            "and `prediction: x0`"
        )
    return config


def make_schedule(config: GenerativeConfig):
    """The model's Gaussian path (default: rectified flow for flows, VP-linear for
    diffusion). `kinetic_optimal` is the kinetic-optimal path of the training data
    (`_kinetic_optimal`)."""
    from .diffusion import EDM, VE, RectifiedFlow, VPCosine, VPLinear

    name = config.model.schedule or (
        "rectified_flow" if config.model.kind == "flow" else "vp_linear"
    )
    if name == "kinetic_optimal":
        return _kinetic_optimal(config.data)
    return {
        "rectified_flow": RectifiedFlow,
        "vp_linear": VPLinear,
        "vp_cosine": VPCosine,
        "ve": VE,
        "edm": EDM,
    }[name]()


@functools.cache
def _kinetic_optimal(data: GenDataConfig):
    r"""The kinetic-optimal Gaussian path (Shaul et al. 2023) of the training set:
    its data separation function estimated on 64 values of $r$, log-spaced over
    $[10^{-3}, 10^3]$ (and $r = 0$), from up to 2048 training points, with
    $c = \sqrt{D/d}$ of the data. Cached per data section (one estimate a run)."""
    import jax.numpy as jnp

    from .diffusion import data_separation, kinetic_optimal_schedule

    x_train = make_data(GenerativeConfig(data=data))[0][:2048]
    r = jnp.concatenate([jnp.zeros(1), jnp.logspace(-3, 3, 63)])
    lam = data_separation(x_train, r)
    c = float(jnp.sqrt(jnp.mean(jnp.sum(x_train**2, -1)) / x_train.shape[1]))
    return kinetic_optimal_schedule((r, lam), sigma_data=c)


def make_data(config: GenerativeConfig):
    """`(train, test)` arrays of shape `(n, dim)`."""
    import jax.random as jr

    from . import data as datasets

    d = config.data
    if d.dataset == "digits":
        images = datasets.digits(jr.key(d.seed)).ys * 2 - 1
        n_test = int(round(images.shape[0] * d.test_fraction))
        return images[n_test:], images[:n_test]
    make = getattr(datasets, d.dataset)
    key = jr.key(d.seed)
    return make(jr.fold_in(key, 0), d.n_train), make(jr.fold_in(key, 1), d.n_test)


def make_model(config: GenerativeConfig, dim: int, key):
    """The network of `config.model` for data of dimension `dim`."""
    from .diffusion import EpsMLP
    from .diffusion.losses import EDMPrecond
    from .models import CNF

    m = config.model
    if m.kind == "cnf":
        return CNF(
            dim, m.width, m.depth, key=key, trace=m.trace, rtol=m.rtol, atol=m.atol
        )
    net = EpsMLP(dim, m.width, m.depth, m.frequencies, key=key)
    if m.precondition:
        return EDMPrecond(net, make_schedule(config), m.sigma_data)
    return net


def _prediction(config):
    return "flow" if config.model.kind == "flow" else config.model.prediction


def make_loss(config: GenerativeConfig, time_sampling=None):
    """`loss(model, x0, key, noise=None) -> scalar` of the config."""
    import jax

    from .diffusion.losses import denoising_loss

    m, lc = config.model, config.loss
    if m.kind == "cnf":
        from .models.cnf import nll_loss

        return lambda model, x0, key, noise=None: nll_loss(model, x0, key)
    schedule = make_schedule(config)
    prediction = _prediction(config)

    def loss(model, x0, key, noise=None):
        main_key, fp_key = jax.random.split(key)
        value = denoising_loss(
            model, x0, main_key, schedule, prediction=prediction,
            weighting=lc.weighting, time_sampling=time_sampling or lc.time_sampling,
            distance=lc.distance, noise=noise, sigma_data=m.sigma_data,
        )  # fmt: skip
        if lc.fokker_planck:
            from .regularizers import fokker_planck_loss

            value = value + lc.fokker_planck * fokker_planck_loss(
                model, x0, fp_key, schedule, prediction=prediction
            )
        return value

    return loss


def fit(model, loss, x_train, training: GenTrainingConfig, key, steps=None, pairs=None):
    """Adam (cosine-decayed rate) on `loss` over batches drawn with replacement from
    `x_train` (and the paired noise `pairs`), all steps in one compiled `lax.scan`;
    returns `(model, losses, compile_seconds, train_seconds)`."""
    import equinox as eqx
    import jax
    import optax

    steps = training.steps if steps is None else steps
    batch = min(training.batch_size, x_train.shape[0])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = optax.adam(optax.cosine_decay_schedule(training.learning_rate, steps))

    def step(carry, key):
        params, opt_state = carry
        index_key, loss_key = jax.random.split(key)
        index = jax.random.randint(index_key, (batch,), 0, x_train.shape[0])
        noise = None if pairs is None else pairs[index]

        def objective(p):
            return loss(eqx.combine(p, static), x_train[index], loss_key, noise)

        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    def run(params, key):
        carry = (params, optimizer.init(params))
        (params, _), losses = jax.lax.scan(step, carry, jax.random.split(key, steps))
        return params, losses

    start = time.perf_counter()
    compiled = jax.jit(run).lower(params, key).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    params, losses = jax.block_until_ready(compiled(params, key))
    return (
        eqx.combine(params, static),
        losses,
        compile_seconds,
        time.perf_counter() - start,
    )


NFE_PER_STEP = {"euler": 1, "ddim": 1, "dpmpp_2m": 1, "heun": 2, "rf_solver": 2}
"""Model evaluations per step of the samplers whose NFE the metrics report."""


def _sampler(config):
    default = "euler" if config.model.kind == "flow" else "dpmpp_2m"
    return config.sample.sampler or default


def generate(config: GenerativeConfig, model, key, n: int, steps: int, dim: int):
    """`n` samples of `model` with the config's sampler in `steps` steps (the CNF
    solves its adaptive ODE and ignores `steps`)."""
    import jax

    from .diffusion import sample

    if config.model.kind == "cnf":
        return model.sample(key, n)
    schedule = make_schedule(config)
    x_t = schedule.sigma(schedule.t_max) * jax.random.normal(key, (n, dim))
    grid = "uniform_t" if config.model.kind == "flow" else "logsnr"

    def one(z):
        return sample(
            model, z, schedule, prediction=_prediction(config),
            sampler=_sampler(config), steps=steps, grid=grid,
        )  # fmt: skip

    return jax.jit(jax.vmap(one))(x_t)


def negative_log_likelihood(config: GenerativeConfig, model, x, key):
    """Mean NLL (nats per sample) of the test points `x`: the CNF's, or through the
    probability-flow ODE for flows and diffusion models."""
    import jax
    import jax.numpy as jnp

    if config.model.kind == "cnf":
        keys = jax.random.split(key, x.shape[0])
        return -float(jnp.mean(jax.jit(jax.vmap(model.log_prob))(x, keys)))
    from .diffusion import log_likelihood

    schedule = make_schedule(config)

    def one(xi):
        return log_likelihood(model, xi, schedule, prediction=_prediction(config))

    return -float(jnp.mean(jax.jit(jax.vmap(one))(x)))


def ode_sde_gap(config: GenerativeConfig, model, key, n: int, dim: int):
    """Samples of the probability-flow ODE (DPM-Solver++(2M), 64 steps) and of the
    reverse SDE (Euler–Maruyama, `sample.sde_steps`) from the same noise."""
    import jax

    from .diffusion import sample, sample_sde

    schedule = make_schedule(config)
    noise_key, sde_key = jax.random.split(key)
    x_t = schedule.sigma(schedule.t_max) * jax.random.normal(noise_key, (n, dim))
    prediction = _prediction(config)

    def ode(z):
        return sample(
            model, z, schedule, prediction=prediction, sampler="dpmpp_2m", steps=64
        )

    def sde(z, k):
        return sample_sde(
            model,
            z,
            schedule,
            key=k,
            prediction=prediction,
            steps=config.sample.sde_steps,
        )

    keys = jax.random.split(sde_key, n)
    return jax.jit(jax.vmap(ode))(x_t), jax.jit(jax.vmap(sde))(x_t, keys)


def _scores(samples, test, key):
    from .metrics import mmd, sliced_wasserstein

    return dict(
        sliced_w2=float(sliced_wasserstein(samples, test, key)),
        mmd=float(mmd(samples[:1024], test[:1024])),
    )


def evaluate(config: GenerativeConfig, model, test, key, prefix: str = "") -> tuple:
    """Sample at each `sample.steps` and score against `test`; returns the metrics
    and the samples."""
    import jax.random as jr

    from .diffusion.losses import straightness

    dim = test.shape[1]
    metrics, samples = {}, {}
    steps_list = (0,) if config.model.kind == "cnf" else config.sample.steps
    metric_key = jr.key(1234)
    for steps in steps_list:
        out = generate(
            config, model, jr.fold_in(key, steps), config.sample.n, steps, dim
        )
        samples[f"{prefix}steps_{steps}"] = out
        row = _scores(out, test, metric_key)
        per_step = NFE_PER_STEP.get(_sampler(config))
        if config.model.kind != "cnf":
            row["nfe"] = None if per_step is None else per_step * steps
        metrics[f"{prefix}steps_{steps}"] = row
    if config.model.kind == "flow":
        noise = jr.normal(jr.fold_in(key, 2**31 - 1), (512, dim))
        metrics[f"{prefix}straightness"] = float(
            straightness(model, noise, make_schedule(config))
        )
    return metrics, samples


def train_generative(config: GenerativeConfig) -> tuple[object, dict, dict]:
    """Train (and reflow) the config's model; returns the model, its metrics and
    its samples."""
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    from .diffusion.losses import reflow_pairs

    tr = config.training
    x_train, x_test = make_data(config)
    dim = x_train.shape[1]
    key = jr.key(tr.seed)
    model = make_model(config, dim, jr.fold_in(key, 0))
    initial, _ = evaluate(config, model, x_test, jr.fold_in(key, 1))
    model, losses, compile_s, train_s = fit(
        model, make_loss(config), x_train, tr, jr.fold_in(key, 2)
    )
    metrics = dict(
        kind=config.model.kind,
        dataset=config.data.dataset,
        sampler=None if config.model.kind == "cnf" else _sampler(config),
        initial=initial,
        final_loss=float(jnp.mean(losses[-50:])),
        compile_seconds=compile_s,
        train_seconds=train_s,
        samples_per_second=tr.steps * min(tr.batch_size, x_train.shape[0]) / train_s,
        losses=np.asarray(losses).tolist(),
    )
    scores, samples = evaluate(config, model, x_test, jr.fold_in(key, 3))
    metrics.update(scores)
    n_lik = min(config.sample.likelihood, x_test.shape[0])
    if n_lik:
        metrics["nll"] = negative_log_likelihood(
            config, model, x_test[:n_lik], jr.fold_in(key, 4)
        )
    if config.sample.sde_steps and config.model.kind == "diffusion":
        ode, sde = ode_sde_gap(config, model, jr.fold_in(key, 5), config.sample.n, dim)
        metric_key = jr.key(1234)
        metrics["ode_sde_gap"] = _scores(ode, sde, metric_key)["sliced_w2"]
        metrics["ode_to_data"] = _scores(ode, x_test, metric_key)["sliced_w2"]
        metrics["sde_to_data"] = _scores(sde, x_test, metric_key)["sliced_w2"]
        samples.update(ode_64=ode, sde=sde)
    if config.reflow.rounds:
        rf = config.reflow
        noise = jr.normal(jr.fold_in(key, 6), (rf.pairs, dim))
        schedule = make_schedule(config)
        start = noise * schedule.sigma(schedule.t_max)
        pairs_x0, _ = reflow_pairs(
            model, start, schedule, sampler=rf.sampler, steps=rf.steps
        )
        loss = make_loss(config, time_sampling=rf.time_sampling)
        model, reflow_losses, _, reflow_s = fit(
            model, loss, pairs_x0, tr, jr.fold_in(key, 7), rf.training_steps, start
        )
        scores, reflowed = evaluate(
            config, model, x_test, jr.fold_in(key, 3), "reflow_"
        )
        metrics.update(scores)
        metrics["reflow_train_seconds"] = reflow_s
        metrics["reflow_losses"] = np.asarray(reflow_losses).tolist()
        samples.update(reflowed)
    return model, metrics, samples


def _plot(directory, samples, test, metrics):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(samples)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3 * (len(names) + 1), 3))
    images = test.shape[1] == 64
    for ax, name, points in zip(axes, ["data", *names], [test, *samples.values()]):
        points = np.asarray(points)
        if images:
            grid = points[:16].reshape(4, 4, 8, 8).transpose(0, 2, 1, 3).reshape(32, 32)
            ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
        else:
            ax.scatter(points[:2048, 0], points[:2048, 1], s=1, alpha=0.5)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
        row = metrics.get(name, {})
        sw = f"\nSW2 {row['sliced_w2']:.3f}" if isinstance(row, dict) and row else ""
        ax.set_title(f"{name}{sw}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "samples.png"), dpi=80)
    plt.close(fig)


def run_task(source, overrides: Sequence[str] = ()) -> dict:
    """Load the config, train, write `metrics.json`, `model.eqx`, `samples.npz` and
    `samples.png`; returns the metrics (without the loss histories)."""
    import numpy as np

    from .config import atomic_write, write_run

    config = load_task_config(source, overrides)
    model, metrics, samples = train_generative(config)
    directory = os.path.join(config.run.out_dir, config.name)
    summary = write_run(directory, model, metrics)
    arrays = {k: np.asarray(v) for k, v in samples.items()}
    atomic_write(
        os.path.join(directory, "samples.npz"), lambda f: np.savez(f, **arrays)
    )
    _plot(directory, samples, np.asarray(make_data(config)[1]), metrics)
    return {k: v for k, v in summary.items() if k != "reflow_losses"}
