"""`odelab bench missing-rate`: held-out accuracy of the neural CDE and the three
stable neural SDEs as more of each series goes missing.

Each cell trains the `classify_series` job (`odelab.series_job`, the settings of
`configs/classify_oscillators_*.yaml`) on damped oscillators, under- against
overdamped, at irregular times with each value dropped with probability 0, 0.3, 0.5,
0.7, and reports the held-out accuracy (mean and range over seeds) and the training
time. The claim it checks (Oh et al., 2024; Kidger et al., 2020): these models lose
little accuracy when data go missing, because the control path carries the
observation times and the observational intensity.
"""

import argparse
import statistics

from ._common import print_table, write_json


KINDS = ("neural_cde", "lsde", "lnsde", "gsde")
RATES = (0.0, 0.3, 0.5, 0.7)


def run(kinds=KINDS, rates=RATES, seeds=(1,), iterations=400, n_series=1024):
    """Train every (kind, rate, seed); returns the rows of the table."""
    from ..series_job import load_task_config, train_classifier

    rows = []
    for kind in kinds:
        for rate in rates:
            accs, times = [], []
            for seed in seeds:
                config = load_task_config(
                    dict(
                        task="classify_series",
                        name=f"{kind}_{rate}",
                        model=dict(kind=kind),
                        data=dict(
                            kind="oscillators", n_series=n_series, missing_rate=rate
                        ),
                        training=dict(iterations=iterations, seed=seed),
                    )
                )
                _, metrics = train_classifier(config)
                accs.append(metrics["val_accuracy"])
                times.append(metrics["train_seconds"])
            rows.append(
                dict(
                    model=kind,
                    missing_rate=rate,
                    accuracy=statistics.mean(accs),
                    accuracy_min=min(accs),
                    accuracy_max=max(accs),
                    train_seconds=statistics.median(times),
                    seeds=list(seeds),
                )
            )
            print(f"{kind} at {rate:.0%} missing: accuracy {accs}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="odelab bench missing-rate")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--name", default="missing_rate", help="JSON name")
    ns = parser.parse_args(argv)
    if ns.quick:
        rows = run(
            kinds=("neural_cde", "lsde"),
            rates=(0.0, 0.5),
            seeds=(1,),
            iterations=3,
            n_series=32,
        )
    else:
        rows = run(seeds=tuple(range(1, ns.seeds + 1)), iterations=ns.iterations)
    table = [
        dict(
            model=r["model"],
            missing=f"{r['missing_rate']:.0%}",
            accuracy=f"{r['accuracy']:.3f}",
            range=f"{r['accuracy_min']:.3f}-{r['accuracy_max']:.3f}",
            train_s=f"{r['train_seconds']:.1f}",
        )
        for r in rows
    ]
    print_table(table, ["model", "missing", "accuracy", "range", "train_s"])
    write_json(ns.name, dict(rows=rows, iterations=ns.iterations))
    return rows


if __name__ == "__main__":
    main()
