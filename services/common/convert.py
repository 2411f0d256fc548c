"""protobuf <-> domain objects for the internal hops (TGI-style from_pb / to_pb)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from protos import hopscope_pb2 as pb
from services.common.identity import ServiceIdentity
from services.common.types import (
    BlockSwaps,
    Delivery,
    ModelInfo,
    SamplingParams,
    SeqStep,
    StepOutput,
)
from services.config import STEP_ENCODINGS


def sampling_to_pb(s: SamplingParams) -> pb.SamplingParams:
    return pb.SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=s.seed)


def sampling_from_pb(m: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(temperature=m.temperature, top_p=m.top_p, top_k=m.top_k, seed=m.seed)


def seq_step_to_pb(s: SeqStep) -> pb.SeqStep:
    # once per sequence per step: fields set in place (a SamplingParams message built and
    # copied in cost ~1 µs more per token)
    p = s.sampling
    msg = pb.SeqStep(
        seq_id=s.seq_id,
        token_ids=s.token_ids,
        num_computed=s.num_computed,
        block_table=s.block_table,
        sample=p is not None,
    )
    if p is not None:
        m = msg.sampling
        m.temperature, m.top_p, m.top_k, m.seed = p.temperature, p.top_p, p.top_k, p.seed
    return msg


def seq_step_from_pb(m: pb.SeqStep) -> SeqStep:
    return SeqStep(
        seq_id=m.seq_id,
        token_ids=list(m.token_ids),
        num_computed=m.num_computed,
        block_table=list(m.block_table),
        sampling=sampling_from_pb(m.sampling) if m.sample else None,
    )


_NOT_SAMPLED = SamplingParams(temperature=0.0, top_p=0.0, top_k=0, seed=0)  # packed placeholder


class StepEncoder:
    """Builds the StepRequests of one Step stream in one of three encodings (`--step-encoding`):

    - nested: a SeqStep message per sequence;
    - packed: PackedSeqs, one repeated scalar field per attribute;
    - delta: packed, and a sequence that was in the previous step of this stream carries only the
      blocks appended to its table since (the worker's StepDecoder keeps the tables).

    A stream's requests must be encoded in the order they are sent, and a new stream needs a new
    encoder (the worker's decoder starts empty with each stream).
    """

    def __init__(self, encoding: str = "delta") -> None:
        if encoding not in STEP_ENCODINGS:
            raise ValueError(
                f"step encoding {encoding!r} is not one of {', '.join(STEP_ENCODINGS)}"
            )
        self.encoding = encoding
        self._tables: dict[int, list[int]] = {}  # delta: each sequence's table as last sent

    def encode(
        self,
        step_id: int,
        seqs: list[SeqStep],
        carrier: Mapping[str, str],
        swaps: BlockSwaps | None = None,
        later: Sequence[list[SeqStep]] = (),
    ) -> pb.StepRequest:
        """`later`: decode steps chained behind this one (multi-step), packed whatever the
        encoding: a nested step cannot carry them."""
        request = pb.StepRequest(step_id=step_id, trace_context=carrier)
        if self.encoding == "nested":
            if later:
                raise ValueError("the nested step encoding carries one step per message")
            request.seqs.extend([seq_step_to_pb(s) for s in seqs])
        else:
            self._pack(seqs, request.packed)
            for each in later:
                self._pack(each, request.then.add())
        return swaps_to_pb(swaps, request)

    def _pack(self, seqs: list[SeqStep], packed: pb.PackedSeqs) -> None:
        token_ids: list[int] = []
        block_ids: list[int] = []
        num_blocks: list[int] = []
        is_delta: list[bool] = []
        sample: list[bool] = []
        temperature: list[float] = []
        top_p: list[float] = []
        top_k: list[int] = []
        seed: list[int] = []
        previous = self._tables if self.encoding == "delta" else {}
        tables: dict[int, list[int]] = {}
        for s in seqs:
            token_ids += s.token_ids
            table = s.block_table
            base = previous.get(s.seq_id)
            # the scheduler appends blocks to a running sequence's table; anything else (a
            # preempted and rescheduled sequence, a block replaced) goes whole
            if base is not None and table[: len(base)] == base:
                block_ids += table[len(base) :]
                num_blocks.append(len(table) - len(base))
                is_delta.append(True)
            else:
                block_ids += table
                num_blocks.append(len(table))
                is_delta.append(False)
            if self.encoding == "delta":
                tables[s.seq_id] = table[:]  # a copy: the scheduler's list grows in place
            p = s.sampling
            sample.append(p is not None)
            if p is None:
                p = _NOT_SAMPLED
            temperature.append(p.temperature)
            top_p.append(p.top_p)
            top_k.append(p.top_k)
            seed.append(p.seed)
        self._tables = tables
        packed.seq_ids.extend([s.seq_id for s in seqs])
        packed.num_tokens.extend([len(s.token_ids) for s in seqs])
        packed.token_ids.extend(token_ids)
        packed.num_computed.extend([s.num_computed for s in seqs])
        packed.num_blocks.extend(num_blocks)
        packed.block_ids.extend(block_ids)
        packed.table_is_delta.extend(is_delta)
        packed.sample.extend(sample)
        packed.temperature.extend(temperature)
        packed.top_p.extend(top_p)
        packed.top_k.extend(top_k)
        packed.seed.extend(seed)


class StepDecodeError(ValueError):
    """A step message the worker cannot turn into sequences (a delta without its base)."""


class StepDecoder:
    """The worker's side of one Step stream: any encoding in, `SeqStep`s out. Keeps the tables of
    the previous step for the delta encoding; a message that cannot be decoded raises
    StepDecodeError, after which the stream must end (its tables no longer match the sender's)."""

    def __init__(self) -> None:
        self._tables: dict[int, list[int]] = {}

    def decode(self, m: pb.StepRequest) -> list[list[SeqStep]]:
        """Every step the message carries, in order: its own, then any chained behind it."""
        if not m.HasField("packed"):
            self._tables = {}
            return [[seq_step_from_pb(s) for s in m.seqs]]
        return [self._unpack(m.step_id, p) for p in (m.packed, *m.then)]

    def _unpack(self, step_id: int, p: pb.PackedSeqs) -> list[SeqStep]:
        token_ids = list(p.token_ids)
        block_ids = list(p.block_ids)
        previous = self._tables
        tables: dict[int, list[int]] = {}
        seqs: list[SeqStep] = []
        t = b = 0
        columns = zip(
            p.seq_ids, p.num_tokens, p.num_computed, p.num_blocks, p.table_is_delta, p.sample,
            p.temperature, p.top_p, p.top_k, p.seed, strict=True,
        )  # fmt: skip
        for (
            seq_id,
            n_tokens,
            n_computed,
            n_blocks,
            is_delta,
            sample,
            temp,
            top_p,
            top_k,
            seed,
        ) in columns:
            table = block_ids[b : b + n_blocks]
            if is_delta:
                base = previous.get(seq_id)
                if base is None:
                    raise StepDecodeError(
                        f"step {step_id}: sequence {seq_id} sends a block-table delta but was "
                        "not in the previous step of this stream"
                    )
                table = base + table
            tables[seq_id] = table
            sampling = SamplingParams(temp, top_p, top_k, seed) if sample else None
            seqs.append(SeqStep(seq_id, token_ids[t : t + n_tokens], n_computed, table, sampling))
            t += n_tokens
            b += n_blocks
        if t != len(token_ids) or b != len(block_ids):
            raise StepDecodeError(
                f"step {step_id}: {len(token_ids)} token ids and {len(block_ids)} block ids "
                f"for sequences that account for {t} and {b}"
            )
        self._tables = tables
        return seqs


def step_output_to_pb(step_id: int, out: StepOutput) -> pb.StepResponse:
    response = pb.StepResponse(
        step_id=step_id,
        seq_ids=list(out.sampled.keys()),
        token_ids=list(out.sampled.values()),
        step_ms=out.step_ms,
        device_ms=out.device_ms,
        swap_ms=out.swap_ms,
    )
    if out.later_sampled:  # multi-step: every step's tokens, one after the other
        response.num_sampled.append(len(out.sampled))
        for sampled in out.later_sampled:
            response.seq_ids.extend(sampled.keys())
            response.token_ids.extend(sampled.values())
            response.num_sampled.append(len(sampled))
    return response


def step_output_from_pb(m: pb.StepResponse) -> StepOutput:
    pairs = list(zip(m.seq_ids, m.token_ids, strict=True))
    sizes = list(m.num_sampled) or [len(pairs)]
    if sum(sizes) != len(pairs):
        raise ValueError(f"step {m.step_id}: {len(pairs)} tokens for steps of {sizes}")
    per_step, start = [], 0
    for size in sizes:
        per_step.append(dict(pairs[start : start + size]))
        start += size
    return StepOutput(
        sampled=per_step[0],
        step_ms=m.step_ms,
        device_ms=m.device_ms,
        swap_ms=m.swap_ms,
        later_sampled=per_step[1:],
    )


def swaps_to_pb(swaps: BlockSwaps | None, request: pb.StepRequest) -> pb.StepRequest:
    """Add the step's block copies to its request; returns the request."""
    if swaps:
        request.swap_out.extend(pb.BlockCopy(src=s, dst=d) for s, d in swaps.swap_out)
        request.swap_in.extend(pb.BlockCopy(src=s, dst=d) for s, d in swaps.swap_in)
    return request


def swaps_from_pb(m: pb.StepRequest) -> BlockSwaps:
    return BlockSwaps(
        swap_out=[(c.src, c.dst) for c in m.swap_out], swap_in=[(c.src, c.dst) for c in m.swap_in]
    )


def model_info_to_pb(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        architecture=info.architecture,
        vocab_size=info.vocab_size,
        max_context=info.max_context,
        dtype=info.dtype,
        device=info.device,
        num_blocks=info.num_blocks,
        block_size=info.block_size,
        num_swap_blocks=info.num_swap_blocks,
    )


def model_info_from_pb(m: pb.ModelInfo, eos_token_ids: list[int]) -> ModelInfo:
    return ModelInfo(
        name=m.name,
        architecture=m.architecture,
        vocab_size=m.vocab_size,
        max_context=m.max_context,
        dtype=m.dtype,
        device=m.device,
        num_blocks=m.num_blocks,
        block_size=m.block_size,
        eos_token_ids=list(eos_token_ids),
        num_swap_blocks=m.num_swap_blocks,
    )


def identity_to_pb(i: ServiceIdentity) -> pb.ServiceInfo:
    return pb.ServiceInfo(
        name=i.name,
        node_id=i.node_id,
        host=i.host,
        pid=i.pid,
        address=i.address,
        role=i.role,
        node_name=i.node_name,
    )


# A front door opens its `Connect` stream with its ServiceInfo in this metadata entry (binary),
# so the scheduler's Describe lists every front-door replica connected to it.
FRONT_DOOR_METADATA_KEY = "hopscope-front-door-bin"


def front_door_metadata(i: ServiceIdentity) -> tuple[str, bytes]:
    return (FRONT_DOOR_METADATA_KEY, identity_to_pb(i).SerializeToString())


def front_door_from_metadata(metadata: Sequence[tuple[str, str | bytes]]) -> pb.ServiceInfo | None:
    """The front door a `Connect` stream comes from; None when it did not say (or said nonsense)."""
    for key, value in metadata:
        if key == FRONT_DOOR_METADATA_KEY and isinstance(value, bytes):
            try:
                return pb.ServiceInfo.FromString(value)
            except Exception:  # noqa: BLE001 - a caller's bad header: just not listed
                return None
    return None


def delivery_to_pb(d: Delivery) -> pb.RequestUpdate:
    return pb.RequestUpdate(
        request_id=d.request_id,
        token_ids=d.token_ids,
        finish_reason=d.finish_reason,
        error_status=d.error_status,
        error_message=d.error_message,
    )


def delivery_from_pb(m: pb.RequestUpdate) -> Delivery:
    return Delivery(
        m.request_id, list(m.token_ids), m.finish_reason, m.error_status, m.error_message
    )
