r"""The φ-functions of exponential integrators, for scalars, diagonals and matrices.

$$\varphi_0(z) = e^z, \qquad \varphi_k(z) = \sum_{j \ge 0} \frac{z^j}{(j+k)!}
  = \frac{\varphi_{k-1}(z) - 1/(k-1)!}{z}, \quad k \ge 1.$$

The recurrence cancels catastrophically for small $|z|$ (at $z = 10^{-8}$ the
textbook $(e^z - 1)/z$ keeps half the digits; $\varphi_4$ from it keeps none), so
elementwise values use the Taylor series for $|z| < 2$ (30 terms: the truncation is
below $2^{30}/34! \approx 10^{-29}$ relative) and the recurrence, which is stable for
$|z| \ge 2$, from $e^z$ (via `expm1`) above. Large negative $z$ is safe: $e^z$
underflows to 0 and $\varphi_k(z) \to -1/((k-1)!\,z)$.

Matrices use the augmented-matrix identity (Sidje 1998, Al-Mohy & Higham 2011): for
$B = \begin{pmatrix} A & I & & \\ & 0 & I & \\ & & \ddots & I \\ & & & 0 \end{pmatrix}$
of size $(k+1)n$, the top block row of $e^B$ is
$(e^A, \varphi_1(A), \ldots, \varphi_k(A))$; $e^B$ is computed by JAX's
scaling-and-squaring Padé `expm`. This is accurate for non-normal $A$ and for
eigenvalues far in the left half-plane, where the contour integral of Kassam &
Trefethen needs a contour adapted to the spectrum.

**References:** S. M. Cox, P. C. Matthews, "Exponential time differencing for stiff
systems", J. Comput. Phys. 176 (2002); A.-K. Kassam, L. N. Trefethen, "Fourth-order
time-stepping for stiff PDEs", SIAM J. Sci. Comput. 26 (2005); R. B. Sidje, "Expokit",
ACM TOMS 24 (1998); M. Hochbruck, A. Ostermann, "Exponential integrators", Acta
Numerica 19 (2010).
"""

import math

import jax.numpy as jnp
import jax.scipy.linalg as jsl


_SERIES_RADIUS = 2.0
_SERIES_TERMS = 30


def _series(k, z):
    # Horner on Σ_j z^j/(j+k)!, from the highest term down.
    total = jnp.full_like(z, 1.0 / math.factorial(k + _SERIES_TERMS - 1))
    for j in range(_SERIES_TERMS - 2, -1, -1):
        total = total * z + 1.0 / math.factorial(j + k)
    return total


def phis(z, kmax: int) -> tuple:
    """$(\\varphi_0(z), \\ldots, \\varphi_{k_{max}}(z))$ elementwise (scalar or array,
    real or complex), accurate to a few ulps for every $z$ with $\\mathrm{Re}\\,z$
    not large and positive."""
    if kmax < 0:
        raise ValueError(f"`kmax` must be >= 0, got {kmax}.")
    z = jnp.asarray(z)
    if not jnp.issubdtype(z.dtype, jnp.inexact):
        z = z.astype(jnp.result_type(float))
    small = jnp.abs(z) < _SERIES_RADIUS
    # Guard the untaken branches so that neither produces NaN/inf for gradients.
    z_big = jnp.where(small, jnp.asarray(_SERIES_RADIUS, z.dtype), z)
    z_small = jnp.where(small, z, jnp.zeros((), z.dtype))
    out = [jnp.exp(z)]
    # φ_1 from expm1 (no cancellation in e^z - 1), then the stable recurrence.
    recurrence = jnp.expm1(z_big) / z_big
    for k in range(1, kmax + 1):
        if k > 1:
            recurrence = (recurrence - 1.0 / math.factorial(k - 1)) / z_big
        out.append(jnp.where(small, _series(k, z_small), recurrence))
    return tuple(out)


def phi(k: int, z):
    """$\\varphi_k(z)$ elementwise; see `phis`."""
    return phis(z, k)[k]


def phis_matrix(a, kmax: int) -> tuple:
    """$(e^A, \\varphi_1(A), \\ldots, \\varphi_{k_{max}}(A))$ for a square matrix $A$,
    from one `expm` of the augmented matrix (module notes)."""
    a = jnp.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"`A` must be a square matrix, got shape {a.shape}.")
    if kmax < 0:
        raise ValueError(f"`kmax` must be >= 0, got {kmax}.")
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        a = a.astype(jnp.result_type(float))
    n = a.shape[0]
    if kmax == 0:
        return (jsl.expm(a),)
    size = (kmax + 1) * n
    b = jnp.zeros((size, size), a.dtype).at[:n, :n].set(a)
    eye = jnp.eye(n, dtype=a.dtype)
    for j in range(kmax):
        b = b.at[j * n : (j + 1) * n, (j + 1) * n : (j + 2) * n].set(eye)
    top = jsl.expm(b)[:n]
    return tuple(top[:, j * n : (j + 1) * n] for j in range(kmax + 1))


def phi_matrix(k: int, a):
    """$\\varphi_k(A)$ for a square matrix $A$; see `phis_matrix`."""
    return phis_matrix(a, k)[k]


__all__ = ["phi", "phis", "phi_matrix", "phis_matrix"]
