"""The lean fixed-step path: a `lax.scan` over a diffrax solver's own `step`.

When the step grid is known in advance there is nothing for diffeqsolve's general
loop to decide: no step-size control, no rejected steps, no search for the next save
time. Scanning the solver's `step` over the grid, with `jax.checkpoint` on the step
body, gives the same states as `diffeqsolve(..., stepsize_controller=StepTo(grid))`
and the same discrete gradients, at the cost of a hand-written scan. It also computes
the save positions once, from the grid, so a save time that coincides with a step end
cannot be assigned to different steps in the forward and the recomputed backward
pass (diffrax 0.7.2 can get that wrong; see `solve`).
"""

import diffrax
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def uniform_grid(t0, t1, n: int):
    """`n` equal steps from `t0` to `t1` (either direction), endpoints exact."""
    k = jnp.arange(n + 1, dtype=jnp.result_type(t0, t1))
    return jnp.where(k == n, t1, t0 + (t1 - t0) * (k / n))


def dt0_grid(t0, t1, dt0, n: int):
    """Steps `t0 + k dt0` for `k < n`, then `t1`."""
    k = jnp.arange(n, dtype=jnp.result_type(t0, dt0))
    return jnp.concatenate([t0 + k * dt0, jnp.reshape(t1, (1,)).astype(k.dtype)])


def num_steps_for(t0: float, t1: float, dt0: float) -> int:
    """Steps of size `dt0` needed to reach `t1`; a last fraction under 1e-6 is merged."""
    ratio = (t1 - t0) / dt0 if dt0 != 0 else np.nan
    if not np.isfinite(ratio) or ratio <= 0:
        raise ValueError(
            f"`dt0={dt0}` does not step from t0={t0} towards t1={t1}: give it the "
            "sign of t1 - t0 and a non-zero size."
        )
    nearest = round(ratio)
    if nearest >= 1 and abs(ratio - nearest) <= 1e-6:
        return int(nearest)
    return int(np.ceil(ratio))


def save_indices(grid: np.ndarray, ts: np.ndarray, dtype) -> tuple[int, ...] | None:
    """Grid indices of the save times, if every save time is a grid point.

    A save time counts as a grid point when it is within a millionth of a step, or
    within a few units of rounding of `dtype` (float32 save times written as decimal
    fractions are rarely exact multiples of the step).
    """
    scale = float(np.max(np.abs(np.diff(grid))))
    tol = 1e-6 * scale + 16 * float(np.finfo(dtype).eps) * float(np.max(np.abs(grid)))
    # Far from zero float32 rounding can exceed a step; never snap a save time that
    # is more than a thousandth of a step away.
    tol = min(tol, 1e-3 * scale)
    nearest = np.argmin(np.abs(grid[None, :] - ts[:, None]), axis=1)
    if np.any(np.abs(grid[nearest] - ts) > tol):
        return None
    return tuple(int(j) for j in nearest)


def fixed_step_solve(
    terms, solver, y0, args, grid, ts, index, step_of=None, return_state=False
):
    """Integrate over `grid` with `solver` and return `(ys, result)` at `ts`.

    **Arguments:**

    - `terms`, `solver`, `y0`, `args`: as for `diffrax.diffeqsolve`.
    - `grid`: the step grid, `n + 1` times from `t0` to `t1`.
    - `ts`: the save times.
    - `index`: a tuple of grid indices of the save times when they are grid points
      (the states are then read off directly), or `None` to evaluate the solver's
      dense interpolant of the step that holds each save time, as diffrax does.
    - `step_of`: for the latter, the steps holding the save times if known while
      tracing (`steps_holding`), else `None` to search for them at run time.
    """
    t_pairs = (grid[:-1], grid[1:])
    state0 = solver.init(terms, grid[0], grid[1], y0, args)
    interpolate = index is None

    # Explicit steps return the constant `RESULTS.successful`. The body notices that
    # while it is traced and then emits no result at all, which keeps the loop as
    # small as a hand-written one; otherwise each step's result code is an output.
    static_success = []

    @jax.checkpoint
    def body(carry, tt):
        y, state = carry
        t0, t1 = tt
        y1, _, dense_info, state, step_result = solver.step(
            terms, t0, t1, y, args, state, False
        )
        static = step_result is diffrax.RESULTS.successful
        static_success.append(static)
        saved = dense_info if interpolate else y1
        return (y1, state), (saved if static else (saved, step_result))

    (_, final_state), out = jax.lax.scan(body, (y0, state0), t_pairs)
    if all(static_success):
        result = diffrax.RESULTS.successful
    else:
        out, step_results = out
        result = _first_failure(step_results)
    if not interpolate:
        idx = np.asarray(index)
        if np.all(idx > 0):
            ys = jtu.tree_map(lambda a: a[idx - 1], out)
        else:
            all_ys = jtu.tree_map(lambda a, b: jnp.concatenate([a[None], b]), y0, out)
            ys = jtu.tree_map(lambda a: a[idx], all_ys)
        return (ys, result, final_state) if return_state else (ys, result)

    if step_of is None:
        step_of = steps_holding(grid, ts, xp=jnp)
    else:
        step_of = np.asarray(step_of)

    def evaluate(t, j):
        info = jtu.tree_map(lambda a: a[j], out)
        interp = solver.interpolation_cls(t0=grid[j], t1=grid[j + 1], **info)
        return interp.evaluate(t)

    ys = jax.vmap(evaluate)(ts, step_of)
    return (ys, result, final_state) if return_state else (ys, result)


def steps_holding(grid, ts, xp=np):
    """Index `j` of the step that holds each save time, `grid[j] < t <= grid[j+1]`.

    diffrax's convention (a save time at a step end belongs to the step it ends),
    for an increasing or decreasing grid; with `xp=jnp` it runs on traced values.
    """
    n = grid.shape[0] - 1
    forward = grid[-1] >= grid[0]
    pos = xp.where(
        forward,
        xp.searchsorted(grid, ts, side="left"),
        n + 1 - xp.searchsorted(grid[::-1], ts, side="right"),
    )
    return xp.clip(pos - 1, 0, n - 1)


def _first_failure(step_results):
    """The first unsuccessful result of a stack of per-step results, else success."""
    codes = step_results._value
    first = codes[jnp.argmax(codes != diffrax.RESULTS.successful._value)]
    result = diffrax.RESULTS.successful
    for item in diffrax.RESULTS._name_to_item.values():
        result = diffrax.RESULTS.where(first == item._value, item, result)
    return result


class FixedGrid(diffrax.AbstractStepSizeController):
    r"""Step to $t_0 + k\,dt_0$, then to $t_1$: the lean path's grid, inside diffeqsolve.

    Used where the number of steps is unknown at trace time (traced `ts` or `dt0`) or
    where an adjoint other than recursive checkpointing is asked for, so that a fixed
    step solve takes the same steps whichever path runs it (diffrax's
    `ConstantStepSize` accumulates `t + dt0`, whose rounding drifts). As in
    `num_steps_for`, a last fraction shorter than $10^{-6} dt_0$ is merged into the
    step before it. diffrax hands over `t0`, `t1`, `dt0` already multiplied by the
    direction of integration, so the grid always increases here.
    """

    def wrap(self, direction):
        del direction
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        del terms, y0, args, func, error_order
        if dt0 is None:
            raise ValueError("a fixed grid needs `dt0`.")
        k = jnp.asarray(1, dtype=jnp.int32)
        return _grid_time(t0, t1, dt0, k), (t0, t1, dt0, k)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        del t0, y0, y1_candidate, args, y_error, error_order
        start, end, dt0, k = controller_state
        k = k + 1
        tnext = _grid_time(start, end, dt0, k)
        state = (start, end, dt0, k)
        return True, t1, tnext, False, state, diffrax.RESULTS.successful


def _grid_time(start, end, dt0, k):
    t = start + k.astype(jnp.result_type(dt0)) * dt0
    return jnp.where(end - t < 1e-6 * dt0, end, t)
