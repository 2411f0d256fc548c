"""The engine's fused CPU kernels (cpu_kernels.cpp), compiled on first use by torch's C++
extension loader and called as `torch.ops.hopscope.*`.

The build (about fifteen seconds) is cached under `TORCH_EXTENSIONS_DIR` (default
~/.cache/torch_extensions); later loads take milliseconds. The cache entry is named after
everything the build depends on (`BuildInputs`: the source, torch's version and install, this
CPU's feature flags for -march=native, the compiler, the Python interpreter and prefix, which
`ninja` runs, the flags), so two venvs or checkouts on one machine each keep their own entry
instead of rebuilding over each other, and a home directory shared by different machines never
hands one of them another's instructions.
Where it cannot be built (no C++ compiler), the engine falls back to plain torch ops and says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

_LOG = logging.getLogger(__name__)
SOURCE = Path(__file__).resolve().with_name("cpu_kernels.cpp")
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
# A build takes ~15 s; a lock file this old was left by a process killed mid-build, and torch
# would wait on it forever.
STALE_BUILD_LOCK_S = 600.0
_lock = threading.Lock()
_loaded: bool | None = None
_error: str | None = None


class KernelUnavailableError(RuntimeError):
    """The native kernels could not be built or loaded here."""


def load() -> None:
    """Build (the first time here) and load the kernels; raises KernelUnavailableError, naming
    the cause, when that is impossible on this machine."""
    global _loaded, _error
    with _lock:
        if _loaded is None:
            _LOG.info("loading the native CPU kernels (compiled on first use here, ~15 s)")
            try:
                from torch.utils import cpp_extension

                name = cache_name(build_inputs())
                _remove_stale_build_lock(Path(cpp_extension._get_build_directory(name, False)))
                cpp_extension.load(
                    name=name,
                    sources=[str(SOURCE)],
                    extra_cflags=_CFLAGS,
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,
                )
                _loaded = True
            # No compiler, ninja or headers: all mean "not here".
            except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as exc:
                _loaded, _error = False, _summary(exc)
                _LOG.warning(
                    "native CPU kernels unavailable, using the slower torch ops instead "
                    "(--kernels torch chooses them without trying): %s",
                    _error,
                )
        if not _loaded:
            raise KernelUnavailableError(f"the native CPU kernels could not be built: {_error}")


def _summary(exc: BaseException) -> str:
    """The exception's last lines: a failed build's message holds the whole compiler log, and
    its cause (compiler not found, a missing header) is at the end."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: " + " | ".join(lines[-2:])[:1000]


def _remove_stale_build_lock(build_dir: Path) -> None:
    lock = build_dir / "lock"
    try:
        age_s = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age_s > STALE_BUILD_LOCK_S:
        _LOG.warning("removing a stale kernel build lock (%.0f s old): %s", age_s, lock)
        lock.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class BuildInputs:
    """Everything the compiled kernels depend on; `cache_name` hashes all of it."""

    source_sha256: str
    torch_version: str
    torch_dir: str  # its headers and libraries: two venvs hold two copies
    cpu_flags: str  # what -march=native compiles for
    compiler: str  # resolved path of $CXX, else of c++
    python: str  # the interpreter (its headers, its ABI)
    prefix: str  # the venv
    ninja: str  # whichever `ninja` PATH finds: it writes the build files
    cflags: tuple[str, ...]


def build_inputs() -> BuildInputs:
    return BuildInputs(
        source_sha256=hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        torch_version=torch.__version__,
        torch_dir=str(Path(torch.__file__).resolve().parent),
        cpu_flags=_cpu_flags(),
        compiler=_resolved(os.environ.get("CXX") or "c++"),
        python=str(Path(sys.executable).resolve()),
        prefix=str(Path(sys.prefix).resolve()),
        ninja=_resolved("ninja"),
        cflags=tuple(_CFLAGS),
    )


def cache_name(inputs: BuildInputs) -> str:
    """The extension's name, hence its build directory: one per distinct set of inputs."""
    key = json.dumps(asdict(inputs), sort_keys=True)
    return f"hopscope_cpu_kernels_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _resolved(program: str) -> str:
    path = shutil.which(program)
    return str(Path(path).resolve()) if path else f"{program} (not found)"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return flags.strip() or platform.machine()


def available() -> bool:
    try:
        load()
    except KernelUnavailableError:
        return False
    return True


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """[B, H, D]: each sequence's one query over its first `context_lens[b]` cached tokens."""
    return torch.ops.hopscope.paged_decode_attention(
        q, k_cache, v_cache, block_tables, context_lens, block_size, scale
    )


def rope_and_cache_(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
) -> None:
    """Rotates q and k inside `qkv` [T, (H + 2 KVH) * D] in place; writes k and v to `slots`."""
    torch.ops.hopscope.rope_and_cache_(
        qkv, cos, sin, k_cache, v_cache, slots, num_heads, num_kv_heads
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.ops.hopscope.rms_norm(x, weight, eps)


def add_rms_norm_(
    residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """`residual += x` in place; returns rms_norm(residual)."""
    return torch.ops.hopscope.add_rms_norm_(residual, x, weight, eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[T, 2 I] -> silu(x[:, :I]) * x[:, I:]."""
    return torch.ops.hopscope.silu_and_mul(x)


# GEMMs: oneDNN's linear with the weight reordered once into its blocked layout (what
# torch.compile's CPU freezing pass does). At the small row counts of decode it runs 1.4-2x
# faster than F.linear, whose weight is re-packed on every call.


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """An opaque oneDNN copy of `weight` [out, in] for `packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight)


def packed_linear(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(x, weight, bias) for a 2-D x, with `packed_weight = pack_linear_weight(weight)`."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed_weight, bias, "none", [], "")


def packed_gemm_available(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU run oneDNN's packed linear in `dtype`."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.ones(4, 8, dtype=dtype)
        out = packed_linear(torch.ones(2, 8, dtype=dtype), pack_linear_weight(weight))
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        _LOG.warning("oneDNN packed linear unavailable for %s, using F.linear: %s", dtype, exc)
        return False
    return bool((out == 8).all())
