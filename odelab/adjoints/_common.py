"""Shared pieces of odelab's adjoints: cotangent bookkeeping and input checks."""

import functools as ft

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax.numpy as jnp
import jax.tree_util as jtu


def zeros_like(tree):
    return jtu.tree_map(
        lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else None, tree
    )


def add(a, b):
    return jtu.tree_map(
        lambda x, y: x if y is None else (y if x is None else x + y),
        a,
        b,
        is_leaf=lambda x: x is None,
    )


def materialise(cotangent, like):
    # filter_vjp returns None for leaves it did not differentiate; the loop carry
    # needs arrays in the same places every iteration.
    return jtu.tree_map(
        lambda c, x: (
            (jnp.zeros_like(x) if c is None else c) if eqx.is_inexact_array(x) else None
        ),
        cotangent,
        like,
        is_leaf=lambda c: c is None,
    )


def save_cotangents(grad_final_state):
    if grad_final_state is None:
        return None
    leaves = jtu.tree_leaves(
        grad_final_state.save_state,
        is_leaf=lambda x: isinstance(x, diffrax._integrate.SaveState),
    )
    (save,) = [x for x in leaves if isinstance(x, diffrax._integrate.SaveState)]
    return save.ys


def _has_unsafe_path(terms) -> bool:
    leaves = jtu.tree_leaves(
        terms, is_leaf=lambda x: isinstance(x, diffrax.UnsafeBrownianPath)
    )
    return any(isinstance(x, diffrax.UnsafeBrownianPath) for x in leaves)


def check_loop_inputs(
    name, terms, saveat, max_steps, event, passed_state, allow_sde=False
):
    """Validate what an odelab adjoint supports; return the single `SubSaveAt`.

    `allow_sde`: accept a `MultiTerm` (drift and diffusion) whose Brownian path can be
    queried again (not `UnsafeBrownianPath`)."""
    if max_steps is None:
        raise ValueError(
            f"`{name}` needs a finite `max_steps` (it sizes the buffers of the "
            "backward pass)."
        )
    if event is not None:
        raise ValueError(f"`{name}` does not support events.")
    if passed_state:
        raise ValueError(
            f"`{name}` does not support passing `solver_state` or `controller_state` "
            "to `diffeqsolve`."
        )
    subs = jtu.tree_leaves(
        saveat.subs, is_leaf=lambda x: isinstance(x, diffrax.SubSaveAt)
    )
    if len(subs) != 1 or subs[0].steps or saveat.dense:
        raise ValueError(
            f"`{name}` supports `SaveAt(t0=..., t1=..., ts=...)` (one SubSaveAt, no "
            "`steps` or `dense`)."
        )
    if subs[0].fn is not diffrax._saveat.save_y:
        raise ValueError(f"`{name}` does not support `SaveAt(fn=...)`.")
    if not isinstance(terms, diffrax.AbstractTerm):
        raise ValueError(f"`{name}` needs diffrax terms, got {type(terms).__name__}.")
    if isinstance(terms, diffrax.MultiTerm) and not allow_sde:
        raise ValueError(f"`{name}` supports a single (ODE) term, not an SDE.")
    if allow_sde and _has_unsafe_path(terms):
        raise ValueError(
            f"`{name}` re-evaluates Brownian increments in its backward pass: use a "
            "`VirtualBrownianTree` (odelab.solve_sde's default), not "
            "`UnsafeBrownianPath`."
        )
    return subs[0]


def forward_loop(y__args__terms, *, solver, stepsize_controller, init_state, **kw):
    """The forward pass of odelab's custom-VJP adjoints: diffrax's own solve loop with
    plain (non-differentiable, storage-free) lax while loops, the solver state
    initialised from the differentiated `y0` and `args`."""
    y0, args, terms = y__args__terms
    solver_state = solver.init(terms, init_state.tprev, init_state.tnext, y0, args)
    init_state = eqx.tree_at(
        lambda s: (s.y, s.solver_state), init_state, (y0, solver_state)
    )
    return kw["loop"](
        solver=solver,
        stepsize_controller=stepsize_controller,
        event=None,
        saveat=kw["saveat"],
        t0=kw["t0"],
        t1=kw["t1"],
        dt0=kw["dt0"],
        max_steps=kw["max_steps"],
        terms=terms,
        args=args,
        init_state=init_state,
        inner_while_loop=ft.partial(eqxi.while_loop, kind="lax"),
        outer_while_loop=ft.partial(eqxi.while_loop, kind="lax"),
        progress_meter=kw["progress_meter"],
    )
