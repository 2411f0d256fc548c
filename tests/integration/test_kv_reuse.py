"""Prefix caching and KV swap through `hopscope serve`: a shared-prefix batch that overflows a
small KV cache gets the tokens each request gets alone, hits the prefix cache and swaps, and
Describe and /metrics say so."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.harness import generate, serve, wait_until_idle

SHARED = [0] + [(29 * j) % 3000 + 5 for j in range(127)]  # 8 full blocks of 16
NUM_REQUESTS = 16
MAX_TOKENS = 130


def _prompt(i: int) -> list[int]:
    return SHARED + [(13 * i + j) % 3000 + 7 for j in range(22)]


def _greedy(address: str, i: int) -> list[int]:
    ids, _, last = generate(
        address, prompt_token_ids=_prompt(i), max_tokens=MAX_TOKENS, ignore_eos=True
    )
    assert last.finish_reason == "length"
    return ids


def test_shared_prefix_batch_under_kv_pressure_swaps_and_keeps_tokens() -> None:
    # tiny: 8 MiB holds 128 blocks of 16 tokens; 16 x (150 + 130) tokens need 8 shared + 16 x 10
    args = ["--kv-cache-mb", "8", "--preemption", "swap", "--swap-space-mb", "16"]
    with serve("colocated", *args) as served:
        with ThreadPoolExecutor(NUM_REQUESTS) as pool:
            together = list(pool.map(lambda i: _greedy(served.address, i), range(NUM_REQUESTS)))
        stats = wait_until_idle(served)
        alone = [_greedy(served.address, i) for i in (0, NUM_REQUESTS - 1)]
        assert alone == [together[0], together[-1]]
        assert stats.prefix_caching and stats.preemption == "swap"
        assert stats.num_swapped_out > 0, "the KV budget was meant to force swapping"
        # every request after the first found at least the 8 shared blocks cached
        assert stats.prefix_cache_hit_rate > 0.5
        assert stats.num_cached_blocks >= 8
