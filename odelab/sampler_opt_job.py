"""`odelab train CONFIG` for configs with `task: optimize_noise` or
`task: finetune_reward`: gradients through a sampler of a small trained 2-D model.

Both train an eps model on an embedded 2-D dataset (`odelab.diffusion.dsm`), then
differentiate through its sampler (`odelab.diffusion.finetune`) towards a target disc:

```yaml
task: optimize_noise            # or finetune_reward
name: optimize_noise_2d
data: {kind: eight_gaussians, samples: 4096, seed: 0}
model: {width: 64, depth: 2, steps: 3000, batch: 256, learning_rate: 3.0e-3, seed: 1}
sampler: {name: dpmpp_2m, steps: 10, grid: logsnr, adjoint: adjoint_dpm}
target: {center: [2.0, 0.0], radius: 0.5, temperature: 0.1}
optimize: {iterations: 100, learning_rate: 0.05, prior_weight: 0.1, samples: 256, seed: 2}
run: {out_dir: runs, plot: true}
```

A `finetune_reward` config has a `finetune` section (`iterations`, `learning_rate`,
`kl_weight`, `batch`, `kl_draws`, `samples`, `seed`) instead of `optimize`. The loss of
a sample is the soft distance to the disc, $\\tau\\,\\mathrm{softplus}((|x - c| -
r)/\\tau)$; the reward is its negative. Outputs, in `run.out_dir/<task>/<name>/`:
`metrics.json` (loss or reward before/after, fraction of samples in the disc
before/after, the prior or KL term) and `samples.png` (samples before/after).
"""

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from .config import (
    ConfigError,
    _did_you_mean,
    _nonnegative,
    _positive,
    _read_yaml,
    _Section,
    read_job_config,
)


TASKS = ("optimize_noise", "finetune_reward")
DATA_KINDS = ("eight_gaussians", "moons", "checkerboard", "swiss_roll")
ADJOINTS = ("adjoint_dpm", "checkpoint", "reversible")


@dataclasses.dataclass(frozen=True)
class DataSection(_Section):
    """The 2-D training set: `kind` (`DATA_KINDS`), `samples`, `seed`."""

    _section: ClassVar[str] = "data"
    _choices: ClassVar[dict] = {"kind": DATA_KINDS}
    _limits: ClassVar[dict] = {"samples": _positive}
    kind: str = "eight_gaussians"
    samples: int = 4096
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelSection(_Section):
    """The eps MLP and its denoising score matching: `width`, `depth`, Adam `steps`,
    `batch`, `learning_rate`, `seed`."""

    _section: ClassVar[str] = "model"
    _limits: ClassVar[dict] = {
        "width": _positive,
        "depth": _positive,
        "steps": _positive,
        "batch": _positive,
        "learning_rate": _positive,
    }
    width: int = 64
    depth: int = 2
    steps: int = 3000
    batch: int = 256
    learning_rate: float = 3e-3
    seed: int = 1


@dataclasses.dataclass(frozen=True)
class SamplerSection(_Section):
    """The sampler differentiated through: `name`, `steps`, `grid`, `adjoint`
    (`ADJOINTS`; the schedule is `VPLinear`)."""

    _section: ClassVar[str] = "sampler"
    _choices: ClassVar[dict] = {"adjoint": ADJOINTS}
    _limits: ClassVar[dict] = {"steps": _positive}
    name: str = "dpmpp_2m"
    steps: int = 10
    grid: str = "logsnr"
    adjoint: str = "adjoint_dpm"


@dataclasses.dataclass(frozen=True)
class TargetSection(_Section):
    """The target disc: `center` (two numbers), `radius`, and the `temperature`
    $\\tau$ of its soft distance."""

    _section: ClassVar[str] = "target"
    _limits: ClassVar[dict] = {"radius": _positive, "temperature": _positive}
    center: list = dataclasses.field(default_factory=lambda: [2.0, 0.0])
    radius: float = 0.5
    temperature: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if len(self.center) != 2 or not all(
            isinstance(c, int | float) and not isinstance(c, bool) for c in self.center
        ):
            raise ConfigError(
                f"`target.center` must be two numbers, got {self.center!r}"
            )


@dataclasses.dataclass(frozen=True)
class OptimizeSection(_Section):
    """Noise optimisation: Adam `iterations`, `learning_rate`, `prior_weight`, and
    the number of noise `samples` (of seed `seed`) optimised."""

    _section: ClassVar[str] = "optimize"
    _limits: ClassVar[dict] = {
        "iterations": _positive,
        "learning_rate": _positive,
        "prior_weight": _nonnegative,
        "samples": _positive,
    }
    iterations: int = 100
    learning_rate: float = 0.05
    prior_weight: float = 0.1
    samples: int = 256
    seed: int = 2


@dataclasses.dataclass(frozen=True)
class FinetuneSection(_Section):
    """Reward fine-tuning: Adam `iterations`, `learning_rate`, `kl_weight`, `batch`
    (noise draws per iteration), `kl_draws`; `samples` (of seed `seed`) for the
    before/after evaluation."""

    _section: ClassVar[str] = "finetune"
    _limits: ClassVar[dict] = {
        "iterations": _positive,
        "learning_rate": _positive,
        "kl_weight": _nonnegative,
        "batch": _positive,
        "kl_draws": _positive,
        "samples": _positive,
    }
    iterations: int = 200
    learning_rate: float = 1e-3
    kl_weight: float = 0.1
    batch: int = 256
    kl_draws: int = 4
    samples: int = 1024
    seed: int = 2


@dataclasses.dataclass(frozen=True)
class RunSection(_Section):
    """Outputs under `out_dir/<task>/<name>/`; `plot` a PNG."""

    _section: ClassVar[str] = "run"
    out_dir: str = "runs"
    plot: bool = True


_COMMON = {
    "data": DataSection,
    "model": ModelSection,
    "sampler": SamplerSection,
    "target": TargetSection,
    "run": RunSection,
}
_SECTIONS = {
    "optimize_noise": {**_COMMON, "optimize": OptimizeSection},
    "finetune_reward": {**_COMMON, "finetune": FinetuneSection},
}


@dataclasses.dataclass(frozen=True)
class SamplerOptConfig:
    """A checked config: `task`, `name` and the task's sections (`opt` is the
    `optimize` or `finetune` section)."""

    task: str
    name: str
    data: DataSection
    model: ModelSection
    sampler: SamplerSection
    target: TargetSection
    run: RunSection
    opt: OptimizeSection | FinetuneSection


def load_task_config(source, overrides: Sequence[str] = ()) -> SamplerOptConfig:
    """Read and check a config (a YAML path or a mapping) with `section.key=value`
    overrides; raises `ConfigError` with a one-line message."""
    raw = dict(source) if isinstance(source, dict) else _read_yaml(Path(source))
    task = (raw or {}).get("task") if isinstance(raw, dict) else None
    if task not in TASKS:
        raise ConfigError(
            f"`task` must be one of {', '.join(TASKS)}; got {task!r}"
            + _did_you_mean(task, TASKS)
        )
    classes = _SECTIONS[task]
    tops, sections = read_job_config(
        raw, overrides, classes, f"{task} task", top=("task", "name")
    )
    name = tops.get("name", task)
    opt_key = "optimize" if task == "optimize_noise" else "finetune"
    built = {s: sections.get(s) or cls() for s, cls in classes.items()}
    return SamplerOptConfig(
        task=task,
        name=name,
        opt=built.pop(opt_key),
        **built,
    )


def _check_sampler(cfg: SamplerSection) -> None:
    from .diffusion.sampling import SAMPLERS

    if cfg.name not in SAMPLERS:
        raise ConfigError(
            f"`sampler.name` must be one of {', '.join(SAMPLERS)}; got {cfg.name!r}"
            + _did_you_mean(cfg.name, list(SAMPLERS))
        )


def _dataset(cfg: DataSection):
    import jax

    from . import data

    return getattr(data, cfg.kind)(jax.random.key(cfg.seed), cfg.samples)


def run_task(source, overrides: Sequence[str] = ()) -> dict:
    """Load the config, run its task and write its outputs; returns the metrics."""
    config = load_task_config(source, overrides)
    _check_sampler(config.sampler)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .config import atomic_write
    from .diffusion import VPLinear
    from .diffusion.dsm import train_denoiser
    from .diffusion.finetune import finetune_reward, optimize_noise, sampler_map

    start = time.perf_counter()
    schedule = VPLinear()
    data = _dataset(config.data)
    m = config.model
    model, dsm = train_denoiser(
        data,
        schedule,
        key=jax.random.key(m.seed),
        width=m.width,
        depth=m.depth,
        steps=m.steps,
        batch=m.batch,
        learning_rate=m.learning_rate,
    )
    tgt = config.target
    centre = jnp.asarray(tgt.center, data.dtype)
    tau = tgt.temperature

    def region_loss(x):
        return tau * jax.nn.softplus((jnp.linalg.norm(x - centre) - tgt.radius) / tau)

    def inside(x):
        return float(jnp.mean(jnp.linalg.norm(x - centre, axis=-1) < tgt.radius))

    s = config.sampler
    kw = dict(sampler=s.name, steps=s.steps, grid=s.grid, adjoint=s.adjoint)
    opt = config.opt
    x_t = jax.random.normal(jax.random.key(opt.seed), (opt.samples, 2), data.dtype)
    before = jax.jit(sampler_map(model, schedule, **kw))(x_t)
    metrics: dict[str, Any] = dict(
        task=config.task,
        name=config.name,
        sampler=s.name,
        steps=s.steps,
        adjoint=s.adjoint,
        dsm_loss_first=float(jnp.mean(dsm[:100])),
        dsm_loss_last=float(jnp.mean(dsm[-100:])),
    )
    if config.task == "optimize_noise":
        out = optimize_noise(
            model,
            x_t,
            schedule,
            region_loss,
            iterations=opt.iterations,
            learning_rate=opt.learning_rate,
            prior_weight=opt.prior_weight,
            **kw,
        )
        after = out.samples
        prior = lambda z: 0.5 * float(jnp.mean(jnp.sum(z**2, -1)))  # noqa: E731
        metrics.update(
            loss_before=float(out.losses[0]),
            loss_after=float(
                jnp.mean(jax.vmap(region_loss)(after))
                + opt.prior_weight * prior(out.x_t)
            ),
            prior_before=prior(x_t),
            prior_after=prior(out.x_t),
        )
    else:
        tuned = finetune_reward(
            model,
            schedule,
            lambda x: -region_loss(x),
            key=jax.random.key(opt.seed + 1),
            shape=(2,),
            kl_weight=opt.kl_weight,
            iterations=opt.iterations,
            batch=opt.batch,
            learning_rate=opt.learning_rate,
            kl_draws=opt.kl_draws,
            **kw,
        )
        after = jax.jit(sampler_map(tuned.model, schedule, **kw))(x_t)
        tail = max(1, opt.iterations // 10)
        metrics.update(
            reward_before=-float(jnp.mean(jax.vmap(region_loss)(before))),
            reward_after=-float(jnp.mean(jax.vmap(region_loss)(after))),
            kl_first=float(tuned.kls[0]),
            kl_after=float(jnp.mean(tuned.kls[-tail:])),
            kl_weight=opt.kl_weight,
        )
    metrics.update(
        in_region_before=inside(before),
        in_region_after=inside(after),
        wall_s=time.perf_counter() - start,
    )
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
        raise RuntimeError(
            f"{config.task} produced non-finite {', '.join(bad)}: lower the learning "
            "rate or raise the regularisation weight."
        )
    out_dir = os.path.join(config.run.out_dir, config.task, config.name)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(
        os.path.join(out_dir, "metrics.json"),
        lambda f: f.write(json.dumps(metrics, indent=2).encode()),
    )
    if config.run.plot:
        _plot(out_dir, np.asarray(data), np.asarray(before), np.asarray(after), tgt)
    return metrics


def _plot(out_dir, data, before, after, target):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, points, title in [(axes[0], before, "before"), (axes[1], after, "after")]:
        ax.scatter(data[:, 0], data[:, 1], s=1, alpha=0.2, c="grey", label="data")
        ax.scatter(points[:, 0], points[:, 1], s=3, label="samples")
        ax.add_patch(
            plt.Circle(target.center, target.radius, fill=False, color="red", lw=1.5)
        )
        ax.set_title(title)
        ax.set_aspect("equal")
    axes[0].legend(loc="lower left", markerscale=3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "samples.png"), dpi=100)
    plt.close(fig)
