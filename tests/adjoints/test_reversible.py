"""Tests of `odelab.adjoints.ReversibleAdjoint`: exact gradients of the discretisation."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
from odelab.adjoints import ReversibleAdjoint
from odelab.bench import adjoints as bench_adjoints
from odelab.solvers import BDIA, EDICT, MALI, RK4, ReversibleHeun, ReversibleRK


def _mlp():
    return eqx.nn.MLP(2, 2, 16, 2, activation=jnp.tanh, key=jax.random.key(0))


def _field(t, y, mlp):
    return mlp(y) * (1 + 0.1 * jnp.sin(t))


def _rel(a, b):
    la = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb))
    return num / max(float(jnp.max(jnp.abs(y))) for y in lb)


def _loss(mlp, y0, solver, adjoint, saveat, controller, dt0=0.05):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        solver,
        0.0,
        1.0,
        dt0,
        y0,
        mlp,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=500,
    )
    weights = jnp.arange(1, sol.ys.size + 1, dtype=sol.ys.dtype).reshape(sol.ys.shape)
    return jnp.sum(weights * sol.ys**2)


SOLVERS = [
    ReversibleHeun(),
    BDIA(),
    BDIA(base=diffrax.Heun(), gamma=0.8),
    ReversibleRK(RK4()),
    MALI(),
    MALI(eta=0.9),
    EDICT(),
]
SAVEATS = {
    "ts": lambda: diffrax.SaveAt(ts=jnp.linspace(0.0, 1.0, 7)),
    "t0_t1": lambda: diffrax.SaveAt(t0=True, t1=True),
    "inner_ts_t1": lambda: diffrax.SaveAt(ts=jnp.array([0.13, 0.5, 0.71]), t1=True),
}


@pytest.mark.x64
@pytest.mark.parametrize("saveat", list(SAVEATS))
@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: repr(s)[:40])
def test_equals_checkpointed_backprop_fixed_steps(solver, saveat):
    mlp, y0 = _mlp(), jnp.array([0.5, -0.3])
    ctrl = diffrax.ConstantStepSize()
    grad = eqx.filter_grad(_loss)
    ref = grad(
        mlp, y0, solver, diffrax.RecursiveCheckpointAdjoint(), SAVEATS[saveat](), ctrl
    )
    got = grad(mlp, y0, solver, ReversibleAdjoint(), SAVEATS[saveat](), ctrl)
    assert _rel(got, ref) <= 1e-10
    gy = jax.grad(_loss, argnums=1)
    ref_y = gy(
        mlp, y0, solver, diffrax.RecursiveCheckpointAdjoint(), SAVEATS[saveat](), ctrl
    )
    got_y = gy(mlp, y0, solver, ReversibleAdjoint(), SAVEATS[saveat](), ctrl)
    assert _rel(got_y, ref_y) <= 1e-10


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver", [ReversibleHeun(), ReversibleRK(diffrax.Tsit5())], ids=repr
)
def test_equals_checkpointed_backprop_adaptive(solver):
    mlp, y0 = _mlp(), jnp.array([0.5, -0.3])
    ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-6)
    saveat = diffrax.SaveAt(ts=jnp.linspace(0.0, 1.0, 7))
    grad = eqx.filter_grad(_loss)
    ref = grad(mlp, y0, solver, diffrax.RecursiveCheckpointAdjoint(), saveat, ctrl)
    got = grad(mlp, y0, solver, ReversibleAdjoint(), saveat, ctrl)
    assert _rel(got, ref) <= 1e-10


@pytest.mark.x64
def test_solve_front_door_pytree_and_vmap():
    # Through odelab.solve (FixedGrid: nothing stored per step), a pytree state, a
    # gradient with respect to args, and vmap over y0.
    def field(t, y, a):
        return {"x": a * y["v"], "v": -a * y["x"]}

    def loss(y0, a, adjoint):
        sol = odelab.solve(
            field,
            y0,
            jnp.linspace(0.0, 1.0, 7),
            a,
            solver="reversible_heun",
            steps=30,
            adjoint=adjoint,
        )
        return jnp.sum(sol.ys["x"] ** 2) + jnp.sum(sol.ys["v"])

    y0 = {"x": jnp.array([1.0, 0.5]), "v": jnp.array([0.0, 0.2])}
    a = jnp.asarray(1.3)
    for argnums in (0, 1):
        ref = jax.grad(loss, argnums)(y0, a, "checkpoint")
        got = jax.grad(loss, argnums)(y0, a, "reversible")
        assert _rel(got, ref) <= 1e-10
    batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), y0)
    ref = jax.vmap(jax.grad(loss), in_axes=(0, None, None))(batch, a, "checkpoint")
    got = jax.vmap(jax.grad(loss), in_axes=(0, None, None))(batch, a, "reversible")
    assert _rel(got, ref) <= 1e-10


def test_non_reversible_solver_is_named():
    with pytest.raises(ValueError, match="algebraically reversible solver.*Tsit5"):
        jax.grad(
            lambda y: jnp.sum(
                odelab.solve(
                    _field,
                    y,
                    jnp.linspace(0.0, 1.0, 7),
                    _mlp(),
                    solver="tsit5",
                    steps=10,
                    adjoint="reversible",
                ).ys
            )
        )(jnp.array([0.5, -0.3]))


def test_memory_is_flat_in_the_step_count():
    # The compiled temporary memory of the gradient does not grow with N.
    mem = {}
    mlp, y0 = bench_adjoints._problem(0, jnp.float32)
    params, static = eqx.partition(mlp, eqx.is_array)
    for n in (100, 2000):
        grad = bench_adjoints._grad_fn(ReversibleHeun(), ReversibleAdjoint(), n)
        fn = jax.jit(lambda p, y, g=grad: g(p, y, static))
        mem[n] = fn.lower(params, y0).compile().memory_analysis().temp_size_in_bytes
    assert mem[2000] <= 1.01 * mem[100], mem


def test_bench_rows(tmp_path):
    payload = bench_adjoints.run(
        steps=(20, 40),
        repeats=1,
        out_dir=str(tmp_path),
        contenders=["diffrax_reversible_heun+checkpoint", "reversible_heun+reversible"],
        plot=False,
    )
    assert len(payload["rows"]) == 4
    assert all(np.isfinite(r["grad_rel_err"]) for r in payload["rows"])
    assert payload["rows"][1]["grad_rel_err"] <= 1e-4
    assert (tmp_path / "adjoints.json").exists()


@pytest.mark.x64
def test_sde_with_reversible_heun():
    # Stratonovich SDE, reversible Heun: the backward pass re-queries the same
    # VirtualBrownianTree increments, so the gradient equals checkpointed backprop
    # of the same discretisation and path.
    def drift(t, y, a):
        return -a["k"] * y + jnp.sin(y)

    def diffusion(t, y, a):
        return a["s"] * jnp.cos(y)

    y0 = jnp.array([0.5, -0.3, 1.0])
    a = {"k": jnp.asarray(1.3), "s": jnp.asarray(0.4)}

    def loss(y0, a, adjoint, steps=50):
        sol = odelab.solve_sde(
            drift, diffusion, y0, jnp.linspace(0.0, 1.0, 5), a,
            key=jax.random.key(0), solver="reversible_heun", steps=steps,
            adjoint=adjoint,
        )  # fmt: skip
        return jnp.sum(sol.ys**2)

    for argnums in (0, 1):
        ref = jax.grad(loss, argnums)(y0, a, "checkpoint")
        got = jax.grad(loss, argnums)(y0, a, "reversible")
        assert _rel(got, ref) <= 1e-10


def test_sde_needs_a_brownian_path_it_can_query_again():
    with pytest.raises(ValueError, match="VirtualBrownianTree"):
        jax.grad(
            lambda y: jnp.sum(
                odelab.solve_sde(
                    lambda t, y, a: -y,
                    lambda t, y, a: 0.1 * jnp.ones_like(y),
                    y,
                    jnp.linspace(0.0, 1.0, 3),
                    key=jax.random.key(0),
                    solver="reversible_heun",
                    steps=10,
                    brownian="unsafe",
                    adjoint="reversible",
                ).ys
            )
        )(jnp.ones(2))
