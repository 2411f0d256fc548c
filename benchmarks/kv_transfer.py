"""The KV hop alone (issue 21): one request's KV blocks moved worker -> worker by
`Worker.ImportKV` (the decode worker pulls them from the prefill worker with `Worker.PullKV`), over
a Unix socket with the bytes in the gRPC stream (`grpc`) or through a /dev/shm segment (`shm`).

Two worker processes (`python -P -m services.worker`, as `serve --no-ray` starts them) serve the
same model; this process is the scheduler's side: it calls `import_kv` on the destination for the
blocks of a `--prompt-tokens` prompt (what the transfer moves does not depend on the values, so
the source's blocks are not prefilled first). Variants alternate in rounds; per transfer the
destination's own `transfer_ms` (PullKV opened -> last block written) and the caller's round trip.

    python -m benchmarks.kv_transfer [--model smollm2-135m] [--prompt-tokens 1024]
        [--rounds 10] [--iters 5] [--out benchmarks/results/kv_transfer.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from deploy.lifecycle import Child, launch
from deploy.local import READY_RE
from services.common.channels import create_channel
from services.common.process import config_to_json
from services.config import HopscopeConfig
from services.scheduler.kv_client import import_kv
from services.worker.service_config import WorkerServiceConfig

VARIANTS = ("grpc", "shm")


def _start_worker(name: str, listen: str, model: str, kv_cache_mb: int, log_dir: Path) -> Child:
    config = WorkerServiceConfig(
        settings=HopscopeConfig.of(model=model, kv_cache_mb=kv_cache_mb), listen=listen
    )
    argv = ["-m", "services.worker", "--config", config_to_json(config)]
    child = launch(argv, name=name, log_path=log_dir / f"{name}.log", env=common.repo_env())
    child.wait_for_line(READY_RE, 300)
    return child


async def _measure(
    source: str, dest: str, num_blocks: int, rounds: int, iters: int
) -> dict[str, Any]:
    channel = create_channel(dest)
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    try:
        blocks = list(range(num_blocks))
        for transport in VARIANTS:  # warm-up: channels, first allocations
            await import_kv(channel, source, blocks, blocks, transport)
        for r in range(rounds):
            for transport in common.rotated(list(VARIANTS), r):
                for _ in range(iters):
                    start = time.perf_counter()
                    result = await import_kv(channel, source, blocks, blocks, transport)
                    rtt_ms = (time.perf_counter() - start) * 1e3
                    samples[transport].append(
                        {
                            "transfer_ms": result.transfer_ms,
                            "call_ms": rtt_ms,
                            "num_bytes": result.num_bytes,
                        }
                    )
    finally:
        await channel.close()
    out: dict[str, Any] = {}
    for transport, rows in samples.items():
        ms = [row["transfer_ms"] for row in rows]
        num_bytes = rows[0]["num_bytes"]
        p50 = statistics.median(ms)
        out[transport] = {
            "num_transfers": len(rows),
            "kv_bytes": int(num_bytes),
            "transfer_ms_p50": round(p50, 3),
            "transfer_ms_min": round(min(ms), 3),
            "transfer_ms_p90": round(sorted(ms)[int(0.9 * (len(ms) - 1))], 3),
            "call_ms_p50": round(statistics.median(row["call_ms"] for row in rows), 3),
            "mb_per_s_p50": round(num_bytes / 1e6 / (p50 / 1e3), 1),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--kv-cache-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "kv_transfer.json")
    args = parser.parse_args()
    machine = common.machine_info()
    with tempfile.TemporaryDirectory(prefix="hs-kvb-") as tmp:
        socks = Path(tmp)
        os.chmod(socks, 0o700)
        children = []
        try:
            for name in ("prefill", "decode"):
                listen = f"unix:{socks / (name + '.sock')}"
                children.append(_start_worker(name, listen, args.model, args.kv_cache_mb, socks))
            source, dest = (f"unix:{socks / (n + '.sock')}" for n in ("prefill", "decode"))
            block_size = HopscopeConfig.of().worker.block_size
            num_blocks = -(-args.prompt_tokens // block_size)
            results = asyncio.run(_measure(source, dest, num_blocks, args.rounds, args.iters))
        finally:
            for child in children:
                child.stop()
    grpc_p50, shm_p50 = results["grpc"]["transfer_ms_p50"], results["shm"]["transfer_ms_p50"]
    payload = {
        "benchmark": "kv_transfer",
        "command": "python -m benchmarks.kv_transfer "
        f"--model {args.model} --prompt-tokens {args.prompt_tokens} --rounds {args.rounds} "
        f"--iters {args.iters}",
        "machine": machine | {"load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "model": args.model,
        "prompt_tokens": args.prompt_tokens,
        "num_blocks": num_blocks,
        "edge": "uds (both workers on one node, separate processes)",
        "results": results,
        "notes": (
            f"{results['grpc']['kv_bytes'] / 2**20:.1f} MiB of KV for a {args.prompt_tokens}-token "
            f"prompt: grpc {grpc_p50:.1f} ms p50 ({results['grpc']['mb_per_s_p50']:.0f} MB/s), "
            f"shm {shm_p50:.1f} ms p50 ({results['shm']['mb_per_s_p50']:.0f} MB/s); "
            f"load average {machine['load_avg_at_start']} at start on {machine['cpus']} CPUs"
        ),
    }
    common.write_json(args.out, payload)
    common.log(payload["notes"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
