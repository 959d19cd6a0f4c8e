"""HeavyBall and GHVB: measured orders on uniform and variable grids, the β = 1 and
order-1 reductions, the paper's weights, stability on y' = λy, gradients, jit/vmap,
errors, and sampling through `odelab.diffusion.sample`."""

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import VPLinear
from odelab.diffusion.analytic import GaussianMixture, gaussian_flow_map
from odelab.diffusion.sampling import sample
from odelab.solvers import GHVB, HeavyBall
from tests.helpers import (
    ORDER_SLACK,
    check_grad,
    convergence_order,
    count_traces,
    estimate_order,
    roundoff_tol,
)


# A horizon where no error component cancels (at T = 3 the b-component's error does).
T = 1.5


def _vf(t, y, args):
    # Non-autonomous, a dict pytree, with the closed form below.
    del args
    return {"a": jnp.cos(t) * y["a"], "b": -2.0 * t * y["b"]}


def _exact(t):
    t = jnp.asarray(t, jnp.float64)
    return {"a": jnp.exp(jnp.sin(t)), "b": jnp.exp(-(t**2))}


_TERM = diffrax.ODETerm(_vf)


def _grid(n, warp):
    """$t_i = T(s + w s^2)/(1 + w)$, $s = i/n$: uniform for $w = 0$, steps growing
    threefold across the interval for $w = 1$."""
    s = np.arange(n + 1) / n
    return T * (s + warp * s * s) / (1.0 + warp)


@eqx.filter_jit
def _final(solver, n, warp=0.0):
    """`(y_n, y_{n-1}, state)` after `n` steps on `_grid(n, warp)`, with `n` traced
    (one compilation per solver)."""
    n = jnp.asarray(n)

    def time(i):
        s = jnp.asarray(i, jnp.float64) / n.astype(jnp.float64)
        return T * (s + warp * s * s) / (1.0 + warp)

    y0 = _exact(0.0)

    def body(i, carry):
        y, _, state = carry
        y1, _, _, state, _ = solver.step(
            _TERM, time(i), time(i + 1), y, None, state, False
        )
        return y1, y, state

    state = solver.init(_TERM, time(0), time(1), y0, None)
    return jax.lax.fori_loop(0, n.astype(jnp.int32), body, (y0, y0, state))


def _order(solver, counts=(20, 40, 80, 160), warp=0.0):
    measured, _ = convergence_order(
        lambda n: _final(solver, jnp.asarray(n), warp)[0],
        _exact(T),
        np.asarray(counts),
    )
    return measured


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, order",
    [
        (GHVB(1, 0.5), 1),  # Heavy Ball on Euler
        (GHVB(2, 0.5, start="rk4"), 2),
        (GHVB(3, 0.5, start="rk4"), 3),
        (GHVB(4, 0.5, start="rk4"), 4),
        (HeavyBall(4, 0.5, start="rk4"), 1),  # the paper's theorem: first order
        (HeavyBall(2, 0.8), 1),
    ],
    ids=repr,
)
def test_convergence_order(solver, order):
    measured = _order(solver)
    assert abs(measured - order) <= ORDER_SLACK, measured
    assert solver.order(_TERM) == order


@pytest.mark.x64
def test_lower_order_start_caps_the_order_at_two():
    # The warm-up's first (Euler) step has an O(h^2) local error that stays.
    measured = _order(GHVB(3, 0.5))
    assert abs(measured - 2) <= ORDER_SLACK, measured


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, order",
    [(GHVB(3, 0.5, start="rk4"), 3), (HeavyBall(3, 1.0, start="rk4"), 3)],
    ids=repr,
)
def test_variable_steps_keep_the_order(solver, order):
    measured = _order(solver, counts=(20, 40, 80), warp=1.0)
    assert abs(measured - order) <= ORDER_SLACK, measured


def _reference(ts, increment):
    """`y` at `ts[-1]` from `y_{n+1} = y_n + h_n increment(n, h_n, [f_n, f_{n-1},
    ...])`, in NumPy."""
    y = {k: np.asarray(v) for k, v in _exact(0.0).items()}
    fs = []
    for n in range(len(ts) - 1):
        h = ts[n + 1] - ts[n]
        fs.insert(0, {k: np.asarray(v) for k, v in _vf(ts[n], y, None).items()})
        inc = increment(n, h, fs)
        y = {k: y[k] + h * inc[k] for k in y}
    return y


def _weighted(weights, fs):
    return {k: sum(w * f[k] for w, f in zip(weights, fs)) for k in fs[0]}


def _assert_close(got, expected, tol):
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=tol, atol=tol)


_AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12]}
_AB[4] = [55 / 24, -59 / 24, 37 / 24, -9 / 24]
_N = 12
_TOL = roundoff_tol(jnp.float64, 10 * _N)


@pytest.mark.x64
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_beta_one_is_adams_bashforth(order):
    # PLMS's weights on a uniform grid, with its lower-order warm-up; order 1: Euler.
    expected = _reference(
        _grid(_N, 0.0), lambda n, h, fs: _weighted(_AB[min(order, n + 1)], fs)
    )
    for solver in (GHVB(order, 1.0), HeavyBall(order, 1.0)):
        _assert_close(_final(solver, _N)[0], expected, _TOL)
    if order == 1:
        euler = _final(diffrax.Euler(), _N)[0]
        _assert_close(_final(GHVB(1, 1.0), _N)[0], euler, 0.0)


@pytest.mark.x64
def test_beta_one_on_a_variable_grid_is_variable_step_adams_bashforth():
    # AB2 with step ratio r = h_n / h_{n-1}: (1 + r/2) f_n - (r/2) f_{n-1}.
    ts = _grid(_N, 1.0)

    def ab2(n, h, fs):
        if n == 0:
            return fs[0]
        r = h / (ts[n] - ts[n - 1])
        return _weighted([1 + r / 2, -r / 2], fs)

    _assert_close(_final(GHVB(2, 1.0), _N, 1.0)[0], _reference(ts, ab2), _TOL)


@pytest.mark.x64
def test_heavy_ball_on_euler_is_the_papers_recurrence_on_any_grid():
    # v_{n+1} = (1 - β) v_n + β f_n, y_{n+1} = y_n + h_n v_{n+1}, v_0 = f_0.
    beta, velocity = 0.6, {}

    def hb(n, h, fs):
        for k in fs[0]:
            v = velocity.get(k, fs[0][k])
            velocity[k] = (1 - beta) * v + beta * fs[0][k]
        return dict(velocity)

    expected = _reference(_grid(_N, 1.0), hb)
    for solver in (HeavyBall(1, beta), GHVB(1, beta)):
        _assert_close(_final(solver, _N, 1.0)[0], expected, _TOL)


def _paper_weights(order, beta):
    """The paper's GHVB weights for a uniform grid (its closed forms over β)."""
    b = beta
    rows = {
        1: [b],
        2: [(2 + b) / 2, -(2 - b) / 2],
        3: [(18 + 5 * b) / 12, -(24 - 8 * b) / 12, (6 - b) / 12],
        4: [(46 + 9 * b) / 24, -(78 - 19 * b) / 24, (42 - 5 * b) / 24, -(10 - b) / 24],
    }
    return np.asarray(rows[order]) / b


@pytest.mark.x64
@pytest.mark.parametrize("order", [3, 4])
def test_uniform_grid_weights_tend_to_the_papers(order):
    # After n steps the exact moments differ from the stationary ones by (1-β)^n.
    beta, n = 0.5, 60
    y, y_prev, state = _final(GHVB(order, beta), n)
    velocities = state[0]
    paper = _weighted(_paper_weights(order, beta), velocities)
    slope = {k: (y[k] - y_prev[k]) / (T / n) for k in y}
    _assert_close(slope, paper, 1e-10)


def test_papers_constant_weights_lose_the_order_at_the_start():
    # The paper's closed-form weights assume a velocity average that has run forever;
    # with v_0 = f_0 they are second order even after an exact RK4 start, where the
    # exact moments (test_convergence_order) give order 3.
    order, beta = 3, 0.5
    weights = _paper_weights(order, beta)

    def f(t, y):
        return np.array([np.cos(t) * y[0], -2.0 * t * y[1]])

    def rk4(t, y, h):
        k1 = f(t, y)
        k2 = f(t + h / 2, y + h / 2 * k1)
        k3 = f(t + h / 2, y + h / 2 * k2)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(t + h, y + h * k3))

    def paper(n):
        h, y, vs = T / n, np.ones(2), []
        for i in range(n):
            fi = f(i * h, y)
            vs.insert(0, fi if not vs else (1 - beta) * vs[0] + beta * fi)
            y = rk4(i * h, y, h) if i < order - 1 else y + h * (weights @ vs[:order])
        return y

    exact = np.array([np.exp(np.sin(T)), np.exp(-(T**2))])
    counts = np.array([20, 40, 80, 160])
    errors = [np.max(np.abs(paper(n) - exact)) for n in counts]
    assert abs(estimate_order(errors, 1.0 / counts) - 2) <= ORDER_SLACK


def _spectral_radius(weights, beta, z):
    r"""Of the constant-weight recurrence on y' = λy, z = hλ: eliminating v,
    $y_{n+1} - (2-β) y_n + (1-β) y_{n-1} = β z \sum_i w_i y_{n-i}$."""
    poly = np.zeros(max(len(weights), 2) + 1)
    poly[:3] += [1.0, -(2 - beta), 1 - beta]
    poly[1 : 1 + len(weights)] -= beta * z * np.asarray(weights)
    return float(np.max(np.abs(np.roots(poly))))


@eqx.filter_jit
def _linear(solver, h, n):
    """`(|y_n|, spectral radius of the solver's step map)` on y' = -y, step `h`."""
    term = diffrax.ODETerm(lambda t, y, args: -y)

    def step(carry, i):
        y, state = carry
        t0 = h * i.astype(h.dtype)
        y, _, _, state, _ = solver.step(term, t0, t0 + h, y, None, state, False)
        return (y, state), None

    y0 = jnp.asarray(1.0, h.dtype)
    init = (y0, solver.init(term, 0.0 * h, h, y0, None))
    y, state = jax.lax.scan(step, init, jnp.arange(n))[0]
    items, moments, velocity, h_prev, count = state
    flat, unravel = jax.flatten_util.ravel_pytree((y, items, velocity))

    def step_map(flat):
        y, items, velocity = unravel(flat)
        state_ = (items, moments, velocity, h_prev, count)
        t0 = h * n
        y1, _, _, s1, _ = solver.step(term, t0, t0 + h, y, None, state_, False)
        return jax.flatten_util.ravel_pytree((y1, s1[0], s1[2]))[0]

    return jnp.abs(y), jnp.max(
        jnp.abs(jnp.linalg.eigvals(jax.jacobian(step_map)(flat)))
    )


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, z, weights",
    [
        (HeavyBall(4, 1.0), -0.5, _AB[4]),  # PLMS: unstable (its interval is -0.3)
        (HeavyBall(4, 0.5), -0.5, _AB[4]),  # with momentum: stable down to -0.9
        (GHVB(4, 0.5), -0.4, _paper_weights(4, 0.5)),  # stable down to -0.43
    ],
    ids=repr,
)
def test_momentum_enlarges_the_stability_region(solver, z, weights):
    # The solver's own step map on y' = λy (its Jacobian, after the start-up) has
    # the spectral radius of the paper's constant-weight recurrence; 100 steps
    # of PLMS blow up where the momentum methods decay.
    magnitude, radius = _linear(solver, jnp.asarray(-z), 100)
    expected = _spectral_radius(weights, solver.beta, z)
    np.testing.assert_allclose(radius, expected, rtol=1e-8)
    if solver.beta == 1.0:
        assert expected > 1 and magnitude > 1e6
    else:
        assert expected < 1 and magnitude < 1e-2
        # PLMS (β = 1) itself is unstable at this z.
        assert _spectral_radius(_AB[4], 1.0, z) > 1


@pytest.mark.x64
def test_gradients_match_finite_differences():
    solver = GHVB(3, 0.7)

    @jax.jit
    def loss(inputs):
        y0, rate = inputs

        def vf(t, y, args):
            return jax.tree.map(lambda a, b: args * a + b, y, _vf(t, y, None))

        sol = diffrax.diffeqsolve(diffrax.ODETerm(vf), solver, 0.0, 1.0, 0.1, y0, rate)
        return sum(jnp.sum(v[-1] ** 2) for v in sol.ys.values())

    check_grad(loss, (_exact(0.3), jnp.asarray(-0.4)))


@pytest.mark.x64
def test_jit_vmap_and_no_recompile():
    solver = HeavyBall(3, 0.6)

    @count_traces
    def solve(y0, dt):
        sol = diffrax.diffeqsolve(_TERM, solver, 0.0, 1.0, dt, y0, None)
        return jax.tree.map(lambda v: v[-1], sol.ys)

    batched = jax.jit(jax.vmap(solve, in_axes=(0, None)))
    y0 = {"a": jnp.asarray([1.0, 2.0, 0.5]), "b": jnp.asarray([1.0, -1.0, 3.0])}
    out = batched(y0, 0.05)
    batched(y0, 0.04)
    assert solve.num_traces == 1
    one = solve({"a": y0["a"][1], "b": y0["b"][1]}, 0.05)
    for k in out:
        np.testing.assert_allclose(out[k][1], one[k], rtol=1e-12)


def test_errors_are_clear():
    for bad in (0, 5, 2.5, True):
        with pytest.raises(ValueError, match="`order` must be 1, 2, 3 or 4"):
            GHVB(bad, 0.5)
    for bad in (0.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=r"`beta` must be in \(0, 1\]"):
            HeavyBall(2, bad)
    with pytest.raises(ValueError, match="`start`"):
        GHVB(2, 0.5, start="euler")
    sched = VPLinear()
    with pytest.raises(ValueError, match="`beta`"):
        sample(
            lambda x, t: x,
            jnp.ones(2),
            sched,
            sampler="momentum",
            sampler_options=dict(beta=2.0),
        )
    assert GHVB(2, 0.5).nfe_costs() == (0, 1, 1)
    assert GHVB(2, 0.5, start="rk4").nfe_costs() == (0, 4, 1)


@pytest.mark.x64
def test_sampling_error_falls_with_steps_and_hb_at_beta_one_is_ddim():
    sched = VPLinear()
    mix = GaussianMixture(jnp.array([[1.0, -2.0]]), 0.5)
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    x_t = jnp.array([0.3, 0.9]) * sched.sigma(sched.t_max)
    exact = gaussian_flow_map(mix, x_t, sched.t_max, sched.t_min, sched)
    # The warm-up's Euler step over the first, widest step in σ̄ dominates below ~40
    # steps (local slopes 1.5, 1.7, 1.9, 1.9 from 10 to 160 steps).
    counts = np.array([40, 80, 160])
    errors = [
        float(
            jnp.max(
                jnp.abs(sample(model, x_t, sched, sampler="momentum", steps=n) - exact)
            )
        )
        for n in counts
    ]
    assert errors[0] > errors[1] > errors[2]
    # GHVB(2) with the paper's warm-up: second order (module notes).
    assert abs(estimate_order(errors, 1.0 / counts) - 2) <= ORDER_SLACK
    ddim = sample(model, x_t, sched, sampler="ddim", steps=10)
    hb = sample(
        model,
        x_t,
        sched,
        sampler="hb",
        steps=10,
        sampler_options=dict(order=1, beta=1.0),
    )
    np.testing.assert_allclose(hb, ddim, rtol=1e-12, atol=1e-12)
