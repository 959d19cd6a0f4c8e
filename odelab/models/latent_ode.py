"""Latent ODEs: an ODE-RNN encoder, a latent neural ODE and a decoder, trained by the ELBO."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from ..solve import solve


def _unit_span_field(s, y, args):
    # dy/ds = Δ f(y) on s ∈ [0, 1] is dy/dt = f(y) on [t, t + Δ] with t = t_start + sΔ.
    del s
    mlp, gap = args
    return gap * mlp(y)


class LatentODE(eqx.Module):
    r"""A latent ODE for irregularly sampled time series (Rubanova et al., 2019).

    A variational autoencoder whose latent state follows a neural ODE:

    - **Encoder** $q(z_0 \mid x)$, an ODE-RNN run backwards in time over the
      observations $(t_i, x_i, m_i)$ ($m_i$ the mask): from $h = 0$ at the last
      observation, the hidden state follows $\frac{dh}{dt} = g_\phi(h)$ between time points
      and is updated by a GRU cell, $h \leftarrow \mathrm{GRU}([x_i \odot m_i, m_i], h)$,
      wherever anything is observed at $t_i$; then it flows on to $t_0$, and an MLP
      maps it to the mean $\mu$ and log-standard deviation $\log s$ of
      $q(z_0 \mid x) = N(\mu, \operatorname{diag} s^2)$.
    - **Generative model:** $z_0 \sim N(0, I)$, $\frac{dz}{dt} = f_\theta(z)$ from
      $t_0$, $x_k \sim N(d_\psi(z(t_k)), \sigma^2 I)$ with a decoder MLP $d_\psi$ and
      a fixed observation standard deviation $\sigma$.
    - **ELBO** (one reparameterised sample $z_0 = \mu + s \odot \varepsilon$):
      $\mathcal{L} = \sum_{k, j:\, m_{kj}} \log N(x_{kj};\, d_\psi(z(t_k))_j,
      \sigma^2) - \mathrm{KL}\big(q(z_0 \mid x) \,\|\, N(0, I)\big)$, the
      likelihood over observed target entries only and the KL in closed form,
      $\tfrac12 \sum_l (\mu_l^2 + s_l^2 - 1) - \log s_l$.

    **Solving.** Both ODEs advance from one time point to the next (the encoder from
    each to the previous, ending at $t_0$; the decoder from $t_0$ through the target
    times), each gap $\Delta$ through `odelab.solve` on the unit interval as
    $\frac{dy}{ds} = \Delta\, f(y)$, $s \in [0, 1]$: the same flow, with one compiled
    solve serving every gap. So every series may have its own times (a `vmap` over
    series is a `vmap` over time arrays), repeated times are a zero gap, the identity,
    rather than an error, and times need not even be sorted (the flows compose; a
    fixed-step error grows with $\sum |\Delta|$). With `steps` each gap takes that many
    fixed steps of `solver` (as torchdiffeq's fixed-grid solvers step between save
    times), with `steps=None` an adaptive solve to `rtol`/`atol`.

    One series per call: batch with `jax.vmap`, e.g.
    `jax.vmap(model.elbo)(ts_c, ys_c, m_c, ts_t, ys_t, m_t, keys)`. The datasets
    `odelab.data.irregular_spirals` and `irregular_series` with
    `odelab.data.split_times` give exactly these arrays.

    **Arguments:**

    - `data_dim`: the dimension of an observation.
    - `latent_dim`: the dimension of $z$.
    - `hidden_dim`: the dimension of the encoder's hidden state $h$.
    - `width`, `depth`: hidden width and number of hidden layers of every MLP
      ($g_\phi$, the encoder's output map, $f_\theta$, $d_\psi$).
    - `key`: initialisation key.
    - `obs_std`: $\sigma > 0$, the observation noise of the likelihood.
    - `t0`: the time of $z_0$, at or before the first observation of every series.
    - `activation`: the MLPs' hidden activation (default `jnp.tanh`).
    - `solver`, `adjoint`, `rtol`, `atol`, `max_steps`: as in `odelab.solve`, for
      both ODEs.
    - `steps`: fixed steps of `solver` per gap between consecutive times; `None` for
      adaptive steps (then `solver` must be adaptive, e.g. `"tsit5"`).

    **Raises:** `ValueError` for a non-positive dimension or width, a negative
    depth, a non-positive `obs_std` or `steps`; the methods for arrays of the wrong
    rank or shape (naming the argument).

    **Example:**

    ```python
    data = odelab.data.irregular_spirals(jr.key(0), 64, 40)
    context, target = odelab.data.split_times(data, "interpolation", key=jr.key(1))
    model = LatentODE(2, 4, 16, 32, 1, key=jr.key(2))
    elbo = jax.vmap(model.elbo)(context.ts, context.ys, context.mask, target.ts,
                                target.ys, target.mask, jr.split(jr.key(3), 64))
    ys_hat = jax.vmap(model)(context.ts, context.ys, context.mask, target.ts)
    ```

    **Reference:** Y. Rubanova, R. T. Q. Chen, D. Duvenaud, "Latent ODEs for
    Irregularly-Sampled Time Series", NeurIPS 2019, arXiv:1907.03907, §3–4; R. T. Q.
    Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural Ordinary Differential
    Equations", NeurIPS 2018, arXiv:1806.07366, §5.
    """

    gru: eqx.nn.GRUCell
    encoder_field: eqx.nn.MLP
    encoder_out: eqx.nn.MLP
    latent_field: eqx.nn.MLP
    decoder: eqx.nn.MLP
    data_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    hidden_dim: int = eqx.field(static=True)
    obs_std: float = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    solver: str = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    steps: int | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_dim: int,
        width: int,
        depth: int,
        *,
        key,
        obs_std: float = 0.1,
        t0: float = 0.0,
        activation: Callable = jnp.tanh,
        solver: str = "rk4",
        adjoint: str = "checkpoint",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        steps: int | None = 2,
        max_steps: int = 4096,
    ):
        sizes = dict(
            data_dim=data_dim, latent_dim=latent_dim, hidden_dim=hidden_dim, width=width
        )
        if min(sizes.values()) < 1 or depth < 0:
            raise ValueError(
                "`data_dim`, `latent_dim`, `hidden_dim` and `width` must be positive "
                f"and `depth` non-negative; got {sizes}, depth={depth}."
            )
        if not obs_std > 0:
            raise ValueError(
                f"`obs_std`, the likelihood's standard deviation, must be > 0; got "
                f"{obs_std!r}."
            )
        if steps is not None and (isinstance(steps, bool) or not steps >= 1):
            raise ValueError(
                f"`steps` (fixed steps per gap between times) must be a positive "
                f"integer, or None for adaptive steps; got {steps!r}."
            )
        keys = jr.split(key, 5)
        self.gru = eqx.nn.GRUCell(2 * data_dim, hidden_dim, key=keys[0])

        def mlp(n_in, n_out, k):
            return eqx.nn.MLP(n_in, n_out, width, depth, activation=activation, key=k)

        self.encoder_field = mlp(hidden_dim, hidden_dim, keys[1])
        self.encoder_out = mlp(hidden_dim, 2 * latent_dim, keys[2])
        self.latent_field = mlp(latent_dim, latent_dim, keys[3])
        self.decoder = mlp(latent_dim, data_dim, keys[4])
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.obs_std = obs_std
        self.t0 = t0
        self.solver = solver
        self.adjoint = adjoint
        self.rtol = rtol
        self.atol = atol
        self.steps = steps
        self.max_steps = max_steps

    def _flow(self, mlp, y, gap):
        # y(t + Δ) from y(t) under dy/dt = mlp(y), on the unit interval (see above).
        sol = solve(
            _unit_span_field,
            y,
            (0.0, 1.0),
            (mlp, jnp.asarray(gap, dtype=y.dtype)),
            solver=self.solver,
            adjoint=self.adjoint,
            rtol=self.rtol,
            atol=self.atol,
            steps=self.steps,
            max_steps=self.max_steps,
        )
        return sol.ys[-1]

    def _check_series(self, ts, ys, mask, names):
        ts_name, ys_name, mask_name = names
        if jnp.ndim(ts) != 1:
            raise ValueError(
                f"`{ts_name}` must be one series' times, shape (n_times,); got shape "
                f"{jnp.shape(ts)}. Batch series with `jax.vmap`."
            )
        expected = (jnp.shape(ts)[0], self.data_dim)
        if jnp.shape(ys) != expected:
            raise ValueError(
                f"`{ys_name}` must have shape (n_times, data_dim) = {expected}; got "
                f"{jnp.shape(ys)}. One series per call (batch with `jax.vmap`); the "
                f"model was built with data_dim={self.data_dim}."
            )
        if jnp.shape(mask) != expected or jnp.result_type(mask) != jnp.bool_:
            raise ValueError(
                f"`{mask_name}` must be booleans of the shape of `{ys_name}` "
                f"{expected}, True where observed; got {jnp.result_type(mask)} of "
                f"shape {jnp.shape(mask)}."
            )

    def _check_context(self, ts, ys, mask):
        names = ("ts_context", "ys_context", "mask_context")
        self._check_series(ts, ys, mask, names)

    def encode(self, ts, ys, mask):
        r"""The mean and log-standard deviation of $q(z_0 \mid x)$.

        **Arguments:** `ts` `(n_times,)`, the observation times of one series; `ys`
        `(n_times, data_dim)`, its values; `mask`, booleans of the shape of `ys`,
        `True` where observed. Values where `mask` is `False` are never read (they
        may be anything, NaN included), and a time point with nothing observed only lets
        the hidden state flow past it.

        **Returns:** `(mean, log_std)`, each of shape `(latent_dim,)`.
        """
        self._check_series(ts, ys, mask, ("ts", "ys", "mask"))
        return self._encode(ts, ys, mask)

    def _encode(self, ts, ys, mask):
        inputs = jnp.concatenate(
            [jnp.where(mask, ys, 0.0), mask.astype(jnp.result_type(ys))], axis=-1
        )
        observed = jnp.any(mask, axis=-1)
        backwards = ts[::-1]
        gaps = backwards - jnp.concatenate([backwards[:1], backwards[:-1]])

        def step(carry, xs):
            h, started = carry
            gap, x, seen = xs
            # h = 0 until the last observation: time points after it (an
            # extrapolation target's, say) leave the encoding unchanged.
            h = jnp.where(started, self._flow(self.encoder_field, h, gap), h)
            # Rubanova et al. keep the state where nothing is observed; `where` (not
            # a blend by the mask) keeps it exactly, whatever the hidden values.
            h = jnp.where(seen, self.gru(x, h), h)
            return (h, started | seen), None

        h0 = jnp.zeros((self.hidden_dim,), jnp.result_type(self.gru.weight_hh))
        carry = (h0, jnp.asarray(False))
        (h, _), _ = jax.lax.scan(step, carry, (gaps, inputs[::-1], observed[::-1]))
        h = self._flow(self.encoder_field, h, self.t0 - ts[0])
        out = self.encoder_out(h)
        return out[: self.latent_dim], out[self.latent_dim :]

    def decode(self, z0, ts):
        r"""The decoded mean $d_\psi(z(t_k))$ of the trajectory from $z(t_0) = z_0$.

        **Arguments:** `z0` `(latent_dim,)`; `ts` `(n_times,)`, the times to decode
        at (best sorted, at or after `t0`).

        **Returns:** an array of shape `(n_times, data_dim)`.
        """
        if jnp.shape(z0) != (self.latent_dim,):
            raise ValueError(
                f"`z0` must have shape (latent_dim,) = ({self.latent_dim},); got "
                f"{jnp.shape(z0)}. Batch with `jax.vmap`."
            )
        if jnp.ndim(ts) != 1:
            raise ValueError(
                f"`ts` must have shape (n_times,); got {jnp.shape(ts)}. Batch with "
                "`jax.vmap`."
            )
        gaps = ts - jnp.concatenate(
            [jnp.reshape(self.t0, (1,)).astype(ts.dtype), ts[:-1]]
        )

        def step(z, gap):
            z = self._flow(self.latent_field, z, gap)
            return z, z

        _, zs = jax.lax.scan(step, z0, gaps)
        return jax.vmap(self.decoder)(zs)

    def elbo(
        self,
        ts_context,
        ys_context,
        mask_context,
        ts_target,
        ys_target,
        mask_target,
        key,
    ):
        r"""A one-sample estimate of the evidence lower bound of one series.

        Encode the context, draw $z_0 = \mu + s \odot \varepsilon$ with `key`, decode
        at the target times and return $\sum_{\text{observed}} \log N(x;\, \hat x,
        \sigma^2) - \mathrm{KL}(q \,\|\, N(0, I))$ (see the class docstring). Its
        expectation over `key` is a lower bound on $\log p(x_\text{target})$ for the
        interpolation task, where the context is part of the target. Maximise its mean
        over a batch; dividing by the number of observed target entries gives a
        per-entry scale for learning rates.

        **Arguments:** the context's `ts_context` `(n_c,)`, `ys_context`
        `(n_c, data_dim)`, `mask_context`; the target's `ts_target` `(n_t,)`,
        `ys_target` `(n_t, data_dim)`, `mask_target` (booleans, `True` where
        observed; values elsewhere are never read, NaN included); `key`, a PRNG key
        for $\varepsilon$.

        **Returns:** a scalar.
        """
        self._check_context(ts_context, ys_context, mask_context)
        names = ("ts_target", "ys_target", "mask_target")
        self._check_series(ts_target, ys_target, mask_target, names)
        mean, log_std = self._encode(ts_context, ys_context, mask_context)
        std = jnp.exp(log_std)
        z0 = mean + std * jr.normal(key, mean.shape, mean.dtype)
        # Missing target values may be NaN: zeroed first, or the unselected branch of
        # the `where` below would still send NaN into the gradient.
        observed = jnp.where(mask_target, ys_target, 0.0)
        residual = (observed - self.decode(z0, ts_target)) / self.obs_std
        log_density = (
            -0.5 * residual**2 - math.log(self.obs_std) - 0.5 * math.log(2 * math.pi)
        )
        log_likelihood = jnp.sum(jnp.where(mask_target, log_density, 0.0))
        kl = jnp.sum(0.5 * (mean**2 + std**2 - 1) - log_std)
        return log_likelihood - kl

    def predict(self, ts_context, ys_context, mask_context, ts_target):
        """The decoded trajectory from the posterior mean of $z_0$ at `ts_target`.

        **Arguments:** the context as in `elbo`; `ts_target` `(n_t,)`.

        **Returns:** an array of shape `(n_t, data_dim)`.
        """
        self._check_context(ts_context, ys_context, mask_context)
        mean, _ = self._encode(ts_context, ys_context, mask_context)
        return self.decode(mean, ts_target)

    def __call__(self, ts_context, ys_context, mask_context, ts_target):
        """`predict`: the posterior-mean trajectory at `ts_target`."""
        return self.predict(ts_context, ys_context, mask_context, ts_target)
