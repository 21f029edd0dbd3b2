"""Run one vLLM server as a local process tree, with its checkpoints mounted read-only.

Why it is built this way (see DESIGN.md, measured here):
- vLLM runs three processes; it gets its own process group, and stopping sends
  SIGTERM to the whole group, then SIGKILL after a grace period.
- PR_SET_PDEATHSIG makes the engine die with the serve flow that started it, so a
  killed flow process never leaves an engine serving unseen.
- Output goes to a log file, never to the flow's pipes (a worker reading pipes kept
  by an orphaned engine would wait forever).
- Read-only: in `bind` mode the engine starts inside a private mount namespace
  (`unshare --mount`) where each checkpoint is bind-mounted and remounted
  read-only; even root gets EROFS, and the mounts vanish with the engine. Without
  the privilege to mount, `permissions` mode links the store's read-only files
  (0444 files, 0555 directories), which holds for a non-root engine only.
- Unprivileged: the engine itself runs under `setpriv` with no capabilities (bounding,
  inheritable and ambient sets emptied) and `no_new_privs`, so even as uid 0 it cannot
  remount its model mount read-write, unmount it or mount anything; only the short mount
  script before it holds CAP_SYS_ADMIN.
- Only the gateway (or anyone holding the engine's key) gets an answer from any route but
  `/health` and `/metrics`: `engine_guard/ie_engine_guard.py` is loaded into vLLM as
  middleware (vLLM's `--api-key` alone guards only `/v1`).
- It inherits no control-plane secret: Prefect's settings and credential and the
  registry's database URL are removed from its environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import psutil

from inference_endpoints.adapters.processes import alive
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.adapters.runtime.engine_guard import GUARD_DIR, GUARD_MIDDLEWARE
from inference_endpoints.core.serving_config import ENGINE_MODULE, ServingSpec

PR_SET_PDEATHSIG = 1
ENDPOINT_ENV = "IE_ENGINE_ENDPOINT_ID"
SERVE_RUN_ENV = "IE_ENGINE_SERVE_RUN"
# The engine holds no capability and can gain none (see the module docstring).
DROP_PRIVILEGES = ["setpriv", "--no-new-privs", "--bounding-set", "-all", "--inh-caps", "-all",
                   "--ambient-caps", "-all", "--"]
# Mount each (source, target) pair read-only, then become the engine.
_MOUNT_SCRIPT = r"""
set -e
while [ "$1" != "--" ]; do
  mount --bind "$1" "$2"
  mount -o remount,ro,bind "$2"
  shift 2
done
shift
exec "$@"
"""


def unprivileged_prefix() -> list[str]:
    """`setpriv …` for root (it may drop capabilities), `no_new_privs` alone for anyone else."""
    if shutil.which("setpriv") is None:
        raise RuntimeError("setpriv (util-linux) is needed to start an engine without privilege")
    return DROP_PRIVILEGES if os.geteuid() == 0 else ["setpriv", "--no-new-privs", "--"]


def engine_environment() -> dict[str, str]:
    """This process's environment minus what only the control plane may hold."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PREFECT_") and k not in ("DATABASE_URL", "IE_API_KEY")}


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def can_bind_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def readonly_mode(requested: str = "auto") -> str:
    if requested == "auto":
        return "bind" if can_bind_mount() else "permissions"
    return requested


@dataclass
class EngineProcess:
    """A started engine: the leader process, its group and where it logs."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    run_dir: Path
    host: str
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 20) -> list[str]:
        try:
            with self.log_path.open(errors="replace") as fh:
                return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
        except FileNotFoundError:
            return []

    def pids(self) -> list[int]:
        """Every live process of the engine's tree (leader and descendants)."""
        try:
            leader = psutil.Process(self.pid)
            procs = [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        # A child may exit between the listing and the status check: `_alive` asks each one alone.
        return _alive([p.pid for p in procs])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the engine's process group, SIGKILL what is left after `grace_s`."""
        tree = self.pids()
        _signal_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (self.exit_code() is None or _alive(tree)):
            time.sleep(0.05)
        if self.exit_code() is None or _alive(tree):
            _signal_group(self.pid, signal.SIGKILL)
            for pid in _alive(tree):
                _kill(pid)
            self.popen.wait(timeout=10)
        # The (empty) mount points stay: another generation of this endpoint may use them.


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if alive(pid)]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def start_engine(
    spec: ServingSpec,
    *,
    sources: dict[str, Path],
    host: str,
    port: int,
    engine_python: str,
    log_path: Path,
    run_dir: Path,
    mode: str = "auto",
    labels: EngineLabels | None = None,
) -> EngineProcess:
    """Start vLLM for `spec`. `sources` maps each mount's target to the checkpoint's real path.

    Must be called from the serve flow's main thread: the death signal follows the
    thread that started the child.
    """
    mode = readonly_mode(mode)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    engine_cmd = [*unprivileged_prefix(), engine_python, "-m", ENGINE_MODULE, *spec.args,
                  *GUARD_MIDDLEWARE, "--host", host, "--port", str(port)]
    mount_args: list[str] = []
    for mount in spec.mounts:
        target = Path(mount.target)
        source = sources[mount.target]
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "bind":
            target.mkdir(exist_ok=True)
            mount_args += [str(source), str(target)]
        else:
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(source, target_is_directory=True)
    if mode == "bind":
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               _MOUNT_SCRIPT, "mount-ro", *mount_args, "--", *engine_cmd]
    else:
        cmd = engine_cmd
    env = {**engine_environment(), **spec.env}
    env["VLLM_API_KEY"] = spec.api_key  # the engine guard requires it on every route
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(GUARD_DIR), env.get("PYTHONPATH")) if p)
    if labels is not None:  # lets `leftovers` find this engine from its environment
        env[ENDPOINT_ENV] = labels.endpoint_id
        env[SERVE_RUN_ENV] = labels.serve_run_id
    log = log_path.open("ab")
    try:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,
            preexec_fn=_die_with_parent,
            close_fds=True,
        )
    finally:
        log.close()
    return EngineProcess(popen, log_path, run_dir, host, port)


@dataclass
class LeftoverProcess:
    """An engine found running without its serve run (found by its environment label)."""

    pid: int
    port: int | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self.port else ""

    def exit_code(self) -> int | None:
        return None if _alive([self.pid]) else 0

    def tail(self, lines: int = 20) -> list[str]:
        return []

    def stop(self, grace_s: float = 10.0) -> None:
        tree = [self.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        _signal_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(self.pid, signal.SIGKILL)
        for pid in _alive(tree):
            _kill(pid)


class ProcessRuntime:
    """Engines as local process trees (the default on CPU hosts and inside GPU pods)."""

    kind = "process"

    def __init__(self, engine_python: str, run_dir: Path, mode: str = "auto"):
        self.engine_python = engine_python
        self.run_dir = Path(run_dir)
        self.mode = mode

    def model_root(self, endpoint_id: str) -> str:
        return str(self.run_dir / endpoint_id / "models")

    def start(
        self,
        spec: ServingSpec,
        *,
        sources: dict[str, Path],
        host: str,
        port: int,
        labels: EngineLabels,
        log_path: Path,
    ) -> EngineProcess:
        return start_engine(spec, sources=sources, host=host, port=port,
                            engine_python=self.engine_python, log_path=log_path,
                            run_dir=self.run_dir / labels.endpoint_id, mode=self.mode,
                            labels=labels)

    def leftovers(self, endpoint_id: str) -> list[LeftoverProcess]:
        found = []
        for proc in psutil.process_iter(["pid", "ppid"]):
            try:
                if proc.environ().get(ENDPOINT_ENV) != endpoint_id:
                    continue
                parent = psutil.Process(proc.info["ppid"]) if proc.info["ppid"] else None
                if parent is not None and parent.environ().get(ENDPOINT_ENV) == endpoint_id:
                    continue  # only the tree's leader
                ports = [c.laddr.port for c in proc.net_connections(kind="tcp")
                         if c.status == psutil.CONN_LISTEN]
                found.append(LeftoverProcess(proc.pid, ports[0] if ports else None))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found
