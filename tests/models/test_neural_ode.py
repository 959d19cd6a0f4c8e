"""Tests of `odelab.models.NeuralODE` and `AugmentedNeuralODE`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
from odelab.models import AugmentedNeuralODE, NeuralODE
from tests.helpers import check_grad, count_traces


_TS = np.linspace(0.0, 1.0, 6)


def _batch(model, y0s):
    return jax.vmap(model, in_axes=(None, 0))(jnp.asarray(_TS), y0s)


def test_shapes_single_and_batched(key):
    model = NeuralODE(3, 16, 2, key=key)
    assert model(jnp.asarray(_TS), jnp.ones(3)).shape == (6, 3)
    assert _batch(model, jnp.ones((4, 3))).shape == (4, 6, 3)
    aug = AugmentedNeuralODE(3, 16, 2, 2, key=key, solver="rk4", steps=10)
    assert _batch(aug, jnp.ones((4, 3))).shape == (4, 6, 3)
    assert aug.solution(jnp.asarray(_TS), jnp.ones(3)).ys.shape == (6, 5)


def test_zero_vector_field_keeps_the_state(key):
    model = NeuralODE(2, 8, 1, key=key)
    last = model.mlp.layers[-1]
    zero_last = eqx.tree_at(
        lambda m: (m.weight, m.bias), last, (0 * last.weight, 0 * last.bias)
    )
    model = eqx.tree_at(lambda m: m.mlp.layers[-1], model, zero_last)
    y0 = jnp.asarray([0.3, -1.2])
    ys = model(jnp.asarray(_TS), y0)
    np.testing.assert_array_equal(np.asarray(ys), np.broadcast_to(y0, ys.shape))


def test_matches_a_direct_solve_of_the_mlp(key):
    model = NeuralODE(2, 8, 2, key=key, time_dependent=True, solver="rk4", steps=20)
    y0 = jnp.asarray([0.5, 0.1])

    def field(t, y, mlp):
        return mlp(jnp.concatenate([y, jnp.reshape(t, (1,))]))

    expected = odelab.solve(
        field, y0, jnp.asarray(_TS), model.mlp, solver="rk4", steps=20
    ).ys
    np.testing.assert_array_equal(
        np.asarray(model(jnp.asarray(_TS), y0)), np.asarray(expected)
    )


def test_gradient_wrt_parameters_matches_finite_differences(x64, key):
    model = NeuralODE(2, 8, 1, key=key, solver="tsit5", steps=16)
    model = jax.tree.map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, model
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    y0s = jnp.asarray([[1.0, 0.5], [-0.3, 0.8]])

    def loss(p):
        return jnp.sum(_batch(eqx.combine(p, static), y0s) ** 2)

    check_grad(loss, params)


def test_no_recompile_on_new_parameters(key):
    model = NeuralODE(2, 8, 1, key=key)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @count_traces
    def run(p, y0s):
        return _batch(eqx.combine(p, static), y0s)

    run_jit = jax.jit(run)
    run_jit(params, jnp.ones((3, 2)))
    params2 = jax.tree.map(lambda x: x * 1.01, params)
    run_jit(params2, 2 * jnp.ones((3, 2)))
    assert run.num_traces == 1


def test_bad_inputs_are_clear_errors(key):
    with pytest.raises(ValueError, match="depth"):
        NeuralODE(2, 8, -1, key=key)
    with pytest.raises(ValueError, match="augment_dims"):
        AugmentedNeuralODE(2, 8, 1, 0, key=key)
    model = NeuralODE(2, 8, 1, key=key)
    with pytest.raises(ValueError, match="jax.vmap"):
        model(jnp.asarray(_TS), jnp.ones((3, 2)))
