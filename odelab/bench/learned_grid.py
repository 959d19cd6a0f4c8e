"""`odelab bench learned-grid`: a learned NFE-5 time grid against the fixed grids.

Problem: the 8-D mixture of 8 Gaussians and DDPM schedule of `odelab bench samplers`
(exact noise-prediction model). For each sampler, `odelab.diffusion.learned_grid`
fits the grid (log-SNR increments and end point, Adam, 400 iterations from the uniform-λ
grid) to the float64 exact flow map of 1024 training noises (seed 2), then every grid
samples 2000 held-out noises (seed 1, the samplers bench's) with the same solver and
final denoise: RMSE against the exact flow map, and the ratio to the best fixed grid
(uniform t, uniform λ, Karras, time-quadratic; target ≤ 0.5 at NFE 5).
"""

import argparse

from ..grid_job import FIXED_GRIDS, load_grid_config, run_learn_grid
from ._common import print_table, write_json


SAMPLERS = ("unipc", "dpmpp_2m")


def run(
    samplers=SAMPLERS,
    nfe: int = 5,
    iterations: int = 400,
    train_samples: int = 1024,
    eval_samples: int = 2000,
    out_dir="runs/bench",
    plot: bool = True,
):
    """Run the benchmark (module notes); smaller arguments make it quick (tests)."""
    rows, runs = [], {}
    for sampler in samplers:
        config = load_grid_config(
            dict(
                name=f"{sampler}_nfe{nfe}",
                sampler=dict(name=sampler, nfe=nfe),
                training=dict(samples=train_samples, iterations=iterations),
                eval=dict(samples=eval_samples),
                run=dict(out_dir=f"{out_dir}/learned_grid", plot=plot),
            )
        )
        metrics = run_learn_grid(config)
        runs[sampler] = metrics
        best = metrics["rmse"][metrics["best_fixed"]]
        for grid in (*FIXED_GRIDS, "learned"):
            rmse = metrics["rmse"][grid]
            rows.append(
                dict(
                    sampler=sampler,
                    grid=grid,
                    nfe=nfe,
                    steps=metrics["steps"],
                    rmse=rmse,
                    ratio_to_best_fixed=rmse / best,
                )
            )
    print_table(
        rows,
        ["sampler", "grid", "nfe", "steps", "rmse", "ratio_to_best_fixed"],
        title=f"learned vs fixed time grids: 8-D mixture of 8 Gaussians, DDPM "
        f"schedule, NFE {nfe}; RMSE vs the exact flow map on {eval_samples} held-out "
        "noises (float32)",
    )
    for sampler, metrics in runs.items():
        print(
            f"{sampler}: learned / best fixed ({metrics['best_fixed']}) = "
            f"{metrics['ratio_learned_to_best_fixed']:.3f} (target <= 0.5); fit "
            f"{metrics['fit_s']:.1f} s"
        )
    payload = {
        "benchmark": "learned_grid",
        "config": dict(
            samplers=list(samplers),
            nfe=nfe,
            iterations=iterations,
            train_samples=train_samples,
            eval_samples=eval_samples,
        ),
        "rows": rows,
        "runs": runs,
        "targets": {"ratio_learned_to_best_fixed": 0.5},
    }
    write_json("learned_grid", payload, out_dir)
    return payload


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="odelab bench learned-grid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--nfe", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--train-samples", type=int, default=1024)
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--out", default="runs/bench")
    ns = parser.parse_args(argv)
    run(
        samplers=tuple(ns.samplers.split(",")),
        nfe=ns.nfe,
        iterations=ns.iterations,
        train_samples=ns.train_samples,
        eval_samples=ns.eval_samples,
        out_dir=ns.out,
    )


if __name__ == "__main__":
    main()
