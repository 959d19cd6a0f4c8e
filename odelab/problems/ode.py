"""Non-stiff ODEs: linear ones with closed forms, and classic nonlinear oscillators."""

import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from .base import Problem, _float, _params


def _exponential_decay_field(t, y, args):
    del t
    return -_params(args, y)["rate"] * y


def _exponential_decay_solution(t, t0, y0, args):
    return y0 * jnp.exp(-args["rate"] * (t - t0))


def exponential_decay() -> Problem:
    r"""Dahlquist's test equation, componentwise: $y' = -\lambda \odot y$.

    $y(t) = y_0 \odot e^{-\lambda (t - t_0)}$ with rates $\lambda = (0.5, 1, 2)$
    (`args["rate"]`), $y_0 = (1, 2, -1)$, $t \in [0, 2]$. Closed-form reference.

    **Reference:** G. Dahlquist, *A special stability problem for linear multistep
    methods*, BIT 3 (1963).
    """
    return Problem(
        name="exponential_decay",
        vector_field=_exponential_decay_field,
        y0=_float([1.0, 2.0, -1.0]),
        t0=0.0,
        t1=2.0,
        args={"rate": _float([0.5, 1.0, 2.0])},
        stiff=False,
        semilinear=False,
        stochastic=False,
        reference_kind="closed_form",
        solution=_exponential_decay_solution,
    )


def _linear_system_field(t, y, args):
    del t
    return _params(args, y)["A"] @ y


def _linear_system_solution(t, t0, y0, args):
    return jsl.expm(args["A"] * (t - t0)) @ y0


# Non-normal (A Aᵀ ≠ Aᵀ A): stable eigenvalues -1 ± 4i, -2, -3, yet ‖y‖ grows
# transiently through the strong one-way couplings.
_LINEAR_A = np.array(
    [
        [-1.0, 4.0, 0.0, 0.0],
        [-4.0, -1.0, 6.0, 0.0],
        [0.0, 0.0, -2.0, 8.0],
        [0.0, 0.0, 0.0, -3.0],
    ]
)


def linear_system() -> Problem:
    r"""A non-normal linear system $y' = A y$ in $\mathbb{R}^4$.

    $$A = \begin{pmatrix} -1 & 4 & 0 & 0 \\ -4 & -1 & 6 & 0 \\ 0 & 0 & -2 & 8 \\
    0 & 0 & 0 & -3 \end{pmatrix}$$

    (`args["A"]`) has eigenvalues $-1 \pm 4i, -2, -3$ but is far from normal, so
    $\|y\|$ grows before it decays. $y_0 = (0, 0, 0, 1)$, $t \in [0, 2]$. Closed-form
    reference $y(t) = e^{A (t - t_0)} y_0$ (`jax.scipy.linalg.expm`).

    **Reference:** L. N. Trefethen and M. Embree, *Spectra and Pseudospectra: The
    Behavior of Nonnormal Matrices and Operators*, Princeton (2005).
    """
    return Problem(
        name="linear_system",
        vector_field=_linear_system_field,
        y0=_float([0.0, 0.0, 0.0, 1.0]),
        t0=0.0,
        t1=2.0,
        args={"A": _float(_LINEAR_A)},
        stiff=False,
        semilinear=False,
        stochastic=False,
        reference_kind="closed_form",
        solution=_linear_system_solution,
    )


def _harmonic_oscillator_field(t, y, args):
    del t
    omega = _params(args, y)["omega"]
    q, p = y
    return jnp.stack([p, -(omega**2) * q])


def _harmonic_oscillator_solution(t, t0, y0, args):
    omega = args["omega"]
    q0, p0 = y0
    c, s = jnp.cos(omega * (t - t0)), jnp.sin(omega * (t - t0))
    return jnp.stack([q0 * c + p0 / omega * s, -q0 * omega * s + p0 * c])


def harmonic_oscillator() -> Problem:
    r"""The harmonic oscillator $q' = p$, $p' = -\omega^2 q$.

    $q(t) = q_0 \cos \omega\tau + (p_0/\omega) \sin \omega\tau$,
    $p(t) = -q_0 \omega \sin \omega\tau + p_0 \cos \omega\tau$ with $\tau = t - t_0$;
    $\omega = 2$ (`args["omega"]`), $y_0 = (q_0, p_0) = (1, 0.5)$, $t \in [0, 10]$
    (about three periods). The energy $p^2/2 + \omega^2 q^2/2$ is conserved.
    Closed-form reference.

    **Reference:** E. Hairer, C. Lubich and G. Wanner, *Geometric Numerical
    Integration*, 2nd ed., Springer (2006).
    """
    return Problem(
        name="harmonic_oscillator",
        vector_field=_harmonic_oscillator_field,
        y0=_float([1.0, 0.5]),
        t0=0.0,
        t1=10.0,
        args={"omega": _float(2.0)},
        stiff=False,
        semilinear=False,
        stochastic=False,
        reference_kind="closed_form",
        solution=_harmonic_oscillator_solution,
    )


def _lotka_volterra_field(t, y, args):
    del t
    p = _params(args, y)
    prey, predator = y
    return jnp.stack(
        [
            p["alpha"] * prey - p["beta"] * prey * predator,
            p["delta"] * prey * predator - p["gamma"] * predator,
        ]
    )


def lotka_volterra() -> Problem:
    r"""The Lotka–Volterra predator–prey model.

    $$x' = \alpha x - \beta x y, \qquad y' = \delta x y - \gamma y$$

    with $(\alpha, \beta, \gamma, \delta) = (1.5, 1, 3, 1)$ (`args`), $y_0 = (1, 1)$,
    $t \in [0, 10]$: a few periodic orbits around $(\gamma/\delta, \alpha/\beta)$.
    Numerical reference: `Dopri8`, rtol = atol = 1e-12.

    **Reference:** A. J. Lotka, *Elements of Physical Biology* (1925); V. Volterra,
    *Fluctuations in the abundance of a species considered mathematically*, Nature
    118 (1926); E. Hairer, S. P. Nørsett and G. Wanner, *Solving Ordinary Differential
    Equations I*, 2nd ed., Springer (1993).
    """
    return Problem(
        name="lotka_volterra",
        vector_field=_lotka_volterra_field,
        y0=_float([1.0, 1.0]),
        t0=0.0,
        t1=10.0,
        args={
            "alpha": _float(1.5),
            "beta": _float(1.0),
            "gamma": _float(3.0),
            "delta": _float(1.0),
        },
        stiff=False,
        semilinear=False,
        stochastic=False,
        reference_kind="numerical",
    )


def _lorenz_field(t, y, args):
    del t
    p = _params(args, y)
    x, v, z = y
    return jnp.stack(
        [p["sigma"] * (v - x), x * (p["rho"] - z) - v, x * v - p["beta"] * z]
    )


def lorenz() -> Problem:
    r"""The Lorenz system, on a horizon short enough for a meaningful reference.

    $$x' = \sigma (y - x), \qquad y' = x (\rho - z) - y, \qquad z' = x y - \beta z$$

    with the classic chaotic $(\sigma, \rho, \beta) = (10, 28, 8/3)$ (`args`),
    $y_0 = (1, 1, 1)$ and $t \in [0, 1]$: errors grow like $e^{0.9 t}$, so a longer
    horizon would test the chaos, not the solver. Numerical reference: `Dopri8`,
    rtol = atol = 1e-12.

    **Reference:** E. N. Lorenz, *Deterministic nonperiodic flow*, J. Atmos. Sci. 20
    (1963).
    """
    return Problem(
        name="lorenz",
        vector_field=_lorenz_field,
        y0=_float([1.0, 1.0, 1.0]),
        t0=0.0,
        t1=1.0,
        args={
            "sigma": _float(10.0),
            "rho": _float(28.0),
            "beta": _float(8.0 / 3.0),
        },
        stiff=False,
        semilinear=False,
        stochastic=False,
        reference_kind="numerical",
    )


def _van_der_pol_field(t, y, args):
    del t
    mu = _params(args, y)["mu"]
    x, v = y
    return jnp.stack([v, mu * (1 - x**2) * v - x])


def van_der_pol() -> Problem:
    r"""The Van der Pol oscillator, non-stiff ($\mu = 1$).

    $$x' = v, \qquad v' = \mu (1 - x^2) v - x$$

    with $\mu = 1$ (`args["mu"]`), $y_0 = (2, 0)$, $t \in [0, 10]$ (about 1.5 periods
    of the limit cycle). For the stiff regime see `van_der_pol_stiff`. Numerical
    reference: `Dopri8`, rtol = atol = 1e-12.

    **Reference:** B. van der Pol, *On relaxation-oscillations*, Phil. Mag. 2 (1926);
    E. Hairer and G. Wanner, *Solving Ordinary Differential Equations II*, 2nd ed.,
    Springer (1996).
    """
    return Problem(
        name="van_der_pol",
        vector_field=_van_der_pol_field,
        y0=_float([2.0, 0.0]),
        t0=0.0,
        t1=10.0,
        args={"mu": _float(1.0)},
        stiff=False,
        semilinear=False,
        stochastic=False,
        reference_kind="numerical",
    )
