"""Every plan under benchmarks/plans/ loads (a benchmark is a plan now: a broken one would only
show when someone ran it), and a file a plan reads is in the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiment.plan import load_plan

REPO = Path(__file__).parents[2]
PLANS = sorted((REPO / "benchmarks" / "plans").glob("*.yaml"))


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_the_benchmark_plan_loads_and_its_dataset_exists(path: Path) -> None:
    plan = load_plan(str(path))
    assert plan.description, f"{path.name} says what it measures"
    assert len(plan.variants) > 1
    dataset = plan.workload.get("dataset")
    assert dataset is None or (REPO / dataset).is_file(), f"{dataset} (run from the repo root)"


def test_the_plans_that_replaced_scripts_state_their_prediction() -> None:
    predicted = {p.stem for p in PLANS if load_plan(str(p)).prediction}
    assert {
        "batching-mixed-lengths",
        "colocation-cost",
        "async-scheduling",
        "kv-offload",
    } <= predicted
