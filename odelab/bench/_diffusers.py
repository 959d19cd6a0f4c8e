"""diffusers' samplers on an analytic Gaussian-mixture model (the peer side of
`odelab bench samplers` and of the parity fixtures in `tests/diffusion`).

Needs the `peers` extra (torch, diffusers). The model is the mixture's exact
noise prediction written in torch, so that diffusers runs at its native speed.
"""

import time

import numpy as np


SCHEDULERS = {
    # name: (diffusers class name, config)
    # DDIM's default clips the predicted x0 to [-1, 1] (an image prior, not the ODE).
    "ddim": ("DDIMScheduler", {"clip_sample": False}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2}),
    # bh1 with the default final_sigmas_type="zero" returns NaN in diffusers 0.42
    # (B(h) = h = -inf times a zero residual at the step to sigma = 0).
    "unipc_bh1": (
        "UniPCMultistepScheduler",
        {"solver_order": 2, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    ),
    "unipc3": ("UniPCMultistepScheduler", {"solver_order": 3}),
    "dpm_singlestep": ("DPMSolverSinglestepScheduler", {"solver_order": 2}),
    "deis": ("DEISMultistepScheduler", {"solver_order": 3}),
    "deis2": ("DEISMultistepScheduler", {"solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
"""diffusers schedulers by the name of odelab's counterpart (where it has one)."""

ENDS_AT_SIGMA_MIN = ("unipc_bh1", "deis", "deis2")
"""Those whose last step goes to the table's first entry rather than to σ = 0 (DEIS
always; UniPC-bh1 as configured above)."""


def torch_mixture_eps(means, stds, weights, alphas_cumprod):
    """`eps(x, timestep)` of a Gaussian mixture in torch (float32), for a batch."""
    import torch

    mu = torch.as_tensor(np.asarray(means, np.float32))
    s2 = torch.as_tensor(np.asarray(stds, np.float32)) ** 2
    logw = torch.log(torch.as_tensor(np.asarray(weights, np.float32)))
    acp = np.asarray(alphas_cumprod, np.float64)
    log_sigma_bar = 0.5 * np.log((1 - acp) / acp)
    d = mu.shape[1]
    musq = (mu**2).sum(-1)

    def eps(x, timestep):
        # Fractional timesteps (Euler, Heun) interpolate log(sigma/alpha) as diffusers'
        # `_sigma_to_t` does; integer ones read the table.
        t = float(timestep)
        lo = min(int(np.floor(t)), acp.size - 2)
        w = t - lo
        sb = float(np.exp((1 - w) * log_sigma_bar[lo] + w * log_sigma_bar[lo + 1]))
        alpha = 1.0 / (1.0 + sb**2) ** 0.5
        sigma = sb * alpha
        var = alpha**2 * s2 + sigma**2  # (K,)
        # The same algebra as odelab's GaussianMixture (matrix products).
        sq = (x**2).sum(-1, keepdim=True) - 2 * alpha * x @ mu.T + alpha**2 * musq
        logits = logw - 0.5 * d * torch.log(var) - 0.5 * sq.clamp(min=0) / var
        w = torch.softmax(logits, dim=-1)  # (B, K)
        gain = alpha * s2 / var
        den = (w * (1 - alpha * gain)) @ mu + (w * gain).sum(-1, keepdim=True) * x
        return (x - alpha * den) / sigma

    return eps


def run(name, eps, x_t, steps, *, spacing=None, beta=(1e-4, 0.02), train_steps=1000):
    """Sample with diffusers' scheduler `name` from `x_t` (NumPy, (B, d));
    returns `(x_0, nfe, seconds)`."""
    import diffusers
    import torch

    cls_name, config = SCHEDULERS[name]
    config = dict(config)
    if spacing is not None:
        config["timestep_spacing"] = spacing
    scheduler = getattr(diffusers, cls_name)(
        num_train_timesteps=train_steps,
        beta_start=beta[0],
        beta_end=beta[1],
        beta_schedule="linear",
        **config,
    )
    start = time.perf_counter()
    scheduler.set_timesteps(steps)
    x = torch.as_tensor(np.asarray(x_t, np.float32)) * scheduler.init_noise_sigma
    nfe = 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            # Schedulers in sigma space (Euler, Heun) scale x by 1/sqrt(sigma²+1)
            # so the eps model sees the VP state, as it was trained.
            out = eps(inp, float(t))
            nfe += 1
            x = scheduler.step(out, t, x).prev_sample
    seconds = time.perf_counter() - start
    return x.numpy(), nfe, seconds
