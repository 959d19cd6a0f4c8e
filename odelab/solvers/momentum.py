r"""Momentum multistep methods: Heavy Ball on Adams–Bashforth, and Generalized HB.

For $\frac{dy}{dt} = f(t, y)$ with steps $h_n = t_{n+1} - t_n$ and one evaluation
$f_n = f(t_n, y_n)$ per step, both methods keep an exponential moving average, the
"velocity" $v$, with damping $\beta \in (0, 1]$:

- **Heavy Ball** on Adams–Bashforth of order $k$ (`HeavyBall`, HB-PLMS in the
  paper): average the Adams–Bashforth slope,
  $$v_{n+1} = (1-\beta)\,v_n + \beta \sum_{i<k} a_i f_{n-i}, \qquad
  y_{n+1} = y_n + h_n v_{n+1};$$
- **Generalized Heavy Ball** of order $k$ (`GHVB`): average the slopes, then apply
  an Adams–Bashforth-like quadrature to the velocities,
  $$v_{n+1} = (1-\beta)\,v_n + \beta f_n, \qquad
  y_{n+1} = y_n + h_n \sum_{i<k} a_i v_{n+1-i}.$$

Both start from $v_0 = f_0$ (the velocity's first value is the slope itself), so
the first step is Euler's. $\beta = 1$ switches the momentum off: both are then the
Adams–Bashforth method of order $k$ (for $k = 1$, Euler). `HeavyBall` is first
order for $\beta < 1$ (the average lags the slope by $O(h(1-\beta)/\beta)$), whatever
$k$; `GHVB` of order $k$ is order $k$ for every $\beta$.

**Weights, on any grid.** Every quantity combined at step $n$ is a fixed linear
combination of past slopes, $g = \sum_j w_j f_j$; write its moments about $t_n$ in
units of $h_n$ as $\mu_p(g) = \sum_j w_j \big((t_j - t_n)/h_n\big)^p$. The weights
$a_i$ of the items $g_i$ (slopes for `HeavyBall`, velocities for `GHVB`) solve

$$\sum_{i<k} a_i\, \mu_p(g_i) = \frac{1}{h_n}\int_{t_n}^{t_{n+1}}
\Big(\frac{t - t_n}{h_n}\Big)^p dt = \frac{1}{p + 1}, \qquad p = 0, \dots, k-1,$$

i.e. the step integrates every polynomial slope of degree $< k$ exactly. For slopes
($\mu_p = r_i^p$, $r_i = (t_{n-i} - t_n)/h_n$) these are the variable-step
Adams–Bashforth weights. For velocities the moments follow the average exactly,
$\mu(v_{n+1}) = (1-\beta)\mu(v_n) + \beta\,e_0$, and are carried from step to step
(the shift from $t_n$ to $t_{n+1}$ is binomial, the change of unit a power of the
step ratio). The system is regular: a nonzero polynomial of degree $< k$ that
vanished on the $k - 1$ newest nodes would keep one sign on the older ones, where
the oldest velocity's weights are positive. On a uniform grid these weights tend, as
$(1-\beta)^n$, to the paper's closed forms (for $k = 2$: $a_0 = (2+\beta)/(2\beta)$,
$a_1 = -(2-\beta)/(2\beta)$), which are the same conditions with the moments of an
average that has run forever. The paper's constant weights keep the start's
$v_0 = f_0$ out of account, which costs a global $O(h^2)$ error however accurate the
start (measured in `tests/solvers/test_momentum.py`); with the exact moments the
order is $k$.

**Start.** `start="lower_order"` (the paper's and PLMS's warm-up): step $n$ uses
order $\min(k, n + 1)$, one evaluation each; the start's $O(h^2)$ local error then
caps the global order at 2. `start="rk4"`: the first $k - 1$ steps are classical RK4
steps (4 evaluations each; the slope history and the velocity are still recorded),
so that the start-up error does not lower the order.

**Diffusion sampling.** In the coordinates $\tilde x = x/\alpha$,
$\bar\sigma = \sigma/\alpha$ (`odelab.diffusion`'s `space="sigma"`), the
probability-flow ODE is $d\tilde x/d\bar\sigma = (\tilde x - D)/\bar\sigma =
\hat\varepsilon$, the paper's $\bar x$, $\bar\sigma$ and $\hat\varepsilon$: Euler is
DDIM, Adams–Bashforth of order 4 is PLMS, and these are the paper's samplers. The
paper writes its constant weights for equally spaced $\bar\sigma$ and applies them
on non-uniform $\bar\sigma$ grids too; odelab uses the exact variable-step weights
above. The paper's fractional names map as "GHVB $k - 1 + \beta$" =
`GHVB(k, beta)` and "PLMS$k$ with HB $\beta$" = `HeavyBall(k, beta)`.

**Reference:** S. Wizadwongsa, S. Suwajanakorn, "Diffusion Sampling with Momentum
for Mitigating Divergence Artifacts", ICLR 2024, arXiv:2307.11118 (and the
authors' code, sWizad/momentum-diffusion); B. T. Polyak, "Some methods of speeding up the
convergence of iteration methods", USSR Comput. Math. Math. Phys. 4 (1964).
"""

import math
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from equinox import AbstractClassVar, AbstractVar

from .rk4 import RK4


_STARTS = ("lower_order", "rk4")


def _shift_matrix(k: int) -> np.ndarray:
    """`S[p, q] = C(p, q) (-1)^(p-q)`: moments about $t_n$ to moments about
    $t_n + h$, both in units of $h$."""
    return np.array(
        [
            [math.comb(p, q) * (-1) ** (p - q) if q <= p else 0 for q in range(k)]
            for p in range(k)
        ],
        dtype=np.float64,
    )


def _weights(moments, m):
    """`a` with `Σ_i a_i moments[p, i] = 1/(p+1)` for `p < m`, and `a_i = 0` for
    `i >= m` (the warm-up's lower orders, `m` traced)."""
    k = moments.shape[0]
    idx = jnp.arange(k, dtype=jnp.int32)
    active = (idx[:, None] < m) & (idx[None, :] < m)
    # Inactive rows and columns become the identity, so that the placeholders of
    # missing history neither make the system singular nor reach a gradient.
    mat = jnp.where(active, moments, jnp.eye(k, dtype=moments.dtype))
    integrals = jnp.asarray(1.0 / np.arange(1, k + 1), moments.dtype)
    rhs = jnp.where(idx < m, integrals, jnp.zeros_like(integrals))
    return jnp.linalg.solve(mat, rhs)


def _combine(coeffs, trees):
    """`Σ coeffs[i] trees[i]`, each coefficient cast to the leaf's dtype."""
    return jtu.tree_map(
        lambda *xs: sum(c.astype(x.dtype) * x for c, x in zip(coeffs, xs)), *trees
    )


def _mix(beta, old, new):
    """`(1 - β) old + β new`."""
    return jtu.tree_map(lambda a, b: (1 - beta) * a + beta * b, old, new)


def _where(pred, a, b):
    return jtu.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


class AbstractMomentumMultistep(diffrax.AbstractSolver):
    """Shared stepping of `HeavyBall` and `GHVB` (module notes): a concrete method
    says where its velocity sits, before (`GHVB`) or after (`HeavyBall`) the
    Adams–Bashforth quadrature, and its order."""

    order_: AbstractVar[int]
    beta: AbstractVar[float]
    start: AbstractVar[str]
    average_first: AbstractClassVar[bool]

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def __check_init__(self):
        name = type(self).__name__
        if isinstance(self.order_, bool) or self.order_ not in (1, 2, 3, 4):
            raise ValueError(
                f"{name}'s `order` must be 1, 2, 3 or 4, got {self.order_!r}."
            )
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(
                f"{name}'s `beta` must be in (0, 1] (1: no momentum), got {self.beta!r}."
            )
        if self.start not in _STARTS:
            raise ValueError(
                f"{name}'s `start` must be 'lower_order' or 'rk4', got {self.start!r}."
            )

    def nfe_costs(self):
        """Vector-field evaluations as `(init, first step, later steps)`; `None` for an
        RK4 start over more than one step (its cost is not of that form)."""
        if self.start == "lower_order" or self.order_ == 1:
            return (0, 1, 1)
        return (0, 4, 1) if self.order_ == 2 else None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        del terms, args
        k = self.order_
        zeros = jtu.tree_map(jnp.zeros_like, y0)
        dtype = jnp.result_type(t0, t1, float)
        moments = jnp.zeros((k, k), dtype)
        velocity = None if self.average_first else zeros
        h_prev = jnp.asarray(t1 - t0, dtype)
        return (zeros,) * k, moments, velocity, h_prev, jnp.asarray(0, jnp.int32)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        k, beta = self.order_, self.beta
        items, moments, velocity, h_prev, count = solver_state
        h = jnp.asarray(t1 - t0, moments.dtype)
        first = count == 0
        powers = jnp.arange(k, dtype=moments.dtype)[:, None]
        # Moments about t_n, from units of the previous step to units of this one.
        ratio = jnp.where(first, 1.0, h_prev / h)
        moments = moments * ratio**powers
        e0 = jnp.zeros(k, moments.dtype).at[0].set(1.0)
        f = terms.vf(t0, y0, args)
        if self.average_first:
            # v_0 = f_0, so the first velocity is f_0 itself (no rounding).
            new = _where(first, f, _mix(beta, items[0], f))
            mu_new = jnp.where(first, e0, (1 - beta) * moments[:, 0] + beta * e0)
        else:
            new, mu_new = f, e0
        items = (new,) + items[:-1]
        moments = jnp.concatenate([mu_new[:, None], moments[:, :-1]], axis=1)
        a = _weights(moments, jnp.minimum(k, count + 1))
        slope = _combine(a, items)
        if not self.average_first:
            velocity = _where(first, slope, _mix(beta, velocity, slope))
            slope = velocity
        y1 = jtu.tree_map(jnp.add, y0, terms.prod(slope, terms.contr(t0, t1)))
        if self.start == "rk4" and k > 1:
            y1 = jax.lax.cond(
                count < k - 1,
                lambda: RK4().step(terms, t0, t1, y0, args, None, False)[0],
                lambda: y1,
            )
        moments = jnp.asarray(_shift_matrix(k), moments.dtype) @ moments
        state = (items, moments, velocity, h, count + 1)
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, state, diffrax.RESULTS.successful


class HeavyBall(AbstractMomentumMultistep):
    r"""Heavy Ball momentum on the Adams–Bashforth method of order `order` (PLMS).

    $v_{n+1} = (1-\beta) v_n + \beta \sum_{i<k} a_i f_{n-i}$,
    $y_{n+1} = y_n + h_n v_{n+1}$, $v_0 = f_0$, with the variable-step
    Adams–Bashforth weights $a_i$ (module notes). `HeavyBall(1, beta)` is HB on Euler
    (on DDIM, in diffusion's $\bar\sigma$ coordinates); `beta=1` is Adams–Bashforth
    of order `order` (PLMS for 4). First order for `beta < 1`: the momentum trades
    accuracy for a larger stability region: on $y' = \lambda y$ the real stability
    interval of PLMS ($k = 4$), $h\lambda > -0.3$, grows to $h\lambda > -0.9$ with
    $\beta = 1/2$ (the tests check the spectral radius of the step map).

    **Arguments:**

    - `order`: the Adams–Bashforth order $k$, 1–4.
    - `beta`: the damping $\beta \in (0, 1]$; smaller is more stable and less
      accurate.
    - `start`: `"lower_order"` (the paper's warm-up) or `"rk4"` (module notes).

    **Raises:** `ValueError` for `order` outside 1–4, `beta` outside (0, 1] or an
    unknown `start`.

    **Example:**

    ```python
    sol = diffrax.diffeqsolve(term, HeavyBall(4, beta=0.8), 0.0, 1.0, 0.05, y0)
    ```

    **Reference:** S. Wizadwongsa, S. Suwajanakorn, "Diffusion Sampling with Momentum
    for Mitigating Divergence Artifacts", ICLR 2024, arXiv:2307.11118.
    """

    order_: int = eqx.field(static=True)
    beta: float = eqx.field(static=True)
    start: str = eqx.field(static=True)
    average_first: ClassVar[bool] = False

    def __init__(
        self, order: int = 4, beta: float = 0.8, *, start: str = "lower_order"
    ):
        self.order_ = order
        self.beta = beta
        self.start = start

    def order(self, terms):
        del terms
        return self.order_ if self.beta == 1 else 1


class GHVB(AbstractMomentumMultistep):
    r"""Generalized Heavy Ball of order `order`: momentum that keeps the order.

    $v_{n+1} = (1-\beta) v_n + \beta f_n$, $y_{n+1} = y_n + h_n \sum_{i<k} a_i
    v_{n+1-i}$, $v_0 = f_0$, with weights that integrate polynomial slopes of degree
    $< k$ exactly through the average (module notes). `order=1` is Heavy Ball on
    Euler; `beta=1` is Adams–Bashforth of order `order`. Order $k$ for every `beta`
    (with `start="rk4"`; the paper's lower-order warm-up caps it at 2); smaller
    `beta` enlarges the stability region, as for `HeavyBall`.

    **Arguments:**

    - `order`: the order $k$, 1–4.
    - `beta`: the damping $\beta \in (0, 1]$.
    - `start`: `"lower_order"` (the paper's warm-up) or `"rk4"` (module notes).

    **Raises:** `ValueError` for `order` outside 1–4, `beta` outside (0, 1] or an
    unknown `start`.

    **Example:** the paper's "GHVB 2.8" samples as

    ```python
    x0 = odelab.diffusion.sample(model, noise, schedule, sampler="momentum",
                                 sampler_options=dict(order=3, beta=0.8))
    ```

    **Reference:** S. Wizadwongsa, S. Suwajanakorn, "Diffusion Sampling with Momentum
    for Mitigating Divergence Artifacts", ICLR 2024, arXiv:2307.11118.
    """

    order_: int = eqx.field(static=True)
    beta: float = eqx.field(static=True)
    start: str = eqx.field(static=True)
    average_first: ClassVar[bool] = True

    def __init__(
        self, order: int = 2, beta: float = 0.8, *, start: str = "lower_order"
    ):
        self.order_ = order
        self.beta = beta
        self.start = start

    def order(self, terms):
        del terms
        return self.order_
