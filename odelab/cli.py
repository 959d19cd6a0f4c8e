"""The `odelab` command: `odelab train [CONFIG]`, `odelab sample [CONFIG]`,
`odelab bench <name>`, `odelab demo`."""

import argparse
import importlib
import os
import sys
from pathlib import Path


BENCHMARKS = {
    "adjoints": "odelab.bench.adjoints",
    "exponential": "odelab.bench.exponential",
    "grad-sampler": "odelab.bench.grad_sampler",
    "implicit": "odelab.bench.implicit",
    "learned-grid": "odelab.bench.learned_grid",
    "missing-rate": "odelab.bench.missing_rate",
    "models": "odelab.bench.models",
    "overhead": "odelab.bench.overhead",
    "regularizers": "odelab.bench.regularizers",
    "generative": "odelab.bench.generative",
    "samplers": "odelab.bench.samplers",
    "train-step": "odelab.bench.train_step",
    "work-precision": "odelab.bench.work_precision",
}


def _demo(argv):
    parser = argparse.ArgumentParser(
        prog="odelab demo",
        description="Solve a few zoo problems with several solvers and print a table "
        "(the main job until `odelab train` lands).",
    )
    parser.parse_args(argv)
    import jax.numpy as jnp

    from . import solve
    from .bench._common import print_table

    def lotka_volterra(t, y, args):
        a, b, c, d = args
        x, z = y[0], y[1]
        return jnp.stack([a * x - b * x * z, -c * z + d * x * z])

    args = jnp.array([1.5, 1.0, 3.0, 1.0])
    y0 = jnp.array([1.0, 1.0])
    ts = jnp.linspace(0.0, 10.0, 11)
    ref = solve(lotka_volterra, y0, ts, args, solver="dopri8", rtol=1e-7, atol=1e-7)
    rows = []
    for solver, kw in [
        ("tsit5", dict(rtol=1e-4, atol=1e-6)),
        ("dopri5", dict(rtol=1e-4, atol=1e-6)),
        ("bosh3", dict(rtol=1e-4, atol=1e-6)),
        ("rk4", dict(steps=200)),
        ("heun", dict(steps=200)),
        ("euler", dict(steps=2000)),
    ]:
        sol = solve(lotka_volterra, y0, ts, args, solver=solver, **kw)
        err = float(jnp.max(jnp.abs(sol.ys - ref.ys)))
        rows.append(
            dict(
                solver=solver,
                setting=", ".join(f"{k}={v}" for k, v in kw.items()),
                max_error=err,
                steps=int(sol.stats["num_steps"]),
                nfe=int(sol.stats["nfe"]),
            )
        )
    print_table(
        rows,
        ["solver", "setting", "max_error", "steps", "nfe"],
        title="Lotka–Volterra on [0, 10], error against dopri8 at rtol 1e-7",
    )


def _bench(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: odelab bench {" + ",".join(BENCHMARKS) + "} [options]")
        print("each benchmark prints a table and writes JSON under runs/bench/")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(
            f"odelab bench: unknown benchmark {name!r}; valid: "
            + ", ".join(BENCHMARKS),
            file=sys.stderr,
        )
        return 2
    try:
        result = importlib.import_module(BENCHMARKS[name]).main(rest)
        # A benchmark's `main` returns its rows (for callers in Python), not a status.
        return result if isinstance(result, int) else 0
    except SystemExit as e:  # argparse's usage errors: report, do not exit
        return e.code if isinstance(e.code, int) else 2


DEFAULT_CONFIG = os.path.join("configs", "neural_ode_spiral.yaml")

_TRAIN_EPILOG = """examples:
  odelab train                                   # the default: a neural ODE on spirals
  odelab train configs/neural_ode_spiral.yaml --set training.steps=200
  odelab train --resume                          # continue from runs/<name>/checkpoint.eqx
"""


TRAIN_TASKS = {
    "learn_grid": "odelab.grid_job",
    "optimize_noise": "odelab.sampler_opt_job",
    "finetune_reward": "odelab.sampler_opt_job",
    "classify_series": "odelab.series_job",
    "latent_ode": "odelab.series_job",
    "fit_sde": "odelab.series_job",
    "classify_digits": "odelab.implicit_job",
    "generative": "odelab.generative_job",
}
"""Training tasks other than the default neural ODE, by the config's top-level `task`
key: each module's `run_task(source, overrides) -> metrics` loads the config itself."""


def _task_of(source) -> str:
    """The top-level `task` of a config file or mapping (default `"neural_ode"`)."""
    from .config import ConfigError, _read_yaml

    raw = source if isinstance(source, dict) else _read_yaml(Path(source))
    task = raw.get("task", "neural_ode") if isinstance(raw, dict) else "neural_ode"
    if task != "neural_ode" and task not in TRAIN_TASKS:
        valid = ", ".join(["neural_ode", *TRAIN_TASKS])
        raise ConfigError(f"unknown `task: {task}`; valid: {valid}.")
    return task


def _train(argv):
    parser = argparse.ArgumentParser(
        prog="odelab train",
        description="Train a model from a YAML config; writes runs/<name>/ (metrics, "
        "checkpoint, plots).",
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        help=f"YAML config (default: {DEFAULT_CONFIG}, or the same defaults built in "
        "when that file is not here)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )
    parser.add_argument("--resume", action="store_true", help="continue a stopped run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "odelab", "jax"),
        help="JAX persistent compilation cache ('' to disable)",
    )
    ns = parser.parse_args(argv)
    from .config import ConfigError, load_config

    source = ns.config
    if source is None:
        source = DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else {}
    try:
        task = _task_of(source)
        if ns.cache_dir and task == "neural_ode":
            from ._cache import enable_compilation_cache
            from ._checks import errors_as_nan

            enable_compilation_cache(ns.cache_dir)
            # A step with host callbacks (raising run-time checks) is never cached;
            # the loop names a failed solve from its result code instead. Only the
            # neural-ODE loop reads result codes from a NaN loss; the other tasks
            # keep raising checks (errors_as_nan is process-wide).
            errors_as_nan()
        if task != "neural_ode":
            module = importlib.import_module(TRAIN_TASKS[task])
            metrics = module.run_task(source, ns.overrides)
        else:
            config = load_config(source, ns.overrides)
            from .train import train

            metrics = train(config, resume=ns.resume, progress=not ns.no_progress)
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"odelab train: {e}", file=sys.stderr)
        return 2
    summary = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
    )
    print(f"done: {summary}")
    return 0


def _sample(argv):
    parser = argparse.ArgumentParser(
        prog="odelab sample",
        description="Sample an analytic diffusion model with a named sampler; write "
        "samples.npz, metrics.json (error against the exact flow map) and samples.png "
        "under run.out_dir/NAME.",
    )
    parser.add_argument("config", nargs="?", default=None, help="YAML sample config")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )
    ns = parser.parse_args(argv)
    from .config import ConfigError
    from .sample_job import load_sample_config, run_sample

    try:
        config = load_sample_config(ns.config or {}, ns.overrides)
        metrics = run_sample(config)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"odelab sample: {e}", file=sys.stderr)
        return 2
    print(
        f"{metrics['sampler']} on {metrics['grid']}, {metrics['steps']} steps: "
        f"RMSE {metrics['rmse']:.4g} vs the exact flow map, "
        f"{metrics['wall_ms']:.3g} ms for {metrics['samples']} samples "
        f"(compile {metrics['compile_s']:.2g} s)"
    )
    return 0


COMMANDS = {"train": _train, "sample": _sample, "bench": _bench, "demo": _demo}


def main(argv=None) -> int:
    """Entry point of the `odelab` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: odelab {" + ",".join(COMMANDS) + "} ...")
        print(_TRAIN_EPILOG)
        print("  odelab sample configs/sample_gmm_unipc.yaml")
        print("  odelab bench overhead\n  odelab bench train-step")
        print("  odelab bench work-precision --problem lorenz")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(
            f"odelab: unknown command {cmd!r}; valid: " + ", ".join(COMMANDS),
            file=sys.stderr,
        )
        return 2
    return COMMANDS[cmd](rest) or 0


if __name__ == "__main__":
    sys.exit(main())
