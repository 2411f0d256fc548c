"""benchmarks/aiperf_client.py: AIPerf's export read into the bench's figure names, the load it
is given, and the peers' medians and clients table over it (AIPerf itself never runs in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import aiperf_client, peers

# A real `aiperf profile` export (0.13.0, against llama-cpp-python's server, c=2), trimmed.
EXPORT = Path(__file__).parents[1] / "fixtures" / "aiperf_profile_export.json"


def test_figures_from_a_real_export_map_its_per_request_itl_to_tpot() -> None:
    figures = aiperf_client.figures(json.loads(EXPORT.read_text()))
    assert figures == {
        "output_tok_s": 33.467,
        "ttft_p50_ms": 2433.422,
        "ttft_p99_ms": 3097.851,
        "tpot_p50_ms": 20.129,
        "tpot_p99_ms": 22.531,
        "e2e_p50_ms": 3517.459,
        "output_len_avg": 64.0,
        "completed": 4.0,
    }  # no error_request_count in the export: none failed, no "failed" figure
    assert (
        aiperf_client.figures({"request_count": {"avg": 3}, "error_request_count": {"avg": 1}})[
            "failed"
        ]
        == 1.0
    )


def test_profile_argv_carries_the_bench_load(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a b"}) + "\n\n" + json.dumps({"prompt": "c"}) + "\n")
    dataset = aiperf_client.write_dataset(prompts, tmp_path / "aiperf.jsonl")
    assert [json.loads(ln) for ln in dataset.read_text().splitlines()] == [
        {"text": "a b"},
        {"text": "c"},
    ]
    argv = aiperf_client.profile_argv(
        Path("/venv/bin/aiperf"), url="http://127.0.0.1:9", model="m", tokenizer_dir=tmp_path,
        dataset=dataset, concurrency=4, measured=8, warmup=4, output_len=64,
        artifact_dir=tmp_path / "art",
    )  # fmt: skip

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert argv[:2] == ["/venv/bin/aiperf", "profile"]
    assert "--streaming" in argv and "--use-legacy-max-tokens" in argv
    assert (flag("--concurrency"), flag("--request-count")) == ("4", "8")
    assert float(flag("--request-rate")) >= 100  # paced: burst mode spins a core
    assert (flag("--endpoint-type"), flag("--input-file")) == ("completions", str(dataset))
    extra = json.loads(flag("--extra-inputs"))
    assert extra == {"max_tokens": 64, "ignore_eos": True, "temperature": 0.0}


def test_a_failed_aiperf_run_says_why(tmp_path: Path) -> None:
    script = tmp_path / "aiperf"
    script.write_text("#!/bin/sh\necho 'Failed to load tokenizer' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"exited 1(.|\n)*Failed to load tokenizer"):
        aiperf_client.run([str(script)], tmp_path / "art", tmp_path / "log")


def test_medians_and_clients_table_put_both_clients_side_by_side() -> None:
    def record(round_index: int, bench: float, second: dict) -> dict:
        point = {"concurrency": 4, "output_tok_s": bench, "ttft_p50_ms": 500.0, "aiperf": second}
        return {"round": round_index, "system": "vllm", "startup_s": 80.0, "points": [point]}

    records = [
        record(0, 60.0, {"output_tok_s": 58.0, "tpot_p50_ms": 40.0}),
        record(1, 70.0, {"output_tok_s": 66.0, "tpot_p50_ms": 42.0}),
        record(2, 80.0, {"error": "aiperf exited 1"}),  # left out of AIPerf's medians
    ]
    point = peers.medians(records)["vllm"]["by_concurrency"]["4"]
    assert point["output_tok_s"] == 70.0
    assert point["aiperf"] == {"output_tok_s": 62.0, "tpot_p50_ms": 41.0}
    table = peers.render_clients_table(peers.medians(records)).splitlines()
    assert table[0].startswith("| system | conc | tok/s bench / AIPerf |")
    assert table[2].startswith("| vllm | 4 | 70 / 62 | 500 / — |")
    assert all(row.count("|") == table[0].count("|") for row in table)
