"""Seeded workloads: same seed, byte-identical requests; datasets parsed or refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.config import BenchConfig, LengthSpec, LoadConfig, WorkloadConfig
from loadgen.runner import request_id_of, to_request
from loadgen.workloads import DatasetError, Workload


def wire_bytes(workload: WorkloadConfig, num: int) -> bytes:
    config = BenchConfig("127.0.0.1:1", LoadConfig(rate=1.0, num_requests=num), workload)
    w = Workload(workload)
    return b"".join(
        to_request(w.request(i), config, request_id_of(config, i)).SerializeToString()
        for i in range(num)
    )


def test_same_seed_gives_byte_identical_requests() -> None:
    workload = WorkloadConfig(LengthSpec(100, 50, "uniform"), LengthSpec(20, 5, "normal"), seed=4)
    assert wire_bytes(workload, 50) == wire_bytes(workload, 50)
    other = WorkloadConfig(LengthSpec(100, 50, "uniform"), LengthSpec(20, 5, "normal"), seed=5)
    assert wire_bytes(workload, 50) != wire_bytes(other, 50)


def test_synthetic_lengths_follow_their_distribution() -> None:
    w = Workload(WorkloadConfig(LengthSpec(100, 20, "uniform"), LengthSpec(8), seed=1))
    specs = [w.request(i) for i in range(500)]
    lengths = [len(s.prompt_token_ids) for s in specs]
    assert 80 <= min(lengths) and max(lengths) <= 120
    assert sum(lengths) / len(lengths) == pytest.approx(100, rel=0.05)
    assert {s.max_tokens for s in specs} == {8}
    assert all(10 <= t < 4000 for s in specs for t in s.prompt_token_ids)
    assert all(s.ignore_eos and not s.prompt for s in specs)


def test_jsonl_prompts_in_seeded_order_with_their_own_max_tokens(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    lines = [{"prompt": f"p{i}", "max_tokens": i + 1} for i in range(5)]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    w = Workload(WorkloadConfig(dataset=str(path), seed=3))
    specs = [w.request(i) for i in range(5)]
    assert sorted(s.prompt for s in specs) == [f"p{i}" for i in range(5)]
    assert all(s.max_tokens == int(s.prompt[1:]) + 1 for s in specs)
    assert [s.prompt for s in specs] == [Workload(w._config).request(i).prompt for i in range(5)]


def test_sharegpt_uses_first_turn_as_prompt_and_reply_length(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    data = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x" * 40}]},
        {"conversations": [{"from": "human", "value": "lonely"}]},  # no reply: skipped
    ]
    path.write_text(json.dumps(data))
    spec = Workload(WorkloadConfig(dataset=str(path), dataset_format="sharegpt")).request(0)
    assert (spec.prompt, spec.max_tokens) == ("hi", 10)


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        ('{"prompt": "a"}\nnot json\n', "jsonl", ":2: not JSON"),
        ('{"text": "a"}\n', "jsonl", ':1: expected an object with a non-empty "prompt"'),
        ('{"prompt": "a", "max_tokens": 0}\n', "jsonl", '"max_tokens" must be an integer'),
        ('{"conversations": []}', "sharegpt", "JSON list"),
        ("[]", "sharegpt", "no usable prompts"),
    ],
)
def test_malformed_dataset_names_file_and_problem(
    tmp_path: Path, text: str, fmt: str, message: str
) -> None:
    path = tmp_path / "data"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        Workload(WorkloadConfig(dataset=str(path), dataset_format=fmt))


def test_missing_dataset_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        Workload(WorkloadConfig(dataset=str(tmp_path / "absent.jsonl")))
