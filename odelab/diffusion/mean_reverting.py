r"""Mean-reverting diffusion (IR-SDE) and its fast sampler MRS, as ordinary odelab solves.

**The forward SDE** (Luo et al. 2023): $dx = \theta_t(\mu - x)\,dt + \sigma_t\,dW$
with $\sigma_t^2/\theta_t = 2\lambda^2$ fixed. Its marginal is

$$x_t \mid x_0 \sim \mathcal N\big(\mu + (x_0 - \mu)e^{-\bar\theta_t},\;
  \lambda^2(1 - e^{-2\bar\theta_t})\big), \qquad \bar\theta_t = \int_0^t \theta_s\,ds,$$

so $x_T \approx \mathcal N(\mu, \lambda^2)$: noise around the degraded image $\mu$.

**The centred variable.** With $y = x - \mu$ the marginal reads $y_t = \alpha_t y_0 +
\sigma_t\varepsilon$, $\alpha_t = e^{-\bar\theta_t}$, $\sigma_t = \lambda\sqrt{1 -
\alpha_t^2}$, and the SDE is $dy = -\theta_t y\,dt + \sigma_t dW$: a diffusion of the
`schedules` kind (drift $f = d\log\alpha/dt = -\theta_t$, $g^2 = -2\sigma^2\dot\lambda
= 2\lambda^2\theta_t$, here $\lambda(t)$ the half log-SNR $\log\alpha_t - \log\sigma_t$).
`MeanReverting` is that schedule, so every odelab sampler applies to $y$ once the model's
prediction is turned into the denoiser $D(y, t) = E[x_0 \mid x_t] - \mu$
(`mean_reverting_denoiser`).

**MRS is DPM-Solver(++) in $y$.** Li et al. (2025) solve the MR PF-ODE and reverse SDE
semi-analytically in the half log-SNR (their $\lambda_t = \log(\alpha_t/\sigma_t)$): an
exact linear part plus an integral of the network's output, approximated by a Taylor
expansion in $\lambda$. Substituting $x = y + \mu$ into their updates, every $\mu$ term
cancels against the linear part: e.g. their first-order data-prediction ODE step

$$x_t = \frac{\sigma_t}{\sigma_s}x_s + \alpha_t(1 - e^{-h})x_\theta
  + \mu\Big(1 - \frac{\sigma_t}{\sigma_s} + \frac{\sigma_t}{\sigma_s}\alpha_s
  - \alpha_t\Big), \qquad h = \lambda_t - \lambda_s,$$

is $y_t = \frac{\sigma_t}{\sigma_s}y_s + \alpha_t(1 - e^{-h})(x_\theta - \mu)$, DDIM /
DPM-Solver++-1 in $y$ (because $\alpha_s\sigma_t/\sigma_s = \alpha_t e^{-h}$). Likewise
the noise-prediction steps are DPM-Solver's, and the second-order steps are the multistep
DPM-Solver(++)(2M) with the exact weight $\varphi_2$ ("taylor"/"heun" form). So
`sampler="mrs"` runs odelab's exponential integrators on `probability_flow_term` in $y$:

- ODE, `parameterization="data"` (their recommended one): order 1 `ExponentialEuler`,
  order 2 `ExponentialAdams(2, start="lower_order", second_order="phi")` in data
  coordinates ($\tilde y = y/\alpha$, $s = -\lambda$);
- ODE, `parameterization="noise"`: the same solvers in noise coordinates ($y/\sigma$);
- SDE (their reverse-SDE solvers), with fresh $z \sim \mathcal N(0, I)$, $\hat x$ the
  denoiser and $\hat\varepsilon$ the noise in $y$, $D_1 = (q_n - q_{n-1})h/h_{n-1}$ for
  $q = \hat x$ or $\hat\varepsilon$ (order 2; 0 on the first step):

  $$\text{data: } y_t = \frac{\sigma_t}{\sigma_s}e^{-h}y_s + \alpha_t(1 - e^{-2h})\hat x
    + \alpha_t\Big(1 - \frac{1 - e^{-2h}}{2h}\Big)D_1 + \sigma_t\sqrt{1 - e^{-2h}}\,z,$$
  $$\text{noise: } y_t = \frac{\alpha_t}{\alpha_s}y_s - 2\sigma_t(e^h - 1)\hat\varepsilon
    - 2\sigma_t\Big(\frac{e^h - 1}{h} - 1\Big)D_1 + \sigma_t\sqrt{e^{2h} - 1}\,z.$$

  These are SDE-DPM-Solver++(2M) / SDE-DPM-Solver(2M) (Lu et al.) in their "taylor"
  form; odelab's `sample_sde(sampler="sde_dpmpp_2m")` is the "midpoint" form
  ($\tfrac12(1 - e^{-2h})D_1$, also second order) and has no noise-prediction
  variant, so the MRS SDE steps live here, a checkpointed `lax.scan` like the older
  samplers of `sde`. The first-order data step is DDIM with $\eta = 1$
  (`sample_sde(sampler="ddim_eta")`) in $y$, up to how the noise is drawn.

**Parameterizations** (what the network predicts, `prediction`): the noise `"eps"`
(IR-SDE's: $x_t = \mu + \alpha_t(x_0 - \mu) + \sigma_t\varepsilon$), the data `"x0"`, the
`"score"` $\nabla_x\log p_t = -\varepsilon/\sigma_t$, and MRS's velocity `"v"`: with
$\alpha_t = \cos\phi_t$, $\sigma_t = \lambda\sin\phi_t$, $v = dy/d\phi = \lambda\alpha_t
\varepsilon - \sqrt{1 - \alpha_t^2}\,(x_0 - \mu)$, so $D = \alpha_t y - (\sigma_t/\lambda)
v$ (odelab's VP `"v"` for $\lambda = 1$).

**The θ schedule.** `MeanReverting` takes IR-SDE's schedules in continuous time
$t \in (0, T]$, scaled (as IR-SDE scales its `dt`) so that $\alpha_T = e^{-\bar\theta_T}$
is `alpha_end` (IR-SDE's `eps`): `"cosine"` $\theta \propto 1 - \bar a(t/T)$ with
$\bar a(u) = \cos^2(\frac{\pi}{2}\frac{u + s}{1 + s})/\cos^2(\frac{\pi}{2}\frac{s}{1+s})$
(IR-SDE's default, the continuous form of its $\theta_i = 1 - \bar a_i$), `"linear"`
$\theta \propto r + (1 - r)t/T$ with $r = 0.005$ (IR-SDE's $\beta$ from $10^{-4}$ to
$0.02$), `"constant"`. $\bar\theta$ is closed form; its inverse (for $t(\lambda)$) is
closed form for the last two and 64 bisection steps for the cosine, with a final Newton
step through which gradients flow ($dt/d\bar\theta = 1/\theta$).

**References:** Z. Luo, F. K. Gustafsson, Z. Zhao, J. Sjölund, T. B. Schön, "Image
Restoration with Mean-Reverting Stochastic Differential Equations", ICML 2023,
arXiv:2301.11699; A. Li, W. Fang, H. Zhao, L. Lu, G. Yang, M. Xu, "MRS: A Fast Sampler
for Mean Reverting Diffusion based on ODE and SDE Solvers", ICLR 2025, arXiv:2502.07856;
C. Lu et al., "DPM-Solver++", arXiv:2211.01095 (the SDE solvers, §5).
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ..solvers import ExponentialAdams, ExponentialEuler
from .sampling import SAMPLERS, sample
from .schedules import AbstractSchedule, time_grid
from .sde import SDE_SAMPLERS, sample_sde


THETA_SCHEDULES = ("cosine", "linear", "constant")
MR_PREDICTIONS = ("eps", "x0", "v", "score")
PARAMETERIZATIONS = ("data", "noise")

_COSINE_S = 0.008
_LINEAR_RATIO = 0.005


def _x_minus_sin(x):
    # x - sin(x) loses all digits to cancellation for small x: a Taylor series there.
    x2 = x * x
    series = x * x2 / 6 * (1 - x2 / 20 * (1 - x2 / 42 * (1 - x2 / 72 * (1 - x2 / 110))))
    small = jnp.abs(x) < 0.25
    return jnp.where(small, series, x - jnp.sin(jnp.where(small, 0.25, x)))


def _bisect_increasing(f, target, iterations=64):
    """The root in [0, 1] of the increasing `f(u) = target`, elementwise."""
    lo, hi = jnp.zeros_like(target), jnp.ones_like(target)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = f(mid) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, body, (lo, hi))
    return 0.5 * (lo + hi)


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


class MeanReverting(AbstractSchedule):
    r"""IR-SDE's mean-reverting process, as the schedule of the centred $y = x - \mu$:
    $\alpha(t) = e^{-\bar\theta(t)}$, $\sigma(t) = \lambda\sqrt{1 - e^{-2\bar\theta(t)}}$,
    $t \in [\epsilon T, T]$ (module notes).

    **Arguments:**

    - `sigma_inf`: IR-SDE's $\lambda$ (`max_sigma`), the stationary standard deviation;
      $\sigma_t^2 = 2\lambda^2\theta_t$. (Not named `lam`: the schedule's `lam(t)` is
      the half log-SNR.)
    - `theta_schedule`: `"cosine"` (IR-SDE's default), `"linear"` or `"constant"`.
    - `T`: the end time (e.g. IR-SDE's number of steps, to call its network with $t$).
    - `alpha_end`: $e^{-\bar\theta_T}$, IR-SDE's `eps` (how far $x_T$'s mean has
      reverted to $\mu$).
    - `eps`: the data end $t_{min} = \epsilon T$ (at $t = 0$, $\sigma = 0$).

    **Raises:** `ValueError` for `sigma_inf <= 0`, `alpha_end` outside (0, 1), `T <= 0`,
    `eps` outside (0, 1) or an unknown `theta_schedule`.

    **Example:**

    ```python
    schedule = MeanReverting(sigma_inf=10 / 255, T=100)
    x_T = mu + schedule.sigma_inf * jax.random.normal(key, mu.shape)
    ```

    **Reference:** Luo et al., arXiv:2301.11699 (the MR SDE, its marginal and
    schedules) and their code's `IRSDE`.
    """

    sigma_inf: float
    theta_schedule: str = eqx.field(static=True)
    T: float
    alpha_end: float
    eps: float

    def __init__(
        self,
        sigma_inf=1.0,
        theta_schedule: str = "cosine",
        *,
        T=1.0,
        alpha_end=0.01,
        eps=1e-3,
    ):
        if theta_schedule not in THETA_SCHEDULES:
            raise ValueError(
                f"unknown `theta_schedule` {theta_schedule!r}; valid: "
                f"{', '.join(THETA_SCHEDULES)}."
            )
        checks = (
            ("sigma_inf", sigma_inf, lambda v: 0 < v < math.inf, "positive and finite"),
            ("alpha_end", alpha_end, lambda v: 0 < v < 1, "in (0, 1)"),
            ("T", T, lambda v: 0 < v < math.inf, "positive and finite"),
            ("eps", eps, lambda v: 0 < v < 1, "in (0, 1) (t_min = eps * T)"),
        )
        for name, value, ok, what in checks:
            if _is_concrete(value) and not ok(float(value)):
                raise ValueError(f"`{name}` must be {what}, got {value}.")
        self.sigma_inf = sigma_inf
        self.theta_schedule = theta_schedule
        self.T = T
        self.alpha_end = alpha_end
        self.eps = eps

    @property
    def t_min(self):
        return self.eps * self.T

    @property
    def t_max(self):
        return self.T

    # The unit schedule on u = t/T in [0, 1], before scaling to theta_bar(T) =
    # -log(alpha_end).
    def _unit_theta(self, u):
        if self.theta_schedule == "constant":
            return jnp.ones_like(u)
        if self.theta_schedule == "linear":
            return _LINEAR_RATIO + (1 - _LINEAR_RATIO) * u
        a = math.pi / (2 * (1 + _COSINE_S))
        b = _COSINE_S * a
        # 1 - cos^2(au + b)/cos^2(b) = sin(au) sin(au + 2b)/cos^2(b), no cancellation.
        return jnp.sin(a * u) * jnp.sin(a * u + 2 * b) / math.cos(b) ** 2

    def _unit_theta_bar(self, u):
        if self.theta_schedule == "constant":
            return u
        if self.theta_schedule == "linear":
            return _LINEAR_RATIO * u + 0.5 * (1 - _LINEAR_RATIO) * u**2
        a = math.pi / (2 * (1 + _COSINE_S))
        b = _COSINE_S * a
        # The integral of the product above, as a sum of two O(u^2) terms.
        integral = (
            math.cos(2 * b) * _x_minus_sin(2 * a * u) / (2 * a)
            + math.sin(2 * b) * jnp.sin(a * u) ** 2 / a
        )
        return 0.5 * integral / math.cos(b) ** 2

    def _unit_inverse(self, c):
        if self.theta_schedule == "constant":
            return c
        if self.theta_schedule == "linear":
            r = _LINEAR_RATIO
            return 2 * c / (r + jnp.sqrt(r**2 + 2 * (1 - r) * c))
        c = jnp.clip(c, 0.0, jnp.asarray(self._unit_theta_bar(1.0), c.dtype))
        u = jax.lax.stop_gradient(_bisect_increasing(self._unit_theta_bar, c))
        # One Newton step from the converged root: its value is the root, and its
        # derivative the implicit one, 1/theta.
        rate = self._unit_theta(u)
        safe = jnp.where(rate > 0, rate, 1.0)
        return u + jnp.where(rate > 0, (c - self._unit_theta_bar(u)) / safe, 0.0)

    def _scale(self):
        return -jnp.log(jnp.asarray(self.alpha_end)) / self._unit_theta_bar(1.0)

    def _as_time(self, t):
        t = jnp.asarray(t)
        return t if jnp.issubdtype(t.dtype, jnp.inexact) else t.astype(float)

    def theta(self, t):
        r"""The mean-reversion rate $\theta(t)$."""
        t = self._as_time(t)
        return (self._scale() / self.T).astype(t.dtype) * self._unit_theta(t / self.T)

    def theta_bar(self, t):
        r"""$\bar\theta(t) = \int_0^t \theta(s)\,ds$."""
        t = self._as_time(t)
        return self._scale().astype(t.dtype) * self._unit_theta_bar(t / self.T)

    def t_of_theta_bar(self, theta_bar):
        r"""The inverse of $\bar\theta(t)$."""
        return _t_of_theta_bar(self, self._as_time(theta_bar))

    def diffusion(self, t):
        r"""The forward SDE's $\sigma_t = \lambda\sqrt{2\theta(t)}$ (IR-SDE's $\sigma_t$,
        not the marginal's $\sigma(t)$)."""
        return self.sigma_inf * jnp.sqrt(2 * self.theta(t))

    def log_alpha(self, t):
        return -self.theta_bar(t)

    def log_sigma(self, t):
        theta_bar = self.theta_bar(t)
        return jnp.log(jnp.asarray(self.sigma_inf, theta_bar.dtype)) + 0.5 * jnp.log(
            -jnp.expm1(-2 * theta_bar)
        )

    def t_of_lambda(self, lam):
        # alpha/sigma = e^lam with sigma = s * sqrt(1 - alpha^2) gives
        # theta_bar = 1/2 log(1 + e^(-2(lam + log s))) (softplus, no overflow).
        lam = self._as_time(lam)
        shift = jnp.log(jnp.asarray(self.sigma_inf, lam.dtype))
        return self.t_of_theta_bar(0.5 * jnp.logaddexp(0.0, -2 * (lam + shift)))


@eqx.filter_jit
def _t_of_theta_bar(schedule, theta_bar):
    # Jitted: called eagerly (by `time_grid`), the bisection loop would dispatch and
    # compile op by op for every new grid size.
    scale = schedule._scale().astype(theta_bar.dtype)
    return schedule.T * schedule._unit_inverse(theta_bar / scale)


def mean_reverting_denoiser(
    model: Callable, prediction: str, schedule: MeanReverting
) -> Callable:
    r"""Wrap an MR network `model(x, t, mu, *cond)` (uncentred state $x$, predicting
    `prediction`) as the denoiser of the centred $y = x - \mu$,
    $D(y, t, \mu, *cond) = E[x_0 \mid x_t = y + \mu] - \mu$:

    - `"x0"`: $D = \hat x_0 - \mu$; `"eps"`: $D = (y - \sigma\hat\varepsilon)/\alpha$;
    - `"score"` ($\nabla_x\log p_t$): $D = (y + \sigma^2 s)/\alpha$;
    - `"v"` (MRS's velocity, module notes): $D = \alpha y - (\sigma/\lambda)v$.

    **Raises:** `ValueError` for an unknown `prediction`.

    **Reference:** Li et al., arXiv:2502.07856 (the parameterizations and their
    conversions).
    """
    if prediction not in MR_PREDICTIONS:
        raise ValueError(
            f"unknown prediction {prediction!r}; valid: {', '.join(MR_PREDICTIONS)}."
        )

    def denoiser(y, t, mu, *cond):
        out = model(y + mu, t, mu, *cond)
        if prediction == "x0":
            return out - mu
        alpha = schedule.alpha(t).astype(y.dtype)
        sigma = schedule.sigma(t).astype(y.dtype)
        if prediction == "eps":
            return (y - sigma * out) / alpha
        if prediction == "score":
            return (y + sigma**2 * out) / alpha
        ratio = sigma / jnp.asarray(schedule.sigma_inf, y.dtype)
        return alpha * y - ratio * out

    return denoiser


def _mrs_sde(denoiser, schedule, y, times, cond, key, order, parameterization, total):
    dtype = y.dtype
    alphas = schedule.alpha(times).astype(dtype)
    sigmas = schedule.sigma(times).astype(dtype)
    hs = jnp.diff(schedule.lam(times)).astype(dtype)
    n = times.shape[0] - 1

    def step(carry, inputs):
        y, q_prev, h_prev = carry
        i, t0, a0, s0, a1, s1, h, k = inputs
        d = denoiser(y, t0, *cond)
        q = d if parameterization == "data" else (y - a0 * d) / s0
        second = (order == 2) & (i > 0)
        if total is not None:
            second = second & (total - i >= 2)
        d1 = jnp.where(second, (q - q_prev) * (h / h_prev), jnp.zeros_like(q))
        z = jax.random.normal(k, y.shape, dtype)
        if parameterization == "data":
            kept = -jnp.expm1(-2 * h)
            y = (
                (s1 / s0) * jnp.exp(-h) * y
                + a1 * kept * q
                + a1 * (1 - kept / (2 * h)) * d1
                + s1 * jnp.sqrt(kept) * z
            )
        else:
            grown = jnp.expm1(h)
            y = (
                (a1 / a0) * y
                - 2 * s1 * grown * q
                - 2 * s1 * (grown / h - 1) * d1
                + s1 * jnp.sqrt(jnp.expm1(2 * h)) * z
            )
        return (y, q, h), None

    inputs = (
        jnp.arange(n),
        times[:-1],
        alphas[:-1],
        sigmas[:-1],
        alphas[1:],
        sigmas[1:],
        hs,
        jax.random.split(key, n),
    )
    init = (y, jnp.zeros_like(y), jnp.ones((), dtype))
    (y, _, _), _ = jax.lax.scan(jax.checkpoint(step), init, inputs)
    return y


def sample_mean_reverting(
    model: Callable,
    x_T,
    mu,
    schedule: MeanReverting,
    *,
    prediction: str = "eps",
    sampler="mrs",
    order: int = 2,
    parameterization: str = "data",
    steps: int = 10,
    grid="uniform_t",
    sde: bool = False,
    key=None,
    cond=(),
    final_denoise: bool = False,
    lower_order_final: bool | None = None,
    sampler_options: dict | None = None,
    adjoint="checkpoint",
):
    r"""Sample a mean-reverting diffusion model (IR-SDE) from `x_T` around `mu` to data
    with MRS (default: its second-order data-prediction ODE solver); returns $x$.

    The sample is $x = \mu + y$ with $y$ the solve in the centred variable (module
    notes): `sampler="mrs"` is MR Sampler, order 1 or 2, ODE or (`sde=True`) SDE, in the
    data or noise parameterization; any other name is one of odelab's samplers on the
    same centred problem (an ODE name of `sampling.SAMPLERS`, e.g. `"dpmpp_2m"`,
    `"unipc"`, `"dpmpp_3m"` (the third-order step of MRS's reference code), or with
    `sde=True` one of `sde.SDE_SAMPLERS`).

    **Arguments:**

    - `model`: `model(x, t, mu, *cond)` for one uncentred state `x` (vmap over a batch):
      the network sees $\mu$, the degraded image it is conditioned on.
    - `x_T`: the start, e.g. $\mu + \lambda z$ (IR-SDE's prior), at the grid's first time.
    - `mu`: the mean $\mu$, shaped like `x_T`.
    - `schedule`: a `MeanReverting` schedule.
    - `prediction`: what `model` predicts (`MR_PREDICTIONS`; `mean_reverting_denoiser`).
    - `sampler`: `"mrs"` or another odelab sampler name (see above).
    - `order`, `parameterization`: MRS's order (1 or 2) and `"data"` or `"noise"`.
    - `steps`, `grid`: the time grid (`time_grid`'s kinds, or an array of times).
    - `sde`, `key`: sample the reverse SDE instead of the PF-ODE, with this PRNG key.
    - `cond`: extra arguments for `model` (a tuple).
    - `final_denoise`: end with $x = \hat x_0(x, t_{last})$, the step to $\sigma = 0$.
    - `lower_order_final`: drop to first order on the last step (MRS's reference code
      does this below 10 steps, diffusers' schedulers below 15). Default: off for MRS,
      the preset's rule for another ODE sampler; not for another SDE sampler.
    - `sampler_options`: for another sampler, `sample`'s `sampler_options` (ODE) or
      keyword arguments of `sample_sde` (SDE: `eta`, `snr`, ...).
    - `adjoint`: as in `odelab.solve`, for ODE solves and `sample_sde` (the MRS SDE
      steps are a checkpointed `lax.scan`, differentiated directly).

    **Returns:** the sample, shaped like `x_T`.

    **Raises:** `ValueError` for a `mu` not shaped like `x_T`, a schedule that is not
    `MeanReverting`, an unknown sampler, prediction or parameterization, an MRS order
    other than 1 or 2, or `sde=True` without a `key`; `TypeError` for a non-floating
    `x_T` or `mu`.

    **Example:**

    ```python
    schedule = MeanReverting(sigma_inf=10 / 255, T=100)
    x_T = mu + schedule.sigma_inf * jax.random.normal(key, mu.shape)
    x0 = sample_mean_reverting(noise_net, x_T, mu, schedule, steps=10)
    ```

    **Reference:** Li et al., "MRS", arXiv:2502.07856 (the ODE and SDE solvers, data
    and noise prediction, orders 1–2).
    """
    if not isinstance(schedule, MeanReverting):
        raise ValueError(
            f"`schedule` must be a `MeanReverting` schedule, got "
            f"{type(schedule).__name__} (use `sample` for other diffusions)."
        )
    x_T, mu = jnp.asarray(x_T), jnp.asarray(mu)
    for name, value in (("x_T", x_T), ("mu", mu)):
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"`{name}` must be a floating array, got {value.dtype}.")
    if mu.shape != x_T.shape:
        raise ValueError(
            f"`mu` must have the shape of `x_T`, {x_T.shape}, got {mu.shape} "
            "(broadcast it first, e.g. jnp.broadcast_to(mu, x_T.shape))."
        )
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; valid: "
            f"{', '.join(PARAMETERIZATIONS)}."
        )
    valid = ("mrs", *(SDE_SAMPLERS if sde else SAMPLERS))
    if not isinstance(sampler, str) or sampler not in valid:
        kind = "SDE" if sde else "ODE"
        raise ValueError(
            f"unknown {kind} sampler {sampler!r}; valid: {', '.join(valid)}."
        )
    if sampler == "mrs" and order not in (1, 2):
        raise ValueError(f"MRS has order 1 or 2, got `order={order}`.")
    if sde and key is None:
        raise ValueError("`sde=True` needs a PRNG `key` for the sampler's noise.")
    denoiser = mean_reverting_denoiser(model, prediction, schedule)
    y_T = (x_T - mu).astype(jnp.result_type(x_T, mu))
    mu = mu.astype(y_T.dtype)
    cond = (mu, *tuple(cond))
    options = dict(sampler_options or {})
    if sampler != "mrs":
        if sde:
            if lower_order_final:
                raise ValueError(
                    f"`lower_order_final` is not an option of the SDE sampler "
                    f"{sampler!r}."
                )
            y = sample_sde(
                denoiser,
                y_T,
                schedule,
                key=key,
                prediction="x0",
                sampler=sampler,
                steps=steps,
                grid=grid,
                cond=cond,
                final_denoise=final_denoise,
                adjoint=adjoint,
                **options,
            )
        else:
            y = sample(
                denoiser,
                y_T,
                schedule,
                prediction="x0",
                sampler=sampler,
                steps=steps,
                grid=grid,
                cond=cond,
                adjoint=adjoint,
                final_denoise=final_denoise,
                lower_order_final=lower_order_final,
                sampler_options=options,
            )
        return mu + y
    if options:
        raise ValueError(
            "`sampler_options` are for other samplers; MRS takes `order` and "
            "`parameterization`."
        )
    n = steps if isinstance(grid, str) else jnp.shape(grid)[0] - 1
    total = n + int(final_denoise) if lower_order_final else None
    if sde:
        times = time_grid(schedule, steps, grid).astype(y_T.dtype)
        y = y_T
        if n > 0:
            y = _mrs_sde(
                denoiser,
                schedule,
                y_T,
                times,
                cond,
                key,
                order,
                parameterization,
                total,
            )
        if final_denoise:
            y = denoiser(y, times[-1], *cond)
        return mu + y
    if order == 1:
        solver = ExponentialEuler()
    else:
        solver = ExponentialAdams(
            2, start="lower_order", second_order="phi", steps_to_end=total
        )
    y = sample(
        denoiser,
        y_T,
        schedule,
        prediction="x0",
        sampler=solver,
        steps=steps,
        grid=grid,
        cond=cond,
        adjoint=adjoint,
        final_denoise=final_denoise,
        space=parameterization,
    )
    return mu + y
