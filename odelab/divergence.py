r"""The divergence of a vector field and the log-determinant of its flow.

For a flow $\dot z = f(t, z)$ the log-density transported along a trajectory obeys
the instantaneous change of variables

$$\frac{d}{dt}\log p_t(z(t)) = -\operatorname{tr}\frac{\partial f}{\partial z}(t, z(t)),$$

so one solve of the augmented ODE $\frac{d}{dt}[z, \ell] = [f, \operatorname{tr}
\partial_z f]$ gives both the end state and $\log p_{t_0}(z(t_0)) = \log
p_{t_1}(z(t_1)) + \ell(t_1)$. `divergence` computes the trace, exactly or by
Hutchinson's estimator, and `solve_with_log_det` solves the augmented ODE. They are
the shared machinery of continuous normalizing flows (`odelab.models.CNF`) and of the
exact likelihood of diffusion models (`odelab.diffusion.log_likelihood`).

**References:** R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural
Ordinary Differential Equations", NeurIPS 2018, arXiv:1806.07366; W. Grathwohl,
R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud, "FFJORD: Free-form
Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019,
arXiv:1810.01367; M. F. Hutchinson, "A stochastic estimator of the trace of the
influence matrix for Laplacian smoothing splines", 1989.
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import is_concrete
from .solvers.nfe import count_nfe, nfe_costs, read_nfe


# The defaults of `solve_with_log_det`: equinox modules are immutable, so one
# instance can be shared by every call.
_TSIT5 = diffrax.Tsit5()
_CHECKPOINT = diffrax.RecursiveCheckpointAdjoint()


def _check_floating(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be a real floating array, got dtype {x.dtype}; convert it, "
            f"e.g. `jnp.asarray({name}, float)`."
        )
    return x


def _check_probe(probe, x) -> jax.Array:
    probe = _check_floating("probe", probe)
    if probe.shape != x.shape:
        raise ValueError(
            f"`probe` must have the shape of the state, {x.shape}; got {probe.shape}. "
            "Draw one probe per state (vmap the probe together with the state)."
        )
    return probe.astype(x.dtype)


def divergence(f: Callable, x, probe=None) -> tuple[jax.Array, jax.Array]:
    r"""The divergence $\operatorname{tr}\frac{\partial f}{\partial x}(x)$ of a field,
    exact or by Hutchinson's estimator, together with $f(x)$.

    With `probe=None` the trace of the Jacobian is exact (`jax.jacfwd`: one
    Jacobian-vector product per dimension). With a probe $\varepsilon$ it is
    Hutchinson's unbiased estimate

    $$\operatorname{tr} J \approx \varepsilon^\top J \varepsilon, \qquad
    \mathbb E[\varepsilon\varepsilon^\top] = I,$$

    from one Jacobian-vector product, whose primal output is $f(x)$ itself. For
    Rademacher probes its variance is $2\sum_{i \ne j} J_{ij}^2$ (Gaussian probes add
    $2\sum_i J_{ii}^2$).

    **Arguments:**

    - `f`: the field, mapping an array of `x`'s shape to one of the same shape.
    - `x`: the point, a real floating array of any shape (a state with several
      axes is flattened: the divergence is the trace over all its entries).
    - `probe`: `None` for the exact trace, or a probe $\varepsilon$ of `x`'s shape
      (Rademacher or standard Gaussian), cast to `x`'s dtype.

    **Returns:**

    `(f(x), div)`: the field at `x` (so a caller need not evaluate it again) and the
    divergence, a scalar of `x`'s dtype.

    **Raises:**

    `ValueError` if `x` or `probe` is not real floating, if `probe`'s shape is not
    `x`'s, or if `f(x)` does not have `x`'s shape.

    **Example:**

    ```python
    f = lambda x: jnp.tanh(x) * x[::-1]
    fx, div = divergence(f, x)                                        # exact
    fx, est = divergence(f, x, jax.random.rademacher(key, x.shape, x.dtype))
    ```

    **Reference:** M. F. Hutchinson, "A stochastic estimator of the trace of the
    influence matrix for Laplacian smoothing splines", 1989; W. Grathwohl et al.,
    "FFJORD", ICLR 2019, arXiv:1810.01367.
    """
    x = _check_floating("x", x)
    shape = x.shape

    def flat_f(u):
        out = f(jnp.reshape(u, shape))
        if jnp.shape(out) != shape:
            raise ValueError(
                f"`f` must return an array of `x`'s shape {shape}; got "
                f"{jnp.shape(out)}."
            )
        return jnp.ravel(out)

    flat_x = jnp.ravel(x)
    if probe is None:
        jac, fx = jax.jacfwd(lambda u: (flat_f(u),) * 2, has_aux=True)(flat_x)
        div = jnp.trace(jac)
    else:
        flat_probe = jnp.ravel(_check_probe(probe, x))
        fx, jv = jax.jvp(flat_f, (flat_x,), (flat_probe,))
        div = jnp.sum(flat_probe * jv)
    return jnp.reshape(fx, shape), div


class _Augmented(eqx.Module):
    # A Module rather than a closure: BacksolveAdjoint differentiates the term's
    # array leaves, so a field that is an `eqx.Module` gets its parameter gradients.
    field: Callable
    probe: jax.Array | None

    def __call__(self, t, state, args):
        z, _ = state
        return divergence(lambda u: self.field(t, u, args), z, self.probe)


def solve_with_log_det(
    field: Callable,
    x,
    t0,
    t1,
    *,
    args=None,
    probe=None,
    solver: diffrax.AbstractSolver = _TSIT5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt0=None,
    max_steps: int = 4096,
    adjoint: diffrax.AbstractAdjoint = _CHECKPOINT,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Solve a flow together with the integral of its divergence.

    Solves the augmented ODE (the instantaneous change of variables)

    $$\frac{d}{dt}\begin{bmatrix} z \\ \ell \end{bmatrix} =
    \begin{bmatrix} f(t, z, \text{args}) \\ \operatorname{tr}\frac{\partial f}
    {\partial z}(t, z, \text{args}) \end{bmatrix}, \qquad z(t_0) = x,\ \ell(t_0) = 0,$$

    from $t_0$ to $t_1$ (either direction) with adaptive steps (`diffrax.PIDController`
    on both components), so that $\log p_{t_0}(x) = \log p_{t_1}(z(t_1)) + \ell(t_1)$.
    With a `probe` the trace is Hutchinson's estimate $\varepsilon^\top
    \partial_z f\,\varepsilon$ with the same $\varepsilon$ at every time, as FFJORD
    does: the integral of the estimates is then an unbiased estimate of the
    integral, and the field stays smooth in $t$ for the adaptive solver.

    Times are cast to `x`'s dtype, so the solve runs in the state's precision. Works
    under `jit`, `vmap` (over `x` and `probe`) and `grad` (with respect to `x`,
    `args` and the parameters of `field`). With `diffrax.BacksolveAdjoint`, pass the
    parameters as `args` or make `field` an `eqx.Module`: arrays a plain closure
    captures get no gradient from the continuous adjoint.

    **Arguments:**

    - `field`: the vector field $f(t, z, \text{args})$, returning an array of $z$'s
      shape.
    - `x`: the initial state $z(t_0)$, a real floating array of any shape.
    - `t0`, `t1`: the ends of the solve; $t_1 < t_0$ integrates backwards.
    - `args`: passed to `field`.
    - `probe`: `None` for the exact trace (`jax.jacfwd`: one Jacobian-vector product
      per entry of `x` and evaluation), or a Hutchinson probe of `x`'s shape
      (Rademacher or standard Gaussian) held fixed over the solve.
    - `solver`: a diffrax ODE solver (default `diffrax.Tsit5()`).
    - `rtol`, `atol`: the controller's tolerances.
    - `dt0`: the first step (`None`: diffrax's heuristic picks it).
    - `max_steps`: the most steps the solve may take.
    - `adjoint`: how gradients flow through the solve, a `diffrax.AbstractAdjoint`
      (default `diffrax.RecursiveCheckpointAdjoint()`: exact gradients of the
      discrete solve; `diffrax.BacksolveAdjoint()` for O(1) memory).

    **Returns:**

    `(z1, delta_log, nfe)`: the end state $z(t_1)$ (shape and dtype of `x`);
    `delta_log` $= \ell(t_1) = \int_{t_0}^{t_1}\operatorname{tr}\frac{\partial f}
    {\partial z}\,dt$, a scalar of `x`'s dtype; and `nfe`, the exact number of
    evaluations of the augmented field in the forward solve (int32), counted by
    `odelab.solvers.count_nfe`: the first-step heuristic's evaluations, every stage
    of every attempted step including rejected ones, less the evaluations that
    first-same-as-last solvers reuse. Each evaluation is one call of `field` plus its
    divergence (a Jacobian-vector product for Hutchinson, `x.size` of them for the
    exact trace). `nfe` is $-1$ for solvers whose count is not known statically
    (implicit ones).

    **Raises:**

    `ValueError` if `x` or `probe` is not real floating, if `probe`'s shape is not
    `x`'s, if `t0 == t1` (checked when both are concrete), or if `field` does not
    return an array of `x`'s shape. A solve that reaches `max_steps` raises at run
    time (diffrax's `throw=True`).

    **Example:**

    ```python
    field = lambda t, z, A: A @ z
    z1, delta_log, nfe = solve_with_log_det(field, x, 0.0, 1.0, args=A)
    # z1 = expm(A) x, delta_log = tr(A)
    ```

    **Reference:** R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural
    Ordinary Differential Equations", NeurIPS 2018, arXiv:1806.07366, Theorem 1;
    W. Grathwohl et al., "FFJORD: Free-form Continuous Dynamics for Scalable
    Reversible Generative Models", ICLR 2019, arXiv:1810.01367.
    """
    x = _check_floating("x", x)
    if probe is not None:
        probe = _check_probe(probe, x)
    if is_concrete((t0, t1)) and np.all(np.asarray(t0) == np.asarray(t1)):
        raise ValueError(
            f"`t0` and `t1` are equal ({t0}); the solve needs an interval of nonzero "
            "length (with t0 == t1 the state is unchanged and `delta_log` is 0)."
        )
    dtype = x.dtype
    t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    if dt0 is not None:
        dt0 = jnp.asarray(dt0, dtype)
    term = diffrax.ODETerm(_Augmented(field, probe))
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    costs = nfe_costs(solver, term)
    if costs is not None:
        controller = count_nfe(controller, costs)
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        dt0,
        (x, jnp.zeros((), dtype)),
        args,
        saveat=diffrax.SaveAt(t1=True, controller_state=costs is not None),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
    )
    z1, delta_log = sol.ys
    if costs is None:
        nfe = jnp.asarray(-1, jnp.int32)
    else:
        nfe = read_nfe(sol.controller_state)
    return z1[0], delta_log[0], nfe
