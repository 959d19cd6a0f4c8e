r"""Embedded datasets, generated in code from a PRNG key: nothing is downloaded or read.

- time series as a `Dataset`: `spirals` (a linear 2-D ODE, two directions),
  `irregular_series` (damped oscillators at irregular times, with missing values),
  `irregular_spirals` (the spirals at irregular times, with missing values);
- exact stochastic-process paths with their exact moments, to compare a neural SDE
  against: `ou_process` (`ou_moments`, `ou_covariance`, `ou_stationary_covariance`)
  and `gbm_process` (`gbm_moments`);
- 2-D densities as samples of shape `(n, 2)`: `moons`, `eight_gaussians`,
  `checkerboard`, `swiss_roll`, as in the FFJORD and flow-matching literature;
- `digits`: scikit-learn's bundled 8×8 digits (needs `scikit-learn`);
- `split`, `batches` (one shuffled epoch) and `sample_batch` (one random batch, jittable);
  `split_times` (context and target points of each series, for interpolation or
  extrapolation).

Every generator is a pure function of its key and arguments. Floats come in JAX's
default float dtype (float32, or float64 under `jax_enable_x64`), labels as int32.

```python
import jax.random as jr
import odelab.data

data = odelab.data.spirals(jr.key(0))
train, val = odelab.data.split(data, 0.2, jr.key(1))
batch = odelab.data.sample_batch(train, 32, jr.key(2))  # batch.ys: (32, 20, 2)
```
"""

from .base import (
    Dataset as Dataset,
    batches as batches,
    sample_batch as sample_batch,
    split as split,
)
from .densities import (
    checkerboard as checkerboard,
    digits as digits,
    eight_gaussians as eight_gaussians,
    moons as moons,
    swiss_roll as swiss_roll,
)
from .processes import (
    gbm_moments as gbm_moments,
    gbm_process as gbm_process,
    ou_covariance as ou_covariance,
    ou_moments as ou_moments,
    ou_process as ou_process,
    ou_stationary_covariance as ou_stationary_covariance,
)
from .series import (
    irregular_series as irregular_series,
    irregular_spirals as irregular_spirals,
    spirals as spirals,
    split_times as split_times,
)
