r"""Inversion: from data back to the noise that the sampler maps to it.

`invert` solves the same probability-flow ODE in the other direction: the grid is
walked from its data end to its noise end with the same solver, so with `"ddim"` it is
DDIM inversion (Song et al.; Mokady et al., "Null-text inversion"), each step using the
model at the step's start. An explicit solver run backwards is not the inverse of the
same solver run forwards, so `sample(invert(x)) = x` only up to the solver's error,
$O(h^p)$; `round_trip_error` measures it.

Exact inversion needs an algebraically reversible sampler: `x, state =
sample(..., sampler="bdia", return_state=True)` and `invert(..., sampler="bdia",
state=state)` undo the sampler's steps one by one with its `backward_step`, recovering
the noise to round-off (BDIA-DDIM needs the last two states, which `state` carries).

**References:** J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models",
ICLR 2021 (§4.3: the ODE can be encoded); R. Mokady et al., "Null-text Inversion for
Editing Real Images using Guided Diffusion Models", CVPR 2023.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..solvers import is_reversible
from .sampling import (
    build_sampler,
    coordinates,
    probability_flow_term,
    sample,
    solve_on_grid,
    to_denoiser,
)
from .schedules import DIFFUSERS_GRIDS, AbstractSchedule, time_grid


def invert(
    model: Callable,
    x_0,
    schedule: AbstractSchedule,
    *,
    prediction: str = "eps",
    sampler="ddim",
    steps: int = 10,
    grid="logsnr",
    cond=(),
    adjoint="checkpoint",
    sampler_options: dict | None = None,
    space: str | None = None,
    state=None,
):
    r"""Map data `x_0` (at the grid's data end) to noise at its noise end by solving the
    probability-flow ODE upwards on the reversed grid. Arguments as for `sample`
    (diffusers' grids, which end in a denoising step that cannot be inverted, are
    refused). With `state` (from `sample(..., return_state=True)` with the same
    reversible sampler, grid and model), the sampler's own steps are undone exactly
    instead."""
    if isinstance(grid, str) and grid in DIFFUSERS_GRIDS:
        raise ValueError(
            f"the diffusers grid {grid!r} ends with a step to sigma = 0, which no ODE "
            "step can invert; use 'logsnr', 'time_quadratic', ... or an array."
        )
    solver, space = build_sampler(sampler, schedule, sampler_options, space)
    times = time_grid(schedule, steps, grid)
    denoiser = to_denoiser(model, prediction, schedule)
    if state is None:
        return solve_on_grid(
            denoiser, schedule, x_0, times[::-1], cond, solver, adjoint, space
        )
    if not is_reversible(solver):
        raise ValueError(
            f"exact inversion with `state` needs a reversible sampler (e.g. 'bdia'); "
            f"{type(solver).__name__} has no backward step."
        )
    return _undo_steps(denoiser, schedule, x_0, times, cond, solver, space, state)


def _undo_steps(denoiser, schedule, x, times, cond, solver, space, state):
    """Run `solver.backward_step` over the sampling grid `times` from its end."""
    term = probability_flow_term(denoiser, schedule, space)
    coords = coordinates(schedule, space)
    s_grid = coords.time(times)
    scale = coords.scale
    n = s_grid.shape[0] - 1
    s_prev = jnp.concatenate([s_grid[:1], s_grid[:-2]])  # step k starts after k - 1

    def body(carry, k):
        y1, st = carry
        y0, st0 = solver.backward_step(
            term, s_prev[k], s_grid[k], s_grid[k + 1], y1, tuple(cond), st, k == 0
        )
        return (y0, st0), None

    (y0, _), _ = jax.lax.scan(
        body, (x / scale(times[-1]), state), jnp.arange(n - 1, -1, -1)
    )
    return scale(times[0]) * y0


def round_trip_error(model, x_0, schedule, **kwargs):
    """`max |sample(invert(x_0)) - x_0|` with the same sampler and grid: how far the
    inversion is from exact."""
    noise = invert(model, x_0, schedule, **kwargs)
    kwargs.pop("adjoint", None)
    back = sample(model, noise, schedule, **kwargs)
    return jnp.max(jnp.abs(back - x_0))
