"""Input validation for `solve` and `solve_sde`: fail early, say what and how to fix."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from equinox import _errors as _eqx_errors


def is_concrete(x) -> bool:
    """Whether every leaf of `x` is a concrete value (not a tracer)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(x))


def as_state(y0):
    """Convert `y0`'s leaves to arrays; a non-floating leaf is an error."""
    y0 = jtu.tree_map(jnp.asarray, y0)
    for path, leaf in jtu.tree_flatten_with_path(y0)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"`y0` leaf {_where(path)} has dtype {leaf.dtype}; states must be "
                "floating (or complex). Convert it, e.g. `jnp.asarray(y0, float)`."
            )
    return y0


def as_times(ts):
    """Normalise `ts` into `(times, span)`.

    A Python tuple `(t0, t1)` is a span (save at `t1` only); anything else is an
    array of save times, the first and last of which are the span.
    """
    span = isinstance(ts, tuple) and len(ts) == 2
    if span:
        arr = (
            np.asarray(ts)
            if is_concrete(ts)
            else jnp.stack([jnp.asarray(t) for t in ts])
        )
    else:
        arr = ts
    arr = jnp.asarray(arr)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(
            f"`ts` must be a 1-D array of at least two save times or a tuple "
            f"`(t0, t1)`; got shape {arr.shape}."
        )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if is_concrete(arr):
        host = np.asarray(arr)
        if not np.all(np.isfinite(host)):
            raise ValueError("`ts` contains NaN or inf.")
        d = np.diff(host)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError(
                "`ts` must be strictly increasing or strictly decreasing; got "
                f"{host.tolist() if host.size <= 12 else host}. Sort it (and drop "
                "repeated times)."
            )
    return arr, span


def times_like_state(ts, y0):
    """Times in the state's real precision (the widest over its leaves).

    With x64 on, a float32 state and Python-float times would otherwise mix float64
    times into float32 steps; the state's precision is the caller's choice.
    """
    real = jnp.result_type(
        *[jnp.finfo(leaf.dtype).dtype for leaf in jtu.tree_leaves(y0)]
    )
    if ts.dtype == real:
        return ts
    if is_concrete(ts):
        return jnp.asarray(np.asarray(ts).astype(real))
    return ts.astype(real)


def nonmonotone(ts):
    """Whether traced `ts` fails to be strictly increasing or decreasing."""
    d = jnp.diff(ts)
    return ~(jnp.all(d > 0) | jnp.all(d < 0))


def as_args(args):
    """Python floats in `args` become arrays: traced, so new values do not recompile."""
    return jtu.tree_map(
        lambda x: jnp.asarray(x) if isinstance(x, (float, complex)) else x, args
    )


def finite_check(y0, args):
    """NaN/inf in `y0` or in the floating leaves of `args`: a clear error.

    Concrete values are checked now (`ValueError`); traced ones inside the compiled
    solve (`eqx.error_if`), so a jitted caller gets the same message at run time.
    """
    for name, tree in (("y0", y0), ("args", args)):
        for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
            if not _is_float_array(leaf) or not is_concrete(leaf):
                continue
            if not np.all(np.isfinite(np.asarray(leaf))):
                raise ValueError(
                    f"`{name}` leaf {_where(path)} contains NaN or inf. Check how it "
                    "was computed (a NaN here would silently poison the whole solve)."
                )


def nonfinite(y0, args):
    """Whether any traced floating leaf of `y0` or `args` holds NaN or inf.

    One reduction over all leaves (`x * 0` is NaN exactly where `x` is not finite,
    and cannot overflow): a reduction per leaf costs noticeable compile time when
    `args` is a network with many parameter arrays.
    """
    leaves = [
        _real_nan_marker(leaf)
        for leaf in jtu.tree_leaves((y0, args))
        if _is_float_array(leaf) and not is_concrete(leaf)
    ]
    if not leaves:
        return False
    if len(leaves) == 1:
        return ~jnp.isfinite(jnp.sum(leaves[0]))
    dtype = jnp.result_type(*leaves)
    flat = jnp.concatenate([leaf.astype(dtype) for leaf in leaves])
    return ~jnp.isfinite(jnp.sum(flat))


def _real_nan_marker(leaf):
    # Real and NaN exactly where the leaf (either part, if complex) is not finite.
    zero = jnp.ravel(leaf * 0)
    if jnp.iscomplexobj(zero):
        return zero.real + zero.imag
    return zero


def raise_if(x, checks):
    """Attach run-time checks `[(pred, message), ...]` to the pytree `x`.

    One `eqx.branched_error_if` for all checks (each `error_if` is a `lax.cond` with
    host callbacks, whose compile time is comparable to a small solve loop's); the
    first failing check's message is raised. Checks known to pass at trace time are
    dropped.
    """
    checks = [(p, m) for p, m in checks if not (is_concrete(p) and not bool(p))]
    if not checks:
        return x
    if len(checks) == 1:
        return eqx.error_if(x, checks[0][0], checks[0][1])
    preds = jnp.stack([jnp.asarray(p) for p, _ in checks])
    return eqx.branched_error_if(
        x, jnp.any(preds), jnp.argmax(preds), [m for _, m in checks]
    )


def check_vector_field(fn, name, t0, y0, args, expected=None):
    """Evaluate `fn(t0, y0, args)` abstractly and compare it leaf by leaf.

    `expected` is the structure the output must have (default: `y0`'s).
    """
    expected = y0 if expected is None else expected
    try:
        out = eqx.filter_eval_shape(fn, t0, y0, args)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"(raised while odelab evaluated `{name}(t0, y0, args)`)")
        raise
    exp_struct = jtu.tree_structure(expected)
    out_struct = jtu.tree_structure(out)
    if exp_struct != out_struct:
        raise ValueError(
            f"`{name}` returned a pytree of structure {out_struct}, but "
            f"`y0` has structure {exp_struct}; they must match."
        )
    for (path, e), o in zip(
        jtu.tree_flatten_with_path(expected)[0], jtu.tree_leaves(out)
    ):
        if e.shape != o.shape:
            raise ValueError(
                f"`{name}` returned shape {o.shape} at leaf {_where(path)}, but the "
                f"state there has shape {e.shape}. dy/dt must have the state's shape."
            )
        if e.dtype != o.dtype:
            raise TypeError(
                f"`{name}` returned dtype {o.dtype} at leaf {_where(path)}, but the "
                f"state there has dtype {e.dtype}. Make them agree, e.g. cast `y0` "
                f"with `.astype({o.dtype})` or the output with `.astype({e.dtype})`."
            )


def check_ode_solver(solver, argname="solver"):
    """An ODE solve needs a solver that takes a single term."""
    structure = getattr(solver, "term_structure", diffrax.AbstractTerm)
    if structure is not diffrax.AbstractTerm and structure is not diffrax.ODETerm:
        raise ValueError(
            f"`{argname}={type(solver).__name__}()` is an SDE solver (it expects terms "
            f"{structure}); for an ODE use e.g. 'tsit5', or call `odelab.solve_sde` "
            "with a diffusion."
        )


def _is_float_array(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)


def _where(path) -> str:
    s = jtu.keystr(path)
    return f"`{s}`" if s else "(the root)"


def errors_as_nan() -> None:
    """From now on, trace run-time checks (`eqx.error_if`, odelab's and diffrax's) as
    NaN outputs instead of host callbacks, for the rest of the process.

    A program with a host callback, which is how `eqx.error_if` raises, is never
    written to JAX's persistent compilation cache. `odelab train` calls this before
    it traces anything, so that its training step is cached across processes; a
    failed check then shows as a NaN loss, which the loop catches on the host and
    explains from the solve's result code (`odelab.train`). Process-wide on purpose:
    equinox caches traces without the mode in the key, so switching back and forth
    would let a trace of one mode be reused in the other.
    """
    # equinox reads this module global at trace time (its environment variable,
    # EQX_ON_ERROR, is read once when equinox is imported, before odelab can set it).
    _eqx_errors.EQX_ON_ERROR = "nan"
