"""Tests of `odelab.solvers.stochastic_exponential`: exact laws of Ornstein–Uhlenbeck
processes, reductions to the deterministic solvers without noise, the same steps
through `diffeqsolve` (either direction) and the lean fixed-step path, and errors.
The diffusion samplers built on them are tested in `tests/diffusion/test_sde.py`."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab._fixed_step import fixed_step_solve
from odelab.solvers import (
    EDMStochasticHeun,
    ExponentialAdams,
    ExponentialEuler,
    ExponentialEulerAncestral,
    StochasticExponentialAdams,
)
from odelab.terms import SemilinearTerm
from tests.helpers import roundoff_tol


def _terms(drift, g, path):
    return diffrax.MultiTerm(drift, diffrax.ControlTerm(g, path))


def _unsafe(key, shape=(3,)):
    return diffrax.UnsafeBrownianPath(
        shape=jax.ShapeDtypeStruct(shape, jnp.float64), key=key
    )


@pytest.mark.x64
@pytest.mark.parametrize("order", [1, 2])
def test_ornstein_uhlenbeck_law_is_exact_on_any_grid(order):
    # dy = (L y + c) dt + g0 e^{k t} dW from y0: Gaussian with mean e^{LT} y0 +
    # c (e^{LT} - 1)/L and variance g0^2 (e^{2kT} - e^{2LT})/(2(k - L)). N is constant
    # and g log-linear, so three unequal steps are exact in law: only Monte Carlo error.
    rate, c, g0, k = jnp.array([-1.5, 0.7, -0.2]), 0.4, 0.8, 0.6
    y0, grid, n = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.0, 0.1, 0.6, 1.3]), 2**14
    drift = SemilinearTerm(rate, lambda t, y, a: jnp.full_like(y, c))
    g = lambda t, y, a: g0 * jnp.exp(k * t) * jnp.ones_like(y)  # noqa: E731

    def one(key):
        terms = _terms(drift, g, _unsafe(key))
        sol = diffrax.diffeqsolve(
            terms,
            StochasticExponentialAdams(order),
            grid[0],
            grid[-1],
            None,
            y0,
            stepsize_controller=diffrax.StepTo(ts=grid),
            adjoint=diffrax.ForwardMode(),
        )
        return sol.ys[-1]

    out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), n))
    T = grid[-1]
    mean = jnp.exp(rate * T) * y0 + c * jnp.expm1(rate * T) / rate
    var = g0**2 * (jnp.exp(2 * k * T) - jnp.exp(2 * rate * T)) / (2 * (k - rate))
    se_mean, se_var = jnp.sqrt(var / n), var * np.sqrt(2 / n)
    np.testing.assert_array_less(jnp.abs(out.mean(0) - mean), 4 * se_mean)
    np.testing.assert_array_less(jnp.abs(out.var(0) - var), 4 * se_var)


def _semilinear():
    return SemilinearTerm(
        jnp.asarray(0.8), lambda t, y, a: -jnp.sin(y) * (1 + t) - jnp.cos(t)
    )


@pytest.mark.x64
@pytest.mark.parametrize("second_order", ["midpoint", "phi"])
def test_without_noise_adams_is_exponential_adams(second_order):
    grid = jnp.array([2.0, 1.7, 1.1, 0.8, 0.2])
    y0 = jnp.array([0.3, -1.0, 2.0])
    zero = lambda t, y, a: jnp.zeros_like(y)  # noqa: E731
    terms = _terms(_semilinear(), zero, _unsafe(jax.random.key(0)))
    got = fixed_step_solve(
        terms,
        StochasticExponentialAdams(2, second_order=second_order),
        y0,
        None,
        grid,
        None,
        (4,),
    )[0]
    want = fixed_step_solve(
        _semilinear(),
        ExponentialAdams(2, start="lower_order", second_order=second_order),
        y0,
        None,
        grid,
        None,
        (4,),
    )[0]
    tol = roundoff_tol(jnp.float64, 8)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.x64
def test_without_noise_ancestral_is_exponential_euler_and_churn_is_heun():
    grid = jnp.array([2.0, 1.7, 1.1, 0.8, 0.2])
    y0 = jnp.array([0.3, -1.0, 2.0])
    g = lambda t, y, a: jnp.sqrt(2.0) * jnp.exp(t) * jnp.ones_like(y)  # noqa: E731
    path = _unsafe(jax.random.key(0))
    tol = roundoff_tol(jnp.float64, 8)
    got = fixed_step_solve(
        _terms(_semilinear(), g, path),
        ExponentialEulerAncestral(0.0),
        y0,
        None,
        grid,
        None,
        (4,),
    )[0]
    want = fixed_step_solve(
        _semilinear(), ExponentialEuler(), y0, None, grid, None, (4,)
    )
    np.testing.assert_allclose(got, want[0], rtol=tol, atol=tol)
    ode = diffrax.ODETerm(lambda t, y, a: (y - jnp.tanh(y)) / t)
    churn = EDMStochasticHeun(4, s_churn=0.0)
    got = fixed_step_solve(_terms(ode, g, path), churn, y0, None, grid, None, (4,))[0]
    want = fixed_step_solve(ode, diffrax.Heun(), y0, None, grid, None, (4,))[0]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver",
    [
        StochasticExponentialAdams(2),
        ExponentialEulerAncestral(0.6),
        EDMStochasticHeun(4, s_churn=2.0),
    ],
    ids=lambda s: type(s).__name__,
)
def test_diffeqsolve_takes_the_same_steps_backwards(solver):
    # diffeqsolve hands the terms over wrapped (times negated); the solvers unwrap
    # them and read the same Brownian increments as the unwrapped lean path.
    grid = jnp.array([2.0, 1.7, 1.1, 0.8, 0.2])
    y0 = jnp.array([0.3, -1.0, 2.0])
    path = diffrax.VirtualBrownianTree(
        0.0,
        2.5,
        tol=1e-3,
        shape=jax.ShapeDtypeStruct((3,), jnp.float64),
        key=jax.random.key(3),
    )
    g = lambda t, y, a: jnp.sqrt(2.0 * t) * jnp.ones_like(y)  # noqa: E731
    if isinstance(solver, EDMStochasticHeun):
        drift = diffrax.ODETerm(lambda t, y, a: (y - jnp.tanh(y)) / t)
    else:
        drift = _semilinear()
    terms = _terms(drift, g, path)
    lean = fixed_step_solve(terms, solver, y0, None, grid, None, (4,))[0][0]
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        grid[0],
        grid[-1],
        None,
        y0,
        stepsize_controller=diffrax.StepTo(ts=grid),
    )
    tol = roundoff_tol(jnp.float64, 8)
    np.testing.assert_allclose(sol.ys[-1], lean, rtol=tol, atol=tol)


def test_misuse_is_named():
    y0 = jnp.ones(3)
    path = diffrax.UnsafeBrownianPath(
        shape=jax.ShapeDtypeStruct((3,), jnp.float32), key=jax.random.key(0)
    )
    g = lambda t, y, a: jnp.ones_like(y)  # noqa: E731
    drift = SemilinearTerm(-1.0, lambda t, y, a: y)
    with pytest.raises(TypeError, match="needs `diffrax.MultiTerm"):
        StochasticExponentialAdams().init(drift, 0.0, 0.1, y0, None)
    with pytest.raises(TypeError, match="drift term of type SemilinearTerm"):
        terms = _terms(diffrax.ODETerm(lambda t, y, a: y), g, path)
        StochasticExponentialAdams().init(terms, 0.0, 0.1, y0, None)
    with pytest.raises(TypeError, match="dense one"):
        terms = _terms(SemilinearTerm(-jnp.eye(3), lambda t, y, a: y), g, path)
        StochasticExponentialAdams().init(terms, 0.0, 0.1, y0, None)
    with pytest.raises(TypeError, match="Brownian path"):
        terms = _terms(drift, g, diffrax.LinearInterpolation(jnp.arange(2.0), y0[:2]))
        StochasticExponentialAdams().init(terms, 0.0, 0.1, y0, None)
    with pytest.raises(ValueError, match="`order` 1 or 2, got 3"):
        StochasticExponentialAdams(3)
    with pytest.raises(ValueError, match="`second_order` must be"):
        StochasticExponentialAdams(2, second_order="heun")
    with pytest.raises(ValueError, match=r"`eta` must be in \[0, 1\]"):
        ExponentialEulerAncestral(1.5)
    with pytest.raises(ValueError, match="`num_steps` must be at least 1"):
        EDMStochasticHeun(0)
    with pytest.raises(ValueError, match="`s_churn` must be >= 0"):
        EDMStochasticHeun(10, s_churn=-1.0)
