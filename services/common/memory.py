"""Bounds on the worker's native memory (issue 22, item 5: worker RSS grew 561 -> ~900 MB under
the chaos suite's fuzz and overload, and kept growing wave after wave).

Two causes, measured with `benchmarks/chaos.py`'s RSS soak (benchmarks/README.md):

- oneDNN's primitive cache: the packed GEMMs (`services/worker/kernels`: `_linear_pointwise`)
  make one primitive per input shape (the step's token count) and weight, each with its own
  JIT code and scratchpad, kept in an LRU of 1024 by default; fuzzed prompts and overload make
  hundreds of distinct token counts. `ONEDNN_PRIMITIVE_CACHE_CAPACITY` (read when oneDNN makes
  its first primitive) bounds it.
- glibc malloc's dynamic mmap threshold: after a large block is freed the threshold rises (up to
  32 MiB), so later activations of every size come from the heap arenas, which fragment and
  are not returned. A fixed threshold keeps large blocks in mmap, returned to the OS on free.

A user's own setting of either (the environment variable) wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import MutableMapping

ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# room for every GEMM (5 weights) of the running batch sizes and recent prompt chunks
ONEDNN_CACHE_CAPACITY = 128
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
MMAP_THRESHOLD_BYTES = 64 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter

log = logging.getLogger(__name__)


def bound_native_memory(environ: MutableMapping[str, str] = os.environ) -> dict[str, int]:
    """Bound the worker process's oneDNN cache and fix glibc's mmap threshold (before the
    engine loads: oneDNN reads its capacity once). Returns what was set (for the log)."""
    applied: dict[str, int] = {}
    if ONEDNN_CACHE_ENV not in environ:
        environ[ONEDNN_CACHE_ENV] = str(ONEDNN_CACHE_CAPACITY)
        applied[ONEDNN_CACHE_ENV] = ONEDNN_CACHE_CAPACITY
    if MMAP_THRESHOLD_ENV not in environ and _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        applied["mmap_threshold"] = MMAP_THRESHOLD_BYTES
    return applied


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt; False where there is none (another libc) or it refuses."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    except (OSError, AttributeError) as exc:
        log.debug("no mallopt: %s", exc)
        return False
