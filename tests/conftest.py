"""Session-wide set-up."""

from __future__ import annotations

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the native CPU kernels once (cached on disk), before any test starts a worker that
    would otherwise spend its start-up deadline compiling them."""
    from services.worker import kernels

    kernels.available()
