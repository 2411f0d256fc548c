"""Front-door replicas (`serve --tokenizer-replicas 2 --no-ray`): two tokenizer processes on one
gRPC port and one HTTP port (SO_REUSEPORT), each with its own Connect stream (Describe lists
both), both taking connections, with the seeded tokens of one front door."""

from __future__ import annotations

import re
import time

import grpc
import httpx

from deploy.spec import HTTP_RE
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from tests.harness import Served, seeded_generation, serve

NUM_SEEDED = 6
MAX_TOKENS = 16
# fresh connections per front door: the kernel spreads them over the replicas by a hash of the
# connection's addresses, so all of them on one replica has odds of 2^-15
NUM_CONNECTIONS = 16
METRICS_RE = re.compile(r"^hopscope metrics: (?P<urls>.+)$")
E2E_COUNT_RE = re.compile(
    r'^hopscope_rpc_duration_ms_count\{method="Generate",service="tokenizer"\} (\S+)$', re.MULTILINE
)


def _line(served: Served, pattern: re.Pattern[str]) -> re.Match[str]:
    for line in served.serve_child.child.last_lines(200):
        if match := pattern.search(line):
            return match
    raise AssertionError(f"no line matching {pattern.pattern!r}:\n{served.log()}")


def _http_url(served: Served) -> str:
    return _line(served, HTTP_RE).group("url")


def _metrics_urls(served: Served) -> dict[str, str]:
    urls = _line(served, METRICS_RE).group("urls")
    return dict(item.split(" ", 1) for item in urls.split(", "))


def _seeded_http(url: str, i: int) -> str:
    body = {
        "model": "tiny",
        "prompt": f"front door replica {i}",
        "max_tokens": MAX_TOKENS,
        "temperature": 0.8,
        "seed": 2000 + i,
        "ignore_eos": True,
    }
    with httpx.Client() as client:  # a fresh connection each
        response = client.post(f"{url}/v1/completions", json=body, timeout=60)
    response.raise_for_status()
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length", choice
    return str(choice["text"])


def _seeded_all(served: Served) -> tuple[list[list[int]], list[str]]:
    grpc_tokens = [seeded_generation(served.address, i, 24, MAX_TOKENS) for i in range(NUM_SEEDED)]
    url = _http_url(served)
    return grpc_tokens, [_seeded_http(url, i) for i in range(NUM_SEEDED)]


def _one_token_grpc(address: str) -> None:
    # its own subchannel: a channel to the same target would otherwise share a connection
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as channel:
        request = pb.GenerateRequest(prompt_token_ids=[0, 5, 6], max_tokens=1)
        responses = list(pb_grpc.TokenizerStub(channel).Generate(request, timeout=30))
    assert responses[-1].finish_reason == "length", responses


def _generate_counts(urls: dict[str, str]) -> dict[str, float]:
    counts = {}
    for name, url in urls.items():
        match = E2E_COUNT_RE.search(httpx.get(url, timeout=10).text)
        counts[name] = float(match.group(1)) if match else 0.0
    return counts


def _front_doors(served: Served, expected: int) -> list[pb.ServiceInfo]:
    """The tokenizers Describe lists, once `expected` have their Connect stream open."""
    deadline = time.monotonic() + 30.0
    while True:
        described = served.describe()
        front = [s for s in described.services if s.name.startswith("tokenizer")]
        if len(front) == expected:
            return front
        assert time.monotonic() < deadline, f"Describe lists {front}, not {expected} tokenizers"
        time.sleep(0.1)


def test_two_front_door_replicas_serve_grpc_and_http_with_the_tokens_of_one() -> None:
    with serve("colocated", "--http-port", "0") as one:
        assert [s.name for s in _front_doors(one, 1)] == ["tokenizer"]
        reference = _seeded_all(one)

    args = ["--tokenizer-replicas", "2", "--http-port", "0", "--metrics-port", "0"]
    with serve("colocated", *args) as two:
        front = _front_doors(two, 2)
        assert [s.name for s in front] == ["tokenizer", "tokenizer-1"]
        assert front[0].pid != front[1].pid and front[0].pid > 0 and front[1].pid > 0
        assert {s.address for s in front} == {two.address}  # one shared port
        edges = {(getattr(e, "from"), e.to) for e in two.describe().edges}
        assert {("tokenizer", "scheduler"), ("tokenizer-1", "scheduler")} <= edges

        assert _seeded_all(two) == reference

        urls = {k: v for k, v in _metrics_urls(two).items() if k.startswith("tokenizer")}
        assert sorted(urls) == ["tokenizer", "tokenizer-1"] and len(set(urls.values())) == 2
        before = _generate_counts(urls)
        for _ in range(NUM_CONNECTIONS):
            _one_token_grpc(two.address)
        after_grpc = _generate_counts(urls)
        http_url = _http_url(two)
        for _ in range(NUM_CONNECTIONS):
            with httpx.Client() as client:
                body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
                client.post(f"{http_url}/v1/completions", json=body, timeout=30).raise_for_status()
        after_http = _generate_counts(urls)
        grpc_share = {n: after_grpc[n] - before[n] for n in urls}
        http_share = {n: after_http[n] - after_grpc[n] for n in urls}
        assert sum(grpc_share.values()) == NUM_CONNECTIONS, grpc_share
        assert sum(http_share.values()) == NUM_CONNECTIONS, http_share
        assert all(v > 0 for v in grpc_share.values()), f"gRPC connections: {grpc_share}"
        assert all(v > 0 for v in http_share.values()), f"HTTP connections: {http_share}"
