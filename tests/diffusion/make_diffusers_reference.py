"""Write `diffusers_reference.npz`: diffusers' DDIM, DPM-Solver++(2M/3M) and UniPC
outputs on an 8-D Gaussian mixture (the fixture of `test_diffusers_parity.py`), and
`diffusers_stochastic_reference.npz`: its DDIM with eta > 0 and SDE-DPM-Solver++(2M)
on the same mixture, with the noise fed to each step (the fixture of
`test_diffusers_stochastic_parity.py`).

Needs the `peers` extra. Run from the repository root:
`python tests/diffusion/make_diffusers_reference.py [deterministic|stochastic]`
(both by default).
"""

import pathlib
import sys

import diffusers
import numpy as np

from odelab.bench import _diffusers


CASES = [
    # (odelab sampler, diffusers name, spacing, steps)
    *[("ddim", "ddim", sp, n) for sp in ("leading", "trailing") for n in (5, 10, 20)],
    *[
        ("dpmpp_2m", "dpmpp_2m", sp, n)
        for sp in ("linspace", "leading", "trailing")
        for n in (5, 10, 20)
    ],
    *[("dpmpp_3m", "dpmpp_3m", "linspace", n) for n in (5, 10, 20)],
    *[
        ("unipc", "unipc", sp, n)
        for sp in ("linspace", "trailing")
        for n in (5, 10, 20)
    ],
    *[("unipc_bh1", "unipc_bh1", "linspace", n) for n in (5, 10)],
    *[("unipc3", "unipc3", "linspace", n) for n in (5, 10, 20)],
    *[("deis", "deis", sp, n) for sp in ("linspace", "trailing") for n in (5, 10, 20)],
    *[("deis2", "deis2", "linspace", n) for n in (5, 10)],
]


STOCHASTIC_CASES = [
    # (odelab sampler, eta, spacing, steps)
    *[("ddim_eta", eta, "leading", n) for eta in (0.5, 1.0) for n in (5, 10)],
    *[("dpmpp_2m_sde", 1.0, sp, n) for sp in ("linspace", "trailing") for n in (5, 10)],
]
STOCHASTIC_BATCH = 4


def mixture():
    """The 8-D mixture, the starting noise of 16 samples and diffusers' eps model."""
    rng = np.random.default_rng(0)
    k, d, batch = 8, 8, 16
    means = 2.0 * rng.standard_normal((k, d))
    stds = np.full(k, 0.3)
    weights = np.full(k, 1.0 / k)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    acp = np.cumprod(1.0 - betas)
    x_t = rng.standard_normal((batch, d)).astype(np.float32)
    eps = _diffusers.torch_mixture_eps(means, stds, weights, acp)
    return dict(means=means, stds=stds, weights=weights, x_t=x_t), eps


def run_stochastic(sampler, eta, spacing, steps, eps, x_t, noise):
    """diffusers' stochastic scheduler for `sampler`, fed `noise[i]` as step i's
    `variance_noise`; returns x_0."""
    import torch

    config = dict(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        timestep_spacing=spacing,
    )
    if sampler == "ddim_eta":
        scheduler = diffusers.DDIMScheduler(clip_sample=False, **config)
        kwargs = dict(eta=eta)
    else:
        scheduler = diffusers.DPMSolverMultistepScheduler(
            solver_order=2, algorithm_type="sde-dpmsolver++", **config
        )
        kwargs = {}
    scheduler.set_timesteps(steps)
    assert len(scheduler.timesteps) == steps == noise.shape[0]
    x = torch.as_tensor(x_t) * scheduler.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            out = eps(scheduler.scale_model_input(x, t), float(t))
            z = torch.as_tensor(noise[i])
            x = scheduler.step(out, t, x, variance_noise=z, **kwargs).prev_sample
    return x.numpy()


def stochastic():
    base, eps = mixture()
    x_t = base["x_t"][:STOCHASTIC_BATCH]
    rng = np.random.default_rng(1)
    out = dict(base, x_t=x_t)
    names = []
    for i, (sampler, eta, spacing, steps) in enumerate(STOCHASTIC_CASES):
        noise = rng.standard_normal((steps, *x_t.shape)).astype(np.float32)
        out[f"case{i}"] = run_stochastic(sampler, eta, spacing, steps, eps, x_t, noise)
        out[f"noise{i}"] = noise
        names.append(f"{sampler}|{eta}|{spacing}|{steps}")
    out["cases"] = np.array(names)
    out["diffusers_version"] = np.array(diffusers.__version__)
    path = pathlib.Path(__file__).with_name("diffusers_stochastic_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {len(STOCHASTIC_CASES)} cases to {path}")


def deterministic():
    out, eps = mixture()
    x_t = out["x_t"]
    names = []
    for i, (ours, theirs, spacing, steps) in enumerate(CASES):
        x0, nfe, _ = _diffusers.run(theirs, eps, x_t, steps, spacing=spacing)
        assert nfe == steps
        out[f"case{i}"] = x0
        names.append(f"{ours}|{spacing}|{steps}")
    out["final_denoise"] = np.array(
        [c[1] not in _diffusers.ENDS_AT_SIGMA_MIN for c in CASES]
    )
    out["cases"] = np.array(names)
    out["diffusers_version"] = np.array(diffusers.__version__)
    path = pathlib.Path(__file__).with_name("diffusers_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {len(CASES)} cases to {path}")


if __name__ == "__main__":
    which = sys.argv[1:] or ["deterministic", "stochastic"]
    for name in which:
        {"deterministic": deterministic, "stochastic": stochastic}[name]()
