"""Tests of `odelab.diffusion.log_likelihood` against Gaussian-mixture densities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import RectifiedFlow, VPLinear, bits_per_dim, log_likelihood
from odelab.diffusion.analytic import GaussianMixture, gaussian_flow_map


# Global error of an adaptive solve relative to its per-step tolerance: the local
# errors of its O(100) steps accumulate, and the flow, contracting towards the data
# near t_min, amplifies them by a few.
_GLOBAL_FACTOR = 100.0


def _points():
    return jnp.asarray([[1.0, 0.3], [-0.8, -0.6], [0.0, 0.0], [1.5, 1.0]])


def _mixture_log_likelihood(mix, schedule, rtol, prior=None):
    """`log_likelihood` of `_points()` under the mixture's exact x0-denoiser."""
    return jax.jit(
        jax.vmap(
            lambda x: log_likelihood(
                lambda x, t: mix.denoiser(x, t, schedule),
                x,
                schedule,
                prediction="x0",
                prior=prior,
                rtol=rtol,
                atol=rtol,
            )
        )
    )(_points())


@pytest.mark.x64
@pytest.mark.parametrize("schedule", [VPLinear(), RectifiedFlow()], ids=["vp", "rf"])
def test_matches_the_mixture_density(schedule):
    mix = GaussianMixture(
        jnp.asarray([[1.0, 0.5], [-1.0, -0.5]]), jnp.asarray([0.5, 0.3])
    )
    rtol = 1e-7
    prior = lambda z: mix.log_prob(z, schedule.t_max, schedule)  # noqa: E731
    log_p = _mixture_log_likelihood(mix, schedule, rtol, prior)
    expected = jax.vmap(lambda x: mix.log_prob(x, schedule.t_min, schedule))(_points())
    tol = _GLOBAL_FACTOR * rtol
    np.testing.assert_allclose(log_p, expected, rtol=tol, atol=tol)


@pytest.mark.x64
def test_default_prior_error_is_the_prior_mismatch_at_the_noise_end():
    # A single Gaussian N(mu, s^2 I) has a closed-form flow map, so x(T) and the
    # default prior's error log N(x(T); 0, sigma_T^2 I) - log p_T(x(T)) are exact:
    # of order alpha_T |mu| |x(T)| / sigma_T^2, about 1e-2 for VP-linear (alpha_T =
    # e^-5.025).
    schedule = VPLinear()
    mix = GaussianMixture(jnp.asarray([[1.0, 0.5]]), jnp.asarray([0.4]))
    rtol = 1e-7
    log_p = _mixture_log_likelihood(mix, schedule, rtol)

    def expected(x):
        x_end = gaussian_flow_map(mix, x, schedule.t_min, schedule.t_max, schedule)
        sigma = schedule.sigma(schedule.t_max)
        default_prior = -0.5 * jnp.sum((x_end / sigma) ** 2) - 2 * jnp.log(
            sigma * math.sqrt(2 * math.pi)
        )
        mismatch = default_prior - mix.log_prob(x_end, schedule.t_max, schedule)
        return mix.log_prob(x, schedule.t_min, schedule) + mismatch, mismatch

    expected, mismatch = jax.vmap(expected)(_points())
    assert 1e-3 < float(jnp.max(jnp.abs(mismatch))) < 1e-1
    tol = _GLOBAL_FACTOR * rtol
    np.testing.assert_allclose(log_p, expected, rtol=tol, atol=tol)


def test_bits_per_dim_of_the_uniform_density_on_8_bit_data():
    # Uniform on [-1, 1]^D is uniform on the 256 levels of 8-bit data: 8 bits each.
    dim = 6
    bpd = bits_per_dim(jnp.asarray(-dim * math.log(2.0)), dim, scale=2 / 256)
    np.testing.assert_allclose(bpd, 8.0, rtol=1e-6)


def test_bad_inputs_are_clear_errors():
    schedule = RectifiedFlow()
    model = lambda x, t: x  # noqa: E731
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="`trace='jacobian'`.*exact, hutchinson"):
        log_likelihood(model, x, schedule, trace="jacobian")
    with pytest.raises(ValueError, match="`key` is required"):
        log_likelihood(model, x, schedule, trace="hutchinson")
    with pytest.raises(ValueError, match="unknown prediction"):
        log_likelihood(model, x, schedule, prediction="noise")
    with pytest.raises(ValueError, match="`x` must be a real floating"):
        log_likelihood(model, jnp.zeros(2, jnp.int32), schedule)
    with pytest.raises(ValueError, match="`t_start` and `t_end` are equal"):
        log_likelihood(model, x, schedule, t_start=0.5, t_end=0.5)
