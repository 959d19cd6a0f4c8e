"""Tests of `odelab.models.latent_ode.LatentODE`."""

import math

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import odelab
import odelab.data as data
from odelab.models import LatentODE
from tests.helpers import check_grad, count_traces, default_tol


DATA_DIM, LATENT_DIM, HIDDEN_DIM = 2, 3, 5


def _model(key, **kwargs):
    return LatentODE(DATA_DIM, LATENT_DIM, HIDDEN_DIM, 8, 1, key=key, **kwargs)


# Jitted once per module: eager calls would retrace the solves' scans every time.
_encode = eqx.filter_jit(lambda model, *series: model.encode(*series))
_decode = eqx.filter_jit(lambda model, z0, ts: model.decode(z0, ts))
_elbo = eqx.filter_jit(lambda model, *arguments: model.elbo(*arguments))


def _to_float64(tree):
    return jax.tree.map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree
    )


@pytest.fixture
def series(key):
    """A few irregular spirals split for interpolation: (context, target)."""
    spirals = data.irregular_spirals(jr.fold_in(key, 1), 4, 7, missing_rate=0.3)
    return data.split_times(spirals, "interpolation", 0.5, jr.fold_in(key, 2))


def _one(dataset, i=0):
    return dataset.ts[i], dataset.ys[i], dataset.mask[i]


def test_shapes_single_and_batched(key, series):
    context, target = series
    model = _model(key)
    mean, log_std = _encode(model, *_one(context))
    assert mean.shape == log_std.shape == (LATENT_DIM,)
    decoded = _decode(model, mean, target.ts[0])
    assert decoded.shape == (7, DATA_DIM)
    batch = eqx.filter_jit(jax.vmap(model))(
        context.ts, context.ys, context.mask, target.ts
    )
    assert batch.shape == (4, 7, DATA_DIM) and batch.dtype == jnp.float32
    # The same computation, batched: equal up to round-off.
    np.testing.assert_allclose(batch[0], decoded, **default_tol(jnp.float32))
    elbo = eqx.filter_jit(jax.vmap(model.elbo))(
        context.ts, context.ys, context.mask, target.ts, target.ys, target.mask,
        jr.split(key, 4),
    )  # fmt: skip
    assert elbo.shape == (4,) and np.all(np.isfinite(elbo))


def test_elbo_gradient_finite_and_nonzero(key, series):
    # Missing values as NaN: never read, not even by the gradient.
    context, target = (
        eqx.tree_at(lambda d: d.ys, d, jnp.where(d.mask, d.ys, jnp.nan)) for d in series
    )
    model = _model(key)

    def loss(m):
        return -m.elbo(*_one(context), *_one(target), key)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(model)
    for leaf in jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array)):
        assert np.all(np.isfinite(leaf))
    # Every network (encoder ODE and GRU, output map, latent ODE, decoder) is trained.
    for part in ("gru", "encoder_field", "encoder_out", "latent_field", "decoder"):
        leaves = jax.tree.leaves(getattr(grads, part))
        assert max(float(jnp.max(jnp.abs(leaf))) for leaf in leaves) > 0, part


def test_gradient_matches_finite_differences(x64, key, series):
    context, target = series  # float64: the x64 fixture runs first
    model = _to_float64(LatentODE(2, 2, 3, 4, 1, key=key, steps=1))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    # One flat parameter vector: `check_grad`'s per-leaf work runs eagerly.
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    @jax.jit
    def negative_elbo(flat):
        m = eqx.combine(unravel(flat), static)
        return -m.elbo(*_one(context, 1), *_one(target, 1), jr.fold_in(key, 3))

    check_grad(negative_elbo, flat)


def test_encoder_ignores_masked_values(key, series):
    context, _ = series
    ts, ys, mask = _one(context)
    mask = mask.at[2].set(False)  # one time point with nothing observed
    model = _model(key)
    garbage = 1e3 * jr.normal(jr.fold_in(key, 1), ys.shape)
    changed = jnp.where(mask, ys, garbage.at[0].set(jnp.nan))
    reference = _encode(model, ts, ys, mask)
    for a, b in zip(reference, _encode(model, ts, changed, mask)):
        np.testing.assert_array_equal(a, b)
    # The values do matter where observed.
    observed = jnp.where(mask, garbage, ys)
    assert not np.array_equal(reference[0], _encode(model, ts, observed, mask)[0])


def test_repeated_times_are_zero_gaps(key, series):
    context, _ = series
    ts, ys, mask = _one(context)
    model = _model(key)
    # An unobserved time point repeating an existing time is a zero gap: it changes
    # nothing, bit for bit, and a repeated decode time repeats the row.
    repeat = lambda x, fill: jnp.concatenate([x[:3], fill[None], x[3:]])  # noqa: E731
    ts_rep = repeat(ts, ts[2])
    mask_rep = repeat(mask, jnp.zeros(DATA_DIM, bool))
    ys_rep = repeat(ys, jnp.full(DATA_DIM, 7.0))
    reference = _encode(model, ts, ys, mask)
    for a, b in zip(reference, _encode(model, ts_rep, ys_rep, mask_rep)):
        np.testing.assert_array_equal(a, b)
    decoded = _decode(model, jnp.ones(LATENT_DIM), ts_rep)
    np.testing.assert_array_equal(decoded[2], decoded[3])


def test_encoding_starts_at_the_last_observation(key, series):
    # Unobserved time points after the last observation (an extrapolation target's)
    # do not change the encoding.
    context, _ = series
    ts, ys, mask = _one(context)
    model = _model(key)
    later = ts[-1] + jnp.asarray([0.5, 2.0])
    extended = (
        jnp.concatenate([ts, later]),
        jnp.concatenate([ys, jnp.ones((2, DATA_DIM))]),
        jnp.concatenate([mask, jnp.zeros((2, DATA_DIM), bool)]),
    )
    for a, b in zip(_encode(model, ts, ys, mask), _encode(model, *extended)):
        np.testing.assert_array_equal(a, b)


def test_decode_is_the_latent_ode_solution(x64, key):
    ts = jnp.sort(jr.uniform(jr.fold_in(key, 1), (9,), jnp.float64, 0.1, 3.0))
    z0 = jnp.asarray([0.5, -0.3, 0.8])
    steps = 4
    model = _to_float64(_model(key, steps=steps))
    adaptive = _to_float64(
        _model(key, solver="tsit5", steps=None, rtol=1e-8, atol=1e-8)
    )
    reference = odelab.solve(
        lambda t, z, mlp: mlp(z),
        z0,
        jnp.concatenate([jnp.zeros(1), ts]),
        model.latent_field,
        rtol=1e-12,
        atol=1e-12,
    ).ys[1:]
    expected = jax.vmap(model.decoder)(reference)
    # RK4 with `steps` steps per gap: error O(h^4) for the largest step h; the MLPs
    # are O(1)-Lipschitz on an O(1) horizon (unit error constant, see default_tol).
    h = float(jnp.max(jnp.diff(jnp.concatenate([jnp.zeros(1), ts])))) / steps
    np.testing.assert_allclose(
        _decode(model, z0, ts), expected, **default_tol(jnp.float64, order=4, dt=h)
    )
    # Adaptive steps per gap reach the requested tolerance (with a factor 100 for
    # the accumulation over the gaps and the local-error control).
    np.testing.assert_allclose(
        _decode(adaptive, z0, ts), expected, rtol=1e-6, atol=1e-6
    )


def test_elbo_formula_and_target_mask(key, series):
    context, target = series
    model = _model(key, obs_std=0.3)
    ctx, (ts_t, ys_t, mask_t) = _one(context), _one(target)
    elbo_key = jr.fold_in(key, 5)
    elbo = _elbo(model, *ctx, ts_t, ys_t, mask_t, elbo_key)
    # The same estimate by hand, in float64 NumPy.
    mean, log_std = (np.asarray(a, np.float64) for a in _encode(model, *ctx))
    eps = np.asarray(jr.normal(elbo_key, (LATENT_DIM,)), np.float64)
    z0 = jnp.asarray(mean + np.exp(log_std) * eps, jnp.float32)
    decoded = np.asarray(_decode(model, z0, ts_t), np.float64)
    residual = (np.asarray(ys_t, np.float64) - decoded) / 0.3
    log_density = -0.5 * residual**2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)
    kl = np.sum(0.5 * (mean**2 + np.exp(2 * log_std) - 1) - log_std)
    expected = np.sum(log_density[np.asarray(mask_t)]) - kl
    # float32 terms up to ~(2 / 0.3)^2 from two compiled programs (the decode inside
    # and outside `elbo`): 1e-4 per term is ~100 eps of each.
    n_observed = int(np.sum(np.asarray(mask_t)))
    np.testing.assert_allclose(elbo, expected, rtol=1e-4, atol=1e-4 * n_observed)
    # Target values where the mask is False are never scored.
    hidden = jnp.where(mask_t, ys_t, jnp.nan)
    np.testing.assert_array_equal(
        _elbo(model, *ctx, ts_t, hidden, mask_t, elbo_key), elbo
    )


def test_no_recompile_on_new_parameters_and_data(key, series):
    context, target = series
    params, static = eqx.partition(_model(key), eqx.is_inexact_array)

    @count_traces
    def run(p, ts, ys, mask):
        return jax.vmap(eqx.combine(p, static))(ts, ys, mask, ts)

    run_jit = jax.jit(run)
    run_jit(params, context.ts, context.ys, context.mask)
    params2 = jax.tree.map(lambda x: 1.01 * x, params)
    run_jit(params2, target.ts + 0.1, target.ys, target.mask)
    assert run.num_traces == 1


def test_bad_inputs_are_clear_errors(key, series):
    context, target = series
    with pytest.raises(ValueError, match="depth"):
        LatentODE(2, 2, 2, 4, -1, key=key)
    with pytest.raises(ValueError, match="obs_std"):
        _model(key, obs_std=0.0)
    with pytest.raises(ValueError, match="steps"):
        _model(key, steps=0)
    model = _model(key)
    ts, ys, mask = _one(context)
    with pytest.raises(ValueError, match="`ts`.*jax.vmap"):
        model.encode(context.ts, ys, mask)
    with pytest.raises(ValueError, match=r"`ys`.*data_dim=2"):
        model.encode(ts, jnp.ones((7, 3)), jnp.ones((7, 3), bool))
    with pytest.raises(ValueError, match="`mask`"):
        model.encode(ts, ys, jnp.ones((7, 1), bool))
    with pytest.raises(ValueError, match="`mask`"):
        model.encode(ts, ys, jnp.ones((7, 2)))
    with pytest.raises(ValueError, match="`ys_target`"):
        model.elbo(ts, ys, mask, ts, ys[:, :1], mask, key)
    with pytest.raises(ValueError, match="`mask_context`"):
        model.predict(ts, ys, mask[:3], ts)
    with pytest.raises(ValueError, match="`z0`"):
        model.decode(jnp.ones(LATENT_DIM + 1), ts)


@pytest.mark.loose_promotion  # optax's adam (see tests/conftest.py)
def test_training_lowers_reconstruction_error(key):
    # The interpolation task of Rubanova et al.: encode half the time points of each
    # irregularly sampled spiral, reconstruct all of them; error on held-out series.
    n_train, n_times, batch_size, n_steps = 128, 20, 32, 300
    train = data.irregular_spirals(jr.fold_in(key, 1), n_train, n_times)
    test = data.irregular_spirals(jr.fold_in(key, 2), 64, n_times)
    train_context, train_target = data.split_times(
        train, "interpolation", 0.5, jr.fold_in(key, 3)
    )
    test_context, test_target = data.split_times(
        test, "interpolation", 0.5, jr.fold_in(key, 4)
    )
    model = LatentODE(2, 4, 16, 32, 1, key=jr.fold_in(key, 5), steps=1)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def mse(p):
        predict = jax.vmap(eqx.combine(p, static))
        ys = predict(test_context.ts, test_context.ys, test_context.mask, test.ts)
        squared = jnp.where(test_target.mask, (ys - test_target.ys) ** 2, 0.0)
        return jnp.sum(squared) / jnp.sum(test_target.mask)

    optimiser = optax.adam(1e-2)

    @jax.jit
    def step(p, state, step_key):
        index_key, elbo_key = jr.split(step_key)
        index = jr.choice(index_key, n_train, (batch_size,), replace=False)
        c, t = jax.tree.map(lambda x: x[index], (train_context, train_target))

        def loss(p):
            elbo = jax.vmap(eqx.combine(p, static).elbo)(
                c.ts, c.ys, c.mask, t.ts, t.ys, t.mask, jr.split(elbo_key, batch_size)
            )
            return -jnp.sum(elbo) / jnp.sum(t.mask)

        grads = jax.grad(loss)(p)
        updates, state = optimiser.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    before = float(mse(params))
    state = optimiser.init(params)
    for step_key in jr.split(jr.fold_in(key, 6), n_steps):
        params, state = step(params, state, step_key)
    after = float(mse(params))
    print(f"held-out reconstruction MSE: {before:.4f} untrained, {after:.4f} trained")
    # Measured on seeds 0-5: 0.31-0.70 untrained, 0.014-0.033 trained (ratio <= 0.10).
    assert after <= 0.25 * before
