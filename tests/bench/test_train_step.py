"""Tests of `odelab bench train-step`: the rows, equal losses, the persistent cache."""

import json

import numpy as np
import pytest

from odelab.bench import train_step


# optax's Adam mixes Python floats and int32 counts (not strict-promotion clean).
pytestmark = pytest.mark.loose_promotion


def test_rows_and_equal_losses(tmp_path):
    # In-process with raising checks: `checks="nan"` is process-wide and would change
    # how every later test in this worker reports run-time errors.
    payload = train_step.run(
        repeats=2,
        out_dir=str(tmp_path),
        cache_probe=False,
        torch_peers=False,
        checks="raise",
    )
    with open(tmp_path / "train_step.json") as f:
        assert json.load(f)["benchmark"] == "train_step"
    rows = {r["contender"]: r for r in payload["rows"]}
    assert set(rows) == {
        "odelab",
        "diffrax",
        "odelab_per_trajectory",
        "floor_stored_residuals",
    }
    # Every contender computes the same loss: the same solve, reached four ways.
    losses = np.array([r["loss"] for r in rows.values()])
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
    assert rows["diffrax"]["vs_diffrax"] == 1.0
    assert all(r["step_ms"] > 0 for r in rows.values())
    # Tsit5 is FSAL: at least 6 new evaluations per accepted step plus the start.
    steps = payload["config"]["accepted_steps"]
    assert rows["odelab"]["nfe_fwd"] >= 6 * steps + 1


def test_accepted_grid_is_the_adaptive_solve():
    mlp, y0, ts, _ = train_step._problem(0)
    grid = train_step.accepted_grid(mlp, y0, ts)
    assert grid[0] == 0.0 and grid[-1] == 1.0
    assert np.all(np.diff(grid) > 0)


def test_persistent_cache_skips_compilation(tmp_path):
    # Two fresh processes share a cache directory: the second finds the `odelab
    # train` step compiled (only possible because the step has no host callbacks).
    cold = train_step._compile_in_fresh_process(str(tmp_path), 0)
    warm = train_step._compile_in_fresh_process(str(tmp_path), 0)
    assert any(p.name.startswith("jit__train_step") for p in tmp_path.iterdir())
    assert warm["compile_s"] < 0.3 * cold["compile_s"]
