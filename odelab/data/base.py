"""The `Dataset` container, splits and batches, and the checks the generators share."""

import numbers
from collections.abc import Iterator

import equinox as eqx
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


def _check_missing_rate(missing_rate: float) -> None:
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(
            f"`missing_rate` is the fraction of entries dropped and must lie in "
            f"[0, 1); got {missing_rate!r}."
        )
