"""`odelab sample CONFIG`: draw samples with a named sampler and write them, a plot and
metrics.

A sample config has a `name` and four sections; every key is optional:

```yaml
name: gmm_unipc
model: {kind: gaussian_mixture, components: 8, dim: 8, mean_std: 2.0, std: 0.3, seed: 0}
schedule: {kind: vp_discrete}
sampler: {name: unipc, steps: 10, grid: linspace, options: {order: 3}}
run: {samples: 2000, seed: 1, out_dir: runs/sample}
```

The model is the analytic Gaussian mixture of `odelab.diffusion.analytic` (its exact
noise prediction), so the run also reports the error against the exact flow map (a
float64 solve); trained models join when generative training lands. Outputs, in
`run.out_dir/name/`: `samples.npz` (`x_t`, `samples`, `exact`), `metrics.json` (RMSE,
median error, NFE, wall and compile time) and `samples.png` (the first two coordinates
of data, samples and exact flow map).
"""

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import ClassVar

from .config import ConfigError, _did_you_mean, _positive, _Section, read_job_config


SCHEDULE_KINDS = ("vp_discrete", "vp_linear", "vp_cosine")
"""Schedules a sample config can name (variance preserving: the mixture's eps model
is defined for every schedule, these are the ones with a DDPM-style time axis)."""


@dataclasses.dataclass(frozen=True)
class SampleModelConfig(_Section):
    """The model: `kind` (only `"gaussian_mixture"` for now), its `components`,
    `dim`, the scale `mean_std` of its means, component `std`, and the `seed` of its
    means."""

    _section: ClassVar[str] = "model"
    _choices: ClassVar[dict] = {"kind": ("gaussian_mixture",)}
    _limits: ClassVar[dict] = {
        "components": _positive,
        "dim": _positive,
        "mean_std": _positive,
        "std": _positive,
    }
    kind: str = "gaussian_mixture"
    components: int = 8
    dim: int = 8
    mean_std: float = 2.0
    std: float = 0.3
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(_Section):
    """The noise schedule: `kind` in `SCHEDULE_KINDS`; `train_steps`, `beta_start`,
    `beta_end` for `vp_discrete` (DDPM's linear β table)."""

    _section: ClassVar[str] = "schedule"
    _choices: ClassVar[dict] = {"kind": SCHEDULE_KINDS}
    _limits: ClassVar[dict] = {
        "train_steps": _positive,
        "beta_start": _positive,
        "beta_end": _positive,
    }
    kind: str = "vp_discrete"
    train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclasses.dataclass(frozen=True)
class SamplerConfig(_Section):
    """The sampler: `name` (`odelab.diffusion.sampling.SAMPLERS`), `steps`, `grid`
    (a `time_grid` kind), `options` (the preset's keyword arguments),
    `final_denoise` (`None`: the grid's default)."""

    _section: ClassVar[str] = "sampler"
    _limits: ClassVar[dict] = {"steps": _positive}
    name: str = "dpmpp_2m"
    steps: int = 10
    grid: str = "linspace"
    options: dict = dataclasses.field(default_factory=dict)
    final_denoise: bool | None = None


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """`samples` to draw from noise of seed `seed`, written under `out_dir`."""

    _section: ClassVar[str] = "run"
    _limits: ClassVar[dict] = {"samples": _positive}
    samples: int = 2000
    seed: int = 1
    out_dir: str = "runs/sample"
    plot: bool = True


_SECTIONS = {
    "model": SampleModelConfig,
    "schedule": ScheduleConfig,
    "sampler": SamplerConfig,
    "run": RunConfig,
}


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    name: str = "sample"
    model: SampleModelConfig = dataclasses.field(default_factory=SampleModelConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


def load_sample_config(source, overrides: Sequence[str] = ()) -> SampleConfig:
    """Read and check a sample config (a YAML path or a mapping), applying
    `section.key=value` overrides; raises `ConfigError` with a one-line message."""
    tops, sections = read_job_config(source, overrides, _SECTIONS, "sample")
    return SampleConfig(name=tops.get("name", "sample"), **sections)


def _schedule(cfg: ScheduleConfig):
    from .diffusion import VPCosine, VPDiscrete, VPLinear

    if cfg.kind == "vp_discrete":
        return VPDiscrete.ddpm_linear(cfg.train_steps, cfg.beta_start, cfg.beta_end)
    return VPLinear() if cfg.kind == "vp_linear" else VPCosine()


def run_sample(config: SampleConfig) -> dict:
    """Sample as configured; write `samples.npz`, `metrics.json` and `samples.png`;
    return the metrics."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .bench.samplers import exact_flow_map
    from .config import atomic_write
    from .diffusion.analytic import GaussianMixture
    from .diffusion.sampling import SAMPLERS, sample

    if config.sampler.name not in SAMPLERS:
        raise ConfigError(
            f"`sampler.name` must be one of {', '.join(SAMPLERS)}; got "
            f"{config.sampler.name!r}"
            + _did_you_mean(config.sampler.name, list(SAMPLERS))
        )
    m = config.model
    rng = np.random.default_rng(m.seed)
    params = (
        m.mean_std * rng.standard_normal((m.components, m.dim)),
        np.full(m.components, m.std),
        np.full(m.components, 1.0 / m.components),
    )
    mix = GaussianMixture(*(jnp.asarray(p, jnp.float32) for p in params))
    sched = _schedule(config.schedule)
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x_t = np.random.default_rng(config.run.seed).standard_normal(
        (config.run.samples, m.dim)
    )
    x_t = x_t.astype(np.float32) * float(sched.sigma(sched.t_max))
    s = config.sampler
    fn = jax.jit(
        jax.vmap(
            lambda x: sample(
                model,
                x,
                sched,
                sampler=s.name,
                steps=s.steps,
                grid=s.grid,
                final_denoise=s.final_denoise,
                sampler_options=dict(s.options),
            )
        )
    )
    start = time.perf_counter()
    out = jax.block_until_ready(fn(jnp.asarray(x_t)))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = np.asarray(jax.block_until_ready(fn(jnp.asarray(x_t))))
    wall_s = time.perf_counter() - start
    exact = exact_flow_map(params, sched, x_t)
    sq = (out.astype(np.float64) - exact) ** 2
    metrics = dict(
        name=config.name,
        sampler=s.name,
        grid=s.grid,
        steps=s.steps,
        rmse=float(np.sqrt(np.mean(sq))),
        median_err=float(np.median(np.sqrt(np.mean(sq, -1)))),
        wall_ms=1e3 * wall_s,
        compile_s=compile_s,
        samples=config.run.samples,
    )
    out_dir = os.path.join(config.run.out_dir, config.name)
    os.makedirs(out_dir, exist_ok=True)
    npz = os.path.join(out_dir, "samples.npz")
    atomic_write(npz, lambda f: np.savez(f, x_t=x_t, samples=out, exact=exact))
    atomic_write(
        os.path.join(out_dir, "metrics.json"),
        lambda f: f.write(json.dumps(metrics, indent=2).encode()),
    )
    if config.run.plot:
        _plot(out_dir, mix, out, exact, metrics)
    return metrics


def _plot(out_dir, mix, out, exact, metrics):
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = mix.sample(jax.random.key(0), out.shape[0])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.3, label="data")
    ax.scatter(exact[:, 0], exact[:, 1], s=6, marker="x", label="exact flow map")
    ax.scatter(out[:, 0], out[:, 1], s=2, label=f"{metrics['sampler']}")
    ax.set_title(
        f"{metrics['sampler']}, {metrics['steps']} steps on {metrics['grid']}: "
        f"RMSE {metrics['rmse']:.3g}"
    )
    ax.legend(loc="best", markerscale=3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "samples.png"), dpi=100)
    plt.close(fig)
