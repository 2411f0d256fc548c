"""Running real deployments from tests: `hopscope serve` as a child process on port 0 (through
deploy/lifecycle.py, the launcher `serve` itself uses), and a small synchronous front-door
client. Every server started here is stopped in `finally`."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from deploy.lifecycle import ServeChild, start_serve
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc


@dataclass
class Served:
    address: str
    serve_child: ServeChild

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.serve_child.child.process

    def log(self) -> str:
        return "\n".join(self.serve_child.child.last_lines(200))

    def stub(self) -> pb_grpc.TokenizerStub:
        return pb_grpc.TokenizerStub(grpc.insecure_channel(self.address))

    def describe(self) -> pb.DescribeResponse:
        with grpc.insecure_channel(self.address) as channel:
            return pb_grpc.TokenizerStub(channel).Describe(pb.DescribeRequest(), timeout=10)


def generate(
    address: str, timeout_s: float = 60.0, **fields: object
) -> tuple[list[int], str, pb.GenerateResponse]:
    """Run one Generate; returns (token_ids, text, last message)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        ids: list[int] = []
        text: list[str] = []
        last = pb.GenerateResponse()
        for response in stub.Generate(pb.GenerateRequest(**fields), timeout=timeout_s):  # type: ignore[arg-type]
            ids.extend(response.token_ids)
            text.append(response.text)
            last = response
    return ids, "".join(text), last


@contextlib.contextmanager
def serve(placement: str, *args: str, timeout_s: float = 120.0) -> Iterator[Served]:
    """`hopscope serve --no-ray --placement P --port 0 ARGS`, yielded once its front door is
    SERVING (a start that runs out of time fails the test); asserts a clean drain at exit."""
    with tempfile.TemporaryDirectory(prefix="hopscope-test-") as log_dir:
        log_path = Path(log_dir) / "serve.log"
        child = start_serve(
            ["--no-ray", "--placement", placement, *args], log_path=log_path, timeout_s=timeout_s
        )
        served = Served(child.address, child)
        try:
            yield served
            code = child.stop(60.0)
            assert code == 0, f"serve exited with {code}:\n{served.log()}"
        finally:
            child.stop(0.0)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` at the deadline (a test
    acts or asserts on a state, never after a guessed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.05)


def wait_until_running(served: Served, timeout_s: float = 60.0) -> None:
    """Until the scheduler holds a running sequence (a request is in flight, past admission)."""
    wait_for(
        lambda: served.describe().scheduler_stats.num_running > 0,
        timeout_s,
        "no request started running",
    )


def wait_until_idle(served: Served, timeout_s: float = 30.0) -> pb.SchedulerStats:
    """Poll Describe until the scheduler holds no sequence; returns the last stats."""
    deadline = time.monotonic() + timeout_s
    stats = served.describe().scheduler_stats
    while time.monotonic() < deadline:
        stats = served.describe().scheduler_stats
        if (
            stats.num_running == 0
            and stats.num_waiting == 0
            and stats.num_free_blocks == stats.num_blocks
        ):
            return stats
        time.sleep(0.1)
    return stats


def seeded_generation(address: str, i: int, prompt_len: int, max_tokens: int) -> list[int]:
    """Request `i` of a seeded, sampled (temperature 0.8) batch: its own prompt ids and seed,
    `max_tokens` tokens ignoring EOS; asserts it ran to its length."""
    ids, _, last = generate(
        address,
        prompt_token_ids=[0, *range(100 + 7 * i, 100 + prompt_len + 7 * i)],
        max_tokens=max_tokens,
        ignore_eos=True,
        temperature=0.8,
        seed=1000 + i,
    )
    assert last.finish_reason == "length", last
    return ids
