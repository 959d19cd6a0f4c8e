"""Semilinear PDEs by the method of lines, $y' = L y + N(t, y)$, for exponential
integrators: the 1-D Brusselator and Allen–Cahn equations (dense finite-difference
$L$) and Kuramoto–Sivashinsky (diagonal $L$ in Fourier space)."""

import jax.numpy as jnp
import numpy as np

from .base import Problem, _float, _params, apply_linear


_BRUSSELATOR_POINTS = 32
_BRUSSELATOR_ALPHA = 1.0 / 50.0
_BRUSSELATOR_BOUNDARY = (1.0, 3.0)


def _dirichlet_laplacian(n: int, h: float) -> np.ndarray:
    off = np.ones(n - 1)
    return (np.diag(np.full(n, -2.0)) + np.diag(off, 1) + np.diag(off, -1)) / h**2


def _brusselator_constants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = _BRUSSELATOR_POINTS
    h = 1.0 / (n + 1)
    x = np.arange(1, n + 1) * h
    linear = np.kron(np.eye(2), _BRUSSELATOR_ALPHA * _dirichlet_laplacian(n, h))
    # The boundary values enter the end rows of the difference quotient: an affine
    # term, kept in N so that L stays the plain Laplacian.
    ends = np.zeros(n)
    ends[[0, -1]] = _BRUSSELATOR_ALPHA / h**2
    boundary = np.concatenate([value * ends for value in _BRUSSELATOR_BOUNDARY])
    y0 = np.concatenate([1.0 + np.sin(2 * np.pi * x), np.full(n, 3.0)])
    return linear, boundary, y0


_BRUSSELATOR_L, _BRUSSELATOR_BC, _BRUSSELATOR_Y0 = _brusselator_constants()


def _brusselator_nonlinear(t, y, args):
    del t
    p = _params(args, y)
    u, v = jnp.split(y, 2)
    uuv = u * u * v
    reaction = jnp.concatenate([p["a"] + uuv - (p["b"] + 1) * u, p["b"] * u - uuv])
    return reaction + jnp.asarray(_BRUSSELATOR_BC, y.dtype)


def _brusselator_field(t, y, args):
    linear = jnp.asarray(_BRUSSELATOR_L, y.dtype)
    return apply_linear(linear, y) + _brusselator_nonlinear(t, y, args)


def brusselator() -> Problem:
    r"""The Brusselator with diffusion in 1-D, by central differences.

    $$\begin{aligned} u_t &= a + u^2 v - (b + 1) u + \alpha u_{xx}, \\
    v_t &= b u - u^2 v + \alpha v_{xx}, \end{aligned}$$

    on $x \in [0, 1]$ with $u = 1$, $v = 3$ at both ends, $\alpha = 1/50$,
    $(a, b) = (1, 3)$ (`args`), $u(x, 0) = 1 + \sin 2\pi x$, $v(x, 0) = 3$ and
    $t \in [0, 10]$. The state is $y = (u_1, \dots, u_{32}, v_1, \dots, v_{32})$ at
    $x_i = i / 33$. Semilinear: `linear` is the dense $64 \times 64$ matrix
    $\alpha D_2 \oplus \alpha D_2$ ($D_2$ the Dirichlet second-difference matrix,
    spectrum down to about $-87$); `nonlinear` is the reaction plus the boundary
    terms of $D_2$. Numerical reference: `Dopri8`, rtol = atol = 1e-12 (at such
    tolerances its steps are limited by accuracy, not by the mild stiffness).

    **Reference:** I. Prigogine and R. Lefever, *Symmetry breaking instabilities in
    dissipative systems II*, J. Chem. Phys. 48 (1968); E. Hairer, S. P. Nørsett and
    G. Wanner, *Solving Ordinary Differential Equations I*, 2nd ed., Springer (1993);
    E. Hairer and G. Wanner, *Solving Ordinary Differential Equations II*, 2nd ed.,
    Springer (1996).
    """
    return Problem(
        name="brusselator",
        vector_field=_brusselator_field,
        y0=_float(_BRUSSELATOR_Y0),
        t0=0.0,
        t1=10.0,
        args={"a": _float(1.0), "b": _float(3.0)},
        stiff=True,
        semilinear=True,
        stochastic=False,
        reference_kind="numerical",
        linear=_float(_BRUSSELATOR_L),
        nonlinear=_brusselator_nonlinear,
        reference_solver="Dopri8",
        reference_rtol=1e-12,
        reference_atol=1e-12,
    )


_ALLEN_CAHN_POINTS = 63
_ALLEN_CAHN_EPSILON = 0.01


def _allen_cahn_constants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = _ALLEN_CAHN_POINTS
    h = 2.0 / (n + 1)
    x = -1.0 + np.arange(1, n + 1) * h
    linear = _ALLEN_CAHN_EPSILON * _dirichlet_laplacian(n, h)
    boundary = np.zeros(n)
    boundary[[0, -1]] = np.array([-1.0, 1.0]) * _ALLEN_CAHN_EPSILON / h**2
    y0 = 0.53 * x + 0.47 * np.sin(-1.5 * np.pi * x)
    return linear, boundary, y0


_ALLEN_CAHN_L, _ALLEN_CAHN_BC, _ALLEN_CAHN_Y0 = _allen_cahn_constants()


def _allen_cahn_nonlinear(t, y, args):
    del t
    r = _params(args, y)["r"]
    return r * (y - y**3) + jnp.asarray(_ALLEN_CAHN_BC, y.dtype)


def _allen_cahn_field(t, y, args):
    linear = jnp.asarray(_ALLEN_CAHN_L, y.dtype)
    return apply_linear(linear, y) + _allen_cahn_nonlinear(t, y, args)


def allen_cahn() -> Problem:
    r"""The Allen–Cahn equation in 1-D, by central differences.

    $$u_t = \varepsilon u_{xx} + r (u - u^3), \qquad x \in [-1, 1],
    \quad u(\pm 1, t) = \pm 1,$$

    with $\varepsilon = 0.01$, $r = 1$ (`args["r"]`) and
    $u(x, 0) = 0.53 x + 0.47 \sin(-1.5 \pi x)$, the set-up of Kassam & Trefethen
    (there on a Chebyshev grid), here on the 63 interior points $x_i = -1 + i/32$,
    $t \in [0, 70]$: fronts form, sit metastably, and the middle hump collapses
    (between $t = 30$ and $35$ on this grid, near $45$ on theirs). Semilinear:
    `linear` is the dense matrix $\varepsilon D_2$ (spectrum down to about $-41$);
    `nonlinear` is the reaction plus the boundary terms of $D_2$. Numerical
    reference: `Dopri8`, rtol = atol = 1e-12 (at such tolerances its steps are limited
    by accuracy, not by the mild stiffness).

    **Reference:** S. M. Allen and J. W. Cahn, *A microscopic theory for antiphase
    boundary motion and its application to antiphase domain coarsening*, Acta Metall.
    27 (1979); A.-K. Kassam and L. N. Trefethen, *Fourth-order time-stepping for stiff
    PDEs*, SIAM J. Sci. Comput. 26 (2005).
    """
    return Problem(
        name="allen_cahn",
        vector_field=_allen_cahn_field,
        y0=_float(_ALLEN_CAHN_Y0),
        t0=0.0,
        t1=70.0,
        args={"r": _float(1.0)},
        stiff=True,
        semilinear=True,
        stochastic=False,
        reference_kind="numerical",
        linear=_float(_ALLEN_CAHN_L),
        nonlinear=_allen_cahn_nonlinear,
        reference_solver="Dopri8",
        reference_rtol=1e-12,
        reference_atol=1e-12,
    )


KS_POINTS = 128
KS_LENGTH = 32 * np.pi


def _ks_constants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = 2 * np.pi / KS_LENGTH * np.arange(KS_POINTS // 2 + 1)
    linear = k**2 - k**4
    # The Nyquist mode has no sign for an odd derivative; zero it there (as Kassam &
    # Trefethen do), which also keeps its coefficient real.
    derivative = 1j * k
    derivative[-1] = 0.0
    x = KS_LENGTH * np.arange(KS_POINTS) / KS_POINTS
    u0 = np.cos(x / 16) * (1 + np.sin(x / 16))
    return linear, derivative, np.fft.rfft(u0, norm="forward")


_KS_L, _KS_DX, _KS_Y0 = _ks_constants()


def _ks_nonlinear(t, y, args):
    del t
    c = jnp.asarray(_params(args, y)["c"], y.dtype)
    u = jnp.fft.irfft(y, n=KS_POINTS, norm="forward")
    square = jnp.fft.rfft(u * u, norm="forward")
    return -0.5 * c * jnp.asarray(_KS_DX, y.dtype) * square


def _ks_field(t, y, args):
    linear = jnp.asarray(_KS_L, y.dtype)
    return apply_linear(linear, y) + _ks_nonlinear(t, y, args)


def kuramoto_sivashinsky() -> Problem:
    r"""The Kuramoto–Sivashinsky equation in Fourier space.

    $$u_t = -c\, u u_x - u_{xx} - u_{xxxx}, \qquad x \in [0, 32\pi) \text{ periodic},$$

    with $c = 1$ (`args["c"]`) and $u(x, 0) = \cos(x/16) (1 + \sin(x/16))$, the set-up
    of Kassam & Trefethen, on $N = 128$ grid points and $t \in [0, 20]$. The state is
    the complex vector of the 65 real-FFT coefficients,
    `y = jnp.fft.rfft(u, norm="forward")` (so `u = jnp.fft.irfft(y, n=128,
    norm="forward")`). Semilinear with diagonal `linear` $L_k = k^2 - k^4$ (stored
    with the complex dtype of `y0`, so `linear * y` needs no promotion),
    $k = j/16$ (spectrum down to $-240$: stiff), and `nonlinear`
    $N(y) = -\tfrac{c}{2}\, i k\, \widehat{u^2}$ (not dealiased). Numerical reference:
    `Dopri8` in complex arithmetic, rtol = atol = 1e-12.

    **Reference:** A.-K. Kassam and L. N. Trefethen, *Fourth-order time-stepping for
    stiff PDEs*, SIAM J. Sci. Comput. 26 (2005); Y. Kuramoto and T. Tsuzuki, Prog.
    Theor. Phys. 55 (1976); G. I. Sivashinsky, Acta Astronautica 4 (1977).
    """
    y0 = jnp.asarray(_KS_Y0)
    return Problem(
        name="kuramoto_sivashinsky",
        vector_field=_ks_field,
        y0=y0,
        t0=0.0,
        t1=20.0,
        args={"c": _float(1.0)},
        stiff=True,
        semilinear=True,
        stochastic=False,
        reference_kind="numerical",
        linear=jnp.asarray(_KS_L, y0.dtype),
        nonlinear=_ks_nonlinear,
        reference_solver="Dopri8",
        reference_rtol=1e-12,
        reference_atol=1e-12,
    )
