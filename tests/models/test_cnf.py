"""Tests of `odelab.models.CNF` and `nll_loss`."""

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
import scipy.stats

import odelab.data
from odelab.models import CNF, nll_loss


# Global error of an adaptive solve relative to its per-step tolerance: the local
# errors of the O(10-100) steps accumulate and the flow amplifies them (by at most
# e^{L t1}, a few here).
_GLOBAL_FACTOR = 100.0


class _Linear(eqx.Module):
    matrix: jax.Array

    def __call__(self, t, z):
        del t
        return self.matrix @ z


_T1 = 0.7
_LINEAR_RTOL = 1e-10


def _linear_cnf(key, **kwargs):
    """A CNF with the field z -> A z, and M = expm(A t1): z(t1) = M x, so the model
    density is N(0, (M^T M)^{-1})."""
    a = jnp.asarray([[0.3, -0.9], [0.5, -0.2]])
    cnf = CNF(2, 4, 1, key=key, t1=_T1, rtol=_LINEAR_RTOL, atol=_LINEAR_RTOL, **kwargs)
    cnf = eqx.tree_at(lambda m: m.vector_field, cnf, _Linear(a))
    return cnf, scipy.linalg.expm(np.asarray(a) * _T1)


def _gaussian_log_prob(xs, m):
    cov = np.linalg.inv(m.T @ m)
    return scipy.stats.multivariate_normal(np.zeros(2), cov).logpdf(np.asarray(xs))


@pytest.mark.x64
def test_linear_field_gives_the_gaussian_push_forward(key):
    cnf, m = _linear_cnf(key)
    xs = jnp.asarray([[0.3, -0.4], [1.5, 0.2], [-2.0, 1.0]])
    log_p, nfe = jax.jit(jax.vmap(lambda x: cnf.log_prob(x, return_nfe=True)))(xs)
    tol = _GLOBAL_FACTOR * _LINEAR_RTOL
    np.testing.assert_allclose(log_p, _gaussian_log_prob(xs, m), rtol=tol, atol=tol)
    assert log_p.dtype == jnp.float64 and bool(jnp.all(nfe > 0))

    samples = cnf.sample(key, 5)
    assert samples.shape == (5, 2) and samples.dtype == jnp.float64
    z = jax.random.normal(key, (5, 2), jnp.float64)
    np.testing.assert_allclose(samples, z @ np.linalg.inv(m).T, rtol=tol, atol=tol)


@pytest.mark.x64
def test_hutchinson_log_prob_is_unbiased(key):
    # With a linear field each estimate is log p(x) + t1 (e^T A e - tr A): the
    # probes' scale and independence decide the bias, which is what is checked.
    # (The estimator on nonlinear fields: tests/test_divergence.py.)
    cnf, m = _linear_cnf(key, trace="hutchinson")
    x = jnp.asarray([0.3, -0.4])
    n = 512
    keys = jax.random.split(key, n)
    estimates = jax.jit(jax.vmap(lambda k: cnf.log_prob(x, k)))(keys)
    mean, se = jnp.mean(estimates), jnp.std(estimates) / np.sqrt(n)
    reference = _gaussian_log_prob(x[None], m)[()]
    assert se > 0
    assert abs(mean - reference) < 4 * se, (mean, reference, se)


# The gradient check and the training run share one model configuration, one batch
# shape and this one compiled loss-and-gradient (the costly compilation here). The
# tight tolerance keeps finite differences meaningful and costs little in training.
_SHARED_RTOL = 1e-10
_nll_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(nll_loss))


def _moons_cnf_and_batches(key):
    init_key, data_key = jax.random.split(key)
    cnf = CNF(2, 16, 1, key=init_key, rtol=_SHARED_RTOL, atol=_SHARED_RTOL)
    return cnf, jnp.reshape(odelab.data.moons(data_key, 1024), (8, 128, 2))


@pytest.mark.x64
def test_gradient_of_nll_matches_finite_differences(key):
    # AD differentiates the discrete solve with its step sizes frozen (diffrax stops
    # their gradient); central differences with step h also see them move. With the
    # solve's tolerance 1e-10, an accept/reject decision that flips between the two
    # evaluations moves the loss by about one local error (~1e-9), 5e-6 in the
    # quotient at h = 1e-4; the truncation error h^2 |f'''| / 6 is ~1e-11 here
    # (measured: 1e-7 at h = 1e-2). Both stay under the tolerance 1e-5.
    h, tol = 1e-4, 1e-5
    cnf, batches = _moons_cnf_and_batches(key)
    params, static = eqx.partition(cnf, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def loss_and_grad(flat_params):
        value, grads = _nll_and_grad(
            eqx.combine(unravel(flat_params), static), batches[0]
        )
        return value, jax.flatten_util.ravel_pytree(grads)[0]

    _, grad = loss_and_grad(flat)
    for v in jax.random.normal(key, (2, flat.shape[0]), flat.dtype):
        v = v / jnp.linalg.norm(v)
        fd = (loss_and_grad(flat + h * v)[0] - loss_and_grad(flat - h * v)[0]) / (2 * h)
        ad = grad @ v
        assert abs(fd - ad) <= tol * (1 + max(abs(fd), abs(ad))), (fd, ad)


@pytest.mark.x64
def test_training_on_moons_lowers_held_out_nll(key):
    cnf, batches = _moons_cnf_and_batches(key)
    held_out = odelab.data.moons(jax.random.fold_in(key, 1), 128)
    optimiser = optax.adam(2e-2)
    opt_state = optimiser.init(eqx.filter(cnf, eqx.is_inexact_array))

    @eqx.filter_jit
    def update(cnf, grads, opt_state):
        # optax's Adam raises a Python float to an int32 count (tests/conftest.py).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimiser.update(grads, opt_state)
        return eqx.apply_updates(cnf, updates), opt_state

    held_out_nll = eqx.filter_jit(lambda cnf: -jax.vmap(cnf.log_prob)(held_out))
    before = held_out_nll(cnf)
    for i in range(100):
        _, grads = _nll_and_grad(cnf, batches[i % batches.shape[0]])
        cnf, opt_state = update(cnf, grads, opt_state)
    decrease = before - held_out_nll(cnf)
    # The same held-out points before and after: the mean decrease must exceed four
    # standard errors of the paired differences.
    se = jnp.std(decrease) / np.sqrt(decrease.shape[0])
    assert jnp.mean(decrease) > 4 * se, (jnp.mean(before), jnp.mean(decrease), se)


def test_bad_inputs_are_clear_errors(key):
    with pytest.raises(ValueError, match="`trace='jacobian'`.*exact, hutchinson"):
        CNF(2, key=key, trace="jacobian")
    with pytest.raises(ValueError, match="`probe='uniform'`.*rademacher, gaussian"):
        CNF(2, key=key, probe="uniform")
    with pytest.raises(ValueError, match="adjoint.*backsolve, checkpoint"):
        CNF(2, key=key, adjoint="direct")
    with pytest.raises(ValueError, match="depth"):
        CNF(2, 8, -1, key=key)
    cnf = CNF(2, 8, 1, key=key, trace="hutchinson")
    with pytest.raises(ValueError, match="`key` is required"):
        cnf.log_prob(jnp.zeros(2))
    with pytest.raises(ValueError, match="`key` is required"):
        nll_loss(cnf, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="jax.vmap"):
        cnf.log_prob(jnp.zeros((3, 2)), key)
    with pytest.raises(ValueError, match="`x_batch`"):
        nll_loss(cnf, jnp.zeros(2), key)
