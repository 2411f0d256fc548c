"""The three services end to end, through real gRPC servers, in every no-Ray placement."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

from tests.checkpoints import write_tiny_checkpoint
from tests.harness import Served, generate, serve, wait_until_idle

transformers = pytest.importorskip("transformers")

PROMPTS = [[0, 1523, 87, 912, 33, 2048, 7, 301], [0, 5, 6], [0, *range(400, 440)], [0, 77] * 9]
NEW_TOKENS = [12, 5, 20, 9]  # mixed output lengths, concurrently


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def expected(checkpoint: Path) -> list[list[int]]:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32
    ).eval()
    outputs = []
    for prompt, n in zip(PROMPTS, NEW_TOKENS):
        ids = torch.tensor([prompt])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=0,
        )
        outputs.append(out[0, len(prompt) :].tolist())
    return outputs


@pytest.fixture(scope="module")
def colocated(checkpoint: Path):  # type: ignore[no-untyped-def]
    with serve("colocated", "--model", str(checkpoint), "--max-queue-len", "64") as served:
        yield served


def _greedy(address: str, prompt: list[int], n: int) -> list[int]:
    ids, _, last = generate(address, prompt_token_ids=prompt, max_tokens=n, ignore_eos=True)
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == n and last.usage.prompt_tokens == len(prompt)
    return ids


def test_concurrent_greedy_requests_give_transformers_tokens(
    colocated: Served, expected: list[list[int]]
) -> None:
    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        futures = [
            pool.submit(_greedy, colocated.address, p, n)
            for p, n in zip(PROMPTS * 2, NEW_TOKENS * 2)
        ]
        results = [f.result() for f in futures]
    assert results == expected * 2


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "", "max_tokens": 4},
        {"prompt": "hello", "max_tokens": 0},
        {"prompt": "hello", "max_tokens": 100_000},
        {"prompt": "hello " * 600, "max_tokens": 4},
        {"prompt": "hello", "max_tokens": 4, "temperature": float("nan")},
        {"prompt": "hello", "max_tokens": 4, "temperature": -1.0},
        {"prompt": "hello", "max_tokens": 4, "top_p": 1.5},
        {"prompt": "hello", "max_tokens": 4, "top_k": -3},
        {"prompt_token_ids": [0, 10**7], "max_tokens": 4},
        {"prompt": "hello", "max_tokens": 4, "stop": [""]},
    ],
)
def test_bad_input_is_invalid_argument_and_next_request_succeeds(
    colocated: Served, fields: dict
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        generate(colocated.address, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details()  # a message a person can act on
    ids, _, last = generate(colocated.address, prompt="hello", max_tokens=3, ignore_eos=True)
    assert len(ids) == 3 and last.finish_reason == "length"


def test_describe_lists_services_and_edges(colocated: Served) -> None:
    d = colocated.describe()
    assert d.placement == "colocated"
    names = [s.name for s in d.services]
    assert names == ["tokenizer", "scheduler", "worker"]
    assert len({s.pid for s in d.services}) == 3
    assert all(s.node_id and s.host and s.address for s in d.services)
    edges = {(e.__getattribute__("from"), e.to): e.transport for e in d.edges}
    assert edges == {("tokenizer", "scheduler"): "uds", ("scheduler", "worker"): "uds"}
    assert d.model.num_blocks > 0 and d.model.max_context == 512 and d.model.device == "cpu"


def test_deadline_exceeded_and_blocks_freed(colocated: Served) -> None:
    with pytest.raises(grpc.RpcError) as info:
        generate(colocated.address, timeout_s=0.05, prompt="hello", max_tokens=400, ignore_eos=True)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stats = wait_until_idle(colocated)
    assert stats.num_running == 0 and stats.num_free_blocks == stats.num_blocks


def test_stop_string_ends_the_stream(colocated: Served) -> None:
    _, text, _ = generate(colocated.address, prompt="hello", max_tokens=30, ignore_eos=True)
    assert len(text) > 4
    stop = text[3:5]
    _, stopped, last = generate(
        colocated.address, prompt="hello", max_tokens=30, ignore_eos=True, stop=[stop]
    )
    assert last.finish_reason == "stop"
    assert stopped == text[: text.index(stop)]


def test_same_seed_same_tokens_in_every_placement(checkpoint: Path) -> None:
    request = {
        "prompt": "The quick brown fox",
        "max_tokens": 16,
        "temperature": 0.9,
        "seed": 1234,
        "top_k": 50,
        "top_p": 0.95,
        "ignore_eos": True,
    }
    results = {}
    for placement in ("inproc", "colocated", "colocated-tcp"):
        with serve(placement, "--model", str(checkpoint)) as served:
            ids, _, _ = generate(served.address, **request)
            results[placement] = ids
            if placement == "colocated-tcp":
                edges = {e.transport for e in served.describe().edges}
                assert edges == {"tcp"}
    assert results["inproc"] == results["colocated"] == results["colocated-tcp"]
    assert len(results["inproc"]) == 16


def _mixed(address: str) -> list[tuple[list[int], str]]:
    """Concurrent greedy and seeded requests of different lengths, one stopping at once."""
    lengths = [12, 1, 20, 5, 9, 16]

    def one(i: int) -> tuple[list[int], str]:
        sampling = {"temperature": 0.9, "top_p": 0.95, "seed": 100 + i} if i % 2 else {}
        ids, _, last = generate(
            address,
            prompt_token_ids=PROMPTS[i % len(PROMPTS)],
            max_tokens=lengths[i],
            ignore_eos=True,
            **sampling,
        )
        return ids, last.finish_reason

    with ThreadPoolExecutor(len(lengths)) as pool:
        return list(pool.map(one, range(len(lengths))))


def test_the_worker_process_starts_with_the_openmp_defaults(colocated: Served) -> None:
    """The worker's libgomp reads GOMP_SPINCOUNT once, at start: it must be in its environment
    (services/common/threads.py: OPENMP_ENV_DEFAULTS), unless the user set their own."""
    import os

    worker = next(s for s in colocated.describe().services if s.name == "worker")
    environ = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
    expected = os.environ.get("GOMP_SPINCOUNT", "100000")
    if "OMP_WAIT_POLICY" not in os.environ:
        assert f"GOMP_SPINCOUNT={expected}".encode() in environ


@pytest.mark.parametrize("encoding", ["nested", "packed"])
def test_every_step_encoding_gives_the_same_seeded_tokens(
    colocated: Served, checkpoint: Path, encoding: str
) -> None:
    """`--step-encoding nested|packed` against the module's server (the default, delta): the
    same tokens, greedy and seeded, over block boundaries and a sequence finishing at once."""
    plain = _mixed(colocated.address)
    with serve("colocated", "--model", str(checkpoint), "--step-encoding", encoding) as served:
        assert _mixed(served.address) == plain, encoding


def test_multi_step_decoding_gives_the_same_seeded_tokens(
    colocated: Served, checkpoint: Path
) -> None:
    """`--num-scheduler-steps 4` over the Step stream: decode runs of up to 4 steps in one
    round trip, their tokens in messages of up to 4; the same tokens as one step at a time."""
    plain = _mixed(colocated.address)
    for overlap in ("off", "on"):  # and with async scheduling: the next run built ahead
        flags = ("--num-scheduler-steps", "4", "--async-scheduling", overlap)
        with serve("colocated", "--model", str(checkpoint), *flags) as served:
            assert _mixed(served.address) == plain, overlap
            ids, _, _ = generate(served.address, prompt="hi", max_tokens=24, ignore_eos=True)
            assert len(ids) == 24
            stats = wait_until_idle(served)
            assert stats.num_running == 0 and stats.num_free_blocks == stats.num_blocks


def test_async_scheduling_gives_the_same_seeded_tokens(colocated: Served, checkpoint: Path) -> None:
    """`--async-scheduling on` (two steps in flight, the worker filling in the tokens it sampled),
    in-process and colocated (the Step stream), against the module's server with it off."""
    plain = _mixed(colocated.address)
    assert [len(ids) for ids, _ in plain] == [12, 1, 20, 5, 9, 16]
    for placement in ("inproc", "colocated"):
        with serve(placement, "--model", str(checkpoint), "--async-scheduling", "on") as served:
            assert _mixed(served.address) == plain, placement
            with pytest.raises(grpc.RpcError) as info:  # aborted mid-stream: blocks come back
                generate(
                    served.address, timeout_s=0.05, prompt="hi", max_tokens=400, ignore_eos=True
                )
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            stats = wait_until_idle(served)
            assert stats.num_running == 0 and stats.num_free_blocks == stats.num_blocks
