"""Services as local child processes (`serve --no-ray` for colocated / colocated-tcp), connected
over Unix sockets or TCP loopback. Children die with their parent (PR_SET_PDEATHSIG), a child
that crashes is restarted on the same address, and `stop` drains front to back."""

from __future__ import annotations

import ctypes
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.placement import internal_address, resolve_placement
from deploy.spec import ServeSpec
from services.common.process import READY_PREFIX, config_to_json

START_TIMEOUT_S = 180.0
MAX_RESTARTS = 5


class LaunchError(RuntimeError):
    """A service could not start; the message says which and why."""


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphans if we are killed


@dataclass
class ChildService:
    name: str
    module: str
    config_json: str
    placement: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    address: str = ""
    num_restarts: int = 0

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--config",
                self.config_json,
                "--placement",
                self.placement,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks taken
        )
        log.close()
        self.address = self._wait_ready(timeout_s)
        return self.address

    def _wait_ready(self, timeout_s: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline().decode().strip()
                if line.startswith(READY_PREFIX):
                    return line.split(" ", 1)[1]
                if not line and self.process.poll() is not None:
                    break
            elif self.process.poll() is not None:
                break
        self.terminate(0)
        raise LaunchError(f"{self.name} did not start: {self.last_error()}")

    def last_error(self) -> str:
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        return (errors or lines or ["no output (timed out)"])[-1]

    @property
    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, grace_s: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
            worker = self._start(
                "worker", "services.worker", lambda listen: self.spec.worker_config(listen)
            )
            sched = self._start(
                "scheduler",
                "services.scheduler",
                lambda listen: self.spec.scheduler_config(listen, worker),
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
        transport = resolve_placement(self.spec.placement).listen_transport(name)
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


def _with_listen(config_json: str, address: str) -> str:
    import json

    data = json.loads(config_json)
    data["listen"] = address
    return json.dumps(data)
