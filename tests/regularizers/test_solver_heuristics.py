"""Tests of `odelab.regularizers.solver_heuristics`."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.regularizers import (
    HeuristicsSolver,
    solve_with_heuristics,
    step_heuristics,
)


def _mlp_field(t, y, mlp):
    return mlp(y)


def _manual_sums(field, y0, t1, args, rtol, atol):
    # The accepted steps of the same adaptive solve, stepped again one by one.
    term = diffrax.ODETerm(field)
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Tsit5(),
        0.0,
        t1,
        None,
        y0,
        args,
        saveat=diffrax.SaveAt(steps=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
    )
    n = int(sol.stats["num_accepted_steps"])
    ts = np.concatenate([[0.0], np.asarray(sol.ts[:n])])
    ys = jnp.concatenate([y0[None], sol.ys[:n]])
    solver, error, stiffness = diffrax.Tsit5(), 0.0, 0.0
    for j in range(n):
        state = solver.init(term, ts[j], ts[j + 1], ys[j], args)
        y1, y_err, dense, _, _ = solver.step(
            term, ts[j], ts[j + 1], ys[j], args, state, False
        )
        e, s = step_heuristics(solver.tableau, ys[j], y1, y_err, dense["k"], rtol, atol)
        error += float(e) * (ts[j + 1] - ts[j])
        stiffness += float(s)
    return error, stiffness, n


@pytest.mark.x64
def test_sums_equal_a_manual_stepping_loop():
    mlp = eqx.nn.MLP(2, 2, 16, 2, activation=jnp.tanh, key=jax.random.key(0))
    y0 = jnp.array([1.0, -0.5])
    rtol, atol = 1e-6, 1e-8
    _, h = solve_with_heuristics(
        _mlp_field, y0, jnp.linspace(0.0, 3.0, 4), mlp, rtol=rtol, atol=atol
    )
    error, stiffness, n = _manual_sums(_mlp_field, y0, 3.0, mlp, rtol, atol)
    assert int(h.steps) == n
    np.testing.assert_allclose(float(h.error), error, rtol=1e-10)
    np.testing.assert_allclose(float(h.stiffness), stiffness, rtol=1e-10)


@pytest.mark.x64
def test_stiffness_of_a_linear_problem_is_its_eigenvalue_times_the_span():
    # y' = -p y: every step's estimate of h|lambda| is exactly h p.
    sol, h = solve_with_heuristics(
        lambda t, y, p: -p * y, jnp.ones(3), jnp.array([0.0, 2.0]), 40.0, rtol=1e-8
    )
    np.testing.assert_allclose(float(h.stiffness), 80.0, rtol=1e-10)
    assert sol.ys.shape == (2, 3)
    grad = jax.grad(
        lambda p: (
            solve_with_heuristics(
                lambda t, y, q: -q * y, jnp.ones(3), jnp.array([0.0, 2.0]), p, rtol=1e-8
            )[1].stiffness
        )
    )(40.0)
    np.testing.assert_allclose(float(grad), 2.0, rtol=1e-8)


@pytest.mark.x64
def test_gradient_equals_the_manual_loops_gradient():
    # The step sizes carry no gradient (diffrax stops it at the controller): the
    # wrapper's gradient must be that of the same per-step sums on the accepted grid.
    # (Finite differences are no reference here: both estimates are differences of
    # stages that cancel to about rtol |y|, which amplifies their round-off by
    # 1/rtol; at rtol 1e-3 they disagree with any gradient in the sixth digit. The
    # linear test above checks a gradient against its closed form.)
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(1))
    y0 = jnp.array([0.7, 0.2])
    term = diffrax.ODETerm(_mlp_field)
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Tsit5(),
        0.0,
        2.0,
        None,
        y0,
        mlp,
        saveat=diffrax.SaveAt(steps=True),
        stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-4),
    )
    n = int(sol.stats["num_accepted_steps"])
    grid = jnp.concatenate([jnp.zeros(1), sol.ts[:n]])

    def wrapped(m):
        out = diffrax.diffeqsolve(
            term,
            HeuristicsSolver("tsit5", 1e-3, 1e-4),
            0.0,
            2.0,
            None,
            y0,
            m,
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
            stepsize_controller=diffrax.StepTo(grid),
        )
        sums = out.solver_state[1]
        return jnp.stack([sums.error, sums.stiffness])

    def manual(m):
        solver, y, error, stiffness = diffrax.Tsit5(), y0, 0.0, 0.0
        for j in range(n):
            t0, t1 = grid[j], grid[j + 1]
            state = solver.init(term, t0, t1, y, m)
            y1, y_err, dense, _, _ = solver.step(term, t0, t1, y, m, state, False)
            e, s = step_heuristics(solver.tableau, y, y1, y_err, dense["k"], 1e-3, 1e-4)
            error, stiffness = error + e * (t1 - t0), stiffness + s
            y = y1
        return jnp.stack([error, stiffness])

    np.testing.assert_allclose(
        np.asarray(wrapped(mlp)), np.asarray(manual(mlp)), rtol=1e-12
    )
    # Both sums' gradients at once (one reverse-mode program each side; CI time).
    ga = jax.tree_util.tree_leaves(eqx.filter_jacrev(wrapped)(mlp))
    gb = jax.tree_util.tree_leaves(eqx.filter_jacrev(manual)(mlp))
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="error estimate"):
        HeuristicsSolver("rk4")
    with pytest.raises(ValueError, match="`key=`"):
        solve_with_heuristics(
            lambda t, y, a: -y,
            jnp.ones(2),
            jnp.array([0.0, 1.0]),
            diffusion=lambda t, y, a: y,
            dt0=0.1,
        )
    with pytest.raises(ValueError, match="discrete adjoints"):
        solve_with_heuristics(
            lambda t, y, a: -y, jnp.ones(2), jnp.array([0.0, 1.0]), adjoint="backsolve"
        )


def test_under_vmap_and_jit():
    def f(p):
        return solve_with_heuristics(
            lambda t, y, q: -q * y, jnp.ones(2), jnp.array([0.0, 1.0]), p
        )[1].stiffness

    out = jax.jit(jax.vmap(f))(jnp.array([1.0, 10.0, 100.0]))
    assert np.all(np.diff(np.asarray(out)) > 0)


@pytest.mark.x64
@pytest.mark.parametrize("solver", ["heun", "bosh3", "dopri5"])
def test_stage_quotient_is_h_lambda_for_any_pair(solver):
    # For y' = -p y the last two stages differ by h(-p) times their states' difference,
    # whether or not they sit at the same time: R_S = p T exactly.
    _, h = solve_with_heuristics(
        lambda t, y, p: -p * y,
        jnp.ones(2),
        jnp.array([0.0, 2.0]),
        5.0,
        solver=solver,
        rtol=1e-6,
    )
    np.testing.assert_allclose(float(h.stiffness), 10.0, rtol=1e-10)


@pytest.mark.x64
def test_sde_heuristics(key):
    drift = lambda t, y, a: -a[0] * y
    ts = jnp.array([0.0, 1.0])
    # Without noise the stage quotient of y' = -p y is h p on every step (the SDE's
    # error order gives other steps than an ODE solve): R_S = p T.
    sol, sde = solve_with_heuristics(
        drift,
        jnp.ones(2),
        ts,
        (2.0, 0.0),
        diffusion=lambda t, y, a: a[1] * y,
        key=key,
        dt0=0.1,
    )
    np.testing.assert_allclose(float(sde.stiffness), 2.0, rtol=1e-10)
    assert int(sol.stats["nfe"]) > 0

    # With noise the estimate is differentiable in the diffusion's parameters (discrete adjoint) and batched by vmap.
    def error(a, k):
        return solve_with_heuristics(
            drift,
            jnp.ones(2),
            ts,
            a,
            diffusion=lambda t, y, a: a[1] * y,
            key=k,
            dt0=0.1,
        )[1].error

    assert float(error((2.0, 0.5), key)) > 0
    grad = jax.grad(error)((2.0, 0.5), key)
    assert np.isfinite(float(grad[1])) and float(grad[1]) != 0
    many = jax.vmap(lambda k: error((2.0, 0.5), k))(jax.random.split(key, 4))
    assert many.shape == (4,) and len(set(np.asarray(many).tolist())) == 4
