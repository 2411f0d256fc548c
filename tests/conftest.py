"""Session-wide set-up."""

from __future__ import annotations

import os

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the native CPU kernels once (cached on disk), before any test starts a worker that
    would otherwise spend its start-up deadline compiling them. benchmarks/gpu_check.sh skips it:
    CUDA runs torch ops, and device time is scarce."""
    if os.environ.get("HOPSCOPE_SKIP_KERNEL_BUILD"):
        return
    from services.worker import kernels

    kernels.available()
