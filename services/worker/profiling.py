"""torch.profiler over the worker's steps for `hopscope profile` (the Worker.Profile RPC).

The profiler starts and stops on the engine's own thread (every step runs there), so it records
exactly the steps of the window; each step is wrapped in a `hopscope.step` range while the window
is open, so the trace shows where one step ends and the next begins. One window at a time.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

STEP_RANGE = "hopscope.step"
MAX_SECONDS = 120.0


class ProfileBusyError(RuntimeError):
    """Another profile window is open on this worker."""


class StepProfiler:
    def __init__(self, engine: Any, executor: Executor) -> None:
        self.engine = engine
        self.executor = executor
        self._lock = asyncio.Lock()
        self.num_steps = 0

    async def record(self, seconds: float) -> bytes:
        """Profile the steps of the next `seconds`; the gzipped Chrome trace JSON."""
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {seconds:g}")
        if self._lock.locked():
            raise ProfileBusyError("a profile is already being recorded on this worker")
        async with self._lock:
            loop = asyncio.get_running_loop()
            profiler = await loop.run_in_executor(self.executor, self._start)
            try:
                await asyncio.sleep(seconds)
            finally:
                path = await loop.run_in_executor(self.executor, self._stop, profiler)
            try:
                return gzip.compress(path.read_bytes())
            finally:
                shutil.rmtree(path.parent, ignore_errors=True)

    def _start(self) -> Any:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        profiler = profile(activities=activities)
        profiler.start()
        self.num_steps = 0
        self.engine.step = self._marked(type(self.engine).step.__get__(self.engine))
        return profiler

    def _marked(self, step: Callable[..., Any]) -> Callable[..., Any]:
        from torch.profiler import record_function

        def marked_step(*args: Any, **kwargs: Any) -> Any:
            self.num_steps += 1
            with record_function(STEP_RANGE):
                return step(*args, **kwargs)

        return marked_step

    def _stop(self, profiler: Any) -> Path:
        del self.engine.step  # back to the class's method
        profiler.stop()
        path = Path(tempfile.mkdtemp(prefix="hopscope-profile-")) / "trace.json"
        profiler.export_chrome_trace(str(path))
        return path
