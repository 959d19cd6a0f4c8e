r"""Anderson acceleration: an optimistix fixed-point solver (optimistix has plain
fixed-point iteration, Newton and chord, but not Anderson).

From the last $m$ iterates $x_i$ and their images $f_i = f(x_i)$, with residuals
$g_i = f_i - x_i$, the next iterate mixes the images with the weights that minimise
the mixed residual:

$$\alpha = \arg\min_{\mathbf 1^\top \alpha = 1} \Big\|\sum_i \alpha_i g_i\Big\|_2^2
= \frac{(G G^\top + \lambda I)^{-1} \mathbf 1}{\mathbf 1^\top (G G^\top + \lambda I)^{-1}
\mathbf 1}, \qquad x_{k+1} = \beta \sum_i \alpha_i f_i + (1 - \beta) \sum_i \alpha_i x_i,$$

($G$ has the rows $g_i$, $\lambda$ a small Tikhonov term relative to $\max_i \|g_i\|^2$,
$\beta$ the mixing). With $m = 1$ it is damped fixed-point iteration.

A step whose mixed iterate is not finite (a singular or overflowing least-squares
problem) falls back to the plain image $f(x_k)$, and counts the fallback; a
non-finite image ends the solve with `RESULTS.nonfinite`, so a non-finite state is
never passed on silently.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, PyTree, Scalar


class _AndersonState(eqx.Module):
    xs: Array
    fs: Array
    count: Array
    relative_error: Scalar
    finite: Bool[Array, ""]
    fallbacks: Array


class Anderson(optx.AbstractFixedPointSolver):
    r"""Anderson acceleration for $x = f(x)$ (module docstring), for
    `optimistix.fixed_point`.

    **Arguments:**

    - `rtol`, `atol`: stop when $\|g_k / (\mathrm{atol} + \mathrm{rtol}|f(x_k)|)\|
      < 1$ in `norm` (default `optimistix.max_norm`), $g_k = f(x_k) - x_k$.
    - `memory`: $m$, the iterates kept (default 5).
    - `mixing`: $\beta \in (0, 1]$ (default 1).
    - `regularization`: $\lambda$ relative to the largest $\|g_i\|^2$ (default
      1e-8).

    The solution's `stats` has no extra fields; `state.fallbacks` (from
    `optimistix.fixed_point(...).state`) counts the steps that fell back.

    **Example:**

    ```python
    sol = optx.fixed_point(lambda z, a: jnp.cos(z), Anderson(1e-6, 1e-6), 0.0)
    ```

    **Reference:** H. F. Walker, P. Ni, "Anderson Acceleration for Fixed-Point
    Iterations", SIAM J. Numer. Anal. 49(4), 2011; S. Bai, J. Z. Kolter, V. Koltun,
    "Deep Equilibrium Models", NeurIPS 2019, arXiv:1909.01377.
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    memory: int = eqx.field(static=True, default=5)
    mixing: float = 1.0
    regularization: float = 1e-8

    def __check_init__(self):
        if self.memory < 1:
            raise ValueError(f"`memory` must be at least 1; got {self.memory}.")
        if not 0 < self.mixing <= 1:
            raise ValueError(f"`mixing` must lie in (0, 1]; got {self.mixing}.")

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, args, options, f_struct, aux_struct, tags
        flat, _ = ravel_pytree(y)
        zeros = jnp.zeros((self.memory, flat.shape[0]), flat.dtype)
        return _AndersonState(
            xs=zeros,
            fs=zeros,
            count=jnp.zeros((), jnp.int32),
            relative_error=jnp.array(jnp.inf, flat.dtype),
            finite=jnp.array(True),
            fallbacks=jnp.zeros((), jnp.int32),
        )

    def step(self, fn, y, args, options: dict[str, Any], state: _AndersonState, tags):
        del options, tags
        fy, aux = fn(y, args)
        x, unravel = ravel_pytree(y)
        f, _ = ravel_pytree(fy)
        slot = state.count % self.memory
        xs = state.xs.at[slot].set(x)
        fs = state.fs.at[slot].set(f)
        used = jnp.arange(self.memory, dtype=state.count.dtype) < jnp.minimum(
            state.count + 1, self.memory
        )
        g = jnp.where(used[:, None], fs - xs, 0)
        gram = g @ g.T
        lam = self.regularization * jnp.maximum(jnp.max(jnp.diagonal(gram)), 1e-30)
        both = used[:, None] & used[None, :]
        eye = jnp.eye(self.memory, dtype=gram.dtype)
        matrix = jnp.where(both, gram + lam * eye, eye)
        ones = used.astype(gram.dtype)
        w = lx.linear_solve(
            lx.MatrixLinearOperator(matrix), ones, lx.LU(), throw=False
        ).value
        alpha = w / jnp.sum(w)
        mixed = self.mixing * (alpha @ fs) + (1 - self.mixing) * (alpha @ xs)
        ok = jnp.all(jnp.isfinite(mixed))
        new = jnp.where(ok, mixed, f)
        scale = self.atol + self.rtol * jnp.abs(f)
        error = self.norm((f - x) / scale)
        finite = jnp.all(jnp.isfinite(f))
        state = _AndersonState(
            xs=xs,
            fs=fs,
            count=state.count + 1,
            relative_error=error,
            finite=finite,
            fallbacks=state.fallbacks + jnp.logical_not(ok).astype(jnp.int32),
        )
        return unravel(new), state, aux

    def terminate(self, fn, y, args, options, state: _AndersonState, tags):
        del fn, y, args, options, tags
        result = optx.RESULTS.where(
            state.finite, optx.RESULTS.successful, optx.RESULTS.nonfinite
        )
        done = (state.relative_error < 1) | jnp.logical_not(state.finite)
        return done, result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, state, tags, result
        return y, aux, {}
