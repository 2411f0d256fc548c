"""`serve --engine-threads N`: the worker's engine runs its steps with N torch CPU threads."""

from __future__ import annotations

import pytest
import torch

from deploy.spec import worker_config
from services.common.identity import identify
from services.worker.config import WorkerConfig
from services.worker.engine import Engine
from services.worker.servicer import WorkerService


def test_the_engine_thread_runs_with_the_threads_asked_for() -> None:
    before = torch.get_num_threads()
    try:
        engine = Engine(WorkerConfig(model="tiny", kv_cache_bytes=8 * 2**20, num_threads=1))
        service = WorkerService(engine, identify("worker", "inproc"))
        try:
            threads = service.engine_executor.submit(torch.get_num_threads).result(timeout=30)
        finally:
            service.close()
        assert threads == 1
    finally:
        torch.set_num_threads(before)


def test_the_flag_reaches_the_worker_config_and_is_checked() -> None:
    from deploy.cli import build_parser
    from deploy.commands import spec_from_args

    args = build_parser().parse_args(["serve", "--no-ray", "--engine-threads", "1"])
    assert worker_config(spec_from_args(args), "unix:/tmp/w.sock").engine.num_threads == 1
    bad = build_parser().parse_args(["serve", "--no-ray", "--engine-threads", "-1"])
    with pytest.raises(ValueError, match="--engine-threads must be >= 0"):
        spec_from_args(bad)


def test_openmp_defaults_yield_to_the_users_settings() -> None:
    from services.common.threads import openmp_env_defaults

    assert openmp_env_defaults({}) == {"GOMP_SPINCOUNT": "100000"}
    assert openmp_env_defaults({"GOMP_SPINCOUNT": "5"}) == {}
    assert openmp_env_defaults({"OMP_WAIT_POLICY": "PASSIVE"}) == {}
