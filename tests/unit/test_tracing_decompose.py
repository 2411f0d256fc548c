"""Decomposition on synthetic spans with a known answer (times in ms from a common origin)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from tracing.decompose import (
    DECODE,
    DETOKENIZE,
    NET_CLIENT_TOKENIZER,
    NET_SCHEDULER_WORKER,
    NET_TOKENIZER_SCHEDULER,
    OTHER,
    PREFILL,
    QUEUE,
    TOKENIZE,
    decompose,
)
from tracing.model import Link, Span
from tracing.summary import summarize

_ids = itertools.count(1)
MS = 1_000_000


def _span(
    trace: str,
    name: str,
    kind: str,
    start_ms: float,
    end_ms: float,
    parent: Span | None = None,
    service: str = "svc",
    links: list[Link] | None = None,
    **attributes: object,
) -> Span:
    return Span(
        trace_id=trace,
        span_id=f"{next(_ids):016x}",
        parent_span_id=parent.span_id if parent else "",
        name=name,
        kind=kind,
        start_ns=int(start_ms * MS),
        end_ns=int(end_ms * MS),
        attributes=dict(attributes),
        links=links or [],
        resource={"service.name": service},
    )


def request_spans(trace: str, offset_ms: float = 0.0, hop_delay_ms: float = 0.0) -> list[Span]:
    """One request, every hop instrumented; `hop_delay_ms` is extra client→tokenizer latency.

    e2e 100; tokenize 2; network client→tokenizer 4 + delay; tokenizer→scheduler 2; queue 10;
    detokenize 1.5. The Submit SERVER span runs 8..94 (+offset); steps come from step_spans.
    """
    o, d = offset_ms, hop_delay_ms
    root = _span(
        trace,
        "loadgen.request",
        "INTERNAL",
        o,
        o + 100 + d,
        service="loadgen",
        **{"hopscope.request_id": trace[-4:]},
    )
    gen_client = _span(
        trace,
        "/hopscope.v1.Tokenizer/Generate",
        "CLIENT",
        o + 1,
        o + 99 + d,
        root,
        service="loadgen",
    )
    # the injected delay splits over the request and the response direction
    gen_server = _span(
        trace,
        "/hopscope.v1.Tokenizer/Generate",
        "SERVER",
        o + 3 + d / 2,
        o + 97 + d / 2,
        gen_client,
        service="tokenizer",
    )
    shift = d / 2
    encode = _span(
        trace,
        "tokenizer.encode",
        "INTERNAL",
        o + 4 + shift,
        o + 6 + shift,
        gen_server,
        service="tokenizer",
    )
    submit_client = _span(
        trace,
        "hopscope.v1.Scheduler/Submit",
        "CLIENT",
        o + 7 + shift,
        o + 95 + shift,
        gen_server,
        service="tokenizer",
        **{"hopscope.detokenize_ms": 1.5},
    )
    submit_server = _span(
        trace,
        "hopscope.v1.Scheduler/Submit",
        "SERVER",
        o + 8 + shift,
        o + 94 + shift,
        submit_client,
        service="scheduler",
        **{"hopscope.queue_ms": 10.0, "hopscope.request_id": trace[-4:]},
    )
    return [root, gen_client, gen_server, encode, submit_client, submit_server]


def step_spans(
    requests: list[Span], phases: list[str], start_ms: float, compute_ms: float, network_ms: float
) -> list[Span]:
    """One Worker/Step call linking to the given Submit SERVER spans; returns client + server."""
    trace = f"{next(_ids):032x}"
    links = [Link(r.trace_id, r.span_id, {"hopscope.phase": p}) for r, p in zip(requests, phases)]
    client = _span(
        trace,
        "hopscope.v1.Worker/Step",
        "CLIENT",
        start_ms,
        start_ms + compute_ms + network_ms,
        service="scheduler",
        links=links,
        **{"hopscope.batch_size": len(requests)},
    )
    half = network_ms / 2
    server = _span(
        trace,
        "hopscope.v1.Worker/Step",
        "SERVER",
        start_ms + half,
        start_ms + half + compute_ms,
        client,
        service="worker",
    )
    return [client, server]


def one_request(hop_delay_ms: float = 0.0, step_network_ms: float = 2.0) -> list[Span]:
    spans = request_spans("a" * 32, hop_delay_ms=hop_delay_ms)
    submit = spans[-1]
    start = submit.start_ns / MS + 10  # after the queue
    spans += step_spans([submit], ["prefill"], start, compute_ms=18, network_ms=step_network_ms)
    for i in range(3):
        spans += step_spans([submit], ["decode"], start + 22 + 17 * i, 13, step_network_ms)
    return spans


def test_known_answer_per_component() -> None:
    (b,) = decompose(one_request())
    assert b.e2e_ms == pytest.approx(100)
    expected = {
        TOKENIZE: 2,
        NET_CLIENT_TOKENIZER: 4,
        NET_TOKENIZER_SCHEDULER: 2,
        QUEUE: 10,
        PREFILL: 18,
        DECODE: 39,
        NET_SCHEDULER_WORKER: 8,
        DETOKENIZE: 1.5,
    }
    for name, value in expected.items():
        assert b.components_ms[name] == pytest.approx(value), name
    assert b.components_ms[OTHER] == pytest.approx(100 - sum(expected.values()))
    assert sum(b.components_ms.values()) == pytest.approx(b.e2e_ms)
    assert b.request_id == "aaaa"


def test_injected_hop_delay_shows_as_network_not_compute() -> None:
    (base,) = decompose(one_request())
    (slow,) = decompose(one_request(hop_delay_ms=7.0))
    assert slow.components_ms[NET_CLIENT_TOKENIZER] - base.components_ms[NET_CLIENT_TOKENIZER] == (
        pytest.approx(7.0)
    )
    for name in (TOKENIZE, PREFILL, DECODE, QUEUE, NET_SCHEDULER_WORKER, OTHER):
        assert slow.components_ms[name] == pytest.approx(base.components_ms[name]), name


def test_step_network_delay_is_paid_on_every_step() -> None:
    (base,) = decompose(one_request(step_network_ms=2.0))
    (slow,) = decompose(one_request(step_network_ms=5.0))
    assert slow.components_ms[NET_SCHEDULER_WORKER] == pytest.approx(4 * 5.0)
    assert slow.components_ms[DECODE] == pytest.approx(base.components_ms[DECODE])
    assert slow.tpot_components_ms[NET_SCHEDULER_WORKER] == pytest.approx(5.0)
    assert slow.tpot_components_ms[DECODE] == pytest.approx(13.0)


def test_shared_step_is_attributed_to_every_request_in_its_batch() -> None:
    first = request_spans("b" * 32)
    second = request_spans("c" * 32)
    submits = [first[-1], second[-1]]
    steps = step_spans(submits, ["prefill", "decode"], 20, compute_ms=10, network_ms=3)
    results = {b.trace_id: b for b in decompose(first + second + steps)}
    assert results["b" * 32].components_ms[PREFILL] == pytest.approx(10)
    assert results["c" * 32].components_ms[DECODE] == pytest.approx(10)
    for b in results.values():
        assert b.components_ms[NET_SCHEDULER_WORKER] == pytest.approx(3)


def test_attributes_are_the_fallback_without_step_spans() -> None:
    spans = request_spans("d" * 32)
    spans[-1].attributes.update({"hopscope.prefill_ms": 20.0, "hopscope.decode_ms": 40.0})
    (b,) = decompose(spans)
    assert b.components_ms[PREFILL] == 20.0 and b.components_ms[DECODE] == 40.0
    assert any("no Worker/Step" in note for note in b.notes)


def test_overlapping_spans_are_clamped_and_reported() -> None:
    spans = request_spans("e" * 32)
    spans[-1].attributes["hopscope.queue_ms"] = 500.0  # more than the whole request
    (b,) = decompose(spans)
    assert all(value >= 0 for value in b.components_ms.values())
    assert b.clamped_ms > 0 and not b.is_sum_within_tolerance
    summary = summarize([b])
    assert summary["checks"]["num_sum_outside_5pct"] == 1
    assert summary["checks"]["warnings"]


def test_summary_shares_add_up_and_name_network_components() -> None:
    spans = one_request() + one_request(hop_delay_ms=3.0)
    summary = summarize(decompose(spans))
    assert summary["requests"] == 2
    components = summary["components"]
    assert sum(row["share"] for row in components.values()) == pytest.approx(1.0)
    network = {name for name in components if "network" in name}
    assert network == {NET_CLIENT_TOKENIZER, NET_TOKENIZER_SCHEDULER, NET_SCHEDULER_WORKER}
    # 2 requests: client→tokenizer 4 and 7 ms over e2e 100 and 103 ms
    assert components[NET_CLIENT_TOKENIZER]["share"] == pytest.approx(11 / 203)
    assert components[NET_CLIENT_TOKENIZER]["mean_ms"] == pytest.approx(5.5)
    tpot = summary["tpot"]
    assert tpot["requests"] == 2
    assert sum(row["share"] for row in tpot["components"].values()) == pytest.approx(1.0)


def test_missing_spans_push_other_over_the_limit_with_a_warning() -> None:
    spans = [s for s in one_request() if s.name != "hopscope.v1.Worker/Step"]
    spans[-1].attributes.pop("hopscope.queue_ms")
    summary = summarize(decompose(spans))
    assert not summary["checks"]["is_other_under_10pct"]
    assert any("span is probably missing" in w for w in summary["checks"]["warnings"])


def test_submit_server_linked_instead_of_parented_still_finds_its_request() -> None:
    spans = one_request()
    submit_client, submit_server = spans[4], spans[5]
    submit_server.parent_span_id = ""
    submit_server.links = [Link(submit_client.trace_id, submit_client.span_id)]
    (b,) = decompose(spans)
    assert b.e2e_ms == pytest.approx(100)
    assert b.components_ms[NET_TOKENIZER_SCHEDULER] == pytest.approx(2)


def test_phase_from_the_count_of_prefill_links_covers_chunked_prefill() -> None:
    """As the scheduler emits them: attribute-free links, prefill ones first, and their count."""
    spans = request_spans("c" * 32)
    submit = spans[-1]
    start = submit.start_ns / MS + 10
    for i, (compute_ms, num_prefill) in enumerate([(9, 1), (9, 1), (13, 0), (13, 0)]):
        client, server = step_spans([submit], ["x"], start + 17 * i, compute_ms, 2.0)
        client.links = [Link(submit.trace_id, submit.span_id)]
        client.attributes["hopscope.num_prefill_links"] = num_prefill
        spans += [client, server]
    (b,) = decompose(spans)
    assert b.components_ms[PREFILL] == pytest.approx(18)  # two prompt chunks
    assert b.components_ms[DECODE] == pytest.approx(26)


def test_the_http_front_doors_spans_pair_like_generate() -> None:
    # the bench's CLIENT span and the ASGI SERVER span of an HTTP request stand where gRPC's
    # Generate pair stands: the same client -> front door hop
    renamed = [
        replace(s, name="POST /v1/chat/completions") if "Tokenizer/Generate" in s.name else s
        for s in one_request()
    ]
    (b,) = decompose(renamed)
    assert b.components_ms[NET_CLIENT_TOKENIZER] == pytest.approx(4)
    assert b.components_ms[TOKENIZE] == pytest.approx(2)
