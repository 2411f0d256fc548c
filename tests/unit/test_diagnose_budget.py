"""One time budget: every type's score is its share of the mean request's E2E, the shares add up
to at most 1 with the rest `unattributed`, the headline names the largest; suggestions read the
deployment in force and predict; contention from cpu.json (CONTENTION_SCHEMA.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from diagnose.budget import time_budget
from diagnose.core import diagnose_signals
from diagnose.inputs import RunInputs
from diagnose.network import split_hops
from diagnose.steps import CycleBreakdown, StepFit
from experiment.stats import COMPARED
from tests.unit.test_diagnose_rules import CAL, signals

METRICS = {spec.key for spec in COMPARED}


def test_worked_example_of_docs_diagnosis_md() -> None:
    """The worked example of docs/diagnosis.md, "The time budget", number for number."""
    s = signals(
        e2e_p50_ms=400.0,
        queue_share_e2e=0.25,  # 100 ms in line
        cycle=CycleBreakdown(5.0, 0.5, 0.4, 0.3, 200, 8.0, 8.0),  # engine, overhead, hop, gap
        fit=StepFit(4.0, 0.125, 200, 0.9),  # 4 ms fixed + 1 ms for 8 tokens
        mean_output_tokens=33,
        edge_hop_ms={},
    )
    budget = time_budget(s, split_hops(s, CAL))
    # 32 decode steps of 5.5 ms SERVER time: 0.5/5.5 overhead -> host_cpu 16 ms; engine 160 ms
    # split 4:1 by the fit -> memory_io 128 ms, compute 32 ms; prefill 5 ms -> compute;
    # 33 hops of 0.4 ms: 0.2 ms wire each (network 6.6 ms), the rest host_cpu (6.6 ms);
    # gaps 32 x 0.3 = 9.6 ms host_cpu; the remaining 400 - 100 - 5 - 176 - 13.2 - 9.6 of
    # `other` is unattributed
    ms = budget.ms_by_type()
    assert ms["scheduling"] == pytest.approx(100.0)
    assert ms["memory_io"] == pytest.approx(128.0)
    assert ms["compute"] == pytest.approx(32.0 + 5.0)
    assert ms["network"] == pytest.approx(33 * 0.2)
    assert ms["host_cpu"] == pytest.approx(16.0 + 33 * 0.2 + 9.6)
    shares = budget.shares()
    assert shares["memory_io"] == pytest.approx(0.32)
    assert shares["unattributed"] == pytest.approx(96.2 / 400)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_a_long_queue_outranks_a_per_token_share() -> None:
    """Issue 31: 85% of E2E in the queue was called memory_io because memory_io's score was a
    share of TPOT (engine 100% of TPOT) and scheduling's a share of E2E."""
    s = signals(
        queue_share_e2e=0.85,
        queue_share_ttft=0.98,
        queue_p50_ms=20_000.0,
        e2e_p50_ms=24_000.0,
        fit=StepFit(4.9, 0.003, 200, 0.9),  # the step is nearly all fixed: memory_io fires
        cycle=CycleBreakdown(5.0, 0.0, 0.2, 0.0, 200, 2.0, 2.0),
        tpot_p50_ms=5.2,
        concurrency=16,
        settings={"max_num_seqs": 2, "batching": "continuous"},
    )
    diagnosis = diagnose_signals(s, CAL)
    assert diagnosis["primary"] == "scheduling"
    assert diagnosis["headline"].startswith("scheduling: 85% of the mean request's")
    assert "memory_io" in [f["type"] for f in diagnosis["findings"]]  # fired, but smaller
    shares = diagnosis["budget"]["shares"]
    assert sum(shares.values()) <= 1.0 + 1e-6 and "unattributed" in shares
    assert [f["score"] for f in diagnosis["findings"]] == sorted(
        (f["score"] for f in diagnosis["findings"]), reverse=True
    )
    top = diagnosis["findings"][0]["suggestions"][0]
    assert top["switch"] == "--max-num-seqs 16" and top["factor"] == "max_num_seqs"
    # batch 2 -> 16 in flight, each out of the batch for 2 of its 65 steps (prefill, client):
    # a step of 5.2 ms + 0.003 ms per sequence
    batch = 16 * 63 / 65
    expected = (batch / (5.2 + 0.003 * (batch - 2))) / (2 / 5.2)
    assert top["predicted"] == {"metric": "output_tok_s", "ratio": pytest.approx(expected, 1e-3)}


def _switches(diagnosis: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for f in diagnosis["findings"] for row in f["suggestions"]]


@pytest.mark.parametrize(
    "case",
    [
        {"queue_share_e2e": 0.7, "queue_p50_ms": 900.0},  # scheduling
        {"fit": StepFit(4.5, 0.015, 200, 0.8)},  # memory_io
        {"mixed_step_ms": 20.0, "mixed_step_share": 0.3, "mixed_step_prefill_tokens": 512.0},
        {"cycle": CycleBreakdown(2.0, 1.0, 3.0, 2.0, 200, 32.0, 32.0), "tpot_p50_ms": 8.0},
    ],
)
def test_suggestions_never_name_what_is_in_force_and_are_concrete(case: dict[str, object]) -> None:
    in_force = {
        "batching": "continuous",
        "kernels": "auto",
        "max_num_seqs": 16,
        "placement": "colocated",
        "device": "cpu",
        "dtype": "float32",
    }
    s = signals(concurrency=16, num_preemptions=0, kv_usage=0.2, settings=in_force, **case)
    rows = _switches(diagnose_signals(s, CAL))
    switches = [str(row["switch"]) for row in rows]
    assert "--batching continuous" not in switches
    assert "--kernels native" not in switches  # auto already runs the native kernels
    assert not any(sw.startswith("--max-num-seqs") for sw in switches)  # 16 = concurrency
    assert not any("preemption" in str(row["expected_effect"]) for row in rows)
    for row in rows:
        assert not re.search(r"\bN\b", str(row["switch"])), row["switch"]  # a concrete value
        if row.get("predicted"):
            predicted = row["predicted"]
            assert predicted["metric"] in METRICS and predicted["ratio"] > 0  # type: ignore[index]
        else:
            assert row["not_predicted"]


def test_static_batching_and_torch_kernels_are_suggested_where_in_force() -> None:
    s = signals(
        queue_share_e2e=0.7,
        queue_p50_ms=900.0,
        settings={"batching": "static", "kernels": "torch", "device": "cpu"},
        fit=StepFit(0.5, 0.15, 200, 0.9),  # compute
    )
    switches = [row["switch"] for row in _switches(diagnose_signals(s, CAL))]
    assert "--batching continuous" in switches and "--kernels native" in switches


def _cpu_json(wait_s: float, cpu_s: float, outside_s: float, contended: bool) -> dict[str, object]:
    """A cpu.json round with the contention helper's key (CONTENTION_SCHEMA.md)."""
    return {
        "processes": {"worker": {"pid": 1, "cpu_s": cpu_s}},
        "output_tokens": 1000,
        "cpu_us_per_token": {"worker": cpu_s * 1e3},
        "contention": {
            "processes": {
                "worker": {
                    "pid": 1,
                    "cpu_s": cpu_s,
                    "run_queue_wait_s": wait_s,
                    "involuntary_switches": 40,
                },
            },
            "run_queue_wait_s": wait_s,
            "wait_share": wait_s / (wait_s + cpu_s),
            "outside_cpu_s": outside_s,
            "outside_cores": outside_s / 10.0,
            "num_cores": 2,
            "duration_s": 10.0,
            "is_contended": contended,
        },
    }


def test_contention_from_cpu_json_takes_its_share_of_the_cpu_time() -> None:
    run = RunInputs(
        "busy", [], cpu=[_cpu_json(3.0, 5.0, 8.0, True), _cpu_json(1.0, 7.0, 0.0, False)]
    )
    measured = run.contention()
    assert measured is not None
    assert measured["wait_share"] == pytest.approx(4.0 / 16.0)
    assert measured["outside_cores"] == pytest.approx(0.4) and measured["is_contended"]
    assert measured["num_contended_rounds"] == 1
    calm = signals()
    busy = signals(contention=measured, settings={"engine_threads": "0"})
    calm_budget = time_budget(calm, split_hops(calm, CAL)).ms_by_type()
    busy_budget = time_budget(busy, split_hops(busy, CAL)).ms_by_type()
    # a quarter of every CPU segment waited for a core; queue and wire did not
    assert busy_budget["contention"] == pytest.approx(
        0.25 * sum(calm_budget[k] for k in ("memory_io", "compute", "host_cpu")), rel=1e-6
    )
    assert busy_budget["compute"] == pytest.approx(0.75 * calm_budget["compute"])
    assert busy_budget["network"] == pytest.approx(calm_budget["network"])
    diagnosis = diagnose_signals(busy, CAL)
    finding = next(f for f in diagnosis["findings"] if f["type"] == "contention")
    assert "25% of the time they were runnable" in finding["symptom"]
    assert finding["evidence"]["outside_cores"]["value"] == pytest.approx(0.4)
    switches = {row["switch"] for row in finding["suggestions"]}
    assert "--engine-threads 1" in switches and "--placement split" in switches
    auto = diagnose_signals(signals(contention=measured), CAL)  # auto: already adapts
    finding = next(f for f in auto["findings"] if f["type"] == "contention")
    assert not any(r["switch"].startswith("--engine-threads") for r in finding["suggestions"])


def test_a_run_without_contention_in_cpu_json_says_so() -> None:
    assert RunInputs("old", [], cpu=[{"processes": {}}]).contention() is None
    diagnosis = diagnose_signals(signals(), CAL)
    assert diagnosis["scores"]["contention"] == 0.0
    assert any("contention" in note for note in diagnosis["notes"])


def test_a_bench_file_alone_uses_the_deployment_recorded_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 31: `diagnose RUN.json --spans FILE` died dividing by the KV block size when no
    describe.json sat beside the bench file."""
    from deploy.cli import main
    from diagnose.calibrate import Calibration, store_calibration
    from tests.unit.test_diagnose_inputs import simulate

    monkeypatch.setenv("HOPSCOPE_HOME", str(tmp_path))
    import socket

    store_calibration(Calibration(CAL.round_trip_us, socket.gethostname(), "now"))
    spans = tmp_path / "elsewhere" / "spans.jsonl"
    spans.parent.mkdir()
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": simulate(4, 40, 0.3)}]}]}
    spans.write_text(json.dumps(doc) + "\n")
    describe = {"placement": "colocated", "batching": "continuous",
                "model": {"name": "tiny", "dtype": "float32", "num_blocks": 100, "block_size": 16},
                "edges": [{"from": "scheduler", "to": "worker", "transport": "uds"}]}  # fmt: skip
    bench = {"config": {"concurrency": [4]}, "deployment": describe,
             "summary": {"tpot_ms": {"p50": 3.0}, "output_token_throughput": 500.0}}  # fmt: skip
    bench_path = tmp_path / "run.json"
    bench_path.write_text(json.dumps(bench))
    assert main(["diagnose", str(bench_path), "--spans", str(spans), "--link-delay-ms", "1"]) == 0
    diagnosis = json.loads((tmp_path / "diagnosis.json").read_text())
    assert diagnosis["decomposition"]["hops"]["network.scheduler_worker"]["transport"] == "uds"
    assert diagnosis["budget"]["shares"][diagnosis["primary"]] == max(
        diagnosis["budget"]["shares"].values()
    )


def test_a_larger_batch_carries_more_prompt_work_per_step() -> None:
    from diagnose.predict import max_num_seqs, prefill_ms_per_step

    # 6% of the decode steps carry 61 prompt tokens, 25 ms more than a 3.4 ms decode-only step
    cycle = CycleBreakdown(3.4, 1.3, 3.6, 0.5, 2000, 2.0, 2.0)
    s = signals(cycle=cycle, concurrency=16, mean_output_tokens=32, mixed_step_ms=28.4,
                mixed_step_share=0.06, mixed_step_prefill_tokens=61.0)  # fmt: skip
    per_token_ms = 25.0 / 61.0
    assert prefill_ms_per_step(s, 2.0) == pytest.approx(0.06 * 61.0 * per_token_ms)
    assert prefill_ms_per_step(s, 16.0) == pytest.approx(8 * prefill_ms_per_step(s, 2.0))
    without = max_num_seqs(signals(cycle=cycle, concurrency=16, mean_output_tokens=32), 16)
    with_prompts = max_num_seqs(s, 16)
    assert with_prompts.ratio is not None and without.ratio is not None
    assert with_prompts.ratio < without.ratio
