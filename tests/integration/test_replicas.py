"""Two worker replicas as local processes: both take load, Describe lists both, and SIGKILL of
one during 16 seeded generations loses none and changes no token."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from tests.harness import Served, seeded_generation, serve

NUM_REQUESTS = 16
MAX_TOKENS = 48


def _seeded(address: str, i: int) -> list[int]:
    return seeded_generation(address, i, 40, MAX_TOKENS)


def _run_all(served: Served, kill_replica: int | None = None) -> list[list[int]]:
    with ThreadPoolExecutor(NUM_REQUESTS) as pool:
        futures = [pool.submit(_seeded, served.address, i) for i in range(NUM_REQUESTS)]
        if kill_replica is not None:
            _kill_when_busy(served, kill_replica)
        return [f.result() for f in futures]


def _kill_when_busy(served: Served, replica: int) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        stats = served.describe().scheduler_stats
        if stats.replicas and stats.replicas[replica].num_running > 0:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("replica never ran a request")
    name = f"worker-{replica}" if replica else "worker"
    pid = next(s.pid for s in served.describe().services if s.name == name)
    os.kill(pid, signal.SIGKILL)


def test_two_replicas_share_load_and_survive_losing_one() -> None:
    args = ["--worker-replicas", "2", "--routing", "round_robin", "--max-num-seqs", "8"]
    with serve("colocated", *args) as served:
        described = served.describe()
        assert [s.name for s in described.services].count("worker-1") == 1
        assert {e.to for e in described.edges} >= {"worker", "worker-1"}
        reference = _run_all(served)
        replicas = served.describe().scheduler_stats.replicas
        assert [r.index for r in replicas] == [0, 1]
        assert all(r.num_steps > 0 for r in replicas), replicas
        assert _run_all(served, kill_replica=1) == reference
        # the supervisor restarts it on its address; routing takes it back once it is up
        deadline = time.monotonic() + 60.0
        while not served.describe().scheduler_stats.replicas[1].is_worker_up:
            assert time.monotonic() < deadline, "the killed replica never came back"
            time.sleep(0.2)
        steps_before = served.describe().scheduler_stats.replicas[1].num_steps
        _run_all(served)
        assert served.describe().scheduler_stats.replicas[1].num_steps > steps_before


def test_inproc_replicas_are_listed_and_both_take_load() -> None:
    import asyncio

    from deploy.inproc import start_inproc
    from services.config import HopscopeConfig

    async def run() -> None:
        pipeline = await start_inproc(
            HopscopeConfig.of(port=0, worker_replicas=2, routing="round_robin")
        )
        try:
            outputs = await asyncio.gather(
                *(asyncio.to_thread(_seeded, pipeline.address, i) for i in range(4))
            )
            assert all(len(o) == MAX_TOKENS for o in outputs)
            described = await asyncio.to_thread(Served(pipeline.address, None).describe)  # type: ignore[arg-type]
            replicas = described.scheduler_stats.replicas
            assert [r.num_steps > 0 for r in replicas] == [True, True]
            assert sorted(s.name for s in described.services if s.name.startswith("worker")) == [
                "worker",
                "worker-1",
            ]
        finally:
            await pipeline.stop(1.0)

    asyncio.run(run())
