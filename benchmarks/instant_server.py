"""A front-door server that answers at once: the fixture for loadgen benchmarks and tests.

It implements `hopscope.v1.Tokenizer` for real (grpc.aio), so the load generator pays every cost
it pays against `hopscope serve` except the model. Each Generate answers `max_tokens` tokens in
at most `num_messages` messages; the last one carries finish_reason and usage.

    python -m benchmarks.instant_server --port 0     # prints "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]


@dataclass(slots=True, frozen=True)
class InstantServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    num_messages: int = 4
    message_interval_s: float = 0.0  # > 0 makes a slow server (interrupt tests)
    fail_every: int = 0  # > 0: every n-th request fails with RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if self.num_messages < 1:
            raise ValueError(f"num_messages must be >= 1, got {self.num_messages}")
        if self.message_interval_s < 0 or self.fail_every < 0:
            raise ValueError("message_interval_s and fail_every must be >= 0")


class InstantTokenizer(pb_grpc.TokenizerServicer):
    """Answers every Generate immediately with `max_tokens` tokens."""

    def __init__(self, config: InstantServerConfig) -> None:
        self._config = config
        self._num_requests = 0

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        self._num_requests += 1
        if request.max_tokens < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be >= 1")
        every = self._config.fail_every
        if every and self._num_requests % every == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full (fixture)")
        num_prompt = len(request.prompt_token_ids) or max(1, len(request.prompt.split()))
        for chunk in _split(request.max_tokens, self._config.num_messages):
            if self._config.message_interval_s:
                await asyncio.sleep(self._config.message_interval_s)
            yield pb.GenerateResponse(
                text="x" * len(chunk), token_ids=chunk, request_id=request.request_id
            )
        yield pb.GenerateResponse(
            finish_reason="length",
            usage=pb.Usage(prompt_tokens=num_prompt, completion_tokens=request.max_tokens),
            request_id=request.request_id,
        )

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        return pb.DescribeResponse(
            placement="instant-fixture", model=pb.ModelInfo(name="instant", max_context=1 << 20)
        )


def _split(num_tokens: int, num_messages: int) -> list[list[int]]:
    size = -(-num_tokens // num_messages)  # ceil: at most num_messages messages
    return [list(range(i, min(i + size, num_tokens))) for i in range(0, num_tokens, size)]


async def start_server(config: InstantServerConfig) -> tuple[grpc.aio.Server, int]:
    """Start the fixture server; returns it with the bound port."""
    server = grpc.aio.server()
    pb_grpc.add_TokenizerServicer_to_server(InstantTokenizer(config), server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    await server.start()
    return server, port


async def _serve(config: InstantServerConfig) -> None:
    server, port = await start_server(config)
    print(f"listening on {config.host}:{port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--num-messages", type=int, default=4)
    parser.add_argument("--message-interval-s", type=float, default=0.0)
    parser.add_argument("--fail-every", type=int, default=0)
    args = parser.parse_args(argv)
    config = InstantServerConfig(
        port=args.port,
        num_messages=args.num_messages,
        message_interval_s=args.message_interval_s,
        fail_every=args.fail_every,
    )
    try:
        asyncio.run(_serve(config))
    except KeyboardInterrupt:
        pass
    return 0


def start_subprocess(*flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """Run this server as a child process on a free port (through deploy/lifecycle.py: its own
    process group, `python -P`, output drained to a log file); returns it and its address."""
    from benchmarks.common import repo_env
    from deploy.lifecycle import launch

    log_path = Path(tempfile.mkdtemp(prefix="hopscope-instant-")) / "instant_server.log"
    argv = ["-m", "benchmarks.instant_server", "--port", "0", *flags]
    # benchmarks/ is not installed: it is found through PYTHONPATH (the checkout, never the cwd)
    child = launch(argv, name="instant_server", log_path=log_path, env=repo_env(), cwd=REPO)
    try:
        address = child.wait_for_line(re.compile(r"listening on (\S+)"), 60.0).group(1)
    except BaseException:
        child.stop(0)
        raise
    return child.process, address


if __name__ == "__main__":
    sys.exit(main())
