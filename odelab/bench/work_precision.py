r"""`odelab bench work-precision`: error against cost, per solver, on a zoo problem.

For each solver and each tolerance (adaptive solvers, $\text{rtol} = \text{atol} =
\text{tol}$) or each number of equal steps (fixed-step solvers such as `rk4` and
`euler`, or every solver when step counts are given), one `odelab.solve` of a
problem from `odelab.problems` is compiled, run and checked:

- **error**: $\max_{i,k} |y_k(t_i) - y^\star_k(t_i)| \,/\, \max_{i,k}
  |y^\star_k(t_i)|$ over the save times $t_i$ (`n_saves` equally spaced points of
  $[t_0, t_1]$, both ends included) and the components $k$: the largest absolute
  error, relative to the size of the solution. $y^\star$ is the problem's reference
  (closed form, or a float64 solve at tolerance $10^{-12}$);
- **run time**: the median over `repeats` calls of the compiled solve, all rows timed
  round-robin so that machine noise spreads evenly;
- **compile time**, separately: once per solver for all its tolerances (they are
  traced arguments of one executable), once per solver and step count for fixed
  steps (the grid is static). Rows that share an executable share a `compile_id`;
- **NFE** (vector-field evaluations, from `sol.stats["nfe"]`; not counted for
  implicit solvers) and the number of accepted and rejected steps;
- **status**: `ok`, or why the row failed (`max_steps` reached, another diffrax
  failure, a non-finite state). Solves run with `throw=False` and a `max_steps`
  guard, so an explicit solver on a stiff problem reports its failure in its row.

The table is printed, `work_precision_<problem>.json` and (unless disabled)
`work_precision_<problem>.png` (error against median run time and against NFE,
log-log, one line per solver) are written under `out_dir`.

**Precision.** The solves run in the dtype of the problem, as the caller built it
(JAX's default float: float32 unless x64 is on). The reference is always float64:
it is computed inside a `jax.enable_x64(True)` block, which leaves the caller's
setting untouched. The command line solves in float64 (inside the same kind of
block) unless `--float32` is given: implicit solvers need float64 on the stiff
problems (Kvaerno5 on `van_der_pol_stiff` in float32 hits `max_steps` at every
tolerance), and float32 caps accuracy near $10^{-6}$. In float32 the save times are
rounded to float32 and the reference is taken at the rounded times.
"""

import argparse
import functools
import os

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .. import problems as zoo, solve
from .._names import ODE_SOLVERS, resolve
from .._plan import has_error_estimate
from ._common import interleaved_medians, median, print_table, time_compile, write_json


NONSTIFF_SOLVERS = ("tsit5", "dopri5", "dopri8", "bosh3", "rk4")
"""Default solvers for a non-stiff problem (`rk4` runs at `STEP_COUNTS`)."""

STIFF_SOLVERS = ("kvaerno5", "kvaerno3", "tsit5")
"""Default solvers for a stiff problem: two implicit ones and an explicit one that
shows what stiffness costs (it usually stops at `max_steps`)."""

TOLERANCES = {
    "float64": {"nonstiff": (1e-3, 1e-5, 1e-7, 1e-9), "stiff": (1e-3, 1e-5, 1e-7)},
    "float32": {"nonstiff": (1e-3, 1e-4, 1e-5, 1e-6), "stiff": (1e-2, 1e-3, 1e-4)},
}
"""Default tolerances by precision and problem kind; float32 stops above round-off."""

STEP_COUNTS = (25, 50, 100, 200, 400)
"""Default step counts of fixed-step solvers."""

_COLUMNS = (
    "solver",
    "setting",
    "status",
    "error",
    "run_ms",
    "nfe",
    "steps",
    "rejected",
    "compile_s",
    "compile",
)


def work_precision(
    problem,
    solvers=None,
    tolerances=None,
    step_counts=None,
    *,
    repeats: int = 5,
    n_saves: int = 21,
    max_steps: int = 16384,
    out_dir: str = "runs/bench",
    plot: bool = True,
) -> dict:
    """Measure error against run time and NFE for `solvers` on a zoo problem.

    See the module docstring for what is measured.

    **Arguments:**

    - `problem`: a name from `odelab.problems.names()` (built in JAX's current
      default float) or an `odelab.problems.Problem`; deterministic only.
    - `solvers`: names (`"tsit5"`, `"kvaerno5"`, ...) or diffrax solver objects;
      default `STIFF_SOLVERS` or `NONSTIFF_SOLVERS` after `problem.stiff`.
    - `tolerances`: the values of `rtol = atol` for adaptive solvers; default from
      `TOLERANCES` after the problem's dtype and kind. When only `step_counts` is
      given, adaptive solvers run at those step counts instead.
    - `step_counts`: numbers of equal steps over $[t_0, t_1]$; fixed-step-only solvers
      always use them (default `STEP_COUNTS`), adaptive solvers too when given.
    - `repeats`: timed calls per row; the median is reported.
    - `n_saves`: the number of save times at which the error is measured.
    - `max_steps`: the guard of adaptive solves; a row that reaches it fails.
    - `out_dir`: where the JSON and PNG go.
    - `plot`: write the PNG.

    **Returns:** the JSON payload: `problem`, `config`, `rows` (one dict per solve:
    `solver`, `mode`, `rtol`, `atol`, `num_steps_requested`, `setting`, `status`,
    `error` (`None` unless `status` is `ok`), `run_ms`, `nfe` (`None` if not
    counted), `steps`, `rejected`, `compile_id`, `compile_s`), `compiles` (each
    compilation with the rows that share it), `raw_run_s`, `png`.

    **Raises:** `ValueError` for an unknown or stochastic problem, an unknown solver
    name, or empty tolerances/step counts.

    **Example:**

    ```python
    from odelab.bench.work_precision import work_precision
    out = work_precision("lorenz", ["tsit5", "dopri8"], [1e-4, 1e-8], repeats=3)
    [(r["solver"], r["error"], r["nfe"]) for r in out["rows"]]
    ```
    """
    problem = _as_problem(problem)
    if n_saves < 2:
        raise ValueError(f"`n_saves` must be at least 2, got {n_saves}.")
    dtype = jnp.dtype(problem.y0.dtype)
    precision = "float64" if dtype.itemsize >= 8 else "float32"
    kind = "stiff" if problem.stiff else "nonstiff"
    if solvers is None:
        solvers = STIFF_SOLVERS if problem.stiff else NONSTIFF_SOLVERS
    if tolerances is None and step_counts is None:
        tolerances = TOLERANCES[precision][kind]
    cases = _cases(solvers, tolerances, step_counts)

    ts = jnp.asarray(np.linspace(problem.t0, problem.t1, n_saves), dtype)
    ref_ts = np.clip(np.asarray(ts, np.float64), problem.t0, problem.t1)
    reference = _reference(problem, ref_ts)
    scale = float(np.max(np.abs(reference)))

    real = jnp.finfo(dtype).dtype
    operands = (problem.y0, problem.args)
    rows, compiles, calls = [], [], {}
    for label, solver, mode, settings in cases:
        if mode == "adaptive":
            fn = _solve_fn(problem, solver, ts, max_steps=max_steps)
            tols = {tol: (jnp.asarray(tol, real),) * 2 for tol in settings}
            executable, compile_s = time_compile(fn, *operands, *tols[settings[0]])
            compiles.append(_compile(compiles, label, mode, compile_s))
            for tol in settings:
                row = _row(label, mode, compiles[-1], rtol=tol, atol=tol)
                calls[row["setting"]] = functools.partial(
                    executable, *operands, *tols[tol]
                )
                rows.append(row)
        else:
            for n in settings:
                fn = _solve_fn(problem, solver, ts, steps=n)
                executable, compile_s = time_compile(fn, *operands)
                compiles.append(_compile(compiles, label, mode, compile_s))
                row = _row(label, mode, compiles[-1], num_steps_requested=n)
                calls[row["setting"]] = functools.partial(executable, *operands)
                rows.append(row)

    for row in rows:
        row.update(_check(calls[row["setting"]](), reference, scale))
        compiles[row["compile_id"]]["rows"].append(row["setting"])
    times = interleaved_medians(calls, (), repeats=repeats)
    for row in rows:
        row["run_ms"] = 1e3 * median(times[row["setting"]])

    name = problem.name
    title = (
        f"work-precision: {name} ({'stiff, ' if problem.stiff else ''}{dtype.name}); "
        f"error = max|y - ref| / max|ref| over {n_saves} save times; run time: "
        f"median of {repeats}; rows with the same compile # share one compilation"
    )
    print_table(_display(rows), _COLUMNS, title=title)
    png = None
    if plot:
        os.makedirs(out_dir, exist_ok=True)
        png = os.path.join(out_dir, f"work_precision_{name}.png")
        _plot(rows, png, f"{name} ({dtype.name})")
        print(f"wrote {png}", flush=True)
    payload = {
        "benchmark": "work_precision",
        "problem": name,
        "config": dict(
            dtype=dtype.name,
            stiff=problem.stiff,
            t0=problem.t0,
            t1=problem.t1,
            n_saves=n_saves,
            repeats=repeats,
            max_steps=max_steps,
            tolerance_rule="rtol = atol = tol",
            error_metric="max over save times and components of |y - ref|, "
            "divided by max |ref|",
            reference=problem.reference_kind,
        ),
        "rows": rows,
        "compiles": compiles,
        "raw_run_s": times,
        "png": png,
    }
    write_json(f"work_precision_{name}", payload, out_dir)
    return payload


def _as_problem(problem) -> zoo.Problem:
    if isinstance(problem, str):
        if problem not in zoo.names() or zoo.get(problem).stochastic:
            raise ValueError(
                f"Unknown problem {problem!r} for a work-precision diagram; valid "
                f"(deterministic) problems: {', '.join(deterministic_problems())}."
            )
        problem = zoo.get(problem)
    if not isinstance(problem, zoo.Problem):
        raise TypeError(
            "`problem` must be a name from `odelab.problems.names()` or an "
            f"`odelab.problems.Problem`, got {type(problem).__name__}."
        )
    if problem.stochastic:
        raise ValueError(
            f"`{problem.name}` is stochastic: it has no single reference trajectory "
            "to measure an error against."
        )
    return problem


def _reference(problem, ts) -> np.ndarray:
    """The problem's reference at `ts`, in float64 whatever the caller's precision."""
    with jax.enable_x64(True):
        return np.asarray(problem.reference(ts), np.float64)


def deterministic_problems() -> list[str]:
    """The zoo problems a work-precision diagram can be drawn for, sorted."""
    return [name for name in zoo.names() if not zoo.get(name).stochastic]


def _cases(solvers, tolerances, step_counts):
    """`(label, solver, mode, settings)` per solver and mode, in the given order."""
    if isinstance(solvers, (str, diffrax.AbstractSolver)):
        solvers = [solvers]
    for what, values in (("tolerances", tolerances), ("step_counts", step_counts)):
        if values is not None and len(values) == 0:
            raise ValueError(f"`{what}` is empty; pass None for the defaults.")
    if step_counts is not None:
        bad = [n for n in step_counts if int(n) != n or n < 1]
        if bad:
            raise ValueError(f"`step_counts` must be positive integers, got {bad}.")
        step_counts = tuple(int(n) for n in step_counts)
    cases, labels = [], set()
    for value in solvers:
        solver = resolve(value, ODE_SOLVERS, "ODE solver", "solvers")
        label = value if isinstance(value, str) else type(value).__name__
        if label in labels:
            raise ValueError(f"`solvers` names {label!r} twice.")
        labels.add(label)
        adaptive = has_error_estimate(solver)
        if adaptive and tolerances is not None:
            cases.append((label, solver, "adaptive", tuple(map(float, tolerances))))
        if not adaptive or step_counts is not None:
            cases.append((label, solver, "fixed", step_counts or STEP_COUNTS))
    return cases


def _solve_fn(problem, solver, ts, *, steps=None, max_steps=None):
    """The solve as a function of `(y0, args[, rtol, atol])`, returning arrays only."""

    def run(y0, args, rtol=None, atol=None):
        kwargs = dict(steps=steps) if steps is not None else dict(rtol=rtol, atol=atol)
        if max_steps is not None:
            kwargs["max_steps"] = max_steps
        sol = solve(
            problem.vector_field, y0, ts, args, solver=solver, throw=False, **kwargs
        )
        stats = sol.stats
        return dict(
            ys=sol.ys,
            nfe=stats["nfe"],
            steps=stats["num_accepted_steps"],
            rejected=stats["num_rejected_steps"],
            successful=diffrax.is_successful(sol.result),
            max_steps_reached=sol.result == diffrax.RESULTS.max_steps_reached,
        )

    return run


def _compile(compiles, label, mode, compile_s) -> dict:
    return dict(id=len(compiles), solver=label, mode=mode, compile_s=compile_s, rows=[])


def _row(label, mode, compiled, *, rtol=None, atol=None, num_steps_requested=None):
    if mode == "adaptive":
        setting = f"{label} rtol={rtol:g}"
    else:
        setting = f"{label} steps={num_steps_requested}"
    return dict(
        solver=label,
        mode=mode,
        rtol=rtol,
        atol=atol,
        num_steps_requested=num_steps_requested,
        setting=setting,
        compile_id=compiled["id"],
        compile_s=compiled["compile_s"],
    )


def _check(out, reference, scale) -> dict:
    ys = np.asarray(out["ys"], np.float64)
    nfe = int(out["nfe"])
    if bool(out["max_steps_reached"]):
        status = "max_steps"
    elif not bool(out["successful"]):
        status = "failed"
    elif not np.all(np.isfinite(ys)):
        status = "nonfinite"
    else:
        status = "ok"
    error = float(np.max(np.abs(ys - reference)) / scale) if status == "ok" else None
    return dict(
        status=status,
        error=error,
        nfe=None if nfe < 0 else nfe,
        steps=int(out["steps"]),
        rejected=int(out["rejected"]),
    )


def _display(rows) -> list[dict]:
    """Table rows: `-` for missing values, a shared compile time shown once."""
    shown, seen = [], set()
    for row in rows:
        cells = {k: ("-" if v is None else v) for k, v in row.items()}
        cells["setting"] = row["setting"].split(" ", 1)[1]
        cells["compile"] = f"#{row['compile_id']}"
        if row["compile_id"] in seen:
            cells["compile_s"] = ""
        seen.add(row["compile_id"])
        shown.append(cells)
    return shown


def _plot(rows, path, title) -> None:
    """Error against median run time and against NFE, log-log, one line per solver."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_time, ax_nfe = fig.subplots(1, 2)
    lines = {}
    for row in rows:
        lines.setdefault((row["solver"], row["mode"]), []).append(row)
    uncounted = []
    for (solver, mode), group in lines.items():
        ok = [r for r in group if r["status"] == "ok" and r["error"] > 0]
        failed = len(group) - len(ok)
        label = solver if mode == "adaptive" else f"{solver} (fixed steps)"
        if failed:
            label += f" [{failed} failed]"
        if not ok:
            label += " (no point)"
        error = [r["error"] for r in ok]
        (line,) = ax_time.loglog([r["run_ms"] for r in ok], error, "o-", label=label)
        if all(r["nfe"] is not None for r in ok):
            ax_nfe.loglog(
                [r["nfe"] for r in ok], error, "o-", color=line.get_color(), label=label
            )
        else:
            uncounted.append(solver)
    ax_time.set_xlabel("median run time [ms]")
    ax_nfe.set_xlabel("vector-field evaluations (NFE)")
    if uncounted:
        ax_nfe.set_title(f"NFE not counted: {', '.join(uncounted)}", fontsize=9)
    if not ax_nfe.lines:
        ax_nfe.text(
            0.5,
            0.5,
            "no solver with counted NFE",
            ha="center",
            transform=ax_nfe.transAxes,
        )
    for ax in (ax_time, ax_nfe):
        ax.set_ylabel("max |y - ref| / max |ref|")
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=8)
    fig.suptitle(f"work-precision: {title}")
    fig.savefig(path, dpi=120)


def _float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None):
    """`odelab bench work-precision --problem NAME [options]`; see `--help`."""
    parser = argparse.ArgumentParser(
        prog="odelab bench work-precision",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--problem", required=True, help="a deterministic zoo problem")
    parser.add_argument(
        "--solvers", help="comma-separated solver names (default: after the problem)"
    )
    parser.add_argument(
        "--tolerances", type=_float_list, help="comma-separated rtol = atol values"
    )
    parser.add_argument(
        "--steps", type=_int_list, help="comma-separated numbers of fixed steps"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--saves", type=int, default=21, help="save times (error)")
    parser.add_argument("--max-steps", type=int, default=16384)
    parser.add_argument(
        "--float32",
        action="store_true",
        help="solve in float32 (default: float64; the reference is float64 always)",
    )
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--no-plot", action="store_true")
    ns = parser.parse_args(argv)
    solvers = None if ns.solvers is None else [s.strip() for s in ns.solvers.split(",")]
    # A scoped switch: the problem is built, compiled and solved in the chosen
    # precision, and the caller's x64 setting is restored afterwards.
    with jax.enable_x64(not ns.float32):
        try:
            problem = _as_problem(ns.problem)
            _cases(solvers or (), ns.tolerances, ns.steps)
        except ValueError as e:
            parser.error(str(e))
        work_precision(
            problem,
            solvers,
            ns.tolerances,
            ns.steps,
            repeats=ns.repeats,
            n_saves=ns.saves,
            max_steps=ns.max_steps,
            out_dir=ns.out,
            plot=not ns.no_plot,
        )


if __name__ == "__main__":
    main()
