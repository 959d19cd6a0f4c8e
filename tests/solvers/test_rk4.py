"""Tests of `odelab.solvers.RK4`, the classical fourth-order Runge–Kutta method."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
from tests.helpers import (
    ORDER_SLACK,
    assert_tree_allclose,
    check_grad,
    convergence_order,
    count_traces,
    default_tol,
)


pytestmark = pytest.mark.x64

_T1 = 2.0
_Y0 = (0.2, 1.0)
_ARGS = (1.5, 2.0)


def _field(t, y, args):
    """Logistic growth and a periodically forced rate: nonlinear and non-autonomous."""
    r, w = args[0], args[1]
    return jnp.stack([r * y[0] * (1 - y[0]), jnp.cos(w * t) * y[1]])


def _exact(t, y0=_Y0, args=_ARGS):
    r, w = args
    logistic = 1 / (1 + (1 / y0[0] - 1) * np.exp(-r * t))
    forced = y0[1] * np.exp(np.sin(w * t) / w)
    return np.stack([logistic, forced], axis=-1)


def _rk4_by_hand(y0, t0, t1, n, args):
    """The textbook update, in NumPy float64."""
    f = lambda t, y: np.asarray(_field(t, jnp.asarray(y), jnp.asarray(args)))
    y, h = np.asarray(y0, np.float64), (t1 - t0) / n
    for k in range(n):
        t = t0 + k * h
        k1 = f(t, y)
        k2 = f(t + h / 2, y + h / 2 * k1)
        k3 = f(t + h / 2, y + h / 2 * k2)
        k4 = f(t + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


@jax.jit
def _diffeqsolve_final(dt):
    # `dt` is traced: one compilation for every step size.
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        odelab.solvers.RK4(),
        0.0,
        _T1,
        dt,
        jnp.asarray(_Y0),
        jnp.asarray(_ARGS),
        stepsize_controller=diffrax.ConstantStepSize(),
    ).ys[-1]


def test_declared_order():
    assert odelab.solvers.RK4().order(None) == 4


def test_convergence_order_in_diffeqsolve():
    order, _ = convergence_order(
        lambda n: _diffeqsolve_final(jnp.asarray(_T1 / n)), _exact(_T1), [8, 16, 32, 64]
    )
    assert abs(order - 4) < ORDER_SLACK


def test_matches_textbook_update_and_exact_solution():
    n = 16
    ts = np.linspace(0.0, _T1, 5)
    ys = odelab.solve(
        _field, jnp.asarray(_Y0), ts, jnp.asarray(_ARGS), solver="rk4", steps=n
    ).ys
    by_hand = _rk4_by_hand(_Y0, 0.0, _T1, n, _ARGS)
    assert_tree_allclose(
        np.asarray(ys[-1]), by_hand, **default_tol(jnp.float64, n_ops=4 * n)
    )
    assert_tree_allclose(
        np.asarray(ys), _exact(ts), **default_tol(jnp.float64, order=4, dt=_T1 / n)
    )


def test_same_as_diffeqsolve_with_constant_steps():
    n = 16
    lean = odelab.solve(
        _field,
        jnp.asarray(_Y0),
        (0.0, _T1),
        jnp.asarray(_ARGS),
        solver=odelab.solvers.RK4(),
        dt0=_T1 / n,
    ).ys[-1]
    assert_tree_allclose(
        lean,
        _diffeqsolve_final(jnp.asarray(_T1 / n)),
        **default_tol(jnp.float64, n_ops=4 * n),
    )


def test_gradient():
    def loss(p):
        y0, args = p
        sol = odelab.solve(_field, y0, (0.0, _T1), args, solver="rk4", steps=16)
        return jnp.sum(sol.ys**2)

    check_grad(loss, (jnp.asarray(_Y0), jnp.asarray(_ARGS)))


def test_no_recompile_on_second_call():
    def final(y0, args):
        return odelab.solve(_field, y0, (0.0, _T1), args, solver="rk4", steps=16).ys

    counted = count_traces(final)
    jitted = jax.jit(counted)
    first = jitted(jnp.asarray(_Y0), jnp.asarray(_ARGS))
    second = jitted(jnp.asarray([0.5, 2.0]), jnp.asarray([1.0, 3.0]))
    assert counted.num_traces == 1
    assert not np.allclose(first, second)
    assert_tree_allclose(
        np.asarray(second[-1]),
        _exact(_T1, (0.5, 2.0), (1.0, 3.0)),
        **default_tol(jnp.float64, order=4, dt=_T1 / 16),
    )


def test_no_error_estimate_means_fixed_steps_only():
    solver = odelab.solvers.RK4()
    y1, y_error, _, _, result = solver.step(
        diffrax.ODETerm(_field),
        0.0,
        0.1,
        jnp.asarray(_Y0),
        jnp.asarray(_ARGS),
        None,
        False,
    )
    assert y_error is None
    assert result == diffrax.RESULTS.successful
    assert solver.nfe_costs() == (0, 4, 4)
