"""`odelab bench grad-sampler` on a small slice: rows, memory summary, JSON."""

import json

import pytest

from odelab.bench import grad_sampler


@pytest.mark.loose_promotion  # optax.adam
def test_small_run_writes_rows_and_json(tmp_path):
    payload = grad_sampler.run(
        steps=(4, 16),
        repeats=1,
        out_dir=str(tmp_path),
        contenders=("ddim+checkpoint", "ddim+adjoint_dpm", "bdia+reversible"),
        plot=False,
        fit_iterations=20,
    )
    rows = {(r["nfe"], r["contender"]): r for r in payload["rows"]}
    assert len(rows) == 6
    # The discrete adjoints reproduce the float64 discrete gradient to float32
    # round-off; AdjointDPM's continuous gradient approaches it as NFE grows.
    for n in (4, 16):
        assert rows[(n, "ddim+checkpoint")]["err_discrete"] < 1e-4
        assert rows[(n, "bdia+reversible")]["err_discrete"] < 1e-3
    assert (
        rows[(16, "ddim+adjoint_dpm")]["err_continuous"]
        < rows[(4, "ddim+adjoint_dpm")]["err_continuous"]
    )
    # Memory: checkpointing grows with NFE, the O(1) adjoints do not.
    for name in ("ddim+adjoint_dpm", "bdia+reversible"):
        assert payload["summary"][name]["memory_ratio"] < 1.1
    assert (
        rows[(16, "ddim+checkpoint")]["temp_MiB"]
        > rows[(4, "ddim+checkpoint")]["temp_MiB"]
    )
    saved = json.loads((tmp_path / "grad_sampler.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(payload["rows"]))
