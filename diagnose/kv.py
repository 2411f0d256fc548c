"""KV-cache pressure from the spans: every running sequence is in every step (continuous
batching), so the blocks in use at a step are the sum, over the requests that step links to, of
ceil(tokens in the cache / block size); a request that goes back to prefill after decoding was
preempted (its blocks freed, its prompt recomputed)."""

from __future__ import annotations

import math
from collections import defaultdict

from tracing.decompose import SUBMIT, SpanIndex


def kv_pressure_from_spans(
    index: SpanIndex, num_blocks: int, block_size: int
) -> tuple[float | None, int]:
    """(peak share of the KV blocks in use, number of preemptions); the share is None when the
    cache's size is unknown (no Describe: 0 blocks of 0 tokens), the preemptions still count."""
    is_sized = num_blocks > 0 and block_size > 0
    blocks_at_step: dict[tuple[str, str], int] = defaultdict(int)
    num_preemptions = 0
    for submit in index.spans:
        if submit.name.lstrip("/") != SUBMIT or submit.kind != "SERVER":
            continue
        num_prompt = int(submit.attributes.get("hopscope.num_prompt_tokens", 0) or 0)
        num_decoded, has_decoded = 0, False
        for call in index.step_calls(submit):
            if call.phase == "prefill":
                if has_decoded:  # back to prefill after decoding: preempted and recomputed
                    num_preemptions += 1
                    has_decoded = False
                cached = num_prompt + num_decoded
            else:
                has_decoded = True
                num_decoded += 1
                cached = num_prompt + num_decoded
            if is_sized:
                blocks_at_step[call.client.key] += math.ceil(cached / block_size)
    if not blocks_at_step or not is_sized:
        return None, num_preemptions
    return max(blocks_at_step.values()) / num_blocks, num_preemptions
