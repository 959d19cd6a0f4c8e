"""2-D densities (two moons, eight Gaussians, checkerboard, swiss roll) and the 8×8
digits."""

import functools
import importlib.util
import math

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .base import (
    Dataset,
    _check_count,
    _check_noise,
    _float_dtype,
    _take,
)


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
