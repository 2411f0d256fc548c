"""benchmarks/diagnose_acceptance.py's scoring: the planted type against the one named first, the
confusion matrix, and each fix's predicted vs measured ratio from `experiment next`'s files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.diagnose_acceptance import (
    ENGINE_TYPES,
    MICRO_MODEL,
    SCENARIOS,
    SHORT,
    Outcome,
    confusion,
    fix_outcome,
    judge,
    plan_for_run,
    table,
)
from experiment.flags import serve_flags
from experiment.plan import parse_plan
from experiment.stats import COMPARED

BY_NAME = {s.name: s for s in SCENARIOS}


def _summary(name: str, primary: str) -> dict[str, Any]:
    diagnosis = {"primary": primary, "budget": {"shares": {primary: 0.8, "unattributed": 0.2}}}
    return {"variants": [{"name": name, "diagnosis": diagnosis}]}


def test_every_planted_type_has_a_scenario_and_every_plan_parses() -> None:
    from diagnose.rules import TYPES

    planted = {s.expected[0] for s in SCENARIOS if s.expected != ENGINE_TYPES}
    assert planted == set(TYPES) and len(SCENARIOS) >= 8
    assert any(s.expected == ENGINE_TYPES for s in SCENARIOS)  # the healthy control
    assert set(SHORT) <= set(BY_NAME)
    for scenario in SCENARIOS:
        plan = parse_plan(scenario.plan, source=scenario.name)
        assert scenario.variant in [v.name for v in plan.variants]
        if scenario.is_fix_testable:  # the expected fix is one serve flag `next` can set
            option = scenario.fix.split()[0]
            assert option in {f.option for f in serve_flags().values()}


def test_named_first_and_the_confusion_matrix() -> None:
    right = judge(BY_NAME["scheduling_small_batch"], _summary("baseline", "scheduling"))
    wrong = judge(BY_NAME["memory_io"], _summary("baseline", "host_cpu"))
    control = judge(BY_NAME["healthy"], _summary("baseline", "compute"))
    assert right.is_named and not wrong.is_named and control.is_named
    assert confusion([right, wrong, control]) == {
        "scheduling": {"scheduling": 1},
        "memory_io": {"host_cpu": 1},
        "healthy": {"compute": 1},
    }
    text = table([right, wrong, control])
    assert "| memory_io | memory_io | host_cpu ✗ |" in text
    # on a host busy with other work, contention first is no verdict on the plant
    busy = _summary("baseline", "contention")
    busy["variants"][0]["contended_rounds"] = [1]
    excused = judge(BY_NAME["memory_io"], busy)
    assert not excused.is_named and excused.is_busy_host
    assert not judge(BY_NAME["memory_io"], _summary("baseline", "contention")).is_busy_host


def test_a_fix_is_scored_by_its_plans_prediction_against_the_measured_ratio() -> None:
    metric = "output_tok_s"
    assert metric in {spec.key for spec in COMPARED}
    plan = {"factors": {"max_num_seqs": [16]},
            "prediction": {"max_num_seqs=16": {metric: 6.0}, "why": "from the spans"}}  # fmt: skip
    summary = {"plan": plan, "variants": [
        {"name": "baseline", "vs_baseline": {}},
        {"name": "max_num_seqs=16", "vs_baseline": {metric: {"ratio": 5.0, "ci95": [4.5, 5.5]}}},
    ]}  # fmt: skip
    fix = fix_outcome(summary)
    assert fix["switch"] == "--max-num-seqs 16" and fix["measured_ratio"] == 5.0
    assert fix["predicted"] == {"metric": metric, "ratio": 6.0}
    assert fix["error"] == pytest.approx(0.2) and not fix["ok"]


def test_a_reused_run_is_scored_by_the_current_prediction_and_every_metric_is_kept() -> None:
    plan = {"factors": {"max_num_seqs": [16]},
            "prediction": {"max_num_seqs=16": {"output_tok_s": 6.0, "tpot_ms.p50": 2.0}}}  # fmt: skip
    measured = {"output_tok_s": {"ratio": 5.0}, "tpot_ms.p50": {"ratio": 1.6}}
    summary = {"plan": plan, "variants": [{"name": "max_num_seqs=16", "vs_baseline": measured}]}
    fix = fix_outcome(summary, {"metric": "output_tok_s", "ratio": 5.2})
    assert fix["predicted"] == {"metric": "output_tok_s", "ratio": 5.2} and fix["ok"]
    assert fix["predicted_at_run"] == {"metric": "output_tok_s", "ratio": 6.0}
    assert fix["error"] == pytest.approx(0.04)
    assert fix["also"][0]["metric"] == "tpot_ms.p50"
    assert fix["also"][0]["error"] == pytest.approx(0.25)
    assert not fix["busy_host"]
    # a fix run whose rounds other processes contended: marked, no verdict on the prediction
    summary["variants"][0]["contended_rounds"] = [1, 2]
    busy = fix_outcome(summary)
    assert busy["busy_host"] and not busy["ok"]
    outcome = Outcome("scheduling_small_batch", ("scheduling",), "scheduling", fix=busy)
    assert "| +20% (busy host) |" in table([outcome])


def test_the_network_row_shows_the_link_what_if_against_the_delayed_run() -> None:
    network = BY_NAME["network"]
    outcome = Outcome("network", network.expected, "network")
    outcome.fix = {"expected": network.fix, "link_what_if": {
        "tpot_p50_ms": 20.9, "measured_tpot_p50_ms": 18.9, "error": 0.105}}  # fmt: skip
    assert "| TPOT p50 20.9 ms (link what-if) | 18.9 ms | +10% |" in table([outcome])


def test_host_cpu_serves_the_micro_checkpoint_written_into_the_work_dir(tmp_path: Path) -> None:
    from services.models.source import resolve_model

    host_cpu = BY_NAME["host_cpu"]
    assert host_cpu.plan["baseline"]["model"] == MICRO_MODEL
    plan = plan_for_run(host_cpu, tmp_path, rounds=1)
    source = resolve_model(plan["baseline"]["model"])  # a checkpoint serve can load
    assert source.config.num_layers == 1 and plan["repeats"] == 1
    assert parse_plan(plan, source="host_cpu").variants
