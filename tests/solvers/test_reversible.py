"""Tests of `odelab.solvers.reversible`: orders, exact inverse steps, bad input."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
import odelab.problems
from odelab.solvers import (
    BDIA,
    EDICT,
    MALI,
    RK4,
    ReversibleHeun,
    ReversibleRK,
    amplification_matrix,
)
from tests.helpers import ORDER_SLACK, convergence_order


_T1 = 2.0
_Y0 = (0.2, 1.0)
_ARGS = (1.5, 2.0)


def _field(t, y, args):
    """Logistic growth and a periodically forced rate: nonlinear and non-autonomous."""
    r, w = args[0], args[1]
    return jnp.stack([r * y[0] * (1 - y[0]), jnp.cos(w * t) * y[1]])


def _exact(t):
    r, w = _ARGS
    logistic = 1 / (1 + (1 / _Y0[0] - 1) * np.exp(-r * t))
    forced = _Y0[1] * np.exp(np.sin(w * t) / w)
    return np.stack([logistic, forced], axis=-1)


# (solver, declared order, step counts in the asymptotic regime)
ORDER_CASES = [
    (ReversibleHeun(), 2, [100, 200, 400, 800]),
    (BDIA(), 2, [100, 200, 400, 800]),
    (BDIA(gamma=0.5), 1, [200, 400, 800, 1600]),
    (BDIA(base=diffrax.Heun(), gamma=0.8), 2, [100, 200, 400, 800]),
    (ReversibleRK(RK4()), 4, [40, 80, 160, 320]),
    (ReversibleRK(diffrax.Heun(), coupling=0.9), 2, [100, 200, 400, 800]),
    (MALI(), 2, [100, 200, 400, 800]),
    (MALI(eta=0.8), 1, [200, 400, 800, 1600]),
    (EDICT(), 1, [200, 400, 800, 1600]),
    (EDICT(base=diffrax.Heun(), p=0.9), 1, [200, 400, 800, 1600]),
]


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, order, counts", ORDER_CASES, ids=lambda v: repr(v)[:40]
)
def test_convergence_order(solver, order, counts):
    @jax.jit
    def final(dt):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_field),
            solver,
            0.0,
            _T1,
            dt,
            jnp.asarray(_Y0),
            jnp.asarray(_ARGS),
            max_steps=4096,
        )
        return sol.ys[-1]

    measured, _ = convergence_order(
        lambda n: final(_T1 / n), _exact(_T1), np.asarray(counts)
    )
    assert abs(measured - order) <= ORDER_SLACK, (measured, order)
    assert solver.order(diffrax.ODETerm(_field)) == order


def _march(solver, problem, n, dtype):
    """n forward steps, then n inverse steps; returns (y0, rebuilt y0, y_n)."""
    prob = odelab.problems.get(problem)
    term = diffrax.ODETerm(prob.vector_field)
    y0 = jnp.asarray(prob.y0, dtype)
    args = jax.tree.map(lambda a: jnp.asarray(a, dtype), prob.args)
    ts = jnp.linspace(prob.t0, prob.t0 + 0.5 * (prob.t1 - prob.t0), n + 1, dtype=dtype)

    def forward(carry, k):
        y, state = carry
        y1, _, _, state1, _ = solver.step(term, ts[k], ts[k + 1], y, args, state, False)
        return (y1, state1), None

    state0 = solver.init(term, ts[0], ts[1], y0, args)
    (y_n, state_n), _ = jax.lax.scan(forward, (y0, state0), jnp.arange(n))

    def backward(carry, k):
        y, state = carry
        t_prev = ts[jnp.maximum(k - 1, 0)]
        y0_, state0_ = solver.backward_step(
            term, t_prev, ts[k], ts[k + 1], y, args, state, k == 0
        )
        return (y0_, state0_), None

    (y_back, _), _ = jax.lax.scan(backward, (y_n, state_n), jnp.arange(n)[::-1])
    return y0, y_back, y_n


# ReversibleRK's inverse divides by the coupling λ every step, so round-off grows
# like λ^-n (e^1 for λ = 0.999 over 1000 steps, e^10 for λ = 0.99), times the growth
# of the problem's own perturbations. Measured (float64, 1000 steps): RK4 base,
# λ = 0.999: harmonic oscillator within 1e-12, Lotka–Volterra 9.8e-12; Tsit5 base,
# λ = 0.99: 5.6e-11 and 1.7e-8. The 1e-12 target of issue #4 is missed where marked.
_MISSES_1E12 = pytest.mark.xfail(
    strict=True, reason="round-off grows like coupling^-n in ReversibleRK's inverse"
)
_MISSES_EDICT = pytest.mark.xfail(
    strict=True, reason="EDICT's inverse amplifies x - y round-off by p^-2 per step"
)
_BOTH = ("lotka_volterra", "harmonic_oscillator")
INVERSE_CASES = [
    *[pytest.param(ReversibleHeun(), 1000, p, id=f"rheun-{p}") for p in _BOTH],
    *[pytest.param(BDIA(), 1000, p, id=f"bdia-{p}") for p in _BOTH],
    *[
        pytest.param(BDIA(base=diffrax.Heun()), 1000, p, id=f"bdia_heun-{p}")
        for p in _BOTH
    ],
    *[pytest.param(MALI(), 1000, p, id=f"mali-{p}") for p in _BOTH],
    # EDICT's inverse amplifies the x - y difference by p^-2 per step: a sampler's
    # tens of steps, not thousands (p^-2000 overflows for p = 0.93).
    # Measured over 50 steps: harmonic oscillator within 1e-12, Lotka–Volterra 9e-11.
    pytest.param(EDICT(), 50, "harmonic_oscillator", id="edict-ho"),
    pytest.param(EDICT(), 50, "lotka_volterra", id="edict-lv", marks=_MISSES_EDICT),
    pytest.param(ReversibleRK(RK4()), 1000, "harmonic_oscillator", id="rrk4-ho"),
    pytest.param(
        ReversibleRK(RK4()), 1000, "lotka_volterra", id="rrk4-lv", marks=_MISSES_1E12
    ),
    *[
        pytest.param(
            ReversibleRK(diffrax.Tsit5(), coupling=0.99),
            1000,
            p,
            id=f"rtsit5_099-{p}",
            marks=_MISSES_1E12,
        )
        for p in _BOTH
    ],
]


@pytest.mark.x64
@pytest.mark.parametrize("solver, n, problem", INVERSE_CASES)
def test_inverse_steps_rebuild_the_start(solver, n, problem):
    y0, y_back, y_n = _march(solver, problem, n, jnp.float64)
    assert float(jnp.max(jnp.abs(y_n - y0))) > 1e-3  # it really moved
    rel = float(jnp.max(jnp.abs(y_back - y0)) / jnp.max(jnp.abs(y0)))
    assert rel <= 1e-12, rel


def test_float32_drift_is_round_off():
    # Reported in the issue note: float32 inversion over 1000 steps drifts by
    # round-off times a modest growth factor, not by truncation error.
    for solver in (ReversibleHeun(), BDIA(), ReversibleRK(RK4()), MALI()):
        y0, y_back, _ = _march(solver, "lotka_volterra", 1000, jnp.float32)
        rel = float(jnp.max(jnp.abs(y_back - y0)) / jnp.max(jnp.abs(y0)))
        assert rel <= 1e-3, (solver, rel)


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="0 < gamma <= 1"):
        BDIA(gamma=0.0)
    with pytest.raises(ValueError, match="eta != 0.5"):
        MALI(eta=0.5)
    with pytest.raises(ValueError, match="0 < coupling <= 1"):
        ReversibleRK(RK4(), coupling=1.5)
    with pytest.raises(ValueError, match="explicit"):
        BDIA(base=diffrax.ImplicitEuler())
    with pytest.raises(ValueError, match="0 < p <= 1"):
        EDICT(p=0.0)


def test_names_and_declaration():
    for name in ["reversible_heun", "bdia", "reversible_rk4", "mali", "edict"]:
        assert odelab.solvers.is_reversible(odelab._names.ODE_SOLVERS[name]())
    assert not odelab.solvers.is_reversible(diffrax.Tsit5())


def _rho(solver, z):
    return float(
        np.max(np.abs(np.linalg.eigvals(np.asarray(amplification_matrix(solver, z)))))
    )


@pytest.mark.x64
@pytest.mark.parametrize("solver", [ReversibleHeun(), BDIA(), MALI()], ids=repr)
def test_undamped_methods_are_stable_only_on_the_imaginary_axis(solver):
    for y in (0.25, 0.5, 0.9):
        assert _rho(solver, 1j * y) <= 1 + 1e-12
    # Any decay excites a growing parasitic mode: a stability region of zero area.
    for x in (1e-3, 0.1, 1.0):
        assert _rho(solver, -x) > 1 + x / 4
    # Leapfrog's parasitic root at z = -1 is -(1 + sqrt(2)).
    np.testing.assert_allclose(_rho(solver, -1.0), 1 + np.sqrt(2), rtol=1e-12)


@pytest.mark.x64
def test_damping_and_coupling_open_a_left_half_plane_region():
    for solver in (BDIA(gamma=0.5), MALI(eta=0.9), ReversibleRK(RK4(), coupling=0.5)):
        assert _rho(solver, -0.1) < 1
    # The default coupling 0.999 keeps inverse round-off small but is barely damped.
    assert _rho(ReversibleRK(RK4()), -0.1) > 1
    assert _rho(ReversibleRK(RK4()), 1.5j) <= 1 + 1e-12


@pytest.mark.x64
@pytest.mark.parametrize("coupling", [0.5, 0.8, 0.999])
@pytest.mark.parametrize("z", [-0.1, -1.0, 0.3 + 0.7j])
def test_reversible_rk_matches_the_closed_form(coupling, z):
    # From the update rules with Psi_h(x) = R~(z) x, R~ = R - 1 (R: the base's
    # stability function), on (y, z):
    # [[l, 1 - l + R~(z)], [-l R~(-z), 1 - (1 - l) R~(-z) - R~(-z) R~(z)]].
    def r_tilde(x):
        return x + x**2 / 2 + x**3 / 6 + x**4 / 24  # RK4

    lam = coupling
    m = np.array(
        [
            [lam, 1 - lam + r_tilde(z)],
            [
                -lam * r_tilde(-z),
                1 - (1 - lam) * r_tilde(-z) - r_tilde(-z) * r_tilde(z),
            ],
        ]
    )
    expected = np.sort_complex(np.linalg.eigvals(m))
    measured = np.linalg.eigvals(
        np.asarray(amplification_matrix(ReversibleRK(RK4(), coupling), z))
    )
    np.testing.assert_allclose(
        np.sort_complex(measured), expected, rtol=1e-10, atol=1e-12
    )
