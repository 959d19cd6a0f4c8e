r"""The control path of a neural CDE (or a stable neural SDE): one irregularly
sampled, partially observed series as a continuous path $X$ over $s \in [0, 1]$."""

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete


INTERPOLATIONS = ("hermite", "rectilinear")
"""Control-path interpolations: backward-Hermite cubic, rectilinear."""


def control_path(
    ts,
    ys,
    mask=None,
    *,
    interpolation: str = "hermite",
    intensity: bool | None = None,
) -> diffrax.CubicInterpolation | diffrax.LinearInterpolation:
    r"""The control path $X$ of one series, over the integration variable $s \in [0, 1]$.

    The channels of $X$ are time itself, the values, and (with `intensity`) one
    observational intensity per value channel: the fraction of the series' $N$
    observation times at which that channel has been observed so far,
    $c_k = \frac{1}{N}\sum_{j \le k} m_j \in [0, 1]$. (Kidger et al. use the raw
    count; divided by $N$ it has the scale of the other channels, and a raw count,
    whose derivative along $s$ is about $N$, saturated the vector field: on
    `irregular_series` at 50% missing a neural CDE with raw counts stayed at chance,
    50%, while the fraction reaches the accuracy of the model without the channel.)
    Missing values (`mask` False, or
    NaN) are handed to diffrax as NaN and filled by its interpolation; before a
    channel's first observation the path holds that first value, after its last the
    last value, and a channel never observed is 0.

    - `"hermite"`: `diffrax.backward_hermite_coefficients` with knots at the
      normalised times $s_k = (t_k - t_0) / (t_N - t_0)$, as a
      `diffrax.CubicInterpolation`: continuously differentiable, $X(s_k)$ is the
      observation at $t_k$, and $X(s)$ at time channel value $t$ is the same cubic
      as a spline with knots at the times themselves (the cubic Hermite spline is
      invariant under an affine change of its parameter).
    - `"rectilinear"`: `diffrax.rectilinear_interpolation` (values forward-filled)
      as a `diffrax.LinearInterpolation` on the doubled axis: $2n - 1$ knots equally
      spaced on $[0, 1]$ for $n$ times; at knot $2k - 1$ time has advanced to $t_k$
      with the values still at $t_{k-1}$, at knot $2k$ the values have caught up.
      The path never looks ahead, which online prediction needs.

    **Arguments:**

    - `ts`: observation times, shape `(n_times,)`, strictly increasing, at least 2.
    - `ys`: observations, shape `(n_times, channels)`.
    - `mask`: booleans of the shape of `ys`, True where observed; default: all
      observed (a NaN in `ys` still counts as missing).
    - `interpolation`: `"hermite"` (default) or `"rectilinear"`.
    - `intensity`: append the intensity channels; default: when `mask` is given.

    **Returns:** a diffrax path over $[0, 1]$ with `1 + channels` channels (`1 + 2
    channels` with intensity), in the dtype of `ys` (`ts` is cast to it).

    **Raises:** `ValueError` for wrong ranks or shapes, an unknown `interpolation`,
    or (when concrete; under `jit` at run time) `ts` not strictly increasing.

    **Example:**

    ```python
    path = control_path(ts, ys, mask)  # ts (50,), ys, mask (50, 2)
    path.evaluate(0.0)  # [t_0, first observed values, counts at t_0]: 5 channels
    ```

    **Reference:** P. Kidger, J. Morrill, J. Foster, T. Lyons, "Neural Controlled
    Differential Equations for Irregular Time Series", NeurIPS 2020,
    arXiv:2005.08926 (time and intensity channels); J. Morrill, P. Kidger, L. Yang,
    T. Lyons, "Neural Controlled Differential Equations for Online Prediction
    Tasks", 2021, arXiv:2106.11028 (the interpolations).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"Unknown `interpolation={interpolation!r}`; valid: "
            f"{', '.join(map(repr, INTERPOLATIONS))}."
        )
    ys = jnp.asarray(ys)
    if ys.ndim != 2:
        raise ValueError(
            f"`ys` must have shape (n_times, channels) for one series; got "
            f"{ys.shape}. For a batch, `jax.vmap(control_path)`."
        )
    dtype = ys.dtype if jnp.issubdtype(ys.dtype, jnp.floating) else float
    ys = ys.astype(dtype)
    ts = _checked_times(ts, ys.shape[0], dtype)
    if intensity is None:
        intensity = mask is not None
    observed = ~jnp.isnan(ys)
    if mask is not None:
        if jnp.shape(mask) != ys.shape:
            raise ValueError(
                f"`mask` must have the shape of `ys` {ys.shape}; got {jnp.shape(mask)}."
            )
        observed = observed & jnp.asarray(mask, dtype=bool)
    # A channel never observed would stay NaN through diffrax's filling: make it 0.
    ever = jnp.any(observed, axis=0)
    values = jnp.where(observed | ~ever[None], jnp.where(observed, ys, 0), jnp.nan)
    first = jnp.take_along_axis(
        jnp.where(observed, ys, 0), jnp.argmax(observed, axis=0)[None], axis=0
    )[0]
    channels = [values]
    starts = [first]
    if intensity:
        counts = jnp.cumsum(observed, axis=0).astype(dtype) / ys.shape[0]
        channels.append(counts)
        starts.append(counts[0])
    data = jnp.concatenate(channels, axis=1)
    start = jnp.concatenate(starts)
    n = ys.shape[0]
    if interpolation == "hermite":
        knots = (ts - ts[0]) / (ts[-1] - ts[0])
        data = jnp.concatenate([ts[:, None], data], axis=1)
        # diffrax replaces the first row by `replace_nans_at_start` whether or not
        # it is NaN; `start` is that row where observed.
        coeffs = diffrax.backward_hermite_coefficients(
            knots,
            data,
            replace_nans_at_start=jnp.concatenate([ts[:1], start]),
            fill_forward_nans_at_end=True,
        )
        return diffrax.CubicInterpolation(knots, coeffs)
    new_ts, data = diffrax.rectilinear_interpolation(ts, data, start)
    data = jnp.concatenate([new_ts[:, None], data], axis=1)
    knots = jnp.linspace(0.0, 1.0, 2 * n - 1, dtype=dtype)
    return diffrax.LinearInterpolation(knots, data)


def _checked_times(ts, n_times, dtype):
    ts = jnp.asarray(ts)
    if ts.shape != (n_times,):
        raise ValueError(
            f"`ts` must have shape (n_times,) = ({n_times},), one time per row of "
            f"`ys`; got {ts.shape}."
        )
    if n_times < 2:
        raise ValueError(
            f"A control path needs at least 2 observation times; got {n_times}."
        )
    return _increasing(ts.astype(dtype))


_INCREASING = (
    "`ts` must be strictly increasing (and finite): sort each series by time and "
    "merge repeated times."
)


def _increasing(ts):
    """`ts` (times on the last axis), checked now if concrete, else at run time."""
    if not is_concrete(ts):
        return eqx.error_if(ts, ~jnp.all(jnp.diff(ts, axis=-1) > 0), _INCREASING)
    host = np.asarray(ts)
    bad = ~np.all(np.diff(host, axis=-1) > 0, axis=-1)
    if host.ndim == 1 and bad:
        raise ValueError(f"{_INCREASING} Got {host}.")
    if host.ndim == 2 and np.any(bad):
        row = int(np.argmax(bad))
        raise ValueError(f"{_INCREASING} Series {row} has {host[row]}.")
    return ts


def check_batch(ts, ys, mask, in_channels: int):
    """Check a batch of series for a model with `in_channels` value channels: `ys`
    `(batch, n_times, in_channels)`, `mask` like `ys` or `None`, `ts` `(n_times,)`
    shared or `(batch, n_times)` and strictly increasing (checked now when concrete).
    Returns `ys` as an array and the `vmap` axes of `ts` and `mask`."""
    ys = jnp.asarray(ys)
    if ys.ndim != 3 or ys.shape[-1] != in_channels:
        raise ValueError(
            f"`ys` must have shape (batch, n_times, {in_channels}) "
            f"(`in_channels={in_channels}`); got {ys.shape}. For one series call the "
            "model."
        )
    if mask is not None and jnp.shape(mask) != ys.shape:
        raise ValueError(
            f"`mask` must have the shape of `ys` {ys.shape}; got {jnp.shape(mask)}."
        )
    if jnp.shape(ts) not in (ys.shape[1:2], ys.shape[:2]):
        raise ValueError(
            f"`ts` must have shape (n_times,) = {ys.shape[1:2]} or (batch, "
            f"n_times) = {ys.shape[:2]}; got {jnp.shape(ts)}."
        )
    ts_axis = 0 if jnp.ndim(ts) == 2 else None
    if ts_axis == 0 and is_concrete(ts):
        # Under `vmap` the per-series check could only run at run time.
        _increasing(jnp.asarray(ts))
    return ys, ts_axis, None if mask is None else 0
