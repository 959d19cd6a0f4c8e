r"""Sampling a diffusion or flow model as an ordinary solve of the probability-flow ODE.

**Model adapters.** A network predicts one of: the noise `"eps"`, the data `"x0"`,
`"v"` ($v = \alpha\varepsilon - \sigma x_0$), the `"score"`, or the `"flow"` velocity
$u = \dot\alpha x_0 + \dot\sigma \varepsilon$. `to_denoiser` turns any of them into the
denoiser $D(x, t) \approx E[x_0 \mid x_t = x]$, using $x = \alpha x_0 + \sigma
\varepsilon$:

- eps: $D = (x - \sigma\hat\varepsilon)/\alpha$; score: $D = (x + \sigma^2 s)/\alpha$;
- v: $D = (\alpha x - \sigma v)/(\alpha^2 + \sigma^2)$;
- flow: $D = (\sigma u - \dot\sigma x)/(\sigma\dot\alpha - \dot\sigma\alpha)$.

**The ODE.** In the coordinates $\tilde x = x/\alpha$, $s = \log(\sigma/\alpha) =
-\lambda$, the probability-flow ODE is semilinear with a constant linear part:

$$\frac{d\tilde x}{ds} = \tilde x - D(\alpha \tilde x, t(s)),$$

so every exponential integrator of `odelab.solvers.exponential` is a sampler (design
principle 3). Exponential Euler in these coordinates *is* DDIM (η = 0), step for step:
$x_{n+1} = \alpha_{n+1} D_n + \sigma_{n+1}(x_n - \alpha_n D_n)/\sigma_n$. Higher
orders: `etdrk2`, `etdrk4`, and the exponential Adams methods (multistep on the
denoiser, interpolated in $s = -\lambda$: the data-prediction multistep family of
DPM-Solver++ and DEIS, with exact φ-function weights). Not yet here: BDIA and EDICT
sampling (their papers combine states in $x$, not $\tilde x$: the generic
`odelab.solvers.BDIA`/`EDICT` over DDIM in these coordinates are different methods,
and EDICT's generic form is unstable on this ODE), stochastic samplers, and
diffusers-compatible grids.

**References:** J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models",
ICLR 2021; C. Lu et al., "DPM-Solver++", arXiv:2211.01095; Q. Zhang, Y. Chen,
"Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS), ICLR 2023;
C. Saharia et al., "Photorealistic Text-to-Image Diffusion Models..." (dynamic
thresholding), 2022; J. Ho, T. Salimans, "Classifier-Free Diffusion Guidance", 2022.
"""

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp

from .. import solve
from ..solvers import ETDRK2, ETDRK4, ExponentialAdams, ExponentialEuler
from ..terms import SemilinearTerm
from .schedules import AbstractSchedule, time_grid


PREDICTIONS = ("eps", "x0", "v", "score", "flow")

SAMPLERS: dict[str, tuple[Callable[[], diffrax.AbstractSolver], int]] = {
    "ddim": (ExponentialEuler, 1),
    "etdrk2": (ETDRK2, 2),
    "etdrk4": (ETDRK4, 4),
    "exponential_adams2": (lambda: ExponentialAdams(2), 2),
    "exponential_adams3": (lambda: ExponentialAdams(3), 3),
}
"""Sampler names: (solver factory, order, which is also the fewest steps accepted)."""


def to_denoiser(model: Callable, prediction: str, schedule: AbstractSchedule):
    """Wrap `model(x, t, *cond)`, predicting `prediction`, as a denoiser
    `D(x, t, *cond)` (module notes)."""
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}."
        )

    def denoiser(x, t, *cond):
        out = model(x, t, *cond)
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        if prediction == "x0":
            return out
        if prediction == "eps":
            return (x - sigma * out) / alpha
        if prediction == "score":
            return (x + sigma**2 * out) / alpha
        if prediction == "v":
            return (alpha * x - sigma * out) / (alpha**2 + sigma**2)
        d_alpha = jax.grad(schedule.alpha)(t)
        d_sigma = jax.grad(schedule.sigma)(t)
        return (sigma * out - d_sigma * x) / (sigma * d_alpha - d_sigma * alpha)

    return denoiser


def classifier_free_guidance(model: Callable, scale, null_cond):
    """`m(x, t, cond) = m(x, t, null) + scale·(m(x, t, cond) - m(x, t, null))`."""

    def guided(x, t, cond):
        uncond = model(x, t, null_cond)
        return uncond + scale * (model(x, t, cond) - uncond)

    return guided


def dynamic_thresholding(denoiser: Callable, percentile: float = 0.995):
    """Imagen's dynamic thresholding of the predicted data: with $q$ the `percentile`
    of $|D|$ (per sample), clip $D$ to $[-\\max(1, q), \\max(1, q)]$ and rescale."""

    def thresholded(x, t, *cond):
        d = denoiser(x, t, *cond)
        q = jnp.maximum(jnp.quantile(jnp.abs(d), percentile), 1.0)
        return jnp.clip(d, -q, q) / q

    return thresholded


def probability_flow_term(denoiser: Callable, schedule: AbstractSchedule):
    r"""The probability-flow ODE as `SemilinearTerm(1, N)` in $(\tilde x, s)$ with
    $N(s, \tilde x, \text{cond}) = -D(\alpha(t)\tilde x, t)$, $t = t(-s)$."""

    def nonlinear(s, x_tilde, cond):
        t = schedule.t_of_lambda(-s)
        d = denoiser(schedule.alpha(t) * x_tilde, t, *cond)
        return -d

    return SemilinearTerm(jnp.asarray(1.0), nonlinear)


def sample(
    model: Callable,
    x_t,
    schedule: AbstractSchedule,
    *,
    prediction: str = "eps",
    sampler: str = "ddim",
    steps: int = 10,
    grid="logsnr",
    cond=(),
    adjoint="checkpoint",
):
    r"""Solve the probability-flow ODE from noise `x_t` (at `schedule.t_max`, or the
    grid's first time) to data (the grid's last time); returns $x$ there.

    **Arguments:**

    - `model`: `model(x, t, *cond)` for one state `x` (vmap over a batch).
    - `x_t`: the starting noise, any array shape the model takes.
    - `schedule`: an `odelab.diffusion.schedules` schedule.
    - `prediction`: what `model` predicts (`PREDICTIONS`).
    - `sampler`: a name in `SAMPLERS`, or any `diffrax.AbstractSolver` (it then
      solves the same term).
    - `steps`, `grid`: the time grid (`time_grid`'s kinds, or an array of times).
    - `cond`: extra arguments for `model` (a tuple; e.g. class labels).
    - `adjoint`: as in `odelab.solve` (gradients flow to `x_t`, `cond` and arrays in
      `model`).

    **Example:**

    ```python
    x0 = sample(eps_model, jax.random.normal(key, (8,)), VPLinear(), steps=10,
                sampler="exponential_adams2")
    ```
    """
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(
                f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}, or a "
                "diffrax solver."
            )
        make, order = SAMPLERS[sampler]
        if steps < order:
            raise ValueError(
                f"sampler {sampler!r} is of order {order} and needs steps >= {order}, "
                f"got steps={steps}."
            )
        solver = make()
    else:
        solver = sampler
    times = time_grid(schedule, steps, grid)
    denoiser = to_denoiser(model, prediction, schedule)
    term = probability_flow_term(denoiser, schedule)
    s_grid = -schedule.lam(times)
    x_tilde = x_t / schedule.alpha(times[0])
    sol = solve(
        term,
        x_tilde,
        jnp.stack([s_grid[0], s_grid[-1]]),
        tuple(cond),
        solver=solver,
        stepsize_controller=diffrax.StepTo(ts=s_grid),
        adjoint=adjoint,
        max_steps=s_grid.shape[0],
    )
    return schedule.alpha(times[-1]) * sol.ys[-1]
