r"""Kinetic-optimal Gaussian probability paths (Shaul et al., ICML 2023).

In the paper's convention, time $s \in [0, 1]$ runs from noise ($s = 0$) to data
($s = 1$) and the path is $x_s = a_s x_1 + b_s x_0$ with $x_1$ data and
$x_0 \sim \mathcal N(0, I)$ in $\mathbb R^d$. Its marginal velocity is
$u_s(x) = \frac{\dot b}{b} x + b\,\dot r\, \mathbb E[x_1 \mid x_s = x]$ with
$r = a/b$, and with $D = \mathbb E\|x_1\|^2$, $\mathbb E\|x_s\|^2 = a^2 D + b^2 d$ and
$\mathbb E\langle x_s, \mathbb E[x_1 \mid x_s]\rangle = aD$ its kinetic energy is

$$\mathrm{KE}(s) = \mathbb E\|u_s\|^2 = d\,\dot b^2 + D\,\dot a^2
  - D\,(1 - \lambda(r))\, b^2 \dot r^2,$$

where the *data separation function*
$\lambda(r) = \mathbb E\|\mathbb E[x_1 \mid r x_1 + x_0]\|^2 / D \in
[\frac{r^2 D}{r^2 D + d}, 1]$ carries all the dependence on the data. Write
$c = \sqrt{D/d}$ (`sigma_data`, 1 for data normalised to $D = d$, the paper's
setting) and $b = \rho\cos\theta$, $c\,a = \rho\sin\theta$. Then

$$\mathrm{KE}/d = \dot\rho^2 + \rho^2 w(\theta)\,\dot\theta^2, \qquad
  w(\theta) = 1 - (1 - \lambda(\tan\theta / c))(1 + \tan^2\theta) \in [0, 1],$$

and with $\varphi(\theta) = \int_0^\theta \sqrt{w}$ the metric is the flat
$d\rho^2 + \rho^2 d\varphi^2$. The energy-minimising path from noise $(b, ca) = (1, 0)$
to $(\sigma_{min}, c)$ is therefore the constant-speed straight line
$P_s = (1 - s)(1, 0) + s\rho_1(\cos\varphi_1, \sin\varphi_1)$ in the plane
$(\rho\cos\varphi, \rho\sin\varphi)$, with $\rho_1 = \sqrt{\sigma_{min}^2 + c^2}$,
$\theta_1 = \arctan(c/\sigma_{min})$, $\varphi_1 = \varphi(\theta_1)$; its energy is
$d\,|P_1 - P_0|^2$. $w \le 1$ gives $\varphi_1 \le \theta_1 < \pi/2$, so the line stays
in the sector where polar coordinates are one-to-one (the paper's condition
$\varphi_1 < \pi$). When $\lambda \equiv 1$ (well separated data; the paper proves
$\lambda \to 1$ as $n/\sqrt d \to 0$), $w \equiv 1$ and the path is conditional OT,
$a_s = s$, $b_s = 1 - (1 - \sigma_{min}) s$.

Normalisation: the paper states its results for normalised data; here $D$ is a
parameter ($c$ above), and the intended use is data scaled to $\mathbb E\|x_1\|^2 = d$
($c = 1$) before $\lambda$ is estimated (`data_separation`). Where $w$ vanishes the
angle is free and the exact optimum jumps; `kinetic_optimal_schedule` floors $w$ at a
small `w_min` (see there).

odelab's schedules run the other way: $t = 1 - s$, $\alpha(t) = a_{1-t}$,
$\sigma(t) = b_{1-t}$. `KineticOptimal` tabulates the path on a fine grid in $t$.
`kinetic_energy` evaluates the energy of any Gaussian path for comparison.

**Reference:** N. Shaul, R. T. Q. Chen, M. Nickel, M. Le, Y. Lipman, "On Kinetic
Optimal Probability Paths for Generative Models", ICML 2023, arXiv:2306.06626.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .schedules import AbstractSchedule, _interp_linear_extrapolate


# A separation function is λ ∈ [0, 1]; this much slack absorbs round-off and the
# noise of other Monte-Carlo estimators, anything beyond it is a wrong input (and a
# λ > 1 would let φ(θ₁) grow past π, where the straight-line solution fails).
_LAM_SLACK = 1e-3


def data_separation(
    data,
    r,
    key=None,
    *,
    samples: int = 1024,
    denoiser: Callable | None = None,
    second_moment=None,
):
    r"""Monte-Carlo estimate of the data separation function $\lambda(r)$.

    $$\lambda(r) = \frac{\mathbb E\|\mathbb E[x_1 \mid y]\|^2}{D}
      = 1 - \frac{\mathbb E\|x_1 - \mathbb E[x_1 \mid y]\|^2}{D},
      \qquad y = r x_1 + x_0,\ x_0 \sim \mathcal N(0, I),$$

    computed in the second (posterior-error) form, which stays accurate as
    $\lambda \to 1$. By default $x_1$ follows the empirical distribution of `data` (the
    training set as equal-weight Diracs), whose posterior mean is
    $\sum_j \mathrm{softmax}_j(-\|y - r x_1^{(j)}\|^2 / 2)\, x_1^{(j)}$. The same
    draws $(x_1, x_0)$ serve every $r$ (common random numbers, so the estimate is
    smooth in $r$); the $x_1$ cycle through a random permutation of `data`
    (stratified). Memory is `samples` × `n` per value of `r`, one $r$ at a time.
    In float32, $1 - \lambda$ below ~$10^{-7}$ rounds away, which matters only for
    $r \gtrsim 10^3$ (the path's $w$ there is $1 - (1 - \lambda)(1 + r^2)$); use x64
    for $\sigma_{min} < 10^{-3}$.

    **Arguments:**

    - `data`: the data set, shape `(n, ...)` (trailing axes are flattened to `d`).
    - `r`: the values of $r = a/b$ (signal over noise scale), any shape, $r \ge 0$.
    - `key`: a PRNG key; `None` uses `jax.random.key(0)` (a reproducible estimate).
    - `samples`: the number of Monte-Carlo draws $(x_1, x_0)$.
    - `denoiser`: optional `denoiser(y, r) -> E[x_1 | r x_1 + x_0 = y]` for one `y` of
      shape `(d,)` and a scalar `r`, for data with a known posterior mean; `data`
      then holds samples of that distribution.
    - `second_moment`: $D = \mathbb E\|x_1\|^2$; default the mean of $\|x\|^2$ over
      `data` (exact for the empirical distribution).

    **Returns:**

    $\lambda(r)$, the shape of `r`, clipped to $[0, 1]$.

    **Raises:**

    `ValueError` for `data` without a sample axis or `samples < 1`.

    **Example:**

    ```python
    r = jnp.tan(jnp.linspace(0.0, jnp.arctan(1e3), 64))
    lam = data_separation(data, r, jax.random.key(0))
    schedule = kinetic_optimal_schedule((r, lam), sigma_min=1e-3)
    # Data x_1 ~ N(0, I): E[x_1 | y] = r y / (1 + r²), and λ(r) = r² / (1 + r²).
    gaussian = jax.random.normal(jax.random.key(1), (4096, 8))
    data_separation(gaussian, r, denoiser=lambda y, r: r * y / (1 + r**2))
    ```

    **Reference:** Shaul et al., "On Kinetic Optimal Probability Paths for
    Generative Models", ICML 2023, arXiv:2306.06626 (the data separation function).
    """
    data = jnp.asarray(data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(
            f"`data` must have shape (n, ...) with n ≥ 1 samples, got {data.shape}."
        )
    if not jnp.issubdtype(data.dtype, jnp.inexact):
        data = data.astype(jnp.result_type(float))
    data = data.reshape(data.shape[0], -1)
    if samples < 1:
        raise ValueError(f"`samples` must be at least 1, got {samples}.")
    r = jnp.asarray(r, data.dtype)
    key = jax.random.key(0) if key is None else key
    if second_moment is None:
        second_moment = jnp.mean(jnp.sum(data**2, axis=-1))
    second_moment = jnp.asarray(second_moment, data.dtype)
    error = _posterior_error(data, r.reshape(-1), key, samples, denoiser)
    return jnp.clip(1.0 - error / second_moment, 0.0, 1.0).reshape(r.shape)


@eqx.filter_jit
def _posterior_error(data, r, key, samples, denoiser):
    """The mean posterior error E||x_1 - E[x_1|y]||² at each r (one r at a time)."""
    n, d = data.shape
    key_index, key_noise = jax.random.split(key)
    index = jnp.tile(jax.random.permutation(key_index, n), -(-samples // n))
    x1 = data[index[:samples]]
    x0 = jax.random.normal(key_noise, (samples, d), data.dtype)
    sq_norms = jnp.sum(data**2, axis=-1)

    def posterior_error(ri):
        y = ri * x1 + x0
        if denoiser is None:
            # -||y - r x_j||²/2 up to a per-row constant, which softmax ignores; the
            # expansion is a matmul instead of a (samples, n, d) difference.
            logits = ri * (y @ data.T) - 0.5 * ri**2 * sq_norms[None, :]
            mean = jax.nn.softmax(logits, axis=-1) @ data
        else:
            mean = jax.vmap(denoiser, in_axes=(0, None))(y, ri)
        return jnp.mean(jnp.sum((x1 - mean) ** 2, axis=-1))

    return jax.lax.map(posterior_error, r)


def _check_table(separation):
    """A table `(r, λ)` as float64 NumPy arrays, validated."""
    try:
        r_tab, lam_tab = separation
    except (TypeError, ValueError):
        raise TypeError(
            "`separation` must be a function λ(r) or a table `(r, lam)` of two arrays."
        ) from None
    r_tab = np.asarray(r_tab, np.float64)
    lam_tab = np.asarray(lam_tab, np.float64)
    if r_tab.ndim != 1 or r_tab.shape != lam_tab.shape or r_tab.size < 2:
        raise ValueError(
            "a `separation` table `(r, lam)` needs two 1-D arrays of the same length "
            f"(≥ 2), got shapes {r_tab.shape} and {lam_tab.shape}."
        )
    if not np.all(np.isfinite(r_tab)) or r_tab[0] < 0 or np.any(np.diff(r_tab) <= 0):
        raise ValueError(
            "the `r` of a `separation` table must be finite, non-negative and strictly "
            "increasing."
        )
    _check_lam(lam_tab)
    return r_tab, lam_tab


def _check_lam(lam):
    if not np.all(np.isfinite(lam)):
        raise ValueError("the separation function λ(r) has non-finite values.")
    if lam.min() < -_LAM_SLACK or lam.max() > 1.0 + _LAM_SLACK:
        raise ValueError(
            f"the separation function λ(r) must lie in [0, 1], got values in "
            f"[{lam.min():g}, {lam.max():g}]; λ is E||E[x_1|r x_1 + x_0]||² / "
            "E||x_1||², see `data_separation`."
        )


def _q_table(separation, scale: float):
    """A table `(r, λ)` as θ = arctan(c r) and q = 1 - w = (1 - λ)(1 + c²r²), clipped
    to [0, 1] before any interpolation: the path and its energy (`kinetic_energy`)
    must see the same w, since where w ≈ 0 the path's angle moves fast and the
    energy is sensitive to w there."""
    r_tab, lam_tab = _check_table(separation)
    q_tab = (1.0 - lam_tab) * (1.0 + (scale * r_tab) ** 2)
    return np.arctan(scale * r_tab), np.clip(q_tab, 0.0, 1.0)


def _one_minus_separation(separation, scale: float) -> Callable:
    """r ↦ 1 - λ(r) (jnp). A table is interpolated linearly in θ = arctan(c r) as
    q = (1 - λ)(1 + c²r²) = 1 - w ∈ [0, 1], which stays bounded as r → ∞ where λ → 1,
    and held constant beyond its ends."""
    if callable(separation):
        # Clipped like w in `kinetic_optimal_schedule`, so both see the same w.
        def one_minus_lam_fn(r):
            bound = 1.0 / (1.0 + (scale * r) ** 2)
            return jnp.clip(1.0 - separation(r), 0.0, bound)

        return one_minus_lam_fn
    theta_tab, q_tab = _q_table(separation, scale)

    def one_minus_lam(r):
        theta = jnp.arctan(scale * r)
        q = jnp.interp(
            theta,
            jnp.asarray(theta_tab, theta.dtype),
            jnp.asarray(q_tab, theta.dtype),
        )
        return q / (1.0 + (scale * r) ** 2)

    return one_minus_lam


def _excess_weight(separation, theta, scale: float):
    """w(θ) = 1 - (1 - λ(tan θ / c))(1 + tan²θ), clipped to [0, 1] (NumPy, float64)."""
    if callable(separation):
        r = np.tan(theta) / scale
        lam = np.asarray(separation(r), np.float64)
        if lam.shape != theta.shape:
            raise ValueError(
                "a `separation` function must map an array of r elementwise, got "
                f"shape {lam.shape} for an input of shape {theta.shape}."
            )
        _check_lam(lam)
        q = (1.0 - lam) * (1.0 + np.tan(theta) ** 2)
        # Below the lower bound λ ≥ r²c²/(1 + r²c²) (w < 0) only by Monte-Carlo noise.
        return np.clip(1.0 - q, 0.0, 1.0)
    theta_tab, q_tab = _q_table(separation, scale)
    return 1.0 - np.interp(theta, theta_tab, q_tab)


def kinetic_energy(
    alpha: Callable, sigma: Callable, separation, s, *, dim: int, second_moment=None
):
    r"""The kinetic energy $\int \mathbb E\|u_s\|^2 ds$ of a Gaussian path.

    $$\mathrm{KE} = \int \big(d\,\dot b^2 + D\,\dot a^2 - D\,(1 - \lambda(r))\,
      b^2 \dot r^2\big)\,ds, \qquad r = a/b,$$

    by the trapezoidal rule on the grid `s`, with the derivatives from `jax.jvp`.
    $\lambda$ is clipped to $[\frac{r^2D}{r^2D + d}, 1]$ ($w \in [0, 1]$), as in
    `kinetic_optimal_schedule`.
    The paths compared must share the time variable and its range: KE is not
    invariant under reparametrisation.

    **Arguments:**

    - `alpha`, `sigma`: elementwise functions $s \mapsto a_s$, $s \mapsto b_s$ (the
      paper's time, $s = 0$ noise; for an odelab schedule use
      `lambda s: schedule.alpha(1 - s)`).
    - `separation`: the data separation function, a function $r \mapsto \lambda(r)$
      (jnp, elementwise) or a table `(r, lam)` (interpolated as in
      `kinetic_optimal_schedule`).
    - `s`: the quadrature grid, 1-D and increasing.
    - `dim`: the data dimension $d$.
    - `second_moment`: $D = \mathbb E\|x_1\|^2$; default $d$ (normalised data).

    **Returns:**

    The kinetic energy, a scalar.

    **Raises:**

    `ValueError` for a grid `s` that is not 1-D with at least 2 points.

    **Example:**

    ```python
    s = jnp.linspace(1e-3, 1 - 1e-3, 4001)
    cond_ot = kinetic_energy(
        lambda s: s, lambda s: 1 - (1 - 1e-3) * s, (r, lam), s, dim=2
    )
    ko = kinetic_energy(
        lambda s: schedule.alpha(1 - s), lambda s: schedule.sigma(1 - s), (r, lam), s,
        dim=2,
    )
    ```

    **Reference:** Shaul et al., "On Kinetic Optimal Probability Paths for
    Generative Models", ICML 2023, arXiv:2306.06626 (the kinetic energy of Gaussian
    paths in terms of λ).
    """
    s = jnp.asarray(s)
    if not jnp.issubdtype(s.dtype, jnp.inexact):
        s = s.astype(jnp.result_type(float))
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(f"`s` must be a 1-D grid of at least 2 points, got {s.shape}.")
    second_moment = dim if second_moment is None else second_moment
    one_minus_lam = _one_minus_separation(
        separation, math.sqrt(float(second_moment) / dim)
    )
    ones = jnp.ones_like(s)
    a, da = jax.jvp(alpha, (s,), (ones,))
    b, db = jax.jvp(sigma, (s,), (ones,))
    dr = (da * b - a * db) / b**2
    density = dim * db**2 + second_moment * (
        da**2 - one_minus_lam(a / b) * (b * dr) ** 2
    )
    return jnp.trapezoid(density, s)


class KineticOptimal(AbstractSchedule):
    r"""A tabulated schedule: $\log\alpha$, $\log\sigma$ piecewise linear in $t$.

    Built by `kinetic_optimal_schedule` (the kinetic-optimal path); any table of a
    path with $\lambda(t) = \log\alpha - \log\sigma$ strictly decreasing will do.
    Between the table's times the logs are interpolated linearly (extended linearly
    beyond the ends), so $\lambda(t)$ is piecewise linear and `t_of_lambda` inverts it
    exactly; derivatives in $t$ are the (finite) slopes of the pieces. Tables are kept
    in float64 NumPy and follow the query's precision.

    **Arguments:**

    - `ts`: the table's times, strictly increasing; `t_min = ts[0]` (data end),
      `t_max = ts[-1]` (noise end).
    - `log_alphas`, `log_sigmas`: $\log\alpha$, $\log\sigma$ at `ts`.
    - `energy`: the path's kinetic energy per dimension, $\int_0^1 \mathbb
      E\|u_s\|^2 ds / d$, where known (set by `kinetic_optimal_schedule`).

    **Raises:**

    `ValueError` for tables of different lengths or fewer than 2 points, non-finite
    values, times not strictly increasing or $\lambda$ not strictly decreasing.

    **Reference:** Shaul et al., "On Kinetic Optimal Probability Paths for
    Generative Models", ICML 2023, arXiv:2306.06626.
    """

    ts: np.ndarray
    log_alphas: np.ndarray
    log_sigmas: np.ndarray
    time_range: tuple[float, float] = eqx.field(static=True)
    energy: float | None = eqx.field(static=True)

    def __init__(self, ts, log_alphas, log_sigmas, energy: float | None = None):
        ts, log_alphas, log_sigmas = (
            np.asarray(x, np.float64) for x in (ts, log_alphas, log_sigmas)
        )
        if (
            ts.ndim != 1
            or ts.size < 2
            or not (ts.shape == log_alphas.shape == log_sigmas.shape)
        ):
            raise ValueError(
                "`ts`, `log_alphas` and `log_sigmas` must be 1-D tables of the same "
                f"length (≥ 2), got shapes {ts.shape}, {log_alphas.shape}, "
                f"{log_sigmas.shape}."
            )
        if not all(np.all(np.isfinite(x)) for x in (ts, log_alphas, log_sigmas)):
            raise ValueError("the schedule's tables have non-finite values.")
        if np.any(np.diff(ts) <= 0):
            raise ValueError("`ts` must be strictly increasing.")
        if np.any(np.diff(log_alphas - log_sigmas) >= 0):
            raise ValueError(
                "λ = log α - log σ must be strictly decreasing in t (noise grows with "
                "t)."
            )
        self.ts, self.log_alphas, self.log_sigmas = ts, log_alphas, log_sigmas
        self.time_range = (float(ts[0]), float(ts[-1]))
        self.energy = None if energy is None else float(energy)

    @property
    def t_min(self):
        return self.time_range[0]

    @property
    def t_max(self):
        return self.time_range[1]

    def log_alpha(self, t):
        return _interp_linear_extrapolate(t, self.ts, self.log_alphas)

    def log_sigma(self, t):
        return _interp_linear_extrapolate(t, self.ts, self.log_sigmas)

    def t_of_lambda(self, lam):
        lams = self.log_alphas - self.log_sigmas
        return _interp_linear_extrapolate(lam, lams[::-1].copy(), self.ts[::-1].copy())


def _table_times(grid, eps: float):
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        if grid < 2:
            raise ValueError(f"`grid` must have at least 2 points, got {grid}.")
        if not 0.0 < eps < 0.5:
            raise ValueError(f"`eps` must lie in (0, 0.5), got {eps}.")
        # Clustered at both ends (Chebyshev–Lobatto), where log α ~ log s at the noise
        # end and log σ ~ log(σ_min + t) at the data end curve sharply.
        u = np.linspace(0.0, 1.0, grid)
        return eps + (1.0 - 2.0 * eps) * 0.5 * (1.0 - np.cos(np.pi * u))
    ts = np.asarray(grid, np.float64)
    if ts.ndim != 1 or ts.size < 2:
        raise ValueError(
            "`grid` must be a number of points or a 1-D array of at least 2 times, got "
            f"shape {ts.shape}."
        )
    if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) <= 0):
        raise ValueError("a `grid` of times must be finite and strictly increasing.")
    if ts[0] < 0.0 or ts[-1] >= 1.0:
        raise ValueError(
            f"a `grid` of times must lie in [0, 1) (α = 0 at t = 1), got "
            f"[{ts[0]:g}, {ts[-1]:g}]."
        )
    return ts


def kinetic_optimal_schedule(
    separation,
    sigma_min: float = 1e-3,
    grid=2048,
    *,
    eps: float = 1e-3,
    sigma_data: float = 1.0,
    quadrature: int = 4097,
    w_min: float = 1e-4,
) -> KineticOptimal:
    r"""The kinetic-optimal Gaussian path for a data separation function, tabulated.

    With $w(\theta) = 1 - (1 - \lambda(\tan\theta / c))(1 + \tan^2\theta)$ and
    $\varphi(\theta) = \int_0^\theta \sqrt{w}$ (trapezoidal rule on `quadrature`
    points in $[0, \theta_1]$), the path is the straight line
    $P_s = (1 - s)(1, 0) + s\rho_1(\cos\varphi_1, \sin\varphi_1)$; at each table time
    $s = 1 - t$: $\rho_s = |P_s|$, $\theta_s = \varphi^{-1}(\arg P_s)$ (linear
    interpolation), $\sigma(t) = \rho_s\cos\theta_s$, $\alpha(t) = \rho_s\sin\theta_s/c$.
    The path runs from pure noise ($s = 0$) to $\alpha = 1$, $\sigma = \sigma_{min}$
    ($s = 1$), and its energy is $d\,|P_1 - P_0|^2$ (stored as `energy`, per
    dimension). See the module notes for the derivation.

    $\lambda$ below its lower bound $r^2c^2/(1 + r^2c^2)$ ($w < 0$, Monte-Carlo noise)
    is raised to it. Where $w = 0$ (Gaussian data, $\lambda = r^2/(1 + r^2)$, and
    nearly so for zero-mean data of covariance $I$ at small $r$) moving the angle
    costs no energy, $\varphi$ is flat and the exact optimum jumps across; Monte-Carlo
    noise in $\lambda$ decides where. The path is therefore the optimum for
    $\max(w, w_{min})$: it crosses such stretches at angular speed at most
    $|\dot P|/(\rho\sqrt{w_{min}})$, its energy under the true $w$ is at most the
    stored `energy` (up to the table's interpolation), and that exceeds the exact
    optimum by at most $2\rho_1\theta_1\sqrt{w_{min}}$ per dimension
    ($\varphi_1$ grows by at most $\theta_1\sqrt{w_{min}}$).

    **Arguments:**

    - `separation`: $\lambda(r)$, either a NumPy-compatible elementwise function of an
      array of $r$ (evaluated at `quadrature` points), or a table `(r, lam)` such as
      `data_separation` gives. A table is interpolated linearly in
      $\theta = \arctan(c r)$ as $1 - w$, held constant beyond its ends; cover
      $r \in [0, c^{-1}\tan\theta_1] = [0, 1/\sigma_{min}]$, e.g. uniformly in
      $\theta$ (64 points are plenty for smooth $\lambda$).
    - `sigma_min`: $\sigma$ at the data end ($s = 1$), > 0.
    - `grid`: the number of table points, clustered at both ends of
      $[\epsilon, 1 - \epsilon]$, or a strictly increasing array of times in $[0, 1)$.
    - `eps`: the margin of the default grid: $t \in [\epsilon, 1 - \epsilon]$ (at
      $t = 1$, $\alpha = 0$ and $\log\alpha = -\infty$).
    - `sigma_data`: $c = \sqrt{D/d}$, the root mean square of the data per
      coordinate; 1 for data normalised to $\mathbb E\|x_1\|^2 = d$ (the paper's
      setting, and how to use it: normalise the data, then estimate $\lambda$).
    - `quadrature`: the number of points of the $\theta$ grid for $\varphi(\theta)$.
    - `w_min`: the floor on $w$, in $(0, 1]$: smaller is closer to the exact optimum,
      larger gives a smoother path. The default $10^{-4}$ costs at most
      $0.03\,d$ of energy ($c = 1$) and is below the Monte-Carlo error of $w$ that
      `data_separation` gives with ~$10^3$ samples, which could not tell it from 0.

    **Returns:**

    A `KineticOptimal` schedule.

    **Raises:**

    `ValueError` for $\sigma_{min} \le 0$, `sigma_data` $\le 0$, fewer than 2
    quadrature points, `w_min` outside $(0, 1]$, a bad `grid` or `eps`, or a
    separation function with non-finite values or values outside $[0, 1]$ (which
    could push $\varphi_1$ past $\pi$); `TypeError` for a `separation` that is
    neither a function nor a table.

    **Example:**

    ```python
    data = data / jnp.sqrt(jnp.mean(jnp.sum(data**2, axis=-1)) / data.shape[-1])
    r = jnp.tan(jnp.linspace(0.0, jnp.arctan(1e3), 64))
    lam = data_separation(data, r, jax.random.key(0))
    schedule = kinetic_optimal_schedule((r, lam), sigma_min=1e-3)
    x = sample(model, noise, schedule, ...)  # any odelab sampler
    ```

    **Reference:** Shaul et al., "On Kinetic Optimal Probability Paths for
    Generative Models", ICML 2023, arXiv:2306.06626.
    """
    if not sigma_min > 0:
        raise ValueError(f"`sigma_min` must be positive, got {sigma_min}.")
    if not sigma_data > 0:
        raise ValueError(f"`sigma_data` must be positive, got {sigma_data}.")
    if quadrature < 2:
        raise ValueError(f"`quadrature` must be at least 2, got {quadrature}.")
    if not 0.0 < w_min <= 1.0:
        raise ValueError(f"`w_min` must lie in (0, 1], got {w_min}.")
    ts = _table_times(grid, eps)
    theta1 = math.atan2(sigma_data, sigma_min)
    rho1 = math.hypot(sigma_min, sigma_data)
    theta = np.linspace(0.0, theta1, quadrature)
    root_w = np.sqrt(np.maximum(_excess_weight(separation, theta, sigma_data), w_min))
    phi = np.concatenate(
        [[0.0], np.cumsum(0.5 * (root_w[1:] + root_w[:-1]) * np.diff(theta))]
    )
    phi1 = phi[-1]
    s = 1.0 - ts
    px = 1.0 - s + s * rho1 * math.cos(phi1)
    py = s * rho1 * math.sin(phi1)
    rho = np.hypot(px, py)
    theta_s = np.interp(np.arctan2(py, px), phi, theta)
    energy = (rho1 * math.cos(phi1) - 1.0) ** 2 + (rho1 * math.sin(phi1)) ** 2
    return KineticOptimal(
        ts,
        np.log(rho * np.sin(theta_s) / sigma_data),
        np.log(rho * np.cos(theta_s)),
        energy=energy,
    )
