"""The banax peer of `odelab bench implicit`: banax's deep equilibrium model trained
on the same 8x8 digits task as odelab's `classify_digits` DEQ.

Standalone (banax needs Python >= 3.12, odelab's interpreter may be older): it
imports neither odelab nor optimistix, only banax, equinox, jax, optax and
scikit-learn. Run it with the peer's interpreter, e.g.

    /work/banax_venv/bin/python odelab/bench/_banax_peer.py --solver picard \
        --backward implicit --seeds 0 1 2 --epochs 30

The task is odelab's, step for step (`odelab.implicit_job.train_digits`):

- data: `load_digits()`, x / 16 as float32, shuffled by
  `jax.random.permutation(jax.random.key(0), 1797)`, the first 359 the test set;
- model: z* = tanh(W z* + U x + b) from z0 = 0, per example (vmap), logits =
  Linear(hidden, 10)(z*); W ~ N(0, 1) / sqrt(hidden) * 0.25, U, b and the head
  `equinox.nn.Linear` defaults, drawn from the same keys as odelab's
  `DEQClassifier` (`fold_in(key(seed), 0)` split as odelab splits it), so both
  libraries start from the same parameters;
- training: Adam(lr), `epochs` epochs of `batch` examples from
  `permutation(fold_in(key(seed), epoch + 1), 1438)`, the last partial batch
  dropped, mean cross-entropy, the whole step jitted;
- timing as odelab's: a step is timed up to its loss read back as a Python float
  (so it has finished); `train_seconds` sums every step (compile included),
  `train_step_ms` is the median without the first step; `predict_ms` the median
  of 10 jitted predictions of the test set after a warm-up.

Only the JSON result goes to stdout, on one line (the last); progress goes to
stderr.

The peer's environment (measured with banax 0.1.5 on jax 0.10.2, the version odelab
ran with, so both use the same XLA):

    python3.12 -m venv /work/banax_venv
    /work/banax_venv/bin/pip install banax==0.1.5 jax==0.10.2 jaxlib==0.10.2 \
        scikit-learn optax
"""

import argparse
import importlib.metadata
import json
import math
import platform
import statistics
import sys
import time


SOLVERS = ("picard", "relaxed", "anderson", "broyden")
BACKWARDS = ("implicit", "jfb", "phantom", "neumann")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def versions():
    out = {"python": platform.python_version()}
    for name in ("banax", "jax", "jaxlib", "equinox", "optax", "numpy", "scikit-learn"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solver", choices=SOLVERS, default="picard")
    p.add_argument(
        "--backward",
        choices=BACKWARDS,
        default="implicit",
        help="implicit: banax.adjoint.Implicit (IFT, the adjoint system solved by "
        "the same fixed-point solver); jfb: banax.adjoint.JFB; phantom: "
        "banax.adjoint.UnrollPhantom with Relaxed(damp=--phantom-damping) for "
        "--phantom-steps steps (odelab's 'phantom'); neumann: NeumannPhantom",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="banax atol and rtol (both active: banax stops when EITHER holds)",
    )
    p.add_argument("--atol", type=float, default=None, help="overrides --tol")
    p.add_argument("--rtol", type=float, default=None, help="overrides --tol")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument(
        "--b-tol", type=float, default=None, help="implicit: backward solver tol"
    )
    p.add_argument("--b-max-steps", type=int, default=None)
    p.add_argument("--depth", type=int, default=5, help="Anderson depth")
    p.add_argument(
        "--ridge", type=float, default=1e-6, help="Anderson ridge (banax default 1e-6)"
    )
    p.add_argument("--damp", type=float, default=None, help="Relaxed/Anderson damp")
    p.add_argument("--history", type=int, default=10, help="Broyden history")
    p.add_argument("--phantom-steps", type=int, default=5)
    p.add_argument("--phantom-damping", type=float, default=0.5)
    p.add_argument(
        "--batched",
        action="store_true",
        help="one fixed point for the whole batch (global norms) instead of a "
        "per-example solve under vmap",
    )
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    return p.parse_args(argv)


def make_solver(name, args, *, atol, rtol, max_steps, loop_kind="lax"):
    from banax.solver import Anderson, Broyden, Picard, Relaxed

    common = dict(atol=atol, rtol=rtol, max_steps=max_steps, loop_kind=loop_kind)
    if name == "picard":
        return Picard(**common)
    if name == "relaxed":
        return Relaxed(damp=0.8 if args.damp is None else args.damp, **common)
    if name == "anderson":
        return Anderson(
            depth=args.depth,
            damp=1.0 if args.damp is None else args.damp,
            ridge=args.ridge,
            **common,
        )
    return Broyden(history_size=args.history, **common)


def make_adjoint(args):
    from banax.adjoint import JFB, Implicit, NeumannPhantom, UnrollPhantom
    from banax.solver import Relaxed

    atol = args.tol if args.atol is None else args.atol
    rtol = args.tol if args.rtol is None else args.rtol
    solver = make_solver(
        args.solver, args, atol=atol, rtol=rtol, max_steps=args.max_steps
    )
    if args.backward == "implicit":
        b_tol = args.tol if args.b_tol is None else args.b_tol
        b_steps = args.max_steps if args.b_max_steps is None else args.b_max_steps
        b_solver = make_solver(
            args.solver, args, atol=b_tol, rtol=b_tol, max_steps=b_steps
        )
        return Implicit(solver=solver, b_solver=b_solver)
    if args.backward == "jfb":
        return JFB(solver=solver)
    # Tolerances off: exactly `phantom_steps` damped steps from z*.
    b_solver = Relaxed(
        damp=args.phantom_damping,
        atol=0.0,
        rtol=0.0,
        max_steps=args.phantom_steps,
        loop_kind="bounded",
    )
    if args.backward == "phantom":
        return UnrollPhantom(solver=solver, b_solver=b_solver)
    return NeumannPhantom(solver=solver, b_solver=b_solver)


def load_data(data_seed, test_fraction):
    import jax
    import jax.numpy as jnp
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = jnp.asarray(raw.data / 16.0, dtype=jnp.float32)
    y = jnp.asarray(raw.target, dtype=jnp.int32)
    perm = jax.random.permutation(jax.random.key(data_seed), x.shape[0])
    x, y = x[perm], y[perm]
    n_test = int(round(x.shape[0] * test_fraction))
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def build(args):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from banax import Result

    adjoint = make_adjoint(args)

    class BanaxDEQClassifier(eqx.Module):
        weight: jax.Array
        inject: eqx.nn.Linear
        head: eqx.nn.Linear

        def __init__(self, in_size, n_classes, hidden, *, key):
            # The keys odelab's DEQClassifier / DEQ draw from.
            k_deq, k_head = jr.split(key)
            k_w, k_inject = jr.split(k_deq)
            w = jr.normal(k_w, (hidden, hidden)) / jnp.sqrt(hidden)
            self.weight = w * (0.5 / 2)
            self.inject = eqx.nn.Linear(in_size, hidden, key=k_inject)
            self.head = eqx.nn.Linear(hidden, n_classes, key=k_head)

    def cell(z, weight, injection):
        # z: (hidden,) per example, or (batch, hidden) when --batched.
        return jnp.tanh(z @ weight.T + injection)

    def equilibrium(model, x):
        injection = jax.vmap(model.inject)(x)
        if args.batched:
            sol = adjoint((cell, (model.weight, injection)), jnp.zeros_like(injection))
            return sol.value, sol.stats.steps[None], sol.result[None]

        def one(inj):
            sol = adjoint((cell, (model.weight, inj)), jnp.zeros_like(inj))
            return sol.value, sol.stats.steps, sol.result

        return jax.vmap(one)(injection)

    def logits_and_stats(model, x):
        z, steps, result = equilibrium(model, x)
        logits = jax.vmap(model.head)(z)
        stats = dict(
            unconverged=jnp.mean((result != Result.CONVERGED).astype(jnp.float32)),
            diverged=jnp.sum((result == Result.DIVERGED).astype(jnp.int32)),
            mean_steps=jnp.mean(steps.astype(jnp.float32)),
            max_steps=jnp.max(steps),
        )
        return logits, stats

    return BanaxDEQClassifier, logits_and_stats


def train_seed(seed, args, data, Model, logits_and_stats):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    (x_train, y_train), (x_test, y_test) = data
    batch = min(args.batch, x_train.shape[0])
    key = jr.key(seed)
    model = Model(64, 10, args.hidden, key=jr.fold_in(key, 0))
    optimizer = optax.adam(args.lr)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    def loss_fn(m, xb, yb):
        logits, stats = logits_and_stats(m, xb)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))
        return loss, stats

    def one_step(m, s, xb, yb):
        (loss, stats), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            m, xb, yb
        )
        updates, s = optimizer.update(grads, s, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), s, loss, stats

    step = eqx.filter_jit(one_step)

    temp_bytes = None
    try:
        dynamic, static = eqx.partition((model, state), eqx.is_array)

        def pure(dyn, xb, yb):
            out = one_step(*eqx.combine(dyn, static), xb, yb)
            return eqx.filter(out, eqx.is_array)

        analysis = (
            jax.jit(pure)
            .lower(dynamic, x_train[:batch], y_train[:batch])
            .compile()
            .memory_analysis()
        )
        if analysis is not None:
            temp_bytes = int(analysis.temp_size_in_bytes)
    except Exception as exc:  # memory analysis is informative only
        log(f"memory_analysis failed: {exc!r}")

    losses, step_times, unconverged, mean_steps = [], [], [], []
    diverged = 0
    max_iter = 0
    n_batches = x_train.shape[0] // batch
    for epoch in range(args.epochs):
        perm = jr.permutation(jr.fold_in(key, epoch + 1), x_train.shape[0])
        for b in range(n_batches):
            idx = perm[b * batch : (b + 1) * batch]
            start = time.perf_counter()
            model, state, loss, stats = step(model, state, x_train[idx], y_train[idx])
            losses.append(float(loss))
            unconverged.append(float(stats["unconverged"]))
            step_times.append(time.perf_counter() - start)
            mean_steps.append(float(stats["mean_steps"]))
            diverged += int(stats["diverged"])
            max_iter = max(max_iter, int(stats["max_steps"]))
        log(
            f"seed {seed} epoch {epoch + 1}/{args.epochs} loss "
            f"{statistics.mean(losses[-n_batches:]):.4f} iters "
            f"{statistics.mean(mean_steps[-n_batches:]):.1f}"
        )

    predict = eqx.filter_jit(logits_and_stats)
    jax.block_until_ready(predict(model, x_test))
    times = []
    for _ in range(10):
        start = time.perf_counter()
        logits, test_stats = jax.block_until_ready(predict(model, x_test))
        times.append(time.perf_counter() - start)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    nonfinite = sum(not math.isfinite(v) for v in losses)
    tail = [v for v in losses[-10:] if math.isfinite(v)]
    result = dict(
        seed=seed,
        test_accuracy=accuracy,
        train_step_ms=1000 * statistics.median(step_times[1:] or step_times),
        train_seconds=sum(step_times),
        first_step_seconds=step_times[0],
        predict_ms=1000 * statistics.median(times),
        nonfinite_losses=nonfinite,
        mean_iterations=statistics.mean(mean_steps),
        max_iterations=max_iter,
        test_mean_iterations=float(test_stats["mean_steps"]),
        unconverged_train_max=max(unconverged),
        unconverged_train_mean=statistics.mean(unconverged),
        unconverged_test=float(test_stats["unconverged"]),
        diverged_solves_train=diverged,
        final_loss=sum(tail) / len(tail) if tail else None,
        train_step_temp_bytes=temp_bytes,
        n_steps=len(losses),
    )
    log(json.dumps(result))
    return result


def main(argv=None):
    args = parse(argv)
    import jax

    jax.config.update("jax_enable_x64", False)
    data = load_data(args.data_seed, args.test_fraction)
    log(
        f"banax peer: solver={args.solver} backward={args.backward} "
        f"train={data[0][0].shape[0]} test={data[1][0].shape[0]} "
        f"backend={jax.default_backend()}"
    )
    Model, logits_and_stats = build(args)
    per_seed = [
        train_seed(seed, args, data, Model, logits_and_stats) for seed in args.seeds
    ]
    atol = args.tol if args.atol is None else args.atol
    rtol = args.tol if args.rtol is None else args.rtol
    b_tol = args.tol if args.b_tol is None else args.b_tol
    notes = (
        f"{'batched (one fixed point for the whole batch, global norms)' if args.batched else 'per-example equilibrium (jax.vmap over the batch)'}; "
        f"forward banax.solver.{args.solver.capitalize()}(atol={atol}, rtol={rtol}, "
        f"max_steps={args.max_steps}, loop_kind='lax'): stops when the L2 residual "
        "||f(z)-z|| <= atol OR ||f(z)-z||/||f(z)|| <= rtol (odelab: max-norm of "
        "|f(z)-z|/(atol+rtol|z|) < 1); "
    )
    if args.backward == "implicit":
        notes += (
            f"backward banax.adjoint.Implicit with b_solver "
            f"{args.solver.capitalize()}(atol=rtol={b_tol}, max_steps="
            f"{args.max_steps if args.b_max_steps is None else args.b_max_steps}) "
            "iterating lambda <- g + J^T lambda (odelab: lineax direct solve); "
        )
    elif args.backward == "jfb":
        notes += "backward banax.adjoint.JFB (one VJP of f at z*); "
    else:
        notes += (
            f"backward banax.adjoint.{'UnrollPhantom' if args.backward == 'phantom' else 'NeumannPhantom'}"
            f" with Relaxed(damp={args.phantom_damping}, {args.phantom_steps} steps); "
        )
    notes += (
        "iterations = banax Stats.steps (solver loop iterations after the initial "
        "f(z0)), averaged over examples and training steps; a solve is 'unconverged' "
        "when banax's result != CONVERGED (MAX_STEPS or DIVERGED); banax never "
        "replaces non-finite iterates (its loop stops and reports DIVERGED; "
        "Anderson (absolute ridge on the normal equations, jnp.linalg.solve) "
        "has no fallback, so a NaN iterate reaches the loss and, through Adam, the "
        "parameters); train_seconds sums all steps incl. compile."
    )
    out = dict(
        peer="banax",
        versions=versions(),
        solver=args.solver,
        backward=args.backward,
        batching="batched" if args.batched else "per_example_vmap",
        config=dict(
            hidden=args.hidden,
            batch=args.batch,
            lr=args.lr,
            epochs=args.epochs,
            atol=atol,
            rtol=rtol,
            max_steps=args.max_steps,
            b_tol=b_tol if args.backward == "implicit" else None,
            depth=args.depth if args.solver == "anderson" else None,
            ridge=args.ridge if args.solver == "anderson" else None,
            backend=jax.default_backend(),
            device=str(jax.devices()[0]),
        ),
        per_seed=per_seed,
        notes=notes,
    )
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
