r"""Inversion: from data back to the noise that the sampler maps to it.

`invert` solves the same probability-flow ODE in the other direction: the grid is
walked from its data end to its noise end with the same solver, so with `"ddim"` it is
DDIM inversion (Song et al.; Mokady et al., "Null-text inversion"), each step using the
model at the step's start. An explicit solver run backwards is not the inverse of the
same solver run forwards, so `sample(invert(x)) = x` only up to the solver's error,
$O(h^p)$; `round_trip_error` measures it. Exact inversion needs an algebraically
reversible sampler (BDIA, EDICT; not yet here, see `odelab.diffusion.sampling`).

**References:** J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models",
ICLR 2021 (§4.3: the ODE can be encoded); R. Mokady et al., "Null-text Inversion for
Editing Real Images using Guided Diffusion Models", CVPR 2023.
"""

from collections.abc import Callable

import jax.numpy as jnp

from .sampling import SAMPLERS, sample, solve_on_grid, to_denoiser
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
):
    r"""Map data `x_0` (at the grid's data end) to noise at its noise end by solving the
    probability-flow ODE upwards on the reversed grid. Arguments as for `sample`
    (diffusers' grids, which end in a denoising step that cannot be inverted, are
    refused)."""
    if isinstance(grid, str) and grid in DIFFUSERS_GRIDS:
        raise ValueError(
            f"the diffusers grid {grid!r} ends with a step to sigma = 0, which no ODE "
            "step can invert; use 'logsnr', 'time_quadratic', ... or an array."
        )
    options = dict(sampler_options or {})
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(
                f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}, or a "
                "diffrax solver."
            )
        preset = SAMPLERS[sampler]
        solver = preset.make(None, **options)
        space = preset.space if space is None else space
    else:
        solver, space = sampler, space or "data"
    times = time_grid(schedule, steps, grid)[::-1]
    denoiser = to_denoiser(model, prediction, schedule)
    return solve_on_grid(denoiser, schedule, x_0, times, cond, solver, adjoint, space)


def round_trip_error(model, x_0, schedule, **kwargs):
    """`max |sample(invert(x_0)) - x_0|` with the same sampler and grid: how far the
    inversion is from exact."""
    noise = invert(model, x_0, schedule, **kwargs)
    kwargs.pop("adjoint", None)
    back = sample(model, noise, schedule, **kwargs)
    return jnp.max(jnp.abs(back - x_0))
