r"""Structured terms: `SemilinearTerm` for $\frac{dy}{dt} = L y + N(t, y, \text{args})$.

The split is what exponential integrators exploit: $L$ (stiff, linear, fixed) is
integrated exactly through $e^{hL}$ and the φ-functions, $N$ explicitly.
"""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx

from .phi import phis, phis_matrix


class SemilinearTerm(diffrax.AbstractTerm):
    r"""$\frac{dy}{dt} = L y + N(t, y, \text{args})$ with a fixed linear part $L$.

    **Arguments:**

    - `linear`: $L$, one of: a scalar (any pytree state, applied leafwise); an array
      of the state's shape, a diagonal (elementwise product); a square matrix acting
      on a 1-D state (`kind="dense"`, the default for a 2-D square array); a lineax
      linear operator (diagonal ones stay diagonal, others are materialised).
    - `nonlinear`: $N(t, y, \text{args})$, returning the state's structure.
    - `kind`: `"scalar"`, `"diagonal"` or `"dense"` to override the inference (a
      2-D array is a dense matrix unless `kind="diagonal"`).

    Its `vf` is $L y + N$, so any diffrax solver can use it; the exponential solvers
    in `odelab.solvers.exponential` need it. A shape mismatch between $L$ and the
    state is reported when the solve is traced.

    **Example:** Kuramoto–Sivashinsky in Fourier space, $L = k^2 - k^4$ diagonal:

    ```python
    term = SemilinearTerm(k**2 - k**4, lambda t, u, args: -0.5j * k * fft(ifft(u)**2))
    ```
    """

    linear: Any
    nonlinear: Callable
    kind: str = eqx.field(static=True)

    def __init__(self, linear, nonlinear: Callable, kind: str | None = None):
        if not callable(nonlinear):
            raise TypeError(
                f"`nonlinear` must be a callable N(t, y, args), got {type(nonlinear)}."
            )
        if isinstance(linear, lx.AbstractLinearOperator):
            if isinstance(linear, lx.DiagonalLinearOperator):
                linear, inferred = lx.diagonal(linear), "diagonal"
            else:
                linear, inferred = linear.as_matrix(), "dense"
        else:
            linear = jnp.asarray(linear)
            if linear.ndim == 0:
                inferred = "scalar"
            elif linear.ndim == 2 and linear.shape[0] == linear.shape[1]:
                inferred = "dense"
            else:
                inferred = "diagonal"
        kind = inferred if kind is None else kind
        if kind not in ("scalar", "diagonal", "dense"):
            raise ValueError(
                f"`kind` must be 'scalar', 'diagonal' or 'dense', got {kind!r}."
            )
        if kind == "dense" and (linear.ndim != 2 or linear.shape[0] != linear.shape[1]):
            raise ValueError(
                f"a dense linear part must be a square matrix, got shape "
                f"{linear.shape}."
            )
        if kind == "scalar" and linear.ndim != 0:
            raise ValueError(f"a scalar linear part must be 0-d, got {linear.shape}.")
        self.linear = linear
        self.nonlinear = nonlinear
        self.kind = kind

    def check_state(self, y) -> None:
        """Raise a clear error if $L$ cannot act on the state `y` (trace time)."""
        if self.kind == "scalar":
            return
        if not eqx.is_array(y):
            raise ValueError(
                f"a {self.kind} linear part acts on a single array state; got a "
                f"{type(y).__name__} (use a scalar L, or stack the state)."
            )
        shape = jnp.shape(y)
        if self.kind == "diagonal":
            try:
                ok = jnp.broadcast_shapes(self.linear.shape, shape) == shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"the diagonal linear part has shape {self.linear.shape}, which "
                    f"does not match the state's shape {shape}."
                )
        elif len(shape) != 1 or shape[0] != self.linear.shape[0]:
            raise ValueError(
                f"the dense linear part is {self.linear.shape[0]}x"
                f"{self.linear.shape[1]}; it needs a 1-D state of length "
                f"{self.linear.shape[0]}, got shape {shape}."
            )

    def apply_linear(self, y):
        """$L y$."""
        if self.kind == "dense":
            return jtu.tree_map(lambda v: self.linear @ v, y)
        return jtu.tree_map(lambda v: self.linear * v, y)

    def vf(self, t, y, args):
        n = self.nonlinear(t, y, args)
        return jtu.tree_map(lambda a, b: a + b, self.apply_linear(y), n)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return jtu.tree_map(lambda v: control * v, vf)

    def phis(self, h, kmax: int) -> tuple:
        r"""$(\varphi_0(hL), \ldots, \varphi_{k_{max}}(hL))$ as operators for
        `apply_phi` (arrays for scalar/diagonal $L$, matrices for dense $L$)."""
        hl = jnp.asarray(h, self.linear.dtype) * self.linear
        if self.kind == "dense":
            return phis_matrix(hl, kmax)
        return phis(hl, kmax)

    def apply_phi(self, op, v):
        """Apply one of `phis`' operators to a state-shaped `v`."""
        if self.kind == "dense":
            return jtu.tree_map(lambda x: op @ x, v)
        # The operator may be wider than the state (float64 schedule math, float32
        # state): cast it, not the product, so that strict promotion holds.
        return jtu.tree_map(lambda x: jnp.asarray(op, x.dtype) * x, v)
