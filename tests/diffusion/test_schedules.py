"""Tests of `odelab.diffusion.schedules` and `odelab.diffusion.analytic`."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import (
    EDM,
    VE,
    RectifiedFlow,
    VPCosine,
    VPDiscrete,
    VPLinear,
    time_grid,
)
from odelab.diffusion.analytic import GaussianMixture, gaussian_flow_map


SCHEDULES = [
    VPLinear(),
    VPCosine(),
    VPDiscrete.ddpm_linear(),
    VE(),
    EDM(),
    RectifiedFlow(),
]


@pytest.mark.x64
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_lambda_round_trip_and_monotone(schedule):
    t = jnp.linspace(schedule.t_min, schedule.t_max, 101)
    lam = schedule.lam(t)
    assert bool(jnp.all(jnp.diff(lam) < 0))  # noise grows with t
    np.testing.assert_allclose(schedule.t_of_lambda(lam), t, rtol=1e-10, atol=1e-12)
    # Gradients of t(λ) exist (learned grids differentiate through it).
    g = jax.grad(lambda x: schedule.t_of_lambda(x))(lam[50])
    np.testing.assert_allclose(g, 1.0 / jax.grad(schedule.lam)(t[50]), rtol=1e-8)


@pytest.mark.x64
@pytest.mark.parametrize(
    "schedule",
    [VPLinear(), VPCosine(), VPDiscrete.ddpm_linear()],
    ids=lambda s: type(s).__name__,
)
def test_variance_preserving(schedule):
    t = jnp.linspace(schedule.t_min, schedule.t_max, 57)
    np.testing.assert_allclose(
        schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, 1.0, rtol=1e-12
    )


@pytest.mark.x64
def test_closed_forms():
    vp = VPLinear(beta_min=0.1, beta_max=20.0)
    t = 0.37
    # alpha(t) = exp(-∫_0^t β / 2) with β linear.
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    np.testing.assert_allclose(vp.alpha(t), np.exp(-0.5 * integral), rtol=1e-14)
    rf = RectifiedFlow()
    np.testing.assert_allclose([rf.alpha(0.3), rf.sigma(0.3)], [0.7, 0.3], rtol=1e-14)
    np.testing.assert_allclose(EDM().sigma(3.0), 3.0)
    cos = VPCosine()
    assert abs(float(cos.alpha(0.0)) - 1.0) < 1e-14
    # DDPM: at the table's points alpha^2 is alphas_cumprod itself.
    betas = np.linspace(1e-4, 0.02, 1000)
    disc = VPDiscrete.ddpm_linear()
    n = np.array([0, 10, 500, 999])
    np.testing.assert_allclose(
        disc.alpha((n + 1) / 1000.0) ** 2, np.cumprod(1 - betas)[n], rtol=1e-12
    )


@pytest.mark.x64
@pytest.mark.parametrize("kind", ["uniform_t", "logsnr", "karras", "time_quadratic"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_time_grids(schedule, kind):
    grid = time_grid(schedule, 10, kind)
    assert grid.shape == (11,)
    assert bool(jnp.all(jnp.diff(grid) < 0))
    np.testing.assert_allclose([grid[0], grid[-1]], [schedule.t_max, schedule.t_min])
    lam = schedule.lam(grid)
    if kind == "logsnr":
        np.testing.assert_allclose(jnp.diff(lam), jnp.diff(lam)[0], rtol=1e-8)
    if kind == "karras":
        s = jnp.exp(-lam) ** (1 / 7)
        np.testing.assert_allclose(jnp.diff(s), jnp.diff(s)[0], rtol=1e-8)


def test_bad_grids_are_named():
    vp = VPLinear()
    with pytest.raises(ValueError, match="unknown grid 'linear'.*logsnr"):
        time_grid(vp, 10, "linear")
    with pytest.raises(ValueError, match="at least 1"):
        time_grid(vp, 0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        time_grid(vp, 2, jnp.array([0.1, 0.5, 1.0]))
    with pytest.raises(ValueError, match="leaves the schedule's range"):
        time_grid(vp, 2, jnp.array([1.5, 0.5, 0.1]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        VPDiscrete(np.array([0.5, 0.6]))


@pytest.mark.x64
@pytest.mark.parametrize(
    "schedule", [VPLinear(), EDM(), RectifiedFlow()], ids=lambda s: type(s).__name__
)
def test_mixture_denoiser_and_score(schedule):
    mix = GaussianMixture.random(
        jax.random.key(0), components=3, dim=2, dtype=jnp.float64
    )
    x, t = jnp.array([0.4, -1.3]), 0.5 * (schedule.t_min + schedule.t_max)
    # The score is the gradient of the marginal log-density.
    np.testing.assert_allclose(
        mix.score(x, t, schedule), jax.grad(mix.log_prob)(x, t, schedule), rtol=1e-10
    )
    # Tweedie: D = (x + σ² score)/α, so eps = -σ score.
    np.testing.assert_allclose(
        mix.eps(x, t, schedule),
        -schedule.sigma(t) * mix.score(x, t, schedule),
        rtol=1e-10,
    )


@pytest.mark.x64
def test_gaussian_flow_map_solves_the_probability_flow_ode():
    # dx/dt = f x - g²/2 score with f = dlogα/dt, g² = 2σ²(dlogσ/dt - dlogα/dt) and
    # score = -eps/σ, i.e. dx/dt = (dlogα/dt) x + (dlogσ/dt - dlogα/dt) σ eps:
    # its solution from t=0.8 to t=0.2 equals the closed form.
    schedule = VPLinear()
    mix = GaussianMixture(jnp.array([[1.0, -2.0]]), 0.5)

    def field(t, x, args):
        dla = jax.grad(schedule.log_alpha)(t)
        dls = jax.grad(schedule.log_sigma)(t)
        return dla * x + (dls - dla) * schedule.sigma(t) * mix.eps(x, t, schedule)

    x = jnp.array([0.3, 0.9])
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), 0.8, 0.2, -0.01, x,
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11),
    )  # fmt: skip
    exact = gaussian_flow_map(mix, x, 0.8, 0.2, schedule)
    np.testing.assert_allclose(sol.ys[-1], exact, rtol=1e-8)


def test_mixture_samples_have_its_moments():
    mix = GaussianMixture(jnp.array([[0.0, 0.0], [4.0, 0.0]]), jnp.array([0.5, 1.0]))
    xs = mix.sample(jax.random.key(1), 40000)
    np.testing.assert_allclose(jnp.mean(xs, axis=0), [2.0, 0.0], atol=0.05)
    # Var of the first coordinate: mean of variances + variance of means.
    np.testing.assert_allclose(jnp.var(xs[:, 0]), 0.5 * (0.25 + 1.0) + 4.0, rtol=0.03)
