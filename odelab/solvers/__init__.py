"""Integrators: odelab's own, usable in `diffrax.diffeqsolve` and `odelab.solve`."""

from .base import AbstractExplicitRK as AbstractExplicitRK
from .nfe import NFECounter as NFECounter, nfe_costs as nfe_costs
from .rk4 import RK4 as RK4
