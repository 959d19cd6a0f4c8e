"""Tests of the lean fixed-step path (`odelab._fixed_step`, reached through
`odelab.solve(..., steps=...)` or `dt0=` with the default adjoint): it must be
`diffrax.diffeqsolve` on the same grid, states and gradients, to round-off."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
from tests.helpers import assert_tree_allclose, default_tol


pytestmark = pytest.mark.x64

_SOLVERS = {
    "Euler": (diffrax.Euler, 1),
    "Heun": (diffrax.Heun, 2),
    "Midpoint": (diffrax.Midpoint, 2),
    "Tsit5": (diffrax.Tsit5, 7),
    "Dopri5": (diffrax.Dopri5, 7),
    "RK4": (odelab.solvers.RK4, 4),
    "ReversibleHeun": (diffrax.ReversibleHeun, 1),
}
_STEPS = 20
# On the grid of 20 steps over [0, 1], and off it (so the dense output is used).
_TS = {
    "on_grid": np.linspace(0.0, 1.0, 6),
    "off_grid": np.array([0.0, 0.13, 0.37, 0.51, 0.88, 1.0]),
}
# Weights of the scalar loss whose gradient is compared: all save times and components.
_WEIGHTS = np.linspace(0.5, 1.5, 12).reshape(6, 2)


def _field(t, y, args):
    """A nonlinear, non-autonomous 2-D field: a damped, driven pendulum."""
    q, p = y[0], y[1]
    return jnp.stack([p, -args[0] * jnp.sin(q) - args[1] * p + jnp.cos(2 * t)])


def _y0():
    return jnp.asarray([1.0, 0.0])


def _args():
    return jnp.asarray([2.0, 0.3])


def _uniform_grid(t0, t1, n):
    return t0 + (t1 - t0) * (jnp.arange(n + 1) / n)


def _loss(ys):
    return jnp.sum(ys * jnp.asarray(_WEIGHTS, ys.dtype)[: ys.shape[0]])


def _odelab(y0, args, ts, solver, **kwargs):
    """States and the gradient of `_loss` w.r.t. `(y0, args)` through `odelab.solve`."""

    def loss(y0, args):
        ys = odelab.solve(_field, y0, ts, args, solver=solver, **kwargs).ys
        return _loss(ys), ys

    (_, ys), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(y0, args)
    return ys, grads


@eqx.filter_jit
def _diffrax(y0, args, ts, solver, controller, dt0=None):
    """The same through `diffeqsolve`; gradients in forward mode, which is exact for the
    discretization and shares no checkpointing with the reverse pass under test."""

    def solve(y0, args):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(_field),
            solver,
            ts[0],
            ts[-1],
            dt0,
            y0,
            args,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=controller,
            adjoint=diffrax.ForwardMode(),
        ).ys

    ys = solve(y0, args)
    grads = jax.jacfwd(lambda y, a: _loss(solve(y, a)), argnums=(0, 1))(y0, args)
    return ys, grads


def _tol(solver_name, n_steps=_STEPS):
    return default_tol(jnp.float64, n_ops=n_steps * _SOLVERS[solver_name][1])


@pytest.mark.parametrize("where", list(_TS))
@pytest.mark.parametrize("solver_name", list(_SOLVERS))
def test_steps_matches_diffeqsolve_stepto(solver_name, where):
    solver = _SOLVERS[solver_name][0]()
    ts = jnp.asarray(_TS[where])
    got = _odelab(_y0(), _args(), _TS[where], solver, steps=_STEPS)
    grid = diffrax.StepTo(_uniform_grid(ts[0], ts[-1], _STEPS))
    expected = _diffrax(_y0(), _args(), ts, solver, grid)
    assert_tree_allclose(got, expected, **_tol(solver_name))


@pytest.mark.parametrize("where", list(_TS))
def test_decreasing_time_matches_diffeqsolve(where):
    solver = diffrax.Tsit5()
    ts_np = _TS[where][::-1]
    ts = jnp.asarray(ts_np)
    got = _odelab(_y0(), _args(), ts_np, solver, steps=_STEPS)
    grid = diffrax.StepTo(_uniform_grid(ts[0], ts[-1], _STEPS))
    expected = _diffrax(_y0(), _args(), ts, solver, grid)
    assert_tree_allclose(got, expected, **_tol("Tsit5"))


def test_decreasing_time_negative_dt0_matches_constant_step_size():
    solver = diffrax.Tsit5()
    ts_np = _TS["off_grid"][::-1]
    got = _odelab(_y0(), _args(), ts_np, solver, dt0=-1 / 8)
    expected = _diffrax(
        _y0(),
        _args(),
        jnp.asarray(ts_np),
        solver,
        diffrax.ConstantStepSize(),
        jnp.asarray(-1 / 8),
    )
    assert_tree_allclose(got, expected, **_tol("Tsit5", 8))


@pytest.mark.parametrize("solver_name", ["Tsit5", "RK4"])
def test_binary_exact_dt0_matches_constant_step_size(solver_name):
    # With dt0 = 1/8 every `t0 + k dt0` is exact, so diffrax's accumulated times and
    # the lean grid are the same numbers.
    solver = _SOLVERS[solver_name][0]()
    ts = jnp.asarray(_TS["off_grid"])
    got = _odelab(_y0(), _args(), _TS["off_grid"], solver, dt0=1 / 8)
    expected = _diffrax(
        _y0(), _args(), ts, solver, diffrax.ConstantStepSize(), jnp.asarray(1 / 8)
    )
    assert_tree_allclose(got, expected, **_tol(solver_name, 8))


def test_dt0_not_dividing_the_span_steps_to_t0_plus_k_dt0():
    # 0.3 does not divide [0, 1]: the documented grid is t0 + k dt0, then t1.
    solver = diffrax.Tsit5()
    ts = jnp.asarray(_TS["off_grid"])
    got = _odelab(_y0(), _args(), _TS["off_grid"], solver, dt0=0.3)
    grid = diffrax.StepTo(jnp.asarray([0.0, 0.3, 0.6, 0.9, 1.0]))
    expected = _diffrax(_y0(), _args(), ts, solver, grid)
    assert_tree_allclose(got, expected, **_tol("Tsit5", 4))


def test_dt0_not_dividing_the_span_same_grid_in_fallback():
    solver = diffrax.Tsit5()
    lean = odelab.solve(_field, _y0(), _TS["off_grid"], _args(), solver=solver, dt0=0.3)
    fallback = odelab.solve(
        _field,
        _y0(),
        _TS["off_grid"],
        _args(),
        solver=solver,
        dt0=0.3,
        adjoint="direct",
    )
    assert_tree_allclose(fallback.ys, lean.ys, **_tol("Tsit5", 4))


_CALLS = []


def _record():
    _CALLS.append(None)


def _counted_field(t, y, args):
    jax.debug.callback(_record)
    return _field(t, y, args)


@pytest.mark.parametrize(
    "solver_name, kwargs",
    [
        ("Tsit5", dict(steps=_STEPS)),
        ("Tsit5", dict(dt0=0.3)),
        ("RK4", dict(dt0=1 / 8)),
        ("ReversibleHeun", dict(steps=_STEPS)),
    ],
)
def test_reported_nfe_is_the_actual_count(solver_name, kwargs):
    solver = _SOLVERS[solver_name][0]()
    _CALLS.clear()
    sol = odelab.solve(
        _counted_field, _y0(), _TS["off_grid"], _args(), solver=solver, **kwargs
    )
    jax.block_until_ready(sol.ys)
    jax.effects_barrier()
    assert int(sol.stats["nfe"]) == len(_CALLS) > 0


@pytest.mark.parametrize(("t1", "n_steps"), [(1000.0005, 1001), (1000 + 5e-7, 1000)])
def test_last_fraction_merged_alike_on_both_paths(x64, t1, n_steps):
    # A leftover under a millionth of a step is merged into the last step, by the
    # lean scan and by diffeqsolve's FixedGrid alike; a larger one is a step.
    ts = jnp.asarray([0.0, t1])
    y0 = jnp.asarray([1.0])
    f = lambda t, y, a: -1e-3 * y  # noqa: E731
    lean = odelab.solve(f, y0, ts, solver="rk4", dt0=1.0)
    other = odelab.solve(f, y0, ts, solver="rk4", dt0=1.0, adjoint="direct")
    assert int(lean.stats["num_steps"]) == n_steps
    assert int(other.stats["num_steps"]) == n_steps
    assert_tree_allclose(lean.ys, other.ys, rtol=1e-12, atol=1e-12)


def test_float32_save_times_far_from_zero_not_snapped():
    # Far from zero float32 rounding is coarse; a save time a fifth of a step off the
    # grid must still be read from the dense output, not from the nearest grid point.
    ts = jnp.asarray([10000.0, 10000.01, 10001.0], dtype=jnp.float32)
    f = lambda t, y, a: jnp.ones_like(y)  # noqa: E731
    sol = odelab.solve(f, jnp.zeros(1), ts, solver="rk4", dt0=0.05)
    expected = ts - ts[0]
    # Two float32 spacings at 1e4 (times there are only that precise).
    atol = 2 * float(np.spacing(np.float32(1e4)))
    np.testing.assert_allclose(sol.ys[:, 0], expected, atol=atol)
