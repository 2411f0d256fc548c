"""Prefill/decode disaggregation as local processes (`serve --no-ray --placement disagg`): seeded
generations give the tokens of the colocated (mixed) pipeline, prompts run on the prefill worker
and decodes on the decode worker with the KV shipped between them, Describe shows both roles and
the KV edge, and a SIGKILL of either worker mid-load loses no request and changes no token."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import Served, seeded_generation, serve

NUM_REQUESTS = 12
PROMPT_LEN = 40
MAX_TOKENS = 32
ARGS = ("--max-num-seqs", "8")


def _run_all(served: Served, kill: str | None = None) -> list[list[int]]:
    with ThreadPoolExecutor(NUM_REQUESTS) as pool:
        futures = [
            pool.submit(seeded_generation, served.address, i, PROMPT_LEN, MAX_TOKENS)
            for i in range(NUM_REQUESTS)
        ]
        if kill is not None:
            _kill_when_busy(served, kill)
        return [f.result() for f in futures]


def _kill_when_busy(served: Served, name: str) -> None:
    """SIGKILL worker `name` once the decode side is running requests (mid-load)."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        described = served.describe()
        decode = next(r for r in described.scheduler_stats.replicas if r.index == 1)
        if decode.num_running > 0:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the decode worker never ran a request")
    pid = next(s.pid for s in served.describe().services if s.name == name)
    assert pid > 0
    os.kill(pid, signal.SIGKILL)


def _wait_both_up(served: Served) -> None:
    deadline = time.monotonic() + 90.0
    while not all(r.is_worker_up for r in served.describe().scheduler_stats.replicas):
        assert time.monotonic() < deadline, "a killed worker never came back"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    with serve("colocated", *ARGS) as served:
        return _run_all(served)


def test_disagg_gives_the_tokens_of_mixed_and_runs_each_phase_on_its_worker(reference) -> None:
    with serve("disagg", *ARGS) as served:
        described = served.describe()
        roles = {s.name: s.role for s in described.services if s.name.startswith("worker")}
        assert roles == {"worker-prefill": "prefill", "worker-decode": "decode"}
        kv_edges = [e for e in described.edges if getattr(e, "from") == "worker-prefill"]
        assert [(e.to, e.transport) for e in kv_edges] == [("worker-decode", "uds")]
        assert _run_all(served) == reference
        replicas = served.describe().scheduler_stats.replicas
        assert all(r.num_steps > 0 for r in replicas), replicas


@pytest.mark.parametrize("victim", ["worker-decode", "worker-prefill"])
def test_sigkill_of_either_worker_mid_load_loses_nothing(reference, victim: str) -> None:
    with serve("disagg", *ARGS) as served:
        assert _run_all(served, kill=victim) == reference
        _wait_both_up(served)
        assert _run_all(served) == reference  # and it serves as before once the worker is back


def test_shm_transport_gives_the_same_tokens(reference) -> None:
    with serve("disagg", *ARGS, "--kv-transport", "shm") as served:
        edges = served.describe().edges
        kv_edges = [e for e in edges if getattr(e, "from") == "worker-prefill"]
        assert [e.transport for e in kv_edges] == ["shm"]
        assert _run_all(served) == reference
        assert not [p for p in os.listdir("/dev/shm") if p.startswith("hopscope-kv-")]
