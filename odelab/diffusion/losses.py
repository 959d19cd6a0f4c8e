r"""Training losses of diffusion and flow models on any Gaussian path.

Every schedule of `odelab.diffusion.schedules` gives the path $x_t = \alpha(t) x_0 +
\sigma(t)\varepsilon$. A network predicts one of `to_denoiser`'s targets (the noise
`"eps"`, the data `"x0"`, `"v"`, the `"score"`, the `"flow"` velocity $u = \dot\alpha
x_0 + \dot\sigma\varepsilon$), and every one of them is an affine function of the
denoiser $\hat D \approx E[x_0 \mid x_t]$ at fixed $x_t$. So the squared error in any
target space is the data-space error times a factor, and one loss covers them all:

$$\mathcal L(\theta) = E_{t, x_0, \varepsilon}\; w(t)\,\tfrac1d
  \big\|\hat D_\theta(x_t, t) - x_0\big\|^2 .$$

The weightings $w$ (`WEIGHTINGS`), with $\mathrm{SNR} = \alpha^2/\sigma^2$:

| `weighting` | $w(t)$ | is the plain MSE of |
| --- | --- | --- |
| `"x0"` | $1$ | the data |
| `"eps"` | $\alpha^2/\sigma^2$ | the noise (DDPM's "simple" loss) |
| `"v"` | $(\alpha^2 + \sigma^2)^2/\sigma^2$ | $v = \alpha\varepsilon - \sigma x_0$ |
| `"score"` | $\alpha^2/\sigma^4$ | the score (denoising score matching) |
| `"flow"` | $(\dot\alpha - \dot\sigma\alpha/\sigma)^2$ | the velocity (flow matching) |
| `"min_snr"` | $\min(\mathrm{SNR}, \gamma)$ | Min-SNR-γ (Hang et al. 2023) |
| `"likelihood"` | $-2\dot\lambda\,\mathrm{SNR}$ | $g^2\|\hat s - s\|^2$: the ELBO weighting |
| `"edm"` | $(\bar\sigma^2 + \sigma_d^2)/(\bar\sigma\sigma_d)^2$ | EDM's loss, $\bar\sigma = \sigma/\alpha$ |

The default is the model's own target (`weighting=None`), so `prediction="eps"` is
DDPM's loss and `prediction="flow"` flow matching. The minimiser of every weighting
(with $w > 0$) is the true denoiser: $\mathcal L(D) = \mathcal L(D^\star) +
E\,w\|D - D^\star\|^2/d$.

The likelihood weighting follows from $g^2 = d\sigma^2/dt - 2\sigma^2\, d\log\alpha/dt =
-2\sigma^2\dot\lambda$ and $\hat s - s = \alpha(\hat D - x_0)/\sigma^2$ (Song et al. 2021,
"Maximum Likelihood Training of Score-Based Diffusion Models").

**Times** (`TIME_SAMPLINGS`): `"uniform"` on $[t_{min}, t_{max}]$; `"logit_normal"`
($u = \mathrm{sigmoid}(m + s n)$, Esser et al. 2024); `"u_shaped"` (density $\propto
\cosh(a(u - \tfrac12))$ on $[0, 1]$, $a = 4$: Lee, Lin & Fanti 2024, who put more
training weight near both ends, where a 1-NFE sample of a reflowed model is decided);
the unit interval maps linearly to $[t_{min}, t_{max}]$; `"edm"` ($\ln\bar\sigma \sim
N(P_{mean}, P_{std}^2)$, mapped to $t$ through the schedule's $t(\lambda)$, clipped to
its range).

**EDM preconditioning** (`EDMPrecond`): $D = c_{skip}\tilde x + c_{out}
F(c_{in}\tilde x, c_{noise})$ in $\tilde x = x/\alpha$, with $c_{skip} = \sigma_d^2 /
(\bar\sigma^2 + \sigma_d^2)$, $c_{out} = \bar\sigma\sigma_d / \sqrt{\bar\sigma^2 +
\sigma_d^2}$, $c_{in} = 1/\sqrt{\bar\sigma^2 + \sigma_d^2}$, $c_{noise} =
\tfrac14\ln\bar\sigma$: an `"x0"` model for any schedule.

**Couplings.** `noise=` fixes the $\varepsilon$ paired with each $x_0$; that is how
reflow trains on the pairs $(\hat x_0, z)$ of a sampler (`reflow_pairs`).

**References:** J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
NeurIPS 2020; T. Salimans, J. Ho, "Progressive Distillation", ICLR 2022 (v); Y. Song
et al., "Maximum Likelihood Training of Score-Based Diffusion Models", NeurIPS 2021;
T. Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
NeurIPS 2022, arXiv:2206.00364; T. Hang et al., "Efficient Diffusion Training via
Min-SNR Weighting Strategy", ICCV 2023; Y. Lipman et al., "Flow Matching for
Generative Modeling", ICLR 2023; X. Liu, C. Gong, Q. Liu, "Flow Straight and Fast",
ICLR 2023, arXiv:2209.03003; S. Lee, Z. Lin, G. Fanti, "Improving the Training of
Rectified Flows", NeurIPS 2024, arXiv:2405.20320; P. Esser et al., "Scaling Rectified
Flow Transformers", ICML 2024.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .sampling import PREDICTIONS, sample, to_denoiser
from .schedules import AbstractSchedule, RectifiedFlow


WEIGHTINGS = ("x0", "eps", "v", "score", "flow", "min_snr", "likelihood", "edm")
TIME_SAMPLINGS = ("uniform", "logit_normal", "u_shaped", "edm")
DISTANCES = ("l2", "pseudo_huber")


def _check(name, value, valid):
    if value not in valid:
        raise ValueError(f"unknown `{name}` {value!r}; valid: {', '.join(valid)}.")


def _derivative(f, t):
    return jax.jvp(f, (t,), (jnp.ones_like(t),))[1]


def sample_times(
    key,
    shape,
    schedule: AbstractSchedule,
    kind: str = "uniform",
    *,
    dtype=float,
    u_shape: float = 4.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    p_mean: float = -1.2,
    p_std: float = 1.2,
):
    r"""Training times $t$ of `shape` drawn by `kind` (`TIME_SAMPLINGS`, module notes).

    **Arguments:** `key`; `shape`; `schedule`; `kind`; `dtype`; `u_shape`, the U-shaped
    density's $a$; `logit_mean`, `logit_std`, the logit-normal's $m, s$; `p_mean`,
    `p_std`, EDM's log-normal $\ln\bar\sigma$.

    **Returns:** an array of times in $[t_{min}, t_{max}]$.

    **Raises:** `ValueError` for an unknown `kind` or a non-positive `u_shape`.
    """
    _check("time_sampling", kind, TIME_SAMPLINGS)
    lo, hi = schedule.t_min, schedule.t_max
    if kind == "edm":
        log_sigma_bar = p_mean + p_std * jax.random.normal(key, shape, dtype)
        return jnp.clip(schedule.t_of_lambda(-log_sigma_bar), lo, hi).astype(dtype)
    if kind == "uniform":
        unit = jax.random.uniform(key, shape, dtype)
    elif kind == "logit_normal":
        unit = jax.nn.sigmoid(
            logit_mean + logit_std * jax.random.normal(key, shape, dtype)
        )
    else:
        if u_shape <= 0:
            raise ValueError(f"`u_shape` must be positive; got {u_shape}.")
        # Inverse CDF of cosh(a(u - 1/2)) on [0, 1]:
        # F(u) = (sinh(a(u - 1/2)) + sinh(a/2)) / (2 sinh(a/2)).
        r = jax.random.uniform(key, shape, dtype)
        half = jnp.sinh(jnp.asarray(u_shape / 2, dtype))
        unit = 0.5 + jnp.arcsinh((2 * r - 1) * half) / u_shape
    return lo + (hi - lo) * unit


def loss_weight(
    weighting: str,
    t,
    schedule: AbstractSchedule,
    *,
    sigma_data: float = 0.5,
    min_snr_gamma: float = 5.0,
):
    r"""$w(t)$ of `weighting` (`WEIGHTINGS`): the factor on the data-space squared
    error $\|\hat D - x_0\|^2$ (module notes' table)."""
    _check("weighting", weighting, WEIGHTINGS)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    snr = (alpha / sigma) ** 2
    if weighting == "x0":
        return jnp.ones_like(snr)
    if weighting == "eps":
        return snr
    if weighting == "v":
        return (alpha**2 + sigma**2) ** 2 / sigma**2
    if weighting == "score":
        return alpha**2 / sigma**4
    if weighting == "flow":
        d_alpha = _derivative(schedule.alpha, t)
        d_sigma = _derivative(schedule.sigma, t)
        return (d_alpha - d_sigma * alpha / sigma) ** 2
    if weighting == "min_snr":
        return jnp.minimum(snr, min_snr_gamma)
    if weighting == "likelihood":
        return -2 * _derivative(schedule.lam, t) * snr
    sigma_bar = sigma / alpha
    return (sigma_bar**2 + sigma_data**2) / (sigma_bar * sigma_data) ** 2


class EDMPrecond(eqx.Module):
    r"""EDM's preconditioning of a network $F(x, c)$ as an `"x0"` model for any
    schedule (module notes): $D(x, t) = c_{skip}\tilde x + c_{out}F(c_{in}\tilde x,
    c_{noise})$ with $\tilde x = x/\alpha$ and $\bar\sigma = \sigma/\alpha$.

    **Arguments:** `net`, the network `net(x, c)` for one state; `schedule`;
    `sigma_data`, $\sigma_d$ (0.5 in Karras et al.; the data's standard deviation).

    **Example:** `EDMPrecond(EpsMLP(2, key=key), VPLinear(), 0.5)(x, t)` is a denoiser.

    **Reference:** T. Karras et al., "Elucidating the Design Space of Diffusion-Based
    Generative Models", NeurIPS 2022, Table 1 and Appendix B.6.
    """

    net: Callable
    schedule: AbstractSchedule
    sigma_data: float = 0.5

    def __call__(self, x, t, *cond):
        alpha = self.schedule.alpha(t)
        sigma_bar = self.schedule.sigma(t) / alpha
        norm = jnp.sqrt(sigma_bar**2 + self.sigma_data**2)
        x_tilde = x / alpha
        c_skip = self.sigma_data**2 / norm**2
        c_out = sigma_bar * self.sigma_data / norm
        out = self.net(x_tilde / norm, jnp.log(sigma_bar) / 4, *cond)
        return (c_skip * x_tilde + c_out * out).astype(x.dtype)


def denoising_loss(
    model: Callable,
    x0,
    key,
    schedule: AbstractSchedule,
    *,
    prediction: str = "eps",
    weighting: str | None = None,
    time_sampling: str = "uniform",
    distance: str = "l2",
    noise=None,
    t=None,
    cond=(),
    sigma_data: float = 0.5,
    min_snr_gamma: float = 5.0,
    huber_c: float | None = None,
    time_options: dict | None = None,
):
    r"""The weighted denoising loss of `model` on the batch `x0` (module notes):
    denoising score matching for `prediction` eps/x0/v/score, flow matching for
    `"flow"`.

    **Arguments:**

    - `model`: `model(x, t, *cond)` for one sample, predicting `prediction`
      (`PREDICTIONS`; wrap a network in `EDMPrecond` for EDM's `"x0"` model).
    - `x0`: the data batch, shape `(batch, ...)`.
    - `key`: PRNG key for the times and the noise.
    - `schedule`: the Gaussian path.
    - `weighting`: `WEIGHTINGS`, or `None` for the MSE of the model's own target.
    - `time_sampling`: `TIME_SAMPLINGS` (`time_options` go to `sample_times`).
    - `distance`: `"l2"` (the squared error) or `"pseudo_huber"`, $\sqrt{w\|\hat D -
      x_0\|^2 + c^2} - c$ with $c$ = `huber_c` (default $0.00054\sqrt d$, Song &
      Dhariwal 2024's constant, which Lee et al. use for rectified flows).
    - `noise`: the $\varepsilon$ of each sample (a coupling, e.g. reflow's); default
      fresh Gaussian noise.
    - `t`: the times (shape `(batch,)`); default drawn by `time_sampling`.
    - `cond`: per-sample conditioning arrays (batched like `x0`).
    - `sigma_data`, `min_snr_gamma`: the `"edm"` and `"min_snr"` constants.

    **Returns:** the mean loss over the batch, a scalar.

    **Raises:** `ValueError` for an unknown `prediction`, `weighting`,
    `time_sampling` or `distance`, or `noise`/`t` of the wrong shape.

    **Example:**

    ```python
    loss = denoising_loss(model, x0, key, VPLinear(), prediction="v",
                          weighting="min_snr")
    ```
    """
    _check("prediction", prediction, PREDICTIONS)
    _check("distance", distance, DISTANCES)
    # The weightings named after a target are that target's plain MSE.
    weighting = prediction if weighting is None else weighting
    _check("weighting", weighting, WEIGHTINGS)
    x0 = jnp.asarray(x0)
    batch = x0.shape[0]
    if key is None and (t is None or noise is None):
        raise ValueError("`key` is needed unless both `t` and `noise` are given.")
    t_key, eps_key = (None, None) if key is None else jax.random.split(key)
    if t is None:
        t = sample_times(
            t_key, (batch,), schedule, time_sampling, dtype=x0.dtype,
            **(time_options or {}),
        )  # fmt: skip
    else:
        _check("time_sampling", time_sampling, TIME_SAMPLINGS)
    t = jnp.asarray(t, x0.dtype)
    if t.shape != (batch,):
        raise ValueError(f"`t` must have shape ({batch},); got {t.shape}.")
    if noise is None:
        noise = jax.random.normal(eps_key, x0.shape, x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(
            f"`noise` must have the shape of `x0`, {x0.shape}; got {noise.shape}."
        )
    expand = (slice(None),) + (None,) * (x0.ndim - 1)
    alpha = schedule.alpha(t).astype(x0.dtype)[expand]
    sigma = schedule.sigma(t).astype(x0.dtype)[expand]
    x_t = alpha * x0 + sigma * noise
    denoiser = to_denoiser(model, prediction, schedule)
    d_hat = jax.vmap(denoiser)(x_t, t, *cond)
    dim = x0[0].size
    sq = jnp.sum((d_hat - x0).reshape(batch, -1) ** 2, axis=-1)
    w = loss_weight(
        weighting, t, schedule, sigma_data=sigma_data, min_snr_gamma=min_snr_gamma
    ).astype(x0.dtype)
    if distance == "l2":
        return jnp.mean(w * sq) / dim
    c = 0.00054 * dim**0.5 if huber_c is None else huber_c
    return jnp.mean(jnp.sqrt(w * sq + c**2) - c)


def flow_matching_loss(
    model: Callable,
    x0,
    key,
    schedule: AbstractSchedule | None = None,
    *,
    time_sampling: str = "uniform",
    noise=None,
    **options,
):
    r"""Flow matching (rectified flow on the default linear path $x_t = (1 - t)x_0 +
    t\varepsilon$): $E\,\tfrac1d\|\hat u_\theta(x_t, t) - (\dot\alpha x_0 +
    \dot\sigma\varepsilon)\|^2$, the target $\varepsilon - x_0$ on the linear path.
    `denoising_loss` with `prediction="flow"`; `options` go to it (`distance`,
    `weighting`, `t`, `cond`, `time_options`).

    **Example:** `flow_matching_loss(model, x0, key, time_sampling="u_shaped")`.

    **References:** Lipman et al. 2023; Liu, Gong & Liu 2023; Lee, Lin & Fanti 2024
    (module notes).
    """
    schedule = RectifiedFlow() if schedule is None else schedule
    return denoising_loss(
        model, x0, key, schedule, prediction="flow", time_sampling=time_sampling,
        noise=noise, **options,
    )  # fmt: skip


def reflow_pairs(
    model: Callable,
    noise,
    schedule: AbstractSchedule | None = None,
    *,
    prediction: str = "flow",
    sampler="dpmpp_2m",
    steps: int = 32,
    grid="logsnr",
    cond=(),
):
    r"""Reflow's coupling: $(\hat x_0, z)$ with $\hat x_0$ the probability-flow ODE
    sample of `model` from the noise $z$ (Liu, Gong & Liu 2023, Algorithm 1).
    Training a new flow on these pairs (`flow_matching_loss(..., noise=z)` with $x_0
    = \hat x_0$) straightens it: the pairs' straight interpolations cross less than
    the independent coupling's, so fewer steps sample it.

    **Arguments:** `model` (predicting `prediction`); `noise`, the batch of $z$ at
    $t_{max}$, shape `(batch, ...)`; `schedule` (default `RectifiedFlow()`);
    `sampler`, `steps`, `grid`: the sampler that makes the pairs (`sample`'s; it ends
    with the exact denoising step to $\sigma = 0$); `cond`, batched conditioning.

    **Returns:** `(x0_hat, noise)`, both of the shape of `noise`.
    """
    schedule = RectifiedFlow() if schedule is None else schedule

    def one(z, *c):
        return sample(
            model, z, schedule, prediction=prediction, sampler=sampler, steps=steps,
            grid=grid, cond=c, final_denoise=True,
        )  # fmt: skip

    return jax.vmap(one)(noise, *cond), noise


def straightness(
    model: Callable,
    noise,
    schedule: AbstractSchedule | None = None,
    *,
    prediction: str = "flow",
    steps: int = 32,
):
    r"""The straightness of a flow's sampling paths (Liu, Gong & Liu 2023, eq. 6),
    $S = \int E\,\tfrac1d\big\|\tfrac{x_{t_{min}} - x_{t_{max}}}{t_{min} - t_{max}} -
    u(x_t, t)\big\|^2 dt$ over the time range normalised to length 1: zero for
    straight paths, which one Euler step samples exactly.

    Computed on the `steps`-step Euler trajectory of the probability-flow velocity
    (`probability_flow_term(..., space="time")`) from each `noise` sample, uniform in
    $t$, as the mean over steps of the squared deviation of the step's velocity from
    the path's mean velocity.

    **Arguments:** `model` (predicting `prediction`); `noise`, the batch at $t_{max}$,
    shape `(batch, ...)`; `schedule` (default `RectifiedFlow()`); `steps`.

    **Returns:** a non-negative scalar.
    """
    from .sampling import probability_flow_term

    schedule = RectifiedFlow() if schedule is None else schedule
    term = probability_flow_term(
        to_denoiser(model, prediction, schedule), schedule, "time"
    )
    times = jnp.linspace(schedule.t_max, schedule.t_min, steps + 1, dtype=noise.dtype)

    def one(z):
        def step(x, interval):
            t0, t1 = interval
            u = term.vector_field(t0, x, ())
            return x + (t1 - t0) * u, u

        x_end, velocities = jax.lax.scan(step, z, (times[:-1], times[1:]))
        mean_velocity = (x_end - z) / (times[-1] - times[0])
        return jnp.mean((velocities - mean_velocity[None]) ** 2)

    # Scaled to a unit time range: u scales by the range's length.
    return jnp.mean(jax.vmap(one)(noise)) * (schedule.t_max - schedule.t_min) ** 2
