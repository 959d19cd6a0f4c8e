"""`odelab bench generative`: what reflow and the Fokker–Planck regularizer buy on toy
data, and the training throughput of flow matching against PyTorch.

Three parts, each over seeds (means reported, per-seed values in the JSON):

- `reflow` (Liu, Gong & Liu 2023; Lee, Lin & Fanti 2024): a rectified flow on two
  moons (`configs/flow_matching_moons.yaml` sizes, `training.steps` = S), then one
  reflow round on 8192 pairs from its DPM-Solver++(2M) 32-step ODE, trained S more
  steps from the base weights with U-shaped times (and, as a control, uniform times);
  the base flow trained 2S steps is the equal-compute control. Sliced W2 to held-out
  data of Euler samples at NFE 1, 2, 4, and each flow's straightness.
- `kinetic` (Shaul et al. 2023): the same flow trained on the conditional-OT path
  (rectified flow) and on the kinetic-optimal Gaussian path of the training data
  (`schedule: kinetic_optimal`); Euler sliced W2 at NFE 1, 2, 4.
- `fokker_planck` (Deveney et al. 2023; Lai et al. 2023): a noise-prediction model on
  eight Gaussians (VP-linear), with and without the score Fokker–Planck residual.
  Sliced W2 between the probability-flow ODE's samples (DPM-Solver++(2M), 64 steps)
  and the reverse SDE's (Euler–Maruyama, 500 steps) from the same noise — the
  ODE–SDE gap —, each one's distance to the data, and the training time ratio.
- `throughput`: flow-matching training steps per second (batch 256, the moons MLP,
  Adam) of odelab's compiled `lax.scan` loop and of the same model and loop in
  PyTorch (eager, `torch.compile` off: the peer's default), interleaved, medians.
"""

import argparse
import statistics
import time

from ._common import median, print_table, write_json


def _moons_flow(seed, steps, **sections):
    config = dict(
        task="generative",
        name="bench",
        data=dict(dataset="moons", n_train=8192, n_test=2048, seed=0),
        model=dict(kind="flow", width=128, depth=3),
        training=dict(steps=steps, batch_size=256, learning_rate=2e-3, seed=seed),
        sample=dict(sampler="euler", steps=[1, 2, 4], n=2048, likelihood=0),
    )
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def _seed_means(part, model, values):
    """One table row: the mean over seeds of each field of `values` (one dict per
    seed), and the per-seed values."""
    row = dict(part=part, model=model)
    for field in values[0]:
        row[field] = statistics.mean(v[field] for v in values)
        row[f"{field}_per_seed"] = [v[field] for v in values]
    return row


def _flow_rows(metrics, prefix=""):
    return {
        f"sw2_nfe{k}": metrics[f"{prefix}steps_{k}"]["sliced_w2"] for k in (1, 2, 4)
    } | {"straightness": metrics[f"{prefix}straightness"]}


def reflow(seeds, steps):
    """The reflow rows: base (S steps), base (2S steps), reflow U-shaped, reflow
    uniform."""
    from ..generative_job import load_task_config, train_generative

    runs = {
        "base": [],
        "base_2x_steps": [],
        "reflow_u_shaped": [],
        "reflow_uniform": [],
    }
    for seed in seeds:
        for times in ("u_shaped", "uniform"):
            reflow_section = dict(
                rounds=1,
                pairs=8192,
                steps=32,
                training_steps=steps,
                time_sampling=times,
            )
            cfg = load_task_config(_moons_flow(seed, steps, reflow=reflow_section))
            _, m, _ = train_generative(cfg)
            if times == "u_shaped":
                runs["base"].append(_flow_rows(m))
            runs[f"reflow_{times}"].append(_flow_rows(m, "reflow_"))
        cfg = load_task_config(_moons_flow(seed, 2 * steps))
        runs["base_2x_steps"].append(_flow_rows(train_generative(cfg)[1]))
        print("reflow seed", seed, runs["reflow_u_shaped"][-1], flush=True)
    return [_seed_means("reflow", name, values) for name, values in runs.items()]


def kinetic(seeds, steps):
    """Flow matching on the conditional-OT (linear) path and on the kinetic-optimal
    path of the training data, equal training: Euler sliced W2 at NFE 1, 2, 4."""
    from ..generative_job import load_task_config, train_generative

    rows = []
    for schedule in ("rectified_flow", "kinetic_optimal"):
        values = []
        for seed in seeds:
            cfg = load_task_config(
                _moons_flow(seed, steps, model=dict(schedule=schedule))
            )
            values.append(_flow_rows(train_generative(cfg)[1]))
        row = _seed_means("kinetic", schedule, values)
        rows.append(row)
        print("kinetic", schedule, {k: row[k] for k in values[0]}, flush=True)
    return rows


def fokker_planck(seeds, steps, weight, sde_steps=500):
    """The Fokker–Planck rows: weight 0 and `weight`."""
    from ..generative_job import load_task_config, train_generative

    rows = []
    for w in (0.0, weight):
        values = []
        for seed in seeds:
            cfg = load_task_config(
                dict(
                    task="generative",
                    name="bench",
                    data=dict(dataset="eight_gaussians", n_train=8192, n_test=2048),
                    model=dict(
                        kind="diffusion", prediction="eps", schedule="vp_linear"
                    ),
                    loss=dict(fokker_planck=w),
                    training=dict(steps=steps, batch_size=256, seed=seed),
                    sample=dict(steps=[20], n=2048, likelihood=0, sde_steps=sde_steps),
                )
            )
            _, m, _ = train_generative(cfg)
            values.append(
                dict(
                    ode_sde_gap=m["ode_sde_gap"],
                    ode_to_data=m["ode_to_data"],
                    sde_to_data=m["sde_to_data"],
                    train_seconds=m["train_seconds"],
                )
            )
            print("fokker_planck", w, seed, values[-1], flush=True)
        row = _seed_means("fokker_planck", f"weight {w:g}", values)
        rows.append(row)
    rows[1]["train_ratio"] = rows[1]["train_seconds"] / rows[0]["train_seconds"]
    rows[1]["gap_ratio"] = rows[1]["ode_sde_gap"] / rows[0]["ode_sde_gap"]
    return rows


def _torch_steps(steps, batch, width, depth, seed):
    """PyTorch: the same MLP (x and 4 Fourier time frequencies in, SiLU), flow
    matching on two moons with Adam; returns a function running `steps` steps."""
    import math

    import jax.random as jr
    import numpy as np
    import torch

    from ..data import moons

    torch.manual_seed(seed)
    data = torch.as_tensor(np.array(moons(jr.key(0), 8192)))
    layers, size = [], 2 + 8
    for _ in range(depth):
        layers += [torch.nn.Linear(size, width), torch.nn.SiLU()]
        size = width
    net = torch.nn.Sequential(*layers, torch.nn.Linear(size, 2))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    freqs = math.pi * 2.0 ** torch.arange(4)

    def run():
        for _ in range(steps):
            x0 = data[torch.randint(0, data.shape[0], (batch,))]
            t = torch.rand(batch, 1) * 0.998 + 1e-3
            eps = torch.randn_like(x0)
            x_t = (1 - t) * x0 + t * eps
            angles = t * freqs
            features = torch.cat([x_t, angles.sin(), angles.cos()], -1)
            loss = ((net(features) - (eps - x0)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss

    return run


def throughput(steps=500, batch=256, width=128, depth=3, repeats=5):
    """Training samples per second, odelab vs PyTorch, interleaved medians."""
    import os

    import jax.random as jr

    from .. import data as datasets
    from ..generative_job import fit, load_task_config, make_loss, make_model

    cfg = load_task_config(
        _moons_flow(0, steps) | {"training": dict(steps=steps, batch_size=batch)}
    )
    x_train = datasets.moons(jr.key(0), 8192)
    model = make_model(cfg, 2, jr.key(0))
    loss = make_loss(cfg)
    # Compile once; time the compiled scan of `steps` steps.
    _, _, compile_s, _ = fit(model, loss, x_train, cfg.training, jr.key(1))
    cores = len(os.sched_getaffinity(0))
    peers = {}
    try:
        import torch

        # torch's default (every core) spins its threads against each other on a
        # busy 2-core box (152 ms/step measured vs 10 ms on one thread), so the peer
        # runs both ways and the table shows each.
        peer = _torch_steps(steps, batch, width, depth, 0)
        peers = {"torch (1 thread)": 1, f"torch ({cores} threads)": cores}
        peer()
    except ImportError:
        peer = None
    times = {"odelab": []} | {name: [] for name in peers}
    for r in range(repeats):
        times["odelab"].append(fit(model, loss, x_train, cfg.training, jr.key(r))[3])
        for name, threads in peers.items():
            torch.set_num_threads(threads)
            start = time.perf_counter()
            peer()
            times[name].append(time.perf_counter() - start)
    rows = [
        dict(part="throughput", model=name, samples_per_s=steps * batch / median(t))
        for name, t in times.items()
    ]
    rows[0]["compile_s"] = compile_s
    if peers:
        best = max(r["samples_per_s"] for r in rows[1:])
        rows[0]["ratio_vs_torch"] = rows[0]["samples_per_s"] / best
    return rows


PARTS = ("reflow", "kinetic", "fokker_planck", "throughput")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="odelab bench generative")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--steps", type=int, default=3000, help="training steps S")
    parser.add_argument("--fp-weight", type=float, default=0.1)
    parser.add_argument("--name", default="generative", help="JSON name")
    ns = parser.parse_args(argv)
    seeds = tuple(range(1 if ns.quick else ns.seeds))
    steps = 20 if ns.quick else ns.steps
    rows = []
    if "reflow" in ns.parts:
        rows += reflow(seeds, steps)
    if "kinetic" in ns.parts:
        rows += kinetic(seeds, steps)
    if "fokker_planck" in ns.parts:
        rows += fokker_planck(seeds, steps, ns.fp_weight, 20 if ns.quick else 500)
    if "throughput" in ns.parts:
        rows += throughput(steps=20 if ns.quick else 500, repeats=2 if ns.quick else 7)
    columns = {
        "reflow": ["model", "sw2_nfe1", "sw2_nfe2", "sw2_nfe4", "straightness"],
        "kinetic": ["model", "sw2_nfe1", "sw2_nfe2", "sw2_nfe4", "straightness"],
        "fokker_planck": [
            "model", "ode_sde_gap", "gap_ratio", "ode_to_data", "sde_to_data",
            "train_seconds", "train_ratio",
        ],
        "throughput": ["model", "samples_per_s", "ratio_vs_torch", "compile_s"],
    }  # fmt: skip
    titles = {
        "reflow": "two moons: sliced W2 to held-out data of Euler samples (mean over "
        "seeds)",
        "kinetic": "two moons: flow matching on the linear and the kinetic-optimal "
        "path, Euler sliced W2",
        "fokker_planck": "eight Gaussians: ODE (DPM-Solver++(2M) 64) vs SDE "
        "(Euler-Maruyama) samples, sliced W2",
        "throughput": "flow-matching training throughput, batch 256, CPU",
    }
    for part in ns.parts:
        print_table([r for r in rows if r["part"] == part], columns[part], titles[part])
    write_json(ns.name, dict(rows=rows, steps=steps, seeds=list(seeds)))
    return rows


if __name__ == "__main__":
    main()
