"""Tests of `odelab.regularizers.local` (regularization at sampled times)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.regularizers import (
    local_error_estimate,
    sample_time,
    step_heuristics,
)


def _field(t, y, mlp):
    return mlp(y)


@pytest.mark.x64
def test_equals_one_step_of_the_pair_and_differentiates_only_the_field():
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    y, t, dt = jnp.array([0.4, -0.3]), 0.2, 0.05
    e, s = local_error_estimate(_field, t, y, mlp, t1=1.0, dt=dt, rtol=1e-4, atol=1e-6)
    term, solver = diffrax.ODETerm(_field), diffrax.Tsit5()
    state = solver.init(term, t, t + dt, y, mlp)
    y1, err, dense, _, _ = solver.step(term, t, t + dt, y, mlp, state, False)
    e_ref, s_ref = step_heuristics(solver.tableau, y, y1, err, dense["k"], 1e-4, 1e-6)
    np.testing.assert_allclose(float(e), float(e_ref) * dt, rtol=1e-12)
    np.testing.assert_allclose(float(s), float(s_ref), rtol=1e-12)
    # The start point is held constant: no gradient reaches it.
    g = jax.grad(lambda u: local_error_estimate(_field, t, u, mlp, t1=1.0, dt=dt)[0])(y)
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    gp = eqx.filter_grad(
        lambda m: local_error_estimate(_field, t, y, m, t1=1.0, dt=dt)[0]
    )(mlp)
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree_util.tree_leaves(gp))


@pytest.mark.x64
def test_default_step_is_the_controllers_initial_step():
    # On y' = -p y the heuristic's step shrinks as p grows, and the error estimate
    # of that step stays of order one (it is what the controller would try first).
    steps = []
    for p in (1.0, 10.0, 100.0):
        e, s = local_error_estimate(
            lambda t, y, a: -a * y, 0.0, jnp.ones(2), p, t1=10.0, rtol=1e-6, atol=1e-9
        )
        steps.append(float(s) / p)  # |dt| lambda / lambda = |dt|
        assert float(e) > 0
    assert steps[0] > steps[1] > steps[2]


def test_sampling(key):
    ts = [sample_time(k, 0.0, 2.0) for k in jax.random.split(key, 200)]
    assert min(map(float, ts)) >= 0.0 and max(map(float, ts)) <= 2.0
    steps = jnp.array([0.1, 0.5, 1.0, 2.0, jnp.inf])
    picks = {
        float(sample_time(k, 0.0, 2.0, mode="biased", step_times=steps))
        for k in jax.random.split(key, 200)
    }
    assert picks == {float(steps[0]), 0.5, 1.0}
    with pytest.raises(ValueError, match="step_times"):
        sample_time(key, 0.0, 1.0, mode="biased")
    with pytest.raises(ValueError, match="mode"):
        sample_time(key, 0.0, 1.0, mode="uniform")


def test_under_vmap_over_sampled_times(key):
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=key)
    times = jax.vmap(lambda k: sample_time(k, 0.0, 1.0))(jax.random.split(key, 8))
    out = jax.vmap(
        lambda t: local_error_estimate(_field, t, jnp.ones(2), mlp, t1=1.0)[0]
    )(times)
    assert out.shape == (8,) and np.all(np.isfinite(np.asarray(out)))
