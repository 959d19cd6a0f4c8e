"""Tests of `odelab.solvers.exponential` and `odelab.terms.SemilinearTerm`."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
from odelab.solvers import (
    ETDRK2,
    ETDRK4,
    ETDRK4B,
    RK4,
    ExponentialAdams,
    ExponentialEuler,
    ExponentialMidpoint,
    ExponentialRK3,
    LawsonRK4,
)
from odelab.terms import SemilinearTerm
from tests.helpers import ORDER_SLACK, check_grad, convergence_order


_LINEAR = {
    "scalar": lambda: jnp.asarray(-3.0),
    "diagonal": lambda: jnp.array([-1.0, -5.0, 0.5]),
    "dense": lambda: jnp.array([[-2.0, 1.0, 0.0], [0.0, -3.0, 1.0], [1.0, 0.0, -1.0]]),
}


def _exact(t):
    return jnp.stack([jnp.cos(t) + 2, jnp.exp(-t) + 1, jnp.sin(2 * t) + 1.5])


def _exact_dot(t):
    return jnp.stack([-jnp.sin(t), -jnp.exp(-t), 2 * jnp.cos(2 * t)])


def _term(kind):
    # A manufactured solution: N(t, y) = -y² + g(t) with g chosen so that y = _exact
    # solves y' = L y + N exactly (nonlinear, non-autonomous, stiff-free).
    lin = _LINEAR[kind]()

    def apply(y):
        return lin @ y if kind == "dense" else lin * y

    def nonlinear(t, y, args):
        return -(y**2) + _exact_dot(t) - apply(_exact(t)) + _exact(t) ** 2

    return SemilinearTerm(lin, nonlinear)


ORDERS = [
    (ExponentialEuler(), 1, [20, 40, 80, 160]),
    (ETDRK2(), 2, [20, 40, 80, 160]),
    (ExponentialMidpoint(), 2, [20, 40, 80, 160]),
    (ExponentialRK3(), 3, [10, 20, 40, 80]),
    (ETDRK4(), 4, [10, 20, 40, 80]),
    (ETDRK4B(), 4, [10, 20, 40, 80]),
    (LawsonRK4(), 4, [10, 20, 40, 80]),
]


@pytest.mark.x64
@pytest.mark.parametrize("kind", list(_LINEAR))
@pytest.mark.parametrize("solver, order, counts", ORDERS, ids=repr)
def test_convergence_order(solver, order, counts, kind):
    term = _term(kind)

    @jax.jit
    def final(dt):
        sol = diffrax.diffeqsolve(term, solver, 0.0, 1.0, dt, _exact(0.0), None)
        return sol.ys[-1]

    measured, _ = convergence_order(
        lambda n: final(1.0 / n), _exact(1.0), np.asarray(counts)
    )
    assert abs(measured - order) <= ORDER_SLACK, (measured, order)
    assert solver.order(term) == order


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, classical",
    [
        (ExponentialEuler(), diffrax.Euler()),
        (ETDRK2(), diffrax.Heun()),
        (ExponentialMidpoint(), diffrax.Midpoint()),
        (ETDRK4(), RK4()),
        (ETDRK4B(), RK4()),
        (LawsonRK4(), RK4()),
    ],
    ids=repr,
)
def test_zero_linear_part_is_the_classical_method(solver, classical):
    def nonlinear(t, y, args):
        return jnp.stack([jnp.sin(t) * y[1], -(y[0] ** 3)])

    y0 = jnp.array([0.3, -1.2])
    kw = dict(t0=0.0, t1=1.0, dt0=0.1, y0=y0, args=None)
    exp = diffrax.diffeqsolve(SemilinearTerm(0.0, nonlinear), solver, **kw)
    ref = diffrax.diffeqsolve(diffrax.ODETerm(nonlinear), classical, **kw)
    np.testing.assert_allclose(exp.ys, ref.ys, rtol=1e-13, atol=1e-15)


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, accurate",
    [(ETDRK4(), True), (ETDRK4B(), True), (ETDRK2(), True), (LawsonRK4(), False)],
    ids=repr,
)
def test_stiff_linear_part_is_stable_where_rk4_blows_up(solver, accurate):
    # |hL| up to 1e4 with 20 steps over [0, 20]: explicit RK4 diverges, the
    # exponential integrators stay bounded. The ETD methods follow the slow manifold
    # y ≈ N/|L|; Lawson's does not (its last stage weight h/6 N_4 is undamped: the
    # known order reduction of integrating-factor methods), but it stays bounded.
    lin = -jnp.logspace(0, 4, 5)

    def nonlinear(t, y, args):
        return jnp.cos(t) * jnp.ones_like(y)

    term = SemilinearTerm(lin, nonlinear)
    y0 = jnp.ones(5)
    sol = odelab.solve(term, y0, jnp.array([0.0, 20.0]), None, solver=solver, steps=20)
    exact_slow = jnp.cos(20.0) / (-lin)  # quasi-static value for |L| >> 1
    assert bool(jnp.all(jnp.abs(sol.ys) <= 1.0))
    if accurate:
        np.testing.assert_allclose(sol.ys[-1, -2:], exact_slow[-2:], rtol=1e-2)
    rk4 = odelab.solve(
        term.vf, y0, jnp.array([0.0, 20.0]), None, solver="rk4", steps=20, throw=False
    )
    assert not bool(jnp.all(jnp.abs(rk4.ys) < 1e3))


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver",
    [
        ExponentialEuler(),
        ETDRK2(),
        ExponentialMidpoint(),
        ExponentialRK3(),
        ETDRK4(),
        ETDRK4B(),
        LawsonRK4(),
        ExponentialAdams(2),
        ExponentialAdams(3),
    ],
    ids=repr,
)
def test_pytree_state_vmap_and_gradients(solver):
    # A scalar L acts on any pytree; vmap over y0; gradients with respect to y0 and
    # args through the lean fixed-step path and through diffeqsolve (backsolve).
    def nonlinear(t, y, a):
        return {"u": a * jnp.tanh(y["v"]), "v": -a * y["u"] ** 2}

    term = SemilinearTerm(-2.0, nonlinear)
    ts = jnp.linspace(0.0, 1.0, 5)
    y0 = {"u": jnp.array([0.5, 1.0]), "v": jnp.array([-0.2, 0.3])}

    def loss(y0, a, adjoint="checkpoint"):
        sol = odelab.solve(term, y0, ts, a, solver=solver, steps=16, adjoint=adjoint)
        return jnp.sum(sol.ys["u"] ** 2) + jnp.sum(sol.ys["v"])

    check_grad(lambda y: loss(y, 0.7), y0)
    check_grad(lambda a: loss(y0, a), 0.7)
    g_direct = jax.grad(loss, 1)(y0, 0.7, "direct")
    np.testing.assert_allclose(g_direct, jax.grad(loss, 1)(y0, 0.7), rtol=1e-12)
    batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), y0)
    out = jax.vmap(loss, in_axes=(0, None))(batch, 0.7)
    np.testing.assert_allclose(out[1], loss(jax.tree.map(lambda x: 2 * x, y0), 0.7))


def test_errors_are_clear():
    y0 = jnp.ones(3)
    ts = jnp.array([0.0, 1.0])
    with pytest.raises(TypeError, match="SemilinearTerm"):
        odelab.solve(lambda t, y, a: -y, y0, ts, None, solver="etdrk4", steps=4)
    with pytest.raises(TypeError, match="SemilinearTerm"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -y), ETDRK4(), 0.0, 1.0, 0.1, y0
        )
    bad = SemilinearTerm(jnp.ones(4), lambda t, y, a: y)
    with pytest.raises(ValueError, match=r"shape \(4,\).*state's shape \(3,\)"):
        odelab.solve(bad, y0, ts, None, solver="etdrk4", steps=4)
    dense = SemilinearTerm(jnp.eye(2), lambda t, y, a: y)
    with pytest.raises(ValueError, match="1-D state of length 2"):
        odelab.solve(dense, y0, ts, None, solver="etdrk4", steps=4)
    with pytest.raises(ValueError, match="square matrix"):
        SemilinearTerm(jnp.ones((2, 3)), lambda t, y, a: y, kind="dense")


def test_semilinear_term_works_with_ordinary_solvers():
    # Its vf is L y + N: Tsit5 and the exponential integrator agree on a mild problem.
    term = SemilinearTerm(jnp.array([-1.0, -2.0]), lambda t, y, a: jnp.sin(y))
    y0, ts = jnp.array([1.0, 0.5]), jnp.linspace(0.0, 1.0, 3)
    a = odelab.solve(term, y0, ts, None, solver="tsit5", rtol=1e-7, atol=1e-7)
    b = odelab.solve(term, y0, ts, None, solver="etdrk4", steps=64)
    np.testing.assert_allclose(a.ys, b.ys, rtol=1e-5, atol=1e-6)


@pytest.mark.x64
def test_cached_coefficients_follow_a_changing_step():
    # The φ-functions are cached per step size; on a non-uniform grid every step
    # must use its own. Compare with one-step solves chained by hand.
    term = _term("diagonal")
    grid = [0.0, 0.1, 0.3, 0.35, 1.0]
    sol = diffrax.diffeqsolve(
        term,
        ETDRK4(),
        0.0,
        1.0,
        None,
        _exact(0.0),
        None,
        stepsize_controller=diffrax.StepTo(ts=jnp.asarray(grid)),
    )
    y = _exact(0.0)
    for a, b in zip(grid, grid[1:]):
        y = diffrax.diffeqsolve(term, ETDRK4(), a, b, b - a, y, None).ys[-1]
    np.testing.assert_allclose(sol.ys[-1], y, rtol=1e-14)


def test_bench_rows_and_summary(tmp_path):
    from odelab.bench import exponential

    payload = exponential.run(
        repeats=1,
        out_dir=str(tmp_path),
        peers=False,
        fixed={"etdrk4": (100, 200)},
        adaptive={"tsit5": (1e-5, 1e-7)},
        plot=False,
    )
    rows = payload["rows"]
    assert [r["solver"] for r in rows] == ["etdrk4", "etdrk4", "tsit5", "tsit5"]
    # ETDRK4 is fourth order on KS: halving the step cuts the error ~16x.
    assert rows[0]["error"] / rows[1]["error"] > 8
    assert payload["summary"]["best_odelab"] > 0


@pytest.mark.x64
@pytest.mark.parametrize("kind", list(_LINEAR))
@pytest.mark.parametrize("order", [2, 3])
def test_exponential_adams_order(order, kind):
    term = _term(kind)
    counts = np.asarray([20, 40, 80, 160])

    @jax.jit
    def final(dt):
        sol = diffrax.diffeqsolve(
            term, ExponentialAdams(order), 0.0, 1.0, dt, _exact(0.0), None
        )
        return sol.ys[-1]

    measured, _ = convergence_order(lambda n: final(1.0 / n), _exact(1.0), counts)
    assert abs(measured - order) <= ORDER_SLACK, measured


@pytest.mark.x64
@pytest.mark.parametrize("order", [2, 3])
def test_exponential_adams_variable_steps(order):
    # A smoothly non-uniform grid: the step-ratio formulas keep the order.
    def final(n):
        base = np.linspace(0.0, 1.0, n + 1)
        grid = base + 0.27 * np.sin(np.pi * base) / n
        sol = diffrax.diffeqsolve(
            _term("diagonal"),
            ExponentialAdams(order),
            0.0,
            1.0,
            None,
            _exact(0.0),
            None,
            stepsize_controller=diffrax.StepTo(ts=jnp.asarray(grid)),
        )
        return sol.ys[-1]

    measured, _ = convergence_order(final, _exact(1.0), np.asarray([20, 40, 80, 160]))
    assert abs(measured - order) <= ORDER_SLACK, measured


@pytest.mark.x64
def test_exponential_adams_is_adams_bashforth_when_l_is_zero():
    # After the ETDRK4 start, AB2: y_{n+1} = y_n + h (3/2 N_n - 1/2 N_{n-1}).
    def nonlinear(t, y, args):
        return jnp.stack([jnp.sin(t) * y[1], -(y[0] ** 3)])

    h, y0 = 0.1, jnp.array([0.3, -1.2])
    sol = diffrax.diffeqsolve(
        SemilinearTerm(0.0, nonlinear),
        ExponentialAdams(2),
        0.0,
        0.4,
        h,
        y0,
        None,
        saveat=diffrax.SaveAt(steps=True),
    )
    ys = np.asarray(sol.ys[:4])
    prev = np.asarray(nonlinear(0.0, y0, None))
    for n in range(1, 3):
        n_now = np.asarray(nonlinear(n * h, ys[n - 1], None))
        expected = ys[n - 1] + h * (1.5 * n_now - 0.5 * prev)
        np.testing.assert_allclose(ys[n], expected, rtol=1e-13)
        prev = n_now


@pytest.mark.x64
def test_etdrk2_adapts_its_steps():
    errors, steps = [], []
    for tol in (1e-4, 1e-6):
        sol = odelab.solve(
            _term("dense"), _exact(0.0), jnp.array([0.0, 1.0]), None,
            solver="etdrk2", rtol=tol, atol=tol,
        )  # fmt: skip
        errors.append(float(jnp.max(jnp.abs(sol.ys[-1] - _exact(1.0)))))
        steps.append(int(sol.stats["num_steps"]))
    assert errors[1] < errors[0] / 30 and steps[1] > steps[0]
    assert errors[1] < 1e-5
