"""Tests of the errors of `odelab.solve` and `odelab.solve_sde`: each misuse fails
with a message that names the problem and says how to fix it."""

import diffrax
import jax
import jax.numpy as jnp
import pytest

import odelab
import odelab.problems


def _decay(t, y, args):
    del t
    return -args * y


def _dict_field_wrong_shape(t, y, args):
    del t, args
    return {"a": -y["a"], "b": -y["b"][:1]}


def _dict_field_wrong_dtype(t, y, args):
    del t, args
    return {"a": -y["a"], "b": (-y["b"]).astype(jnp.float16)}


def _noise(t, y, args):
    del t, args
    return 0.1 * jnp.ones(y.shape + (3,), y.dtype)


_Y0 = (1.0, 2.0)
_TS = (0.0, 0.25, 0.5, 0.75, 1.0)
_DICT_Y0 = {"a": (1.0, 2.0), "b": (3.0, 4.0)}


def _y0():
    return jnp.asarray(_Y0)


def _ts():
    return jnp.asarray(_TS)


# --------------------------------------------------------------------------------------
# Trace-time errors
# --------------------------------------------------------------------------------------


def test_vector_field_output_shape_names_the_leaf():
    y0 = {k: jnp.asarray(v) for k, v in _DICT_Y0.items()}
    with pytest.raises(ValueError, match=r"shape \(1,\) at leaf `\['b'\]`.*\(2,\)"):
        odelab.solve(_dict_field_wrong_shape, y0, _ts())


def test_vector_field_output_dtype_names_the_leaf():
    y0 = {k: jnp.asarray(v) for k, v in _DICT_Y0.items()}
    with pytest.raises(TypeError, match=r"dtype float16 at leaf `\['b'\]`.*float32"):
        odelab.solve(_dict_field_wrong_dtype, y0, _ts())


def test_unknown_solver_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown ODE solver.*tsit6.*'?tsit5"):
        odelab.solve(_decay, _y0(), _ts(), 1.0, solver="tsit6")


def test_unknown_adjoint_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown adjoint.*'adjoin'.*checkpoint"):
        odelab.solve(_decay, _y0(), _ts(), 1.0, adjoint="adjoin")


def test_nan_in_y0():
    with pytest.raises(ValueError, match=r"`y0`.*NaN or inf"):
        odelab.solve(_decay, _y0().at[1].set(jnp.nan), _ts(), 1.0)


def test_inf_in_args():
    args = {"rate": jnp.asarray([1.0, jnp.inf])}
    with pytest.raises(ValueError, match=r"`args` leaf `\['rate'\]`.*NaN or inf"):
        odelab.solve(lambda t, y, a: -a["rate"] * y, _y0(), _ts(), args)


def test_inf_in_python_float_args():
    with pytest.raises(ValueError, match=r"`args`.*NaN or inf"):
        odelab.solve(_decay, _y0(), _ts(), float("inf"))


def test_non_monotone_ts():
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        odelab.solve(_decay, _y0(), jnp.asarray([0.0, 0.5, 0.3, 1.0]), 1.0)


def test_sde_solver_name_in_solve():
    # SDE solvers have their own registry: the name is unknown to `solve`.
    with pytest.raises(ValueError, match=r"Unknown ODE solver.*'sra1'.*tsit5"):
        odelab.solve(_decay, _y0(), _ts(), 1.0, solver="sra1")


def test_sde_solver_object_in_solve():
    with pytest.raises(ValueError, match=r"SRA1.*SDE solver.*solve_sde"):
        odelab.solve(_decay, _y0(), _ts(), 1.0, solver=diffrax.SRA1())


def test_solve_sde_without_diffusion():
    with pytest.raises(ValueError, match=r"diffusion.*odelab\.solve"):
        odelab.solve_sde(_decay, None, _y0(), _ts(), 1.0, key=jax.random.key(0))


def test_diagonal_noise_with_a_matrix_diffusion():
    with pytest.raises(ValueError, match=r"`diffusion` returned shape \(2, 3\)"):
        odelab.solve_sde(
            _decay, _noise, _y0(), _ts(), 1.0, key=jax.random.key(0), noise="diagonal"
        )


def test_general_noise_without_brownian_shape():
    with pytest.raises(ValueError, match=r"noise='general' needs `brownian_shape`"):
        odelab.solve_sde(
            _decay, _noise, _y0(), _ts(), 1.0, key=jax.random.key(0), noise="general"
        )


@pytest.mark.parametrize("solver", ["rk4", "euler"])
def test_fixed_step_solver_without_dt0(solver):
    with pytest.raises(ValueError, match=r"no error estimate.*`dt0=`.*`steps=`"):
        odelab.solve(_decay, _y0(), _ts(), 1.0, solver=solver)


@pytest.mark.parametrize("direction", [1, -1], ids=["increasing", "decreasing"])
def test_dt0_of_the_wrong_sign(direction):
    ts = _ts()[::direction]
    dt0 = -0.125 * direction
    with pytest.raises(ValueError, match=r"`dt0=.*sign of t1 - t0"):
        odelab.solve(_decay, _y0(), ts, 1.0, dt0=dt0)


# --------------------------------------------------------------------------------------
# Run-time errors (traced inputs, inside jit)
# --------------------------------------------------------------------------------------

# `eqx.EquinoxRuntimeError` under `eqx.filter_jit`, `jax.errors.JaxRuntimeError`
# under `jax.jit`: both are `RuntimeError`s and carry the message.


@jax.jit
def _jitted_ys(y0, ts, args):
    return odelab.solve(_decay, y0, ts, args, steps=8).ys


def test_nan_in_y0_under_jit():
    with pytest.raises(RuntimeError, match="NaN or inf"):
        jax.block_until_ready(
            _jitted_ys(_y0().at[0].set(jnp.nan), _ts(), jnp.asarray(1.0))
        )


def test_inf_in_args_under_jit():
    with pytest.raises(RuntimeError, match="NaN or inf"):
        jax.block_until_ready(_jitted_ys(_y0(), _ts(), jnp.asarray(jnp.inf)))


def test_non_monotone_ts_under_jit():
    ts = jnp.asarray([0.0, 0.25, 0.75, 0.5, 1.0])
    with pytest.raises(RuntimeError, match="strictly increasing or decreasing"):
        jax.block_until_ready(_jitted_ys(_y0(), ts, jnp.asarray(1.0)))


def test_stiff_problem_with_an_explicit_solver():
    problem = odelab.problems.get("van_der_pol_stiff")
    with pytest.raises(RuntimeError, match=r"(?s)max_steps.*implicit.*max_steps"):
        sol = odelab.solve(
            problem.vector_field,
            problem.y0,
            (problem.t0, problem.t1),
            problem.args,
            solver="tsit5",
            max_steps=200,
        )
        jax.block_until_ready(sol.ys)


def test_zero_dt0_is_a_clear_error():
    with pytest.raises(ValueError, match="dt0=0"):
        odelab.solve(_decay, _y0(), _ts(), 1.0, solver="rk4", dt0=0.0)


def test_unsafe_brownian_path_backwards_in_time(key):
    with pytest.raises(ValueError, match="backwards in time"):
        odelab.solve_sde(
            _decay,
            lambda t, y, a: 0.1 * jnp.ones_like(y),
            _y0(),
            jnp.asarray(_TS[::-1]),
            1.0,
            key=key,
            steps=8,
            brownian="unsafe",
        )


def test_solve_sde_rejects_an_ode_solver_object(key):
    with pytest.raises(ValueError, match="not an SDE solver"):
        odelab.solve_sde(
            _decay,
            lambda t, y, a: 0.1 * jnp.ones_like(y),
            _y0(),
            _ts(),
            1.0,
            key=key,
            solver=diffrax.Kvaerno5(),
        )


def test_vector_field_error_keeps_its_type_and_says_where():
    def branchy(t, y, args):
        del t, args
        if y[0] > 0:  # Python control flow on a traced value
            return -y
        return y

    with pytest.raises(jax.errors.TracerBoolConversionError) as info:
        odelab.solve(branchy, _y0(), _ts())
    assert "vector_field(t0, y0, args)" in "".join(getattr(info.value, "__notes__", []))


def test_fixed_grid_over_max_steps_under_jit_says_so():
    # Traced ts: the step count is unknown while tracing, so `max_steps` bounds it.
    fn = jax.jit(
        lambda ts: (
            odelab.solve(
                _decay, _y0(), ts, 1.0, solver="rk4", dt0=0.01, max_steps=50
            ).ys
        )
    )
    with pytest.raises(Exception, match="fixed grid t0 \\+ k\\*dt0 needs more"):
        jax.block_until_ready(fn(_ts()))
