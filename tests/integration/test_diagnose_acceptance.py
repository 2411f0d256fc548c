"""The short version of benchmarks/diagnose_acceptance.py (issue 31, item 7): three planted
scenarios — a batch limit of 2 under 16 requests in flight, batch-1 decode of smollm2-135m, and a
healthy control — each run as a real experiment and diagnosed; the planted type is named first,
or, where the host was busy with other work while it ran, contention (and nothing else)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.diagnose_acceptance import SHORT, main


@pytest.mark.timeout(1800)  # three experiments and their servers: minutes on 2 idle cores
def test_three_planted_bottlenecks_are_named_first(tmp_path: Path) -> None:
    out = tmp_path / "acceptance.json"
    code = main(
        ["--short", "--rounds", "1", "--no-fix", "--work", str(tmp_path), "--out", str(out)]
    )
    document = json.loads(out.read_text())
    assert set(document["scenarios"]) == set(SHORT)
    for name, outcome in document["scenarios"].items():
        assert outcome["ok"] or outcome["busy_host"], f"{name}: {document['table']}"
    assert document["scenarios"]["scheduling_small_batch"]["ok"]  # the queue is not CPU time
    assert code == (0 if document["named_first"] == "3 of 3" else 1)
