r"""The integral regularizers that the solver-heuristic ones are measured against:
RNODE's kinetic energy and Jacobian Frobenius norm, and TayNODE's higher derivatives.

Each is an integral along the trajectory, $R = \int_{t_0}^{t_1} r(t, y(t))\,dt$, solved
as extra components of the state, so that any adjoint (discrete or continuous)
differentiates it:

- kinetic energy: $r_K = \|f\|^2 / d$;
- Jacobian Frobenius norm (Hutchinson): $r_J = \|\varepsilon^\top \partial_y f\|^2 / d$
  with one $\varepsilon \sim N(0, I)$ per solve, $\mathbb{E}\,r_J = \|\partial_y f\|_F^2 / d$;
- Taylor (order $K$): $r_T = \|d^K y / dt^K\|^2 / d$, the $K$-th total derivative of
  the solution, by Taylor-mode automatic differentiation (`jax.experimental.jet`).

($d$ is the state's size; the means over components follow the authors' code.)
"""

import jax
import jax.numpy as jnp
from jax.experimental import jet

from ..solve import solve


def total_derivative(vector_field, t, y, args, order: int):
    r"""$d^K y/dt^K$ at $(t, y)$ along $\dot y = f(t, y, \mathrm{args})$, $K$ =
    `order` $\ge 1$, for a one-dimensional `y`.

    Taylor mode on $g(y, t) = (f(t, y), 1)$: with the series $z_1 = g(z_0)$, each
    `jet` call through $g$ returns the next coefficient, $z_{k+1} = (g \circ z)^{(k)}$
    ($K - 1$ calls).
    """
    if order < 1:
        raise ValueError(f"`order` must be at least 1; got {order}.")
    dtype = y.dtype

    def g(z):
        return jnp.concatenate(
            [vector_field(z[-1], z[:-1], args), jnp.ones((1,), dtype)]
        )

    z0 = jnp.concatenate([y, jnp.reshape(t, (1,)).astype(dtype)])
    z1 = g(z0)
    series = [z1]
    for _ in range(order - 1):
        _, out = jet.jet(g, (z0,), (series,))
        series = [z1, *out]
    return series[order - 1][:-1]


REGULARIZERS = ("kinetic", "jacobian", "taylor")


def integral_regularizers(
    vector_field,
    y0,
    ts,
    args=None,
    *,
    which=("kinetic", "jacobian"),
    taylor_order: int = 2,
    key=None,
    **solve_kwargs,
):
    r"""Solve $\dot y = f(t, y, \mathrm{args})$ with the integrals of `which` (module
    docstring) as extra state; returns `(ys, integrals)`.

    **Arguments:**

    - `vector_field`, `y0` (one-dimensional), `ts`, `args`: as in `odelab.solve`.
    - `which`: names from `"kinetic"`, `"jacobian"`, `"taylor"`.
    - `taylor_order`: $K$ of the Taylor regularizer (TayNODE uses 2 or 3).
    - `key`: PRNG key of the Hutchinson probe (required for `"jacobian"`).
    - `**solve_kwargs`: `solver`, `adjoint`, `rtol`, `atol`, `steps`, ... of
      `odelab.solve`. The error control sees the integrals too, as in the authors'
      code.

    **Returns:** `ys` (the state at `ts`) and a dict name → $\int_{t_0}^{t_1} r\,dt$.

    **Raises:** `ValueError` for an unknown name, a multi-dimensional `y0`, or
    `"jacobian"` without `key`.

    **Reference:** C. Finlay, J.-H. Jacobsen, L. Nurbekyan, A. Oberman, "How to train
    your neural ODE", ICML 2020, arXiv:2002.02798; J. Kelly, J. Bettencourt, M. J.
    Johnson, D. Duvenaud, "Learning Differential Equations that are Easy to Solve",
    NeurIPS 2020, arXiv:2007.04504.
    """
    sol, d, which = _integral_solve(
        vector_field, y0, ts, args, which, taylor_order, key, solve_kwargs
    )
    integrals = {name: sol.ys[-1, d + i] for i, name in enumerate(which)}
    return sol.ys[:, :d], integrals


def _integral_solve(vector_field, y0, ts, args, which, taylor_order, key, solve_kwargs):
    # The solution of the augmented state `(y, integrals)`, its split and names.
    which = tuple(which)
    unknown = [w for w in which if w not in REGULARIZERS]
    if unknown or not which:
        raise ValueError(f"`which` must name some of {REGULARIZERS}; got {which!r}.")
    y0 = jnp.asarray(y0)
    if y0.ndim != 1:
        raise ValueError(f"`y0` must be one-dimensional; got shape {y0.shape}.")
    if "jacobian" in which and key is None:
        raise ValueError("The Hutchinson probe of 'jacobian' needs `key=`.")
    d = y0.shape[0]
    eps = None if key is None else jax.random.normal(key, (d,), y0.dtype)

    def field(t, state, a):
        y = state[:d]
        f, vjp = jax.vjp(lambda u: vector_field(t, u, a), y)
        rates = []
        for name in which:
            if name == "kinetic":
                rates.append(jnp.sum(f**2) / d)
            elif name == "jacobian":
                rates.append(jnp.sum(vjp(eps)[0] ** 2) / d)
            else:
                dk = total_derivative(vector_field, t, y, a, taylor_order)
                rates.append(jnp.sum(dk**2) / d)
        return jnp.concatenate([f, jnp.stack(rates).astype(f.dtype)])

    state0 = jnp.concatenate([y0, jnp.zeros((len(which),), y0.dtype)])
    return solve(field, state0, ts, args, **solve_kwargs), d, which
