"""Tests of `odelab.brownian.BrownianIncrements` and `solve_sde(brownian=...)`."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import odelab
from odelab.brownian import BrownianIncrements
from tests.helpers import estimate_order


def test_cells_return_their_increments(key):
    path = BrownianIncrements.sample(0.0, 1.0, 8, (3,), key)
    grid = np.linspace(0.0, 1.0, 9)
    for k in range(8):
        np.testing.assert_array_equal(
            np.asarray(path.evaluate(grid[k], grid[k + 1])),
            np.asarray(path.increments[k]),
        )
    # Backwards over a cell: the negated increment.
    np.testing.assert_array_equal(
        np.asarray(path.evaluate(grid[3], grid[2])), -np.asarray(path.increments[2])
    )


def test_off_grid_queries_interpolate(key):
    path = BrownianIncrements.sample(0.0, 2.0, 4, (), key)
    w = np.concatenate([[0.0], np.cumsum(np.asarray(path.increments))])
    np.testing.assert_allclose(float(path.evaluate(0.5)), w[1], rtol=1e-6)
    np.testing.assert_allclose(float(path.evaluate(0.75)), (w[1] + w[2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        float(path.evaluate(0.25, 1.75)),
        (w[3] + w[4]) / 2 - (w[0] + w[1]) / 2,
        rtol=1e-5,
        atol=1e-6,
    )


def test_reversed_grid(key):
    path = BrownianIncrements.sample(1.0, 0.0, 4, (2,), key)
    np.testing.assert_array_equal(
        np.asarray(path.evaluate(1.0, 0.75)), np.asarray(path.increments[0])
    )


def test_increment_variance(key):
    path = BrownianIncrements.sample(0.0, 0.5, 10, (20000,), key)
    var = np.var(np.asarray(path.increments), axis=1)
    # Sample variance of 20000 normals: relative standard error sqrt(2/20000) = 1%.
    np.testing.assert_allclose(var, 0.05, rtol=5 * np.sqrt(2 / 20000))


def test_bad_increments():
    with pytest.raises(ValueError, match="increments"):
        BrownianIncrements(0.0, 1.0, jnp.zeros(()))
    with pytest.raises(ValueError, match="`n`"):
        BrownianIncrements.sample(0.0, 1.0, 0, (2,), jr.key(0))


def test_solve_sde_increments_is_reproducible_and_differentiable(key):
    def loss(scale):
        sol = odelab.solve_sde(
            lambda t, y, a: -y,
            lambda t, y, a: a * jnp.ones_like(y),
            jnp.ones(3),
            jnp.array([0.0, 1.0]),
            scale,
            key=key,
            steps=20,
            brownian="increments",
        )
        return jnp.sum(sol.ys[-1])

    assert float(loss(0.3)) == float(loss(0.3))
    g = jax.grad(loss)(0.3)
    # Additive noise: y(1) is affine in the scale, so the derivative is exact.
    fd = (loss(0.4) - loss(0.2)) / 0.2
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-4)


def test_solve_sde_brownian_errors(key):
    args = (
        lambda t, y, a: -y,
        lambda t, y, a: jnp.ones_like(y),
        jnp.ones(2),
        jnp.array([0.0, 1.0]),
    )
    with pytest.raises(ValueError, match="steps="):
        odelab.solve_sde(*args, key=key, dt0=0.1, brownian="increments")
    with pytest.raises(ValueError, match="Levy area"):
        odelab.solve_sde(*args, key=key, steps=4, solver="sra1", brownian="increments")
    with pytest.raises(ValueError, match="shape"):
        odelab.solve_sde(
            *args,
            key=key,
            steps=4,
            brownian=BrownianIncrements.sample(0, 1, 4, (3,), key),
        )
    with pytest.raises(ValueError, match="Unknown `brownian"):
        odelab.solve_sde(*args, key=key, steps=4, brownian="tree")


# Strong orders on geometric Brownian motion, whose solution is known in closed form:
# Ito dX = mu X dt + s X dW gives X_T = exp((mu - s^2/2) T + s W_T); Stratonovich
# (o dW) gives exp(mu T + s W_T). The noise is scalar per path, hence commutative,
# which is why the Stratonovich two-stage methods reach order 1.
_STRONG = [("euler", False, 0.5), ("heun", True, 1.0), ("reversible_heun", True, 1.0)]


@pytest.mark.x64
@pytest.mark.parametrize("solver,stratonovich,order", _STRONG)
def test_strong_order_on_gbm(solver, stratonovich, order):
    mu, s, t1, paths, fine = 0.5, 0.8, 1.0, 4000, 1024
    inc = jr.normal(jr.key(0), (fine, paths), jnp.float64) * np.sqrt(t1 / fine)
    w = jnp.sum(inc, axis=0)
    exact = jnp.exp((mu - (0.0 if stratonovich else s**2 / 2)) * t1 + s * w)
    ns = [8, 16, 32, 64, 128]
    errors = []
    for n in ns:
        path = BrownianIncrements(0.0, t1, inc.reshape(n, fine // n, paths).sum(1))
        sol = odelab.solve_sde(
            lambda t, y, a: mu * y,
            lambda t, y, a: s * y,
            jnp.ones(paths),
            jnp.array([0.0, t1]),
            key=jr.key(1),
            solver=solver,
            brownian=path,
            steps=n,
        )
        errors.append(float(jnp.mean(jnp.abs(sol.ys[-1] - exact))))
    measured = estimate_order(errors, [t1 / n for n in ns])
    # The mean over 4000 paths is a Monte-Carlo estimate of the strong error; the
    # slack covers its sampling noise at the coarse end of the fit.
    assert abs(measured - order) < 0.15, (measured, errors)


def test_increments_match_virtual_tree_statistics(key):
    # The two paths are different samples of the same law: Euler-Maruyama on an OU
    # process has the same mean and variance with either (within 5 standard errors).
    def final(brownian, k):
        return odelab.solve_sde(
            lambda t, y, a: -y,
            lambda t, y, a: 0.5 * jnp.ones_like(y),
            jnp.ones(4000),
            jnp.array([0.0, 1.0]),
            key=k,
            steps=16,
            brownian=brownian,
        ).ys[-1]

    a = np.asarray(final("increments", key))
    b = np.asarray(final("virtual_tree", jr.fold_in(key, 1)))
    se = np.sqrt(a.var() / a.size + b.var() / b.size)
    assert abs(a.mean() - b.mean()) < 5 * se
    se_var = a.var() * np.sqrt(2 / a.size) * np.sqrt(2)
    assert abs(a.var() - b.var()) < 5 * se_var
