"""Tests of `odelab.models.HomoODE`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.models import DEQ, HomoODE, HomoODEClassifier


def _x():
    return jax.random.normal(jax.random.key(3), (4, 6))


def _newton(**kwargs):
    options = dict(field="newton", rtol=1e-10, atol=1e-10, weight_scale=1.5)
    options.update(kwargs)
    return HomoODE(6, 8, key=jax.random.key(0), **options)


@pytest.mark.x64
@pytest.mark.parametrize("joint", [True, False])
def test_newton_endpoint_is_the_equilibrium(joint):
    model = _newton(joint_batch=joint)
    z1 = model(_x())
    # The path's end solves f(z) = z to the solver's tolerance (times the
    # conditioning of I - df/dz, a few here).
    assert float(jnp.max(model.residual(_x(), z1))) < 1e-9


@pytest.mark.x64
def test_newton_gradient_equals_the_deqs_implicit_gradient():
    # The same map as a DEQ: z(1) = z*(x, theta), so differentiating through the
    # continuation ODE (any adjoint) gives the implicit-function-theorem gradient.
    homo = _newton()
    deq = DEQ(6, 8, key=jax.random.key(1), rtol=1e-12, atol=1e-12, max_steps=500)
    deq = eqx.tree_at(lambda d: (d.weight, d.inject), deq, (homo.weight, homo.inject))
    target = eqx.filter_grad(lambda d: jnp.sum(jnp.sin(jax.vmap(d)(_x()))))(deq)
    for adjoint in ("checkpoint", "backsolve"):
        model = _newton(adjoint=adjoint)
        grad = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(_x()))))(model)
        np.testing.assert_allclose(
            np.asarray(grad.weight), np.asarray(target.weight), rtol=1e-6, atol=1e-9
        )


@pytest.mark.x64
def test_shared_initial_point_shortens_the_path():
    # Equilibria clustered away from 0 (a bias of 2 in the injection): started at
    # their centre, the continuation takes fewer steps than from 0 (the
    # acceleration of Ding et al.) or from a point beyond them.
    base = _newton(rtol=1e-6, atol=1e-6)
    base = eqx.tree_at(lambda m: m.inject.bias, base, base.inject.bias + 2.0)
    x = _x()
    centre = jnp.mean(base(x), axis=0)
    shared = _newton(rtol=1e-6, atol=1e-6, shared_initial=True)
    shared = eqx.tree_at(
        lambda m: (m.initial, m.inject.bias), shared, (centre, base.inject.bias)
    )
    far = eqx.tree_at(lambda m: m.initial, shared, centre + 2.0)
    nfe_of = eqx.filter_jit(lambda m: m.solution(x).stats["nfe"])
    nfe = {
        name: int(nfe_of(m))
        for name, m in (("zero", base), ("centre", shared), ("far", far))
    }
    assert nfe["centre"] < min(nfe["zero"], nfe["far"]), nfe
    np.testing.assert_allclose(np.asarray(shared(x)), np.asarray(base(x)), atol=1e-5)


def test_initial_point_trains_only_by_its_own_loss(key):
    model = HomoODEClassifier(
        6, 3, 8, key=key, shared_initial=True, solver="rk4", steps=4
    )
    x = _x()

    def ce(m):
        return jnp.sum(m(x) ** 2)

    def extra(m):
        return m.logits_and_extra_loss(x)[1]

    assert np.all(np.asarray(eqx.filter_grad(ce)(model).homo.initial) == 0)
    g = eqx.filter_grad(extra)(model)
    assert np.any(np.asarray(g.homo.initial) != 0)
    assert np.all(np.asarray(g.homo.first.weight) == 0)


def test_errors(key):
    with pytest.raises(ValueError, match="field"):
        HomoODE(6, 8, key=key, field="fixed_point")
    model = HomoODE(6, 8, key=key)
    with pytest.raises(ValueError, match="shape"):
        model(jnp.ones(6))
    with pytest.raises(ValueError, match="newton"):
        model.cell(jnp.ones(8), jnp.ones(8))
