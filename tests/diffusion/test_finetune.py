"""Gradients through samplers, applied (`odelab.diffusion.dsm`, `.finetune`) and the
`optimize_noise` / `finetune_reward` jobs (`odelab.sampler_opt_job`)."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from odelab.cli import main
from odelab.config import ConfigError
from odelab.data import eight_gaussians
from odelab.diffusion import VPLinear
from odelab.diffusion.dsm import EpsMLP, dsm_loss, train_denoiser
from odelab.diffusion.finetune import (
    finetune_reward,
    kl_bound,
    optimize_noise,
    sampler_map,
)
from odelab.sampler_opt_job import load_task_config
from tests.helpers import ORDER_SLACK, check_grad, estimate_order


SCHED = VPLinear()
CENTRE = jnp.array([2.0, 0.0])


def _region_loss(x):
    return 0.1 * jax.nn.softplus(
        (jnp.linalg.norm(x - CENTRE.astype(x.dtype)) - 0.5) / 0.1
    )


def _inside(x):
    return float(jnp.mean(jnp.linalg.norm(x - CENTRE, axis=-1) < 0.5))


@pytest.fixture(scope="module")
def trained():
    # Module scope: built before the per-test flags, under JAX's default promotion
    # (optax's Adam needs it, see tests/conftest.py).
    data = eight_gaussians(jax.random.key(0), 2048)
    model, losses = train_denoiser(data, SCHED, key=jax.random.key(1), steps=1500)
    return data, model, losses


@pytest.mark.loose_promotion
def test_train_denoiser_lowers_the_dsm_loss(trained):
    data, model, losses = trained
    init = EpsMLP(2, key=jax.random.split(jax.random.key(1))[0])
    key = jax.random.key(5)
    before, after = dsm_loss(init, SCHED, data, key), dsm_loss(model, SCHED, data, key)
    assert float(after) < 0.75 * float(before), (before, after)
    assert float(jnp.mean(losses[-100:])) < float(jnp.mean(losses[:100]))


@pytest.mark.loose_promotion
def test_optimize_noise_moves_samples_into_the_region(trained):
    _, model, _ = trained
    x_t = jax.random.normal(jax.random.key(2), (64, 2))
    before = sampler_map(model, SCHED)(x_t)
    out = optimize_noise(model, x_t, SCHED, _region_loss, iterations=40)
    assert out.history.shape == (41, 64, 2)
    assert float(out.losses[-1]) < 0.2 * float(out.losses[0])
    assert _inside(out.samples) > _inside(before) + 0.5
    # The prior keeps the noise bounded (no drift to the data's scale).
    assert float(jnp.max(jnp.abs(out.x_t))) < 4.0


@pytest.mark.loose_promotion
def test_finetune_reward_raises_the_reward_and_reports_the_kl(trained):
    _, model, _ = trained
    reward = lambda x: -_region_loss(x)
    out = finetune_reward(
        model,
        SCHED,
        reward,
        key=jax.random.key(3),
        shape=(2,),
        iterations=40,
        batch=64,
        learning_rate=1e-3,
        kl_weight=0.1,
    )
    first, last = float(jnp.mean(out.rewards[:5])), float(jnp.mean(out.rewards[-5:]))
    assert last > first + 0.5 * abs(first), (first, last)
    assert float(out.kls[0]) < 1e-6  # the model starts at the reference
    assert float(out.kls[-1]) > 0.0 and bool(jnp.all(jnp.isfinite(out.kls)))
    x_t = jax.random.normal(jax.random.key(4), (256, 2))
    before = sampler_map(model, SCHED)(x_t)
    after = sampler_map(out.model, SCHED)(x_t)
    assert _inside(after) > _inside(before) + 0.3


def test_kl_bound_is_zero_for_the_reference_and_positive_otherwise():
    model = EpsMLP(2, width=8, depth=1, key=jax.random.key(0))
    other = EpsMLP(2, width=8, depth=1, key=jax.random.key(1))
    x0 = jax.random.normal(jax.random.key(2), (16, 2))
    assert float(kl_bound(model, model, SCHED, x0, jax.random.key(3))) == 0.0
    assert float(kl_bound(other, model, SCHED, x0, jax.random.key(3))) > 0.0


# Gradients through the sampler of a tiny float64 model: the discrete gradient
# ("checkpoint") against finite differences of the same discrete sampler, and the
# continuous adjoint ("adjoint_dpm") against it within the discretisation error, which
# shrinks at the sampler's order.


def _tiny_loss(sampler, adjoint, steps):
    def loss(z):
        x_t, params = z
        model = eqx.combine(params, _TINY_STATIC)
        x0 = sampler_map(model, SCHED, sampler=sampler, steps=steps, adjoint=adjoint)(
            x_t
        )
        return jnp.mean(jax.vmap(_region_loss)(x0))

    return loss


_TINY_STATIC = eqx.partition(
    EpsMLP(2, width=8, depth=1, key=jax.random.key(0)), eqx.is_inexact_array
)[1]


def _tiny_point():
    model = EpsMLP(2, width=8, depth=1, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    x_t = jax.random.normal(jax.random.key(1), (3, 2), jnp.float64)
    return (x_t, params)


def _max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(u - v)))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.mark.x64
def test_checkpoint_gradient_matches_finite_differences():
    check_grad(_tiny_loss("dpmpp_2m", "checkpoint", 10), _tiny_point())


@pytest.mark.x64
@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("dpmpp_2m", 2)])
def test_adjoint_dpm_gradient_agrees_with_checkpoint_to_the_discretisation(
    sampler, order
):
    z = _tiny_point()
    steps = (10, 20, 40)
    diffs = []
    for n in steps:
        g_ckpt = jax.jit(jax.grad(_tiny_loss(sampler, "checkpoint", n)))(z)
        g_dpm = jax.jit(jax.grad(_tiny_loss(sampler, "adjoint_dpm", n)))(z)
        diffs.append(_max_diff(g_ckpt, g_dpm))
    # Both converge to the continuous gradient at the sampler's order, so their
    # difference does too (or faster, where the leading errors coincide).
    measured = estimate_order(diffs, [1.0 / n for n in steps])
    assert measured > order - ORDER_SLACK, (measured, diffs)


@pytest.mark.loose_promotion
@pytest.mark.parametrize("task", ["optimize_noise", "finetune_reward"])
def test_cli_runs_each_task(task, tmp_path):
    section = "optimize" if task == "optimize_noise" else "finetune"
    argv = [
        "train",
        f"configs/{task}_2d.yaml",
        "--cache-dir",
        "",
        "--set",
        f"run.out_dir={tmp_path}",
        "--set",
        "model.steps=200",
        "--set",
        "data.samples=512",
        "--set",
        f"{section}.iterations=3",
        "--set",
        f"{section}.samples=32",
    ]
    if task == "finetune_reward":
        argv += ["--set", "finetune.batch=16"]
    assert main(argv) == 0
    out = tmp_path / task / f"{task}_2d"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"in_region_before", "in_region_after"} <= set(metrics)
    assert ("kl_after" if task == "finetune_reward" else "loss_after") in metrics
    assert (out / "samples.png").exists()


def test_config_errors(capsys):
    base = {"task": "optimize_noise"}
    with pytest.raises(ConfigError, match="unknown key `iteration`.*iterations"):
        load_task_config({**base, "optimize": {"iteration": 3}})
    with pytest.raises(ConfigError, match="unknown section `finetune`"):
        load_task_config({**base, "finetune": {}})
    with pytest.raises(ConfigError, match="`target.center` must be two numbers"):
        load_task_config({**base, "target": {"center": [1.0]}})
    with pytest.raises(ConfigError, match="`sampler.adjoint` must be one of"):
        load_task_config({**base, "sampler": {"adjoint": "backsolve"}})
    with pytest.raises(ConfigError, match="must be >= 0"):
        load_task_config(base, ["optimize.prior_weight=-1"])
    with pytest.raises(ConfigError, match="`task` must be one of"):
        load_task_config({"task": "optimise_noise"})
    argv = ["train", "configs/optimize_noise_2d.yaml", "--cache-dir", ""]
    assert main([*argv, "--set", "sampler.name=dpmpp2m"]) == 2
    assert "did you mean `dpmpp_2m`" in capsys.readouterr().err


def test_library_errors():
    model = EpsMLP(2, width=8, depth=1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`iterations`"):
        optimize_noise(model, jnp.zeros((2, 2)), SCHED, _region_loss, iterations=0)
    with pytest.raises(ValueError, match="`kl_weight`"):
        finetune_reward(
            model, SCHED, _region_loss, key=jax.random.key(0), shape=(2,), kl_weight=-1
        )
    with pytest.raises(ValueError, match=r"shape \(n, dim\)"):
        train_denoiser(jnp.zeros(5), SCHED, key=jax.random.key(0))
