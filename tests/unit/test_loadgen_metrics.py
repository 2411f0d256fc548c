"""Metric math on synthetic timelines with known answers (docs/metrics.md)."""

from __future__ import annotations

import pytest

from loadgen.config import LoadConfig, SloConfig
from loadgen.metrics import (
    ALL_METRICS,
    STAT_KEYS,
    RequestRecord,
    describe,
    e2e_from_schedule_ms,
    e2e_ms,
    itl_ms,
    measured,
    schedule_lag_ms,
    summarise,
    tpot_ms,
    ttft_ms,
)
from loadgen.report import goodput_line


def timeline(
    index: int,
    t_sched: float,
    t_send: float,
    messages: list[tuple[float, int]],
    t_end: float,
    num_out: int | None = None,
    status: str = "OK",
) -> RequestRecord:
    """A request whose messages arrive at the given (time, number of tokens)."""
    r = RequestRecord(index, f"r{index}", "0" * 31 + "1", t_sched, t_send=t_send, t_end=t_end)
    r.message_times = [t for t, _ in messages]
    r.tokens_per_message = [n for _, n in messages]
    r.t_first = messages[0][0] if messages else None
    r.num_output_tokens = sum(n for _, n in messages) if num_out is None else num_out
    r.num_prompt_tokens = 10
    r.status = status
    return r


def test_ttft_e2e_tpot_itl_with_multi_token_messages() -> None:
    # sent at 1.0 s; 3 tokens at 1.1, 4 at 1.3, 3 at 1.4; stream closed at 1.5
    r = timeline(0, 0.9, 1.0, [(1.1, 3), (1.3, 4), (1.4, 3)], 1.5)
    assert ttft_ms(r) == pytest.approx(100.0)
    assert e2e_ms(r) == pytest.approx(500.0)
    assert tpot_ms(r) == pytest.approx((500.0 - 100.0) / 9)  # N_out = 10 from usage
    assert itl_ms(r) == pytest.approx([200.0, 100.0])  # one gap per message, not per token
    assert schedule_lag_ms(r) == pytest.approx(100.0)
    assert e2e_from_schedule_ms(r) == pytest.approx(600.0)


def test_tpot_uses_the_servers_usage_not_the_streamed_count() -> None:
    r = timeline(0, 0.0, 0.0, [(0.1, 1), (0.3, 1)], 0.3, num_out=5)
    assert tpot_ms(r) == pytest.approx(200.0 / 4)


def test_tpot_undefined_for_a_single_token() -> None:
    assert tpot_ms(timeline(0, 0.0, 0.0, [(0.1, 1)], 0.1)) is None


def test_coordinated_omission_shows_in_e2e_from_schedule() -> None:
    # the client was blocked: due at 0, sent at 2 s; the server answered in 50 ms
    r = timeline(0, 0.0, 2.0, [(2.05, 1)], 2.05)
    assert e2e_ms(r) == pytest.approx(50.0)
    assert e2e_from_schedule_ms(r) == pytest.approx(2050.0)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    fast = timeline(0, 0.0, 0.0, [(0.05, 1), (0.1, 1)], 0.1)  # ttft 50, tpot 50, e2e 100
    slow_first = timeline(1, 0.0, 0.0, [(0.3, 1), (0.35, 1)], 0.35)  # ttft 300
    slow_tokens = timeline(2, 0.0, 0.0, [(0.05, 1), (1.0, 1)], 1.0)  # tpot 950
    summary = summarise([fast, slow_first, slow_tokens], SloConfig(ttft_ms=200, tpot_ms=100))
    assert summary["duration_s"] == pytest.approx(1.0)
    assert summary["request_throughput"] == pytest.approx(3.0)
    assert summary["goodput"] == pytest.approx(1.0)
    assert summary["goodput_requests"] == 1
    assert summary["slo_attainment"] == pytest.approx(1 / 3)
    assert summary["slo"] == {"ttft_ms": 200.0, "tpot_ms": 100.0}
    line = goodput_line(summary)
    assert line.startswith("goodput 1.00 req/s meeting every SLO (ttft_ms <= 200, tpot_ms <= 100)")
    assert "(1 of 3 completed)" in line
    assert "no --slo" in goodput_line(summarise([fast], SloConfig()))


def test_failed_and_incomplete_are_counted_apart_and_kept_out_of_latency() -> None:
    ok = timeline(0, 0.0, 0.0, [(0.1, 2)], 0.2)
    failed = timeline(1, 0.0, 0.0, [], 0.001, num_out=0, status="RESOURCE_EXHAUSTED")
    cut = timeline(2, 0.0, 0.0, [(0.1, 1)], None, status="INCOMPLETE")  # type: ignore[arg-type]
    summary = summarise([ok, failed, cut], SloConfig())
    assert (summary["completed"], summary["failed"], summary["incomplete"]) == (1, 1, 1)
    assert summary["e2e_ms"]["max"] == pytest.approx(200.0)
    assert summary["e2e_ms"]["min"] == pytest.approx(200.0)
    assert summary["output_token_throughput"] == pytest.approx(2 / 0.2)


def test_summary_contract_has_every_key_and_ordered_percentiles() -> None:
    records = [
        timeline(
            i,
            i * 0.1,
            i * 0.1 + 0.001 * i,
            [(i * 0.1 + 0.02, 1), (i * 0.1 + 0.05, 2)],
            i * 0.1 + 0.06 + 0.001 * i,
        )
        for i in range(50)
    ]
    summary = summarise(records, SloConfig(e2e_ms=50))
    expected = {
        "completed",
        "failed",
        "incomplete",
        "duration_s",
        "request_throughput",
        "output_token_throughput",
        "total_token_throughput",
        "goodput",
        "goodput_requests",
        "slo_attainment",
        "slo",
        *ALL_METRICS,
    }
    assert set(summary) == expected
    for name in ALL_METRICS:
        stats = summary[name]
        assert list(stats) == list(STAT_KEYS)
        ordered = [stats[k] for k in ("min", "p50", "p90", "p95", "p99", "p999", "max")]
        assert ordered == sorted(ordered), name
        assert stats["min"] <= stats["mean"] <= stats["max"]


def test_describe_matches_known_samples_and_is_empty_safe() -> None:
    stats = describe([float(v) for v in range(1, 101)])
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p99"] == pytest.approx(99.01)
    assert (stats["min"], stats["max"]) == (1.0, 100.0)
    assert all(v is None for v in describe([]).values())


def test_measurement_window_drops_warmup_and_cooldown() -> None:
    records = [timeline(i, float(i), float(i), [(i + 0.1, 1)], i + 0.2) for i in range(10)]
    load = LoadConfig(rate=1.0, num_requests=10, warmup_requests=2, cooldown_s=2.5)
    window = measured(records, load, num_scheduled=10)
    assert [r.index for r in window] == [2, 3, 4, 5, 6]
    summary = summarise(window, SloConfig())
    assert summary["duration_s"] == pytest.approx(6.2 - 2.0)
