"""Tests of `odelab.bench.work_precision`: the rows, the error metric, failures."""

import json

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import odelab
import odelab.problems
from odelab.bench.work_precision import work_precision


_ROW_FIELDS = {
    "solver",
    "mode",
    "rtol",
    "atol",
    "num_steps_requested",
    "setting",
    "status",
    "error",
    "run_ms",
    "nfe",
    "steps",
    "rejected",
    "compile_id",
    "compile_s",
}


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_smoke_rows_compiles_and_plot(tmp_path):
    out = work_precision(
        "exponential_decay",
        ["tsit5", diffrax.Dopri5()],  # a name and a solver object
        [1e-3, 1e-7],
        repeats=1,
        out_dir=str(tmp_path),
    )
    payload = _read(tmp_path / "work_precision_exponential_decay.json")
    assert payload["problem"] == "exponential_decay"
    assert payload["config"]["dtype"] == "float32"
    assert "environment" in payload
    rows = payload["rows"]
    assert [(r["solver"], r["rtol"]) for r in rows] == [
        ("tsit5", 1e-3),
        ("tsit5", 1e-7),
        ("Dopri5", 1e-3),
        ("Dopri5", 1e-7),
    ]
    for row in rows:
        assert set(row) >= _ROW_FIELDS
        assert row["mode"] == "adaptive"
        assert row["status"] == "ok"
        assert row["error"] > 0 and row["run_ms"] > 0 and row["compile_s"] > 0
        assert row["nfe"] > row["steps"] > 0
    # One executable per solver: the tolerances are traced arguments.
    assert [c["rows"] for c in payload["compiles"]] == [
        ["tsit5 rtol=0.001", "tsit5 rtol=1e-07"],
        ["Dopri5 rtol=0.001", "Dopri5 rtol=1e-07"],
    ]
    assert rows[0]["compile_id"] == rows[1]["compile_id"] != rows[2]["compile_id"]
    loose, tight = rows[0], rows[1]
    assert tight["error"] < loose["error"]
    assert tight["nfe"] > loose["nfe"]
    assert (tmp_path / "work_precision_exponential_decay.png").stat().st_size > 0
    assert out["rows"] == rows


def test_fixed_steps_error_is_the_documented_metric(tmp_path):
    n_saves, steps = 5, 40
    out = work_precision(
        "harmonic_oscillator",
        ["rk4", "tsit5"],
        step_counts=[steps],
        repeats=1,
        n_saves=n_saves,
        out_dir=str(tmp_path),
        plot=False,
    )
    assert [(r["solver"], r["mode"]) for r in out["rows"]] == [
        ("rk4", "fixed"),
        ("tsit5", "fixed"),
    ]
    rk4 = out["rows"][0]
    assert rk4["num_steps_requested"] == rk4["steps"] == steps
    assert rk4["nfe"] == 4 * steps
    assert out["png"] is None
    assert not (tmp_path / "work_precision_harmonic_oscillator.png").exists()

    # The metric recomputed by hand, against the closed form in float64 numpy.
    problem = odelab.problems.get("harmonic_oscillator")
    ts = jnp.linspace(problem.t0, problem.t1, n_saves)
    sol = odelab.solve(
        problem.vector_field, problem.y0, ts, problem.args, solver="rk4", steps=steps
    )
    omega = float(problem.args["omega"])
    q0, p0 = np.asarray(problem.y0, np.float64)
    t = np.asarray(ts, np.float64)[:, None] - problem.t0
    ref = np.concatenate(
        [
            q0 * np.cos(omega * t) + p0 / omega * np.sin(omega * t),
            -q0 * omega * np.sin(omega * t) + p0 * np.cos(omega * t),
        ],
        axis=1,
    )
    error = np.max(np.abs(np.asarray(sol.ys, np.float64) - ref)) / np.max(np.abs(ref))
    # Two compilations of the same float32 solve may round differently: allow the
    # round-off of `steps` steps, relative to the solution's size.
    eps = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(rk4["error"], error, rtol=0, atol=steps * eps)
    assert error > 100 * steps * eps  # the check is not vacuous


def test_failure_is_reported_in_the_row(tmp_path):
    out = work_precision(
        "exponential_decay",
        ["tsit5"],
        [1e-6],
        repeats=1,
        max_steps=2,
        out_dir=str(tmp_path),
        plot=True,
    )
    (row,) = out["rows"]
    assert row["status"] == "max_steps"
    assert row["error"] is None
    assert row["steps"] + row["rejected"] == 2
    assert (tmp_path / "work_precision_exponential_decay.png").exists()


@pytest.mark.parametrize(
    "name, match", [("nope", "lorenz"), ("ornstein_uhlenbeck", "robertson")]
)
def test_unknown_or_stochastic_problem_lists_valid_names(name, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        work_precision(name, out_dir=str(tmp_path))


def test_unknown_solver_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="kvaerno5"):
        work_precision("exponential_decay", ["nope"], out_dir=str(tmp_path))


@pytest.mark.benchmark
@pytest.mark.x64
def test_full_default_run_nonstiff(tmp_path):
    out = work_precision("lorenz", repeats=5, out_dir=str(tmp_path))
    assert all(r["status"] == "ok" for r in out["rows"])
    for solver in ("tsit5", "dopri5", "dopri8", "bosh3"):
        errors = [r["error"] for r in out["rows"] if r["solver"] == solver]
        assert errors == sorted(errors, reverse=True), (solver, errors)
    rk4 = [r["error"] for r in out["rows"] if r["solver"] == "rk4"]
    assert rk4 == sorted(rk4, reverse=True)


@pytest.mark.benchmark
@pytest.mark.x64
def test_full_default_run_stiff(tmp_path):
    out = work_precision("robertson", repeats=3, out_dir=str(tmp_path))
    implicit = [r for r in out["rows"] if r["solver"].startswith("kvaerno")]
    assert implicit and all(r["status"] == "ok" for r in implicit)
    assert all(r["nfe"] is None for r in implicit)
