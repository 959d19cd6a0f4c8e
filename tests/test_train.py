"""The training loop: learning, files, bitwise resume, and the failure modes.

optax's adam raises a Python float to an int32 count, which strict dtype promotion
rejects, so every test here runs with `loose_promotion`.
"""

import dataclasses
import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest

from odelab.config import ConfigError, load_config
from odelab.train import (
    _diagnose,
    data_mesh,
    load_checkpoint,
    make_dataset,
    make_model,
    train,
)


pytestmark = pytest.mark.loose_promotion


def _config(**sections):
    raw = {
        "name": "tiny",
        "model": {"width": 16, "depth": 1},
        "data": {"n_trajectories": 32, "n_times": 8},
        "solver": {"name": "rk4", "steps": 8},
        "training": {
            "steps": 12,
            "batch_size": 8,
            "eval_every": 6,
            "checkpoint_every": 4,
            "log_every": 1,
        },
        "optimizer": {"learning_rate": 0.01},
        "output": {"plots": False},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return load_config(raw)


def _records(directory):
    with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def _read(path):
    with open(path, "rb") as file:
        return file.read()


def test_loss_decreases(tmp_path):
    config = _config(training={"steps": 40})
    metrics = train(config, progress=False, out_root=str(tmp_path))
    losses = [r["loss"] for r in _records(metrics["run_dir"]) if "loss" in r]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert metrics["steps"] == 40
    assert np.isfinite(metrics["val_mse"])


def test_files_written(tmp_path):
    config = _config(output={"plots": True}, training={"log_every": 5})
    metrics = train(config, progress=False, out_root=str(tmp_path))
    directory = metrics["run_dir"]
    assert directory == os.path.join(str(tmp_path), "tiny")
    for name in (
        "metrics.jsonl",
        "checkpoint.eqx",
        "checkpoint.json",
        "config.yaml",
        "loss.png",
        "trajectories.png",
    ):
        assert os.path.getsize(os.path.join(directory, name)) > 0, name
    records = _records(directory)
    # Logged at 5, 10 and the end; evaluated at 6 and 12.
    assert [r["step"] for r in records] == [5, 6, 10, 12]
    assert {"loss", "grad_norm", "steps_per_s"} <= records[0].keys()
    assert {"val_mse", "nfe"} <= records[-1].keys()
    assert load_config(os.path.join(directory, "config.yaml")) == config
    with open(os.path.join(directory, "checkpoint.json"), encoding="utf-8") as file:
        assert json.load(file)["step"] == 12
    for name in ("loss.png", "trajectories.png"):
        assert _read(os.path.join(directory, name))[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_is_bitwise(tmp_path):
    config = _config()
    full = train(config, progress=False, out_root=str(tmp_path / "full"))
    split_root = str(tmp_path / "split")
    stopped = train(config, progress=False, out_root=split_root, stop_after=5)
    assert stopped["steps"] == 5
    resumed = train(config, progress=False, out_root=split_root, resume=True)
    assert resumed["steps"] == 12
    model_a, opt_a, step_a, _ = load_checkpoint(config, full["run_dir"])
    model_b, opt_b, step_b, _ = load_checkpoint(config, resumed["run_dir"])
    assert step_a == step_b == 12
    leaves_a = jax.tree.leaves(eqx.filter((model_a, opt_a), eqx.is_array))
    leaves_b = jax.tree.leaves(eqx.filter((model_b, opt_b), eqx.is_array))
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert resumed["loss"] == full["loss"]
    # The stopped run's records up to its checkpoint, then the resumed run's.
    assert [r["step"] for r in _records(resumed["run_dir"])] == list(range(1, 13))


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*checkpoint.eqx"):
        train(_config(), progress=False, out_root=str(tmp_path), resume=True)


def test_resume_with_different_model(tmp_path):
    train(_config(), progress=False, out_root=str(tmp_path), stop_after=4)
    other = _config(model={"width": 32, "activation": "relu"})
    with pytest.raises(ConfigError, match="activation 'tanh' -> 'relu', width 16"):
        train(other, progress=False, out_root=str(tmp_path), resume=True)


def test_untrainable_data_kind(tmp_path):
    with pytest.raises(ConfigError, match="'moons' is not trainable by the neural-ODE"):
        train(_config(data={"kind": "moons"}), progress=False, out_root=str(tmp_path))


def test_batch_larger_than_training_set(tmp_path):
    with pytest.raises(ConfigError, match="`training.batch_size` .64. exceeds the 26"):
        train(
            _config(training={"batch_size": 64}), progress=False, out_root=str(tmp_path)
        )


@pytest.mark.parametrize("n_times", [8, 20])
def test_nan_guard_keeps_checkpoint(tmp_path, n_times):
    # Plain SGD with an absurd step: step 1 is computed from the finite initial
    # parameters, step 2 from parameters of size ~1e30, whose loss overflows
    # (n_times=8) or whose solve trips `odelab.solve`'s NaN check (n_times=20).
    config = _config(
        data={"n_times": n_times},
        optimizer={
            "name": "sgd",
            "learning_rate": 1e30,
            "schedule": "constant",
            "grad_clip_norm": None,
        },
        training={"checkpoint_every": 1},
    )
    reference = train(
        config, progress=False, out_root=str(tmp_path / "ref"), stop_after=1
    )
    root = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match=r"is (nan|inf) at step 2.*; the last good"):
        train(config, progress=False, out_root=root)
    directory = os.path.join(root, "tiny")
    for name in ("checkpoint.eqx", "checkpoint.json"):
        expected = _read(os.path.join(reference["run_dir"], name))
        assert _read(os.path.join(directory, name)) == expected


_DATA_PARALLEL_SCRIPT = """
import json, sys
import jax
from odelab.config import load_config
from odelab.train import train
config = load_config({
    "name": "dp", "model": {"width": 16, "depth": 1},
    "data": {"n_trajectories": 64, "n_times": 8},
    "training": {"steps": 10, "batch_size": 8, "log_every": 1, "eval_every": 5,
                 "checkpoint_every": 5},
    "output": {"plots": False},
})
train(config, progress=False, out_root=sys.argv[1])
print(json.dumps({"devices": len(jax.devices())}))
"""


@pytest.mark.slow
def test_data_parallel_over_four_devices_matches_one(tmp_path):
    # Four CPU devices in a subprocess (the device count is fixed at JAX start-up):
    # the batch is sharded over a mesh, parameters replicated; the loss trajectory
    # equals the single-device run up to float32 reduction order, ~1000 ulp after ten
    # optimiser steps.
    losses = {}
    for count in (1, 4):
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        env["JAX_PLATFORMS"] = "cpu"
        out = tmp_path / str(count)
        done = subprocess.run(
            [sys.executable, "-c", _DATA_PARALLEL_SCRIPT, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["devices"] == count
        with open(out / "dp" / "metrics.jsonl", encoding="utf-8") as f:
            losses[count] = [json.loads(line)["loss"] for line in f]
    assert len(losses[1]) == len(losses[4]) == 10
    np.testing.assert_allclose(losses[4], losses[1], rtol=1e3 * 2**-23)


def test_batch_must_split_over_devices(monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda: [object()] * 3)
    with pytest.raises(ConfigError, match="multiple of the 3 devices"):
        data_mesh(8)


def test_failed_solve_is_named(tmp_path):
    # Adaptive Tsit5 with max_steps=2 cannot reach t1: the loop stops at step 1 and
    # says why, whether the step's checks raise (here) or trace as NaN (the CLI,
    # where `_diagnose` names the cause from the solve's result code).
    config = _config(solver={"name": "tsit5", "steps": None, "max_steps": 2})
    with pytest.raises(RuntimeError, match="at step 1 .*reached `max_steps`"):
        train(config, progress=False, out_root=str(tmp_path))
    train_set, _ = make_dataset(config)
    model = make_model(config, jax.random.key(0))
    cause = _diagnose(model, train_set, jax.random.key(1), 0, 8)
    assert "reached `max_steps`" in cause


def test_cli_step_has_no_host_callbacks():
    # What makes the persistent compilation cache work for `odelab train`: with the
    # checks traced as NaN, the training step contains no host callback. Checked in
    # a fresh process, since the switch is process-wide.
    script = (
        "import jax, equinox as eqx\n"
        "from odelab._checks import errors_as_nan\n"
        "from odelab import train as T\n"
        "from odelab.config import load_config\n"
        "errors_as_nan()\n"
        "c = load_config({'training': {'steps': 1}})\n"
        "tr, _ = T.make_dataset(c)\n"
        "m = T.make_model(c, jax.random.key(0))\n"
        "o = T.make_optimizer(c)\n"
        "s = o.init(eqx.filter(m, eqx.is_array))\n"
        "j = eqx.filter_make_jaxpr(T._train_step.__wrapped__)(m, s, tr, "
        "jax.random.key(0), jax.numpy.asarray(0), o, 8, None)[0]\n"
        "print('CALLBACKS', str(j).count('callback'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "CALLBACKS 0" in out.stdout


def test_reversible_config_trains_like_checkpointing(tmp_path):
    # configs/neural_ode_spiral_reversible.yaml: reversible Heun with odelab's
    # ReversibleAdjoint. Its gradients are those of checkpointed backpropagation up
    # to round-off, so a few training steps follow the same loss trajectory.
    path = os.path.join(os.path.dirname(__file__), "..", "configs")
    path = os.path.join(path, "neural_ode_spiral_reversible.yaml")
    small = [
        "training.steps=5",
        "training.log_every=1",
        "training.eval_every=5",
        "data.n_trajectories=32",
        "training.batch_size=8",
        "output.plots=false",
        "model.width=16",
    ]
    losses = {}
    for adjoint in ("reversible", "checkpoint"):
        config = load_config(path, [*small, f"solver.adjoint={adjoint}"])
        assert config.solver.name == "reversible_heun"
        train(config, progress=False, out_root=str(tmp_path / adjoint))
        records = _records(str(tmp_path / adjoint / config.name))
        losses[adjoint] = [r["loss"] for r in records if "loss" in r]
    assert len(losses["reversible"]) == 5
    np.testing.assert_allclose(losses["reversible"], losses["checkpoint"], rtol=1e-4)


def test_joint_batch_matches_per_trajectory_with_fixed_steps(tmp_path):
    # With fixed steps both ways take the same steps: the same losses to round-off.
    # (Adaptive: one step size for the batch, a different but valid discretisation.)
    losses = {}
    for joint in (False, True):
        config = _config(solver={"joint_batch": joint}, training={"steps": 4})
        train(config, progress=False, out_root=str(tmp_path / str(joint)))
        records = _records(str(tmp_path / str(joint) / "tiny"))
        losses[joint] = [r["loss"] for r in records if "loss" in r]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    adaptive = _config(
        solver={"joint_batch": True, "name": "tsit5", "steps": None},
        training={"steps": 2},
    )
    metrics = train(adaptive, progress=False, out_root=str(tmp_path / "adaptive"))
    assert np.isfinite(metrics["loss"])


def test_regularizer_switch(tmp_path):
    # The error regularizer on the adaptive solve: logged, and it lowers R_E against
    # the same run without it (same initialisation and batches).
    adaptive = {"name": "tsit5", "steps": None, "rtol": 1e-5, "atol": 1e-5}
    last = {}
    for weight in (0.0, 0.1):
        config = dataclasses.replace(
            _config(
                solver=adaptive,
                regularizer={"kind": "error", "weight": weight, "schedule": "linear"},
            ),
            name=f"reg{weight}",
        )
        train(config, progress=False, out_root=str(tmp_path))
        with open(tmp_path / f"reg{weight}" / "metrics.jsonl") as f:
            records = [json.loads(line) for line in f]
        assert all("regularizer" in r for r in records if "loss" in r)
        last[weight] = records[-1]["regularizer"]
    assert last[0.1] < last[0.0], last
    with pytest.raises(ConfigError, match="discrete adjoints"):
        train(
            _config(
                solver=dict(adaptive, adjoint="backsolve"),
                regularizer={"kind": "error", "weight": 0.1},
            ),
            progress=False,
            out_root=str(tmp_path),
        )
    with pytest.raises(ConfigError, match="fixed steps"):
        train(
            _config(regularizer={"kind": "local_error"}),
            progress=False,
            out_root=str(tmp_path),
        )
