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


def _measured(wait_share: float, outside_cores: float) -> dict[str, object]:
    return {"wait_share": wait_share, "outside_cores": outside_cores, "num_cores": 2,
            "run_queue_wait_s": 4.0, "is_contended": outside_cores >= 0.25,
            "num_rounds": 2, "num_contended_rounds": 2 if outside_cores >= 0.25 else 0}  # fmt: skip


def test_the_deployments_own_wait_stays_with_the_work_that_waited() -> None:
    """Issue 31: a front door busy at batch 64 made the services wait for cores 44% of the time
    with nothing else on the machine, and that wait, moved to `contention`, outranked the work
    that caused it. Only what outside processes took, or what the deployment's own settings
    oversubscribe, is contention."""
    # the host's gaps, hop wait and worker overhead are most of each cycle: host_cpu
    host_bound = {"cycle": CycleBreakdown(1.0, 1.0, 2.5, 1.5, 200, 16.0, 16.0),
                  "fit": StepFit(0.8, 0.0125, 200, 0.9)}  # fmt: skip
    calm = signals(**host_bound)  # type: ignore[arg-type]
    alone = signals(contention=_measured(0.44, 0.01), **host_bound)  # type: ignore[arg-type]
    calm_ms = time_budget(calm, split_hops(calm, CAL)).ms_by_type()
    alone_budget = time_budget(alone, split_hops(alone, CAL))
    # 0.01 of 2 cores outside: at most 0.5% of the CPU time moves; host_cpu stays first
    assert alone_budget.ms_by_type()["contention"] == pytest.approx(
        0.005 * sum(calm_ms[k] for k in ("memory_io", "compute", "host_cpu")), rel=1e-6
    )
    diagnosis = diagnose_signals(alone, CAL)
    assert diagnosis["primary"] == "host_cpu"
    finding = next(f for f in diagnosis["findings"] if f["type"] == "host_cpu")
    assert finding["suggestions"][0]["switch"] == "--num-scheduler-steps 4"
    assert diagnosis["budget"]["shares"]["contention"] < 0.01
    assert "contention" not in [f["type"] for f in diagnosis["findings"]]  # did not fire
    # the same wait with the engine fixed at every core beside the services: a setting's price
    pinned = signals(contention=_measured(0.44, 0.01), settings={"engine_threads": "0"},
                     **host_bound)  # type: ignore[arg-type]  # fmt: skip
    pinned_ms = time_budget(pinned, split_hops(pinned, CAL)).ms_by_type()
    assert pinned_ms["contention"] == pytest.approx(
        0.44 * sum(calm_ms[k] for k in ("memory_io", "compute", "host_cpu")), rel=1e-6
    )
    fired = {f["type"]: f for f in diagnose_signals(pinned, CAL)["findings"]}
    assert "--engine-threads 0 holds every core" in fired["contention"]["symptom"]
    switches = [row["switch"] for row in fired["contention"]["suggestions"]]
    assert "--engine-threads 1" in switches
    # a core's worth of outside load on 2 cores: up to half of the runnable time is theirs
    busy = signals(contention=_measured(0.6, 1.0), **host_bound)  # type: ignore[arg-type]
    busy_ms = time_budget(busy, split_hops(busy, CAL)).ms_by_type()
    assert busy_ms["contention"] == pytest.approx(
        0.5 * sum(calm_ms[k] for k in ("memory_io", "compute", "host_cpu")), rel=1e-6
    )
    assert diagnose_signals(busy, CAL)["primary"] == "contention"


def test_a_larger_batch_moves_along_the_cycle_fit_and_predicts_tpot() -> None:
    """Issue 31: `--max-num-seqs 16` from 2 kept the small batch's host work per step. Where the
    run's decode steps ran at batch sizes far enough apart, the whole cycle (engine and the
    host's per-sequence work) is fitted against the batch size; TPOT follows the step time."""
    from diagnose.predict import max_num_seqs
    from diagnose.steps import StepSample, fit_decode_cycle

    def step(batch: int, at_ms: float) -> StepSample:
        engine = 1.0 + 0.1 * batch  # the host: 0.15 + 0.05 per sequence (overhead, hop, gap)
        return StepSample(int(at_ms * 1e6), int((at_ms + engine + 0.1) * 1e6), engine + 0.1,
                          engine + 0.05, engine, 0, batch, batch, "uds", 0.05 + 0.05 * batch)  # fmt: skip

    samples = [step(b, i * 10.0) for i, b in enumerate([4] * 20 + [8] * 20)]
    fit = fit_decode_cycle(samples)
    assert fit is not None
    assert fit.fixed_ms == pytest.approx(1.15) and fit.per_token_ms == pytest.approx(0.15)
    assert fit_decode_cycle(samples[:20]) is None  # one batch size: nothing to fit
    cycle = CycleBreakdown(1.6, 0.05, 0.1, 0.45, 40, 6.0, 6.0)
    s = signals(cycle=cycle, cycle_fit=fit, fit=StepFit(1.0, 0.1, 40, 0.9), concurrency=8,
                mean_output_tokens=33, is_output_len_uniform=True)  # fmt: skip
    prediction = max_num_seqs(s, 4)  # below the concurrency: the batch stays full at 4
    assert prediction.ratio == pytest.approx((4 / fit.at(4)) / (6 / fit.at(6)))
    assert prediction.also == (("tpot_ms.p50", pytest.approx(fit.at(4) / fit.at(6))),)
    # without the cycle fit, the engine's token slope moves the measured cycle
    alone = max_num_seqs(signals(cycle=cycle, fit=StepFit(1.0, 0.1, 40, 0.9), concurrency=8,
                                 mean_output_tokens=33), 4)  # fmt: skip
    assert alone.ratio == pytest.approx((4 / (cycle.cycle_ms - 0.2)) / (6 / cycle.cycle_ms))
    # every request in flight running, outputs equally long: the closed loop runs in waves, the
    # next prompts run before their decodes, so TPOT follows the decode cycle alone
    mixed = {"mixed_step_ms": 28.4, "mixed_step_share": 0.06, "mixed_step_prefill_tokens": 61.0}
    waves = signals(cycle=cycle, fit=StepFit(1.0, 0.1, 40, 0.9), concurrency=8,
                    mean_output_tokens=33, is_output_len_uniform=True, **mixed)  # type: ignore[arg-type]  # fmt: skip
    spread = signals(cycle=cycle, fit=StepFit(1.0, 0.1, 40, 0.9), concurrency=8,
                     mean_output_tokens=33, **mixed)  # type: ignore[arg-type]  # fmt: skip
    in_waves, spread_out = max_num_seqs(waves, 8), max_num_seqs(spread, 8)
    assert in_waves.ratio == pytest.approx(spread_out.ratio)  # the prompt work is the same
    assert in_waves.also[0][1] < spread_out.also[0][1]


def test_multi_step_saves_nothing_on_the_steps_that_carry_a_prompt() -> None:
    from diagnose.predict import host_per_step

    cycle = CycleBreakdown(2.0, 0.5, 1.0, 0.5, 200, 16.0, 16.0)  # 2 ms of host in a 4 ms cycle
    assert host_per_step(signals(cycle=cycle), 1, 4).ratio == pytest.approx(1 - 1.5 / 4)
    mixed = signals(cycle=cycle, mixed_step_share=0.2, mixed_step_ms=10.0)
    assert host_per_step(mixed, 1, 4).ratio == pytest.approx(1 - 0.8 * 1.5 / 4)


def test_the_disagg_suggestion_carries_the_disaggregation_predictions_tpot_and_ttft() -> None:
    from diagnose.core import _predict_disagg_suggestions

    row = {"switch": "--placement disagg", "factor": "placement", "value": "disagg",
           "predicted": None, "not_predicted": "see `disaggregation`"}  # fmt: skip
    diagnosis = {"findings": [{"type": "prefill_interference", "suggestions": [row]}]}
    prediction = {"variants": {"disagg": {"tpot_p50_ms": 4.5, "ttft_p50_ms": 30.0}}}
    _predict_disagg_suggestions(diagnosis, prediction, signals(tpot_p50_ms=6.0, ttft_p50_ms=20.0))
    assert row["predicted"] == {"metric": "tpot_ms.p50", "ratio": 0.75}
    assert row["also_predicted"] == [{"metric": "ttft_ms.p50", "ratio": 1.5}]
    assert "not_predicted" not in row
