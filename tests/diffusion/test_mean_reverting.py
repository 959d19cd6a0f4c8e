"""Tests of `odelab.diffusion.mean_reverting`: the MR schedule against its SDE, the
centred denoiser, MRS's closed-form steps, orders, SDE moments, jit/vmap/grad, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import MeanReverting, sample_mean_reverting
from odelab.diffusion.analytic import GaussianMixture, gaussian_flow_map
from odelab.diffusion.mean_reverting import mean_reverting_denoiser
from odelab.diffusion.sde import reverse_sde_terms
from tests.helpers import ORDER_SLACK, check_grad, convergence_order, count_traces


SIGMA_INF = 0.7


def _mu():
    return jnp.array([0.4, -0.3])


def _mixture():
    """Data x0 in the uncentred variable: 3 components in 2-D."""
    return GaussianMixture(
        jnp.array([[1.0, 0.5], [-0.8, 1.2], [0.3, -1.1]]), jnp.array([0.3, 0.2, 0.4])
    )


def _centred(mix, mu):
    return GaussianMixture(mix.means - mu[None], mix.stds, mix.weights)


def _x0_model(mix, schedule):
    """The exact E[x0 | x_t] as an MR network `model(x, t, mu)` predicting x0."""

    def model(x, t, mu):
        return mu + _centred(mix, mu).denoiser(x - mu, t, schedule)

    return model


def _eps_model(mix, schedule):
    def model(x, t, mu):
        return _centred(mix, mu).eps(x - mu, t, schedule)

    return model


@pytest.mark.x64
@pytest.mark.parametrize("theta_schedule", ["cosine", "linear", "constant"])
def test_marginal_is_the_closed_form_and_solves_the_forward_sde(theta_schedule):
    sched = MeanReverting(SIGMA_INF, theta_schedule, T=3.0, alpha_end=0.02)

    @jax.jit
    def quantities(t):
        # theta_bar(T) by composite Simpson on theta (error ~ (T/n)^4).
        fine = jnp.linspace(0.0, sched.t_max, 4001)
        w = jnp.ones(4001).at[1:-1:2].set(4.0).at[2:-1:2].set(2.0)
        simpson = jnp.sum(w * sched.theta(fine)) * (fine[1] - fine[0]) / 3
        sde = reverse_sde_terms(lambda y, s: jnp.zeros_like(y), sched, eta=1.0)
        return dict(
            simpson=simpson,
            theta_bar=sched.theta_bar(t),
            theta=sched.theta(t),
            alpha=sched.alpha(t),
            var=sched.sigma(t) ** 2,
            g2=sched.diffusion(t) ** 2,
            d_alpha=jax.vmap(jax.grad(sched.alpha))(t),
            d_var=jax.vmap(jax.grad(lambda s: sched.sigma(s) ** 2))(t),
            lam_dot=jax.vmap(jax.grad(sched.lam))(t),
            sde_g=jax.vmap(lambda s: sde.diffusion(-s, jnp.ones(()), ()))(t),
            round_trip=sched.t_of_lambda(sched.lam(t)),
            t_star=sched.t_of_theta_bar(1.3),
            dt_dtheta_bar=jax.grad(sched.t_of_theta_bar)(1.3),
        )

    t = jnp.linspace(sched.t_min, sched.t_max, 9)
    q = quantities(t)
    np.testing.assert_allclose(q["simpson"], -np.log(0.02), rtol=1e-10)
    np.testing.assert_allclose(q["alpha"], jnp.exp(-q["theta_bar"]), rtol=1e-13)
    # 1 - e^(-2 theta_bar) through expm1: at t_min theta_bar ~ 1e-7.
    np.testing.assert_allclose(
        q["var"], -(SIGMA_INF**2) * jnp.expm1(-2 * q["theta_bar"]), rtol=1e-12
    )
    # Moments of dx = theta (mu - x) dt + g dW with g^2 = 2 lambda^2 theta:
    # d alpha/dt = -theta alpha and d sigma^2/dt = -2 theta sigma^2 + g^2.
    np.testing.assert_allclose(q["g2"], 2 * SIGMA_INF**2 * q["theta"], rtol=1e-13)
    np.testing.assert_allclose(q["d_alpha"], -q["theta"] * q["alpha"], rtol=1e-10)
    np.testing.assert_allclose(
        q["d_var"], -2 * q["theta"] * q["var"] + q["g2"], rtol=1e-9, atol=1e-14
    )
    # odelab's generic reverse SDE (sde.py) reads the same g^2 = -2 sigma^2 lambda'.
    np.testing.assert_allclose(-2 * q["var"] * q["lam_dot"], q["g2"], rtol=1e-9)
    np.testing.assert_allclose(q["sde_g"] ** 2, q["g2"], rtol=1e-9)
    # t(lambda) inverts lambda(t), and its gradient is the implicit one, 1/theta.
    np.testing.assert_allclose(q["round_trip"], t, rtol=1e-12)
    np.testing.assert_allclose(
        q["dt_dtheta_bar"], 1 / sched.theta(q["t_star"]), rtol=1e-10
    )


def test_irsde_discrete_cosine_schedule_is_approached():
    # IR-SDE's table: theta_i = 1 - abar((i + 1)/(T + 2)), theta_bar_i = dt *
    # sum_{j=1..i} theta_j with dt set by theta_bar_T = -log(eps); ours is its
    # continuous form, so the two agree to O(1/T).
    steps, eps = 1000, 0.01
    x = np.linspace(0, steps + 2, steps + 3)
    abar = np.cos((x / (steps + 2) + 0.008) / 1.008 * np.pi / 2) ** 2
    thetas = 1 - abar[1:-1] / abar[0]
    cumsum = np.cumsum(thetas) - thetas[0]
    table = -np.log(eps) * cumsum / cumsum[-1]
    sched = MeanReverting(1.0, T=float(steps), alpha_end=eps)
    ours = np.asarray(sched.theta_bar(jnp.arange(steps + 1.0)))
    assert np.max(np.abs(ours - table)) < 10 * (-np.log(eps)) / steps


@pytest.mark.x64
def test_centred_denoiser_is_the_gaussian_posterior_for_every_prediction():
    sched, mu = MeanReverting(SIGMA_INF), _mu()
    m, s = jnp.array([1.0, -2.0]), 0.5
    t, x = 0.4, jnp.array([0.2, 1.5])
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    # x_t = mu + alpha (x0 - mu) + sigma eps with x0 ~ N(m, s^2): Gaussian posterior.
    posterior = m + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (
        x - mu - alpha * (m - mu)
    )
    centred = GaussianMixture((m - mu)[None], s)
    np.testing.assert_allclose(
        centred.denoiser(x - mu, t, sched) + mu, posterior, rtol=1e-13
    )
    eps = (x - mu - alpha * (posterior - mu)) / sigma
    outputs = {
        "x0": posterior,
        "eps": eps,
        "score": -eps / sigma,
        "v": SIGMA_INF * alpha * eps - jnp.sqrt(1 - alpha**2) * (posterior - mu),
    }
    for prediction, out in outputs.items():
        denoise = mean_reverting_denoiser(
            lambda x, t, mu, out=out: out, prediction, sched
        )
        np.testing.assert_allclose(
            denoise(x - mu, t, mu) + mu, posterior, rtol=1e-12, err_msg=prediction
        )


@pytest.mark.x64
def test_single_gaussian_reaches_its_exact_flow_map():
    sched, mu = MeanReverting(SIGMA_INF), _mu()
    data = GaussianMixture(jnp.array([[1.0, -2.0]]), 0.5)
    x_T = mu + jnp.array([0.3, -0.9]) * SIGMA_INF
    run = jax.jit(
        lambda x, m: sample_mean_reverting(
            _x0_model(data, sched),
            x,
            m,
            sched,
            prediction="x0",
            sampler="etdrk4",
            steps=256,
            grid="logsnr",
        )
    )
    exact = mu + gaussian_flow_map(
        _centred(data, mu), x_T - mu, sched.t_max, sched.t_min, sched
    )
    np.testing.assert_allclose(run(x_T, mu), exact, rtol=1e-6)


@pytest.mark.x64
@pytest.mark.parametrize("parameterization", ["data", "noise"])
def test_mrs_steps_are_the_papers_closed_form(parameterization):
    # MRS's updates written in the uncentred x, with their mu terms (Li et al. 2025;
    # h = lambda_t - lambda_s, D1 = (q_i - q_{i-1}) h_i / h_{i-1}, z the fresh noise):
    # ODE data:  x_t = (s_t/s_s) x_s + a_t (1 - e^-h) x0
    #              + mu (1 - s_t/s_s + s_t a_s/s_s - a_t) + a_t (1 + (e^-h - 1)/h) D1
    # ODE noise: x_t = (a_t/a_s) x_s - s_t (e^h - 1) eps + mu (1 - a_t/a_s)
    #              - s_t ((e^h - 1)/h - 1) D1
    # SDE data:  x_t = (s_t/s_s) e^-h x_s + a_t (1 - e^-2h) x0 + s_t sqrt(1 - e^-2h) z
    #              + mu (1 - (a_t/a_s) e^-2h - a_t (1 - e^-2h))
    # SDE noise: x_t = (a_t/a_s) x_s - 2 s_t (e^h - 1) eps + s_t sqrt(e^2h - 1) z
    #              + mu (1 - a_t/a_s)
    # (the D1 terms are second order only).
    sched, mu, mix = MeanReverting(SIGMA_INF), _mu(), _mixture()
    x0_model, eps_model = _x0_model(mix, sched), _eps_model(mix, sched)
    x = jnp.array([0.9, -0.2])
    ts = jnp.array([0.9, 0.6, 0.35])
    a, s, lam = sched.alpha(ts), sched.sigma(ts), sched.lam(ts)
    data = parameterization == "data"

    def ode_step(x, i, prev=None):
        h = lam[i + 1] - lam[i]
        if data:
            q = x0_model(x, ts[i], mu)
            out = (
                s[i + 1] / s[i] * x
                + a[i + 1] * (1 - jnp.exp(-h)) * q
                + mu * (1 - s[i + 1] / s[i] + s[i + 1] * a[i] / s[i] - a[i + 1])
            )
        else:
            q = eps_model(x, ts[i], mu)
            out = (
                a[i + 1] / a[i] * x
                - s[i + 1] * (jnp.exp(h) - 1) * q
                + mu * (1 - a[i + 1] / a[i])
            )
        if prev is not None:
            d1 = (q - prev) * h / (lam[i] - lam[i - 1])
            if data:
                out = out + a[i + 1] * (1 + (jnp.exp(-h) - 1) / h) * d1
            else:
                out = out - s[i + 1] * ((jnp.exp(h) - 1) / h - 1) * d1
        return out, q

    x1, q0 = ode_step(x, 0)
    expected = {1: ode_step(x1, 1)[0], 2: ode_step(x1, 1, prev=q0)[0]}
    assert float(jnp.max(jnp.abs(expected[2] - expected[1]))) > 1e-4
    kw = dict(parameterization=parameterization, prediction="x0", grid=ts)
    for order in (1, 2):
        got = sample_mean_reverting(x0_model, x, mu, sched, order=order, **kw)
        np.testing.assert_allclose(got, expected[order], rtol=1e-12, err_msg=str(order))

    # One SDE step; the noise is the sampler's: one normal draw per step from the
    # step's key.
    key = jax.random.key(5)
    z = jax.random.normal(jax.random.split(key, 1)[0], x.shape, x.dtype)
    h = lam[1] - lam[0]
    if data:
        sde_expected = (
            s[1] / s[0] * jnp.exp(-h) * x
            + a[1] * (1 - jnp.exp(-2 * h)) * x0_model(x, ts[0], mu)
            + s[1] * jnp.sqrt(1 - jnp.exp(-2 * h)) * z
            + mu * (1 - a[1] / a[0] * jnp.exp(-2 * h) - a[1] * (1 - jnp.exp(-2 * h)))
        )
    else:
        sde_expected = (
            a[1] / a[0] * x
            - 2 * s[1] * (jnp.exp(h) - 1) * eps_model(x, ts[0], mu)
            + s[1] * jnp.sqrt(jnp.exp(2 * h) - 1) * z
            + mu * (1 - a[1] / a[0])
        )
    kw["grid"] = ts[:2]
    got = sample_mean_reverting(x0_model, x, mu, sched, sde=True, key=key, **kw)
    np.testing.assert_allclose(got, sde_expected, rtol=1e-12)


_REFERENCE = {}


def _order_problem():
    sched, mu, mix = MeanReverting(SIGMA_INF), _mu(), _mixture()
    model = _eps_model(mix, sched)
    x_T = mu + SIGMA_INF * jnp.array([0.8, -1.3])
    if "exact" not in _REFERENCE:
        _REFERENCE["exact"] = jax.jit(
            lambda x, m: sample_mean_reverting(
                model, x, m, sched, sampler="etdrk4", steps=500, grid="logsnr"
            )
        )(x_T, mu)
    return sched, mu, model, x_T, _REFERENCE["exact"]


# Order 1 is the same update in both parameterizations (DDIM = DPM-Solver-1 =
# DPM-Solver++-1), so it is measured once.
@pytest.mark.x64
@pytest.mark.parametrize(
    "order, parameterization", [(1, "data"), (2, "data"), (2, "noise")]
)
def test_mrs_ode_orders(order, parameterization):
    sched, mu, model, x_T, exact = _order_problem()

    def solve(n):
        run = jax.jit(
            lambda x, m: sample_mean_reverting(
                model,
                x,
                m,
                sched,
                order=order,
                parameterization=parameterization,
                steps=n,
                grid="logsnr",
            )
        )
        return run(x_T, mu)

    # Second order leaves its pre-asymptotic range later (h ~ 1 at 10 steps).
    counts = [10, 20, 40] if order == 1 else [20, 40, 80]
    measured, _ = convergence_order(solve, exact, np.asarray(counts))
    assert abs(measured - order) <= ORDER_SLACK, measured


@pytest.mark.slow
@pytest.mark.parametrize("order, parameterization", [(2, "data"), (2, "noise")])
def test_mrs_sde_reproduces_the_data_moments(order, parameterization):
    sched, mu, mix = MeanReverting(SIGMA_INF), _mu(), _mixture()
    model = _x0_model(mix, sched)
    # 100 steps keep the discretization bias (measured: ~0.1 in the variance at 30
    # steps, ~0.03 at 100) under the Monte-Carlo error of 4000 samples.
    n = 4000
    k_data, k_noise, k_sampler = jax.random.split(jax.random.key(7), 3)
    # Start from the exact marginal at T (not IR-SDE's approximate prior N(mu, λ²)).
    x0 = mix.sample(k_data, n)
    t_max = sched.t_max
    x_T = (
        mu[None]
        + sched.alpha(t_max) * (x0 - mu[None])
        + sched.sigma(t_max) * jax.random.normal(k_noise, x0.shape)
    )
    run = jax.jit(
        jax.vmap(
            lambda x, k: sample_mean_reverting(
                model,
                x,
                mu,
                sched,
                prediction="x0",
                order=order,
                parameterization=parameterization,
                steps=100,
                grid="logsnr",
                sde=True,
                key=k,
            )
        )
    )
    out = run(x_T, jax.random.split(k_sampler, n))
    weights = mix.weights[:, None]
    mean = jnp.sum(weights * mix.means, axis=0)
    second = jnp.sum(weights * (mix.means**2 + mix.stds[:, None] ** 2), axis=0)
    var = second - mean**2
    # Monte-Carlo standard errors of the mean and of the variance (its 4th moment
    # from the samples); 5 of them bound the MC error.
    se_mean = jnp.sqrt(var / n)
    centred = out - jnp.mean(out, axis=0)[None]
    se_var = jnp.sqrt(jnp.var(centred**2, axis=0) / n)
    assert bool(jnp.all(jnp.abs(jnp.mean(out, axis=0) - mean) < 5 * se_mean))
    assert bool(jnp.all(jnp.abs(jnp.var(out, axis=0) - var) < 5 * se_var))


def test_jit_vmap_and_no_recompile():
    sched, mix = MeanReverting(SIGMA_INF), _mixture()
    model = _eps_model(mix, sched)
    mus = jax.random.normal(jax.random.key(0), (5, 2))
    x_T = mus + SIGMA_INF * jax.random.normal(jax.random.key(1), (5, 2))

    @count_traces
    def run(x, mu):
        return jax.vmap(lambda x, m: sample_mean_reverting(model, x, m, sched))(x, mu)

    jitted = jax.jit(run)
    out = jitted(x_T, mus)
    again = jitted(x_T[::-1], mus[::-1])
    assert run.num_traces == 1
    assert out.shape == (5, 2) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(again[::-1], out, rtol=1e-6)


@pytest.mark.x64
def test_gradients_match_finite_differences():
    sched, mix = MeanReverting(SIGMA_INF), _mixture()
    model = _eps_model(mix, sched)
    key = jax.random.key(4)

    def loss(args):
        x_T, mu = args
        ode = sample_mean_reverting(model, x_T, mu, sched, steps=6)
        sde = sample_mean_reverting(model, x_T, mu, sched, steps=6, sde=True, key=key)
        return jnp.sum(ode**2) + jnp.sum(sde**2)

    check_grad(jax.jit(loss), (jnp.array([0.6, -0.4]), _mu()))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="`sigma_inf` must be positive"):
        MeanReverting(0.0)
    with pytest.raises(ValueError, match="`sigma_inf` must be positive"):
        MeanReverting(-1.0)
    with pytest.raises(ValueError, match="`alpha_end` must be in"):
        MeanReverting(1.0, alpha_end=1.5)
    with pytest.raises(ValueError, match="`T` must be positive"):
        MeanReverting(1.0, T=0.0)
    with pytest.raises(ValueError, match="unknown `theta_schedule` 'sigmoid'"):
        MeanReverting(1.0, "sigmoid")
    sched = MeanReverting(1.0)
    model = lambda x, t, mu: x  # noqa: E731
    x = jnp.ones(2)
    with pytest.raises(ValueError, match=r"`mu` must have the shape of `x_T`, \(2,\)"):
        sample_mean_reverting(model, x, jnp.ones(3), sched)
    with pytest.raises(TypeError, match="`mu` must be a floating"):
        sample_mean_reverting(model, x, jnp.ones(2, jnp.int32), sched)
    with pytest.raises(ValueError, match="MeanReverting"):
        from odelab.diffusion import VPLinear

        sample_mean_reverting(model, x, x, VPLinear())
    with pytest.raises(ValueError, match="unknown ODE sampler 'dpm'.*mrs"):
        sample_mean_reverting(model, x, x, sched, sampler="dpm")
    with pytest.raises(ValueError, match="unknown SDE sampler 'ddim'.*mrs"):
        sample_mean_reverting(model, x, x, sched, sampler="ddim", sde=True, key=0)
    with pytest.raises(ValueError, match="order 1 or 2, got `order=3`"):
        sample_mean_reverting(model, x, x, sched, order=3)
    with pytest.raises(ValueError, match="needs a PRNG `key`"):
        sample_mean_reverting(model, x, x, sched, sde=True)
    with pytest.raises(ValueError, match="unknown prediction 'noise'"):
        sample_mean_reverting(model, x, x, sched, prediction="noise")
    with pytest.raises(ValueError, match="unknown parameterization 'velocity'"):
        sample_mean_reverting(model, x, x, sched, parameterization="velocity")
