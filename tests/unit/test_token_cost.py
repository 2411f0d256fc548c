"""benchmarks/token_cost.py's verdicts: every target carries its value, its limit and met."""

from __future__ import annotations

from pathlib import Path

from benchmarks.token_cost import (
    TARGETS,
    baseline_variant,
    check_targets,
    medians,
    serve_argv,
    serve_env,
)


def _round(index: int, tokenizer_us: float, ratio: float) -> dict:
    us = {"tokenizer": tokenizer_us, "scheduler": 10.0, "client": 30.0, "serve": 0.0}
    figures = {"cpu_us_per_token": us, "bench_cpu_outside_run_s": 0.3}
    return {
        "round": index,
        "variant": "colocated",
        "figures": figures | {"ratio_to_worker_alone": ratio},
    }


def test_targets_are_judged_on_the_medians_in_their_direction() -> None:
    rounds = [_round(0, 20.0, 0.8), _round(1, 90.0, 0.5), _round(2, 25.0, 0.9)]
    colocated = medians(rounds, "colocated")
    assert colocated["tokenizer_cpu_us_per_token"] == 25.0
    assert colocated["serve_cpu_us_per_token"] == 0.0  # a zero is a figure, not a gap
    checked = check_targets(colocated)
    assert set(checked) == set(TARGETS)
    assert checked["tokenizer_cpu_us_per_token"] == {
        "value": 25.0,
        "target": "<= 30.0",
        "met": True,
    }
    assert checked["ratio_to_worker_alone"] == {"value": 0.8, "target": ">= 0.75", "met": True}
    assert checked["client_cpu_us_per_token"]["met"]


def test_a_missed_or_missing_figure_is_not_met() -> None:
    checked = check_targets({"tokenizer_cpu_us_per_token": 31.0, "ratio_to_worker_alone": 0.7})
    assert not checked["tokenizer_cpu_us_per_token"]["met"]
    assert not checked["ratio_to_worker_alone"]["met"]
    assert checked["scheduler_cpu_us_per_token"] == {
        "value": None,
        "target": "<= 15.0",
        "met": False,
    }


def test_a_baseline_variant_serves_the_same_placement_from_the_other_tree() -> None:
    variant = baseline_variant("colocated", Path("/tmp/base-tree"))
    assert serve_argv(variant) == serve_argv("colocated")  # same serve flags
    env = serve_env(variant)
    assert env is not None and env["PYTHONPATH"] == str(Path("/tmp/base-tree").resolve())
