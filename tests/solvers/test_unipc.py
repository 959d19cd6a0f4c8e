"""UniPC and the DPM-Solver++ options of ExponentialAdams: measured orders, L = 0,
variable steps, gradients, errors."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.solvers import ExponentialAdams, UniPC
from odelab.terms import SemilinearTerm
from tests.helpers import ORDER_SLACK, check_grad, convergence_order
from tests.solvers.test_exponential import _exact, _term


def _order(solver, counts=(20, 40, 80, 160, 320)):
    term = _term("scalar")

    @jax.jit
    def final(dt):
        sol = diffrax.diffeqsolve(term, solver, 0.0, 1.0, dt, _exact(0.0), None)
        return sol.ys[-1]

    measured, _ = convergence_order(
        lambda n: final(1.0 / n), _exact(1.0), np.asarray(counts)
    )
    return measured


@pytest.mark.x64
@pytest.mark.parametrize(
    "solver, order",
    [
        (UniPC(1), 2),  # UniP-1 + UniC-1: the corrector adds one order
        (UniPC(2), 3),
        (UniPC(2, variant="bh1"), 3),
        (UniPC(1, corrector=False), 1),
        (UniPC(2, corrector=False), 2),
        (ExponentialAdams(2, start="lower_order", second_order="midpoint"), 2),
        (ExponentialAdams(2, start="lower_order"), 2),
        # DPM-Solver++(3M)'s weight for the second difference is half the exact
        # one: second order even from an exact (ETDRK4) start.
        (ExponentialAdams(3, third_order="dpmpp"), 2),
        (ExponentialAdams(3), 3),
    ],
    ids=repr,
)
def test_orders(solver, order):
    measured = _order(solver)
    assert abs(measured - order) <= ORDER_SLACK, measured


@pytest.mark.x64
def test_unipc3_with_corrector_is_at_least_third_order():
    # UniP-3 with UniC-3 would be 4th order, but the warm-up steps (orders 1 and 2,
    # each corrected) limit it to 3; the fitted slope lies between.
    measured = _order(UniPC(3), counts=(40, 80, 160, 320, 640))
    assert 3 - ORDER_SLACK <= measured <= 4 + ORDER_SLACK, measured


@pytest.mark.x64
def test_unipc_keeps_its_order_on_variable_steps():
    term = _term("scalar")

    def final(n):
        base = np.linspace(0.0, 1.0, n + 1)
        grid = base + 0.27 * np.sin(np.pi * base) / n
        sol = diffrax.diffeqsolve(
            term,
            UniPC(2),
            0.0,
            1.0,
            None,
            _exact(0.0),
            None,
            stepsize_controller=diffrax.StepTo(ts=jnp.asarray(grid)),
        )
        return sol.ys[-1]

    measured, _ = convergence_order(final, _exact(1.0), np.asarray([20, 40, 80, 160]))
    assert abs(measured - 3) <= ORDER_SLACK, measured


@pytest.mark.x64
def test_unipc_with_zero_linear_part_is_a_classical_multistep_pc():
    # L = 0: UniPC-1 with its corrector is Euler predictor + trapezoidal corrector
    # (the corrected state at t_n uses (N_{n-1} + N_n)/2), i.e. a PECE scheme.
    def nonlinear(t, y, args):
        return jnp.cos(t) * y

    term = SemilinearTerm(jnp.asarray(0.0), nonlinear)
    h, y0 = 0.1, jnp.asarray(1.0)
    sol = diffrax.diffeqsolve(
        term, UniPC(1), 0.0, 3 * h, h, y0, None, saveat=diffrax.SaveAt(steps=True)
    )
    f = nonlinear
    p1 = y0 + h * f(0.0, y0, None)
    c1 = y0 + h / 2 * (f(0.0, y0, None) + f(h, p1, None))
    p2 = c1 + h * f(h, p1, None)
    c2 = c1 + h / 2 * (f(h, p1, None) + f(2 * h, p2, None))
    p3 = c2 + h * f(2 * h, p2, None)
    np.testing.assert_allclose(sol.ys[:3], jnp.stack([p1, p2, p3]), rtol=1e-12)


@pytest.mark.x64
@pytest.mark.parametrize("solver", [UniPC(2), UniPC(3)], ids=repr)
def test_gradients_match_finite_differences(solver):
    term = _term("scalar")

    def loss(inputs):
        y0, scale = inputs
        sol = diffrax.diffeqsolve(term, solver, 0.0, 1.0, 0.1, y0 * scale, None)
        return jnp.sum(sol.ys[-1] ** 2)

    check_grad(loss, (_exact(0.0), jnp.asarray(1.1)))


def test_errors():
    with pytest.raises(ValueError, match="order 1, 2 or 3"):
        UniPC(4)
    with pytest.raises(ValueError, match="'bh1' or 'bh2'"):
        UniPC(2, variant="bh3")
    with pytest.raises(ValueError, match="third_order"):
        ExponentialAdams(3, third_order="taylor")
    term = SemilinearTerm(jnp.array([-1.0, -2.0]), lambda t, y, a: -y)
    with pytest.raises(ValueError, match="scalar linear part"):
        diffrax.diffeqsolve(term, UniPC(2), 0.0, 1.0, 0.1, jnp.ones(2), None)
    with pytest.raises(TypeError, match="SemilinearTerm"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -y), UniPC(2), 0.0, 1.0, 0.1, 1.0, None
        )
