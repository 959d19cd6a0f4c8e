"""Tests of `odelab.adjoints.InterpolatingAdjoint` and `QuadratureAdjoint`."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import odelab
from odelab.adjoints import InterpolatingAdjoint, QuadratureAdjoint
from odelab.bench import adjoints as bench_adjoints


pytestmark = pytest.mark.x64


def _field(t, y, mlp):
    return mlp(y) * (1 + 0.1 * jnp.sin(t))


def _loss(mlp, y0, adjoint, tol, saveat):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        diffrax.Tsit5(),
        0.0,
        1.0,
        None,
        y0,
        mlp,
        saveat=saveat,
        adjoint=adjoint,
        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
        max_steps=2000,
    )
    weights = jnp.arange(1, sol.ys.size + 1, dtype=sol.ys.dtype).reshape(sol.ys.shape)
    return jnp.sum(weights * sol.ys**2)


def _rel(a, b):
    la = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb))
    return num / max(float(jnp.max(jnp.abs(y))) for y in lb)


@pytest.mark.parametrize("adjoint", [InterpolatingAdjoint(), QuadratureAdjoint()])
@pytest.mark.parametrize("saveat", ["ts", "t0_t1"])
def test_converges_to_the_exact_gradient(adjoint, saveat):
    mlp = eqx.nn.MLP(2, 2, 16, 2, activation=jnp.tanh, key=jax.random.key(0))
    y0 = jnp.array([0.5, -0.3])
    make = {
        "ts": lambda: diffrax.SaveAt(ts=jnp.linspace(0.0, 1.0, 7)),
        "t0_t1": lambda: diffrax.SaveAt(t0=True, t1=True),
    }[saveat]

    # One compiled gradient per adjoint, in (weights, y0) together, with the
    # tolerance traced: four tolerances cost two compilations, not eight.
    @eqx.filter_jit
    def grads(adjoint, tol):
        return eqx.filter_grad(lambda p: _loss(p[0], p[1], adjoint, tol, make()))(
            (mlp, y0)
        )

    exact, exact_y = grads(diffrax.RecursiveCheckpointAdjoint(), jnp.asarray(1e-12))
    errors = []
    for tol in (1e-4, 1e-7, 1e-10):
        g, gy = grads(adjoint, jnp.asarray(tol))
        errors.append(max(_rel(g, exact), _rel(gy, exact_y)))
    assert errors[-1] <= 1e-8, errors
    assert errors[-1] < errors[0] / 100, errors


def test_solve_front_door_and_pytree_args():
    def field(t, y, a):
        return -a["k"] * y + jnp.sin(a["w"] * t)

    def loss(a, adjoint):
        sol = odelab.solve(
            field,
            jnp.array([1.0, 2.0]),
            jnp.linspace(0.0, 2.0, 5),
            a,
            rtol=1e-10,
            atol=1e-10,
            adjoint=adjoint,
        )
        return jnp.sum(sol.ys**2)

    a = {"k": jnp.array([0.5, 1.5]), "w": jnp.asarray(3.0)}
    ref = jax.grad(loss)(a, "checkpoint")
    for adjoint in (InterpolatingAdjoint(), QuadratureAdjoint()):
        assert _rel(jax.grad(loss)(a, adjoint), ref) <= 1e-7


def test_beats_backsolve_where_backsolve_is_poor():
    # Lorenz over t in [0, 2]: the backward-integrated y of BacksolveAdjoint drifts
    # off the attractor; reading y from the forward solution does not (issue #4:
    # >= 100x smaller error at the same tolerances).
    (row,) = bench_adjoints.continuous(tols=(1e-6,), cases=(("lorenz", 2.0),))
    assert row["interpolating"] <= 1e-4
    assert row["backsolve/interpolating"] >= 100, row
