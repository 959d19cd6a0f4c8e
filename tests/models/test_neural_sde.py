"""Tests of `odelab.models.NeuralSDE`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from odelab.models import NeuralSDE
from tests.helpers import check_grad, count_traces


_TS = jnp.linspace(0.0, 1.0, 6)


@pytest.mark.parametrize(
    "noise,m", [("diagonal", None), ("scalar", None), ("general", 3)]
)
@pytest.mark.parametrize("interpretation", ["ito", "stratonovich"])
def test_shapes(key, noise, m, interpretation):
    model = NeuralSDE(
        3,
        8,
        1,
        key=key,
        noise=noise,
        brownian_dim=m,
        interpretation=interpretation,
        steps=10,
    )
    assert model(_TS, jnp.ones(3), key=key).shape == (6, 3)
    assert model.batch_solution(_TS, jnp.ones((4, 3)), key=key).ys.shape == (6, 4, 3)
    g = model.diffusion_fn(0.0, jnp.ones(3))
    assert g.shape == ((3, m) if noise == "general" else (3,))


def test_batch_rows_are_independent_and_match_single_solves(key):
    # Diagonal noise: the batch is one state; zero diffusion makes it an ODE, so
    # every row equals its own single solve.
    model = NeuralSDE(2, 8, 1, key=key, steps=16)
    last = model.diffusion.layers[-1]
    model = eqx.tree_at(
        lambda m: m.diffusion.layers[-1].bias, model, jnp.full_like(last.bias, -30.0)
    )
    model = eqx.tree_at(lambda m: m.diffusion.layers[-1].weight, model, 0 * last.weight)
    y0s = jr.normal(key, (3, 2))
    batch = model.batch_solution(_TS, y0s, key=key).ys
    for i in range(3):
        np.testing.assert_allclose(
            np.asarray(batch[:, i]), np.asarray(model(_TS, y0s[i], key=key)), atol=1e-6
        )
    # With noise, rows driven by independent Brownian motions differ.
    noisy = NeuralSDE(2, 8, 1, key=key, steps=16)
    same = noisy.batch_solution(_TS, jnp.zeros((2, 2)), key=key).ys
    assert not np.allclose(np.asarray(same[-1, 0]), np.asarray(same[-1, 1]))


def test_brownian_choice_keeps_the_law(key):
    # Same model, two Brownian constructions: different samples, same distribution
    # of the final state (means within 5 standard errors).
    outs = []
    for brownian in ("increments", "virtual_tree"):
        model = NeuralSDE(1, 8, 1, key=jr.key(3), steps=20, brownian=brownian)
        y = model.batch_solution(_TS, jnp.zeros((3000, 1)), key=key).ys[-1, :, 0]
        outs.append(np.asarray(y))
    a, b = outs
    se = np.sqrt(a.var() / a.size + b.var() / b.size)
    assert abs(a.mean() - b.mean()) < 5 * se


@pytest.mark.x64
@pytest.mark.parametrize(
    "interpretation,adjoint",
    [
        ("ito", "checkpoint"),
        ("stratonovich", "checkpoint"),
        ("stratonovich", "reversible"),
    ],
)
def test_gradient_matches_finite_differences(interpretation, adjoint):
    model = NeuralSDE(
        2,
        4,
        1,
        key=jr.key(0),
        interpretation=interpretation,
        adjoint=adjoint,
        steps=8,
        time_dependent=True,
    )
    y0 = jnp.array([0.5, -0.2])

    def loss(m):
        return jnp.sum(m(_TS, y0, key=jr.key(1)) ** 2)

    check_grad(loss, model)


@pytest.mark.x64
def test_reversible_adjoint_equals_checkpoint():
    kwargs = dict(key=jr.key(0), interpretation="stratonovich", steps=12)
    y0 = jnp.array([0.3, 0.1])

    def grad(adjoint):
        model = NeuralSDE(2, 8, 1, adjoint=adjoint, **kwargs)
        return eqx.filter_grad(
            lambda m: jnp.sum(
                m.batch_solution(_TS, jnp.stack([y0, -y0]), key=jr.key(2)).ys[-1] ** 2
            )
        )(model)

    a, b = grad("reversible"), grad("checkpoint")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-9, atol=1e-12)


def test_jit_vmap_and_no_retrace(key):
    model = NeuralSDE(2, 8, 1, key=key, steps=10)

    @count_traces
    def f(m, y0s, k):
        return m.batch_solution(_TS, y0s, key=k).ys

    g = eqx.filter_jit(f)
    g(model, jnp.ones((3, 2)), jr.key(1))
    g(model, jnp.zeros((3, 2)), jr.key(2))
    assert f.num_traces == 1
    keys = jr.split(key, 3)
    out = jax.vmap(lambda y0, k: model(_TS, y0, key=k))(jnp.ones((3, 2)), keys)
    assert out.shape == (3, 6, 2)


def test_errors(key):
    with pytest.raises(ValueError, match="noise"):
        NeuralSDE(2, 4, 1, key=key, noise="full")
    with pytest.raises(ValueError, match="brownian_dim"):
        NeuralSDE(2, 4, 1, key=key, noise="general")
    with pytest.raises(ValueError, match="stratonovich"):
        NeuralSDE(2, 4, 1, key=key, interpretation="stratonovich", solver="euler")
    with pytest.raises(ValueError, match="interpretation"):
        NeuralSDE(2, 4, 1, key=key, interpretation="ito", solver="reversible_heun")
    model = NeuralSDE(2, 4, 1, key=key, steps=4)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model(_TS, jnp.ones(3), key=key)
    with pytest.raises(ValueError, match="batch"):
        model.batch_solution(_TS, jnp.ones(2), key=key)


def test_local_heuristics_are_differentiable(key):
    model = NeuralSDE(2, 8, 1, key=key, steps=10)
    ts = jnp.linspace(0.0, 1.0, 6)
    paths = model.batch_solution(ts, jnp.ones((4, 2)), key=key).ys.swapaxes(0, 1)
    error, stiffness = model.local_heuristics(ts, paths, key=key, dt=0.1)
    assert float(error) > 0 and float(stiffness) > 0
    grads = eqx.filter_grad(
        lambda m: m.local_heuristics(ts, paths, key=key, dt=0.1)[0]
    )(model)
    leaves = jax.tree_util.tree_leaves(grads.diffusion)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert any(np.any(np.asarray(x) != 0) for x in leaves)
