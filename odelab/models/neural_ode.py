"""Neural ODEs: an MLP vector field and its solve configuration in one module."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ..solve import solve


def _field(t, y, mlp):
    return mlp(y)


def _time_field(t, y, mlp):
    return mlp(jnp.concatenate([y, jnp.reshape(t, (1,)).astype(y.dtype)]))


class NeuralODE(eqx.Module):
    r"""A neural ODE $\frac{dy}{dt} = f_\theta(t, y)$ with an MLP $f_\theta$.

    Calling the module solves from `y0` over the save times `ts` with its own solve
    configuration (solver, adjoint, tolerances or fixed steps) through
    `odelab.solve`; gradients reach the MLP's parameters through the chosen adjoint.
    One trajectory per call: batch with `jax.vmap(model, in_axes=(None, 0))`.

    **Arguments:**

    - `dim`: the state dimension.
    - `width`, `depth`: the MLP's hidden width and number of hidden layers.
    - `key`: initialisation key.
    - `activation`: the hidden activation (default `jnp.tanh`).
    - `time_dependent`: feed $t$ to the MLP as an extra input.
    - `joint_batch`: how `batch_solution` (and `odelab train`) solves a batch:
      `False` (default) gives every trajectory its own adaptive steps (a `vmap` of
      the single solve); `True` solves the batch as one state with one step size and
      one error norm, as torchdiffeq does (1.9x faster per training step in
      `odelab bench train-step`; identical for fixed steps).
    - `solver`, `adjoint`, `rtol`, `atol`, `dt0`, `steps`, `max_steps`: as in
      `odelab.solve` (`steps` or `dt0` selects its fixed-step path).

    **Example:**

    ```python
    model = NeuralODE(2, 64, 2, key=jax.random.key(0))
    ys = jax.vmap(model, in_axes=(None, 0))(jnp.linspace(0, 1, 20), y0_batch)
    ```

    **Reference:** R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural
    Ordinary Differential Equations", NeurIPS 2018, arXiv:1806.07366; P. Kidger, "On
    Neural Differential Equations", 2022, arXiv:2202.02435, ch. 2.
    """

    mlp: eqx.nn.MLP
    time_dependent: bool = eqx.field(static=True)
    solver: str = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    steps: int | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    joint_batch: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        width: int,
        depth: int,
        *,
        key,
        activation: Callable = jnp.tanh,
        time_dependent: bool = False,
        solver: str = "tsit5",
        adjoint: str = "checkpoint",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        dt0: float | None = None,
        steps: int | None = None,
        max_steps: int = 4096,
        joint_batch: bool = False,
    ):
        if dim < 1 or width < 1 or depth < 0:
            raise ValueError(
                f"`dim`, `width` must be positive and `depth` non-negative; got "
                f"dim={dim}, width={width}, depth={depth}."
            )
        self.mlp = eqx.nn.MLP(
            dim + int(time_dependent), dim, width, depth, activation=activation, key=key
        )
        self.time_dependent = time_dependent
        self.solver = solver
        self.adjoint = adjoint
        self.rtol = rtol
        self.atol = atol
        self.dt0 = dt0
        self.steps = steps
        self.max_steps = max_steps
        self.joint_batch = joint_batch

    def solution(self, ts, y0, *, throw: bool = True):
        """The full `diffrax.Solution` (with `stats["nfe"]`) for one trajectory.

        `throw=False` returns a failed solve (read `sol.result`) instead of raising.
        """
        if jnp.ndim(y0) != 1:
            raise ValueError(
                f"`y0` must be one state of shape (dim,), got shape {jnp.shape(y0)}; "
                "batch with `jax.vmap(model, in_axes=(None, 0))`."
            )
        return self._solve(self.vector_field, y0, ts, throw)

    @property
    def vector_field(self):
        r"""$f(t, y, \mathrm{mlp})$: the field solved, with the MLP as its `args`."""
        return _time_field if self.time_dependent else _field

    def _solve(self, field, y0, ts, throw):
        # The module's solve configuration, for one state or a batch as one state.
        return solve(
            field,
            y0,
            ts,
            self.mlp,
            solver=self.solver,
            adjoint=self.adjoint,
            rtol=self.rtol,
            atol=self.atol,
            dt0=self.dt0,
            steps=self.steps,
            max_steps=self.max_steps,
            throw=throw,
        )

    def __call__(self, ts, y0):
        """The trajectory at `ts`, shape `(len(ts), dim)`."""
        return self.solution(ts, y0).ys

    def batch_solution(self, ts, y0s, *, throw: bool = True):
        """Solve a batch `y0s` of shape `(batch, dim)`; `sol.ys` is `(len(ts), batch,
        dim)` and `sol.stats["nfe"]` the evaluations of the batch (each a batch of
        MLP calls). Per trajectory or jointly, as `joint_batch` says."""
        if jnp.ndim(y0s) != 2:
            raise ValueError(
                f"`y0s` must have shape (batch, dim), got {jnp.shape(y0s)}."
            )
        if not self.joint_batch:
            sol = jax.vmap(lambda y0: self.solution(ts, y0, throw=throw), out_axes=0)(
                y0s
            )
            ys = jnp.swapaxes(sol.ys, 0, 1)
            return eqx.tree_at(
                lambda s: (s.ys, s.stats),
                sol,
                (ys, dict(sol.stats, nfe=jnp.max(sol.stats["nfe"]))),
            )
        field = self.vector_field
        batch_field = lambda t, y, mlp: jax.vmap(lambda yi: field(t, yi, mlp))(y)  # noqa: E731
        return self._solve(batch_field, y0s, ts, throw)


class AugmentedNeuralODE(eqx.Module):
    r"""An augmented neural ODE: the state is padded with zeros before solving.

    $\frac{d}{dt}\begin{pmatrix} y \\ a \end{pmatrix} = f_\theta(t, y, a)$ with
    $a(0) = 0 \in \mathbb{R}^p$; the trajectory returned is the $y$ part. The extra
    dimensions let the flow cross trajectories that a plain neural ODE, a
    homeomorphism of $\mathbb{R}^d$, cannot.

    **Arguments:** as `NeuralODE`, plus `augment_dims` $p \ge 1$.

    **Reference:** E. Dupont, A. Doucet, Y. W. Teh, "Augmented Neural ODEs",
    NeurIPS 2019, arXiv:1904.01681.
    """

    node: NeuralODE
    dim: int = eqx.field(static=True)
    augment_dims: int = eqx.field(static=True)

    def __init__(self, dim: int, width: int, depth: int, augment_dims: int, **kwargs):
        if augment_dims < 1:
            raise ValueError(
                f"`augment_dims` must be at least 1 (got {augment_dims}); with none, "
                "use `NeuralODE`."
            )
        self.node = NeuralODE(dim + augment_dims, width, depth, **kwargs)
        self.dim = dim
        self.augment_dims = augment_dims

    def solution(self, ts, y0, *, throw: bool = True):
        """The full solution of the augmented system (state of `dim + augment_dims`)."""
        if jnp.ndim(y0) != 1 or jnp.shape(y0)[0] != self.dim:
            raise ValueError(
                f"`y0` must have shape ({self.dim},), got {jnp.shape(y0)}; batch with "
                "`jax.vmap(model, in_axes=(None, 0))`."
            )
        y0 = jnp.concatenate([y0, jnp.zeros((self.augment_dims,), jnp.result_type(y0))])
        return self.node.solution(ts, y0, throw=throw)

    def __call__(self, ts, y0):
        """The trajectory of the first `dim` components at `ts`."""
        return self.solution(ts, y0).ys[:, : self.dim]

    def batch_solution(self, ts, y0s, *, throw: bool = True):
        """`NeuralODE.batch_solution` of the augmented system (state `dim +
        augment_dims`)."""
        if jnp.ndim(y0s) != 2 or jnp.shape(y0s)[1] != self.dim:
            raise ValueError(
                f"`y0s` must have shape (batch, {self.dim}), got {jnp.shape(y0s)}."
            )
        pad = jnp.zeros((y0s.shape[0], self.augment_dims), jnp.result_type(y0s))
        return self.node.batch_solution(
            ts, jnp.concatenate([y0s, pad], axis=1), throw=throw
        )
