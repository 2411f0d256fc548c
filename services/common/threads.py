"""OS-level thread names, so a process's CPU can be split by thread from /proc/PID/task/*/comm.

Python 3.11 does not name its OS threads (every one reads "python"). The worker names its engine
thread; the torch intra-op (OpenMP) threads that the engine thread starts inherit the name at
creation, so "the engine's CPU" is the CPU of every thread with this name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping

ENGINE_THREAD_NAME = "hopscope-engine"  # at most 15 bytes: the kernel's comm limit
KV_EXPORT_THREAD_NAME = "hopscope-kv"  # the worker's KV-hop gathers (disaggregation)
# libgomp's spin-wait after a parallel region (default ~300k iterations, a core burnt for a while
# after every step): 100k keeps the regions of one step back to back and stops soon after the
# step. Measured on 2 colocated cores: 1.05x tokens/s, 0.92x CPU per token
# (benchmarks/results/token_cost_spincount.json). Read once, when torch loads libgomp.
OPENMP_ENV_DEFAULTS = {"GOMP_SPINCOUNT": "100000"}
_PR_SET_NAME = 15

log = logging.getLogger(__name__)


def openmp_env_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The OpenMP settings hopscope's processes start with, where `environ` sets none of them
    (a user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins). Apply before torch is imported."""
    if "OMP_WAIT_POLICY" in environ:  # the user chose the waiting; leave the spin alone
        return {}
    return {k: v for k, v in OPENMP_ENV_DEFAULTS.items() if k not in environ}


def openmp_environ(wait_policy: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a process that runs the engine starts with under `--engine-wait-policy`:
    `auto` adds the defaults where `environ` sets nothing; `active` / `passive` override the
    user's variables (a GOMP_SPINCOUNT left set would override the policy's spin in libgomp)."""
    if wait_policy == "auto":
        return {**environ, **openmp_env_defaults(environ)}
    env = {k: v for k, v in environ.items() if k != "GOMP_SPINCOUNT"}
    return env | {"OMP_WAIT_POLICY": wait_policy.upper()}


def apply_wait_policy(wait_policy: str) -> None:
    """Set this process's environment for `wait_policy`, before it loads OpenMP (torch's
    import reads it once; after that, the running OpenMP keeps what it read)."""
    wanted = openmp_environ(wait_policy, os.environ)
    if wanted == dict(os.environ):
        return
    if "torch" in sys.modules:
        log.warning(
            "engine wait policy %s set after torch loaded OpenMP: it applies to the processes "
            "this one starts, not to this one",
            wait_policy,
        )
    for name in set(os.environ) - set(wanted):
        del os.environ[name]
    os.environ.update(wanted)


def wait_policy_in_argv(argv: list[str]) -> str:
    """A service process's engine wait policy from its `--config JSON` (the settings tree's
    `worker.engine_wait_policy`); `auto` where there is none. Read before anything imports
    torch."""
    import json

    if "--config" not in argv[:-1]:
        return "auto"
    try:
        config = json.loads(argv[argv.index("--config") + 1])
    except ValueError:
        return "auto"  # the service's own parser reports a bad config
    settings = config.get("settings") if isinstance(config, dict) else None
    worker = settings.get("worker") if isinstance(settings, dict) else None
    policy = worker.get("engine_wait_policy") if isinstance(worker, dict) else None
    return policy if isinstance(policy, str) else "auto"


def name_os_thread(name: str) -> None:
    """Name the calling thread in the OS (Linux; elsewhere, or on failure, nothing happens)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError) as exc:  # not Linux: CPU is then not split by thread
        log.debug("cannot name the OS thread %r: %s", name, exc)
