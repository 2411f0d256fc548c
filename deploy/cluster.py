"""A local multi-node Ray cluster on one machine (`hopscope cluster up|down|status`).

Each node gets its own loopback address (127.R.S.2, .3, ...; DESIGN.md, "Ray on one machine"),
a `hopscope-node=a|b|c...` label, its own temp dir and explicit free ports, and runs as
`ray start --block` in its own process group, so `down` stops exactly what `up` started (never
`ray stop`, which would stop every Ray on the machine). Token auth is on for every process;
`ray_tools_env` is what Ray's own CLI and dashboard need to reach the cluster (`cluster env`).
The cluster is recorded in ~/.hopscope/clusters/ with its link settings, which `serve` reads to
put a relay (deploy/relay.py) on every cross-node TCP edge.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy.lifecycle import START_TIMEOUT_S

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
OBJECT_STORE_BYTES = 100 * 1024 * 1024
READY_MARK = "Ray runtime started"


class ClusterError(RuntimeError):
    """The cluster could not be started, found or stopped; the message says why."""


@dataclass(slots=True)
class LinkSettings:
    """Emulated link between nodes: one-way delay and bandwidth cap (0 = none)."""

    delay_ms: float = 0.0
    rate_mbit: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.rate_mbit < 0:
            raise ValueError("delay_ms and rate_mbit must be >= 0")

    @property
    def is_shaped(self) -> bool:
        return self.delay_ms > 0 or self.rate_mbit > 0

    @property
    def mechanism(self) -> str:
        """What produces the shaping: this kernel has no netem, so a relay on the path."""
        return "relay" if self.is_shaped else ""


@dataclass(slots=True)
class NodeRecord:
    ip: str
    label: str
    pid: int  # `ray start --block`, leader of the node's process group
    temp_dir: str
    log_path: str


@dataclass(slots=True)
class ClusterRecord:
    address: str  # head GCS "IP:PORT"
    nodes: list[NodeRecord]
    temp_dir: str
    link: LinkSettings = field(default_factory=LinkSettings)
    created_at: float = 0.0
    dashboard_url: str = ""  # http://HEAD_IP:PORT, "" when started without the dashboard

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterRecord:
        data = json.loads(text)
        nodes = [NodeRecord(**n) for n in data.pop("nodes")]
        link = LinkSettings(**data.pop("link"))
        return cls(nodes=nodes, link=link, **data)


# ---------------------------------------------------------------------------- environment
def ray_env() -> dict[str, str]:
    """The environment of every Ray process hopscope starts (token auth, see DESIGN.md).
    PYTHONSAFEPATH (= `python -P`): no Ray process, workers included, imports from its cwd."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONSAFEPATH": "1"}


def prepare_ray_driver() -> None:
    """Call before `import ray` in a driver: Ray reads RAY_AUTH_MODE when it is imported."""
    ensure_auth_token()
    os.environ["RAY_AUTH_MODE"] = "token"


def auth_token_path() -> Path:
    """Where `ray get-auth-token --generate` writes the token every hopscope Ray process uses."""
    return Path.home() / ".ray" / "auth_token"


def ray_tools_env(record: ClusterRecord) -> dict[str, str]:
    """What `ray status`, `ray list actors` (the state API) and a driver need to reach `record`'s
    cluster: its GCS address and token auth, with the token's file (never the token itself)."""
    return {
        "RAY_ADDRESS": record.address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(auth_token_path()),
    }


def ensure_auth_token() -> None:
    if auth_token_path().exists():
        return
    result = subprocess.run(
        [_ray_bin(), "get-auth-token", "--generate"],
        check=False,
        capture_output=True,
        text=True,
        env=ray_env(),
    )
    if result.returncode != 0:
        raise ClusterError(f"could not create a Ray auth token: {result.stderr.strip()}")


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def state_dir() -> Path:
    return Path.home() / ".hopscope" / "clusters"


# ---------------------------------------------------------------------------- records
def _record_path(address: str) -> Path:
    return state_dir() / f"{address.replace(':', '_')}.json"


def list_records() -> list[ClusterRecord]:
    if not state_dir().is_dir():
        return []
    return [ClusterRecord.from_json(p.read_text()) for p in sorted(state_dir().glob("*.json"))]


def find_record(address: str) -> ClusterRecord | None:
    path = _record_path(address)
    return ClusterRecord.from_json(path.read_text()) if path.exists() else None


def is_node_alive(node: NodeRecord) -> bool:
    try:
        os.killpg(node.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# ---------------------------------------------------------------------------- up / down
def start_cluster(
    num_nodes: int,
    link: LinkSettings | None = None,
    *,
    is_recorded: bool = True,
    has_dashboard: bool = False,
) -> ClusterRecord:
    """Start `num_nodes` Ray nodes labelled a, b, c...; returns once all have joined (and the
    dashboard answers, with `has_dashboard`: `ray list` and the state API go through it)."""
    if not 1 <= num_nodes <= 26:
        raise ClusterError(f"--nodes must be between 1 and 26, got {num_nodes}")
    prepare_ray_driver()
    ips = _pick_ips(num_nodes)
    temp_dir = tempfile.mkdtemp(prefix="hs-", dir="/tmp")  # short: Ray's socket paths live in it
    gcs_port = _free_port(ips[0])
    record = ClusterRecord(
        f"{ips[0]}:{gcs_port}", [], temp_dir, link or LinkSettings(), time.time()
    )
    try:
        head = _start_node(record, ips[0], "a", head_port=gcs_port, has_dashboard=has_dashboard)
        record.nodes.append(head)
        _wait_ready(record.nodes[:1])
        if has_dashboard:
            _wait_dashboard(record.dashboard_url)
        for i, ip in enumerate(ips[1:], start=1):  # one at a time: the GCS registers each
            _join(record, ip, string.ascii_lowercase[i])
    except BaseException:
        stop_cluster(record)
        raise
    if is_recorded:
        state_dir().mkdir(parents=True, exist_ok=True)
        _record_path(record.address).write_text(record.to_json())
    return record


def stop_cluster(record: ClusterRecord) -> None:
    """Stop the recorded process groups (workers first), remove temp dir and state file."""
    for node in reversed(record.nodes):
        _signal_group(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(is_node_alive(n) for n in record.nodes):
        _reap(record.nodes)
        time.sleep(0.2)
    for node in record.nodes:
        _signal_group(node.pid, signal.SIGKILL)  # raylet and GCS can outlive a SIGTERM
    _reap(record.nodes)
    shutil.rmtree(record.temp_dir, ignore_errors=True)
    _record_path(record.address).unlink(missing_ok=True)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(nodes: list[NodeRecord]) -> None:
    for node in nodes:  # our own children (when up and down run in one process)
        try:
            os.waitpid(node.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _join(record: ClusterRecord, ip: str, label: str) -> None:
    """Start a worker node and wait until it has joined; one that exits before joining is
    started once more (a busy head's GCS answered a joining node `Deadline Exceeded` once in CI,
    and `ray start` gave up)."""
    node = _start_node(record, ip, label)
    record.nodes.append(node)
    try:
        _wait_ready([node])
        return
    except ClusterError as exc:
        if not _has_exited(node.pid):
            raise  # still running but not joined in time: waiting longer will not help
        log.warning("%s; starting it again", exc)
    _signal_group(node.pid, signal.SIGKILL)  # whatever it left in its process group
    _reap([node])
    record.nodes.remove(node)
    node = _start_node(record, ip, label, attempt=2)
    record.nodes.append(node)
    _wait_ready([node])


def _start_node(
    record: ClusterRecord,
    ip: str,
    label: str,
    head_port: int = 0,
    attempt: int = 1,
    has_dashboard: bool = False,
) -> NodeRecord:
    node_dir = Path(record.temp_dir) / (label if attempt == 1 else f"{label}-{attempt}")
    node_dir.mkdir(parents=True)
    args = node_args(record.address, ip, label, node_dir, head_port, has_dashboard)
    if has_dashboard:
        record.dashboard_url = f"http://{ip}:{args[args.index('--dashboard-port') + 1]}"
    log_path = node_dir / "ray-start.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args,
            env=ray_env(),
            cwd=node_dir,  # never the user's directory (its workers start there)
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` stops exactly this node
        )
    return NodeRecord(ip, label, process.pid, str(node_dir), str(log_path))


def node_args(
    address: str,
    ip: str,
    label: str,
    node_dir: Path,
    head_port: int = 0,
    has_dashboard: bool = False,
) -> list[str]:
    """`ray start` for one node: every port on the node's own (loopback) address; the head's
    dashboard (`has_dashboard`) bound to that address too."""
    args = [
        _ray_bin(),
        "start",
        "--block",
        "--node-ip-address",
        ip,
        "--labels",
        f"hopscope-node={label}",
    ]
    args += ["--temp-dir", str(node_dir), "--num-cpus", "1", "--disable-usage-stats"]
    args += ["--object-store-memory", str(OBJECT_STORE_BYTES)]
    flags = [
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
    ]
    if head_port:
        flags += ["--ray-client-server-port", "--dashboard-port"]
    # distinct: ports picked one after another can repeat, and `ray start` then refuses ("port
    # number N that is used by other components"), as the head once did in CI
    ports = free_ports(ip, len(flags), taken={head_port})
    for flag, port in zip(flags, ports, strict=True):
        args += [flag, str(port)]
    if head_port:
        args += ["--head", "--port", str(head_port)]
        args += ["--include-dashboard", str(has_dashboard).lower(), "--dashboard-host", ip]
    else:
        args += ["--address", address]
    return args


def _wait_ready(nodes: list[NodeRecord], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    while pending:
        for node in list(pending):
            text = Path(node.log_path).read_text(errors="replace")
            if READY_MARK in text:
                pending.remove(node)
            elif _has_exited(node.pid):
                raise ClusterError(f"node {node.label} ({node.ip}) failed to start: {_tail(text)}")
        if pending and time.monotonic() > deadline:
            labels = ", ".join(n.label for n in pending)
            raise ClusterError(f"nodes {labels} did not start within {timeout_s:.0f} s")
        time.sleep(0.2)


def _wait_dashboard(url: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until the dashboard answers HTTP at all (with token auth it may answer 401: it is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ClusterError(f"the dashboard at {url} did not answer: {exc}") from None
        time.sleep(0.5)


def _has_exited(pid: int) -> bool:
    try:
        exited_pid, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: it exited if the pid is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return exited_pid == pid


def _tail(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1].strip()


def _pick_ips(num_nodes: int) -> list[str]:
    """127.R.S.2.. on a /24 no recorded cluster uses, so parallel clusters never share an IP."""
    used = {n.ip.rsplit(".", 1)[0] for r in list_records() for n in r.nodes}
    while True:
        subnet = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        if subnet not in used:
            return [f"{subnet}.{2 + i}" for i in range(num_nodes)]


def _free_port(ip: str) -> int:
    return free_ports(ip, 1)[0]


def free_ports(ip: str, count: int, taken: set[int] | None = None) -> list[int]:
    """`count` distinct free ports on `ip`, none in `taken`: the sockets stay bound until all
    are picked, so the kernel cannot hand one out twice."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind((ip, 0))
            port = int(sock.getsockname()[1])
            if port not in (taken or set()) and port not in ports:
                ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()
