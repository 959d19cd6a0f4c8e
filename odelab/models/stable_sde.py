r"""Stable neural SDEs for irregular time series: Langevin-type, linear-noise and
geometric (Oh, Lim, Kim, ICLR 2024).

A latent $z \in \mathbb{R}^h$ starts at $z(0) = \zeta(X(0))$ and is driven along the
series' control path $X$ (`odelab.models.control_path`: time, values and
observational intensity, interpolated over $s \in [0, 1]$) by

| kind      | drift                                  | diffusion                     |
|-----------|----------------------------------------|-------------------------------|
| `"lsde"`  | $\gamma(\bar z(s))$                    | $\sigma(s)$ (additive)        |
| `"lnsde"` | $\gamma(s, \bar z(s))$                 | $\sigma(s) \odot z$ (linear)  |
| `"gsde"`  | $z \odot \gamma(s, \bar z(s))$         | $\sigma(s) \odot z$           |

with $\bar z(s) = C\,[A_z(\tau(s), z(s)); A_X X(s)]$ the latent combined with the
control ($\tau(s) = (\sin s, \cos s)$; the Langevin type has no $\tau$, its drift is
autonomous), $\gamma$ an MLP with a $\tanh$ output and $\sigma(s) =
\tanh\big(\mathrm{sigmoid}(\theta)\,\mathrm{relu}(\mathrm{MLP}(\tau(s)))\big) \in [0, 1)$
elementwise (Itô, diagonal noise). The bounded, Lipschitz drift and the diffusion's
form are what the paper's existence, uniqueness and stability results rest on; here
they hold by construction, whatever the weights.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._names import SDE_SOLVERS, resolve
from ..solve import solve_sde
from .control import check_batch, control_path


STABLE_KINDS = ("lsde", "lnsde", "gsde")


def _time_features(s, dtype):
    s = jnp.asarray(s).astype(dtype)
    return jnp.stack([jnp.sin(s), jnp.cos(s)])


def _grid_value(values, s, n):
    # Linear interpolation of `values` (n + 1 rows on the uniform grid of [0, 1]) at
    # s: exact at the grid points, where fixed-step solvers evaluate it.
    u = jnp.clip(jnp.asarray(s).astype(values.dtype) * n, 0, n)
    k = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, n - 1)
    frac = u - k.astype(u.dtype)
    return values[k] + frac * (values[k + 1] - values[k])


class StableNeuralSDE(eqx.Module):
    r"""A stable neural SDE classifier/regressor on an irregular series.

    One of the three classes of Oh et al. (see the module docstring for the drift and
    diffusion of each `kind`), read out linearly from $z(1)$.

    - `"lsde"`, Langevin type: $dz = \gamma(\bar z)\,ds + \sigma(s)\,dW$.
    - `"lnsde"`, linear noise: $dz = \gamma(s, \bar z)\,ds + \sigma(s) \odot z\,dW$.
    - `"gsde"`, geometric: $dz = z \odot \gamma(s, \bar z)\,ds + z \odot
      \sigma(s)\,dW$. It is solved in $y = \log z$, $dy = (\gamma - \sigma^2/2)\,ds
      + \sigma\,dW$ (Itô's formula), so $z = e^y$ stays positive at every step of
      any solver, not only for the exact solution; $z(0) = e^{\zeta(X(0))} > 0$.
      (The authors' code replaces the factor $z$ of the drift by
      $1 - \mathrm{sigmoid}(z)$; we keep the paper's equation.)

    The SDE runs in the series' normalised time $s \in [0, 1]$ (the control path's
    variable; the observation time is $X$'s first channel), so series with
    different observation times share one step grid and a batch is solved as one
    state. $X$ is evaluated once on that grid; between grid points it is linearly
    interpolated (exact for Euler–Maruyama and reversible Heun, which evaluate only
    at step ends).

    **Arguments:**

    - `kind`: `"lsde"`, `"lnsde"` or `"gsde"`.
    - `in_channels`: value channels of the data (`ys.shape[-1]`).
    - `hidden`: the latent size $h$.
    - `out_size`: readout size (classes, or regression targets).
    - `width`, `depth`: the drift MLP's hidden width and number of hidden layers
      (the diffusion's MLP has one hidden layer of `width`).
    - `key`: initialisation key.
    - `intensity`: append the observational-intensity channels to $X$ (default
      `True`; the data must then come with a mask or NaNs for missing values).
    - `interpolation`: `"hermite"` or `"rectilinear"`, as in `control_path`.
    - `steps`: fixed steps over $[0, 1]$ (default 50).
    - `solver`: an Itô SDE solver (default `"euler"`: Euler–Maruyama, as the
      authors use).
    - `adjoint`: as in `odelab.solve`.
    - `brownian`: `"increments"` (default) or `"virtual_tree"`.
    - `noise_scale`: initial $\theta$ (default 0: $\mathrm{sigmoid}(\theta) = 1/2$).

    **Raises:** `ValueError` for an unknown `kind`, a non-Itô solver, and (when
    called) the data errors of `control_path`.

    **Example:**

    ```python
    model = StableNeuralSDE("lnsde", 2, 16, 2, 32, 1, key=jax.random.key(0))
    logits = model(ts, ys, mask, key=jax.random.key(1))  # ts (n,), ys (n, 2)
    ```

    **Reference:** Y. Oh, D. Lim, S. Kim, "Stable Neural Stochastic Differential
    Equations in Analyzing Irregular Time Series Data", ICLR 2024, arXiv:2402.14989.
    """

    initial: eqx.nn.Linear
    embed_latent: eqx.nn.Linear
    embed_control: eqx.nn.Linear
    combine: eqx.nn.Linear
    drift_mlp: eqx.nn.MLP
    noise_mlp: eqx.nn.MLP
    noise_scale: jax.Array
    readout: eqx.nn.Linear
    kind: str = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    hidden: int = eqx.field(static=True)
    intensity: bool = eqx.field(static=True)
    interpolation: str = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    solver: str = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    brownian: str = eqx.field(static=True)

    def __init__(
        self,
        kind: str,
        in_channels: int,
        hidden: int,
        out_size: int,
        width: int,
        depth: int,
        *,
        key,
        intensity: bool = True,
        interpolation: str = "hermite",
        steps: int = 50,
        solver: str = "euler",
        adjoint: str = "checkpoint",
        brownian: str = "increments",
        noise_scale: float = 0.0,
    ):
        if kind not in STABLE_KINDS:
            raise ValueError(f"Unknown `kind={kind!r}`; valid: {STABLE_KINDS}.")
        if min(in_channels, hidden, out_size, width) < 1 or depth < 0:
            raise ValueError(
                "`in_channels`, `hidden`, `out_size`, `width` must be positive and "
                f"`depth` non-negative; got {in_channels}, {hidden}, {out_size}, "
                f"{width}, {depth}."
            )
        if not isinstance(
            resolve(solver, SDE_SOLVERS, "SDE solver", "solver"),
            diffrax.AbstractItoSolver,
        ):
            raise ValueError(
                f"`solver={solver!r}` is not an Itô solver; the stable SDEs are Itô "
                "equations (use 'euler', Euler–Maruyama)."
            )
        x_channels = 1 + in_channels * (2 if intensity else 1)
        keys = jr.split(key, 7)
        time_in = 0 if kind == "lsde" else 2
        self.initial = eqx.nn.Linear(x_channels, hidden, key=keys[0])
        self.embed_latent = eqx.nn.Linear(hidden + time_in, width, key=keys[1])
        self.embed_control = eqx.nn.Linear(x_channels, width, key=keys[2])
        self.combine = eqx.nn.Linear(2 * width, width, key=keys[3])
        self.drift_mlp = eqx.nn.MLP(
            width,
            hidden,
            width,
            depth,
            activation=jax.nn.relu,
            final_activation=jnp.tanh,
            key=keys[4],
        )
        self.noise_mlp = eqx.nn.MLP(
            2, hidden, width, 1, activation=jax.nn.relu, key=keys[5]
        )
        self.noise_scale = jnp.asarray(noise_scale, dtype=jnp.result_type(float))
        self.readout = eqx.nn.Linear(hidden, out_size, key=keys[6])
        self.kind = kind
        self.in_channels = in_channels
        self.hidden = hidden
        self.intensity = intensity
        self.interpolation = interpolation
        self.steps = steps
        self.solver = solver
        self.adjoint = adjoint
        self.brownian = brownian

    def gamma(self, s, z, x):
        r"""$\gamma(s, \bar z)$ for one latent `z` and control value `x` = $X(s)$."""
        inputs = (
            z
            if self.kind == "lsde"
            else jnp.concatenate([_time_features(s, z.dtype), z])
        )
        zbar = self.combine(
            jnp.concatenate([self.embed_latent(inputs), self.embed_control(x)])
        )
        return self.drift_mlp(jax.nn.relu(zbar))

    def sigma(self, s, dtype):
        r"""$\sigma(s) \in [0, 1)^h$."""
        raw = jax.nn.relu(self.noise_mlp(_time_features(s, dtype)))
        return jnp.tanh(jax.nn.sigmoid(self.noise_scale).astype(dtype) * raw)

    def _fields(self, xs):
        # Drift and diffusion of the solved variable (log z for "gsde") for a batch,
        # with the control read from its values `xs` (batch, steps + 1, channels) on
        # the step grid.
        n = self.steps

        def drift(s, y, m):
            x = jax.vmap(lambda xi: _grid_value(xi, s, n))(xs)
            if m.kind == "gsde":
                z = jnp.exp(y)
                ito = 0.5 * m.sigma(s, y.dtype) ** 2
                return jax.vmap(lambda zi, xi: m.gamma(s, zi, xi) - ito)(z, x)
            return jax.vmap(lambda yi, xi: m.gamma(s, yi, xi))(y, x)

        def diffusion(s, y, m):
            sig = jnp.broadcast_to(m.sigma(s, y.dtype), y.shape)
            return sig * y if m.kind == "lnsde" else sig

        return drift, diffusion

    def _paths(self, ts, ys, mask):
        def one(t, y, m):
            return control_path(
                t, y, m, interpolation=self.interpolation, intensity=self.intensity
            )

        ys, t_axis, m_axis = check_batch(ts, ys, mask, self.in_channels)
        grid = jnp.linspace(0.0, 1.0, self.steps + 1, dtype=ys.dtype)
        return jax.vmap(
            lambda t, y, m: jax.vmap(one(t, y, m).evaluate)(grid),
            in_axes=(t_axis, 0, m_axis),
        )(ts, ys, mask)

    def batch_latent(self, ts, ys, mask=None, *, key):
        r"""$z(1)$ for a batch: `ts` `(n_times,)` or `(batch, n_times)`, `ys`
        `(batch, n_times, in_channels)`, `mask` like `ys` or `None`."""
        ys = jnp.asarray(ys)
        xs = self._paths(ts, ys, mask)
        y0 = jax.vmap(self.initial)(xs[:, 0])
        drift, diffusion = self._fields(xs)
        sol = solve_sde(
            drift,
            diffusion,
            y0,
            jnp.array([0.0, 1.0], dtype=y0.dtype),
            self,
            key=key,
            solver=self.solver,
            steps=self.steps,
            brownian=self.brownian,
            adjoint=self.adjoint,
        )
        y1 = sol.ys[-1]
        return jnp.exp(y1) if self.kind == "gsde" else y1

    def batch(self, ts, ys, mask=None, *, key):
        """Readouts for a batch, shape `(batch, out_size)` (see `batch_latent`)."""
        return jax.vmap(self.readout)(self.batch_latent(ts, ys, mask, key=key))

    def __call__(self, ts, ys, mask=None, *, key):
        """The readout for one series: `ts` `(n_times,)`, `ys` `(n_times,
        in_channels)`, `mask` like `ys` or `None`."""
        ys = jnp.asarray(ys)
        if ys.ndim != 2:
            raise ValueError(
                f"`ys` must have shape (n_times, {self.in_channels}) for one series; "
                f"got {ys.shape}. For a batch use `batch`."
            )
        mask = None if mask is None else jnp.asarray(mask)[None]
        return self.batch(ts, ys[None], mask, key=key)[0]
