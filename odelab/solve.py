"""`solve` and `solve_sde`: one call from a vector field to a diffrax `Solution`."""

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from diffrax._root_finder import use_stepsize_tol as _use_stepsize_tol

from . import _checks, _fixed_step
from ._names import ADJOINTS, ODE_SOLVERS, SDE_SOLVERS, resolve
from .solvers.nfe import NFECounter, nfe_costs


_MAX_STEPS_MSG = (
    "The solve reached `max_steps` before t1. If the problem is stiff (fast and "
    "slow time scales: chemical kinetics, Van der Pol with large mu, a discretised "
    "diffusion), an explicit solver needs tiny steps: use an implicit solver such as "
    "solver='kvaerno5' (or an exponential integrator for a semilinear problem). "
    "Otherwise raise `max_steps`."
)


_NONFINITE_MSG = (
    "The solution contains NaN or inf: a NaN or inf in `y0` or `args` (under `jit`, "
    "where they cannot be checked before the solve), or a vector field that blows "
    "up. Check the inputs; for a blow-up, shorten the span or the step."
)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static decisions of a solve (hashable: part of the compilation cache key)."""

    mode: str  # "adaptive", "controller", "lean" or "fixed" (diffeqsolve on a grid)
    n_steps: int | None  # lean: number of steps
    grid: str | None  # lean: "uniform" or "dt0"
    index: tuple[int, ...] | None  # lean: save positions on the grid
    span: bool
    max_steps: int
    throw: bool
    costs: tuple[int, int, int] | None


def solve(
    vector_field,
    y0,
    ts,
    args=None,
    *,
    solver="tsit5",
    rtol=1e-6,
    atol=1e-6,
    dt0=None,
    steps: int | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint="checkpoint",
    max_steps: int = 4096,
    throw: bool = True,
) -> diffrax.Solution:
    r"""Solve $\frac{dy}{dt} = f(t, y, \text{args})$ and return the states at `ts`.

    One call over `diffrax.diffeqsolve`, with names for solvers and adjoints, traced
    tolerances (changing `rtol`/`atol` does not recompile), an exact count of
    vector-field evaluations, and a lean `lax.scan` path whenever the step grid is
    fixed.

    **Arguments:**

    - `vector_field`: `f(t, y, args)`, returning a pytree shaped like `y`.
    - `y0`: the initial state, any pytree of floating arrays.
    - `ts`: an increasing or decreasing array of save times (the first is the initial
      time), or a tuple `(t0, t1)` to save only at `t1`.
    - `args`: passed to `f`; gradients flow to its arrays.
    - `solver`: a name (`"tsit5"`, `"rk4"`, `"kvaerno5"`, ...; see
      `odelab._names.ODE_SOLVERS`) or any `diffrax.AbstractSolver`.
    - `rtol`, `atol`: tolerances of the adaptive controller (traced values).
    - `dt0`: a fixed step size (or, with `stepsize_controller`, the initial step).
    - `steps`: alternatively, the number of equal fixed steps from `ts[0]` to `ts[-1]`.
    - `stepsize_controller`: any diffrax controller; default: PID on `rtol`/`atol`
      without `dt0`/`steps`, a fixed step with them.
    - `adjoint`: `"checkpoint"` (default), `"direct"`, `"backsolve"`, `"forward"`, or
      any `diffrax.AbstractAdjoint`.
    - `max_steps`: the most steps an adaptive solve may take.
    - `throw`: raise on failure (inside `jit` too); otherwise read `sol.result`.

    **Returns:** a `diffrax.Solution`; `sol.ys` has a leading axis over save times and
    `sol.stats` holds `num_steps`, `num_accepted_steps`, `num_rejected_steps` and
    `nfe`, the vector-field evaluations (FSAL reuse, rejected steps and the initial
    step-size heuristic counted; `-1` for solvers whose count is not static, such as
    implicit ones).

    **Fixed steps.** With `dt0` or `steps` and the default adjoint, the grid is known
    before the solve and `solve` scans the solver's own `step` over it with
    `jax.checkpoint` on the body: same states as `diffeqsolve` with that grid, the
    same discrete gradients, and the cost of a hand-written loop. The grid from
    `dt0` is $t_0 + k\,dt_0$ until $t_1$ (a last fraction below $10^{-6} dt_0$ is
    merged); save times off the grid are read from the solver's dense interpolant.
    When the number of steps is not known at trace time (`ts` or `dt0` traced) or
    another adjoint is asked for, `diffeqsolve` runs on the same grid
    (`_fixed_step.FixedGrid`); `"backsolve"` uses diffrax's `ConstantStepSize`, the
    same grid when `dt0` divides the span.

    **Gradients.** diffrax 0.7.2's recursive checkpointing can return gradients off by
    ~18% when save times coincide with fixed step ends and `max_steps` equals the step
    count (with Python-float times). `solve` passes times as arrays and fixed-step
    solves do not depend on `max_steps`; tests compare against finite differences and
    float64 references across such configurations.

    **Raises:** `ValueError`/`TypeError` at trace time for a wrong shape or dtype of
    the vector field's output (naming the leaf), an unknown solver or adjoint name
    (listing the valid ones), NaN/inf in `y0`, `args` or `ts`, non-monotone `ts`, an
    SDE solver given an ODE, a fixed-step-only solver without `dt0`/`steps`; at run
    time (`throw=True`) a solve that fails or hits `max_steps`.

    **Example:**

    ```python
    import jax.numpy as jnp, odelab
    sol = odelab.solve(lambda t, y, k: -k * y, jnp.ones(3), jnp.linspace(0, 1, 11), 2.0)
    sol.ys.shape  # (11, 3)
    ```
    """
    solver = resolve(solver, ODE_SOLVERS, "ODE solver", "solver")
    adjoint = resolve(adjoint, ADJOINTS, "adjoint", "adjoint")
    _checks.check_ode_solver(solver)
    y0 = _checks.as_state(y0)
    ts, span = _checks.as_times(ts)
    args = _checks.as_args(args)
    _checks.finite_check(y0, args)
    _checks.check_vector_field(vector_field, "vector_field", ts[0], y0, args)
    terms = diffrax.ODETerm(vector_field)
    plan = _make_plan(
        solver,
        terms,
        adjoint,
        ts,
        span,
        dt0,
        steps,
        stepsize_controller,
        max_steps,
        throw,
    )
    rtol, atol = _tolerances(rtol, atol, y0)
    dt0 = None if dt0 is None else jnp.asarray(dt0, dtype=ts.dtype)
    return _dispatch(
        plan, terms, solver, adjoint, stepsize_controller, y0, args, ts, rtol, atol, dt0
    )


def solve_sde(
    drift,
    diffusion,
    y0,
    ts,
    args=None,
    *,
    key,
    noise: str = "diagonal",
    brownian_shape: tuple[int, ...] | None = None,
    solver="euler",
    brownian: str = "virtual_tree",
    dt0=None,
    steps: int | None = None,
    rtol=1e-3,
    atol=1e-3,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint="checkpoint",
    max_steps: int = 16384,
    throw: bool = True,
) -> diffrax.Solution:
    r"""Solve $dy = f(t, y)\,dt + g(t, y)\circ dW_t$ (Itô or Stratonovich per solver).

    The SDE counterpart of `solve`, over diffrax's SDE solvers and Brownian paths.

    **Arguments:**

    - `drift`: `f(t, y, args)`, shaped like `y`.
    - `diffusion`: `g(t, y, args)`. Its shape depends on `noise`:
        - `"diagonal"`: shaped like `y`; each component has its own Brownian motion,
          $dy_i = f_i\,dt + g_i\,dW_i$.
        - `"scalar"`: shaped like `y`; one Brownian motion drives all components.
        - `"general"`: `y.shape + brownian_shape`, contracted with $dW$ (a matrix for
          a vector state).
    - `y0`, `ts`, `args`: as in `solve` (a single-array `y0`).
    - `key`: the PRNG key of the Brownian path.
    - `brownian_shape`: the Brownian motion's shape for `"general"` noise.
    - `solver`: a name (`"euler"` (Euler–Maruyama, Itô), `"milstein"`, `"heun"`,
      `"euler_heun"`, `"reversible_heun"`, `"sra1"`, `"shark"`, `"sea"`, `"spark"`,
      ...) or any diffrax SDE solver.
    - `brownian`: `"virtual_tree"` (`diffrax.VirtualBrownianTree`: any step size,
      reproducible, differentiable) or `"unsafe"` (`diffrax.UnsafeBrownianPath`:
      fastest, fixed steps only).
    - `dt0`/`steps`: fixed step (default `steps=100` when neither is given and no
      controller is passed).
    - the rest: as in `solve`.

    **Returns:** a `diffrax.Solution`, stats including `nfe` as in `solve` (one
    evaluation = drift and diffusion at one point).

    **Raises:** as `solve`; also `ValueError` for an unknown `noise`/`brownian`, a
    diffusion whose shape does not fit `noise`, or an ODE solve attempted here.

    **Example:**

    ```python
    sol = odelab.solve_sde(lambda t, y, a: -y, lambda t, y, a: 0.3 * jnp.ones_like(y),
                           jnp.ones(2), jnp.linspace(0, 1, 5), key=jax.random.key(0),
                           steps=200)
    ```
    """
    if drift is None or diffusion is None:
        raise ValueError(
            "`solve_sde` needs both `drift` and `diffusion`; for an ODE (no noise) "
            "call `odelab.solve(vector_field, y0, ts)`."
        )
    solver = resolve(solver, SDE_SOLVERS, "SDE solver", "solver")
    adjoint = resolve(adjoint, ADJOINTS, "adjoint", "adjoint")
    y0 = _checks.as_state(y0)
    if not isinstance(y0, jax.Array):
        raise TypeError("`solve_sde` takes a single-array `y0`; stack your state.")
    ts, span = _checks.as_times(ts)
    args = _checks.as_args(args)
    _checks.finite_check(y0, args)
    _checks.check_vector_field(drift, "drift", ts[0], y0, args)
    bm_shape, diffusion_shape = _noise_shapes(noise, y0, brownian_shape)
    _checks.check_vector_field(
        diffusion,
        "diffusion",
        ts[0],
        y0,
        args,
        expected=jax.ShapeDtypeStruct(diffusion_shape, y0.dtype),
    )
    if brownian not in ("virtual_tree", "unsafe"):
        raise ValueError(
            f"Unknown `brownian={brownian!r}`; valid: 'virtual_tree', 'unsafe'."
        )
    if dt0 is None and steps is None and stepsize_controller is None:
        steps = 100
    if brownian == "unsafe" and stepsize_controller is not None:
        raise ValueError("`brownian='unsafe'` works with fixed steps only.")
    t0, t1 = ts[0], ts[-1]
    lo, hi = jnp.minimum(t0, t1), jnp.maximum(t0, t1)
    levy = _levy_area(solver)
    if brownian == "unsafe":
        bm = diffrax.UnsafeBrownianPath(shape=bm_shape, key=key, levy_area=levy)
    else:
        n = steps if steps is not None else None
        tol = (
            (hi - lo) / (4 * n)
            if n is not None
            else (
                jnp.abs(jnp.asarray(dt0)) / 4 if dt0 is not None else (hi - lo) / 2**12
            )
        )
        bm = diffrax.VirtualBrownianTree(
            lo,
            hi,
            tol=tol,
            shape=jax.ShapeDtypeStruct(bm_shape, y0.dtype),
            key=key,
            levy_area=levy,
        )
    g = diffusion
    if noise == "diagonal":
        import lineax as lx

        g = lambda t, y, a: lx.DiagonalLinearOperator(diffusion(t, y, a))  # noqa: E731
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(g, bm))
    plan = _make_plan(
        solver,
        terms,
        adjoint,
        ts,
        span,
        dt0,
        steps,
        stepsize_controller,
        max_steps,
        throw,
    )
    rtol, atol = _tolerances(rtol, atol, y0)
    dt0 = None if dt0 is None else jnp.asarray(dt0, dtype=ts.dtype)
    return _dispatch(
        plan, terms, solver, adjoint, stepsize_controller, y0, args, ts, rtol, atol, dt0
    )


def _levy_area(solver):
    # A solver declares the least Lévy area it needs, possibly as an abstract class;
    # diffrax's Brownian paths want the concrete one.
    needed = getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement)
    for concrete in (
        diffrax.BrownianIncrement,
        diffrax.SpaceTimeLevyArea,
        diffrax.SpaceTimeTimeLevyArea,
    ):
        if issubclass(concrete, needed):
            return concrete
    raise TypeError(f"No Brownian path provides the Lévy area {needed.__name__}.")


def _noise_shapes(noise, y0, brownian_shape):
    if noise in ("diagonal", "scalar"):
        if brownian_shape is not None:
            raise ValueError(
                f"`brownian_shape` is only for noise='general' (got noise={noise!r})."
            )
        return (y0.shape if noise == "diagonal" else ()), y0.shape
    if noise == "general":
        if brownian_shape is None:
            raise ValueError(
                "noise='general' needs `brownian_shape`, the shape of the Brownian "
                "motion (e.g. (m,) for a diffusion matrix of shape y.shape + (m,))."
            )
        shape = tuple(brownian_shape)
        return shape, y0.shape + shape
    raise ValueError(
        f"Unknown `noise={noise!r}`; valid: 'diagonal', 'scalar', 'general'."
    )


def _tolerances(rtol, atol, y0):
    real = jnp.finfo(jax.tree_util.tree_leaves(y0)[0].dtype).dtype
    return jnp.asarray(rtol, dtype=real), jnp.asarray(atol, dtype=real)


def _has_error_estimate(solver) -> bool:
    tableau = getattr(solver, "tableau", None)
    if isinstance(tableau, diffrax.ButcherTableau) and not np.any(tableau.b_error):
        return False
    return isinstance(solver, diffrax.AbstractAdaptiveSolver)


def _make_plan(
    solver, terms, adjoint, ts, span, dt0, steps, controller, max_steps, throw
) -> _Plan:
    costs = nfe_costs(solver, terms)
    common = dict(span=span, max_steps=int(max_steps), throw=bool(throw), costs=costs)
    if steps is not None and dt0 is not None:
        raise ValueError("Give either `dt0` or `steps`, not both.")
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"`steps` must be a positive integer; got {steps!r}.")
    if controller is not None:
        if steps is not None:
            raise ValueError("`steps` sets a fixed grid; drop `stepsize_controller`.")
        return _Plan("controller", None, None, None, **common)
    if dt0 is None and steps is None:
        if not _has_error_estimate(solver):
            raise ValueError(
                f"`{type(solver).__name__}` has no error estimate, so it cannot "
                "choose its own steps: pass `dt0=` (a step size) or `steps=` (a "
                "number of steps), or use an adaptive solver such as 'tsit5'."
            )
        return _Plan("adaptive", None, None, None, **common)
    lean_ok = type(adjoint) is diffrax.RecursiveCheckpointAdjoint
    if steps is not None:
        n, kind = int(steps), "uniform"
    elif _checks.is_concrete((ts, dt0)):
        host = np.asarray(ts, dtype=np.float64)
        t0, t1 = float(host[0]), float(host[-1])
        n, kind = _fixed_step.num_steps_for(t0, t1, float(dt0)), "dt0"
    else:
        n, kind = None, "dt0"
    if n is None or not lean_ok:
        return _Plan("fixed", n, kind, None, **common)
    index = None
    if not span and _checks.is_concrete((ts, dt0)):
        grid = _host_grid(kind, n, ts, dt0)
        index = _fixed_step.save_indices(grid, np.asarray(ts, np.float64), ts.dtype)
    if span:
        index = (n,)
    # `max_steps` plays no part in the scan; keep it out of the compilation cache key.
    return _Plan("lean", n, kind, index, **dict(common, max_steps=0))


def _dispatch(*operands):
    # Called eagerly, the solve is compiled once per static configuration (new values
    # of y0, args, ts or the tolerances reuse it). Inside a caller's trace it is
    # inlined instead: a nested `jit` around a program with a host callback (the
    # run-time checks) costs XLA measurably more compile time than the same program
    # inlined.
    if _checks.is_concrete(operands):
        return _solve_jit(*operands)
    return _solve(*operands)


def _solve(plan, terms, solver, adjoint, controller, y0, args, ts, rtol, atol, dt0):
    if not _checks.is_concrete(ts):
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
    if plan.mode != "adaptive" and isinstance(solver, diffrax.AbstractImplicitSolver):
        solver = _root_finder_tolerances(solver, rtol, atol)
    if plan.mode == "lean":
        if _checks.is_concrete((ts, dt0)):
            # A known grid is a constant of the program: nothing to compute at run
            # time, less to compile.
            grid = _host_grid(plan.grid, plan.n_steps, ts, dt0)
            grid = jnp.asarray(grid, dtype=ts.dtype)
        else:
            grid = _lean_grid(plan, t0, t1, dt0)
        ys, result = _fixed_step.fixed_step_solve(
            terms, solver, y0, args, grid, save_ts, plan.index
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
        controller = NFECounter(controller, plan.costs)
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
        nfe = NFECounter.read(sol.controller_state)
    sol = eqx.tree_at(
        lambda s: (s.stats, s.controller_state),
        sol,
        (dict(sol.stats, nfe=nfe), None),
        is_leaf=lambda x: x is None,
    )
    return _finish(plan, sol)


_solve_jit = eqx.filter_jit(_solve)


def _host_grid(kind, n, ts, dt0):
    """The lean grid from concrete `ts` (and `dt0`), in float64 on the host."""
    host = np.asarray(ts, dtype=np.float64)
    t0, t1 = host[0], host[-1]
    if kind == "uniform":
        k = np.arange(n + 1)
        return np.where(k == n, t1, t0 + (t1 - t0) * (k / n))
    return np.append(t0 + np.arange(n) * float(dt0), t1)


def _lean_grid(plan, t0, t1, dt0):
    if plan.grid == "uniform":
        return _fixed_step.uniform_grid(t0, t1, plan.n_steps)
    return _fixed_step.dt0_grid(t0, t1, dt0, plan.n_steps)


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
    checks = [(sol.result == diffrax.RESULTS.max_steps_reached, _MAX_STEPS_MSG)]
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
