"""`odelab bench regularizers`: what each regularizer of `odelab.regularizers` buys
in prediction cost, and what it costs in loss and training time.

Two tasks, each trained once per (regularizer, seed) from the same initialisation and
batches as the unregularized run:

- `digits`: an `ODEClassifier` (64 → 32, a neural ODE of width 64 on [0, 1], → 10) on
  scikit-learn's 8×8 digits (1437 train / 360 test), 30 epochs, batch 128, Adam 3e-3,
  Tsit5 at rtol = atol = 1e-6, the batch solved as one state;
- `spirals`: the default `odelab train` config (`configs/neural_ode_spiral.yaml`)
  with the tolerances tightened to 1e-6 and `regularizer.*` switched per row.

Reported per row (mean over seeds): test accuracy or validation MSE, the prediction
NFE (unregularized solve of the test set at the training tolerances) and its ratio to
the unregularized model's, the training time per step (median, compile excluded) and
its ratio, and the prediction wall time. The claims checked (Pal et al. 2021, 2023):
the solver-heuristic regularizers cut prediction NFE at little loss of accuracy and
at no extra training cost, unlike RNODE's and TayNODE's integrals.
"""

import argparse
import statistics
import tempfile
import time

from ._common import block, interleaved_medians, median, print_table, write_json


WEIGHTS = {
    "digits": {
        "none": 0.0,
        "error": 1.0,
        "stiffness": 0.3,
        "local_error": 1.0,
        "local_stiffness": 0.3,
        "kinetic": 0.01,
        "jacobian": 0.01,
        "taylor": 0.01,
    },
    "rings": {
        "none": 0.0,
        "error": 1.0,
        "stiffness": 0.3,
        "local_error": 1.0,
        "local_stiffness": 0.3,
        "kinetic": 0.05,
        "jacobian": 0.05,
        "taylor": 0.05,
    },
    "ou_sde": {"none": 0.0, "local_error": 1e-3},
    "spirals": {
        "none": 0.0,
        "error": 1e-4,
        "stiffness": 1e-4,
        "local_error": 1e-4,
        "local_stiffness": 1e-4,
        "kinetic": 1e-4,
        "jacobian": 1e-4,
        "taylor": 1e-4,
    },
}
"""The weight of each regularizer per task (constant over training)."""


def _fit_classifier(model, kind, weight, learning_rate, batches, x_test, y_test):
    # Train an `ODEClassifier` with regularizer `kind` on `batches` (an iterable of
    # (x, y, key)); its row: test accuracy, prediction NFE, times.
    import equinox as eqx
    import jax.numpy as jnp
    import optax

    from ..regularizers import regularized_solution

    optimizer = optax.adam(learning_rate)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    def loss(m, xb, yb, key):
        hs, r, _ = regularized_solution(m.node, m.ts, m.encode(xb), kind=kind, key=key)
        logits = m.decode(hs[-1])
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))
        return ce + weight * r

    @eqx.filter_jit
    def step(m, s, xb, yb, key):
        g = eqx.filter_grad(loss)(m, xb, yb, key)
        updates, s = optimizer.update(g, s, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), s

    step_times = []
    for xb, yb, key in batches:
        start = time.perf_counter()
        model, state = block(step(model, state, xb, yb, key))
        step_times.append(time.perf_counter() - start)

    @eqx.filter_jit
    def predict(m, x):
        sol = m.solution(x)
        return m.decode(sol.ys[-1]), sol.stats["nfe"]

    logits, nfe = predict(model, x_test)
    predict_s = median(interleaved_medians({"p": predict}, (model, x_test), 20)["p"])
    return dict(
        metric=float(jnp.mean(jnp.argmax(logits, -1) == y_test)),
        nfe=float(nfe),
        train_step_ms=1000 * median(step_times[1:]),
        train_s=sum(step_times),
        predict_ms=1000 * predict_s,
    )


def train_digits(kind, weight, seed, *, epochs=30, tol=1e-6, batch=128):
    """Train the digits classifier with regularizer `kind`; returns its row."""
    import jax.random as jr

    from ..data import digits
    from ..models import ODEClassifier

    data = digits(jr.key(0))
    x_train, y_train = data.ys[:1437], data.labels[:1437]
    model = ODEClassifier(
        64, 10, 32, 64, 1, key=jr.key(seed), rtol=tol, atol=tol, joint_batch=True
    )

    def batches():
        key = jr.key(1000 + seed)
        for _ in range(epochs):
            key, perm_key = jr.split(key)
            perm = jr.permutation(perm_key, x_train.shape[0])
            for b in range(x_train.shape[0] // batch):
                idx = perm[b * batch : (b + 1) * batch]
                key, step_key = jr.split(key)
                yield x_train[idx], y_train[idx], step_key

    return _fit_classifier(
        model, kind, weight, 3e-3, batches(), data.ys[1437:], data.labels[1437:]
    )


def train_spirals(kind, weight, seed, *, steps=1000, tol=1e-6):
    """Train the default spiral config with regularizer `kind`; returns its row."""
    import json
    import os

    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from ..config import load_config
    from ..train import load_checkpoint, make_dataset, run_dir, train

    config = load_config(
        {},
        [
            f"name=spirals_{kind}_{seed}",
            f"regularizer.kind={kind}",
            f"regularizer.weight={weight}",
            f"training.steps={steps}",
            f"training.seed={seed}",
            f"solver.rtol={tol}",
            f"solver.atol={tol}",
            "training.eval_every=100000",
            "output.plots=false",
        ],
    )
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        metrics = train(config, progress=False, out_root=root)
        train_s = time.perf_counter() - start
        directory = run_dir(config, root)
        model, *_ = load_checkpoint(config, directory)
        with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as f:
            rates = [json.loads(line).get("steps_per_s") for line in f]
    rates = [r for r in rates[1:] if r]
    _, val = make_dataset(config)

    @eqx.filter_jit
    def predict(m, ys):
        sol = jax.vmap(lambda y0: m.solution(val.ts, y0))(ys[:, 0])
        return sol.ys, sol.stats["nfe"]

    _, nfe = predict(model, val.ys)
    predict_s = median(interleaved_medians({"p": predict}, (model, val.ys), 20)["p"])
    return dict(
        metric=metrics["val_mse"],
        nfe=float(jnp.mean(nfe)),
        train_step_ms=1000 / statistics.median(rates),
        train_s=train_s,
        predict_ms=1000 * predict_s,
    )


def _rings(key, n):
    import jax.numpy as jnp
    import jax.random as jr

    k1, k2, k3 = jr.split(key, 3)
    label = jr.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
    radius = jnp.where(label == 1, 2.0, 1.0) + 0.15 * jr.normal(k2, (n,))
    angle = jr.uniform(k3, (n,), maxval=2 * jnp.pi)
    return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], 1), label


def train_rings(kind, weight, seed, *, steps=200, tol=1e-5):
    """Notebook 07's task: a neural-ODE classifier (2 → 4, width 32) separating two
    concentric rings, 512 points, full batch, Adam 1e-2; returns its row."""
    import jax.random as jr

    from ..models import ODEClassifier

    x_train, y_train = _rings(jr.key(2 * seed), 512)
    x_test, y_test = _rings(jr.key(2 * seed + 1), 512)
    model = ODEClassifier(
        2, 2, 4, 32, 1, key=jr.key(seed), rtol=tol, atol=tol, joint_batch=True
    )
    batches = ((x_train, y_train, jr.key(i)) for i in range(steps))
    return _fit_classifier(model, kind, weight, 1e-2, batches, x_test, y_test)


def train_ou_sde(kind, weight, seed, *, iterations=300, tol=1e-3):
    """The `fit_sde` job on Ornstein–Uhlenbeck paths (`configs/fit_sde_ou.yaml`,
    Euler–Maruyama, 50 fixed steps) with `regularizer.kind` switched; the metric is
    the final MMD (also reported: the marginal std error against the exact process),
    the NFE that of simulating
    the fitted SDE with adaptive Heun at `tol` (256 paths as one state; additive
    noise, so Itô and Stratonovich agree)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from ..regularizers import solve_with_heuristics
    from ..series_job import fit_sde, load_task_config

    config = load_task_config(
        "configs/fit_sde_ou.yaml",
        [
            f"training.iterations={iterations}",
            f"training.seed={seed + 1}",
            f"regularizer.kind={kind}",
            f"regularizer.weight={weight}",
        ],
    )
    start = time.perf_counter()
    model, metrics = fit_sde(config)
    train_s = time.perf_counter() - start
    d = config.data
    ts = jnp.linspace(0.0, d.t1, d.n_times)

    @eqx.filter_jit
    def simulate(m, key):
        sol, _ = solve_with_heuristics(
            lambda t, y, m: jax.vmap(lambda u: m.drift_fn(t, u))(y),
            jnp.full((256, 1), d.x0),
            ts,
            m,
            diffusion=lambda t, y, m: jax.vmap(lambda u: m.diffusion_fn(t, u))(y),
            key=key,
            dt0=d.t1 / 50,
            rtol=tol,
            atol=tol,
        )
        return sol.ys, sol.stats["nfe"]

    nfes = [float(simulate(model, jr.key(100 + i))[1]) for i in range(4)]
    predict_s = median(
        interleaved_medians({"p": simulate}, (model, jr.key(7)), 10)["p"]
    )
    return dict(
        metric=metrics["final_mmd"],
        max_std_error=metrics["max_std_error"],
        nfe=statistics.mean(nfes),
        train_step_ms=1000 * metrics["train_seconds"] / iterations,
        train_s=train_s,
        predict_ms=1000 * predict_s,
    )


TASKS = {
    "digits": train_digits,
    "spirals": train_spirals,
    "rings": train_rings,
    "ou_sde": train_ou_sde,
}
KINDS = tuple(WEIGHTS["digits"])


def run(tasks=tuple(TASKS), kinds=KINDS, seeds=(0, 1, 2), **options):
    """Every (task, kind, seed); returns the rows (means over seeds)."""
    rows = []
    for task in tasks:
        base = None
        for kind in kinds:
            if kind not in WEIGHTS[task]:
                continue
            runs = [
                TASKS[task](kind, WEIGHTS[task][kind], seed, **options.get(task, {}))
                for seed in seeds
            ]
            row = dict(task=task, regularizer=kind, weight=WEIGHTS[task][kind])
            for field in runs[0]:
                row[field] = statistics.mean(r[field] for r in runs)
            row["metric_per_seed"] = [r["metric"] for r in runs]
            row["nfe_per_seed"] = [r["nfe"] for r in runs]
            if kind == "none":
                base = row
            if base is not None:
                row["nfe_ratio"] = row["nfe"] / base["nfe"]
                row["train_ratio"] = row["train_step_ms"] / base["train_step_ms"]
                row["metric_change"] = (row["metric"] - base["metric"]) / base["metric"]
            rows.append(row)
            print(task, kind, {k: row[k] for k in ("metric", "nfe")}, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="odelab bench regularizers")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--name", default="regularizers", help="JSON name")
    ns = parser.parse_args(argv)
    options = {}
    if ns.quick:
        options = dict(
            digits=dict(epochs=1),
            spirals=dict(steps=20),
            rings=dict(steps=5),
            ou_sde=dict(iterations=5),
        )
    rows = run(ns.tasks, ns.kinds, tuple(range(ns.seeds)), **options)
    table = [
        dict(
            task=r["task"],
            regularizer=r["regularizer"],
            weight=r["weight"],
            metric=f"{r['metric']:.4g}",
            change=f"{r.get('metric_change', 0):+.1%}",
            nfe=f"{r['nfe']:.1f}",
            nfe_ratio=f"{r.get('nfe_ratio', 1):.2f}",
            train_ms=f"{r['train_step_ms']:.2f}",
            train_ratio=f"{r.get('train_ratio', 1):.2f}",
            predict_ms=f"{r['predict_ms']:.2f}",
        )
        for r in rows
    ]
    print_table(
        table,
        [
            "task",
            "regularizer",
            "weight",
            "metric",
            "change",
            "nfe",
            "nfe_ratio",
            "train_ms",
            "train_ratio",
            "predict_ms",
        ],
        title="metric: digits/rings test accuracy, spirals validation MSE, ou_sde "
        "final MMD",
    )
    write_json(ns.name, dict(rows=rows, options=options))
    return rows


if __name__ == "__main__":
    main()
