"""Neural SDEs: drift and diffusion networks and their solve configuration in one
module."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._names import SDE_SOLVERS, resolve
from ..regularizers import local_error_estimate
from ..solve import solve_sde


NOISE_TYPES = ("diagonal", "scalar", "general")
INTERPRETATIONS = ("ito", "stratonovich")
_DEFAULT_SOLVER = {"ito": "euler", "stratonovich": "reversible_heun"}


def _with_time(t, y):
    return jnp.concatenate([y, jnp.reshape(t, (1,)).astype(y.dtype)])


class NeuralSDE(eqx.Module):
    r"""A neural SDE $dy = f_\theta(t, y)\,dt + g_\theta(t, y)\,dW_t$.

    The drift $f_\theta$ and the diffusion $g_\theta$ are MLPs; the diffusion's output
    passes through `diffusion_activation` (softplus by default, so that a diagonal
    diffusion starts positive). $W$ is a Brownian motion whose shape `noise` chooses:

    - `"diagonal"`: one Brownian motion per component, $dy_i = f_i\,dt + g_i\,dW_i$;
    - `"scalar"`: one Brownian motion drives every component, $dy = f\,dt + g\,dW$;
    - `"general"`: $m$ = `brownian_dim` Brownian motions, $g$ a `(dim, m)` matrix.

    The integral is Itô or Stratonovich (`interpretation`); the solver must converge
    to that one (Euler–Maruyama `"euler"` is the Itô default, reversible Heun the
    Stratonovich default: with `adjoint="reversible"` it gives exact gradients in
    memory constant in the number of steps). Calling the module solves one trajectory
    through `odelab.solve_sde`; `batch_solution` solves a batch, as one state with
    independent Brownian motions per row when the noise is diagonal (one matrix
    product per step for the whole batch), as a `vmap` otherwise.

    The Brownian path is chosen per solve without changing the model: `brownian=
    "increments"` (the default with fixed `steps`) draws the grid's increments in one
    call, `"virtual_tree"` answers any query (adaptive steps) at the price of a tree
    descent per step. See `odelab.brownian`.

    **Arguments:**

    - `dim`: the state dimension.
    - `width`, `depth`: the hidden width and number of hidden layers of both MLPs.
    - `key`: initialisation key.
    - `noise`: `"diagonal"` (default), `"scalar"` or `"general"`.
    - `brownian_dim`: $m$ for `"general"` noise.
    - `interpretation`: `"ito"` (default) or `"stratonovich"`.
    - `time_dependent`: feed $t$ to both MLPs.
    - `activation`: hidden activation (default `jnp.tanh`).
    - `diffusion_activation`: applied to the diffusion MLP's output (default
      `jax.nn.softplus`; pass `lambda x: x` for none).
    - `solver`: an SDE solver name or instance (default per `interpretation`).
    - `adjoint`: as in `odelab.solve` (`"checkpoint"`, `"reversible"`, ...).
    - `steps`: fixed steps over the save interval (default 100), or `None` with
      `dt0`/adaptive tolerances.
    - `dt0`, `rtol`, `atol`, `max_steps`: as in `odelab.solve_sde`.
    - `brownian`: `"increments"`, `"virtual_tree"` or `"unsafe"` (default
      `"increments"` with `steps`, else `"virtual_tree"`).

    **Raises:** `ValueError` for an unknown `noise`/`interpretation`, `"general"`
    noise without `brownian_dim`, or a solver that does not converge to the chosen
    interpretation.

    **Example:**

    ```python
    model = NeuralSDE(2, 32, 2, key=jax.random.key(0), steps=50)
    ys = model(jnp.linspace(0, 1, 11), jnp.zeros(2), key=jax.random.key(1))  # (11, 2)
    ```

    **Reference:** P. Kidger, "On Neural Differential Equations", 2022,
    arXiv:2202.02435, ch. 4; X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud,
    "Scalable Gradients for Stochastic Differential Equations", AISTATS 2020,
    arXiv:2001.01328.
    """

    drift: eqx.nn.MLP
    diffusion: eqx.nn.MLP
    dim: int = eqx.field(static=True)
    noise: str = eqx.field(static=True)
    brownian_dim: int | None = eqx.field(static=True)
    interpretation: str = eqx.field(static=True)
    time_dependent: bool = eqx.field(static=True)
    diffusion_activation: Callable = eqx.field(static=True)
    solver: object = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    steps: int | None = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    brownian: str = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        width: int,
        depth: int,
        *,
        key,
        noise: str = "diagonal",
        brownian_dim: int | None = None,
        interpretation: str = "ito",
        time_dependent: bool = False,
        activation: Callable = jnp.tanh,
        diffusion_activation: Callable = jax.nn.softplus,
        solver=None,
        adjoint: str = "checkpoint",
        steps: int | None = 100,
        dt0: float | None = None,
        rtol: float = 1e-3,
        atol: float = 1e-3,
        max_steps: int = 16384,
        brownian: str | None = None,
    ):
        if dim < 1 or width < 1 or depth < 0:
            raise ValueError(
                f"`dim`, `width` must be positive and `depth` non-negative; got "
                f"dim={dim}, width={width}, depth={depth}."
            )
        if noise not in NOISE_TYPES:
            raise ValueError(f"Unknown `noise={noise!r}`; valid: {NOISE_TYPES}.")
        if (noise == "general") != (brownian_dim is not None):
            raise ValueError(
                "`brownian_dim` (the number m of Brownian motions) is required for "
                f"noise='general' and only for it; got noise={noise!r}, "
                f"brownian_dim={brownian_dim!r}."
            )
        if interpretation not in INTERPRETATIONS:
            raise ValueError(
                f"Unknown `interpretation={interpretation!r}`; valid: "
                f"{INTERPRETATIONS}."
            )
        if solver is None:
            solver = _DEFAULT_SOLVER[interpretation]
        solver_obj = resolve(solver, SDE_SOLVERS, "SDE solver", "solver")
        wanted = (
            diffrax.AbstractItoSolver
            if interpretation == "ito"
            else diffrax.AbstractStratonovichSolver
        )
        if not isinstance(solver_obj, wanted):
            raise ValueError(
                f"`solver={solver!r}` does not converge to the {interpretation} "
                f"solution; use e.g. {_DEFAULT_SOLVER[interpretation]!r}, or set "
                "`interpretation` to match the solver."
            )
        if brownian is None:
            brownian = "increments" if steps is not None else "virtual_tree"
        k1, k2 = jr.split(key)
        n_in = dim + int(time_dependent)
        n_out = dim * (brownian_dim if noise == "general" else 1)
        self.drift = eqx.nn.MLP(n_in, dim, width, depth, activation=activation, key=k1)
        self.diffusion = eqx.nn.MLP(
            n_in, n_out, width, depth, activation=activation, key=k2
        )
        self.dim = dim
        self.noise = noise
        self.brownian_dim = brownian_dim
        self.interpretation = interpretation
        self.time_dependent = time_dependent
        self.diffusion_activation = diffusion_activation
        self.solver = solver
        self.adjoint = adjoint
        self.steps = steps
        self.dt0 = dt0
        self.rtol = rtol
        self.atol = atol
        self.max_steps = max_steps
        self.brownian = brownian

    def _inputs(self, t, y):
        return _with_time(t, y) if self.time_dependent else y

    def drift_fn(self, t, y):
        r"""$f_\theta(t, y)$ for one state `y` of shape `(dim,)`."""
        return self.drift(self._inputs(t, y))

    def diffusion_fn(self, t, y):
        r"""$g_\theta(t, y)$ for one state: `(dim,)`, or `(dim, m)` for general
        noise."""
        g = self.diffusion_activation(self.diffusion(self._inputs(t, y)))
        if self.noise == "general":
            return g.reshape(self.dim, self.brownian_dim)
        return g

    def _solve(self, drift, diffusion, y0, ts, key, brownian_shape, throw):
        return solve_sde(
            drift,
            diffusion,
            y0,
            ts,
            self,
            key=key,
            noise=self.noise,
            brownian_shape=brownian_shape,
            solver=self.solver,
            brownian=self.brownian,
            dt0=self.dt0,
            steps=self.steps,
            rtol=self.rtol,
            atol=self.atol,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=throw,
        )

    def solution(self, ts, y0, *, key, throw: bool = True) -> diffrax.Solution:
        """The full `diffrax.Solution` of one trajectory from `y0` (shape `(dim,)`)
        saved at `ts`, driven by the Brownian path of `key`."""
        if jnp.shape(y0) != (self.dim,):
            raise ValueError(
                f"`y0` must be one state of shape ({self.dim},), got "
                f"{jnp.shape(y0)}; for a batch use `batch_solution`."
            )
        shape = None if self.noise != "general" else (self.brownian_dim,)
        return self._solve(
            lambda t, y, m: m.drift_fn(t, y),
            lambda t, y, m: m.diffusion_fn(t, y),
            y0,
            ts,
            key,
            shape,
            throw,
        )

    def __call__(self, ts, y0, *, key):
        """The trajectory at `ts`, shape `(len(ts), dim)`."""
        return self.solution(ts, y0, key=key).ys

    def local_heuristics(self, ts, paths, *, key, dt, rtol=None, atol=None):
        r"""One-step estimates of the solver-heuristic regularizers along simulated
        paths: for each path a save time $t_k$ is drawn uniformly (excluding the
        last) and one step of the Heun pair of size `dt` is taken from $y(t_k)$
        (held constant) over a fresh Brownian increment; returns the batch means of
        $T E$ and $T \hat\lambda$ (`odelab.regularizers.local_error_estimate`
        with `diffusion`), estimates of $R_E$ and $R_S$ of a solve with steps `dt`.
        The stiffness is the drift's (a step without noise): the stage quotient of a
        noisy step divides by the noise increment and would reward a larger
        diffusion.

        The Heun pair converges to the Stratonovich solution; for an Itô model with
        multiplicative noise the estimate is a heuristic of the step's difficulty,
        not of its error. Diagonal noise only.

        **Arguments:** `ts` (save times, uniform), `paths` `(batch, len(ts), dim)`,
        `key`, `dt` (e.g. the training step), `rtol`, `atol` (default the model's).
        """
        if self.noise != "diagonal":
            raise ValueError(
                f"`local_heuristics` takes diagonal noise; got noise={self.noise!r}."
            )
        ts = jnp.asarray(ts)
        span = (ts[-1] - ts[0]).astype(paths.dtype)
        keys = jr.split(key, paths.shape[0])

        def one(path, k):
            k_time, k_step = jr.split(k)
            i = jr.randint(k_time, (), 0, ts.shape[0] - 1)
            step = dict(
                t1=ts[-1],
                solver="heun",
                rtol=self.rtol if rtol is None else rtol,
                atol=self.atol if atol is None else atol,
                dt=jnp.asarray(dt, ts.dtype),
            )
            drift = lambda t, y, m: m.drift_fn(t, y)  # noqa: E731
            e, _ = local_error_estimate(
                drift,
                ts[i],
                path[i],
                self,
                diffusion=lambda t, y, m: m.diffusion_fn(t, y),
                key=k_step,
                **step,
            )
            # The stage quotient of a noisy step divides by the noise increment, so
            # it would reward a larger diffusion: the stiffness is the drift's.
            _, s = local_error_estimate(drift, ts[i], path[i], self, **step)
            return e, s

        errors, stiffness = jax.vmap(one)(paths, keys)
        scale = span / jnp.abs(jnp.asarray(dt, paths.dtype))
        return scale * jnp.mean(errors), scale * jnp.mean(stiffness)

    def batch_solution(self, ts, y0s, *, key, throw: bool = True) -> diffrax.Solution:
        """Solve a batch `y0s` of shape `(batch, dim)`, each row with its own Brownian
        motion; `sol.ys` has shape `(len(ts), batch, dim)`.

        Diagonal noise is solved as one `(batch, dim)` state (independent Brownian
        motions per entry, so the rows stay independent and every step is one batched
        MLP call); scalar and general noise by a `vmap` over rows with split keys.
        """
        if jnp.ndim(y0s) != 2 or jnp.shape(y0s)[1] != self.dim:
            raise ValueError(
                f"`y0s` must have shape (batch, {self.dim}), got {jnp.shape(y0s)}."
            )
        if self.noise == "diagonal":
            return self._solve(
                lambda t, y, m: jax.vmap(lambda yi: m.drift_fn(t, yi))(y),
                lambda t, y, m: jax.vmap(lambda yi: m.diffusion_fn(t, yi))(y),
                y0s,
                ts,
                key,
                None,
                throw,
            )
        keys = jr.split(key, y0s.shape[0])
        sol = jax.vmap(lambda y0, k: self.solution(ts, y0, key=k, throw=throw))(
            y0s, keys
        )
        return eqx.tree_at(
            lambda s: (s.ys, s.stats),
            sol,
            (
                jnp.swapaxes(sol.ys, 0, 1),
                dict(sol.stats, nfe=jnp.max(sol.stats["nfe"])),
            ),
        )
