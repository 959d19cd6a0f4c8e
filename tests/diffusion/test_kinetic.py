"""Tests of `odelab.diffusion.kinetic`: the data separation function against closed
forms, λ ≡ 1 giving conditional OT, the kinetic-optimal path's energy against cond-OT
and a VP path, the tabulated schedule (round trip, ends, derivatives), errors."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion.analytic import GaussianMixture
from odelab.diffusion.kinetic import (
    KineticOptimal,
    data_separation,
    kinetic_energy,
    kinetic_optimal_schedule,
)
from odelab.diffusion.schedules import RectifiedFlow, time_grid


SIGMA_MIN = 1e-3
# Standard errors a Monte-Carlo estimate may stray by (a 1-in-1.7-million event).
MC_SIGMAS = 5.0


def _ring_data(n=256):
    """A 2-D data set with λ well below 1 at moderate r: 8 clusters on a circle,
    normalised to E||x||² = d."""
    angles = 2 * math.pi * jnp.arange(8.0) / 8
    centres = 2.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    which = jnp.arange(n) % 8
    data = centres[which] + 0.1 * jax.random.normal(jax.random.key(1), (n, 2))
    return data / jnp.sqrt(jnp.mean(jnp.sum(data**2, axis=-1)) / 2)


def _r_table(points=64):
    return jnp.tan(jnp.linspace(0.0, math.atan(1 / SIGMA_MIN), points))


@functools.cache
def _ring_separation():
    """The ring data, a table of r and its λ(r) (float64 NumPy; x64 tests only), one
    Monte-Carlo estimate shared by the tests (each new shape is a compilation)."""
    data, r = _ring_data(), _r_table()
    lam = data_separation(data, r, jax.random.key(0), samples=1024)
    return np.asarray(data), np.asarray(r), np.asarray(lam)


@pytest.mark.x64
def test_separation_gaussian_closed_form(key):
    # x_1 ~ N(0, I): E[x_1 | y] = r y / (1 + r²), λ(r) = r²/(1 + r²). The posterior
    # error ||x_1 - E[x_1|y]||² = ||x_1 - r x_0||²/(1 + r²)² ~ χ²_d / (1 + r²), so the
    # estimate of λ has standard error sqrt(2 / (d M)) / (1 + r²).
    d, m = 8, 4096
    mixture = GaussianMixture(jnp.zeros((1, d)), 1.0)
    data = jax.random.normal(jax.random.key(3), (m, d))  # the mixture's samples
    # odelab's denoisers are in x_t: RectifiedFlow at t = 1/(1 + r) has α/σ = r.
    flow = RectifiedFlow(eps=0.0)

    def denoiser(y, r):
        return mixture.denoiser(y / (1 + r), 1 / (1 + r), flow)

    r = jnp.array([0.0, 0.3, 1.0, 2.0, 5.0])
    lam = data_separation(data, r, key, samples=m, denoiser=denoiser, second_moment=d)
    error = jnp.abs(lam - r**2 / (1 + r**2))
    assert bool(jnp.all(error <= MC_SIGMAS * math.sqrt(2 / (d * m)) / (1 + r**2)))


@pytest.mark.x64
def test_separation_two_points_exact(key):
    # Data {+1, -1} in 1-D (D = 1): E[x_1 | y] = tanh(r y), so λ(r) = E tanh²(r(r + x_0))
    # by symmetry, a 1-D Gaussian integral (Gauss–Hermite), as is the variance of the
    # posterior error (1 - tanh(r(r + x_0)))² that the estimate averages.
    m = 8192
    data = jnp.array([[1.0], [-1.0]])
    r = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0])
    lam = data_separation(data, jnp.asarray(r), key, samples=m)
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    weights = weights / math.sqrt(2 * math.pi)
    err = (1 - np.tanh(r[:, None] * (r[:, None] + nodes[None, :]))) ** 2
    mean_err = err @ weights
    std_err = np.sqrt(err**2 @ weights - mean_err**2)
    error = np.abs(np.asarray(lam) - (1 - mean_err))
    assert np.all(error <= MC_SIGMAS * std_err / math.sqrt(m) + 1e-12)


@pytest.mark.x64
def test_separation_limits_and_shapes():
    data, r, lam = _ring_separation()
    # At r = 0 the posterior is uniform over the set, E[x_1|y] is the set's mean, and
    # with every point drawn equally often (samples = 4n) λ(0) = ||mean||²/D exactly.
    mean = np.mean(data, axis=0)
    np.testing.assert_allclose(lam[0], np.sum(mean**2) / 2.0, rtol=1e-10)
    # At r = 1e3 the posterior picks the right point unless another lies within a few
    # noise scales 1/r; such a pair (gap δ) adds at most δ² to the posterior error.
    gaps = np.sum((data[:, None, :] - data[None, :, :]) ** 2, axis=-1)
    close = (gaps < (10 / r[-1]) ** 2) & ~np.eye(len(data), dtype=bool)
    bound = np.sum(np.where(close, gaps, 0.0)) / len(data) / 2.0
    assert 1 - lam[-1] <= bound + 1e-12
    assert np.all((lam >= 0) & (lam <= 1))
    # Any shape of r; the default key is key(0), so the estimate is reproducible.
    lam_2d = data_separation(data, r.reshape(8, 8), samples=1024)
    assert lam_2d.shape == (8, 8)
    np.testing.assert_array_equal(lam_2d.reshape(-1), lam)


@pytest.mark.x64
@pytest.mark.parametrize("sigma_data", [1.0, 2.5])
@pytest.mark.parametrize("as_table", [False, True], ids=["function", "table"])
def test_lambda_one_is_cond_ot(sigma_data, as_table):
    r = _r_table(8)
    separation = (r, jnp.ones_like(r)) if as_table else np.ones_like
    schedule = kinetic_optimal_schedule(separation, SIGMA_MIN, sigma_data=sigma_data)
    ts = schedule.ts
    # w ≡ 1: φ = θ, and P_s is the straight line itself: cond-OT at the knots, to
    # round-off in θ ≈ π/2 that cos θ amplifies by tan θ₁ = c/σ_min.
    rtol = 1e-15 * sigma_data / SIGMA_MIN
    np.testing.assert_allclose(np.exp(schedule.log_alphas), 1 - ts, rtol=rtol)
    np.testing.assert_allclose(
        np.exp(schedule.log_sigmas), SIGMA_MIN + (1 - SIGMA_MIN) * ts, rtol=rtol
    )
    np.testing.assert_allclose(
        schedule.energy, (1 - SIGMA_MIN) ** 2 + sigma_data**2, rtol=1e-13
    )
    # Between knots log α, log σ are linear: error ≤ h²/8 max|f''| on each interval,
    # f'' = -1/(1 - t)² for log α, -(1 - σ_min)²/σ(t)² for log σ.
    h = np.diff(ts)
    mid = ts[:-1] + h / 2
    bound_a = h**2 / 8 / (1 - ts[1:]) ** 2 + 1e-14
    bound_s = (
        h**2 / 8 * ((1 - SIGMA_MIN) / (SIGMA_MIN + (1 - SIGMA_MIN) * ts[:-1])) ** 2
    )
    err_a = np.abs(schedule.log_alpha(jnp.asarray(mid)) - np.log1p(-mid))
    err_s = np.abs(
        schedule.log_sigma(jnp.asarray(mid)) - np.log(SIGMA_MIN + (1 - SIGMA_MIN) * mid)
    )
    assert np.all(err_a <= bound_a)
    assert np.all(err_s <= bound_s + 1e-14)


def _vp_path(s):
    """A VP (cosine-like) path with the KO path's ends: θ = θ₁ s, ρ linear."""
    theta1 = math.atan(1 / SIGMA_MIN)
    rho = 1 + s * (math.hypot(1, SIGMA_MIN) - 1)
    return rho * jnp.sin(theta1 * s), rho * jnp.cos(theta1 * s)


@pytest.mark.x64
def test_kinetic_optimal_beats_cond_ot_and_vp():
    _, r, lam = _ring_separation()
    schedule = kinetic_optimal_schedule((r, lam), SIGMA_MIN)
    eps = schedule.t_min
    s = jnp.linspace(eps, 1 - eps, 4001)

    @jax.jit
    def energies(s):
        def energy(alpha, sigma):
            return kinetic_energy(alpha, sigma, (r, lam), s, dim=2)

        return (
            energy(lambda s: schedule.alpha(1 - s), lambda s: schedule.sigma(1 - s)),
            energy(lambda s: s, lambda s: 1 - (1 - SIGMA_MIN) * s),
            energy(lambda s: _vp_path(s)[0], lambda s: _vp_path(s)[1]),
        )

    ko, cond_ot, vp = (float(x) for x in energies(s))
    print(f"kinetic energy (d = 2): KO {ko:.4f}, cond-OT {cond_ot:.4f}, VP {vp:.4f}")
    # The stored energy d |P1 - P0|² (on [ε, 1 - ε]) is that of the path under
    # max(w, w_min) ≥ w, an upper bound up to the table's interpolation error and the
    # quadratures (θ and s grids); the floor w_min = 1e-4 costs little here.
    closed_form = 2 * (1 - 2 * eps) * schedule.energy
    print(f"closed form {closed_form:.4f}")
    assert 0.95 * closed_form <= ko <= (1 + 1e-3) * closed_form
    assert ko < 0.9 * vp
    assert ko < 0.9 * cond_ot


@pytest.mark.x64
def test_gaussian_data_energy():
    # λ = r²/(1 + r²): w ≡ 0 and KE/d = ρ̇² (the marginal is N(0, ρ² I)). The path is
    # the optimum for w ≡ w_min: φ₁ = √w_min θ₁, energy |ρ₁ e^{iφ₁} - 1|², and under
    # the true w ≡ 0 it costs only ∫ ρ̇² ≤ that. Cond-OT costs ∫ ρ̇² with
    # ρ² = s² + (1 - (1 - σ_min)s)².
    def separation(r):
        return r**2 / (1 + r**2)

    w_min = 1e-4
    schedule = kinetic_optimal_schedule(separation, SIGMA_MIN, w_min=w_min)
    rho1 = math.hypot(1, SIGMA_MIN)
    phi1 = math.sqrt(w_min) * math.atan(1 / SIGMA_MIN)
    np.testing.assert_allclose(
        schedule.energy, 1 + rho1**2 - 2 * rho1 * math.cos(phi1), rtol=1e-12
    )
    eps = schedule.t_min

    @jax.jit
    def energies(s_ko, s):
        ko = kinetic_energy(
            lambda s: schedule.alpha(1 - s),
            lambda s: schedule.sigma(1 - s),
            separation,
            s_ko,
            dim=3,
        )
        cond_ot = kinetic_energy(
            lambda s: s, lambda s: 1 - (1 - SIGMA_MIN) * s, separation, s, dim=3
        )
        return ko, cond_ot

    s = np.linspace(0.0, 1.0, 20001)
    ko, cond_ot = energies(jnp.linspace(eps, 1 - eps, 4001), jnp.asarray(s))
    assert 0.0 <= float(ko) <= 3 * schedule.energy
    b = 1 - (1 - SIGMA_MIN) * s
    rho_dot = (s - (1 - SIGMA_MIN) * b) / np.hypot(s, b)
    exact = 3 * np.trapezoid(rho_dot**2, s)
    np.testing.assert_allclose(cond_ot, exact, rtol=1e-10)
    assert float(ko) < 1e-3 * exact


@pytest.mark.x64
def test_schedule_round_trip_derivatives_and_ends():
    _, r, lam = _ring_separation()
    w_min = 1e-4
    grid = np.concatenate([[0.0], np.linspace(1e-3, 1 - 1e-3, 999), [1 - 1e-9]])
    schedule = kinetic_optimal_schedule((r, lam), SIGMA_MIN, grid=grid, w_min=w_min)
    assert (schedule.t_min, schedule.t_max) == (0.0, 1 - 1e-9)
    t = jnp.linspace(schedule.t_min, schedule.t_max, 3001)
    t_mid = 0.4321

    # One compilation for all the checks (op-by-op dispatch compiles every op).
    @jax.jit
    def quantities(t, knots):
        lam_t = schedule.lam(t)
        tangents = [
            jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]
            for fn in (schedule.log_alpha, schedule.log_sigma, schedule.lam)
        ]
        return dict(
            lam=lam_t,
            back=schedule.t_of_lambda(lam_t),
            tangents=jnp.stack(tangents),
            dt_dlam=jax.grad(schedule.t_of_lambda)(schedule.lam(t_mid)),
            dlam_dt=jax.grad(schedule.lam)(t_mid),
            alpha=schedule.alpha(knots),
            sigma=schedule.sigma(knots),
            grid=time_grid(schedule, 10, "logsnr"),
        )

    out = quantities(t, jnp.asarray(grid))
    # The data end is exactly (α, σ) = (1, σ_min) (to round-off amplified by
    # tan θ₁ = 1/σ_min in σ = ρ cos θ).
    np.testing.assert_allclose(out["alpha"][0], 1.0, rtol=1e-13)
    np.testing.assert_allclose(out["sigma"][0], SIGMA_MIN, rtol=1e-15 / SIGMA_MIN)
    # ρ = |P_s| whatever θ is: a check of the table that needs no φ⁻¹.
    s = 1 - grid
    rho1 = math.hypot(1, SIGMA_MIN)
    cos_phi1 = (1 + rho1**2 - schedule.energy) / (2 * rho1)
    sin_phi1 = math.sqrt(1 - cos_phi1**2)
    rho_exact = np.hypot(1 - s + s * rho1 * cos_phi1, s * rho1 * sin_phi1)
    np.testing.assert_allclose(
        np.hypot(out["alpha"], out["sigma"]), rho_exact, rtol=1e-12
    )
    # At the noise end θ ≤ φ/√w_min with φ ≤ s ρ₁/(1 - s): α → 0 as s → 0.
    assert float(out["alpha"][-1]) <= 2e-9 / math.sqrt(w_min)
    # λ(t) strictly decreasing and t(λ(t)) = t (λ is piecewise linear: exact inverse).
    assert bool(jnp.all(jnp.diff(out["lam"]) < 0))
    np.testing.assert_allclose(out["back"], t, rtol=1e-10, atol=1e-12)
    # Finite derivatives, knots and ends included; dt/dλ = 1/(dλ/dt).
    assert bool(jnp.all(jnp.isfinite(out["tangents"])))
    np.testing.assert_allclose(out["dt_dlam"], 1 / out["dlam_dt"], rtol=1e-8)
    # A sampler's grid, uniform in λ: its ends are the schedule's.
    np.testing.assert_allclose(
        out["grid"][jnp.array([0, -1])], [schedule.t_max, schedule.t_min], rtol=1e-15
    )


def test_schedule_float32():
    schedule = kinetic_optimal_schedule(lambda r: r**2 / (1 + r**2) + 0.5 / (1 + r**2))
    t = jnp.linspace(schedule.t_min, schedule.t_max, 101)
    assert t.dtype == jnp.float32
    out = eqx.filter_jit(lambda s, t: s.log_sigma(t))(schedule, t)
    assert out.dtype == jnp.float32
    expected = np.interp(np.asarray(t, np.float64), schedule.ts, schedule.log_sigmas)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_errors():
    ok = np.ones_like
    with pytest.raises(ValueError, match="sigma_min"):
        kinetic_optimal_schedule(ok, 0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        kinetic_optimal_schedule(ok, sigma_data=-1.0)
    with pytest.raises(ValueError, match="quadrature"):
        kinetic_optimal_schedule(ok, quadrature=1)
    with pytest.raises(ValueError, match="at least 2 points"):
        kinetic_optimal_schedule(ok, grid=1)
    with pytest.raises(ValueError, match="eps"):
        kinetic_optimal_schedule(ok, eps=0.6)
    with pytest.raises(ValueError, match="strictly increasing"):
        kinetic_optimal_schedule(ok, grid=np.array([0.5, 0.2, 0.9]))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        kinetic_optimal_schedule(ok, grid=np.array([0.1, 1.0]))
    with pytest.raises(ValueError, match="1-D array"):
        kinetic_optimal_schedule(ok, grid=np.zeros((2, 2)))
    # λ > 1 would give w = 1 + (λ - 1) sec²θ and φ₁ ~ sqrt(λ - 1) log(2/σ_min) > π
    # (here ≈ 5.4): no straight-line solution in the sector. It is refused.
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        kinetic_optimal_schedule(lambda r: np.full_like(r, 1.5))
    with pytest.raises(ValueError, match="non-finite"):
        kinetic_optimal_schedule(lambda r: np.full_like(r, np.nan))
    with pytest.raises(ValueError, match="elementwise"):
        kinetic_optimal_schedule(lambda r: np.ones(3))
    r = np.linspace(0.0, 10.0, 5)
    with pytest.raises(ValueError, match="same length"):
        kinetic_optimal_schedule((r, np.ones(4)))
    with pytest.raises(ValueError, match="strictly"):
        kinetic_optimal_schedule((r[::-1], np.ones(5)))
    with pytest.raises(TypeError, match="table"):
        kinetic_optimal_schedule(0.5)
    with pytest.raises(ValueError, match="decreasing"):
        KineticOptimal([0.1, 0.2], [0.0, 0.1], [0.0, 0.0])
    with pytest.raises(ValueError, match="same"):
        KineticOptimal([0.1, 0.2], [0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        data_separation(jnp.ones(5), jnp.ones(2))
    with pytest.raises(ValueError, match="samples"):
        data_separation(jnp.ones((5, 2)), jnp.ones(2), samples=0)
    with pytest.raises(ValueError, match="1-D grid"):
        kinetic_energy(jnp.sin, jnp.cos, ok, jnp.ones((2, 2)), dim=2)
