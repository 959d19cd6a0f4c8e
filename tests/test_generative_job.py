"""Tests of `odelab.generative_job` (task `generative`): short training runs lower the
sample metrics, outputs are written, reflow runs, config errors name the keys."""

import json
import os

import numpy as np
import pytest

from odelab.config import ConfigError
from odelab.generative_job import load_task_config, run_task


def _config(tmp_path, **sections):
    config = dict(
        task="generative",
        name="test",
        data=dict(dataset="moons", n_train=2048, n_test=512),
        model=dict(kind="flow", width=64, depth=2),
        training=dict(steps=300, batch_size=128, learning_rate=3e-3),
        sample=dict(steps=[1, 8], n=512, likelihood=16),
        run=dict(out_dir=str(tmp_path)),
    )
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


@pytest.mark.loose_promotion  # optax's adam: a Python float meets an int32 count
def test_flow_with_reflow_lowers_the_metrics_and_writes_outputs(tmp_path):
    config = _config(
        tmp_path,
        reflow=dict(rounds=1, pairs=1024, steps=8, training_steps=100),
    )
    summary = run_task(config)
    directory = tmp_path / "test"
    for name in ("metrics.json", "model.eqx", "samples.npz", "samples.png"):
        assert (directory / name).exists(), name
    metrics = json.loads((directory / "metrics.json").read_text())
    before = metrics["initial"]["steps_8"]
    after = metrics["steps_8"]
    # Untrained: sliced W2 ≈ 0.6 and MMD ≈ 0.3 (measured); 300 steps reach about
    # half of that and less.
    assert after["sliced_w2"] < 0.6 * before["sliced_w2"]
    assert after["mmd"] < 0.6 * before["mmd"]
    assert np.isfinite(metrics["nll"]) and metrics["steps_8"]["nfe"] == 8
    assert metrics["reflow_steps_1"]["sliced_w2"] > 0
    assert metrics["reflow_straightness"] >= 0 and metrics["straightness"] >= 0
    samples = np.load(directory / "samples.npz")
    assert samples["steps_8"].shape == (512, 2)
    assert "losses" not in summary and "reflow_losses" not in summary


@pytest.mark.loose_promotion  # optax's adam: a Python float meets an int32 count
def test_cnf_task_runs(tmp_path):
    # Training lowering a CNF's NLL is tests/models/test_cnf.py's; this runs the
    # task's CNF branch (maximum likelihood, sampling, NLL) at the smallest sizes.
    config = _config(
        tmp_path,
        model=dict(kind="cnf", width=16, depth=1, rtol=1e-2, atol=1e-2),
        training=dict(steps=5, batch_size=32),
        sample=dict(n=64, likelihood=8),
    )
    summary = run_task(config)
    assert np.isfinite(summary["nll"]) and summary["steps_0"]["sliced_w2"] > 0
    assert os.path.exists(tmp_path / "test" / "samples.png")


@pytest.mark.parametrize(
    "sections, message",
    [
        (dict(model=dict(kind="diffusion"), reflow=dict(rounds=1)), "reflow"),
        (dict(loss=dict(fokker_planck=1.0)), "fokker_planck"),
        (dict(model=dict(kind="diffusion", precondition=True)), "precondition"),
        (dict(sample=dict(steps=[0, 2])), "sample.steps"),
        (dict(model=dict(kind="gan")), "model.kind"),
        (dict(reflow=dict(rounds=2)), "reflow.rounds"),
    ],
)
def test_config_errors_name_the_key(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=message):
        load_task_config(_config(tmp_path, **sections))


def test_config_names_are_the_librarys():
    # The config lists the loss's names without importing JAX; this pins them.
    from odelab.diffusion import losses
    from odelab.generative_job import GenLossConfig

    choices = GenLossConfig._choices
    assert choices["weighting"] == losses.WEIGHTINGS
    assert choices["time_sampling"] == losses.TIME_SAMPLINGS
    assert choices["distance"] == losses.DISTANCES
