"""What a test session left behind (engines, serve runs, stack processes, containers, mounts), found before any cleanup.

The e2e teardown records these first, then cleans them up, then fails the session if it
recorded anything: killing first and asserting afterwards could never fail. Everything is
recognised by the session's data directory (engines' and flows' command lines and
environments, containers' mounts, mount points), never by process name alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

MOUNTINFO = Path("/proc/self/mountinfo")
_MNT_DETACH = 2
FLOW_RUN_MARKERS = ("prefect.engine", "flow-run execute")  # how a process worker starts a flow run
DATA_DIR_ENV = ("IE_DATA_DIR", "PREFECT_HOME")


def docker_cache_dir() -> Path:
    """Where the e2e Docker tests keep their dockerd (data root, exec root, socket)."""
    return Path(os.environ.get("IE_DOCKER_CACHE", Path.home() / ".cache" / "inference-endpoints" / "dockerd"))


@dataclass(frozen=True)
class Leftover:
    kind: str  # engine, serve run, stack process, container, mount, dockerd netns mount
    what: str
    pid: int | None = None
    container_id: str | None = None
    mount: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}"


def _under(path: str, root: Path) -> bool:
    prefix = str(root)
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _cmdline(proc: psutil.Process) -> str:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return ""
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _environ_points_at(proc: psutil.Process, data_dir: Path) -> bool:
    try:
        env = proc.environ()
    except psutil.Error:
        return False
    return any(_under(env.get(name, ""), data_dir) for name in DATA_DIR_ENV)


def engine_processes(data_dir: Path) -> list[psutil.Process]:
    """vLLM processes started for this data directory (their log and model paths name it)."""
    found = []
    for proc in psutil.process_iter():
        cmd = _cmdline(proc)
        if str(data_dir) in cmd and "vllm" in cmd and proc.pid != os.getpid():
            found.append(proc)
    return found


def flow_run_processes(data_dir: Path) -> list[psutil.Process]:
    """Flow-run processes (`python -m prefect.engine`, children of the workers) of this data directory."""
    found = []
    for proc in psutil.process_iter():
        cmd = _cmdline(proc)
        if proc.pid == os.getpid() or not any(marker in cmd for marker in FLOW_RUN_MARKERS):
            continue
        if str(data_dir) in cmd or _environ_points_at(proc, data_dir):
            found.append(proc)
    return found


def mounts_under(root: Path, mountinfo: Path = MOUNTINFO) -> list[str]:
    """Mount points at or below `root` in this mount namespace, deepest first."""
    points = []
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].encode().decode("unicode_escape")  # \040 for spaces, etc.
            if _under(point, root):
                points.append(point)
    return sorted(points, reverse=True)


def dockerd_alive(exec_root: Path) -> bool:
    return any(str(exec_root) in _cmdline(p) and "dockerd" in _cmdline(p) for p in psutil.process_iter())


def containers(docker_url: str, data_dir: Path, endpoint_ids: Collection[str]) -> list[Leftover]:
    """The project's containers on this daemon that belong to the session (by endpoint or mount)."""
    from inference_endpoints.adapters.runtime.docker import ENDPOINT_LABEL, MANAGED_LABEL
    from inference_endpoints.adapters.runtime.dockerd import ping

    if not ping(docker_url):
        return []
    import docker

    client = docker.DockerClient(base_url=docker_url, timeout=30)
    try:
        found = []
        for c in client.containers.list(all=True, filters={"label": f"{MANAGED_LABEL}=true"},
                                        ignore_removed=True):
            mounts = [m.get("Source", "") for m in c.attrs.get("Mounts", [])]
            if c.labels.get(ENDPOINT_LABEL) in endpoint_ids or any(_under(m, data_dir) for m in mounts):
                found.append(Leftover("container", f"{c.name} ({c.status})", container_id=c.id))
        return found
    finally:
        client.close()


def find_leftovers(data_dir: Path, *, stack_pids: Iterable[int] = (), docker_dir: Path | None = None,
                   endpoint_ids: Collection[str] = ()) -> list[Leftover]:
    """Everything of the session's that is still there, as it is now (nothing is touched)."""
    data_dir = Path(data_dir).resolve()
    found: list[Leftover] = []
    for pid in stack_pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(Leftover("stack process", f"{pid} {_cmdline(proc)[:200]}", pid=pid))
    for kind, procs in (("engine", engine_processes(data_dir)), ("serve run", flow_run_processes(data_dir))):
        found += [Leftover(kind, f"{p.pid} {_cmdline(p)[:200]}", pid=p.pid) for p in procs
                  if p.pid not in {f.pid for f in found}]
    found += [Leftover("mount", point, mount=point) for point in mounts_under(data_dir)]
    if docker_dir is not None:
        docker_dir = docker_dir.resolve()
        found += containers(f"unix://{docker_dir / 'docker.sock'}", data_dir, endpoint_ids)
        exec_root = docker_dir / "docker-run"
        if not dockerd_alive(exec_root):  # a stopped daemon's netns mount blocks `rm -r`
            found += [Leftover("dockerd netns mount", p, mount=p) for p in mounts_under(exec_root)]
    return found


def settled_leftovers(data_dir: Path, *, settle_s: float = 15.0, **kwargs: object) -> list[Leftover]:
    """`find_leftovers` once what is already on its way out has had `settle_s` to go."""
    deadline = time.monotonic() + settle_s
    while True:
        found = find_leftovers(data_dir, **kwargs)  # type: ignore[arg-type]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def clean_up(leftovers: Iterable[Leftover], docker_dir: Path | None = None) -> None:
    """Kill by PID, remove containers by id, unmount by path: never by name."""
    items = list(leftovers)
    for item in items:
        if item.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(item.pid, signal.SIGKILL)
    for item in items:
        if item.pid is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(item.pid).wait(10)
    ids = [i.container_id for i in items if i.container_id]
    if ids and docker_dir is not None:
        import docker

        client = docker.DockerClient(base_url=f"unix://{docker_dir.resolve() / 'docker.sock'}", timeout=120)
        try:
            for cid in ids:
                with contextlib.suppress(docker.errors.DockerException):
                    client.containers.get(cid).remove(force=True)
        finally:
            client.close()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for point in sorted((i.mount for i in items if i.mount), reverse=True):
        libc.umount2(point.encode(), _MNT_DETACH)


def fail_on(leftovers: Iterable[Leftover]) -> None:
    """The teardown's verdict: AssertionError naming everything the session left behind."""
    items = list(leftovers)
    assert not items, ("the session left these behind (recorded before cleanup, then cleaned up):\n  "
                       + "\n  ".join(str(i) for i in items))


def check_leftovers(data_dir: Path, *, stack_pids: Iterable[int] = (), endpoint_ids: Collection[str] = (),
                    docker_dir: Path | None = None, settle_s: float = 15.0) -> None:
    """The e2e teardown's last step: record, clean up (and the data dir), then fail if anything was left.

    tests/test_leftovers.py calls it on a deliberately leaked engine to prove it fails.
    """
    found = settled_leftovers(data_dir, settle_s=settle_s, stack_pids=stack_pids, docker_dir=docker_dir,
                              endpoint_ids=endpoint_ids)
    print(f"\n[leftovers] {len(found)} found under {data_dir}" + "".join(f"\n  {f}" for f in found))
    clean_up(found, docker_dir)
    if not os.environ.get("IE_KEEP_TEST_DATA"):
        shutil.rmtree(data_dir, ignore_errors=True)
    fail_on(found)
