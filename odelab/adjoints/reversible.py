r"""`ReversibleAdjoint`: exact discrete gradients for reversible solvers, flat memory.

The forward pass is diffrax's own loop (no checkpoints, nothing stored per step but
the accepted step boundaries $t_0 < t_1 < \dots < t_N$). The backward pass walks the
steps in reverse: from the state after step $n$ it rebuilds the state before it with
the solver's exact inverse (`backward_step`), then applies the vector–Jacobian
product of that one step,

$$\bar y_n, \bar s_n, \bar\theta \mathrel{+}= \Big(\frac{\partial (y_{n+1},
s_{n+1}, d_n)}{\partial (y_n, s_n, \theta)}\Big)^{\!\top}
(\bar y_{n+1}, \bar s_{n+1}, \bar d_n),$$

where $d_n$ is the step's dense-output information and $\bar d_n$ the cotangent of
the saved values interpolated from it. The result equals backpropagation through the
same discretisation (RecursiveCheckpointAdjoint) up to the round-off of the inverse
steps; memory is that of one step plus the $N$ step boundaries, independent of $N$
otherwise. Cost: one inverse step and one step VJP per step.

**Reference:** the reversible adjoint of P. Kidger, J. Foster, X. Li, T. Lyons,
"Efficient and Accurate Gradients for Neural SDEs", NeurIPS 2021, arXiv:2105.13493,
and S. McCallum, J. Foster, arXiv:2410.11648, §3.
"""

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from diffrax._adjoint import _only_transpose_ys
from jax import lax

from ..solvers.nfe import AdaptiveDelegate
from ..solvers.reversible import AbstractReversibleSolver
from ._common import (
    add as _add,
    check_loop_inputs,
    forward_loop,
    materialise as _materialise,
    save_cotangents as _save_cotangents,
    zeros_like as _zeros_like,
)


_REVERSIBLE = "odelab.solvers.ReversibleHeun, BDIA, ReversibleRK, MALI, EDICT"


class _StepRecorder(diffrax.AbstractStepSizeController):
    """Wraps a controller; its state also keeps the accepted step boundaries."""

    controller: diffrax.AbstractStepSizeController

    def wrap(self, direction):
        return _StepRecorder(self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        # diffeqsolve initialises the user's controller before the adjoint's loop
        # wraps it; the loop then builds this wrapper's state itself.
        raise AssertionError("a _StepRecorder is created already initialised")

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        inner, times, count = controller_state
        keep, tprev, tnext, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        keep_ = jnp.asarray(keep)
        if times.shape[0] > 1:  # (a fixed grid keeps only t0: see `loop`)
            index = jnp.minimum(count + 1, times.shape[0] - 1)
            times = times.at[index].set(jnp.where(keep_, t1, times[index]))
        count = count + keep_.astype(count.dtype)
        return keep, tprev, tnext, made_jump, (inner, times, count), result


class _AdaptiveStepRecorder(_StepRecorder, AdaptiveDelegate):
    controller: diffrax.AbstractAdaptiveStepSizeController

    def wrap(self, direction):
        return _AdaptiveStepRecorder(self.controller.wrap(direction))


def _is_fixed_grid(controller) -> bool:
    from .._fixed_step import FixedGrid

    while controller is not None:
        if isinstance(controller, FixedGrid):
            return True
        controller = getattr(controller, "controller", None)  # count_nfe wrappers
    return False


class ReversibleAdjoint(diffrax.AbstractAdjoint):
    r"""Backpropagate through a reversible solver by inverting its steps.

    Exact gradients of the discretised solve (the same as differentiating through it
    step by step) with memory independent of the number of steps, for any
    `odelab.solvers.AbstractReversibleSolver` (ReversibleHeun, BDIA, ReversibleRK,
    MALI, EDICT). SDEs too, with reversible Heun (Stratonovich) on
    `MultiTerm(ODETerm(drift), ControlTerm(diffusion, VirtualBrownianTree))`: the
    backward pass queries the same Brownian increments again. Fixed or adaptive steps (only the accepted step boundaries are kept),
    `SaveAt(t0=..., t1=..., ts=...)`, pytree states, gradients with respect to `y0`,
    `args` and arrays inside the vector field, `vmap`.

    Accuracy: the backward pass rebuilds each state from the next by the inverse
    step, so the gradient is exact up to the round-off accumulated over the inverse
    steps (float64: ~1e-12 relative on the zoo problems over 1000 steps; float32:
    see the tests and `odelab bench adjoints`).

    **Example:**

    ```python
    sol = diffrax.diffeqsolve(term, odelab.solvers.ReversibleRK(diffrax.Tsit5()),
                              t0, t1, dt0, y0, args, adjoint=ReversibleAdjoint())
    # or: odelab.solve(f, y0, ts, args, solver="reversible_heun", steps=100,
    #                  adjoint="reversible")
    ```

    **Reference:** P. Kidger et al., arXiv:2105.13493; S. McCallum, J. Foster,
    arXiv:2410.11648.
    """

    def loop(
        self,
        *,
        args,
        terms,
        solver,
        stepsize_controller,
        event,
        saveat,
        t0,
        t1,
        dt0,
        max_steps,
        throw,
        init_state,
        passed_solver_state,
        passed_controller_state,
        progress_meter,
    ):
        del throw
        if not isinstance(solver, AbstractReversibleSolver):
            raise ValueError(
                f"`ReversibleAdjoint` needs an algebraically reversible solver "
                f"({_REVERSIBLE}; names: reversible_heun, bdia, reversible_rk4, "
                f"mali, edict); got {type(solver).__name__}. Use adjoint='checkpoint' for "
                "other solvers."
            )
        sub = check_loop_inputs(
            "ReversibleAdjoint",
            terms,
            saveat,
            max_steps,
            event,
            passed_solver_state or passed_controller_state,
            allow_sde=True,
        )
        if isinstance(stepsize_controller, diffrax.AbstractAdaptiveStepSizeController):
            recorder = _AdaptiveStepRecorder(stepsize_controller)
        else:
            recorder = _StepRecorder(stepsize_controller)
        dtype = jnp.result_type(init_state.tprev)
        # odelab's FixedGrid steps to t0 + k dt0 (closed form): the backward pass
        # recomputes the step boundaries and nothing grows with the step count.
        # Any other controller: the accepted boundaries are kept (max_steps + 1).
        fixed_grid = _is_fixed_grid(stepsize_controller)
        size = 1 if fixed_grid else max_steps + 1
        times = jnp.full((size,), jnp.inf, dtype).at[0].set(init_state.tprev)
        controller_state = (
            lax.stop_gradient(init_state.controller_state),
            times,
            jnp.asarray(0, jnp.int32),
        )
        y0 = init_state.y
        init_state = eqx.tree_at(
            lambda s: (s.y, s.solver_state, s.controller_state),
            init_state,
            (object(), object(), controller_state),
        )
        final_state, aux_stats = _reversible_loop(
            (y0, args, terms),
            solver=solver,
            stepsize_controller=recorder,
            saveat=saveat,
            sub=sub,
            t0=t0,
            t1=t1,
            dt0=dt0,
            max_steps=max_steps,
            init_state=init_state,
            progress_meter=progress_meter,
            loop=self._loop,
            fixed_grid=fixed_grid,
        )
        final_state = eqx.tree_at(
            lambda s: s.controller_state,
            final_state,
            final_state.controller_state[0],
        )
        # As diffrax's BacksolveAdjoint: only the saved values carry gradients.
        return _only_transpose_ys(final_state), aux_stats


@eqx.filter_custom_vjp
def _reversible_loop(y__args__terms, **kw):
    return forward_loop(y__args__terms, **kw)


@_reversible_loop.def_fwd
def _reversible_loop_fwd(perturbed, y__args__terms, **kw):
    del perturbed
    final_state, aux_stats = _reversible_loop(y__args__terms, **kw)
    residuals = (
        final_state.y,
        final_state.solver_state,
        final_state.controller_state[1],
        final_state.controller_state[2],
        final_state.save_state.ys,
    )
    return (final_state, aux_stats), residuals


@_reversible_loop.def_bwd
def _reversible_loop_bwd(
    residuals, grad_final_state__aux_stats, perturbed, y__args__terms, **kw
):
    del perturbed
    solver, sub = kw["solver"], kw["sub"]
    y0_in, args, terms = y__args__terms
    y_final, state_final, times, count, saved_ys = residuals
    grad_final_state, _ = grad_final_state__aux_stats
    ys_bar = _materialise(_save_cotangents(grad_final_state), saved_ys)

    n_t0 = int(bool(sub.t0))
    ts = sub.ts
    n_ts = 0 if ts is None else ts.shape[0]

    def ys_bar_at(i):
        return jtu.tree_map(lambda a: a[i], ys_bar)

    y_bar = _zeros_like(y_final)
    if sub.t1:
        y_bar = _add(y_bar, ys_bar_at(-1))
    state_bar = _zeros_like(state_final)
    args_bar = _zeros_like(args)
    terms_bar = _zeros_like(terms)

    if kw["fixed_grid"]:
        from .._fixed_step import _grid_time

        start, end, dt0 = times[0], kw["t1"], kw["dt0"]

        def time_at(k):
            k = jnp.asarray(k, jnp.int32)
            return jnp.where(k == 0, start, _grid_time(start, end, dt0, k))

    else:

        def time_at(k):
            return times[k]

    def body(carry):
        n, j, y, state, y_bar, state_bar, args_bar, terms_bar = carry
        t_a, t_b = time_at(n), time_at(n + 1)
        first = n == 0
        t_prev = jnp.where(first, t_a, time_at(jnp.maximum(n - 1, 0)))
        y_prev, state_prev = solver.backward_step(
            terms, t_prev, t_a, t_b, y, args, state, first
        )

        def one_step(y_, state_, args_, terms_):
            y1, _, dense, state1, _ = solver.step(
                terms_, t_a, t_b, y_, args_, state_, False
            )
            return y1, state1, dense

        (_, _, dense), vjp = eqx.filter_vjp(one_step, y_prev, state_prev, args, terms)
        dense_bar = _zeros_like(dense)

        if n_ts:
            # Saved values interpolated inside this step: ts[j] in (t_a, t_b], or
            # [t_a, t_b] for the first step (diffrax saves each at the first step
            # whose end reaches it).
            def save_cond(c):
                j_, _ = c
                return (j_ >= 0) & ((ts[jnp.maximum(j_, 0)] > t_a) | first)

            def save_body(c):
                j_, d_bar = c
                evaluate = lambda d: solver.interpolation_cls(
                    t0=t_a, t1=t_b, **d
                ).evaluate(ts[j_])
                _, vjp_interp = eqx.filter_vjp(evaluate, dense)
                (g,) = vjp_interp(ys_bar_at(n_t0 + j_))
                return j_ - 1, _add(d_bar, _materialise(g, dense))

            j, dense_bar = lax.while_loop(save_cond, save_body, (j, dense_bar))

        g_y, g_state, g_args, g_terms = vjp((y_bar, state_bar, dense_bar))
        return (
            n - 1,
            j,
            y_prev,
            state_prev,
            _materialise(g_y, y_prev),
            _materialise(g_state, state_prev),
            _add(args_bar, _materialise(g_args, args)),
            _add(terms_bar, _materialise(g_terms, terms)),
        )

    carry = (
        count - 1,
        jnp.asarray(n_ts - 1, jnp.int32),
        y_final,
        state_final,
        _materialise(y_bar, y_final),
        _materialise(state_bar, state_final),
        _materialise(args_bar, args),
        _materialise(terms_bar, terms),
    )
    carry = lax.while_loop(lambda c: c[0] >= 0, body, carry)
    _, _, y0_rebuilt, _, y_bar, state_bar, args_bar, terms_bar = carry
    if sub.t0:
        y_bar = _add(y_bar, ys_bar_at(0))

    # The solver state at t0 came from `solver.init(y0, args)`.
    def init(y_, args_, terms_):
        return solver.init(terms_, time_at(0), time_at(1), y_, args_)

    _, vjp_init = eqx.filter_vjp(init, y0_in, args, terms)
    g_y, g_args, g_terms = vjp_init(state_bar)
    y_bar = _add(y_bar, _materialise(g_y, y0_in))
    args_bar = _add(args_bar, _materialise(g_args, args))
    terms_bar = _add(terms_bar, _materialise(g_terms, terms))
    return y_bar, args_bar, terms_bar
