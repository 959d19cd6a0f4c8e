"""Tests of `odelab.divergence`: exact and Hutchinson traces, the augmented solve."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from odelab.divergence import divergence, solve_with_log_det
from tests.helpers import default_tol


# Global error of an adaptive solve relative to its per-step tolerance: the local
# errors of the O(10-100) steps accumulate and the flow amplifies them (by at most
# e^{L|t1 - t0|}, a few here).
_GLOBAL_FACTOR = 100.0


def _field(x):
    # f_i = sin(x_i) * sum(x): d f_i / d x_i = cos(x_i) sum(x) + sin(x_i).
    return jnp.sin(x) * jnp.sum(x)


def _field_trace(x):
    return jnp.sum(jnp.cos(x)) * jnp.sum(x) + jnp.sum(jnp.sin(x))


class _Linear(eqx.Module):
    matrix: jax.Array

    def __call__(self, t, z, args):
        del t, args
        return self.matrix @ z


def _matrix(dtype):
    return jnp.asarray([[0.2, 1.0, -0.3], [-0.8, -0.4, 0.5], [0.1, 0.6, -0.1]], dtype)


def test_exact_divergence_of_a_linear_map(key):
    a = jax.random.normal(key, (4, 4))
    x = jnp.asarray([0.3, -1.0, 2.0, 0.5])
    fx, div = divergence(lambda x: a @ x, x)
    np.testing.assert_allclose(fx, a @ x, **default_tol(jnp.float32))
    np.testing.assert_allclose(div, jnp.trace(a), **default_tol(jnp.float32))


@pytest.mark.parametrize("shape", [(5,), (2, 3)])
def test_exact_divergence_of_a_nonlinear_field(shape):
    x = jnp.reshape(jnp.linspace(-1.0, 1.5, int(np.prod(shape))), shape)
    fx, div = divergence(_field, x)
    assert fx.shape == shape and div.shape == ()
    np.testing.assert_allclose(fx, _field(x), **default_tol(jnp.float32))
    np.testing.assert_allclose(div, _field_trace(x), **default_tol(jnp.float32))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(key, kind):
    x = jnp.reshape(jnp.linspace(-1.0, 1.5, 6), (2, 3))
    n = 4096
    if kind == "rademacher":
        probes = jax.random.rademacher(key, (n, *x.shape), jnp.float32)
    else:
        probes = jax.random.normal(key, (n, *x.shape), jnp.float32)
    fx, est = jax.jit(jax.vmap(lambda p: divergence(_field, x, p)))(probes)
    np.testing.assert_allclose(fx[0], _field(x), **default_tol(jnp.float32))
    mean, se = jnp.mean(est), jnp.std(est) / np.sqrt(n)
    assert se > 0
    assert abs(mean - _field_trace(x)) < 4 * se, (mean, _field_trace(x), se)


@pytest.mark.x64
def test_linear_field_gives_expm_and_trace(key):
    a = _matrix(jnp.float64)
    rtol = 1e-10
    tol = _GLOBAL_FACTOR * rtol
    exact = jax.jit(
        lambda x, t0, t1: solve_with_log_det(
            _Linear(a), x, t0, t1, rtol=rtol, atol=rtol
        )
    )
    x = jnp.asarray([0.5, -1.0, 0.3])
    for t0, t1 in [(0.0, 1.5), (1.0, -0.5)]:
        z1, delta_log, nfe = exact(x, t0, t1)
        expected = scipy.linalg.expm(np.asarray(a) * (t1 - t0)) @ np.asarray(x)
        np.testing.assert_allclose(z1, expected, rtol=tol, atol=tol)
        np.testing.assert_allclose(
            delta_log, np.trace(a) * (t1 - t0), rtol=tol, atol=tol
        )
        assert z1.dtype == delta_log.dtype == jnp.float64
        assert nfe.dtype == jnp.int32 and nfe > 0

    # The Jacobian is constant, so with the probe held fixed over the solve the
    # integral of the estimates is the one estimate times the interval.
    xs = jax.random.normal(key, (4, 3), jnp.float64)
    probes = jax.random.rademacher(jax.random.fold_in(key, 1), (4, 3), jnp.float64)
    z1, estimates, nfe = jax.jit(
        jax.vmap(
            lambda x, p: solve_with_log_det(
                _Linear(a), x, 0.0, 1.5, probe=p, rtol=rtol, atol=rtol
            )
        )
    )(xs, probes)
    assert z1.shape == (4, 3) and estimates.shape == (4,) and nfe.shape == (4,)
    expected = 1.5 * jnp.einsum("bi,ij,bj->b", probes, a, probes)
    np.testing.assert_allclose(estimates, expected, rtol=tol, atol=tol)


@pytest.mark.x64
def test_backsolve_gradients_wrt_field_parameters_and_state():
    # The continuous adjoint reaches the parameters of a field that is an
    # `eqx.Module`. (Discrete gradients through the default adjoint:
    # tests/models/test_cnf.py, against finite differences.)
    a = _matrix(jnp.float64)
    x = jnp.asarray([0.5, -1.0, 0.3])
    rtol = 1e-10

    def loss(field, x):
        z1, delta_log, _ = solve_with_log_det(
            field,
            x,
            0.0,
            1.0,
            rtol=rtol,
            atol=rtol,
            adjoint=diffrax.BacksolveAdjoint(),
        )
        return delta_log + jnp.sum(z1)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(_Linear(a), x)
    m = scipy.linalg.expm(np.asarray(a))
    # d/dA [tr(A) + 1^T expm(A) x] = I + the Frechet derivative of expm applied to
    # 1 x^T (`expm_frechet` in the transposed direction).
    frechet = scipy.linalg.expm_frechet(
        np.asarray(a).T, np.outer(np.ones(3), np.asarray(x)), compute_expm=False
    )
    tol = _GLOBAL_FACTOR * rtol
    np.testing.assert_allclose(grads[0].matrix, np.eye(3) + frechet, rtol=tol, atol=tol)
    np.testing.assert_allclose(grads[1], m.T @ np.ones(3), rtol=tol, atol=tol)


def test_bad_inputs_are_clear_errors():
    field = _Linear(_matrix(jnp.float32))
    x = jnp.asarray([0.5, -1.0, 0.3])
    with pytest.raises(ValueError, match="`x` must be a real floating"):
        solve_with_log_det(field, jnp.asarray([1, 2, 3]), 0.0, 1.0)
    with pytest.raises(ValueError, match="`probe` must have the shape"):
        solve_with_log_det(field, x, 0.0, 1.0, probe=jnp.ones(2))
    with pytest.raises(ValueError, match="`t0` and `t1` are equal"):
        solve_with_log_det(field, x, 0.5, 0.5)
    with pytest.raises(ValueError, match="`f` must return"):
        divergence(lambda x: x[:2], x)
    with pytest.raises(ValueError, match="`probe` must be a real floating"):
        divergence(lambda x: x, x, jnp.ones(3, jnp.int32))
