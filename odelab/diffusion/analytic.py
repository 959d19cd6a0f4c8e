r"""Gaussian-mixture data with exact denoisers: the references for samplers.

Data $x_0 \sim \sum_k \pi_k \mathcal N(\mu_k, s_k^2 I)$ in $\mathbb R^d$ under any
schedule of `odelab.diffusion.schedules`: the marginal at time $t$ is again a mixture,
$x_t \sim \sum_k \pi_k \mathcal N(\alpha\mu_k, (\alpha^2 s_k^2 + \sigma^2) I)$, and the
denoiser (posterior mean) is closed form,

$$D(x, t) = \mathbb E[x_0 \mid x_t = x] = \sum_k w_k(x)\Big[\mu_k +
  \frac{\alpha s_k^2}{\alpha^2 s_k^2 + \sigma^2}(x - \alpha\mu_k)\Big],$$

with $w_k(x)$ the posterior component probabilities. From it: the noise prediction
$\hat\varepsilon = (x - \alpha D)/\sigma$, the score $(\alpha D - x)/\sigma^2$, and the
probability-flow ODE. A single Gaussian ($K = 1$) has an exact flow map in closed
form (`gaussian_flow_map`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class GaussianMixture(eqx.Module):
    """Isotropic Gaussian mixture: `means` (K, d), `stds` (K,), `weights` (K,)."""

    means: jax.Array
    stds: jax.Array
    weights: jax.Array

    def __init__(self, means, stds, weights=None):
        means = jnp.asarray(means)
        if means.ndim != 2:
            raise ValueError(f"`means` must have shape (K, d), got {means.shape}.")
        k = means.shape[0]
        stds = jnp.broadcast_to(jnp.asarray(stds, means.dtype), (k,))
        weights = (
            jnp.full((k,), 1.0 / k, means.dtype)
            if weights is None
            else jnp.asarray(weights, means.dtype)
        )
        if weights.shape != (k,):
            raise ValueError(f"`weights` must have shape ({k},), got {weights.shape}.")
        self.means, self.stds, self.weights = means, stds, weights / jnp.sum(weights)

    @classmethod
    def random(cls, key, components=8, dim=8, mean_std=2.0, std=0.3, dtype=jnp.float32):
        """Means from N(0, mean_std² I), equal weights, component std `std`."""
        means = mean_std * jax.random.normal(key, (components, dim), dtype)
        return cls(means, std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, key, n: int):
        """`n` samples of the data distribution, shape (n, d)."""
        k1, k2 = jax.random.split(key)
        comp = jax.random.choice(k1, self.weights.shape[0], (n,), p=self.weights)
        noise = jax.random.normal(k2, (n, self.dim), self.means.dtype)
        return self.means[comp] + self.stds[comp, None] * noise

    def _posterior(self, x, alpha, sigma):
        var = alpha**2 * self.stds**2 + sigma**2  # (K,)
        # |x - alpha mu_k|^2 by expansion: matrix-vector products instead of a
        # (K, d) difference (4x faster under vmap; the cancellation it risks near
        # a mean only shifts logits by ~1e-5 relative in float32).
        sq = (
            jnp.sum(x**2)
            - 2 * alpha * (self.means @ x)
            + alpha**2 * jnp.sum(self.means**2, axis=-1)
        )
        logits = (
            jnp.log(self.weights)
            - 0.5 * self.dim * jnp.log(var)
            - 0.5 * jnp.maximum(sq, 0.0) / var
        )
        return jax.nn.softmax(logits), var

    def denoiser(self, x, t, schedule):
        r"""$D(x, t) = E[x_0 | x_t = x]$ for one state `x` of shape (d,):
        $\sum_k w_k(x)\,(\mu_k + g_k (x - \alpha\mu_k))$ with $g_k = \alpha s_k^2 /
        (\alpha^2 s_k^2 + \sigma^2)$ and $w$ the posterior component weights."""
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        w, var = self._posterior(x, alpha, sigma)
        gain = alpha * self.stds**2 / var  # (K,)
        return (w * (1 - alpha * gain)) @ self.means + jnp.sum(w * gain) * x

    def eps(self, x, t, schedule):
        """The noise prediction $(x - \\alpha D)/\\sigma$."""
        return (x - schedule.alpha(t) * self.denoiser(x, t, schedule)) / schedule.sigma(
            t
        )

    def score(self, x, t, schedule):
        """$\\nabla_x \\log p_t(x) = (\\alpha D - x)/\\sigma^2$."""
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        return (alpha * self.denoiser(x, t, schedule) - x) / sigma**2

    def log_prob(self, x, t, schedule):
        """$\\log p_t(x)$ of the marginal at time `t`."""
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        var = alpha**2 * self.stds**2 + sigma**2
        diff = x[None, :] - alpha * self.means
        comp = (
            jnp.log(self.weights)
            - 0.5 * self.dim * jnp.log(2 * np.pi * var)
            - 0.5 * jnp.sum(diff**2, axis=-1) / var
        )
        return jax.scipy.special.logsumexp(comp)


def gaussian_flow_map(mixture: GaussianMixture, x, t_from, t_to, schedule):
    r"""The exact probability-flow map of a single Gaussian ($K = 1$).

    Along the flow, $(x_t - \alpha_t\mu)/\sqrt{\alpha_t^2 s^2 + \sigma_t^2}$ is
    constant, so $x_{t'} = \alpha_{t'}\mu + \sqrt{\frac{\alpha_{t'}^2 s^2 +
    \sigma_{t'}^2}{\alpha_t^2 s^2 + \sigma_t^2}}\,(x_t - \alpha_t \mu)$.
    """
    if mixture.means.shape[0] != 1:
        raise ValueError(
            "the closed-form flow map is for a single Gaussian; for a mixture, solve "
            "the probability-flow ODE to tight tolerance."
        )
    mu, s = mixture.means[0], mixture.stds[0]
    a0, s0 = schedule.alpha(t_from), schedule.sigma(t_from)
    a1, s1 = schedule.alpha(t_to), schedule.sigma(t_to)
    scale = jnp.sqrt((a1**2 * s**2 + s1**2) / (a0**2 * s**2 + s0**2))
    return a1 * mu + scale * (x - a0 * mu)
