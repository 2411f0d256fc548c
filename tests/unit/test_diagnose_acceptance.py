"""benchmarks/diagnose_acceptance.py's scoring: the planted type against the one named first, the
confusion matrix, and each fix's predicted vs measured ratio from `experiment next`'s files."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.diagnose_acceptance import (
    ENGINE_TYPES,
    SCENARIOS,
    SHORT,
    confusion,
    fix_outcome,
    judge,
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
