"""`odelab bench models`: training steps of odelab's neural-DE models against peers.

Each case is one training step (loss, gradient, Adam update), timed side by side in
one process after compilation: the JAX contenders round-robin with each other, then
the PyTorch peers round-robin with each other (torch's OpenMP threads keep spinning
after a call and would slow down whichever JAX contender ran next); medians of the
repeats. Compile time (trace + XLA compile of the whole step) is reported apart.

**`neural_sde`** (issue #8): `odelab.models.NeuralSDE` against torchsde, same
architecture (drift `4 -> 64 -> 64 -> 4` tanh, diagonal diffusion `4 -> 64 -> 4`
with a sigmoid output), batch 128, 50 Euler–Maruyama steps over [0, 1], loss the
mean square of the final state, Adam (`odelab.bench._models_sde`). Contenders:
`odelab` (the batch as one state, `brownian="increments"`: the 50 increments drawn
in one call), `odelab_virtual_tree` (information: the same with diffrax's
`VirtualBrownianTree`, a tree descent per step), and `torchsde` /
`torchsde_1thread` (`sdeint(method="euler", dt=1/50)` with its default Brownian
interval, `backward()`, `torch.optim.Adam`). Target: odelab ≥ 4× torchsde.

**`neural_cde`** (issue #8): `odelab.models.NeuralCDE` with state 32, vector field
`32 -> 32 -> 32·3` (ReLU, tanh on the output: torchcde's example architecture with
the width equal to the state), 3 channels of X (time and the 2 values of
`odelab.data.spirals`, the clockwise/anticlockwise task of torchcde's own example),
50 observation times shared by the batch (torchcde integrates a batch over one time
axis), batch 128, backward-Hermite cubic path, 50 fixed RK4 steps, cross-entropy of
the logits, `optax.adam`. **`neural_cde_wide`**: the same with width 128
(information: the larger the MLP, the more of either library's step is the same
matrix products, and the smaller the ratio). Contenders:

- `odelab`: `NeuralCDE(..., solver="rk4", steps=50).batch`, the fused fixed-step
  path (the batch as one state, dX/ds precomputed at every stage, a hand-written
  discrete adjoint), the control path built inside the step;
- `odelab_per_series` (information): the same model with `fused=False`, one
  `odelab.solve` per series under `jax.vmap`;
- `diffrax` (information): plain diffrax as a user writes it: `jax.vmap` over the
  batch of `diffeqsolve` on `ControlTerm(f, CubicInterpolation(...)).to_ode()` with
  `backward_hermite_coefficients`, constant steps, the default
  `RecursiveCheckpointAdjoint` (`max_steps = steps + 1`); the solver is odelab's RK4
  tableau, as diffrax ships no classical RK4;
- `torchcde`, `torchcde_1thread` (when the `peers` extra is installed): the same
  weights copied into torch, `hermite_cubic_coefficients_with_backward_differences`
  computed once outside the step (as torchcde recommends), `cdeint(...,
  method="rk4", options=dict(step_size=1/50), adjoint=False)` (direct
  backpropagation, its fastest gradient), `torch.optim.Adam`, with
  `torch.set_num_threads` equal to the cores and to 1. The speed-up is quoted
  against the faster of the two. (torchdiffeq's "rk4" is the 3/8 rule, so its loss
  differs from odelab's in the fourth digit or so.)

Target (issue #8): odelab ≥ 4× faster per step than torchcde on `neural_cde`
(measured on a shared 2-core CPU: odelab 10.3 ms, torchcde 47.6 ms, 4.6×;
`neural_cde_wide` 18.4 against 57.5 ms, 3.1×). A new case is a function
`Settings -> Case` added to `CASES`.
"""

import argparse
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import errors_as_nan
from ..data import spirals
from ..models import NeuralCDE
from ..solvers import RK4
from . import _models_sde
from ._common import interleaved_medians, median, print_table, write_json


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every case is given: sizes shrink with `quick` (for tests)."""

    quick: bool = False
    seed: int = 0
    torch_peers: bool = True
    threads: int = os.cpu_count() or 1


class Case(NamedTuple):
    """One benchmark case.

    - `contenders`: name -> `(step, args)`; `step(*args)` is a JAX training step
      (compiled here with `eqx.filter_jit`) returning a tuple whose last element is
      the loss. The first is odelab's.
    - `peers`: name -> a training step of a peer library taking no arguments and
      returning the loss as a float (empty when the peer is not installed).
    - `target`: the least speed-up of the first contender over the fastest peer.
    """

    name: str
    title: str
    contenders: dict[str, tuple[Callable, tuple]]
    peers: dict[str, Callable[[], float]]
    target: float | None
    config: dict


def _train_step(logits_fn, optimiser):
    def step(model, opt_state, ts, ys, labels):
        def loss_fn(m):
            logits = logits_fn(m, ts, ys)
            return jnp.mean(
                optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            )

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        params = eqx.filter(model, eqx.is_array)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


def _diffrax_logits(model, ts, ys):
    """Plain diffrax: a `vmap` over the batch of `diffeqsolve` on the CDE."""
    steps, hidden = model.steps, model.hidden

    def one(y):
        knots = (ts - ts[0]) / (ts[-1] - ts[0])
        data = jnp.concatenate([ts[:, None], y], axis=1)
        path = diffrax.CubicInterpolation(
            knots, diffrax.backward_hermite_coefficients(knots, data)
        )
        term = diffrax.ControlTerm(
            lambda s, z, mlp: jnp.tanh(jnp.reshape(mlp(z), (hidden, -1))), path
        ).to_ode()
        one_ = jnp.ones((), ts.dtype)
        sol = diffrax.diffeqsolve(
            term,
            RK4(),
            0 * one_,
            one_,
            one_ / steps,
            model.initial(path.evaluate(path.t0)),
            model.vector_field,
            max_steps=steps + 1,
        )
        return model.readout(sol.ys[-1])

    return jax.vmap(one)(ys)


def _torchcde_steps(model, ts, ys, labels, threads):
    """torchcde training steps on a copy of `model`'s weights; {} if absent."""
    try:
        import torch
        import torchcde
    except ImportError:
        return {}

    def linear(layer):
        out = torch.nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            out.weight.copy_(torch.from_numpy(np.array(layer.weight)))
            out.bias.copy_(torch.from_numpy(np.array(layer.bias)))
        return out

    hidden = model.hidden
    ts_host = np.asarray(ts)
    knots = torch.from_numpy((ts_host - ts_host[0]) / (ts_host[-1] - ts_host[0]))
    data = np.concatenate(
        [np.broadcast_to(ts_host[None, :, None], ys.shape[:2] + (1,)), ys], axis=-1
    )
    coeffs = torchcde.hermite_cubic_coefficients_with_backward_differences(
        torch.from_numpy(data), knots
    )
    labels_t = torch.from_numpy(np.array(labels)).long()

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layers = []
            # The JAX model's activation, set in `neural_cde`.
            for layer in model.vector_field.layers[:-1]:
                layers += [linear(layer), torch.nn.ReLU()]
            layers += [linear(model.vector_field.layers[-1]), torch.nn.Tanh()]
            self.net = torch.nn.Sequential(*layers)

        def forward(self, t, z):
            del t
            return self.net(z).view(z.shape[0], hidden, -1)

    class CDE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.initial = linear(model.initial)
            self.field = Field()
            self.readout = linear(model.readout)

        def forward(self):
            path = torchcde.CubicSpline(coeffs, knots)
            z0 = self.initial(path.evaluate(path.interval[0]))
            z = torchcde.cdeint(
                X=path,
                func=self.field,
                z0=z0,
                t=path.interval,
                adjoint=False,
                method="rk4",
                options=dict(step_size=1.0 / model.steps),
            )
            return self.readout(z[:, -1])

    def make(n_threads):
        cde = CDE()
        opt = torch.optim.Adam(cde.parameters(), lr=1e-3)

        def step():
            torch.set_num_threads(n_threads)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(cde(), labels_t)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    steps = {"torchcde": make(threads)}
    if threads > 1:
        steps["torchcde_1thread"] = make(1)
    return steps


def neural_cde(settings: Settings, width: int = 32, name: str = "neural_cde") -> Case:
    """The NeuralCDE training step against torchcde (module notes)."""
    if settings.quick:
        batch, length, hidden, width, steps = 8, 10, 4, 8, 5
    else:
        batch, length, hidden, steps = 128, 50, 32, 50
    data = spirals(jax.random.key(settings.seed), batch, length)
    ts, ys, labels = data.ts, data.ys, data.labels
    key = jax.random.key(settings.seed + 1)
    common = dict(key=key, activation=jax.nn.relu, solver="rk4", steps=steps)
    fused = NeuralCDE(2, hidden, 2, width, 1, **common)
    per_series = NeuralCDE(2, hidden, 2, width, 1, fused=False, **common)
    optimiser = optax.adam(1e-3)

    def args(model):
        opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
        return model, opt_state, ts, ys, labels

    def batch_logits(model, ts, ys):
        return model.batch(ts, ys)

    step = _train_step(batch_logits, optimiser)
    contenders = {
        "odelab": (step, args(fused)),
        "odelab_per_series": (step, args(per_series)),
        "diffrax": (_train_step(_diffrax_logits, optimiser), args(fused)),
    }
    peers = {}
    if settings.torch_peers:
        peers = _torchcde_steps(fused, ts, np.asarray(ys), labels, settings.threads)
    config = dict(
        batch=batch,
        length=length,
        hidden=hidden,
        width=width,
        depth=1,
        activation="relu",
        channels=3,
        steps=steps,
        solver="rk4",
        interpolation="hermite",
        data="spirals, shared times",
    )
    title = (
        f"{name}: loss+grad+adam, state {hidden}, field {hidden}-{width}-"
        f"{hidden}x3, batch {batch}, length {length}, {steps} RK4 steps, "
        "backward-Hermite path"
    )
    target = 4.0 if name == "neural_cde" else None
    return Case(name, title, contenders, peers, target, config)


def _torch_threads(make_step, name, threads):
    """`{name: step with `threads` torch threads, name_1thread: with one}`, each step
    on its own model from `make_step()`; {} when torch or the peer is absent."""
    try:
        import torch

        steps = {name: make_step()}
    except ImportError:
        return {}

    def pinned(step, n):
        def run():
            torch.set_num_threads(n)
            return step()

        return run

    out = {name: pinned(steps[name], threads)}
    if threads > 1:
        out[f"{name}_1thread"] = pinned(make_step(), 1)
    return out


def neural_sde(settings: Settings) -> Case:
    """The NeuralSDE training step against torchsde (`_models_sde`)."""
    if settings.quick:
        dim, width, batch, steps = 2, 8, 8, 5
    else:
        dim, width, batch, steps = 4, 64, 128, 50
    step, args = _models_sde.odelab_step(dim, width, batch, steps)
    tree_step, tree_args = _models_sde.odelab_step(
        dim, width, batch, steps, brownian="virtual_tree"
    )
    key = jax.random.key(settings.seed)
    contenders = {
        "odelab": (step, (*args, key)),
        "odelab_virtual_tree": (tree_step, (*tree_args, key)),
    }
    peers = {}
    if settings.torch_peers:
        peers = _torch_threads(
            lambda: _models_sde.torchsde_step(dim, width, batch, steps),
            "torchsde",
            settings.threads,
        )
    config = dict(
        dim=dim,
        width=width,
        batch=batch,
        steps=steps,
        solver="euler (Euler-Maruyama)",
        noise="diagonal",
        brownian="increments",
    )
    title = (
        f"neural_sde: loss+grad+adam, drift {dim}-{width}-{width}-{dim}, diagonal "
        f"diffusion {dim}-{width}-{dim}, batch {batch}, {steps} Euler-Maruyama steps"
    )
    return Case("neural_sde", title, contenders, peers, 4.0, config)


CASES: dict[str, Callable[[Settings], Case]] = {
    "neural_sde": neural_sde,
    "neural_cde": neural_cde,
    "neural_cde_wide": functools.partial(neural_cde, width=128, name="neural_cde_wide"),
}
"""The cases by name, in order; each takes the `Settings` and returns a `Case`."""


def run_case(case: Case, repeats: int) -> dict:
    """Compile, time and tabulate one case; returns its JSON payload."""
    compiled, compile_s, losses = {}, {}, {}
    for name, (step, args) in case.contenders.items():
        start = time.perf_counter()
        executable = eqx.filter_jit(step).lower(*args).compile()
        compile_s[name] = time.perf_counter() - start
        compiled[name] = lambda executable=executable, args=args: executable(*args)
        losses[name] = float(compiled[name]()[-1])
    times = interleaved_medians(compiled, (), repeats=repeats)
    for name, step in case.peers.items():
        losses[name] = float(step())
    if case.peers:
        times.update(interleaved_medians(case.peers, (), repeats=repeats))
    med = {name: median(v) for name, v in times.items()}
    odelab = next(iter(case.contenders))
    peer = min(case.peers, key=med.get) if case.peers else None
    rows = []
    for name in times:
        row = {
            "contender": name,
            "step_ms": 1e3 * med[name],
            "loss": losses[name],
            "compile_s": compile_s.get(name, ""),
        }
        if peer is not None:
            row[f"speedup_vs_{peer}"] = med[peer] / med[name]
        rows.append(row)
    columns = ["contender", "step_ms"]
    if peer is not None:
        columns.append(f"speedup_vs_{peer}")
    print_table(
        rows,
        columns + ["loss", "compile_s"],
        title=f"{case.title}; median of {repeats}",
    )
    speedup = None
    if peer is None:
        print(f"{case.name}: no peer installed (pip install -e '.[peers]'): no ratio")
    else:
        speedup = med[peer] / med[odelab]
        target = "" if case.target is None else f" (target >= {case.target:g})"
        print(f"{case.name}: {odelab} speed-up over {peer}: {speedup:.2f}x{target}")
    return {
        "config": case.config,
        "rows": rows,
        "raw_step_s": times,
        "speedup": speedup,
        "peer": peer,
        "target_speedup": case.target,
    }


def run(
    repeats: int = 30,
    settings: Settings = Settings(),
    out_dir: str = "runs/bench",
    checks: str = "nan",
    cases: tuple[str, ...] | None = None,
) -> dict:
    """Run the cases (all, or those named); print tables; write `models.json`.

    `checks="nan"` traces run-time checks as NaN outputs, as `odelab train` does
    (process-wide: choose before anything traces); `"raise"` keeps equinox's host
    callbacks.
    """
    if checks == "nan":
        errors_as_nan()
    elif checks != "raise":
        raise ValueError(f"`checks` must be 'nan' or 'raise', got {checks!r}.")
    names = list(CASES) if cases is None else list(cases)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(
            f"Unknown case(s) {unknown} in `cases`; valid: {', '.join(CASES)}."
        )
    results = {name: run_case(CASES[name](settings), repeats) for name in names}
    payload = {
        "benchmark": "models",
        "config": dict(dataclasses.asdict(settings), repeats=repeats, checks=checks),
        "cases": results,
    }
    write_json("models", payload, out_dir)
    return payload


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="odelab bench models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and 2 repeats (tests)"
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=list(CASES),
        help="run only this case (repeatable; default: all)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--checks",
        choices=["nan", "raise"],
        default="nan",
        help="run-time checks as NaN (as `odelab train`) or raising host callbacks",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--no-torch", action="store_true")
    ns = parser.parse_args(argv)
    settings = Settings(
        quick=ns.quick,
        seed=ns.seed,
        torch_peers=not ns.no_torch,
        threads=ns.threads,
    )
    run(
        repeats=2 if ns.quick else ns.repeats,
        settings=settings,
        out_dir=ns.out,
        checks=ns.checks,
        cases=None if ns.case is None else tuple(ns.case),
    )


if __name__ == "__main__":
    main()
