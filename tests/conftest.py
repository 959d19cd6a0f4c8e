"""pytest configuration shared by all of odelab's tests.

Every test runs under strict dtype promotion (`jax_numpy_dtype_promotion="strict"`) and
rank promotion `"raise"`, so an accidental float32/float64 mix or an implicit broadcast
fails loudly. These are process-global JAX flags: an autouse fixture sets them for each
test and restores them afterwards.

Strict is the default rather than opt-in because diffrax survives it: with diffrax
0.7.2 / jax 0.10.2 the explicit Runge-Kutta solvers (Euler ... Dopri8), Kvaerno5,
ReversibleHeun, adaptive `PIDController` steps, `SaveAt(ts=...)` and dense output,
`vmap`, `jit`, and gradients through `RecursiveCheckpointAdjoint`,
`BacksolveAdjoint` and `DirectAdjoint` all run clean in float32 and float64, as do
SDE solves whose state dtype matches the time dtype. What does not: optax 0.2.8's
`adam`/`adamw` (bias correction raises a Python float to an int32 count), and diffrax
SDE solves with a float32 state under x64 (float64 times meet float32 values). Tests
that run such third-party code opt out with `@pytest.mark.loose_promotion`, which
restores JAX's defaults (`"standard"`, `"allow"`) for that test.

Markers and fixtures:

- `@pytest.mark.x64` or the `x64` fixture: the test runs with `jax_enable_x64`, restored
    afterwards; x64 is never enabled globally. Either way it is switched on before any
    other function-scoped fixture builds arrays.
- `@pytest.mark.loose_promotion`: standard dtype promotion and rank promotion for this
    test (see above).
- `key`: a PRNG key from the seed `ODELAB_TEST_SEED` (default 0). The seed is printed,
    so it appears in a failing test's captured output, and in the session header.
- `slow`, `benchmark`: see `pyproject.toml`.
"""

import os

import chex
import hypothesis
import jax
import pytest

from tests.helpers import jax_config


_MARKERS = {
    "slow": "a slow test (still part of the default run unless deselected)",
    "benchmark": "a benchmark, not a test; deselected by default",
    "x64": "the test runs with jax_enable_x64",
    "loose_promotion": (
        "the test runs with JAX's standard dtype promotion and rank promotion "
        "'allow' instead of strict/'raise', for third-party code that needs it"
    ),
}

_SEED_VARIABLE = "ODELAB_TEST_SEED"

# The first example of a property test includes JIT compilation, which can take far
# longer than hypothesis' default 200 ms deadline, especially on a 2-core CI runner.
hypothesis.settings.register_profile("odelab", deadline=None)
hypothesis.settings.load_profile("odelab")


def _seed() -> int:
    value = os.environ.get(_SEED_VARIABLE, "0")
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(
            f"{_SEED_VARIABLE} must be an integer, got {value!r}."
        ) from None


def pytest_configure(config: pytest.Config) -> None:
    """Register odelab's markers that `pyproject.toml` does not already declare."""
    declared = {
        line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")
    }
    for name, description in _MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", f"{name}: {description}")
    _seed()


def pytest_report_header(config: pytest.Config) -> str:
    """Show the PRNG seed in the session header."""
    del config
    return f"odelab: PRNG seed {_seed()} (set {_SEED_VARIABLE} to change)"


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every compiled executable holds memory mappings; a test worker that keeps them
    all runs into the kernel's `vm.max_map_count` (65530 here: 69 sampler tests
    leave 15,000 mappings) and XLA then crashes with a segfault while compiling
    (seen in CI after ~700 tests per worker). `jax.clear_caches()` frees them.
    """
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _jax_test_config(request: pytest.FixtureRequest):
    """Per-test JAX flags: strict promotion unless `loose_promotion`, x64 if asked."""
    if request.node.get_closest_marker("loose_promotion") is None:
        flags = {
            "jax_numpy_dtype_promotion": "strict",
            "jax_numpy_rank_promotion": "raise",
        }
    else:
        flags = {
            "jax_numpy_dtype_promotion": "standard",
            "jax_numpy_rank_promotion": "allow",
        }
    # Autouse fixtures are set up first, so x64 is on before other fixtures run.
    if request.node.get_closest_marker("x64") is not None or (
        "x64" in request.fixturenames
    ):
        flags["jax_enable_x64"] = True
    with jax_config(**flags):
        yield
    # `chex.assert_max_traces` counts per function object for the whole session.
    chex.clear_trace_counter()


@pytest.fixture
def x64():
    """Run the test with `jax_enable_x64`, restoring the previous value afterwards."""
    with jax_config(jax_enable_x64=True):
        yield


@pytest.fixture
def key() -> jax.Array:
    """A PRNG key from `ODELAB_TEST_SEED` (default 0); prints the seed."""
    seed = _seed()
    print(f"PRNG seed {seed} ({_SEED_VARIABLE})")
    return jax.random.key(seed)
