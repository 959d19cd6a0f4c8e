"""Tests of `odelab bench models`: its quick mode, rows, JSON and equal losses."""

import importlib.util
import json

import numpy as np
import pytest

from odelab.bench import models


# optax's Adam mixes Python floats and int32 counts (not strict-promotion clean).
pytestmark = pytest.mark.loose_promotion

_TORCHCDE = importlib.util.find_spec("torchcde") is not None


def test_quick_run_rows_and_losses(tmp_path, capsys):
    # In-process with raising checks: `--checks nan` is process-wide and would change
    # how every later test in this worker reports run-time errors.
    models.main(
        ["--quick", "--case", "neural_cde", "--checks", "raise", "--out", str(tmp_path)]
    )
    with open(tmp_path / "models.json") as f:
        payload = json.load(f)
    assert payload["benchmark"] == "models"
    case = payload["cases"]["neural_cde"]
    rows = {r["contender"]: r for r in case["rows"]}
    jax_rows = ["odelab", "odelab_per_series", "diffrax"]
    assert set(jax_rows) <= set(rows)
    assert all(rows[name]["step_ms"] > 0 for name in rows)
    assert all(rows[name]["compile_s"] > 0 for name in jax_rows)
    # One model, one loss: the fused step, per-series solves and plain diffrax
    # compute the same RK4 solve in float32.
    losses = np.array([rows[name]["loss"] for name in jax_rows])
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
    out = capsys.readouterr().out
    if _TORCHCDE:
        # Same weights; torchdiffeq's RK4 is the 3/8 rule, which differs from the
        # classical one by O(h^4) at h = 1/5.
        assert {"torchcde", "torchcde_1thread"} & set(rows)
        assert case["peer"] in rows
        assert abs(rows["torchcde"]["loss"] - losses[0]) < 0.05 * losses[0]
        assert case["speedup"] > 0
        assert "speed-up over" in out
    else:
        assert case["speedup"] is None
        assert "no peer installed" in out


def test_cases_are_named_and_unknown_ones_rejected(tmp_path):
    assert "neural_cde" in models.CASES
    with pytest.raises(ValueError, match="Unknown case"):
        models.run(cases=("neural_ode",), out_dir=str(tmp_path), checks="raise")
