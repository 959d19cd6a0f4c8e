"""Stiff ODEs from the classic test sets: stiff Van der Pol, Robertson, HIRES."""

import jax.numpy as jnp

from .base import Problem, _float, _params
from .ode import _van_der_pol_field


def van_der_pol_stiff() -> Problem:
    r"""The Van der Pol oscillator in its stiff relaxation regime ($\mu = 1000$).

    $$x' = v, \qquad v' = \mu (1 - x^2) v - x$$

    in the unscaled form, with $\mu = 1000$ (`args["mu"]`), $y_0 = (2, 0)$ and
    $t \in [0, 3000]$ (the span of MATLAB's `vdp1000` demo): slow drifts along the
    branches $|x| > 1$ of the slow manifold, Jacobian eigenvalues near
    $-\mu (x^2 - 1) \approx -3000$, and three fast jumps (near $t \approx 807$, $1614$,
    $2421$). The time-scaled form $\varepsilon v' = \dots$, $\varepsilon = \mu^{-2}$,
    of Hairer & Wanner is the same curve with $t$ and $v$ rescaled; we keep the
    unscaled one, which diffrax's implicit solvers take to tight tolerances reliably
    (from $v = 0$, the scaled form's initial layer of width $10^{-6}$ stalls their
    step-size selection). Numerical reference: `Kvaerno5`, rtol = atol = 1e-12.

    **Reference:** E. Hairer and G. Wanner, *Solving Ordinary Differential Equations
    II: Stiff and Differential-Algebraic Problems*, 2nd ed., Springer (1996),
    Sec. IV.10; L. F. Shampine and M. W. Reichelt, *The MATLAB ODE Suite*, SIAM J.
    Sci. Comput. 18 (1997).
    """
    return Problem(
        name="van_der_pol_stiff",
        vector_field=_van_der_pol_field,
        y0=_float([2.0, 0.0]),
        t0=0.0,
        t1=3000.0,
        args={"mu": _float(1000.0)},
        stiff=True,
        semilinear=False,
        stochastic=False,
        reference_kind="numerical",
        reference_solver="Kvaerno5",
        reference_rtol=1e-12,
        reference_atol=1e-12,
    )


def _robertson_field(t, y, args):
    del t
    p = _params(args, y)
    y1, y2, y3 = y
    slow, fast, auto = p["k1"] * y1, p["k3"] * y2 * y3, p["k2"] * y2**2
    return jnp.stack([-slow + fast, slow - fast - auto, auto])


def robertson() -> Problem:
    r"""Robertson's autocatalytic chemical reaction (ROBER).

    $$\begin{aligned} y_1' &= -k_1 y_1 + k_3 y_2 y_3, \\
    y_2' &= k_1 y_1 - k_3 y_2 y_3 - k_2 y_2^2, \\
    y_3' &= k_2 y_2^2, \end{aligned}$$

    with $(k_1, k_2, k_3) = (0.04, 3 \cdot 10^7, 10^4)$ (`args`), $y_0 = (1, 0, 0)$ and
    $t \in [0, 100]$. Mass $y_1 + y_2 + y_3 = 1$ is conserved; $y_2$ stays below
    $4 \cdot 10^{-5}$, so tolerances must be absolute at that scale; the Jacobian
    spectrum reaches about $-4 \cdot 10^3$. At $t = 40$,
    $y \approx (0.7158271, 9.185535 \cdot 10^{-6}, 0.2841637)$. Numerical
    reference: `Kvaerno5`, rtol = 1e-12, atol = 1e-16.

    **Reference:** H. H. Robertson, *The solution of a set of reaction rate
    equations*, in Numerical Analysis: An Introduction, Academic Press (1966);
    E. Hairer and G. Wanner, *Solving Ordinary Differential Equations II*, 2nd ed.,
    Springer (1996), Sec. IV.10.
    """
    return Problem(
        name="robertson",
        vector_field=_robertson_field,
        y0=_float([1.0, 0.0, 0.0]),
        t0=0.0,
        t1=100.0,
        args={
            "k1": _float(0.04),
            "k2": _float(3e7),
            "k3": _float(1e4),
        },
        stiff=True,
        semilinear=False,
        stochastic=False,
        reference_kind="numerical",
        reference_solver="Kvaerno5",
        reference_rtol=1e-12,
        reference_atol=1e-16,
    )


def _hires_field(t, y, args):
    del t
    k = _params(args, y)["k"]
    y1, y2, y3, y4, y5, y6, y7, y8 = y
    bind = k[9] * y6 * y8
    return jnp.stack(
        [
            -k[0] * y1 + k[1] * y2 + k[2] * y3 + k[3],
            k[0] * y1 - k[4] * y2,
            -k[5] * y3 + k[1] * y4 + k[6] * y5,
            k[2] * y2 + k[0] * y3 - k[7] * y4,
            -k[8] * y5 + k[1] * y6 + k[1] * y7,
            -bind + k[10] * y4 + k[0] * y5 - k[1] * y6 + k[10] * y7,
            bind - k[11] * y7,
            -bind + k[11] * y7,
        ]
    )


# The published HIRES solution at t1 = 321.8122 (Hairer & Wanner; the IVP test set).
HIRES_T1_SOLUTION = (
    0.7371312573325668e-3,
    0.1442485726316185e-3,
    0.5888729740967575e-4,
    0.1175651343283149e-2,
    0.2386356198831331e-2,
    0.6238968252742796e-2,
    0.2849998395185769e-2,
    0.2850001604814231e-2,
)


def hires() -> Problem:
    r"""HIRES: light-induced morphogenesis in plants, 8 chemical species.

    $$\begin{aligned}
    y_1' &= -1.71 y_1 + 0.43 y_2 + 8.32 y_3 + 0.0007, \\
    y_2' &= 1.71 y_1 - 8.75 y_2, \\
    y_3' &= -10.03 y_3 + 0.43 y_4 + 0.035 y_5, \\
    y_4' &= 8.32 y_2 + 1.71 y_3 - 1.12 y_4, \\
    y_5' &= -1.745 y_5 + 0.43 y_6 + 0.43 y_7, \\
    y_6' &= -280 y_6 y_8 + 0.69 y_4 + 1.71 y_5 - 0.43 y_6 + 0.69 y_7, \\
    y_7' &= 280 y_6 y_8 - 1.81 y_7, \\
    y_8' &= -280 y_6 y_8 + 1.81 y_7,
    \end{aligned}$$

    $y_0 = (1, 0, 0, 0, 0, 0, 0, 0.0057)$, $t \in [0, 321.8122]$. `args["k"]` holds the
    twelve distinct coefficients $(1.71, 0.43, 8.32, 0.0007, 8.75, 10.03, 0.035,
    1.12, 1.745, 280, 0.69, 1.81)$, each used wherever its value appears above.
    The Jacobian spectrum reaches about $-210$ on this span. Numerical reference:
    `Dopri8`, rtol = 1e-12, atol = 1e-14 (about $10^4$ steps, fewer than an implicit
    method needs at this tolerance); it agrees with the published values at $t_1$
    (`HIRES_T1_SOLUTION`) to about $10^{-12}$ relative.

    **Reference:** E. Schäfer, *A new approach to explain the "high irradiance
    responses" of photomorphogenesis on the basis of phytochrome*, J. Math. Biology 2
    (1975); E. Hairer and G. Wanner, *Solving Ordinary Differential Equations II*,
    2nd ed., Springer (1996), Sec. IV.10; F. Mazzia and C. Magherini, *Test Set for
    Initial Value Problem Solvers*, release 2.4, University of Bari (2008).
    """
    return Problem(
        name="hires",
        vector_field=_hires_field,
        y0=_float([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057]),
        t0=0.0,
        t1=321.8122,
        args={
            "k": _float(
                [1.71, 0.43, 8.32, 0.0007, 8.75, 10.03, 0.035, 1.12, 1.745, 280.0]
                + [0.69, 1.81]
            )
        },
        stiff=True,
        semilinear=False,
        stochastic=False,
        reference_kind="numerical",
        reference_solver="Dopri8",
        reference_rtol=1e-12,
        reference_atol=1e-14,
    )
