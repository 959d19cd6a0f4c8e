"""Exact counts of vector-field evaluations (NFE) for diffrax and odelab solvers.

A solver's cost is described by three integers, `(init, first, later)`: the
evaluations made by `solver.init`, by a step attempted from a state with no valid
first-same-as-last (FSAL) stage (the first step, a rejected first step, a step after
a jump), and by any other step attempt. Rejected attempts cost as much as accepted
ones. An FSAL method such as Tsit5 has `first = later + 1`.

The counting is done by `count_nfe`, a wrapper around the step-size controller: the
controller is the one piece of diffrax's loop that sees every attempt, accepted or
rejected, and whose state survives a rejection (the solver's state does not).
"""

import diffrax
import equinox as eqx
import jax.numpy as jnp


def nfe_costs(solver, terms=None) -> tuple[int, int, int] | None:
    """Vector-field evaluations of `solver` as `(init, first step, later steps)`.

    A solver of odelab's declares them through a method `nfe_costs()`. diffrax's
    explicit Runge–Kutta methods are counted from their tableau (FSAL included), and
    its simple one-evaluation methods are listed. Returns `None` where the count is
    not known statically, e.g. implicit methods whose Newton iterations vary.

    **Arguments:**

    - `solver`: a `diffrax.AbstractSolver`.
    - `terms`: the terms it will be used with (decides whether diffrax switches FSAL
      off because the vector field is expensive, as for SDE control terms).
    """
    if hasattr(solver, "nfe_costs"):
        return solver.nfe_costs()
    if isinstance(solver, diffrax.AbstractRungeKutta):
        tableau = solver.tableau
        if isinstance(tableau, diffrax.MultiButcherTableau) or tableau.implicit:
            return None
        n = tableau.num_stages
        fsal = tableau.fsal and not _vf_expensive(terms)
        return (0, n, n - 1) if fsal else (0, n, n)
    if type(solver) in _SIMPLE_COSTS:
        return _SIMPLE_COSTS[type(solver)]
    return None


_SIMPLE_COSTS = {
    diffrax.Euler: (0, 1, 1),
    diffrax.ReversibleHeun: (1, 1, 1),
    diffrax.LeapfrogMidpoint: (0, 1, 1),
    diffrax.SemiImplicitEuler: (0, 2, 2),
}


def _vf_expensive(terms) -> bool:
    if terms is None:
        return False
    leaves = terms.terms if isinstance(terms, diffrax.MultiTerm) else (terms,)
    return any(not isinstance(t, diffrax.ODETerm) for t in leaves)


class _AbstractNFECounter(diffrax.AbstractStepSizeController):
    controller: eqx.AbstractVar[diffrax.AbstractStepSizeController]
    costs: eqx.AbstractVar[tuple[int, int, int]]

    def wrap(self, direction):
        return eqx.tree_at(
            lambda c: c.controller, self, self.controller.wrap(direction)
        )

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        # The step-size heuristics call `func` in straight-line code, so counting the
        # calls while tracing counts the evaluations made at run time.
        calls = []

        def counted_func(*a):
            calls.append(None)
            return func(*a)

        tnext, inner = self.controller.init(
            terms, t0, t1, y0, dt0, args, counted_func, error_order
        )
        nfe = jnp.asarray(self.costs[0] + len(calls), dtype=jnp.int32)
        return tnext, (inner, nfe, jnp.array(True), jnp.array(False))

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        inner, nfe, fresh, jumped = controller_state
        _, first, later = self.costs
        nfe = nfe + jnp.where(fresh | jumped, first, later).astype(jnp.int32)
        keep, tprev, tnext, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        fresh = fresh & jnp.logical_not(keep)
        jumped = jnp.where(keep, made_jump, jumped)
        state = (inner, nfe, fresh, jumped)
        return keep, tprev, tnext, made_jump, state, result


class _NFECounter(_AbstractNFECounter):
    controller: diffrax.AbstractStepSizeController
    costs: tuple[int, int, int] = eqx.field(static=True)


class AdaptiveDelegate(diffrax.AbstractAdaptiveStepSizeController):
    """Mixin for wrappers around an adaptive controller (`self.controller`): they stay
    adaptive, with its tolerances and norm (implicit solvers read them)."""

    controller: eqx.AbstractVar[diffrax.AbstractAdaptiveStepSizeController]

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm


class _AdaptiveNFECounter(_AbstractNFECounter, AdaptiveDelegate):
    controller: diffrax.AbstractAdaptiveStepSizeController
    costs: tuple[int, int, int] = eqx.field(static=True)


def count_nfe(controller, costs):
    """Wrap a step-size controller so that the solve counts vector-field evaluations.

    Returns a controller that behaves exactly as `controller` and keeps the running
    count in its state; read it with `read_nfe(sol.controller_state)` after solving
    with `diffrax.SaveAt(..., controller_state=True)`. Adaptive controllers stay
    adaptive (implicit solvers still take their tolerances from them).

    **Arguments:**

    - `controller`: any `diffrax.AbstractStepSizeController`.
    - `costs`: `(init, first, later)` from `nfe_costs`.

    **Example:**

    ```python
    term, solver = diffrax.ODETerm(f), diffrax.Tsit5()
    ctrl = count_nfe(diffrax.PIDController(rtol=1e-6, atol=1e-6), nfe_costs(solver, term))
    sol = diffrax.diffeqsolve(term, solver, 0.0, 1.0, None, y0, stepsize_controller=ctrl,
                              saveat=diffrax.SaveAt(t1=True, controller_state=True))
    read_nfe(sol.controller_state)
    ```
    """
    costs = tuple(int(c) for c in costs)
    if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
        return _AdaptiveNFECounter(controller, costs)
    return _NFECounter(controller, costs)


def read_nfe(controller_state):
    """The number of evaluations recorded in the final state of a `count_nfe` controller."""
    return controller_state[1]
