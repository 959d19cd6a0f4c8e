"""`odelab bench grad-sampler`: memory, time and accuracy of gradients through a
diffusion sampler, for each adjoint, against the number of model evaluations.

Model: an MLP noise predictor (2 → 64 → 64 → 2 with a time input, tanh), fitted for a
few hundred Adam steps to the exact noise prediction of a 2-D mixture of 4 Gaussians
(`odelab.diffusion.analytic`) under the VP linear schedule, so that it is a smooth
trained denoiser rather than a random network. A batch of 256 noises x_T is sampled
on the uniform-logSNR grid from t = 1 to 1e-3; loss = mean |x_0|²; the gradient with
respect to the MLP's weights and x_T. For NFE ∈ {10, 50, 250, 1000} and each
(sampler, adjoint), side by side in one process:

- compiled temporary memory of the jitted gradient
  (`jax.jit(grad).lower(...).compile().memory_analysis().temp_size_in_bytes`,
  deterministic);
- time per gradient (median of `repeats`);
- `err_discrete`: relative error of the float32 gradient against the float64
  gradient of the same sampler at the same NFE by checkpointed backpropagation (the
  exact discrete gradient; what "reversible" must reproduce);
- `err_continuous`: relative error against the float64 gradient of the ODE itself
  (exponential Adams 3 with checkpointing at 2000 steps), which AdjointDPM converges
  to.

Targets (issue #7): adjoint_dpm's and reversible's memory at NFE = 1000 ≤ 1.5× their
memory at NFE = 10 and ≤ 1/10 of checkpoint's at NFE = 1000.
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..diffusion import VPLinear
from ..diffusion.analytic import GaussianMixture
from ..diffusion.sampling import sample
from ._common import median, print_table, write_json


WIDTH, BATCH, DIM = 64, 256, 2

CONTENDERS = {
    "ddim+checkpoint": ("ddim", "checkpoint"),
    "dpmpp_2m+checkpoint": ("dpmpp_2m", "checkpoint"),
    "ddim+adjoint_dpm": ("ddim", "adjoint_dpm"),
    "dpmpp_2m+adjoint_dpm": ("dpmpp_2m", "adjoint_dpm"),
    "bdia+reversible": ("bdia", "reversible"),
}


class EpsMLP(eqx.Module):
    """ε̂(x, t): an MLP on (x, t)."""

    mlp: eqx.nn.MLP

    def __init__(self, key, dtype=jnp.float32):
        self.mlp = eqx.nn.MLP(
            DIM + 1, DIM, WIDTH, 2, activation=jnp.tanh, key=key, dtype=dtype
        )

    def __call__(self, x, t):
        return self.mlp(jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)]))


def _mixture(dtype):
    means = jnp.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype)
    return GaussianMixture(means, jnp.asarray(0.4, dtype))


def fit_model(seed=0, iterations=400):
    """The MLP regressed on the mixture's exact ε at random (t, x_t): float32."""
    sched, mix = VPLinear(), _mixture(jnp.float32)
    model = EpsMLP(jax.random.key(seed))
    opt = optax.adam(3e-3)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, key):
        k1, k2, k3 = jax.random.split(key, 3)
        t = jax.random.uniform(k1, (512,), minval=1e-3, maxval=1.0)
        x0 = mix.sample(k2, 512)
        noise = jax.random.normal(k3, x0.shape)
        xt = sched.alpha(t)[:, None] * x0 + sched.sigma(t)[:, None] * noise
        target = jax.vmap(lambda x, s: mix.eps(x, s, sched))(xt, t)

        def loss(m):
            return jnp.mean((jax.vmap(m)(xt, t) - target) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, value

    key = jax.random.key(seed + 1)
    for _ in range(iterations):
        key, sub = jax.random.split(key)
        model, state, value = step(model, state, sub)
    return model, float(value)


def _grad_fn(sampler, adjoint, steps, static):
    sched = VPLinear()

    def loss(params, x_t):
        model = eqx.combine(params, static)
        # One solve for the whole batch (the grid is shared), as a user samples.
        x0 = sample(
            lambda x, t: jax.vmap(model, (0, None))(x, t),
            x_t,
            sched,
            sampler=sampler,
            steps=steps,
            grid="logsnr",
            adjoint=adjoint,
        )
        return jnp.mean(jnp.sum(x0**2, axis=-1))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _leaves64(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _relative_error(leaves, reference) -> float:
    num = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves, reference))
    den = max(float(np.max(np.abs(b))) for b in reference)
    return num / den


def run(
    steps=(10, 50, 250, 1000),
    repeats: int = 3,
    seed: int = 0,
    out_dir: str = "runs/bench",
    contenders=None,
    plot: bool = True,
    fit_iterations: int = 400,
) -> dict:
    """Run the benchmark; print the table; write `grad_sampler.json` (and a PNG)."""
    names = list(contenders or CONTENDERS)
    model, fit_loss = fit_model(seed, fit_iterations)
    params, static = eqx.partition(model, eqx.is_array)
    x_t = jax.random.normal(jax.random.key(seed + 2), (BATCH, DIM), jnp.float32)

    def as64(tree):
        return jax.tree.map(lambda a: a.astype(jnp.float64), tree)

    with jax.enable_x64(True):
        p64, x64 = as64(params), x_t.astype(jnp.float64)
        static64 = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, static
        )
        continuous = _leaves64(
            _grad_fn("exponential_adams3", "checkpoint", 2000, static64)(p64, x64)
        )
    rows = []
    for n in steps:
        for name in names:
            sampler, adjoint = CONTENDERS[name]
            fn = _grad_fn(sampler, adjoint, n, static)
            compiled = fn.lower(params, x_t).compile()
            memory = compiled.memory_analysis().temp_size_in_bytes
            out = jax.block_until_ready(compiled(params, x_t))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(compiled(params, x_t))
                times.append(time.perf_counter() - start)
            with jax.enable_x64(True):
                discrete = _leaves64(
                    _grad_fn(sampler, "checkpoint", n, static64)(p64, x64)
                )
            leaves = _leaves64(out)
            rows.append(
                {
                    "nfe": n,
                    "contender": name,
                    "temp_MiB": memory / 2**20,
                    "grad_s": median(times),
                    "err_discrete": _relative_error(leaves, discrete),
                    "err_continuous": _relative_error(leaves, continuous),
                }
            )
            r = rows[-1]
            print(
                f"NFE={n:5d} {name:22s} {r['temp_MiB']:9.3f} MiB {r['grad_s']:8.4f} s "
                f"err discrete {r['err_discrete']:.2e} continuous "
                f"{r['err_continuous']:.2e}",
                flush=True,
            )
    print_table(
        rows,
        ["nfe", "contender", "temp_MiB", "grad_s", "err_discrete", "err_continuous"],
        title=f"grad-sampler: MLP eps-model 3-{WIDTH}-{WIDTH}-2 (fit loss "
        f"{fit_loss:.3g}), batch {BATCH}, VP linear, logSNR grid t = 1 -> 1e-3, grad "
        f"of mean |x0|^2 w.r.t. weights and x_T; float32, errors vs float64 "
        f"(discrete: same sampler and NFE, checkpointed; continuous: exponential "
        f"Adams 3 at 2000 steps); time median of {repeats}",
    )
    summary = _summary(rows, steps)
    for line in summary["lines"]:
        print(line)
    payload = {
        "benchmark": "grad_sampler",
        "config": dict(
            width=WIDTH,
            batch=BATCH,
            steps=list(steps),
            repeats=repeats,
            seed=seed,
            fit_loss=fit_loss,
            device=jax.devices()[0].device_kind,
        ),
        "rows": rows,
        "summary": summary["values"],
        "targets": {
            "memory_ratio_max_over_min_nfe": 1.5,
            "memory_vs_checkpoint_at_max_nfe": 0.1,
        },
    }
    write_json("grad_sampler", payload, out_dir)
    if plot:
        _plot(rows, out_dir)
    return payload


def _summary(rows, steps):
    lo, hi = min(steps), max(steps)
    by = {(r["nfe"], r["contender"]): r for r in rows}
    checkpoints = [
        by[(hi, c)]["temp_MiB"]
        for c in ("ddim+checkpoint", "dpmpp_2m+checkpoint")
        if (hi, c) in by
    ]
    lines, values = [], {}
    for name in sorted({r["contender"] for r in rows}):
        if name.endswith("+checkpoint") or (lo, name) not in by or (hi, name) not in by:
            continue
        ratio = by[(hi, name)]["temp_MiB"] / by[(lo, name)]["temp_MiB"]
        values[name] = {"memory_ratio": ratio}
        line = f"{name}: memory NFE={hi} / NFE={lo} = {ratio:.3f} (target <= 1.5)"
        if checkpoints:
            vs = by[(hi, name)]["temp_MiB"] / min(checkpoints)
            values[name]["memory_vs_checkpoint"] = vs
            line += f", vs checkpoint at NFE={hi}: {vs:.4f} (target <= 0.1)"
        lines.append(line)
    return {"lines": lines, "values": values}


def _plot(rows, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    import os

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r["contender"] for r in rows}):
        pts = sorted((r["nfe"], r["temp_MiB"]) for r in rows if r["contender"] == name)
        ax.loglog(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("NFE")
    ax.set_ylabel("compiled temp memory of the gradient (MiB)")
    ax.set_title("Gradient through a sampler: memory vs NFE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(os.path.join(out_dir, "grad_sampler.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="odelab bench grad-sampler", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50, 250, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="runs/bench")
    parser.add_argument("--contenders", nargs="+", choices=list(CONTENDERS))
    parser.add_argument("--no-plot", action="store_true")
    ns = parser.parse_args(argv)
    run(
        tuple(ns.steps),
        ns.repeats,
        ns.seed,
        ns.out_dir,
        ns.contenders,
        plot=not ns.no_plot,
    )
    return 0
