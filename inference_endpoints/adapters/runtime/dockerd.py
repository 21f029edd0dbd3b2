"""A local Docker engine for hosts that have `dockerd` installed but none running.

Measured here (DESIGN.md): `dockerd` runs in this kind of machine with the vfs storage
driver, no bridge and no iptables; containers use the host network. Every path the
daemon owns (data root, exec root with its managed containerd, socket, pid file) lives
under one data directory, so several daemons can share a machine. It is started in its
own session with output to a log file, recorded by PID, and stopped by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import psutil
import requests
from docker.errors import DockerException

from inference_endpoints.adapters.processes import alive

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# A Unix socket path is limited to 107 bytes; containerd's socket sits deepest.
_MAX_SOCKET_PATH = 100
_MNT_DETACH = 2


def dockerd_installed() -> bool:
    return shutil.which("dockerd") is not None


def ping(url: str, timeout_s: float = 2.0) -> bool:
    """Whether a Docker daemon answers at `url`."""
    try:
        client = docker.DockerClient(base_url=url, timeout=max(1, int(timeout_s)))
    except (DockerException, requests.RequestException):
        return False
    try:
        return bool(client.ping())
    except (DockerException, requests.RequestException):
        return False
    finally:
        client.close()


@dataclass(frozen=True)
class DockerPaths:
    data_dir: Path

    @property
    def data_root(self) -> Path:
        return self.data_dir / "docker"

    @property
    def exec_root(self) -> Path:
        return self.data_dir / "docker-run"

    @property
    def socket(self) -> Path:
        return self.data_dir / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "docker.pid"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


@dataclass
class DockerDaemon:
    """A Docker daemon to talk to; `pid` is set when it is one of ours (stoppable by PID)."""

    url: str
    pid: int | None
    started: bool  # True when this call started it, False when one already answered
    log_path: Path | None = None
    data_dir: Path | None = None

    def client(self, timeout_s: int = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout_s)

    def stop(self, grace_s: float = 30.0, removals_s: float = 120.0) -> None:
        """SIGTERM dockerd (it stops its containers and its containerd), SIGKILL after `grace_s`.

        Only a daemon we own (known PID) is stopped; a system daemon is left alone. Container
        removals still in progress (auto-removal of stopped engines, ~30 s each on vfs) are
        awaited first: interrupted, they leave the container's copy of the image on disk.
        """
        if not alive(self.pid):
            self._reap()
            return
        assert self.pid is not None
        self._await_removals(removals_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._reap()
        for pid in self._stragglers():  # containerd or shims of a daemon that had to be killed
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        if self.data_dir is not None:  # dockerd leaves its netns mount behind; it blocks rm -r
            unmount_under(DockerPaths(self.data_dir).exec_root)

    def _await_removals(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            client = docker.DockerClient(base_url=self.url, timeout=10)
        except (DockerException, requests.RequestException):
            return
        try:
            while time.monotonic() < deadline:
                if not client.containers.list(all=True, sparse=True, filters={"status": "removing"}):
                    return
                time.sleep(0.5)
        except (DockerException, requests.RequestException):
            return
        finally:
            client.close()

    def _reap(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)

    def _stragglers(self) -> list[int]:
        """Processes started for this daemon (their command lines name its exec root)."""
        if self.data_dir is None:
            return []
        marker = str(DockerPaths(self.data_dir).exec_root)
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc.info["pid"])
        return found


def unmount_under(root: Path) -> list[str]:
    """Lazily unmount whatever is still mounted below `root` (deepest first)."""
    prefix = str(root.resolve())
    with open("/proc/mounts") as fh:
        points = [line.split()[1] for line in fh]
    mine = sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), reverse=True)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for point in mine:
        libc.umount2(point.encode(), _MNT_DETACH)
    return mine


def dockerd_command(paths: DockerPaths, storage_driver: str = "vfs") -> list[str]:
    return [
        "dockerd",
        "--data-root", str(paths.data_root),
        "--exec-root", str(paths.exec_root),
        "--pidfile", str(paths.pidfile),
        "--host", paths.url,
        "--storage-driver", storage_driver,
        "--iptables=false",
        "--bridge=none",
    ]


def start_dockerd(data_dir: Path, log_dir: Path, timeout_s: float = 60.0,
                  storage_driver: str = "vfs") -> DockerDaemon:
    """Return a daemon that answers: ours if it already runs, else a new one under `data_dir`.

    `vfs` works everywhere (also inside containers) but copies the whole image for each
    container (~50 s and 3.6 GB for the vLLM-CPU image here); `overlay2` is near-instant
    where the kernel allows it. Images are stored per driver.

    Raises FileNotFoundError when `dockerd` is not installed, TimeoutError/RuntimeError
    when it does not come up (its log file says why).
    """
    data_dir = Path(data_dir).resolve()
    paths = DockerPaths(data_dir)
    if ping(paths.url):
        return DockerDaemon(paths.url, _read_pid(paths.pidfile), False, None, data_dir)
    if not dockerd_installed():
        raise FileNotFoundError("dockerd is not installed (apt-get install docker.io)")
    containerd_sock = paths.exec_root / "containerd" / "containerd.sock"
    if len(str(containerd_sock)) > _MAX_SOCKET_PATH:
        raise ValueError(f"data directory {data_dir} is too long for Docker's Unix sockets")
    stale = _read_pid(paths.pidfile)
    if alive(stale):
        raise RuntimeError(f"dockerd (pid {stale}) owns {data_dir} but does not answer at {paths.url}")
    paths.pidfile.unlink(missing_ok=True)
    paths.data_root.mkdir(parents=True, exist_ok=True)
    paths.exec_root.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "dockerd.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(dockerd_command(paths, storage_driver), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    daemon = DockerDaemon(paths.url, proc.pid, True, log_path, data_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {proc.returncode}; see {log_path}")
        if ping(paths.url, timeout_s=1):
            return daemon
        time.sleep(0.25)
    daemon.stop(grace_s=5)
    raise TimeoutError(f"dockerd did not answer within {timeout_s:.0f} s; see {log_path}")

