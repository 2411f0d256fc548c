"""OS-level thread names, so a process's CPU can be split by thread from /proc/PID/task/*/comm.

Python 3.11 does not name its OS threads (every one reads "python"). The worker names its engine
thread; the torch intra-op (OpenMP) threads that the engine thread starts inherit the name at
creation, so "the engine's CPU" is the CPU of every thread with this name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

ENGINE_THREAD_NAME = "hopscope-engine"  # at most 15 bytes: the kernel's comm limit
_PR_SET_NAME = 15

log = logging.getLogger(__name__)


def name_os_thread(name: str) -> None:
    """Name the calling thread in the OS (Linux; elsewhere, or on failure, nothing happens)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError) as exc:  # not Linux: CPU is then not split by thread
        log.debug("cannot name the OS thread %r: %s", name, exc)
