"""Tests of `odelab.solvers.Anderson` (Anderson acceleration for optimistix)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

from odelab.solvers import Anderson


def _linear_contraction(n=40, rate=0.95):
    # z = A z + b with A symmetric, eigenvalues spread over [0, rate].
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (n, n)))
    a = (q * jnp.linspace(0.0, rate, n)[None, :]) @ q.T
    b = jax.random.normal(jax.random.key(1), (n,))
    return a, b


@pytest.mark.x64
def test_converges_in_fewer_steps_than_fixed_point_iteration():
    a, b = _linear_contraction()
    fn = lambda z, args: args[0] @ z + args[1]  # noqa: E731
    exact = jnp.linalg.solve(jnp.eye(40) - a, b)
    steps = {}
    for name, solver in (
        ("iteration", optx.FixedPointIteration(1e-10, 1e-10)),
        ("anderson", Anderson(1e-10, 1e-10, memory=5)),
    ):
        sol = optx.fixed_point(fn, solver, jnp.zeros(40), (a, b), max_steps=2000)
        np.testing.assert_allclose(np.asarray(sol.value), np.asarray(exact), atol=1e-8)
        steps[name] = int(sol.stats["num_steps"])
        assert int(sol.state.fallbacks if name == "anderson" else 0) == 0
    # Fixed-point iteration needs log(1e-10)/log(0.95) ~ 450 steps; Anderson(5) is a
    # restarted Krylov method on this spectrum.
    assert steps["anderson"] < steps["iteration"] / 4, steps


@pytest.mark.x64
def test_nonlinear_map_under_jit_and_vmap():
    fn = lambda z, c: jnp.cos(c * z)  # noqa: E731
    solve = jax.jit(
        jax.vmap(lambda c: optx.fixed_point(fn, Anderson(1e-12, 1e-12), 0.0, c).value)
    )
    cs = jnp.array([0.5, 1.0, 1.2])
    z = solve(cs)
    np.testing.assert_allclose(np.asarray(jnp.cos(cs * z)), np.asarray(z), atol=1e-11)


def test_never_passes_a_nonfinite_state_on():
    # log(z) leaves its domain on the second step: the solve stops with `nonfinite`
    # (raised with throw=True) instead of iterating on NaN.
    fn = lambda z, _: jnp.log(z)  # noqa: E731
    with pytest.raises(eqx.EquinoxRuntimeError, match="[Nn]onfinite"):
        optx.fixed_point(fn, Anderson(1e-6, 1e-6), jnp.full(3, 0.5), max_steps=50)
    sol = optx.fixed_point(
        fn, Anderson(1e-6, 1e-6), jnp.full(3, 0.5), max_steps=50, throw=False
    )
    assert sol.result == optx.RESULTS.nonfinite
    # exp(z) + 1 > z has no fixed point: the least-squares mixing overflows on some
    # steps, which fall back to the plain image; the state stays finite and the
    # solve reports that it ran out of steps.
    sol = optx.fixed_point(
        lambda z, _: jnp.exp(z) + 1.0,
        Anderson(1e-6, 1e-6),
        jnp.ones(3),
        max_steps=50,
        throw=False,
    )
    assert sol.result == optx.RESULTS.nonlinear_max_steps_reached
    assert np.all(np.isfinite(np.asarray(sol.value)))
    assert int(sol.state.fallbacks) > 0


def test_errors():
    with pytest.raises(ValueError, match="memory"):
        Anderson(1e-6, 1e-6, memory=0)
    with pytest.raises(ValueError, match="mixing"):
        Anderson(1e-6, 1e-6, mixing=0.0)
    with pytest.raises(ValueError, match="same structure"):
        optx.fixed_point(lambda z, a: z[:2], Anderson(1e-6, 1e-6), jnp.ones(3))
