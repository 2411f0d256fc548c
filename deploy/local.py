"""Services as local child processes (`serve --no-ray` for colocated / colocated-tcp), connected
over Unix sockets or TCP loopback. Children die with their parent (PR_SET_PDEATHSIG), a child
that crashes is restarted on the same address, and `stop` drains front to back."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from deploy.lifecycle import START_TIMEOUT_S, Child, LaunchError, launch, wait_serving
from deploy.placement import internal_address, resolve_placement, worker_role
from deploy.spec import (
    front_door_credentials,
    scheduler_config,
    service_json,
    tokenizer_config,
    tokenizer_names,
    with_internal_token,
    worker_config,
)
from services.common.peer_auth import TOKEN_ENV, new_internal_token
from services.common.process import READY_PREFIX
from services.config import HopscopeConfig
from services.worker.service_config import WorkerServiceConfig

MAX_RESTARTS = 5
TAIL_LINES = 8  # of a failed service's log, printed on the console
READY_RE = re.compile(rf"^{READY_PREFIX} (?P<address>\S+)(?: metrics=(?P<metrics>\S+))?$")

__all__ = ["ChildService", "LaunchError", "LocalDeployment"]


@dataclass
class ChildService:
    """One service process (`python -P -m services.NAME --config JSON`), restartable."""

    name: str
    module: str
    config_json: str  # the settings tree and the wiring (services/common/process.py)
    log_path: Path
    child: Child | None = None
    address: str = ""
    metrics_url: str = ""
    num_restarts: int = 0
    env: dict[str, str] | None = field(default=None, repr=False)  # carries the internal token

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        # launch() runs it as `sys.executable -P ...`: never importing from the user's cwd
        argv = ["-m", self.module, "--config", self.config_json]
        self.child = launch(argv, name=self.name, log_path=self.log_path, env=self.env)
        try:
            ready = self.child.wait_for_line(READY_RE, timeout_s)
        except LaunchError:
            self.terminate(0)
            raise
        self.address = ready.group("address")
        self.metrics_url = "" if ready.group("metrics") in (None, "-") else ready.group("metrics")
        return self.address

    def exit_reason(self) -> str:
        """How it ended and, when it said why, its last `error:` line (from this run only)."""
        code = self.child.returncode if self.child is not None else None
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        lines = self.last_lines(200)
        errors = [ln for ln in lines if ln.startswith("error:")]
        said = (errors or lines or ["no output"])[-1]
        return f"exited with code {code}: {said}"

    def last_lines(self, n: int = 20) -> list[str]:
        return self.child.last_lines(n) if self.child is not None else []

    @property
    def is_alive(self) -> bool:
        return self.child is not None and self.child.is_alive

    def terminate(self, grace_s: float) -> None:
        if self.child is not None:
            self.child.stop(grace_s)


@dataclass
class LocalDeployment:
    """`log_dir` keeps the services' logs (<service>.log, appended); none: a temporary
    directory removed at stop."""

    spec: HopscopeConfig
    log_dir: Path | None = None
    children: list[ChildService] = field(default_factory=list)
    tmp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hopscope-")))

    @property
    def address(self) -> str:
        return self.children[-1].address

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {c.name: c.metrics_url for c in self.children if c.metrics_url}

    def start(self) -> str:
        if not self.spec.security.internal_token:  # one per deployment: only its services get in
            self.spec = with_internal_token(self.spec, new_internal_token())
        try:
            placement = resolve_placement(self.spec.deploy.placement)
            names = placement.worker_names(placement.num_replicas(self.spec.deploy.worker_replicas))
            workers = [
                self._start(
                    name,
                    "services.worker",
                    functools.partial(self._worker_config, role=worker_role(name)),
                )
                for name in names
            ]
            sched = self._start(
                "scheduler",
                "services.scheduler",
                lambda listen: scheduler_config(self.spec, listen, workers[0], "", workers[1:]),
            )
            # the front door's replicas share its port (the first one's, when --port 0 picked it)
            front_door = self.spec.deploy.front_door
            for name in tokenizer_names(self.spec.deploy.tokenizer_replicas):
                front_door = self._start(
                    name,
                    "services.tokenizer",
                    lambda listen, name=name: tokenizer_config(self.spec, listen, sched, name=name),
                    listen=front_door,
                )
            # the front door's health follows all
            wait_serving(self.address, START_TIMEOUT_S, front_door_credentials(self.spec))
        except TimeoutError as exc:
            self.stop()
            raise LaunchError(f"the pipeline did not become healthy: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        return self.address

    def _worker_config(self, listen: str, role: str) -> WorkerServiceConfig:
        return worker_config(self.spec, listen, role=role)

    def _start(self, name: str, module: str, make_config: object, listen: str | None = None) -> str:
        listen = listen or self._internal_address(name)
        config = make_config(listen)  # type: ignore[operator]
        log_path = (self.log_dir or self.tmp_dir) / f"{name}.log"
        # the token travels in the child's environment, not on its command line (`ps` shows that)
        env = {**os.environ, TOKEN_ENV: config.settings.security.internal_token}
        child = ChildService(name, module, service_json(config), log_path, env=env)
        self.children.append(child)
        return child.start()

    def _internal_address(self, name: str) -> str:
        # replicas (`worker-1`, ...) are reached like `worker`, each on its own address
        service = name.partition("-")[0]
        transport = resolve_placement(self.spec.deploy.placement).listen_transport(service)
        return internal_address(transport, "127.0.0.1", self.tmp_dir, name)

    def supervise_once(self) -> list[str]:
        """Restart any child that died; returns what happened (with its last lines), for the
        console. LaunchError when one keeps dying or cannot start again."""
        events = []
        for child in self.children:
            if child.is_alive:
                continue
            reason, tail = child.exit_reason(), _indented(child.last_lines(TAIL_LINES))
            if child.num_restarts >= MAX_RESTARTS:
                raise LaunchError(f"{child.name} keeps dying ({reason}){tail}")
            child.num_restarts += 1
            # the same address again (a port chosen by the OS, or the Unix socket)
            child.config_json = _with_listen(child.config_json, child.address)
            events.append(f"{child.name} {reason}; restarting on {child.address}{tail}")
            child.start()
        return events

    def stop(self, grace_s: float = 10.0) -> None:
        for child in reversed(self.children):  # front door first: it drains its streams
            child.terminate(grace_s)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _indented(lines: list[str]) -> str:
    return "".join(f"\n  {line}" for line in lines)


def _with_listen(config_json: str, address: str) -> str:
    data = json.loads(config_json)
    data["listen"] = address
    return json.dumps(data)
