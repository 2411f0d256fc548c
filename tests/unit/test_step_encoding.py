"""The scheduler -> worker step encodings (`--step-encoding nested|packed|delta`): every encoding
decodes to the sequences the scheduler built, step after step on one stream, and the delta
encoding sends only the blocks a table gained."""

from __future__ import annotations

import pytest

from protos import hopscope_pb2 as pb
from services.common.convert import StepDecodeError, StepDecoder, StepEncoder
from services.common.types import PLACEHOLDER_TOKEN_ID, BlockSwaps, SamplingParams, SeqStep
from services.config import STEP_ENCODINGS

GREEDY = SamplingParams()
SEEDED = SamplingParams(temperature=0.5, top_p=0.75, top_k=40, seed=2**40 + 3)


def _steps() -> list[list[SeqStep]]:
    """A stream's steps: prefill chunks, decodes crossing a block boundary, a sequence that
    leaves and comes back with a new table (preempted, recomputed), an async placeholder."""
    a_table, b_table = [3, 9], [4]
    return [
        [
            SeqStep(1, list(range(20)), 0, a_table[:], None),
            SeqStep(2, [5, 6, 7], 0, b_table[:], SEEDED),
        ],
        [
            SeqStep(1, [20, 21], 20, a_table[:], GREEDY),
            SeqStep(2, [8], 3, b_table[:], SEEDED),
        ],
        [
            SeqStep(1, [22], 22, [3, 9], GREEDY),
            SeqStep(2, [PLACEHOLDER_TOKEN_ID], 4, [4, 11], SEEDED),  # gained block 11
        ],
        [SeqStep(2, [9], 16, [4, 11], SEEDED)],  # 1 left the batch
        [
            SeqStep(1, list(range(23)), 0, [7, 2], None),  # back, recomputed in other blocks
            SeqStep(2, [10], 17, [4, 12], SEEDED),  # a block replaced: not an append
        ],
    ]


@pytest.mark.parametrize("encoding", STEP_ENCODINGS)
def test_every_encoding_decodes_to_the_steps_sent(encoding: str) -> None:
    encoder, decoder = StepEncoder(encoding), StepDecoder()
    for step_id, seqs in enumerate(_steps(), start=1):
        swaps = BlockSwaps(swap_out=[(1, 2)]) if step_id == 2 else None
        request = encoder.encode(step_id, seqs, {"traceparent": "x"}, swaps)
        wire = pb.StepRequest.FromString(request.SerializeToString())
        assert decoder.decode(wire) == [seqs], (encoding, step_id)
        assert wire.step_id == step_id and dict(wire.trace_context) == {"traceparent": "x"}
        assert [(c.src, c.dst) for c in wire.swap_out] == ([(1, 2)] if swaps else [])


def test_delta_sends_only_the_blocks_a_table_gained() -> None:
    encoder = StepEncoder("delta")
    sent = [encoder.encode(i, seqs, {}).packed for i, seqs in enumerate(_steps(), start=1)]
    assert list(sent[0].block_ids) == [3, 9, 4] and not any(sent[0].table_is_delta)
    assert list(sent[1].block_ids) == [] and list(sent[1].table_is_delta) == [True, True]
    assert list(sent[2].block_ids) == [11] and list(sent[2].num_blocks) == [0, 1]
    assert list(sent[4].block_ids) == [7, 2, 4, 12]  # a new table and a replaced block: whole
    assert list(sent[4].table_is_delta) == [False, False]


def test_packed_is_smaller_than_nested_and_delta_smaller_still() -> None:
    """32 decodes with 8-block tables: what each encoding puts on the wire per step."""
    seqs = [SeqStep(i, [i], 100, list(range(8 * i, 8 * i + 8)), SEEDED) for i in range(32)]
    sizes = {}
    for encoding in STEP_ENCODINGS:
        encoder = StepEncoder(encoding)
        encoder.encode(1, seqs, {})
        sizes[encoding] = encoder.encode(2, seqs, {}).ByteSize()
    assert sizes["delta"] < sizes["packed"] < sizes["nested"], sizes


def test_a_delta_without_its_base_is_refused() -> None:
    """A worker that did not see the previous step (a new stream) cannot guess the table."""
    encoder = StepEncoder("delta")
    encoder.encode(1, [SeqStep(1, [5], 3, [2], GREEDY)], {})
    later = encoder.encode(2, [SeqStep(1, [6], 4, [2], GREEDY)], {})
    with pytest.raises(StepDecodeError, match="sequence 1 sends a block-table delta"):
        StepDecoder().decode(later)


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="nested, packed, delta"):
        StepEncoder("json")


@pytest.mark.parametrize("encoding", ["packed", "delta"])
def test_decode_steps_chained_behind_a_step_travel_in_its_message(encoding: str) -> None:
    """Multi-step: the later steps' tables are deltas of the step before them, in order."""
    steps = _steps()[1:4]
    encoder, decoder = StepEncoder(encoding), StepDecoder()
    decoder.decode(encoder.encode(1, _steps()[0], {}))
    wire = pb.StepRequest.FromString(
        encoder.encode(2, steps[0], {}, None, steps[1:]).SerializeToString()
    )
    assert len(wire.then) == 2
    assert decoder.decode(wire) == steps
    with pytest.raises(ValueError, match="one step per message"):
        StepEncoder("nested").encode(1, steps[0], {}, None, steps[1:])


def test_a_multi_step_answer_splits_into_its_steps() -> None:
    from services.common.convert import step_output_from_pb, step_output_to_pb
    from services.common.types import StepOutput

    out = StepOutput({1: 10, 2: 20}, step_ms=3.0, later_sampled=[{1: 11, 2: 21}, {2: 22}])
    back = step_output_from_pb(
        pb.StepResponse.FromString(step_output_to_pb(7, out).SerializeToString())
    )
    assert back.sampled == {1: 10, 2: 20} and back.later_sampled == [{1: 11, 2: 21}, {2: 22}]
    single = step_output_from_pb(step_output_to_pb(8, StepOutput({3: 30}, step_ms=1.0)))
    assert single.sampled == {3: 30} and single.later_sampled == []
