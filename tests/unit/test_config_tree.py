"""The configuration tree (services/config.py) is the one place a setting lives: the flags, their
defaults, the README's tables and each service's config all come from it."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy import flags
from deploy.cli import build_parser, main
from deploy.commands import spec_from_args
from deploy.spec import scheduler_config, service_json, tokenizer_config, worker_config
from experiment.plan import parse_plan
from services.common.process import config_from_dict, config_to_json
from services.common.types import ModelInfo
from services.config import (
    BATCHING_MODES,
    DEFAULTS,
    KV_TRANSPORTS,
    PREEMPTION_MODES,
    ROUTING_POLICIES,
    SECTIONS,
    STEP_ENCODINGS,
    HopscopeConfig,
    SchedulerSettings,
    settings_of,
)
from services.scheduler.core import Scheduler
from services.scheduler.service_config import SchedulerServiceConfig
from services.tokenizer.service_config import TokenizerServiceConfig

ROOT = Path(__file__).resolve().parents[2]


def _serve(*argv: str) -> HopscopeConfig:
    return spec_from_args(build_parser("serve").parse_args(["serve", *argv]))


def test_the_readme_flag_tables_are_what_the_tree_generates() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    assert flags.readme_with_tables(text) == text, "run: python -m deploy.flags --write"


def test_a_changed_help_text_makes_the_readme_check_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    f = next(f for f, _ in settings_of(SECTIONS["scheduler"]) if f.name == "max_queue_len")
    changed = dataclasses.replace(f.metadata["setting"], doc="something else")
    monkeypatch.setattr(
        flags,
        "settings_of",
        lambda cls: [(g, changed if g is f else s) for g, s in settings_of(cls)],
    )
    assert flags.readme_with_tables(text) != text


def test_every_setting_has_help_and_every_flag_default_is_the_tree_default() -> None:
    parser = build_parser("serve")
    serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "serve"
    ]
    by_dest = {a.dest: a for a in serve._actions}
    for cls in SECTIONS.values():
        for f, s in settings_of(cls):
            assert s.help, f.name
            if s.flag is None or "serve" not in s.commands:
                continue
            action = by_dest[s.dest or f.name]
            assert action.default == flags.default_of(f), f.name


def test_the_old_defaults_are_kept_and_written_once() -> None:
    """Defect 3: the runner's connect timeout was 30 s against the service config's 60, the
    tokenizer config's placement "colocated" against serve's "inproc"."""
    assert SchedulerServiceConfig().settings.scheduler.worker_connect_timeout_s == 60.0
    assert TokenizerServiceConfig().settings.deploy.placement == DEFAULTS.deploy.placement
    assert DEFAULTS.deploy.placement == "inproc"
    assert SchedulerSettings().max_num_batched_tokens == DEFAULTS.scheduler.max_num_batched_tokens
    config = _serve()
    assert scheduler_config(config, "l", "w").settings.scheduler == SchedulerSettings()
    assert scheduler_config(config, "l", "w").settings.scheduler.worker_restart_timeout_s == 60.0
    assert worker_config(config, "w").settings.scheduler.max_num_batched_tokens == 2048
    assert tokenizer_config(config, "l", "s").settings.tokenizer.request_timeout_s == 600.0


def test_a_bad_value_is_refused_naming_its_flag() -> None:
    with pytest.raises(ValueError, match="--kv-cache-mb must be >= 1 MiB, got 0"):
        _serve("--kv-cache-mb", "0")
    with pytest.raises(ValueError, match="--max-num-batched-tokens .* --max-num-seqs"):
        _serve("--max-num-seqs", "64", "--max-num-batched-tokens", "32")
    with pytest.raises(ValueError, match="--worker-restart-timeout-s must be >= 0"):
        _serve("--worker-restart-timeout", "-1")


def test_unknown_setting_names_the_allowed_ones() -> None:
    with pytest.raises(TypeError, match="unknown setting 'max_num_seq'.*max_num_seqs"):
        HopscopeConfig.of(max_num_seq=3)


def test_booleans_are_x_no_x_and_the_older_on_off_spelling_still_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Defect 9: one convention; the old spellings are deprecated aliases that still work."""
    assert _serve().scheduler.prefix_caching is True
    assert _serve("--no-prefix-caching").scheduler.prefix_caching is False
    assert _serve("--prefix-caching", "off").scheduler.prefix_caching is False
    assert _serve("--async-scheduling").scheduler.async_scheduling is True
    assert _serve("--async-scheduling", "on").scheduler.async_scheduling is True
    assert _serve("--compile").worker.compile is True
    assert _serve("--compile", "--no-compile").worker.compile is False
    assert _serve("--worker-restart-timeout-s", "5").scheduler.worker_restart_timeout_s == 5.0
    assert _serve("--worker-restart-timeout", "7").scheduler.worker_restart_timeout_s == 7.0
    gen = build_parser("generate").parse_args(["generate", "hi", "--timeout", "3"])
    assert gen.timeout_s == 3.0
    help_text = subprocess.run(
        [sys.executable, "-P", "-m", "deploy.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "deprecated spelling: --worker-restart-timeout" in " ".join(help_text.split())


def test_generate_with_an_address_refuses_engine_flags_naming_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Defect 2: they were parsed and silently ignored."""
    code = main(["generate", "hi", "--address", "127.0.0.1:1", "--model", "small", "--no-compile"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--model" in err and "--compile" in err and "--address" in err


def test_ray_keeps_the_worker_restart_timeout_the_user_gave() -> None:
    """Defect 1: Ray took max(flag, 60 s), so the flag could only lengthen it there."""
    source = (ROOT / "deploy" / "ray_serve.py").read_text()
    assert "max(spec" not in source and "WORKER_RECONNECT_TIMEOUT_S" not in source
    config = _serve("--worker-restart-timeout-s", "5", "--placement", "split")
    assert scheduler_config(config, "l", "w").settings.scheduler.worker_restart_timeout_s == 5.0


def test_a_setting_defined_once_reaches_its_service() -> None:
    """`--static-batch-timeout-s` is one definition in services/config.py, nothing else."""
    config = _serve("--batching", "static", "--static-batch-timeout-s", "0.2")
    assert scheduler_config(config, "l", "w").settings.scheduler.static_batch_timeout_s == 0.2
    with pytest.raises(ValueError, match="--static-batch-timeout-s must be >= 0 s"):
        _serve("--static-batch-timeout-s", "-1")


def test_a_new_scheduler_knob_is_one_definition_plus_its_use() -> None:
    """`--max-prefill-seqs` (added as issue 20's example) is one field of SchedulerSettings and
    the core's line that reads it: the scheduler process receives the settings tree as is,
    serialized once (no mirrored field, no second check, no mapping line), and its server hands
    the core the `scheduler` section."""
    tree = _serve("--max-prefill-seqs", "2", "--max-num-seqs", "3", "--no-prefix-caching")
    service = scheduler_config(tree, "l", "w")
    assert service.settings is tree
    sent = _through_the_process(SchedulerServiceConfig, service)
    assert sent.settings == tree
    core = Scheduler(sent.settings.scheduler, _MODEL)
    assert (core.config.max_prefill_seqs, core.config.max_num_seqs) == (2, 3)
    assert core.config.prefix_caching is False
    with pytest.raises(ValueError, match="--max-prefill-seqs must be >= 0"):
        _serve("--max-prefill-seqs", "-1")
    # one config type declares it, and only its definition and its use name it
    assert _classes_declaring("max_prefill_seqs") == ["services/config.py:SchedulerSettings"]
    assert _files_naming("max_prefill_seqs") == ["services/config.py", "services/scheduler/core.py"]
    assert _classes_declaring("max_num_seqs") == ["services/config.py:SchedulerSettings"]


def test_a_worker_knob_is_one_definition_plus_its_use() -> None:
    """`--kv-cache-mb`: one field of WorkerSettings; its value in bytes is a property of that
    section (no second field, no rename), read at its one use, the engine's CPU budget. The
    worker process receives the tree as is and the engine opens its `worker` section."""
    from services.worker.engine import Engine
    from services.worker.kv_cache import bytes_per_block
    from services.worker.service_config import WorkerServiceConfig

    tree = _serve("--kv-cache-mb", "9", "--model", "tiny", "--engine-threads", "1")
    service = worker_config(tree, "unix:/w")
    assert service.settings is tree
    sent = _through_the_process(WorkerServiceConfig, service)
    assert sent.settings == tree
    engine = Engine(sent.settings)
    block_bytes = bytes_per_block(engine.source.config, engine.info.block_size, engine.dtype)
    assert engine.info.num_blocks == 9 * 2**20 // block_bytes
    with pytest.raises(ValueError, match="--kv-cache-mb must be >= 1 MiB"):
        _serve("--kv-cache-mb", "0")
    assert _classes_declaring("kv_cache_mb") == ["services/config.py:WorkerSettings"]
    assert _files_naming("kv_cache_mb") == ["services/config.py"]  # the definition, its bytes
    assert _files_naming("kv_cache_bytes") == ["services/worker/engine.py"]  # the use


@pytest.mark.parametrize(
    "service_config",
    [
        "services/scheduler/service_config.py",
        "services/tokenizer/service_config.py",
        "services/worker/service_config.py",
        "services/worker/config.py",
    ],
)
def test_no_service_config_mirrors_a_setting(service_config: str) -> None:
    """A service's config is the tree plus its wiring: none of its classes declares a field
    named like a setting (a copy that could drift from the tree, or be renamed on the way)."""
    names = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    tree = ast.parse((ROOT / service_config).read_text(encoding="utf-8"))
    declared = {
        f"{node.name}.{item.target.id}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for item in node.body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
        if item.target.id in names
    }
    assert declared == set()


# what a knob crosses on its way from `serve --no-ray` to its service, carried whole: the tree
# goes through these unopened (the same for every setting), so none is edited for a new knob
_CARRIERS = (
    "deploy/flags.py",
    "deploy/commands.py",
    "deploy/local.py",
    "deploy/spec.py",
    "services/common/process.py",
    "services/scheduler/service_config.py",
    "services/worker/service_config.py",
    "services/worker/server.py",
)


@pytest.mark.parametrize("carrier", _CARRIERS)
def test_the_tree_crosses_deploy_unopened(carrier: str) -> None:
    """Neither the scheduler's nor the worker's section is looked into on the way: a knob's
    files are its definition, the line that hands its section to its user, and its use
    (ARCHITECTURE.md, "Configuration", counts them)."""
    tree = ast.parse((ROOT / carrier).read_text(encoding="utf-8"))
    opened = [
        f"{carrier}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in ("scheduler", "worker"))
        or (isinstance(node, ast.Name) and node.id in ("SchedulerSettings", "WorkerSettings"))
    ]
    assert opened == []


def test_a_childs_command_line_holds_no_secret() -> None:
    """The tree goes to a child on its command line, which `ps` shows to every user: the
    internal token and the API key are taken out (the child reads both from its environment)."""
    tree = HopscopeConfig.of(model="tiny", api_key="key-41", internal_token="token-42")
    for service in (
        worker_config(tree, "unix:/w"),
        scheduler_config(tree, "l", "w"),
        tokenizer_config(tree, "l", "s"),
    ):
        text = service_json(service)
        assert "key-41" not in text and "token-42" not in text
        sent = config_from_dict(type(service), json.loads(text))
        assert sent.settings.security.api_key is None and sent.settings.model == tree.model


def _through_the_process(cls: type[Any], service: Any) -> Any:
    """What a service process rebuilds from its `--config JSON` (services/common/process.py)."""
    return config_from_dict(cls, json.loads(config_to_json(service)))


_MODEL = ModelInfo("t", "llama", 64, 256, "float32", "cpu", num_blocks=64, block_size=4)
_CODE = ("services", "deploy", "loadgen", "experiment", "diagnose")


def _sources() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8")))
        for package in _CODE
        for path in sorted((ROOT / package).rglob("*.py"))
        if "_pb2" not in path.name
    ]


def _classes_declaring(name: str) -> list[str]:
    return [
        f"{path}:{node.name}"
        for path, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(item, ast.AnnAssign)
            and isinstance(item.target, ast.Name)
            and item.target.id == name
            for item in node.body
        )
    ]


def _files_naming(name: str) -> list[str]:
    return sorted(
        path
        for path, tree in _sources()
        if any(
            (isinstance(n, ast.Attribute) and n.attr == name)
            or (isinstance(n, ast.Name) and n.id == name)
            or (isinstance(n, ast.keyword) and n.arg == name)
            or (
                isinstance(n, ast.AnnAssign)
                and isinstance(n.target, ast.Name)
                and n.target.id == name
            )
            for n in ast.walk(tree)
        )
    )


@pytest.mark.parametrize(
    "choices", [BATCHING_MODES, PREEMPTION_MODES, STEP_ENCODINGS, ROUTING_POLICIES, KV_TRANSPORTS]
)
def test_each_choice_list_is_defined_once(choices: tuple[str, ...]) -> None:
    """Written twice, a list drifts (a new routing policy the flag refuses, or the router does):
    the settings tree holds it, the code that acts on it imports it."""
    places = [
        f"{path}:{node.lineno}"
        for path, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Tuple | ast.List | ast.Set)
        and len(node.elts) == len(choices)
        and {getattr(e, "value", None) for e in node.elts} == set(choices)
    ]
    assert len(places) == 1 and places[0].startswith("services/config.py:"), places


def test_a_new_setting_is_at_once_a_plan_factor() -> None:
    plan = parse_plan(
        {
            "baseline": {"placement": "colocated", "no_ray": True},
            "workload": {"concurrency": 2, "num_requests": 4},
            "factors": {"max_prefill_seqs": [1]},
        }
    )
    assert "--max-prefill-seqs" in plan.variants[1].serve_argv()
