"""Tests of `odelab.diffusion.losses`: each target's loss is its plain MSE, the exact
denoiser of the analytic mixture minimises every weighting, the weights and time
samplers are the formulas, reflow pairs are the exact flow map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import EDM, RectifiedFlow, VPLinear
from odelab.diffusion.analytic import GaussianMixture, gaussian_flow_map
from odelab.diffusion.losses import (
    WEIGHTINGS,
    EDMPrecond,
    denoising_loss,
    flow_matching_loss,
    loss_weight,
    reflow_pairs,
    sample_times,
)


def _mixture(components=3):
    return GaussianMixture.random(
        jax.random.key(3), components=components, dim=2, dtype=jnp.float64
    )


def _rates(schedule, t):
    def d(f):
        return jax.jvp(f, (t,), (jnp.ones_like(t),))[1]

    return schedule.alpha(t), schedule.sigma(t), d(schedule.alpha), d(schedule.sigma)


def _prediction_of(denoiser, prediction, schedule):
    """The model predicting `prediction` whose denoiser is `denoiser`."""

    def model(x, t):
        d = denoiser(x, t)
        a, s, da, ds = _rates(schedule, t)
        e = (x - a * d) / s
        return {
            "x0": d,
            "eps": e,
            "v": a * e - s * d,
            "score": (a * d - x) / s**2,
            "flow": da * d + ds * e,
        }[prediction]

    return model


def _target(prediction, x0, eps, t, schedule):
    a, s, da, ds = _rates(schedule, t[:, None])
    return {
        "x0": x0,
        "eps": eps,
        "v": a * eps - s * x0,
        "score": -eps / s,
        "flow": da * x0 + ds * eps,
    }[prediction]


def _draw(schedule, n=4096):
    mix = _mixture()
    k1, k2, k3 = jax.random.split(jax.random.key(11), 3)
    x0 = mix.sample(k1, n)
    t = jax.random.uniform(k2, (n,), jnp.float64, schedule.t_min, schedule.t_max)
    eps = jax.random.normal(k3, x0.shape, jnp.float64)
    return mix, x0, t, eps


@pytest.mark.x64
@pytest.mark.parametrize(
    "prediction, schedule",
    [
        ("x0", VPLinear()),
        ("eps", VPLinear()),
        ("v", VPLinear()),
        ("score", VPLinear()),
        ("flow", RectifiedFlow()),
        ("flow", VPLinear()),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_own_weighting_is_the_plain_mse_of_the_target(prediction, schedule):
    mix, x0, t, eps = _draw(schedule, 512)
    exact = _prediction_of(
        lambda x, t: mix.denoiser(x, t, schedule), prediction, schedule
    )

    def model(x, t):  # any model, not the exact one
        return exact(x, t) + 0.1 * jnp.sin(x) + 0.05 * t

    got = denoising_loss(
        model, x0, jax.random.key(0), schedule, prediction=prediction, t=t, noise=eps
    )
    predicted = jax.vmap(model)(_xt(schedule, x0, t, eps), t)
    want = jnp.mean((predicted - _target(prediction, x0, eps, t, schedule)) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def _xt(schedule, x0, t, eps):
    return schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps


def test_flow_matching_target_on_the_linear_path_is_noise_minus_data():
    x0 = jnp.array([[1.0, 2.0], [-0.5, 0.25]])
    eps = jnp.array([[0.3, -0.1], [2.0, 1.0]])
    t = jnp.array([0.25, 0.75])
    got = flow_matching_loss(lambda x, t: jnp.zeros_like(x), x0, None, t=t, noise=eps)
    np.testing.assert_allclose(got, jnp.mean((eps - x0) ** 2), rtol=1e-6)


_CASES = [
    (p, w, VPLinear())
    for p in ("eps", "x0", "v")
    for w in ("eps", "x0", "v", "score", "min_snr", "likelihood", "edm")
] + [("flow", "flow", RectifiedFlow()), ("x0", "edm", EDM())]


@pytest.mark.x64
@pytest.mark.parametrize(
    "prediction, weighting, schedule",
    _CASES,
    ids=[f"{p}-{w}-{type(s).__name__}" for p, w, s in _CASES],
)
def test_exact_denoiser_minimises_every_loss(prediction, weighting, schedule):
    """With common (t, ε), L(D* + δ) − L(D*) = mean w(2⟨D* − x0, δ⟩ + |δ|²)/d exactly;
    the cross term has mean zero, so the difference is E w|δ|²/d > 0 up to the cross
    term's Monte-Carlo error, which the test bounds by 4 standard errors."""
    mix, x0, t, eps = _draw(schedule)

    def exact_d(x, t):
        return mix.denoiser(x, t, schedule)

    def delta(x, t):
        return 0.3 * jnp.tanh(x) + 0.1

    def loss(d):
        model = _prediction_of(d, prediction, schedule)
        return denoising_loss(
            model, x0, None, schedule, prediction=prediction, weighting=weighting,
            t=t, noise=eps,
        )  # fmt: skip

    gap = loss(lambda x, t: exact_d(x, t) + delta(x, t)) - loss(exact_d)
    x_t = _xt(schedule, x0, t, eps)
    w = loss_weight(weighting, t, schedule)
    d_star, dlt = jax.vmap(exact_d)(x_t, t), jax.vmap(delta)(x_t, t)
    dim = x0.shape[1]
    cross = 2 * w * jnp.sum((d_star - x0) * dlt, -1) / dim
    square = w * jnp.sum(dlt**2, -1) / dim
    np.testing.assert_allclose(gap, jnp.mean(cross + square), rtol=1e-7, atol=1e-12)
    assert abs(jnp.mean(cross)) < 4 * jnp.std(cross) / np.sqrt(len(t))
    assert gap > 0 and jnp.mean(square) > 4 * jnp.std(cross) / np.sqrt(len(t))


@pytest.mark.x64
def test_weights_are_the_formulas():
    sched = VPLinear()
    t = jnp.linspace(0.05, 0.95, 7)
    a, s = sched.alpha(t), sched.sigma(t)
    beta = sched.beta_min + t * (sched.beta_max - sched.beta_min)
    # Likelihood weighting: g² |ŝ - s|² with g² = β(t) on the VP-SDE.
    np.testing.assert_allclose(
        loss_weight("likelihood", t, sched), beta * a**2 / s**4, rtol=1e-9
    )
    np.testing.assert_allclose(
        loss_weight("min_snr", t, sched, min_snr_gamma=5.0),
        jnp.minimum(a**2 / s**2, 5.0),
        rtol=1e-12,
    )
    # EDM: λ(σ) c_out² = 1, the unit weight on the network's own target.
    sigma_bar = s / a
    c_out = sigma_bar * 0.5 / jnp.sqrt(sigma_bar**2 + 0.25)
    np.testing.assert_allclose(loss_weight("edm", t, sched) * c_out**2, 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="weighting"):
        loss_weight("snr2", t, sched)
    assert len(WEIGHTINGS) == 8


@pytest.mark.x64
def test_edm_preconditioning_is_karras_table_1():
    sched = EDM()
    x, t = jnp.array([0.3, -1.2]), jnp.asarray(2.0)
    model = EDMPrecond(lambda x_in, c_noise: x_in * 0 + c_noise, sched, 0.5)
    norm = jnp.sqrt(4.0 + 0.25)
    want = 0.25 / norm**2 * x + 2.0 * 0.5 / norm * jnp.log(2.0) / 4
    np.testing.assert_allclose(model(x, t), want, rtol=1e-12)


@pytest.mark.x64
def test_time_samplers_have_their_densities():
    key = jax.random.key(5)
    n = 200_000
    rf = RectifiedFlow(eps=0.0)
    u = sample_times(key, (n,), rf, "u_shaped", dtype=jnp.float64)
    # CDF of cosh(a(u - 1/2)) on [0, 1] at a few points vs the empirical one.
    a = 4.0
    grid = jnp.array([0.1, 0.3, 0.5, 0.8])
    cdf = (jnp.sinh(a * (grid - 0.5)) + jnp.sinh(a / 2)) / (2 * jnp.sinh(a / 2))
    empirical = jnp.mean(u[:, None] <= grid[None, :], axis=0)
    np.testing.assert_allclose(empirical, cdf, atol=4 * 0.5 / np.sqrt(n))
    assert float(jnp.min(u)) >= 0.0 and float(jnp.max(u)) <= 1.0
    sigma_bar = sample_times(key, (n,), EDM(), "edm", dtype=jnp.float64)
    logs = jnp.log(sigma_bar)
    assert abs(float(jnp.mean(logs)) + 1.2) < 4 * 1.2 / np.sqrt(n)
    assert abs(float(jnp.std(logs)) - 1.2) < 0.01
    vp = VPLinear()
    t = sample_times(key, (1000,), vp, "logit_normal", dtype=jnp.float64)
    assert float(jnp.min(t)) >= vp.t_min and float(jnp.max(t)) <= vp.t_max
    with pytest.raises(ValueError, match="time_sampling"):
        sample_times(key, (3,), vp, "cosine")


def test_bad_input_is_named():
    x0 = jnp.zeros((4, 2))
    model = lambda x, t: x  # noqa: E731
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="prediction"):
        denoising_loss(model, x0, key, VPLinear(), prediction="noise")
    with pytest.raises(ValueError, match="`noise` must have the shape"):
        denoising_loss(model, x0, key, VPLinear(), noise=jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="`t` must have shape"):
        denoising_loss(model, x0, key, VPLinear(), t=jnp.zeros(3))
    with pytest.raises(ValueError, match="distance"):
        denoising_loss(model, x0, key, VPLinear(), distance="l1")


@pytest.mark.x64
def test_reflow_pairs_of_the_exact_flow_are_the_exact_flow_map():
    sched = RectifiedFlow()
    mix = GaussianMixture(jnp.array([[1.0, -0.5]]), 0.4)
    model = _prediction_of(lambda x, t: mix.denoiser(x, t, sched), "flow", sched)
    z = jax.random.normal(jax.random.key(2), (16, 2), jnp.float64)
    x0_hat, noise = reflow_pairs(model, z, sched, steps=128)
    exact = jax.vmap(lambda x: gaussian_flow_map(mix, x, sched.t_max, 0.0, sched))(z)
    np.testing.assert_array_equal(noise, z)
    # DPM-Solver++(2M) is second order: 1.0e-2 measured at 32 log-SNR steps, so
    # about 6e-4 at 128.
    np.testing.assert_allclose(x0_hat, exact, atol=1e-3)
