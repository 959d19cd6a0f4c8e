"""Diffusion and flow models as ordinary differential equations (issue #6, in parts).

So far: noise schedules and time grids (`schedules`), analytic Gaussian-mixture data
with closed-form denoisers (`analytic`), and deterministic sampling as a solve of the
probability-flow ODE with odelab's exponential integrators (`sampling`: DDIM exactly,
ETDRK2/4, exponential Adams 2/3; model adapters, guidance, thresholding).
"""

from . import analytic as analytic, sampling as sampling, schedules as schedules
from .sampling import sample as sample, to_denoiser as to_denoiser
from .schedules import (
    EDM as EDM,
    VE as VE,
    RectifiedFlow as RectifiedFlow,
    VPCosine as VPCosine,
    VPDiscrete as VPDiscrete,
    VPLinear as VPLinear,
    time_grid as time_grid,
)
