"""Array-shape and pytree aliases shared across odelab."""

from typing import Any

from jaxtyping import Array, ArrayLike, Float, PyTree, Real


Y = PyTree[Array]
"""A state: any pytree of arrays."""

Args = Any
"""Parameters passed through to the vector field, as in diffrax."""

RealScalarLike = Real[ArrayLike, ""]
Times = Float[Array, " times"]
"""A one-dimensional array of save (or step) times."""

__all__ = ["Args", "Array", "Float", "PyTree", "RealScalarLike", "Times", "Y"]
