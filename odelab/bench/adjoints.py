"""`odelab bench adjoints`: memory, time and accuracy of gradients against step count.

An MLP vector field (2→64→64→2, tanh) on a batch of 256 states, t ∈ [0, 1], N fixed
steps, loss = mean of y(1)²; the gradient with respect to the MLP's parameters and
y0. For each N and each (solver, adjoint) contender, side by side in one process:

- compiled temporary memory of the jitted gradient
  (`jax.jit(grad).lower(...).compile().memory_analysis().temp_size_in_bytes`,
  deterministic);
- time per gradient (median of `repeats`);
- relative error of the float32 gradient against the float64 gradient of the *same
  discretisation* (the same solver with diffrax's checkpointed backpropagation).

Every contender steps on the same grid t_k = k/N (odelab's `FixedGrid` controller in
`diffrax.diffeqsolve`). Contenders: diffrax's default `RecursiveCheckpointAdjoint` with diffrax's
`ReversibleHeun` and with RK4, `BacksolveAdjoint` with RK4, and odelab's
`ReversibleAdjoint` with ReversibleHeun, ReversibleRK(RK4), BDIA and MALI.

A second table compares the continuous adjoints where backsolve is known to be poor:
Lorenz over t ∈ [0, 1] and [0, 2] and Van der Pol (μ = 1) over [0, 10], Tsit5 at
rtol = atol ∈ {1e-6, 1e-8}, float64, gradient of Σ y(T)² with respect to y0 and the
parameters, against checkpointed backpropagation at rtol = atol = 1e-12.

Targets (issue #4): ReversibleAdjoint memory at N = 10⁴ ≤ 1.1× its memory at
N = 100; its float32 gradient error ≤ 1e-4 relative; its time per gradient ≤ diffrax's
reversible Heun with the default adjoint at N = 10⁴; InterpolatingAdjoint's error
≤ 1/100 of BacksolveAdjoint's at the same tolerances on the problems above.
"""

import argparse
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import problems
from .._fixed_step import FixedGrid
from ..adjoints import InterpolatingAdjoint, QuadratureAdjoint, ReversibleAdjoint
from ..solvers import BDIA, MALI, RK4, ReversibleHeun, ReversibleRK
from ._common import median, print_table, write_json


WIDTH, BATCH = 64, 256

CONTENDERS = {
    "diffrax_reversible_heun+checkpoint": (
        diffrax.ReversibleHeun,
        diffrax.RecursiveCheckpointAdjoint,
    ),
    "rk4+checkpoint": (RK4, diffrax.RecursiveCheckpointAdjoint),
    "rk4+backsolve": (RK4, diffrax.BacksolveAdjoint),
    "reversible_heun+reversible": (ReversibleHeun, ReversibleAdjoint),
    "reversible_rk4+reversible": (lambda: ReversibleRK(RK4()), ReversibleAdjoint),
    "bdia+reversible": (BDIA, ReversibleAdjoint),
    "mali+reversible": (MALI, ReversibleAdjoint),
}


def _field(t, y, mlp):
    return jax.vmap(mlp)(y)


def _problem(seed, dtype):
    # Drawn in float32 and cast, so that the float64 reference sees the same values.
    k1, k2 = jax.random.split(jax.random.key(seed))
    mlp = eqx.nn.MLP(2, 2, WIDTH, 2, activation=jnp.tanh, key=k1, dtype=jnp.float32)
    mlp = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_array(x) else x, mlp)
    y0 = jax.random.normal(k2, (BATCH, 2), jnp.float32).astype(dtype)
    return mlp, y0


def _grad_fn(solver, adjoint, n):
    def loss(params, y0, static):
        mlp = eqx.combine(params, static)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_field),
            solver,
            0.0,
            1.0,
            1.0 / n,
            y0,
            mlp,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=FixedGrid(),
            adjoint=adjoint,
            max_steps=n + 1,  # FixedGrid's last step may be a sliver (as in solve)
        )
        return jnp.mean(sol.ys**2)

    return jax.grad(loss, argnums=(0, 1))


def _relative_error(grads, reference) -> float:
    num = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(grads, reference))
    den = max(float(jnp.max(jnp.abs(b))) for b in reference)
    return num / den


def run(
    steps=(100, 1000, 10000),
    repeats: int = 3,
    seed: int = 0,
    out_dir: str = "runs/bench",
    contenders=None,
    plot: bool = True,
) -> dict:
    """Run the benchmark; print the table; write `adjoints.json` (and a PNG)."""
    names = list(contenders or CONTENDERS)
    rows = []
    for n in steps:
        for name in names:
            make_solver, make_adjoint = CONTENDERS[name]
            solver, adjoint = make_solver(), make_adjoint()
            mlp, y0 = _problem(seed, jnp.float32)
            params, static = eqx.partition(mlp, eqx.is_array)
            grad = _grad_fn(solver, adjoint, n)
            fn = jax.jit(lambda p, y, grad=grad, static=static: grad(p, y, static))
            compiled = fn.lower(params, y0).compile()
            memory = compiled.memory_analysis().temp_size_in_bytes
            out = jax.block_until_ready(compiled(params, y0))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(compiled(params, y0))
                times.append(time.perf_counter() - start)
            # float64 reference: the same solver, checkpointed backpropagation.
            with jax.enable_x64(True):
                mlp64, y064 = _problem(seed, jnp.float64)
                p64, s64 = eqx.partition(mlp64, eqx.is_array)
                ref_grad = _grad_fn(solver, diffrax.RecursiveCheckpointAdjoint(), n)
                ref = jax.jit(lambda p, y, g=ref_grad, s=s64: g(p, y, s))(p64, y064)
                ref_leaves = [np.asarray(x) for x in jax.tree.leaves(ref)]
            leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(out)]
            rows.append(
                {
                    "steps": n,
                    "contender": name,
                    "temp_MiB": memory / 2**20,
                    "grad_s": median(times),
                    "grad_rel_err": _relative_error(leaves, ref_leaves),
                }
            )
            print(
                f"N={n:6d} {name:38s} {memory / 2**20:8.3f} MiB "
                f"{median(times):8.4f} s err {rows[-1]['grad_rel_err']:.2e}",
                flush=True,
            )
    print_table(
        rows,
        ["steps", "contender", "temp_MiB", "grad_s", "grad_rel_err"],
        title=f"adjoints: MLP 2-{WIDTH}-{WIDTH}-2, batch {BATCH}, t in [0, 1], N "
        f"fixed steps, grad of mean(y(1)^2); float32, error vs float64 of the same "
        f"discretisation; time median of {repeats}",
    )
    summary = _summary(rows, steps)
    for line in summary["lines"]:
        print(line)
    payload = {
        "benchmark": "adjoints",
        "config": dict(
            width=WIDTH, batch=BATCH, steps=list(steps), repeats=repeats, seed=seed
        ),
        "rows": rows,
        "summary": summary["values"],
        "targets": {
            "memory_ratio_max_over_min_steps": 1.1,
            "grad_rel_err": 1e-4,
            "time_vs_diffrax_reversible_heun": 1.0,
        },
    }
    write_json("adjoints", payload, out_dir)
    if plot:
        _plot(rows, out_dir)
    return payload


def _summary(rows, steps):
    lo, hi = min(steps), max(steps)
    by = {(r["steps"], r["contender"]): r for r in rows}
    lines, values = [], {}
    peer = by.get((hi, "diffrax_reversible_heun+checkpoint"))
    for name in sorted({r["contender"] for r in rows}):
        if not name.endswith("+reversible") or (lo, name) not in by:
            continue
        ratio = by[(hi, name)]["temp_MiB"] / by[(lo, name)]["temp_MiB"]
        err = max(by[(n, name)]["grad_rel_err"] for n in steps)
        values[name] = {"memory_ratio": ratio, "max_grad_rel_err": err}
        line = (
            f"{name}: memory N={hi} / N={lo} = {ratio:.3f} (target <= 1.1), "
            f"max float32 grad error {err:.2e} (target <= 1e-4)"
        )
        if peer is not None:
            t = by[(hi, name)]["grad_s"] / peer["grad_s"]
            values[name]["time_vs_diffrax_reversible_heun"] = t
            line += f", time vs diffrax reversible Heun at N={hi}: {t:.2f}x (<= 1)"
        lines.append(line)
    return {"lines": lines, "values": values}


def _plot(rows, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a core dependency
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r["contender"] for r in rows}):
        rs = [r for r in rows if r["contender"] == name]
        ns = [r["steps"] for r in rs]
        axes[0].loglog(ns, [r["temp_MiB"] for r in rs], "o-", label=name)
        axes[1].loglog(ns, [max(r["grad_rel_err"], 1e-12) for r in rs], "o-")
    axes[0].set(xlabel="steps N", ylabel="compiled temp memory (MiB)")
    axes[1].set(xlabel="steps N", ylabel="float32 gradient rel. error")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = f"{out_dir}/adjoints.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


CONTINUOUS_CASES = (("lorenz", 1.0), ("lorenz", 2.0), ("van_der_pol", 10.0))
CONTINUOUS_ADJOINTS = {
    "interpolating": InterpolatingAdjoint,
    "quadrature": QuadratureAdjoint,
    "backsolve": diffrax.BacksolveAdjoint,
    "checkpoint": diffrax.RecursiveCheckpointAdjoint,
}


def continuous(tols=(1e-6, 1e-8), cases=CONTINUOUS_CASES) -> list[dict]:
    """Gradient errors of the continuous adjoints (and checkpointing) vs float64."""
    rows = []
    with jax.enable_x64(True):
        for name, horizon in cases:
            prob = problems.get(name)
            y0 = jnp.asarray(prob.y0, jnp.float64)
            args = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), prob.args)

            def loss(y0, args, adjoint, tol, prob=prob, horizon=horizon):
                sol = diffrax.diffeqsolve(
                    diffrax.ODETerm(prob.vector_field),
                    diffrax.Tsit5(),
                    prob.t0,
                    prob.t0 + horizon,
                    None,
                    y0,
                    args,
                    saveat=diffrax.SaveAt(t1=True),
                    adjoint=adjoint,
                    stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
                    max_steps=100_000,
                )
                return jnp.sum(sol.ys**2)

            grad = eqx.filter_jit(jax.grad(loss, (0, 1)))
            ref = [
                np.asarray(x)
                for x in jax.tree.leaves(
                    grad(y0, args, diffrax.RecursiveCheckpointAdjoint(), 1e-12)
                )
            ]
            for tol in tols:
                row = {"problem": f"{name} T={horizon:g}", "tol": tol}
                for key, make in CONTINUOUS_ADJOINTS.items():
                    try:
                        got = [
                            np.asarray(x)
                            for x in jax.tree.leaves(grad(y0, args, make(), tol))
                        ]
                        err = _relative_error(got, ref)
                    except eqx.EquinoxRuntimeError:  # backward solve: max_steps, NaN
                        err = float("inf")
                    row[key] = err if np.isfinite(err) else float("inf")
                row["backsolve/interpolating"] = row["backsolve"] / row["interpolating"]
                rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="odelab bench adjoints", description=__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--contenders", nargs="+", choices=list(CONTENDERS))
    parser.add_argument(
        "--no-continuous", action="store_true", help="skip the continuous table"
    )
    ns = parser.parse_args(argv)
    payload = run(
        steps=tuple(ns.steps),
        repeats=ns.repeats,
        seed=ns.seed,
        out_dir=ns.out,
        contenders=ns.contenders,
    )
    if not ns.no_continuous:
        rows = continuous()
        columns = ["problem", "tol", *CONTINUOUS_ADJOINTS, "backsolve/interpolating"]
        print_table(
            rows,
            columns,
            title="continuous adjoints: gradient error vs float64 checkpointed "
            "backprop at tol 1e-12 (inf: the backward solve failed); target "
            "backsolve/interpolating >= 100",
        )
        payload["continuous"] = rows
        write_json("adjoints", payload, ns.out)


if __name__ == "__main__":
    main()
