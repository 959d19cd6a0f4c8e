"""Itô SDEs with known solutions: geometric Brownian motion and Ornstein–Uhlenbeck."""

import jax.numpy as jnp

from .base import Problem, _float, _params


def _gbm_drift(t, y, args):
    del t
    return _params(args, y)["mu"] * y


def _gbm_diffusion(t, y, args):
    del t
    return _params(args, y)["sigma"] * y


def _gbm_strong_solution(t, t0, y0, args, w):
    mu, sigma = args["mu"], args["sigma"]
    return y0 * jnp.exp((mu - sigma**2 / 2) * (t - t0) + sigma * w)


def _gbm_mean(t, t0, y0, args):
    return y0 * jnp.exp(args["mu"] * (t - t0))


def _gbm_variance(t, t0, y0, args):
    mu, sigma = args["mu"], args["sigma"]
    return y0**2 * jnp.exp(2 * mu * (t - t0)) * jnp.expm1(sigma**2 * (t - t0))


def geometric_brownian_motion() -> Problem:
    r"""Geometric Brownian motion, two independent components (diagonal noise).

    $$dy = \mu \odot y\, dt + \sigma \odot y \odot dW$$

    (Itô) with $\mu = (0.8, -0.5)$, $\sigma = (0.2, 0.4)$ (`args`), $y_0 = (1, 2)$,
    $t \in [0, 1]$, $W$ of shape `(2,)`. Exact strong solution (`exact(ts, bm)`)
    $y(t) = y_0 e^{(\mu - \sigma^2/2)(t - t_0) + \sigma (W_t - W_{t_0})}$; moments
    $E\,y(t) = y_0 e^{\mu \tau}$ and
    $\operatorname{Var} y(t) = y_0^2 e^{2\mu\tau} (e^{\sigma^2 \tau} - 1)$,
    $\tau = t - t_0$.
    The noise is commutative, so Milstein's method converges with strong order 1.

    **Reference:** P. E. Kloeden and E. Platen, *Numerical Solution of Stochastic
    Differential Equations*, Springer (1992).
    """
    return Problem(
        name="geometric_brownian_motion",
        vector_field=_gbm_drift,
        y0=_float([1.0, 2.0]),
        t0=0.0,
        t1=1.0,
        args={"mu": _float([0.8, -0.5]), "sigma": _float([0.2, 0.4])},
        stiff=False,
        semilinear=False,
        stochastic=True,
        reference_kind="closed_form",
        diffusion=_gbm_diffusion,
        noise="diagonal",
        strong_solution=_gbm_strong_solution,
        moments=(_gbm_mean, _gbm_variance),
    )


def _ou_drift(t, y, args):
    del t
    p = _params(args, y)
    return p["theta"] * (p["mu"] - y)


def _ou_diffusion(t, y, args):
    del t
    return _params(args, y)["sigma"]


def _ou_mean(t, t0, y0, args):
    mu, theta = args["mu"], args["theta"]
    return mu + (y0 - mu) * jnp.exp(-theta * (t - t0))


def _ou_variance(t, t0, y0, args):
    del y0
    theta, sigma = args["theta"], args["sigma"]
    # Var y_i = sum_j sigma_ij^2 (1 - e^{-2 theta_i tau}) / (2 theta_i).
    return -jnp.sum(sigma**2, axis=1) * jnp.expm1(-2 * theta * (t - t0)) / (2 * theta)


def ornstein_uhlenbeck() -> Problem:
    r"""A two-dimensional Ornstein–Uhlenbeck process with correlated (general) noise.

    $$dy = \theta \odot (\mu - y)\, dt + \Sigma\, dW$$

    with $\theta = (1, 2)$, $\mu = (1, -0.5)$,
    $\Sigma = \begin{pmatrix} 0.5 & 0 \\ 0.3 & 0.4 \end{pmatrix}$ (`args`), $W$ of shape
    `(2,)` (`noise="general"`: `diffusion` returns $\Sigma$, shape `(2, 2)`),
    $y_0 = (0, 1)$, $t \in [0, 1]$. The noise is additive, so it suits SRA/ShARK
    methods. Moments: $E\,y(t) = \mu + (y_0 - \mu) e^{-\theta\tau}$ and
    $\operatorname{Var} y_i(t) = \sum_j \Sigma_{ij}^2 (1 - e^{-2\theta_i\tau}) /
    (2\theta_i)$, $\tau = t - t_0$. The strong solution
    $\mu + (y_0 - \mu) e^{-\theta\tau} + \int_{t_0}^t e^{-\theta (t - s)} \Sigma\, dW_s$
    is a stochastic integral, not a function of finitely many values of $W$, so
    `exact` is not provided (`reference_kind="moments"`).

    **Reference:** G. E. Uhlenbeck and L. S. Ornstein, *On the theory of the Brownian
    motion*, Phys. Rev. 36 (1930); C. W. Gardiner, *Stochastic Methods*, 4th ed.,
    Springer (2009).
    """
    return Problem(
        name="ornstein_uhlenbeck",
        vector_field=_ou_drift,
        y0=_float([0.0, 1.0]),
        t0=0.0,
        t1=1.0,
        args={
            "theta": _float([1.0, 2.0]),
            "mu": _float([1.0, -0.5]),
            "sigma": _float([[0.5, 0.0], [0.3, 0.4]]),
        },
        stiff=False,
        semilinear=False,
        stochastic=True,
        reference_kind="moments",
        diffusion=_ou_diffusion,
        noise="general",
        moments=(_ou_mean, _ou_variance),
    )
