"""Tests of `odelab.solve_sde`: strong and weak convergence on problems with known
solutions, the three noise conventions, jit, vmap over keys and gradients."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
import odelab.problems
from tests.helpers import (
    ORDER_SLACK,
    assert_tree_allclose,
    check_grad,
    default_tol,
    estimate_order,
)


_NUM_PATHS = 256


@functools.cache
def _gbm():
    return odelab.problems.get("geometric_brownian_motion")


def _gbm_stratonovich_drift(t, y, args):
    # The Stratonovich form of the Itô GBM: the same process, so the same exact
    # solution, for solvers that converge to Stratonovich solutions (Heun).
    del t
    mu, sigma = args["mu"].astype(y.dtype), args["sigma"].astype(y.dtype)
    return (mu - sigma**2 / 2) * y


def _gbm_exact_at_1(key):
    # W(1) is the root of the Brownian tree: the same for every tolerance, so the same
    # path as in each solve below (their step counts are powers of two on [0, 1], so
    # every step end is a dyadic point of the tree and tol-independent too).
    p = _gbm()
    bm = diffrax.VirtualBrownianTree(
        0.0, 1.0, tol=2.0**-12, shape=jax.ShapeDtypeStruct((2,), p.y0.dtype), key=key
    )
    return p.exact(jnp.asarray([1.0], p.y0.dtype), bm)[0]


def _strong_errors(solver, drift, step_counts):
    p = _gbm()
    keys = jax.random.split(jax.random.key(1234), _NUM_PATHS)

    @jax.jit
    def final(dt):
        # A traced `dt0`: one compilation for every step size.
        def one(key):
            sol = odelab.solve_sde(
                drift,
                p.diffusion,
                p.y0,
                (0.0, 1.0),
                p.args,
                key=key,
                solver=solver,
                dt0=dt,
            )
            return sol.ys[-1]

        return jax.vmap(one)(keys)

    exact = jax.vmap(_gbm_exact_at_1)(keys)
    errors = []
    for n in step_counts:
        ys = final(jnp.asarray(1.0 / n, p.y0.dtype))
        errors.append(float(jnp.mean(jnp.max(jnp.abs(ys - exact), axis=-1))))
    return np.asarray(errors)


@pytest.mark.parametrize(
    "solver, strong_order, step_counts",
    [
        # Euler–Maruyama's O(dt) drift error dominates its O(dt^0.5) noise error on
        # coarse grids of this mildly noisy problem: fit it on fine grids only.
        ("euler", 0.5, [64, 128, 256, 512, 1024]),
        # GBM's noise is diagonal, hence commutative: Milstein and Heun reach order 1.
        ("milstein", 1.0, [8, 16, 32, 64, 128]),
        ("heun", 1.0, [8, 16, 32, 64, 128]),
    ],
)
def test_strong_order_on_gbm(x64, solver, strong_order, step_counts):
    drift = _gbm_stratonovich_drift if solver == "heun" else _gbm().vector_field
    errors = _strong_errors(solver, drift, step_counts)
    order = estimate_order(errors, 1.0 / np.asarray(step_counts, np.float64))
    assert abs(order - strong_order) < ORDER_SLACK, (order, errors)


def test_weak_mean_of_ornstein_uhlenbeck(key):
    p = odelab.problems.get("ornstein_uhlenbeck")
    n_paths, steps = 4096, 64
    keys = jax.random.split(key, n_paths)

    @jax.jit
    def final(keys):
        def one(k):
            return odelab.solve_sde(
                p.vector_field,
                p.diffusion,
                p.y0,
                (p.t0, p.t1),
                p.args,
                key=k,
                noise="general",
                brownian_shape=p.brownian_shape,
                steps=steps,
            ).ys[-1]

        return jax.vmap(one)(keys)

    ys = np.asarray(final(keys), np.float64)
    mean, stderr = ys.mean(axis=0), ys.std(axis=0, ddof=1) / np.sqrt(n_paths)
    exact = np.asarray(p.mean(p.t1), np.float64)
    # Four standard errors of Monte Carlo, plus the weak-order-1 bias of Euler–Maruyama
    # with unit constant, plus float32 round-off of the mean.
    dt = (p.t1 - p.t0) / steps
    bound = 4 * stderr + dt + default_tol(ys.dtype)["atol"]
    assert np.all(np.abs(mean - exact) < bound), (mean, exact, bound)
    # The sample variance matches too (a check that the noise is not lost or doubled).
    var = ys.var(axis=0, ddof=1)
    exact_var = np.asarray(p.variance(p.t1), np.float64)
    var_stderr = exact_var * np.sqrt(2 / (n_paths - 1))
    assert np.all(np.abs(var - exact_var) < 4 * var_stderr + dt)


def _drift(t, y, args):
    del t
    return -args * y


def _diag_diffusion(t, y, args):
    del t, args
    return 0.3 * jnp.sin(y) + 0.1


def _general_diffusion(t, y, args):
    del t, args
    return 0.2 * jnp.outer(jnp.cos(y), jnp.arange(1, 4, dtype=y.dtype))


def _zero_drift(t, y, args):
    del t, args
    return jnp.zeros_like(y)


def _unit_diffusion(t, y, args):
    del t, args
    return jnp.ones_like(y)


def _unit_general_diffusion(t, y, args):
    del t, args
    # Both components driven by the first of three Brownian motions.
    return jnp.zeros(y.shape + (3,), y.dtype).at[:, 0].set(1.0)


@pytest.mark.parametrize(
    "noise, diffusion, brownian_shape, same_increments",
    [
        ("diagonal", _unit_diffusion, None, False),
        ("scalar", _unit_diffusion, None, True),
        ("general", _unit_general_diffusion, (3,), True),
    ],
)
def test_noise_conventions(key, noise, diffusion, brownian_shape, same_increments):
    # dy = g dW with g fixed: y(t) - y0 is the Brownian motion as `noise` applies it,
    # independent per component (diagonal) or shared (scalar, and here general).
    y0, ts = jnp.asarray([1.0, -0.5]), jnp.linspace(0.0, 1.0, 5)
    sol = odelab.solve_sde(
        _zero_drift,
        diffusion,
        y0,
        ts,
        key=key,
        noise=noise,
        brownian_shape=brownian_shape,
        steps=16,
    )
    assert sol.ys.shape == (5, 2)
    assert sol.ys.dtype == y0.dtype
    assert np.all(np.isfinite(sol.ys))
    w = np.asarray(sol.ys - y0[None])
    assert np.all(w[0] == 0)
    assert np.all(np.abs(w[1:]) > 0)
    assert np.allclose(w[:, 0], w[:, 1]) == same_increments


def _sde_final(key, args, steps=32):
    y0 = jnp.asarray([1.0, -0.5], jnp.result_type(float))
    return odelab.solve_sde(
        _drift, _diag_diffusion, y0, (0.0, 1.0), args, key=key, steps=steps
    ).ys[-1]


def test_jit_and_vmap_over_keys(key):
    keys = jax.random.split(key, 3)
    args = jnp.asarray(0.5)
    batched = jax.jit(jax.vmap(_sde_final, in_axes=(0, None)))(keys, args)
    single = jax.jit(_sde_final)
    each = jnp.stack([single(k, args) for k in keys])
    assert_tree_allclose(batched, each, **default_tol(jnp.float32, n_ops=32))
    # Eager and jitted agree; distinct keys give distinct paths.
    assert_tree_allclose(_sde_final(keys[0], args), each[0], **default_tol(jnp.float32))
    assert len({float(x) for x in batched[:, 0]}) == 3


def test_grad_wrt_args(x64):
    # Jitted, so that the finite differences reuse one compiled forward solve.
    loss = jax.jit(lambda a: jnp.sum(_sde_final(jax.random.key(7), a) ** 2))
    grad = check_grad(loss, jnp.asarray(0.5))
    assert np.isfinite(grad)


_CALLS = []


def _counted_drift(t, y, args):
    jax.debug.callback(lambda: _CALLS.append(None))
    return -args * y


def _additive_diffusion(t, y, args):
    del t, args
    return jnp.full_like(y, 0.2)


@pytest.mark.parametrize(
    "solver",
    # "euler", "heun" and "milstein" are covered by the convergence tests above.
    ["euler_heun", "stratonovich_milstein", "reversible_heun"]
    + ["sra1", "shark", "sea", "spark", "general_shark", "slowrk"],
)
def test_sde_solver_names_run_on_additive_noise(key, solver):
    _CALLS.clear()
    sol = odelab.solve_sde(
        _counted_drift,
        _additive_diffusion,
        jnp.asarray([1.0, -0.5]),
        jnp.linspace(0.0, 1.0, 3),
        jnp.asarray(1.0),
        key=key,
        solver=solver,
        steps=16,
    )
    jax.block_until_ready(sol.ys)
    jax.effects_barrier()
    assert sol.ys.shape == (3, 2)
    assert np.all(np.isfinite(sol.ys))
    # One evaluation = the drift and the diffusion at one point; -1 where not static.
    assert int(sol.stats["nfe"]) in (len(_CALLS), -1)
