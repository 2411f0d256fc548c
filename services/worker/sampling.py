"""Per-sequence sampling on the device: greedy, temperature, top-k, top-p.

Randomness is a counter-based hash of (seed, position of the sampled token, token id), turned
into Gumbel noise: the same seeded sequence gets the same noise whatever else is in the batch,
after preemption and recompute, and after a worker restart. No generator state, no host sync.
"""

from __future__ import annotations

import torch

from services.common.types import SamplingParams

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
# Multipliers below 2**31 keep every product of the 32-bit hash inside int64.
_MUL_A = 0x7FEB352D
_MUL_B = 0x2C1B3C6D


def sampling_key(seed: int, position: int) -> int:
    """A 64-bit key mixing the request seed and the position (splitmix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + position + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * _MUL_A) & _MASK32
    x = ((x ^ (x >> 15)) * _MUL_B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab] uniforms in (0, 1) from int64 keys holding 32-bit halves, [rows, 2]."""
    token = torch.arange(vocab_size, device=keys.device, dtype=torch.long)[None, :]
    h = _hash32(token ^ keys[:, 0:1])
    h = _hash32(h ^ keys[:, 1:2])
    h = _hash32(h + token)
    return ((h >> 8).double() + 0.5).float() / float(1 << 24)


class SamplingTensors:
    """The step's per-row sampling parameters, on the device."""

    def __init__(
        self, params: list[SamplingParams], positions: list[int], device: torch.device
    ) -> None:
        self.is_all_greedy = all(p.is_greedy for p in params)
        self.needs_filter = any(p.top_k > 0 or p.top_p < 1.0 for p in params)
        if self.is_all_greedy:  # argmax needs none of the tensors below
            return
        keys = [sampling_key(p.seed, pos) for p, pos in zip(params, positions, strict=True)]
        halves = [[k & _MASK32, k >> 32] for k in keys]
        self.keys = torch.tensor(halves, dtype=torch.long).to(device, non_blocking=True)
        floats = [[p.temperature if p.temperature > 0 else 1.0, p.top_p] for p in params]
        values = torch.tensor(floats, dtype=torch.float32).to(device, non_blocking=True)
        self.temperature, self.top_p = values[:, 0:1], values[:, 1:2]
        top_ks = torch.tensor([p.top_k for p in params], dtype=torch.long)
        self.top_k = top_ks.to(device, non_blocking=True)[:, None]
        self.is_greedy = torch.tensor([p.is_greedy for p in params]).to(device, non_blocking=True)


def sample(logits: torch.Tensor, params: SamplingTensors) -> torch.Tensor:
    """One token id per row of float32 `logits` [rows, vocab]."""
    greedy = logits.argmax(dim=-1)
    if params.is_all_greedy:
        return greedy
    scaled = logits / params.temperature
    if params.needs_filter:
        scaled = _top_k_top_p(scaled, params.top_k, params.top_p)
    gumbel = -torch.log(-torch.log(uniform_noise(params.keys, logits.shape[-1])))
    sampled = (scaled + gumbel).argmax(dim=-1)
    return torch.where(params.is_greedy, greedy, sampled)


def _top_k_top_p(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k, scaled.shape[-1])
    probs = sorted_logits.softmax(dim=-1)
    # Keep a token while the mass before it is below top_p: the first token always stays.
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = (rank >= k) | (mass_before >= top_p)
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return scaled.masked_fill(drop, float("-inf"))
