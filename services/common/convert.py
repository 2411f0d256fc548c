"""protobuf <-> domain objects for the internal hops (TGI-style from_pb / to_pb)."""

from __future__ import annotations

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


def step_output_to_pb(step_id: int, out: StepOutput) -> pb.StepResponse:
    return pb.StepResponse(
        step_id=step_id,
        seq_ids=list(out.sampled.keys()),
        token_ids=list(out.sampled.values()),
        step_ms=out.step_ms,
        device_ms=out.device_ms,
        swap_ms=out.swap_ms,
    )


def step_output_from_pb(m: pb.StepResponse) -> StepOutput:
    return StepOutput(
        sampled=dict(zip(m.seq_ids, m.token_ids, strict=True)),
        step_ms=m.step_ms,
        device_ms=m.device_ms,
        swap_ms=m.swap_ms,
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
    return pb.ServiceInfo(name=i.name, node_id=i.node_id, host=i.host, pid=i.pid, address=i.address)


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
