"""Integrators: odelab's own, usable in `diffrax.diffeqsolve` and `odelab.solve`."""

from .anderson import Anderson as Anderson
from .base import AbstractExplicitRK as AbstractExplicitRK
from .exponential import (
    ETDRK2 as ETDRK2,
    ETDRK4 as ETDRK4,
    ETDRK4B as ETDRK4B,
    AbstractExponentialRK as AbstractExponentialRK,
    ExponentialAdams as ExponentialAdams,
    ExponentialEuler as ExponentialEuler,
    ExponentialMidpoint as ExponentialMidpoint,
    ExponentialRK3 as ExponentialRK3,
    LawsonRK4 as LawsonRK4,
)
from .momentum import GHVB as GHVB, HeavyBall as HeavyBall
from .nfe import (
    count_nfe as count_nfe,
    nfe_costs as nfe_costs,
    read_nfe as read_nfe,
)
from .reversible import (
    BDIA as BDIA,
    EDICT as EDICT,
    MALI as MALI,
    AbstractReversibleSolver as AbstractReversibleSolver,
    ReversibleHeun as ReversibleHeun,
    ReversibleRK as ReversibleRK,
    amplification_matrix as amplification_matrix,
    is_reversible as is_reversible,
)
from .rk4 import RK4 as RK4
from .stochastic_exponential import (
    EDMStochasticHeun as EDMStochasticHeun,
    ExponentialEulerAncestral as ExponentialEulerAncestral,
    StochasticExponentialAdams as StochasticExponentialAdams,
)
from .unipc import UniPC as UniPC
