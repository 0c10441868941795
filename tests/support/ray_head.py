"""A Ray head started by ``ray start --head --block`` on loopback, for the tests of ``ray job submit`` and of
sweeps that join a running cluster, with every port it opens chosen here.

Every port is chosen here so that another Ray on the machine (another run, another test session) cannot
collide with this head on Ray's fixed default ports. The ports are chosen together, with each chosen socket
held open until all are, so no two components are handed the same one: choosing them one at a time (bind
port 0, close, bind again) can hand out one port twice, and Ray then refuses to start ("Ray component
gcs_server is trying to use a port number ... that is used by other components"). Between choosing and
Ray's own bind another process may still take a port; :func:`start_head` then starts again on new ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
_PORT_CLASH = ("used by other components", "address already in use", "failed to bind", "port is already")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all sockets held open until every one is chosen)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


def free_port() -> int:
    """One free TCP port on 127.0.0.1 (for a server that binds it right away)."""
    return free_ports(1)[0]


@dataclass
class RayHead:
    """A running head: its process (own session), temp dir, GCS port and dashboard port (0: none)."""

    proc: subprocess.Popen
    tmp: str
    gcs_port: int
    dashboard_port: int
    output: list[str] = field(default_factory=list)

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


def _launch(env: dict[str, str], dashboard: bool, num_cpus: int) -> RayHead:
    gcs, dash, *rest = free_ports(10)
    tmp = tempfile.mkdtemp(prefix="rays", dir="/tmp")
    args = ["--port", gcs, "--dashboard-agent-listen-port", rest[0], "--dashboard-agent-grpc-port", rest[1],
            "--runtime-env-agent-port", rest[2], "--metrics-export-port", rest[3], "--node-manager-port", rest[4],
            "--object-manager-port", rest[5], "--ray-client-server-port", rest[6],
            "--dashboard-port", dash]
    args += (["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"] if dashboard
             else ["--include-dashboard", "false"])
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", tmp,
                             "--disable-usage-stats", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    head = RayHead(proc, tmp, gcs, dash if dashboard else 0)
    threading.Thread(target=lambda: head.output.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    return head


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_started(head: RayHead, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    started = lambda: any("Ray runtime started" in x for x in head.output)  # noqa: E731
    while time.monotonic() < deadline and head.proc.poll() is None and not started():
        time.sleep(0.5)
    if not started():
        return False
    while head.dashboard_port and time.monotonic() < deadline and not _listening(head.dashboard_port):
        time.sleep(1)
    return not head.dashboard_port or _listening(head.dashboard_port)


def start_head(env: dict[str, str], *, dashboard: bool = False, num_cpus: int = 2, timeout_s: float = 300,
               attempts: int = 3) -> RayHead:
    """Start a head and return it once it says it started (and, with ``dashboard``, its dashboard answers);
    on a port clash, again on new ports, up to ``attempts`` times. Raises RuntimeError with its output."""
    for attempt in range(attempts):
        head = _launch(env, dashboard, num_cpus)
        if _wait_started(head, timeout_s):
            return head
        stop_head(head)
        text = "".join(head.output)
        if attempt + 1 == attempts or not any(k in text.lower() for k in _PORT_CLASH):
            raise RuntimeError(f"ray start --head did not start (attempt {attempt + 1}):\n{text[-3000:]}")
    raise AssertionError("unreachable")


def stop_head(head: RayHead) -> None:
    """Stop it (``ray start --block`` stops what it started on SIGTERM), then whatever of its session is left."""
    head.proc.terminate()
    try:
        head.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.proc.kill()
    try:
        os.killpg(head.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    shutil.rmtree(head.tmp, ignore_errors=True)
