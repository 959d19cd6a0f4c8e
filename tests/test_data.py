"""Tests for `odelab.data`.

Checks run in NumPy float64 on the generated arrays; tolerances use the generated
dtype's `eps`. Closed forms are checked against finite differences within the
truncation-error bound plus a round-off term `_ROUNDOFF * eps * scale / h`; sample
frequencies against their expectation within `_Z` binomial standard errors.

Every test draws the same few shapes, so each generator compiles once per precision.
"""

import importlib.util

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import odelab.data as data


# About 30 frequency comparisons: 5 standard errors keep the family-wise false-alarm
# rate near 2e-5. A 2-D standard Gaussian lies beyond radius 6 with probability
# exp(-18) per sample.
_Z = 5.0
_GAUSS_RADIUS = 6.0
# Safety factor on `eps` for the round-off of a few arithmetic operations.
_ROUNDOFF = 10.0

N_SAMPLES = 4000
N_TRAJECTORIES, N_SPIRAL_TIMES = 64, 101
N_SERIES, N_SERIES_TIMES = 256, 200

GENERATORS = {
    "spirals": lambda key: data.spirals(key, N_TRAJECTORIES, N_SPIRAL_TIMES),
    "irregular_series": lambda key: data.irregular_series(
        key, N_SERIES, N_SERIES_TIMES
    ),
    "moons": lambda key: data.moons(key, N_SAMPLES),
    "eight_gaussians": lambda key: data.eight_gaussians(key, N_SAMPLES),
    "checkerboard": lambda key: data.checkerboard(key, N_SAMPLES),
    "swiss_roll": lambda key: data.swiss_roll(key, N_SAMPLES),
}


def _eps(x) -> float:
    return float(np.finfo(x.dtype).eps)


def _binomial_close(count, n: int, p: float) -> bool:
    return abs(int(count) - n * p) <= _Z * np.sqrt(n * p * (1 - p))


def _values(out):
    return out.ys if isinstance(out, data.Dataset) else out


def _indexed(n: int, n_times: int = 3) -> data.Dataset:
    """A dataset whose every field records each example's index."""
    index = np.arange(n)
    return data.Dataset(
        ys=jnp.asarray(np.repeat(index[:, None], n_times, 1), jnp.float32),
        ts=jnp.asarray(np.repeat(index[:, None], n_times, 1), jnp.float32),
        labels=jnp.asarray(index, jnp.int32),
        mask=jnp.ones((n, n_times), dtype=bool),
    )


def _index_of(batch: data.Dataset) -> np.ndarray:
    """The examples' indices, after checking that every field moved together."""
    index = np.asarray(batch.labels)
    np.testing.assert_array_equal(np.asarray(batch.ys)[:, 0], index)
    np.testing.assert_array_equal(np.asarray(batch.ts)[:, 0], index)
    assert np.asarray(batch.mask).shape == np.asarray(batch.ys).shape
    return index


# --------------------------------------------------------------------------------------
# Shapes, dtypes, determinism
# --------------------------------------------------------------------------------------


def test_shapes(key):
    spirals = GENERATORS["spirals"](key)
    assert spirals.ts.shape == (N_SPIRAL_TIMES,)
    assert spirals.ys.shape == (N_TRAJECTORIES, N_SPIRAL_TIMES, 2)
    assert spirals.labels.shape == (N_TRAJECTORIES,) and spirals.mask is None
    assert len(spirals) == N_TRAJECTORIES
    series = GENERATORS["irregular_series"](key)
    assert series.ts.shape == (N_SERIES, N_SERIES_TIMES)
    assert series.ys.shape == series.mask.shape == (N_SERIES, N_SERIES_TIMES, 2)
    assert series.mask.dtype == jnp.bool_ and len(series) == N_SERIES
    for name in ["moons", "eight_gaussians", "checkerboard", "swiss_roll"]:
        assert GENERATORS[name](key).shape == (N_SAMPLES, 2)


def _check_dtypes(key, expected):
    for make in GENERATORS.values():
        out = make(key)
        assert _values(out).dtype == expected
        if isinstance(out, data.Dataset):
            assert out.ts.dtype == expected and out.labels.dtype == jnp.int32


def test_dtypes_float32(key):
    _check_dtypes(key, jnp.float32)


def test_dtypes_follow_x64(x64, key):
    _check_dtypes(key, jnp.float64)


@pytest.mark.parametrize("name", GENERATORS)
def test_deterministic_given_key(key, name):
    make = GENERATORS[name]
    first, again, other = make(key), make(key), make(jr.fold_in(key, 1))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(_values(first), _values(other))


def test_dataset_rejects_mismatched_fields():
    ys = jnp.zeros((4, 3, 2))
    with pytest.raises(ValueError, match="`labels`"):
        data.Dataset(ys=ys, labels=jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match="`mask`"):
        data.Dataset(ys=ys, mask=jnp.ones((4, 3), bool))
    with pytest.raises(ValueError, match="`ts`"):
        data.Dataset(ys=ys, ts=jnp.zeros(4))


@pytest.mark.parametrize(
    "make",
    [
        lambda key: data.spirals(key, 0),
        lambda key: data.moons(key, 10, noise=-1.0),
        lambda key: data.eight_gaussians(key, 10, std=-1.0),
        lambda key: data.checkerboard(key, 2.5),
    ],
)
def test_bad_arguments_raise(key, make):
    with pytest.raises(ValueError):
        make(key)


# --------------------------------------------------------------------------------------
# Spirals
# --------------------------------------------------------------------------------------


def test_spirals_solve_their_ode(key):
    decay, frequency = 0.1, 1.0
    spirals = data.spirals(
        key, N_TRAJECTORIES, N_SPIRAL_TIMES, noise=0.0, decay=decay, frequency=frequency
    )
    eps = _eps(spirals.ys)
    ts, ys = np.asarray(spirals.ts, np.float64), np.asarray(spirals.ys, np.float64)
    labels = np.asarray(spirals.labels)
    assert set(labels.tolist()) == {0, 1}
    h = ts[1] - ts[0]
    sign = (1 - 2 * labels)[:, None]
    x, y = ys[:, 1:-1, 0], ys[:, 1:-1, 1]
    field = np.stack(
        [-decay * x + sign * frequency * y, -sign * frequency * x - decay * y], -1
    )
    central = (ys[:, 2:] - ys[:, :-2]) / (2 * h)
    # Central differences err by h²/6 |y'''| <= h²/6 |λ|³ |y|, |λ|² = a² + b².
    scale = np.max(np.abs(ys))
    rate = np.hypot(decay, frequency)
    tol = h**2 / 6 * rate**3 * scale + _ROUNDOFF * eps * scale / h
    assert np.max(np.abs(central - field)) <= tol
    # The angular momentum y × y' is negative clockwise (label 0), positive otherwise.
    cross = ys[:, :-1, 0] * ys[:, 1:, 1] - ys[:, :-1, 1] * ys[:, 1:, 0]
    assert np.all(np.where(labels[:, None] == 0, cross < 0, cross > 0))
    radius = np.linalg.norm(ys[:, 0], axis=-1)
    assert np.all((radius >= 0.75 - eps) & (radius <= 1.25 + eps))


# --------------------------------------------------------------------------------------
# 2-D densities
# --------------------------------------------------------------------------------------


def test_moons_two_arcs(key):
    clean = data.moons(key, N_SAMPLES, noise=0.0)
    tol = _ROUNDOFF * _eps(clean)
    x = np.asarray(clean, np.float64)
    upper = (np.abs(np.linalg.norm(x, axis=-1) - 1) <= tol) & (x[:, 1] >= -tol)
    lower = (np.abs(np.linalg.norm(x - [1.0, 0.5], axis=-1) - 1) <= tol) & (
        x[:, 1] <= 0.5 + tol
    )
    assert np.all(upper ^ lower)
    assert _binomial_close(np.sum(upper), N_SAMPLES, 0.5)
    noise = 0.05
    noisy = np.asarray(data.moons(key, N_SAMPLES, noise=noise), np.float64)
    assert np.max(np.linalg.norm(noisy - x, axis=-1)) <= _GAUSS_RADIUS * noise


def test_eight_gaussians_modes(key):
    scale, std = 2.0, 0.05
    x = np.asarray(data.eight_gaussians(key, N_SAMPLES, scale, std), np.float64)
    angles = np.arange(8) * np.pi / 4
    centres = scale * np.stack([np.cos(angles), np.sin(angles)], -1)
    distance = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=-1)
    assert np.max(np.min(distance, axis=1)) <= _GAUSS_RADIUS * std
    radius = np.linalg.norm(x, axis=-1)
    assert np.max(np.abs(radius - scale)) <= _GAUSS_RADIUS * std
    counts = np.bincount(np.argmin(distance, axis=1), minlength=8)
    assert all(_binomial_close(c, N_SAMPLES, 1 / 8) for c in counts)


def test_checkerboard_black_squares(key):
    x = np.asarray(data.checkerboard(key, N_SAMPLES))
    assert np.all((x >= -4) & (x < 4))
    cell = np.floor(x / 2).astype(int)
    assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0)
    counts = np.bincount((cell[:, 0] + 2) * 4 + (cell[:, 1] + 2), minlength=16)
    black = [i * 4 + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    assert all(_binomial_close(counts[s], N_SAMPLES, 1 / 8) for s in black)


def test_swiss_roll_radius_grows_with_angle(key):
    clean = data.swiss_roll(key, N_SAMPLES, noise=0.0)
    eps = _eps(clean)
    x = np.asarray(clean, np.float64)
    radius = np.linalg.norm(x, axis=-1)
    r_min, r_max = 0.3 * np.pi, 0.9 * np.pi
    tol = _ROUNDOFF * eps * r_max
    assert np.all((radius >= r_min - tol) & (radius <= r_max + tol))
    # Without noise the angle is 5 |x|: a point is r (cos 5r, sin 5r). A relative
    # round-off eps in t = 5r moves the point by about r · t · eps <= 5 r_max² eps.
    on_spiral = radius[:, None] * np.stack([np.cos(5 * radius), np.sin(5 * radius)], -1)
    assert np.max(np.abs(x - on_spiral)) <= _ROUNDOFF * eps * 5 * r_max**2
    # The angle covers more than one full turn.
    assert 5 * (np.max(radius) - np.min(radius)) > 2 * np.pi


# --------------------------------------------------------------------------------------
# Irregular series
# --------------------------------------------------------------------------------------


def test_irregular_times_and_mask(key):
    rate, t1 = 0.3, 10.0
    series = data.irregular_series(
        key, N_SERIES, N_SERIES_TIMES, missing_rate=rate, t1=t1
    )
    ts, ys, mask = (np.asarray(a) for a in (series.ts, series.ys, series.mask))
    assert np.all(np.diff(ts, axis=1) >= 0)
    assert np.all((ts >= 0) & (ts <= t1))
    assert _binomial_close(np.sum(mask), mask.size, 1 - rate)
    assert np.all(ys[~mask] == 0)
    assert np.sum(np.asarray(series.labels)) == N_SERIES - N_SERIES // 2


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_irregular_bad_missing_rate(key, rate):
    with pytest.raises(ValueError, match="missing_rate"):
        data.irregular_series(key, 4, 5, missing_rate=rate)


@pytest.fixture
def clean_series(key) -> data.Dataset:
    return data.irregular_series(
        key, N_SERIES, N_SERIES_TIMES, missing_rate=0.0, noise=0.0
    )


def test_irregular_regimes(clean_series):
    assert np.all(np.asarray(clean_series.mask))
    x = np.asarray(clean_series.ys[..., 0])
    changes = np.sum(np.sign(x[:, 1:]) != np.sign(x[:, :-1]), axis=1)
    overdamped = np.asarray(clean_series.labels) == 1
    # An overdamped oscillator crosses zero at most once; an underdamped one every
    # π/ω_d <= π/(1 · √(1 - 0.5²)) < 3.7, so at least twice on a span near [0, 10].
    assert np.all(changes[overdamped] <= 1)
    assert np.all(changes[~overdamped] >= 2)


def test_irregular_velocity_is_derivative(clean_series):
    eps = _eps(clean_series.ys)
    ts = np.asarray(clean_series.ts, np.float64)
    ys = np.asarray(clean_series.ys, np.float64)
    h = np.diff(ts, axis=1)
    slope = np.diff(ys[..., 0], axis=1) / np.maximum(h, 1e-3)
    mean_velocity = (ys[:, 1:, 1] + ys[:, :-1, 1]) / 2
    # Underdamped x = Re(c e^{λt}) with |λ| = ω <= 3 and |c| <= 2, so the trapezoid
    # rule errs by at most h²/12 · |c| ω³; with gaps in [h_min, h_max] neither that
    # nor the round-off of the difference quotient, eps |c| / h_min, can hide a bug.
    h_min, h_max = 5e-3, 2e-2
    underdamped = np.asarray(clean_series.labels)[:, None] == 0
    keep = underdamped & (h >= h_min) & (h <= h_max)
    assert np.sum(keep) > 100
    tol = h_max**2 / 12 * 2 * 3.0**3 + _ROUNDOFF * eps * 2 / h_min
    assert np.max(np.abs(slope - mean_velocity)[keep]) <= tol


# --------------------------------------------------------------------------------------
# Split and batches
# --------------------------------------------------------------------------------------


def test_split_sizes_and_disjoint(key):
    dataset = _indexed(50)
    train, val = data.split(dataset, 0.2, key)
    assert (len(train), len(val)) == (40, 10)
    together = np.concatenate([_index_of(train), _index_of(val)])
    assert sorted(together.tolist()) == list(range(50))
    again, _ = data.split(dataset, 0.2, key)
    np.testing.assert_array_equal(again.labels, train.labels)


def test_split_keeps_shared_ts(key):
    spirals = GENERATORS["spirals"](key)
    train, val = data.split(spirals, 0.25, key)
    assert train.ts is spirals.ts and val.ts is spirals.ts
    assert val.ys.shape == (N_TRAJECTORIES // 4, N_SPIRAL_TIMES, 2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.1, 0.95])
def test_split_empty_raises(key, fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        data.split(_indexed(3), fraction, key)


def test_batches_one_epoch(key):
    n, batch_size = 103, 10
    seen = [_index_of(b) for b in data.batches(_indexed(n), batch_size, key)]
    assert len(seen) == n // batch_size
    assert all(len(index) == batch_size for index in seen)
    flat = np.concatenate(seen)
    assert len(set(flat.tolist())) == len(flat)


def test_batch_too_large_raises_at_call(key):
    with pytest.raises(ValueError, match=r"\(11\).*\(10\)"):
        data.batches(_indexed(10), 11, key)
    with pytest.raises(ValueError, match=r"\(11\).*\(10\)"):
        data.sample_batch(_indexed(10), 11, key)


def test_sample_batch_jit(key):
    dataset = _indexed(40)
    sample = jax.jit(data.sample_batch, static_argnums=1)
    batch = sample(dataset, 16, key)
    assert len(set(_index_of(batch).tolist())) == 16
    np.testing.assert_array_equal(sample(dataset, 16, key).labels, batch.labels)
    assert not np.array_equal(
        sample(dataset, 16, jr.fold_in(key, 1)).labels, batch.labels
    )


# --------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------


def test_digits(key):
    pytest.importorskip("sklearn")
    digits = data.digits()
    assert digits.ys.shape == (1797, 64) and digits.ys.dtype == jnp.float32
    assert digits.labels.dtype == jnp.int32 and digits.ts is None
    ys = np.asarray(digits.ys)
    assert ys.min() >= 0 and ys.max() <= 1
    assert set(np.asarray(digits.labels).tolist()) == set(range(10))
    shuffled = data.digits(key)
    assert sorted(np.asarray(shuffled.labels).tolist()) == sorted(
        np.asarray(digits.labels).tolist()
    )


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: None if name == "sklearn" else real_find_spec(name),
    )
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        data.digits()


@pytest.mark.parametrize(
    ("direction", "label"), [("clockwise", 0), ("anticlockwise", 1)]
)
def test_spirals_one_direction(key, direction, label):
    dataset = data.spirals(key, 16, 8, noise=0.0, direction=direction)
    assert np.all(np.asarray(dataset.labels) == label)
    with pytest.raises(ValueError, match="direction"):
        data.spirals(key, 16, 8, direction="sideways")


# --------------------------------------------------------------------------------------
# Irregular spirals
# --------------------------------------------------------------------------------------

N_IRREGULAR, N_IRREGULAR_TIMES = 256, 40


def test_irregular_spirals_shapes_dtypes(key):
    spirals = data.irregular_spirals(key, N_IRREGULAR, N_IRREGULAR_TIMES)
    assert spirals.ys.shape == (N_IRREGULAR, N_IRREGULAR_TIMES, 2)
    assert spirals.ts.shape == (N_IRREGULAR, N_IRREGULAR_TIMES)
    assert spirals.mask.shape == spirals.ys.shape and spirals.mask.dtype == jnp.bool_
    assert spirals.ys.dtype == spirals.ts.dtype == jnp.float32
    assert spirals.labels.dtype == jnp.int32


def test_irregular_spirals_follow_x64(x64, key):
    spirals = data.irregular_spirals(key, 8, 5)
    assert spirals.ys.dtype == spirals.ts.dtype == jnp.float64


def test_irregular_spirals_times_mask_labels(key):
    rate, t1 = 0.3, 5.0
    spirals = data.irregular_spirals(
        key, N_IRREGULAR, N_IRREGULAR_TIMES, missing_rate=rate, t1=t1
    )
    ts, ys, mask = (np.asarray(a) for a in (spirals.ts, spirals.ys, spirals.mask))
    assert np.all(np.diff(ts, axis=1) >= 0) and np.all((ts >= 0) & (ts <= t1))
    assert _binomial_close(np.sum(mask), mask.size, 1 - rate)
    assert np.all(ys[~mask] == 0)
    labels = np.asarray(spirals.labels)
    assert np.all(labels[: N_IRREGULAR // 2] == 0) and np.all(
        labels[N_IRREGULAR // 2 :]
    )
    again = data.irregular_spirals(key, N_IRREGULAR, N_IRREGULAR_TIMES, rate, t1)
    np.testing.assert_array_equal(again.ys, spirals.ys)
    other = data.irregular_spirals(jr.fold_in(key, 1), N_IRREGULAR, N_IRREGULAR_TIMES)
    assert not np.array_equal(other.ts, spirals.ts)


def test_irregular_spirals_solve_their_ode(key):
    # Each observation is the previous one carried by the exact flow
    # y(t + h) = e^{-a h} R(s b h) y(t), clockwise (s = 1) for label 0.
    decay, frequency = 0.1, 1.0
    spirals = data.irregular_spirals(
        key, N_IRREGULAR, N_IRREGULAR_TIMES, 0.0, noise=0.0, decay=decay
    )
    eps = _eps(spirals.ys)
    ts, ys = np.asarray(spirals.ts, np.float64), np.asarray(spirals.ys, np.float64)
    sign = (1 - 2 * np.asarray(spirals.labels))[:, None]
    h = np.diff(ts, axis=1)
    angle = sign * frequency * h
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = ys[:, :-1, 0], ys[:, :-1, 1]
    carried = np.exp(-decay * h)[..., None] * np.stack(
        [cos * x + sin * y, cos * y - sin * x], -1
    )
    # Each value is rounded in its angle b t (eps t), its envelope and sines (a few
    # eps), relative to |y| <= 1.25; two values enter each difference.
    t1 = float(np.max(ts))
    assert np.max(np.abs(carried - ys[:, 1:])) <= _ROUNDOFF * eps * (1 + 2 * t1)
    radius = np.linalg.norm(ys, axis=-1) * np.exp(decay * ts)
    tol = _ROUNDOFF * eps * 1.25
    assert np.all((radius >= 0.75 - tol) & (radius <= 1.25 + tol))


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_irregular_spirals_bad_missing_rate(key, rate):
    with pytest.raises(ValueError, match="missing_rate"):
        data.irregular_spirals(key, 4, 5, missing_rate=rate)


# --------------------------------------------------------------------------------------
# Ornstein–Uhlenbeck and geometric Brownian motion
# --------------------------------------------------------------------------------------

# Monte-Carlo comparisons: each statistic within `_Z` standard errors of its exact
# value (about 60 comparisons, so a family-wise false-alarm rate near 4e-5), plus
# float32 round-off of the sums.
N_PATHS, N_PROCESS_TIMES = 20000, 11
OU = dict(t1=2.0, theta=1.5, mu=0.5, sigma=0.8, x0=-1.0)
GBM = dict(t1=1.0, mu=0.3, sigma=0.5, x0=2.0)


def _mc_close(estimate, exact, standard_error, scale):
    tol = _Z * standard_error + _ROUNDOFF * np.finfo(np.float32).eps * scale
    return np.abs(estimate - exact) <= tol


def _paths(dataset):
    return np.asarray(dataset.ys[..., 0], np.float64)


def test_ou_shapes_and_start(key):
    ou = data.ou_process(key, 16, N_PROCESS_TIMES, **OU)
    assert ou.ys.shape == (16, N_PROCESS_TIMES, 1) and ou.ts.shape == (N_PROCESS_TIMES,)
    assert ou.ys.dtype == ou.ts.dtype == jnp.float32
    assert ou.labels is None and ou.mask is None
    np.testing.assert_allclose(ou.ts, np.linspace(0, OU["t1"], N_PROCESS_TIMES))
    assert np.all(np.asarray(ou.ys[:, 0, 0]) == OU["x0"])


def test_ou_without_noise_is_the_exact_mean(key):
    params = dict(OU, sigma=0.0)
    ou = data.ou_process(key, 4, N_PROCESS_TIMES, **params)
    mean, var = data.ou_moments(ou.ts, **{k: params[k] for k in OU if k != "t1"})
    assert np.all(np.asarray(var) == 0)
    np.testing.assert_allclose(
        _paths(ou), np.broadcast_to(mean, (4, N_PROCESS_TIMES)), rtol=0, atol=1e-6
    )


def test_ou_moments_match_monte_carlo(key):
    ou = data.ou_process(key, N_PATHS, N_PROCESS_TIMES, **OU)
    x = _paths(ou)
    mean, var = (np.asarray(a, np.float64) for a in data.ou_moments(ou.ts, **_ou()))
    # Gaussian marginals: SE(mean) = sqrt(v / n), SE(sample variance) = v sqrt(2/(n-1)).
    assert np.all(_mc_close(x.mean(0), mean, np.sqrt(var / N_PATHS), 1.0))
    assert np.all(
        _mc_close(x.var(0, ddof=1), var, var * np.sqrt(2 / (N_PATHS - 1)), 1.0)
    )


def _ou():
    return {k: OU[k] for k in ("theta", "mu", "sigma", "x0")}


def test_ou_covariance_matches_monte_carlo(key):
    ou = data.ou_process(key, N_PATHS, N_PROCESS_TIMES, **OU)
    x = _paths(ou)
    ts = np.asarray(ou.ts, np.float64)
    _, var = (np.asarray(a, np.float64) for a in data.ou_moments(ts, **_ou()))
    i, j = np.triu_indices(N_PROCESS_TIMES, 1)
    i, j = i[i > 0], j[i > 0]  # x_0 is deterministic
    exact = np.asarray(data.ou_covariance(ts[i], ts[j], OU["theta"], OU["sigma"]))
    centred = x - x.mean(0)
    sample = np.sum(centred[:, i] * centred[:, j], 0) / (N_PATHS - 1)
    # Jointly Gaussian: Var(sample covariance) = (v_s v_t + c^2) / n.
    se = np.sqrt((var[i] * var[j] + exact**2) / N_PATHS)
    assert np.all(_mc_close(sample, exact, se, 1.0))
    # At s = t it is the variance; far from 0 it is the stationary autocovariance.
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(
        data.ou_covariance(ts, ts, OU["theta"], OU["sigma"]), var, rtol=_ROUNDOFF * eps
    )
    late = np.asarray([30.0, 30.5, 31.0])
    # The float32 lag (t + 0.7) - t is off by up to eps t, the exponential by θ eps t;
    # e^{-2θ·30} is far below that.
    np.testing.assert_allclose(
        data.ou_covariance(late, late + 0.7, OU["theta"], OU["sigma"]),
        data.ou_stationary_covariance(0.7, OU["theta"], OU["sigma"]) * np.ones(3),
        rtol=_ROUNDOFF * eps * OU["theta"] * 32,
    )


def test_gbm_moments_match_monte_carlo(key):
    gbm = data.gbm_process(key, N_PATHS, N_PROCESS_TIMES, **GBM)
    assert gbm.ys.shape == (N_PATHS, N_PROCESS_TIMES, 1)
    x = _paths(gbm)
    ts = np.asarray(gbm.ts, np.float64)
    mu, sigma, x0 = GBM["mu"], GBM["sigma"], GBM["x0"]
    mean, var = (np.asarray(a, np.float64) for a in data.gbm_moments(ts, mu, sigma, x0))
    assert np.all(x[:, 0] == x0) and np.all(x > 0)
    # x_t = x0 e^Y, Y ~ N(a, b^2): E x^k = x0^k e^{k a + k^2 b^2 / 2}, from which the
    # fourth central moment μ4 and SE(sample variance) = sqrt((μ4 - v^2 (n-3)/(n-1))/n).
    a, b2 = np.log(x0) + (mu - sigma**2 / 2) * ts, sigma**2 * ts
    raw = [np.exp(k * a + k**2 * b2 / 2) for k in range(5)]
    mu4 = raw[4] - 4 * mean * raw[3] + 6 * mean**2 * raw[2] - 3 * mean**4
    var_se = np.sqrt(
        np.maximum(mu4 - var**2 * (N_PATHS - 3) / (N_PATHS - 1), 0) / N_PATHS
    )
    scale = np.max(np.abs(x))
    assert np.all(_mc_close(x.mean(0), mean, np.sqrt(var / N_PATHS), scale))
    assert np.all(_mc_close(x.var(0, ddof=1), var, var_se, scale**2))


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda key: data.ou_process(key, 4, 5, theta=0.0), "theta"),
        (lambda key: data.ou_process(key, 4, 5, sigma=-1.0), "sigma"),
        (lambda key: data.ou_process(key, 4, 1), "n_times"),
        (lambda key: data.gbm_process(key, 0, 5), "n_paths"),
        (lambda key: data.gbm_process(key, 4, 5, t1=0.0), "t1"),
        (lambda key: data.ou_moments(jnp.ones(3), -1.0, 0.0, 1.0, 0.0), "theta"),
        (lambda key: data.ou_covariance(jnp.ones(3), jnp.ones(2), 1.0, 1.0), "`s`"),
    ],
)
def test_process_bad_arguments(key, make, argument):
    with pytest.raises(ValueError, match=argument):
        make(key)


def test_processes_follow_x64(x64, key):
    assert data.ou_process(key, 4, 5).ys.dtype == jnp.float64
    assert data.gbm_process(key, 4, 5).ts.dtype == jnp.float64
    assert data.ou_moments(jnp.arange(3), 1.0, 0.0, 1.0, 0.0)[1].dtype == jnp.float64


# --------------------------------------------------------------------------------------
# Context/target splits of time series
# --------------------------------------------------------------------------------------


def test_split_times_interpolation(key):
    spirals = data.irregular_spirals(key, 64, 20, missing_rate=0.3)
    context, target = data.split_times(
        spirals, "interpolation", 0.4, jr.fold_in(key, 1)
    )
    mask, c_mask, t_mask = (
        np.asarray(a) for a in (spirals.mask, context.mask, target.mask)
    )
    np.testing.assert_array_equal(t_mask, mask)
    assert np.all(c_mask <= mask)
    # Exactly round(0.4 * 20) = 8 time points per series, both coordinates together
    # (seen without missing values).
    chosen = np.asarray(
        data.split_times(
            data.Dataset(ys=spirals.ys, ts=spirals.ts), "interpolation", 0.4,
            jr.fold_in(key, 1),
        )[0].mask
    )  # fmt: skip
    assert np.all(chosen.sum(1) == 8)
    np.testing.assert_array_equal(chosen[..., 0], chosen[..., 1])
    np.testing.assert_array_equal(c_mask, chosen & mask)
    for part in (context, target):
        assert np.all(np.asarray(part.ys)[~np.asarray(part.mask)] == 0)
        np.testing.assert_array_equal(part.ts, spirals.ts)
        np.testing.assert_array_equal(part.labels, spirals.labels)
    # Different series choose different points; a different key other points.
    assert len({tuple(row) for row in chosen[..., 0]}) > 1
    other = data.split_times(spirals, "interpolation", 0.4, jr.fold_in(key, 2))[0]
    assert not np.array_equal(np.asarray(other.mask), c_mask)


def test_split_times_extrapolation_shared_ts(key):
    spirals = data.spirals(key, 16, 11)
    context, target = data.split_times(spirals, "extrapolation", 0.5)
    c_mask, t_mask = np.asarray(context.mask), np.asarray(target.mask)
    # round(5.5) = 6 (banker's rounding gives 6 too): the first 6 of 11 times.
    assert np.all(c_mask[:, :6]) and not np.any(c_mask[:, 6:])
    np.testing.assert_array_equal(t_mask, ~c_mask)
    np.testing.assert_array_equal(np.asarray(target.ys)[:, 6:], spirals.ys[:, 6:])
    np.testing.assert_array_equal(target.ts, spirals.ts)


def test_split_times_jit(key):
    spirals = data.irregular_spirals(key, 8, 10)
    split = jax.jit(data.split_times, static_argnums=(1, 2))
    context, _ = split(spirals, "interpolation", 0.5, key)
    eager, _ = data.split_times(spirals, "interpolation", 0.5, key)
    np.testing.assert_array_equal(context.mask, eager.mask)


@pytest.mark.parametrize(
    ("mode", "fraction", "key_given", "match"),
    [
        ("forecast", 0.5, True, "mode"),
        ("extrapolation", 1.0, False, "observed_fraction"),
        ("interpolation", 0.0, True, "observed_fraction"),
        ("interpolation", 0.01, True, "observed_fraction"),
        ("interpolation", 0.5, False, "key"),
    ],
)
def test_split_times_bad_arguments(key, mode, fraction, key_given, match):
    spirals = data.irregular_spirals(key, 4, 10)
    with pytest.raises(ValueError, match=match):
        data.split_times(spirals, mode, fraction, key if key_given else None)
    with pytest.raises(ValueError, match="`ts`"):
        data.split_times(data.Dataset(ys=spirals.ys), "extrapolation")
