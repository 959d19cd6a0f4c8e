r"""Regularizers read from an adaptive solver's own heuristics: its local error
estimates and its stiffness estimates (Pal, Ma, Shah, Rackauckas, 2021).

`HeuristicsSolver` wraps an explicit Runge–Kutta pair (Tsit5, Dopri5, ...) and adds,
at every step it takes, the step's scaled local error estimate and stiffness estimate
to running sums kept in its solver state. diffrax keeps a step's new solver state only
when the step is accepted, so the sums run over the accepted steps:

$$R_E = \sum_j E_j\,|\Delta t_j|, \qquad
E_j = \Big\| \frac{\hat e_j}{\mathrm{atol} + \mathrm{rtol}\max(|y_j|, |y_{j+1}|)}
\Big\|_{\mathrm{rms}},$$

the step-size controller's own error norm of the embedded error $\hat e_j$, and

$$R_S = \sum_j |\Delta t_j|\,\hat\lambda_j, \qquad
|\Delta t_j|\,\hat\lambda_j = \frac{\|k_s - k_{s-1}\|_2}{\|y_{j+1} - g_{s-1}\|_2},$$

Shampine's estimate of $h|\lambda|$ (the dominant eigenvalue along the step) from the
last two stages of an FSAL pair, which are both evaluated at $t_{j+1}$: $k_s = h f(y_{j+1})$
and $k_{s-1} = h f(g_{s-1})$. (Pal et al. take the largest componentwise ratio; the norm
ratio does not divide by components that happen to agree.)

Both come out of the forward solve at no extra cost; their gradients are the discrete
adjoint's (backpropagation through the solver's arithmetic), with the step sizes held
fixed (diffrax stops gradients through the controller), as in the paper.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._names import ODE_SOLVERS, resolve


def _rms(tree):
    leaves = jtu.tree_leaves(tree)
    total = sum(jnp.sum(x**2) for x in leaves)
    size = sum(x.size for x in leaves)
    return jnp.sqrt(total / size)


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jtu.tree_leaves(tree)))


class Heuristics(eqx.Module):
    """Running sums over the accepted steps: `error` ($R_E$), `stiffness` ($R_S$) and
    the number of `steps` counted."""

    error: jax.Array
    stiffness: jax.Array
    steps: jax.Array


class HeuristicsSolver(diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver):
    r"""Wraps an explicit Runge–Kutta pair and accumulates $R_E$ and $R_S$ (module
    docstring) over the steps diffrax accepts; read them from the final solver state
    (`diffrax.SaveAt(solver_state=True)`, then `heuristics_of(sol)`).

    **Arguments:**

    - `solver`: an explicit Runge–Kutta solver with an error estimate whose last two
      stages both sit at the end of the step (FSAL pairs: `diffrax.Tsit5`,
      `diffrax.Dopri5`, `diffrax.Dopri8`, ...), or its odelab name.
    - `rtol`, `atol`: the tolerances of the step-size controller, so that $E_j$ is the
      controller's own error norm.

    **Raises:** `ValueError` for a solver without an error estimate or whose last two
    stages are not both at the step's end.

    **Reference:** A. Pal, Y. Ma, V. Shah, C. Rackauckas, "Opening the Blackbox:
    Accelerating Neural Differential Equations by Regularizing Internal Solver
    Heuristics", ICML 2021, arXiv:2105.03918.
    """

    solver: diffrax.AbstractRungeKutta
    rtol: float
    atol: float

    def __init__(self, solver="tsit5", rtol=1e-3, atol=1e-6):
        solver = resolve(solver, ODE_SOLVERS, "ODE solver", "solver")
        tableau = getattr(solver, "tableau", None)
        if (
            not isinstance(tableau, diffrax.ButcherTableau)
            or tableau.implicit
            or tableau.b_error is None
            or not np.any(np.asarray(tableau.b_error))
        ):
            raise ValueError(
                f"`solver={type(solver).__name__}()` is not an explicit Runge–Kutta "
                "pair with an error estimate; use e.g. 'tsit5' or 'dopri5'."
            )
        if len(tableau.c) < 2 or not (tableau.c[-1] == tableau.c[-2] == 1):
            raise ValueError(
                f"`{type(solver).__name__}`'s last two stages are not both at the "
                "end of the step, which the stiffness estimate needs; use 'tsit5' or "
                "'dopri5'."
            )
        self.solver = solver
        self.rtol = rtol
        self.atol = atol

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        dtype = jnp.result_type(*jtu.tree_leaves(y0))
        zero = jnp.zeros((), dtype)
        sums = Heuristics(zero, zero, jnp.zeros((), jnp.int32))
        return self.solver.init(terms, t0, t1, y0, args), sums

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, sums = solver_state
        y1, y_error, dense_info, inner, result = self.solver.step(
            terms, t0, t1, y0, args, inner, made_jump
        )
        error, stiffness = step_heuristics(
            self.solver.tableau, y0, y1, y_error, dense_info["k"], self.rtol, self.atol
        )
        dt = jnp.abs(t1 - t0).astype(sums.error.dtype)
        sums = Heuristics(
            sums.error + error.astype(sums.error.dtype) * dt,
            sums.stiffness + stiffness.astype(sums.error.dtype),
            sums.steps + 1,
        )
        return y1, y_error, dense_info, (inner, sums), result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def step_heuristics(tableau, y0, y1, y_error, ks, rtol, atol):
    r"""$(E_j, |\Delta t_j|\hat\lambda_j)$ of one Runge–Kutta step from its
    embedded error `y_error` and its stages `ks` (diffrax's `dense_info["k"]`, each
    already multiplied by the step size)."""
    scale = jtu.tree_map(
        lambda a, b: atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)), y0, y1
    )
    error = _rms(jtu.tree_map(lambda e, s: e / s, y_error, scale))
    # g_{s-1} = y0 + sum_j a_{s-1, j} k_j: the state the second-to-last stage saw.
    row = tableau.a_lower[-2]
    g = jtu.tree_map(
        lambda y, k: (
            y + sum(jnp.asarray(a, k.dtype) * k[i] for i, a in enumerate(row) if a != 0)
        ),
        y0,
        ks,
    )
    dk = _norm(jtu.tree_map(lambda k: k[-1] - k[-2], ks))
    dy = _norm(jtu.tree_map(lambda a, b: a - b, y1, g))
    safe = jnp.where(dy > 0, dy, 1)
    stiffness = jnp.where(dy > 0, dk / safe, 0)
    return error, stiffness


def heuristics_of(solution: diffrax.Solution) -> Heuristics:
    """The sums of a solve with `HeuristicsSolver` saved with
    `SaveAt(solver_state=True)`."""
    if solution.solver_state is None:
        raise ValueError(
            "The solution has no solver state: solve with "
            "`diffrax.SaveAt(..., solver_state=True)`."
        )
    return solution.solver_state[1]


def solve_with_heuristics(
    vector_field,
    y0,
    ts,
    args=None,
    *,
    solver="tsit5",
    rtol: float = 1e-3,
    atol: float = 1e-6,
    dt0=None,
    adjoint="checkpoint",
    max_steps: int = 4096,
) -> tuple[diffrax.Solution, Heuristics]:
    r"""Solve $dy/dt = f(t, y, \mathrm{args})$ adaptively and return the solution at
    `ts` with the heuristics $R_E$, $R_S$ of its accepted steps (add
    `weight * h.error` or `weight * h.stiffness` to a loss).

    **Arguments:** `vector_field`, `y0` (any pytree), `ts` (save times, increasing),
    `args`; `solver` (an FSAL explicit pair, default Tsit5), `rtol`, `atol`, `dt0`
    (default: diffrax's initial-step heuristic), `max_steps`; `adjoint`:
    `"checkpoint"` (recursive checkpointing) or `"direct"`, the discrete adjoints.

    **Returns:** `(solution, Heuristics(error, stiffness, steps))`.

    **Raises:** `ValueError` for another adjoint: a continuous adjoint
    (`"backsolve"`, ...) does not differentiate quantities kept in the solver state,
    and diffrax returns a zero gradient for them without saying so.

    **Example:**

    ```python
    sol, h = solve_with_heuristics(lambda t, y, p: -p * y, jnp.ones(2),
                                   jnp.linspace(0, 1, 5), 3.0)
    loss = jnp.sum(sol.ys[-1] ** 2) + 0.1 * h.error
    ```

    **Reference:** Pal et al. 2021 (see `HeuristicsSolver`).
    """
    adjoints = {
        "checkpoint": diffrax.RecursiveCheckpointAdjoint,
        "direct": diffrax.DirectAdjoint,
    }
    if adjoint not in adjoints:
        raise ValueError(
            f"`adjoint={adjoint!r}`: the heuristics live in the solver state, which "
            "only the discrete adjoints differentiate; use 'checkpoint' or 'direct'."
        )
    ts = jnp.asarray(ts)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        HeuristicsSolver(solver, rtol, atol),
        ts[0],
        ts[-1],
        dt0,
        y0,
        args,
        saveat=diffrax.SaveAt(ts=ts, solver_state=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        adjoint=adjoints[adjoint](),
        max_steps=max_steps,
    )
    return sol, heuristics_of(sol)
