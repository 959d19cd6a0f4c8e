"""Shared test helpers: solver table, pytree comparison, convergence order, gradients.

Import them as `from tests.helpers import tree_allclose, ...`. This works because
`tests/` is a package (`tests/__init__.py`) and pytest's default `prepend` import mode
puts the repository root on `sys.path` when it imports `tests/conftest.py`. Each
subdirectory of `tests/` needs its own empty `__init__.py` too, so that test modules
with the same basename (`tests/solvers/test_reversible.py`,
`tests/adjoints/test_reversible.py`) get distinct package-qualified names.

Tolerances are derived from the float precision and the method's order
(`default_tol`, `ORDER_SLACK`, the defaults of `check_grad`), never tuned to pass.

No-recompile checks: either wrap the function with `count_traces` and read
`.num_traces`, or use chex's decorator (re-exported here as `assert_max_traces`):

```python
f = jax.jit(assert_max_traces(step, n=1))
f(x)
f(x + 1)  # raises AssertionError if `step` is traced again
```

`assert_max_traces` counts per function object across the whole session; conftest
calls `chex.clear_trace_counter()` after every test, so a module-level function can be
reused across tests.
"""

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import chex
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


assert_max_traces = chex.assert_max_traces
clear_trace_counter = chex.clear_trace_counter

# Slack on an empirically fitted convergence order: the fit uses a handful of step
# sizes kept above round-off, where the next-order error term still bends the line.
ORDER_SLACK = 0.3

# Safety factor over the random-walk estimate `eps * sqrt(n_ops) / 2` of accumulated
# round-off; it absorbs moderate conditioning and XLA's reassociation of reductions.
_ROUNDOFF_FACTOR = 100.0


# --------------------------------------------------------------------------------------
# Solver table
# --------------------------------------------------------------------------------------

SolverCase = tuple[Callable[[], diffrax.AbstractSolver], int]

ALL_DIFFRAX_EXPLICIT_SOLVERS: list[SolverCase] = [
    (diffrax.Euler, 1),
    (diffrax.Heun, 2),
    (diffrax.Midpoint, 2),
    (diffrax.Ralston, 2),
    (diffrax.Bosh3, 3),
    (diffrax.Tsit5, 5),
    (diffrax.Dopri5, 5),
    (diffrax.Dopri8, 8),
]

# odelab's own solvers go here as they land, as `(factory, order)` with a zero-argument
# factory (`odelab.solvers.ReversibleHeun`, `functools.partial(odelab.solvers.BDIA,
# gamma=0.5)`), e.g. `(odelab.solvers.ETDRK4, 4)`.
ODELAB_SOLVERS: list[SolverCase] = []

ALL_SOLVERS: list[SolverCase] = ALL_DIFFRAX_EXPLICIT_SOLVERS + ODELAB_SOLVERS


def solver_id(value: Any) -> str | None:
    """Readable pytest id for an entry of a solver table.

    Use as `ids=solver_id` in
    `@pytest.mark.parametrize("solver_factory, order", ALL_SOLVERS, ids=solver_id)`,
    which yields ids like `Tsit5-5`.

    **Arguments:**

    - `value`: one parameter value: a solver factory (class, function or
        `functools.partial`) or anything else.

    **Returns:**

    The solver's class name for a factory; `None` (pytest's default id) otherwise.
    """
    if isinstance(value, functools.partial):
        return solver_id(value.func)
    if isinstance(value, type):
        return value.__name__
    if callable(value):
        name = getattr(value, "__name__", "<lambda>")
        return type(value()).__name__ if name == "<lambda>" else name
    return None


# --------------------------------------------------------------------------------------
# JAX configuration and tolerances
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def jax_config(**flags: Any) -> Iterator[None]:
    """Set JAX config flags for the duration of a `with` block, then restore them.

    The `x64` fixture and marker in `tests/conftest.py` are built on this.

    **Arguments:**

    - `**flags`: config names and values, e.g. `jax_enable_x64=True`,
        `jax_numpy_dtype_promotion="strict"`.

    **Example:**

    ```python
    with jax_config(jax_enable_x64=True):
        assert jnp.ones(()).dtype == jnp.float64
    ```
    """
    previous = {name: getattr(jax.config, name) for name in flags}
    try:
        for name, value in flags.items():
            jax.config.update(name, value)
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)


def roundoff_tol(dtype: Any, n_ops: int = 1) -> float:
    r"""Tolerance for two evaluations of the same floating-point computation.

    $\mathrm{tol} = 100\,\varepsilon\,\sqrt{n}$, with $\varepsilon$ the machine
    epsilon of `dtype` and $n$ the number of roundings that accumulate (steps times
    stages, say): the random-walk estimate of accumulated round-off with two orders of
    magnitude of headroom for conditioning and reassociation.

    **Arguments:**

    - `dtype`: a floating (or complex) dtype.
    - `n_ops`: how many roundings accumulate; at least 1.

    **Returns:**

    The tolerance, used as both `rtol` and `atol`.
    """
    if n_ops < 1:
        raise ValueError(f"`n_ops` must be at least 1, got {n_ops}.")
    eps = float(jnp.finfo(dtype).eps)
    return _ROUNDOFF_FACTOR * eps * math.sqrt(n_ops)


def default_tol(
    dtype: Any,
    *,
    order: int | None = None,
    dt: float | None = None,
    n_ops: int = 1,
) -> dict[str, float]:
    r"""`rtol`/`atol` for comparing a result with a reference, from precision and order.

    $\mathrm{tol} = 100\,\varepsilon\,\sqrt{n} + \Delta t^{p}$: the round-off part of
    `roundoff_tol`, plus, when `order` $p$ and `dt` are given, the global truncation
    error of a method of order $p$ with step $\Delta t$ and unit error constant. The
    unit constant holds for a problem scaled to an O(1) horizon and O(1) derivatives;
    a test on a problem that needs a larger constant should say why.

    **Arguments:**

    - `dtype`: the floating dtype of the compared values.
    - `order`: the method's order $p$; give it together with `dt`, or neither.
    - `dt`: the step size.
    - `n_ops`: how many roundings accumulate (see `roundoff_tol`).

    **Returns:**

    `{"rtol": tol, "atol": tol}`, ready for `assert_tree_allclose(x, y, **tol)`.

    **Raises:**

    `ValueError` if only one of `order` and `dt` is given.
    """
    if (order is None) != (dt is None):
        raise ValueError("Pass both `order` and `dt` (truncation error), or neither.")
    tol = roundoff_tol(dtype, n_ops)
    if order is not None and dt is not None:
        tol += abs(dt) ** order
    return {"rtol": tol, "atol": tol}


# --------------------------------------------------------------------------------------
# Pytree comparison
# --------------------------------------------------------------------------------------

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
_MAX_REPORTED_LEAVES = 20


def _widen(a: np.ndarray) -> np.ndarray:
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def _index(flat: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def _compare_arrays(
    a: Any, b: Any, rtol: float, atol: float, equal_nan: bool
) -> str | None:
    if a.shape != b.shape:
        return f"shape {a.shape} != {b.shape}"
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} != {b.dtype}"
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        bad = a != b
        if not bad.any():
            return None
        index = _index(np.argmax(bad), a.shape)
        return (
            f"{int(bad.sum())}/{a.size} elements differ (exact comparison for "
            f"{a.dtype}); first at index {index}: {a[index]} != {b[index]}"
        )
    a, b = _widen(a), _widen(b)
    close = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)
    if close.all():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        abs_err = np.abs(a - b)
        rel_err = abs_err / np.abs(b)
        excess = abs_err - (atol + rtol * np.abs(b))
    # A NaN on one side only is the worst mismatch; NaN errors are otherwise ignored.
    excess = np.where(np.isnan(excess) & ~close, np.inf, excess)
    index = _index(np.argmax(excess), a.shape)
    max_abs = np.max(np.where(np.isnan(abs_err), -np.inf, abs_err))
    max_rel = np.max(np.where(np.isnan(rel_err), -np.inf, rel_err))
    return (
        f"{int((~close).sum())}/{a.size} elements outside tolerance; "
        f"max abs error {max_abs:.3e}, max rel error {max_rel:.3e}; "
        f"worst at index {index}: x={a[index]:.10g}, y={b[index]:.10g}"
    )


def _compare_leaves(
    a: Any, b: Any, rtol: float, atol: float, equal_nan: bool
) -> str | None:
    a_is_array, b_is_array = isinstance(a, _ARRAY_TYPES), isinstance(b, _ARRAY_TYPES)
    if a_is_array and b_is_array:
        return _compare_arrays(a, b, rtol, atol, equal_nan)
    if a_is_array or b_is_array or type(a) is not type(b):
        return f"type {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, float | complex):
        if np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan):
            return None
        return f"{a!r} != {b!r} (abs error {abs(a - b):.3e})"
    return None if a == b else f"{a!r} != {b!r}"


def _tree_mismatches(
    x: Any, y: Any, rtol: float, atol: float, equal_nan: bool
) -> list[str]:
    x_leaves, x_def = jax.tree_util.tree_flatten_with_path(x)
    y_leaves, y_def = jax.tree_util.tree_flatten_with_path(y)
    if x_def != y_def:
        return [f"tree structures differ:\n    x: {x_def}\n    y: {y_def}"]
    mismatches = []
    for (path, a), (_, b) in zip(x_leaves, y_leaves, strict=True):
        problem = _compare_leaves(a, b, rtol, atol, equal_nan)
        if problem is not None:
            mismatches.append(f"{jax.tree_util.keystr(path) or '<root>'}: {problem}")
    return mismatches


def tree_allclose(
    x: Any, y: Any, *, rtol: float, atol: float, equal_nan: bool = False
) -> bool:
    r"""Whether two pytrees match in structure, shapes, dtypes and values.

    Floating leaves compare as `numpy.isclose`: $|x - y| \le \mathrm{atol} +
    \mathrm{rtol}\,|y|$ elementwise (so `y` is the reference). Integer, boolean and
    PRNG-key leaves compare exactly; non-array leaves must have the same type, Python
    floats and complex numbers compare with the same tolerance, anything else by `==`.

    **Arguments:**

    - `x`, `y`: the pytrees.
    - `rtol`, `atol`: relative and absolute tolerance (see `default_tol`).
    - `equal_nan`: whether NaNs in the same places count as equal.

    **Returns:**

    `True` if they match, `False` otherwise; `assert_tree_allclose` says where not.
    """
    return not _tree_mismatches(x, y, rtol, atol, equal_nan)


def assert_tree_allclose(
    x: Any, y: Any, *, rtol: float, atol: float, equal_nan: bool = False
) -> None:
    """Assert `tree_allclose(x, y, ...)`, naming each mismatched leaf and its error.

    **Arguments:**

    As `tree_allclose`.

    **Raises:**

    `AssertionError` listing, for each mismatched leaf, its path (`['a'][0]`), and the
    shape or dtype difference, or the number of elements outside the tolerance, the
    largest absolute and relative error and the worst element.
    """
    __tracebackhide__ = True
    mismatches = _tree_mismatches(x, y, rtol, atol, equal_nan)
    if not mismatches:
        return
    shown = mismatches[:_MAX_REPORTED_LEAVES]
    if len(mismatches) > len(shown):
        shown.append(f"... and {len(mismatches) - len(shown)} more leaves")
    raise AssertionError(
        f"pytrees differ (rtol={rtol:.3g}, atol={atol:.3g}) in {len(mismatches)} "
        f"{'leaf' if len(mismatches) == 1 else 'leaves'}:\n  " + "\n  ".join(shown)
    )


# --------------------------------------------------------------------------------------
# Convergence order
# --------------------------------------------------------------------------------------


def estimate_order(errors: Sequence[float], step_sizes: Sequence[float]) -> float:
    r"""Empirical convergence order: the least-squares slope of log error vs log step.

    Fits $\log e_i = p \log \Delta t_i + c$ and returns $p$. Only ratios of step
    sizes matter, so `1 / n_steps` serves as well as the step itself.

    **Arguments:**

    - `errors`: positive, finite errors $e_i$.
    - `step_sizes`: the matching positive step sizes $\Delta t_i$, at least two
        distinct.

    **Returns:**

    The fitted order $p$.

    **Raises:**

    `ValueError` on mismatched lengths, fewer than two points, or a non-positive or
    non-finite error or step size.
    """
    errors_ = np.asarray(errors, dtype=np.float64)
    steps = np.asarray(step_sizes, dtype=np.float64)
    if errors_.ndim != 1 or errors_.shape != steps.shape or errors_.size < 2:
        raise ValueError(
            "`errors` and `step_sizes` must be 1-D of the same length, at least 2; "
            f"got shapes {errors_.shape} and {steps.shape}."
        )
    for name, values in (("errors", errors_), ("step_sizes", steps)):
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"`{name}` must be positive and finite, got {values}.")
    if np.unique(steps).size < 2:
        raise ValueError(f"`step_sizes` needs two distinct values, got {steps}.")
    slope, _ = np.polyfit(np.log(steps), np.log(errors_), 1)
    return float(slope)


def _max_abs_error(y: Any, exact: Any) -> float:
    y_leaves, y_def = jax.tree.flatten(y)
    exact_leaves, exact_def = jax.tree.flatten(exact)
    if y_def != exact_def:
        raise ValueError(
            f"`solve_fn` returned a pytree of structure {y_def}, but `exact` has "
            f"structure {exact_def}."
        )
    error = 0.0
    for a, b in zip(y_leaves, exact_leaves, strict=True):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"`solve_fn` returned a leaf of shape {np.shape(a)} where `exact` has "
                f"shape {np.shape(b)}; index the final state (e.g. `sol.ys[-1]`)."
            )
        diff = _widen(np.asarray(a)) - _widen(np.asarray(b))
        error = max(error, float(np.max(np.abs(diff), initial=0.0)))
    return error


def _roundoff_floor(y: Any, exact: Any) -> float:
    leaves = [np.asarray(v) for v in jax.tree.leaves(y) + jax.tree.leaves(exact)]
    leaves = [v for v in leaves if jnp.issubdtype(v.dtype, jnp.inexact)]
    if not leaves:
        return 0.0
    eps = max(float(jnp.finfo(v.dtype).eps) for v in leaves)
    scale = max([1.0] + [float(np.max(np.abs(_widen(v)), initial=0.0)) for v in leaves])
    return _ROUNDOFF_FACTOR * eps * scale


def convergence_order(
    solve_fn: Callable[[int], Any], exact: Any, step_counts: Sequence[int]
) -> tuple[float, np.ndarray]:
    r"""Measure a solver's convergence order against a reference solution.

    Runs `solve_fn(n)` for each `n` in `step_counts`, takes the error
    $e_n = \max |y_n - y_\mathrm{exact}|$ over all leaves and elements, and fits
    $\log e_n$ against $\log(1/n)$ (`estimate_order`). Compare the result with the
    declared order to within `ORDER_SLACK`.

    Choose the step counts so every error is truncation error: above round-off (checked
    here), and in the asymptotic regime (not checked; an order that comes out high
    usually means the steps are too large for the next error term to be negligible).
    Avoid horizons that are whole periods of the solution, where errors cancel.

    **Arguments:**

    - `solve_fn`: `n_steps -> y_final`, a pytree of arrays; jit it once with the step
        size as a traced argument so it compiles once rather than per `n`.
    - `exact`: the reference final state, a pytree with the same structure and shapes.
    - `step_counts`: increasing numbers of steps over the same horizon.

    **Returns:**

    `(order, errors)`: the fitted order and the array of errors, one per step count.

    **Raises:**

    `ValueError` if `solve_fn` returns a different structure or shape than `exact`, or
    if an error is within `100 * eps * max(1, |y|)` of round-off for the least precise
    dtype involved.

    **Example:**

    ```python
    solve = jax.jit(lambda dt: diffrax.diffeqsolve(term, solver, 0.0, 2.0, dt, y0).ys)
    order, errors = convergence_order(lambda n: solve(2.0 / n)[-1], exact, [8, 16, 32])
    assert abs(order - 5) < ORDER_SLACK
    ```
    """
    errors = []
    for n in step_counts:
        y = solve_fn(n)
        error = _max_abs_error(y, exact)
        floor = _roundoff_floor(y, exact)
        if not error > floor:
            raise ValueError(
                f"The error {error:.3e} at n_steps={n} is within a factor 100 of "
                f"round-off ({floor:.3e}), so the fit would measure round-off, not the "
                "order. Use fewer steps or a longer horizon (and float64)."
            )
        errors.append(error)
    errors_ = np.asarray(errors)
    order = estimate_order(errors_, 1.0 / np.asarray(step_counts, dtype=np.float64))
    return order, errors_


# --------------------------------------------------------------------------------------
# Gradient check
# --------------------------------------------------------------------------------------

# Central differences with step `h = cbrt(eps) * scale` balance truncation (~h^2) and
# cancellation (~eps / h), leaving a relative error of about eps^(2/3) (~4e-11 in
# float64); the factor 1e3 covers the unknown ratios |f'''| / |f'| and |f| / |f'|.
_FD_TOL = 1e3 * float(jnp.finfo(jnp.float64).eps) ** (2 / 3)


def _to_float64(leaf: Any) -> Any:
    if isinstance(leaf, float) or (
        isinstance(leaf, _ARRAY_TYPES) and jnp.issubdtype(leaf.dtype, jnp.floating)
    ):
        return jnp.asarray(leaf, dtype=jnp.float64)
    if isinstance(leaf, complex) or (
        isinstance(leaf, _ARRAY_TYPES)
        and jnp.issubdtype(leaf.dtype, jnp.complexfloating)
    ):
        raise TypeError("`check_grad` supports real inputs only, got a complex leaf.")
    return leaf


def check_grad(
    f: Callable[[Any], Any],
    x: Any,
    *,
    eps: float | None = None,
    rtol: float = _FD_TOL,
    atol: float = _FD_TOL,
    num_directions: int = 3,
    key: Any = None,
) -> Any:
    r"""Check `jax.grad(f)` against central finite differences in float64.

    Along `num_directions` random unit directions $v$ it compares the directional
    derivative $\langle \nabla f(x), v\rangle$ from autodiff with
    $\big(f(x + h v) - f(x - h v)\big) / (2h)$, requiring
    $|\mathrm{fd} - \mathrm{ad}| \le \mathrm{atol} + \mathrm{rtol}\max(|\mathrm{fd}|,
    |\mathrm{ad}|)$. The default step is $h = \varepsilon^{1/3} \max(1, \|x\|_\infty)$;
    the default tolerances $10^3 \varepsilon^{2/3}$ follow from it. Floating leaves of
    `x` (Python floats included) are cast to float64 and differentiated; other leaves
    (integers, static fields of an `eqx.Module`) are held fixed.

    Must run with x64 enabled: use the `x64` fixture or `@pytest.mark.x64`. For `f`
    containing a solve, use constant steps: adaptive step selection makes `f` only
    piecewise smooth.

    **Arguments:**

    - `f`: `x -> scalar`, real-valued.
    - `x`: the point, any pytree (an `eqx.Module` included).
    - `eps`: the finite-difference step $h$; see above for the default.
    - `rtol`, `atol`: tolerances on each directional derivative.
    - `num_directions`: how many random directions to check.
    - `key`: PRNG key for the directions; defaults to `jax.random.key(0)`.

    **Returns:**

    The autodiff gradient, a pytree like the floating part of `x`.

    **Raises:**

    `RuntimeError` without x64; `ValueError` if `x` has no floating leaves or `f` is
    not scalar; `AssertionError` naming each direction where the two disagree.
    """
    __tracebackhide__ = True
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "`check_grad` needs float64: request the `x64` fixture or mark the test "
            "`@pytest.mark.x64`."
        )
    x = jax.tree.map(_to_float64, x)
    diff, static = eqx.partition(x, eqx.is_inexact_array)
    leaves = jax.tree.leaves(diff)
    if not leaves:
        raise ValueError("`x` has no floating leaves to differentiate.")

    def f_diff(d: Any) -> jax.Array:
        out = jnp.asarray(f(eqx.combine(d, static)))
        if out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(
                f"`f` must return a real scalar, got shape {out.shape} dtype "
                f"{out.dtype}."
            )
        return out

    # One compiled program each for f and its gradient: called eagerly, every one of
    # the 2·num_directions evaluations below would trace (and compile) f again.
    f_diff = jax.jit(f_diff)
    grad = jax.jit(jax.grad(f_diff))(diff)
    if eps is None:
        scale = max([1.0] + [float(jnp.max(jnp.abs(leaf))) for leaf in leaves])
        eps = float(jnp.finfo(jnp.float64).eps) ** (1 / 3) * scale
    if key is None:
        key = jax.random.key(0)

    failures = []
    treedef = jax.tree.structure(diff)
    for i, subkey in enumerate(jax.random.split(key, num_directions)):
        subkeys = jax.random.split(subkey, len(leaves))
        v = [
            jax.random.normal(k, leaf.shape, leaf.dtype)
            for k, leaf in zip(subkeys, leaves, strict=True)
        ]
        norm = math.sqrt(sum(float(jnp.sum(vi**2)) for vi in v))
        v = jax.tree.unflatten(treedef, [vi / norm for vi in v])
        plus = jax.tree.map(lambda a, b: a + eps * b, diff, v)
        minus = jax.tree.map(lambda a, b: a - eps * b, diff, v)
        fd = (float(f_diff(plus)) - float(f_diff(minus))) / (2 * eps)
        ad = sum(
            float(jnp.vdot(g, vi))
            for g, vi in zip(jax.tree.leaves(grad), jax.tree.leaves(v), strict=True)
        )
        error = abs(fd - ad)
        if not error <= atol + rtol * max(abs(fd), abs(ad)):
            rel = error / max(abs(fd), abs(ad))
            failures.append(
                f"direction {i}: autodiff <grad f, v> = {ad:.10e}, central difference "
                f"= {fd:.10e}, abs error {error:.3e}, rel error {rel:.3e}"
            )
    if failures:
        raise AssertionError(
            f"check_grad: autodiff and finite differences disagree along "
            f"{len(failures)} of {num_directions} random directions "
            f"(h={eps:.3e}, rtol={rtol:.3g}, atol={atol:.3g}):\n  "
            + "\n  ".join(failures)
        )
    return grad


# --------------------------------------------------------------------------------------
# Trace counting
# --------------------------------------------------------------------------------------


def count_traces(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `fn` so that `wrapper.num_traces` counts how often its Python body runs.

    Under `jax.jit`/`eqx.filter_jit` the body runs once per trace, so the count is the
    number of (re)compilations: it should stay put when only values change and grow
    when shapes, dtypes or static arguments change. Weak typing is part of the
    signature too: `jnp.full(3, 5.0)` or a Python scalar argument traces anew after
    `jnp.ones(3)`. Called without jit, it counts every call. Reset with
    `wrapper.num_traces = 0`.

    **Arguments:**

    - `fn`: the Python function to count.

    **Returns:**

    The wrapper, with an integer attribute `num_traces` (initially 0).

    **Example:**

    ```python
    step = count_traces(step)
    jitted = jax.jit(step)
    jitted(x)
    jitted(x + 1)
    assert step.num_traces == 1
    ```
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wrapper.num_traces += 1  # type: ignore[attr-defined]
        return fn(*args, **kwargs)

    wrapper.num_traces = 0  # type: ignore[attr-defined]
    return wrapper
