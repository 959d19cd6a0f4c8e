"""Tests of `odelab.diffusion.sde`: the reverse-time SDE against the schedule, the
samplers' moments against the exact marginals of a Gaussian mixture, exact reductions
(DDIM, DPM-Solver++(2M), EDM's Heun, `solve_sde`), weak order, jit/vmap/grad and
errors."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
from odelab.diffusion import EDM, VE, RectifiedFlow, VPCosine, VPDiscrete, VPLinear
from odelab.diffusion.analytic import GaussianMixture, gaussian_flow_map
from odelab.diffusion.sampling import sample, to_denoiser
from odelab.diffusion.sde import SDE_SAMPLERS, reverse_sde_terms, sample_sde
from tests.helpers import (
    ORDER_SLACK,
    check_grad,
    count_traces,
    estimate_order,
    roundoff_tol,
)


def _mixture(dtype=jnp.float64):
    means = jnp.array([[1.5, -1.0], [-1.0, 0.5], [0.0, 2.0]], dtype)
    return GaussianMixture(
        means, jnp.array([0.3, 0.5, 0.4], dtype), jnp.array([0.5, 0.3, 0.2], dtype)
    )


def _marginal_samples(mix, schedule, t, key, n):
    """`n` exact samples of the marginal at time `t`: $\\alpha x_0 + \\sigma\\varepsilon$."""
    k0, k1 = jax.random.split(key)
    x0 = mix.sample(k0, n)
    noise = jax.random.normal(k1, x0.shape, x0.dtype)
    return schedule.alpha(t) * x0 + schedule.sigma(t) * noise


def _marginal_moments(mix, schedule, t):
    """Mean and covariance of the mixture's marginal at time `t`."""
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    w = mix.weights
    mean = w @ mix.means
    centred = mix.means - mean[None]
    within = jnp.sum(w * mix.stds**2) * jnp.eye(mix.dim, dtype=w.dtype)
    cov = centred.T @ (w[:, None] * centred) + within
    return alpha * mean, alpha**2 * cov + sigma**2 * jnp.eye(mix.dim, dtype=w.dtype)


@pytest.mark.x64
@pytest.mark.parametrize(
    "schedule",
    [VPLinear(), VPCosine(), VPDiscrete.ddpm_linear(), VE(), EDM(), RectifiedFlow()],
    ids=lambda s: type(s).__name__,
)
def test_reverse_sde_terms_match_the_schedule(schedule):
    mix = GaussianMixture(jnp.array([[1.0, -2.0]]), 0.5)
    denoiser = lambda x, t: mix.denoiser(x, t, schedule)  # noqa: E731
    t = jnp.asarray(schedule.t_min + 0.37 * (schedule.t_max - schedule.t_min))
    x = jnp.array([0.4, -0.7]) * schedule.sigma(t) + schedule.alpha(t) * mix.means[0]
    ode = reverse_sde_terms(denoiser, schedule, eta=0.0)
    sde = reverse_sde_terms(denoiser, schedule, eta=1.0)
    # eta = 0: the probability-flow velocity, from the exact flow map (in tau = -t).
    velocity = jax.jacfwd(lambda s: gaussian_flow_map(mix, x, t, s, schedule))(t)
    np.testing.assert_allclose(ode.drift(-t, x, ()), -velocity, rtol=1e-10)
    np.testing.assert_allclose(ode.diffusion(-t, x, ()), 0.0)
    # eta = 1 adds g^2/2 times the score, g^2 = d sigma^2/dt - 2 f sigma^2.
    f = jax.grad(lambda s: jnp.log(schedule.alpha(s)))(t)
    g2 = jax.grad(lambda s: schedule.sigma(s) ** 2)(t) - 2 * f * schedule.sigma(t) ** 2
    extra = sde.drift(-t, x, ()) - ode.drift(-t, x, ())
    np.testing.assert_allclose(extra, 0.5 * g2 * mix.score(x, t, schedule), rtol=1e-9)
    np.testing.assert_allclose(sde.diffusion(-t, x, ()) ** 2, g2, rtol=1e-10)


# The discretization allowance is each sampler's weak error at these steps, measured
# on this mixture with 2^15 samples and 25-800 steps: Euler-Maruyama ~0.8/N,
# ddim_eta ~6/N, sde_dpmpp_2m ~40/N^2 (largest error over the mean and covariance
# entries). pc_langevin adds the bias of one unadjusted Langevin step per predictor
# step, at most the stationary r^2/(1 - r^2) = 2.6% of the within-component variance
# (0.15), i.e. 0.004. heun_edm_churn with the largest churn (gamma = sqrt 2 - 1 at
# every step) on the Karras grid: ~55/N^2 (0.087 at 25 steps, within the Monte Carlo
# error of 2^15 samples at 100), about its deterministic Heun's error.
_MOMENT_CASES = [
    ("euler_maruyama", 100, "uniform_t", 0.008),
    ("pc_langevin", 200, "uniform_t", 0.009),
    ("ddim_eta", 800, "logsnr", 0.008),
    ("sde_dpmpp_2m", 100, "logsnr", 0.005),
    ("heun_edm_churn", 100, "karras", 0.006),
]
_CHURN = dict(s_churn=40.0)


@pytest.mark.x64
@pytest.mark.parametrize("sampler, steps, grid, allowance", _MOMENT_CASES)
def test_samples_have_the_data_moments(sampler, steps, grid, allowance):
    # Start from exact samples of the marginal at t_max, so that with the exact
    # denoiser the only errors are Monte Carlo (4 standard errors) and discretization.
    schedule, mix, n = VPLinear(), _mixture(), 2**13
    k_data, k_noise = jax.random.split(jax.random.key(11))
    x_t = _marginal_samples(mix, schedule, schedule.t_max, k_data, n)

    def one(key, x):
        return sample_sde(
            lambda x, t: mix.denoiser(x, t, schedule),
            x,
            schedule,
            key=key,
            prediction="x0",
            sampler=sampler,
            steps=steps,
            grid=grid,
            final_denoise=False,
            axis_name="batch" if sampler == "pc_langevin" else None,
            sampler_options=_CHURN if sampler == "heun_edm_churn" else None,
        )

    out = jax.jit(jax.vmap(one, axis_name="batch"))(jax.random.split(k_noise, n), x_t)
    # Exact moments of the marginal at the last grid time (no final denoise).
    mean, cov = _marginal_moments(mix, schedule, schedule.t_min)
    centred = out - mean[None]
    products = centred[:, :, None] * centred[:, None, :]
    se_mean = jnp.sqrt(jnp.diag(cov) / n)
    se_cov = jnp.std(products, axis=0) / np.sqrt(n)
    np.testing.assert_array_less(
        jnp.abs(jnp.mean(out, axis=0) - mean), 4 * se_mean + allowance
    )
    np.testing.assert_array_less(
        jnp.abs(jnp.mean(products, axis=0) - cov), 4 * se_cov + allowance
    )


@pytest.mark.x64
def test_euler_maruyama_weak_order_one():
    # Same keys for every step count: on a uniform grid of 2^k steps every step end is
    # a dyadic point of the same Brownian tree, so E[phi(X_N) - phi(X_ref)] has a
    # Monte Carlo error far below the weak error (checked below); the reference's own
    # error (~1/1024) bends the fitted slope by a few percent at most.
    schedule = VPLinear()
    mix = GaussianMixture(jnp.array([[1.0, -2.0]]), 0.5)
    n = 512
    k_data, k_noise = jax.random.split(jax.random.key(3))
    x_t = _marginal_samples(mix, schedule, schedule.t_max, k_data, n)
    keys = jax.random.split(k_noise, n)

    def run(steps):
        one = lambda key, x: sample_sde(  # noqa: E731
            lambda x, t: mix.denoiser(x, t, schedule),
            x,
            schedule,
            key=key,
            prediction="x0",
            steps=steps,
            final_denoise=False,
        )
        return jax.jit(jax.vmap(one))(keys, x_t)

    reference = run(1024)
    step_counts = np.array([16, 32, 64])
    errors = []
    for steps in step_counts:
        out = run(int(steps))
        diffs = (out - reference, out**2 - reference**2)
        error = max(float(jnp.max(jnp.abs(jnp.mean(d, axis=0)))) for d in diffs)
        noise = max(float(jnp.max(jnp.std(d, axis=0))) / np.sqrt(n) for d in diffs)
        assert noise < error / 4, (steps, error, noise)
        errors.append(error)
    order = estimate_order(errors, 1.0 / step_counts)
    assert abs(order - 1.0) <= ORDER_SLACK, (order, errors)


@pytest.mark.x64
def test_eta_zero_is_the_deterministic_sampler():
    schedule, mix = VPLinear(), _mixture()
    model = lambda x, t: mix.eps(x, t, schedule)  # noqa: E731
    x = jnp.array([0.3, -1.2])
    key = jax.random.key(5)
    tol = roundoff_tol(jnp.float64, 10)
    common = dict(eta=0.0, steps=10, grid="logsnr", final_denoise=False)
    ddim_eta = sample_sde(model, x, schedule, key=key, sampler="ddim_eta", **common)
    ddim = sample(model, x, schedule, sampler="ddim", steps=10, grid="logsnr")
    np.testing.assert_allclose(ddim_eta, ddim, rtol=tol, atol=tol)
    dpmpp = sample_sde(model, x, schedule, key=key, sampler="sde_dpmpp_2m", **common)
    reference = sample(
        model,
        x,
        schedule,
        sampler="dpmpp_2m",
        steps=10,
        grid="logsnr",
        lower_order_final=False,
    )
    np.testing.assert_allclose(dpmpp, reference, rtol=tol, atol=tol)


@pytest.mark.x64
def test_one_ddim_eta_step_is_ddim_equation_12():
    schedule, mix = VPLinear(), _mixture()
    model = lambda x, t: mix.eps(x, t, schedule)  # noqa: E731
    x, key = jnp.array([0.7, -1.1]), jax.random.key(2)
    t0, t1 = 0.9, 0.6
    grid = jnp.array([t0, t1])

    def step(sampler, eta):
        return sample_sde(
            model,
            x,
            schedule,
            key=key,
            sampler=sampler,
            grid=grid,
            eta=eta,
            final_denoise=False,
        )

    # DDIM's notation: abar = alpha^2; sigma_t(eta) of eq. (16).
    abar0, abar1 = schedule.alpha(t0) ** 2, schedule.alpha(t1) ** 2
    eps = mix.eps(x, t0, schedule)
    x0_hat = (x - jnp.sqrt(1 - abar0) * eps) / jnp.sqrt(abar0)

    def textbook(eta, z):
        sig = eta * jnp.sqrt((1 - abar1) / (1 - abar0) * (1 - abar0 / abar1))
        return jnp.sqrt(abar1) * x0_hat + jnp.sqrt(1 - abar1 - sig**2) * eps + sig * z

    # The noise z from the eta = 1 step (the update is linear in z), then eta = 0.5.
    z = (step("ddim_eta", 1.0) - textbook(1.0, 0.0)) / (
        textbook(1.0, 1.0) - textbook(1.0, 0.0)
    )
    np.testing.assert_allclose(step("ddim_eta", 0.5), textbook(0.5, z), rtol=1e-12)
    # The first-order SDE-DPM-Solver++ step is DDIM with eta = 1.
    np.testing.assert_allclose(
        step("sde_dpmpp_2m", 1.0), step("ddim_eta", 1.0), rtol=1e-12
    )


@pytest.mark.x64
def test_euler_maruyama_is_solve_sde_of_reverse_sde_terms():
    schedule, mix = VPLinear(), _mixture()
    model = lambda x, t: mix.eps(x, t, schedule)  # noqa: E731
    x, key = jnp.array([0.3, -1.2]), jax.random.key(7)
    got = sample_sde(model, x, schedule, key=key, steps=37, final_denoise=False)
    sde = reverse_sde_terms(to_denoiser(model, "eps", schedule), schedule)
    sol = odelab.solve_sde(
        sde.drift,
        sde.diffusion,
        x,
        (-schedule.t_max, -schedule.t_min),
        (),
        key=key,
        steps=37,
    )
    tol = roundoff_tol(jnp.float64, 37)
    np.testing.assert_allclose(got, sol.ys[-1], rtol=tol, atol=tol)


@pytest.mark.x64
def test_dpmpp_2m_sde_is_sde_dpmpp_2m_with_eta_one():
    schedule, mix = VPLinear(), _mixture()
    model = lambda x, t: mix.eps(x, t, schedule)  # noqa: E731
    x, key = jnp.array([0.3, -1.2]), jax.random.key(8)
    common = dict(key=key, steps=12, grid="logsnr")
    alias = sample_sde(model, x, schedule, sampler="dpmpp_2m_sde", **common)
    family = sample_sde(model, x, schedule, sampler="sde_dpmpp_2m", eta=1.0, **common)
    np.testing.assert_array_equal(alias, family)


@pytest.mark.x64
@pytest.mark.parametrize("final_denoise", [True, False])
def test_churn_zero_is_heun_edm(final_denoise):
    schedule, mix = VPLinear(), _mixture()
    model = lambda x, t: mix.eps(x, t, schedule)  # noqa: E731
    x = jnp.array([0.3, -1.2]) * schedule.sigma(schedule.t_max)
    common = dict(steps=18, grid="karras", final_denoise=final_denoise)
    churn = sample_sde(
        model,
        x,
        schedule,
        key=jax.random.key(0),
        sampler="heun_edm_churn",
        sampler_options=dict(s_churn=0.0, s_noise=1.007),
        **common,
    )
    heun = sample(model, x, schedule, sampler="heun_edm", **common)
    tol = roundoff_tol(jnp.float64, 2 * 18)
    np.testing.assert_allclose(churn, heun, rtol=tol, atol=tol)


@pytest.mark.x64
def test_churn_is_algorithm_2():
    # Karras et al.'s Algorithm 2 written out on the EDM schedule (alpha = 1, sigma =
    # t), including its last step to sigma = 0. The noise z_i is the solver's, read off
    # the Brownian path as documented (the normalised increment over each step).
    schedule, mix = EDM(), _mixture()
    denoiser = lambda x, t: mix.denoiser(x, t, schedule)  # noqa: E731
    x, key, steps = jnp.array([30.0, -50.0]), jax.random.key(6), 5
    options = dict(s_churn=1.5, s_tmin=0.5, s_tmax=40.0, s_noise=1.007)
    got = sample_sde(
        denoiser,
        x,
        schedule,
        key=key,
        prediction="x0",
        sampler="heun_edm_churn",
        steps=steps,
        grid="karras",
        sampler_options=options,
    )
    ts = list(
        np.asarray(odelab.diffusion.schedules.time_grid(schedule, steps, "karras"))
    )
    ts.append(0.0)
    path = diffrax.UnsafeBrownianPath(
        shape=jax.ShapeDtypeStruct(x.shape, x.dtype), key=key
    )
    n = len(ts) - 1
    for t0, t1 in zip(ts[:-1], ts[1:]):
        z = path.evaluate(t1, t0) / np.sqrt(t0 - t1)
        inside = options["s_tmin"] <= t0 <= options["s_tmax"]
        gamma = min(options["s_churn"] / n, np.sqrt(2) - 1) if inside else 0.0
        t_hat = t0 + gamma * t0
        x_hat = x + np.sqrt(t_hat**2 - t0**2) * options["s_noise"] * z
        d = (x_hat - denoiser(x_hat, t_hat)) / t_hat
        x = x_hat + (t1 - t_hat) * d
        if t1 > 0:
            d_prime = (x - denoiser(x, t1)) / t1
            x = x_hat + (t1 - t_hat) * (0.5 * d + 0.5 * d_prime)
    tol = roundoff_tol(jnp.float64, 4 * steps)
    np.testing.assert_allclose(got, x, rtol=tol, atol=tol)


_OPTIONS = {"heun_edm_churn": dict(s_churn=20.0)}


@pytest.mark.parametrize("sampler", SDE_SAMPLERS)
def test_jit_vmap_no_recompile(sampler):
    schedule = VPLinear()

    def model(x, t):
        # The denoiser of N(0, 0.25 I) data, elementwise: any state shape.
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        return alpha * 0.25 * x / (alpha**2 * 0.25 + sigma**2)

    @count_traces
    def run(x, key):
        return sample_sde(
            model,
            x,
            schedule,
            key=key,
            prediction="x0",
            sampler=sampler,
            steps=6,
            sampler_options=_OPTIONS.get(sampler),
        )

    batched = jax.jit(jax.vmap(run))
    x = jax.random.normal(jax.random.key(1), (4, 3, 2))
    keys = jax.random.split(jax.random.key(2), 4)
    out = batched(x, keys)
    batched(x + 1.0, jax.random.split(jax.random.key(3), 4))
    assert run.num_traces == 1
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    single = jax.jit(run)(x[2], keys[2])
    tol = roundoff_tol(jnp.float32, 6)
    np.testing.assert_allclose(out[2], single, rtol=tol, atol=tol)


@pytest.mark.x64
@pytest.mark.parametrize("sampler", SDE_SAMPLERS)
def test_gradient_wrt_noise(sampler):
    schedule, mix = VPLinear(), _mixture()
    model = lambda x, t: mix.eps(x, t, schedule)  # noqa: E731
    key = jax.random.key(4)

    @jax.jit
    def loss(x):
        out = sample_sde(
            model,
            x,
            schedule,
            key=key,
            sampler=sampler,
            steps=8,
            sampler_options=_OPTIONS.get(sampler),
        )
        return jnp.sum(out**2)

    check_grad(loss, jnp.array([0.5, -0.8]))


def test_bad_input_is_named():
    schedule = VPLinear()
    model = lambda x, t: x  # noqa: E731
    x, key = jnp.ones(2), jax.random.key(0)
    with pytest.raises(ValueError, match="unknown sampler 'em'.*euler_maruyama"):
        sample_sde(model, x, schedule, key=key, sampler="em")
    with pytest.raises(ValueError, match="unknown prediction 'noise'.*eps"):
        sample_sde(model, x, schedule, key=key, prediction="noise")
    with pytest.raises(ValueError, match="`steps` must be at least 1"):
        sample_sde(model, x, schedule, key=key, steps=0)
    with pytest.raises(ValueError, match="`eta` must be >= 0"):
        sample_sde(model, x, schedule, key=key, eta=-0.5)
    with pytest.raises(ValueError, match="'ddim_eta' needs `eta` in"):
        sample_sde(model, x, schedule, key=key, sampler="ddim_eta", eta=1.5)
    with pytest.raises(ValueError, match="`snr` must be positive"):
        sample_sde(model, x, schedule, key=key, sampler="pc_langevin", snr=0.0)
    with pytest.raises(ValueError, match="`eta` must be >= 0"):
        reverse_sde_terms(model, schedule, eta=-1.0)
    with pytest.raises(TypeError, match="`x_t` must be a floating array"):
        sample_sde(model, jnp.ones(2, jnp.int32), schedule, key=key)
    with pytest.raises(ValueError, match="'dpmpp_2m_sde' is 'sde_dpmpp_2m' with eta"):
        sample_sde(model, x, schedule, key=key, sampler="dpmpp_2m_sde", eta=0.5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(s_churn=-1.0), "`s_churn` must be >= 0"),
        (dict(s_noise=0.0), "`s_noise` must be positive"),
        (dict(s_tmin=2.0, s_tmax=1.0), "`s_tmin` must not exceed `s_tmax`"),
        (dict(churn=1.0), "takes no option 'churn'; valid: s_churn, s_tmin"),
    ],
)
def test_bad_churn_options_are_named(options, message):
    x, key = jnp.ones(2), jax.random.key(0)
    with pytest.raises(ValueError, match=message):
        sample_sde(
            lambda x, t: x,
            x,
            EDM(),
            key=key,
            sampler="heun_edm_churn",
            grid="karras",
            sampler_options=options,
        )


def test_options_of_samplers_without_options_are_refused():
    with pytest.raises(ValueError, match="'ddim_eta' takes no option 's_churn'.*none"):
        sample_sde(
            lambda x, t: x,
            jnp.ones(2),
            VPLinear(),
            key=jax.random.key(0),
            sampler="ddim_eta",
            sampler_options=dict(s_churn=1.0),
        )
