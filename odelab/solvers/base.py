"""Shared machinery for odelab's own integrators."""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import jax.numpy as jnp
import jax.tree_util as jtu
from equinox import AbstractClassVar

from .._types import Args, RealScalarLike, Y


class AbstractExplicitRK(diffrax.AbstractSolver):
    r"""An explicit Runge–Kutta method given by its Butcher tableau, stages unrolled.

    For $y' = f(t, y)$ and a step $h = t_1 - t_0$ the method computes

    $k_i = h\, f\big(t_0 + c_i h,\; y_0 + \sum_{j<i} a_{ij} k_j\big), \qquad
    y_1 = y_0 + \sum_i b_i k_i .$

    diffrax's own `AbstractERK` runs the stages in a checkpointed while loop (so that
    it can serve implicit and FSAL methods with one code path); for a method with a
    handful of explicit stages that loop costs more than the stages themselves. Here
    the stages are unrolled in Python, which XLA fuses, and the step is an ordinary
    `diffrax.AbstractSolver`, so it works in `diffrax.diffeqsolve` and in
    `odelab.solve` alike, for ODEs and (through `vf_prod` with the control) SDEs.

    Subclasses give `tableau` (a `diffrax.ButcherTableau`) and `order`; nothing else.
    The step returns the embedded error estimate when `b_error` is non-zero, but the
    class is not an adaptive solver: use it with fixed steps.

    Dense output is the cubic Hermite interpolant through $(y_0, k_1)$ and
    $(y_1, k_s)$, as diffrax uses for its low-order methods.

    **Example:** a new method is its tableau and its order (see `RK4`):

    ```python
    class Heun2(AbstractExplicitRK):
        tableau: ClassVar[diffrax.ButcherTableau] = diffrax.ButcherTableau(
            c=np.array([1.0]), b_sol=np.array([0.5, 0.5]), b_error=np.zeros(2),
            a_lower=(np.array([1.0]),))

        def order(self, terms):
            return 2
    ```

    **Reference:** Hairer, Nørsett & Wanner, *Solving Ordinary Differential
    Equations I* (2nd ed., 1993), §II.1.
    """

    tableau: AbstractClassVar[diffrax.ButcherTableau]
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def nfe_costs(self) -> tuple[int, int, int]:
        """Vector-field evaluations as `(init, first step, later steps)`."""
        n = self.tableau.num_stages
        return 0, n, n

    def init(self, terms, t0, t1, y0, args):
        del terms, t0, t1, y0, args
        return None

    def step(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: Y,
        args: Args,
        solver_state: None,
        made_jump,
    ):
        del solver_state, made_jump
        tab = self.tableau
        control = terms.contr(t0, t1)
        dt = t1 - t0
        ks = [terms.vf_prod(t0, y0, args, control)]
        for c_i, a_i in zip(tab.c, tab.a_lower):
            yi = _combine(y0, a_i, ks)
            ks.append(terms.vf_prod(t0 + float(c_i) * dt, yi, args, control))
        y1 = _combine(y0, tab.b_sol, ks)
        if all(b == 0 for b in tab.b_error):
            y_error = None
        else:
            y_error = _combine(None, tab.b_error, ks)
        k = jtu.tree_map(lambda *xs: jnp.stack(xs), *ks)
        dense_info = dict(y0=y0, y1=y1, k=k)
        return y1, y_error, dense_info, None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def _combine(y0, coeffs, ks):
    """`y0 + Σ coeffs[j] ks[j]`; zero coefficients (known statically) are skipped."""

    def leaf(y, *k_leaves):
        acc = y
        for c, k in zip(coeffs, k_leaves):
            if c == 0:
                continue
            term = k if c == 1 else k * jnp.asarray(c, dtype=k.dtype)
            acc = term if acc is None else acc + term
        return jnp.zeros_like(k_leaves[0]) if acc is None else acc

    if y0 is None:
        return jtu.tree_map(lambda *k: leaf(None, *k), *ks)
    return jtu.tree_map(leaf, y0, *ks)
