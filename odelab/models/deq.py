r"""Deep equilibrium models: the output is the fixed point $z^* = f_\theta(z^*, x)$."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optimistix as optx

from ..solvers.anderson import Anderson


DEQ_SOLVERS = ("anderson", "fixed_point", "newton")
"""Forward solvers `DEQ` accepts."""

GRADIENTS = ("implicit", "implicit_lu", "phantom", "unrolled")
"""Backward passes `DEQ` accepts."""


def _cell(z, arrays):
    model, injection = arrays
    return model.cell(z, injection)


def _solve(config, fn, y0, args):
    solver, max_steps = config
    return optx.fixed_point(fn, solver, y0, args, max_steps=max_steps, throw=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _equilibrium(config, arrays, z0):
    # (z*, steps, converged, finite) of z = f(z, x) for `arrays = (model, injection)`.
    sol = _solve(config, _cell, z0, arrays)
    ok = sol.result == optx.RESULTS.successful
    finite = sol.result != optx.RESULTS.nonfinite
    return sol.value, sol.stats["num_steps"], ok, finite


def _equilibrium_fwd(config, arrays, z0):
    out = _equilibrium(config, arrays, z0)
    return out, (arrays, out[0], z0)


def _equilibrium_bwd(config, residuals, cotangents):
    # The adjoint equation u = g + (df/dz)^T u at z*, solved by the forward's own
    # fixed-point solver (vector-Jacobian products only); then theta-bar = u^T df/dtheta.
    arrays, z, z0 = residuals
    g = cotangents[0]
    _, vjp = jax.vjp(_cell, z, arrays)
    sol = _solve(config, lambda v, _: g + vjp(v)[0], g, None)
    # Where the adjoint iteration does not converge (df/dz no longer a contraction)
    # its iterate is meaningless and grows: fall back to Jacobian-free
    # backpropagation (u = g), a descent direction, instead of passing it on.
    ok = (sol.result == optx.RESULTS.successful) & jnp.all(jnp.isfinite(sol.value))
    u = jnp.where(ok, sol.value, g)
    return vjp(u)[1], jnp.zeros_like(z0)


_equilibrium.defvjp(_equilibrium_fwd, _equilibrium_bwd)


class DEQ(eqx.Module):
    r"""A deep equilibrium layer $z^* = f_\theta(z^*, x)$ with the cell
    $f_\theta(z, x) = \tanh(W z + U x + b)$ (weight-tied, input-injected).

    **Forward:** `solver` finds $z^*$ from $z_0 = 0$ with `optimistix.fixed_point`:
    `"anderson"` (`odelab.solvers.Anderson`), `"fixed_point"` (optimistix's
    iteration, with `damping`) or `"newton"` (optimistix's Newton on $f(z) - z$).
    Non-convergence is never silent: `solve` returns the result code and the
    statistics (steps, residual $\|f(z^*) - z^*\|_\infty$), and `__call__` raises
    (under `jit` through `eqx.error_if`) when `throw=True`.

    **Backward** (`gradient`):

    - `"implicit"`: the implicit function theorem,
      $\frac{dz^*}{d\theta} = (I - \partial_z f)^{-1} \partial_\theta f$; the
      backward pass solves the adjoint equation $u = \bar z + (\partial_z f)^\top u$
      with the forward's own fixed-point solver (vector-Jacobian products only, as
      DEQ libraries do) and returns $u^\top \partial_\theta f$; where that
      iteration does not converge ($\partial_z f$ no longer a contraction) it falls
      back to $u = \bar z$ (Jacobian-free backpropagation) for that example;
    - `"implicit_lu"`: the same gradient from a dense LU solve of the transposed
      system (`optimistix.ImplicitAdjoint` with lineax; exact, $O(d^3)$ per
      example);
    - `"phantom"`: the phantom gradient of Geng et al. (2021): from $z^*$ (held
      constant), `phantom_steps` damped steps $z \leftarrow (1 - \lambda) z + \lambda
      f_\theta(z, x)$ with gradient; `phantom_steps=1`, $\lambda = 1$ is the
      Jacobian-free backpropagation of Fung et al. (2022);
    - `"unrolled"`: backpropagation through the solver's iterations (a reference).

    `jacobian_penalty` gives Bai et al.'s (2021) Jacobian regularizer at $z^*$.

    **Arguments:** `in_size`, `hidden`, `key`; `solver`, `gradient`, `rtol`, `atol`,
    `max_steps`; `memory` (Anderson), `damping` (fixed-point iteration: weight kept
    on the old iterate), `phantom_steps`, `phantom_damping` ($\lambda$);
    `weight_scale`: the initial $\|W\|_2$ bound (a contraction at start).

    **Example:**

    ```python
    deq = DEQ(64, 32, key=jax.random.key(0))
    z = jax.vmap(deq)(x)  # x: (batch, 64) -> (batch, 32)
    ```

    **Reference:** S. Bai, J. Z. Kolter, V. Koltun, "Deep Equilibrium Models",
    NeurIPS 2019, arXiv:1909.01377; Z. Geng et al., "On Training Implicit Models",
    NeurIPS 2021, arXiv:2111.05177; S. Bai, V. Koltun, J. Z. Kolter, "Stabilizing
    Equilibrium Models by Jacobian Regularization", ICML 2021, arXiv:2106.14342.
    """

    weight: jax.Array
    inject: eqx.nn.Linear
    solver: str = eqx.field(static=True)
    gradient: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    memory: int = eqx.field(static=True)
    damping: float = eqx.field(static=True)
    phantom_steps: int = eqx.field(static=True)
    phantom_damping: float = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        hidden: int,
        *,
        key,
        solver: str = "anderson",
        gradient: str = "implicit",
        rtol: float = 1e-4,
        atol: float = 1e-4,
        max_steps: int = 100,
        memory: int = 5,
        damping: float = 0.0,
        phantom_steps: int = 5,
        phantom_damping: float = 0.5,
        weight_scale: float = 0.5,
    ):
        if solver not in DEQ_SOLVERS:
            raise ValueError(f"Unknown `solver={solver!r}`; valid: {DEQ_SOLVERS}.")
        if gradient not in GRADIENTS:
            raise ValueError(f"Unknown `gradient={gradient!r}`; valid: {GRADIENTS}.")
        if phantom_steps < 1 or not 0 < phantom_damping <= 1:
            raise ValueError(
                "`phantom_steps` must be at least 1 and `phantom_damping` in (0, 1]; "
                f"got {phantom_steps}, {phantom_damping}."
            )
        k1, k2 = jr.split(key)
        w = jr.normal(k1, (hidden, hidden)) / jnp.sqrt(hidden)
        # A random Gaussian matrix has spectral norm about 2 after this scaling.
        self.weight = w * (weight_scale / 2)
        self.inject = eqx.nn.Linear(in_size, hidden, key=k2)
        self.solver = solver
        self.gradient = gradient
        self.rtol = rtol
        self.atol = atol
        self.max_steps = max_steps
        self.memory = memory
        self.damping = damping
        self.phantom_steps = phantom_steps
        self.phantom_damping = phantom_damping

    @property
    def hidden(self) -> int:
        return self.weight.shape[0]

    def cell(self, z, injection):
        r"""$f_\theta(z, x) = \tanh(W z + U x + b)$ given the injection $U x + b$."""
        return jnp.tanh(self.weight @ z + injection)

    def _optx_solver(self):
        if self.solver == "anderson":
            return Anderson(self.rtol, self.atol, memory=self.memory)
        if self.solver == "fixed_point":
            return optx.FixedPointIteration(self.rtol, self.atol, damp=self.damping)
        return optx.Newton(self.rtol, self.atol)

    def solve(self, x, *, throw: bool = False):
        r"""$(z^*, \mathrm{stats})$ for one input `x` of shape `(in_size,)`: `stats`
        has `steps`, `residual` ($\|f(z^*) - z^*\|_\infty$) and `result` (an
        `optimistix.RESULTS`; `successful` when converged)."""
        if jnp.ndim(x) != 1 or x.shape[0] != self.inject.in_features:
            raise ValueError(
                f"`x` must have shape ({self.inject.in_features},); got "
                f"{jnp.shape(x)}. Batch with `jax.vmap(deq)`."
            )
        injection = self.inject(x)
        z0 = jnp.zeros((self.hidden,), injection.dtype)

        if self.gradient == "implicit":
            z, steps, ok, finite = _equilibrium(
                (self._optx_solver(), self.max_steps), (self, injection), z0
            )
            result = optx.RESULTS.where(
                ok,
                optx.RESULTS.successful,
                optx.RESULTS.where(
                    finite,
                    optx.RESULTS.nonlinear_max_steps_reached,
                    optx.RESULTS.nonfinite,
                ),
            )
            if throw:
                z = result.error_if(z, result != optx.RESULTS.successful)
            return z, self._stats(z, injection, steps, result)

        def fn(z, args):
            model, inj = args
            return model.cell(z, inj)

        if self.gradient == "implicit_lu":
            adjoint = optx.ImplicitAdjoint(lx.AutoLinearSolver(well_posed=True))
            args = (self, injection)
        elif self.gradient == "unrolled":
            adjoint = optx.RecursiveCheckpointAdjoint()
            args = (self, injection)
        else:
            adjoint = optx.ImplicitAdjoint()
            args = jax.lax.stop_gradient((self, injection))
        sol = optx.fixed_point(
            fn,
            self._optx_solver(),
            z0,
            args,
            max_steps=self.max_steps,
            adjoint=adjoint,
            throw=throw,
        )
        z = sol.value
        if self.gradient == "phantom":
            z = jax.lax.stop_gradient(z)
            lam = self.phantom_damping
            for _ in range(self.phantom_steps):
                z = (1 - lam) * z + lam * self.cell(z, injection)
        return z, self._stats(z, injection, sol.stats["num_steps"], sol.result)

    def _stats(self, z, injection, steps, result):
        residual = jnp.max(jnp.abs(self.cell(z, injection) - z))
        return dict(
            steps=steps, residual=jax.lax.stop_gradient(residual), result=result
        )

    def __call__(self, x, *, throw: bool = True):
        """$z^*$ for one input; raises if the solve did not converge (`throw`)."""
        z, stats = self.solve(x)
        if throw:
            z = stats["result"].error_if(z, stats["result"] != optx.RESULTS.successful)
        return z

    def jacobian_penalty(self, x, z, *, key):
        r"""Hutchinson's estimate of $\|\partial_z f_\theta(z, x)\|_F^2 / d$ at `z`
        (e.g. $z^*$): $\|\varepsilon^\top \partial_z f\|^2 / d$, $\varepsilon \sim N(0,
        I)$, unbiased (Bai, Koltun, Kolter 2021)."""
        injection = self.inject(x)
        _, vjp = jax.vjp(lambda u: self.cell(u, injection), z)
        eps = jr.normal(key, z.shape, z.dtype)
        return jnp.sum(vjp(eps)[0] ** 2) / z.shape[0]


class DEQClassifier(eqx.Module):
    r"""Logits $= W_o z^*(x) + b_o$ of a `DEQ` layer's equilibrium.

    **Arguments:** `in_size`, `n_classes`, `hidden`, `key`, and `**deq_kwargs` for
    the `DEQ` (`solver`, `gradient`, tolerances, ...).
    """

    deq: DEQ
    head: eqx.nn.Linear

    def __init__(self, in_size: int, n_classes: int, hidden: int, *, key, **deq_kwargs):
        k1, k2 = jr.split(key)
        self.deq = DEQ(in_size, hidden, key=k1, **deq_kwargs)
        self.head = eqx.nn.Linear(hidden, n_classes, key=k2)

    def solve(self, x):
        """`(logits, stats)` for a batch `x` `(batch, in_size)`; `stats` as
        `DEQ.solve`, per example."""
        z, stats = jax.vmap(self.deq.solve)(x)
        return jax.vmap(self.head)(z), stats

    def __call__(self, x, *, throw: bool = True):
        """Logits `(batch, n_classes)`; with `throw`, raises if an equilibrium was not
        found (training loops that log `solve`'s statistics instead pass
        `throw=False`)."""
        return jax.vmap(self.head)(jax.vmap(lambda u: self.deq(u, throw=throw))(x))
