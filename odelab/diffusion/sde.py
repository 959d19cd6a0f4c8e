r"""Stochastic sampling: the reverse-time SDE of a diffusion model, and its samplers.

**The forward SDE.** The marginals $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$ of any
schedule are those of $dx = f(t)\,x\,dt + g(t)\,dW$ with

$$f = \frac{d\log\alpha}{dt}, \qquad g^2 = \frac{d\sigma^2}{dt} - 2f\sigma^2
  = -2\sigma^2\dot\lambda,$$

($\lambda = \log\alpha - \log\sigma$, so $g^2 > 0$ because $\lambda$ decreases);
both come from `jax.grad` of the schedule, so every schedule has its SDE.

**The reverse-time family.** With the score $\nabla\log p_t(x) = (\alpha D(x, t) -
x)/\sigma^2$ from the denoiser $D$, every member of

$$dx = \Big[f x - \frac{1 + \eta^2}{2}\, g^2\, \nabla\log p_t(x)\Big]dt
  + \eta\, g\, d\bar W_t \qquad (t \text{ decreasing}),$$

carries the marginals $p_t$ from $t_{max}$ down to $t_{min}$ (Karras et al., eq. 6):
$\eta = 0$ is the probability-flow ODE, $\eta = 1$ Anderson's reverse SDE, $\eta > 1$
adds more "churn". In the increasing time $\tau = -t$ its drift is
$-(1 + \eta^2)\dot\lambda\,(\alpha D - x) - f x$ (no division by $\sigma^2$) and its
diffusion $\eta g$: `reverse_sde_terms` gives both for `odelab.solve_sde`.

**In data coordinates** ($y = x/\alpha$, $s = -\lambda = \log\bar\sigma$, $\bar\sigma
= \sigma/\alpha$) the family is semilinear with additive noise,

$$dy = (1 + \eta^2)\,(y - D)\,ds + \eta\sqrt2\,e^{s}\,dW_s \qquad (s
  \text{ decreasing}),$$

($\eta = 0$: the probability-flow ODE of `sampling.probability_flow_term`), which is
what the stochastic exponential integrators of `odelab.solvers.stochastic_exponential`
solve, exactly in the linear part and the noise.

**Samplers** (`sample_sde`), each a solver over a term: Euler–Maruyama on that SDE (a
diffrax solve); DDIM with $\eta > 0$ (Song, Meng & Ermon, eq. 12) as
`ExponentialEulerAncestral`; the SDE variant of DPM-Solver++(2M) (Lu et al.,
diffusers' `algorithm_type="sde-dpmsolver++"`), generalised to the whole family, as
`StochasticExponentialAdams(2)`; EDM's stochastic sampler (Karras et al., Algorithm
2) as `EDMStochasticHeun`. These three draw one standard normal per step from a
Brownian path over their grid; `GridNoisePath` replays given normals instead
(`sample_sde(..., noise=...)`: fed diffusers' per-step `variance_noise`, they
reproduce its DDIM and SDE-DPM-Solver++(2M) to float32 round-off).
Predictor–corrector with Langevin correction (Song et al. 2021) stays a `lax.scan`:
its corrector takes a step size from the norms of the score and of the noise
(averaged over the batch), repeated at a fixed time, which is no step of a solver
over a time grid.

**References:** B. D. O. Anderson, "Reverse-time diffusion equation models",
Stochastic Process. Appl. 12, 1982; Y. Song et al., "Score-Based Generative Modeling
through Stochastic Differential Equations", ICLR 2021, arXiv:2011.13456; J. Song,
C. Meng, S. Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, arXiv:2010.02502;
C. Lu et al., "DPM-Solver++", arXiv:2211.01095; T. Karras et al., "Elucidating the
Design Space of Diffusion-Based Generative Models", NeurIPS 2022, arXiv:2206.00364.
"""

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from .._fixed_step import fixed_step_solve
from ..solve import solve_sde
from ..solvers import (
    EDMStochasticHeun,
    ExponentialEulerAncestral,
    StochasticExponentialAdams,
)
from ..terms import SemilinearTerm
from .sampling import coordinates, probability_flow_term, to_denoiser
from .schedules import AbstractSchedule, time_grid


SDE_SAMPLERS = (
    "euler_maruyama",
    "pc_langevin",
    "ddim_eta",
    "sde_dpmpp_2m",
    "dpmpp_2m_sde",
    "heun_edm_churn",
)
r"""Sampler names for `sample_sde` (`"dpmpp_2m_sde"` is `"sde_dpmpp_2m"` with
$\eta = 1$, diffusers' name)."""

NOISE_SAMPLERS = ("ddim_eta", "sde_dpmpp_2m", "dpmpp_2m_sde", "heun_edm_churn")
"""The samplers of `sample_sde` that take given per-step normals (`noise=`): those
that are a solver over the grid with one normal per step."""

SAMPLER_OPTIONS = {"heun_edm_churn": ("s_churn", "s_tmin", "s_tmax", "s_noise")}
"""The `sampler_options` each sampler of `sample_sde` takes."""


class ReverseSDE(NamedTuple):
    """Drift and diffusion of the reverse-time SDE in $\\tau = -t$, as
    `f(tau, x, cond)` and `g(tau, x, cond)` for `odelab.solve_sde` (diagonal noise;
    `cond` is the tuple of the denoiser's extra arguments)."""

    drift: Callable
    diffusion: Callable


class GridNoisePath(diffrax.AbstractBrownianPath):
    r"""A Brownian path that replays given standard normals, one per cell of a grid.

    On the cell $[t_k, t_{k+1}]$ of the grid `ts` (increasing or decreasing) the
    increment over any sub-interval is

    $$W(b) - W(a) = z_k\,\operatorname{sign}(b - a)\sqrt{|b - a|},$$

    so a fixed-step solver that normalises its step's increment, $z = \Delta W /
    \sqrt{|\Delta t|}$ (`odelab.solvers.stochastic_exponential`), sees exactly $z_k$ on
    step $k$, whatever the grid's spacing. Over whole cells it is a Brownian path
    (cumulative sums at the grid points, linear in between for `evaluate(t)`); a query
    spanning several cells gets $W(b) - W(a)$ of that piecewise-linear path. Like
    `diffrax.UnsafeBrownianPath` it is meant for fixed steps on the grid itself. It
    lets a sampler be fed the noise of another implementation step by step (e.g.
    diffusers' `variance_noise`), which is how `sample_sde(..., noise=...)` uses it.

    **Arguments:**

    - `ts`: the grid, $n + 1$ strictly monotone times, in the time variable the solver
      steps in (for `sample_sde` that is the sampler's coordinates: $-\lambda$ for
      `"ddim_eta"` and `"sde_dpmpp_2m"`, $\bar\sigma$ for `"heun_edm_churn"`).
    - `normals`: the standard normals, shape `(n, *shape)`, row $k$ for the cell from
      `ts[k]` to `ts[k + 1]`.

    **Example:**

    ```python
    path = GridNoisePath(jnp.array([0.0, 0.5, 2.0]), jnp.array([[1.0], [-2.0]]))
    path.evaluate(0.5, 2.0)  # [-2 sqrt(1.5)]
    ```
    """

    ts: jax.Array
    normals: jax.Array
    levy_area: ClassVar = diffrax.BrownianIncrement

    def __init__(self, ts, normals):
        ts, normals = jnp.asarray(ts), jnp.asarray(normals)
        if ts.ndim != 1 or ts.shape[0] < 2:
            raise ValueError(
                f"`ts` must be a 1-D grid of at least 2 times, got shape {ts.shape}."
            )
        if normals.ndim < 1 or normals.shape[0] != ts.shape[0] - 1:
            raise ValueError(
                f"`normals` needs one row per cell of `ts` ({ts.shape[0] - 1}), got "
                f"shape {normals.shape}."
            )
        if not jnp.issubdtype(normals.dtype, jnp.floating):
            raise TypeError(f"`normals` must be floating, got dtype {normals.dtype}.")
        self.ts = ts
        self.normals = normals

    @property
    def shape(self):
        return jax.ShapeDtypeStruct(self.normals.shape[1:], self.normals.dtype)

    @property
    def t0(self):
        return jnp.minimum(self.ts[0], self.ts[-1])

    @property
    def t1(self):
        return jnp.maximum(self.ts[0], self.ts[-1])

    def _cell(self, t):
        """The cell holding `t` (clipped to the grid), and its signed length."""
        forward = self.ts[-1] > self.ts[0]
        before = jnp.where(forward, self.ts < t, self.ts > t)
        k = jnp.clip(jnp.sum(before) - 1, 0, self.ts.shape[0] - 2)
        return k, self.ts[k + 1] - self.ts[k]

    def _value(self, t):
        # W at the grid points: the cumulative increments from ts[0], in the grid's
        # direction; in between, linear.
        dt = jnp.diff(self.ts)
        rows = self.normals.reshape(self.normals.shape[0], -1)
        sizes = (jnp.sqrt(jnp.abs(dt)) * jnp.sign(dt)).astype(rows.dtype)
        steps = rows * sizes[:, None]
        at_grid = jnp.concatenate([jnp.zeros_like(steps[:1]), jnp.cumsum(steps, 0)])
        k, h = self._cell(t)
        frac = jnp.clip((t - self.ts[k]) / h, 0, 1).astype(rows.dtype)
        out = at_grid[k] + frac * steps[k]
        return out.reshape(self.normals.shape[1:])

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        """Implements `diffrax.AbstractBrownianPath.evaluate`: $W(t_0)$, or the
        increment $W(t_1) - W(t_0)$ (class notes)."""
        del left
        t0 = jax.lax.stop_gradient(jnp.asarray(t0))
        if t1 is None:
            w = self._value(t0)
            dt = t0 - self.ts[0]
        else:
            t1 = jax.lax.stop_gradient(jnp.asarray(t1))
            dt = t1 - t0
            k, _ = self._cell(0.5 * (t0 + t1))
            lo = jnp.minimum(self.ts[k], self.ts[k + 1])
            hi = jnp.maximum(self.ts[k], self.ts[k + 1])
            inside = (jnp.minimum(t0, t1) >= lo) & (jnp.maximum(t0, t1) <= hi)
            size = (jnp.sqrt(jnp.abs(dt)) * jnp.sign(dt)).astype(self.normals.dtype)
            w = jnp.where(
                inside, self.normals[k] * size, self._value(t1) - self._value(t0)
            )
        if use_levy:
            return diffrax.BrownianIncrement(dt=dt, W=w)
        return w


def _check_eta(eta, at_most=None, sampler=None):
    if isinstance(eta, jax.core.Tracer):
        return
    value = float(eta)
    if not value >= 0:
        raise ValueError(f"`eta` must be >= 0, got {value}.")
    if at_most is not None and value > at_most:
        raise ValueError(
            f"sampler {sampler!r} needs `eta` in [0, {at_most}] (its fresh noise "
            f"cannot exceed the target noise level), got {value}."
        )


def _rates(schedule, t):
    """$f = d\\log\\alpha/dt$ and $\\dot\\lambda$ at the scalar time `t`."""
    return jax.grad(schedule.log_alpha)(t), jax.grad(schedule.lam)(t)


def reverse_sde_terms(
    denoiser: Callable, schedule: AbstractSchedule, *, eta=1.0
) -> ReverseSDE:
    r"""The reverse-time SDE of `schedule` in the increasing time $\tau = -t$:

    $$dx = \big[-(1 + \eta^2)\,\dot\lambda(t)\,(\alpha(t) D(x, t) - x) - f(t)\,x\big]
      d\tau + \eta\,\sigma(t)\sqrt{-2\dot\lambda(t)}\; dW_\tau, \qquad t = -\tau,$$

    which is $dx = [f x - \frac{1+\eta^2}{2} g^2 \nabla\log p_t]dt + \eta g\,d\bar W$
    (module notes) with $g^2 = -2\sigma^2\dot\lambda$, $\nabla\log p_t = (\alpha D -
    x)/\sigma^2$. Solve it from $\tau = -t_{max}$ to $-t_{min}$ with an Itô solver.

    **Arguments:**

    - `denoiser`: `D(x, t, *cond)` (e.g. from `to_denoiser`).
    - `schedule`: an `odelab.diffusion.schedules` schedule.
    - `eta`: the noise scale $\eta \ge 0$ (0: the probability-flow ODE; 1: the
      reverse SDE).

    **Returns:** `ReverseSDE(drift, diffusion)`, each `(tau, x, cond) -> array`
    shaped like `x` (`noise="diagonal"`).

    **Raises:** `ValueError` for `eta < 0`.

    **Example:**

    ```python
    sde = reverse_sde_terms(denoiser, VPLinear())
    sol = odelab.solve_sde(sde.drift, sde.diffusion, x_T, (-1.0, -1e-3), (),
                           key=key, steps=500)
    ```

    **Reference:** B. D. O. Anderson, "Reverse-time diffusion equation models", 1982;
    Y. Song et al., arXiv:2011.13456, eqs. (6) and (13).
    """
    _check_eta(eta)

    def drift(tau, x, cond):
        t = -tau
        f, lam_dot = (c.astype(x.dtype) for c in _rates(schedule, t))
        alpha = schedule.alpha(t).astype(x.dtype)
        weight = jnp.asarray(1 + eta**2, x.dtype)
        return -weight * lam_dot * (alpha * denoiser(x, t, *cond) - x) - f * x

    def diffusion(tau, x, cond):
        del cond
        t = -tau
        _, lam_dot = _rates(schedule, t)
        g = schedule.sigma(t) * jnp.sqrt(-2 * lam_dot)
        return jnp.broadcast_to(jnp.asarray(eta * g, x.dtype), x.shape)

    return ReverseSDE(drift, diffusion)


def _euler_maruyama(denoiser, schedule, x, times, cond, key, eta, adjoint):
    # A VirtualBrownianTree gives exact increments only where its resolution is finer
    # than every step, and `solve_sde` sets it from the span; the small steps of a
    # logSNR or Karras grid in t could fall inside one cell. So the solve runs in the
    # step index u: on [n, n+1] the SDE with its coefficients frozen at t_n, scaled by
    # Δτ_n (drift) and sqrt(Δτ_n) (diffusion). Its Euler–Maruyama step of size 1 is
    # exactly Euler–Maruyama with step Δτ_n in τ, on unit steps that the tree resolves
    # (tol = 1/4). On a uniform grid the normalised Brownian path is the one of the
    # same solve in τ, so the result equals `solve_sde(*reverse_sde_terms(...))`.
    n = times.shape[0] - 1
    sde = reverse_sde_terms(denoiser, schedule, eta=eta)

    def interval(u, grid):
        # Euler–Maruyama evaluates at step starts only: integer u up to round-off.
        i = jnp.clip(jnp.round(u).astype(jnp.int32), 0, n - 1)
        return -grid[i], grid[i] - grid[i + 1]

    def drift(u, y, args):
        grid, cond = args
        tau, dtau = interval(u, grid)
        return dtau * sde.drift(tau, y, cond)

    def diffusion(u, y, args):
        grid, cond = args
        tau, dtau = interval(u, grid)
        return jnp.sqrt(dtau) * sde.diffusion(tau, y, cond)

    sol = solve_sde(
        drift,
        diffusion,
        x,
        (0.0, float(n)),
        (times, cond),
        key=key,
        solver="euler",
        steps=n,
        adjoint=adjoint,
    )
    return sol.ys[-1]


def _pc_langevin(denoiser, schedule, x, times, cond, key, eta, options):
    snr, corrector_steps, axis_name = options
    sde = reverse_sde_terms(denoiser, schedule, eta=eta)
    alphas = schedule.alpha(times).astype(x.dtype)
    # Song et al.'s α_i = 1 - β_i of the VP chain: the squared α ratio over the step.
    ratios = (alphas[:-1] / alphas[1:]) ** 2
    snr = jnp.asarray(snr, x.dtype)

    def norm(v):
        value = jnp.sqrt(jnp.sum(v**2))
        # Song et al. average the norms over the batch, which keeps the step size
        # steady when one sample's score is small (low dimensions).
        return value if axis_name is None else jax.lax.pmean(value, axis_name)

    def langevin(y, inputs):
        t, ratio, k = inputs
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        score = (alpha.astype(y.dtype) * denoiser(y, t, *cond) - y) / sigma.astype(
            y.dtype
        ) ** 2
        z = jax.random.normal(k, y.shape, y.dtype)
        eps = 2 * ratio * (snr * norm(z) / norm(score)) ** 2
        return y + eps * score + jnp.sqrt(2 * eps) * z, None

    def step(y, inputs):
        t0, t1, ratio, k = inputs
        k_pred, k_corr = jax.random.split(k)
        dtau = t0 - t1
        z = jax.random.normal(k_pred, y.shape, y.dtype)
        y = (
            y
            + dtau * sde.drift(-t0, y, cond)
            + jnp.sqrt(dtau) * sde.diffusion(-t0, y, cond) * z
        )
        m = corrector_steps
        y, _ = jax.lax.scan(
            langevin,
            y,
            (jnp.full((m,), t1), jnp.full((m,), ratio), jax.random.split(k_corr, m)),
        )
        return y, None

    keys = jax.random.split(key, times.shape[0] - 1)
    x, _ = jax.lax.scan(jax.checkpoint(step), x, (times[:-1], times[1:], ratios, keys))
    return x


class _Replay(NamedTuple):
    """Given per-step normals in place of a PRNG key (`sample_sde(..., noise=...)`)."""

    normals: jax.Array


def _brownian(key, x, grid):
    if isinstance(key, _Replay):
        return GridNoisePath(grid, key.normals.astype(x.dtype))
    # Exact N(0, |t1 - t0|) increments on every step, whatever the grid; the solvers
    # normalise them (`odelab.solvers.stochastic_exponential`). Keyed by the interval,
    # so the recomputation of a checkpointed step draws the same noise.
    return diffrax.UnsafeBrownianPath(
        shape=jax.ShapeDtypeStruct(x.shape, x.dtype), key=key
    )


def _additive(scale, x):
    return diffrax.ControlTerm(
        lambda u, y, args: jnp.broadcast_to(scale(u).astype(y.dtype), y.shape), x
    )


def _solve_in(space, drift, scale, solver, schedule, x, times, cond, key, to_zero):
    """Run `solver` on `MultiTerm(drift, ControlTerm(scale, W))` over `times` in the
    coordinates of `space` (`sampling.coordinates`) and return $x$ at the grid's end,
    or, with `to_zero`, after a last step to $\bar\\sigma = 0$ (where the state is
    $x_0$ itself)."""
    coords = coordinates(schedule, space)
    grid = coords.time(times).astype(x.dtype)
    if to_zero:
        grid = jnp.concatenate([grid, jnp.zeros(1, x.dtype)])
    terms = diffrax.MultiTerm(drift, _additive(scale, _brownian(key, x, grid)))
    y0 = x / coords.scale(times[0]).astype(x.dtype)
    n = grid.shape[0] - 1
    y = fixed_step_solve(terms, solver, y0, cond, grid, None, (n,))[0][0]
    return y if to_zero else coords.scale(times[-1]).astype(x.dtype) * y


def _ddim_eta(denoiser, schedule, x, times, cond, key, eta):
    # The probability-flow ODE in data coordinates (y = x/alpha, s = log sigma-bar)
    # and the forward process' noise there, d(sigma-bar^2) = 2 e^{2s} ds.
    drift = probability_flow_term(denoiser, schedule, "data")
    solver = ExponentialEulerAncestral(eta)
    scale = lambda s: jnp.sqrt(2.0) * jnp.exp(s)  # noqa: E731
    return _solve_in("data", drift, scale, solver, schedule, x, times, cond, key, False)


def _sde_dpmpp_2m(denoiser, schedule, x, times, cond, key, eta):
    # In data coordinates the eta-family's drift is (1 + eta^2) times the
    # probability-flow drift y - D, and its diffusion eta sqrt(2) e^s (module notes).
    ode = probability_flow_term(denoiser, schedule, "data")
    eta = jnp.asarray(eta, x.dtype)
    weight = 1 + eta**2
    drift = SemilinearTerm(
        weight * ode.linear.astype(x.dtype),
        lambda s, y, args: weight * ode.nonlinear(s, y, args),
    )
    solver = StochasticExponentialAdams(2, second_order="midpoint")
    scale = lambda s: eta * jnp.sqrt(2.0) * jnp.exp(s)  # noqa: E731
    return _solve_in("data", drift, scale, solver, schedule, x, times, cond, key, False)


def _heun_edm_churn(denoiser, schedule, x, times, cond, key, options, to_zero):
    # Karras' sigma-time (u = sigma-bar, y = x/alpha) and its forward noise
    # g = sqrt(2u). With `to_zero` the last step goes to u = 0: Algorithm 2's final
    # Euler step, churn included, which is the final denoising.
    drift = probability_flow_term(denoiser, schedule, "sigma")
    solver = EDMStochasticHeun(times.shape[0] - 1 + int(to_zero), **options)
    scale = lambda u: jnp.sqrt(2 * u)  # noqa: E731
    return _solve_in(
        "sigma", drift, scale, solver, schedule, x, times, cond, key, to_zero
    )


def _check_noise(noise, sampler, x, n_steps):
    if sampler not in NOISE_SAMPLERS:
        raise ValueError(
            f"`noise` is taken by the samplers {', '.join(NOISE_SAMPLERS)}, not "
            f"{sampler!r}; give it a `key`."
        )
    noise = jnp.asarray(noise)
    want = (n_steps, *x.shape)
    if noise.shape != want:
        raise ValueError(
            f"`noise` must have one row per step of the grid, shape {want}, got "
            f"{noise.shape}."
        )
    return noise


def sample_sde(
    model: Callable,
    x_t,
    schedule: AbstractSchedule,
    *,
    key=None,
    noise=None,
    prediction: str = "eps",
    sampler: str = "euler_maruyama",
    steps: int = 100,
    grid="uniform_t",
    cond=(),
    eta=1.0,
    final_denoise: bool = True,
    snr=0.16,
    corrector_steps: int = 1,
    axis_name=None,
    adjoint="checkpoint",
    sampler_options: dict | None = None,
):
    r"""Sample a diffusion model stochastically, from noise `x_t` at the grid's first
    time to data; returns $x$.

    Samplers, for one step from $s$ to $t < s$ ($D = D(x, s)$, $h = \lambda_t -
    \lambda_s$, $z \sim \mathcal N(0, I)$ fresh each step):

    - `"euler_maruyama"`: Euler–Maruyama on `reverse_sde_terms` in $\tau = -t$, as an
      `odelab.solve_sde` solve on a `VirtualBrownianTree`:
      $x \leftarrow x + \Delta\tau\, F(x) + \eta g(s)\sqrt{\Delta\tau}\, z$.
      Weak order 1.
    - `"pc_langevin"`: that Euler–Maruyama step as predictor, then `corrector_steps`
      Langevin steps at $t$: $x \leftarrow x + \epsilon\,\nabla\log p_t(x) +
      \sqrt{2\epsilon}\,z$ with $\epsilon = 2 a\,(r\|z\|/\|\nabla\log p_t\|)^2$, $r$
      the `snr` and $a = \alpha_s^2/\alpha_t^2$ (Song et al. 2021, Algorithms 4–5,
      where $a = 1 - \beta_i$). With `axis_name` (a `vmap` axis name) the two norms
      are averaged over the batch, as in Song et al.'s code; per sample, they vary
      a lot in low dimension. A `lax.scan` (module notes).
    - `"ddim_eta"`: DDIM with noise (Song, Meng & Ermon, eq. 12), for any schedule:
      $x \leftarrow \alpha_t D + \sigma_t\sqrt{1 - c^2}\,\hat\varepsilon + \sigma_t c
      \, z$ with $\hat\varepsilon = (x - \alpha_s D)/\sigma_s$ and $c = \eta\sqrt{1 -
      e^{-2h}}$; $\eta = 0$ is DDIM, $\eta = 1$ the DDPM posterior (ancestral
      sampling). Needs $0 \le \eta \le 1$. The solver
      `odelab.solvers.ExponentialEulerAncestral` on the probability-flow ODE in data
      coordinates.
    - `"sde_dpmpp_2m"`: the exponential integrator of the $\eta$-family with the
      denoiser linear in $\lambda$ (DPM-Solver++(2M) SDE, "midpoint" form):
      $x \leftarrow \frac{\sigma_t}{\sigma_s}e^{-\eta^2 h}x + \alpha_t(1 - e^{-(1 +
      \eta^2)h})(D + \tfrac12 D_1) + \sigma_t\sqrt{1 - e^{-2\eta^2 h}}\,z$ with $D_1 =
      (D - D_{prev})\,h/h_{prev}$ (0 on the first step). $\eta = 1$ is diffusers'
      `sde-dpmsolver++`, $\eta = 0$ DPM-Solver++(2M); k-diffusion's `eta` is
      $\eta^2$. The first-order step with $\eta = 1$ equals `ddim_eta`'s. The solver
      `odelab.solvers.StochasticExponentialAdams(2)` on the family's SDE in data
      coordinates (module notes).
    - `"dpmpp_2m_sde"`: `"sde_dpmpp_2m"` with $\eta = 1$ (diffusers' and
      k-diffusion's name); needs `eta=1`.
    - `"heun_edm_churn"`: EDM's stochastic sampler (Karras et al., Algorithm 2) in
      $\bar\sigma = \sigma/\alpha$ and $\tilde x = x/\alpha$: raise the noise level to
      $\hat\sigma = (1 + \gamma)\bar\sigma_s$ by adding $S_{noise}\sqrt{\hat\sigma^2 -
      \bar\sigma_s^2}\,z$, $\gamma = \min(S_{churn}/N, \sqrt2 - 1)$ inside $[S_{tmin},
      S_{tmax}]$ (else 0), then a Heun step of the probability-flow ODE from
      $\hat\sigma$ to $\bar\sigma_t$. With `final_denoise` the last step goes to
      $\bar\sigma = 0$ as in Algorithm 2 (churn, then the Euler step, which is $x =
      D(\hat x, \hat\sigma)$), and $N$ counts it. `sampler_options`: `s_churn`
      (default 0, which is `sample(..., sampler="heun_edm")`), `s_tmin` (0), `s_tmax`
      ($\infty$), `s_noise` (1); use `grid="karras"`. `eta` is not used. The solver
      `odelab.solvers.EDMStochasticHeun`.

    **Arguments:**

    - `model`: `model(x, t, *cond)` for one state `x` (vmap over a batch).
    - `x_t`: the starting noise, any array shape the model takes.
    - `schedule`: an `odelab.diffusion.schedules` schedule.
    - `key`: the PRNG key of the sampler's noise (unused, and may be omitted, with
      `noise`).
    - `noise`: instead of `key`, the standard normals of the steps, shape
      `(n_steps, *x_t.shape)`, row $k$ the $z$ of step $k$ (a `GridNoisePath` over the
      sampler's grid): one row per step of the grid, i.e. `steps - 1` on diffusers'
      grids (whose last step is the final denoising, noise-free) and `steps` on the
      others, plus one for `"heun_edm_churn"` with `final_denoise` (its last step,
      to $\bar\sigma = 0$, churns). E.g. diffusers' `variance_noise` of each `step`
      but the last, to reproduce its `DDIMScheduler(eta=...)` or
      `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")` exactly
      (`tests/diffusion/test_diffusers_stochastic_parity.py`). For `"ddim_eta"`,
      `"sde_dpmpp_2m"`, `"dpmpp_2m_sde"` and `"heun_edm_churn"`.
    - `prediction`: what `model` predicts (`sampling.PREDICTIONS`).
    - `sampler`: a name in `SDE_SAMPLERS`.
    - `steps`, `grid`: the time grid (`time_grid`'s kinds, or an array of times).
    - `cond`: extra arguments for `model` (a tuple).
    - `eta`: the noise scale $\eta \ge 0$ (see above; may be traced).
    - `final_denoise`: end with $x = D(x, t_{last})$, the step to $\sigma = 0$.
    - `snr`, `corrector_steps`, `axis_name`: the Langevin corrector of
      `"pc_langevin"` (Song et al.'s defaults: $r = 0.16$, one step).
    - `adjoint`: for `"euler_maruyama"`, as in `odelab.solve_sde`; the other samplers
      scan their solver's step over the grid (checkpointed per step, the discrete
      gradients of `diffeqsolve` on that grid) and are differentiated directly.
    - `sampler_options`: keyword options of the sampler (`SAMPLER_OPTIONS`).

    **Returns:** the sample, shaped like `x_t`.

    On diffusers' `"leading"` grid `"ddim_eta"` takes `DDIMScheduler`'s timesteps
    (ratio $N/$`steps`, ending at 0), as `sample(..., sampler="ddim")` does.

    **Raises:** `ValueError` for an unknown `sampler`, `prediction` or option,
    `noise` of the wrong shape or for a sampler outside `NOISE_SAMPLERS`, neither
    `noise` nor `key`,
    `steps < 1`, `eta < 0` (or `eta > 1` with `"ddim_eta"`, `eta != 1` with
    `"dpmpp_2m_sde"`), `snr <= 0`, `corrector_steps < 0`, `s_churn < 0`,
    `s_noise <= 0` or `s_tmin > s_tmax`; `TypeError` for a non-floating `x_t`.

    **Example:**

    ```python
    keys = jax.random.split(key, 8)
    x0 = jax.vmap(lambda k, x: sample_sde(eps_model, x, EDM(), key=k, grid="karras",
                                         sampler="heun_edm_churn", steps=32,
                                         sampler_options=dict(s_churn=40.0)))(
        keys, noise)
    ```

    **References:** Y. Song et al., arXiv:2011.13456 (Euler–Maruyama, Algorithms
    4–5); J. Song, C. Meng, S. Ermon, arXiv:2010.02502, eq. (12); C. Lu et al.,
    arXiv:2211.01095 (SDE-DPM-Solver++); T. Karras et al., arXiv:2206.00364,
    Algorithm 2.
    """
    if sampler not in SDE_SAMPLERS:
        raise ValueError(
            f"unknown sampler {sampler!r}; valid: {', '.join(SDE_SAMPLERS)}."
        )
    options = dict(sampler_options or {})
    valid = SAMPLER_OPTIONS.get(sampler, ())
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"sampler {sampler!r} takes no option {unknown[0]!r}; valid: "
            f"{', '.join(valid) or 'none'}."
        )
    if isinstance(grid, str) and steps < 1:
        raise ValueError(f"`steps` must be at least 1, got {steps}.")
    if sampler == "ddim_eta":
        _check_eta(eta, at_most=1.0, sampler=sampler)
    elif sampler == "dpmpp_2m_sde":
        if not isinstance(eta, jax.core.Tracer) and float(eta) != 1.0:
            raise ValueError(
                f"'dpmpp_2m_sde' is 'sde_dpmpp_2m' with eta = 1, got eta={eta}; "
                "use sampler='sde_dpmpp_2m' for another eta."
            )
        eta = 1.0
    elif sampler != "heun_edm_churn":
        _check_eta(eta)
    if sampler == "pc_langevin":
        if not isinstance(snr, jax.core.Tracer) and not float(snr) > 0:
            raise ValueError(f"`snr` must be positive, got {snr}.")
        if corrector_steps < 0:
            raise ValueError(f"`corrector_steps` must be >= 0, got {corrector_steps}.")
    denoiser = to_denoiser(model, prediction, schedule)
    x = jnp.asarray(x_t)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`x_t` must be a floating array, got dtype {x.dtype}.")
    # DDIMScheduler's "leading" differs from the multistep schedulers' (as in
    # `sampling.sample`); its other grids coincide with theirs or are none.
    ddim_leading = sampler == "ddim_eta" and isinstance(grid, str) and grid == "leading"
    convention = "ddim" if ddim_leading else "multistep"
    times = jnp.asarray(time_grid(schedule, steps, grid, convention=convention))
    times = times.astype(x.dtype)
    cond = tuple(cond)
    if noise is not None:
        to_zero = int(sampler == "heun_edm_churn" and bool(final_denoise))
        key = _Replay(_check_noise(noise, sampler, x, times.shape[0] - 1 + to_zero))
    elif key is None:
        raise ValueError("`sample_sde` needs `key` (or the steps' `noise`).")
    if sampler == "heun_edm_churn":
        if times.shape[0] > 1 or final_denoise:
            args = (denoiser, schedule, x, times, cond, key, options, final_denoise)
            x = _heun_edm_churn(*args)
        return x
    if times.shape[0] > 1:
        if sampler == "euler_maruyama":
            x = _euler_maruyama(denoiser, schedule, x, times, cond, key, eta, adjoint)
        elif sampler == "pc_langevin":
            options = (snr, corrector_steps, axis_name)
            x = _pc_langevin(denoiser, schedule, x, times, cond, key, eta, options)
        elif sampler == "ddim_eta":
            x = _ddim_eta(denoiser, schedule, x, times, cond, key, eta)
        else:
            x = _sde_dpmpp_2m(denoiser, schedule, x, times, cond, key, eta)
    if final_denoise:
        x = denoiser(x, times[-1], *cond)
    return x
