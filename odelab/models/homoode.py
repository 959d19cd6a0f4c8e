r"""HomoODE: the equilibrium of a DEQ's map found by homotopy continuation, solved as
a neural ODE (Ding, Cui, Wang, Shi, NeurIPS 2023)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx

from ..solve import solve


FIELDS = ("newton", "learned")
"""Vector fields `HomoODE` accepts."""


def _newton_field(lam, z, args):
    # dz/dλ = (I - ∂f/∂z)^{-1} G(z0), one state (hidden,).
    del lam
    model, injection, g0 = args
    jac = jax.jacfwd(lambda u: model.cell(u, injection))(z)
    operator = lx.MatrixLinearOperator(jnp.eye(z.shape[0], dtype=z.dtype) - jac)
    return lx.linear_solve(operator, g0, lx.LU()).value


def _learned_field(lam, z, args):
    del lam
    model, injection, _ = args
    return model.second(jnp.tanh(model.first(z) + injection))


class HomoODE(eqx.Module):
    r"""The equilibrium $z^*$ of $G(z; x) = f_\theta(z, x) - z = 0$ by homotopy
    continuation: the Newton homotopy $H(z, \lambda) = G(z; x) - (1 - \lambda)
    G(z_0; x)$ has $H(z_0, 0) = 0$ and $H(z, 1) = G(z; x)$, and its zero path solves

    $$\frac{dz}{d\lambda} = -\big(\partial_z G(z; x)\big)^{-1} G(z_0; x)
    = \big(I - \partial_z f_\theta(z, x)\big)^{-1} G(z_0; x), \qquad
    \lambda \in [0, 1],\ z(0) = z_0,$$

    so $z(1) = z^*$. `field` chooses the right-hand side:

    - `"newton"`: exactly this, for the DEQ cell $f_\theta(z, x) = \tanh(W z + U x +
      b)$ (as `DEQ`), with a lineax solve at every evaluation; $z(1)$ satisfies the
      equilibrium equation to the solver's tolerance.
    - `"learned"`: the authors' model, a network that stands in for the whole
      right-hand side, $\frac{dz}{d\lambda} = W_2 \tanh(W_1 z + U x + b) + b_2$,
      with the input injected at every evaluation and no $\lambda$ input (their
      code: a convolutional block with additive injection).

    **Shared learnable initial point** (`shared_initial=True`): $z_0$ is one learned
    vector for all inputs, held constant in the solve (no gradient through it) and
    trained by its own loss, `initial_point_loss` $= \mathrm{SmoothL1}(z_0,
    \mathrm{sg}[z(1)])$, which pulls it towards the centre of the equilibria so
    that the paths are short (the authors' code; they step it with a separate
    optimiser). Otherwise $z_0 = 0$.

    The solve is `odelab.solve` over $\lambda \in [0, 1]$ with any solver and
    adjoint; `joint_batch` solves a batch as one state.

    **Arguments:** `in_size`, `hidden`, `key`; `field`; `shared_initial`; `solver`,
    `adjoint`, `rtol`, `atol`, `steps`, `max_steps` (as `odelab.solve`);
    `joint_batch`; `weight_scale` (the initial $\|W\|_2$ bound of the `"newton"`
    cell, below 1 so that the DEQ map starts contractive).

    **Example:**

    ```python
    homo = HomoODE(64, 32, key=jax.random.key(0), shared_initial=True)
    z1 = homo(x)                         # x: (batch, 64) -> (batch, 32)
    loss = ce(head(z1)) + homo.initial_point_loss(z1)
    ```

    **Reference:** S. Ding, T. Cui, J. Wang, Y. Shi, "Two Sides of the Same Coin:
    Bridging Deep Equilibrium Models and Neural ODEs via Homotopy Continuation",
    NeurIPS 2023, arXiv:2310.09583; the equations above follow the Newton homotopy
    (J. Nocedal, S. Wright, *Numerical Optimization*, §11.3), and the learned field
    and shared initial point the authors' code.
    """

    inject: eqx.nn.Linear
    weight: jax.Array | None
    first: eqx.nn.Linear | None
    second: eqx.nn.Linear | None
    initial: jax.Array | None
    field: str = eqx.field(static=True)
    solver: str = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    steps: int | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    joint_batch: bool = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        hidden: int,
        *,
        key,
        field: str = "learned",
        shared_initial: bool = False,
        solver: str = "tsit5",
        adjoint: str = "checkpoint",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        steps: int | None = None,
        max_steps: int = 4096,
        joint_batch: bool = True,
        weight_scale: float = 0.5,
    ):
        if field not in FIELDS:
            raise ValueError(f"Unknown `field={field!r}`; valid: {FIELDS}.")
        if min(in_size, hidden) < 1:
            raise ValueError(
                f"`in_size` and `hidden` must be positive; got {in_size}, {hidden}."
            )
        k1, k2, k3, k4 = jr.split(key, 4)
        self.inject = eqx.nn.Linear(in_size, hidden, key=k1)
        if field == "newton":
            w = jr.normal(k2, (hidden, hidden)) / jnp.sqrt(hidden)
            self.weight = w * (weight_scale / 2)
            self.first = self.second = None
        else:
            self.weight = None
            self.first = eqx.nn.Linear(hidden, hidden, use_bias=False, key=k2)
            self.second = eqx.nn.Linear(hidden, hidden, key=k3)
        self.initial = (
            0.1 * jr.normal(k4, (hidden,), self.inject.weight.dtype)
            if shared_initial
            else None
        )
        self.field = field
        self.solver = solver
        self.adjoint = adjoint
        self.rtol = rtol
        self.atol = atol
        self.steps = steps
        self.max_steps = max_steps
        self.joint_batch = joint_batch

    @property
    def hidden(self) -> int:
        return self.inject.out_features

    def cell(self, z, injection):
        r"""The DEQ map $f_\theta(z, x) = \tanh(W z + U x + b)$ (`"newton"`)."""
        if self.weight is None:
            raise ValueError("`cell` is the DEQ map of field='newton'.")
        return jnp.tanh(self.weight @ z + injection)

    def initial_point(self, dtype):
        """$z_0$: the shared point, held constant, or zeros."""
        if self.initial is None:
            return jnp.zeros((self.hidden,), dtype)
        return jax.lax.stop_gradient(self.initial).astype(dtype)

    def _check(self, x):
        if jnp.ndim(x) != 2 or x.shape[1] != self.inject.in_features:
            raise ValueError(
                f"`x` must have shape (batch, {self.inject.in_features}); got "
                f"{jnp.shape(x)}."
            )

    def solution(self, x):
        """The `diffrax.Solution` over $\\lambda \\in \\{0, 1\\}$ for a batch `x`
        `(batch, in_size)`; `sol.ys[-1]` is $z(1)$, `(batch, hidden)`, and
        `sol.stats["nfe"]` the evaluations."""
        self._check(x)
        injections = jax.vmap(self.inject)(x)
        z0 = self.initial_point(injections.dtype)
        z0s = jnp.broadcast_to(z0, injections.shape)
        if self.field == "newton":
            g0 = jax.vmap(lambda inj: self.cell(z0, inj) - z0)(injections)
            one = _newton_field
        else:
            g0 = jnp.zeros_like(injections)
            one = _learned_field
        lams = jnp.array([0.0, 1.0], injections.dtype)
        options = dict(
            solver=self.solver,
            adjoint=self.adjoint,
            rtol=self.rtol,
            atol=self.atol,
            steps=self.steps,
            max_steps=self.max_steps,
        )
        if self.joint_batch:

            def batch_field(lam, z, args):
                model, inj, g = args
                return jax.vmap(lambda u, i, gi: one(lam, u, (model, i, gi)))(z, inj, g)

            return solve(batch_field, z0s, lams, (self, injections, g0), **options)
        sol = jax.vmap(
            lambda z, inj, g: solve(one, z, lams, (self, inj, g), **options)
        )(z0s, injections, g0)
        return eqx.tree_at(
            lambda s: (s.ys, s.stats),
            sol,
            (
                jnp.swapaxes(sol.ys, 0, 1),
                dict(sol.stats, nfe=jnp.max(sol.stats["nfe"])),
            ),
        )

    def __call__(self, x):
        """$z(1)$ for a batch `x`, shape `(batch, hidden)`."""
        return self.solution(x).ys[-1]

    def initial_point_loss(self, z1):
        r"""$\mathrm{SmoothL1}(z_0, \mathrm{sg}[z(1)])$, the mean over the batch and
        components (0 without a shared initial point); its gradient reaches only
        $z_0$."""
        if self.initial is None:
            return jnp.zeros((), z1.dtype)
        diff = self.initial[None, :] - jax.lax.stop_gradient(z1)
        absolute = jnp.abs(diff)
        return jnp.mean(jnp.where(absolute < 1, 0.5 * diff**2, absolute - 0.5))

    def residual(self, x, z1):
        r"""$\|f_\theta(z(1), x) - z(1)\|_\infty$ per example (`"newton"`): how well
        the endpoint satisfies the equilibrium equation."""
        injections = jax.vmap(self.inject)(x)
        return jax.vmap(lambda z, i: jnp.max(jnp.abs(self.cell(z, i) - z)))(
            z1, injections
        )


class HomoODEClassifier(eqx.Module):
    r"""Logits $= W_o z(1) + b_o$ of a `HomoODE`; `loss_terms` adds the shared
    initial point's loss.

    **Arguments:** `in_size`, `n_classes`, `hidden`, `key`, and `**homo_kwargs` for
    the `HomoODE`.
    """

    homo: HomoODE
    head: eqx.nn.Linear

    def __init__(
        self, in_size: int, n_classes: int, hidden: int, *, key, **homo_kwargs
    ):
        k1, k2 = jr.split(key)
        self.homo = HomoODE(in_size, hidden, key=k1, **homo_kwargs)
        self.head = eqx.nn.Linear(hidden, n_classes, key=k2)

    def logits_and_extra_loss(self, x):
        """`(logits, initial_point_loss)` for a batch `x`."""
        z1 = self.homo(x)
        return jax.vmap(self.head)(z1), self.homo.initial_point_loss(z1)

    def __call__(self, x):
        """Logits `(batch, n_classes)`."""
        return jax.vmap(self.head)(self.homo(x))
