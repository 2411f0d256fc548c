"""Routing across two worker replicas when one is behind a slower link (issue 15; a benchmark).

Two tiny-model worker replicas as local processes over TCP (`colocated-tcp`), the second reached
through an emulated link (deploy/relay.py: +DELAY ms each way, so +2xDELAY per step round trip)
— the `--no-ray` stand-in for "one replica on another node": replicas on Ray are not built yet.
`--routing network_aware` vs `round_robin` vs `least_load`, alternating in rounds (order rotated),
a fresh deployment per run, a closed loop of 8 concurrent requests (64 prompt, 64 output tokens).

    .venv/bin/python -m benchmarks.routing [--rounds 3] [--num-requests 64] [--delay-ms 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from deploy.local import LocalDeployment
from deploy.relay import Relay, start_relay
from deploy.spec import scheduler_config, tokenizer_config, worker_config
from services.config import HopscopeConfig

POLICIES = ("network_aware", "round_robin", "least_load")
PREDICTION = (
    "round robin sends half the requests to the far replica, whose steps each pay +2x delay "
    "(4 ms at 2 ms) on top of a ~5-10 ms tiny-model step: its requests' TPOT rises ~40-80%, so "
    "TPOT p50 sits near the far replica's and p99 above it. least_load balances tokens and so "
    "behaves like round robin. network_aware keeps requests on the near replica until its queue "
    "costs more than the link (pending tokens / measured throughput > RTT x steps), so most run "
    "near: expect lower TPOT p50 than round robin, similar or slightly lower tokens/s (the two "
    "replicas share 2 cores, so spreading load buys little compute), and TTFT p99 a bit higher "
    "from queueing on the near replica."
)


@dataclass
class RelayedReplicas(LocalDeployment):
    """Two worker replicas, the second behind a relay of `delay_ms` each way."""

    delay_ms: float = 2.0
    relays: list[Relay] = field(default_factory=list)

    def start(self) -> str:
        try:
            workers = [
                self._start(
                    name, "services.worker", lambda listen: worker_config(self.spec, listen)
                )
                for name in ("worker", "worker-1")
            ]
            self.relays.append(start_relay("127.0.0.1", workers[1], self.delay_ms))
            far = self.relays[0].address
            sched = self._start(
                "scheduler",
                "services.scheduler",
                lambda listen: scheduler_config(self.spec, listen, workers[0], "", [far]),
            )
            self._start(
                "tokenizer",
                "services.tokenizer",
                lambda listen: tokenizer_config(self.spec, listen, sched),
                listen=self.spec.deploy.front_door,
            )
        except BaseException:
            self.stop()
            raise
        return self.address

    def stop(self, grace_s: float = 10.0) -> None:
        super().stop(grace_s)
        for relay in self.relays:
            relay.stop()


@contextmanager
def deployed(policy: str, args: argparse.Namespace) -> Iterator[RelayedReplicas]:
    spec = HopscopeConfig.of(
        placement="colocated-tcp", model=args.model, port=0, worker_replicas=2, routing=policy
    )
    deployment = RelayedReplicas(spec, delay_ms=args.delay_ms)
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


def run_once(policy: str, round_index: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out = tmp / f"r{round_index}-{policy}.json"
    bench = [*common.load_bench_args(args), "--output-len", str(args.output_len), "--label", policy]
    with deployed(policy, args) as deployment:
        started = time.monotonic()
        result = common.run_bench(deployment.address, bench, out)
        wall_s = time.monotonic() - started
        replicas = _replica_steps(deployment.address)
    figures = common.figures(result)
    figures.update({f"replica{i}_steps": float(n) for i, n in enumerate(replicas)})
    common.log(f"round {round_index} {policy}: {figures}")
    return {
        "round": round_index,
        "variant": policy,
        "bench_wall_s": round(wall_s, 2),
        "figures": figures,
    }


def _replica_steps(address: str) -> list[int]:
    from protos import hopscope_pb2 as pb
    from protos import hopscope_pb2_grpc as pb_grpc
    from services.common.channels import create_sync_channel

    with create_sync_channel(address) as channel:
        described = pb_grpc.TokenizerStub(channel).Describe(pb.DescribeRequest(), timeout=10)
    return [r.num_steps for r in described.scheduler_stats.replicas]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_load_args(parser, rounds=3, num_requests=64, warmup_requests=8, concurrency=8)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "routing.json")
    parser.add_argument("--notes", default="", help="what was found, stored in notes.result")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        for round_index in range(args.rounds):
            for policy in common.rotated(list(POLICIES), round_index):
                rounds.append(run_once(policy, round_index, args, Path(tmp)))
    checks = {}
    for other in ("round_robin", "least_load"):
        for figure in ("tpot_p50_ms", "ttft_p50_ms", "ttft_p99_ms", "output_tok_s"):
            ratios = common.paired_ratios(rounds, "network_aware", other, figure)
            checks[f"{figure}_vs_{other}"] = {
                "network_aware_over_other_per_round": ratios,
                "median_ratio": round(statistics.median(ratios), 4) if ratios else None,
            }
    payload = {
        "benchmark": "routing over 2 worker replicas, one behind an emulated slower link",
        "issue": 15,
        "command": f"python -m benchmarks.routing --rounds {args.rounds} "
        f"--num-requests {args.num_requests} --delay-ms {args.delay_ms}",
        "config": {
            "model": args.model,
            "deployment": "--no-ray colocated-tcp, worker + worker-1, worker-1 through a relay",
            "delay_ms_each_way": args.delay_ms,
            "concurrency": args.concurrency,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "num_requests_measured_per_run": args.num_requests,
            "warmup_requests_per_run": args.warmup_requests,
            "order": "rotated every round",
        },
        "machine": common.machine_info(),
        "target": "network_aware vs round_robin vs least_load: TTFT p50/p99, TPOT p50, tok/s",
        "rounds": rounds,
        "medians": common.medians(rounds, POLICIES),
        "checks": checks,
        "notes": {
            "prediction": PREDICTION,
            "result": args.notes,
            "caveat": "shared 2-core machine with other helpers' jobs, both replicas on it: "
            "figures are indicative; the per-round ratios are the robust part. Not the issue's "
            "3-node Ray cluster: replicas on Ray are not built yet.",
        },
    }
    common.write_json(args.out, payload)
    common.log(f"checks {checks}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
