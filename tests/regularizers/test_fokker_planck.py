"""Tests of `odelab.regularizers.fokker_planck`: the exact score of a Gaussian mixture
solves the score Fokker–Planck equation to round-off, a perturbed one does not, the
Hutchinson residual is unbiased, the `"eps"` weighting keeps the residual on one scale
across noise levels, and the loss trains an MLP under `jit`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion.analytic import GaussianMixture
from odelab.diffusion.schedules import VE, RectifiedFlow, VPLinear
from odelab.regularizers import fokker_planck_loss, score_fokker_planck_residual
from tests.helpers import roundoff_tol


SCHEDULES = [VPLinear(), VE(), RectifiedFlow()]


def _mixture():
    return GaussianMixture(
        jnp.array([[1.0, 0.0, -0.5], [-1.0, 0.5, 0.2], [0.3, -1.2, 0.8]]),
        jnp.array([0.3, 0.5, 0.2]),
        jnp.array([0.2, 0.5, 0.3]),
    )


def _derivative(f, t):
    return jax.jvp(f, (t,), (jnp.ones_like(t),))[1]


def _noised(mixture, schedule, ts, seed=0):
    """One state x_t = α x0 + σ ε per time."""
    x0 = mixture.sample(jax.random.key(seed), ts.shape[0])
    eps = jax.random.normal(jax.random.key(seed + 1), x0.shape, x0.dtype)
    return schedule.alpha(ts)[:, None] * x0 + schedule.sigma(ts)[:, None] * eps


def _roundoff_scale(schedule, x, t):
    """The size of the residual's terms for the part -x/σ² of the score.

    The score (αD - x)/σ² is a difference of two terms of size |x|/σ², so it
    carries round-off of that size relative to x/σ², however small the score; each
    term of the residual inherits it through the same derivatives that act on
    -x/σ²: ∂_t gives 2xσ'/σ³, (g²/2)∇|s|² gives g²x/σ⁴, a∇<x, s> gives 2ax/σ².
    """
    sigma, d_sigma = schedule.sigma(t), _derivative(schedule.sigma, t)
    a = _derivative(schedule.log_alpha, t)
    g2 = -2 * sigma**2 * _derivative(schedule.lam, t)
    return jnp.max(jnp.abs(x)) * (
        2 * jnp.abs(d_sigma) / sigma**3 + g2 / sigma**4 + 2 * jnp.abs(a) / sigma**2
    )


@pytest.mark.x64
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_exact_score_solves_the_equation_and_a_perturbed_one_does_not(schedule):
    mixture = _mixture()

    def residual(x, t, size):
        # The exact noise prediction plus an error of `size` that varies on the
        # scale of the noisy data, sqrt(α² + σ²).
        def model(y, u):
            width = jnp.sqrt(schedule.alpha(u) ** 2 + schedule.sigma(u) ** 2)
            return mixture.eps(y, u, schedule) + size * jnp.tanh(y / width)

        return score_fokker_planck_residual(model, x, t, schedule)

    @jax.jit
    def evaluate():
        ts = jnp.linspace(schedule.t_min, schedule.t_max, 8)
        xs = _noised(mixture, schedule, ts)
        by_size = jax.vmap(residual, (None, None, 0))
        r = jax.vmap(by_size, (0, 0, None))(xs, ts, jnp.array([0.0, 0.1]))
        scale = jax.vmap(_roundoff_scale, (None, 0, 0))(schedule, xs, ts)
        sigma_per_dlam = schedule.sigma(ts) / jnp.abs(
            jax.vmap(lambda t: _derivative(schedule.lam, t))(ts)
        )
        return r[:, 0], r[:, 1], scale, sigma_per_dlam

    r_exact, r_perturbed, scale, sigma_per_dlam = evaluate()
    # Round-off relative to the terms' size (measured: at most 1.3 ulp of it, over
    # the whole range of all three schedules); float64's round-off tolerance.
    tol = roundoff_tol(jnp.float64) * scale
    np.testing.assert_array_less(np.max(np.abs(r_exact), axis=1), tol)
    # The perturbation leaves a residual far above that round-off level everywhere.
    rms = np.sqrt(np.mean(np.asarray(r_perturbed) ** 2, axis=1))
    assert np.all(rms > 1e6 * tol)
    # The "eps" weighting: the residual itself spans three or more orders of
    # magnitude over the range (it grows like |λ'|/σ towards the data end), while
    # σ r/|λ'| stays within two orders below the noise-prediction error's size 0.1
    # (measured 0.006–0.18 over seeds; smaller where tanh saturates).
    weighted = rms * np.asarray(sigma_per_dlam)
    assert rms.max() / rms.min() > 1e3
    assert np.all((weighted > 1e-3) & (weighted < 1.0)), weighted


@pytest.mark.x64
def test_flow_and_data_predictions_give_the_same_residual():
    # The flow adapter differentiates the schedule inside the model, under the
    # residual's derivatives in t and x.
    schedule, mixture = VPLinear(), _mixture()
    x, t = jnp.array([0.4, -0.2, 0.7]), jnp.asarray(0.3)
    alpha, sigma = schedule.alpha, schedule.sigma

    def denoiser(y, u):
        return mixture.denoiser(y, u, schedule) + 0.1 * jnp.tanh(y)

    def flow(y, u):
        d = denoiser(y, u)
        eps = (y - alpha(u) * d) / sigma(u)
        return _derivative(alpha, u) * d + _derivative(sigma, u) * eps

    @jax.jit
    def residuals():
        return [
            score_fokker_planck_residual(m, x, t, schedule, prediction=name)
            for name, m in (("x0", denoiser), ("flow", flow))
        ]

    reference, r = residuals()
    # The adapters differ by a few roundings of terms of the residual's size.
    atol = roundoff_tol(jnp.float64, 100) * float(jnp.max(jnp.abs(reference)))
    np.testing.assert_allclose(r, reference, rtol=0, atol=atol)


@pytest.mark.x64
def test_hutchinson_residual_is_unbiased():
    schedule, mixture = VPLinear(), _mixture()
    x, t = jnp.array([0.4, -0.2, 0.7]), jnp.asarray(0.3)

    def model(y, u):
        return mixture.denoiser(y, u, schedule) + 0.1 * jnp.tanh(y)

    n = 4000
    probes = jax.random.rademacher(jax.random.key(0), (n, 3), jnp.float64)

    @jax.jit
    def evaluate(probes):
        def residual(probe):
            return score_fokker_planck_residual(
                model, x, t, schedule, prediction="x0", probe=probe
            )

        return residual(None), jax.vmap(residual)(probes)

    exact, estimates = evaluate(probes)
    mean = jnp.mean(estimates, axis=0)
    se = jnp.std(estimates, axis=0) / np.sqrt(n)
    assert np.all(se > 0)  # the estimator is noisy here, so the test has teeth
    np.testing.assert_array_less(np.abs(mean - exact), 4 * se)


def test_loss_gradient_is_finite_under_jit():
    schedule = VPLinear()
    mlp = eqx.nn.MLP(3, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    x0 = jax.random.normal(jax.random.key(1), (8, 2))

    def model(m, x, t):
        return m(jnp.concatenate([x, t[None]]))

    options = [
        dict(trace="exact", weighting="eps"),
        dict(
            trace="hutchinson",
            weighting="g2",
            time_sampling="logsnr",
            t_range=(0.1, 0.9),
            prediction="x0",
        ),
    ]

    @eqx.filter_jit
    def values_and_grads(m, key):
        return [
            eqx.filter_value_and_grad(
                lambda m_, o=o: fokker_planck_loss(
                    lambda x, t: model(m_, x, t), x0, key, schedule, **o
                )
            )(m)
            for o in options
        ]

    for loss, grads in values_and_grads(mlp, jax.random.key(2)):
        leaves = jax.tree_util.tree_leaves(grads)
        assert loss.dtype == x0.dtype and np.isfinite(float(loss)) and float(loss) > 0
        assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
        assert any(np.any(leaf != 0) for leaf in leaves)


def test_errors():
    schedule = VPLinear()

    def model(x, t):
        return x

    x, x0, key = jnp.zeros(2), jnp.zeros((4, 2)), jax.random.key(0)
    with pytest.raises(ValueError, match="unknown prediction 'noise'.*eps"):
        score_fokker_planck_residual(model, x, 0.5, schedule, prediction="noise")
    with pytest.raises(ValueError, match="one state of shape"):
        score_fokker_planck_residual(model, x0, 0.5, schedule)
    with pytest.raises(ValueError, match="real floating"):
        score_fokker_planck_residual(model, jnp.zeros(2, jnp.int32), 0.5, schedule)
    with pytest.raises(ValueError, match="`t` must be a scalar"):
        score_fokker_planck_residual(model, x, jnp.zeros(2), schedule)
    with pytest.raises(ValueError, match="`probe` must have the shape"):
        score_fokker_planck_residual(model, x, 0.5, schedule, probe=jnp.ones(3))
    with pytest.raises(ValueError, match="unknown prediction"):
        fokker_planck_loss(model, x0, key, schedule, prediction="noise")
    with pytest.raises(ValueError, match="`weighting='snr'`.*'eps', 'g2', 'none'"):
        fokker_planck_loss(model, x0, key, schedule, weighting="snr")
    with pytest.raises(ValueError, match="`trace='approx'`.*'exact', 'hutchinson'"):
        fokker_planck_loss(model, x0, key, schedule, trace="approx")
    with pytest.raises(ValueError, match="`time_sampling='lognormal'`.*'uniform'"):
        fokker_planck_loss(model, x0, key, schedule, time_sampling="lognormal")
    with pytest.raises(ValueError, match=r"shape \(batch, d\)"):
        fokker_planck_loss(model, x, key, schedule)
    with pytest.raises(ValueError, match="`t_range`"):
        fokker_planck_loss(model, x0, key, schedule, t_range=(0.0, 0.5))
    with pytest.raises(ValueError, match="`t_range`"):
        fokker_planck_loss(model, x0, key, schedule, t_range=(0.5, 0.2))
