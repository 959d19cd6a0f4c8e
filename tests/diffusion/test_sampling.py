"""Tests of `odelab.diffusion.sampling`: DDIM exactly, orders, adapters, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import EDM, RectifiedFlow, VPDiscrete, VPLinear
from odelab.diffusion.analytic import GaussianMixture, gaussian_flow_map
from odelab.diffusion.sampling import (
    classifier_free_guidance,
    dynamic_thresholding,
    sample,
    to_denoiser,
)
from tests.helpers import ORDER_SLACK, convergence_order


def _mixture():
    return GaussianMixture.random(
        jax.random.key(0), components=3, dim=2, dtype=jnp.float64
    )


@pytest.mark.x64
def test_one_ddim_step_is_the_textbook_formula():
    sched, mix = VPLinear(), _mixture()
    x = jnp.array([0.7, -1.1])
    t0, t1 = 0.9, 0.6
    eps = mix.eps(x, t0, sched)
    x0_hat = (x - sched.sigma(t0) * eps) / sched.alpha(t0)
    textbook = sched.alpha(t1) * x0_hat + sched.sigma(t1) * eps
    got = sample(
        lambda x, t: mix.eps(x, t, sched),
        x,
        sched,
        sampler="ddim",
        steps=1,
        grid=jnp.array([t0, t1]),
    )
    np.testing.assert_allclose(got, textbook, rtol=1e-12)


@pytest.mark.x64
@pytest.mark.parametrize(
    "sampler, order, kw",
    [
        ("ddim", 1, {}),
        ("etdrk2", 2, {}),
        ("etdrk4", 4, {}),
        ("exponential_adams2", 2, {}),
        ("exponential_adams3", 3, {}),
        ("dpmpp_2m", 2, {}),
        ("dpmpp_2s", 2, {}),
        ("dpmpp_3s", 3, {}),
        ("dpm_solver_1", 1, {}),
        ("dpm_solver_2", 2, {}),
        ("dpm_solver_3", 3, {}),
        # UniPC-2 with its corrector is third order (measured without diffusers'
        # lower-order final step, whose cost shows only at finer grids).
        ("unipc", 3, {"lower_order_final": False}),
        ("unipc", 2, {"sampler_options": {"corrector": False}}),
        # DPM-Solver++(3M) as diffusers writes it is second order (module notes).
        ("dpmpp_3m", 2, {}),
        ("heun_edm", 2, {}),
        ("euler", 1, {}),
        ("heun", 2, {}),
        ("rf_solver", 2, {}),
    ],
)
def test_sampler_orders_on_the_analytic_mixture(sampler, order, kw):
    sched, mix = VPLinear(), _mixture()
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x_t = jax.random.normal(jax.random.key(1), (2,), jnp.float64)
    exact = sample(model, x_t, sched, sampler="etdrk4", steps=2000)
    measured, _ = convergence_order(
        lambda n: sample(model, x_t, sched, sampler=sampler, steps=int(n), **kw),
        exact,
        # The singlestep third-order tableau leaves its pre-asymptotic range later.
        np.asarray(
            [20, 40, 80, 160] if sampler == "dpm_solver_3" else [10, 20, 40, 80]
        ),
    )
    assert abs(measured - order) <= ORDER_SLACK, measured


@pytest.mark.x64
@pytest.mark.parametrize("schedule", [VPLinear(), EDM(), RectifiedFlow()], ids=repr)
def test_single_gaussian_reaches_its_exact_flow_map(schedule):
    mix = GaussianMixture(jnp.array([[1.0, -2.0]]), 0.5)
    x_t = jnp.array([0.3, 0.9]) * schedule.sigma(schedule.t_max)
    got = sample(
        lambda x, t: mix.denoiser(x, t, schedule),
        x_t,
        schedule,
        prediction="x0",
        sampler="etdrk4",
        steps=256,
    )
    exact = gaussian_flow_map(mix, x_t, schedule.t_max, schedule.t_min, schedule)
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-8)


@pytest.mark.x64
@pytest.mark.parametrize(
    "schedule", [VPLinear(), VPDiscrete.ddpm_linear(), RectifiedFlow()], ids=repr
)
def test_every_prediction_type_gives_the_same_denoiser(schedule):
    mix, t = _mixture(), 0.4
    x = jnp.array([0.2, 1.5])
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    d = mix.denoiser(x, t, schedule)
    eps = mix.eps(x, t, schedule)
    d_alpha, d_sigma = jax.grad(schedule.alpha)(t), jax.grad(schedule.sigma)(t)
    outputs = {
        "x0": d,
        "eps": eps,
        "score": mix.score(x, t, schedule),
        "v": alpha * eps - sigma * d,
        "flow": d_alpha * d + d_sigma * eps,
    }
    for prediction, out in outputs.items():
        denoise = to_denoiser(lambda x, t, out=out: out, prediction, schedule)
        np.testing.assert_allclose(denoise(x, t), d, rtol=1e-10, err_msg=prediction)


def test_guidance_and_thresholding():
    model = lambda x, t, c: x * c  # noqa: E731
    guided = classifier_free_guidance(model, 3.0, 0.0)
    np.testing.assert_allclose(guided(jnp.ones(2), 0.5, 2.0), 6.0)
    big = dynamic_thresholding(lambda x, t: x, percentile=0.5)
    out = big(jnp.array([4.0, -2.0, 1.0, 3.0]), 0.5)
    assert float(jnp.max(jnp.abs(out))) <= 1.0


def test_jit_vmap_grad():
    sched = VPLinear()
    mix = GaussianMixture.random(jax.random.key(0), components=2, dim=3)
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x_t = jax.random.normal(jax.random.key(2), (5, 3))
    run = jax.jit(
        jax.vmap(
            lambda x: sample(model, x, sched, sampler="exponential_adams2", steps=8)
        )
    )
    out = run(x_t)
    assert out.shape == (5, 3) and bool(jnp.all(jnp.isfinite(out)))
    g = jax.grad(lambda x: jnp.sum(sample(model, x, sched, steps=8) ** 2))(x_t[0])
    assert g.shape == (3,) and bool(jnp.all(jnp.isfinite(g)))


def test_bad_input_is_named():
    sched = VPLinear()
    model = lambda x, t: x  # noqa: E731
    x = jnp.ones(2)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'.*ddim"):
        sample(model, x, sched, sampler="dpm")
    with pytest.raises(ValueError, match="unknown prediction 'noise'.*eps"):
        sample(model, x, sched, prediction="noise")
    with pytest.raises(ValueError, match="order 3 and needs steps >= 3"):
        sample(model, x, sched, sampler="exponential_adams3", steps=2)
    with pytest.raises(ValueError, match="unknown grid"):
        sample(model, x, sched, grid="linear")


@pytest.mark.x64
@pytest.mark.parametrize("schedule", [RectifiedFlow(), VPLinear(), EDM()], ids=repr)
def test_ddim_is_euler_in_sigma_and_for_flows_euler_in_t(schedule):
    import diffrax

    mix = _mixture()
    model = lambda x, t: mix.eps(x, t, schedule)  # noqa: E731
    x_t = jnp.array([0.3, -0.8]) * schedule.sigma(schedule.t_max)
    kw = dict(steps=10, grid="uniform_t")
    ddim = sample(model, x_t, schedule, sampler="ddim", **kw)
    euler_sigma = sample(
        model, x_t, schedule, sampler=diffrax.Euler(), space="sigma", **kw
    )
    np.testing.assert_allclose(euler_sigma, ddim, rtol=1e-12, atol=1e-12)
    flow_euler = sample(model, x_t, schedule, sampler="euler", **kw)
    if isinstance(schedule, VPLinear):
        # VP: x/alpha is not the flow's state, and the two differ at first order.
        assert float(jnp.max(jnp.abs(flow_euler - ddim))) > 1e-3
    else:
        np.testing.assert_allclose(flow_euler, ddim, rtol=1e-12, atol=1e-12)


@pytest.mark.x64
@pytest.mark.parametrize(
    "sampler, grid",
    [
        ("ddim", "logsnr"),
        ("dpmpp_2m", "linspace"),
        ("unipc", "linspace"),
        ("deis", "linspace"),
        ("heun_edm", "karras"),
        ("euler", "uniform_t"),
        ("bdia", "logsnr"),
    ],
)
def test_float32_state_with_float64_schedule_math(sampler, grid):
    # Under x64 a float32 x_T stays float32 (the model sees float32 x and t) while the
    # grid, the coordinates and the solver's coefficients are float64; the result is
    # the float64 run's to float32 round-off (measured <= 3.5e-5 at up to 1000 steps;
    # float32 schedule math gives 1.4e-5 to 4.4e-5 there: the state's round-off
    # dominates on this problem).
    sched = VPDiscrete.ddpm_linear()
    m32 = GaussianMixture.random(jax.random.key(0), components=3, dim=4)
    x = jax.random.normal(jax.random.key(1), (8, 4), jnp.float32)
    out = {}
    for dtype in (jnp.float32, jnp.float64):
        mix = GaussianMixture(
            m32.means.astype(dtype), m32.stds.astype(dtype), m32.weights.astype(dtype)
        )

        def model(x, t, mix=mix):
            return jax.vmap(lambda xi: mix.eps(xi, t, sched))(x)

        out[dtype] = sample(
            model, x.astype(dtype), sched, sampler=sampler, steps=20, grid=grid
        )
    assert out[jnp.float32].dtype == jnp.float32
    np.testing.assert_allclose(
        out[jnp.float32], out[jnp.float64].astype(jnp.float32), atol=2e-5, rtol=0
    )
