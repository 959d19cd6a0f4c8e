r"""Local solver-heuristic regularization at randomly sampled times (Pal, Edelman,
Rackauckas, 2023).

Instead of accumulating the error estimates of every step of the training solve
(`HeuristicsSolver`), take one extra step of the Runge–Kutta pair from the solution at
a sampled time $t_r$ and regularize its scaled error times its step,
$R = E(t_r)\,|\Delta t_r|$. The start point $y(t_r)$ and the step $\Delta t_r$ are
held constant (no gradient), so the gradient flows only through that one step's
stages into the vector field's parameters: the training solve keeps whatever adjoint
it uses. $t_r$ is drawn uniformly on $[t_0, t_1]$ (`"unbiased"` in the paper's words)
or uniformly among the solve's accepted step times (`"biased"`); $\Delta t_r$ is the
step-size controller's initial-step heuristic at $(t_r, y(t_r))$, as in the authors'
code.
"""

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr

from .solver_heuristics import HeuristicsSolver, step_heuristics


SAMPLING = ("unbiased", "biased")


def sample_time(key, t0, t1, *, mode: str = "unbiased", step_times=None):
    r"""A regularization time $t_r$: uniform on $[t_0, t_1]$ (`"unbiased"`) or a
    uniform choice among `step_times`, the solve's accepted step times (`"biased"`;
    entries beyond the last accepted step may be `inf`, as diffrax pads them)."""
    if mode not in SAMPLING:
        raise ValueError(f"Unknown `mode={mode!r}`; valid: {SAMPLING}.")
    if mode == "unbiased":
        return jr.uniform(key, (), jnp.result_type(t0, t1, float), t0, t1)
    if step_times is None:
        raise ValueError(
            "mode='biased' samples among the accepted step times: pass `step_times` "
            "(e.g. `sol.ts` of a solve with `SaveAt(steps=True)`)."
        )
    step_times = jnp.asarray(step_times)
    valid = jnp.isfinite(step_times) & (step_times < t1)
    logits = jnp.where(valid, 0.0, -jnp.inf)
    return step_times[jr.categorical(key, logits)]


def local_error_estimate(
    vector_field,
    t,
    y,
    args=None,
    *,
    t1,
    solver="tsit5",
    rtol: float = 1e-3,
    atol: float = 1e-6,
    dt=None,
):
    r"""$(E\,|\Delta t|, |\Delta t|\hat\lambda)$ of one step of the pair from $(t, y)$:
    the local error and stiffness heuristics at $t$ (module docstring).

    **Arguments:** `vector_field` $f(t, y, \mathrm{args})$, the time `t` and state `y`
    there (e.g. from the training solve; held constant), `args` (differentiated),
    `t1` (the end of the solve: the step points towards it), `solver`, `rtol`,
    `atol` (as the training solve's controller), `dt` (default: the controller's
    initial-step heuristic at $(t, y)$; held constant).

    **Returns:** the pair of scalars.

    **Reference:** A. Pal, A. Edelman, C. Rackauckas, "Locally Regularized Neural
    Differential Equations: Some Black Boxes were meant to remain closed!", ICML
    2023, arXiv:2303.02262.
    """
    wrapper = HeuristicsSolver(solver, rtol, atol)
    inner = wrapper.solver
    term = diffrax.ODETerm(vector_field)
    y = jax.lax.stop_gradient(y)
    if dt is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        t_next, _ = controller.init(
            term, t, t1, y, None, args, inner.func, inner.error_order(term)
        )
        dt = t_next - t
    dt = jax.lax.stop_gradient(dt)
    state = inner.init(term, t, t + dt, y, args)
    y1, y_error, dense, _, _ = inner.step(term, t, t + dt, y, args, state, False)
    error, stiffness = step_heuristics(
        inner.tableau, y, y1, y_error, dense["k"], rtol, atol
    )
    return error * jnp.abs(dt).astype(error.dtype), stiffness
