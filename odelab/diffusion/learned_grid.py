r"""Learned time grids: a sampler's grid as trainable parameters, fitted by gradient.

A grid of `steps + 1` times from $t_{max}$ (the noise, fixed: the starting state lives
there) to $t_{end}$ is parametrised in the log-SNR $\lambda = \log(\alpha/\sigma)$ by
unconstrained numbers:

$$\lambda_k = \lambda_0 + (\lambda_{end} - \lambda_0)\sum_{j<k}\mathrm{softmax}(\ell)_j,
\qquad \lambda_{end} = \lambda_{lo} + (\lambda_{hi} - \lambda_{lo})\,
\mathrm{sigmoid}(e),\qquad t_k = t(\lambda_k),$$

so every value of the logits $\ell$ (and of the end parameter $e$, when the end is
learned) is a strictly decreasing grid inside the schedule's range. `GridParams.init`
starts from a named `time_grid` kind (logits $\log\Delta\lambda_k$), `fit_grid` fits
the parameters with Adam to the mean squared error between `sample(..., grid=times)` and
target samples (the exact flow map of the training noise, or a high-NFE solve), and
`save_grid`/`load_grid` keep the result for `sample(grid=load_grid(path).times)`.

The loss is differentiated through the whole sampler (the discrete gradient with
`adjoint="checkpoint"`), so the grid adapts to the solver's own error, its final
denoising step included: with a learned end the last ODE step stops where the
denoiser's error and the solver's error balance (the fixed-grid scan of
`odelab bench samplers` found $\lambda \approx 2$ by hand).

**References:** Why a grid matters and how to search for one: S. Liu et al., "A Unified
Sampling Framework for Solver Searching of Diffusion Probabilistic Models" (USF),
arXiv:2312.07243; A. Sabour, S. Fidler, K. Kreis, "Align Your Steps", arXiv:2404.14507;
few-step tuning of a sampler's hyperparameters by gradient: D. Watson et al., "Learning
Fast Samplers for Diffusion Models by Differentiating Through Sample Quality", ICLR
2022.
"""

import json
import os
import tempfile
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .sampling import sample
from .schedules import AbstractSchedule, time_grid


class GridParams(eqx.Module):
    r"""A monotone time grid as unconstrained parameters (module notes).

    `logits` (one per step) share out the λ-range; `end` places $\lambda_{end}$ in
    `end_range` through a sigmoid (ignored when `learn_end=False`).

    **Example:**

    ```python
    params = GridParams.init(schedule, steps=4, init="logsnr")
    times = params.times(schedule)  # == time_grid(schedule, 4, "logsnr")
    ```
    """

    logits: jax.Array
    end: jax.Array
    lam_start: float = eqx.field(static=True)
    end_range: tuple[float, float] = eqx.field(static=True)
    learn_end: bool = eqx.field(static=True)

    @classmethod
    def init(
        cls,
        schedule: AbstractSchedule,
        steps: int,
        init="logsnr",
        *,
        learn_end: bool = True,
        end_range: tuple[float, float] | None = None,
        dtype=None,
    ) -> "GridParams":
        r"""Parameters that reproduce a grid.

        **Arguments:**

        - `schedule`: the schedule of the grid's time axis.
        - `steps`: number of ODE steps (the grid has `steps + 1` times).
        - `init`: a `time_grid` kind (`"uniform_t"`, `"logsnr"`, `"karras"`,
          `"time_quadratic"`) or a decreasing array of `steps + 1` times starting at
          `schedule.t_max`.
        - `learn_end`: whether $t_{end}$ is a parameter; otherwise it stays at the
          initial grid's end.
        - `end_range`: `(λ_lo, λ_hi)`, the range of the learned $\lambda_{end}$
          (default `(λ(t_max) + 1, λ(t_min))`, the whole schedule but the first unit).
        - `dtype`: of the parameters (default: the widest float enabled).

        **Raises:** `ValueError` for a grid that does not start at `schedule.t_max`,
        has the wrong length, or ends outside `end_range`.
        """
        if steps < 1:
            raise ValueError(f"`steps` must be at least 1, got {steps}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        times = np.asarray(time_grid(schedule, steps, init), np.float64)
        if times.shape != (steps + 1,):
            raise ValueError(
                f"`init` must give {steps + 1} times for {steps} steps, got "
                f"{times.shape[0]}."
            )
        if abs(times[0] - schedule.t_max) > 1e-9 * max(1.0, abs(schedule.t_max)):
            raise ValueError(
                f"the grid must start at the schedule's t_max = {schedule.t_max:g} "
                f"(where the noise lives), got `init` starting at {times[0]:g}."
            )
        lam = np.array(schedule.lam(jnp.asarray(times)), np.float64)
        lam_start = float(schedule.lam(schedule.t_max))
        lam[0] = lam_start
        if end_range is None:
            end_range = (lam_start + 1.0, float(schedule.lam(schedule.t_min)))
        lo, hi = (float(v) for v in end_range)
        if not lo < hi:
            raise ValueError(
                f"`end_range` must be (lo, hi) with lo < hi, got {end_range}."
            )
        # λ(t_min) from the float32 grid against the float64 bound: round-off.
        slack = 1e-5 * (hi - lo)
        if learn_end and not lo - slack <= lam[-1] <= hi + slack:
            raise ValueError(
                f"the initial grid ends at λ = {lam[-1]:.4g}, outside `end_range` "
                f"[{lo:.4g}, {hi:.4g}]."
            )
        increments = np.diff(lam)
        logits = np.log(increments / increments.sum())
        # A grid that ends on a bound starts a hair inside it (the sigmoid never
        # reaches it); what the end moves is below float32 resolution of λ.
        frac = np.clip((lam[-1] - lo) / (hi - lo), 1e-7, 1 - 1e-7)
        end = np.log(frac) - np.log1p(-frac) if learn_end else lam[-1]
        return cls(
            jnp.asarray(logits, dtype),
            jnp.asarray(end, dtype),
            lam_start,
            (lo, hi),
            learn_end,
        )

    def lambdas(self):
        """The grid's log-SNRs $\\lambda_0 < \\dots < \\lambda_{end}$."""
        dtype = self.logits.dtype
        lam0 = jnp.asarray(self.lam_start, dtype)
        if self.learn_end:
            lo, hi = (jnp.asarray(v, dtype) for v in self.end_range)
            lam_end = lo + (hi - lo) * jax.nn.sigmoid(self.end)
        else:
            lam_end = self.end
        fractions = jnp.cumsum(jax.nn.softmax(self.logits))
        lam = lam0 + (lam_end - lam0) * fractions
        # The last fraction is 1 up to round-off; the end exactly.
        lam = lam.at[-1].set(lam_end)
        return jnp.concatenate([lam0[None], lam])

    def times(self, schedule: AbstractSchedule):
        """The decreasing grid of times $t(\\lambda_k)$, from `schedule.t_max`."""
        t = schedule.t_of_lambda(self.lambdas())
        # t(λ(t_min)) can round below t_min, which `sample` rejects.
        t = jnp.maximum(t, jnp.asarray(schedule.t_min, t.dtype))
        return t.at[0].set(jnp.asarray(schedule.t_max, t.dtype))


def grid_loss(
    params: GridParams,
    model: Callable,
    schedule: AbstractSchedule,
    x_train,
    targets,
    *,
    prediction: str = "eps",
    sampler="dpmpp_2m",
    final_denoise: bool = True,
    sampler_options: dict | None = None,
):
    r"""$\frac1{Bd}\sum_b\|\mathrm{sample}(x_b; \mathrm{grid}) - y_b\|^2$ over a batch
    `x_train` (B, ...) of noise and its `targets`."""
    times = params.times(schedule)

    def one(x):
        return sample(
            model,
            x,
            schedule,
            prediction=prediction,
            sampler=sampler,
            steps=times.shape[0] - 1,
            grid=times,
            final_denoise=final_denoise,
            sampler_options=sampler_options,
            adjoint="checkpoint",
        )

    out = jax.vmap(one)(x_train)
    return jnp.mean((out - targets.astype(out.dtype)) ** 2)


class FittedGrid(eqx.Module):
    """What `fit_grid` returns: the fitted `params`, their `times`, the training
    `losses` (one per iteration, before its update) and the final training `loss`."""

    params: GridParams
    times: jax.Array
    losses: jax.Array
    loss: jax.Array


def fit_grid(
    model: Callable,
    schedule: AbstractSchedule,
    *,
    sampler="dpmpp_2m",
    steps: int,
    x_train,
    targets,
    init="logsnr",
    iterations: int = 200,
    learning_rate: float = 0.05,
    final_denoise: bool = True,
    learn_end: bool = True,
    end_range: tuple[float, float] | None = None,
    prediction: str = "eps",
    sampler_options: dict | None = None,
    batch_size: int | None = None,
    key=None,
) -> FittedGrid:
    r"""Fit a sampler's time grid to targets by gradient (Adam on `GridParams`).

    Minimises `grid_loss`, the mean squared error between the sampler on the learned
    grid and `targets` (e.g. `odelab.bench.samplers.exact_flow_map` of `x_train`),
    differentiating through the sampler (`adjoint="checkpoint"`). One jitted step;
    the parameters of the lowest training loss seen are returned.

    **Arguments:**

    - `model`, `schedule`, `prediction`, `sampler`, `sampler_options`,
      `final_denoise`: as for `sample`.
    - `steps`: ODE steps of the grid (NFE = steps × evaluations per step, plus one
      for `final_denoise`).
    - `x_train`, `targets`: noise at `schedule.t_max`, (B, ...), and where it should go.
    - `init`, `learn_end`, `end_range`: the starting grid (`GridParams.init`).
    - `iterations`, `learning_rate`: Adam's.
    - `batch_size`, `key`: a random minibatch of this size each iteration (default:
      the whole batch, deterministic).

    **Returns:** a `FittedGrid`.

    **Example:**

    ```python
    fit = fit_grid(eps_model, VPDiscrete.ddpm_linear(), sampler="dpmpp_2m", steps=4,
                   x_train=x, targets=exact_flow_map(params, sched, x))
    sample(eps_model, x_new, sched, sampler="dpmpp_2m", steps=4, grid=fit.times,
           final_denoise=True)
    ```
    """
    if iterations < 1:
        raise ValueError(f"`iterations` must be at least 1, got {iterations}.")
    x_train = jnp.asarray(x_train)
    targets = jnp.asarray(targets, x_train.dtype)
    if targets.shape != x_train.shape:
        raise ValueError(
            f"`targets` must have the shape of `x_train` {x_train.shape}, got "
            f"{targets.shape}."
        )
    n = x_train.shape[0]
    if batch_size is not None and not 1 <= batch_size <= n:
        raise ValueError(f"`batch_size` must be in [1, {n}], got {batch_size}.")
    params = GridParams.init(
        schedule,
        steps,
        init,
        learn_end=learn_end,
        end_range=end_range,
        dtype=x_train.dtype,
    )
    optimiser = optax.adam(learning_rate)
    opt_state = optimiser.init(eqx.filter(params, eqx.is_inexact_array))
    loss_fn = eqx.filter_value_and_grad(grid_loss)
    kwargs = dict(
        prediction=prediction,
        sampler=sampler,
        final_denoise=final_denoise,
        sampler_options=sampler_options,
    )

    @eqx.filter_jit
    def step(params, opt_state, xb, yb):
        loss, grads = loss_fn(params, model, schedule, xb, yb, **kwargs)
        if not learn_end:
            # A fixed end is not a parameter (Adam moves nothing with zero gradients).
            grads = eqx.tree_at(lambda g: g.end, grads, jnp.zeros_like(grads.end))
        updates, opt_state = optimiser.update(grads, opt_state)
        return loss, eqx.apply_updates(params, updates), opt_state

    key = jax.random.key(0) if key is None else key
    losses, best, best_loss = [], params, np.inf
    for _ in range(iterations):
        if batch_size is None or batch_size == n:
            xb, yb = x_train, targets
        else:
            key, sub = jax.random.split(key)
            idx = jax.random.choice(sub, n, (batch_size,), replace=False)
            xb, yb = x_train[idx], targets[idx]
        loss, new_params, opt_state = step(params, opt_state, xb, yb)
        loss = float(loss)
        losses.append(loss)
        if loss < best_loss:
            best, best_loss = params, loss
        params = new_params
    final = float(grid_loss(params, model, schedule, x_train, targets, **kwargs))
    if final < best_loss:
        best, best_loss = params, final
    return FittedGrid(
        best,
        best.times(schedule),
        jnp.asarray(losses),
        jnp.asarray(best_loss),
    )


def save_grid(path, times, **metadata) -> None:
    """Write a grid of `times` and JSON-able `metadata` (sampler, steps, losses, ...)
    to `path` (`.npz`) atomically: a temporary file in the same folder, then
    `os.replace`, so a crash leaves the old file or none."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(
                file,
                times=np.asarray(times),
                metadata=np.asarray(json.dumps(metadata)),
            )
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


class SavedGrid(NamedTuple):
    """A grid read by `load_grid`: its `times` and `metadata`."""

    times: np.ndarray
    metadata: dict


def load_grid(path) -> SavedGrid:
    """Read a grid written by `save_grid`; `sample(..., grid=load_grid(p).times)`."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if "times" not in data:
            raise ValueError(f"{path} holds no `times`: not a grid from `save_grid`.")
        times = np.asarray(data["times"])
        metadata = json.loads(str(data["metadata"])) if "metadata" in data else {}
    return SavedGrid(times, metadata)
