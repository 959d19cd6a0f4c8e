r"""A zoo of test problems with trusted reference solutions.

Every problem is a `Problem`: a vector field, an initial value, a time span, parameters
`args` (JAX arrays, so gradients with respect to them can be taken), flags (`stiff`,
`semilinear`, `stochastic`) and what is known about its solution:

- `"closed_form"`: an exact solution (`exponential_decay`, `linear_system`,
  `harmonic_oscillator`; for the SDE `geometric_brownian_motion`, the exact strong
  solution along a given Brownian path);
- `"numerical"`: a float64 diffrax solve at tight tolerance, computed on first use and
  cached (`lotka_volterra`, `lorenz`, `van_der_pol`, the stiff `van_der_pol_stiff`,
  `robertson`, `hires`, and the semilinear PDEs `brusselator`, `allen_cahn`,
  `kuramoto_sivashinsky`);
- `"moments"`: exact mean and variance of an SDE (`ornstein_uhlenbeck`).

Semilinear problems split $f(t, y) = L y + N(t, y)$ (`linear`, `nonlinear`) for
exponential integrators. SDEs carry `diffusion` and a `noise` convention matching
`diffrax.ControlTerm`; `Problem.terms(bm)` builds the diffrax terms.

```python
import jax
import diffrax
import odelab.problems

jax.config.update("jax_enable_x64", True)  # numerical references need float64
problem = odelab.problems.get("van_der_pol")
ts = jax.numpy.linspace(problem.t0, problem.t1, 11)
sol = diffrax.diffeqsolve(
    problem.terms(), diffrax.Tsit5(), problem.t0, problem.t1, None, problem.y0,
    problem.args, saveat=diffrax.SaveAt(ts=ts),
    stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
)
error = jax.numpy.max(jax.numpy.abs(sol.ys - problem.reference(ts)))
```

`odelab.problems.names()` lists the problems; `odelab.problems.get(name)` builds one.
"""

from .base import Problem as Problem, apply_linear as apply_linear
from .ode import (
    exponential_decay as exponential_decay,
    harmonic_oscillator as harmonic_oscillator,
    linear_system as linear_system,
    lorenz as lorenz,
    lotka_volterra as lotka_volterra,
    van_der_pol as van_der_pol,
)
from .pde import (
    allen_cahn as allen_cahn,
    brusselator as brusselator,
    kuramoto_sivashinsky as kuramoto_sivashinsky,
)
from .registry import ALL as ALL, get as get, names as names
from .sde import (
    geometric_brownian_motion as geometric_brownian_motion,
    ornstein_uhlenbeck as ornstein_uhlenbeck,
)
from .stiff import (
    HIRES_T1_SOLUTION as HIRES_T1_SOLUTION,
    hires as hires,
    robertson as robertson,
    van_der_pol_stiff as van_der_pol_stiff,
)
