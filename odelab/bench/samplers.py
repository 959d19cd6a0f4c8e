"""`odelab bench samplers`: diffusion samplers' error against the exact flow map.

Problem (issue #6): an 8-D mixture of 8 Gaussians (means from N(0, 4I), component std
0.3, equal weights; NumPy seed 0), DDPM's discrete schedule (1000 steps, β linear
1e-4…0.02), 2000 samples from one fixed x_T (seed 1). The model is the mixture's exact
noise prediction, so every error is the sampler's. Reference: the exact probability-
flow map from t = 999 to σ = 0, solved in float64 NumPy (independent of odelab's
solvers) with 2000 classical RK4 steps in s = -λ down to λ = 12 and then denoised
(agreement with 1000 steps is printed).

For NFE ∈ {5, 10, 20, 50}: RMSE over samples and coordinates (the issue's figures for
diffusers are reproduced with it), the median over samples of the per-sample RMS error, the real NFE and the wall time of the whole batch
(median of `--repeats`; compile time separate), for every odelab sampler and grid and,
with the `peers` extra, diffusers' schedulers on the same torch-written model in the
same process (DDIM, DPMSolverMultistep 2M/3M, DPMSolverSinglestep, UniPC, DEIS,
Euler, Heun; their default timestep spacing).

odelab's grids: diffusers' own (its counterpart's default spacing, so the two rows
compute the same thing), and uniform-λ ("logsnr"), Karras and time-quadratic grids from
t = 999 to t = 0 followed by the final denoise. For a sampler with `c` evaluations per
step, the number of steps is the largest that fits in the NFE budget.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..diffusion import VPDiscrete, time_grid
from ..diffusion.analytic import GaussianMixture
from ..diffusion.sampling import SAMPLERS, sample
from ..solvers.nfe import nfe_costs
from ._common import block, median, print_table, write_json


NFES = (5, 10, 20, 50)
ODELAB = [
    # (row name, sampler, sampler_options)
    ("ddim", "ddim", {}),
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_3m", "dpmpp_3m", {}),
    ("unipc", "unipc", {}),
    ("unipc3", "unipc", {"order": 3}),
    ("deis", "deis", {}),
    ("exponential_adams2", "exponential_adams2", {}),
    ("exponential_adams3", "exponential_adams3", {}),
    ("dpmpp_2s", "dpmpp_2s", {}),
    ("dpm_solver_2", "dpm_solver_2", {}),
    ("dpm_solver_3", "dpm_solver_3", {}),
    ("etdrk2", "etdrk2", {}),
    ("etdrk4", "etdrk4", {}),
]
COUNTERPART = {
    "ddim": ("ddim", "leading"),
    "dpmpp_2m": ("dpmpp_2m", "linspace"),
    "dpmpp_3m": ("dpmpp_3m", "linspace"),
    "unipc": ("unipc", "linspace"),
    "unipc3": ("unipc3", "linspace"),
    "deis": ("deis", "linspace"),
}
"""odelab row → (diffusers scheduler, its default timestep spacing)."""
GRIDS = ("logsnr", "karras", "time_quadratic", "time_quadratic_to_lambda2")
"""odelab's own grids, t = 999 → t = 0 (index), then the final denoise; the last one
ends at λ = 2 instead (σ/α = 0.135), where the final denoise's error is ~0.026
and the steps saved go to the middle of the range (the best of a scan of grid
families and end points at NFE 10, see the README)."""


def _grid(sched, grid, steps):
    if grid == "time_quadratic_to_lambda2":
        t_end = float(sched.t_of_lambda(2.0))
        return time_grid(sched, steps, "time_quadratic", t_end=t_end)
    return grid


PEERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "dpm_singlestep", "unipc", "unipc3", "deis")
PEERS_SIGMA = ("euler", "heun")


def problem(samples: int = 2000):
    """(mixture parameters as NumPy, x_T, alphas_cumprod)."""
    rng = np.random.default_rng(0)
    means = 2.0 * rng.standard_normal((8, 8))
    stds = np.full(8, 0.3)
    weights = np.full(8, 1.0 / 8)
    x_t = np.random.default_rng(1).standard_normal((samples, 8)).astype(np.float32)
    acp = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    return (means, stds, weights), x_t, acp


def _model(params, sched):
    means, stds, weights = params
    mix = GaussianMixture(
        jnp.asarray(means, jnp.float32),
        jnp.asarray(stds, jnp.float32),
        jnp.asarray(weights, jnp.float32),
    )
    return lambda x, t: mix.eps(x, t, sched)


def _np_denoiser(params, x, alpha, sigma):
    """The mixture's exact denoiser in float64 NumPy for a batch `x` (B, d)."""
    means, stds, weights = (np.asarray(p, np.float64) for p in params)
    var = alpha**2 * stds**2 + sigma**2  # (K,)
    diff = x[:, None, :] - alpha * means[None]  # (B, K, d)
    logits = (
        np.log(weights)
        - 0.5 * means.shape[1] * np.log(var)
        - 0.5 * np.sum(diff**2, -1) / var
    )
    logits -= logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(-1, keepdims=True)
    post = means[None] + (alpha * stds**2 / var)[None, :, None] * diff
    return np.sum(w[..., None] * post, axis=1)


def exact_flow_map(params, sched, x_t, steps: int = 2000, lam_end: float = 12.0):
    r"""x_T at t_max → σ = 0, in float64 NumPy, independent of odelab's solvers.

    For a VP schedule the probability-flow ODE in $\tilde x = x/\alpha$ and
    $s = -\lambda$ is $d\tilde x/ds = \tilde x - D$ with $\alpha = (1 +
    e^{2s})^{-1/2}$, $\sigma = \alpha e^{s}$: it depends on the schedule only through
    $\lambda(t_{max})$. Classical RK4 with `steps` steps down to λ = `lam_end`, then
    the denoiser (what is left is O(σ²) there, ~1e-10)."""
    s0 = -float(sched.lam(sched.t_max))
    s1 = -lam_end

    def coeffs(s):
        alpha = (1.0 + np.exp(2.0 * s)) ** -0.5
        return alpha, alpha * np.exp(s)

    def f(s, y):
        alpha, sigma = coeffs(s)
        return y - _np_denoiser(params, alpha * y, alpha, sigma)

    y = np.asarray(x_t, np.float64) / coeffs(s0)[0]
    h = (s1 - s0) / steps
    for k in range(steps):
        s = s0 + k * h
        k1 = f(s, y)
        k2 = f(s + h / 2, y + h / 2 * k1)
        k3 = f(s + h / 2, y + h / 2 * k2)
        k4 = f(s + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    alpha, sigma = coeffs(s1)
    return _np_denoiser(params, alpha * y, alpha, sigma)


def _errors(x, ref):
    """RMSE over samples and coordinates, and the median over samples of each
    sample's RMS error over its coordinates (the same scale)."""
    sq = (np.asarray(x, np.float64) - ref) ** 2
    return float(np.sqrt(np.mean(sq))), float(np.median(np.sqrt(np.mean(sq, -1))))


def _fit_steps(sampler, options, nfe, diffusers_grid):
    """(steps argument, real NFE) for a budget of `nfe` evaluations."""
    if diffusers_grid:
        return nfe, nfe
    preset = SAMPLERS[sampler]
    solver = preset.make(None, **options)
    _, first, later = nfe_costs(solver, None)
    best = None
    for n in range(1, nfe + 1):
        total = first + later * (n - 1) + 1  # + the final denoise
        if total <= nfe:
            best = (n, total)
    return best


def _odelab_rows(model, sched, x_t, ref, repeats, only, nfes, grids_only):
    rows = []
    xs = jnp.asarray(x_t)
    for name, sampler, options in ODELAB:
        if only is not None and name not in only:
            continue
        grids = ([COUNTERPART[name][1]] if name in COUNTERPART else []) + list(GRIDS)
        if grids_only is not None:
            grids = [g for g in grids if g in grids_only]
        for grid in grids:
            diffusers_grid = grid in ("linspace", "leading", "trailing")
            for nfe in nfes:
                fit = _fit_steps(sampler, options, nfe, diffusers_grid)
                if fit is None:
                    continue
                steps, real = fit
                if steps < options.get("order", SAMPLERS[sampler].order):
                    continue
                grid_arg = _grid(sched, grid, steps)

                final = None if diffusers_grid else True

                def run_one(
                    x,
                    sampler=sampler,
                    grid_arg=grid_arg,
                    steps=steps,
                    options=options,
                    final=final,
                ):
                    return sample(
                        model,
                        x,
                        sched,
                        sampler=sampler,
                        steps=steps,
                        grid=grid_arg,
                        final_denoise=final,
                        sampler_options=options,
                    )

                fn = jax.jit(jax.vmap(run_one))
                start = time.perf_counter()
                out = block(fn(xs))
                compile_s = time.perf_counter() - start
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    block(fn(xs))
                    times.append(time.perf_counter() - start)
                rmse, med = _errors(out, ref)
                rows.append(
                    dict(
                        family="odelab",
                        sampler=name,
                        grid=grid,
                        nfe=real,
                        rmse=rmse,
                        median_err=med,
                        wall_ms=1e3 * median(times),
                        compile_s=compile_s,
                    )
                )
    return rows


def _diffusers_rows(params, acp, x_t, ref, repeats, only, nfes):
    try:
        import diffusers  # noqa: F401
        import torch
    except ImportError:
        print("diffusers/torch not installed (pip install -e '.[peers]'): no peer rows")
        return []
    from . import _diffusers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    eps = _diffusers.torch_mixture_eps(*params, acp)
    rows = []
    for name in PEERS + PEERS_SIGMA:
        if only is not None and name not in only:
            continue
        for nfe in nfes:
            # Heun evaluates twice per step but its `steps` counts steps.
            steps = (nfe + 1) // 2 if name == "heun" else nfe
            times, out, real = [], None, None
            for _ in range(repeats):
                out, real, seconds = _diffusers.run(name, eps, x_t, steps)
                times.append(seconds)
            rmse, med = _errors(out, ref)
            rows.append(
                dict(
                    family="diffusers",
                    sampler=name,
                    grid="default",
                    nfe=real,
                    rmse=rmse,
                    median_err=med,
                    wall_ms=1e3 * median(times),
                    compile_s=0.0,
                )
            )
    return rows


def _summary(rows):
    lines, values = [], {}
    ours = [r for r in rows if r["family"] == "odelab"]
    theirs = {(r["sampler"], r["nfe"]): r for r in rows if r["family"] == "diffusers"}
    ratios = []
    for r in ours:
        if r["sampler"] in COUNTERPART and r["grid"] == COUNTERPART[r["sampler"]][1]:
            peer = theirs.get((COUNTERPART[r["sampler"]][0], r["nfe"]))
            if peer:
                ratios.append(
                    (r["sampler"], r["nfe"], r["rmse"] / peer["rmse"], r, peer)
                )
    if ratios:
        worst = max(x[2] for x in ratios)
        values["worst_error_ratio_vs_counterpart"] = worst
        lines.append(
            f"odelab / diffusers error, same sampler and grid: worst {worst:.4f} "
            "(target <= 1.05)"
        )
        wall = [x[3]["wall_ms"] / x[4]["wall_ms"] for x in ratios]
        values["wall_ratio_median"] = float(np.median(wall))
        values["wall_ratio_max"] = float(np.max(wall))
        lines.append(
            f"odelab / diffusers wall time, same sampler: median {np.median(wall):.3f}, "
            f"max {np.max(wall):.3f} (target <= 0.5)"
        )
    at10 = [r for r in ours if r["nfe"] <= 10]
    if at10:
        best = min(at10, key=lambda r: r["rmse"])
        values["best_odelab_nfe10"] = dict(best)
        lines.append(
            f"best odelab at NFE <= 10: {best['sampler']} on {best['grid']} "
            f"(NFE {best['nfe']}): RMSE {best['rmse']:.4f} (target <= 0.08)"
        )
    peer10 = [r for r in rows if r["family"] == "diffusers" and r["nfe"] <= 10]
    if peer10:
        best = min(peer10, key=lambda r: r["rmse"])
        values["best_diffusers_nfe10"] = dict(best)
        lines.append(
            f"best diffusers at NFE <= 10: {best['sampler']} (NFE {best['nfe']}): "
            f"RMSE {best['rmse']:.4f}"
        )
    return lines, values


def run(
    repeats: int = 3,
    samples: int = 2000,
    peers: bool = True,
    out_dir="runs/bench",
    plot_path=None,
    only=None,
    nfes=NFES,
    grids=None,
):
    """Run the benchmark (module notes); `only`, `nfes`, `grids` restrict it (tests)."""
    params, x_t, acp = problem(samples)
    sched = VPDiscrete(acp)
    model = _model(params, sched)
    ref = exact_flow_map(params, sched, x_t)
    check = exact_flow_map(params, sched, x_t, steps=1000)
    ref_err = _errors(check, ref)[0]
    print(f"reference: 2000 vs 1000 RK4 steps differ by RMSE {ref_err:.2e}")
    rows = _odelab_rows(model, sched, x_t, ref, repeats, only, nfes, grids)
    if peers:
        rows += _diffusers_rows(params, acp, x_t, ref, repeats, only, nfes)
    rows.sort(key=lambda r: (r["family"], r["sampler"], r["grid"], r["nfe"]))
    print_table(
        rows,
        [
            "family",
            "sampler",
            "grid",
            "nfe",
            "rmse",
            "median_err",
            "wall_ms",
            "compile_s",
        ],
        title=f"samplers: 8-D mixture of 8 Gaussians, DDPM linear schedule, {samples} "
        f"samples, float32; error vs the exact flow map; wall: median of {repeats}",
    )
    lines, values = _summary(rows)
    for line in lines:
        print(line)
    payload = {
        "benchmark": "samplers",
        "config": dict(samples=samples, repeats=repeats, nfes=list(nfes)),
        "reference_rmse_2000_vs_1000": ref_err,
        "rows": rows,
        "summary": values,
        "targets": {
            "error_ratio_vs_counterpart": 1.05,
            "best_rmse_nfe10": 0.08,
            "wall_ratio": 0.5,
        },
    }
    write_json("samplers", payload, out_dir)
    if plot_path is not False:
        plot(payload, plot_path or f"{out_dir}/samplers.png")
    return payload


def plot(payload: dict, path: str) -> None:
    """Error against NFE: diffusers' schedulers (dashed) and odelab's counterparts on
    the same grid plus its best grid per sampler (solid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc3", "deis"):
        pts = sorted(
            (r["nfe"], r["rmse"])
            for r in rows
            if r["family"] == "diffusers" and r["sampler"] == name
        )
        if pts:
            ax.loglog(*zip(*pts), "--", marker="o", ms=3, label=f"diffusers {name}")
    for name, grid in (
        ("unipc3", "time_quadratic_to_lambda2"),
        ("unipc3", "time_quadratic"),
        ("dpmpp_3m", "time_quadratic_to_lambda2"),
    ):
        pts = sorted(
            (r["nfe"], r["rmse"])
            for r in rows
            if r["family"] == "odelab" and r["sampler"] == name and r["grid"] == grid
        )
        if pts:
            ax.loglog(*zip(*pts), "-", marker="s", ms=4, label=f"odelab {name}, {grid}")
    ax.axhline(0.08, color="grey", lw=0.8)
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("RMSE vs exact flow map")
    ax.set_title("8-D mixture of 8 Gaussians, DDPM schedule (odelab bench samplers)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="odelab bench samplers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--no-peers", action="store_true")
    ns = parser.parse_args(argv)
    run(repeats=ns.repeats, samples=ns.samples, peers=not ns.no_peers, out_dir=ns.out)


if __name__ == "__main__":
    main()
