"""`odelab sample`: config checks, outputs, and agreement with the exact flow map."""

import json
import os

import numpy as np
import pytest

from odelab.cli import main
from odelab.config import ConfigError
from odelab.sample_job import load_sample_config, run_sample


def test_config_defaults_and_overrides():
    cfg = load_sample_config({}, ["sampler.name=unipc", "sampler.options={order: 3}"])
    assert cfg.sampler.name == "unipc" and cfg.sampler.options == {"order": 3}
    assert cfg.schedule.kind == "vp_discrete" and cfg.run.samples == 2000


@pytest.mark.parametrize(
    "source, overrides, match",
    [
        ({"samplr": {}}, [], "unknown section `samplr`.*did you mean"),
        ({"sampler": {"step": 3}}, [], "unknown key `step`.*did you mean"),
        ({}, ["sampler.steps=0"], "sampler.steps"),
        ({}, ["schedule.kind=cosine"], "schedule.kind"),
        ({}, ["sampler"], "section.key=value"),
    ],
)
def test_config_errors(source, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_sample_config(source, overrides)


def test_run_writes_samples_metrics_and_plot(tmp_path):
    cfg = load_sample_config(
        {
            "name": "tiny",
            "model": {"components": 3, "dim": 2},
            "sampler": {"name": "dpmpp_2m", "steps": 20},
            "run": {"samples": 64, "out_dir": str(tmp_path)},
        }
    )
    metrics = run_sample(cfg)
    out = tmp_path / "tiny"
    data = np.load(out / "samples.npz")
    assert data["samples"].shape == (64, 2) and data["exact"].shape == (64, 2)
    assert json.loads((out / "metrics.json").read_text())["rmse"] == metrics["rmse"]
    assert os.path.getsize(out / "samples.png") > 1000
    # 20 DPM-Solver++(2M) evaluations on a 2-D three-component mixture: close to the
    # exact flow map, and the reported RMSE is the one the arrays give.
    rmse = np.sqrt(np.mean((data["samples"] - data["exact"]) ** 2))
    assert metrics["rmse"] == pytest.approx(rmse, rel=1e-5)
    assert metrics["rmse"] < 0.1


def test_cli_reports_a_bad_sampler(capsys, tmp_path):
    code = main(
        ["sample", "--set", "sampler.name=dpmpp2m", "--set", f"run.out_dir={tmp_path}"]
    )
    assert code == 2
    assert "did you mean" in capsys.readouterr().err
