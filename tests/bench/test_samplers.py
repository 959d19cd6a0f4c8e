"""`odelab bench samplers` on a small slice: rows, errors, JSON (peers optional)."""

import importlib.util
import json

import numpy as np

from odelab.bench import samplers


def test_small_run_writes_rows_and_json(tmp_path):
    peers = all(importlib.util.find_spec(m) for m in ("torch", "diffusers"))
    payload = samplers.run(
        repeats=1,
        samples=64,
        peers=peers,
        out_dir=str(tmp_path),
        plot_path=False,
        only=("dpmpp_2m",),
        nfes=(10, 20),
        grids=("linspace", "logsnr"),
    )
    rows = [r for r in payload["rows"] if r["family"] == "odelab"]
    assert {(r["grid"], r["nfe"]) for r in rows} == {
        ("linspace", 10),
        ("linspace", 20),
        ("logsnr", 10),
        ("logsnr", 20),
    }
    for grid in ("linspace", "logsnr"):
        err = {r["nfe"]: r["rmse"] for r in rows if r["grid"] == grid}
        assert np.isfinite(err[10]) and err[20] < err[10]
    assert payload["reference_rmse_2000_vs_1000"] < 1e-6
    saved = json.loads((tmp_path / "samplers.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(payload["rows"]))
    if peers:
        assert payload["summary"]["worst_error_ratio_vs_counterpart"] < 1.05
