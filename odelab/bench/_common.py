"""Shared benchmark machinery: timing, tables, JSON output."""

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import jax


def block(x):
    """Wait for every array in `x`."""
    return jax.block_until_ready(x)


def time_compile(fn: Callable, *args) -> tuple[Callable, float]:
    """Lower and compile `jax.jit(fn)` for `args`; return the executable and seconds."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def compile_medians(
    fns: dict[str, Callable], args: Sequence, repeats: int
) -> dict[str, list[float]]:
    """Trace-and-compile time of each function, `repeats` times, round-robin.

    Every repeat wraps the function in a fresh closure so that neither JAX's tracing
    cache nor its executable cache can answer; the first compile of a process (which
    also pays one-off initialisation) is a warm-up and not recorded.
    """
    first = next(iter(fns.values()))
    time_compile(lambda *a: first(*a), *args)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_compile(lambda *a, fn=fn: fn(*a), *args)[1])
    return times


def interleaved_medians(
    fns: dict[str, Callable], args: Sequence, repeats: int, inner: int = 1
) -> dict[str, list[float]]:
    """Run each function `repeats` times, round-robin, and return all timings.

    Round-robin interleaving spreads machine noise (other processes, frequency
    changes) evenly over the contenders; report medians of the returned lists. Each
    timing is the mean over `inner` back-to-back calls.
    """
    times = {name: [] for name in fns}
    for fn in fns.values():
        block(fn(*args))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                out = fn(*args)
            block(out)
            times[name].append((time.perf_counter() - start) / inner)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def print_table(rows: list[dict], columns: Sequence[str], title: str = "") -> str:
    """Print rows (dicts) as an aligned text table and return the text."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)
    ]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def environment() -> dict:
    """What the numbers were measured on."""
    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_json(name: str, payload: dict, out_dir: str = "runs/bench") -> str:
    """Write `payload` (plus the environment) to `out_dir/name.json`, atomically."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"environment": environment(), **payload}, f, indent=2, default=float)
    os.replace(tmp, path)
    print(f"wrote {path}", flush=True)
    return path
