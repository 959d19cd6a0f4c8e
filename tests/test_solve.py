"""Tests of `odelab.solve`: agreement with `diffrax.diffeqsolve`, time conventions,
transformations (jit, vmap, grad), adjoints, no recompilation, and the diffrax 0.7.2
gradient bug with fixed steps on the save grid."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
from tests.helpers import (
    assert_tree_allclose,
    check_grad,
    count_traces,
    default_tol,
    jax_config,
)


# Tsit5 has 7 stages; with at most a few hundred steps this bounds the roundings that
# accumulate along one trajectory (`n_ops` of the round-off tolerance).
_TSIT5_STAGES = 7
_MAX_TRACKED_STEPS = 256


def _field(t, y, args):
    """A nonlinear, non-autonomous field on a dict state `{"x": (2,), "v": ()}`."""
    x, v = y["x"], y["v"]
    return {
        "x": -args["k"] * x + jnp.sin(t) * v,
        "v": -args["w"] * jnp.tanh(jnp.sum(x)),
    }


def _pendulum(t, y, args):
    """A tuple state `(q, p)`: the pendulum with strength `args`."""
    del t
    q, p = y
    return p, -args * jnp.sin(q)


def _y0():
    return {"x": jnp.asarray([1.0, -0.5]), "v": jnp.asarray(0.3)}


def _args():
    return {"k": jnp.asarray(0.7), "w": jnp.asarray(1.3)}


def _ts(direction=1):
    ts = jnp.linspace(0.0, 2.0, 6)
    return ts if direction > 0 else ts[::-1]


def _tol():
    # Same algorithm on both sides: round-off only, in the default float dtype.
    return default_tol(jnp.result_type(float), n_ops=_TSIT5_STAGES * _MAX_TRACKED_STEPS)


@eqx.filter_jit
def _diffrax_adaptive(field, y0, ts, args, rtol, atol, saveat=None):
    """The same solve as `odelab.solve`'s default, written against diffrax directly."""
    saveat = diffrax.SaveAt(ts=ts) if saveat is None else saveat
    return diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        ts[0],
        ts[-1],
        None,
        y0,
        args,
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=4096,
    ).ys


# --------------------------------------------------------------------------------------
# Agreement with diffeqsolve, time conventions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [1, -1], ids=["increasing", "decreasing"])
def test_dict_state_matches_diffeqsolve(direction):
    y0, args, ts = _y0(), _args(), _ts(direction)
    sol = odelab.solve(_field, y0, ts, args, rtol=1e-5, atol=1e-5)
    expected = _diffrax_adaptive(
        _field, y0, ts, args, jnp.asarray(1e-5), jnp.asarray(1e-5)
    )
    assert sol.ys["x"].shape == (6, 2) and sol.ys["v"].shape == (6,)
    assert_tree_allclose(sol.ts, ts, rtol=0.0, atol=0.0)
    assert_tree_allclose(sol.ys, expected, **_tol())


def test_tuple_state_matches_diffeqsolve():
    y0 = (jnp.asarray([1.0, 2.0]), jnp.asarray([0.0, -0.5]))
    args, ts = jnp.asarray(2.0), _ts()
    sol = odelab.solve(_pendulum, y0, ts, args, rtol=1e-5, atol=1e-5)
    expected = _diffrax_adaptive(
        _pendulum, y0, ts, args, jnp.asarray(1e-5), jnp.asarray(1e-5)
    )
    assert isinstance(sol.ys, tuple)
    assert_tree_allclose(sol.ys, expected, **_tol())


def test_span_saves_only_at_t1():
    y0, args = _y0(), _args()
    sol = odelab.solve(_field, y0, (0.0, 2.0), args, rtol=1e-5, atol=1e-5)
    assert sol.ts.shape == (1,)
    assert float(sol.ts[0]) == 2.0
    assert sol.ys["x"].shape == (1, 2) and sol.ys["v"].shape == (1,)
    expected = _diffrax_adaptive(
        _field,
        y0,
        jnp.asarray([0.0, 2.0]),
        args,
        jnp.asarray(1e-5),
        jnp.asarray(1e-5),
        saveat=diffrax.SaveAt(t1=True),
    )
    assert_tree_allclose(sol.ys, expected, **_tol())


# --------------------------------------------------------------------------------------
# jit and no recompilation
# --------------------------------------------------------------------------------------


def _solve_ys(y0, args, rtol, atol):
    return odelab.solve(_field, y0, _ts(), args, rtol=rtol, atol=atol).ys


def test_jit_matches_eager_and_does_not_retrace():
    traced = count_traces(_solve_ys)
    jitted = jax.jit(traced)
    y0, args = _y0(), _args()
    out = jitted(y0, args, 1e-5, 1e-5)
    assert_tree_allclose(out, _solve_ys(y0, args, 1e-5, 1e-5), **_tol())
    y0b = jax.tree.map(lambda a: 0.5 * a, y0)
    argsb = jax.tree.map(lambda a: 1.5 * a, args)
    out = jitted(y0b, argsb, 1e-7, 1e-8)
    assert traced.num_traces == 1
    assert_tree_allclose(out, _solve_ys(y0b, argsb, 1e-7, 1e-8), **_tol())


_VF_CALLS = [0]


def _counted_field(t, y, args):
    # The body of a vector field runs only while JAX traces it (for the solve or for
    # `solve`'s abstract shape check), never when compiled code runs.
    _VF_CALLS[0] += 1
    return _field(t, y, args)


def _calls_during(fn):
    before = _VF_CALLS[0]
    jax.block_until_ready(fn())
    return _VF_CALLS[0] - before


def test_solve_does_not_recompile_for_new_values():
    ts = _ts()
    y0, args = _y0(), _args()
    first = _calls_during(lambda: odelab.solve(_counted_field, y0, ts, args).ys)
    # A repeat with identical inputs is a cache hit by definition: its count is what
    # runs outside the compiled solve (the shape check, itself cached by JAX).
    repeat = _calls_during(lambda: odelab.solve(_counted_field, y0, ts, args).ys)
    assert first > repeat
    y0b = jax.tree.map(lambda a: 2.0 * a, y0)
    argsb = jax.tree.map(lambda a: 0.5 * a, args)
    new = _calls_during(
        lambda: odelab.solve(_counted_field, y0b, ts, argsb, rtol=1e-8, atol=1e-9).ys
    )
    assert new == repeat
    # Positive control: a new state shape must trace again.
    y0c = {"x": jnp.ones(3), "v": jnp.asarray(0.0)}
    assert (
        _calls_during(lambda: odelab.solve(_counted_field, y0c, ts, args).ys) > repeat
    )


def test_diffrax_retraces_for_a_new_python_float_rtol():
    """Documents why `solve` traces its tolerances: diffeqsolve treats a Python float
    in `PIDController` as static and compiles again for every new value."""
    y0, args, ts = _y0(), _args(), _ts()

    def run(rtol):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(_counted_field),
            diffrax.Tsit5(),
            0.0,
            2.0,
            None,
            y0,
            args,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=1e-6),
        ).ys

    assert _calls_during(lambda: run(1e-5)) > 0
    assert _calls_during(lambda: run(1e-5)) == 0
    assert _calls_during(lambda: run(1e-7)) > 0


# --------------------------------------------------------------------------------------
# vmap
# --------------------------------------------------------------------------------------


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def test_vmap_over_y0():
    args, ts = _args(), _ts()
    y0s = {"x": jnp.asarray([[1.0, -0.5], [0.2, 0.1], [-1.0, 2.0]]), "v": jnp.ones(3)}
    batched = jax.vmap(lambda y: odelab.solve(_field, y, ts, args).ys)(y0s)
    each = [
        odelab.solve(_field, jax.tree.map(lambda a, i=i: a[i], y0s), ts, args).ys
        for i in range(3)
    ]
    assert_tree_allclose(batched, _stack(each), **_tol())


def test_vmap_over_args():
    y0, ts = _y0(), _ts()
    argss = {"k": jnp.asarray([0.1, 0.7, 2.0]), "w": jnp.asarray([1.0, 1.3, -0.4])}
    batched = jax.vmap(lambda a: odelab.solve(_field, y0, ts, a, steps=32).ys)(argss)
    each = [
        odelab.solve(
            _field, y0, ts, jax.tree.map(lambda a, i=i: a[i], argss), steps=32
        ).ys
        for i in range(3)
    ]
    assert_tree_allclose(batched, _stack(each), **_tol())


@pytest.mark.parametrize("steps", [32, None], ids=["steps", "adaptive"])
def test_vmap_over_ts(steps):
    y0, args = _y0(), _args()
    horizons = [1.0, 2.0, 3.0]
    tss = jnp.stack([jnp.linspace(0.0, h, 6) for h in horizons])
    batched = jax.vmap(lambda ts: odelab.solve(_field, y0, ts, args, steps=steps).ys)(
        tss
    )
    each = [odelab.solve(_field, y0, ts, args, steps=steps).ys for ts in tss]
    assert_tree_allclose(batched, _stack(each), **_tol())


# --------------------------------------------------------------------------------------
# Gradients and adjoints
# --------------------------------------------------------------------------------------


def _loss(y0, args, adjoint="checkpoint", **kwargs):
    ys = odelab.solve(_field, y0, _ts(), args, adjoint=adjoint, **kwargs).ys
    return jnp.sum(ys["x"] ** 2) + jnp.sum(jnp.sin(ys["v"]))


def test_grad_matches_finite_differences(x64):
    check_grad(lambda p: _loss(*p, steps=20), (_y0(), _args()))


@pytest.mark.parametrize("adjoint", ["direct", "forward"])
def test_adjoint_same_discretization_matches_checkpoint(x64, adjoint):
    y0, args = _y0(), _args()
    expected = jax.grad(_loss, argnums=(0, 1))(y0, args, steps=16)
    if adjoint == "forward":
        got = jax.jacfwd(_loss, argnums=(0, 1))(y0, args, "forward", steps=16)
    else:
        got = jax.grad(_loss, argnums=(0, 1))(y0, args, adjoint, steps=16)
    assert_tree_allclose(
        got, expected, **default_tol(jnp.float64, n_ops=16 * _TSIT5_STAGES)
    )


def test_backsolve_adjoint_matches_checkpoint(x64):
    # Backsolve integrates the continuous adjoint backwards on the same fixed steps; it
    # differs from the discrete gradient by the global error of Tsit5 (order 5).
    dt = 1 / 16
    y0, args = _y0(), _args()
    expected = jax.grad(_loss, argnums=(0, 1))(y0, args, dt0=dt)
    got = jax.grad(_loss, argnums=(0, 1))(y0, args, "backsolve", dt0=dt)
    assert_tree_allclose(got, expected, **default_tol(jnp.float64, order=5, dt=dt))


def test_backsolve_adjoint_with_steps(x64):
    dt = 1 / 16
    y0, args = _y0(), _args()
    got = jax.grad(_loss, argnums=(0, 1))(y0, args, "backsolve", steps=32)
    expected = jax.grad(_loss, argnums=(0, 1))(y0, args, dt0=dt)
    assert_tree_allclose(got, expected, **default_tol(jnp.float64, order=5, dt=dt))


# --------------------------------------------------------------------------------------
# The diffrax 0.7.2 gradient bug: fixed steps whose ends coincide with save times
# --------------------------------------------------------------------------------------
#
# Reported: with `max_steps` equal to the number of steps and save times on the step
# grid, diffrax's RecursiveCheckpointAdjoint returns gradients off by ~18% (same loss).
# `solve` must be right in that configuration, whatever `max_steps`.

_MLP_STEPS = 50
_ON_GRID = np.linspace(0.0, 1.0, 11)
# Shifted off the grid of 1/50 (and off its midpoints), so the dense output is used.
_OFF_GRID = np.concatenate([[0.0], np.linspace(0.1, 0.9, 9) - 0.007, [1.0]])
_SOLVERS = {"Euler": (diffrax.Euler, 1), "Tsit5": (diffrax.Tsit5, _TSIT5_STAGES)}


@functools.cache
def _mlp():
    """A small MLP vector field's float32 parameters and static part."""
    # An explicit dtype: the parameters must not depend on whether x64 happens to be
    # on when this first runs.
    mlp = eqx.nn.MLP(
        2, 2, 16, 2, activation=jnp.tanh, dtype=jnp.float32, key=jax.random.key(0)
    )
    return eqx.partition(mlp, eqx.is_array)


def _mlp_field(t, y, params):
    del t
    return eqx.combine(params, _mlp()[1])(y)


def _mlp_loss(params, ts, solver, dt0, max_steps):
    dtype = jax.tree.leaves(params)[0].dtype
    y0 = jnp.asarray([1.0, 0.5], dtype)
    sol = odelab.solve(
        _mlp_field, y0, ts, params, solver=solver, dt0=dt0, max_steps=max_steps
    )
    return jnp.sum(sol.ys**2)


def _raw_diffrax_loss(params, ts, solver, dt0, max_steps, adjoint):
    # `t0`, `t1` as Python floats, as in the report: diffrax 0.7.2 gets the gradient
    # wrong with them (static under its `filter_jit`), right with arrays.
    dtype = jax.tree.leaves(params)[0].dtype
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_mlp_field),
        solver,
        0.0,
        1.0,
        dt0,
        jnp.asarray([1.0, 0.5], dtype),
        params,
        saveat=diffrax.SaveAt(ts=jnp.asarray(ts, dtype)),
        max_steps=max_steps,
        adjoint=adjoint,
    )
    return jnp.sum(sol.ys**2)


def _flat64(tree):
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in tree])


@functools.cache
def _reference_grad(solver_name, grid, n_steps):
    """Float64 gradient of the same discretization, by forward mode (no checkpoints)."""
    ts = _ON_GRID if grid == "on" else _OFF_GRID
    with jax_config(jax_enable_x64=True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), _mlp()[0])
        grad = jax.jacfwd(_raw_diffrax_loss)(
            params,
            ts,
            _SOLVERS[solver_name][0](),
            1 / n_steps,
            n_steps,
            diffrax.ForwardMode(),
        )
        return _flat64(jax.tree.leaves(grad))


def _rel_error(grad, reference):
    return np.linalg.norm(_flat64(jax.tree.leaves(grad)) - reference) / np.linalg.norm(
        reference
    )


def _grad_tol(solver_name, n_steps):
    return default_tol(jnp.float32, n_ops=n_steps * _SOLVERS[solver_name][1])["rtol"]


@pytest.mark.slow
@pytest.mark.parametrize("grid", ["on", "off"])
@pytest.mark.parametrize("max_steps", [50, 100, 1000])
@pytest.mark.parametrize("solver_name", list(_SOLVERS))
def test_fixed_step_gradient_float32(solver_name, max_steps, grid):
    ts = jnp.asarray(_ON_GRID if grid == "on" else _OFF_GRID, jnp.float32)
    params = _mlp()[0]
    grad = jax.grad(_mlp_loss)(
        params, ts, _SOLVERS[solver_name][0](), 1 / _MLP_STEPS, max_steps
    )
    reference = _reference_grad(solver_name, grid, _MLP_STEPS)
    assert _rel_error(grad, reference) < _grad_tol(solver_name, _MLP_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("solver_name", list(_SOLVERS))
def test_fixed_step_gradient_float32_traced_ts(solver_name):
    # Traced save times cannot be placed on the grid before the solve: this is the
    # `diffeqsolve(..., ConstantStepSize())` fallback rather than the lean scan.
    ts = jnp.asarray(_ON_GRID, jnp.float32)
    solver = _SOLVERS[solver_name][0]()
    grad_fn = jax.jit(
        jax.grad(lambda p, ts: _mlp_loss(p, ts, solver, 1 / _MLP_STEPS, _MLP_STEPS))
    )
    grad = grad_fn(_mlp()[0], ts)
    reference = _reference_grad(solver_name, "on", _MLP_STEPS)
    assert _rel_error(grad, reference) < _grad_tol(solver_name, _MLP_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("traced_ts", [False, True], ids=["concrete_ts", "traced_ts"])
def test_fixed_step_gradient_float64_40_steps(x64, traced_ts):
    params = jax.tree.map(lambda a: a.astype(jnp.float64), _mlp()[0])
    ts = jnp.asarray(_ON_GRID)
    loss = functools.partial(
        _mlp_loss, solver=diffrax.Euler(), dt0=1 / 40, max_steps=40
    )
    if traced_ts:
        jitted = jax.jit(loss)
        check_grad(lambda p: jitted(p, ts), params)
    else:
        check_grad(lambda p: loss(p, ts), params)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype, n_steps", [(jnp.float32, 50), (jnp.float64, 40)], ids=["float32", "float64"]
)
def test_raw_diffrax_gradient_is_wrong_in_that_configuration(dtype, n_steps):
    """Documents the diffrax 0.7.2 bug that `solve` must not inherit: Euler, steps of
    1/n on [0, 1], save times on the step grid, `max_steps=n`, default adjoint."""
    reference = _reference_grad("Euler", "on", n_steps)
    with jax_config(jax_enable_x64=dtype == jnp.float64):
        params = jax.tree.map(lambda a: a.astype(dtype), _mlp()[0])
        grad = jax.grad(_raw_diffrax_loss)(
            params,
            _ON_GRID[1:],
            diffrax.Euler(),
            1 / n_steps,
            n_steps,
            diffrax.RecursiveCheckpointAdjoint(),
        )
        assert _rel_error(grad, reference) > 0.05


@pytest.mark.parametrize("kwargs", [dict(solver="rk4", steps=10), dict()])
def test_float32_state_keeps_its_precision_under_x64(x64, kwargs):
    # Python-float times are float64 under x64; the state's float32 decides, on the
    # lean path and the adaptive path alike, and stage times reach the vector field
    # in that precision too.
    def f(t, y, args):
        del args
        assert t.dtype == jnp.float32, t.dtype
        return -t * y

    y0 = jnp.ones(2, dtype=jnp.float32)
    sol = odelab.solve(f, y0, (0.0, 1.0), **kwargs)
    assert sol.ys.dtype == jnp.float32
    np.testing.assert_allclose(sol.ys[-1], np.exp(-0.5) * np.ones(2), rtol=1e-5)


def test_args_may_hold_non_array_leaves(key):
    # An equinox module as `args` carries functions (its activation) beside arrays.
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=key)
    sol = odelab.solve(lambda t, y, m: m(y), jnp.ones(2), jnp.linspace(0, 1, 3), mlp)
    assert sol.ys.shape == (3, 2)
