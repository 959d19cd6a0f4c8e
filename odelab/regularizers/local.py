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
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx

from .solver_heuristics import (
    AbstractDelegatingSolver,
    HeuristicsSolver,
    step_heuristics,
)


SAMPLING = ("unbiased", "biased")


class _Increment(diffrax.AbstractPath):
    # The control of one step: `evaluate(t0, t1)` is the given increment.
    increment: jax.Array

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left=True):
        del t0, t1, left
        return self.increment


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
    solver=None,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    dt=None,
    diffusion=None,
    key=None,
):
    r"""$(E\,|\Delta t|, |\Delta t|\hat\lambda)$ of one step of the pair from $(t, y)$:
    the local error and stiffness heuristics at $t$ (module docstring).

    **Arguments:** `vector_field` $f(t, y, \mathrm{args})$, the time `t` and state `y`
    there (e.g. from the training solve; held constant), `args` (differentiated),
    `t1` (the end of the solve: the step points towards it), `solver`, `rtol`,
    `atol` (as the training solve's controller), `dt` (default: the controller's
    initial-step heuristic at $(t, y)$ for the drift; held constant).
    `diffusion` $g(t, y, \mathrm{args})$ (shaped like `y`, diagonal Stratonovich
    noise) and `key` make it an SDE step over a fresh Brownian increment
    $\Delta W \sim N(0, |\Delta t| I)$; `solver` defaults to Tsit5 (ODE) or Heun
    (SDE).

    **Returns:** the pair of scalars.

    **Reference:** A. Pal, A. Edelman, C. Rackauckas, "Locally Regularized Neural
    Differential Equations: Some Black Boxes were meant to remain closed!", ICML
    2023, arXiv:2303.02262.
    """
    if diffusion is not None and key is None:
        raise ValueError("An SDE step needs `key=` for its Brownian increment.")
    wrapper = HeuristicsSolver(
        solver or ("tsit5" if diffusion is None else "heun"), rtol, atol
    )
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
    if diffusion is not None:
        dw = jr.normal(key, jnp.shape(y), jnp.result_type(y)) * jnp.sqrt(jnp.abs(dt))
        g = lambda s, u, a: lx.DiagonalLinearOperator(diffusion(s, u, a))  # noqa: E731
        term = diffrax.MultiTerm(term, diffrax.ControlTerm(g, _Increment(dw)))
    state = inner.init(term, t, t + dt, y, args)
    y1, y_error, dense, _, _ = inner.step(term, t, t + dt, y, args, state, False)
    error, stiffness = step_heuristics(
        inner.tableau, y, y1, y_error, dense["k"], rtol, atol
    )
    return error * jnp.abs(dt).astype(error.dtype), stiffness


class _StepSampler(AbstractDelegatingSolver):
    # Wraps a pair and keeps one accepted step `(t_a, t_b, y_a)` in its state: the one
    # containing `t_r` (unbiased), or a uniform one by reservoir sampling (biased).
    # diffrax keeps a step's new state only when it accepts the step.
    solver: diffrax.AbstractRungeKutta
    mode: str
    t_r: jax.Array
    key: jax.Array

    def init(self, terms, t0, t1, y0, args):
        t0 = jnp.asarray(t0)
        kept = (t0, t0, y0, jnp.zeros((), jnp.int32))
        return self.solver.init(terms, t0, t1, y0, args), kept

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, (t_a, t_b, y_a, count) = solver_state
        y1, y_error, dense_info, inner, result = self.solver.step(
            terms, t0, t1, y0, args, inner, made_jump
        )
        count = count + 1
        if self.mode == "unbiased":
            take = (t0 <= self.t_r) & (self.t_r < t1)
            take = take | (count == 1)
        else:
            u = jr.uniform(jr.fold_in(self.key, count), ())
            take = u * count.astype(u.dtype) < 1
        pick = lambda new, old: jnp.where(take, new, old)  # noqa: E731
        kept = (
            pick(t0, t_a),
            pick(t1, t_b),
            jax.tree.map(pick, y0, y_a),
            count,
        )
        return y1, y_error, dense_info, (inner, kept), result


def sampled_step_heuristics(
    vector_field,
    y0,
    t0,
    t1,
    args=None,
    *,
    key,
    mode: str = "unbiased",
    solver="tsit5",
    rtol: float = 1e-3,
    atol: float = 1e-6,
    max_steps: int = 4096,
):
    r"""Estimates of $R_E$ and $R_S$ (`HeuristicsSolver`) from one accepted step of
    the adaptive solve of $\dot y = f(t, y, \mathrm{args})$ on $[t_0, t_1]$, taken
    again: $(T E_j, T \hat\lambda_j)$ with $T = t_1 - t_0$.

    With `mode="unbiased"` the step $j$ is the one that contains $t \sim U[t_0, t_1]$,
    chosen with probability $h_j / T$, so
    $\mathbb{E}[T E_j] = \sum_j E_j h_j = R_E$ and $\mathbb{E}[T\hat\lambda_j] = R_S$:
    a one-step, unbiased estimate of the global regularizers. With `mode="biased"`
    every accepted step is equally likely (reservoir sampling), which weights the
    short steps, where the solver struggles, more: the mean is
    $\frac{T}{n}\sum_j E_j$.

    The step is found by a forward solve without gradient that keeps only that step
    (memory independent of the number of steps); its start, end and state are held
    constant, so the gradient flows only through the retaken step's stages into the
    parameters in `args`, and the training solve may use any adjoint.

    **Arguments:** `vector_field`, `y0` (any pytree), `t0`, `t1`, `args` (as the
    training solve); `key`: picks the step; `mode`; `solver`, `rtol`, `atol`,
    `max_steps`: the pair, tolerances and step limit of the training solve.

    **Returns:** the pair of scalar estimates.

    **Reference:** Pal, Edelman, Rackauckas 2023 (see `local_error_estimate`).
    """
    if mode not in SAMPLING:
        raise ValueError(f"Unknown `mode={mode!r}`; valid: {SAMPLING}.")
    inner = HeuristicsSolver(solver, rtol, atol).solver
    term = diffrax.ODETerm(vector_field)
    frozen = jax.tree.map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, (y0, args)
    )
    time_key, step_key = jr.split(key)
    t_r = sample_time(time_key, t0, t1)
    sol = diffrax.diffeqsolve(
        term,
        _StepSampler(inner, mode, t_r, step_key),
        t0,
        t1,
        None,
        frozen[0],
        frozen[1],
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    t_a, t_b, y_a, _ = jax.lax.stop_gradient(sol.solver_state[1])
    state = inner.init(term, t_a, t_b, y_a, args)
    y_b, y_error, dense, _, _ = inner.step(term, t_a, t_b, y_a, args, state, False)
    error, stiffness = step_heuristics(
        inner.tableau, y_a, y_b, y_error, dense["k"], rtol, atol
    )
    h = (t_b - t_a).astype(error.dtype)
    span = jnp.asarray(t1 - t0).astype(error.dtype)
    return span * error, span * stiffness / h
