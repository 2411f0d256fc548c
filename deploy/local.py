"""Services as local child processes (`serve --no-ray` for colocated / colocated-tcp), connected
over Unix sockets or TCP loopback. Children die with their parent (PR_SET_PDEATHSIG), a child
that crashes is restarted on the same address, and `stop` drains front to back."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from deploy.lifecycle import START_TIMEOUT_S, Child, LaunchError, launch
from deploy.placement import internal_address, resolve_placement
from deploy.spec import ServeSpec
from services.common.process import READY_PREFIX, config_to_json

MAX_RESTARTS = 5
READY_RE = re.compile(rf"^{READY_PREFIX} (?P<address>\S+)$")

__all__ = ["ChildService", "LaunchError", "LocalDeployment"]


@dataclass
class ChildService:
    """One service process (`python -P -m services.NAME --config JSON`), restartable."""

    name: str
    module: str
    config_json: str
    placement: str
    log_path: Path
    child: Child | None = None
    address: str = ""
    num_restarts: int = 0

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        argv = ["-m", self.module, "--config", self.config_json, "--placement", self.placement]
        self.child = launch(argv, name=self.name, log_path=self.log_path)
        try:
            self.address = self.child.wait_for_line(READY_RE, timeout_s).group("address")
        except LaunchError:
            self.terminate(0)
            raise
        return self.address

    def last_error(self) -> str:
        """The line that best says why it failed: its last `error:` line, else its last line."""
        lines = self.child.last_lines(200) if self.child is not None else []
        errors = [ln for ln in lines if ln.startswith("error:")]
        return (errors or lines or ["no output"])[-1]

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
    spec: ServeSpec
    children: list[ChildService] = field(default_factory=list)
    tmp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hopscope-")))

    @property
    def address(self) -> str:
        return self.children[-1].address

    def start(self) -> str:
        try:
            workers = [
                self._start(name, "services.worker", lambda listen: self.spec.worker_config(listen))
                for name in _worker_names(self.spec.worker_replicas)
            ]
            sched = self._start(
                "scheduler",
                "services.scheduler",
                lambda listen: self.spec.scheduler_config(listen, workers[0], "", workers[1:]),
            )
            self._start(
                "tokenizer",
                "services.tokenizer",
                lambda listen: self.spec.tokenizer_config(listen, sched),
                listen=self.spec.front_door,
            )
        except BaseException:
            self.stop()
            raise
        return self.address

    def _start(self, name: str, module: str, make_config: object, listen: str | None = None) -> str:
        listen = listen or self._internal_address(name)
        config = make_config(listen)  # type: ignore[operator]
        child = ChildService(
            name, module, config_to_json(config), self.spec.placement, self.tmp_dir / f"{name}.log"
        )
        self.children.append(child)
        return child.start()

    def _internal_address(self, name: str) -> str:
        # replicas (`worker-1`, ...) are reached like `worker`, each on its own address
        service = name.partition("-")[0]
        transport = resolve_placement(self.spec.placement).listen_transport(service)
        return internal_address(transport, "127.0.0.1", self.tmp_dir, name)

    def supervise_once(self) -> list[str]:
        """Restart any child that died; returns what happened, for the log."""
        events = []
        for child in self.children:
            if child.is_alive:
                continue
            if child.num_restarts >= MAX_RESTARTS:
                raise LaunchError(f"{child.name} keeps dying: {child.last_error()}")
            child.num_restarts += 1
            config = _with_listen(child.config_json, child.address)
            child.config_json = config
            events.append(
                f"{child.name} exited ({child.last_error()}); restarting on {child.address}"
            )
            child.start()
        return events

    def stop(self, grace_s: float = 10.0) -> None:
        for child in reversed(self.children):  # front door first: it drains its streams
            child.terminate(grace_s)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _worker_names(num_replicas: int) -> list[str]:
    """`worker`, then `worker-1`, `worker-2`, ... for further replicas (own socket and log)."""
    return ["worker", *(f"worker-{i}" for i in range(1, num_replicas))]


def _with_listen(config_json: str, address: str) -> str:
    import json

    data = json.loads(config_json)
    data["listen"] = address
    return json.dumps(data)
