"""Tests of `odelab.models.StableNeuralSDE` (LSDE, LNSDE, GSDE)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import odelab.data
from odelab.models import StableNeuralSDE
from tests.helpers import check_grad


@pytest.fixture(scope="module")
def series():
    return odelab.data.irregular_series(jr.key(0), 8, 12, missing_rate=0.5)


def _model(kind, **kwargs):
    return StableNeuralSDE(kind, 2, 6, 2, 8, 1, key=jr.key(1), steps=10, **kwargs)


@pytest.mark.parametrize("kind", ["lsde", "lnsde", "gsde"])
def test_shapes_and_single_equals_batch_row(kind, series):
    model = _model(kind)
    out = model.batch(series.ts, series.ys, series.mask, key=jr.key(2))
    assert out.shape == (8, 2)
    assert np.all(np.isfinite(np.asarray(out)))
    one = model(series.ts[0], series.ys[0], series.mask[0], key=jr.key(2))
    assert one.shape == (2,)


def test_diffusion_forms(series):
    # The structure holds for any weights: the LSDE's diffusion ignores the state,
    # the LNSDE's is linear in it, and sigma(s) lies in [0, 1).
    x = jnp.ones(1 + 2 * 2)
    z = jnp.array([0.5, -2.0, 3.0, 0.0, 1.0, -1.0])
    for kind in ("lsde", "lnsde"):
        model = _model(kind, noise_scale=5.0)
        xs = jnp.broadcast_to(x, (1, 11, x.shape[0]))
        _, diffusion = model._fields(xs)
        g1 = diffusion(0.3, z[None], model)[0]
        g2 = diffusion(0.3, 2 * z[None], model)[0]
        sig = model.sigma(0.3, z.dtype)
        assert np.all((np.asarray(sig) >= 0) & (np.asarray(sig) < 1))
        if kind == "lsde":
            np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))
        else:
            np.testing.assert_allclose(np.asarray(g2), 2 * np.asarray(g1), rtol=1e-6)
            np.testing.assert_allclose(np.asarray(g1), np.asarray(sig * z), rtol=1e-6)


def test_lsde_drift_is_autonomous_and_bounded():
    model = _model("lsde")
    z, x = jnp.linspace(-50, 50, 6), jnp.linspace(-9, 9, 5)
    a, b = model.gamma(0.1, z, x), model.gamma(0.9, z, x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    big = _model("lnsde").gamma(0.5, 1e6 * z, 1e6 * x)
    assert np.all(np.abs(np.asarray(big)) <= 1)


def test_gsde_stays_positive_under_large_noise(series):
    # Euler-Maruyama on dz = z(gamma ds + sigma dW) directly would cross zero with
    # steps this coarse and noise this large; the log-space solve cannot.
    model = _model("gsde", noise_scale=10.0)
    model = eqx.tree_at(
        lambda m: m.noise_mlp.layers[-1].bias,
        model,
        jnp.full_like(model.noise_mlp.layers[-1].bias, 5.0),
    )
    z = model.batch_latent(series.ts, series.ys, series.mask, key=jr.key(3))
    assert np.all(np.asarray(z) > 0)


@pytest.mark.x64
@pytest.mark.parametrize("kind", ["lsde", "gsde"])
def test_gradient_matches_finite_differences(kind):
    data = odelab.data.irregular_series(jr.key(0), 3, 6, missing_rate=0.3)
    model = StableNeuralSDE(kind, 2, 3, 2, 4, 0, key=jr.key(1), steps=6)

    def loss(m):
        return jnp.sum(m.batch(data.ts, data.ys, data.mask, key=jr.key(5)) ** 2)

    check_grad(loss, model)


def test_errors(series):
    with pytest.raises(ValueError, match="kind"):
        _model("sde")
    with pytest.raises(ValueError, match="Itô"):
        _model("lsde", solver="heun")
    model = _model("lsde")
    with pytest.raises(ValueError, match="shape"):
        model.batch(series.ts, series.ys[..., :1], series.mask[..., :1], key=jr.key(0))
    with pytest.raises(ValueError, match="mask"):
        model.batch(series.ts, series.ys, series.mask[:, :-1], key=jr.key(0))
    bad_ts = series.ts.at[0, 3].set(series.ts[0, 2])
    with pytest.raises(ValueError, match="increasing"):
        model.batch(bad_ts, series.ys, series.mask, key=jr.key(0))
    assert jax.tree_util.tree_leaves(model)
