"""`odelab bench train-step`: one neural-ODE training step, odelab against its peers.

The step: an MLP vector field (2→64→64→2, tanh), a batch of 256 states solved as one
state (one step size and one error norm for the whole batch, as torchdiffeq does),
t ∈ [0, 1], 20 save points, Tsit5 with rtol = atol = 1e-3, mean squared error against
a target, its gradient, one Adam update. Contenders, timed side by side in one
process, interleaved, medians after compilation:

- `odelab`: `odelab.solve(..., solver="tsit5", rtol=1e-3, atol=1e-3)` under one
  `eqx.filter_jit` with the loss, gradient and `optax.adam` update;
- `diffrax`: `diffrax.diffeqsolve` with `Tsit5`, `PIDController`, `SaveAt(ts=...)`,
  its default `RecursiveCheckpointAdjoint`, in the same jitted step;
- `torchdiffeq` and `torchdiffeq_adjoint` (when the `peers` extra is installed):
  `odeint` / `odeint_adjoint` with dopri5 at the same tolerances, the same weights
  (copied from the JAX model, so the step counts match), `torch.optim.Adam`,
  `torch.set_num_threads` equal to the cores;
- `odelab_per_trajectory` (information): the per-trajectory solve `odelab train`
  runs, `jax.vmap` of `NeuralODE` (each trajectory its own steps);
- `floor_stored_residuals` (information): a hand-written, fully unrolled Tsit5 over
  the very steps the adaptive solve accepts, differentiated by plain reverse mode
  with every residual stored — no controller, no loop, no recomputation. No
  adaptive solver with a bounded-memory adjoint can beat it; it shows how much of the
  step is the vector field's own cost.

Compile times: the first compile of the odelab step in this process, and, in two
fresh processes sharing an empty persistent cache directory, the time from tracing
to an executable in the first process (cold) and the second (warm). Targets (issue
#3): odelab ≤ 1.0× diffrax, ≥ 4× faster than torchdiffeq, warm compile ≤ 0.3 s.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import solve
from .._checks import errors_as_nan
from ..models import NeuralODE
from ._common import interleaved_medians, median, print_table, time_compile, write_json


WIDTH, BATCH, SAVES, TOL, LR = 64, 256, 20, 1e-3, 1e-3


def _field(t, y, mlp):
    return jax.vmap(mlp)(y)


def _problem(seed):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    mlp = eqx.nn.MLP(2, 2, WIDTH, 2, activation=jnp.tanh, key=k1)
    y0 = jax.random.normal(k2, (BATCH, 2))
    ts = jnp.linspace(0.0, 1.0, SAVES)
    # A target the flow can move towards: the initial states rotated by up to 90°.
    angle = 0.5 * jnp.pi * ts[:, None, None]
    rot_x = jnp.cos(angle) * y0[None, :, 0:1] - jnp.sin(angle) * y0[None, :, 1:2]
    rot_y = jnp.sin(angle) * y0[None, :, 0:1] + jnp.cos(angle) * y0[None, :, 1:2]
    target = jnp.concatenate([rot_x, rot_y], axis=-1)
    return mlp, y0, ts, target


def _odelab_ys(mlp, y0, ts):
    return solve(_field, y0, ts, mlp, solver="tsit5", rtol=TOL, atol=TOL).ys


def _diffrax_solution(mlp, y0, ts, saveat=None):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        diffrax.Tsit5(),
        ts[0],
        ts[-1],
        None,
        y0,
        mlp,
        saveat=saveat or diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL),
    )


def _diffrax_ys(mlp, y0, ts):
    return _diffrax_solution(mlp, y0, ts).ys


def _per_trajectory_ys(mlp, y0, ts):
    node = NeuralODE(2, WIDTH, 1, key=jax.random.key(0), rtol=TOL, atol=TOL)
    node = eqx.tree_at(lambda n: n.mlp, node, mlp)
    return jax.vmap(node, in_axes=(None, 0), out_axes=1)(ts, y0)


def accepted_grid(mlp, y0, ts) -> np.ndarray:
    """The step boundaries the adaptive Tsit5 solve accepts (host array)."""
    sol = _diffrax_solution(mlp, y0, ts, diffrax.SaveAt(steps=True, t0=True))
    grid = np.asarray(sol.ts)
    return grid[np.isfinite(grid)]


def _stored_ys_fn(grid, ts_host):
    """Unrolled Tsit5 over a fixed `grid`, save times read from the dense output."""
    solver, term = diffrax.Tsit5(), diffrax.ODETerm(_field)
    owner = np.clip(np.searchsorted(grid, ts_host, side="right") - 1, 0, len(grid) - 2)

    def ys_fn(mlp, y0, ts):
        state = solver.init(term, grid[0], grid[1], y0, mlp)
        y, out = y0, [None] * len(ts_host)
        for i in range(len(grid) - 1):
            y1, _, dense, state, _ = solver.step(
                term, grid[i], grid[i + 1], y, mlp, state, False
            )
            interp = solver.interpolation_cls(t0=grid[i], t1=grid[i + 1], **dense)
            for j in np.flatnonzero(owner == i):
                out[j] = y0 if ts_host[j] == grid[0] else interp.evaluate(ts_host[j])
            y = y1
        return jnp.stack(out)

    return ys_fn


def make_step(ys_fn, optimiser):
    """A jitted training step `(params, opt_state, y0, ts, target) -> (...)`."""

    def step(params, opt_state, static, y0, ts, target):
        def loss_fn(p):
            mlp = eqx.combine(p, static)
            return jnp.mean((ys_fn(mlp, y0, ts) - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def _torch_steps(mlp, y0, ts, target, threads):
    """torchdiffeq training steps on a copy of the JAX weights, or {} if absent."""
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return {}, {}
    torch.set_num_threads(threads)
    layers = []
    for i, lin in enumerate(mlp.layers):
        layer = torch.nn.Linear(lin.in_features, lin.out_features)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.array(lin.weight)))
            layer.bias.copy_(torch.from_numpy(np.array(lin.bias)))
        layers.append(layer)
        if i < len(mlp.layers) - 1:
            layers.append(torch.nn.Tanh())

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(*layers)
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return self.net(y)

    y0_t = torch.from_numpy(np.array(y0))
    ts_t = torch.from_numpy(np.array(ts))
    target_t = torch.from_numpy(np.array(target))
    steps, info = {}, {}
    for name, odeint in [
        ("torchdiffeq", torchdiffeq.odeint),
        ("torchdiffeq_adjoint", torchdiffeq.odeint_adjoint),
    ]:
        field = Field()
        opt = torch.optim.Adam(field.parameters(), lr=LR)

        def step(*_, field=field, opt=opt, odeint=odeint):
            opt.zero_grad()
            ys = odeint(field, y0_t, ts_t, rtol=TOL, atol=TOL, method="dopri5")
            loss = torch.mean((ys - target_t) ** 2)
            loss.backward()
            opt.step()
            return loss.item()

        field.nfe = 0
        info[name] = {"loss": step(), "nfe_per_step": field.nfe}
        steps[name] = step
    return steps, info


def _compile_in_fresh_process(cache_dir: str, seed: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "odelab.bench.train_step", "--compile-probe", cache_dir]
        + ["--seed", str(seed)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compile_probe(cache_dir: str, seed: int) -> dict:
    """Trace, then compile, the training step of `odelab train`'s default config,
    the way the CLI does (persistent cache on, run-time checks as NaN)."""
    from .. import train as _train
    from .._cache import enable_compilation_cache
    from ..config import load_config

    enable_compilation_cache(cache_dir)
    errors_as_nan()
    config = load_config({"training": {"seed": seed}})
    train_set, _ = _train.make_dataset(config)
    model = _train.make_model(config, jax.random.key(seed))
    optimiser = _train.make_optimizer(config)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
    start = time.perf_counter()
    lowered = _train._train_step.lower(
        model,
        opt_state,
        train_set,
        jax.random.key(seed),
        jnp.asarray(0, jnp.int32),
        optimiser,
        config.training.batch_size,
        None,
    )
    traced = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    return {"trace_s": traced - start, "compile_s": done - traced}


def run(
    repeats: int = 60,
    seed: int = 0,
    out_dir: str = "runs/bench",
    cache_probe: bool = True,
    torch_peers: bool = True,
    checks: str = "nan",
) -> dict:
    """Run the benchmark; print the table and ratios; write `train_step.json`.

    `checks="nan"` traces every contender's run-time checks (odelab's and diffrax's
    `eqx.error_if`) as NaN outputs, as `odelab train` does; `"raise"` keeps
    equinox's default host callbacks. Process-wide: pick it before anything traces.
    """
    if checks == "nan":
        errors_as_nan()
    elif checks != "raise":
        raise ValueError(f"`checks` must be 'nan' or 'raise', got {checks!r}")
    mlp, y0, ts, target = _problem(seed)
    params, static = eqx.partition(mlp, eqx.is_array)
    optimiser = optax.adam(LR)
    opt_state = optimiser.init(params)
    grid = accepted_grid(mlp, y0, ts)
    ys_fns = {
        "odelab": _odelab_ys,
        "diffrax": _diffrax_ys,
        "odelab_per_trajectory": _per_trajectory_ys,
        "floor_stored_residuals": _stored_ys_fn(grid, np.asarray(ts)),
    }
    args = (params, opt_state, y0, ts, target)
    compiled, compile_s, losses = {}, {}, {}
    for name, ys_fn in ys_fns.items():
        step = make_step(ys_fn, optimiser)
        fn = lambda p, o, y, t, g, step=step: step(p, o, static, y, t, g)  # noqa: E731
        compiled[name], compile_s[name] = time_compile(fn, *args)
        losses[name] = float(compiled[name](*args)[2])
    nfe = {}
    stats = solve(_field, y0, ts, mlp, solver="tsit5", rtol=TOL, atol=TOL).stats
    nfe["odelab"] = int(stats["nfe"])
    nfe["diffrax"] = nfe["odelab"]  # the same solve: same steps and evaluations
    # JAX contenders interleaved with each other, then the torch ones with each
    # other: torch's OpenMP threads spin after a call and would slow down whichever
    # JAX contender ran next.
    times = interleaved_medians(compiled, args, repeats=repeats)
    fns = dict(compiled)
    if torch_peers:
        torch_fns, torch_info = _torch_steps(mlp, y0, ts, target, os.cpu_count() or 1)
        for name, info in torch_info.items():
            losses[name] = info["loss"]
            nfe[name] = info["nfe_per_step"]
        if torch_fns:
            times.update(interleaved_medians(torch_fns, args, repeats=repeats))
            fns.update(torch_fns)
    med = {name: median(v) for name, v in times.items()}
    rows = []
    for name in fns:
        row = {
            "contender": name,
            "step_ms": 1e3 * med[name],
            "vs_diffrax": med[name] / med["diffrax"],
            "loss": losses[name],
            "nfe_fwd": nfe.get(name, ""),
            "compile_s": compile_s.get(name, ""),
        }
        if "torchdiffeq" in med:
            row["speedup_vs_torchdiffeq"] = med["torchdiffeq"] / med[name]
        rows.append(row)
    cache = {}
    if cache_probe:
        with tempfile.TemporaryDirectory() as tmp:
            cache["cold"] = _compile_in_fresh_process(tmp, seed)
            cache["warm"] = _compile_in_fresh_process(tmp, seed)
    columns = ["contender", "step_ms", "vs_diffrax", "loss", "nfe_fwd", "compile_s"]
    if "torchdiffeq" in med:
        columns.insert(3, "speedup_vs_torchdiffeq")
    print_table(
        rows,
        columns,
        title=f"train-step: loss+grad+adam, MLP 2-{WIDTH}-{WIDTH}-2, batch {BATCH} as "
        f"one state, {SAVES} saves, Tsit5/dopri5 rtol=atol={TOL}, {len(grid) - 1} "
        f"accepted steps; median of {repeats}",
    )
    ratio = med["odelab"] / med["diffrax"]
    print(f"odelab / diffrax: {ratio:.3f}x (target <= 1.0)")
    if "torchdiffeq" in med:
        speedup = med["torchdiffeq"] / med["odelab"]
        print(f"odelab speed-up over torchdiffeq: {speedup:.2f}x (target >= 4)")
    else:
        print("torchdiffeq not installed (pip install -e '.[peers]'): no peer rows")
    if cache:
        cold, warm = cache["cold"], cache["warm"]
        print(
            "`odelab train` default step in a fresh process (trace + XLA compile): "
            f"cold {cold['trace_s']:.3f} + {cold['compile_s']:.3f} s; with the "
            f"persistent cache warm {warm['trace_s']:.3f} + {warm['compile_s']:.3f} s "
            "(target: compile <= 0.3 s)"
        )
    payload = {
        "benchmark": "train_step",
        "config": dict(
            width=WIDTH,
            batch=BATCH,
            saves=SAVES,
            tol=TOL,
            repeats=repeats,
            seed=seed,
            accepted_steps=len(grid) - 1,
            checks=checks,
        ),
        "rows": rows,
        "raw_step_s": times,
        "persistent_cache": cache,
        "targets": {
            "odelab_vs_diffrax": 1.0,
            "speedup_vs_torchdiffeq": 4.0,
            "warm_compile_s": 0.3,
        },
    }
    write_json("train_step", payload, out_dir)
    return payload


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="odelab bench train-step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument(
        "--checks",
        choices=["nan", "raise"],
        default="nan",
        help="run-time checks as NaN (as `odelab train`) or raising host callbacks",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--no-cache-probe", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--compile-probe", metavar="CACHE_DIR", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.compile_probe:
        print(json.dumps(_compile_probe(ns.compile_probe, ns.seed)))
        return
    run(
        repeats=ns.repeats,
        seed=ns.seed,
        out_dir=ns.out,
        cache_probe=not ns.no_cache_probe,
        torch_peers=not ns.no_torch,
        checks=ns.checks,
    )


if __name__ == "__main__":
    main()
