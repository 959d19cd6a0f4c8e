r"""The exponential adjoint (AdjointDPM): the continuous adjoint of a semilinear ODE,
solved backwards by the forward solve's own exponential integrator.

For $\frac{dy}{ds} = L y + N(s, y, \theta)$ and a loss on $y(s_1)$, the adjoint
state $a = \partial\mathcal L/\partial y$ and the parameter cotangent
$\bar\theta$ solve, from $s_1$ back to $s_0$,

$$\frac{dy}{ds} = L y + N, \qquad
  \frac{da}{ds} = -L^\top a - \Big(\frac{\partial N}{\partial y}\Big)^{\!\top} a, \qquad
  \frac{d\bar\theta}{ds} = -\Big(\frac{\partial (Ly + N)}{\partial\theta}\Big)^{\!\top} a,$$

with $a(s_1) = \partial\mathcal L/\partial y(s_1)$, $\bar\theta(s_1) = 0$; then
$\partial\mathcal L/\partial y_0 = a(s_0)$ and $\partial\mathcal L/\partial\theta =
\bar\theta(s_0)$. The augmented system is semilinear again, with the block-diagonal
linear part $\mathrm{diag}(L, -L^\top, 0)$: the same exponential integrator (and, for
a fixed grid, the same steps, reversed) integrates the stiff linear parts of both $y$
and $a$ exactly, which is the point of AdjointDPM (Pan et al. 2023): on the
probability-flow ODE in $\tilde x = x/\alpha$, $s = -\lambda$ ($L = 1$) the backward
pass is as non-stiff as the sampler. $y$ is recomputed backwards from the final state
(no trajectory is stored), so memory does not grow with the number of steps; the
gradient is that of the continuous ODE, and it converges to it at the solver's order
as the steps shrink (it is not the gradient of the discrete solve: use
`"checkpoint"` or, for reversible solvers, `"reversible"` for that).

Supports: a `SemilinearTerm` with scalar or diagonal $L$; odelab's exponential
solvers (`ExponentialEuler`/DDIM, `ETDRK2`, `ETDRK4`, `ExponentialMidpoint`,
`ExponentialRK3`, `ExponentialAdams`/DPM-Solver++(2M, 3M), ...), or another one given
as `backward_solver`; `SaveAt(t1=True)` (and `t0`); fixed grids (`StepTo`, constant
steps) and adaptive controllers; gradients with respect to `y0`, `args` and the
term's arrays (odelab's samplers closure-convert the model, so its weights count).

**Reference:** J. Pan, J. H. Liew, V. Y. F. Tan, J. Feng, H. Yan, "AdjointDPM:
Adjoint Sensitivity Method for Gradient Backpropagation of Diffusion Probabilistic
Models", ICLR 2024, arXiv:2307.10711.
"""

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from diffrax._adjoint import _only_transpose_ys
from jax import lax

from ..phi import phis as _phis
from ..solvers.exponential import AbstractExponentialRK, ExponentialAdams
from ..solvers.nfe import _AbstractNFECounter
from ..terms import SemilinearTerm
from ._common import check_loop_inputs, forward_loop, materialise, save_cotangents


def _arrays(tree):
    return eqx.filter(tree, eqx.is_inexact_array)


class _AugmentedTerm(SemilinearTerm):
    r"""$(y, a, \bar\theta)$ with the linear part $\mathrm{diag}(L, -L, 0)$ ($L$ scalar
    or diagonal, so $L^\top = L$) stacked along a leading axis of length 3: the
    φ-functions of all three blocks are computed at once and combine elementwise, as
    the solvers' coefficient arithmetic expects."""

    def __init__(self, linear, nonlinear):
        linear = jnp.asarray(linear)
        self.linear = jnp.stack([linear, -linear, jnp.zeros_like(linear)])
        self.nonlinear = nonlinear
        self.kind = "blocks"

    def check_state(self, y) -> None:
        return

    def apply_linear(self, y):
        return self.apply_phi(self.linear, y)

    def phis(self, h, kmax: int) -> tuple:
        return _phis(jnp.asarray(h, self.linear.dtype) * self.linear, kmax)

    def apply_phi(self, op, v):
        y, a, g = v
        # The parameter block's L is 0: its operator is the same number everywhere.
        op_g = jnp.reshape(op[2], (-1,))[0]
        scale = lambda o: lambda x: (o * x).astype(x.dtype)  # noqa: E731
        return (
            jtu.tree_map(scale(op[0]), y),
            jtu.tree_map(scale(op[1]), a),
            jtu.tree_map(scale(op_g), g),
        )


def _is_exponential(solver) -> bool:
    return isinstance(solver, AbstractExponentialRK | ExponentialAdams)


class ExponentialAdjoint(diffrax.AbstractAdjoint):
    """AdjointDPM: the continuous adjoint of a `SemilinearTerm` solve, integrated
    backwards with an exponential integrator (see the module notes).

    **Arguments:**

    - `backward_solver`: the solver of the backward pass; default the forward solver
      (which must then be one of odelab's exponential Runge–Kutta or Adams solvers).
      Give one for a forward solver that cannot take the augmented system (e.g.
      `UniPC`, whose coefficients need a scalar $L$: pass `ExponentialAdams(order)`).
    """

    backward_solver: diffrax.AbstractSolver | None = None

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
        name = type(self).__name__
        sub = check_loop_inputs(
            name,
            terms,
            saveat,
            max_steps,
            event,
            passed_solver_state or passed_controller_state,
        )
        inner = terms.term if isinstance(terms, diffrax._term.WrapTerm) else terms
        if not isinstance(inner, SemilinearTerm):
            raise ValueError(
                f"`{name}` (adjoint_dpm) needs a semilinear problem, "
                f"`odelab.terms.SemilinearTerm(L, N)`; got {type(inner).__name__}. "
                "Use adjoint='checkpoint' for other terms (or, for diffusion "
                "sampling, an exponential sampler in the 'data' or 'noise' space)."
            )
        if inner.kind not in ("scalar", "diagonal"):
            raise ValueError(
                f"`{name}` supports a scalar or diagonal linear part; got a "
                f"{inner.kind} one (its adjoint needs the transposed operator)."
            )
        backward = solver if self.backward_solver is None else self.backward_solver
        if not _is_exponential(backward):
            hint = (
                " Pass `backward_solver=ExponentialAdams(order)`."
                if self.backward_solver is None
                else ""
            )
            raise ValueError(
                f"`{name}` solves the augmented adjoint system with an exponential "
                f"integrator (ExponentialEuler, ETDRK2/4, ExponentialMidpoint, "
                f"ExponentialRK3, ExponentialAdams); got {type(backward).__name__}."
                + hint
            )
        y0 = init_state.y
        if sub.ts is not None:
            # ts may only repeat the end points (odelab.solve's ts=[t0, t1]): the
            # backward pass starts from the final state and has no interior knots.
            if sub.ts.shape[0] > 2:
                raise ValueError(
                    f"`{name}` saves the end points only: `SaveAt(t1=True)`, "
                    "`t0=True`, or ts=[t0, t1] (no interior save times; its backward "
                    "pass restarts from the final state only)."
                )
            ends = jnp.stack([t0, t1])[-sub.ts.shape[0] :]
            y0 = eqx.error_if(
                y0,
                jnp.any(sub.ts != ends.astype(sub.ts.dtype)),
                f"`{name}`: save times other than t0 and t1 are not supported.",
            )
        init_state = eqx.tree_at(
            lambda s: (s.y, s.solver_state, s.controller_state),
            init_state,
            (
                object(),
                object(),
                lax.stop_gradient(init_state.controller_state),
            ),
        )
        final_state, aux_stats = _exponential_loop(
            (y0, args, terms),
            solver=solver,
            backward=backward,
            stepsize_controller=stepsize_controller,
            saveat=saveat,
            sub=sub,
            t0=t0,
            t1=t1,
            dt0=dt0,
            max_steps=max_steps,
            init_state=init_state,
            progress_meter=progress_meter,
            loop=self._loop,
        )
        return _only_transpose_ys(final_state), aux_stats


def _backward_steps(controller, dt0):
    """The backward pass's controller and `dt0`, in the forward's internal times:
    a `StepTo` grid reversed (the same steps), a fixed or adaptive controller as is
    with `-dt0` (odelab's NFE counters are unwrapped: nothing is counted backwards)."""
    while isinstance(controller, _AbstractNFECounter):
        controller = controller.controller
    if isinstance(controller, diffrax.StepTo):
        return diffrax.StepTo(ts=controller.ts[::-1]), None
    return controller, None if dt0 is None else -dt0


@eqx.filter_custom_vjp
def _exponential_loop(y__args__terms, **kw):
    return forward_loop(y__args__terms, **kw)


@_exponential_loop.def_fwd
def _exponential_loop_fwd(perturbed, y__args__terms, **kw):
    del perturbed
    final_state, aux_stats = _exponential_loop(y__args__terms, **kw)
    return (final_state, aux_stats), final_state.save_state.ys


@_exponential_loop.def_bwd
def _exponential_loop_bwd(
    saved_ys, grad_final_state__aux_stats, perturbed, y__args__terms, **kw
):
    del perturbed
    y0, args, terms = y__args__terms
    grad_final_state, _ = grad_final_state__aux_stats
    ys_bar = materialise(save_cotangents(grad_final_state), saved_ys)
    sub, controller = kw["sub"], kw["stepsize_controller"]
    # Internal times: diffeqsolve has multiplied them by the direction of integration
    # and wrapped the term (WrapTerm), so that they increase; the backward pass runs
    # in those times from t1 down to t0.
    direction = terms.direction if isinstance(terms, diffrax._term.WrapTerm) else 1
    inner = terms.term if isinstance(terms, diffrax._term.WrapTerm) else terms
    lin = direction * inner.linear
    theta = _arrays((args, terms))

    def nonlinear(tau, state, _):
        y, a, _ = state

        def field(y_, theta_):
            args_, terms_ = eqx.combine(theta_, (args, terms))
            # WrapTerm.vf is the field at the true time; the direction of
            # integration enters through the control, so dy/dtau carries it here.
            return jtu.tree_map(lambda v: direction * v, terms_.vf(tau, y_, args_))

        f, vjp = eqx.filter_vjp(field, y, theta)
        y_bar, theta_bar = vjp(a)
        y_bar = materialise(y_bar, y)
        n_y = jtu.tree_map(lambda fv, v: fv - lin * v, f, y)
        n_a = jtu.tree_map(lambda yb, v: lin * v - yb, y_bar, a)
        n_g = [-g for g in jtu.tree_leaves(materialise(theta_bar, theta))]
        return n_y, n_a, n_g

    y_final = jtu.tree_map(lambda v: v[-1], saved_ys)
    # Where each saved entry sits: [t0 if sub.t0] + ts (ends only) + [t1 if sub.t1].
    n_ts = 0 if sub.ts is None else sub.ts.shape[0]
    at_t1 = [-1] if sub.t1 else []
    at_t0 = [0] if sub.t0 else []
    if n_ts:
        first = int(sub.t0)
        at_t1.append(first + n_ts - 1)
        if n_ts == 2:
            at_t0.append(first)

    def cotangent(indices):
        return jtu.tree_map(lambda v: sum(v[i] for i in indices), ys_bar)

    a_final = cotangent(at_t1)
    # The parameter cotangent travels as a flat list of arrays: diffrax's save
    # buffers cannot hold the None leaves of a filtered pytree.
    theta_leaves, theta_def = jtu.tree_flatten(theta)
    theta_bar0 = [jnp.zeros_like(x) for x in theta_leaves]
    back_controller, back_dt0 = _backward_steps(controller, kw["dt0"])
    sol = diffrax.diffeqsolve(
        _AugmentedTerm(lin, nonlinear),
        kw["backward"],
        kw["t1"],
        kw["t0"],
        back_dt0,
        (y_final, a_final, theta_bar0),
        None,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=back_controller,
        max_steps=kw["max_steps"],
        # Not differentiated again: a plain while loop, no checkpoint buffers.
        adjoint=diffrax.ForwardMode(),
        throw=False,
    )
    _, a0, theta_bar = jtu.tree_map(lambda v: v[-1], sol.ys)
    theta_bar = jtu.tree_unflatten(theta_def, theta_bar)
    if at_t0:
        a0 = jtu.tree_map(lambda u, v: u + v, a0, cotangent(at_t0))
    args_bar, terms_bar = theta_bar
    return a0, materialise(args_bar, args), materialise(terms_bar, terms)
