r"""A small noise-prediction MLP trained by denoising score matching, so that samplers
and the gradients through them have a *trained* model to work on.

With $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$, $\varepsilon \sim N(0, I)$ and
$t \sim U[t_{min}, t_{max}]$, the denoising score matching loss in noise prediction is

$$\mathcal L(\theta) = E_{x_0, t, \varepsilon}\,\tfrac1d\,\big|\hat\varepsilon_\theta
(x_t, t) - \varepsilon\big|^2,$$

whose minimiser is $\hat\varepsilon = -\sigma\nabla\log p_t$ (Vincent 2011; Ho et al.
2020). This module is the minimum the gradient-through-sampler applications need on
2-D toy data (`odelab.diffusion.finetune`); generative training proper (weighting,
EMA, samplers as training targets) is a later issue's.

**References:** P. Vincent, "A Connection Between Score Matching and Denoising
Autoencoders", Neural Computation 2011; J. Ho, A. Jain, P. Abbeel, "Denoising
Diffusion Probabilistic Models", NeurIPS 2020, arXiv:2006.11239.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .schedules import AbstractSchedule


class EpsMLP(eqx.Module):
    r"""$\hat\varepsilon(x, t)$: an MLP on $x$ and the Fourier features
    $(\sin 2^k\pi t, \cos 2^k\pi t)_{k < K}$ of the time.

    **Arguments:** `dim`, the data dimension; `width`, `depth`, the MLP's hidden
    width and number of hidden layers; `frequencies`, $K$; `key`, a PRNG key.

    **Example:** `EpsMLP(2, key=jax.random.key(0))(jnp.zeros(2), jnp.asarray(0.5))`.
    """

    mlp: eqx.nn.MLP
    frequencies: int = eqx.field(static=True)

    def __init__(self, dim, width=64, depth=2, frequencies=4, *, key):
        self.mlp = eqx.nn.MLP(
            dim + 2 * frequencies, dim, width, depth, jax.nn.silu, key=key
        )
        self.frequencies = frequencies

    def __call__(self, x, t):
        angles = jnp.pi * 2.0 ** jnp.arange(self.frequencies, dtype=x.dtype) * t
        features = jnp.concatenate([x, jnp.sin(angles), jnp.cos(angles)])
        return self.mlp(features)


def dsm_loss(model, schedule: AbstractSchedule, x0, key):
    """The denoising score matching loss (module notes) of `model(x, t)` on the batch
    `x0` (shape `(batch, dim)`), one $(t, \\varepsilon)$ per sample from `key`."""
    t_key, eps_key = jax.random.split(key)
    t = jax.random.uniform(
        t_key, x0.shape[:1], x0.dtype, schedule.t_min, schedule.t_max
    )
    eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
    x_t = schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps
    return jnp.mean((jax.vmap(model)(x_t, t) - eps) ** 2)


def train_denoiser(
    data,
    schedule: AbstractSchedule,
    *,
    key,
    width: int = 64,
    depth: int = 2,
    steps: int = 3000,
    batch: int = 256,
    learning_rate: float = 3e-3,
):
    r"""Train an `EpsMLP` on `data` (shape `(n, dim)`) by denoising score matching
    with Adam (cosine-decayed learning rate), all steps in one compiled `lax.scan`.

    **Arguments:**

    - `data`: the training set, shape `(n, dim)`; batches are drawn with replacement.
    - `schedule`: the noise schedule the model will be sampled with.
    - `key`: PRNG key (initialisation, batches, times and noise).
    - `width`, `depth`: the MLP's hidden width and number of hidden layers.
    - `steps`, `batch`, `learning_rate`: Adam steps, batch size, initial rate.

    **Returns:** `(model, losses)`: the trained `EpsMLP` and the loss of every step.

    **Raises:** `ValueError` for `data` that is not 2-D or non-positive sizes.

    **Example:**

    ```python
    data = odelab.data.eight_gaussians(jax.random.key(0), 4096)
    model, losses = train_denoiser(data, VPLinear(), key=jax.random.key(1))
    ```
    """
    data = jnp.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"`data` must have shape (n, dim); got {data.shape}.")
    for name, value in dict(steps=steps, batch=batch, width=width).items():
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1; got {value}.")
    init_key, loop_key = jax.random.split(key)
    model = EpsMLP(data.shape[1], width, depth, key=init_key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = jax.tree.map(lambda p: p.astype(data.dtype), params)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

    def loss_fn(params, key):
        batch_key, noise_key = jax.random.split(key)
        index = jax.random.randint(batch_key, (batch,), 0, data.shape[0])
        model = eqx.combine(params, static)
        return dsm_loss(model, schedule, data[index], noise_key)

    def step(carry, key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def run(params, key):
        carry = (params, optimizer.init(params))
        (params, _), losses = jax.lax.scan(step, carry, jax.random.split(key, steps))
        return params, losses

    params, losses = run(params, loop_key)
    return eqx.combine(params, static), losses
