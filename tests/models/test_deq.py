"""Tests of `odelab.models.DEQ`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

from odelab.models import DEQ


def _deq(**kwargs):
    options = dict(rtol=1e-12, atol=1e-12, max_steps=500, weight_scale=1.5)
    options.update(kwargs)
    return DEQ(6, 8, key=jax.random.key(0), **options)


def _x():
    # Built per test, so that it takes the test's precision (x64 or not).
    return jax.random.normal(jax.random.key(3), (6,))


def _loss(model):
    return jnp.sum(jnp.sin(model(_x())))


@pytest.mark.x64
@pytest.mark.parametrize("solver", ["anderson", "fixed_point", "newton"])
def test_implicit_gradient_equals_unrolled_and_finite_differences(solver):
    implicit = eqx.filter_grad(_loss)(_deq(solver=solver)).weight
    lu = eqx.filter_grad(_loss)(_deq(solver=solver, gradient="implicit_lu")).weight
    unrolled = eqx.filter_grad(_loss)(_deq(solver=solver, gradient="unrolled")).weight
    # Both implicit backward passes (adjoint fixed point at tolerance 1e-12, dense
    # LU) and backpropagation through the converged iterations agree.
    np.testing.assert_allclose(np.asarray(implicit), np.asarray(lu), atol=1e-10)
    np.testing.assert_allclose(np.asarray(implicit), np.asarray(unrolled), atol=1e-9)
    model, eps = _deq(solver=solver), 1e-6
    for i, j in ((0, 0), (3, 5), (7, 2)):
        bump = jnp.zeros_like(model.weight).at[i, j].set(eps)
        up = eqx.tree_at(lambda m: m.weight, model, model.weight + bump)
        down = eqx.tree_at(lambda m: m.weight, model, model.weight - bump)
        fd = (_loss(up) - _loss(down)) / (2 * eps)
        np.testing.assert_allclose(float(implicit[i, j]), float(fd), atol=1e-8)


@pytest.mark.x64
def test_equilibrium_and_phantom_gradients():
    model = _deq()
    z, stats = model.solve(_x())
    assert stats["result"] == optx.RESULTS.successful
    assert float(stats["residual"]) < 1e-11
    exact = eqx.filter_grad(_loss)(model).weight
    # The phantom gradient is the implicit one truncated: it approaches it as the
    # damped steps grow (Geng et al. 2021), and one step (JFB) is a cruder estimate.
    errors = []
    for steps in (1, 5, 40):
        phantom = _deq(gradient="phantom", phantom_steps=steps, phantom_damping=1.0)
        g = eqx.filter_grad(_loss)(phantom).weight
        errors.append(float(jnp.max(jnp.abs(g - exact))))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8, errors


def test_non_convergence_is_reported():
    model = DEQ(6, 8, key=jax.random.key(0), solver="fixed_point", weight_scale=20.0,
                max_steps=10)  # fmt: skip
    _, stats = model.solve(_x())
    assert stats["result"] != optx.RESULTS.successful
    assert float(stats["residual"]) > model.atol
    with pytest.raises(eqx.EquinoxRuntimeError, match="max"):
        eqx.filter_jit(model)(_x())


def test_batch_under_jit_and_errors(key):
    model = DEQ(6, 8, key=key)
    z = eqx.filter_jit(jax.vmap(model))(jnp.ones((5, 6)))
    assert z.shape == (5, 8)
    with pytest.raises(ValueError, match="shape"):
        model(jnp.ones((5, 6)))
    with pytest.raises(ValueError, match="solver"):
        DEQ(6, 8, key=key, solver="broyden2")
    with pytest.raises(ValueError, match="gradient"):
        DEQ(6, 8, key=key, gradient="adjoint")


@pytest.mark.x64
def test_jacobian_penalty_is_unbiased(key):
    model = _deq()
    z = model(_x())
    jac = jax.jacobian(lambda u: model.cell(u, model.inject(_x())))(z)
    exact = float(jnp.sum(jac**2)) / 8
    samples = np.asarray(
        jax.vmap(lambda k: model.jacobian_penalty(_x(), z, key=k))(
            jax.random.split(key, 4000)
        )
    )
    se = samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(samples.mean() - exact) < 4 * se
    grad = eqx.filter_grad(lambda m: m.jacobian_penalty(_x(), z, key=key))(model)
    assert np.all(np.isfinite(np.asarray(grad.weight)))


@pytest.mark.x64
def test_implicit_backward_falls_back_to_jfb_where_the_adjoint_diverges():
    # A non-contractive map (spectral radius of df/dz at the last iterate 1.96): the
    # adjoint iteration u = g + J^T u diverges, so the backward pass uses u = g
    # (Jacobian-free backpropagation) and stays finite.
    model = DEQ(6, 8, key=jax.random.key(0), solver="fixed_point", weight_scale=6.0,
                max_steps=10)  # fmt: skip
    x = _x()
    z, stats = model.solve(x)
    assert stats["result"] != optx.RESULTS.successful
    grad = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m.solve(x)[0])))(model)
    _, vjp = jax.vjp(lambda m: m.cell(z, m.inject(x)), model)
    (jfb,) = vjp(jnp.cos(z))
    np.testing.assert_allclose(
        np.asarray(grad.weight), np.asarray(jfb.weight), rtol=1e-12
    )
    assert np.all(np.isfinite(np.asarray(grad.weight)))
