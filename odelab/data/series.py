"""Time series: spirals, damped oscillators at irregular times, and context/target
splits for interpolation and extrapolation."""

import functools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray

from .base import (
    Dataset,
    _balanced_labels,
    _check_count,
    _check_missing_rate,
    _check_noise,
    _float_dtype,
)


def _irregular_times(key, n_series, n_times, t1, dtype):
    # Sorted uniform draws spread apart by at least delta: strictly increasing even
    # where float32 draws tie (see `irregular_spirals`).
    u = jnp.sort(jr.uniform(key, (n_series, n_times), dtype, 0.0, t1), axis=1)
    delta = 1e-4 * t1 / n_times
    k = jnp.arange(n_times, dtype=dtype)
    return (u + k[None, :] * delta) / (1 + n_times * delta / t1)


def spirals(
    key: PRNGKeyArray,
    n_trajectories: int = 256,
    n_times: int = 20,
    t1: float = 2 * math.pi,
    noise: float = 0.01,
    decay: float = 0.1,
    frequency: float = 1.0,
    direction: str = "both",
) -> Dataset:
    r"""Noisy 2-D spirals of a linear ODE, clockwise, anticlockwise or half each.

    Each trajectory solves $\dot y = A_s y$ with
    $A_s = \begin{pmatrix} -a & s b \\ -s b & -a \end{pmatrix}$, $a$ the decay and
    $b$ the frequency, in closed form
    $y(t) = e^{-a t} \begin{pmatrix} \cos sbt & \sin sbt \\ -\sin sbt & \cos sbt
    \end{pmatrix} y_0$. With `direction="both"` the first $\lfloor N/2 \rfloor$
    trajectories turn clockwise ($s = 1$, label 0), the rest anticlockwise ($s = -1$,
    label 1); `"clockwise"` or `"anticlockwise"` gives one direction only. (An
    autonomous 2-D ODE cannot fit both directions from the same start points: its
    trajectories cannot cross. Both directions are for models with an encoder.) Initial points lie
    on the ring $0.75 \le |y_0| \le 1.25$ at a uniform angle, radius uniform. The
    saved values are $y(t_k) + \sigma \varepsilon$, $\varepsilon \sim N(0, I)$, at
    $t_k$ evenly spaced on $[0, t_1]$.

    **Arguments:**

    - `key`: a PRNG key.
    - `n_trajectories`: $N$.
    - `n_times`: the number of save times.
    - `t1`: the final time $t_1$ (default one turn for $b = 1$).
    - `noise`: the observation noise $\sigma \ge 0$.
    - `decay`, `frequency`: $a$ and $b$.
    - `direction`: `"both"`, `"clockwise"` or `"anticlockwise"`.

    **Returns:** a `Dataset` with `ts` `(n_times,)`, `ys` `(n_trajectories, n_times,
    2)`, `labels` `(n_trajectories,)` int32.

    **Raises:** `ValueError` for a non-positive count, negative noise or an unknown
    direction.

    **Reference:** the latent-ODE spiral task of R. T. Q. Chen, Y. Rubanova,
    J. Bettencourt and D. Duvenaud, *Neural Ordinary Differential Equations*,
    NeurIPS 2018, arXiv:1806.07366.
    """
    _check_count("n_trajectories", n_trajectories)
    _check_count("n_times", n_times)
    _check_noise(noise)
    if direction not in _DIRECTIONS:
        raise ValueError(
            f"`direction` must be one of {', '.join(_DIRECTIONS)}; got {direction!r}."
        )
    return _spirals(
        key, n_trajectories, n_times, t1, noise, decay, frequency, direction
    )


_DIRECTIONS = ("both", "clockwise", "anticlockwise")


@functools.partial(jax.jit, static_argnums=(1, 2, 7))
def _spirals(key, n_trajectories, n_times, t1, noise, decay, frequency, direction):
    dtype = _float_dtype()
    angle_key, radius_key, noise_key = jr.split(key, 3)
    angle = jr.uniform(angle_key, (n_trajectories, 1), dtype, 0.0, 2 * math.pi)
    radius = jr.uniform(radius_key, (n_trajectories, 1), dtype, 0.75, 1.25)
    x0, y0 = radius * jnp.cos(angle), radius * jnp.sin(angle)
    if direction == "both":
        labels = _balanced_labels(n_trajectories)
    else:
        label = 0 if direction == "clockwise" else 1
        labels = jnp.full((n_trajectories,), label, dtype=jnp.int32)
    sign = (1 - 2 * labels).astype(dtype)[:, None]
    ts = jnp.linspace(0.0, t1, n_times, dtype=dtype)
    theta = sign * frequency * ts[None, :]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    envelope = jnp.exp(-decay * ts)[None, :]
    ys = envelope[..., None] * jnp.stack([cos * x0 + sin * y0, cos * y0 - sin * x0], -1)
    ys = ys + noise * jr.normal(noise_key, ys.shape, dtype)
    return Dataset(ys=ys, ts=ts, labels=labels)


def irregular_series(
    key: PRNGKeyArray,
    n_series: int = 256,
    n_times: int = 50,
    missing_rate: float = 0.3,
    t1: float = 10.0,
    noise: float = 0.01,
) -> Dataset:
    r"""Damped oscillators observed at irregular times, with missing values.

    Each series solves $\ddot x + 2 \zeta \omega \dot x + \omega^2 x = 0$ with
    $\omega \sim U[1, 3]$ and $(x_0, \dot x_0 / \omega) = (\cos\phi, \sin\phi)$,
    $\phi \sim U[0, 2\pi)$. The first $\lfloor N/2 \rfloor$ series are underdamped
    ($\zeta \sim U[0.1, 0.5]$, label 0):
    $x = e^{-\zeta\omega t}\big(x_0 \cos \omega_d t +
    \tfrac{\dot x_0 + \zeta\omega x_0}{\omega_d} \sin \omega_d t\big)$,
    $\omega_d = \omega\sqrt{1 - \zeta^2}$; the rest overdamped
    ($\zeta \sim U[1.5, 3]$, label 1): $x = c_1 e^{r_1 t} + c_2 e^{r_2 t}$,
    $r_{1,2} = -\zeta\omega \pm \omega\sqrt{\zeta^2 - 1}$, $c_1 + c_2 = x_0$,
    $r_1 c_1 + r_2 c_2 = \dot x_0$. An overdamped $x$ changes sign at most once; an
    underdamped one every $\pi/\omega_d$. Each series has its own times, sorted
    uniform draws on $[0, t_1]$ made strictly increasing (see `irregular_spirals`).
    Values are $(x, \dot x)$ plus $N(0, \sigma^2)$ noise.
    Each entry is dropped independently with probability $p$ (the missing rate):
    `mask` is `False` there and the value is set to **0** (not NaN, so that
    gradients and sums stay finite); use `mask` to tell a missing value from a zero.

    **Arguments:**

    - `key`: a PRNG key.
    - `n_series`: $N$.
    - `n_times`: observation times per series (before dropping).
    - `missing_rate`: $p \in [0, 1)$.
    - `t1`: the final time $t_1$.
    - `noise`: the observation noise $\sigma \ge 0$.

    **Returns:** a `Dataset` with `ts` `(n_series, n_times)`, `ys`
    `(n_series, n_times, 2)` (position, velocity), `mask` of the shape of `ys`, and
    `labels` `(n_series,)` int32 (0 underdamped, 1 overdamped).

    **Raises:** `ValueError` if `missing_rate` is outside $[0, 1)$, a count is not
    positive, or `noise` is negative.

    **Reference:** irregular sampling as in Y. Rubanova, R. T. Q. Chen and
    D. Duvenaud, *Latent ODEs for Irregularly-Sampled Time Series*, NeurIPS 2019,
    arXiv:1907.03907.
    """
    _check_count("n_series", n_series)
    _check_count("n_times", n_times)
    _check_noise(noise)
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(
            f"`missing_rate` is the fraction of entries dropped and must lie in "
            f"[0, 1); got {missing_rate!r}."
        )
    return _irregular_series(key, n_series, n_times, missing_rate, t1, noise)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _irregular_series(key, n_series, n_times, missing_rate, t1, noise):
    dtype = _float_dtype()
    keys = jr.split(key, 7)
    labels = _balanced_labels(n_series)
    overdamped = (labels == 1)[:, None]
    omega = jr.uniform(keys[0], (n_series, 1), dtype, 1.0, 3.0)
    zeta = jnp.where(
        overdamped,
        jr.uniform(keys[1], (n_series, 1), dtype, 1.5, 3.0),
        jr.uniform(keys[2], (n_series, 1), dtype, 0.1, 0.5),
    )
    phase = jr.uniform(keys[3], (n_series, 1), dtype, 0.0, 2 * math.pi)
    x0, v0 = jnp.cos(phase), omega * jnp.sin(phase)
    ts = _irregular_times(keys[4], n_series, n_times, t1, dtype)
    alpha = zeta * omega
    # Each regime's square root is taken of a positive number; `where` picks one.
    omega_d = omega * jnp.sqrt(jnp.abs(1 - zeta**2))
    envelope = jnp.exp(-alpha * ts)
    b = (v0 + alpha * x0) / omega_d
    cos, sin = jnp.cos(omega_d * ts), jnp.sin(omega_d * ts)
    x_under = envelope * (x0 * cos + b * sin)
    v_under = envelope * (v0 * cos - (alpha * b + omega_d * x0) * sin)
    # Two decaying exponentials rather than e^{-αt} cosh(ω_e t), whose cosh factor
    # overflows float32 once ω_e t > 89 even though the product is small.
    r1, r2 = -alpha + omega_d, -alpha - omega_d
    c1 = (v0 - r2 * x0) / (r1 - r2)
    c2 = x0 - c1
    e1, e2 = jnp.exp(r1 * ts), jnp.exp(r2 * ts)
    x_over = c1 * e1 + c2 * e2
    v_over = c1 * r1 * e1 + c2 * r2 * e2
    ys = jnp.stack(
        [
            jnp.where(overdamped, x_over, x_under),
            jnp.where(overdamped, v_over, v_under),
        ],
        -1,
    )
    ys = ys + noise * jr.normal(keys[5], ys.shape, dtype)
    mask = jr.uniform(keys[6], ys.shape, dtype) >= missing_rate
    ys = jnp.where(mask, ys, 0.0)
    return Dataset(ys=ys, ts=ts, labels=labels, mask=mask)


def irregular_spirals(
    key: PRNGKeyArray,
    n_series: int = 256,
    n_times: int = 50,
    missing_rate: float = 0.3,
    t1: float = 2 * math.pi,
    noise: float = 0.01,
    decay: float = 0.1,
    frequency: float = 1.0,
) -> Dataset:
    r"""The 2-D spirals of `spirals`, observed at irregular times with missing values.

    Each series solves $\dot y = A_s y$,
    $A_s = \begin{pmatrix} -a & s b \\ -s b & -a \end{pmatrix}$ ($a$ the decay, $b$
    the frequency), in closed form
    $y(t) = e^{-a t} \begin{pmatrix} \cos sbt & \sin sbt \\ -\sin sbt & \cos sbt
    \end{pmatrix} y_0$, from $y_0$ on the ring $0.75 \le |y_0| \le 1.25$ (uniform
    angle and radius). The first $\lfloor N/2 \rfloor$ series turn clockwise
    ($s = 1$, label 0), the rest anticlockwise ($s = -1$, label 1). Each series has
    its own times: sorted uniform draws $u_{(k)}$ on $[0, t_1]$, spread to
    $t_k = (u_{(k)} + k \delta)/(1 + n\delta/t_1)$ with $\delta = 10^{-4} t_1 / n$, so
    that they are strictly increasing (in float32, independent draws coincide now and
    then, and a control path or an ODE solve needs increasing times) and stay in
    $[0, t_1]$; no time moves by more than $10^{-4} t_1$. Values are
    $y(t_k) + \sigma \varepsilon$, $\varepsilon \sim N(0, I)$, and each entry is
    dropped independently with probability $p$: `mask` is `False` there and the value
    is set to **0**, as in `irregular_series`.

    **Arguments:**

    - `key`: a PRNG key.
    - `n_series`: $N$.
    - `n_times`: observation times per series (before dropping).
    - `missing_rate`: $p \in [0, 1)$.
    - `t1`: the final time $t_1$ (default one turn for $b = 1$).
    - `noise`: the observation noise $\sigma \ge 0$.
    - `decay`, `frequency`: $a$ and $b$.

    **Returns:** a `Dataset` with `ts` `(n_series, n_times)`, `ys`
    `(n_series, n_times, 2)`, `mask` of the shape of `ys` and `labels` `(n_series,)`
    int32 (0 clockwise, 1 anticlockwise).

    **Raises:** `ValueError` if `missing_rate` is outside $[0, 1)$, a count is not
    positive, or `noise` is negative.

    ```python
    data = odelab.data.irregular_spirals(jr.key(0), 128, 40, missing_rate=0.5)
    context, target = odelab.data.split_times(data, "interpolation", key=jr.key(1))
    ```

    **Reference:** the irregularly sampled spirals of Y. Rubanova, R. T. Q. Chen and
    D. Duvenaud, *Latent ODEs for Irregularly-Sampled Time Series*, NeurIPS 2019,
    arXiv:1907.03907 (after Chen et al., NeurIPS 2018, arXiv:1806.07366).
    """
    _check_count("n_series", n_series)
    _check_count("n_times", n_times)
    _check_noise(noise)
    _check_missing_rate(missing_rate)
    return _irregular_spirals(
        key, n_series, n_times, missing_rate, t1, noise, decay, frequency
    )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _irregular_spirals(
    key, n_series, n_times, missing_rate, t1, noise, decay, frequency
):
    dtype = _float_dtype()
    angle_key, radius_key, time_key, noise_key, mask_key = jr.split(key, 5)
    angle = jr.uniform(angle_key, (n_series, 1), dtype, 0.0, 2 * math.pi)
    radius = jr.uniform(radius_key, (n_series, 1), dtype, 0.75, 1.25)
    x0, y0 = radius * jnp.cos(angle), radius * jnp.sin(angle)
    labels = _balanced_labels(n_series)
    sign = (1 - 2 * labels).astype(dtype)[:, None]
    ts = _irregular_times(time_key, n_series, n_times, t1, dtype)
    theta = sign * frequency * ts
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    envelope = jnp.exp(-decay * ts)[..., None]
    ys = envelope * jnp.stack([cos * x0 + sin * y0, cos * y0 - sin * x0], -1)
    ys = ys + noise * jr.normal(noise_key, ys.shape, dtype)
    mask = jr.uniform(mask_key, ys.shape, dtype) >= missing_rate
    return Dataset(ys=jnp.where(mask, ys, 0.0), ts=ts, labels=labels, mask=mask)


_SPLIT_MODES = ("interpolation", "extrapolation")


def split_times(
    dataset: Dataset,
    mode: str = "interpolation",
    observed_fraction: float = 0.5,
    key: PRNGKeyArray | None = None,
) -> tuple[Dataset, Dataset]:
    r"""Split every series into the points a model sees and the points it predicts.

    With $n$ time points per series and $m = \operatorname{round}(f n)$, $f$ the
    observed fraction:

    - `"interpolation"`: the context holds $m$ time points per series chosen uniformly
      at random (independently per series); the target is every observed point, the
      context's included: reconstruct the whole series from part of it.
    - `"extrapolation"`: the context holds the first $m$ time points of each series
      (times sorted), the target the other $n - m$: forecast the rest of the series.

    Both parts keep the dataset's full `ts`, `ys` shape and `labels`; only `mask`
    differs, and values outside a part's mask are set to 0 (a model that ignored the
    mask would otherwise see the hidden points). An entry missing from the dataset
    (its `mask` `False`) is in neither part. Jittable shapes: the same for every key.

    **Arguments:**

    - `dataset`: a `Dataset` with `ts` and a time axis (`ys` of shape
      `(n_series, n_times, ...)`); its `mask`, if any, marks the observed entries.
    - `mode`: `"interpolation"` or `"extrapolation"`.
    - `observed_fraction`: $f$, in $(0, 1]$ for interpolation and $(0, 1)$ for
      extrapolation.
    - `key`: a PRNG key choosing the interpolation context; not used (may be `None`)
      for extrapolation.

    **Returns:** `(context, target)`, two `Dataset`s with masks.

    **Raises:** `ValueError` for a dataset without `ts`, an unknown `mode`, a
    fraction that leaves a part empty, or interpolation without `key`.

    ```python
    data = odelab.data.irregular_spirals(jr.key(0))
    context, target = odelab.data.split_times(data, "extrapolation")
    # train: encode (context.ts, context.ys, context.mask), score the decoded
    # trajectory at target.ts where target.mask
    ```

    **Reference:** the interpolation and extrapolation tasks of Y. Rubanova,
    R. T. Q. Chen and D. Duvenaud, *Latent ODEs for Irregularly-Sampled Time
    Series*, NeurIPS 2019, arXiv:1907.03907, §4.
    """
    if dataset.ts is None or jnp.ndim(dataset.ys) < 2:
        raise ValueError(
            "`dataset` must be a time series: `ts` set and `ys` of shape "
            f"(n_series, n_times, ...); got ts={dataset.ts is not None}, ys "
            f"{jnp.shape(dataset.ys)}."
        )
    if mode not in _SPLIT_MODES:
        raise ValueError(
            f"`mode` must be one of {', '.join(_SPLIT_MODES)}; got {mode!r}."
        )
    n_times = jnp.shape(dataset.ys)[1]
    n_context = round(observed_fraction * n_times)
    upper = n_times if mode == "interpolation" else n_times - 1
    if not 0.0 < observed_fraction <= 1.0 or not 1 <= n_context <= upper:
        raise ValueError(
            f"`observed_fraction={observed_fraction!r}` of {n_times} time points "
            f"gives {n_context} context points; {mode} needs between 1 and {upper}. "
            "Use a fraction nearer 1/2."
        )
    if mode == "interpolation" and key is None:
        raise ValueError(
            "Interpolation chooses the context points at random: pass `key`."
        )
    return _split_times(dataset, mode, n_context, key)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _split_times(dataset, mode, n_context, key):
    ys = dataset.ys
    n, n_times = ys.shape[:2]
    observed = jnp.ones(ys.shape, bool) if dataset.mask is None else dataset.mask
    if mode == "interpolation":
        # The ranks of i.i.d. uniforms are a uniform random permutation per series.
        draws = jr.uniform(key, (n, n_times))
        chosen = jnp.argsort(jnp.argsort(draws, axis=1), axis=1) < n_context
    else:
        chosen = jnp.broadcast_to(jnp.arange(n_times) < n_context, (n, n_times))
    chosen = jnp.reshape(chosen, (n, n_times) + (1,) * (ys.ndim - 2))
    context_mask = observed & chosen
    target_mask = observed if mode == "interpolation" else observed & ~chosen

    def part(mask):
        return Dataset(
            ys=jnp.where(mask, ys, 0.0), ts=dataset.ts, labels=dataset.labels, mask=mask
        )

    return part(context_mask), part(target_mask)
