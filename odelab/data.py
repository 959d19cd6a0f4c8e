r"""Embedded datasets, generated in code from a PRNG key: nothing is downloaded or read.

- time series as a `Dataset`: `spirals` (a linear 2-D ODE, two directions),
  `irregular_series` (damped oscillators at irregular times, with missing values);
- 2-D densities as samples of shape `(n, 2)`: `moons`, `eight_gaussians`,
  `checkerboard`, `swiss_roll`, as in the FFJORD and flow-matching literature;
- `digits`: scikit-learn's bundled 8×8 digits (needs `scikit-learn`);
- `split`, `batches` (one shuffled epoch) and `sample_batch` (one random batch, jittable).

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
