"""odelab's stochastic samplers reproduce diffusers' DDIM with eta > 0 and
SDE-DPM-Solver++(2M) when fed the same per-step noise.

The reference outputs, and the standard normals diffusers was given as each step's
`variance_noise`, were written by diffusers itself (`make_diffusers_reference.py`,
version stored in the fixture), so this runs without the `peers` extra. odelab takes
the normals through `sample_sde(..., noise=...)`: its solvers use the Brownian
increment of each step divided by $\\sqrt{|\\Delta t|}$ as the step's normal, and
`GridNoisePath` makes that the given row. diffusers' last step goes to $\\sigma = 0$
(the final denoising, `final_denoise=True`), where its noise is multiplied by zero
(DDIM: variance $(1 - \\bar\\alpha_{prev})/\\ldots = 0$ with `set_alpha_to_one`;
SDE-DPM-Solver++: $\\sigma_t = 0$), so odelab gets all rows but the last.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import VPDiscrete
from odelab.diffusion.analytic import GaussianMixture
from odelab.diffusion.sde import GridNoisePath, sample_sde


REF = np.load(pathlib.Path(__file__).with_name("diffusers_stochastic_reference.npz"))
CASES = [tuple(c.split("|")) for c in REF["cases"]]


def _model():
    sched = VPDiscrete.ddpm_linear()
    mix = GaussianMixture(
        jnp.asarray(REF["means"], jnp.float32),
        jnp.asarray(REF["stds"], jnp.float32),
        jnp.asarray(REF["weights"], jnp.float32),
    )
    return (lambda x, t: mix.eps(x, t, sched)), sched


@pytest.mark.parametrize("index", range(len(CASES)), ids=["-".join(c) for c in CASES])
def test_matches_diffusers(index):
    sampler, eta, spacing, steps = CASES[index]
    model, sched = _model()
    # One row per odelab step: diffusers' last (noise-free) step is the final denoise.
    noise = np.swapaxes(REF[f"noise{index}"][:-1], 0, 1)

    def one(x, z):
        return sample_sde(
            model,
            x,
            sched,
            noise=z,
            sampler=sampler,
            eta=float(eta),
            steps=int(steps),
            grid=spacing,
        )

    got = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(REF["x_t"]), noise))
    want = REF[f"case{index}"]
    # float32 on both sides, different arithmetic order, as in
    # `test_diffusers_parity.py` (|x| ~ 3): a few 1e-6 of the data's scale. A wrong
    # coefficient, or noise from the wrong step, shows at 1e-2 or more.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_noise_selects_the_sample():
    # A unit change of one row moves the sample: the rows are used, not a key.
    model, sched = _model()
    x = jnp.asarray(REF["x_t"][0])
    run = jax.jit(
        lambda z: sample_sde(
            model, x, sched, noise=z, sampler="ddim_eta", steps=5, grid="leading"
        )
    )
    z = jnp.zeros((4, x.shape[0]), jnp.float32)
    assert float(jnp.max(jnp.abs(run(z) - run(z.at[1].set(1.0))))) > 1e-3


def test_grid_noise_path_increments():
    ts = jnp.array([2.0, 0.5, 0.0])
    normals = jnp.array([[1.0], [-2.0]])
    path = GridNoisePath(ts, normals)
    # Any sub-interval of cell k, normalised, gives normals[k].
    for a, b, k in ((0.5, 2.0, 0), (0.7, 0.9, 0), (0.0, 0.5, 1), (0.1, 0.2, 1)):
        z = path.evaluate(a, b) / np.sqrt(b - a)
        np.testing.assert_allclose(z, normals[k], rtol=1e-6)
    # Whole cells add up as a Brownian path: W(0) - W(2) over both cells.
    want = -(1.0 * np.sqrt(1.5) + -2.0 * np.sqrt(0.5))
    np.testing.assert_allclose(path.evaluate(2.0, 0.0), want, rtol=1e-6)
    np.testing.assert_allclose(path.evaluate(0.0) - path.evaluate(2.0), want, rtol=1e-6)


def test_noise_argument_errors():
    model, sched = _model()
    x = jnp.asarray(REF["x_t"][0])
    with pytest.raises(ValueError, match="one row per step"):
        sample_sde(
            model,
            x,
            sched,
            noise=jnp.zeros((5, 8)),
            sampler="ddim_eta",
            steps=5,
            grid="leading",
        )
    with pytest.raises(ValueError, match="`noise` is taken by"):
        sample_sde(model, x, sched, noise=jnp.zeros((5, 8)), sampler="pc_langevin")
    with pytest.raises(ValueError, match="needs `key`"):
        sample_sde(model, x, sched, sampler="ddim_eta")
    with pytest.raises(ValueError, match="one row per cell"):
        GridNoisePath(jnp.array([1.0, 0.0]), jnp.zeros((2, 3)))
