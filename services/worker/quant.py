"""Weight-only quantized linear layers (`WorkerSettings.quantization`): fewer bytes of weights read
per decode step, the activations staying in floating point.

- `int8`: one symmetric scale per output channel (row): w = q * scale, q in -127..127.
- `int4`: one scale and one minimum per group of `group_size` input features (asymmetric):
  w = code * scale + min, code in 0..15 (services/models/quantized.py; GGUF's Q4_1 is this
  form with groups of 32, so its blocks load without a round through float).

CPU: torch's packed kernels, `aten._weight_int8pack_mm` and `aten._weight_int4pack_mm_for_cpu`.
Their vectorized paths take bfloat16 activations (float32 falls to a reference loop ~10-50x
slower), so a float32 model's activations are cast to bfloat16 around each quantized GEMM and
the output cast back. CUDA (written, not run on a GPU yet): int8 dequantizes in the GEMM's
operand (`F.linear(x, q.to(x.dtype)) * scale`, gpt-fast's form), int4 runs the tinygemm kernel
(`aten._weight_int4pack_mm`, bfloat16, sm80+).

A shape a kernel cannot pack is refused at load with the layer's name and the group sizes that
would fit; nothing falls back silently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from services.config import INT4_GROUP_SIZES
from services.models.quantized import GroupQuantized, quantize_int4

INT4_ROW_MULTIPLE = 16  # the CPU packing's output-channel granularity
CUDA_INT4_ROW_MULTIPLE = 8
INT8_MAX = 127
INT4_MIDPOINT = 8  # the kernels compute (code - 8) * scale + zero
_MIN_RANGE = 1e-8  # a constant row: any scale reproduces it


class QuantizationError(ValueError):
    """A weight this quantization cannot represent with the kernels here; says which and why."""


def quantize_int8(
    weight: torch.Tensor, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [N, K], scales [N] in `scale_dtype`), symmetric per output channel. The codes are
    rounded against the scale as stored, so the stored pair is the best the format holds."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=_MIN_RANGE).to(scale_dtype)
    codes = torch.round(w / scales.float().unsqueeze(1)).clamp(-INT8_MAX, INT8_MAX)
    return codes.to(torch.int8), scales


class QuantizedWeight:
    """A linear layer's weight [out, in] in a packed form; `linear(x, bias)` = x @ W.T + bias."""

    out_features: int
    in_features: int

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes a GEMM reads for this weight: codes, scales and zeros."""
        raise NotImplementedError


def _int8_kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The activations' dtype inside the int8 GEMM: the model's own if it is a half type, else
    bfloat16 (float32 has no vectorized path on CPU). int4's kernels take bfloat16 only."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


class Int8Weight(QuantizedWeight):
    """Per-output-channel int8."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        self.kernel_dtype = _int8_kernel_dtype(dtype)
        self.codes, self.scales = quantize_int8(weight, self.kernel_dtype)
        self.out_features, self.in_features = weight.shape
        self.is_cuda = weight.device.type == "cuda"

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xk = x.to(self.kernel_dtype)
        if self.is_cuda:  # untested on a GPU here: gpt-fast's form
            out = F.linear(xk, self.codes.to(self.kernel_dtype)) * self.scales
        else:
            out = torch.ops.aten._weight_int8pack_mm(xk.contiguous(), self.codes, self.scales)
        return _finish(out, x.dtype, bias)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


class Int4Weight(QuantizedWeight):
    """Group-wise int4, packed once for the kernel of the weight's device."""

    def __init__(self, weight: GroupQuantized) -> None:
        self.out_features, self.in_features = weight.shape
        self.group_size = weight.group_size
        self.kernel_dtype = torch.bfloat16
        self.is_cuda = weight.codes.device.type == "cuda"
        zeros = weight.mins + INT4_MIDPOINT * weight.scales
        # [K // g, N, 2]: a group's scale and zero side by side, as the kernels read them
        self.scales_and_zeros = (
            torch.stack([weight.scales.t(), zeros.t()], dim=-1).to(self.kernel_dtype).contiguous()
        )
        if self.is_cuda:  # untested on a GPU here: tinygemm's packing (sm80+, bfloat16)
            nibbles = (weight.codes[:, ::2] << 4 | weight.codes[:, 1::2]).contiguous()
            self.packed = torch.ops.aten._convert_weight_to_int4pack(
                nibbles, _inner_k_tiles(self.in_features)
            )
        else:
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                weight.codes.to(torch.int32),
                1,  # innerKTiles: unused on CPU
            )

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xk = x.to(self.kernel_dtype).contiguous()
        if self.is_cuda:
            out = torch.ops.aten._weight_int4pack_mm(
                xk, self.packed, self.group_size, self.scales_and_zeros
            )
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                xk, self.packed, self.group_size, self.scales_and_zeros
            )
        return _finish(out, x.dtype, bias)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_and_zeros.nbytes


def _finish(out: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    out = out.to(dtype)
    return out if bias is None else out.add_(bias)


def _inner_k_tiles(in_features: int) -> int:
    """tinygemm's K tiling (16 features a tile): the largest of 8, 4, 2 tiles that divides K."""
    return next(tiles for tiles in (8, 4, 2) if in_features % (tiles * 16) == 0)


def check_int4_shape(
    name: str, shape: torch.Size | tuple[int, ...], group_size: int, is_cuda: bool
) -> None:
    """Refuses, naming the layer, a weight the int4 kernels cannot pack."""
    rows, cols = shape
    fitting = [g for g in INT4_GROUP_SIZES if cols % g == 0]
    if cols % group_size:
        hint = (
            f"use --quantization-group-size {' or '.join(map(str, fitting))}"
            if fitting
            else "use --quantization int8"
        )
        raise QuantizationError(
            f"int4 cannot pack {name} [{rows} x {cols}]: its {cols} input features are not a "
            f"multiple of the group size {group_size}; {hint}"
        )
    row_multiple = CUDA_INT4_ROW_MULTIPLE if is_cuda else INT4_ROW_MULTIPLE
    if rows % row_multiple or (is_cuda and cols % 32):
        raise QuantizationError(
            f"int4 cannot pack {name} [{rows} x {cols}]: the kernel needs output channels in "
            f"multiples of {row_multiple}"
            + (" and input features in multiples of 32" if is_cuda else "")
            + "; use --quantization int8"
        )


def quantize_linear(
    name: str,
    weight: torch.Tensor | GroupQuantized,
    method: str,
    group_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> QuantizedWeight:
    """`weight` ([out, in], dense or already group-quantized) packed for `method`'s kernel on
    `device`; the activations of the model are `dtype`. A GroupQuantized weight whose groups
    match is packed as it is (no rounding), otherwise it is requantized from its dense value."""
    if method == "int8":
        dense = weight.dequantize() if isinstance(weight, GroupQuantized) else weight
        return Int8Weight(dense.to(device), dtype)
    if method != "int4":
        raise QuantizationError(f"quantization {method!r} is not one of int8, int4")
    check_int4_shape(name, tuple(weight.shape), group_size, device.type == "cuda")
    if not isinstance(weight, GroupQuantized) or weight.group_size != group_size:
        dense = weight.dequantize() if isinstance(weight, GroupQuantized) else weight
        weight = quantize_int4(dense, group_size)
    on_device = GroupQuantized(
        weight.codes.to(device), weight.scales.to(device), weight.mins.to(device)
    )
    return Int4Weight(on_device)


def linear(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """The Transformer's GEMM under --quantization (the signature of F.linear)."""
    return weight.linear(x, bias)
