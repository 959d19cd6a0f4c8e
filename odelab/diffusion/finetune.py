r"""Gradients through a sampler, applied: optimising the starting noise, and
fine-tuning a model's weights against a differentiable reward.

Both differentiate $x_0 = \Phi_\theta(x_T)$, the sampler's map from noise to data
(`odelab.diffusion.sample`), with any of its adjoints: `"checkpoint"` (the discrete
gradient), `"adjoint_dpm"` (AdjointDPM's continuous exponential adjoint, memory flat in
the number of steps) or, for `bdia`/`edict`, `"reversible"`. The batch is one state of
the probability-flow ODE (the model is vmapped inside), which on a fixed grid is the
same solve as a vmap over samples, with one adjoint pass for all of them.

**Noise optimisation** minimises, over the starting noise,

$$J(x_T) = \tfrac1B\sum_i \ell\big(\Phi(x_T^{(i)})\big) + w\,\tfrac1B\sum_i
\tfrac12|x_T^{(i)}|^2,$$

a loss $\ell$ on the samples plus the negative log-density of the $N(0, I)$ prior on
$x_T$ (up to a constant), which keeps $x_T$ where the model was trained (a MAP
estimate of the noise; Wallace et al.'s DOODL and Ben-Hamu et al.'s D-Flow optimise
the same quantity with other priors).

**Reward fine-tuning** maximises $E_{x_T}[r(\Phi_\theta(x_T))]$ over the weights
$\theta$ by backpropagating through the sampler (DRaFT, AlignProp, AdjointDPM's
fine-tuning), minus $w$ times a KL regulariser towards the pretrained model
$\theta_0$: the Girsanov bound on the KL between the two models' reverse-SDE path
measures, which bounds the KL between their samples,

$$\mathrm{KL}(p_\theta \,\|\, p_{\theta_0}) \le \tfrac12\int g(t)^2\,
E\,|s_\theta - s_{\theta_0}|^2\,dt
= \int_{\lambda_{min}}^{\lambda_{max}} E\,|\hat\varepsilon_\theta(x_t, t) -
\hat\varepsilon_{\theta_0}(x_t, t)|^2\,d\lambda,$$

the second form for any VP schedule ($g^2/\sigma^2 = \beta/\sigma^2 = -2\,d\lambda/dt$,
Kingma et al.'s VDM identity), estimated with $\lambda$ uniform and $x_t = \alpha x_0
+ \sigma\varepsilon$ from the fine-tuned model's own samples $x_0$ (held fixed in the
gradient): the path-space KL of Fan et al.'s DPOK and Uehara et al.'s entropy-
regularised control, in the continuous-time form. It is a bound for the stochastic
sampler; the ODE sampler used here shares its marginals only for an exact score, so
for the ODE it is a principled regulariser rather than a certified bound.

**References:** K. Clark, P. Vicol, K. Swersky, D. Fleet, "Directly Fine-Tuning
Diffusion Models on Differentiable Rewards" (DRaFT), ICLR 2024, arXiv:2309.17400;
M. Prabhudesai et al., "Aligning Text-to-Image Diffusion Models with Reward
Backpropagation" (AlignProp), arXiv:2310.03739; J. Pan et al., "AdjointDPM",
ICLR 2024, arXiv:2307.10711; Y. Fan et al., "DPOK", NeurIPS 2023, arXiv:2305.16381;
M. Uehara et al., "Fine-Tuning of Continuous-Time Diffusion Models as
Entropy-Regularized Control", arXiv:2402.15194; D. Kingma et al., "Variational
Diffusion Models", NeurIPS 2021, arXiv:2107.00630; B. Wallace et al., "End-to-End
Diffusion Latent Optimization Improves Classifier Guidance" (DOODL), ICCV 2023;
H. Ben-Hamu et al., "D-Flow", ICML 2024, arXiv:2402.14017.
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .sampling import sample
from .schedules import AbstractSchedule


def batched(model: Callable) -> Callable:
    """`model(x, t)` for one state as a model of a batch `x` (shape `(batch, ...)`)
    at one time."""
    return lambda x, t: jax.vmap(model, (0, None))(x, t)


def sampler_map(
    model: Callable,
    schedule: AbstractSchedule,
    *,
    sampler: str = "dpmpp_2m",
    steps: int = 10,
    grid="logsnr",
    adjoint: str = "adjoint_dpm",
) -> Callable:
    """$x_T \\mapsto x_0$ for a batch `x_T` (shape `(batch, ...)`) of the per-sample
    eps model `model(x, t)`: `sample` with the batch as one state."""
    return lambda x_t: sample(
        batched(model),
        x_t,
        schedule,
        sampler=sampler,
        steps=steps,
        grid=grid,
        adjoint=adjoint,
    )


def kl_bound(model, reference, schedule: AbstractSchedule, x0, key, draws: int = 4):
    r"""A Monte-Carlo estimate of $\int E|\hat\varepsilon_\theta -
    \hat\varepsilon_{\theta_0}|^2\,d\lambda$ (module notes), the path-space KL bound
    between the eps models `model` and `reference`, at `draws` noisings
    $x_t = \alpha x_0 + \sigma\varepsilon$ of each sample in `x0` (shape
    `(batch, dim)`), $\lambda$ uniform over the schedule's range. Gradients flow to
    `model` only."""
    x0 = jax.lax.stop_gradient(x0)
    lam_lo = schedule.lam(jnp.asarray(schedule.t_max, x0.dtype))
    lam_hi = schedule.lam(jnp.asarray(schedule.t_min, x0.dtype))
    lam_key, eps_key = jax.random.split(key)
    n = draws * x0.shape[0]
    x0 = jnp.tile(x0, (draws, 1))
    lam = jax.random.uniform(lam_key, (n,), x0.dtype, lam_lo, lam_hi)
    t = schedule.t_of_lambda(lam)
    eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
    x_t = schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps
    ref = jax.lax.stop_gradient(jax.vmap(reference)(x_t, t))
    diff = jnp.sum((jax.vmap(model)(x_t, t) - ref) ** 2, -1)
    return (lam_hi - lam_lo) * jnp.mean(diff)


class NoiseOptimization(NamedTuple):
    """What `optimize_noise` returns."""

    x_t: jax.Array
    """The optimised noise, shape of `x_T`."""
    samples: jax.Array
    """The samples of the optimised noise."""
    losses: jax.Array
    """The objective $J$ before each iteration, shape `(iterations,)`."""
    history: jax.Array
    """The noise before each iteration and after the last, `(iterations + 1, *x_T)`."""


def optimize_noise(
    model: Callable,
    x_t,
    schedule: AbstractSchedule,
    loss_fn: Callable,
    *,
    sampler: str = "dpmpp_2m",
    steps: int = 10,
    grid="logsnr",
    adjoint: str = "adjoint_dpm",
    iterations: int = 100,
    learning_rate: float = 0.05,
    prior_weight: float = 0.1,
) -> NoiseOptimization:
    r"""Optimise the starting noise so that the samples minimise `loss_fn`, by Adam on
    $J(x_T) = \mathrm{mean}_i\,\ell(\Phi(x_T^{(i)})) + w\,\mathrm{mean}_i\,\tfrac12
    |x_T^{(i)}|^2$ (module notes), the gradient taken through the sampler.

    **Arguments:**

    - `model`: the eps model `model(x, t)` for one sample.
    - `x_t`: the initial noise, shape `(batch, ...)`.
    - `schedule`: the model's noise schedule.
    - `loss_fn`: $\ell$, a differentiable loss of one sample, returning a scalar.
    - `sampler`, `steps`, `grid`, `adjoint`: passed to `sample`.
    - `iterations`, `learning_rate`: Adam's iterations and step size.
    - `prior_weight`: $w \ge 0$, the weight of the Gaussian prior term.

    **Returns:** a `NoiseOptimization`.

    **Raises:** `ValueError` for `iterations < 1` or a negative `prior_weight`.

    **Example:**

    ```python
    in_disc = lambda x: jax.nn.softplus(jnp.linalg.norm(x - centre) - 0.5)
    out = optimize_noise(eps_model, x_T, VPLinear(), in_disc, iterations=50)
    ```
    """
    if iterations < 1:
        raise ValueError(f"`iterations` must be >= 1; got {iterations}.")
    if not prior_weight >= 0:
        raise ValueError(f"`prior_weight` must be >= 0; got {prior_weight}.")
    solve = sampler_map(
        model, schedule, sampler=sampler, steps=steps, grid=grid, adjoint=adjoint
    )

    def objective(x):
        prior = 0.5 * jnp.mean(jnp.sum(x.reshape(x.shape[0], -1) ** 2, -1))
        return jnp.mean(jax.vmap(loss_fn)(solve(x))) + prior_weight * prior

    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        x, opt_state = carry
        loss, grad = jax.value_and_grad(objective)(x)
        updates, opt_state = optimizer.update(grad, opt_state, x)
        return (optax.apply_updates(x, updates), opt_state), (loss, x)

    @jax.jit
    def run(x):
        (x, _), (losses, xs) = jax.lax.scan(
            step, (x, optimizer.init(x)), None, iterations
        )
        return x, solve(x), losses, jnp.concatenate([xs, x[None]])

    return NoiseOptimization(*run(jnp.asarray(x_t)))


class FineTuning(NamedTuple):
    """What `finetune_reward` returns."""

    model: eqx.Module
    """The fine-tuned model."""
    rewards: jax.Array
    """The mean reward of each iteration's batch (before its update)."""
    kls: jax.Array
    """The KL bound (`kl_bound`) of each iteration's batch."""
    losses: jax.Array
    """The objective, $-\\text{reward} + w\\,\\text{KL}$, of each iteration."""


def finetune_reward(
    model: eqx.Module,
    schedule: AbstractSchedule,
    reward_fn: Callable,
    *,
    key,
    shape: tuple[int, ...],
    sampler: str = "dpmpp_2m",
    steps: int = 10,
    grid="logsnr",
    adjoint: str = "adjoint_dpm",
    kl_weight: float = 0.1,
    iterations: int = 100,
    batch: int = 256,
    learning_rate: float = 1e-3,
    kl_draws: int = 4,
) -> FineTuning:
    r"""Fine-tune the weights of an eps model to maximise the mean reward of its
    samples, by Adam on $-\mathrm{mean}_i\,r(\Phi_\theta(x_T^{(i)})) + w\,
    \mathrm{KL}(\theta, \theta_0)$ with fresh noise $x_T \sim N(0, I)$ each iteration,
    the gradient taken through the sampler; the KL term is `kl_bound` towards the
    model as given (module notes).

    **Arguments:**

    - `model`: the pretrained eps model, an `eqx.Module` `model(x, t)` for one sample;
      its floating arrays are fine-tuned.
    - `schedule`: its noise schedule.
    - `reward_fn`: $r$, a differentiable reward of one sample, returning a scalar.
    - `key`: PRNG key for the noise and the KL estimate.
    - `shape`: the shape of one sample (e.g. `(2,)`).
    - `sampler`, `steps`, `grid`, `adjoint`: passed to `sample`.
    - `kl_weight`: $w \ge 0$.
    - `iterations`, `batch`, `learning_rate`: Adam's iterations, samples per
      iteration, step size.
    - `kl_draws`: noisings per sample in the KL estimate.

    **Returns:** a `FineTuning`.

    **Raises:** `ValueError` for `iterations < 1`, `batch < 1` or a negative
    `kl_weight`.

    **Example:**

    ```python
    tuned = finetune_reward(model, VPLinear(), lambda x: x[0], key=key, shape=(2,))
    ```
    """
    if iterations < 1 or batch < 1:
        raise ValueError(
            f"`iterations` and `batch` must be >= 1; got {iterations}, {batch}."
        )
    if not kl_weight >= 0:
        raise ValueError(f"`kl_weight` must be >= 0; got {kl_weight}.")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    reference = model
    dtype = jnp.result_type(*jax.tree.leaves(params))
    optimizer = optax.adam(learning_rate)

    def objective(params, key):
        tuned = eqx.combine(params, static)
        noise_key, kl_key = jax.random.split(key)
        x_t = jax.random.normal(noise_key, (batch, *shape), dtype)
        solve = sampler_map(
            tuned, schedule, sampler=sampler, steps=steps, grid=grid, adjoint=adjoint
        )
        x0 = solve(x_t)
        reward = jnp.mean(jax.vmap(reward_fn)(x0))
        kl = kl_bound(tuned, reference, schedule, x0, kl_key, kl_draws)
        return -reward + kl_weight * kl, (reward, kl)

    def step(carry, key):
        params, opt_state = carry
        (loss, (reward, kl)), grads = jax.value_and_grad(objective, has_aux=True)(
            params, key
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (reward, kl, loss)

    @jax.jit
    def run(params, key):
        carry = (params, optimizer.init(params))
        keys = jax.random.split(key, iterations)
        (params, _), history = jax.lax.scan(step, carry, keys)
        return params, history

    params, (rewards, kls, losses) = run(params, key)
    return FineTuning(eqx.combine(params, static), rewards, kls, losses)
