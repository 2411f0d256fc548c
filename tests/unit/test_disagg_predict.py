"""The disaggregation prediction (diagnose/disagg_predict.py) on pieces with known answers, and
the prefill_interference rule (docs/diagnosis.md, "Prediction: disaggregation")."""

from __future__ import annotations

import pytest

from diagnose.disagg_predict import (
    DisaggInputs,
    LinkSpec,
    MixedFit,
    fit_mixed_steps,
    kv_bytes_per_token,
    predict_disagg,
)
from diagnose.rules import evaluate
from tests.unit.test_diagnose_rules import signals


def test_kv_bytes_per_token_is_k_and_v_of_every_layer() -> None:
    # smollm2-135m: 30 layers, 3 KV heads of 64, float32
    assert kv_bytes_per_token(30, 3, 64, "float32") == 2 * 30 * 3 * 64 * 4
    assert kv_bytes_per_token(30, 3, 64, "bfloat16") == 2 * 30 * 3 * 64 * 2


def test_fit_tells_prefill_tokens_from_decode_tokens() -> None:
    # step = 2 ms + 0.05 ms per prompt token + 0.1 ms per decode token, exactly
    points = [(p, d, 2.0 + 0.05 * p + 0.1 * d) for p in (0, 128, 512) for d in (1, 4, 8)]
    fit = fit_mixed_steps(points)
    assert fit is not None
    assert fit.fixed_ms == pytest.approx(2.0)
    assert fit.per_prefill_token_ms == pytest.approx(0.05)
    assert fit.per_decode_token_ms == pytest.approx(0.1)
    assert fit.r2 == pytest.approx(1.0)
    assert fit_mixed_steps([(0, 4, 3.0), (0, 8, 4.0)]) is None  # no prefill step: nothing to fit


def inputs(**overrides: object) -> DisaggInputs:
    """A mixed run: decode steps of 10 ms at batch 4 (+1 ms host), TPOT 16 ms of which 5 ms are
    prefills in its steps; 1024-token prompts at 0.05 ms per token."""
    base: dict[str, object] = {
        "fit": MixedFit(2.0, 0.05, 2.0, 300, 0.95),
        "prompt_tokens": 1024.0,
        "output_tokens": 65.0,
        "decode_batch": 4.0,
        "host_ms_per_step": 1.0,
        "prefill_steps_per_request": 1.0,
        "ttft_p50_ms": 80.0,
        "ttft_p99_ms": 160.0,
        "tpot_p50_ms": 16.0,
        "queue_p50_ms": 10.0,
        "request_rate": 2.0,
        "duration_s": 10.0,
        "kv_bytes_per_token": 46080.0,
        "requests": [(80.0, 16.0)] * 20,
        "slo": {"tpot_ms": 14.0},
    }
    base.update(overrides)
    return DisaggInputs(**base)  # type: ignore[arg-type]


def test_on_two_devices_decodes_lose_the_interference_and_pay_the_kv_hop() -> None:
    link = LinkSpec("disagg", "uds", rtt_ms=0.2, bandwidth_mb_s=1000.0)
    result = predict_disagg(inputs(handoff_wait_ms=3.0), [link])
    p = result["variants"]["disagg"]
    kv_bytes = 46080 * 1024
    transfer_ms = 0.2 + kv_bytes / 1e9 * 1e3
    assert p["pieces"]["kv_bytes_per_request"] == kv_bytes
    assert p["pieces"]["kv_transfer_ms"] == pytest.approx(transfer_ms, abs=1e-3)
    assert p["pieces"]["handoff_wait"] == "measured"
    # decode step 2 + 2*4 = 10 ms, + 1 ms host, + (hop + handoff) spread over 64 tokens
    assert p["tpot_p50_ms"] == pytest.approx(11.0 + (transfer_ms + 3.0) / 64, abs=1e-3)
    assert result["interference"]["ms_per_token"] == pytest.approx(5.0)
    # TTFT: the measured one without the 4 decodes (2 ms each) its prefill step carried
    assert p["ttft_p50_ms"] == pytest.approx(80.0 - 2.0 * 4, abs=1e-3)
    # every request meets TPOT 14 ms once disaggregated; none does mixed
    assert result["mixed"]["goodput"] == 0.0
    assert p["goodput"] > 0
    assert result["expected_winner"] == "disagg"
    assert "interference" in result["why"] or "prefills add" in result["why"]


def test_shared_cores_slow_every_decode_step_and_prefills_by_the_decoders_busy_share() -> None:
    link = LinkSpec("disagg", "uds", rtt_ms=0.2, bandwidth_mb_s=1000.0)
    alone = predict_disagg(inputs(), [link])["variants"]["disagg"]
    shared = predict_disagg(inputs(cores_shared=2.0), [link])
    p = shared["variants"]["disagg"]
    prefill_busy = 2.0 * (2.0 + 0.05 * 1024) / 1e3  # requests/s x ms of a prefill
    assert shared["busy"]["prefill_worker"] == pytest.approx(prefill_busy, abs=1e-3)
    # a decode step stalls on shared cores whatever the prefill worker does (disagg.json)
    assert p["pieces"]["decode_factor"] == pytest.approx(2.0)
    assert p["tpot_p50_ms"] > alone["tpot_p50_ms"]
    assert p["ttft_p50_ms"] > alone["ttft_p50_ms"]
    assert alone["pieces"]["handoff_wait"] == "estimated"


def test_interference_measured_from_the_steps_is_what_disaggregation_removes() -> None:
    link = LinkSpec("disagg", "shm", rtt_ms=0.0, bandwidth_mb_s=1e12)
    # the residual would say 5 ms; the steps say 2 ms: the rest of TPOT stays (stalls, host)
    p = predict_disagg(inputs(interference_ms_per_token=2.0, handoff_wait_ms=0.0), [link])
    assert p["interference"]["ms_per_token"] == pytest.approx(2.0)
    assert p["variants"]["disagg"]["tpot_p50_ms"] == pytest.approx(16.0 - 2.0, abs=1e-3)


def test_a_slow_link_makes_mixed_win() -> None:
    slow = LinkSpec("disagg-split/5ms", "relay", rtt_ms=0.3, bandwidth_mb_s=300.0,
                    rate_mbit=10.0, placement="disagg-split")  # fmt: skip
    result = predict_disagg(inputs(tpot_p50_ms=11.5, slo={}), [slow])
    p = result["variants"]["disagg-split/5ms"]
    # 47 MB at 10 Mbit/s: tens of seconds of hop, spread over 64 tokens
    assert p["pieces"]["kv_transfer_ms"] > 30_000
    assert p["tpot_p50_ms"] > 11.5
    assert result["expected_winner"] == "mixed"


def test_prefill_interference_fires_and_suggests_chunking_then_disaggregation() -> None:
    # 30% of the decode steps carry a prefill and take 20 ms instead of 5: 4.5 ms per token
    s = signals(tpot_p50_ms=9.0, mixed_step_ms=20.0, mixed_step_share=0.3,
                mixed_step_prefill_tokens=512.0)  # fmt: skip
    finding = next(f for f in evaluate(s, [])[0] if f.type == "prefill_interference")
    assert finding.is_fired
    assert finding.trigger == pytest.approx(4.5 / 9.0)
    assert finding.evidence["interference_ms_per_token"]["value"] == pytest.approx(4.5)
    assert finding.evidence["mixed_step_ms"]["value"] == 20.0
    switches = [x["switch"] for x in finding.suggestions]
    assert switches[0].startswith("--max-num-batched-tokens 256")
    assert "--placement disagg" in switches[1]


def test_prefill_interference_is_quiet_without_mixed_steps() -> None:
    finding = next(f for f in evaluate(signals(), [])[0] if f.type == "prefill_interference")
    assert not finding.is_fired and finding.trigger == 0.0


def test_a_measured_disagg_variant_is_set_beside_its_prediction() -> None:
    from diagnose.experiment import disagg_variant, disagg_vs_measured
    from experiment.report import _disagg_vs_measured_line

    assert disagg_variant({"factor": "placement", "value": "disagg-split"}) == "disagg-split"
    assert disagg_variant({"factor": "kv_transport", "value": "shm"}) == "disagg/shm"
    assert disagg_variant({"factor": "max_num_seqs", "value": 4}) is None
    predicted = {"ttft_p50_ms": 110.0, "tpot_p50_ms": 9.0, "goodput": 1.0}
    row = disagg_vs_measured("disagg", predicted, 100.0, 10.0, 1.25)
    assert row["error"]["ttft_p50_ms"] == pytest.approx(0.10)
    assert row["error"]["tpot_p50_ms"] == pytest.approx(-0.10)
    assert row["error"]["goodput"] == pytest.approx(-0.20)
    line = _disagg_vs_measured_line(row)
    assert "as `disagg`" in line and "TPOT p50 predicted 9.00, measured 10.00 (error -10%)" in line


def test_handoff_and_transfer_are_read_from_a_disagg_runs_spans() -> None:
    from diagnose.disagg import handoff_from_spans
    from tracing.model import Span

    def span(name: str, trace: str, start_ms: float, end_ms: float, **attrs: object) -> Span:
        return Span(trace * 32, f"{len(name):016x}", "", name, "INTERNAL" if "handoff" in name
                    else "CLIENT", int(start_ms * 1e6), int(end_ms * 1e6),
                    {"hopscope.request_id": trace, **attrs})  # fmt: skip

    spans = [
        span("hopscope.handoff_wait", "a", 0, 2),
        span("hopscope.kv_transfer", "a", 2, 12, **{"hopscope.kv_bytes": 1000}),
        span("hopscope.handoff_resume", "a", 12, 13),
        span("hopscope.handoff_wait", "b", 0, 4),
        span("hopscope.kv_transfer", "b", 4, 10, **{"hopscope.kv_bytes": 3000}),
        span("hopscope.handoff_resume", "b", 10, 13),
    ]
    pieces = handoff_from_spans(spans)
    assert pieces["handoff_wait_ms"] == pytest.approx((3 + 7) / 2)  # wait + resume per request
    assert pieces["kv_transfer_ms"] == pytest.approx(8.0)
    assert pieces["kv_bytes_per_request"] == pytest.approx(2000.0)
    assert handoff_from_spans([])["handoff_wait_ms"] is None  # a mixed run: nothing measured
