"""Tests of the test harness itself: `tests/helpers.py` and `tests/conftest.py`."""

import functools
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
import odelab.problems
from tests.helpers import (
    ALL_DIFFRAX_EXPLICIT_SOLVERS,
    ORDER_SLACK,
    assert_max_traces,
    assert_tree_allclose,
    check_grad,
    convergence_order,
    count_traces,
    default_tol,
    estimate_order,
    jax_config,
    roundoff_tol,
    solver_id,
    tree_allclose,
)


# --------------------------------------------------------------------------------------
# Solver table and convergence order
# --------------------------------------------------------------------------------------


def _oscillator(t, y, args):
    del t, args
    q, p = y
    return p, -q


def _riccati(t, y, args):
    del t, args
    return -(y**2)


_HORIZON = 2.0
# Harmonic oscillator (q, p)(0) = (1, 0): (q, p)(t) = (cos t, -sin t). A pytree state,
# and a horizon that is not a whole period (errors would cancel there).
_OSCILLATOR = (_oscillator, (1.0, 0.0), (math.cos(_HORIZON), -math.sin(_HORIZON)))
# y' = -y^2, y(0) = 1: y(t) = 1 / (1 + t). Nonlinear, so it also exercises the order
# conditions that a linear problem cannot see (Heun and Midpoint coincide on the
# oscillator).
_RICCATI = (_riccati, 1.0, 1 / (1 + _HORIZON))

# Step counts keep every error between ~1e-2 and ~1e-12: truncation-dominated, above
# float64 round-off and in the asymptotic regime. Dopri8 is left out: on linear
# problems its stability polynomial matches exp(z) to within 0.13% at z^9, so the
# oscillator shows order ~9, and any nonlinear problem reaches round-off in a few steps.
_ORDER_CASES = [
    (diffrax.Euler, 1, _OSCILLATOR, [64, 128, 256, 512]),
    (diffrax.Heun, 2, _OSCILLATOR, [16, 32, 64, 128]),
    (diffrax.Midpoint, 2, _OSCILLATOR, [16, 32, 64, 128]),
    (diffrax.Ralston, 2, _OSCILLATOR, [16, 32, 64, 128]),
    (diffrax.Bosh3, 3, _OSCILLATOR, [16, 32, 64, 128]),
    (diffrax.Tsit5, 5, _OSCILLATOR, [8, 16, 32, 64]),
    (diffrax.Dopri5, 5, _OSCILLATOR, [8, 16, 32, 64]),
    (diffrax.Euler, 1, _RICCATI, [64, 128, 256, 512]),
    (diffrax.Heun, 2, _RICCATI, [16, 32, 64, 128]),
    (diffrax.Midpoint, 2, _RICCATI, [16, 32, 64, 128]),
]


def test_solver_table_matches_declared_orders():
    term = diffrax.ODETerm(_oscillator)
    for factory, order in ALL_DIFFRAX_EXPLICIT_SOLVERS:
        assert factory().order(term) == order, factory


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver_factory, order, problem, step_counts",
    _ORDER_CASES,
    ids=[f"{case[0].__name__}-{case[2][0].__name__[1:]}" for case in _ORDER_CASES],
)
def test_convergence_order(solver_factory, order, problem, step_counts):
    vector_field, y0, exact = problem
    y0 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), y0)

    @jax.jit
    def solve(dt0):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field), solver_factory(), 0.0, _HORIZON, dt0, y0
        )
        return jax.tree.map(lambda v: v[-1], sol.ys)

    measured, errors = convergence_order(
        lambda n: solve(_HORIZON / n), exact, step_counts
    )
    assert abs(measured - order) < ORDER_SLACK, (measured, errors)


def test_estimate_order_recovers_exact_power_law():
    steps = np.array([0.1, 0.05, 0.025, 0.0125])
    assert estimate_order(3.0 * steps**4, steps) == pytest.approx(4.0, abs=1e-12)
    assert estimate_order(3.0 * steps**4, 1 / steps) == pytest.approx(-4.0, abs=1e-12)


@pytest.mark.parametrize(
    "errors, steps",
    [([1e-3], [0.1]), ([1e-3, 0.0], [0.1, 0.05]), ([1e-3, 1e-4], [0.1, 0.1])],
)
def test_estimate_order_rejects_degenerate_input(errors, steps):
    with pytest.raises(ValueError, match="step_sizes|errors"):
        estimate_order(errors, steps)


@pytest.mark.x64
def test_convergence_order_rejects_round_off():
    exact = np.float64(1.0)
    with pytest.raises(ValueError, match="round-off"):
        convergence_order(lambda n: jnp.asarray(1.0 + 1e-15 / n), exact, [1, 2, 4])


@pytest.mark.x64
def test_convergence_order_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        convergence_order(lambda n: jnp.ones(1) / n, np.float64(0.0), [1, 2])


# --------------------------------------------------------------------------------------
# tree_allclose
# --------------------------------------------------------------------------------------


def _mixed_tree():
    return {
        "a": (jnp.arange(6.0).reshape(2, 3), jnp.array([1, 2, 3], jnp.int32)),
        "b": [1.5, "tanh", 7, True],
        "c": None,
        "d": eqx.nn.Linear(2, 2, key=jax.random.key(0)),
        "k": jax.random.key(1),
        "n": np.array([0.5, np.nan]),
    }


def test_tree_allclose_accepts_equal_and_nearby_trees():
    x = _mixed_tree()
    assert tree_allclose(x, _mixed_tree(), rtol=0.0, atol=0.0, equal_nan=True)
    y = _mixed_tree()
    y["a"] = (y["a"][0] * (1 + 1e-7), y["a"][1])
    y["b"][0] = 1.5 * (1 + 1e-7)
    assert tree_allclose(x, y, **default_tol(jnp.float32), equal_nan=True)
    assert not tree_allclose(x, y, rtol=0.0, atol=0.0, equal_nan=True)
    assert not tree_allclose(x, _mixed_tree(), rtol=1.0, atol=1.0)  # NaN != NaN


def _with_a(tree, index, leaf):
    a = list(tree["a"])
    a[index] = leaf
    return {**tree, "a": tuple(a)}


def test_assert_tree_allclose_names_leaf_and_error():
    x = _mixed_tree()
    a0, a1 = x["a"]
    for y, expected in [
        (_with_a(x, 0, a0.at[1, 2].add(0.5)), r"\['a'\]\[0\]: 1/6 .*error 5\.000e-01"),
        (_with_a(x, 0, a0[:1]), r"\['a'\]\[0\]: shape \(2, 3\) != \(1, 3\)"),
        (_with_a(x, 0, a0.astype(jnp.int32)), r"\['a'\]\[0\]: dtype float32 != int32"),
        (_with_a(x, 1, a1.at[0].set(9)), r"\['a'\]\[1\]: 1/3 elements differ"),
        ({**x, "b": [1.5, "relu", 7, True]}, r"\['b'\]\[1\]: 'tanh' != 'relu'"),
        ({**x, "b": [1.5, "tanh", 7.0, True]}, r"\['b'\]\[2\]: type int != float"),
        ({**x, "b": [1.5, "tanh", 7]}, r"tree structures differ"),
        ({**x, "k": jax.random.key(2)}, r"\['k'\]: \d/2 elements differ"),
        ({**x, "n": np.array([0.5, 1.0])}, r"\['n'\]: 1/2 elements .* x=nan, y=1"),
    ]:
        with pytest.raises(AssertionError, match=expected):
            assert_tree_allclose(x, y, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_default_tol_formula():
    eps32 = float(jnp.finfo(jnp.float32).eps)
    assert roundoff_tol(jnp.float32) == pytest.approx(100 * eps32)
    assert roundoff_tol(jnp.float32, 16) == pytest.approx(400 * eps32)
    tol = default_tol(jnp.float32, order=2, dt=0.1)
    assert tol["rtol"] == tol["atol"] == pytest.approx(0.01 + 100 * eps32)
    with pytest.raises(ValueError, match="both"):
        default_tol(jnp.float32, order=2)


# --------------------------------------------------------------------------------------
# check_grad
# --------------------------------------------------------------------------------------


def _scaled_grad_sin(factor):
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    def fwd(x):
        return jnp.sin(x), x

    def bwd(x, g):
        return (factor * g * jnp.cos(x),)

    f.defvjp(fwd, bwd)
    return f


def _loss(f, params):
    return jnp.sum(f(params["w"]) * params["scale"]) + f(params["b"]) ** 2


@pytest.mark.x64
def test_check_grad_passes_correct_gradient(key):
    params = {"w": jax.random.normal(key, (3, 2)), "b": 0.3, "scale": 2.0, "n": 4}
    f = _scaled_grad_sin(1.0)
    grad = check_grad(lambda p: _loss(f, p) * p["n"], params)
    assert_tree_allclose(
        grad["b"], 8 * jnp.sin(0.3) * jnp.cos(0.3), **default_tol(jnp.float64)
    )


@pytest.mark.x64
def test_check_grad_catches_wrong_gradient(key):
    params = {"w": jax.random.normal(key, (3, 2)), "b": 0.3, "scale": 2.0}
    f = _scaled_grad_sin(1.001)
    with pytest.raises(AssertionError, match="disagree along 3 of 3"):
        check_grad(functools.partial(_loss, f), params)


def _forced_decay(t, y, args):
    return -args["k"] * y + args["c"] * jnp.sin(t)


@pytest.mark.x64
def test_check_grad_through_diffeqsolve():
    # The vector field is defined once, outside `f`: a fresh lambda per call would
    # defeat diffeqsolve's compilation cache and recompile on every evaluation.
    def f(args):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_forced_decay),
            diffrax.Tsit5(),
            0.0,
            1.0,
            0.1,
            jnp.ones(2),
            args=args,
        )
        return jnp.sum(sol.ys**2)

    check_grad(f, {"k": jnp.array([0.5, 1.5]), "c": 0.7})


def test_check_grad_requires_x64():
    with pytest.raises(RuntimeError, match="x64"):
        check_grad(jnp.sin, 1.0)


# --------------------------------------------------------------------------------------
# Trace counting
# --------------------------------------------------------------------------------------


def test_count_traces_counts_retraces_on_new_shapes_only():
    f = count_traces(lambda x: 2 * x)
    jitted = jax.jit(f)
    jitted(jnp.ones(3))
    jitted(jnp.linspace(-1.0, 1.0, 3))
    assert f.num_traces == 1
    jitted(jnp.full(3, 5.0))  # weakly typed (Python-scalar fill): a new signature
    assert f.num_traces == 2
    jitted(jnp.ones(4))
    assert f.num_traces == 3
    jitted(jnp.zeros(4))
    assert f.num_traces == 3
    eqx.filter_jit(f)(jnp.ones(3))
    assert f.num_traces == 4
    f(jnp.ones(3))
    f(jnp.ones(3))
    assert f.num_traces == 6


def test_assert_max_traces_reexport():
    jitted = jax.jit(assert_max_traces(lambda x: x + 1, n=1))
    jitted(jnp.ones(3))
    jitted(jnp.zeros(3))
    with pytest.raises(AssertionError):
        jitted(jnp.ones(4))


# --------------------------------------------------------------------------------------
# conftest: x64, promotion and key
# --------------------------------------------------------------------------------------


def test_x64_is_off_by_default():
    assert not jax.config.jax_enable_x64
    assert jnp.ones(()).dtype == jnp.float32


def test_x64_fixture(x64):
    del x64
    assert jax.config.jax_enable_x64
    assert jnp.ones(()).dtype == jnp.float64


@pytest.mark.x64
def test_x64_marker():
    assert jax.config.jax_enable_x64
    assert jnp.ones(()).dtype == jnp.float64


def test_x64_restored_after_fixture_and_marker():
    # Runs after the two tests above (file order), whatever they did.
    assert not jax.config.jax_enable_x64


def test_jax_config_restores_on_exit_and_error():
    with jax_config(jax_enable_x64=True):
        with jax_config(jax_enable_x64=True):
            assert jax.config.jax_enable_x64
        assert jax.config.jax_enable_x64
    assert not jax.config.jax_enable_x64
    with pytest.raises(KeyError), jax_config(jax_numpy_rank_promotion="warn"):
        raise KeyError
    assert jax.config.jax_numpy_rank_promotion == "raise"


def test_strict_promotion_by_default():
    assert jax.config.jax_numpy_dtype_promotion == "strict"
    with pytest.raises(jax.dtypes.TypePromotionError):
        jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.int32)
    with pytest.raises(ValueError, match="rank"):
        jnp.ones((2, 3)) + jnp.ones(3)
    assert (jnp.ones(2, jnp.float32) * 2.0).dtype == jnp.float32  # weak types pass


@pytest.mark.loose_promotion
def test_loose_promotion_marker():
    assert (jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.int32)).dtype == jnp.float32
    assert (jnp.ones((2, 3)) + jnp.ones(3)).shape == (2, 3)


def test_key_fixture_prints_seed(capsys, key):
    assert "PRNG seed" in capsys.readouterr().out
    assert jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    assert key.shape == ()


def test_solver_id():
    assert solver_id(diffrax.Tsit5) == "Tsit5"
    assert solver_id(functools.partial(diffrax.Dopri5)) == "Dopri5"
    assert solver_id(lambda: diffrax.Heun()) == "Heun"
    assert solver_id(5) is None


# Step counts in the asymptotic regime on Lorenz (t in [0, 1]), errors between ~1e-1
# and ~1e-10: fewer Tsit5 steps are pre-asymptotic (local slopes 8.5, 2.8 at 40-160).
_ZOO_ORDER_CASES = [
    ("euler", 1, [1000, 2000, 4000, 8000]),
    ("heun", 2, [200, 400, 800, 1600]),
    ("midpoint", 2, [200, 400, 800, 1600]),
    ("tsit5", 5, [160, 320, 640]),
]


@pytest.mark.x64
@pytest.mark.parametrize("solver, order, step_counts", _ZOO_ORDER_CASES)
def test_convergence_order_on_zoo_problem(solver, order, step_counts):
    # The same harness on a smooth nonlinear zoo problem (Lorenz, short horizon)
    # against its verified float64 reference, through odelab's fixed-step path.
    problem = odelab.problems.get("lorenz")
    exact = problem.reference(jnp.asarray([problem.t1]))[0]

    def final_state(n):
        sol = odelab.solve(
            problem.vector_field,
            problem.y0,
            (problem.t0, problem.t1),
            problem.args,
            solver=solver,
            steps=n,
        )
        return sol.ys[-1]

    measured, errors = convergence_order(final_state, exact, step_counts)
    assert abs(measured - order) < ORDER_SLACK, (measured, errors)
