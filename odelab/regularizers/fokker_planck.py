r"""The score Fokker–Planck residual: a regularizer that makes a learned score
consistent with the forward SDE it is meant to reverse.

A schedule of `odelab.diffusion.schedules` is the marginal law of the forward SDE

$$dx = a(t)\,x\,dt + g(t)\,dW, \qquad a = \frac{d\log\alpha}{dt}, \qquad
g^2 = \frac{d\sigma^2}{dt} - 2a\sigma^2 = -2\sigma^2\frac{d\lambda}{dt},$$

with $\lambda = \log\alpha - \log\sigma$. Its density obeys the Fokker–Planck equation
$\partial_t p = -\nabla\cdot(a x p) + \frac{g^2}{2}\Delta p$; dividing by $p$ and
taking the gradient gives the *score Fokker–Planck equation* for $s = \nabla\log p_t$,

$$\partial_t s = \nabla_x\Big[\frac{g^2}{2}\big(\nabla\cdot s + \|s\|^2\big)
  - a\,\langle x, s\rangle\Big]$$

(the drift's divergence $a\,d$ is constant in $x$, so its gradient drops out). The
true score satisfies it exactly; a score learned by denoising score matching in
general does not, and then the probability-flow ODE and the reverse SDE sample
different distributions (Deveney et al.'s ODE–SDE gap). `score_fokker_planck_residual`
evaluates the difference of the two sides for a model of any prediction type, and
`fokker_planck_loss` is its mean square over noised data, to add to a denoising loss
with a small factor (Lai et al.).

**References:** C.-H. Lai, Y. Takida, N. Murata, T. Uesaka, Y. Mitsufuji, S. Ermon,
"FP-Diffusion: Improving Score-based Diffusion Models by Enforcing the Underlying
Score Fokker–Planck Equation", ICML 2023, arXiv:2210.04296; T. Deveney, J. Stanczuk,
L. M. Kreusser, C. Budd, C.-B. Schönlieb, "Closing the ODE–SDE gap in score-based
diffusion models through the Fokker–Planck equation", 2023, arXiv:2311.15996.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..diffusion.sampling import to_denoiser
from ..diffusion.schedules import AbstractSchedule


WEIGHTINGS = ("eps", "g2", "none")
TRACES = ("exact", "hutchinson")
TIME_SAMPLINGS = ("uniform", "logsnr")


def _derivative(f: Callable, t):
    # Forward mode: each function differentiated in t maps the scalar t to a
    # scalar or to a state, so one Jacobian-vector product is the whole derivative.
    return jax.jvp(f, (t,), (jnp.ones_like(t),))


def _sde_coefficients(schedule: AbstractSchedule, t):
    """$(\\sigma, a, g^2, d\\lambda/dt)$ at `t`."""
    _, a = _derivative(schedule.log_alpha, t)
    _, dlam = _derivative(schedule.lam, t)
    sigma = schedule.sigma(t)
    # -2σ² dλ/dt rather than dσ²/dt - 2aσ²: one derivative of the schedule's own
    # λ (closed form for every schedule), positive wherever λ decreases.
    return sigma, a, -2.0 * sigma**2 * dlam, dlam


def _check_choice(name: str, value, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(
            f"unknown `{name}={value!r}`; valid: {', '.join(map(repr, valid))}."
        )


def score_fokker_planck_residual(
    model: Callable,
    x,
    t,
    schedule: AbstractSchedule,
    *,
    prediction: str = "eps",
    probe=None,
) -> jax.Array:
    r"""The residual of the score Fokker–Planck equation at one state.

    With the model's score $s(x, t) = (\alpha D(x, t) - x)/\sigma^2$, $D$ its denoiser
    (`odelab.diffusion.sampling.to_denoiser`),

    $$r(x, t) = \partial_t s - \nabla_x\Big[\frac{g^2}{2}\big(\nabla\cdot s +
      \|s\|^2\big) - a\,\langle x, s\rangle\Big],$$

    which is zero for the true score of the schedule's marginals (module notes).
    $\partial_t s$ is exact (`jax.jvp` in $t$ at fixed $x$), the gradient in $x$ is
    `jax.grad` of the bracket. The divergence is exact (the trace of `jax.jacfwd`,
    one Jacobian-vector product per dimension) when `probe` is `None`, or
    Hutchinson's $\varepsilon^\top (\partial_x s)\,\varepsilon$ from one
    Jacobian-vector product; since the estimate is unbiased for every $x$, its
    gradient is an unbiased estimate of $\nabla(\nabla\cdot s)$, and so $r$ is
    unbiased too.

    **Arguments:**

    - `model`: `model(x, t)` for one state, returning an array of `x`'s shape.
    - `x`: the state, a real floating array of shape `(d,)` (vmap for a batch).
    - `t`: the time, a scalar; cast to `x`'s dtype.
    - `schedule`: the schedule (`odelab.diffusion.schedules`) that defines the
      forward SDE and the model's parametrisation.
    - `prediction`: what `model` predicts, one of
      `odelab.diffusion.sampling.PREDICTIONS` (`"eps"`, `"x0"`, `"v"`, `"score"`,
      `"flow"`).
    - `probe`: `None` for the exact divergence, or a Hutchinson probe of `x`'s shape
      (Rademacher or standard Gaussian).

    **Returns:**

    The residual $r$, of `x`'s shape and dtype.

    **Raises:**

    `ValueError` if `x` is not a real floating 1-D array, `t` is not a scalar,
    `probe` does not have `x`'s shape, or `prediction` is unknown.

    **Example:**

    ```python
    mixture = GaussianMixture(jnp.array([[1.0, 0.0], [-1.0, 0.5]]), 0.3)
    x0_model = lambda x, t: mixture.denoiser(x, t, VPLinear())
    r = score_fokker_planck_residual(
        x0_model, jnp.array([0.2, -0.1]), 0.3, VPLinear(), prediction="x0"
    )  # ~0: the exact score solves the equation
    ```

    **References:** C.-H. Lai et al., "FP-Diffusion", ICML 2023, arXiv:2210.04296;
    T. Deveney et al., "Closing the ODE–SDE gap in score-based diffusion models
    through the Fokker–Planck equation", 2023, arXiv:2311.15996.
    """
    denoiser = to_denoiser(model, prediction, schedule)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"`x` must be a real floating array, got dtype {x.dtype}; convert it, "
            "e.g. `jnp.asarray(x, float)`."
        )
    if x.ndim != 1:
        raise ValueError(
            f"`x` must be one state of shape (d,), got shape {x.shape}; for a batch, "
            "`jax.vmap` over `x` (and `t`, `probe`)."
        )
    t = jnp.asarray(t, x.dtype)
    if t.ndim != 0:
        raise ValueError(f"`t` must be a scalar, got shape {t.shape}.")
    if probe is not None:
        probe = jnp.asarray(probe, x.dtype)
        if probe.shape != x.shape:
            raise ValueError(
                f"`probe` must have the shape of `x`, {x.shape}; got {probe.shape}."
            )

    def score(y, u):
        alpha, sigma = schedule.alpha(u), schedule.sigma(u)
        return (alpha * denoiser(y, u) - y) / sigma**2

    _, a, g2, _ = _sde_coefficients(schedule, t)

    def potential(y):
        if probe is None:
            jac, s = jax.jacfwd(lambda z: (score(z, t),) * 2, has_aux=True)(y)
            div = jnp.trace(jac)
        else:
            s, jv = jax.jvp(lambda z: score(z, t), (y,), (probe,))
            div = jnp.dot(probe, jv)
        return 0.5 * g2 * (div + jnp.dot(s, s)) - a * jnp.dot(y, s)

    _, ds_dt = _derivative(lambda u: score(x, u), t)
    return ds_dt - jax.grad(potential)(x)


def _sample_times(schedule, key, n, dtype, time_sampling, t_range):
    lo, hi = (schedule.t_min, schedule.t_max) if t_range is None else t_range
    if time_sampling == "uniform":
        return jax.random.uniform(key, (n,), dtype, lo, hi)
    # λ decreases in t: the data end `lo` has the largest λ.
    lam_lo = schedule.lam(jnp.asarray(hi, dtype))
    lam_hi = schedule.lam(jnp.asarray(lo, dtype))
    lam = jax.random.uniform(key, (n,), dtype, lam_lo, lam_hi)
    # t(λ(t)) round-trips only to round-off; keep the times inside the range.
    return jnp.clip(schedule.t_of_lambda(lam), lo, hi)


def fokker_planck_loss(
    model: Callable,
    x0,
    key,
    schedule: AbstractSchedule,
    *,
    prediction: str = "eps",
    weighting: str = "eps",
    trace: str = "exact",
    time_sampling: str = "uniform",
    t_range=None,
) -> jax.Array:
    r"""The weighted mean square score Fokker–Planck residual over noised data.

    For each sample $x_0$ of the batch: a time $t$, a noise $\varepsilon \sim
    N(0, I)$, $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$, and

    $$\mathcal L = \mathbb E\Big[w(t)\,\tfrac1d\,\|r(x_t, t)\|^2\Big]$$

    with $r$ the residual of `score_fokker_planck_residual`. Add it to a denoising
    loss with a small factor (Lai et al. use $10^{-3}$–$10^{-2}$).

    **The weighting.** Divided by $d\lambda/dt$ (with $g^2 = -2\sigma^2
    d\lambda/dt$) the residual is the equation in log-SNR time,

    $$\frac{r}{\lambda'} = \partial_\lambda s + \sigma^2\nabla_x\big(\nabla\cdot s +
      \|s\|^2\big) + \frac{d\log\alpha}{d\lambda}\nabla_x\langle x, s\rangle,$$

    where $d\log\alpha/d\lambda$ stays bounded ($\sigma^2$ for VP, $\sigma$ for
    rectified flow, 0 for VE). A noise-prediction error $\delta\hat\varepsilon$
    changes the score by $-\delta\hat\varepsilon/\sigma$, and each term above is then
    of that size: $\partial_\lambda$ of $1/\sigma$ is of its size, and for an error
    that varies in $x$ on the scale of the noisy data ($\gtrsim \sigma$) the two
    $x$-derivatives cancel the $\sigma^2$. So $\sigma r/\lambda'$ is
    $O(\delta\hat\varepsilon)$ at every noise level, while $r$ itself grows like
    $|\lambda'|/\sigma$ as $\sigma \to 0$ (for VE $\lambda'$ is constant and
    $\|r\|^2$ spans $(\sigma_{max}/\sigma_{min})^2 = 2.5\cdot10^7$ over the default
    range; for VP $|\lambda'|/\sigma \sim t^{-3/2}$ near $t = 0$). Measured on a
    Gaussian mixture with $\delta\hat\varepsilon = 0.1\tanh(\cdot)$: $\|r\|$ spans
    $10^3$–$10^5$ over the range of `VPLinear`, `VE` and `RectifiedFlow`, and
    $\sigma\|r\|/(|\lambda'|\sqrt d)$ stays in $[0.006, 0.18]$. `weighting`:

    - `"eps"` (default): $w = \sigma^2/\lambda'^2 = 4\sigma^6/g^4$, the residual in
      noise-prediction units per unit log-SNR: every noise level contributes on the
      scale of the denoising loss in $\varepsilon$, which makes the regularizer's
      factor transferable across schedules.
    - `"g2"`: $w = g^2$, Lai et al.'s likelihood weighting (their code's `"ll"`).
      Then $w\|r\|^2 \sim 2|\lambda'|^3\,\delta\hat\varepsilon^2$: flat for VE, but
      growing like $t^{-3}$ at the data end of VP and at both ends of rectified
      flow; keep $t$ away from them with `t_range`.
    - `"none"`: $w = 1$.

    **Arguments:**

    - `model`: `model(x, t)` for one state of shape `(d,)` (vmapped over the batch),
      e.g. an `eqx.Module`; differentiate the loss with respect to it with
      `eqx.filter_grad`.
    - `x0`: the data batch, a real floating array of shape `(batch, d)`.
    - `key`: a PRNG key for the times, the noise and the probes.
    - `schedule`: the schedule of the forward SDE and of the model.
    - `prediction`: what `model` predicts (`"eps"`, `"x0"`, `"v"`, `"score"`,
      `"flow"`).
    - `weighting`: `"eps"`, `"g2"` or `"none"` (above).
    - `trace`: `"exact"` (one Jacobian-vector product per dimension) or
      `"hutchinson"` (one Rademacher probe per sample). The residual is then unbiased
      but its square is not: the Hutchinson loss exceeds the exact one by the
      estimator's variance, which also pushes towards a score with small
      off-diagonal Jacobian.
    - `time_sampling`: `"uniform"` in $t$, or `"logsnr"` (uniform in $\lambda$, then
      $t = t(\lambda)$).
    - `t_range`: `(t_lo, t_hi)`, two numbers inside `[schedule.t_min,
      schedule.t_max]`, to sample from instead of the whole range.

    **Returns:**

    The loss, a scalar of `x0`'s dtype.

    **Raises:**

    `ValueError` for an unknown `prediction`, `weighting`, `trace` or
    `time_sampling` (the message lists the valid ones), an `x0` that is not a real
    floating array of shape `(batch, d)`, or a `t_range` that is not increasing
    inside the schedule's range.

    **Example:**

    ```python
    model = EpsMLP(2, key=jax.random.key(0))
    loss_fn = lambda m: dsm_loss(m, schedule, x0, k1) + 1e-3 * fokker_planck_loss(
        m, x0, k2, schedule, trace="hutchinson"
    )
    grads = eqx.filter_grad(loss_fn)(model)
    ```

    **References:** C.-H. Lai et al., "FP-Diffusion", ICML 2023, arXiv:2210.04296;
    T. Deveney et al., 2023, arXiv:2311.15996.
    """
    to_denoiser(model, prediction, schedule)  # checks `prediction` before any work
    _check_choice("weighting", weighting, WEIGHTINGS)
    _check_choice("trace", trace, TRACES)
    _check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating) or x0.ndim != 2:
        raise ValueError(
            "`x0` must be a real floating data batch of shape (batch, d), got dtype "
            f"{x0.dtype} and shape {x0.shape}."
        )
    if t_range is not None:
        bounds = np.asarray(t_range, np.float64)
        lo, hi = bounds if bounds.shape == (2,) else (np.nan, np.nan)
        if not schedule.t_min <= lo < hi <= schedule.t_max:
            raise ValueError(
                f"`t_range` must be (t_lo, t_hi) with t_lo < t_hi inside the "
                f"schedule's range [{schedule.t_min:g}, {schedule.t_max:g}]; got "
                f"{t_range!r}."
            )
        t_range = (float(lo), float(hi))
    n, d = x0.shape
    t_key, eps_key, probe_key = jax.random.split(key, 3)
    t = _sample_times(schedule, t_key, n, x0.dtype, time_sampling, t_range)
    eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    xt = alpha[:, None] * x0 + sigma[:, None] * eps

    def residual(x, u, probe):
        return score_fokker_planck_residual(
            model, x, u, schedule, prediction=prediction, probe=probe
        )

    if trace == "exact":
        r = jax.vmap(residual, (0, 0, None))(xt, t, None)
    else:
        probes = jax.random.rademacher(probe_key, x0.shape, x0.dtype)
        r = jax.vmap(residual)(xt, t, probes)
    sq = jnp.sum(r**2, axis=-1) / d
    if weighting == "none":
        return jnp.mean(sq)
    sigma, _, g2, dlam = jax.vmap(lambda u: _sde_coefficients(schedule, u))(t)
    w = g2 if weighting == "g2" else (sigma / dlam) ** 2
    return jnp.mean(w * sq)
