"""The one lifecycle kit: launch a child process, wait until it is ready, stop it.

Used by `hopscope serve` (deploy/local.py, deploy/ray_serve.py), the tests (tests/harness.py) and
the benchmarks (benchmarks/common.py). Every child:

- runs `sys.executable -P ...`: the working directory is never on its `sys.path`, so a
  `tracing.py` or `grpc.py` next to the user cannot replace hopscope's modules;
- has its own process group (stopped as a whole) and dies with its parent (PR_SET_PDEATHSIG);
- writes stdout and stderr straight into a log file: no pipe that nobody reads can fill up and
  block it; readiness is a line found in that file;
- reads nothing (stdin /dev/null), unless launched with `stdin_pipe=True`: then its stdin is a pipe
  this process holds open until the child is stopped (for a child that serves until its stdin
  closes, e.g. diagnose/hop_echo.py: it also ends when this process dies).

A wait that runs out is an error (LaunchError / TimeoutError), never "carry on".
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 180.0  # the one start-up deadline (a cold kernel build + a model load fit)
STOP_GRACE_S = 10.0
FRONT_DOOR_RE = re.compile(r"hopscope front door: (?P<address>\S+) \(")
_POLL_S = 0.05
_TAIL_BYTES = 256 * 1024
_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    """A child could not start (or died); the message names it and quotes its last lines."""


def front_door_line(address: str, placement: str, model: str) -> str:
    """The line `hopscope serve` prints once its front door serves (FRONT_DOOR_RE parses it)."""
    return f"hopscope front door: {address} (placement {placement}, model {model})"


def announce_front_door(address: str, placement: str, model: str) -> None:
    print(front_door_line(address, placement, model), flush=True)


def announce_metrics(urls: dict[str, str]) -> None:
    """Where each service serves /metrics (once ready; nothing when metrics are off)."""
    served = [f"{name} {url}" for name, url in urls.items() if url]
    if served:
        print(f"hopscope metrics: {', '.join(served)}", flush=True)


def check_port_free(host: str, port: int) -> None:
    """LaunchError when something already listens on HOST:PORT (port 0: nothing to check).

    Checked before anything slow starts (a model load, a kernel build), so a taken port is
    refused in a moment. Other bind errors (a host that is not this machine's) are left to the
    server's own bind, which reports them."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LaunchError(
                    f"cannot listen on {host}:{port}: the port is already in use; stop what "
                    "listens there or pass another --port (0 picks a free one)"
                ) from exc


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: one prctl call, no locks taken. The signal is
    # sent when the thread that forked us exits, so launch from a long-lived thread.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One child process in its own process group, its output in `log_path`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int = 0  # where this launch's output starts in the (appended) log
    cpu_s: float | None = None  # user + system CPU of it and its waited-for children, once reaped
    _scan_offset: int = field(default=-1, init=False, repr=False)  # next unread byte of the log
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def is_alive(self) -> bool:
        return self._reap(block=False) is None

    @property
    def returncode(self) -> int | None:
        return self._reap(block=False)

    def wait_for_line(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """The first line of this launch's output that `pattern` searches successfully.

        Raises LaunchError when the child exits first or `timeout_s` runs out.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if match := self._search(pattern):
                return match
            code = self.returncode
            if code is not None:
                if match := self._search(pattern):  # what it wrote just before exiting
                    return match
                raise LaunchError(f"{self.name} exited with code {code}{self._tail()}")
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{self.name} was not ready within {timeout_s:.0f} s{self._tail()}"
                )
            time.sleep(_POLL_S)

    def last_lines(self, n: int = 20) -> list[str]:
        """The last `n` non-empty lines this launch wrote (stdout and stderr together)."""
        try:
            size = self.log_path.stat().st_size
        except FileNotFoundError:
            return []
        start = max(self.log_offset, size - _TAIL_BYTES)  # a long-lived log is not read whole
        lines = self._read_from(start).splitlines()
        if start > self.log_offset:
            lines = lines[1:]  # the first one is cut
        return [ln for ln in lines if ln.strip()][-n:]

    def wait(self, timeout_s: float) -> int | None:
        """Its exit code once it exits by itself within `timeout_s`; None if still running."""
        return self._reap(block=True, timeout_s=timeout_s)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace_s`; returns the exit code.

        Idempotent. Whatever is left in the group once the leader exited is killed too.
        """
        if self.returncode is None:
            self._signal_group(signal.SIGTERM)
            self._reap(block=True, timeout_s=grace_s)
            if self.returncode is None:
                self._signal_group(signal.SIGKILL)
                self._reap(block=True)
        self._signal_group(signal.SIGKILL)  # stragglers in the group
        if self.process.stdin is not None:  # launched with stdin_pipe
            self.process.stdin.close()
        return self.returncode

    # ------------------------------------------------------------------ internals
    def _tail(self) -> str:
        lines = self.last_lines(12)
        if not lines:
            return f" (no output; log {self.log_path})"
        shown = [ln if len(ln) <= 300 else ln[:300] + "..." for ln in lines]
        return f"; its last lines ({self.log_path}):\n  " + "\n  ".join(shown)

    def _search(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """The first complete, not yet scanned line that `pattern` matches; lines up to it (and
        it) count as scanned, so the next wait goes on from there."""
        if self._scan_offset < 0:
            self._scan_offset = self.log_offset
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._scan_offset)
                data = log.read()
        except FileNotFoundError:
            return None
        start = 0
        while (end := data.find(b"\n", start)) >= 0:  # a partial last line waits for its end
            line = data[start:end].decode(errors="replace")
            start = end + 1
            if match := pattern.search(line):
                self._scan_offset += start
                return match
        self._scan_offset += start
        return None

    def _read_from(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self, block: bool, timeout_s: float | None = None) -> int | None:
        """wait4 the child (Popen.wait would drop its CPU usage); its exit code once it ended."""
        with self._lock:
            if self.process.returncode is not None:
                return self.process.returncode
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                try:
                    pid, status, usage = os.wait4(
                        self.process.pid, 0 if deadline is None and block else os.WNOHANG
                    )
                except ChildProcessError:  # reaped elsewhere (Popen.poll)
                    return self.process.poll()
                if pid == self.process.pid:
                    self.process.returncode = os.waitstatus_to_exitcode(status)
                    self.cpu_s = usage.ru_utime + usage.ru_stime
                    return self.process.returncode
                if not block or (deadline is not None and time.monotonic() > deadline):
                    return None
                time.sleep(_POLL_S)


def launch(
    argv: list[str],
    *,
    name: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    program: list[str] | None = None,
    stdin_pipe: bool = False,
) -> Child:
    """Start `sys.executable -P *argv` (argv without the interpreter, e.g. ["-m", "deploy.cli",
    "serve", ...]) in its own process group; stdout and stderr append to `log_path`.

    `env` is the child's whole environment (default: this process's). `cwd` defaults to this
    process's: with `-P` it is never on the child's import path either way. `program` replaces
    `[sys.executable, "-P"]` for a child that is not hopscope (another venv's python, or
    `["/bin/sh", "-c"]` with a command line as argv): an external server under the same kit.
    `stdin_pipe`: the child's stdin is a pipe held open until `Child.stop` (default /dev/null).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        offset = log.tell()
        process = subprocess.Popen(
            [*(program if program is not None else [sys.executable, "-P"]), *argv],
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks taken
        )
    return Child(name, process, log_path, offset)


def wait_http_ready(child: Child, url: str, timeout_s: float, path: str = "/v1/models") -> float:
    """Poll GET URL+PATH until it answers 200 (an external OpenAI-compatible server's readiness);
    the seconds it took. LaunchError when the child exits first or `timeout_s` runs out."""
    import urllib.error
    import urllib.request

    started = time.monotonic()
    deadline = started + timeout_s
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        code = child.returncode
        if code is not None:
            raise LaunchError(f"{child.name} exited with code {code}{child._tail()}")
        if time.monotonic() > deadline:
            raise LaunchError(
                f"{child.name}: {url}{path} not ready within {timeout_s:.0f} s ({last})"
                f"{child._tail()}"
            )
        time.sleep(0.25)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for a server that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- serve as a child
@dataclass
class ServeChild:
    """`hopscope serve ... --port 0` running as a child, its front door serving."""

    child: Child
    address: str
    credentials: Any = None  # grpc.ChannelCredentials when the front door serves TLS

    def describe(self) -> dict[str, Any]:
        """Describe as a dict (MessageToDict, proto field names)."""
        from google.protobuf.json_format import MessageToDict

        from protos import hopscope_pb2 as pb
        from protos import hopscope_pb2_grpc as pb_grpc

        with _sync_channel(self.address, self.credentials) as channel:
            response = pb_grpc.TokenizerStub(channel).Describe(pb.DescribeRequest(), timeout=10)
        return MessageToDict(response, preserving_proto_field_name=True)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """Drain (SIGTERM: front door first, then the services it started); the exit code."""
        return self.child.stop(grace_s)


def start_serve(
    serve_args: list[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    cwd: Path | None = None,
    credentials: Any = None,
) -> ServeChild:
    """Start `hopscope serve SERVE_ARGS` (with `--port 0` unless a port is given), wait for its
    front-door line and then for gRPC health SERVING there. LaunchError otherwise (stopped).
    With `--tls-dir DIR` in SERVE_ARGS the front door is reached with TLS (DIR's CA and client
    certificate) unless `credentials` are given."""
    args = list(serve_args)
    credentials = credentials or _credentials_from_serve_args(args)
    if "--port" not in args:
        args += ["--port", "0"]
    argv = ["-m", "deploy.cli", "serve", *args]
    child = launch(argv, name="hopscope serve", log_path=log_path, env=env, cwd=cwd)
    deadline = time.monotonic() + timeout_s
    try:
        address = child.wait_for_line(FRONT_DOOR_RE, timeout_s).group("address")
        wait_serving(address, max(1.0, deadline - time.monotonic()), credentials)
    except TimeoutError as exc:
        child.stop()
        raise LaunchError(f"hopscope serve: {exc}{child._tail()}") from exc
    except BaseException:
        child.stop()
        raise
    return ServeChild(child, address, credentials)


def _credentials_from_serve_args(args: list[str]) -> Any:
    if "--tls-dir" not in args:
        return None
    from services.common.tls import client_credentials_from_dir

    return client_credentials_from_dir(args[args.index("--tls-dir") + 1])


def _sync_channel(address: str, credentials: Any = None) -> Any:
    from services.common.channels import create_sync_channel

    return create_sync_channel(address, credentials=credentials)


def wait_serving(address: str, timeout_s: float, credentials: Any = None) -> None:
    """Standard grpc.health.v1 Check on `address` until SERVING; TimeoutError when it runs out."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving = health_pb2.HealthCheckResponse.SERVING
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with _sync_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError(f"{address} was not SERVING within {timeout_s:.0f} s ({last})")
            try:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=min(left_s, 5.0)
                ).status
                if status == serving:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------------------- stop on a signal
class StopRequest:
    """Set by SIGINT / SIGTERM. `install()` again after a library replaced the handlers (ray.init
    installs its own SIGTERM handler, which exits)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.install()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._set)
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, signum: int, frame: object) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._event.wait(timeout_s)


def supervise(
    check_once: Callable[[], list[str]],
    stop: StopRequest,
    interval_s: float,
    report: Callable[[str], None],
) -> None:
    """Until a stop is requested: `check_once()` (restarts what died; raises when it cannot),
    then report what happened. The one supervise loop of local and Ray deployments."""
    while not stop.is_set:
        for event in check_once():
            report(event)
        stop.wait(interval_s)
