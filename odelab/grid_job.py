"""`odelab train CONFIG` with `task: learn_grid`: fit a sampler's time grid to the exact
flow map of an analytic Gaussian mixture, and compare it with the fixed grids.

A learn-grid config has `task`, `name` and six sections; every key is optional:

```yaml
task: learn_grid
name: gmm_unipc_nfe5
model: {kind: gaussian_mixture, components: 8, dim: 8, mean_std: 2.0, std: 0.3, seed: 0}
schedule: {kind: vp_discrete}
sampler: {name: unipc, nfe: 5, options: {}, final_denoise: true}
grid: {init: logsnr, learn_end: true, lambda_end_min: null}
training: {samples: 1024, seed: 2, iterations: 400, learning_rate: 0.1}
eval: {samples: 2000, seed: 1, reference_steps: 2000}
run: {out_dir: runs/learn_grid, plot: true}
```

`sampler.nfe` is the budget of model evaluations: the grid has the most steps that fit
in it (counting the final denoise). The training targets are the float64 exact flow
map (`odelab.bench.samplers.exact_flow_map`) of the training noise; the held-out noise
(another seed) measures the learned grid and the fixed grids (`FIXED_GRIDS`, t_max →
t_min, same sampler and final denoise). Outputs, in `run.out_dir/name/`: `grid.npz`
(`odelab.diffusion.learned_grid.load_grid`), `metrics.json` (held-out RMSE of every
grid, the ratio learned / best fixed, the loss history) and `grid.png` (the grids'
times and the loss curve).
"""

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import ClassVar

from .config import (
    ConfigError,
    _did_you_mean,
    _nonnegative,
    _positive,
    _Section,
    read_job_config,
)
from .sample_job import SampleModelConfig, ScheduleConfig, _schedule


FIXED_GRIDS = ("uniform_t", "logsnr", "karras", "time_quadratic")
"""The fixed grids a learned grid is compared with."""


@dataclasses.dataclass(frozen=True)
class GridSamplerConfig(_Section):
    """The sampler: `name` (`odelab.diffusion.sampling.SAMPLERS`), the budget `nfe`
    of model evaluations, `options` (the preset's keyword arguments), and
    `final_denoise` (end with $D(x, t_{end})$; counts one evaluation)."""

    _section: ClassVar[str] = "sampler"
    _limits: ClassVar[dict] = {"nfe": _positive}
    name: str = "unipc"
    nfe: int = 5
    options: dict = dataclasses.field(default_factory=dict)
    final_denoise: bool = True


@dataclasses.dataclass(frozen=True)
class GridConfig(_Section):
    """The learned grid: `init` (a fixed grid kind to start from), `learn_end`
    (whether the last time is learned too), `lambda_end_min` (the lowest log-SNR the
    learned end may reach; `None`: one unit above the noise end)."""

    _section: ClassVar[str] = "grid"
    _choices: ClassVar[dict] = {"init": FIXED_GRIDS}
    init: str = "logsnr"
    learn_end: bool = True
    lambda_end_min: float | None = None


@dataclasses.dataclass(frozen=True)
class GridTrainingConfig(_Section):
    """`samples` of training noise of seed `seed`, Adam's `iterations` and
    `learning_rate`, a minibatch `batch_size` (`None`: all samples), and the RK4
    steps of the float64 reference for the training targets."""

    _section: ClassVar[str] = "training"
    _limits: ClassVar[dict] = {
        "samples": _positive,
        "iterations": _positive,
        "learning_rate": _positive,
        "batch_size": _positive,
        "reference_steps": _positive,
    }
    samples: int = 1024
    seed: int = 2
    iterations: int = 400
    learning_rate: float = 0.1
    batch_size: int | None = None
    reference_steps: int = 500


@dataclasses.dataclass(frozen=True)
class GridEvalConfig(_Section):
    """Held-out noise: `samples` of seed `seed` (must differ from the training seed),
    and the RK4 steps of its float64 reference."""

    _section: ClassVar[str] = "eval"
    _limits: ClassVar[dict] = {"samples": _positive, "reference_steps": _positive}
    samples: int = 2000
    seed: int = 1
    reference_steps: int = 2000


@dataclasses.dataclass(frozen=True)
class GridRunConfig(_Section):
    """Where outputs go (`out_dir/name/`) and whether to draw `grid.png`."""

    _section: ClassVar[str] = "run"
    _limits: ClassVar[dict] = {"seed": _nonnegative}
    out_dir: str = "runs/learn_grid"
    plot: bool = True
    seed: int = 0


_SECTIONS = {
    "model": SampleModelConfig,
    "schedule": ScheduleConfig,
    "sampler": GridSamplerConfig,
    "grid": GridConfig,
    "training": GridTrainingConfig,
    "eval": GridEvalConfig,
    "run": GridRunConfig,
}


@dataclasses.dataclass(frozen=True)
class LearnGridConfig:
    name: str = "learn_grid"
    model: SampleModelConfig = dataclasses.field(default_factory=SampleModelConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    sampler: GridSamplerConfig = dataclasses.field(default_factory=GridSamplerConfig)
    grid: GridConfig = dataclasses.field(default_factory=GridConfig)
    training: GridTrainingConfig = dataclasses.field(default_factory=GridTrainingConfig)
    eval: GridEvalConfig = dataclasses.field(default_factory=GridEvalConfig)
    run: GridRunConfig = dataclasses.field(default_factory=GridRunConfig)


def load_grid_config(source, overrides: Sequence[str] = ()) -> LearnGridConfig:
    """Read and check a learn-grid config (a YAML path or a mapping), applying
    `section.key=value` overrides; raises `ConfigError` with a one-line message."""
    tops, sections = read_job_config(
        source, overrides, _SECTIONS, "learn-grid", top=("task", "name")
    )
    task = tops.get("task", "learn_grid")
    if task != "learn_grid":
        raise ConfigError(f"`task` must be learn_grid for this job, got {task!r}")
    name = tops.get("name", "learn_grid")
    config = LearnGridConfig(name=name, **sections)
    _check(config)
    return config


def _check(config: LearnGridConfig) -> None:
    from .diffusion.sampling import SAMPLERS

    name = config.sampler.name
    if name not in SAMPLERS:
        raise ConfigError(
            f"`sampler.name` must be one of {', '.join(SAMPLERS)}; got {name!r}"
            + _did_you_mean(name, list(SAMPLERS))
        )
    if config.eval.seed == config.training.seed:
        raise ConfigError(
            "`eval.seed` must differ from `training.seed`: the held-out noise must "
            "not be the training noise"
        )
    bs = config.training.batch_size
    if bs is not None and bs > config.training.samples:
        raise ConfigError(
            f"`training.batch_size` ({bs}) must be <= `training.samples` "
            f"({config.training.samples})"
        )
    steps_for_budget(config.sampler)


def steps_for_budget(cfg: GridSamplerConfig) -> int:
    """The most ODE steps of `cfg.name` that fit in `cfg.nfe` evaluations (the final
    denoise counting one); `ConfigError` if none fits or the order needs more."""
    from .diffusion.sampling import SAMPLERS
    from .solvers.nfe import nfe_costs

    preset = SAMPLERS[cfg.name]
    costs = nfe_costs(preset.make(None, **cfg.options), None)
    if costs is None:
        raise ConfigError(f"sampler {cfg.name!r} has no static evaluation count")
    init, first, later = costs
    fixed = init + first + int(cfg.final_denoise)
    order = cfg.options.get("order", preset.order)
    steps = 0 if fixed > cfg.nfe else 1 + (cfg.nfe - fixed) // max(later, 1)
    if steps < max(order, 1):
        raise ConfigError(
            f"`sampler.nfe` = {cfg.nfe} leaves {steps} step(s) of {cfg.name!r}, which "
            f"needs at least {max(order, 1)}; raise `sampler.nfe`"
        )
    return steps


def run_task(source, overrides: Sequence[str] = ()) -> dict:
    """Load a learn-grid config and run it (`run_learn_grid`); `odelab train`'s entry
    point for `task: learn_grid`."""
    return run_learn_grid(load_grid_config(source, overrides))


def _rmse(x, ref) -> float:
    import numpy as np

    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2)))


def run_learn_grid(config: LearnGridConfig, *, log=print) -> dict:
    """Fit the grid as configured; write `grid.npz`, `metrics.json` and `grid.png`
    under `run.out_dir/name/`; return the metrics (those of `metrics.json` but the
    grids' times and the loss history)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .bench.samplers import exact_flow_map
    from .config import atomic_write
    from .diffusion.analytic import GaussianMixture
    from .diffusion.learned_grid import fit_grid, save_grid
    from .diffusion.sampling import sample
    from .diffusion.schedules import time_grid

    m, s, g = config.model, config.sampler, config.grid
    tr, ev = config.training, config.eval
    steps = steps_for_budget(s)
    rng = np.random.default_rng(m.seed)
    params = (
        m.mean_std * rng.standard_normal((m.components, m.dim)),
        np.full(m.components, m.std),
        np.full(m.components, 1.0 / m.components),
    )
    mix = GaussianMixture(*(jnp.asarray(p, jnp.float32) for p in params))
    sched = _schedule(config.schedule)
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    scale = float(sched.sigma(sched.t_max))

    def noise(seed, n):
        x = np.random.default_rng(seed).standard_normal((n, m.dim))
        return (x * scale).astype(np.float32)

    x_train, x_eval = noise(tr.seed, tr.samples), noise(ev.seed, ev.samples)
    start = time.perf_counter()
    y_train = exact_flow_map(params, sched, x_train, steps=tr.reference_steps)
    y_eval = exact_flow_map(params, sched, x_eval, steps=ev.reference_steps)
    reference_s = time.perf_counter() - start

    end_range = None
    if g.lambda_end_min is not None:
        end_range = (g.lambda_end_min, float(sched.lam(sched.t_min)))
    start = time.perf_counter()
    try:
        fit = fit_grid(
            model,
            sched,
            sampler=s.name,
            steps=steps,
            x_train=x_train,
            targets=y_train,
            init=g.init,
            iterations=tr.iterations,
            learning_rate=tr.learning_rate,
            final_denoise=s.final_denoise,
            learn_end=g.learn_end,
            end_range=end_range,
            sampler_options=dict(s.options),
            batch_size=tr.batch_size,
            key=jax.random.key(config.run.seed),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    fit_s = time.perf_counter() - start

    def held_out(times):
        fn = jax.jit(
            jax.vmap(
                lambda x: sample(
                    model,
                    x,
                    sched,
                    sampler=s.name,
                    steps=steps,
                    grid=times,
                    final_denoise=s.final_denoise,
                    sampler_options=dict(s.options),
                )
            )
        )
        return _rmse(fn(jnp.asarray(x_eval)), y_eval)

    grids = {kind: np.asarray(time_grid(sched, steps, kind)) for kind in FIXED_GRIDS}
    grids["learned"] = np.asarray(fit.times)
    # The fixed grids by name, as `sample` builds them (an array of float32
    # "uniform_t" ends a round-off below t_min, which `sample` rejects).
    rmse = {kind: held_out(kind) for kind in FIXED_GRIDS}
    rmse["learned"] = held_out(jnp.asarray(fit.times))
    best_fixed = min(FIXED_GRIDS, key=rmse.__getitem__)
    losses = [float(v) for v in np.asarray(fit.losses)]
    metrics = dict(
        name=config.name,
        sampler=s.name,
        nfe=s.nfe,
        steps=steps,
        final_denoise=s.final_denoise,
        init=g.init,
        learn_end=g.learn_end,
        rmse=rmse,
        best_fixed=best_fixed,
        ratio_learned_to_best_fixed=rmse["learned"] / rmse[best_fixed],
        train_rmse_initial=float(np.sqrt(losses[0])),
        train_rmse_final=float(np.sqrt(float(fit.loss))),
        times={k: [float(t) for t in v] for k, v in grids.items()},
        lambdas={
            k: [float(v) for v in np.asarray(sched.lam(jnp.asarray(t)))]
            for k, t in grids.items()
        },
        losses=losses,
        train_samples=tr.samples,
        eval_samples=ev.samples,
        reference_s=reference_s,
        fit_s=fit_s,
    )
    out_dir = os.path.join(config.run.out_dir, config.name)
    os.makedirs(out_dir, exist_ok=True)
    save_grid(
        os.path.join(out_dir, "grid.npz"),
        grids["learned"],
        sampler=s.name,
        sampler_options=dict(s.options),
        steps=steps,
        nfe=s.nfe,
        final_denoise=s.final_denoise,
        schedule=dataclasses.asdict(config.schedule),
        held_out_rmse=rmse["learned"],
    )
    atomic_write(
        os.path.join(out_dir, "metrics.json"),
        lambda f: f.write(json.dumps(metrics, indent=2).encode()),
    )
    if config.run.plot:
        _plot(out_dir, metrics)
    log(
        f"{config.name}: {s.name}, NFE {s.nfe} ({steps} steps): held-out RMSE learned "
        f"{rmse['learned']:.4g}, best fixed ({best_fixed}) {rmse[best_fixed]:.4g}, "
        f"ratio {metrics['ratio_learned_to_best_fixed']:.3f}; wrote {out_dir}"
    )
    summary = ("times", "lambdas", "losses")
    return {k: v for k, v in metrics.items() if k not in summary}


def _plot(out_dir: str, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_grid, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    kinds = list(metrics["lambdas"])
    for row, kind in enumerate(kinds):
        lam = metrics["lambdas"][kind]
        ax_grid.plot(lam, [row] * len(lam), "o-", ms=5)
    ax_grid.set_yticks(
        range(len(kinds)), [f"{k} ({metrics['rmse'][k]:.3g})" for k in kinds]
    )
    ax_grid.set_xlabel("log-SNR λ of the grid's times (held-out RMSE)")
    ax_grid.set_title(f"{metrics['sampler']}, NFE {metrics['nfe']}")
    ax_loss.semilogy(metrics["losses"])
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training MSE vs exact flow map")
    ax_loss.set_title(
        f"learned / best fixed = {metrics['ratio_learned_to_best_fixed']:.3f}"
    )
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "grid.png"), dpi=100)
    plt.close(fig)
