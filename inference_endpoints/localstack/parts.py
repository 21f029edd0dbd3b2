"""The local stack's parts as processes: what each one's command is, and who holds a port.

A process is the stack's when its command line contains the part's identity and the
stack's data directory appears in that command line or in its environment (IE_DATA_DIR).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from inference_endpoints.adapters.processes import alive

GATEWAY_MODULE = "inference_endpoints.adapters.gateway.server"
CONSOLE_MODULE = "inference_endpoints.adapters.console.server"
DISCOVERY_MODULE = "inference_endpoints.adapters.metrics.discovery"
# What a part's command line contains; with this data directory in it or in its environment
# (IE_DATA_DIR), the process is the stack's. Stop order: workers first (no reconcile restarts
# one meanwhile), the Prefect server last.
IDENTITY: dict[str, tuple[str, tuple[str, ...]]] = {
    "console_pid": ("console", (CONSOLE_MODULE,)),
    "gateway_pid": ("gateway", (GATEWAY_MODULE,)),
    "prometheus_pid": ("Prometheus", ("--config.file=", "prometheus.yml")),
    "discovery_pid": ("service discovery", (DISCOVERY_MODULE,)),
    "prefect_pid": ("Prefect server", ("prefect server start",)),
}


def worker_identity(pool: str) -> tuple[str, ...]:
    return ("prefect worker start", f"--pool {pool}")


@dataclass(frozen=True)
class Part:
    """One long-running process of the stack that listens on a port."""

    attr: str  # its PID's field in StackState (and its key in IDENTITY)
    host: str
    port: int
    port_env: str  # the setting that moves it to another port
    argv: list[str]
    log_name: str
    healthy: Callable[[], bool]
    start_timeout_s: float
    prepare: Callable[[], None] | None = None

    @property
    def label(self) -> str:
        return IDENTITY[self.attr][0]

    @property
    def needles(self) -> tuple[str, ...]:
        return IDENTITY[self.attr][1]


def answers(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port (as a server binding it would see it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_holder(port: int) -> int | None:
    """PID of the process listening on `port`, if this user may see it."""
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


def describe(pid: int) -> str:
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {pid}"
    return f"pid {pid} ({cmd[:90]}{'…' if len(cmd) > 90 else ''})" if cmd else f"pid {pid}"


def group_leader(pid: int | None) -> int | None:
    """The process group leader of `pid` (the stack starts every part as a group leader)."""
    if not pid:
        return None
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def is_ours(pid: int | None, needles: tuple[str, ...], data_dir: Path) -> bool:
    """`pid` is alive and runs the part's command (`needles`) for this data directory."""
    if not alive(pid):
        return False
    assert pid is not None
    try:
        proc = psutil.Process(pid)
        cmd = " ".join(proc.cmdline())
        if not all(n in cmd for n in needles):
            return False
        return f"{data_dir}/" in cmd or proc.environ().get("IE_DATA_DIR") == str(data_dir)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
