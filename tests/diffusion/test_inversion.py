"""DDIM inversion and its relatives: the inverse flow map, round-trip orders, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import VPDiscrete, VPLinear, invert, sample, time_grid
from odelab.diffusion.analytic import GaussianMixture, gaussian_flow_map
from odelab.diffusion.inversion import round_trip_error
from tests.helpers import ORDER_SLACK, check_grad, estimate_order


def _gaussian():
    return GaussianMixture(jnp.array([[1.0, -2.0]]), 0.5)


@pytest.mark.x64
def test_invert_reaches_the_exact_inverse_flow_map():
    sched, mix = VPLinear(), _gaussian()
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x0 = jnp.array([1.3, -1.1])
    got = invert(model, x0, sched, sampler="etdrk4", steps=1000)
    exact = gaussian_flow_map(mix, x0, sched.t_min, sched.t_max, sched)
    np.testing.assert_allclose(got, exact, rtol=1e-9)


@pytest.mark.x64
@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("exponential_adams2", 3)])
def test_round_trip_error_falls_with_the_solver_order(sampler, order):
    # Forward and backward solves each err by O(h^p). For DDIM (local error ~h^2,
    # the same sign both ways) the round trip is O(h); for a second-order method the
    # local errors ~h^3 change sign with the direction and cancel to leading order,
    # so its round trip is O(h^3).
    sched = VPLinear()
    mix = GaussianMixture.random(
        jax.random.key(0), components=3, dim=2, dtype=jnp.float64
    )
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x0 = mix.sample(jax.random.key(1), 1)[0]
    counts = np.array([20, 40, 80, 160])
    errors = np.array(
        [
            float(round_trip_error(model, x0, sched, sampler=sampler, steps=int(n)))
            for n in counts
        ]
    )
    assert np.all(errors > 1e-12)
    measured = estimate_order(errors, 1.0 / counts)
    assert abs(measured - order) <= ORDER_SLACK, (measured, errors)


@pytest.mark.x64
def test_gradients_through_invert():
    sched, mix = VPLinear(), _gaussian()
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731

    def loss(x0):
        return jnp.sum(invert(model, x0, sched, sampler="dpmpp_2m", steps=6) ** 2)

    check_grad(loss, jnp.array([0.4, -0.7]))


def test_jit_and_vmap():
    sched, mix = VPLinear(), _gaussian()
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    xs = jnp.stack([jnp.array([1.0, -2.0]), jnp.array([0.5, -1.5])])
    out = jax.jit(jax.vmap(lambda x: invert(model, x, sched, steps=5)))(xs)
    single = invert(model, xs[1], sched, steps=5)
    np.testing.assert_allclose(out[1], single, rtol=1e-5)
    back = jax.vmap(lambda z: sample(model, z, sched, steps=5))(out)
    assert back.shape == xs.shape


def test_errors():
    sched, mix = VPLinear(), _gaussian()
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    with pytest.raises(ValueError, match="unknown sampler"):
        invert(model, jnp.zeros(2), sched, sampler="nope")
    with pytest.raises(ValueError, match="cannot|no ODE"):
        invert(model, jnp.zeros(2), sched, grid="linspace")


def test_bdia_round_trip_is_exact_in_float32():
    # The issue's check: 50 float32 steps, sample then undo, back to x_T to <= 1e-5.
    sched = VPDiscrete.ddpm_linear()
    mix = GaussianMixture.random(jax.random.key(0), components=4, dim=8)
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x_t = jax.random.normal(jax.random.key(1), (16, 8))
    kw = dict(sampler="bdia", steps=50, grid="time_quadratic")
    x0, state = jax.jit(
        jax.vmap(lambda x: sample(model, x, sched, return_state=True, **kw))
    )(x_t)
    back = jax.jit(jax.vmap(lambda x, s: invert(model, x, sched, state=s, **kw)))(
        x0, state
    )
    assert float(jnp.max(jnp.abs(back - x_t))) <= 1e-5
    # ... whereas DDIM inversion of DDIM's samples is off by its discretisation error.
    ddim = jax.vmap(lambda x: sample(model, x, sched, sampler="ddim", steps=50))(x_t)
    ddim_back = jax.vmap(lambda x: invert(model, x, sched, sampler="ddim", steps=50))(
        ddim
    )
    assert float(jnp.max(jnp.abs(ddim_back - x_t))) > 1e-2


@pytest.mark.x64
def test_bdia_sampling_is_second_order_and_matches_the_reversible_adjoint():
    sched = VPLinear()
    mix = GaussianMixture.random(
        jax.random.key(0), components=3, dim=2, dtype=jnp.float64
    )
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x_t = jnp.array([0.3, -0.8])
    exact = sample(model, x_t, sched, sampler="etdrk4", steps=2000)
    # (20 steps is still pre-asymptotic: error ratios 9.7, 4.9, 4.0 from 20 on.)
    counts = np.array([40, 80, 160, 320])
    errors = np.array(
        [
            float(
                jnp.max(
                    jnp.abs(
                        sample(model, x_t, sched, sampler="bdia", steps=int(n)) - exact
                    )
                )
            )
            for n in counts
        ]
    )
    measured = estimate_order(errors, 1.0 / counts)
    assert abs(measured - 2) <= ORDER_SLACK, (measured, errors)
    grads = [
        jax.grad(
            lambda x, adj=adj: jnp.sum(
                sample(model, x, sched, sampler="bdia", steps=20, adjoint=adj) ** 2
            )
        )(x_t)
        for adj in ("checkpoint", "reversible")
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10)


def test_exact_inversion_errors():
    sched, mix = VPLinear(), _gaussian()
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    with pytest.raises(ValueError, match="gamma"):
        sample(
            model, jnp.zeros(2), sched, sampler="bdia", sampler_options={"gamma": 1.0}
        )
    with pytest.raises(ValueError, match="final denois"):
        sample(
            model,
            jnp.zeros(2),
            sched,
            sampler="bdia",
            final_denoise=True,
            return_state=True,
        )
    x, state = sample(model, jnp.ones(2), sched, sampler="bdia", return_state=True)
    with pytest.raises(ValueError, match="reversible sampler"):
        invert(model, x, sched, sampler="ddim", state=state)


def _edict_setup():
    sched = VPDiscrete.ddpm_linear()
    mix = GaussianMixture.random(jax.random.key(0), components=4, dim=8)
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x_t = jax.random.normal(jax.random.key(1), (16, 8))
    kw = dict(sampler="edict", steps=50, grid="time_quadratic")
    return sched, model, x_t, kw


def test_edict_is_the_papers_update_in_x():
    # Wallace et al.: x' = a x + b eps(y, t), y' = a y + b eps(x', t), then mixing,
    # with a, b the DDIM coefficients in x. odelab runs it in x/alpha with `scale`.
    sched, model, x_t, kw = _edict_setup()
    grid = time_grid(sched, 50, "time_quadratic")

    def by_hand(x, p=0.93):
        y = x
        for i in range(50):
            t, tn = grid[i], grid[i + 1]
            a = sched.alpha(tn) / sched.alpha(t)
            b = sched.sigma(tn) - sched.alpha(tn) * sched.sigma(t) / sched.alpha(t)
            xi = a * x + b * model(y, t)
            yi = a * y + b * model(xi, t)
            x = p * xi + (1 - p) * yi
            y = p * yi + (1 - p) * x
        return x

    want = jax.jit(jax.vmap(by_hand))(x_t)
    got = jax.jit(jax.vmap(lambda x: sample(model, x, sched, **kw)))(x_t)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def _edict_round_trip():
    sched, model, x_t, kw = _edict_setup()
    x0, state = jax.jit(
        jax.vmap(lambda x: sample(model, x, sched, return_state=True, **kw))
    )(x_t)
    back = jax.jit(jax.vmap(lambda x, s: invert(model, x, sched, state=s, **kw)))(
        x0, state
    )
    return np.abs(np.asarray(back - x_t))


def test_edict_round_trip_to_float32_round_off():
    # Inverting the mixing divides by p twice per step: round-off grows like
    # p^(-2n) = 0.93^-100 ~ 1400 ulps here. Measured: median 3.6e-6, max 1.7e-5.
    err = _edict_round_trip()
    assert np.median(err) <= 1e-5 and err.max() <= 3e-5


@pytest.mark.xfail(
    strict=True,
    reason="issue #6 asks <= 1e-5 for EDICT's float32 50-step round trip; the max "
    "error is 1.7e-5 (p^-2n round-off growth, p = 0.93)",
)
def test_edict_round_trip_meets_the_issue_target():
    assert _edict_round_trip().max() <= 1e-5
