"""Names for solvers and adjoints: the registries behind `solve` and `solve_sde`."""

from collections.abc import Callable

import diffrax

from .adjoints import (
    ExponentialAdjoint,
    InterpolatingAdjoint,
    QuadratureAdjoint,
    ReversibleAdjoint,
)
from .solvers import (
    BDIA,
    EDICT,
    ETDRK2,
    ETDRK4,
    ETDRK4B,
    MALI,
    RK4,
    ExponentialAdams,
    ExponentialEuler,
    ExponentialMidpoint,
    ExponentialRK3,
    LawsonRK4,
    ReversibleHeun,
    ReversibleRK,
    UniPC,
)


ODE_SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "rk4": RK4,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "implicit_euler": diffrax.ImplicitEuler,
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
    "reversible_heun": ReversibleHeun,
    "bdia": BDIA,
    "reversible_rk4": lambda: ReversibleRK(RK4()),
    "reversible_tsit5": lambda: ReversibleRK(diffrax.Tsit5()),
    "mali": MALI,
    "edict": EDICT,
    "exponential_euler": ExponentialEuler,
    "etd1": ExponentialEuler,
    "etdrk2": ETDRK2,
    "etdrk4": ETDRK4,
    "exponential_midpoint": ExponentialMidpoint,
    "exponential_rk3": ExponentialRK3,
    "etdrk4b": ETDRK4B,
    "lawson_rk4": LawsonRK4,
    "exponential_adams2": lambda: ExponentialAdams(2),
    "exponential_adams3": lambda: ExponentialAdams(3),
    "unipc2": lambda: UniPC(2),
    "unipc3": lambda: UniPC(3),
    "leapfrog_midpoint": diffrax.LeapfrogMidpoint,
}
"""Solver names accepted by `odelab.solve`, each mapped to a zero-argument factory."""

SDE_SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "euler_heun": diffrax.EulerHeun,
    "heun": diffrax.Heun,
    "milstein": diffrax.ItoMilstein,
    "stratonovich_milstein": diffrax.StratonovichMilstein,
    "reversible_heun": ReversibleHeun,
    "sra1": diffrax.SRA1,
    "shark": diffrax.ShARK,
    "sea": diffrax.SEA,
    "spark": diffrax.SPaRK,
    "general_shark": diffrax.GeneralShARK,
    "slowrk": diffrax.SlowRK,
}
"""Solver names accepted by `odelab.solve_sde`."""

ADJOINTS: dict[str, Callable[[], diffrax.AbstractAdjoint]] = {
    "checkpoint": diffrax.RecursiveCheckpointAdjoint,
    "direct": diffrax.DirectAdjoint,
    "backsolve": diffrax.BacksolveAdjoint,
    "forward": diffrax.ForwardMode,
    "reversible": ReversibleAdjoint,
    "interpolating": InterpolatingAdjoint,
    "quadrature": QuadratureAdjoint,
    "adjoint_dpm": ExponentialAdjoint,
    "exponential": ExponentialAdjoint,
}
"""Adjoint names: `"checkpoint"` (discrete, recursive checkpointing; odelab's lean
fixed-step path when the grid is fixed), `"direct"`, `"backsolve"` (continuous adjoint,
O(1) memory), `"forward"` (forward-mode) and `"reversible"` (exact discrete gradients,
memory flat in the number of steps, for the reversible solvers: reversible_heun, bdia,
reversible_rk4, reversible_tsit5, mali, edict), `"interpolating"` and `"quadrature"`
(continuous adjoints reading y(t) from a checkpointed dense forward solution),
`"adjoint_dpm"` (or `"exponential"`: AdjointDPM, the continuous adjoint of a
`SemilinearTerm` solve integrated backwards by the exponential solver itself, O(1)
memory)."""


def resolve(value, registry: dict, what: str, argname: str):
    """Turn a name into an object from `registry`, or pass an object through.

    **Raises:** `ValueError` naming the valid names if `value` is an unknown string;
    `TypeError` if it is neither a string nor an instance of the expected base class.
    """
    if isinstance(value, str):
        key = value.lower().replace("-", "_")
        if key not in registry:
            valid = ", ".join(sorted(registry))
            raise ValueError(
                f"Unknown {what} `{argname}={value!r}`. Valid names: {valid}; or pass "
                f"a diffrax object."
            )
        return registry[key]()
    base = (
        diffrax.AbstractSolver if what.endswith("solver") else diffrax.AbstractAdjoint
    )
    if not isinstance(value, base):
        raise TypeError(
            f"`{argname}` must be a name ({', '.join(sorted(registry))}) or a "
            f"`diffrax.{base.__name__}`, got {type(value).__name__}."
        )
    return value
