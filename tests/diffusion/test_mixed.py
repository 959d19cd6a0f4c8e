"""Tests of `odelab.diffusion.mixed`: the empty window is the ODE sampler, the SDE is
Flow-GRPO's for rectified flow, the log-probabilities are the closed-form Gaussian
densities and re-score exactly, the full window reproduces the data moments, gradients
against finite differences, the sliding window, jit/vmap and errors."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from odelab.diffusion import RectifiedFlow, VPLinear, sample, time_grid
from odelab.diffusion.analytic import GaussianMixture
from odelab.diffusion.mixed import (
    sample_mixed,
    sde_transition,
    trajectory_log_probs,
    transition_log_prob,
    window_at,
)
from tests.helpers import check_grad


def _mixture(dtype=jnp.float64):
    means = jnp.array([[1.5, -1.0], [-1.0, 0.5], [0.0, 2.0]], dtype)
    return GaussianMixture(
        means, jnp.array([0.3, 0.5, 0.4], dtype), jnp.array([0.5, 0.3, 0.2], dtype)
    )


def _flow_model(mix, schedule):
    """The exact rectified-flow velocity $v = (x - D)/t$ of the mixture."""
    return lambda x, t: (x - mix.denoiser(x, t, schedule)) / t


class _Velocity(eqx.Module):
    """A small parametric flow model: $v = \\tanh(Wx + bt) + c$."""

    w: jax.Array
    b: jax.Array
    c: jax.Array

    def __call__(self, x, t):
        return jnp.tanh(self.w @ x + self.b * t) + self.c


def _velocity(key, dim=3, dtype=jnp.float64):
    kw, kb, kc = jax.random.split(key, 3)
    return _Velocity(
        0.5 * jax.random.normal(kw, (dim, dim), dtype),
        jax.random.normal(kb, (dim,), dtype),
        0.3 * jax.random.normal(kc, (dim,), dtype),
    )


def _flow_grpo_step(v, x, t, t_next, a):
    """Flow-GRPO's step in NumPy (their `sde_step_with_logprob`, written out)."""
    dt = t_next - t
    std_t = a * np.sqrt(t / (1 - t))
    mean = (
        x * (1 + std_t**2 / (2 * t) * dt) + v * (1 + std_t**2 * (1 - t) / (2 * t)) * dt
    )
    return mean, std_t * np.sqrt(-dt)


@pytest.mark.parametrize("ode_sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("window_start", [0, 3])
def test_empty_window_is_the_ode_sampler(ode_sampler, window_start):
    schedule, mix = RectifiedFlow(), _mixture(jnp.float32)
    model = _flow_model(mix, schedule)
    x = jax.random.normal(jax.random.key(0), (2,))
    out = sample_mixed(
        model,
        x,
        schedule,
        key=jax.random.key(1),
        steps=8,
        window_start=window_start,
        window_size=0,
        ode_sampler=ode_sampler,
    )
    expected = sample(
        model, x, schedule, prediction="flow", sampler=ode_sampler, steps=8,
        grid="uniform_t",
    )  # fmt: skip
    np.testing.assert_array_equal(out.x, expected)
    assert out.log_probs.shape == (0,) and out.states.shape == (0, 2)


def test_ode_before_the_window_is_the_ode_sampler():
    schedule, mix = RectifiedFlow(), _mixture(jnp.float32)
    model = _flow_model(mix, schedule)
    x = jax.random.normal(jax.random.key(0), (2,))
    out = sample_mixed(
        model, x, schedule, key=jax.random.key(1), steps=10, window_start=4,
        window_size=3, noise_level=0.7, ode_sampler="dpmpp_2m",
    )  # fmt: skip
    times = time_grid(schedule, 10, "uniform_t")
    before = sample(
        model, x, schedule, prediction="flow", sampler="dpmpp_2m", steps=4,
        grid=times[:5], lower_order_final=False,
    )  # fmt: skip
    np.testing.assert_array_equal(out.states[0], before)
    np.testing.assert_array_equal(out.times, times[4:8])


@pytest.mark.x64
def test_rectified_flow_sde_is_flow_grpos():
    schedule, mix = RectifiedFlow(), _mixture()
    model = _flow_model(mix, schedule)
    x = jnp.array([0.3, -1.2])
    for t, t_next in [(0.9, 0.85), (0.5, 0.45), (0.2, 0.1)]:
        mean, std = sde_transition(
            model, x, t, t_next, schedule, noise_level=0.7, prediction="flow"
        )
        ref_mean, ref_std = _flow_grpo_step(
            np.asarray(model(x, jnp.asarray(t))), np.asarray(x), t, t_next, 0.7
        )
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
        np.testing.assert_allclose(std, np.broadcast_to(ref_std, (2,)), rtol=1e-12)
        # eta = a / sqrt(2): the same step.
        mean2, std2 = sde_transition(
            model, x, t, t_next, schedule, eta=0.7 / math.sqrt(2.0)
        )
        np.testing.assert_allclose(mean2, mean, rtol=1e-14)
        np.testing.assert_allclose(std2, std, rtol=1e-14)


@pytest.mark.x64
@pytest.mark.parametrize("reduce", ["mean", "sum", "none"])
def test_log_probs_are_the_closed_form_gaussian_densities(reduce):
    schedule, mix = RectifiedFlow(), _mixture()
    model = _flow_model(mix, schedule)
    x = jax.random.normal(jax.random.key(2), (2,), jnp.float64)
    out = sample_mixed(
        model, x, schedule, key=jax.random.key(3), steps=10, window_start=2,
        window_size=4, noise_level=0.7, reduce=reduce,
    )  # fmt: skip
    states, times = np.asarray(out.states), np.asarray(out.times)
    for n in range(4):
        v = np.asarray(model(out.states[n], out.times[n]))
        mean, std = _flow_grpo_step(v, states[n], times[n], times[n + 1], 0.7)
        dens = stats.norm.logpdf(states[n + 1], mean, std)
        ref = {"mean": dens.mean(), "sum": dens.sum(), "none": dens}[reduce]
        np.testing.assert_allclose(out.log_probs[n], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", [RectifiedFlow(), VPLinear()], ids=str)
def test_rescoring_the_trajectory_gives_the_same_log_probs(schedule):
    model = _velocity(jax.random.key(4), dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(5), (3,))
    eta = jnp.array([0.4, 0.6, 0.8])
    kwargs = dict(prediction="flow", eta=eta)
    out = sample_mixed(
        model, x, schedule, key=jax.random.key(6), steps=9, window_start=5,
        window_size=3, **kwargs,
    )  # fmt: skip
    again = trajectory_log_probs(model, out.states, out.times, schedule, **kwargs)
    np.testing.assert_allclose(again, out.log_probs, rtol=1e-6, atol=1e-6)
    one = transition_log_prob(
        model, out.states[1], out.states[2], out.times[1], out.times[2], schedule,
        prediction="flow", eta=eta[1],
    )  # fmt: skip
    np.testing.assert_allclose(one, out.log_probs[1], rtol=1e-6, atol=1e-6)
    # The window's last state continues through the ODE to the sample.
    assert out.states.shape == (4, 3) and out.times.shape == (4,)


# Euler-Maruyama's weak error on this mixture, measured with 2^15 samples at 25-200
# uniform steps from t = 0.95: about 1/N (largest error over the mean and covariance
# entries, 0.04 at N = 25), below the Monte Carlo error from N = 100 on.
@pytest.mark.x64
def test_full_window_reproduces_the_data_moments():
    schedule, mix, n, steps = RectifiedFlow(), _mixture(), 2**13, 100
    k0, k1, k2 = jax.random.split(jax.random.key(11), 3)
    t0 = 0.95
    x0 = mix.sample(k0, n)
    x_t = schedule.alpha(t0) * x0 + schedule.sigma(t0) * jax.random.normal(
        k1, x0.shape, x0.dtype
    )
    grid = time_grid(schedule, steps, "uniform_t", t_start=t0)
    model = _flow_model(mix, schedule)

    def one(key, x):
        return sample_mixed(
            model, x, schedule, key=key, steps=steps, grid=grid, window_start=0,
            window_size=steps, noise_level=0.7,
        ).x  # fmt: skip

    out = jax.jit(jax.vmap(one))(jax.random.split(k2, n), x_t)
    alpha, sigma = schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min)
    w = mix.weights
    mean0 = w @ mix.means
    centred0 = mix.means - mean0[None]
    eye = jnp.eye(2, dtype=w.dtype)
    cov0 = centred0.T @ (w[:, None] * centred0) + jnp.sum(w * mix.stds**2) * eye
    mean, cov = alpha * mean0, alpha**2 * cov0 + sigma**2 * eye
    centred = out - mean[None]
    products = centred[:, :, None] * centred[:, None, :]
    se_mean = jnp.sqrt(jnp.diag(cov) / n)
    se_cov = jnp.std(products, axis=0) / np.sqrt(n)
    allowance = 1.0 / steps
    np.testing.assert_array_less(
        jnp.abs(jnp.mean(out, axis=0) - mean), 4 * se_mean + allowance
    )
    np.testing.assert_array_less(
        jnp.abs(jnp.mean(products, axis=0) - cov), 4 * se_cov + allowance
    )


@pytest.mark.x64
def test_log_prob_gradient_matches_finite_differences():
    schedule = RectifiedFlow()
    model = _velocity(jax.random.key(7))
    x = jax.random.normal(jax.random.key(8), (3,), jnp.float64)
    kwargs = dict(prediction="flow", noise_level=0.7)
    out = sample_mixed(
        model, x, schedule, key=jax.random.key(9), steps=8, window_start=2,
        window_size=3, **kwargs,
    )  # fmt: skip
    states, times = out.states, out.times

    @jax.jit
    def total(m):
        return jnp.sum(trajectory_log_probs(m, states, times, schedule, **kwargs))

    grad = check_grad(total, model)

    # The sampler's log-probabilities hold the states fixed: the same gradient.
    def sampled(m):
        out = sample_mixed(
            m, x, schedule, key=jax.random.key(9), steps=8, window_start=2,
            window_size=3, **kwargs,
        )  # fmt: skip
        return jnp.sum(out.log_probs)

    from_sampler = eqx.filter_jit(eqx.filter_grad(sampled))(model)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(from_sampler)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_jit_and_vmap():
    schedule = RectifiedFlow()
    model = _velocity(jax.random.key(10), dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(11), (5, 3))
    keys = jax.random.split(jax.random.key(12), 5)

    def one(key, x):
        return sample_mixed(
            model, x, schedule, key=key, steps=5, window_start=1, window_size=2,
            noise_level=0.7,
        )  # fmt: skip

    batched = jax.jit(jax.vmap(one))(keys, xs)
    assert batched.x.shape == (5, 3) and batched.log_probs.shape == (5, 2)
    assert batched.states.shape == (5, 3, 3)
    single = one(keys[3], xs[3])
    np.testing.assert_allclose(batched.x[3], single.x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        batched.log_probs[3], single.log_probs, rtol=1e-5, atol=1e-5
    )
    assert np.all(np.isfinite(batched.log_probs))


def test_flash_tail_uses_post_steps():
    schedule, mix = RectifiedFlow(), _mixture(jnp.float32)
    model = _flow_model(mix, schedule)
    x = jax.random.normal(jax.random.key(0), (2,))
    kwargs = dict(
        key=jax.random.key(1), steps=10, window_start=2, window_size=2,
        noise_level=0.7, ode_sampler="dpmpp_2m",
    )  # fmt: skip
    flash = sample_mixed(model, x, schedule, post_steps=4, **kwargs)
    # After the window: dpmpp_2m in 4 steps from the window's end to t_min.
    # (The grid's last time set exactly: float32 round-off of the linear
    # interpolation lands just below t_min, which `sample` rejects.)
    times = time_grid(
        schedule, 4, "uniform_t", t_start=float(flash.times[-1]), t_end=schedule.t_min
    )
    tail_grid = times.at[-1].set(schedule.t_min)
    tail = sample(
        model, flash.states[-1], schedule, prediction="flow", sampler="dpmpp_2m",
        steps=4, grid=tail_grid,
    )  # fmt: skip
    np.testing.assert_allclose(flash.x, tail, rtol=1e-6, atol=1e-6)


def test_window_at_slides_and_rolls_back():
    kw = dict(steps=6, window_size=3, shift_interval=2)
    starts = [window_at(i, **kw) for i in range(10)]
    assert starts == [0, 0, 1, 1, 2, 2, 3, 3, 0, 0]
    assert window_at(9, roll_back=False, **kw) == 3
    assert [window_at(i, stride=2, **kw) for i in range(0, 8, 2)] == [0, 2, 0, 2]
    # MixGRPO's setting: 25 steps, w = 4, tau = 25, s = 1.
    mix = dict(steps=25, window_size=4, shift_interval=25)
    assert window_at(24, **mix) == 0 and window_at(25, **mix) == 1
    assert window_at(21 * 25, **mix) == 21 and window_at(22 * 25, **mix) == 0
    with pytest.raises(ValueError, match="shift_interval"):
        window_at(0, steps=6, window_size=3, shift_interval=0)
    with pytest.raises(ValueError, match="window_size"):
        window_at(0, steps=6, window_size=7, shift_interval=1)
    with pytest.raises(ValueError, match="max_start"):
        window_at(0, max_start=4, **kw)


def test_errors():
    schedule = RectifiedFlow()
    model = _velocity(jax.random.key(0), dtype=jnp.float32)
    x = jnp.zeros(3)
    base = dict(key=jax.random.key(0), steps=6)
    with pytest.raises(ValueError, match="window"):
        sample_mixed(model, x, schedule, window_start=4, window_size=3, eta=1.0, **base)
    with pytest.raises(ValueError, match="window"):
        sample_mixed(
            model, x, schedule, window_start=-1, window_size=2, eta=1.0, **base
        )
    with pytest.raises(ValueError, match="exactly one"):
        sample_mixed(model, x, schedule, window_size=2, **base)
    with pytest.raises(ValueError, match="exactly one"):
        sample_mixed(model, x, schedule, eta=0.5, noise_level=0.7, **base)
    with pytest.raises(ValueError, match="positive"):
        sample_mixed(model, x, schedule, eta=0.0, **base)
    with pytest.raises(ValueError, match="positive"):
        sample_mixed(model, x, schedule, noise_level=-0.7, **base)
    with pytest.raises(ValueError, match="per step"):
        sample_mixed(model, x, schedule, window_size=2, eta=jnp.ones(3), **base)
    with pytest.raises(ValueError, match="reduce"):
        sample_mixed(model, x, schedule, eta=1.0, reduce="max", **base)
    with pytest.raises(ValueError, match="post_steps"):
        sample_mixed(
            model, x, schedule, eta=1.0, post_steps=2, window_size=1,
            grid=jnp.array([0.9, 0.5, 0.1]), **base,
        )  # fmt: skip
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_mixed(model, x, schedule, eta=1.0, ode_sampler="nope", **base)
    with pytest.raises(TypeError, match="floating"):
        sample_mixed(model, jnp.zeros(3, jnp.int32), schedule, eta=1.0, **base)
    with pytest.raises(ValueError, match="one state per time"):
        trajectory_log_probs(model, jnp.zeros((2, 3)), jnp.ones(3), schedule, eta=1.0)
