"""Tests of `ExponentialAdjoint` (AdjointDPM): convergence of its continuous gradients
to the exact gradient at the solver's order, on a generic semilinear problem (scalar
and diagonal L, both directions of time) and through diffusion sampling (gradients
with respect to x_T, the model's weights and the conditioning), the reductions it must
satisfy, and its errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.adjoints import ExponentialAdjoint
from odelab.diffusion import VPLinear
from odelab.diffusion.analytic import GaussianMixture
from odelab.diffusion.sampling import sample
from odelab.solvers import (
    ETDRK2,
    ETDRK4,
    ExponentialAdams,
    ExponentialEuler,
    ReversibleHeun,
)
from odelab.terms import SemilinearTerm
from tests.helpers import ORDER_SLACK, check_grad, estimate_order


def _loss(y0, theta, solver, adjoint, n, linear, span=(0.0, 1.0)):
    """Σ y(t1)² for dy/dt = L y + θ₀ sin(y) + θ₁ cos(t) on a uniform grid of n steps."""
    t0, t1 = span
    term = SemilinearTerm(
        linear, lambda t, y, args: args[0] * jnp.sin(y) + args[1] * jnp.cos(t)
    )
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        None,
        y0,
        theta,
        stepsize_controller=diffrax.StepTo(ts=jnp.linspace(t0, t1, n + 1)),
        adjoint=adjoint,
        max_steps=n + 1,
    )
    return jnp.sum(sol.ys[-1] ** 2)


def _max_error(g, ref):
    return max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref))
    )


_GRAD = jax.jit(jax.grad(_loss, argnums=(0, 1)), static_argnums=(2, 3, 4, 6))


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, order, kind, span",
    [
        # Scalar and diagonal L, forward and reverse time, orders 1 to 3: each
        # combination once (CI time; every case compiles four programs).
        (ExponentialEuler(), 1, "scalar", (0.0, 1.0)),
        (ETDRK2(), 2, "diagonal", (0.0, 1.0)),
        (ExponentialAdams(3), 3, "scalar", (1.0, 0.0)),
        (ExponentialAdams(3), 3, "diagonal", (1.0, 0.0)),
    ],
    ids=["etd1", "etdrk2-diagonal", "adams3-reverse", "adams3-diagonal-reverse"],
)
def test_gradient_converges_at_the_solver_order(solver, order, kind, span):
    y0 = jnp.array([0.3, -0.7, 1.1])
    theta = (jnp.asarray(0.8), jnp.asarray(0.5))
    linear = jnp.asarray(-2.0) if kind == "scalar" else jnp.array([-2.0, -0.5, -1.5])
    # The exact (continuous) gradient: checkpointed backpropagation through ETDRK4 at
    # 1000 steps, whose discretisation error (~1e-13) is far below the errors fitted.
    ref = _GRAD(
        y0, theta, ETDRK4(), diffrax.RecursiveCheckpointAdjoint(), 1000, linear, span
    )
    # Three step counts in the asymptotic range (third order is not yet at 10 steps).
    steps = (10, 20, 40) if order < 3 else (20, 40, 80)
    errors = [
        _max_error(_GRAD(y0, theta, solver, ExponentialAdjoint(), n, linear, span), ref)
        for n in steps
    ]
    measured = estimate_order(errors, [1.0 / n for n in steps])
    assert abs(measured - order) <= ORDER_SLACK, (measured, errors)


@pytest.mark.x64
def test_exact_for_a_linear_problem():
    # N = 0: the exponential integrator is exact for y and for a, so the adjoint's
    # gradient is exact at any step count: d/dy0 of Σ (e^{L} y0)² = 2 e^{2L} y0.
    linear = jnp.array([-2.0, 0.5])
    term = SemilinearTerm(linear, lambda t, y, args: jnp.zeros_like(y))

    def loss(y0):
        sol = diffrax.diffeqsolve(
            term,
            ExponentialEuler(),
            1.0,
            0.0,
            None,
            y0,
            None,
            stepsize_controller=diffrax.StepTo(ts=jnp.linspace(1.0, 0.0, 4)),
            adjoint=ExponentialAdjoint(),
            max_steps=4,
        )
        return jnp.sum(sol.ys[-1] ** 2)

    y0 = jnp.array([0.7, -1.3])
    np.testing.assert_allclose(
        jax.grad(loss)(y0), 2 * jnp.exp(-2 * linear) * y0, rtol=1e-13
    )


# Diffusion sampling: a mixture whose means are the "weights" of an eps-model, with a
# conditioning scale; the loss is a smooth function of the sample.


def _mixture():
    return GaussianMixture.random(
        jax.random.key(0), components=3, dim=2, dtype=jnp.float64
    )


def _sample_loss(x_t, means, scale, sampler, adjoint, steps):
    sched, mix = VPLinear(), _mixture()
    model_mix = GaussianMixture(means, mix.stds, mix.weights)

    def model(x, t, c):
        return c * model_mix.eps(x, t, sched)

    x = sample(
        model,
        x_t,
        sched,
        sampler=sampler,
        steps=steps,
        grid="logsnr",
        cond=(scale,),
        adjoint=adjoint,
    )
    return jnp.sum(jnp.sin(x))


_SAMPLE_GRAD = jax.jit(
    jax.grad(_sample_loss, argnums=(0, 1, 2)), static_argnums=(3, 4, 5)
)


@pytest.mark.x64
@pytest.mark.parametrize(
    "sampler, order",
    [("ddim", 1), ("dpmpp_2m", 2), ("exponential_adams3", 3), ("unipc", 3)],
)
def test_sampler_gradients_converge_to_the_continuous_gradient(sampler, order):
    x_t = jax.random.normal(jax.random.key(1), (2,), jnp.float64)
    means, scale = _mixture().means, jnp.asarray(1.1)
    ref = _SAMPLE_GRAD(x_t, means, scale, "etdrk4", "checkpoint", 400)
    # Third-order samplers are pre-asymptotic (faster than order 3) below ~40 steps.
    steps = (20, 40, 80) if order < 3 else (40, 80, 160)
    errors = [
        _max_error(_SAMPLE_GRAD(x_t, means, scale, sampler, "adjoint_dpm", n), ref)
        for n in steps
    ]
    measured = estimate_order(errors, [1.0 / n for n in steps])
    assert abs(measured - order) <= ORDER_SLACK, (measured, errors)
    assert errors[-1] < errors[0] / 2 ** (2 * order - 1)


@pytest.mark.x64
def test_sampler_gradient_matches_finite_differences():
    # At 200 steps of exponential Adams 3 the continuous gradient and the discrete
    # loss' finite differences agree to the discretisation error (~1e-5 here).
    x_t = jax.random.normal(jax.random.key(2), (2,), jnp.float64)
    means = _mixture().means

    def f(z):
        return _sample_loss(
            z[0], z[1], jnp.asarray(1.0), "exponential_adams3", "adjoint_dpm", 200
        )

    check_grad(f, (x_t, means), rtol=1e-4, atol=1e-5)


@pytest.mark.x64
def test_vmap_and_jit():
    x_t = jax.random.normal(jax.random.key(3), (4, 2), jnp.float64)
    means, scale = _mixture().means, jnp.asarray(1.0)
    batched = jax.vmap(
        lambda x: _SAMPLE_GRAD(x, means, scale, "ddim", "adjoint_dpm", 10)
    )
    g = batched(x_t)
    for i in range(4):
        one = _SAMPLE_GRAD(x_t[i], means, scale, "ddim", "adjoint_dpm", 10)
        np.testing.assert_allclose(g[0][i], one[0], rtol=1e-12)


def test_errors():
    x_t = jnp.ones(2)
    means = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="semilinear probability-flow ODE"):
        jax.grad(_sample_loss)(x_t, means, 1.0, "heun_edm", "adjoint_dpm", 4)
    with pytest.raises(ValueError, match="exponential integrator"):
        jax.grad(_sample_loss)(x_t, means, 1.0, "bdia", "adjoint_dpm", 4)
    with pytest.raises(ValueError, match="reversible solver"):
        jax.grad(_sample_loss)(x_t, means, 1.0, "dpmpp_2m", "reversible", 4)
    with pytest.raises(ValueError, match="SemilinearTerm"):
        jax.grad(
            lambda y: diffrax.diffeqsolve(
                diffrax.ODETerm(lambda t, y, a: -y),
                ReversibleHeun(),
                0.0,
                1.0,
                0.1,
                y,
                adjoint=ExponentialAdjoint(),
            ).ys.sum()
        )(jnp.ones(2))
    dense = SemilinearTerm(-jnp.eye(2), lambda t, y, a: jnp.zeros_like(y))
    with pytest.raises(ValueError, match="scalar or diagonal"):
        jax.grad(
            lambda y: diffrax.diffeqsolve(
                dense,
                ExponentialEuler(),
                0.0,
                1.0,
                0.1,
                y,
                adjoint=ExponentialAdjoint(),
            ).ys.sum()
        )(jnp.ones(2))


@pytest.mark.x64
def test_mlp_weights_get_the_continuous_gradient():
    # An equinox MLP (non-array leaves, a batch inside one solve, vmapped samples):
    # adjoint_dpm's gradient with respect to its weights and x_T approaches the
    # checkpointed discrete gradient of the same sampler as the steps grow.
    sched = VPLinear()
    mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jax.random.key(4))
    mlp = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, mlp)
    params, static = eqx.partition(mlp, eqx.is_array)
    x_t = jax.random.normal(jax.random.key(5), (3, 2), jnp.float64)

    def loss(params, x_t, adjoint, steps):
        net = eqx.combine(params, static)

        def model(x, t):
            return net(jnp.concatenate([x, jnp.reshape(t, (1,))]))

        x0 = jax.vmap(
            lambda x: sample(
                model,
                x,
                sched,
                sampler="exponential_adams3",
                steps=steps,
                adjoint=adjoint,
            )
        )(x_t)
        return jnp.sum(x0**2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=(2, 3))
    ref = grad(params, x_t, "checkpoint", 400)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref))
    errors = [
        _max_error(grad(params, x_t, "adjoint_dpm", n), ref) / scale for n in (25, 50)
    ]
    assert errors[1] < 2e-3 and errors[1] < errors[0] / 4, errors


@pytest.mark.x64
@pytest.mark.parametrize("sampler", ["bdia", "edict"])
def test_reversible_sampler_gradients_equal_checkpointing(sampler):
    # adjoint="reversible" through the reversible samplers: the exact discrete gradient
    # with respect to x_T, the model's weights (closure-converted) and the conditioning.
    x_t = jax.random.normal(jax.random.key(6), (2,), jnp.float64)
    means, scale = _mixture().means, jnp.asarray(0.9)
    ref = _SAMPLE_GRAD(x_t, means, scale, sampler, "checkpoint", 20)
    got = _SAMPLE_GRAD(x_t, means, scale, sampler, "reversible", 20)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
