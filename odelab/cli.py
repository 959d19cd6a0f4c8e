"""The `odelab` command: `odelab demo`, `odelab bench <name> [options]`."""

import argparse
import importlib
import sys


BENCHMARKS = {
    "overhead": "odelab.bench.overhead",
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
        return importlib.import_module(BENCHMARKS[name]).main(rest) or 0
    except SystemExit as e:  # argparse's usage errors: report, do not exit
        return e.code if isinstance(e.code, int) else 2


COMMANDS = {"demo": _demo, "bench": _bench}


def main(argv=None) -> int:
    """Entry point of the `odelab` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: odelab {" + ",".join(COMMANDS) + "} ...")
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
