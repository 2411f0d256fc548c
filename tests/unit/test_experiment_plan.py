"""`hopscope experiment` plans: every refusal happens before anything starts and names the key
and the allowed values; the statistics call noise noise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from experiment.cpu import cpu_us_per_token, read_cpu_s
from experiment.plan import PlanError, builtin_plans, load_plan, parse_plan
from experiment.rounds import service_pids
from experiment.run import schedule
from experiment.stats import COMPARED, RoundSamples, compare, round_samples, verdict


def _plan(**overrides: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "baseline": {"placement": "colocated", "no_ray": True, "max_num_seqs": 16},
        "workload": {"concurrency": 8, "num_requests": 16},
        "factors": {"max_num_seqs": [2]},
    }
    plan.update(overrides)
    return plan


def _refusal(plan: dict[str, Any]) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(plan)
    return str(caught.value)


def test_a_valid_plan_expands_into_the_baseline_and_one_variant_per_value() -> None:
    plan = parse_plan(_plan(factors={"max-num-seqs": [2, 4], "placement": ["inproc"]}))
    assert [v.name for v in plan.variants] == [
        "baseline",
        "max_num_seqs=2",
        "max_num_seqs=4",
        "placement=inproc",
    ]
    variant = plan.variants[1]
    assert variant.factor == "max_num_seqs" and variant.value == 2
    assert "--max-num-seqs" in variant.serve_argv() and "--no-ray" in variant.serve_argv()
    assert variant.deployment()["max_num_seqs"] == 2
    assert variant.deployment()["placement"] == "colocated"  # everything else as the baseline
    assert not plan.is_cluster_needed


def test_unknown_serve_flag_is_refused_naming_the_allowed_flags() -> None:
    message = _refusal(_plan(baseline={"max_seqs": 4}))
    assert "baseline.max_seqs" in message
    assert "max_num_seqs" in message and "placement" in message  # the real serve flags


def test_unknown_bench_flag_is_refused_naming_the_allowed_flags() -> None:
    message = _refusal(_plan(workload={"concurrency": 4, "qps": 3}))
    assert "workload.qps" in message and "rate" in message and "num_requests" in message


def test_flags_the_experiment_sets_itself_are_refused() -> None:
    message = _refusal(_plan(baseline={"port": 50051}))
    assert "baseline.port" in message


def test_factor_value_equal_to_the_baseline_is_refused() -> None:
    message = _refusal(_plan(factors={"max_num_seqs": [16]}))
    assert "factors.max_num_seqs" in message and "equals the baseline" in message


def test_placement_needing_a_cluster_is_refused_with_no_ray() -> None:
    message = _refusal(_plan(factors={"placement": ["split"]}))
    assert "factors.placement" in message and "'split'" in message
    assert "inproc, colocated, colocated-tcp" in message


def test_booleans_must_be_true_or_false() -> None:
    message = _refusal(_plan(baseline={"no_ray": "yes"}))
    assert "baseline.no_ray" in message and "allowed: true, false" in message


def test_choices_and_types_name_the_allowed_values() -> None:
    message = _refusal(_plan(factors={"batching": ["dynamic"], "max_num_seqs": ["many"]}))
    assert "factors.batching" in message and "continuous, static" in message
    assert "factors.max_num_seqs" in message and "integer" in message


def test_a_link_factor_needs_ray_and_a_placement_across_nodes() -> None:
    assert "no_ray" in _refusal(_plan(factors={"link_delay_ms": [2]}))
    ray_colocated = _plan(baseline={"placement": "colocated"}, factors={"link_delay_ms": [2]})
    message = _refusal(ray_colocated)
    assert "factors.link_delay_ms" in message and "split, remote" in message
    split = parse_plan(_plan(baseline={"placement": "split"}, factors={"link_delay_ms": [2]}))
    assert split.is_cluster_needed and split.num_cluster_nodes == 2
    assert split.variants[1].link_delay_ms == 2.0 and split.variants[1].name == "link_delay_ms=2"


def test_a_link_factor_is_refused_on_a_given_ray_address() -> None:
    plan = _plan(baseline={"placement": "split"}, factors={"link_delay_ms": [2]})
    with pytest.raises(PlanError, match="drop --ray-address"):
        parse_plan(plan, ray_address="127.0.0.1:6379")


def test_a_load_point_is_required_and_single() -> None:
    assert "concurrency" in _refusal(_plan(workload={"num_requests": 4}))
    assert "one number" in _refusal(_plan(workload={"concurrency": "4,8"}))


def test_unknown_top_level_keys_and_bad_repeats_are_refused() -> None:
    message = _refusal(_plan(repeat=3, repeats=0))
    assert "repeat: unknown plan key" in message and "repeats" in message


def test_builtin_plans_load() -> None:
    names = set(builtin_plans())
    assert {"quick", "placement", "batching", "network", "precision", "step_loop"} <= names
    for name in names - {"precision", "step_loop"}:  # these need a CUDA device
        assert len(load_plan(name).variants) >= 2
    quick = load_plan("quick")
    assert not quick.is_cluster_needed and all(not v.is_ray for v in quick.variants)


def test_rounds_rotate_the_order() -> None:
    plan = parse_plan(_plan(factors={"max_num_seqs": [2, 4]}, repeats=3))
    order = schedule(plan)
    firsts = [v.name for k, position, v in order if position == 0]
    assert firsts == ["baseline", "max_num_seqs=2", "max_num_seqs=4"]
    assert len(order) == 9


# ---------------------------------------------------------------------------- statistics
def _samples(rng: np.random.Generator, scale: float, n: int = 200) -> RoundSamples:
    values = rng.lognormal(np.log(10 * scale), 0.2, n)
    windows = rng.normal(1000 / scale, 20, 12)
    return RoundSamples({"ttft_ms": values, "tpot_ms": values, "e2e_ms": values}, windows, windows)


def _spec(key: str) -> Any:
    return next(s for s in COMPARED if s.key == key)


def test_a_clear_slowdown_is_worse_with_an_interval_excluding_one() -> None:
    rng = np.random.default_rng(1)
    variant = [_samples(rng, 2.0) for _ in range(2)]
    baseline = [_samples(rng, 1.0) for _ in range(2)]
    tpot = compare(_spec("tpot_ms.p50"), variant, baseline)
    tokens = compare(_spec("output_tok_s"), variant, baseline)
    assert tpot is not None and tokens is not None
    assert tpot["verdict"] == "worse" and tpot["ci95"][0] > 1.0
    assert tokens["verdict"] == "worse" and tokens["ci95"][1] < 1.0  # lower tokens/s is worse
    assert 1.8 < tpot["ratio"] < 2.2


def test_identical_distributions_have_no_measurable_effect() -> None:
    rng = np.random.default_rng(2)
    result = compare(_spec("e2e_ms.p50"), [_samples(rng, 1.0)], [_samples(rng, 1.0)])
    assert result is not None and result["verdict"] == "no measurable effect"
    assert result["ci95"][0] <= 1.0 <= result["ci95"][1]


def test_verdict_respects_the_metrics_direction() -> None:
    assert verdict(1.1, 1.3, higher_is_better=True) == "better"
    assert verdict(1.1, 1.3, higher_is_better=False) == "worse"
    assert verdict(0.7, 0.9, higher_is_better=False) == "better"
    assert verdict(0.9, 1.1, higher_is_better=True) == "no measurable effect"


# ---------------------------------------------------------------------------- CPU
def test_cpu_of_this_process_grows_with_work() -> None:
    before = read_cpu_s(os.getpid())
    total = 0
    for i in range(3_000_000):
        total += i
    assert read_cpu_s(os.getpid()) > before
    assert cpu_us_per_token(0.5, 1000) == pytest.approx(500.0)
    assert cpu_us_per_token(0.5, 0) is None


def test_service_pids_group_services_sharing_a_process() -> None:
    inproc = {"services": [{"name": n, "pid": 10} for n in ("tokenizer", "scheduler", "worker")]}
    assert service_pids(inproc, serve_pid=10) == {"pipeline": 10}
    local = {
        "services": [
            {"name": n, "pid": p} for n, p in (("tokenizer", 11), ("scheduler", 12), ("worker", 13))
        ]
    }
    assert service_pids(local, serve_pid=10) == {
        "tokenizer": 11,
        "scheduler": 12,
        "worker": 13,
        "serve": 10,
    }


def test_throughput_windows_average_to_tokens_over_the_run() -> None:
    records = [
        {"status": "OK", "t_send_s": s, "ttft_ms": 50.0, "e2e_ms": e, "n_out": 32}
        for s, e in ((0.0, 400.0), (0.1, 500.0), (0.3, 900.0), (0.8, 300.0), (1.0, 700.0))
    ]
    samples = round_samples(records)
    duration_s = 1.7  # first send 0.0 → last end 1.0 + 0.7
    assert samples.window_tokens_per_s.mean() == pytest.approx(5 * 32 / duration_s)
    assert samples.window_requests_per_s.mean() == pytest.approx(5 / duration_s)
    assert (samples.window_tokens_per_s > 0).all()


def test_goodput_windows_count_only_requests_meeting_the_slo() -> None:
    rows = [
        {"status": "OK", "t_send_s": s, "ttft_ms": t, "e2e_ms": e, "n_out": 32}
        for s, t, e in (
            (0.0, 50.0, 400.0),
            (0.1, 250.0, 500.0),
            (0.3, 60.0, 900.0),
            (1.0, 40.0, 700.0),
        )
    ]
    samples = round_samples(rows, {"ttft_ms": 200.0})
    duration_s = 1.7  # the windows span every completed request, not only the good ones
    assert samples.window_good_per_s is not None
    assert samples.window_good_per_s.mean() == pytest.approx(3 / duration_s)
    # bench's own verdict per row wins over the SLO given here
    marked = [dict(r, meets_slo=i == 0) for i, r in enumerate(rows)]
    good = round_samples(marked, {"ttft_ms": 200.0}).window_good_per_s
    assert good is not None and good.mean() == pytest.approx(1 / duration_s)


def test_goodput_is_compared_with_an_interval() -> None:
    def rows(ttfts: list[float]) -> list[dict[str, object]]:
        return [
            {"status": "OK", "t_send_s": i * 0.1, "ttft_ms": t, "e2e_ms": 300.0, "n_out": 8}
            for i, t in enumerate(ttfts)
        ]

    slo = {"ttft_ms": 100.0}
    baseline = round_samples(rows([50.0] * 10 + [500.0] * 10), slo)  # half meet it
    variant = round_samples(rows([50.0] * 20), slo)  # all do
    spec = next(s for s in COMPARED if s.key == "goodput")
    result = compare(spec, [variant], [baseline])
    assert result is not None
    assert result["ratio"] == pytest.approx(2.0, rel=0.05)
    assert result["verdict"] == "better"


def test_named_workloads_each_run_every_variant_with_their_bench_flags() -> None:
    plan = parse_plan(
        _plan(workloads={"long_in": {"input_len": 1024, "output_len": 64},
                         "long_out": {"input_len": 64, "output_len": 512, "slo": "tpot_ms=80"}})
    )  # fmt: skip
    assert list(plan.workloads) == ["long_in", "long_out"]
    long_out = plan.for_workload("long_out")
    assert [v.name for v in long_out.variants] == ["baseline", "max_num_seqs=2"]
    argv = long_out.bench_argv()
    assert argv[argv.index("--output-len") + 1] == "512"
    assert argv[argv.index("--concurrency") + 1] == "8"  # the shared workload's
    assert argv[argv.index("--slo") + 1] == "tpot_ms=80"
    assert long_out.resolved()["workload"]["input_len"] == 64
    assert "workloads" not in long_out.resolved()  # one experiment, one workload


def test_a_named_workload_with_an_unknown_bench_flag_is_refused() -> None:
    message = _refusal(_plan(workloads={"w": {"prompt_len": 3}}))
    assert "workloads.w.prompt_len: not a `hopscope bench` flag" in message


def test_the_disaggregation_plan_has_a_prefill_and_a_decode_heavy_workload() -> None:
    plan = load_plan("disaggregation")
    heavy_in = plan.for_workload("prefill_heavy").workload
    heavy_out = plan.for_workload("decode_heavy").workload
    assert (heavy_in["input_len"], heavy_in["output_len"]) == (1024, 64)
    assert (heavy_out["input_len"], heavy_out["output_len"]) == (64, 512)
    assert heavy_in["slo"] and heavy_out["slo"]


def test_the_disaggregation_plan_measures_disagg_and_disagg_split_on_a_3_node_cluster() -> None:
    from deploy.placement import resolve_placement

    # the services span nodes a, b; disagg-split's prefill worker is on b, its decode worker on c
    assert resolve_placement("disagg-split").num_nodes() == 3
    assert resolve_placement("disagg").num_nodes() == 1
    assert resolve_placement("colocated").num_nodes() == 1
    plan = load_plan("disaggregation")
    by_name = {v.name: v for v in plan.variants}
    assert set(by_name) == {"baseline", "placement=disagg", "placement=disagg-split"}
    assert all(v.is_ray for v in plan.variants)
    assert by_name["placement=disagg-split"].num_nodes == 3
    assert by_name["placement=disagg"].num_nodes == 1
    assert plan.is_cluster_needed and plan.num_cluster_nodes == 3


def test_a_plan_with_workloads_runs_one_experiment_per_workload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    import experiment.run
    from experiment.cli import run_experiment_command

    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        yaml.safe_dump(_plan(workloads={"a": {"input_len": 16}, "b": {"input_len": 32}}))
    )
    ran: list[tuple[str, Path, int]] = []

    def fake_run(plan: Any, out: Path, **_: Any) -> int:
        ran.append((plan.name, out, plan.workload["input_len"]))
        return 0

    monkeypatch.setattr(experiment.run, "run_experiment", fake_run)
    args = argparse.Namespace(list=False, plan=str(plan_file), dirs=[], out=tmp_path / "out",
                              resume=False, quiet=True, ray_address="")  # fmt: skip
    assert run_experiment_command(args) == 0
    assert ran == [("plan/a", tmp_path / "out" / "a", 16), ("plan/b", tmp_path / "out" / "b", 32)]
    index = (tmp_path / "out" / "report.md").read_text()
    assert "[a](a/report.html)" in index and "[b](b/report.html)" in index


def test_a_prediction_is_text_or_expected_ratios_per_variant_and_reaches_the_plan_json() -> None:
    text = parse_plan(_plan(prediction="fewer sequences, less throughput"))
    assert text.resolved()["prediction"] == "fewer sequences, less throughput"
    ratios = {"why": "a quarter of the batch", "max_num_seqs=2": {"output_tok_s": 0.3}}
    plan = parse_plan(_plan(prediction=ratios))
    assert plan.resolved()["prediction"] == ratios
    assert "prediction" not in parse_plan(_plan()).resolved()


def test_a_prediction_names_a_variant_and_a_compared_metric_with_a_positive_ratio() -> None:
    refusal = _refusal(_plan(prediction={"max_num_seqs=4": {"output_tok_s": 0.3}}))
    assert (
        "prediction.max_num_seqs=4: not a variant of this plan; allowed: max_num_seqs=2" in refusal
    )
    refusal = _refusal(_plan(prediction={"max_num_seqs=2": {"tok_s": 0.3, "ttft_ms.p50": -1}}))
    assert (
        "prediction.max_num_seqs=2.tok_s: not a compared metric; allowed: output_tok_s" in refusal
    )
    assert "prediction.max_num_seqs=2.ttft_ms.p50: -1; allowed: a ratio > 0" in refusal
    assert "prediction: expected text" in _refusal(_plan(prediction=[0.3]))


def test_the_report_shows_the_prediction_beside_the_measured_ratio() -> None:
    from experiment.report import _plan_prediction_section

    measured = {"ratio": 0.28, "ci95": [0.25, 0.31], "verdict": "worse"}
    summary = {
        "plan": {
            "prediction": {
                "why": "a quarter",
                "max_num_seqs=2": {"output_tok_s": 0.3, "tpot_ms.p50": 2.0},
            }
        },
        "variants": [{"name": "max_num_seqs=2", "vs_baseline": {"output_tok_s": measured}}],
    }
    blocks = _plan_prediction_section(summary)
    assert ("p", "a quarter") in blocks
    _, (_, rows) = blocks[-1]
    assert rows[0] == [
        "max_num_seqs=2", "output tokens/s", "0.30×", "0.28× [0.25, 0.31]", "held", "+7%"
    ]  # fmt: skip
    assert rows[1][-3:] == ["-", "not measured", "-"]
    summary["plan"]["prediction"] = {"max_num_seqs=2": {"output_tok_s": 0.5}}
    assert _plan_prediction_section(summary)[-1][1][1][0][-2] == "missed (outside the interval)"
    assert _plan_prediction_section({"plan": {}, "variants": []}) == []
