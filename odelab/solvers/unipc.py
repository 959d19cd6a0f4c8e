r"""UniPC: a unified predictor–corrector exponential multistep method.

For $\frac{dy}{dt} = L y + N(t, y)$ with a scalar $L$ ($z = hL$), step $n$ from $t_n$
to $t_n + h$ first *corrects* the state it starts from, then *predicts* the next one,
at one evaluation $N_n = N(t_n, y_n)$ per step. With $\varphi_k = \varphi_k(z)$, step
ratios $r_k = (t_{n-k} - t_n)/h$ and divided differences $D_k = (N_{n-k} - N_n)/r_k$:

- predictor UniP-$p$: $y_{n+1} = e^{z} y^c_n + h\varphi_1 N_n + B(h)\sum_{k<p}
  \rho_k D_k$, with $\rho$ solving $\sum_k \rho_k r_k^{i-1} = b_i$ ($i < p$),
  $b_i = i!\, h\varphi_{i+1}/B(h)$; for $p = 2$ the simplified $\rho_1 = \tfrac12$;
- corrector UniC-$p$ (order $p + 1$, no extra evaluation): redo the previous step
  from $y^c_{n-1}$ with $N_n$ at its end as an extra node ($r = 1$):
  $y^c_n = e^{z'} y^c_{n-1} + h'\varphi_1' N_{n-1} + B(h')(\sum_{k<p} \rho^c_k
  D'_k + \rho^c_p (N_n - N_{n-1}))$ with the full $p \times p$ system (for
  $p = 1$, $\rho^c = \tfrac12$).

$B(h) = h$ ("bh1") or $h\varphi_1(z)$ ("bh2"). The state diffrax carries is the
predicted $y_n$ (the model sees it); the corrected $y^c_n$ is what the next step
starts from, as in the paper's Algorithm. Step $n$ uses order $\min(p, n + 1)$ (and at
most `steps_to_end - n` when given).

With $L = 1$ in the coordinates of `odelab.diffusion` ($\tilde x = x/\alpha$,
$s = -\lambda$, $N = -D$) this is UniPC with data prediction (diffusers'
`UniPCMultistepScheduler`, `predict_x0=True`), step for step.

**Reference:** W. Zhao, L. Bai, Y. Rao, J. Zhou, J. Lu, "UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models", NeurIPS 2023,
arXiv:2302.04867 (Algorithms 1–3, eq. (5)–(9)).
"""

import math
from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

from ..phi import phis
from .exponential import _check, _lin, _unwrap


def _b(h, z, variant, p):
    """$B(h)$ and $b_i = i!\\,h\\varphi_{i+1}(z)/B(h)$, $i = 1..p$."""
    ph = phis(z, p + 1)
    big_b = h if variant == "bh1" else h * ph[1]
    return big_b, [math.factorial(i) * h * ph[i + 1] / big_b for i in range(1, p + 1)]


def _solve(rks, b):
    """ρ with Σ_k ρ_k rks_k^(i-1) = b_i (a small Vandermonde system)."""
    m = len(rks)
    mat = jnp.stack([jnp.stack([r**i for r in rks]) for i in range(m)])
    return list(jnp.linalg.solve(mat, jnp.stack(b[:m])))


class UniPC(diffrax.AbstractSolver):
    """UniPC predictor–corrector of order 1, 2 or 3 (module notes)."""

    order_: int = eqx.field(static=True)
    variant: str = eqx.field(static=True)
    corrector: bool = eqx.field(static=True)
    steps_to_end: int | None = eqx.field(static=True)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def __init__(
        self,
        order: int = 2,
        *,
        variant: str = "bh2",
        corrector: bool = True,
        steps_to_end: int | None = None,
    ):
        self.order_ = order
        self.variant = variant
        self.corrector = corrector
        self.steps_to_end = steps_to_end

    def __check_init__(self):
        if self.order_ not in (1, 2, 3):
            raise ValueError(f"UniPC supports order 1, 2 or 3, got {self.order_}.")
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f"`variant` must be 'bh1' or 'bh2', got {self.variant!r}.")

    def order(self, terms):
        return self.order_ + 1 if self.corrector else self.order_

    def nfe_costs(self):
        return (0, 1, 1)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        _check(self, terms, y0)
        term, _ = _unwrap(terms)
        if term.kind != "scalar":
            raise ValueError(
                "UniPC needs a scalar linear part L (its coefficients solve a small "
                f"system per step); got a {term.kind} one. Use ExponentialAdams."
            )
        zeros = jtu.tree_map(jnp.zeros_like, y0)
        one = jnp.ones_like(jnp.asarray(t1 - t0, jnp.result_type(float)))
        history = (zeros, zeros, zeros, one, one, one)
        return y0, history, jnp.asarray(1, jnp.int32), jnp.asarray(0, jnp.int32)

    def _order_at(self, count):
        k = jnp.minimum(jnp.asarray(self.order_, jnp.int32), count + 1)
        if self.steps_to_end is not None:
            k = jnp.minimum(k, jnp.maximum(self.steps_to_end - count, 1))
        return k

    def _base(self, term, y, n, h):
        z = jnp.asarray(h, term.linear.dtype) * term.linear
        e, p1 = phis(z, 1)
        return z, _lin((e, y), (h * p1, n))

    def _predict(self, term, y, n0, past, hs, h, p, count):
        n1, n2 = past[0], past[1]
        z, base = self._base(term, y, n0, h)
        if self.order_ == 1:
            return base
        big_b, b = _b(h, z, self.variant, 2)
        # Before the history exists, the nodes are placeholders (-1, -2) that keep
        # the unused systems regular (no NaN reaches a gradient through `where`).
        r1 = jnp.where(count >= 1, -hs[0] / h, -1.0)
        d1 = _lin((1.0 / r1, n1), (-1.0 / r1, n0))
        rho2 = [0.5]
        out2 = _lin((1.0, base), (big_b * rho2[0], d1))
        if self.order_ == 2:
            return _select(p, {1: base, 2: out2})
        r2 = jnp.where(count >= 2, -(hs[0] + hs[1]) / h, -2.0)
        d2 = _lin((1.0 / r2, n2), (-1.0 / r2, n0))
        rho3 = _solve([r1, r2], b)
        out3 = _lin((1.0, base), (big_b * rho3[0], d1), (big_b * rho3[1], d2))
        return _select(p, {1: base, 2: out2, 3: out3})

    def _correct(self, term, y_prev, n_new, past, hs, p, count):
        # Redo the last step (size hs[0], from y_prev with N = past[0]) with the new
        # evaluation n_new at its end.
        h = hs[0]
        m0 = past[0]
        z, base = self._base(term, y_prev, m0, h)
        big_b, b = _b(h, z, self.variant, self.order_)
        d_new = _lin((1.0, n_new), (-1.0, m0))
        outs = {1: _lin((1.0, base), (0.5 * big_b, d_new))}
        if self.order_ >= 2:
            r1 = jnp.where(count >= 2, -hs[1] / h, -1.0)
            d1 = _lin((1.0 / r1, past[1]), (-1.0 / r1, m0))
            rho = _solve([r1, jnp.ones_like(r1)], b)
            outs[2] = _lin((1.0, base), (big_b * rho[0], d1), (big_b * rho[1], d_new))
        if self.order_ >= 3:
            r2 = jnp.where(count >= 3, -(hs[1] + hs[2]) / h, -2.0)
            d2 = _lin((1.0 / r2, past[2]), (-1.0 / r2, m0))
            rho = _solve([r1, r2, jnp.ones_like(r1)], b)
            outs[3] = _lin(
                (1.0, base),
                (big_b * rho[0], d1),
                (big_b * rho[1], d2),
                (big_b * rho[2], d_new),
            )
        return _select(p, outs)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        term, direction = _unwrap(terms)
        h = jnp.asarray(direction * (t1 - t0), jnp.result_type(float))
        y_prev, (n1, n2, n3, h1, h2, h3), prev_order, count = solver_state
        n0 = term.nonlinear(direction * t0, y0, args)
        if self.corrector:
            corrected = self._correct(
                term, y_prev, n0, (n1, n2, n3), (h1, h2, h3), prev_order, count
            )
            yc = _select(jnp.minimum(count, 1), {0: y0, 1: corrected})
        else:
            yc = y0
        p = self._order_at(count)
        y1 = self._predict(term, yc, n0, (n1, n2), (h1, h2), h, p, count)
        state = (yc, (n0, n1, n2, h, h1, h2), p, count + 1)
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, state, diffrax.RESULTS.successful


def _select(k, options: dict):
    """The pytree `options[k]` for a traced integer `k` (all options computed)."""
    keys = sorted(options)
    out = options[keys[0]]
    for key in keys[1:]:
        out = jtu.tree_map(
            lambda a, b, key=key: jnp.where(k >= key, b, a), out, options[key]
        )
    return out
