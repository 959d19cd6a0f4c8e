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
|\Delta t_j|\,\hat\lambda_j = \frac{\|k_s - k_{s-1}\|_2}{\|g_s - g_{s-1}\|_2},$$

the Lipschitz quotient of the step's last two stages $k_i = h f(g_i)$, with $g_i$ the
state stage $i$ evaluates at. For an FSAL pair (Tsit5, Dopri5) both stages sit at
$t_{j+1}$ and $g_s = y_{j+1}$: this is Shampine's estimate of $h|\lambda|$, $\lambda$
the dominant eigenvalue along the step. (Pal et al. take the largest componentwise
ratio; the norm ratio does not divide by components that happen to agree.) For a pair
whose last two stages sit at different times (Heun, the adaptive pair for
Stratonovich SDEs, where $k_i$ also carries the noise increment) the quotient also
sees $\partial_t f$; for an autonomous field it is the same estimate.

SDEs: `solve_with_heuristics(..., diffusion=g, key=...)` accumulates the same sums
over the adaptive steps of an SDE pair (default Heun, whose error estimate is its
difference to Euler) on a `diffrax.VirtualBrownianTree`. There the stages carry the
noise increments, and the stage quotient divides by them: regularizing $R_S$ of an SDE
rewards a larger diffusion. Regularize $R_E$, or the drift's stiffness (as
`NeuralSDE.local_heuristics` does).

Both come out of the forward solve at no extra cost; their gradients are the discrete
adjoint's (backpropagation through the solver's arithmetic), with the step sizes held
fixed (diffrax stops gradients through the controller), as in the paper.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np

from .._names import ODE_SOLVERS, SDE_SOLVERS, resolve
from ..solvers.nfe import count_nfe, nfe_costs, read_nfe


def _safe_sqrt(x):
    # sqrt with a zero (not infinite) gradient at 0: a stage difference is exactly 0
    # for a field that is constant along the step.
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


def _rms(tree):
    leaves = jtu.tree_leaves(tree)
    total = sum(jnp.sum(x**2) for x in leaves)
    size = sum(x.size for x in leaves)
    return _safe_sqrt(total / size)


def _norm(tree):
    return _safe_sqrt(sum(jnp.sum(x**2) for x in jtu.tree_leaves(tree)))


class Heuristics(eqx.Module):
    """Running sums over the accepted steps: `error` ($R_E$), `stiffness` ($R_S$) and
    the number of `steps` counted."""

    error: jax.Array
    stiffness: jax.Array
    steps: jax.Array


class AbstractDelegatingSolver(
    diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver
):
    """A wrapper that steps with `self.solver` and keeps extra values in its solver
    state: everything but `init` and `step` is the wrapped solver's."""

    solver: eqx.AbstractVar[diffrax.AbstractRungeKutta]

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

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


class HeuristicsSolver(AbstractDelegatingSolver):
    r"""Wraps an explicit Runge–Kutta pair and accumulates $R_E$ and $R_S$ (module
    docstring) over the steps diffrax accepts; read them from the final solver state
    (`diffrax.SaveAt(solver_state=True)`, then `heuristics_of(sol)`).

    **Arguments:**

    - `solver`: an explicit Runge–Kutta solver with an error estimate
      (`diffrax.Tsit5`, `diffrax.Dopri5`, `diffrax.Heun` for SDEs, ...), or its
      odelab name.
    - `rtol`, `atol`: the tolerances of the step-size controller, so that $E_j$ is the
      controller's own error norm.

    **Raises:** `ValueError` for a solver without an error estimate.

    **Reference:** A. Pal, Y. Ma, V. Shah, C. Rackauckas, "Opening the Blackbox:
    Accelerating Neural Differential Equations by Regularizing Internal Solver
    Heuristics", ICML 2021, arXiv:2105.03918.
    """

    solver: diffrax.AbstractRungeKutta
    rtol: float
    atol: float
    # diffrax's DirectAdjoint sets this on Runge–Kutta solvers (a wrapper counts as
    # one there); it is passed on to the wrapped solver.
    scan_kind: None | str = None

    def __init__(self, solver="tsit5", rtol=1e-3, atol=1e-6, scan_kind=None):
        names = {**SDE_SOLVERS, **ODE_SOLVERS}
        solver = resolve(solver, names, "Runge–Kutta solver", "solver")
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
        self.solver = solver
        self.rtol = rtol
        self.atol = atol
        self.scan_kind = scan_kind

    @property
    def _inner(self):
        if self.scan_kind is None:
            return self.solver
        return eqx.tree_at(
            lambda s: s.scan_kind,
            self.solver,
            self.scan_kind,
            is_leaf=lambda x: x is None,
        )

    def init(self, terms, t0, t1, y0, args):
        dtype = jnp.result_type(*jtu.tree_leaves(y0))
        zero = jnp.zeros((), dtype)
        sums = Heuristics(zero, zero, jnp.zeros((), jnp.int32))
        return self.solver.init(terms, t0, t1, y0, args), sums

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, sums = solver_state
        y1, y_error, dense_info, inner, result = self._inner.step(
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


def step_heuristics(tableau, y0, y1, y_error, ks, rtol, atol):
    r"""$(E_j, |\Delta t_j|\hat\lambda_j)$ of one Runge–Kutta step from its
    embedded error `y_error` and its stages `ks` (diffrax's `dense_info["k"]`, each
    already multiplied by the step size)."""
    scale = jtu.tree_map(
        lambda a, b: atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)), y0, y1
    )
    error = _rms(jtu.tree_map(lambda e, s: e / s, y_error, scale))
    # g_i = y0 + sum_j a_{i, j} k_j: the state stage i saw (g_0 = y0). For an FSAL
    # pair the last stage's is y1; the difference is formed from the rows directly.
    last = len(tableau.a_lower)
    rows = [np.zeros(last)] + [
        np.pad(np.asarray(r, float), (0, last - len(r))) for r in tableau.a_lower
    ]
    diff = rows[-1] - rows[-2]
    dk = _norm(jtu.tree_map(lambda k: k[-1] - k[-2], ks))
    dy = _norm(
        jtu.tree_map(
            lambda k: sum(
                jnp.asarray(a, k.dtype) * k[i] for i, a in enumerate(diff) if a != 0
            ),
            ks,
        )
    )
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
    diffusion=None,
    key=None,
    solver=None,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    dt0=None,
    adjoint="checkpoint",
    max_steps: int = 4096,
) -> tuple[diffrax.Solution, Heuristics]:
    r"""Solve $dy = f(t, y, \mathrm{args})\,dt$ (or, with `diffusion`, the SDE
    $dy = f\,dt + g(t, y, \mathrm{args}) \circ dW$ with diagonal noise) adaptively and
    return the solution at `ts` with the heuristics $R_E$, $R_S$ of its accepted
    steps (add `weight * h.error` or `weight * h.stiffness` to a loss).

    **Arguments:**

    - `vector_field` $f$, `y0` (any pytree; a single array for an SDE), `ts` (save
      times, increasing), `args`.
    - `diffusion`: $g$, shaped like `y0` (diagonal noise, Stratonovich); `None` for
      an ODE.
    - `key`: the Brownian motion's key (SDE only); the path is a
      `diffrax.VirtualBrownianTree`, so adaptive steps may query any time.
    - `solver`: an explicit pair with an error estimate; default Tsit5 (ODE) or Heun
      (SDE).
    - `rtol`, `atol`, `dt0` (default: diffrax's initial-step heuristic; required for
      an SDE), `max_steps`.
    - `adjoint`: `"checkpoint"` (recursive checkpointing) or `"direct"`, the discrete
      adjoints.

    **Returns:** `(solution, Heuristics(error, stiffness, steps))`; `solution.stats
    ["nfe"]` counts the evaluations of $f$ (of $f$ and $g$ for an SDE), rejected
    steps included.

    **Raises:** `ValueError` for another adjoint (a continuous adjoint such as
    `"backsolve"` does not differentiate quantities kept in the solver state, and
    diffrax returns a zero gradient for them without saying so), or for an SDE
    without `key` or `dt0`.

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
    term = diffrax.ODETerm(vector_field)
    if diffusion is not None:
        if key is None or dt0 is None:
            raise ValueError(
                "An SDE solve needs `key=` (its Brownian motion) and `dt0=` (the "
                "first step; diffrax's initial-step heuristic is for ODEs)."
            )
        y0 = jnp.asarray(y0)
        t0, t1 = ts[0], ts[-1]
        bm = diffrax.VirtualBrownianTree(
            jnp.minimum(t0, t1),
            jnp.maximum(t0, t1),
            tol=jnp.abs(jnp.asarray(dt0, y0.dtype)) / 2**8,
            shape=jax.ShapeDtypeStruct(y0.shape, y0.dtype),
            key=key,
        )
        g = lambda t, y, a: lx.DiagonalLinearOperator(diffusion(t, y, a))  # noqa: E731
        term = diffrax.MultiTerm(term, diffrax.ControlTerm(g, bm))
    wrapper = HeuristicsSolver(
        solver or ("tsit5" if diffusion is None else "heun"), rtol, atol
    )
    controller = count_nfe(
        diffrax.PIDController(rtol=rtol, atol=atol), nfe_costs(wrapper.solver, term)
    )
    sol = diffrax.diffeqsolve(
        term,
        wrapper,
        ts[0],
        ts[-1],
        dt0,
        y0,
        args,
        saveat=diffrax.SaveAt(ts=ts, solver_state=True, controller_state=True),
        stepsize_controller=controller,
        adjoint=adjoints[adjoint](),
        max_steps=max_steps,
    )
    sol = eqx.tree_at(
        lambda s: (s.stats, s.controller_state),
        sol,
        (dict(sol.stats, nfe=read_nfe(sol.controller_state)), None),
    )
    return sol, heuristics_of(sol)
