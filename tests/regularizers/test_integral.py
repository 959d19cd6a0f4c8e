"""Tests of `odelab.regularizers.integral` (RNODE and TayNODE regularizers)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.regularizers import integral_regularizers, total_derivative
from tests.helpers import check_grad


def _field(t, y, mlp):
    return mlp(jnp.concatenate([y, jnp.reshape(t, (1,))]))


@pytest.mark.x64
@pytest.mark.parametrize("order", [1, 2, 3])
def test_total_derivative_matches_nested_jvps(order):
    mlp = eqx.nn.MLP(3, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    y, t = jnp.array([0.3, -0.4]), 0.7

    def along(s):
        # The solution's Taylor expansion is what we differentiate: use a tight
        # solve of y' = f from t to t + s and take derivatives at s = 0.
        def g(z):
            return jnp.concatenate([_field(z[-1], z[:-1], mlp), jnp.ones(1)])

        z = jnp.concatenate([y, jnp.array([t])])
        # d^k z/ds^k along the flow: D^{k-1} applied to g, with D u = (du/dz) g.
        fn = g
        for _ in range(order - 1):
            fn = (lambda h: lambda zz: jax.jvp(h, (zz,), (g(zz),))[1])(fn)
        return fn(z)[:-1]

    np.testing.assert_allclose(
        np.asarray(total_derivative(_field, t, y, mlp, order)),
        np.asarray(along(0.0)),
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.x64
def test_integrals_of_a_linear_problem():
    # y' = -a y, y0 = 1 (one component): kinetic int a^2 e^{-2at} dt, the Jacobian
    # term eps^2 a^2 (t1 - t0) exactly, the second derivative a^4 e^{-2at}.
    a, t1 = 1.5, 2.0
    key = jax.random.key(3)
    eps = float(jax.random.normal(key, (1,), jnp.float64)[0])
    _, r = integral_regularizers(
        lambda t, y, p: -p * y,
        jnp.ones(1),
        jnp.array([0.0, t1]),
        a,
        which=("kinetic", "jacobian", "taylor"),
        key=key,
        solver="dopri8",
        rtol=1e-12,
        atol=1e-12,
    )
    decay = (1 - np.exp(-2 * a * t1)) / (2 * a)
    np.testing.assert_allclose(float(r["kinetic"]), a**2 * decay, rtol=1e-9)
    np.testing.assert_allclose(float(r["jacobian"]), eps**2 * a**2 * t1, rtol=1e-9)
    np.testing.assert_allclose(float(r["taylor"]), a**4 * decay, rtol=1e-9)


def _loss(m, **kwargs):
    _, r = integral_regularizers(
        _field,
        jnp.array([0.5, -0.1]),
        jnp.array([0.0, 1.0]),
        m,
        which=("kinetic", "jacobian", "taylor"),
        key=jax.random.key(2),
        **kwargs,
    )
    return r["kinetic"] + r["jacobian"] + r["taylor"]


@pytest.mark.x64
def test_gradient_matches_finite_differences():
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(1))
    check_grad(lambda m: _loss(m, solver="rk4", steps=16), mlp)


@pytest.mark.x64
def test_continuous_adjoint_agrees_at_tight_tolerance():
    # The regularizers are ordinary state, so a continuous adjoint differentiates
    # them too: at rtol = atol = 1e-10 backsolve and checkpointing both give the
    # exact gradient to within the tolerance.
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(1))
    kw = dict(solver="tsit5", rtol=1e-10, atol=1e-10)
    a = eqx.filter_grad(lambda m: _loss(m, adjoint="checkpoint", **kw))(mlp)
    b = eqx.filter_grad(lambda m: _loss(m, adjoint="backsolve", **kw))(mlp)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-8)


def test_errors():
    f = lambda t, y, a: -y  # noqa: E731
    with pytest.raises(ValueError, match="which"):
        integral_regularizers(f, jnp.ones(2), jnp.array([0.0, 1.0]), which=("energy",))
    with pytest.raises(ValueError, match="key"):
        integral_regularizers(f, jnp.ones(2), jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="one-dimensional"):
        integral_regularizers(
            f, jnp.ones((2, 2)), jnp.array([0.0, 1.0]), which=("kinetic",)
        )
    with pytest.raises(ValueError, match="order"):
        total_derivative(f, 0.0, jnp.ones(2), None, 0)
