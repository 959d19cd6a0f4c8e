"""odelab reproduces diffusers' DDIM, DPM-Solver++(2M/3M) and UniPC on the same model.

The reference outputs were written by diffusers itself
(`make_diffusers_reference.py`, version stored in the fixture), so this runs without
the `peers` extra. The model is an 8-D Gaussian mixture's exact noise prediction
(torch on diffusers' side, JAX here), both float32.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odelab.diffusion import VPDiscrete
from odelab.diffusion.analytic import GaussianMixture
from odelab.diffusion.sampling import sample
from odelab.diffusion.schedules import diffusers_timesteps


REF = np.load(pathlib.Path(__file__).with_name("diffusers_reference.npz"))
CASES = [tuple(c.split("|")) for c in REF["cases"]]
OPTIONS = {
    "unipc_bh1": ("unipc", {"variant": "bh1"}),
    "unipc3": ("unipc", {"order": 3}),
    "deis2": ("deis", {"order": 2}),
}


@pytest.mark.parametrize("index", range(len(CASES)), ids=["-".join(c) for c in CASES])
def test_matches_diffusers(index):
    name, spacing, steps = CASES[index]
    sampler, options = OPTIONS.get(name, (name, {}))
    sched = VPDiscrete.ddpm_linear()
    mix = GaussianMixture(
        jnp.asarray(REF["means"], jnp.float32),
        jnp.asarray(REF["stds"], jnp.float32),
        jnp.asarray(REF["weights"], jnp.float32),
    )
    model = lambda x, t: mix.eps(x, t, sched)  # noqa: E731
    run = jax.jit(
        jax.vmap(
            lambda x: sample(
                model,
                x,
                sched,
                sampler=sampler,
                steps=int(steps),
                grid=spacing,
                sampler_options=options,
                final_denoise=bool(REF["final_denoise"][index]),
            )
        )
    )
    got = np.asarray(run(jnp.asarray(REF["x_t"])))
    want = REF[f"case{index}"]
    # float32 on both sides, different arithmetic order: agreement to a few 1e-6 of
    # the data's scale (|x| ~ 3). A wrong coefficient anywhere shows at 1e-3 or more.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_timesteps_match_diffusers_conventions():
    # Values printed by diffusers 0.42 (DPMSolverMultistep / DDIM, 1000 train steps).
    np.testing.assert_array_equal(
        diffusers_timesteps(5, "linspace"), [999, 799, 599, 400, 200]
    )
    np.testing.assert_array_equal(
        diffusers_timesteps(5, "leading", steps_offset=1), [831, 665, 499, 333, 167]
    )
    np.testing.assert_array_equal(
        diffusers_timesteps(5, "trailing"), [999, 799, 599, 399, 199]
    )
    np.testing.assert_array_equal(
        diffusers_timesteps(5, "leading", scheduler="ddim"), [800, 600, 400, 200, 0]
    )
    with pytest.raises(ValueError, match="not a solve on a time grid"):
        diffusers_timesteps(5, "linspace", scheduler="ddim")
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        diffusers_timesteps(5, "uniform")
