"""A benchmark's notes come from its measurement, never from a canned text."""

from __future__ import annotations

from typing import Any

from benchmarks.loadgen_bench import notes_from


def _point(workers: int, rate: int, lag_p99_ms: float) -> dict[str, Any]:
    return {"workers": workers, "offered_rate_req_s": rate, "schedule_lag_p99_ms": lag_p99_ms}


def test_loadgen_notes_say_what_was_measured() -> None:
    two_helps = [_point(1, 500, 6.0), _point(2, 500, 2.0), _point(1, 800, 9.0), _point(2, 800, 3.0)]
    two_hurts = [_point(1, 500, 2.0), _point(2, 500, 6.0), _point(1, 800, 3.0), _point(2, 800, 9.0)]
    helps, hurts = notes_from(two_helps, 2), notes_from(two_hurts, 2)
    assert "kept the schedule better (2 of 2" in helps
    assert "did not keep the schedule better" in hurts
    assert "500 req/s: lag p99 6 ms with 1 process, 2 ms with 2" in helps
    assert "2 CPUs" in helps and "16 CPUs" in notes_from(two_helps, 16)
