"""Weights stored as 4-bit codes in groups, before any kernel packs them: what GGUF's Q4_1 holds
(groups of 32) and what `--quantization int4` makes of a dense weight. The worker's kernels
(services/worker/quant.py) pack this form; the GGUF loader returns it so that a Q4_1 file loads
without a round through float."""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_MAX = 15
_MIN_RANGE = 1e-8  # a constant group: any scale reproduces it


@dataclass(slots=True)
class GroupQuantized:
    """4-bit codes with a scale and a minimum per group of input features, unpacked:
    w[n, k] = codes[n, k] * scales[n, k // g] + mins[n, k // g]. What GGUF's Q4_1 stores (g = 32)
    and what `quantize_int4` makes; rows can be stacked and permuted before packing."""

    codes: torch.Tensor  # uint8 [N, K], 0..15
    scales: torch.Tensor  # float32 [N, K // g]
    mins: torch.Tensor  # float32 [N, K // g]

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rows, cols = self.codes.shape
        grouped = self.codes.view(rows, -1, self.group_size).float()
        dense = grouped * self.scales.unsqueeze(-1) + self.mins.unsqueeze(-1)
        return dense.view(rows, cols).to(dtype)


def cat_rows(parts: list[GroupQuantized]) -> GroupQuantized:
    """Stacked along output channels (q, k and v into one QKV projection)."""
    return GroupQuantized(
        codes=torch.cat([p.codes for p in parts]),
        scales=torch.cat([p.scales for p in parts]),
        mins=torch.cat([p.mins for p in parts]),
    )


def quantize_int4(weight: torch.Tensor, group_size: int) -> GroupQuantized:
    """Min/max per group of `group_size` input features (K must be a multiple of it)."""
    rows, cols = weight.shape
    grouped = weight.float().view(rows, cols // group_size, group_size)
    mins = grouped.amin(dim=-1)
    scales = ((grouped.amax(dim=-1) - mins) / INT4_MAX).clamp(min=_MIN_RANGE)
    codes = torch.round((grouped - mins.unsqueeze(-1)) / scales.unsqueeze(-1)).clamp(0, INT4_MAX)
    return GroupQuantized(codes.to(torch.uint8).view(rows, cols), scales, mins)
