"""Tests of `odelab.regularizers.objective` (one switch for every regularizer)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.models import AugmentedNeuralODE, NeuralODE
from odelab.regularizers import regularized_solution


TS = jnp.linspace(0.0, 2.0, 5)


def _model(**kwargs):
    return NeuralODE(2, 16, 1, key=jax.random.key(0), rtol=1e-6, atol=1e-8, **kwargs)


def _y0s():
    return jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]])


def _grad_norm(tree):
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))
    return float(sum(jnp.sum(x**2) for x in leaves)) ** 0.5


@pytest.mark.x64
@pytest.mark.parametrize(
    "joint, kinds",
    # Every kind once, split between the two batch modes (CI time).
    [
        (False, ("none", "error", "local_stiffness", "taylor")),
        (True, ("stiffness", "local_error", "kinetic", "jacobian")),
    ],
)
def test_every_kind_predicts_the_plain_solve_and_has_a_gradient(joint, kinds, key):
    model = _model(joint_batch=joint)
    reference = model.batch_solution(TS, _y0s()).ys
    for kind in kinds:

        def value(m, kind=kind):
            ys, r, nfe = regularized_solution(m, TS, _y0s(), kind=kind, key=key)
            return r, (ys, nfe)

        (r, (ys, nfe)), grad = eqx.filter_jit(
            eqx.filter_value_and_grad(value, has_aux=True)
        )(model)
        assert ys.shape == reference.shape
        # Same steps (heuristics, local kinds) or the error control also sees the
        # integrals (their own steps): equal to the tolerance either way.
        np.testing.assert_allclose(np.asarray(ys), np.asarray(reference), atol=1e-5)
        assert int(nfe) > 0
        if kind == "none":
            assert float(r) == 0.0
            continue
        assert float(r) > 0
        assert np.isfinite(_grad_norm(grad)) and _grad_norm(grad) > 0, kind


@pytest.mark.x64
def test_global_kinds_equal_the_mean_of_per_trajectory_heuristics():
    from odelab.regularizers import solve_with_heuristics

    model = _model()
    _, r, _ = regularized_solution(model, TS, _y0s(), kind="error")
    # The same computation batched by vmap (an unbatched loop differs by the
    # round-off of the batched matmuls, ~1e-13, which the error norm divides by the
    # tolerance scale 1e-6).
    each = jax.vmap(
        lambda y0: (
            solve_with_heuristics(
                model.vector_field, y0, TS, model.mlp, rtol=1e-6, atol=1e-8
            )[1].error
        )
    )(_y0s())
    np.testing.assert_allclose(float(r), float(np.mean(each)), rtol=1e-12)


@pytest.mark.x64
@pytest.mark.parametrize("kind", ["local_error"])
def test_local_kinds_keep_any_adjoint(kind, key):
    # The local regularizer's gradient flows only through the retaken step, so it is
    # the same whatever adjoint the training solve uses.
    grads = []
    for adjoint in ("checkpoint", "backsolve"):
        model = _model(adjoint=adjoint)
        grads.append(
            eqx.filter_grad(
                lambda m: regularized_solution(m, TS, _y0s(), kind=kind, key=key)[1]
            )(model)
        )
    for a, b in zip(*(jax.tree_util.tree_leaves(g) for g in grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10)


def test_augmented_model(key):
    model = AugmentedNeuralODE(2, 8, 1, 2, key=key)
    ys, r, _ = regularized_solution(model, TS, _y0s(), kind="error")
    assert ys.shape == (5, 3, 4) and float(r) > 0


def test_errors(key):
    with pytest.raises(ValueError, match="Unknown regularizer"):
        regularized_solution(_model(), TS, _y0s(), kind="lasso")
    with pytest.raises(ValueError, match="fixed steps"):
        regularized_solution(
            NeuralODE(2, 4, 1, key=key, steps=10), TS, _y0s(), kind="error"
        )
    with pytest.raises(ValueError, match="local_error"):
        regularized_solution(
            _model(adjoint="backsolve"), TS, _y0s(), kind="error", key=key
        )
    with pytest.raises(ValueError, match="needs `key=`"):
        regularized_solution(_model(), TS, _y0s(), kind="local_error")
    with pytest.raises(ValueError, match="sampling"):
        regularized_solution(_model(), TS, _y0s(), kind="local_error", sampling="x")


@pytest.mark.x64
def test_global_kind_gradient_is_the_same_under_both_discrete_adjoints():
    grads = [
        eqx.filter_grad(
            lambda m: regularized_solution(m, TS, _y0s(), kind="stiffness")[1]
        )(_model(adjoint=adjoint))
        for adjoint in ("checkpoint", "direct")
    ]
    # The same arithmetic in another loop order: the stage differences cancel to
    # about rtol |y| (1e-6), which amplifies float64 round-off to ~1e-10.
    for a, b in zip(*(jax.tree_util.tree_leaves(g) for g in grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-14)
