"""The static decisions of a solve: which path runs it, on which grid, saving where."""

import dataclasses

import diffrax
import numpy as np

from . import _checks, _fixed_step
from .solvers.nfe import nfe_costs


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static decisions of a solve (hashable: part of the compilation cache key)."""

    mode: str  # "adaptive", "controller", "lean" or "fixed" (diffeqsolve on a grid)
    n_steps: int | None  # lean: number of steps
    grid: str | None  # lean: "uniform" or "dt0"
    index: tuple[int, ...] | None  # lean: save positions on the grid
    step_of: tuple[int, ...] | None  # lean, saves off the grid: the steps holding them
    span: bool
    max_steps: int
    throw: bool
    costs: tuple[int, int, int] | None
    ts_checked: bool  # ts was concrete and validated before tracing


def has_error_estimate(solver) -> bool:
    """Whether `solver` can choose its own steps (an adaptive embedded pair)."""
    base = getattr(solver, "adaptive_base", None)
    if base is not None:  # a wrapper (ReversibleRK) that adapts iff its base does
        return has_error_estimate(base)
    tableau = getattr(solver, "tableau", None)
    if isinstance(tableau, diffrax.ButcherTableau) and not np.any(tableau.b_error):
        return False
    return isinstance(solver, diffrax.AbstractAdaptiveSolver)


def make_plan(
    solver, terms, adjoint, ts, span, dt0, steps, controller, max_steps, throw
) -> Plan:
    costs = nfe_costs(solver, terms)
    common = dict(
        span=span,
        max_steps=int(max_steps),
        throw=bool(throw),
        costs=costs,
        ts_checked=_checks.is_concrete(ts),
    )
    if steps is not None and dt0 is not None:
        raise ValueError("Give either `dt0` or `steps`, not both.")
    if steps is not None and (
        isinstance(steps, bool) or int(steps) != steps or steps < 1
    ):
        raise ValueError(f"`steps` must be a positive integer; got {steps!r}.")
    if controller is not None:
        if steps is not None:
            raise ValueError("`steps` sets a fixed grid; drop `stepsize_controller`.")
        return Plan("controller", None, None, None, None, **common)
    if dt0 is None and steps is None:
        if not has_error_estimate(solver):
            raise ValueError(
                f"`{type(solver).__name__}` has no error estimate, so it cannot "
                "choose its own steps: pass `dt0=` (a step size) or `steps=` (a "
                "number of steps), or use an adaptive solver such as 'tsit5'."
            )
        return Plan("adaptive", None, None, None, None, **common)
    # The lean scan is recursive checkpointing's discretisation with one checkpoint
    # per step; an explicitly chosen checkpoint count is honoured by diffeqsolve.
    lean_ok = (
        type(adjoint) is diffrax.RecursiveCheckpointAdjoint
        and adjoint.checkpoints is None
    )
    if steps is not None:
        n, kind = int(steps), "uniform"
    elif _checks.is_concrete((ts, dt0)):
        host = np.asarray(ts, dtype=np.float64)
        t0, t1 = float(host[0]), float(host[-1])
        n, kind = _fixed_step.num_steps_for(t0, t1, float(dt0)), "dt0"
    else:
        n, kind = None, "dt0"
    if n is None or not lean_ok:
        return Plan("fixed", n, kind, None, None, **common)
    index = step_of = None
    if span:
        index = (n,)
    elif _checks.is_concrete((ts, dt0)):
        grid = host_grid(kind, n, ts, dt0)
        host = np.asarray(ts, np.float64)
        index = _fixed_step.save_indices(grid, host, ts.dtype)
        if index is None:
            step_of = tuple(int(j) for j in _fixed_step.steps_holding(grid, host))
    # `max_steps` plays no part in the scan; keep it out of the compilation cache key.
    return Plan("lean", n, kind, index, step_of, **dict(common, max_steps=0))


def host_grid(kind, n, ts, dt0):
    """The lean grid from concrete `ts` (and `dt0`), in float64 on the host."""
    host = np.asarray(ts, dtype=np.float64)
    t0, t1 = host[0], host[-1]
    if kind == "uniform":
        k = np.arange(n + 1)
        return np.where(k == n, t1, t0 + (t1 - t0) * (k / n))
    return np.append(t0 + np.arange(n) * float(dt0), t1)


def lean_grid(plan, t0, t1, dt0):
    if plan.grid == "uniform":
        return _fixed_step.uniform_grid(t0, t1, plan.n_steps)
    return _fixed_step.dt0_grid(t0, t1, dt0, plan.n_steps)
