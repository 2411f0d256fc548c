"""`serve --engine-threads N`: the worker's engine runs its steps with N torch CPU threads."""

from __future__ import annotations

import pytest
import torch

from deploy.spec import worker_config
from services.common.identity import identify
from services.common.process import config_to_json
from services.config import HopscopeConfig, WorkerSettings
from services.worker.engine import Engine
from services.worker.servicer import WorkerService


def test_the_engine_thread_runs_with_the_threads_asked_for() -> None:
    before = torch.get_num_threads()
    try:
        engine = Engine(HopscopeConfig.of(model="tiny", kv_cache_mb=8, engine_threads="1"))
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
    worker = worker_config(spec_from_args(args), "unix:/tmp/w.sock").settings.worker
    assert worker.engine_thread_count == 1
    bad = build_parser().parse_args(["serve", "--no-ray", "--engine-threads", "-1"])
    with pytest.raises(ValueError, match="--engine-threads must be >= 0"):
        spec_from_args(bad)


def test_openmp_defaults_yield_to_the_users_settings() -> None:
    from services.common.threads import openmp_env_defaults

    assert openmp_env_defaults({}) == {"GOMP_SPINCOUNT": "100000"}
    assert openmp_env_defaults({"GOMP_SPINCOUNT": "5"}) == {}
    assert openmp_env_defaults({"OMP_WAIT_POLICY": "PASSIVE"}) == {}


def test_engine_threads_default_to_auto_and_take_a_number_or_auto() -> None:
    from deploy.cli import build_parser
    from deploy.commands import spec_from_args

    def engine_of(*argv: str) -> WorkerSettings:
        args = build_parser().parse_args(["serve", "--no-ray", *argv])
        return worker_config(spec_from_args(args), "unix:/tmp/w.sock").settings.worker

    assert engine_of().engine_thread_count is None  # auto
    assert engine_of("--engine-threads", "auto").engine_thread_count is None
    assert engine_of("--engine-threads", "0").engine_thread_count == 0
    assert engine_of("--engine-wait-policy", "passive").engine_wait_policy == "passive"
    with pytest.raises(ValueError, match="--engine-threads must be auto or a number"):
        engine_of("--engine-threads", "many")


def test_a_wait_policy_overrides_the_spin_and_auto_keeps_the_users() -> None:
    from services.common.threads import openmp_environ

    user = {"GOMP_SPINCOUNT": "5", "PATH": "/bin"}
    assert openmp_environ("auto", user) == user
    assert openmp_environ("auto", {}) == {"GOMP_SPINCOUNT": "100000"}
    # a GOMP_SPINCOUNT left set would override the policy's spin count in libgomp
    assert openmp_environ("passive", user) == {"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/bin"}
    assert openmp_environ("active", {"OMP_WAIT_POLICY": "PASSIVE"}) == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_worker_process_reads_its_wait_policy_from_its_config() -> None:
    import json

    from services.common.threads import wait_policy_in_argv

    tree = HopscopeConfig.of(engine_wait_policy="passive")
    config = config_to_json(worker_config(tree, "unix:/tmp/w"))
    assert wait_policy_in_argv(["-m", "--config", config]) == "passive"
    assert wait_policy_in_argv(["--config", json.dumps({"settings": {}})]) == "auto"
    assert wait_policy_in_argv(["--config", "not json"]) == "auto"
    assert wait_policy_in_argv([]) == "auto"


def test_a_wait_policy_set_after_torch_loaded_says_it_comes_too_late(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import os

    from services.common.threads import apply_wait_policy

    monkeypatch.setenv("GOMP_SPINCOUNT", "100000")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    apply_wait_policy("passive")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "GOMP_SPINCOUNT" not in os.environ
    assert "after torch loaded OpenMP" in caplog.text  # this test process has torch loaded
