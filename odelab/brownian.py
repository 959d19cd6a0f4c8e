r"""Brownian paths for fixed-step SDE solves: increments sampled once, up front.

diffrax's `VirtualBrownianTree` answers any query $W(b) - W(a)$ by descending a
binary tree of Brownian bridges: about $\log_2((t_1 - t_0)/\text{tol})$ PRNG splits and
normal draws per query, which dominates a small neural SDE's training step.
`UnsafeBrownianPath` draws fresh normals per query but cannot be differentiated in
reverse mode. When the step grid is known in advance, neither cost is needed: draw the
$n$ increments of the grid's cells in one call and let each step read its own. That is
what torchsde's `BrownianInterval` caches lazily, and what `BrownianIncrements` holds
eagerly.
"""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr


class BrownianIncrements(diffrax.AbstractBrownianPath):
    r"""A Brownian path given by its increments on the cells of a uniform grid.

    With cells $[t_k, t_{k+1}]$, $t_k = t_0 + k h$, $h = (t_1 - t_0)/n$, and increments
    $\Delta W_k \sim N(0, h I)$, the path is the piecewise-linear interpolant of
    $W(t_k) = \sum_{j<k} \Delta W_j$:

    $$W(t) = W(t_k) + \frac{t - t_k}{h} \Delta W_k, \quad t \in [t_k, t_{k+1}].$$

    At the grid points it has the law of Brownian motion, so a fixed-step solver whose
    steps are the cells (e.g. Euler–Maruyama, reversible Heun) sees exact Brownian
    increments: `evaluate(t_k, t_{k+1})` returns $\Delta W_k$ itself (read by index,
    no subtraction). Any other query returns the interpolant's difference, which is
    *not* a Brownian increment inside a cell: use `diffrax.VirtualBrownianTree` for
    adaptive steps or solvers that evaluate the path off the grid.

    Evaluation costs one dynamic index (no tree descent, no PRNG), and the path is
    an ordinary pytree of arrays, so reverse-mode gradients flow through a solve that
    uses it (unlike `diffrax.UnsafeBrownianPath`). The grid may run backwards in time
    ($t_1 < t_0$).

    **Arguments:**

    - `t0`, `t1`: the ends of the grid.
    - `increments`: shape `(n, *shape)`, row $k$ the increment over cell $k$ (in the
      direction from `t0` to `t1`).

    **Example:**

    ```python
    path = BrownianIncrements.sample(0.0, 1.0, 50, (4,), jax.random.key(0))
    path.evaluate(0.0, 0.02)  # == path.increments[0]
    ```
    """

    t0: jax.Array
    t1: jax.Array
    increments: jax.Array
    cumulative: jax.Array
    levy_area: ClassVar = diffrax.BrownianIncrement

    def __init__(self, t0, t1, increments):
        increments = jnp.asarray(increments)
        if increments.ndim < 1 or increments.shape[0] < 1:
            raise ValueError(
                "`increments` must have shape (n, *shape) with n >= 1 cells; got "
                f"shape {increments.shape}."
            )
        dtype = jnp.result_type(t0, t1, float)
        self.t0 = jnp.asarray(t0, dtype)
        self.t1 = jnp.asarray(t1, dtype)
        self.increments = increments
        # W at the grid points, W(t_0) = 0 ... W(t_n): off-cell queries interpolate it.
        zero = jnp.zeros_like(increments[:1])
        self.cumulative = jnp.concatenate([zero, jnp.cumsum(increments, axis=0)])

    @classmethod
    def sample(cls, t0, t1, n: int, shape, key, dtype=None) -> "BrownianIncrements":
        r"""Draw $n$ increments $\Delta W_k \sim N(0, |h| I)$ of `shape` over a uniform
        grid from `t0` to `t1`."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"`n` must be a positive integer; got {n!r}.")
        if dtype is None:
            dtype = jnp.result_type(t0, t1, float)
        h = jnp.abs(jnp.asarray(t1, dtype) - jnp.asarray(t0, dtype)) / n
        normals = jr.normal(key, (int(n), *tuple(shape)), dtype)
        return cls(t0, t1, jnp.sqrt(h).astype(dtype) * normals)

    @property
    def n(self) -> int:
        return self.increments.shape[0]

    @property
    def shape(self):
        return jax.ShapeDtypeStruct(self.increments.shape[1:], self.increments.dtype)

    def _position(self, t):
        # Fractional cell coordinate of t, in [0, n].
        h = (self.t1 - self.t0) / self.n
        t = jnp.asarray(t).astype(self.t0.dtype)
        return jnp.clip((t - self.t0) / h, 0, self.n)

    def _value(self, t):
        # W(t) of the piecewise-linear interpolant (W(t0) = 0).
        u = self._position(t)
        k = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, self.n - 1)
        frac = (u - k.astype(u.dtype)).astype(self.increments.dtype)
        return self.cumulative[k] + frac * self.increments[k]

    @eqx.filter_jit
    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        del left
        if t1 is None:
            return self._value(t0)
        u0, u1 = self._position(t0), self._position(t1)
        k = jnp.clip(jnp.round(jnp.minimum(u0, u1)).astype(jnp.int32), 0, self.n - 1)
        # A query spanning exactly one cell (the fixed-step case) reads the stored
        # increment: no cumulative sum, no cancellation.
        one_cell = (jnp.abs(jnp.abs(u1 - u0) - 1) < 1e-6) & (
            jnp.abs(jnp.minimum(u0, u1) - k.astype(u0.dtype)) < 1e-6
        )
        sign = jnp.where(u1 >= u0, 1, -1).astype(self.increments.dtype)
        cell = sign * self.increments[k]
        general = self._value(t1) - self._value(t0)
        out = jnp.where(one_cell, cell, general)
        if use_levy:
            return diffrax.BrownianIncrement(dt=t1 - t0, W=out)
        return out
