"""Tests of `sol.stats["nfe"]` (`odelab.solvers.nfe`): the reported number of
vector-field evaluations must be the number that actually ran, counted at run time
with a host callback inside the vector field."""

import jax
import jax.numpy as jnp
import pytest

import odelab


_CALLS = []


def _record():
    _CALLS.append(None)


def _field(t, y, args):
    # Runs on every evaluation of the compiled solve, not only while tracing.
    jax.debug.callback(_record)
    return -args * y * (1 + jnp.sin(10 * t))


_Y0 = (1.0, 2.0)
_TS = (0.0, 0.5, 1.0, 1.5, 2.0)
_ARGS = 3.0
# Tight enough that every adaptive solver below rejects some steps on this problem
# (whose rate swings between 0 and 6).
_RTOL = _ATOL = 1e-4

_ADAPTIVE = [
    "tsit5",
    "dopri5",
    "dopri8",
    "bosh3",
    "heun",
    "midpoint",
    "ralston",
    "reversible_heun",
]
_FIXED_ONLY = ["rk4", "euler"]


def _solve_and_count(**kwargs):
    _CALLS.clear()
    sol = odelab.solve(
        _field, jnp.asarray(_Y0), jnp.asarray(_TS), jnp.asarray(_ARGS), **kwargs
    )
    jax.block_until_ready(sol.ys)
    jax.effects_barrier()
    return sol, len(_CALLS)


@pytest.mark.parametrize("solver", _ADAPTIVE)
def test_adaptive(solver):
    sol, calls = _solve_and_count(solver=solver, rtol=_RTOL, atol=_ATOL)
    assert int(sol.stats["num_rejected_steps"]) > 0
    assert int(sol.stats["nfe"]) == calls


@pytest.mark.parametrize("solver", _ADAPTIVE + _FIXED_ONLY)
def test_fixed_step_lean(solver):
    sol, calls = _solve_and_count(solver=solver, steps=17)
    assert int(sol.stats["num_steps"]) == 17
    assert int(sol.stats["nfe"]) == calls


@pytest.mark.parametrize("solver", _ADAPTIVE + _FIXED_ONLY)
def test_fixed_step_diffeqsolve_fallback(solver):
    # A non-default adjoint with `dt0` goes through `diffeqsolve` and
    # `ConstantStepSize`, counted by the `count_nfe` controller.
    sol, calls = _solve_and_count(solver=solver, dt0=0.125, adjoint="direct")
    assert int(sol.stats["num_steps"]) == 16
    assert int(sol.stats["nfe"]) == calls


def test_implicit_solver_reports_minus_one():
    sol, calls = _solve_and_count(solver="kvaerno5", rtol=_RTOL, atol=_ATOL)
    assert calls > 0
    assert int(sol.stats["nfe"]) == -1
