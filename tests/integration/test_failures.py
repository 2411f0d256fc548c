"""What a user sees when things go wrong: cancellations, a full queue, a dead service, a taken
port, a missing model — and that nothing leaks."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest

from deploy.lifecycle import wait_serving
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from tests.harness import generate, serve, wait_until_idle, wait_until_running


async def _cancel_at_random(address: str, num_streams: int, seed: int) -> tuple[int, int]:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TokenizerStub(channel)

        async def one(i: int) -> bool:
            call = stub.Generate(
                pb.GenerateRequest(
                    prompt_token_ids=[0, 10 + i % 50, 20],
                    max_tokens=rng.randint(1, 40),
                    ignore_eos=True,
                    temperature=0.7,
                    seed=i,
                )
            )
            cancel_after = rng.randint(0, 6)
            n = 0
            try:
                async for _ in call:
                    n += 1
                    if n >= cancel_after:
                        call.cancel()
                        return False
            except asyncio.CancelledError:
                return False
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                ), exc
                return False
            return True

        done = await asyncio.gather(*(one(i) for i in range(num_streams)))
    return sum(done), num_streams - sum(done)


@pytest.mark.parametrize("placement", ["inproc", "colocated"])
def test_hundreds_of_cancelled_streams_leave_no_sequence_and_every_block_free(
    placement: str,
) -> None:
    with serve(placement, "--max-queue-len", "512") as served:
        _completed, cancelled = asyncio.run(_cancel_at_random(served.address, 300, seed=1))
        assert cancelled > 100
        stats = wait_until_idle(served)
        assert (stats.num_waiting, stats.num_running) == (0, 0)
        assert stats.num_free_blocks == stats.num_blocks
        ids, _, _ = generate(served.address, prompt="still serving", max_tokens=4, ignore_eos=True)
        assert len(ids) == 4


async def _flood(address: str, num: int) -> list[grpc.StatusCode]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TokenizerStub(channel)

        async def one() -> grpc.StatusCode:
            try:
                async for _ in stub.Generate(
                    pb.GenerateRequest(prompt="x", max_tokens=30, ignore_eos=True)
                ):
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        return await asyncio.gather(*(one() for _ in range(num)))


def test_full_queue_is_resource_exhausted_at_once() -> None:
    with serve("inproc", "--max-queue-len", "2", "--max-num-seqs", "1") as served:
        started = time.monotonic()
        codes = asyncio.run(_flood(served.address, 12))
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert grpc.StatusCode.OK in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert time.monotonic() - started < 30
        assert wait_until_idle(served).num_running == 0


def test_dead_worker_turns_requests_unavailable_and_serving_resumes_after_restart() -> None:
    with serve("colocated") as served:
        worker_pid = next(s.pid for s in served.describe().services if s.name == "worker")
        results: list[grpc.StatusCode] = []

        def long_request() -> None:
            try:
                generate(served.address, timeout_s=60, prompt="x", max_tokens=2000, ignore_eos=True)
                results.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                results.append(exc.code())

        import threading

        t = threading.Thread(target=long_request)
        t.start()
        wait_until_running(served)  # kill the worker under a request in flight
        os.kill(worker_pid, signal.SIGKILL)
        t.join(40)
        assert not t.is_alive()
        # the supervisor restarts the worker; the request either failed UNAVAILABLE or was recomputed
        assert results[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK)
        wait_serving(served.address, 60.0)  # raises when it runs out: never carry on
        ids, _, _ = generate(served.address, prompt="back again", max_tokens=3, ignore_eos=True)
        assert len(ids) == 3


def _run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "deploy.cli", "serve", "--no-ray", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_port_taken_is_a_clear_error_and_no_child_is_left() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        for placement in ("inproc", "colocated"):
            result = _run_serve("--placement", placement, "--port", str(port))
            assert result.returncode != 0
            assert str(port) in result.stderr and "in use" in result.stderr, result.stderr


def test_missing_model_is_a_clear_error() -> None:
    result = _run_serve(
        "--placement", "colocated", "--port", "0", "--model", "meta-llama/Llama-3.2-1B"
    )
    assert result.returncode != 0
    assert "meta-llama/Llama-3.2-1B" in result.stderr and "download" in result.stderr, result.stderr


def test_placement_needing_ray_is_refused_without_ray() -> None:
    result = _run_serve("--placement", "remote", "--port", "0")
    assert result.returncode == 2 and "needs Ray" in result.stderr


def test_sigterm_drains_in_flight_streams() -> None:
    with serve("colocated") as served:
        import threading

        out: dict[str, object] = {}

        def request() -> None:
            try:
                out["ids"] = generate(served.address, prompt="x", max_tokens=60, ignore_eos=True)[0]
            except grpc.RpcError as exc:
                out["error"] = exc.code()

        t = threading.Thread(target=request)
        t.start()
        wait_until_running(served)  # SIGTERM with the stream in flight
        served.process.send_signal(signal.SIGTERM)
        t.join(60)
        assert served.process.wait(60) == 0
        assert len(out.get("ids", [])) == 60, out
        served.process.send_signal(signal.SIGTERM)  # harmless: already exited
