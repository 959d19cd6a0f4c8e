r"""Stochastic exponential integrators and the stochastic steps of diffusion samplers.

All three solvers act on `diffrax.MultiTerm(drift, diffrax.ControlTerm(g, brownian))`
with additive (state-independent, diagonal) noise $g(t)$, over fixed steps.

**Where the Gaussian comes from.** A step's noise is the Brownian increment over the
step itself, normalised: $z = \Delta W / \sqrt{|t_1 - t_0|} \sim \mathcal N(0, I)$,
then scaled by the standard deviation the method needs. Steps are disjoint, so their
$z$ are independent; the $\sqrt{\cdot}$ scaling makes each step exact *in law* where
the method's variance is exact (the stochastic integral $\int e^{L(t_1 - r)} g\,dW$
and $\Delta W$ are two correlated Gaussians; only the variance of the first matters
for the law). The Brownian increments must be exact on every step: use
`diffrax.UnsafeBrownianPath` (exact on any interval, keyed by the interval; it is
what `odelab.diffusion.sample_sde` uses) or a `VirtualBrownianTree` with `tol` well
below the smallest step.

- `StochasticExponentialAdams`: $dy = (Ly + N(t, y))\,dt + g(t)\,dW$. The linear part
  and the noise it damps are integrated exactly, $N$ by exponential Adams–Bashforth:

  $$y_1 = e^{hL}y_0 + h\varphi_1(hL)\,N_0 + w\,\frac{N_0 - N_{-1}}{r}
    + \sqrt{V}\,z, \qquad V = \int e^{2L(t_1 - r)}g(r)^2\,|dr|,$$

  with $r = h_{-1}/h$ and $w = 0$ (order 1), $\tfrac12 h\varphi_1(hL)$ ("midpoint")
  or $h\varphi_2(hL)$ ("phi"). $V$ is exact for $g$ log-linear over the step,
  $g(r) = g_0 (g_1/g_0)^{(r - t_0)/h}$: $V = |h|\,g_0^2 e^{2hL}\varphi_1(2\log(g_1/g_0)
  - 2hL)$. Order 1 is the stochastic exponential Euler scheme (Lord & Tambue); on the
  reverse SDE of a diffusion model in data coordinates (`odelab.diffusion.sde`) order 1
  is SDE-DPM-Solver-1 and order 2 SDE-DPM-Solver++(2M) (Lu et al. 2022;
  diffusers' `algorithm_type="sde-dpmsolver++"`).
- `ExponentialEulerAncestral`: ancestral sampling (DDIM with $\eta$, k-diffusion's
  Euler ancestral) as a solver of the probability-flow ODE plus forward noise.
- `EDMStochasticHeun`: Karras et al.'s stochastic sampler (Algorithm 2, "churn").

The last two are written for the time conventions their papers use (the state's noise
level is $e^t$ in data coordinates, resp. $t$ itself in Karras' $\sigma$-time); their
docstrings say how.

**References:** G. J. Lord, A. Tambue, "Stochastic exponential integrators for the
finite element discretization of SPDEs for multiplicative and additive noise", IMA J.
Numer. Anal. 33 (2013) 515–543; C. Lu et al., "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", arXiv:2211.01095; J. Song, C. Meng,
S. Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, arXiv:2010.02502, eq. (12);
T. Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
NeurIPS 2022, arXiv:2206.00364, Algorithm 2.
"""

import math
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax import lax

from ..phi import phis
from ..terms import SemilinearTerm


def _split(solver, terms, drift_type):
    """`(drift, diffusion, direction)` from `MultiTerm(drift, ControlTerm)`, as given
    or as diffeqsolve wraps it (each term in a `WrapTerm` carrying the direction)."""
    parts = terms.terms if isinstance(terms, diffrax.MultiTerm) else None
    if parts is None or len(parts) != 2:
        raise TypeError(
            f"`{type(solver).__name__}` needs `diffrax.MultiTerm(drift, "
            f"diffrax.ControlTerm(g, brownian_path))`, got {type(terms).__name__}."
        )
    direction = 1
    unwrapped = []
    for term in parts:
        if isinstance(term, diffrax._term.WrapTerm):
            direction = term.direction
            term = term.term
        unwrapped.append(term)
    drift, diffusion = unwrapped
    if not isinstance(drift, drift_type):
        raise TypeError(
            f"`{type(solver).__name__}` needs a drift term of type "
            f"{drift_type.__name__}, got {type(drift).__name__}."
        )
    if not isinstance(diffusion, diffrax.ControlTerm) or not isinstance(
        diffusion.control, diffrax.AbstractBrownianPath
    ):
        raise TypeError(
            f"`{type(solver).__name__}` needs `diffrax.ControlTerm(g, path)` with a "
            "diffrax Brownian path as its second term."
        )
    return drift, diffusion, direction


def _noise_scale(diffusion, t, y, args):
    """$g(t)$ as an array broadcastable to `y` (the diagonal of a diagonal operator)."""
    g = diffusion.vf(t, y, args)
    if isinstance(g, lx.DiagonalLinearOperator):
        g = lx.diagonal(g)
    elif isinstance(g, lx.AbstractLinearOperator):
        raise TypeError(
            "the diffusion must be diagonal (an array shaped like the state, or a "
            f"lineax DiagonalLinearOperator), got {type(g).__name__}."
        )
    return jnp.asarray(g, y.dtype)


def _standard_normal(diffusion, t0, t1, y):
    r"""$z = \Delta W/\sqrt{|t_1 - t_0|}$ over the step (module notes). The noise is
    exogenous: no gradient flows to the step's times through it."""
    lo = lax.stop_gradient(jnp.minimum(t0, t1))
    hi = lax.stop_gradient(jnp.maximum(t0, t1))
    dw = diffusion.control.evaluate(lo, hi)
    return lax.stop_gradient(dw / jnp.sqrt(hi - lo).astype(dw.dtype)).astype(y.dtype)


def _damped_variance(g0, g1, h, rate):
    r"""$\int e^{2\,rate\,(t_1 - r)} g(r)^2 |dr|$ over a step of signed length $h$ from
    $t_0$ to $t_1$, for $g$ log-linear between $g_0 = g(t_0)$ and $g_1 = g(t_1)$
    (elementwise; $g_0 = 0$ means no noise)."""
    noisy = g0 != 0
    ratio = jnp.where(noisy, g1 / jnp.where(noisy, g0, 1), 1)
    a = 2 * jnp.log(jnp.abs(ratio)) - 2 * h * rate
    e, p1 = phis(2 * h * rate, 1)[0], phis(a, 1)[1]
    # e^{2hL} phi_1(a) = (ratio^2 - e^{2hL})/a: the difference form where a is large,
    # in which e^{2hL} can underflow while phi_1(a) overflows (one long step).
    large = jnp.abs(a) > 1
    weight = jnp.where(large, (ratio**2 - e) / jnp.where(large, a, 1), e * p1)
    return jnp.where(noisy, jnp.abs(h) * g0**2 * weight, 0)


def _check_state(term, y):
    if not eqx.is_array(y):
        raise ValueError(
            f"the stochastic exponential solvers take a single-array state, got a "
            f"{type(y).__name__}; stack the state."
        )
    term.check_state(y)
    _linear(term, y)


def _linear(term, y):
    if term.kind == "dense":
        raise TypeError(
            "the stochastic exponential solvers need a scalar or diagonal linear part "
            "(the noise variance is computed elementwise), got a dense one."
        )
    return jnp.asarray(term.linear, y.dtype)


class StochasticExponentialAdams(diffrax.AbstractItoSolver):
    r"""Stochastic exponential Adams–Bashforth of order 1 or 2 for
    $dy = (Ly + N(t, y))\,dt + g(t)\,dW$, additive diagonal noise:

    $$y_{n+1} = e^{hL}y_n + h\varphi_1(hL)\,N_n + w\,\frac{N_n - N_{n-1}}{r_n}
      + \sqrt{V_n}\,z_n,$$

    $r_n = h_{n-1}/h_n$, $w = 0$ at order 1 and on the first step, $w =
    \tfrac12 h\varphi_1(hL)$ (`second_order="midpoint"`) or $h\varphi_2(hL)$
    (`"phi"`), $V_n$ the exact variance of the damped noise for $g$ log-linear over
    the step and $z_n$ the step's normalised Brownian increment (module notes). One
    evaluation of $N$ per step; exact for $N$ constant and $g$ log-linear (e.g. an
    Ornstein–Uhlenbeck process, whatever the step). Weak order 1; strong order 1 for
    additive noise. Scalar or diagonal $L$.

    **Terms:** `diffrax.MultiTerm(SemilinearTerm(L, N), diffrax.ControlTerm(g,
    brownian))` with `g(t, y, args)` independent of `y`, an array broadcastable to the
    state (or a `lineax.DiagonalLinearOperator`).

    **Arguments:**

    - `order`: 1 or 2.
    - `second_order`: `"midpoint"` (default; DPM-Solver++'s and diffusers' default
      form) or `"phi"` (the exact weight of a linear $N$, diffusers' `"heun"`).

    **Diffusion sampling:** with $L = 1 + \eta^2$, $N = -(1 + \eta^2)D$ and $g =
    \eta\sqrt2 e^{t}$ in the data coordinates $y = x/\alpha$, $t = -\lambda$
    (`odelab.diffusion.sde`), order 2 is SDE-DPM-Solver++(2M) (Lu et al.,
    arXiv:2211.01095; $\eta = 1$):

    $$x_{n+1} = \frac{\sigma_{n+1}}{\sigma_n}e^{-h}x_n + \alpha_{n+1}(1 - e^{-2h})
      \big(D_n + \tfrac{1}{2r_n}(D_n - D_{n-1})\big)
      + \sigma_{n+1}\sqrt{1 - e^{-2h}}\,z_n,$$

    $h = \lambda_{n+1} - \lambda_n$, and order 1 is SDE-DPM-Solver-1 (DDIM with
    $\eta = 1$).

    **Example:**

    ```python
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(), key=key)
    terms = diffrax.MultiTerm(SemilinearTerm(-2.0, lambda t, y, a: jnp.sin(y)),
                              diffrax.ControlTerm(lambda t, y, a: 0.5, bm))
    sol = diffrax.diffeqsolve(terms, StochasticExponentialAdams(2), 0.0, 1.0, 0.01, y0)
    ```

    **References:** G. J. Lord, A. Tambue, IMA J. Numer. Anal. 33 (2013) (stochastic
    exponential Euler); C. Lu et al., arXiv:2211.01095 (SDE-DPM-Solver++(2M)).
    """

    order_: int = eqx.field(static=True)
    second_order: str = eqx.field(static=True)

    term_structure: ClassVar = diffrax.MultiTerm[
        tuple[diffrax.AbstractTerm, diffrax.AbstractTerm]
    ]
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def __init__(self, order: int = 2, *, second_order: str = "midpoint"):
        self.order_ = order
        self.second_order = second_order

    def __check_init__(self):
        if self.order_ not in (1, 2):
            raise ValueError(
                f"StochasticExponentialAdams supports `order` 1 or 2, got {self.order_}."
            )
        if self.second_order not in ("midpoint", "phi"):
            raise ValueError(
                f"`second_order` must be 'midpoint' or 'phi', got {self.second_order!r}."
            )

    def order(self, terms):
        return self.order_

    def strong_order(self, terms):
        return 1.0

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        drift, _, direction = _split(self, terms, SemilinearTerm)
        _check_state(drift, y0)
        h = jnp.asarray(direction * (t1 - t0), y0.dtype)
        return jnp.zeros_like(y0), jnp.ones_like(h), jnp.asarray(0, jnp.int32)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        drift, diffusion, direction = _split(self, terms, SemilinearTerm)
        n_prev, h_prev, count = solver_state
        t, h = direction * t0, jnp.asarray(direction * (t1 - t0), y0.dtype)
        rate = _linear(drift, y0)
        e, p1, p2 = phis(h * rate, 2)
        n0 = drift.nonlinear(t, y0, args)
        y1 = e * y0 + h * p1 * n0
        if self.order_ == 2:
            w = 0.5 * h * p1 if self.second_order == "midpoint" else h * p2
            w = jnp.where(count > 0, w, jnp.zeros_like(w))
            y1 = y1 + w * (n0 - n_prev) * (h / h_prev)
        g0 = _noise_scale(diffusion, t, y0, args)
        g1 = _noise_scale(diffusion, t + h, y0, args)
        variance = _damped_variance(g0, g1, h, rate)
        y1 = y1 + jnp.sqrt(variance) * _standard_normal(diffusion, t, t + h, y0)
        dense_info = dict(y0=y0, y1=y1)
        state = (n0, h, count + 1)
        return y1, None, dense_info, state, diffrax.RESULTS.successful


class ExponentialEulerAncestral(diffrax.AbstractItoSolver):
    r"""Ancestral sampling as a solver: an exponential Euler step of the
    probability-flow ODE to a lower noise level, then fresh forward noise back up to
    the step's end.

    In the data coordinates of `odelab.diffusion` (state $y = x/\alpha$, time $t =
    -\lambda = \log\bar\sigma$, so the state's noise level is $\bar\sigma = e^t$ and
    the ODE is `SemilinearTerm(1, -D)`), a step from $t_0$ to $t_1$ with
    $c^2 = \eta^2(1 - e^{2(t_1 - t_0)}) = \eta^2(1 - \bar\sigma_1^2/\bar\sigma_0^2)$:

    $$t_\downarrow = t_1 + \tfrac12\log(1 - c^2), \qquad
      y_\downarrow = e^{t_\downarrow - t_0}y_0 + (1 - e^{t_\downarrow - t_0})\,D_0,
      \qquad y_1 = y_\downarrow + \sqrt{V}\,z,$$

    $V = \int_{t_\downarrow}^{t_1} g^2\,dr$ the forward noise's variance from
    $t_\downarrow$ to $t_1$ ($g$ log-linear; for the forward process $g = \sqrt2 e^t$,
    $V = \bar\sigma_1^2 c^2$). In $x$ this is DDIM with noise (Song, Meng & Ermon,
    eq. 12): $x_1 = \alpha_1 D_0 + \sigma_1\sqrt{1 - c^2}\,\hat\varepsilon + \sigma_1
    c\,z$, $\hat\varepsilon = (x_0 - \alpha_0 D_0)/\sigma_0$; and k-diffusion's Euler
    ancestral step ($\sigma_{up} = \bar\sigma_1 c$, $\sigma_{down} =
    \bar\sigma_1\sqrt{1 - c^2}$; Euler in $\bar\sigma$ is exponential Euler here).
    $\eta = 0$ is DDIM, $\eta = 1$ the DDPM posterior. Weak order 1.

    **Terms:** `diffrax.MultiTerm(SemilinearTerm(1, N), diffrax.ControlTerm(g,
    brownian))` in those coordinates ($N = -D$; a scalar $L = 1$ is assumed by the
    choice of $t_\downarrow$), `g` the forward process' diffusion $\sqrt2 e^t$
    ($d\bar\sigma^2 = g^2 dt$).

    **Arguments:**

    - `eta`: $\eta \in [0, 1]$ (may be traced).

    **Raises:** `ValueError` for `eta` outside $[0, 1]$ (when concrete).

    **Reference:** J. Song, C. Meng, S. Ermon, arXiv:2010.02502, eqs. (12), (16).
    """

    eta: float | jax.Array = 1.0

    term_structure: ClassVar = diffrax.MultiTerm[
        tuple[diffrax.AbstractTerm, diffrax.AbstractTerm]
    ]
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def __check_init__(self):
        if not isinstance(self.eta, jax.core.Tracer) and not 0 <= float(self.eta) <= 1:
            raise ValueError(
                f"`eta` must be in [0, 1] (the fresh noise cannot exceed the noise "
                f"level at the step's end), got {float(self.eta)}."
            )

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        drift, _, _ = _split(self, terms, SemilinearTerm)
        _check_state(drift, y0)
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        drift, diffusion, direction = _split(self, terms, SemilinearTerm)
        rate = _linear(drift, y0)
        t, h = direction * t0, jnp.asarray(direction * (t1 - t0), y0.dtype)
        eta = jnp.asarray(self.eta, y0.dtype)
        # log(1 - c^2) = log(1 - eta^2 + eta^2 e^{2h}), exact at eta = 1 however long
        # the step (where 1 - c^2 = e^{2h} would underflow).
        kept = jnp.logaddexp(jnp.log1p(-(eta**2)), 2 * jnp.log(eta) + 2 * h)
        h_down = h + 0.5 * kept
        e, p1 = phis(h_down * rate, 1)
        y_down = e * y0 + h_down * p1 * drift.nonlinear(t, y0, args)
        g_down = _noise_scale(diffusion, t + h_down, y0, args)
        g1 = _noise_scale(diffusion, t + h, y0, args)
        variance = _damped_variance(g_down, g1, h - h_down, jnp.zeros_like(rate))
        z = _standard_normal(diffusion, t, t + h, y0)
        y1 = y_down + jnp.sqrt(variance) * z
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful


class EDMStochasticHeun(diffrax.AbstractItoSolver):
    r"""Karras et al.'s stochastic sampler (EDM, Algorithm 2): "churn" the noise level
    up, then a Heun step of the probability-flow ODE.

    In Karras' $\sigma$-time (time $t = \bar\sigma$, the state's noise level; state
    $y = x/\alpha$; ODE $dy/dt = (y - D(y, t))/t$), a step from $t_i$ to $t_{i+1}$:

    $$\gamma_i = \begin{cases}\min(S_{churn}/N, \sqrt2 - 1) & t_i \in [S_{tmin},
      S_{tmax}]\\ 0 & \text{otherwise}\end{cases}, \qquad \hat t_i = (1 + \gamma_i)
      t_i, \qquad \hat y_i = y_i + S_{noise}\sqrt{\hat t_i^2 - t_i^2}\;z_i,$$

    then Euler $y_{i+1} = \hat y_i + (t_{i+1} - \hat t_i) f(\hat t_i, \hat y_i)$ and,
    unless $t_{i+1} = 0$, the Heun correction $y_{i+1} = \hat y_i + \tfrac12(t_{i+1} -
    \hat t_i)(f(\hat t_i, \hat y_i) + f(t_{i+1}, y_{i+1}))$. The added variance
    $\hat t^2 - t^2$ is $\int_t^{\hat t} g^2$ for the forward process $g = \sqrt{2t}$
    (EDM eq. 1 with $\sigma(t) = t$), computed from `g` by the trapezoid rule on $g^2$
    (exact there). With $S_{churn} = 0$ it is EDM's deterministic Heun sampler
    (Algorithm 1). Two evaluations per step (one on a last step to $t = 0$).

    **Terms:** `diffrax.MultiTerm(diffrax.ODETerm(f), diffrax.ControlTerm(g,
    brownian))` with $f$ the probability-flow field in $\sigma$-time and `g`
    $\sqrt{2t}$.

    **Arguments:**

    - `s_churn`: $S_{churn} \ge 0$ (default 0: deterministic).
    - `s_tmin`, `s_tmax`: the noise levels between which to churn (default $[0,
      \infty)$).
    - `s_noise`: $S_{noise} > 0$, the noise inflation (default 1).
    - `num_steps`: $N$, the number of steps of the whole solve (the $S_{churn}/N$
      normalisation).

    EDM's choices (Table 5): e.g. ImageNet-64, $S_{churn} = 80$, $S_{tmin} = 0.05$,
    $S_{tmax} = 50$, $S_{noise} = 1.003$.

    **Raises:** `ValueError` for `s_churn < 0`, `s_noise <= 0`, `s_tmin > s_tmax` or
    `num_steps < 1` (when concrete).

    **Reference:** T. Karras et al., arXiv:2206.00364, Algorithm 2 and §4.
    """

    num_steps: int = eqx.field(static=True)
    s_churn: float | jax.Array = 0.0
    s_tmin: float | jax.Array = 0.0
    s_tmax: float | jax.Array = math.inf
    s_noise: float | jax.Array = 1.0

    term_structure: ClassVar = diffrax.MultiTerm[
        tuple[diffrax.AbstractTerm, diffrax.AbstractTerm]
    ]
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def __check_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"`num_steps` must be at least 1, got {self.num_steps}.")
        values = (self.s_churn, self.s_tmin, self.s_tmax, self.s_noise)
        if any(isinstance(v, jax.core.Tracer) for v in values):
            return
        churn, tmin, tmax, noise = (float(v) for v in values)
        if not churn >= 0:
            raise ValueError(f"`s_churn` must be >= 0, got {churn}.")
        if not noise > 0:
            raise ValueError(f"`s_noise` must be positive, got {noise}.")
        if not tmin <= tmax:
            raise ValueError(
                f"`s_tmin` must not exceed `s_tmax`, got s_tmin={tmin}, s_tmax={tmax}."
            )

    def order(self, terms):
        return 2

    def strong_order(self, terms):
        return 0.5

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        _split(self, terms, diffrax.AbstractTerm)
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        drift, diffusion, direction = _split(self, terms, diffrax.AbstractTerm)
        t0, t1 = direction * t0, direction * t1
        dtype = y0.dtype
        churn = jnp.minimum(
            jnp.asarray(self.s_churn, dtype) / self.num_steps, math.sqrt(2) - 1
        )
        inside = (t0 >= jnp.asarray(self.s_tmin, dtype)) & (
            t0 <= jnp.asarray(self.s_tmax, dtype)
        )
        t_hat = t0 * (1 + jnp.where(inside, churn, 0))
        g0 = _noise_scale(diffusion, t0, y0, args)
        g_hat = _noise_scale(diffusion, t_hat, y0, args)
        variance = 0.5 * (t_hat - t0) * (g0**2 + g_hat**2)
        z = _standard_normal(diffusion, t0, t1, y0)
        y_hat = y0 + jnp.asarray(self.s_noise, dtype) * jnp.sqrt(variance) * z
        dt = t1 - t_hat
        d = drift.vf(t_hat, y_hat, args)
        y_euler = y_hat + dt * d

        def heun():
            return y_hat + 0.5 * dt * (d + drift.vf(t1, y_euler, args))

        y1 = lax.cond(t1 == 0, lambda: y_euler, heun)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful
