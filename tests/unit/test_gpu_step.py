"""benchmarks/gpu_step.py (what gpu_check.sh runs on a lent GPU) runs on CPU too, says what it
skipped there, and its variants decode the same tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_step
from services.models import checkpoint


def test_a_cpu_dry_run_writes_sane_json_and_names_what_needs_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() caches preset weights by patching the loader: undone after the test
    monkeypatch.setattr(checkpoint, "preset_weights", checkpoint.preset_weights)
    out = tmp_path / "gpu_step.json"
    argv = ["--model", "tiny", "--device", "cpu", "--dtype", "float32", "--sections", "roofline"]
    argv += ["--batch-sizes", "1,3", "--rounds", "2", "--decode-steps", "3", "--out", str(out)]
    assert gpu_step.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["errors"] == {}
    assert "graph capture" in result["skipped"] and "roofline.memory" in result["skipped"]
    roofline = result["sections"]["roofline"]
    assert roofline["captured"] is False
    for batch in roofline["batches"].values():
        assert batch["graphs_on"]["tokens_equal_graphs_off"] is True
        assert len(batch["graphs_on"]["speedup_vs_graphs_off_per_round"]) == 2
        assert batch["transformers"]["step_ms_p50"] > 0
    assert set(result["sections"]["vs_transformers"]) == {"1", "3"}
    assert "Prediction" in result["notes"] and "batch 3: step p50 graphs off" in result["notes"]
