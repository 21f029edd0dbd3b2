"""The local stack: a Prefect server, one process worker per work pool, blocks and deployments.

Every process is started in its own session with output to a log file under the
data directory, recorded by PID in `run/stack.json` the moment it is spawned, and
stopped by PID (process group), never by name. A recorded PID counts as the stack's
only while that process still runs the part's command for this data directory, so a
PID reused by another program after a reboot is never reused or stopped.

Starting is idempotent: a part that is the stack's own, alive and answering is reused;
one that is missing, dead or not answering is (re)started. A port held by a process
that is not the stack's is reported (`PortTaken`) instead of being fought over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from inference_endpoints.adapters.processes import alive, log_tail, spawn, stop_group
from inference_endpoints.localstack.parts import (
    CONSOLE_MODULE,
    DISCOVERY_MODULE,
    GATEWAY_MODULE,
    IDENTITY,
    Part,
    answers,
    describe,
    group_leader,
    is_ours,
    port_holder,
    port_in_use,
    worker_identity,
)
from inference_endpoints.localstack.prefect_auth import CLIENT_ENV, SERVER_ENV, prefect_auth_string
from inference_endpoints.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parents[2]
ENGINE_POOL = "cpu-dev"  # the pool whose engines `up --runtime docker` moves into containers


def engine_python_default() -> str:
    """The interpreter with vLLM: `.venv-engine` next to the project, else `IE_ENGINE_PYTHON`."""
    explicit = os.environ.get("IE_ENGINE_PYTHON")
    if explicit:
        return explicit
    candidate = PROJECT_DIR / ".venv-engine" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


class StackError(RuntimeError):
    """A part of the local stack could not be started; the message is one line for the user."""


class PortTaken(StackError):
    """A part's port is held by a process that is not the stack's."""


@dataclass
class StackState:
    prefect_url: str
    prefect_pid: int | None = None
    workers: dict[str, int] = field(default_factory=dict)
    gateway_pid: int | None = None
    discovery_pid: int | None = None
    prometheus_pid: int | None = None
    prometheus_url: str | None = None
    console_pid: int | None = None
    dockerd_pid: int | None = None  # only a daemon `use_docker` started (it is ours to stop)
    dockerd_url: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def pids(self) -> list[int]:
        return [p for p in (self.prefect_pid, self.gateway_pid, self.discovery_pid, self.prometheus_pid,
                            self.console_pid, self.dockerd_pid, *self.workers.values()) if p]


class LocalStack:
    def __init__(self, settings: Settings, *, worker_env: dict[str, str] | None = None):
        self.settings = settings
        self.worker_env = worker_env or {}
        self.state_path = settings.run_dir / "stack.json"
        self.prefect_url = f"http://127.0.0.1:{settings.prefect_port}/api"
        # What this object started, and what it found running and kept: `up` reports both.
        self.started: list[str] = []
        self.reused: list[str] = []

    # ---- environment --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """What every process of the stack (and any client of it) needs."""
        env = dict(os.environ)
        env.update({
            "PREFECT_API_URL": self.prefect_url,
            "PREFECT_HOME": str(self.settings.data_dir / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.settings.prefect_port),
            "PREFECT_UI_ENABLED": env.get("PREFECT_UI_ENABLED", "true"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            # Flow runs send heartbeats; an automation crashes runs whose host went silent.
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
            "PREFECT_LOGGING_LEVEL": env.get("PREFECT_LOGGING_LEVEL", "INFO"),
            "IE_DATA_DIR": str(self.settings.data_dir),
            "IE_PROJECT_DIR": str(PROJECT_DIR),
            "PYTHONUNBUFFERED": "1",
        })
        if self.settings.database_url:
            env["DATABASE_URL"] = self.settings.database_url
        auth = prefect_auth_string(self.settings)  # the server requires it; every client sends it
        env[CLIENT_ENV] = env[SERVER_ENV] = auth
        env.update(self.worker_env)
        return env

    # ---- state: read, and updated under a lock the moment something is spawned --------------

    def read_state(self) -> StackState | None:
        if not self.state_path.exists():
            return None
        return StackState.from_json(self.state_path.read_text())

    def write_state(self, state: StackState) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _updating(self) -> Iterator[StackState]:
        """Read-modify-write of stack.json, serialised with other processes (the reconcile flow)."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with (self.state_path.parent / "stack.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read_state() or StackState(self.prefect_url)
            yield state
            self.write_state(state)

    def _record(self, attr: str, pid: int | None) -> None:
        with self._updating() as state:
            setattr(state, attr, pid)

    def _record_worker(self, pool: str, pid: int | None) -> None:
        with self._updating() as state:
            if pid is None:
                state.workers.pop(pool, None)
            else:
                state.workers[pool] = pid

    def _ours(self, pid: int | None, needles: tuple[str, ...]) -> bool:
        return is_ours(pid, needles, self.settings.data_dir)

    # ---- starting one part --------------------------------------------------------------

    def _ensure(self, part: Part) -> int:
        """Reuse the part if it is ours, alive and answering; otherwise (re)start it."""
        state = self.read_state()
        pid = getattr(state, part.attr) if state else None
        if pid and self._ours(pid, part.needles):
            if part.healthy():
                self.reused.append(f"{part.label} (pid {pid})")
                return int(pid)
            stop_group(pid)  # ours but not answering: start it again
        if port_in_use(part.host, part.port):
            holder = port_holder(part.port)
            leader = group_leader(holder)
            if leader is not None and self._ours(leader, part.needles):
                # Ours, though stack.json lost it (an older version, or a crash while writing).
                self._record(part.attr, leader)
                if part.healthy():
                    self.reused.append(f"{part.label} (pid {leader})")
                    return leader
                stop_group(leader)
            else:
                who = describe(holder) if holder else "another process"
                raise PortTaken(
                    f"port {part.port} ({part.label}) is taken by {who}, not by this stack: "
                    f"stop it, or set {part.port_env} to a free port")
        if part.prepare is not None:
            part.prepare()
        pid = self._spawn(part.argv, part.log_name)
        self._record(part.attr, pid)
        self._wait_healthy(part, pid)
        self.started.append(f"{part.label} (pid {pid})")
        return pid

    def _wait_healthy(self, part: Part, pid: int) -> None:
        log = self.settings.log_dir / part.log_name
        deadline = time.monotonic() + part.start_timeout_s
        while time.monotonic() < deadline:
            if part.healthy():
                return
            if not alive(pid):
                last = log_tail(log, 1).strip()
                raise StackError(f"{part.label} exited at start ({last or 'no output'}); see {log}")
            time.sleep(0.3)
        raise StackError(f"{part.label} not answering after {part.start_timeout_s:.0f} s; see {log}")

    def _spawn(self, args: list[str], log_name: str) -> int:
        return spawn(args, self.settings.log_dir / log_name, self.env(), cwd=PROJECT_DIR)

    # ---- Prefect server -------------------------------------------------------------------

    def prefect_healthy(self) -> bool:
        return answers(f"{self.prefect_url}/health")

    def _prefect_part(self, timeout_s: float) -> Part:
        port = self.settings.prefect_port

        def prepare() -> None:
            (self.settings.data_dir / "prefect").mkdir(parents=True, exist_ok=True)

        return Part("prefect_pid", "127.0.0.1", port, "IE_PREFECT_PORT",
                    [sys.executable, "-m", "prefect", "server", "start",
                     "--host", "127.0.0.1", "--port", str(port)],
                    "prefect-server.log", self.prefect_healthy, timeout_s, prepare)

    def start_prefect(self, timeout_s: float = 90) -> int:
        return self._ensure(self._prefect_part(timeout_s))

    # ---- workers ------------------------------------------------------------------------

    def start_worker(self, pool: str) -> int:
        state = self.read_state()
        pid = state.workers.get(pool) if state else None
        if pid and self._ours(pid, worker_identity(pool)):
            self.reused.append(f"worker {pool} (pid {pid})")
            return pid
        pid = self._spawn([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                           "--type", "process", "--name", f"{pool}-{os.uname().nodename}"],
                          f"worker-{pool}.log")
        self._record_worker(pool, pid)
        self.started.append(f"worker {pool} (pid {pid})")
        return pid

    def stop_worker(self, pool: str) -> None:
        state = self.read_state()
        pid = state.workers.get(pool) if state else None
        if pid and self._ours(pid, worker_identity(pool)):
            stop_group(pid)
        self._record_worker(pool, None)

    # ---- gateway ------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"

    def gateway_healthy(self) -> bool:
        return answers(f"{self.gateway_url}/_gateway/health")

    def start_gateway(self, timeout_s: float = 30) -> int:
        return self._ensure(Part(
            "gateway_pid", self.settings.gateway_host, self.settings.gateway_port, "IE_GATEWAY_PORT",
            [sys.executable, "-m", GATEWAY_MODULE], "gateway.log", self.gateway_healthy, timeout_s))

    # ---- console and REST API -----------------------------------------------------------

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self._console_port()}"

    @staticmethod
    def _console_port() -> int:
        from inference_endpoints.adapters.console.config import ConsoleSettings

        return ConsoleSettings().port

    def console_healthy(self) -> bool:
        return answers(f"{self.console_url}/openapi.json", timeout_s=3)

    def start_console(self, timeout_s: float = 60) -> int:
        return self._ensure(Part(
            "console_pid", "127.0.0.1", self._console_port(), "IE_CONSOLE_PORT",
            [sys.executable, "-m", CONSOLE_MODULE], "console.log", self.console_healthy, timeout_s))

    # ---- metrics ------------------------------------------------------------------------

    def _metrics_parts(self) -> tuple[Part, Part]:
        from inference_endpoints.adapters.metrics import prometheus as prom
        from inference_endpoints.adapters.metrics.config import MetricsConfig

        cfg = MetricsConfig()
        sd_base = f"http://{cfg.discovery_host}:{cfg.discovery_port}"
        discovery = Part(
            "discovery_pid", cfg.discovery_host, cfg.discovery_port, "IE_DISCOVERY_PORT",
            [sys.executable, "-m", DISCOVERY_MODULE, "--host", cfg.discovery_host,
             "--port", str(cfg.discovery_port)],
            "discovery.log", lambda: answers(f"{sd_base}/health"), 30)
        home = self.settings.data_dir / "prometheus"
        config_path = home / "prometheus.yml"
        listen = f"{cfg.prometheus_host}:{cfg.prometheus_port}"

        def prepare() -> None:
            import shutil

            if shutil.which(cfg.prometheus_bin) is None:
                raise StackError(f"Prometheus not found at {cfg.prometheus_bin}: {prom.INSTALL_HINT}")
            prom.write_config(config_path, prom.render_config(
                cfg.discovery_url, self.gateway_url, scrape_interval_s=cfg.scrape_interval_s,
                sd_refresh_s=cfg.sd_refresh_interval_s,
                gateway_token_file=prom.write_gateway_token(home, self.settings)))

        prometheus = Part(
            "prometheus_pid", cfg.prometheus_host, cfg.prometheus_port, "IE_PROMETHEUS_PORT",
            prom.prometheus_argv(cfg.prometheus_bin, config_path, home / "tsdb", listen,
                                 cfg.prometheus_retention),
            "prometheus.log", lambda: prom.ready(f"http://{listen}"), 60, prepare)
        return discovery, prometheus

    def start_metrics(self) -> str:
        """Prometheus, discovering what to scrape from the registry; returns its URL."""
        discovery, prometheus = self._metrics_parts()
        self._ensure(discovery)
        self._ensure(prometheus)
        url = f"http://{prometheus.host}:{prometheus.port}"
        with self._updating() as state:
            state.prometheus_url = url
        return url

    # ---- engine runtime of the local pool ------------------------------------------------

    def use_docker(self, cache_dir: Path, image: str) -> str:
        """Serve cpu-dev endpoints in containers; returns the Docker daemon's URL.

        Starts dockerd under `cache_dir` unless one answers there (a daemon started here is
        recorded and stopped with the stack), builds the local vLLM-CPU image (cached; about
        5 minutes the first time) and points the pool's `engine-host` block at both.
        """
        import subprocess

        from blocks.settings_blocks import EngineHost
        from inference_endpoints.adapters.runtime.dockerd import start_dockerd

        daemon = start_dockerd(cache_dir, self.settings.log_dir)
        if daemon.started:
            with self._updating() as state:
                state.dockerd_pid, state.dockerd_url = daemon.pid, daemon.url
        subprocess.run(["bash", str(PROJECT_DIR / "scripts" / "build-engine-image.sh")], cwd=PROJECT_DIR,
                       env={**os.environ, "DOCKER_HOST": daemon.url, "IE_ENGINE_IMAGE": image}, check=True)
        EngineHost(engine_python="python3", backend_host=self.settings.backend_host,
                   run_dir=str(self.settings.run_dir / "engines"), log_dir=str(self.settings.log_dir),
                   runtime="docker", image=image, docker_host=daemon.url).save(ENGINE_POOL, overwrite=True)
        return daemon.url

    def use_process_runtime(self, engine_python: str) -> str | None:
        """Point the pool's engines back at local processes if its block says Docker.

        Returns the Docker daemon the block named (None: nothing to change). After
        `up --runtime docker` and `down` that daemon is gone, and every create would fail.
        """
        from blocks.settings_blocks import EngineHost

        try:
            host = EngineHost.load(ENGINE_POOL)
        except ValueError:  # no pool-specific block: the default one (process) applies
            return None
        assert isinstance(host, EngineHost)
        if host.runtime != "docker":
            return None
        EngineHost(engine_python=engine_python, backend_host=self.settings.backend_host,
                   run_dir=str(self.settings.run_dir / "engines"), log_dir=str(self.settings.log_dir),
                   readonly_mode=host.readonly_mode).save(ENGINE_POOL, overwrite=True)
        return host.docker_host or "the default Docker daemon"

    # ---- stopping -----------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop every part recorded in stack.json that is still ours; returns what was stopped."""
        state = self.read_state()
        if state is None:
            return []
        stopped: list[str] = []
        for pool, pid in list(state.workers.items()):
            if self._ours(pid, worker_identity(pool)):
                stop_group(pid)
                stopped.append(f"worker {pool} (pid {pid})")
            self._record_worker(pool, None)
        for attr, (label, needles) in IDENTITY.items():
            pid = getattr(state, attr)
            if pid and self._ours(pid, needles):
                stop_group(pid)
                stopped.append(f"{label} (pid {pid})")
            self._record(attr, None)
        self._record("prometheus_url", None)
        if state.dockerd_pid and state.dockerd_url:
            from inference_endpoints.adapters.runtime.dockerd import DockerDaemon

            if alive(state.dockerd_pid):
                stopped.append(f"dockerd (pid {state.dockerd_pid})")
            DockerDaemon(state.dockerd_url, state.dockerd_pid, True).stop()
            with self._updating() as current:
                current.dockerd_pid = current.dockerd_url = None
        return stopped
