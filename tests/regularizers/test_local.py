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
    sampled_step_heuristics,
    solve_with_heuristics,
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


def _accepted_grid(field, y0, t1, args, rtol, atol):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        0.0,
        t1,
        None,
        y0,
        args,
        saveat=diffrax.SaveAt(t0=True, steps=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
    )
    n = int(sol.stats["num_accepted_steps"])
    return np.asarray(sol.ts[: n + 1]), sol.ys[: n + 1]


@pytest.mark.x64
def test_sampled_step_is_an_unbiased_estimate_of_the_global_sums(key):
    # Monte-Carlo: the mean of T E_j over steps drawn at uniform times is R_E (and
    # of T lambda_j, R_S); steps drawn uniformly instead give (T/n) sum_j E_j.
    mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(3))
    y0, t1, rtol, atol = jnp.array([1.0, -0.5]), 3.0, 1e-5, 1e-7
    _, h = solve_with_heuristics(
        _field, y0, jnp.array([0.0, t1]), mlp, rtol=rtol, atol=atol
    )
    n_samples = 4000
    keys = jax.random.split(key, n_samples)

    def estimates(mode):
        return jax.jit(
            jax.vmap(
                lambda k: sampled_step_heuristics(
                    _field, y0, 0.0, t1, mlp, key=k, mode=mode, rtol=rtol, atol=atol
                )
            )
        )(keys)

    for samples, target in zip(estimates("unbiased"), (h.error, h.stiffness)):
        samples = np.asarray(samples)
        se = samples.std(ddof=1) / np.sqrt(n_samples)
        assert se > 0
        assert abs(samples.mean() - float(target)) < 4 * se, (samples.mean(), target)

    ts, ys = _accepted_grid(_field, y0, t1, mlp, rtol, atol)
    errors = []
    for j in range(len(ts) - 1):
        e, _ = local_error_estimate(
            _field, ts[j], ys[j], mlp, t1=t1, dt=ts[j + 1] - ts[j], rtol=rtol, atol=atol
        )
        errors.append(float(e) / (ts[j + 1] - ts[j]))
    biased = np.asarray(estimates("biased")[0])
    se = biased.std(ddof=1) / np.sqrt(n_samples)
    assert abs(biased.mean() - t1 * np.mean(errors)) < 4 * se


@pytest.mark.x64
def test_local_sde_step(key):
    drift = lambda t, y, a: -a[0] * y
    diffusion = lambda t, y, a: a[1] * y
    y, dt = jnp.array([1.0, 0.5]), 0.05
    e, s = local_error_estimate(
        drift, 0.0, y, (1.0, 0.4), t1=1.0, dt=dt, diffusion=diffusion, key=key
    )
    # One Heun step with the same increment, by hand: k0 = f dt + g dW at y,
    # k1 at y + k0; error = (k1 - k0) / 2 against the Euler step.
    dw = jax.random.normal(key, (2,), y.dtype) * np.sqrt(dt)
    k0 = -1.0 * y * dt + 0.4 * y * dw
    g = y + k0
    k1 = -1.0 * g * dt + 0.4 * g * dw
    y1 = y + (k0 + k1) / 2
    scale = 1e-6 + 1e-3 * jnp.maximum(jnp.abs(y), jnp.abs(y1))
    e_ref = jnp.sqrt(jnp.mean(((k1 - k0) / 2 / scale) ** 2)) * dt
    np.testing.assert_allclose(float(e), float(e_ref), rtol=1e-10)
    np.testing.assert_allclose(
        float(s), float(jnp.linalg.norm(k1 - k0) / jnp.linalg.norm(k0)), rtol=1e-10
    )
    grad = jax.grad(
        lambda a: local_error_estimate(
            drift, 0.0, y, a, t1=1.0, dt=dt, diffusion=diffusion, key=key
        )[0]
    )((1.0, 0.4))
    assert np.isfinite(float(grad[1])) and float(grad[1]) != 0
    with pytest.raises(ValueError, match="`key=`"):
        local_error_estimate(drift, 0.0, y, (1.0, 0.4), t1=1.0, diffusion=diffusion)
