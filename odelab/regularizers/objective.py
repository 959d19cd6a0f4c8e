r"""One switch for every regularizer of a neural ODE's training solve.

`regularized_solution(model, ts, y0s, kind=...)` solves a batch with the model's own
configuration and returns the regularizer $R$ of `kind` beside the predictions, so a
training loss reads `mse(ys) + weight(step) * R`:

| `kind` | $R$ (mean over the batch) | cost over the plain solve |
| --- | --- | --- |
| `"none"` | 0 | none |
| `"error"` | $R_E = \sum_j E_j |\Delta t_j|$ of the solve's accepted steps (`HeuristicsSolver`) | none (discrete adjoints only) |
| `"stiffness"` | $R_S = \sum_j |\Delta t_j| \hat\lambda_j$ | none (discrete adjoints only) |
| `"local_error"` | $T E_j$ of one sampled accepted step | a forward solve without gradient |
| `"local_stiffness"` | $T \hat\lambda_j$ of that step | the same |
| `"kinetic"`, `"jacobian"`, `"taylor"` | RNODE's and TayNODE's integrals (`integral_regularizers`) | the integrand at every stage |

The local kinds take one accepted step of the solve again and scale its heuristic to
the span, $T E_j$ or $T \hat\lambda_j$ (`sampled_step_heuristics`): with
`sampling="unbiased"` the step containing $t \sim U[t_0, t_1]$, an unbiased estimate
of $R_E$ or $R_S$ (so the weights of the global kinds carry over); with `"biased"` a
step chosen uniformly, which favours the short steps. The step comes from an extra
forward solve without gradient that keeps only that step, so the training solve keeps
its adjoint, whatever it is; the global kinds need a discrete adjoint.
"""

import jax
import jax.numpy as jnp
import jax.random as jr

from ..solve import solve
from .integral import _integral_solve
from .local import sampled_step_heuristics
from .solver_heuristics import HeuristicsSolver, solve_with_heuristics


KINDS = (
    "none",
    "error",
    "stiffness",
    "local_error",
    "local_stiffness",
    "kinetic",
    "jacobian",
    "taylor",
)
"""The names `regularized_solution` accepts."""

_GLOBAL = ("error", "stiffness")
_LOCAL = ("local_error", "local_stiffness")
_INTEGRAL = ("kinetic", "jacobian", "taylor")


def check_kind(kind: str, sampling: str = "unbiased", model=None) -> None:
    """Raise `ValueError` for an unknown `kind` or `sampling`, or for a kind the
    model's solve configuration cannot carry (heuristics need adaptive steps; the
    global ones a discrete adjoint)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown regularizer `kind={kind!r}`; valid: {KINDS}.")
    if sampling not in ("unbiased", "biased"):
        raise ValueError(
            f"Unknown `sampling={sampling!r}`; valid: 'unbiased', 'biased'."
        )
    if model is None or kind == "none" or kind in _INTEGRAL:
        return
    node = getattr(model, "node", model)
    if node.steps is not None or node.dt0 is not None:
        raise ValueError(
            f"The regularizer {kind!r} reads the adaptive solver's error and stiffness "
            "estimates, but the model solves with fixed steps (`steps`/`dt0`); set "
            "them to None (solver.steps: null) or use 'kinetic', 'jacobian', 'taylor'."
        )
    HeuristicsSolver(node.solver, node.rtol, node.atol)
    if kind in _GLOBAL and node.adjoint not in ("checkpoint", "direct"):
        raise ValueError(
            f"The regularizer {kind!r} is accumulated in the solver state, which only "
            f"the discrete adjoints differentiate; the model uses "
            f"adjoint={node.adjoint!r}. Use 'checkpoint' or 'direct', or the local "
            f"variant 'local_{kind}', which works with any adjoint."
        )


def regularized_solution(
    model,
    ts,
    y0s,
    *,
    kind: str = "none",
    key=None,
    sampling: str = "unbiased",
    taylor_order: int = 2,
):
    r"""Solve the batch `y0s` (shape `(batch, dim)`) with `model`'s configuration
    (a `NeuralODE` or `AugmentedNeuralODE`) and return `(ys, R, nfe)`.

    **Arguments:**

    - `model`, `ts` (save times), `y0s`.
    - `kind`: one of `KINDS` (module docstring).
    - `key`: PRNG key of the sampled time (local kinds) or Hutchinson probe
      (`"jacobian"`).
    - `sampling`: `"unbiased"` or `"biased"` (local kinds).
    - `taylor_order`: $K$ of `"taylor"`.

    **Returns:** `ys` of shape `(len(ts), batch, state)` (the model's whole state, the
    augmented part included), the scalar `R` (mean over the batch, or of the joint
    solve with `joint_batch`), and the solve's evaluations `nfe` (the largest over
    the batch; extra evaluations of the regularizer not counted).

    **Raises:** `ValueError` as `check_kind`.

    **Example:**

    ```python
    ys, r, nfe = regularized_solution(model, ts, y0s, kind="error")
    loss = jnp.mean((ys - data) ** 2) + 0.1 * r
    ```
    """
    check_kind(kind, sampling, model)
    if kind in _LOCAL + ("jacobian",) and key is None:
        raise ValueError(f"The regularizer {kind!r} needs `key=`.")
    node = getattr(model, "node", model)
    if node is not model:
        pad = jnp.zeros((y0s.shape[0], model.augment_dims), jnp.result_type(y0s))
        y0s = jnp.concatenate([y0s, pad], axis=1)
    if kind == "none":
        sol = node.batch_solution(ts, y0s)
        return sol.ys, jnp.zeros((), sol.ys.dtype), sol.stats["nfe"]
    field = node.vector_field
    if node.joint_batch:
        batch_field = lambda t, y, mlp: jax.vmap(lambda u: field(t, u, mlp))(y)  # noqa: E731
        ys, r, nfe = _one(node, batch_field, ts, y0s, kind, key, sampling, taylor_order)
        return ys, r, nfe
    keys = jr.split(key, y0s.shape[0]) if key is not None else None
    ys, r, nfe = jax.vmap(
        lambda y0, k: _one(node, field, ts, y0, kind, k, sampling, taylor_order),
        in_axes=(0, None if keys is None else 0),
    )(y0s, keys)
    return jnp.swapaxes(ys, 0, 1), jnp.mean(r), jnp.max(nfe)


def _one(node, field, ts, y0, kind, key, sampling, taylor_order):
    # One solve (a trajectory, or the batch as one state) and its regularizer.
    tol = dict(solver=node.solver, rtol=node.rtol, atol=node.atol)
    if kind in _GLOBAL:
        sol, h = solve_with_heuristics(
            field,
            y0,
            ts,
            node.mlp,
            adjoint=node.adjoint,
            max_steps=node.max_steps,
            **tol,
        )
        return sol.ys, getattr(h, kind), sol.stats["nfe"]
    options = dict(
        adjoint=node.adjoint, dt0=node.dt0, steps=node.steps, max_steps=node.max_steps
    )
    if kind in _INTEGRAL:
        shape = y0.shape
        flat = lambda t, u, mlp: field(t, u.reshape(shape), mlp).reshape(-1)  # noqa: E731
        sol, d, _ = _integral_solve(
            flat, y0.reshape(-1), ts, node.mlp, (kind,), taylor_order, key,
            dict(options, **tol),
        )  # fmt: skip
        ys = sol.ys[:, :d].reshape(ts.shape[:1] + shape)
        return ys, sol.ys[-1, d], sol.stats["nfe"]
    which = 0 if kind == "local_error" else 1
    sol = solve(field, y0, ts, node.mlp, **options, **tol)
    r = sampled_step_heuristics(
        field, y0, ts[0], ts[-1], node.mlp, key=key, mode=sampling,
        max_steps=node.max_steps, **tol,
    )  # fmt: skip
    return sol.ys, r[which], sol.stats["nfe"]
