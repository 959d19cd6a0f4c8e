"""The `Problem` record shared by the zoo, and the machinery behind its references."""

import collections
import warnings
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np

from .._types import Args, Array, PyTree


_REFERENCE_KINDS = ("closed_form", "numerical", "moments")
_NOISE_TYPES = ("diagonal", "scalar", "general")
_CACHE_SIZE = 128
# Numerical references, keyed on everything they depend on; least recently used
# evicted first.
_CACHE: collections.OrderedDict = collections.OrderedDict()


class Problem(eqx.Module):
    r"""One test problem: an initial value problem and what is known about its solution.

    A deterministic problem is $y'(t) = f(t, y, \theta)$, $y(t_0) = y_0$ on
    $[t_0, t_1]$, with $f$ = `vector_field` and $\theta$ = `args`. A stochastic one is
    the Itô SDE $dy = f(t, y, \theta)\,dt + g(t, y, \theta)\,dW$ with drift
    $f$ = `vector_field` and diffusion $g$ = `diffusion`. The shape of $g$ and of the
    Brownian motion $W$ follow `noise`, as in `diffrax.ControlTerm`:

    - `"diagonal"`: $g$ has the shape of $y$ and $W$ too; the product is elementwise,
      $g \odot dW$ (`ControlTerm` with a `lineax.DiagonalLinearOperator`);
    - `"scalar"`: $g$ has the shape of $y$ and $W$ is a scalar, $g\,dW$;
    - `"general"`: $g$ is a matrix of shape `(dim, m)`, $W$ has shape `(m,)`: $g\,dW$.

    `terms(bm)` builds exactly these diffrax terms, and `brownian_shape` is the shape
    to give a `diffrax.VirtualBrownianTree`.

    A semilinear problem also splits $f(t, y) = L y + N(t, y, \theta)$: `linear` is $L$,
    a scalar, a diagonal (an array of the shape of $y$, applied elementwise) or a dense
    matrix (applied by `@`), in the dtype of `y0`; `nonlinear` is $N$. $L$ holds no
    parameters: `args` enter $N$ only.

    Vector fields are pure JAX, follow the dtype of `y` (float32, float64 or complex)
    and cast `args` to it, so `jax.grad` with respect to `args` works through any solve.
    Build problems with `odelab.problems.get(name)`: `y0` and `args` then take JAX's
    default float dtype at that moment (float64 under `jax_enable_x64`).

    **Fields:**

    - `name`: the registry name.
    - `vector_field`: $f(t, y, \text{args})$ (the drift, for an SDE).
    - `y0`, `t0`, `t1`, `args`: initial value, time span and parameters (a pytree of
      arrays).
    - `stiff`, `semilinear`, `stochastic`: flags.
    - `reference_kind`: `"closed_form"` (an exact solution is known), `"numerical"` (a
      tight float64 solve) or `"moments"` (an SDE whose mean and variance only are
      known in closed form).
    - `linear`, `nonlinear`: $L$ and $N$ of a semilinear problem, else `None`.
    - `diffusion`, `noise`: $g(t, y, \text{args})$ and its convention, else `None`.
    - `solution`: the closed form `solution(t, t0, y0, args)` of an ODE, else `None`.
    - `strong_solution`: `strong_solution(t, t0, y0, args, w)` of an SDE, given the
      Brownian increment $w = W_t - W_{t_0}$, else `None`.
    - `moments`: the pair `(mean, variance)` of functions of `(t, t0, y0, args)` for an
      SDE, else `None`.
    - `reference_solver`, `reference_rtol`, `reference_atol`: the diffrax solver (by
      class name) and tolerances of a numerical reference.

    **Example:**

    ```python
    import jax
    import odelab.problems

    jax.config.update("jax_enable_x64", True)
    problem = odelab.problems.get("robertson")
    ys = problem.reference(jax.numpy.array([0.0, 1.0, 40.0]))
    ```
    """

    name: str = eqx.field(static=True)
    vector_field: Callable[..., Array] = eqx.field(static=True)
    y0: Array
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    args: PyTree[Array]
    stiff: bool = eqx.field(static=True)
    semilinear: bool = eqx.field(static=True)
    stochastic: bool = eqx.field(static=True)
    reference_kind: str = eqx.field(static=True)
    linear: Array | None = None
    nonlinear: Callable[..., Array] | None = eqx.field(static=True, default=None)
    diffusion: Callable[..., Array] | None = eqx.field(static=True, default=None)
    noise: str | None = eqx.field(static=True, default=None)
    solution: Callable[..., Array] | None = eqx.field(static=True, default=None)
    strong_solution: Callable[..., Array] | None = eqx.field(static=True, default=None)
    moments: tuple[Callable[..., Array], Callable[..., Array]] | None = eqx.field(
        static=True, default=None
    )
    reference_solver: str = eqx.field(static=True, default="Dopri8")
    reference_rtol: float = eqx.field(static=True, default=1e-12)
    reference_atol: float = eqx.field(static=True, default=1e-12)

    def __check_init__(self):
        if self.reference_kind not in _REFERENCE_KINDS:
            raise ValueError(
                f"`reference_kind` must be one of {_REFERENCE_KINDS}, "
                f"got {self.reference_kind!r}."
            )
        if self.semilinear != (self.linear is not None and self.nonlinear is not None):
            raise ValueError(
                "A semilinear problem needs both `linear` and `nonlinear`, and only it."
            )
        if self.stochastic != (self.diffusion is not None):
            raise ValueError("A stochastic problem needs `diffusion`, and only it.")
        if self.stochastic and self.noise not in _NOISE_TYPES:
            raise ValueError(
                f"`noise` must be one of {_NOISE_TYPES}, got {self.noise!r}."
            )
        if self.stochastic and self.moments is None:
            raise ValueError("A stochastic problem needs `moments=(mean, variance)`.")
        if (
            self.reference_kind == "closed_form"
            and (self.strong_solution if self.stochastic else self.solution) is None
        ):
            raise ValueError(
                "`reference_kind='closed_form'` needs `solution` (an ODE) or "
                "`strong_solution` (an SDE)."
            )

    def reference(self, ts: Array) -> Array:
        """The reference solution of a deterministic problem at the save times `ts`.

        A closed form is evaluated in the widest float available (float64 under x64).
        A numerical reference is a float64 diffrax solve with `reference_solver` at
        `reference_rtol`/`reference_atol`, computed on first use and cached on
        `(name, t0, t1, y0, args, ts)`; it needs concrete `ts` (call it outside `jit`).

        **Arguments:**

        - `ts`: a one-dimensional, non-decreasing array of times in `[t0, t1]`.

        **Returns:**

        The solution at `ts`, of shape `ts.shape + y0.shape`.

        **Raises:**

        - `ValueError` for a stochastic problem (use `exact`, `mean`, `variance`) or
          for `ts` that are not one-dimensional, non-decreasing and in `[t0, t1]`.
        - `RuntimeError` when a numerical reference is asked for without x64.
        """
        if self.stochastic:
            raise ValueError(
                f"`{self.name}` is stochastic and has no single reference trajectory: "
                "use `exact(ts, bm)` for the strong solution (where known) or "
                "`mean(t)` and `variance(t)`."
            )
        if self.reference_kind == "closed_form":
            dtype = _widest(self.y0.dtype)
            ts = jnp.asarray(ts, jnp.finfo(dtype).dtype)
            if ts.ndim != 1:
                raise ValueError(f"`ts` must be one-dimensional, got shape {ts.shape}.")
            y0 = jnp.asarray(self.y0, dtype)
            args = _cast(self.args, jnp.finfo(dtype).dtype)
            return jax.vmap(lambda t: self.solution(t, self.t0, y0, args))(ts)
        return jnp.asarray(_numerical_reference(self, ts))

    def exact(self, ts: Array, bm: diffrax.AbstractBrownianPath) -> Array:
        """The exact strong solution of an SDE along the Brownian path `bm`.

        $y(t)$ is a function of $W_t - W_{t_0}$ = `bm.evaluate(t0, t)`, so any
        `diffrax.AbstractBrownianPath` of shape `brownian_shape` on an interval holding
        `[t0, t1]` serves, and an SDE solve driven by the same `bm` converges to it.

        **Arguments:**

        - `ts`: a one-dimensional array of times.
        - `bm`: the Brownian path.

        **Returns:**

        The solution at `ts`, of shape `ts.shape + y0.shape` and the dtype of `y0`.

        **Raises:**

        `ValueError` if no closed-form strong solution is known.
        """
        if self.strong_solution is None:
            raise ValueError(
                f"`{self.name}` has no closed-form strong solution; "
                "use `mean(t)` and `variance(t)`."
            )
        dtype = self.y0.dtype
        args = _cast(self.args, dtype)

        def at(t):
            w = jnp.asarray(bm.evaluate(self.t0, t), dtype)
            return self.strong_solution(t, self.t0, self.y0, args, w)

        return jax.vmap(at)(jnp.asarray(ts, dtype))

    def mean(self, t: Array) -> Array:
        """The exact mean $E[y(t)]$ of an SDE, at a time or a 1-D array of times."""
        return self._moment(0, t)

    def variance(self, t: Array) -> Array:
        """The exact componentwise variance $\\operatorname{Var}[y(t)]$ of an SDE."""
        return self._moment(1, t)

    def _moment(self, which: int, t: Array) -> Array:
        if self.moments is None:
            raise ValueError(f"`{self.name}` is not stochastic; use `reference(ts)`.")
        fn = self.moments[which]
        dtype = self.y0.dtype
        args = _cast(self.args, dtype)
        t = jnp.asarray(t, dtype)
        at = lambda s: fn(s, self.t0, self.y0, args)
        return jax.vmap(at)(t) if t.ndim == 1 else at(t)

    @property
    def brownian_shape(self) -> tuple[int, ...]:
        """The shape of $W$: `y0.shape`, `()`, `(m,)` for diagonal, scalar, general."""
        if not self.stochastic:
            raise ValueError(f"`{self.name}` is not stochastic.")
        if self.noise == "diagonal":
            return self.y0.shape
        if self.noise == "scalar":
            return ()
        g = jax.eval_shape(self.diffusion, self.t0, self.y0, self.args)
        return g.shape[self.y0.ndim :]

    def terms(
        self, bm: diffrax.AbstractBrownianPath | None = None
    ) -> diffrax.AbstractTerm:
        """The diffrax terms: `ODETerm(vector_field)`, or for an SDE
        `MultiTerm(ODETerm(drift), ControlTerm(diffusion, bm))` with the `noise`
        convention built in.

        **Raises:**

        `ValueError` if an SDE is given no Brownian path `bm`.
        """
        drift = diffrax.ODETerm(self.vector_field)
        if not self.stochastic:
            return drift
        if bm is None:
            raise ValueError(f"`{self.name}` is stochastic: pass a Brownian path `bm`.")
        g = self.diffusion
        if self.noise == "diagonal":
            g = _DiagonalDiffusion(g)
        return diffrax.MultiTerm(drift, diffrax.ControlTerm(g, bm))


class _DiagonalDiffusion(eqx.Module):
    # A module rather than a lambda, so equal problems give equal terms and diffrax's
    # jit cache is hit on the second solve.
    diffusion: Callable[..., Array] = eqx.field(static=True)

    def __call__(self, t, y, args):
        return lx.DiagonalLinearOperator(self.diffusion(t, y, args))


def apply_linear(linear: Array, y: Array) -> Array:
    """$L y$ for $L$ a scalar, a diagonal (shape of `y`) or a dense matrix."""
    if jnp.ndim(linear) == jnp.ndim(y) + 1:
        return linear @ y
    return linear * y


def _params(args: Args, y: Array) -> Args:
    """`args` cast to the dtype of `y`: a vector field follows the caller's precision.

    Complex states get real parameters (the real dtype of the same width).
    """
    return _cast(args, jnp.finfo(y.dtype).dtype)


def _float(x) -> Array:
    """`x` as a strongly typed array of JAX's default float dtype at call time."""
    return jnp.asarray(x, jnp.result_type(float))


def _cast(tree: Args, dtype) -> Args:
    return jtu.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def _widest(dtype) -> np.dtype:
    # float64/complex128 under x64, else float32/complex64. NumPy's promotion, since
    # JAX's refuses float32 -> float64 under strict dtype promotion.
    return jax.dtypes.canonicalize_dtype(np.promote_types(dtype, np.float64))


def _numerical_reference(problem: Problem, ts: Array) -> np.ndarray:
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            f"The reference of `{problem.name}` is a float64 solve and needs x64: "
            "call `jax.config.update('jax_enable_x64', True)` or work inside "
            "`with jax.enable_x64(True):` (`jax.experimental.enable_x64()` on older "
            "JAX). odelab never enables it for you."
        )
    try:
        ts = np.asarray(ts, np.float64)
        y0 = np.asarray(problem.y0)
        leaves, treedef = jtu.tree_flatten(problem.args)
        leaves = [np.asarray(leaf) for leaf in leaves]
    except jax.errors.TracerArrayConversionError as e:
        raise ValueError(
            "`reference` needs concrete `ts`, `y0` and `args`: call it outside "
            "`jax.jit`/`jax.vmap`."
        ) from e
    if ts.ndim != 1:
        raise ValueError(f"`ts` must be one-dimensional, got shape {ts.shape}.")
    outside = ts.size and (ts[0] < problem.t0 or ts[-1] > problem.t1)
    if outside or np.any(np.diff(ts) < 0):
        raise ValueError(
            f"`ts` must be non-decreasing and lie in [t0, t1] = "
            f"[{problem.t0}, {problem.t1}] for `{problem.name}`."
        )
    key = (
        problem.name,
        problem.t0,
        problem.t1,
        problem.reference_solver,
        problem.reference_rtol,
        problem.reference_atol,
        _fingerprint(y0),
        treedef,
        tuple(_fingerprint(leaf) for leaf in leaves),
        _fingerprint(ts),
    )
    if key in _CACHE:
        _CACHE.move_to_end(key)
    else:
        _CACHE[key] = _solve_reference(problem, ts)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return _CACHE[key]


def _fingerprint(x: np.ndarray) -> tuple:
    return (x.shape, x.dtype.str, x.tobytes())


def _solve_reference(problem: Problem, ts: np.ndarray) -> np.ndarray:
    dtype = _widest(problem.y0.dtype)
    y0 = jnp.asarray(problem.y0, dtype)
    args = _cast(problem.args, jnp.finfo(dtype).dtype)
    solver = getattr(diffrax, problem.reference_solver)()
    controller = diffrax.PIDController(
        rtol=problem.reference_rtol, atol=problem.reference_atol
    )
    with warnings.catch_warnings():
        # Explicit Runge-Kutta methods carry over to complex arithmetic unchanged; the
        # Fourier-space problem is checked against a real-split solve in the tests.
        warnings.filterwarnings("ignore", message="Complex dtype support in Diffrax")
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(problem.vector_field),
            solver,
            problem.t0,
            problem.t1,
            None,
            y0,
            args,
            saveat=diffrax.SaveAt(ts=jnp.asarray(ts)),
            stepsize_controller=controller,
            max_steps=1_000_000,
        )
    return np.asarray(sol.ys)
