r"""Embedded datasets, generated in code from a PRNG key: nothing is downloaded or read.

- time series as a `Dataset`: `spirals` (a linear 2-D ODE, two directions),
  `irregular_series` (damped oscillators at irregular times, with missing values),
  `irregular_spirals` (the spirals at irregular times, with missing values);
- exact stochastic-process paths with their exact moments, to compare a neural SDE
  against: `ou_process` (`ou_moments`, `ou_covariance`, `ou_stationary_covariance`)
  and `gbm_process` (`gbm_moments`);
- 2-D densities as samples of shape `(n, 2)`: `moons`, `eight_gaussians`,
  `checkerboard`, `swiss_roll`, as in the FFJORD and flow-matching literature;
- `digits`: scikit-learn's bundled 8×8 digits (needs `scikit-learn`);
- `split`, `batches` (one shuffled epoch) and `sample_batch` (one random batch, jittable);
  `split_times` (context and target points of each series, for interpolation or
  extrapolation).

Every generator is a pure function of its key and arguments. Floats come in JAX's
default float dtype (float32, or float64 under `jax_enable_x64`), labels as int32.

```python
import jax.random as jr
import odelab.data

data = odelab.data.spirals(jr.key(0))
train, val = odelab.data.split(data, 0.2, jr.key(1))
batch = odelab.data.sample_batch(train, 32, jr.key(2))  # batch.ys: (32, 20, 2)
```
"""

import functools
import importlib.util
import math
import numbers
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray


class Dataset(eqx.Module):
    r"""A frozen collection of `n` examples, indexed along the leading axis.

    **Fields:**

    - `ys`: the examples, shape `(n, ...)`.
    - `ts`: observation times, `None` for data without time; shape `(n_times,)` when
        all examples share them, `(n, n_times)` when each has its own. Either way
        `ys.shape[1] == n_times`.
    - `labels`: integer class labels of shape `(n,)`, or `None`.
    - `mask`: booleans of the shape of `ys`, `True` where a value was observed, or
        `None` when everything was.

    `len(dataset)` is `n`. `split`, `batches` and `sample_batch` index every field but a
    shared `ts`.

    **Raises:** `ValueError` if the fields' shapes disagree.
    """

    ys: Float[Array, "n ..."]
    ts: Float[Array, " n_times"] | Float[Array, "n n_times"] | None = None
    labels: Int[Array, " n"] | None = None
    mask: Bool[Array, "n ..."] | None = None

    def __check_init__(self):
        shape = jnp.shape(self.ys)
        if len(shape) == 0:
            raise ValueError("`ys` needs a leading example axis; got a scalar.")
        if self.ts is not None:
            ts_shape = jnp.shape(self.ts)
            expected = [(shape[1],), (shape[0], shape[1])] if len(shape) > 1 else []
            if ts_shape not in expected:
                raise ValueError(
                    f"`ts` must have shape (n_times,) or (n, n_times) with "
                    f"(n, n_times) = ys.shape[:2]; got ts {ts_shape}, ys {shape}."
                )
        if self.labels is not None and jnp.shape(self.labels) != shape[:1]:
            raise ValueError(
                f"`labels` must have shape ({shape[0]},), one per example; got "
                f"{jnp.shape(self.labels)}."
            )
        if self.mask is not None and jnp.shape(self.mask) != shape:
            raise ValueError(
                f"`mask` must have the shape of `ys` {shape}; got "
                f"{jnp.shape(self.mask)}."
            )

    def __len__(self) -> int:
        return jnp.shape(self.ys)[0]


def _take(dataset: Dataset, index: Int[Array, " m"]) -> Dataset:
    def take(x):
        return None if x is None else x[index]

    shared_ts = dataset.ts is None or jnp.ndim(dataset.ts) == 1
    return Dataset(
        ys=dataset.ys[index],
        ts=dataset.ts if shared_ts else dataset.ts[index],
        labels=take(dataset.labels),
        mask=take(dataset.mask),
    )


def _float_dtype():
    # JAX's default float: float32, or float64 under `jax_enable_x64`.
    return jnp.result_type(float)


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer; got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")


def _check_noise(noise: float) -> None:
    if not noise >= 0.0:
        raise ValueError(f"`noise` must be >= 0; got {noise!r}.")


def _check_batch_size(dataset: Dataset, batch_size: int) -> None:
    _check_count("batch_size", batch_size)
    if batch_size > len(dataset):
        raise ValueError(
            f"`batch_size` ({batch_size}) exceeds the number of examples "
            f"({len(dataset)}); use a batch size of at most {len(dataset)}."
        )


def _balanced_labels(n: int) -> Int[Array, " n"]:
    return (jnp.arange(n) >= n // 2).astype(jnp.int32)


def split(
    dataset: Dataset, validation_fraction: float, key: PRNGKeyArray
) -> tuple[Dataset, Dataset]:
    r"""Split a dataset at random into training and validation parts.

    A random permutation of the $n$ examples is cut after
    $n_\text{val} = \operatorname{round}(f\, n)$ entries, $f$ the validation fraction:
    those go to validation, the other $n - n_\text{val}$ to training. The parts are
    disjoint and together hold every example once.

    **Arguments:**

    - `dataset`: the `Dataset` to split.
    - `validation_fraction`: $f \in (0, 1)$.
    - `key`: a PRNG key; the same key gives the same split.

    **Returns:** `(train, val)`, two `Dataset`s.

    **Raises:** `ValueError` if $f \notin (0, 1)$ or either part would be empty.
    """
    n = len(dataset)
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must lie in (0, 1); got {validation_fraction!r}."
        )
    n_val = round(validation_fraction * n)
    if n_val == 0 or n_val == n:
        raise ValueError(
            f"`validation_fraction={validation_fraction}` of {n} examples leaves "
            f"{n - n_val} for training and {n_val} for validation; both need at least "
            "one. Use a larger dataset or a fraction nearer 1/2."
        )
    permutation = jr.permutation(key, n)
    return _take(dataset, permutation[n_val:]), _take(dataset, permutation[:n_val])


def batches(dataset: Dataset, batch_size: int, key: PRNGKeyArray) -> Iterator[Dataset]:
    r"""Iterate over one epoch of shuffled mini-batches.

    A random permutation of the $n$ examples is cut into $\lfloor n / b \rfloor$
    batches of $b$ examples; the last $n \bmod b$ examples of the permutation are
    dropped, so every batch has the same shape (one compilation) and each example
    appears at most once per epoch.

    **Arguments:**

    - `dataset`: the `Dataset` to draw from.
    - `batch_size`: $b$, with $1 \le b \le n$.
    - `key`: a PRNG key; use a fresh one per epoch.

    **Returns:** an iterator of `Dataset`s of length `batch_size`.

    **Raises:** `ValueError` (at call time, not at the first `next`) if `batch_size` is
    not a positive integer or exceeds `len(dataset)`.

    ```python
    for epoch_key in jr.split(key, n_epochs):
        for batch in odelab.data.batches(train, 32, epoch_key):
            params, state = step(params, state, batch)
    ```
    """
    _check_batch_size(dataset, batch_size)
    permutation = jr.permutation(key, len(dataset))

    def epoch() -> Iterator[Dataset]:
        for start in range(0, len(dataset) - batch_size + 1, batch_size):
            yield _take(dataset, permutation[start : start + batch_size])

    return epoch()


def sample_batch(dataset: Dataset, batch_size: int, key: PRNGKeyArray) -> Dataset:
    r"""Draw one random mini-batch of distinct examples.

    $b$ indices drawn uniformly without replacement (`jax.random.choice`), for a
    training loop that samples a batch per step. Jittable with `batch_size` static,
    e.g. inside an `eqx.filter_jit`-ed step or `jax.jit(..., static_argnums=1)`.

    **Arguments:**

    - `dataset`: the `Dataset` to draw from.
    - `batch_size`: $b$, with $1 \le b \le n$.
    - `key`: a PRNG key.

    **Returns:** a `Dataset` of length `batch_size`.

    **Raises:** `ValueError` if `batch_size` is not a positive integer or exceeds
    `len(dataset)`.
    """
    _check_batch_size(dataset, batch_size)
    index = jr.choice(key, len(dataset), (batch_size,), replace=False)
    return _take(dataset, index)


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
    uniform draws on $[0, t_1]$. Values are $(x, \dot x)$ plus $N(0, \sigma^2)$ noise.
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
    ts = jnp.sort(jr.uniform(keys[4], (n_series, n_times), dtype, 0.0, t1), axis=1)
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


def moons(key: PRNGKeyArray, n: int, noise: float = 0.1) -> Float[Array, "n 2"]:
    r"""Samples from the two-moons density.

    With probability 1/2 each, $x = (\cos\theta, \sin\theta)$ (the upper moon) or
    $x = (1 - \cos\theta, \tfrac12 - \sin\theta)$ (the lower one), with
    $\theta \sim U[0, \pi]$, plus $\sigma \varepsilon$, $\varepsilon \sim N(0, I)$:
    scikit-learn's `make_moons` with random angles. FFJORD uses $\sigma = 0.1$ and
    rescales to $2x - (1, 0.2)$.

    **Arguments:** `key`, a PRNG key; `n`, the number of samples; `noise`,
    $\sigma \ge 0$.

    **Returns:** an array of shape `(n, 2)`.

    **Raises:** `ValueError` for a non-positive `n` or negative `noise`.

    **Reference:** W. Grathwohl et al., *FFJORD*, ICLR 2019, arXiv:1810.01367.
    """
    _check_count("n", n)
    _check_noise(noise)
    return _moons(key, n, noise)


@functools.partial(jax.jit, static_argnums=(1,))
def _moons(key, n, noise):
    dtype = _float_dtype()
    moon_key, angle_key, noise_key = jr.split(key, 3)
    lower = jr.bernoulli(moon_key, 0.5, (n, 1))
    theta = jr.uniform(angle_key, (n, 1), dtype, 0.0, math.pi)
    upper_moon = jnp.concatenate([jnp.cos(theta), jnp.sin(theta)], -1)
    lower_moon = jnp.concatenate([1 - jnp.cos(theta), 0.5 - jnp.sin(theta)], -1)
    x = jnp.where(lower, lower_moon, upper_moon)
    return x + noise * jr.normal(noise_key, (n, 2), dtype)


def eight_gaussians(
    key: PRNGKeyArray, n: int, scale: float = 2.0, std: float = 0.2
) -> Float[Array, "n 2"]:
    r"""Samples from an equal mixture of eight Gaussians on a circle.

    $x = r\,(\cos \tfrac{\pi k}{4}, \sin \tfrac{\pi k}{4}) + s \varepsilon$ with
    $k \sim U\{0, \dots, 7\}$, $\varepsilon \sim N(0, I)$, $r$ the scale and $s$ the
    standard deviation. FFJORD's `8gaussians` is $r = 4/1.414$, $s = 0.5/1.414$.

    **Arguments:** `key`, a PRNG key; `n`, the number of samples; `scale`, $r$;
    `std`, $s \ge 0$.

    **Returns:** an array of shape `(n, 2)`.

    **Raises:** `ValueError` for a non-positive `n` or negative `std`.

    **Reference:** W. Grathwohl et al., *FFJORD*, ICLR 2019, arXiv:1810.01367.
    """
    _check_count("n", n)
    if not std >= 0.0:
        raise ValueError(f"`std` must be >= 0; got {std!r}.")
    return _eight_gaussians(key, n, scale, std)


@functools.partial(jax.jit, static_argnums=(1,))
def _eight_gaussians(key, n, scale, std):
    dtype = _float_dtype()
    mode_key, noise_key = jr.split(key)
    angle = (math.pi / 4) * jr.randint(mode_key, (n, 1), 0, 8).astype(dtype)
    centre = scale * jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], -1)
    return centre + std * jr.normal(noise_key, (n, 2), dtype)


def checkerboard(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    r"""Samples from the uniform density on the black squares of a 4×4 checkerboard.

    The board is $[-4, 4)^2$ in squares of side 2; $x$ is uniform on the eight squares
    with $\lfloor x_1/2 \rfloor + \lfloor x_2/2 \rfloor$ even. FFJORD's construction:
    $u_1 \sim U[-2, 2)$, $u_2 = v - 2c + (\lfloor u_1 \rfloor \bmod 2)$ with
    $v \sim U[0, 1)$, $c \sim \text{Bernoulli}(1/2)$, and $x = 2u$.

    **Arguments:** `key`, a PRNG key; `n`, the number of samples.

    **Returns:** an array of shape `(n, 2)`.

    **Raises:** `ValueError` for a non-positive `n`.

    **Reference:** W. Grathwohl et al., *FFJORD*, ICLR 2019, arXiv:1810.01367.
    """
    _check_count("n", n)
    return _checkerboard(key, n)


@functools.partial(jax.jit, static_argnums=(1,))
def _checkerboard(key, n):
    dtype = _float_dtype()
    x1_key, x2_key, column_key = jr.split(key, 3)
    u1 = jr.uniform(x1_key, (n,), dtype, -2.0, 2.0)
    column = jr.bernoulli(column_key, 0.5, (n,)).astype(dtype)
    u2 = jr.uniform(x2_key, (n,), dtype) - 2 * column + jnp.mod(jnp.floor(u1), 2)
    return 2 * jnp.stack([u1, u2], -1)


def swiss_roll(key: PRNGKeyArray, n: int, noise: float = 1.0) -> Float[Array, "n 2"]:
    r"""Samples from the 2-D swiss roll, a spiral whose radius grows with its angle.

    $x = \tfrac15 (t \cos t + \sigma \varepsilon_1,\; t \sin t + \sigma \varepsilon_2)$
    with $t = \tfrac{3\pi}{2}(1 + 2u)$, $u \sim U[0, 1]$, $\varepsilon \sim N(0, I)$:
    scikit-learn's `make_swiss_roll` projected on its $(x, z)$ plane and scaled by
    $1/5$, as in FFJORD (which uses $\sigma = 1$). Without noise $|x| = t/5$.

    **Arguments:** `key`, a PRNG key; `n`, the number of samples; `noise`,
    $\sigma \ge 0$ (before the $1/5$ scaling).

    **Returns:** an array of shape `(n, 2)`.

    **Raises:** `ValueError` for a non-positive `n` or negative `noise`.

    **Reference:** W. Grathwohl et al., *FFJORD*, ICLR 2019, arXiv:1810.01367.
    """
    _check_count("n", n)
    _check_noise(noise)
    return _swiss_roll(key, n, noise)


@functools.partial(jax.jit, static_argnums=(1,))
def _swiss_roll(key, n, noise):
    dtype = _float_dtype()
    angle_key, noise_key = jr.split(key)
    t = 1.5 * math.pi * (1 + 2 * jr.uniform(angle_key, (n, 1), dtype))
    x = jnp.concatenate([t * jnp.cos(t), t * jnp.sin(t)], -1)
    return (x + noise * jr.normal(noise_key, (n, 2), dtype)) / 5


def digits(key: PRNGKeyArray | None = None) -> Dataset:
    r"""scikit-learn's bundled 8×8 handwritten digits (1797 images, no download).

    Pixel intensities $0, \dots, 16$ are scaled to $[0, 1]$ by $x / 16$ and flattened
    row by row to 64 features (`ys.reshape(-1, 8, 8)` recovers the images).

    **Arguments:**

    - `key`: if given, a PRNG key to shuffle the examples with; `None` keeps
        scikit-learn's order.

    **Returns:** a `Dataset` with `ys` `(1797, 64)` in JAX's default float dtype,
    `labels` `(1797,)` int32 in $\{0, \dots, 9\}$ and no `ts`.

    **Raises:** `ImportError` if scikit-learn is not installed.

    **Reference:** E. Alpaydin and C. Kaynak, *Optical Recognition of Handwritten
    Digits*, UCI Machine Learning Repository (1998).
    """
    if importlib.util.find_spec("sklearn") is None:
        raise ImportError(
            "`odelab.data.digits` needs scikit-learn, which odelab does not depend on; "
            "install it with `pip install scikit-learn`."
        )
    from sklearn.datasets import load_digits

    raw = load_digits()
    dataset = Dataset(
        ys=jnp.asarray(raw.data / 16.0, dtype=_float_dtype()),
        labels=jnp.asarray(raw.target, dtype=jnp.int32),
    )
    if key is None:
        return dataset
    return _take(dataset, jr.permutation(key, len(dataset)))


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
    its own times, sorted uniform draws on $[0, t_1]$ (independent draws, so in
    float32 two times of a series coincide now and then). Values are
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


def _check_missing_rate(missing_rate: float) -> None:
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(
            f"`missing_rate` is the fraction of entries dropped and must lie in "
            f"[0, 1); got {missing_rate!r}."
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
    ts = jnp.sort(jr.uniform(time_key, (n_series, n_times), dtype, 0.0, t1), axis=1)
    theta = sign * frequency * ts
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    envelope = jnp.exp(-decay * ts)[..., None]
    ys = envelope * jnp.stack([cos * x0 + sin * y0, cos * y0 - sin * x0], -1)
    ys = ys + noise * jr.normal(noise_key, ys.shape, dtype)
    mask = jr.uniform(mask_key, ys.shape, dtype) >= missing_rate
    return Dataset(ys=jnp.where(mask, ys, 0.0), ts=ts, labels=labels, mask=mask)


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
