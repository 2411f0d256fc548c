"""What the worker adds to its settings (services/config.py `WorkerSettings`, received as is):
their torch values, and the one check only the machine that runs the engine can make (whether
the CUDA device exists: on Ray that machine may be another node)."""

from __future__ import annotations

import torch

from services.config import WorkerSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(worker: WorkerSettings) -> torch.dtype:
    return DTYPES[worker.dtype_name]


def check_device_present(device: str) -> None:
    """ValueError when `device` (already spelled right: the settings checked it) is not here."""
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available here "
            f"(torch {torch.__version__}); use --device cpu"
        )
    _, _, index = device.partition(":")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
        )
