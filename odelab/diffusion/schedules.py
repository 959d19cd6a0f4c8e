r"""Noise schedules and sampling time grids for diffusion and flow models.

A schedule gives the marginal $x_t = \alpha(t)\, x_0 + \sigma(t)\, \varepsilon$ for
$t \in [t_{min}, t_{max}]$ ($t_{max}$ noise, $t_{min}$ data), the half log-SNR
$\lambda(t) = \log\alpha(t) - \log\sigma(t)$ (decreasing in $t$) and its inverse
$t(\lambda)$, in closed form where one exists. Every method works elementwise on
arrays, under `jit`, `vmap` and `grad` (the time grid can be learned).

Schedules: `VPLinear` (β linear, DDPM/score-SDE), `VPCosine` (Nichol & Dhariwal),
`VPDiscrete` (a table of $\bar\alpha_n$, e.g. DDPM's 1000 steps), `VE`
($\sigma_{min}(\sigma_{max}/\sigma_{min})^t$), `EDM` ($\alpha = 1$, $\sigma = t$, Karras
et al.), `RectifiedFlow` ($\alpha = 1 - t$, $\sigma = t$).

Grids (`time_grid`): uniform in $t$, uniform in $\lambda$ ("logSNR", DPM-Solver),
Karras' ρ-spacing of $\bar\sigma = \sigma/\alpha$, time-quadratic, or user-given.

**References:** Y. Song et al., "Score-Based Generative Modeling through SDEs", ICLR
2021; C. Lu et al., "DPM-Solver", NeurIPS 2022, arXiv:2206.00927 (closed-form
$t(\lambda)$, the discrete-schedule convention); A. Nichol, P. Dhariwal, "Improved
DDPM", ICML 2021; T. Karras et al., "Elucidating the Design Space of Diffusion-Based
Generative Models", NeurIPS 2022; X. Liu et al., "Flow Straight and Fast", ICLR 2023.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class AbstractSchedule(eqx.Module):
    """A diffusion schedule: $\\alpha(t)$, $\\sigma(t)$, $\\lambda(t)$, $t(\\lambda)$."""

    @property
    @abc.abstractmethod
    def t_min(self) -> float:
        """The data end of the time range (sampling stops here)."""

    @property
    @abc.abstractmethod
    def t_max(self) -> float:
        """The noise end of the time range (sampling starts here)."""

    @abc.abstractmethod
    def log_alpha(self, t):
        """$\\log \\alpha(t)$."""

    @abc.abstractmethod
    def log_sigma(self, t):
        """$\\log \\sigma(t)$."""

    @abc.abstractmethod
    def t_of_lambda(self, lam):
        """The inverse of $\\lambda(t)$."""

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.exp(self.log_sigma(t))

    def lam(self, t):
        """$\\lambda(t) = \\log\\alpha(t) - \\log\\sigma(t)$ (half log-SNR)."""
        return self.log_alpha(t) - self.log_sigma(t)


def _vp_log_alpha_of_lambda(lam):
    # VP: alpha^2 + sigma^2 = 1 and sigma/alpha = e^-lambda, so
    # log alpha = -1/2 log(1 + e^(-2 lambda)) (softplus, no overflow).
    return -0.5 * jnp.logaddexp(0.0, -2.0 * lam)


class _VP(AbstractSchedule):
    """Variance preserving: $\\sigma = \\sqrt{1 - \\alpha^2}$."""

    def log_sigma(self, t):
        # 1/2 log(1 - alpha^2), accurate for alpha near 1 (small t).
        return 0.5 * jnp.log(-jnp.expm1(2.0 * self.log_alpha(t)))


class VPLinear(_VP):
    r"""VP with linear $\beta(t) = \beta_0 + t(\beta_1 - \beta_0)$, $t \in [\epsilon, 1]$:
    $\log\alpha(t) = -\tfrac14 t^2(\beta_1 - \beta_0) - \tfrac12 t\beta_0$, and
    $t(\lambda) = 2L / (\beta_0 + \sqrt{\beta_0^2 + 2(\beta_1-\beta_0) L})$ with
    $L = \log(1 + e^{-2\lambda})$."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3

    @property
    def t_min(self):
        return self.eps

    @property
    def t_max(self):
        return 1.0

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_of_lambda(self, lam):
        big_l = jnp.logaddexp(0.0, -2.0 * lam)
        delta = self.beta_max - self.beta_min
        return (
            2.0
            * big_l
            / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2 * delta * big_l))
        )


class VPCosine(_VP):
    r"""VP cosine schedule: $\alpha(t) = \cos(\frac{\pi}{2}\frac{t+s}{1+s}) /
    \cos(\frac{\pi}{2}\frac{s}{1+s})$, $t \in [\epsilon, t_{max}]$ with DPM-Solver's
    $t_{max} = 0.9946$ (where $\alpha$ would otherwise reach 0)."""

    s: float = 0.008
    eps: float = 1e-3
    t_end: float = 0.9946

    @property
    def t_min(self):
        return self.eps

    @property
    def t_max(self):
        return self.t_end

    def _log_alpha0(self):
        return math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))

    def log_alpha(self, t):
        angle = (t + self.s) / (1 + self.s) * math.pi / 2
        return jnp.log(jnp.cos(angle)) - self._log_alpha0()

    def t_of_lambda(self, lam):
        log_alpha = _vp_log_alpha_of_lambda(lam)
        angle = jnp.arccos(jnp.exp(log_alpha + self._log_alpha0()))
        return 2 * (1 + self.s) / math.pi * angle - self.s


class VPDiscrete(_VP):
    r"""VP from a table $\bar\alpha_n$, $n = 0..N-1$ (e.g. DDPM's `alphas_cumprod`).

    Convention (DPM-Solver's): step $n$ sits at $t_n = (n + 1)/N$, and
    $\log\alpha(t)$ is piecewise linear in $t$ through $(t_n, \frac12\log\bar\alpha_n)$
    (extended linearly beyond the ends); $t \in [1/N, 1]$. $t(\lambda)$ inverts the
    same interpolation ($\log\alpha$ is decreasing in $t$)."""

    log_alphas: np.ndarray = eqx.field(converter=np.asarray)
    ts: np.ndarray = eqx.field(converter=np.asarray)
    size: int = eqx.field(static=True)

    def __init__(self, alphas_cumprod):
        alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
        if alphas_cumprod.ndim != 1 or alphas_cumprod.size < 2:
            raise ValueError(
                "`alphas_cumprod` must be a 1-D table of at least 2 values."
            )
        if np.any(np.diff(alphas_cumprod) >= 0) or np.any(alphas_cumprod <= 0):
            raise ValueError(
                "`alphas_cumprod` must be positive and strictly decreasing (noise grows "
                "with the step index)."
            )
        n = alphas_cumprod.size
        self.log_alphas = 0.5 * np.log(alphas_cumprod)
        self.ts = np.arange(1, n + 1) / n
        self.size = n

    @classmethod
    def ddpm_linear(cls, steps: int = 1000, beta_start=1e-4, beta_end=0.02):
        """DDPM's discrete schedule: β linear from `beta_start` to `beta_end`."""
        betas = np.linspace(beta_start, beta_end, steps, dtype=np.float64)
        return cls(np.cumprod(1.0 - betas))

    @property
    def t_min(self):
        return 1.0 / self.size

    @property
    def t_max(self):
        return 1.0

    def time_of_index(self, n):
        """The time $t = (n + 1)/N$ of table index (diffusers' integer timestep) `n`."""
        return (jnp.asarray(n, jnp.result_type(float)) + 1.0) / self.size

    def index_of_time(self, t):
        """The (fractional) table index of time `t`: $tN - 1$ (for a model trained
        on integer timesteps)."""
        return t * self.size - 1.0

    def log_alpha(self, t):
        return _interp_linear_extrapolate(t, self.ts, self.log_alphas)

    def t_of_lambda(self, lam):
        log_alpha = _vp_log_alpha_of_lambda(lam)
        return _interp_linear_extrapolate(
            log_alpha, self.log_alphas[::-1].copy(), self.ts[::-1].copy()
        )


def _interp_linear_extrapolate(x, xp, fp):
    """Piecewise-linear interpolation of (xp, fp) at x, xp increasing, extended
    linearly beyond both ends (differentiable in x)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    # The table follows the query's precision (tables are stored in float64 NumPy).
    xp, fp = jnp.asarray(xp, x.dtype), jnp.asarray(fp, x.dtype)
    idx = jnp.clip(jnp.searchsorted(xp, x) - 1, 0, xp.shape[0] - 2)
    x0, x1, f0, f1 = xp[idx], xp[idx + 1], fp[idx], fp[idx + 1]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


class VE(AbstractSchedule):
    r"""Variance exploding: $\alpha = 1$, $\sigma(t) = \sigma_{min}
    (\sigma_{max}/\sigma_{min})^t$, $t \in [0, 1]$."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    @property
    def t_min(self):
        return 0.0

    @property
    def t_max(self):
        return 1.0

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, float))

    def log_sigma(self, t):
        return math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)

    def t_of_lambda(self, lam):
        return (-lam - math.log(self.sigma_min)) / math.log(
            self.sigma_max / self.sigma_min
        )


class EDM(AbstractSchedule):
    r"""Karras et al.: $\alpha = 1$, $\sigma(t) = t$, $t \in [\sigma_{min}, \sigma_{max}]$;
    $\lambda = -\log t$."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    @property
    def t_min(self):
        return self.sigma_min

    @property
    def t_max(self):
        return self.sigma_max

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, float))

    def log_sigma(self, t):
        return jnp.log(t)

    def t_of_lambda(self, lam):
        return jnp.exp(-lam)


class RectifiedFlow(AbstractSchedule):
    r"""The linear path of flow matching / rectified flow: $\alpha = 1 - t$,
    $\sigma = t$, $t \in [\epsilon, 1 - \epsilon]$;
    $\lambda = \log\frac{1-t}{t}$, $t(\lambda) = 1/(1 + e^\lambda)$."""

    eps: float = 1e-3

    @property
    def t_min(self):
        return self.eps

    @property
    def t_max(self):
        return 1.0 - self.eps

    def log_alpha(self, t):
        return jnp.log1p(-t)

    def log_sigma(self, t):
        return jnp.log(t)

    def t_of_lambda(self, lam):
        return jax.nn.sigmoid(-lam)


GRIDS = ("uniform_t", "logsnr", "karras", "time_quadratic")
DIFFUSERS_GRIDS = ("linspace", "leading", "trailing")


def diffusers_timesteps(
    steps: int,
    spacing: str = "linspace",
    *,
    num_train_timesteps: int = 1000,
    steps_offset: int = 0,
    scheduler: str = "multistep",
) -> np.ndarray:
    r"""The integer timesteps at which diffusers evaluates the model, decreasing.

    After the last one diffusers steps to $\sigma = 0$ (`final_sigmas_type="zero"`,
    DDIM's `set_alpha_to_one=True`), which is a final denoising step
    (`sample(..., final_denoise=True)`). `spacing` is diffusers' `timestep_spacing`
    (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Table 2); `scheduler` picks between the conventions of the multistep schedulers
    (`"multistep"`: DPMSolverMultistep, UniPCMultistep, DEISMultistep) and of
    `"ddim"` (DDIMScheduler: `leading` uses a ratio N // steps and ends at 0).
    DDIM's `linspace` is not offered: diffusers evaluates it at `linspace` times but
    steps to `t - N // steps`, which is not a time grid.
    """
    n = num_train_timesteps
    if steps < 1:
        raise ValueError(f"`steps` must be at least 1, got {steps}.")
    if spacing not in DIFFUSERS_GRIDS:
        raise ValueError(
            f"unknown timestep spacing {spacing!r}; valid: {', '.join(DIFFUSERS_GRIDS)}."
        )
    if scheduler not in ("multistep", "ddim"):
        raise ValueError(
            f"`scheduler` must be 'multistep' or 'ddim', got {scheduler!r}."
        )
    if scheduler == "ddim":
        if spacing == "linspace":
            raise ValueError(
                "diffusers' DDIM with timestep_spacing='linspace' evaluates the model at "
                "linspace times but steps to t - N // steps, so it is not a solve on a "
                "time grid; use 'leading' or 'trailing'."
            )
        if spacing == "leading":
            out = (np.arange(0, steps) * (n // steps)).round()[::-1] + steps_offset
        else:
            out = np.round(np.arange(n, 0, -n / steps)) - 1
    elif spacing == "linspace":
        out = np.linspace(0, n - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = n // (steps + 1)
        out = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1] + steps_offset
    else:
        out = np.arange(n, 0, -n / steps).round() - 1
    out = out.astype(np.int64)
    if np.any(np.diff(out) >= 0) or out.min() < 0 or out.max() >= n:
        raise ValueError(
            f"{steps} steps with spacing {spacing!r} give the timesteps {out.tolist()}, "
            f"which are not strictly decreasing inside [0, {n - 1}]; use fewer steps."
        )
    return out


def time_grid(
    schedule: AbstractSchedule,
    steps: int,
    kind: str = "logsnr",
    *,
    t_start=None,
    t_end=None,
    rho: float = 7.0,
    steps_offset: int = 0,
    convention: str = "multistep",
):
    r"""A decreasing time grid of `steps + 1` points from noise to data (`steps`
    points for the diffusers grids, which end in a final denoising step).

    **Arguments:**

    - `schedule`: the schedule whose time axis the grid lives on.
    - `steps`: number of intervals (≥ 1).
    - `kind`: `"uniform_t"`; `"logsnr"` (uniform in $\lambda$, DPM-Solver's default);
      `"karras"` ($\bar\sigma_i = (\bar\sigma_{max}^{1/\rho} + \frac iN(\bar\sigma_{min}^{1/\rho}
      - \bar\sigma_{max}^{1/\rho}))^\rho$ with $\bar\sigma = \sigma/\alpha = e^{-\lambda}$);
      `"time_quadratic"` (uniform in $\sqrt t$); or an array of times (checked to be
      strictly decreasing and inside the schedule's range); or, for a `VPDiscrete`
      schedule, diffusers' `"linspace"`, `"leading"`, `"trailing"` timesteps
      (`diffusers_timesteps`; `steps_offset` and `convention` are passed on).
    - `t_start`, `t_end`: the grid's ends (default `schedule.t_max`, `schedule.t_min`).
    - `rho`: Karras' ρ.
    """
    t_start = schedule.t_max if t_start is None else t_start
    t_end = schedule.t_min if t_end is None else t_end
    if not isinstance(kind, str):
        grid = jnp.asarray(kind)
        concrete = not isinstance(grid, jax.core.Tracer)
        if grid.ndim != 1 or grid.shape[0] < 2:
            raise ValueError(
                "a user-given grid must be a 1-D array of at least 2 times."
            )
        if concrete:
            g = np.asarray(grid)
            if np.any(np.diff(g) >= 0):
                raise ValueError(
                    "a user-given grid must be strictly decreasing (noise to data)."
                )
            lo, hi = schedule.t_min, schedule.t_max
            if g.max() > hi * (1 + 1e-12) or g.min() < lo * (1 - 1e-12):
                raise ValueError(
                    f"the grid [{g.min():g}, {g.max():g}] leaves the schedule's range "
                    f"[{lo:g}, {hi:g}]."
                )
        return grid
    if steps < 1:
        raise ValueError(f"`steps` must be at least 1, got {steps}.")
    if kind in DIFFUSERS_GRIDS:
        if not isinstance(schedule, VPDiscrete):
            raise ValueError(
                f"the diffusers grid {kind!r} needs a `VPDiscrete` schedule (integer "
                f"timesteps), got {type(schedule).__name__}."
            )
        return schedule.time_of_index(
            diffusers_timesteps(
                steps,
                kind,
                num_train_timesteps=schedule.size,
                steps_offset=steps_offset,
                scheduler=convention,
            )
        )
    if kind not in GRIDS:
        raise ValueError(
            f"unknown grid {kind!r}; valid: {', '.join(GRIDS + DIFFUSERS_GRIDS)}, or "
            "an array."
        )
    u = jnp.linspace(0.0, 1.0, steps + 1)
    if kind == "uniform_t":
        return t_start + u * (t_end - t_start)
    if kind == "time_quadratic":
        a, b = math.sqrt(t_start), math.sqrt(t_end)
        return (a + u * (b - a)) ** 2
    lam_start, lam_end = schedule.lam(t_start), schedule.lam(t_end)
    if kind == "logsnr":
        lam = lam_start + u * (lam_end - lam_start)
    else:
        s_max, s_min = jnp.exp(-lam_start), jnp.exp(-lam_end)
        sig = (
            s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))
        ) ** rho
        lam = -jnp.log(sig)
    grid = schedule.t_of_lambda(lam)
    # The ends exactly (t(λ(t)) round-trips only to round-off).
    return grid.at[0].set(t_start).at[-1].set(t_end)
