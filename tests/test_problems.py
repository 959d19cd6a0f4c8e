"""Tests for `odelab.problems`: every reference is checked independently.

Tolerances follow one rule: a solve at tolerances `rtol`, `atol` is trusted to
`_GROWTH * (rtol * |y_i| + atol)` per component (the global error is the local
tolerance times the error growth over the span, below 1e3 on these spans); Monte-Carlo
estimates are compared within `_Z` standard errors.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import odelab.problems as problems
from odelab.problems import base


# With 24 Monte-Carlo comparisons, 5 standard errors keep the family-wise false-alarm
# rate below 2e-5 for Gaussian estimators.
_Z = 5.0
_GROWTH = 1e3


def _set_x64(value: bool):
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", value)
    return old


@pytest.fixture
def _x64():
    old = _set_x64(True)
    yield
    _set_x64(old)


@pytest.fixture
def _x32():
    old = _set_x64(False)
    yield
    _set_x64(old)


def _names(predicate) -> list[str]:
    return [name for name in problems.names() if predicate(problems.get(name))]


ALL = problems.names()
CLOSED_FORM = _names(lambda p: not p.stochastic and p.reference_kind == "closed_form")
NUMERICAL = _names(lambda p: p.reference_kind == "numerical")
SEMILINEAR = _names(lambda p: p.semilinear)


def _ts(problem) -> jax.Array:
    if problem.name == "robertson":
        return jnp.array([0.0, 1.0, 10.0, 40.0, 70.0, 100.0])
    return jnp.linspace(problem.t0, problem.t1, 6)


def _assert_solved_to(actual, expected, rtol, atol):
    """`|actual - expected| <= _GROWTH * (rtol * scale_i + atol)`, with `scale_i` the
    largest magnitude of component i over the save times."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.max(np.abs(expected), axis=0)
    error = np.max(np.abs(actual - expected), axis=0)
    bound = _GROWTH * (rtol * scale + atol)
    assert np.all(error <= bound), f"errors {error} over bounds {bound}"


def test_registry_lists_every_problem():
    assert sorted(problems.ALL) == ALL
    assert len(ALL) >= 13
    for name in ALL:
        problem = problems.get(name)
        assert isinstance(problem, problems.Problem)
        assert problem.name == name
        assert problem.t0 < problem.t1
        assert (problem.linear is not None) == problem.semilinear
        assert (problem.diffusion is not None) == problem.stochastic


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown problem 'lorentz'") as info:
        problems.get("lorentz")
    for name in ALL:
        assert name in str(info.value)


@pytest.mark.usefixtures("_x64")
@pytest.mark.parametrize("width", [32, 64])
@pytest.mark.parametrize("name", ALL)
def test_fields_follow_the_dtype_of_y(name, width):
    problem = problems.get(name)
    complex_ = jnp.iscomplexobj(problem.y0)
    dtype = {(32, False): jnp.float32, (64, False): jnp.float64}.get(
        (width, complex_), jnp.complex64 if width == 32 else jnp.complex128
    )
    y = problem.y0.astype(dtype)
    # `args` are float64 here: mixing them with a float32 `y` must not promote.
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        f = jax.jit(problem.vector_field)(problem.t0, y, problem.args)
        assert f.dtype == y.dtype and f.shape == y.shape
        assert np.all(np.isfinite(np.asarray(f)))
        if problem.stochastic:
            g = problem.diffusion(problem.t0, y, problem.args)
            general = problem.noise == "general"
            assert g.dtype == y.dtype
            assert g.shape == y.shape + (problem.brownian_shape if general else ())
            bm = diffrax.UnsafeBrownianPath(problem.brownian_shape, jr.key(0))
            control = (jnp.asarray(0.1, dtype), jnp.ones(problem.brownian_shape, dtype))
            step = problem.terms(bm).vf_prod(problem.t0, y, problem.args, control)
            assert step.dtype == y.dtype and step.shape == y.shape


def test_problems_take_the_default_dtype(_x32):
    for name in ALL:
        problem = problems.get(name)
        for leaf in jax.tree_util.tree_leaves((problem.y0, problem.args)):
            assert leaf.dtype in (jnp.float32, jnp.complex64) and not leaf.weak_type
    assert problems.get("kuramoto_sivashinsky").y0.dtype == jnp.complex64


@pytest.mark.usefixtures("_x64")
@pytest.mark.parametrize("name", CLOSED_FORM)
def test_closed_form_satisfies_the_ode(name):
    problem = problems.get(name)
    args = problem.args
    solution = lambda t: problem.solution(t, problem.t0, problem.y0, args)

    @jax.jit
    @jax.vmap
    def derivative_and_field(t):
        y, dydt = jax.jvp(solution, (t,), (jnp.ones_like(t),))
        return dydt, problem.vector_field(t, y, args)

    np.testing.assert_allclose(solution(problem.t0), problem.y0, rtol=1e-15, atol=0)
    dydt, f = derivative_and_field(jnp.linspace(problem.t0, problem.t1, 5))
    # Exact up to float64 round-off in the (matrix) exponential.
    np.testing.assert_allclose(dydt, f, rtol=1e-11, atol=1e-11 * np.abs(f).max())


@pytest.mark.usefixtures("_x64")
@pytest.mark.parametrize("name", CLOSED_FORM)
def test_closed_form_matches_a_tight_solve(name):
    problem = problems.get(name)
    ts = _ts(problem)
    rtol = 1e-12
    sol = diffrax.diffeqsolve(
        problem.terms(),
        diffrax.Dopri8(),
        problem.t0,
        problem.t1,
        None,
        problem.y0,
        problem.args,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
    )
    _assert_solved_to(sol.ys, problem.reference(ts), rtol, rtol)


def _real_split(field):
    def split(t, y, args):
        f = field(t, jax.lax.complex(y[0], y[1]), args)
        return jnp.stack([f.real, f.imag])

    return split


@pytest.mark.usefixtures("_x64")
@pytest.mark.parametrize("name", NUMERICAL)
def test_numerical_reference_matches_an_independent_solve(name):
    problem = problems.get(name)
    ts = _ts(problem)
    reference = problem.reference(ts)
    assert reference.dtype in (jnp.float64, jnp.complex128)
    assert reference.shape == ts.shape + problem.y0.shape
    np.testing.assert_array_equal(reference[0], problem.y0)

    # A different solver from the reference's: explicit Tsit5 (also for the stiff
    # problems, where stability costs steps but nothing else), except for the
    # stiffest span, where implicit Kvaerno4 is checked against implicit Kvaerno5.
    if name == "van_der_pol_stiff":
        solver, rtol = diffrax.Kvaerno4(), 1e-8
    else:
        solver, rtol = diffrax.Tsit5(), 1e-10
    atol = problem.reference_atol * rtol / problem.reference_rtol
    field, y0 = problem.vector_field, problem.y0
    if jnp.iscomplexobj(y0):
        # Independent of diffrax's complex support too: real and imaginary parts.
        field, y0 = _real_split(field), jnp.stack([y0.real, y0.imag])
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        problem.t0,
        problem.t1,
        None,
        y0,
        problem.args,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=1_000_000,
    )
    check = np.asarray(sol.ys)
    if jnp.iscomplexobj(reference):
        check = check[:, 0] + 1j * check[:, 1]
    _assert_solved_to(check, reference, rtol, atol)


@pytest.mark.usefixtures("_x64")
def test_hires_matches_the_published_solution():
    problem = problems.get("hires")
    ts = _ts(problem)
    assert float(ts[-1]) == problem.t1 == 321.8122
    np.testing.assert_allclose(
        problem.reference(ts)[-1],
        problems.HIRES_T1_SOLUTION,
        rtol=_GROWTH * problem.reference_rtol,
    )


@pytest.mark.usefixtures("_x64")
def test_robertson_matches_the_quoted_solution():
    problem = problems.get("robertson")
    ts = _ts(problem)
    quoted = np.array([0.7158270687, 9.185534764e-06, 0.2841637457])  # y(40)
    # Quoted to ten digits: rounding contributes at most 5e-10 relative.
    np.testing.assert_allclose(problem.reference(ts)[3], quoted, rtol=1e-9)
    np.testing.assert_allclose(problem.reference(ts).sum(axis=1), 1.0, rtol=1e-10)


@pytest.mark.usefixtures("_x64")
@pytest.mark.parametrize("name", SEMILINEAR)
def test_semilinear_split_adds_up(name):
    problem = problems.get(name)
    noise = jr.normal(jr.key(1), problem.y0.shape, problem.y0.dtype)
    for y in (problem.y0, problem.y0 + 0.1 * noise):
        linear = problem.linear
        ly = linear @ y if linear.ndim == 2 else linear * y
        np.testing.assert_allclose(ly, problems.apply_linear(linear, y), rtol=1e-15)
        split = ly + problem.nonlinear(problem.t0, y, problem.args)
        f = problem.vector_field(problem.t0, y, problem.args)
        np.testing.assert_allclose(split, f, rtol=1e-13, atol=1e-13 * np.abs(f).max())


def _squared_norm(y):
    return jnp.sum(jnp.real(y * jnp.conj(y)))  # smooth at 0, unlike |y|, for complex y


# RK4 steps with dt |lambda_min| <= 1 on the stiff problems (Jacobian spectra reach
# about -43, -90, -210, -240, -4.2e3, -3e3 there); otherwise 1% of the span.
_STABLE_DT = {
    "allen_cahn": 0.02,
    "brusselator": 0.01,
    "hires": 0.004,
    "kuramoto_sivashinsky": 0.004,
    "robertson": 1e-4,
    "van_der_pol_stiff": 1e-4,
}


def _functional(y):
    """A fixed random linear functional of the state: no cancellation (as in a norm,
    which Kuramoto–Sivashinsky's nonlinearity conserves) and no vanishing first
    variation (as for Van der Pol from rest)."""
    weights = jr.normal(jr.key(7), y.shape + (2,), jnp.finfo(y.dtype).dtype)
    return jnp.sum(weights[..., 0] * jnp.real(y) + weights[..., 1] * jnp.imag(y))


def _rk4_loss(problem, args, steps=8):
    field = problem.vector_field
    dt = _STABLE_DT.get(problem.name, (problem.t1 - problem.t0) / 100)

    def step(i, y):
        t = problem.t0 + i * dt
        k1 = field(t, y, args)
        k2 = field(t + dt / 2, y + dt / 2 * k1, args)
        k3 = field(t + dt / 2, y + dt / 2 * k2, args)
        k4 = field(t + dt, y + dt * k3, args)
        return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    return _functional(jax.lax.fori_loop(0, steps, step, problem.y0))


def _euler_maruyama_loss(problem, args, dt=1e-2, steps=8):
    shape = problem.brownian_shape
    bm = diffrax.VirtualBrownianTree(problem.t0, problem.t1, dt, shape, jr.key(2))
    terms = problem.terms(bm)

    def step(i, y):
        t = problem.t0 + i * dt
        return y + terms.vf_prod(t, y, args, (dt, bm.evaluate(t, t + dt)))

    return _functional(jax.lax.fori_loop(0, steps, step, problem.y0))


@pytest.mark.usefixtures("_x64")
@pytest.mark.parametrize("name", ALL)
def test_gradient_with_respect_to_args(name):
    """`jax.grad` through a short fixed-step solve (8 stable RK4 steps; Euler–Maruyama
    for the SDEs) is finite and matches a central difference."""
    problem = problems.get(name)
    short_solve = _euler_maruyama_loss if problem.stochastic else _rk4_loss
    # One compilation serves the gradient and the finite differences.
    value_and_grad = jax.jit(jax.value_and_grad(lambda a: short_solve(problem, a)))
    loss = lambda args: value_and_grad(args)[0]
    value, grad = value_and_grad(problem.args)
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(grad)]
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    # Relative perturbations, since parameters range from 7e-4 to 3e7; NumPy, so that
    # nothing but `value_and_grad` is compiled.
    rng = np.random.default_rng(3)
    args, treedef = jax.tree_util.tree_flatten(problem.args)
    args = [np.asarray(a) for a in args]
    direction = [a * rng.uniform(-1, 1, a.shape) for a in args]
    eps = 1e-5

    def shifted(sign):
        return treedef.unflatten([a + sign * eps * d for a, d in zip(args, direction)])

    finite_difference = (loss(shifted(1)) - loss(shifted(-1))) / (2 * eps)
    directional = sum(np.vdot(g, d) for g, d in zip(leaves, direction, strict=True))
    # Truncation O(eps^2) relative, plus the round-off of two loss values over 2 eps.
    roundoff = 10 * np.finfo(np.float64).eps * abs(float(value)) / eps
    np.testing.assert_allclose(directional, finite_difference, rtol=1e-7, atol=roundoff)


@pytest.mark.usefixtures("_x64")
@pytest.mark.filterwarnings("ignore:Complex dtype support in Diffrax")
def test_gradient_through_diffrax_in_complex_arithmetic():
    problem = problems.get("kuramoto_sivashinsky")

    @jax.jit
    def loss(args):
        sol = diffrax.diffeqsolve(
            problem.terms(),
            diffrax.Tsit5(),
            problem.t0,
            problem.t0 + 0.5,
            _STABLE_DT[problem.name],
            problem.y0,
            args,
            stepsize_controller=diffrax.ConstantStepSize(),
        )
        return _squared_norm(sol.ys[-1])

    grad = jax.grad(loss)(problem.args)
    assert np.isfinite(grad["c"]) and grad["c"] != 0


def _brownian(problem, key, tol, levy_area=diffrax.BrownianIncrement):
    return diffrax.VirtualBrownianTree(
        problem.t0, problem.t1, tol, problem.brownian_shape, key, levy_area=levy_area
    )


@pytest.mark.usefixtures("_x64")
def test_gbm_exact_solution_is_the_strong_limit():
    """Milstein on the same Brownian paths converges to `exact` with strong order 1."""
    problem = problems.get("geometric_brownian_motion")
    keys = jr.split(jr.key(4), 64)
    dts = 2.0 ** -np.array([3, 5, 7])
    tol = 2.0**-9  # all step points are exact nodes of the tree

    @jax.jit
    @jax.vmap
    def strong_error(key, dt):
        bm = _brownian(problem, key, tol)
        sol = diffrax.diffeqsolve(
            problem.terms(bm),
            diffrax.ItoMilstein(),
            problem.t0,
            problem.t1,
            dt,
            problem.y0,
            problem.args,
            max_steps=2**8,
        )
        exact = problem.exact(jnp.array([problem.t1]), bm)
        return jnp.max(jnp.abs(sol.ys[-1] - exact[-1]))

    errors = np.array(
        [np.mean(strong_error(keys, jnp.full(keys.shape, dt))) for dt in dts]
    )
    assert np.all(np.diff(errors) < 0), errors
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert slope > 1 - 0.25, (slope, errors)  # Milstein's strong order is 1
    np.testing.assert_allclose(
        problem.exact(jnp.array([problem.t0]), _brownian(problem, keys[0], tol))[0],
        problem.y0,
    )


def _assert_moments(samples, mean, variance):
    """Sample mean and variance within `_Z` standard errors of the exact ones; the
    standard error of the variance uses the sample fourth central moment."""
    n = samples.shape[0]
    sample_mean = samples.mean(axis=0)
    centred = samples - sample_mean
    sample_variance = (centred**2).sum(axis=0) / (n - 1)
    fourth = (centred**4).mean(axis=0)
    se_mean = np.sqrt(sample_variance / n)
    se_variance = np.sqrt((fourth - sample_variance**2) / n)
    assert np.all(np.abs(sample_mean - mean) <= _Z * se_mean)
    assert np.all(np.abs(sample_variance - variance) <= _Z * se_variance)


_PATHS = 2000


@pytest.mark.usefixtures("_x64")
def test_gbm_moments_monte_carlo():
    r"""The strong solution at independent draws of $W_t \sim N(0, t - t_0)$ has the
    stated mean and variance (`exact` is this function of a path's $W_t$)."""
    problem = problems.get("geometric_brownian_motion")
    ts = jnp.array([0.25, 0.5, 1.0])
    shape = (_PATHS, ts.size) + problem.brownian_shape
    scale = np.sqrt(np.asarray(ts) - problem.t0)[:, None]
    w = scale * np.random.default_rng(5).standard_normal(shape)
    strong = jax.vmap(problem.strong_solution, in_axes=(0, None, None, None, 0))
    sample = jax.vmap(lambda w: strong(ts, problem.t0, problem.y0, problem.args, w))
    _assert_moments(np.asarray(sample(w)), problem.mean(ts), problem.variance(ts))


@pytest.mark.usefixtures("_x64")
def test_ou_moments_monte_carlo():
    """ShARK (for additive noise) at dt = 1/64: its weak error, O((theta dt)^2) ~ 1e-3,
    is far below the standard errors (~2% with 2000 paths)."""
    problem = problems.get("ornstein_uhlenbeck")
    ts = jnp.array([0.25, 0.5, 1.0])
    keys = jr.split(jr.key(6), _PATHS)

    @jax.jit
    @jax.vmap
    def sample(key):
        # Fixed steps need no tree: fresh increments per step are exact and cheap.
        bm = diffrax.UnsafeBrownianPath(
            problem.brownian_shape, key, levy_area=diffrax.SpaceTimeLevyArea
        )
        sol = diffrax.diffeqsolve(
            problem.terms(bm),
            diffrax.ShARK(),
            problem.t0,
            problem.t1,
            2.0**-6,
            problem.y0,
            problem.args,
            saveat=diffrax.SaveAt(ts=ts),
            adjoint=diffrax.ForwardMode(),  # the one `UnsafeBrownianPath` allows
        )
        return sol.ys

    _assert_moments(np.asarray(sample(keys)), problem.mean(ts), problem.variance(ts))
    np.testing.assert_allclose(problem.mean(problem.t0), problem.y0)
    np.testing.assert_allclose(problem.variance(problem.t0), 0.0)


def test_numerical_reference_needs_x64(_x32):
    problem = problems.get("lorenz")
    with pytest.raises(RuntimeError, match="jax_enable_x64"):
        problem.reference(_ts(problem))
    closed_form = problems.get("harmonic_oscillator")
    assert closed_form.reference(_ts(closed_form)).dtype == jnp.float32


@pytest.mark.usefixtures("_x64")
def test_reference_is_cached_on_everything_it_depends_on(monkeypatch):
    calls = []

    def counting(problem, ts):
        calls.append(problem.name)
        return solve(problem, ts)

    solve = base._solve_reference
    monkeypatch.setattr(base, "_solve_reference", counting)
    problem = problems.get("lorenz")
    ts = jnp.linspace(0.0, 0.5, 6)  # same shape as `_ts`: no recompilation
    first = problem.reference(ts)
    np.testing.assert_array_equal(problems.get("lorenz").reference(ts), first)
    assert calls == ["lorenz"]
    rho = eqx.tree_at(lambda p: p.args["rho"], problem, jnp.asarray(27.0))
    assert not np.allclose(rho.reference(ts)[-1], first[-1])
    assert calls == ["lorenz", "lorenz"]


@pytest.mark.usefixtures("_x64")
def test_bad_calls_raise():
    lorenz = problems.get("lorenz")
    with pytest.raises(ValueError, match="lie in"):
        lorenz.reference(jnp.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="one-dimensional"):
        lorenz.reference(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="no single reference"):
        problems.get("geometric_brownian_motion").reference(jnp.array([0.0]))
    with pytest.raises(ValueError, match="no closed-form strong solution"):
        ou = problems.get("ornstein_uhlenbeck")
        ou.exact(jnp.array([0.0]), _brownian(ou, jr.key(0), 0.1))
    with pytest.raises(ValueError, match="not stochastic"):
        lorenz.mean(0.0)
    with pytest.raises(ValueError, match="pass a Brownian path"):
        problems.get("ornstein_uhlenbeck").terms()
