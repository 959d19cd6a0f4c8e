"""Running a planned solve: the lean scan or diffeqsolve, NFE, and run-time checks."""

import diffrax
import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from diffrax._root_finder import use_stepsize_tol as _use_stepsize_tol

from . import _checks, _fixed_step, _plan
from .solvers.nfe import count_nfe, read_nfe


_MAX_STEPS_MSG = (
    "The solve reached `max_steps` before t1. If the problem is stiff (fast and "
    "slow time scales: chemical kinetics, Van der Pol with large mu, a discretised "
    "diffusion), an explicit solver needs tiny steps: use an implicit solver such as "
    "solver='kvaerno5' (or an exponential integrator for a semilinear problem). "
    "Otherwise raise `max_steps`."
)


_MAX_STEPS_FIXED_MSG = (
    "The fixed grid t0 + k*dt0 needs more than `max_steps` steps (the step count is "
    "not known while tracing, so `max_steps` bounds it): raise `max_steps`, pass "
    "`steps=`, or give concrete `ts` and `dt0`."
)


_NONFINITE_MSG = (
    "The solution contains NaN or inf: a NaN or inf in `y0` or `args` (under `jit`, "
    "where they cannot be checked before the solve), or a vector field that blows "
    "up. Check the inputs; for a blow-up, shorten the span or the step."
)


def dispatch(*operands):
    # Called eagerly, the solve is compiled once per static configuration: new values
    # of y0, args and the tolerances reuse it, and so do new ts on adaptive solves (a
    # fixed-step solve's step count and save positions are static). Inside a caller's
    # trace it is
    # inlined instead: a nested `jit` around a program with a host callback (the
    # run-time checks) costs XLA measurably more compile time than the same program
    # inlined.
    if _checks.is_concrete(operands):
        return _solve_jit(*operands)
    return _solve(*operands)


def _solve(plan, terms, solver, adjoint, controller, y0, args, ts, rtol, atol, dt0):
    if not plan.ts_checked:
        ts = _checks.raise_if(
            ts,
            [
                (
                    _checks.nonmonotone(ts),
                    "`ts` must be strictly increasing or decreasing.",
                )
            ],
        )
    t0, t1 = ts[0], ts[-1]
    save_ts = t1[None] if plan.span else ts
    adaptive = plan.mode == "adaptive" or isinstance(
        controller, diffrax.AbstractAdaptiveStepSizeController
    )
    if not adaptive and isinstance(solver, diffrax.AbstractImplicitSolver):
        solver = _root_finder_tolerances(solver, rtol, atol)
    if plan.mode == "lean":
        if _checks.is_concrete((ts, dt0)):
            # A known grid is a constant of the program: nothing to compute at run
            # time, less to compile.
            grid = _plan.host_grid(plan.grid, plan.n_steps, ts, dt0)
            grid = jnp.asarray(grid, dtype=ts.dtype)
        else:
            grid = _plan.lean_grid(plan, t0, t1, dt0)
        ys, result = _fixed_step.fixed_step_solve(
            terms, solver, y0, args, grid, save_ts, plan.index, plan.step_of
        )
        n = jnp.asarray(plan.n_steps, dtype=jnp.int32)
        if plan.costs is None:
            nfe = jnp.asarray(-1, dtype=jnp.int32)
        else:
            init, first, later = plan.costs
            nfe = jnp.asarray(init + first + later * (plan.n_steps - 1), jnp.int32)
        stats = dict(
            num_steps=n,
            num_accepted_steps=n,
            num_rejected_steps=jnp.asarray(0, jnp.int32),
            max_steps=plan.n_steps,
            nfe=nfe,
        )
        sol = diffrax.Solution(
            t0=t0,
            t1=t1,
            ts=save_ts,
            ys=ys,
            interpolation=None,
            stats=stats,
            result=result,
            solver_state=None,
            controller_state=None,
            made_jump=None,
            event_mask=None,
        )
        return _finish(plan, sol)

    max_steps = plan.max_steps
    step_dt0 = dt0
    if plan.mode == "adaptive":
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    elif plan.mode == "fixed":
        # BacksolveAdjoint restarts the controller between save times on its backward
        # pass, carrying the state over, which a grid anchored at t0 cannot follow;
        # it gets diffrax's ConstantStepSize (same grid when dt0 divides the span).
        if isinstance(adjoint, diffrax.BacksolveAdjoint):
            controller = diffrax.ConstantStepSize()
        else:
            controller = _fixed_step.FixedGrid()
        if plan.grid == "uniform":
            step_dt0 = (t1 - t0) / plan.n_steps
        if plan.n_steps is not None:
            max_steps = plan.n_steps + 1
    if plan.costs is not None:
        controller = count_nfe(controller, plan.costs)
    saveat = diffrax.SaveAt(
        ts=None if plan.span else ts,
        t1=plan.span,
        controller_state=plan.costs is not None,
    )
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        step_dt0,
        y0,
        args,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=False,
    )
    if plan.costs is None:
        nfe = jnp.asarray(-1, dtype=jnp.int32)
    else:
        nfe = read_nfe(sol.controller_state)
    sol = eqx.tree_at(
        lambda s: (s.stats, s.controller_state),
        sol,
        (dict(sol.stats, nfe=nfe), None),
        is_leaf=lambda x: x is None,
    )
    return _finish(plan, sol)


_solve_jit = eqx.filter_jit(_solve)


def _root_finder_tolerances(solver, rtol, atol):
    # diffrax hands an adaptive controller's tolerances to an implicit solver's root
    # finder; with fixed steps there is no controller, so `solve`'s own `rtol`/`atol`
    # (and the controllers' RMS norm) take that place.
    values = {"rtol": rtol, "atol": atol, "norm": optx.rms_norm}
    for name, value in values.items():
        if getattr(solver.root_finder, name, None) is _use_stepsize_tol:
            solver = eqx.tree_at(
                lambda s, n=name: getattr(s.root_finder, n), solver, value
            )
    return solver


def _finish(plan, sol):
    if not plan.throw:
        return sol
    max_steps_msg = _MAX_STEPS_FIXED_MSG if plan.mode == "fixed" else _MAX_STEPS_MSG
    checks = [(sol.result == diffrax.RESULTS.max_steps_reached, max_steps_msg)]
    for name, item in diffrax.RESULTS._name_to_item.items():
        if name in ("successful", "max_steps_reached"):
            continue
        message = diffrax.RESULTS._index_to_message[int(item._value)]
        checks.append(
            (
                sol.result == item,
                f"The solve failed ({name}): {message} (Pass `throw=False` to "
                "get the solution and read `sol.result` instead.)",
            )
        )
    # Last, so that a failed solve (whose unsaved states diffrax fills with inf)
    # reports its own reason. One check on the output rather than one on every input
    # leaf: a single reduction, and it catches what matters, NaN/inf inputs that reach
    # the solution as well as a solution that blows up.
    checks.append((_checks.nonfinite(sol.ys, None), _NONFINITE_MSG))
    return eqx.tree_at(lambda s: s.ys, sol, _checks.raise_if(sol.ys, checks))
