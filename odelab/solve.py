"""`solve` and `solve_sde`: one call from a vector field to a diffrax `Solution`."""

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx

from . import _checks, _engine, _plan
from ._names import ADJOINTS, ODE_SOLVERS, SDE_SOLVERS, resolve
from .brownian import BrownianIncrements
from .solvers.exponential import AbstractExponentialRK
from .terms import SemilinearTerm


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
    - `adjoint`: `"checkpoint"` (default), `"direct"`, `"backsolve"`, `"forward"`,
      `"reversible"` (with a reversible solver: exact gradients, flat memory),
      `"interpolating"`, `"quadrature"` (continuous adjoints that read y(t) from the
      forward solution), or any `diffrax.AbstractAdjoint`.
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
    count (with Python-float times). `solve` passes times as arrays and the lean path
    does not depend on `max_steps`; tests compare against finite differences and
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
    ts = _checks.times_like_state(ts, y0)
    args = _checks.as_args(args)
    _checks.finite_check(y0, args)
    if isinstance(vector_field, SemilinearTerm):
        # dy/dt = L y + N: exponential solvers use the split, others its vf.
        vector_field.check_state(y0)
        _checks.check_vector_field(vector_field.vf, "vector_field", ts[0], y0, args)
        terms = vector_field
    else:
        _checks.check_vector_field(vector_field, "vector_field", ts[0], y0, args)
        terms = diffrax.ODETerm(vector_field)
    if isinstance(solver, AbstractExponentialRK) and not isinstance(
        terms, SemilinearTerm
    ):
        raise TypeError(
            f"`{type(solver).__name__}` needs the vector field as "
            "`odelab.terms.SemilinearTerm(linear, nonlinear)` (dy/dt = L y + N(t, y, "
            "args)); got a plain function."
        )
    return _run(
        terms,
        solver,
        adjoint,
        stepsize_controller,
        y0,
        args,
        ts,
        span,
        dt0,
        steps,
        rtol,
        atol,
        max_steps,
        throw,
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
    - `brownian`: how the Brownian path is made from `key`:
        - `"virtual_tree"` (`diffrax.VirtualBrownianTree`): any step size,
          reproducible, differentiable; a tree descent per query.
        - `"increments"` (`odelab.brownian.BrownianIncrements`): the `steps`
          increments of the uniform grid drawn in one call, each step reading its
          own: the fast choice for fixed steps (needs `steps=`), differentiable.
        - `"unsafe"` (`diffrax.UnsafeBrownianPath`): fixed steps forward in time only;
          reverse-mode gradients only on the lean path, i.e. concrete `ts`/`dt0` or
          `steps` with the default adjoint.
        - or a `diffrax.AbstractBrownianPath` of shape `brownian_shape`, used as
          given (`key` is then ignored).
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
    if not isinstance(
        solver, (diffrax.AbstractItoSolver, diffrax.AbstractStratonovichSolver)
    ):
        raise ValueError(
            f"`solver={type(solver).__name__}()` is not an SDE solver (it converges "
            "to neither the Itô nor the Stratonovich solution); use e.g. 'euler' "
            "(Itô), 'heun' (Stratonovich) or 'shark' (additive noise)."
        )
    y0 = _checks.as_state(y0)
    if not isinstance(y0, jax.Array):
        raise TypeError("`solve_sde` takes a single-array `y0`; stack your state.")
    ts, span = _checks.as_times(ts)
    ts = _checks.times_like_state(ts, y0)
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
    given_path = isinstance(brownian, diffrax.AbstractBrownianPath)
    if not given_path and brownian not in ("virtual_tree", "increments", "unsafe"):
        raise ValueError(
            f"Unknown `brownian={brownian!r}`; valid: 'virtual_tree', 'increments', "
            "'unsafe', or a `diffrax.AbstractBrownianPath`."
        )
    if dt0 is None and steps is None and stepsize_controller is None:
        steps = 100
    if brownian == "increments" and steps is None:
        raise ValueError(
            "`brownian='increments'` pre-samples one increment per step of a uniform "
            "grid: pass `steps=` (not `dt0` or a step-size controller), or use "
            "brownian='virtual_tree'."
        )
    if brownian == "unsafe" and stepsize_controller is not None:
        raise ValueError("`brownian='unsafe'` works with fixed steps only.")
    if (
        brownian == "unsafe"
        and _checks.is_concrete(ts)
        and float(ts[-1]) < float(ts[0])
    ):
        raise ValueError(
            "`brownian='unsafe'` cannot integrate backwards in time; use "
            "brownian='virtual_tree'."
        )
    t0, t1 = ts[0], ts[-1]
    lo, hi = jnp.minimum(t0, t1), jnp.maximum(t0, t1)
    levy = _levy_area(solver)
    if given_path:
        bm = brownian
        given_shape = jax.eval_shape(lambda: bm.evaluate(t0, t1)).shape
        if given_shape != bm_shape:
            raise ValueError(
                f"The given Brownian path has shape {given_shape}, but noise="
                f"{noise!r} needs {bm_shape}."
            )
    elif brownian == "increments":
        if levy is not diffrax.BrownianIncrement:
            raise ValueError(
                f"`{type(solver).__name__}` needs Levy area ({levy.__name__}), "
                "which `brownian='increments'` does not carry; use "
                "brownian='virtual_tree'."
            )
        bm = BrownianIncrements.sample(t0, t1, steps, bm_shape, key, y0.dtype)
    elif brownian == "unsafe":
        bm = diffrax.UnsafeBrownianPath(shape=bm_shape, key=key, levy_area=levy)
    else:
        if steps is not None:
            tol = (hi - lo) / (4 * steps)
        elif dt0 is not None:
            tol = jnp.abs(jnp.asarray(dt0)) / 4
        else:
            tol = (hi - lo) / 2**12
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
        g = lambda t, y, a: lx.DiagonalLinearOperator(diffusion(t, y, a))  # noqa: E731
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(g, bm))
    return _run(
        terms,
        solver,
        adjoint,
        stepsize_controller,
        y0,
        args,
        ts,
        span,
        dt0,
        steps,
        rtol,
        atol,
        max_steps,
        throw,
    )


def _run(
    terms,
    solver,
    adjoint,
    controller,
    y0,
    args,
    ts,
    span,
    dt0,
    steps,
    rtol,
    atol,
    max_steps,
    throw,
):
    """Plan the solve from the checked inputs, then run it (compiled or inlined)."""
    plan = _plan.make_plan(
        solver, terms, adjoint, ts, span, dt0, steps, controller, max_steps, throw
    )
    rtol, atol = _tolerances(rtol, atol, y0)
    dt0 = None if dt0 is None else jnp.asarray(dt0, dtype=ts.dtype)
    return _engine.dispatch(
        plan, terms, solver, adjoint, controller, y0, args, ts, rtol, atol, dt0
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
