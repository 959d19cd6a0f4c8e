"""Tests of `odelab.diffusion.learned_grid` and the `learn_grid` training task."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from odelab.bench.samplers import exact_flow_map
from odelab.cli import main
from odelab.config import ConfigError
from odelab.diffusion import VPLinear, time_grid
from odelab.diffusion.analytic import GaussianMixture
from odelab.diffusion.learned_grid import (
    GridParams,
    fit_grid,
    grid_loss,
    load_grid,
    save_grid,
)
from odelab.diffusion.sampling import sample
from odelab.diffusion.schedules import GRIDS
from odelab.grid_job import load_grid_config
from tests.helpers import check_grad


def _problem(dtype, n=64):
    rng = np.random.default_rng(0)
    params = (1.5 * rng.standard_normal((3, 2)), np.full(3, 0.3), np.full(3, 1 / 3))
    mix = GaussianMixture(*(jnp.asarray(p, dtype) for p in params))
    sched = VPLinear()
    x = np.random.default_rng(1).standard_normal((n, 2)).astype(dtype)
    return params, sched, (lambda x, t: mix.eps(x, t, sched)), x


@pytest.mark.x64
@pytest.mark.parametrize("learn_end", [True, False])
def test_grid_is_monotone_and_hits_its_ends(learn_end):
    sched = VPLinear()
    base = GridParams.init(sched, 6, "logsnr", learn_end=learn_end, end_range=(0, 5))
    for seed in range(5):
        logits = 3.0 * jax.random.normal(jax.random.key(seed), base.logits.shape)
        # A learned end anywhere; a fixed one is λ itself (kept: it is the bound).
        end = base.end + seed - 2.0 if learn_end else base.end
        params = GridParams(logits, end, *_static(base))
        lam = np.asarray(params.lambdas())
        t = np.asarray(params.times(sched))
        assert t.shape == (7,) and np.all(np.diff(t) < 0) and np.all(np.diff(lam) > 0)
        assert t[0] == sched.t_max and t[-1] >= sched.t_min
        assert lam[0] == pytest.approx(float(sched.lam(sched.t_max)), abs=1e-12)
        if learn_end:
            assert 0.0 <= lam[-1] <= 5.0
        else:
            assert lam[-1] == pytest.approx(float(base.end), abs=1e-12)


def _static(p):
    return p.lam_start, p.end_range, p.learn_end


@pytest.mark.x64
@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("learn_end", [True, False])
def test_init_reproduces_the_named_grid(kind, learn_end):
    sched = VPLinear()
    params = GridParams.init(sched, 5, kind, learn_end=learn_end)
    # A learned end starts 1e-7 of its λ-range inside a bound it sits on.
    tol = 1e-5 if learn_end else 1e-10
    np.testing.assert_allclose(
        params.times(sched), time_grid(sched, 5, kind), rtol=tol, atol=tol * 1e-2
    )


@pytest.mark.x64
def test_gradient_of_the_sample_matches_finite_differences():
    _, sched, model, x = _problem(jnp.float64, n=2)
    base = GridParams.init(sched, 3, "logsnr", end_range=(-1.0, 6.0))

    def f(leaves):
        logits, end = leaves
        p = GridParams(logits, end, *_static(base))
        out = jax.vmap(
            lambda xi: sample(
                model,
                xi,
                sched,
                sampler="dpmpp_2m",
                steps=3,
                grid=p.times(sched),
                final_denoise=True,
            )
        )(jnp.asarray(x))
        return jnp.sum(out * jnp.arange(1.0, 5.0).reshape(2, 2))

    # An interior end (λ = 2.5 of [-1, 6]), so that both parameters move the grid.
    grads = check_grad(f, (base.logits, jnp.asarray(0.0)))
    assert np.abs(grads[0]).max() > 1e-6 and abs(float(grads[1])) > 1e-6


@pytest.mark.loose_promotion
def test_a_short_fit_lowers_the_training_loss():
    params, sched, model, x = _problem(jnp.float32)
    targets = exact_flow_map(params, sched, x, steps=200)
    fit = fit_grid(
        model,
        sched,
        sampler="dpmpp_2m",
        steps=3,
        x_train=x,
        targets=targets,
        iterations=40,
        learning_rate=0.1,
    )
    assert fit.losses.shape == (40,)
    assert float(fit.loss) < 0.7 * float(fit.losses[0])
    assert np.all(np.diff(np.asarray(fit.times)) < 0)
    again = grid_loss(fit.params, model, sched, x, targets, sampler="dpmpp_2m")
    np.testing.assert_allclose(again, fit.loss, rtol=1e-5)


def test_save_load_sample_is_identical(tmp_path):
    _, sched, model, x = _problem(jnp.float32, n=8)
    times = GridParams.init(sched, 4, "karras", dtype=jnp.float32).times(sched)
    path = tmp_path / "grid.npz"
    save_grid(path, times, sampler="unipc", steps=4)
    loaded = load_grid(path)
    assert loaded.metadata == {"sampler": "unipc", "steps": 4}
    assert [p for p in os.listdir(tmp_path)] == ["grid.npz"]

    def run(grid):
        return jax.vmap(
            lambda xi: sample(
                model,
                xi,
                sched,
                sampler="unipc",
                steps=4,
                grid=grid,
                final_denoise=True,
            )
        )(jnp.asarray(x))

    np.testing.assert_array_equal(run(times), run(jnp.asarray(loaded.times)))


def _tiny(tmp_path):
    return {
        "task": "learn_grid",
        "name": "tiny",
        "model": {"components": 3, "dim": 2},
        "sampler": {"name": "dpmpp_2m", "nfe": 4},
        "training": {"samples": 32, "iterations": 10, "reference_steps": 100},
        "eval": {"samples": 64, "reference_steps": 100},
        "run": {"out_dir": str(tmp_path)},
    }


@pytest.mark.loose_promotion
def test_odelab_train_writes_grid_metrics_and_plot(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tiny(tmp_path)))
    argv = ["train", str(path), "--set", "training.iterations=12", "--cache-dir", ""]
    assert main(argv) == 0
    out = tmp_path / "tiny"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["losses"]) == 12 and metrics["steps"] == 3
    assert set(metrics["rmse"]) == {
        "uniform_t",
        "logsnr",
        "karras",
        "time_quadratic",
        "learned",
    }
    best = metrics["rmse"][metrics["best_fixed"]]
    assert metrics["ratio_learned_to_best_fixed"] == pytest.approx(
        metrics["rmse"]["learned"] / best
    )
    grid = load_grid(out / "grid.npz")
    np.testing.assert_allclose(grid.times, metrics["times"]["learned"], rtol=1e-6)
    assert grid.metadata["sampler"] == "dpmpp_2m" and grid.metadata["steps"] == 3
    assert os.path.getsize(out / "grid.png") > 1000
    assert "ratio" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, overrides, match",
    [
        ({"grid": {"int": "logsnr"}}, [], "unknown key `int`.*did you mean"),
        ({"trainng": {}}, [], "unknown section `trainng`.*did you mean"),
        ({}, ["sampler.name=unipc2"], "sampler.name"),
        ({}, ["sampler.nfe=1"], "sampler.nfe"),
        ({}, ["eval.seed=2"], "eval.seed"),
        ({}, ["grid.init=linspace"], "grid.init"),
        ({}, ["training.batch_size=100"], "batch_size"),
        ({}, ["training.learning_rate=0"], "learning_rate"),
        ({"task": "optimize_noise"}, [], "task"),
    ],
)
def test_config_errors(tmp_path, change, overrides, match):
    source = {**_tiny(tmp_path), **change}
    with pytest.raises(ConfigError, match=match):
        load_grid_config(source, overrides)


def test_cli_reports_a_bad_config(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**_tiny(tmp_path), "sampler": {"steps": 5}}))
    assert main(["train", str(path), "--cache-dir", ""]) == 2
    assert "unknown key `steps`" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()


def test_init_errors():
    sched = VPLinear()
    with pytest.raises(ValueError, match="start at the schedule's t_max"):
        GridParams.init(sched, 2, jnp.array([0.9, 0.5, 0.1]))
    with pytest.raises(ValueError, match="end_range"):
        GridParams.init(sched, 2, "logsnr", end_range=(0.0, 1.0))
