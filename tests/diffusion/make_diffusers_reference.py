"""Write `diffusers_reference.npz`: diffusers' DDIM, DPM-Solver++(2M/3M) and UniPC
outputs on an 8-D Gaussian mixture (the fixture of `test_diffusers_parity.py`).

Needs the `peers` extra. Run from the repository root:
`python tests/diffusion/make_diffusers_reference.py`.
"""

import pathlib

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


def main():
    rng = np.random.default_rng(0)
    k, d, batch = 8, 8, 16
    means = 2.0 * rng.standard_normal((k, d))
    stds = np.full(k, 0.3)
    weights = np.full(k, 1.0 / k)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    acp = np.cumprod(1.0 - betas)
    x_t = rng.standard_normal((batch, d)).astype(np.float32)
    eps = _diffusers.torch_mixture_eps(means, stds, weights, acp)
    out = dict(means=means, stds=stds, weights=weights, x_t=x_t)
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
    main()
