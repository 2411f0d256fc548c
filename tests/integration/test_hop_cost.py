"""benchmarks/hop_cost.py end to end, tiny: every variant measured, the JSON a reader needs."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.hop_cost import main


def test_hop_cost_writes_every_variant_with_percentiles_and_mechanism(tmp_path: Path) -> None:
    out = tmp_path / "hop_cost.json"
    assert (
        main(["--rounds", "1", "--iters", "3", "--warmup", "1", "--no-ray", "--out", str(out)]) == 0
    )

    result = json.loads(out.read_text())
    names = {row["name"] for row in result["variants"]}
    for payload in ("step32", "step1"):
        assert f"direct/{payload}" in names
        for edge in ("uds", "tcp", "tcp+relay0ms", "tcp+relay0.25ms", "tcp+relay1ms"):
            assert {f"{edge}/unary/{payload}", f"{edge}/bidi/{payload}"} <= names
    for row in result["variants"]:
        assert row["num_samples"] == 3
        assert 0 < row["p50_us"] <= row["p90_us"] <= row["p99_us"]
        assert row["link_mechanism"] == ("relay" if "relay" in row["name"] else "")
    relay_1ms = next(r for r in result["variants"] if r["name"] == "tcp+relay1ms/bidi/step1")
    assert relay_1ms["p50_us"] >= 2 * 1000  # the delay is on the path, each way
    assert result["link"]["mechanism"] == "relay"
    assert result["notes"] and result["prediction"]
