"""Turning a step's `SeqStep`s into the flat tensors one forward pass needs.

Tokens are laid out decodes first (every sequence with one new token), then each prefill chunk;
all integer inputs travel to the device in one copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.common.types import SamplingParams, SeqStep


@dataclass(slots=True)
class PrefillSegment:
    """One sequence's chunk of several new tokens: rows [start, end) of the flat batch."""

    start: int
    end: int
    num_computed: int  # cached tokens before the chunk
    context_slots: (
        torch.Tensor | None
    )  # KV slots of positions [0, end-start+num_computed); None if no cache


@dataclass(slots=True)
class StepBatch:
    token_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T]: where each new token's K/V is written
    num_decodes: int  # rows [0, num_decodes) are single-token sequences
    decode_blocks: torch.Tensor | None  # [num_decodes * max_blocks] KV blocks to attend to
    decode_lens: torch.Tensor | None  # [num_decodes]: context length after this step
    prefills: list[PrefillSegment]
    sample_rows: torch.Tensor  # rows whose logits are sampled
    sample_seq_ids: list[int]
    sampling: list[SamplingParams]


def slot_of(block_table: list[int], position: int, block_size: int) -> int:
    return block_table[position // block_size] * block_size + position % block_size


def build_batch(seqs: list[SeqStep], block_size: int, device: torch.device) -> StepBatch:
    decodes = [s for s in seqs if len(s.token_ids) == 1]
    prefills = [s for s in seqs if len(s.token_ids) > 1]
    ordered = decodes + prefills
    token_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    sample_rows: list[int] = []
    for seq in ordered:
        first = seq.num_computed
        token_ids.extend(seq.token_ids)
        positions.extend(range(first, seq.num_tokens_after))
        slots.extend(
            slot_of(seq.block_table, p, block_size) for p in range(first, seq.num_tokens_after)
        )
        if seq.sampling is not None:
            sample_rows.append(len(token_ids) - 1)
    # One host->device copy for every integer input; the views below share it.
    # Decode tables are cut or padded (block 0, masked out) to the blocks the longest one uses.
    max_blocks = max((-(-s.num_tokens_after // block_size) for s in decodes), default=0)
    decode_tables = [b for s in decodes for b in (s.block_table + [0] * max_blocks)[:max_blocks]]
    decode_lens = [s.num_tokens_after for s in decodes]
    prefill_tables = [b for s in prefills if s.num_computed > 0 for b in s.block_table]
    packed = (
        token_ids + positions + slots + sample_rows + decode_tables + decode_lens + prefill_tables
    )
    flat = torch.tensor(packed, dtype=torch.long).to(device, non_blocking=True)
    parts = flat.split(
        [
            len(token_ids),
            len(positions),
            len(slots),
            len(sample_rows),
            len(decode_tables),
            len(decode_lens),
            len(prefill_tables),
        ]
    )
    sampled = [s for s in ordered if s.sampling is not None]
    return StepBatch(
        token_ids=parts[0],
        positions=parts[1],
        slot_mapping=parts[2],
        num_decodes=len(decodes),
        decode_blocks=parts[4] if decodes else None,
        decode_lens=parts[5] if decodes else None,
        prefills=_prefill_segments(prefills, len(decodes), parts[6], block_size),
        sample_rows=parts[3],
        sample_seq_ids=[s.seq_id for s in sampled],
        sampling=[s.sampling for s in sampled if s.sampling is not None],
    )


def _prefill_segments(
    prefills: list[SeqStep], start: int, tables: torch.Tensor, block_size: int
) -> list[PrefillSegment]:
    segments: list[PrefillSegment] = []
    table_offset = 0
    for seq in prefills:
        end = start + len(seq.token_ids)
        context_slots = None
        if seq.num_computed > 0:
            table = tables[table_offset : table_offset + len(seq.block_table)]
            table_offset += len(seq.block_table)
            pos = torch.arange(seq.num_tokens_after, device=tables.device)
            context_slots = table[pos // block_size] * block_size + pos % block_size
        segments.append(PrefillSegment(start, end, seq.num_computed, context_slots))
        start = end
    return segments
