"""`odelab bench implicit`: implicit and continuous-depth digit classifiers side by
side, with banax's DEQ as the peer.

Every row trains the `classify_digits` job (`odelab.implicit_job`, hidden 64, 30
epochs, batch 128, Adam 3e-3, 1438 train / 359 test digits) for each seed and
reports the mean test accuracy (and range), the median training step (compile
excluded), the total training time, the median prediction time of the test set, the
compiled training step's temporary memory (`memory_analysis`), and for the DEQs the
worst fraction of unconverged equilibrium solves in a training batch.

The peer runs in its own interpreter (banax needs Python >= 3.12):
`--banax-python PATH` runs `odelab/bench/_banax_peer.py` with it, in the same
process tree and on the same machine, and adds its rows (Picard with implicit, JFB
and phantom backward passes, Anderson with implicit). banax stops on the relative
L2 residual, odelab on a componentwise max norm, both at 1e-3; banax's Anderson
solves the normal equations with an absolute ridge and has no fallback.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from ._common import print_table, write_json


ROWS = {
    "mlp": dict(kind="mlp"),
    "neural_ode": dict(kind="neural_ode"),
    "augmented_neural_ode": dict(kind="augmented_neural_ode", augment_dims=16),
    "deq_anderson": dict(kind="deq", solver="anderson", gradient="implicit"),
    "deq_picard": dict(kind="deq", solver="fixed_point", gradient="implicit"),
    "deq_picard_tol1e-4": dict(
        kind="deq", solver="fixed_point", gradient="implicit", rtol=1e-4, atol=1e-4
    ),
    "deq_picard_phantom": dict(kind="deq", solver="fixed_point", gradient="phantom"),
    "homoode": dict(kind="homoode"),
    "homoode_shared": dict(kind="homoode_shared"),
    "homoode_backsolve": dict(kind="homoode", adjoint="backsolve"),
}
"""The odelab rows: name -> `model` section of the job config."""


def run_odelab(names, seeds, epochs):
    from ..implicit_job import load_task_config, train_digits

    rows = []
    for name in names:
        runs = []
        for seed in seeds:
            config = load_task_config(
                dict(
                    task="classify_digits",
                    name=name,
                    model=dict(hidden=64, **ROWS[name]),
                    training=dict(epochs=epochs, seed=seed),
                )
            )
            runs.append(train_digits(config)[1])
        accs = [r["test_accuracy"] for r in runs]
        rows.append(
            dict(
                model=name,
                accuracy=statistics.mean(accs),
                accuracy_min=min(accs),
                accuracy_max=max(accs),
                train_step_ms=statistics.median(r["train_step_ms"] for r in runs),
                train_s=statistics.mean(r["train_seconds"] for r in runs),
                predict_ms=statistics.median(r["predict_ms"] for r in runs),
                memory_bytes=runs[0]["train_step_temp_bytes"],
                unconverged=max(r["unconverged_train_max"] for r in runs),
                per_seed=accs,
            )
        )
        print(name, accs, flush=True)
    return rows


def run_banax(python, seeds, epochs, variants=(("picard", "implicit"),)):
    script = os.path.join(os.path.dirname(__file__), "_banax_peer.py")
    rows = []
    for solver, backward in variants:
        command = [
            python,
            script,
            "--solver",
            solver,
            "--backward",
            backward,
            "--epochs",
            str(epochs),
            "--seeds",
            *map(str, seeds),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"banax {solver}/{backward} failed:\n{done.stderr[-2000:]}")
            continue
        out = json.loads(done.stdout.strip().splitlines()[-1])
        per = out["per_seed"]
        accs = [p["test_accuracy"] for p in per]
        rows.append(
            dict(
                model=f"banax_{solver}_{backward}",
                accuracy=statistics.mean(accs),
                accuracy_min=min(accs),
                accuracy_max=max(accs),
                train_step_ms=statistics.median(p["train_step_ms"] for p in per),
                train_s=statistics.mean(p["train_seconds"] for p in per),
                predict_ms=statistics.median(p["predict_ms"] for p in per),
                memory_bytes=None,
                nonfinite_losses=sum(p.get("nonfinite_losses", 0) for p in per),
                per_seed=accs,
                versions=out.get("versions"),
            )
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="odelab bench implicit")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--banax-python",
        default=None,
        help="a Python >= 3.12 with banax installed (e.g. /work/banax_venv/bin/python)",
    )
    parser.add_argument("--name", default="implicit", help="JSON name")
    ns = parser.parse_args(argv)
    seeds = tuple(range(ns.seeds))
    epochs = 1 if ns.quick else ns.epochs
    rows = run_odelab(ns.models, seeds, epochs)
    if ns.banax_python:
        rows += run_banax(
            ns.banax_python,
            seeds,
            epochs,
            variants=(
                ("picard", "implicit"),
                ("picard", "jfb"),
                ("picard", "phantom"),
                ("anderson", "implicit"),
            ),
        )
    table = [
        dict(
            model=r["model"],
            accuracy=f"{r['accuracy']:.3f}",
            range=f"{r['accuracy_min']:.3f}-{r['accuracy_max']:.3f}",
            step_ms=f"{r['train_step_ms']:.2f}",
            train_s=f"{r['train_s']:.1f}",
            predict_ms=f"{r['predict_ms']:.2f}",
            memory_kb=""
            if r["memory_bytes"] is None
            else f"{r['memory_bytes'] / 1e3:.0f}",
        )
        for r in rows
    ]
    print_table(
        table,
        ["model", "accuracy", "range", "step_ms", "train_s", "predict_ms", "memory_kb"],
        title=f"8x8 digits, hidden 64, {epochs} epochs, batch 128, {len(seeds)} seeds",
    )
    write_json(ns.name, dict(rows=rows, epochs=epochs, python=sys.version))
    return rows


if __name__ == "__main__":
    main()
