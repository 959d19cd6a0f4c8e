"""Tests of `odelab.models.NeuralCDE` and its control path `control_path`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from odelab.data import irregular_series, spirals
from odelab.models import NeuralCDE, control_path
from tests.helpers import (
    assert_tree_allclose,
    check_grad,
    count_traces,
    default_tol,
    roundoff_tol,
)


def _data(n_series=4, n_times=8, missing_rate=0.3, seed=0):
    data = irregular_series(
        jax.random.key(seed), n_series, n_times, missing_rate=missing_rate, t1=3.0
    )
    return data.ts, data.ys, data.mask


def _model(key, depth=1, **kwargs):
    options = dict(solver="rk4", steps=6)
    options.update(kwargs)
    return NeuralCDE(2, 4, 3, 8, depth, key=key, **options)


# --------------------------------------------------------------------------------------
# Shapes, transformations, recompilation
# --------------------------------------------------------------------------------------


def test_shapes_single_batch_and_vmap_agree(key):
    ts, ys, mask = _data()
    model = _model(key, intensity=True)
    one = eqx.filter_jit(model)(ts[0], ys[0], mask[0])
    assert one.shape == (3,)
    batch = eqx.filter_jit(model.batch)(ts, ys, mask)
    assert batch.shape == (4, 3)
    tol = roundoff_tol(batch.dtype, 6 * 4)
    np.testing.assert_allclose(batch[0], one, rtol=tol, atol=tol)
    vmapped = eqx.filter_jit(jax.vmap(model))(ts, ys, mask)
    np.testing.assert_allclose(batch, vmapped, rtol=tol, atol=tol)
    # Shared times: a (n_times,) `ts` is the same as repeating it per series.
    shared = eqx.filter_jit(model.batch)(ts[0], ys, mask)
    repeated = eqx.filter_jit(model.batch)(jnp.broadcast_to(ts[0], ts.shape), ys, mask)
    np.testing.assert_allclose(shared, repeated, rtol=tol, atol=tol)


def test_jit_does_not_recompile_for_new_values(key):
    ts, ys, mask = _data()
    model = _model(key, intensity=True)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @count_traces
    def run(p, ts, ys, mask):
        return eqx.combine(p, static).batch(ts, ys, mask)

    run_jit = jax.jit(run)
    first = run_jit(params, ts, ys, mask)
    params2 = jax.tree.map(lambda x: 1.01 * x, params)
    second = run_jit(params2, ts + 0.5, 2 * ys, ~mask)
    assert run.num_traces == 1
    assert first.shape == second.shape == (4, 3)
    assert np.all(np.isfinite(np.asarray(second)))


# --------------------------------------------------------------------------------------
# The control path
# --------------------------------------------------------------------------------------


@pytest.mark.x64
def test_hermite_path_interpolates_the_observations():
    ts, ys, mask = _data(n_series=1, n_times=10, missing_rate=0.4, seed=3)
    ts, ys, mask = ts[0], ys[0], mask[0]
    path = control_path(ts, ys, mask)
    knots = (ts - ts[0]) / (ts[-1] - ts[0])
    x = np.asarray(jax.vmap(path.evaluate)(knots))
    assert x.shape == (10, 5)
    tol = roundoff_tol(jnp.float64, 10)
    # Time, the observed values, and the fraction of the times observed so far.
    np.testing.assert_allclose(x[:, 0], ts, rtol=tol, atol=tol)
    observed = np.asarray(mask)
    np.testing.assert_allclose(x[:, 1:3][observed], np.asarray(ys)[observed], atol=tol)
    np.testing.assert_allclose(x[:, 3:], np.cumsum(observed, axis=0) / 10, atol=tol)
    # Before a channel's first observation the path holds that first value.
    for channel in range(2):
        first = int(np.argmax(observed[:, channel]))
        np.testing.assert_allclose(
            x[:first, 1 + channel], ys[first, channel], rtol=tol, atol=tol
        )
    # Between the knots, the time channel is time itself (the spline of an affine
    # function is that function).
    s = jnp.linspace(0.0, 1.0, 37)
    time = jax.vmap(path.evaluate)(s)[:, 0]
    np.testing.assert_allclose(time, ts[0] + s * (ts[-1] - ts[0]), rtol=tol, atol=tol)


@pytest.mark.x64
def test_rectilinear_path_advances_time_then_values():
    ts, ys, mask = _data(n_series=1, n_times=6, missing_rate=0.3, seed=1)
    ts, ys, mask = ts[0], ys[0], mask[0]
    path = control_path(ts, ys, mask, interpolation="rectilinear")
    x = np.asarray(jax.vmap(path.evaluate)(jnp.linspace(0.0, 1.0, 11)))
    observed = np.asarray(mask)
    # Forward-filled values (after a first fill backwards from the first value).
    filled = np.where(observed, np.asarray(ys), np.nan)
    for channel in range(2):
        first = int(np.argmax(observed[:, channel]))
        filled[:first, channel] = filled[first, channel]
        for k in range(1, 6):
            if np.isnan(filled[k, channel]):
                filled[k, channel] = filled[k - 1, channel]
    counts = np.cumsum(observed, axis=0) / 6
    tol = roundoff_tol(jnp.float64)
    for k in range(6):
        np.testing.assert_allclose(x[2 * k, 0], ts[k], rtol=tol)
        np.testing.assert_allclose(x[2 * k, 1:3], filled[k], rtol=tol, atol=tol)
        np.testing.assert_allclose(x[2 * k, 3:], counts[k], atol=tol)
        if k > 0:  # time has moved on, the values not yet
            np.testing.assert_allclose(x[2 * k - 1, 0], ts[k], rtol=tol)
            np.testing.assert_allclose(x[2 * k - 1, 1:3], filled[k - 1], atol=tol)


def test_path_channels_and_missing_data():
    ts = jnp.linspace(0.0, 1.0, 5)
    ys = jnp.arange(10.0).reshape(5, 2)
    assert control_path(ts, ys).evaluate(0.5).shape == (3,)
    assert control_path(ts, ys, intensity=True).evaluate(0.5).shape == (5,)
    # A channel never observed is 0, and NaN in `ys` counts as missing.
    mask = jnp.stack([jnp.ones(5, bool), jnp.zeros(5, bool)], axis=1)
    ys_nan = ys.at[2, 0].set(jnp.nan)
    x = jax.vmap(control_path(ts, ys_nan, mask).evaluate)(jnp.linspace(0.0, 1.0, 9))
    assert np.all(np.isfinite(np.asarray(x)))
    np.testing.assert_array_equal(np.asarray(x[:, 2]), 0.0)
    # 4 of the 5 times observed in the first channel, none in the second.
    np.testing.assert_allclose(np.asarray(x[-1, 3:]), [4.0 / 5, 0.0], rtol=1e-6)


# --------------------------------------------------------------------------------------
# The fused fixed-step path against the general one, and gradients
# --------------------------------------------------------------------------------------


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, interpolation, depth",
    [
        ("rk4", "hermite", 1),
        ("heun", "rectilinear", 0),
        ("tsit5", "rectilinear", 2),
    ],
)
def test_fused_path_equals_the_general_path(key, solver, interpolation, depth):
    ts, ys, mask = _data()
    # 5 steps: no stage time on a knot j/14 of the rectilinear path, where its
    # derivative jumps and either path's reading would depend on rounding.
    options = dict(
        solver=solver,
        steps=5,
        interpolation=interpolation,
        intensity=True,
        depth=depth,
        activation=jnp.tanh if depth == 2 else jax.nn.softplus,
    )
    fused = _model(key, **options)
    general = _model(key, fused=False, **options)
    stages = {"rk4": 4, "heun": 2, "tsit5": 7}[solver]
    tol = default_tol(jnp.float64, n_ops=5 * stages)

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def loss(model):
        return jnp.sum(jnp.sin(model.batch(ts, ys, mask)))

    value, grads = loss(fused)
    value_ref, grads_ref = loss(general)
    assert_tree_allclose(value, value_ref, **tol)
    # The modules differ in their static `fused` flag: compare the arrays.
    assert_tree_allclose(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), **tol)


@pytest.mark.x64
def test_fused_gradient_matches_finite_differences(key):
    ts, ys, mask = _data(n_series=3, n_times=6)
    model = _model(key, intensity=True)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def loss(p):
        return jnp.sum(jnp.tanh(eqx.combine(p, static).batch(ts, ys, mask)))

    check_grad(loss, params)


@pytest.mark.x64
def test_gradient_reaches_the_data(key):
    # The hand-written adjoint also returns the control's cotangent.
    ts, ys, _ = _data(n_series=2, n_times=5, missing_rate=0.0)
    model = _model(key)

    general = _model(key, fused=False)

    @jax.jit
    def grads(ys):
        def loss(ys, model):
            return jnp.sum(model.batch(ts, ys) ** 2)

        return jax.grad(loss)(ys, model), jax.grad(loss)(ys, general)

    fused_grad, general_grad = grads(ys)
    assert_tree_allclose(fused_grad, general_grad, **default_tol(jnp.float64, n_ops=24))


@pytest.mark.x64
@pytest.mark.parametrize("adjoint", ["direct", "backsolve"])
def test_other_adjoints_under_jit(key, adjoint):
    ts, ys, mask = _data(n_series=2, n_times=5)
    steps = 40
    model = _model(key, adjoint=adjoint, steps=steps)
    reference = _model(key, steps=steps)

    @eqx.filter_jit
    def grads(model):
        return eqx.filter_grad(lambda m: jnp.sum(m.batch(ts, ys, mask) ** 2))(model)

    # "direct" differentiates the same discretisation; "backsolve" integrates the
    # continuous adjoint backwards with RK4, off by the method's truncation error.
    if adjoint == "direct":
        tol = default_tol(jnp.float64, n_ops=4 * steps)
    else:
        tol = default_tol(jnp.float64, order=4, dt=1 / steps)
    assert_tree_allclose(
        jax.tree.leaves(grads(model)), jax.tree.leaves(grads(reference)), **tol
    )


@pytest.mark.x64
@pytest.mark.parametrize("interpolation", ["hermite", "rectilinear"])
def test_adaptive_solve_is_accurate(key, interpolation):
    # Adaptive steps through `odelab.solve` (for the rectilinear path, told where
    # dX/ds jumps). The global error of a tolerance-controlled solve is a modest
    # multiple of the tolerance: 100x leaves room for its accumulation.
    ts, ys, mask = _data(n_series=2, n_times=5)

    def solve(solver, tol):
        model = _model(
            key,
            solver=solver,
            steps=None,
            rtol=tol,
            atol=tol,
            interpolation=interpolation,
            max_steps=100_000,
        )
        return eqx.filter_jit(model.batch)(ts, ys, mask)

    tol = 1e-8
    assert_tree_allclose(
        solve("tsit5", tol), solve("dopri8", 1e-3 * tol), rtol=100 * tol, atol=100 * tol
    )


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors(key):
    ts, ys, mask = _data()
    model = _model(key)
    with pytest.raises(ValueError, match="in_channels=2"):
        model(ts[0], jnp.ones((8, 3)))
    with pytest.raises(ValueError, match="in_channels=2"):
        model.batch(ts, jnp.ones((4, 8, 3)))
    with pytest.raises(ValueError, match="`mask` must have the shape"):
        model(ts[0], ys[0], mask[0, :, :1])
    with pytest.raises(ValueError, match="`mask` must have the shape"):
        model.batch(ts, ys, mask[:, :, :1])
    with pytest.raises(ValueError, match="model.batch"):
        model(ts, ys)
    with pytest.raises(ValueError, match=r"`ts` must have shape \(n_times,\)"):
        model(ts[0, :5], ys[0])
    with pytest.raises(ValueError, match="`ts` must have shape"):
        model.batch(ts[:2], ys)
    with pytest.raises(ValueError, match="interpolation"):
        _model(key, interpolation="linear")
    with pytest.raises(ValueError, match="Valid names"):
        _model(key, solver="rk5")
    with pytest.raises(TypeError, match="must be a name"):
        _model(key, adjoint=object())
    with pytest.raises(ValueError, match="at least 2"):
        control_path(ts[0, :1], ys[0, :1])


def test_times_must_increase(key):
    ts, ys, mask = _data()
    model = _model(key)
    swapped = ts.at[:, 3].set(ts[:, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        model(swapped[0], ys[0])
    with pytest.raises(ValueError, match="Series 0"):
        model.batch(swapped, ys)
    # Under jit the check runs with the solve.
    with pytest.raises(eqx.EquinoxRuntimeError, match="strictly increasing"):
        jax.block_until_ready(eqx.filter_jit(model.batch)(swapped, ys, mask))


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@pytest.mark.loose_promotion  # optax's Adam
def test_a_few_adam_steps_reduce_the_loss(key):
    data = spirals(jax.random.key(1), 32, 12)
    model = NeuralCDE(2, 8, 2, 16, 1, key=key, solver="rk4", steps=12)
    optimiser = optax.adam(1e-2)
    state = optimiser.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model):
        logits = model.batch(data.ts, data.ys)
        return jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(logits, data.labels)
        )

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = optimiser.update(grads, state, model)
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(40):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_local_heuristics_regularize_the_field(key):
    # One-step estimates of R_E and R_S of the CDE's solve over s in [0, 1]: positive,
    # differentiable in the field's parameters, whatever the training steps.
    ts, ys, mask = _data()
    model = _model(key, intensity=True)
    error, stiffness = eqx.filter_jit(model.local_heuristics)(ts, ys, mask, key=key)
    assert float(error) > 0 and float(stiffness) > 0
    grads = eqx.filter_jit(
        eqx.filter_grad(lambda m: m.local_heuristics(ts, ys, mask, key=key)[0])
    )(model)
    leaves = jax.tree_util.tree_leaves(grads.vector_field)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert any(np.any(np.asarray(x) != 0) for x in leaves)
