"""Tests of `odelab train` with `task: classify_digits` (`odelab.implicit_job`)."""

import json
import os

import pytest

from odelab import cli
from odelab.config import ConfigError
from odelab.implicit_job import load_task_config, train_digits


pytest.importorskip("sklearn")
pytestmark = pytest.mark.loose_promotion  # optax's adam (see tests/conftest.py)


def _config(kind, **model):
    return dict(
        task="classify_digits",
        name=f"t_{kind}",
        model=dict(kind=kind, hidden=8, width=8, **model),
        training=dict(epochs=1, batch_size=256),
    )


def test_config_errors():
    with pytest.raises(ConfigError, match="kind"):
        load_task_config(_config("transformer"))
    with pytest.raises(ConfigError, match="field"):
        load_task_config(_config("homoode", field="exact"))
    with pytest.raises(ConfigError, match="test_fraction"):
        load_task_config(dict(task="classify_digits", data=dict(test_fraction=1.0)))


@pytest.mark.parametrize("kind", ["deq"])
def test_models_train_and_report(kind):
    _, metrics = train_digits(load_task_config(_config(kind)))
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert len(metrics["losses"]) == 5  # 1437 // 256 batches
    assert metrics["train_step_temp_bytes"] > 0
    assert 0.0 <= metrics["unconverged_test"] <= 1.0


def test_runs_from_the_cli(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    config = dict(_config("mlp"), run=dict(out_dir=str(tmp_path)))
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", str(path)]) == 0
    metrics = json.loads((tmp_path / "t_mlp" / "metrics.json").read_text())
    assert metrics["kind"] == "mlp" and metrics["test_accuracy"] > 0.1
    assert os.path.getsize(tmp_path / "t_mlp" / "model.eqx") > 0
