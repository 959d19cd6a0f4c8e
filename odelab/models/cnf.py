"""Continuous normalizing flows (FFJORD): densities through the instantaneous change
of variables."""

import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._names import ODE_SOLVERS, resolve
from ..divergence import solve_with_log_det


_TRACES = ("exact", "hutchinson")
_PROBES = ("rademacher", "gaussian")
_ADJOINTS = {
    "checkpoint": diffrax.RecursiveCheckpointAdjoint,
    "backsolve": diffrax.BacksolveAdjoint,
}


def _check_name(value: str, valid: tuple[str, ...], argname: str) -> str:
    if value not in valid:
        raise ValueError(
            f"Unknown `{argname}={value!r}`. Valid values: {', '.join(valid)}."
        )
    return value


class _TimeMLP(eqx.Module):
    # Time enters as an extra input; the activation must be smooth, because
    # training differentiates the trace of this field's Jacobian.
    mlp: eqx.nn.MLP

    def __call__(self, t, z):
        return self.mlp(jnp.concatenate([z, jnp.reshape(t, (1,)).astype(z.dtype)]))


def _field(t, z, vector_field):
    # The field's parameters travel as the solve's `args`, which the continuous
    # adjoint ("backsolve") differentiates.
    return vector_field(t, z)


def _standard_normal_log_prob(z):
    return -0.5 * jnp.sum(z**2) - 0.5 * z.size * math.log(2 * math.pi)


class CNF(eqx.Module):
    r"""A continuous normalizing flow: data $x = z(0)$ flows under $\dot z =
    f_\theta(t, z)$ to $z(t_1)$, which is standard normal.

    By the instantaneous change of variables the density of the data is

    $$\log p(x) = \log \mathcal N\big(z(t_1); 0, I\big) + \int_0^{t_1}
    \operatorname{tr}\frac{\partial f_\theta}{\partial z}(t, z(t))\,dt,
    \qquad z(0) = x,$$

    computed by one adaptive solve of the augmented ODE
    (`odelab.divergence.solve_with_log_det`). The trace is exact (one
    Jacobian-vector product per dimension) or FFJORD's Hutchinson estimate
    $\varepsilon^\top \partial_z f_\theta\, \varepsilon$ with one probe per sample,
    held fixed over the solve: unbiased for $\log p(x)$, at the cost of one
    Jacobian-vector product per evaluation whatever the dimension. Sampling solves
    the flow backwards from base noise.

    The field $f_\theta$ is an MLP of $[z, t]$ with a smooth activation. Any other
    field, a callable `(t, z) -> dz/dt` (an `eqx.Module` for trainable parameters),
    can be swapped in: `eqx.tree_at(lambda m: m.vector_field, cnf, field)`.

    **Arguments:**

    - `dim`: the data dimension.
    - `width`, `depth`: the MLP's hidden width and number of hidden layers.
    - `key`: initialisation key.
    - `activation`: the hidden activation, smooth (default `jnp.tanh`;
      `jax.nn.softplus` also suits).
    - `t1`: the end time of the flow, where the base distribution sits.
    - `trace`: `"exact"` or `"hutchinson"`.
    - `probe`: Hutchinson's probe distribution, `"rademacher"` (lower variance) or
      `"gaussian"`.
    - `solver`: an ODE solver name of `odelab.solve` or a diffrax solver.
    - `rtol`, `atol`, `max_steps`: the adaptive solve's tolerances and step limit.
    - `adjoint`: `"checkpoint"` (discretise-then-optimise, exact gradients of the
      discrete solve), `"backsolve"` (the continuous adjoint, O(1) memory) or a
      `diffrax.AbstractAdjoint`.

    **Raises:** `ValueError` for non-positive sizes or an unknown `trace`, `probe`,
    `solver` or `adjoint` name (listing the valid ones).

    **Example:**

    ```python
    cnf = CNF(2, 64, 2, key=jax.random.key(0), trace="hutchinson")
    loss, grads = eqx.filter_value_and_grad(nll_loss)(cnf, x_batch, key)
    samples = cnf.sample(jax.random.key(1), 1000)
    ```

    **Reference:** R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural
    Ordinary Differential Equations", NeurIPS 2018, arXiv:1806.07366; W. Grathwohl,
    R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud, "FFJORD: Free-form
    Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019,
    arXiv:1810.01367.
    """

    vector_field: Callable
    solver: diffrax.AbstractSolver
    adjoint: diffrax.AbstractAdjoint
    dim: int = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    probe: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        width: int = 64,
        depth: int = 2,
        *,
        key,
        activation: Callable = jnp.tanh,
        t1: float = 1.0,
        trace: str = "exact",
        probe: str = "rademacher",
        solver="tsit5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        max_steps: int = 4096,
        adjoint="checkpoint",
    ):
        if dim < 1 or width < 1 or depth < 0:
            raise ValueError(
                f"`dim`, `width` must be positive and `depth` non-negative; got "
                f"dim={dim}, width={width}, depth={depth}."
            )
        if not t1 > 0:
            raise ValueError(f"`t1` must be positive, got {t1}.")
        self.trace = _check_name(trace, _TRACES, "trace")
        self.probe = _check_name(probe, _PROBES, "probe")
        self.solver = resolve(solver, ODE_SOLVERS, "ODE solver", "solver")
        self.adjoint = resolve(adjoint, _ADJOINTS, "adjoint", "adjoint")
        self.vector_field = _TimeMLP(
            eqx.nn.MLP(dim + 1, dim, width, depth, activation=activation, key=key)
        )
        self.dim = dim
        self.t1 = t1
        self.rtol = rtol
        self.atol = atol
        self.max_steps = max_steps

    def _draw_probe(self, key, x):
        if key is None:
            raise ValueError(
                "`key` is required with `trace='hutchinson'`: it draws the probe. "
                "Pass `key=` (one per sample), or use `trace='exact'`."
            )
        if self.probe == "rademacher":
            return jax.random.rademacher(key, x.shape, x.dtype)
        return jax.random.normal(key, x.shape, x.dtype)

    def log_prob(self, x, key=None, *, return_nfe: bool = False):
        r"""$\log p(x)$ for one sample `x` of shape `(dim,)`.

        Integrates data ($t = 0$) to base ($t = t_1$) and returns
        $\log\mathcal N(z(t_1); 0, I) + \int_0^{t_1}\operatorname{tr}\partial_z
        f_\theta\,dt$, in `x`'s dtype. Batch with `jax.vmap(model.log_prob)` (with
        one key per sample for Hutchinson).

        **Arguments:**

        - `x`: one sample, shape `(dim,)`, real floating.
        - `key`: draws the Hutchinson probe; required with `trace="hutchinson"`,
          ignored with `"exact"`.
        - `return_nfe`: also return the solve's number of evaluations of the
          augmented field (see `solve_with_log_det`).

        **Returns:** the scalar $\log p(x)$, or `(log_p, nfe)` with `return_nfe`.

        **Raises:** `ValueError` for a wrong shape or dtype of `x`, or a missing
        `key` with `trace="hutchinson"`.
        """
        x = jnp.asarray(x)
        if x.shape != (self.dim,):
            raise ValueError(
                f"`x` must be one sample of shape ({self.dim},), got {x.shape}; "
                "batch with `jax.vmap(model.log_prob)`."
            )
        probe = None if self.trace == "exact" else self._draw_probe(key, x)
        z1, delta_log, nfe = solve_with_log_det(
            _field,
            x,
            0.0,
            self.t1,
            args=self.vector_field,
            probe=probe,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
        )
        log_p = _standard_normal_log_prob(z1) + delta_log
        return (log_p, nfe) if return_nfe else log_p

    def sample(self, key, n: int, dtype=None):
        r"""`n` samples of the model, shape `(n, dim)`.

        Draws $z \sim \mathcal N(0, I)$ as `jax.random.normal(key, (n, dim), dtype)`
        and solves the flow from $t_1$ back to $0$ for each (a `vmap` of adaptive
        solves with the module's solver and tolerances).

        **Arguments:** `key`, a PRNG key; `n`, the number of samples; `dtype`, a
        floating dtype, to match the model's parameters (default: JAX's default
        float, float64 under x64).

        **Raises:** `ValueError` for `n < 1`.
        """
        if n < 1:
            raise ValueError(f"`n` must be at least 1, got {n}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        z = jax.random.normal(key, (n, self.dim), dtype)
        term = diffrax.ODETerm(_field)
        controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol)

        def one(z1):
            sol = diffrax.diffeqsolve(
                term,
                self.solver,
                jnp.asarray(self.t1, dtype),
                jnp.asarray(0.0, dtype),
                None,
                z1,
                self.vector_field,
                stepsize_controller=controller,
                adjoint=self.adjoint,
                max_steps=self.max_steps,
            )
            return sol.ys[0]

        return jax.vmap(one)(z)


def nll_loss(model: CNF, x_batch, key=None):
    r"""The mean negative log-likelihood $-\frac1B\sum_b \log p(x_b)$ of a batch.

    **Arguments:**

    - `model`: a `CNF`.
    - `x_batch`: samples of shape `(batch, dim)`.
    - `key`: split into one Hutchinson probe key per sample; required with
      `trace="hutchinson"`, ignored with `"exact"`.

    **Returns:** a scalar in `x_batch`'s dtype, differentiable in the model's
    parameters (`eqx.filter_grad(nll_loss)`).

    **Raises:** `ValueError` for a batch of the wrong shape or a missing `key` with
    `trace="hutchinson"`.

    **Example:**

    ```python
    loss, grads = eqx.filter_value_and_grad(nll_loss)(cnf, x_batch, key)
    ```
    """
    x_batch = jnp.asarray(x_batch)
    if x_batch.ndim != 2 or x_batch.shape[1] != model.dim:
        raise ValueError(
            f"`x_batch` must have shape (batch, {model.dim}), got {x_batch.shape}."
        )
    if model.trace == "exact":
        log_p = jax.vmap(model.log_prob)(x_batch)
    elif key is None:
        raise ValueError(
            "`key` is required with `trace='hutchinson'`: it draws the probes."
        )
    else:
        keys = jax.random.split(key, x_batch.shape[0])
        log_p = jax.vmap(model.log_prob)(x_batch, keys)
    return -jnp.mean(log_p)
