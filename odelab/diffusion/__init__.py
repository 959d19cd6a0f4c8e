"""Diffusion and flow models as ordinary differential equations (issue #6, in parts).

So far: noise schedules and time grids (`schedules`) and analytic Gaussian-mixture
data with closed-form denoisers (`analytic`), the references for the samplers.
"""

from . import analytic as analytic, schedules as schedules
from .schedules import (
    EDM as EDM,
    VE as VE,
    RectifiedFlow as RectifiedFlow,
    VPCosine as VPCosine,
    VPDiscrete as VPDiscrete,
    VPLinear as VPLinear,
    time_grid as time_grid,
)
