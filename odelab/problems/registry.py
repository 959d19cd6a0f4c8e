"""The registry of the zoo: names to problem constructors."""

from collections.abc import Callable, Mapping
from types import MappingProxyType

from .base import Problem
from .ode import (
    exponential_decay,
    harmonic_oscillator,
    linear_system,
    lorenz,
    lotka_volterra,
    van_der_pol,
)
from .pde import allen_cahn, brusselator, kuramoto_sivashinsky
from .sde import geometric_brownian_motion, ornstein_uhlenbeck
from .stiff import hires, robertson, van_der_pol_stiff


ALL: Mapping[str, Callable[[], Problem]] = MappingProxyType(
    {
        make.__name__: make
        for make in (
            exponential_decay,
            linear_system,
            harmonic_oscillator,
            lotka_volterra,
            lorenz,
            van_der_pol,
            van_der_pol_stiff,
            robertson,
            hires,
            brusselator,
            allen_cahn,
            kuramoto_sivashinsky,
            geometric_brownian_motion,
            ornstein_uhlenbeck,
        )
    }
)
"""Every problem: a read-only mapping from its name to the function that builds it."""


def names() -> list[str]:
    """The names of all problems, sorted."""
    return sorted(ALL)


def get(name: str) -> Problem:
    """Build the problem called `name`.

    Each call builds a fresh `Problem` whose `y0` and `args` take JAX's default float
    dtype at that moment (float64 under `jax_enable_x64`, else float32).

    **Arguments:**

    - `name`: one of `names()`.

    **Returns:**

    The `Problem`.

    **Raises:**

    `ValueError` naming the valid problems if `name` is not one of them.

    **Example:**

    ```python
    problem = odelab.problems.get("lorenz")
    ```
    """
    try:
        make = ALL[name]
    except KeyError:
        raise ValueError(
            f"Unknown problem {name!r}; valid names are: {', '.join(names())}."
        ) from None
    return make()
