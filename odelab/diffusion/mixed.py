r"""Mixed ODE–SDE sampling (MixGRPO): stochastic steps inside a window, the
probability-flow ODE outside it, and the Gaussian log-probabilities of the stochastic
steps for policy-gradient training (Flow-GRPO, DanceGRPO, MixGRPO).

**The SDE.** Flow-GRPO turns a flow model's ODE $dx = v\,dt$ into the SDE with the
same marginals

$$dx = \Big[v + \frac{\sigma_t^2}{2t}\big(x + (1 - t)v\big)\Big]dt + \sigma_t\,dW,
  \qquad \sigma_t = a\sqrt{\frac{t}{1 - t}},$$

($t$ decreasing, $a$ the "noise level", 0.7 in Flow-GRPO and MixGRPO). Since $-(x +
(1-t)v)/t$ is the score of rectified flow, its drift is $v - \frac{\sigma_t^2}{2}
\nabla\log p_t$: the member $\sigma_t = \eta\, g(t)$ of the reverse-SDE family of
`odelab.diffusion.sde` ($dx = [f x - \frac{1+\eta^2}{2}g^2\nabla\log p_t]dt + \eta g\,
d\bar W$, $g^2 = -2\sigma^2\dot\lambda$), with $g^2 = 2t/(1-t)$ for rectified flow, so
$a = \sqrt2\,\eta$. Here the family is used as it stands, so every schedule has its
Flow-GRPO SDE: `noise_level=a` means $\eta = a/\sqrt2$, i.e. the diffusion
$a\,\sigma(t)\sqrt{-\dot\lambda(t)}$.

**One stochastic step** (Euler–Maruyama from $t_n$ to $t_{n+1} < t_n$, $\Delta =
t_n - t_{n+1}$) is the Gaussian policy

$$\pi(x_{n+1} \mid x_n) = \mathcal N\big(\mu_n, s_n^2 I\big), \qquad
  \mu_n = x_n + \Delta\, F(x_n, t_n), \quad s_n = \eta\, g(t_n)\sqrt\Delta,$$

with $F$ the drift of `reverse_sde_terms` in $\tau = -t$; for rectified flow,
$\mu_n = x_n\big(1 - \frac{\sigma_t^2\Delta}{2t}\big) - v\,\Delta\big(1 +
\frac{\sigma_t^2(1-t)}{2t}\big)$ and $s_n = \sigma_t\sqrt\Delta$, Flow-GRPO's step.
Its log-density keeps every constant, $\log\pi = -\frac{|x_{n+1} - \mu_n|^2}{2 s_n^2}
- \log s_n - \frac12\log 2\pi$ per element, and is reduced over the elements of one
sample by their **mean**, as Flow-GRPO's and MixGRPO's code do (`reduce="sum"` gives
the exact joint log-density, `"none"` the elements).

**Mixed sampling.** MixGRPO samples with this SDE only on a window of $w$ consecutive
steps and with the ODE elsewhere, so the policy ratio is needed only on $w$ steps;
the window slides across training (`window_at`). Outside the window the steps are
ordinary odelab solves (`sampling.solve_on_grid` with any `SAMPLERS` preset): `"euler"`
is MixGRPO's ODE step, a higher-order sampler (`"dpmpp_2m"`, optionally on a coarser
grid after the window, `post_steps`) is MixGRPO-Flash.

**Design note.** The window is a `lax.scan` over an explicit Euler–Maruyama transition
rather than a diffrax solver: each step's Gaussian $(\mu_n, s_n)$ is what both the
sampler and the re-scoring of a recorded trajectory (`trajectory_log_probs`, GRPO's
ratio under the current parameters) need, and one function (`sde_transition`) serves
both, so the two agree to round-off.

**References:** J. Li, Y. Cui et al., "MixGRPO: Unlocking Flow-based GRPO Efficiency
with Mixed ODE-SDE", 2025, arXiv:2507.21802; J. Liu et al., "Flow-GRPO: Training Flow
Matching Models via Online RL", 2025, arXiv:2505.05470; Z. Xue et al., "DanceGRPO:
Unleashing GRPO on Visual Generation", 2025, arXiv:2505.07818.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .sampling import build_sampler, preset_of, solve_on_grid, to_denoiser
from .schedules import DIFFUSERS_GRIDS, AbstractSchedule, time_grid
from .sde import reverse_sde_terms


REDUCTIONS = ("mean", "sum", "none")
"""How `transition_log_prob` reduces the elementwise log-density over one sample."""


class MixedSample(NamedTuple):
    """What `sample_mixed` returns."""

    x: jax.Array
    """The sample (at the grid's last time, or denoised with `final_denoise`)."""
    log_probs: jax.Array
    """`[window_size]` log-probabilities of the window's steps (`[window_size,
    *x.shape]` with `reduce="none"`), the recorded states held fixed."""
    states: jax.Array
    """`[window_size + 1, *x.shape]`: $x$ at the window's times (the recorded
    trajectory that `trajectory_log_probs` re-scores); empty for an empty window."""
    times: jax.Array
    """`[window_size + 1]`: the window's times, decreasing."""


def _eta_of(eta, noise_level, size=None):
    """η from `eta` or Flow-GRPO's `noise_level` a = √2 η; checked where concrete."""
    if (eta is None) == (noise_level is None):
        raise ValueError(
            "pass exactly one of `eta` (the reverse-SDE family's η) and `noise_level` "
            "(Flow-GRPO's a = sqrt(2)·η, e.g. 0.7)."
        )
    name, value = ("eta", eta) if eta is not None else ("noise_level", noise_level)
    value = jnp.asarray(value)
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != size):
        per_step = "" if size is None else f" or have one entry per step ({size})"
        raise ValueError(
            f"`{name}` must be a scalar{per_step}, got shape {value.shape}."
        )
    if not isinstance(value, jax.core.Tracer):
        v = np.asarray(value)
        if not (np.all(np.isfinite(v)) and np.all(v > 0)):
            raise ValueError(
                f"`{name}` must be positive and finite (the stochastic steps need noise "
                f"for a log-density), got {v}."
            )
    return value if eta is not None else value / math.sqrt(2.0)


def _moments(denoiser, schedule, x, t, t_next, eta, cond):
    sde = reverse_sde_terms(denoiser, schedule, eta=eta)
    dtau = (t - t_next).astype(x.dtype)
    mean = x + dtau * sde.drift(-t, x, cond)
    std = jnp.sqrt(dtau) * sde.diffusion(-t, x, cond)
    return mean, std


def _log_density(x_next, mean, std, reduce):
    z = (x_next - mean) / std
    half_log_2pi = jnp.asarray(0.5 * math.log(2 * math.pi), mean.dtype)
    elementwise = -0.5 * z**2 - jnp.log(std) - half_log_2pi
    if reduce == "mean":
        return jnp.mean(elementwise)
    if reduce == "sum":
        return jnp.sum(elementwise)
    return elementwise


def _check_reduce(reduce):
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; valid: {', '.join(REDUCTIONS)}.")


def sde_transition(
    model: Callable,
    x,
    t,
    t_next,
    schedule: AbstractSchedule,
    *,
    prediction: str = "flow",
    eta=None,
    noise_level=None,
    cond=(),
):
    r"""The Gaussian $\mathcal N(\mu, s^2 I)$ of one Euler–Maruyama step of the
    reverse SDE from `t` to `t_next < t` (module notes): $\mu = x + \Delta F(x, t)$,
    $s = \eta g(t)\sqrt\Delta$, $\Delta = t - t_{next}$.

    **Arguments:**

    - `model`: `model(x, t, *cond)` for one state `x`, predicting `prediction`.
    - `x`: the state at `t`.
    - `t`, `t_next`: the step's times (scalars, `t_next < t`).
    - `schedule`: an `odelab.diffusion.schedules` schedule.
    - `prediction`: what `model` predicts (`sampling.PREDICTIONS`).
    - `eta` or `noise_level`: the noise, $\eta > 0$, or Flow-GRPO's $a = \sqrt2\eta$.
    - `cond`: extra arguments for `model` (a tuple).

    **Returns:** `(mean, std)`, both shaped like `x`.

    **Raises:** `ValueError` unless exactly one of `eta`, `noise_level` is given, or
    for a non-positive one.

    **Example:**

    ```python
    mean, std = sde_transition(flow_model, x, 0.7, 0.6, RectifiedFlow(),
                               noise_level=0.7)
    ```

    **Reference:** J. Liu et al., arXiv:2505.05470 (the rectified-flow case).
    """
    x = jnp.asarray(x)
    eta = _eta_of(eta, noise_level).astype(x.dtype)
    denoiser = to_denoiser(model, prediction, schedule)
    t, t_next = (jnp.asarray(s, x.dtype) for s in (t, t_next))
    return _moments(denoiser, schedule, x, t, t_next, eta, tuple(cond))


def transition_log_prob(
    model: Callable,
    x,
    x_next,
    t,
    t_next,
    schedule: AbstractSchedule,
    *,
    prediction: str = "flow",
    eta=None,
    noise_level=None,
    cond=(),
    reduce: str = "mean",
):
    r"""$\log\pi_\theta(x_{next} \mid x)$ of one stochastic step (module notes), a
    function of the parameters in `model` with the states held fixed (GRPO's
    ratio $\pi_\theta/\pi_{\theta_{old}}$ of a recorded step).

    $\log\pi = \operatorname{reduce}\big(-\frac{(x_{next} - \mu)^2}{2s^2} - \log s -
    \frac12\log2\pi\big)$ with $(\mu, s)$ from `sde_transition`.

    **Arguments:** as `sde_transition`, plus

    - `x_next`: the state reached at `t_next`.
    - `reduce`: `"mean"` over the elements of the sample (Flow-GRPO's and MixGRPO's
      convention, the default), `"sum"` (the exact log-density) or `"none"`.

    **Returns:** a scalar (an array shaped like `x` with `reduce="none"`).

    **Raises:** as `sde_transition`; `ValueError` for an unknown `reduce`.

    **Example:**

    ```python
    ratio = jnp.exp(transition_log_prob(new_model, x, x_next, t, t_next, schedule,
                                        noise_level=0.7) - old_log_prob)
    ```
    """
    _check_reduce(reduce)
    x, x_next = jax.lax.stop_gradient((jnp.asarray(x), jnp.asarray(x_next)))
    mean, std = sde_transition(
        model,
        x,
        t,
        t_next,
        schedule,
        prediction=prediction,
        eta=eta,
        noise_level=noise_level,
        cond=cond,
    )
    return _log_density(x_next, mean, std, reduce)


def trajectory_log_probs(
    model: Callable,
    states,
    times,
    schedule: AbstractSchedule,
    *,
    prediction: str = "flow",
    eta=None,
    noise_level=None,
    cond=(),
    reduce: str = "mean",
):
    r"""Re-score a recorded window: `transition_log_prob` of each step
    `states[n] -> states[n+1]` from `times[n]` to `times[n+1]`.

    **Arguments:** as `transition_log_prob`, with `states` (`[w + 1, ...]`) and
    `times` (`[w + 1]`) as in `MixedSample`; `eta`/`noise_level` a scalar or one
    value per step.

    **Returns:** `[w]` log-probabilities (`[w, ...]` with `reduce="none"`); under the
    parameters that sampled them they equal `MixedSample.log_probs`.

    **Example:**

    ```python
    out = sample_mixed(model, x_t, RectifiedFlow(), key=key, steps=25,
                       window_start=4, window_size=4, noise_level=0.7)
    new = trajectory_log_probs(new_model, out.states, out.times, RectifiedFlow(),
                               noise_level=0.7)
    ratio = jnp.exp(new - out.log_probs)
    ```
    """
    _check_reduce(reduce)
    states, times = jnp.asarray(states), jnp.asarray(times)
    n = times.shape[0] - 1
    if times.ndim != 1 or states.shape[0] != n + 1:
        raise ValueError(
            f"`states` needs one state per time: got {states.shape[0]} states for "
            f"{times.shape[0]} times."
        )
    eta = jnp.broadcast_to(_eta_of(eta, noise_level, n).astype(states.dtype), (n,))
    denoiser = to_denoiser(model, prediction, schedule)
    times = times.astype(states.dtype)
    states = jax.lax.stop_gradient(states)
    cond = tuple(cond)

    def one(x, x_next, t, t_next, eta_n):
        mean, std = _moments(denoiser, schedule, x, t, t_next, eta_n, cond)
        return _log_density(x_next, mean, std, reduce)

    return jax.vmap(one)(states[:-1], states[1:], times[:-1], times[1:], eta)


def _sde_window(denoiser, schedule, x, times, eta, cond, key, reduce):
    def step(y, inputs):
        t, t_next, eta_n, k = inputs
        mean, std = _moments(denoiser, schedule, y, t, t_next, eta_n, cond)
        y_next = mean + std * jax.random.normal(k, y.shape, y.dtype)
        # The policy's log-density of the step taken, the states held as data (the
        # forward pass evaluates the model once: the two means are the same values).
        log_prob = _log_density(
            jax.lax.stop_gradient(y_next),
            _moments(
                denoiser, schedule, jax.lax.stop_gradient(y), t, t_next, eta_n, cond
            )[0],
            std,
            reduce,
        )
        return y_next, (y_next, log_prob)

    n = times.shape[0] - 1
    keys = jax.random.split(key, n)
    inputs = (times[:-1], times[1:], eta, keys)
    x_end, (states, log_probs) = jax.lax.scan(jax.checkpoint(step), x, inputs)
    return x_end, jnp.concatenate([x[None], states]), log_probs


def window_at(
    iteration: int,
    *,
    steps: int,
    window_size: int,
    shift_interval: int,
    stride: int = 1,
    roll_back: bool = True,
    max_start: int | None = None,
) -> int:
    r"""MixGRPO's progressive sliding window: the first step of the window at training
    `iteration` (0-based).

    The window starts at step 0 and moves `stride` steps later every
    `shift_interval` iterations: $l = s\lfloor i/\tau\rfloor$. Past `max_start`
    (default `steps - window_size`, the last start whose window fits) it restarts at 0
    (`roll_back=True`, MixGRPO's setting) or stays at `max_start`. MixGRPO's defaults:
    window size 4, $\tau = 25$, $s = 1$, 25 steps. (Its code lets the window run to
    step `steps - 2` and shrink there; here windows are whole.)

    **Arguments:**

    - `iteration`: the training iteration.
    - `steps`: the number of sampling steps.
    - `window_size`: $w$, the steps per window.
    - `shift_interval`: $\tau$, iterations between moves.
    - `stride`: $s$, steps per move.
    - `roll_back`: restart at 0 after the last position, or stay there.
    - `max_start`: the last start allowed.

    **Returns:** `window_start` for `sample_mixed` (a Python int).

    **Raises:** `ValueError` for a negative `iteration`, `shift_interval < 1`,
    `stride < 1`, a window that does not fit in `steps`, or `max_start` outside
    `[0, steps - window_size]`.

    **Example:**

    ```python
    start = window_at(it, steps=25, window_size=4, shift_interval=25)
    out = sample_mixed(model, x_t, schedule, key=key, steps=25, window_start=start,
                       window_size=4, noise_level=0.7)
    ```
    """
    if iteration < 0:
        raise ValueError(f"`iteration` must be >= 0, got {iteration}.")
    if shift_interval < 1 or stride < 1:
        raise ValueError(
            f"`shift_interval` and `stride` must be >= 1, got {shift_interval} and "
            f"{stride}."
        )
    if not 0 <= window_size <= steps:
        raise ValueError(
            f"`window_size` must be in [0, steps={steps}], got {window_size}."
        )
    last = steps - window_size
    max_start = last if max_start is None else max_start
    if not 0 <= max_start <= last:
        raise ValueError(
            f"`max_start` must be in [0, steps - window_size = {last}], got "
            f"{max_start}."
        )
    moves = iteration // shift_interval
    if roll_back:
        return stride * (moves % (max_start // stride + 1))
    return min(stride * moves, max_start)


def _last_steps_to_end(preset, n):
    # diffusers' rule for dropping the order on the last steps of the whole sample.
    if preset is None:
        return None
    rule = preset.lower_order_final
    return n if rule == "always" or (rule == "short" and n < 15) else None


def sample_mixed(
    model: Callable,
    x_t,
    schedule: AbstractSchedule,
    *,
    key,
    prediction: str = "flow",
    steps: int = 25,
    grid="uniform_t",
    window_start: int = 0,
    window_size: int = 4,
    eta=None,
    noise_level=None,
    ode_sampler="euler",
    sampler_options: dict | None = None,
    post_steps: int | None = None,
    cond=(),
    adjoint="checkpoint",
    final_denoise: bool = False,
    reduce: str = "mean",
) -> MixedSample:
    r"""MixGRPO's mixed sampler: the probability-flow ODE on the steps before and
    after a window, the Flow-GRPO SDE (module notes) on the `window_size` steps from
    `window_start`; returns the sample and the window's log-probabilities.

    Steps $0 \dots N-1$ of the grid $t_0 > \dots > t_N$: steps $[l, l + w)$ are
    Euler–Maruyama steps $x_{n+1} = \mu_n + s_n z_n$, $z_n \sim \mathcal N(0, I)$,
    the others a solve with `ode_sampler` (one solve before the window, one after).
    `window_size=0` is the ODE sampler alone, step for step `sampling.sample`.

    **Arguments:**

    - `model`: `model(x, t, *cond)` for one state `x` (vmap over a batch).
    - `x_t`: the starting noise at the grid's first time.
    - `schedule`: an `odelab.diffusion.schedules` schedule (`RectifiedFlow` for
      Flow-GRPO's SDE).
    - `key`: the PRNG key of the window's noise.
    - `prediction`: what `model` predicts (`sampling.PREDICTIONS`; `"flow"`: a
      velocity).
    - `steps`, `grid`: the time grid (`time_grid`'s kinds, or an array of times;
      diffusers' grids are for `sampling.sample`).
    - `window_start`, `window_size`: the window $[l, l + w)$ (Python ints;
      `window_at` slides it). Under `jit` they are static: each window position
      compiles once.
    - `eta` or `noise_level`: the window's noise, $\eta > 0$ of the reverse-SDE
      family or Flow-GRPO's $a = \sqrt2\eta$ (MixGRPO: 0.7); a scalar or one value
      per window step.
    - `ode_sampler`, `sampler_options`: a `sampling.SAMPLERS` name (or a diffrax
      solver) and its options for the ODE segments: `"euler"` (MixGRPO) or e.g.
      `"dpmpp_2m"` (MixGRPO-Flash). Each segment is its own solve, so a multistep
      sampler restarts after the window.
    - `post_steps`: steps of the ODE after the window on a grid of the same kind
      from the window's end to $t_N$ (MixGRPO-Flash's compressed tail); default: the
      grid's own steps. Needs a named `grid`.
    - `cond`: extra arguments for `model` (a tuple).
    - `adjoint`: for the ODE solves, as in `odelab.solve`.
    - `final_denoise`: end with $x = D(x, t_N)$.
    - `reduce`: the log-probabilities' reduction (`transition_log_prob`).

    **Returns:** a `MixedSample(x, log_probs, states, times)`. `x` is differentiable
    pathwise (through the noise, like `sample_sde`); `log_probs` treat the recorded
    states as data, so their gradient is the policy gradient's
    $\nabla_\theta\log\pi_\theta$ and equals that of `trajectory_log_probs`.

    **Raises:** `ValueError` for a window outside the steps, a diffusers grid,
    `post_steps` with an array grid or below 1, an unknown `reduce`, sampler or
    prediction, and `eta`/`noise_level` as `sde_transition` (neither is needed with
    `window_size=0`); `TypeError` for a non-floating `x_t`.

    **Example:**

    ```python
    keys = jax.random.split(key, 12)
    out = jax.vmap(lambda k, x: sample_mixed(flow_model, x, RectifiedFlow(), key=k,
                                             steps=25, window_start=8, window_size=4,
                                             noise_level=0.7))(keys, noise)
    out.log_probs  # [12, 4]
    ```

    **References:** J. Li, Y. Cui et al., arXiv:2507.21802 (mixed sampling, sliding
    window, MixGRPO-Flash); J. Liu et al., arXiv:2505.05470 (the SDE and its
    log-probability).
    """
    _check_reduce(reduce)
    preset = preset_of(ode_sampler, sampler_options)
    if isinstance(grid, str) and grid in DIFFUSERS_GRIDS:
        raise ValueError(
            f"`sample_mixed` takes time grids ({grid!r} is diffusers' timestep "
            "spacing): use `time_grid`'s kinds or an array of times."
        )
    x = jnp.asarray(x_t)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`x_t` must be a floating array, got dtype {x.dtype}.")
    with jax.ensure_compile_time_eval():
        times = time_grid(schedule, steps, grid)
    n = times.shape[0] - 1
    if window_start < 0 or window_size < 0 or window_start + window_size > n:
        raise ValueError(
            f"the window [{window_start}, {window_start + window_size}) must lie in "
            f"the {n} steps [0, {n}): pass 0 <= window_start and window_start + "
            "window_size <= steps."
        )
    end = window_start + window_size
    if post_steps is not None:
        if not isinstance(grid, str):
            raise ValueError(
                "`post_steps` rebuilds the grid after the window and needs a named "
                "`grid`; with an array grid, pass the times you want instead."
            )
        if post_steps < 1:
            raise ValueError(f"`post_steps` must be >= 1, got {post_steps}.")
    denoiser = to_denoiser(model, prediction, schedule)
    cond = tuple(cond)

    def ode(x, seg, last):
        m = seg.shape[0] - 1
        if m < 1:
            return x
        to_end = _last_steps_to_end(preset, m + int(final_denoise)) if last else None
        solver, space = build_sampler(
            ode_sampler, schedule, sampler_options, None, to_end
        )
        return solve_on_grid(denoiser, schedule, x, seg, cond, solver, adjoint, space)

    if window_size == 0:
        x = ode(x, times, True)
        log_probs = jnp.zeros((0,) if reduce != "none" else (0, *x.shape), x.dtype)
        states, window_times = jnp.zeros((0, *x.shape), x.dtype), times[:0]
    else:
        eta = jnp.broadcast_to(
            _eta_of(eta, noise_level, window_size).astype(x.dtype), (window_size,)
        )
        x = ode(x, times[: window_start + 1], False)
        window_times = times[window_start : end + 1]
        x, states, log_probs = _sde_window(
            denoiser, schedule, x, window_times.astype(x.dtype), eta, cond, key, reduce
        )
        tail = times[end:]
        if post_steps is not None and end < n:
            with jax.ensure_compile_time_eval():
                tail = time_grid(
                    schedule,
                    post_steps,
                    grid,
                    t_start=float(times[end]),
                    t_end=float(times[-1]),
                )
        x = ode(x, tail, True)
    if final_denoise:
        x = denoiser(x, times[-1], *cond)
    return MixedSample(x, log_probs, states, window_times)
