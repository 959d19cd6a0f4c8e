"""odelab: differential equations for machine learning, on diffrax and equinox."""

from . import solvers as solvers
from .solve import solve as solve, solve_sde as solve_sde


__version__ = "0.1.0"
