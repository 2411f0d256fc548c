"""The worker's native-memory bounds (services/common/memory.py): defaults set where the user set
none, a user's own setting kept."""

from __future__ import annotations

from services.common import memory


def test_the_onednn_cache_is_bounded_unless_the_user_chose() -> None:
    environ: dict[str, str] = {}
    applied = memory.bound_native_memory(environ)
    assert environ[memory.ONEDNN_CACHE_ENV] == str(memory.ONEDNN_CACHE_CAPACITY)
    assert applied[memory.ONEDNN_CACHE_ENV] == memory.ONEDNN_CACHE_CAPACITY
    assert applied.get("mmap_threshold") == memory.MMAP_THRESHOLD_BYTES  # glibc here

    mine = {memory.ONEDNN_CACHE_ENV: "7", memory.MMAP_THRESHOLD_ENV: "1"}
    assert memory.bound_native_memory(mine) == {}
    assert mine[memory.ONEDNN_CACHE_ENV] == "7"
