"""Tests of the `odelab` command: dispatch, exit codes, and the benchmarks it runs."""

import json

import pytest

from odelab.cli import main


def _read(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow  # four adaptive solves to compile: ~15 s on 2 cores
def test_demo_prints_a_table(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "max_error" in out and "nfe" in out
    for solver in ("tsit5", "dopri5", "rk4", "euler"):
        assert solver in out


def test_no_command_and_help():
    assert main([]) == 2
    assert main(["--help"]) == 0


def test_unknown_command_returns_2(capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "demo" in err and "bench" in err


def test_unknown_benchmark_lists_valid_names(capsys):
    assert main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "overhead" in err and "work-precision" in err


def test_work_precision_writes_json(tmp_path, capsys):
    argv = ["bench", "work-precision", "--problem", "exponential_decay"]
    argv += ["--solvers", "tsit5", "--tolerances", "1e-4", "--repeats", "1"]
    argv += ["--out", str(tmp_path), "--no-plot"]
    assert main(argv) == 0
    assert "rtol=0.0001" in capsys.readouterr().out
    payload = _read(tmp_path / "work_precision_exponential_decay.json")
    (row,) = payload["rows"]
    assert (row["solver"], row["rtol"], row["status"]) == ("tsit5", 1e-4, "ok")
    assert payload["config"]["dtype"] == "float64"  # the command's default
    assert not (tmp_path / "work_precision_exponential_decay.png").exists()


def test_work_precision_float32(tmp_path):
    argv = ["bench", "work-precision", "--problem", "exponential_decay", "--float32"]
    argv += ["--solvers", "rk4", "--steps", "10", "--repeats", "1"]
    argv += ["--out", str(tmp_path), "--no-plot"]
    assert main(argv) == 0
    payload = _read(tmp_path / "work_precision_exponential_decay.json")
    assert payload["config"]["dtype"] == "float32"
    assert [(r["solver"], r["mode"]) for r in payload["rows"]] == [("rk4", "fixed")]


def test_work_precision_unknown_problem_lists_valid_names(tmp_path, capsys):
    argv = ["bench", "work-precision", "--problem", "nope", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "lorenz" in err and "robertson" in err


@pytest.mark.slow
def test_overhead_writes_json(tmp_path, capsys):
    argv = ["bench", "overhead", "--repeats", "2", "--compile-repeats", "1"]
    assert main(argv + ["--out", str(tmp_path)]) == 0
    assert "odelab / handwritten" in capsys.readouterr().out
    payload = _read(tmp_path / "overhead.json")
    assert [r["contender"] for r in payload["rows"]] == [
        "odelab",
        "diffrax",
        "handwritten",
        "odelab_traced_ts",
    ]
    assert all(len(v) == 2 for v in payload["raw_run_s"].values())


@pytest.mark.loose_promotion  # optax's adam mixes a Python float with an int32 count
def test_train_runs_a_small_config_and_reports(tmp_path, capsys):
    argv = ["train", "--no-progress", "--cache-dir", ""]
    argv += ["--set", f"output.dir={tmp_path}", "--set", "training.steps=6"]
    argv += ["--set", "training.eval_every=3", "--set", "output.plots=false"]
    argv += ["--set", "data.n_trajectories=32", "--set", "training.batch_size=8"]
    assert main(argv) == 0
    assert "val_mse=" in capsys.readouterr().out
    assert (tmp_path / "neural_ode_spiral" / "checkpoint.eqx").exists()


def test_train_bad_config_is_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml"), "--cache-dir", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("odelab train:") and "missing.yaml" in err
    assert "\n" not in err
    assert main(["train", "--set", "model.widht=3", "--cache-dir", ""]) == 2
    assert "did you mean `width`" in capsys.readouterr().err


def test_other_tasks_leave_runtime_checks_raising(tmp_path):
    # `odelab train` turns run-time checks into NaNs (process-wide) for the neural-ODE
    # loop only; a sampler task must leave them raising, or every later check in the
    # process would pass silently.
    import equinox._errors as eqx_errors

    before = eqx_errors.EQX_ON_ERROR
    path = tmp_path / "bad.yaml"
    path.write_text("task: learn_grid\nsampler: {nme: unipc}\n")
    assert main(["train", str(path), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert eqx_errors.EQX_ON_ERROR == before  # noqa: SIM300
