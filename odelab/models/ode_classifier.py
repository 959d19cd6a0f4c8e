"""A neural-ODE classifier: a linear encoder, a neural ODE over a fixed time span, and
a linear head."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .neural_ode import NeuralODE


class ODEClassifier(eqx.Module):
    r"""Logits $= W_o\, h(t_1) + b_o$ with $h(0) = W_i x + b_i$ and
    $\dot h = f_\theta(h)$ a `NeuralODE` (Chen et al.'s ODE-Net on features).

    Only the endpoint $h(t_1)$ is read, so the dynamics in between are free: the
    setting where regularizing the solver's cost (`odelab.regularizers`) pays most.

    **Arguments:**

    - `in_size`, `n_classes`: features in, classes out.
    - `hidden`: the ODE's state dimension; `width`, `depth`: its MLP.
    - `key`: initialisation key.
    - `t1`: the span $[0, t_1]$ (default 1).
    - `augment_dims`: $p$ zero dimensions appended to $h(0)$ (an augmented neural
      ODE, Dupont et al. 2019); the head reads all `hidden + p`.
    - `**node_kwargs`: the `NeuralODE`'s solve configuration (`solver`, `adjoint`,
      `rtol`, `atol`, `steps`, `joint_batch`, ...).

    **Example:**

    ```python
    model = ODEClassifier(64, 10, 32, 64, 1, key=jax.random.key(0), joint_batch=True)
    logits = model(x)  # x: (batch, 64) -> (batch, 10)
    ```

    **Reference:** R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural
    Ordinary Differential Equations", NeurIPS 2018, arXiv:1806.07366.
    """

    encoder: eqx.nn.Linear
    node: NeuralODE
    head: eqx.nn.Linear
    t1: float = eqx.field(static=True)
    augment_dims: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        n_classes: int,
        hidden: int,
        width: int,
        depth: int,
        *,
        key,
        t1: float = 1.0,
        augment_dims: int = 0,
        **node_kwargs,
    ):
        if augment_dims < 0:
            raise ValueError(f"`augment_dims` must be >= 0; got {augment_dims}.")
        k1, k2, k3 = jr.split(key, 3)
        self.encoder = eqx.nn.Linear(in_size, hidden, key=k1)
        self.node = NeuralODE(
            hidden + augment_dims, width, depth, key=k2, **node_kwargs
        )
        self.head = eqx.nn.Linear(hidden + augment_dims, n_classes, key=k3)
        self.t1 = t1
        self.augment_dims = augment_dims

    @property
    def ts(self):
        """The two save times $(0, t_1)$."""
        return jnp.array([0.0, self.t1])

    def encode(self, x):
        """$h(0)$ for a batch `x` of shape `(batch, in_size)` (zero-padded by
        `augment_dims`)."""
        if jnp.ndim(x) != 2 or x.shape[1] != self.encoder.in_features:
            raise ValueError(
                f"`x` must have shape (batch, {self.encoder.in_features}); got "
                f"{jnp.shape(x)}."
            )
        h = jax.vmap(self.encoder)(x)
        if self.augment_dims:
            pad = jnp.zeros((h.shape[0], self.augment_dims), h.dtype)
            h = jnp.concatenate([h, pad], axis=1)
        return h

    def decode(self, h1):
        """Logits from the endpoints `h1` `(batch, hidden + augment_dims)`."""
        return jax.vmap(self.head)(h1)

    def solution(self, x):
        """The ODE's `diffrax.Solution` for the batch `x` (`stats["nfe"]` its cost)."""
        return self.node.batch_solution(self.ts.astype(x.dtype), self.encode(x))

    def __call__(self, x):
        """Logits `(batch, n_classes)`."""
        return self.decode(self.solution(x).ys[-1])
