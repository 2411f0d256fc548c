"""`hopscope experiment next`: the plan that tests the top suggestion (the variant's deployment as
the baseline, the suggestion as the one factor, the same workload), and the predicted-vs-measured
rows its report shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiment.next_step import next_command, plan_data, predicted_vs_measured, top_step
from experiment.plan import parse_plan

QUICK = {
    "name": "quick",
    "baseline": {"placement": "colocated", "no_ray": True, "model": "tiny", "max_num_seqs": 16},
    "workload": {"concurrency": 16, "num_requests": 64, "input_len": 64, "output_len": 32},
    "factors": {"max_num_seqs": [2]},
    "repeats": 2,
}


def _diagnosis(kind: str, share: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"primary": kind, "findings": [{"type": kind, "score": share, "suggestions": rows}]}


def _larger_batch(ratio: float) -> dict[str, Any]:
    return {"method": "larger batch", "switch": "--max-num-seqs 16", "factor": "max_num_seqs",
            "value": 16, "predicted": {"metric": "output_tok_s", "ratio": ratio}}  # fmt: skip


def _experiment(tmp_path: Path) -> Path:
    """An experiment directory as `hopscope experiment quick` leaves it (no rounds needed)."""
    plan = parse_plan(QUICK, source="quick")
    (tmp_path / "plan.json").write_text(json.dumps(plan.resolved()))
    for variant in plan.variants:
        folder = tmp_path / variant.dirname
        folder.mkdir()
        info = {"name": variant.name, "deployment": variant.deployment()}
        (folder / "variant.json").write_text(json.dumps(info))
    profile = {"method": "profile", "switch": "hopscope profile", "factor": None, "value": None,
               "predicted": None, "not_predicted": "advice"}  # fmt: skip
    summary = {"variants": [
        {"name": "baseline", "diagnosis": _diagnosis("host_cpu", 0.3, [profile])},
        {"name": "max_num_seqs=2", "diagnosis": _diagnosis("scheduling", 0.85, [_larger_batch(3.0)])},
    ]}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_the_largest_bottleneck_becomes_a_plan_with_one_factor(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    summary = json.loads((exp / "summary.json").read_text())
    step = top_step(summary)
    assert step is not None and step.variant == "max_num_seqs=2" and step.finding == "scheduling"
    assert next_command(exp, step) == f"hopscope experiment next {exp} --variant max_num_seqs=2"
    data = plan_data(exp, step)
    assert data["baseline"] == {"placement": "colocated", "no_ray": True, "model": "tiny",
                                "max_num_seqs": 2}  # fmt: skip
    assert data["workload"] == QUICK["workload"]  # nothing bench fills in later
    assert data["factors"] == {"max_num_seqs": [16]} and data["repeats"] == 2
    plan = parse_plan(data, source="next")
    assert [v.name for v in plan.variants] == ["baseline", "max_num_seqs=16"]
    # a variant whose findings suggest no serve flag has nothing `next` can run
    assert top_step(summary, "baseline") is None


def test_the_plan_carries_the_prediction_the_report_sets_beside_the_measured(
    tmp_path: Path,
) -> None:
    exp = _experiment(tmp_path)
    step = top_step(json.loads((exp / "summary.json").read_text()))
    assert step is not None
    data = plan_data(exp, step)
    plan = parse_plan(data, source="next")  # the plan's own `prediction:` check passes
    assert isinstance(plan.prediction, dict)
    assert plan.prediction["max_num_seqs=16"] == {"output_tok_s": 3.0}
    measured = {"output_tok_s": {"ratio": 2.5, "ci95": [2.3, 2.7]}}
    summary = {"plan": {"prediction": plan.prediction},
               "variants": [{"name": "baseline", "vs_baseline": {}},
                            {"name": "max_num_seqs=16", "vs_baseline": measured}]}  # fmt: skip
    (row,) = predicted_vs_measured(summary)
    assert row["variant"] == "max_num_seqs=16" and row["measured_ratio"] == 2.5
    assert row["error"] == pytest.approx(3.0 / 2.5 - 1)


def test_a_suggestion_its_deployment_cannot_run_is_passed_over() -> None:
    """Under no_ray a Ray placement cannot be a plan's factor: `next` tests the next suggestion
    instead of writing a plan that is refused (as the host_cpu acceptance scenario once did)."""
    split = {"method": "a placement across nodes", "switch": "--placement split",
             "factor": "placement", "value": "split", "predicted": None, "not_predicted": "x"}  # fmt: skip
    steps4 = {"method": "multi-step", "switch": "--num-scheduler-steps 4",
              "factor": "num_scheduler_steps", "value": 4,
              "predicted": {"metric": "tpot_ms.p50", "ratio": 0.6}}  # fmt: skip
    variant = {"name": "baseline", "deployment": {"placement": "colocated", "no_ray": True},
               "diagnosis": {"primary": "contention", "findings": [
                   {"type": "contention", "score": 0.4, "suggestions": [split]},
                   {"type": "host_cpu", "score": 0.2, "suggestions": [steps4]}]}}  # fmt: skip
    step = top_step({"variants": [variant]})
    assert step is not None and step.suggestion["switch"] == "--num-scheduler-steps 4"
    on_ray = {**variant, "deployment": {"placement": "colocated", "no_ray": False}}
    step = top_step({"variants": [on_ray]})
    assert step is not None and step.suggestion["switch"] == "--placement split"


def test_the_plan_carries_every_metric_the_suggestion_predicts(tmp_path: Path) -> None:
    """A larger batch predicts tokens/s and TPOT: both go into the plan, tokens/s first."""
    exp = _experiment(tmp_path)
    summary = json.loads((exp / "summary.json").read_text())
    row = summary["variants"][1]["diagnosis"]["findings"][0]["suggestions"][0]
    row["also_predicted"] = [{"metric": "tpot_ms.p50", "ratio": 1.4}]
    step = top_step(summary)
    assert step is not None
    plan = parse_plan(plan_data(exp, step), source="next")
    assert isinstance(plan.prediction, dict)
    assert plan.prediction["max_num_seqs=16"] == {"output_tok_s": 3.0, "tpot_ms.p50": 1.4}
    measured = {"output_tok_s": {"ratio": 2.5}, "tpot_ms.p50": {"ratio": 1.5}}
    summary = {"plan": {"prediction": plan.prediction},
               "variants": [{"name": "max_num_seqs=16", "vs_baseline": measured}]}  # fmt: skip
    rows = predicted_vs_measured(summary)
    assert [r["metric"] for r in rows] == ["output_tok_s", "tpot_ms.p50"]
    assert rows[1]["error"] == pytest.approx(1.4 / 1.5 - 1)
