"""Exact sample paths of the Ornstein–Uhlenbeck process and geometric Brownian motion,
with their exact moments."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .base import (
    Dataset,
    _check_count,
    _float_dtype,
)


def _check_process(n_paths, n_times, t1, sigma):
    _check_count("n_paths", n_paths)
    _check_count("n_times", n_times, minimum=2)
    if not t1 > 0.0:
        raise ValueError(f"`t1` must be > 0; got {t1!r}.")
    if not sigma >= 0.0:
        raise ValueError(f"`sigma` must be >= 0; got {sigma!r}.")


def _check_theta(theta):
    if not theta > 0.0:
        raise ValueError(
            f"`theta`, the mean-reversion rate, must be > 0; got {theta!r} (with "
            "theta <= 0 the process has no stationary law)."
        )


def _as_times(ts):
    ts = jnp.asarray(ts)
    return ts if jnp.issubdtype(ts.dtype, jnp.floating) else ts.astype(_float_dtype())


def ou_process(
    key: PRNGKeyArray,
    n_paths: int = 1024,
    n_times: int = 50,
    t1: float = 5.0,
    theta: float = 1.0,
    mu: float = 0.0,
    sigma: float = 0.5,
    x0: float = 1.0,
) -> Dataset:
    r"""Exact sample paths of an Ornstein–Uhlenbeck process on a uniform grid.

    $dx = \theta(\mu - x)\,dt + \sigma\,dW$, $x(0) = x_0$, sampled through its exact
    Gaussian transition over each step $\Delta$:
    $x_{k+1} = \mu + (x_k - \mu) e^{-\theta\Delta} +
    \sigma\sqrt{(1 - e^{-2\theta\Delta})/(2\theta)}\,\xi_k$, $\xi_k \sim N(0, 1)$,
    so the paths carry no discretisation error whatever the grid (compare a fitted
    neural SDE with `ou_moments` and `ou_covariance`).

    **Arguments:**

    - `key`: a PRNG key.
    - `n_paths`: the number of independent paths.
    - `n_times`: grid points $t_k = k\,t_1/(n - 1)$, $k = 0, \dots, n - 1$; at least 2.
    - `t1`: the final time $t_1 > 0$.
    - `theta`: the mean-reversion rate $\theta > 0$.
    - `mu`: the long-run mean $\mu$.
    - `sigma`: the volatility $\sigma \ge 0$.
    - `x0`: the (deterministic) initial value.

    **Returns:** a `Dataset` with `ys` `(n_paths, n_times, 1)` and shared `ts`
    `(n_times,)`.

    **Raises:** `ValueError` for a count out of range, $t_1 \le 0$, $\theta \le 0$
    or $\sigma < 0$.

    ```python
    data = odelab.data.ou_process(jr.key(0), 4096, 20, t1=2.0)
    mean, var = odelab.data.ou_moments(data.ts, 1.0, 0.0, 0.5, 1.0)
    ```

    **Reference:** G. E. Uhlenbeck and L. S. Ornstein, *On the Theory of the Brownian
    Motion*, Phys. Rev. 36 (1930); the exact update as in D. T. Gillespie, *Exact
    numerical simulation of the Ornstein-Uhlenbeck process and its integral*,
    Phys. Rev. E 54 (1996).
    """
    _check_process(n_paths, n_times, t1, sigma)
    _check_theta(theta)
    return _ou_process(key, n_paths, n_times, t1, theta, mu, sigma, x0)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _ou_process(key, n_paths, n_times, t1, theta, mu, sigma, x0):
    dtype = _float_dtype()
    ts = jnp.linspace(0.0, t1, n_times, dtype=dtype)
    # Each step uses its own grid spacing, so the transition is exact for the `ts`
    # returned, rounding of `linspace` included.
    delta = jnp.diff(ts)
    decay = jnp.exp(-theta * delta)
    # 1 - e^{-2θΔ} by expm1: the plain difference loses all digits when θΔ << eps.
    scale = sigma * jnp.sqrt(-jnp.expm1(-2 * theta * delta) / (2 * theta))

    def step(x, inputs):
        decay_k, scale_k, xi = inputs
        x = mu + (x - mu) * decay_k + scale_k * xi
        return x, x

    start = jnp.full((n_paths,), x0, dtype)
    xi = jr.normal(key, (n_times - 1, n_paths), dtype)
    _, xs = jax.lax.scan(step, start, (decay, scale, xi))
    ys = jnp.concatenate([start[None], xs]).T[..., None]
    return Dataset(ys=ys, ts=ts)


def ou_moments(
    ts, theta: float, mu: float, sigma: float, x0: float
) -> tuple[Float[Array, " n_times"], Float[Array, " n_times"]]:
    r"""The exact marginal mean and variance of the Ornstein–Uhlenbeck process.

    For $dx = \theta(\mu - x)\,dt + \sigma\,dW$, $x(0) = x_0$:
    $\mathbb{E}\,x_t = \mu + (x_0 - \mu) e^{-\theta t}$ and
    $\operatorname{Var} x_t = \frac{\sigma^2}{2\theta}(1 - e^{-2\theta t})$, which tends
    to the stationary $\sigma^2 / (2\theta)$.

    **Arguments:** `ts`, the times (any shape); `theta` $> 0$, `mu`, `sigma`, `x0` as in
    `ou_process`.

    **Returns:** `(mean, var)`, each of the shape of `ts` (floating `ts` keep their
    dtype).

    **Raises:** `ValueError` if $\theta \le 0$.
    """
    _check_theta(theta)
    ts = _as_times(ts)
    mean = mu + (x0 - mu) * jnp.exp(-theta * ts)
    var = sigma**2 / (2 * theta) * -jnp.expm1(-2 * theta * ts)
    return mean, var


def ou_covariance(s, t, theta: float, sigma: float) -> Float[Array, "..."]:
    r"""The exact autocovariance $\operatorname{Cov}(x_s, x_t)$ of the Ornstein–Uhlenbeck
    process started from a deterministic $x_0$.

    $\operatorname{Cov}(x_s, x_t) = \frac{\sigma^2}{2\theta}
    \big(e^{-\theta|t - s|} - e^{-\theta(s + t)}\big)$, independent of $\mu$ and
    $x_0$; at $s = t$ the variance of `ou_moments`. As $\min(s, t) \to \infty$ it
    tends to the stationary autocovariance at lag $\tau = |t - s|$,
    $\frac{\sigma^2}{2\theta} e^{-\theta\tau}$ (`ou_stationary_covariance`).

    **Arguments:** `s`, `t`, times of the same shape; `theta` $> 0$ and `sigma` as in
    `ou_process`.

    **Returns:** an array of the shape of `s` and `t`.

    **Raises:** `ValueError` if $\theta \le 0$ or `s` and `t` differ in shape.
    """
    _check_theta(theta)
    s, t = _as_times(s), _as_times(t)
    if s.shape != t.shape:
        raise ValueError(
            f"`s` and `t` must have the same shape; got {s.shape} and {t.shape}. "
            "Broadcast them first, e.g. `jnp.meshgrid(ts, ts, indexing='ij')`."
        )
    # e^{-θ|t-s|} - e^{-θ(s+t)} = e^{-θ|t-s|} (1 - e^{-2θ min(s, t)}), by expm1.
    lagged = jnp.exp(-theta * jnp.abs(t - s))
    return sigma**2 / (2 * theta) * lagged * -jnp.expm1(-2 * theta * jnp.minimum(s, t))


def ou_stationary_covariance(lag, theta: float, sigma: float) -> Float[Array, "..."]:
    r"""The stationary autocovariance of the Ornstein–Uhlenbeck process at a lag.

    $\operatorname{Cov}(x_s, x_{s + \tau}) = \frac{\sigma^2}{2\theta} e^{-\theta|\tau|}$
    for $x_s$ drawn from the stationary law $N(\mu, \sigma^2 / (2\theta))$; the limit
    of `ou_covariance` as $s \to \infty$.

    **Arguments:** `lag`, $\tau$ (any shape); `theta` $> 0$ and `sigma` as in
    `ou_process`.

    **Returns:** an array of the shape of `lag`.

    **Raises:** `ValueError` if $\theta \le 0$.
    """
    _check_theta(theta)
    return sigma**2 / (2 * theta) * jnp.exp(-theta * jnp.abs(_as_times(lag)))


def gbm_process(
    key: PRNGKeyArray,
    n_paths: int = 1024,
    n_times: int = 50,
    t1: float = 1.0,
    mu: float = 0.1,
    sigma: float = 0.2,
    x0: float = 1.0,
) -> Dataset:
    r"""Exact sample paths of geometric Brownian motion on a uniform grid.

    $dx = \mu x\,dt + \sigma x\,dW$, $x(0) = x_0$ (Itô), sampled from its solution
    $x_t = x_0 \exp\big((\mu - \sigma^2/2)\,t + \sigma W_t\big)$ with $W$ a Brownian
    motion built from independent Gaussian increments on the grid: no discretisation
    error (compare a fitted neural SDE with `gbm_moments`).

    **Arguments:**

    - `key`: a PRNG key.
    - `n_paths`: the number of independent paths.
    - `n_times`: grid points $t_k = k\,t_1/(n - 1)$; at least 2.
    - `t1`: the final time $t_1 > 0$.
    - `mu`: the drift rate $\mu$.
    - `sigma`: the volatility $\sigma \ge 0$.
    - `x0`: the (deterministic) initial value.

    **Returns:** a `Dataset` with `ys` `(n_paths, n_times, 1)` and shared `ts`
    `(n_times,)`.

    **Raises:** `ValueError` for a count out of range, $t_1 \le 0$ or $\sigma < 0$.

    **Reference:** P. E. Kloeden and E. Platen, *Numerical Solution of Stochastic
    Differential Equations*, Springer (1992), §4.4.
    """
    _check_process(n_paths, n_times, t1, sigma)
    return _gbm_process(key, n_paths, n_times, t1, mu, sigma, x0)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _gbm_process(key, n_paths, n_times, t1, mu, sigma, x0):
    dtype = _float_dtype()
    ts = jnp.linspace(0.0, t1, n_times, dtype=dtype)
    step_std = jnp.sqrt(jnp.diff(ts))[None, :]
    increments = step_std * jr.normal(key, (n_paths, n_times - 1), dtype)
    w = jnp.concatenate(
        [jnp.zeros((n_paths, 1), dtype), jnp.cumsum(increments, axis=1)], axis=1
    )
    ys = x0 * jnp.exp((mu - sigma**2 / 2) * ts[None, :] + sigma * w)
    return Dataset(ys=ys[..., None], ts=ts)


def gbm_moments(
    ts, mu: float, sigma: float, x0: float
) -> tuple[Float[Array, " n_times"], Float[Array, " n_times"]]:
    r"""The exact marginal mean and variance of geometric Brownian motion.

    For $dx = \mu x\,dt + \sigma x\,dW$, $x(0) = x_0$: $\mathbb{E}\,x_t = x_0
    e^{\mu t}$ and $\operatorname{Var} x_t = x_0^2 e^{2\mu t}(e^{\sigma^2 t} - 1)$.

    **Arguments:** `ts`, the times (any shape); `mu`, `sigma`, `x0` as in
    `gbm_process`.

    **Returns:** `(mean, var)`, each of the shape of `ts`.
    """
    ts = _as_times(ts)
    mean = x0 * jnp.exp(mu * ts)
    return mean, mean**2 * jnp.expm1(sigma**2 * ts)
