"""odelab: differential equations for machine learning, on diffrax and equinox."""

from . import adjoints as adjoints, phi as phi, solvers as solvers, terms as terms
from .solve import solve as solve, solve_sde as solve_sde


__version__ = "0.1.0"
