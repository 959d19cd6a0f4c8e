"""DDIM inversion and its relatives: the inverse flow map, round-trip orders, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import VPLinear, invert, sample
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
