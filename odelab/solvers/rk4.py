"""The classical fourth-order Runge–Kutta method."""

from typing import ClassVar

import diffrax
import numpy as np

from .base import AbstractExplicitRK


_rk4_tableau = diffrax.ButcherTableau(
    c=np.array([0.5, 0.5, 1.0]),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.zeros(4),
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
)


class RK4(AbstractExplicitRK):
    r"""The classical Runge–Kutta method of order 4 ("RK4"), fixed step.

    $k_1 = h f(t_0, y_0),\ k_2 = h f(t_0 + h/2, y_0 + k_1/2),\
    k_3 = h f(t_0 + h/2, y_0 + k_2/2),\ k_4 = h f(t_0 + h, y_0 + k_3),$
    $y_1 = y_0 + (k_1 + 2k_2 + 2k_3 + k_4)/6.$

    Four evaluations a step, no error estimate: use it with a fixed step (`dt0` or
    `steps` in `odelab.solve`, `diffrax.ConstantStepSize` in `diffeqsolve`). It is
    torchdiffeq's `method="rk4"` (its 3/8-rule variant differs) and the method most
    hand-written neural-ODE loops use.

    **Example:**

    ```python
    sol = odelab.solve(lambda t, y, args: -y, 1.0, (0.0, 1.0), solver=odelab.solvers.RK4(),
                       steps=50)
    ```

    **Reference:** W. Kutta, "Beitrag zur näherungsweisen Integration totaler
    Differentialgleichungen", Z. Math. Phys. 46 (1901); Hairer, Nørsett & Wanner,
    *Solving Ordinary Differential Equations I*, §II.1.
    """

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau

    def order(self, terms):
        del terms
        return 4

    def strong_order(self, terms):
        del terms
        return None
