"""The local stack: a Prefect server, one process worker per work pool, blocks and deployments.

Every process is started in its own session with output to a log file under the
data directory, recorded by PID in `run/stack.json`, and stopped by PID (process
group), never by name.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx

from inference_endpoints.processes import alive, spawn, stop_group
from inference_endpoints.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent


def engine_python_default() -> str:
    """The interpreter with vLLM: `.venv-engine` next to the project, else `IE_ENGINE_PYTHON`."""
    explicit = os.environ.get("IE_ENGINE_PYTHON")
    if explicit:
        return explicit
    candidate = PROJECT_DIR / ".venv-engine" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


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
        env.update(self.worker_env)
        return env

    def read_state(self) -> StackState | None:
        if not self.state_path.exists():
            return None
        return StackState.from_json(self.state_path.read_text())

    def write_state(self, state: StackState) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(state.to_json())

    def _spawn(self, args: list[str], log_name: str) -> int:
        return spawn(args, self.settings.log_dir / log_name, self.env(), cwd=PROJECT_DIR)

    # ---- Prefect server -------------------------------------------------------------------

    def prefect_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.prefect_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_prefect(self, timeout_s: float = 90) -> int | None:
        state = self.read_state()
        if state and alive(state.prefect_pid) and self.prefect_healthy():
            return state.prefect_pid
        (self.settings.data_dir / "prefect").mkdir(parents=True, exist_ok=True)
        pid = self._spawn([sys.executable, "-m", "prefect", "server", "start",
                           "--host", "127.0.0.1", "--port", str(self.settings.prefect_port)],
                          "prefect-server.log")
        self.write_state(StackState(self.prefect_url, pid, state.workers if state else {}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.prefect_healthy():
                return pid
            if not alive(pid):
                raise RuntimeError(
                    f"Prefect server exited; see {self.settings.log_dir / 'prefect-server.log'}")
            time.sleep(0.5)
        raise TimeoutError(f"Prefect server not healthy after {timeout_s:.0f} s")

    # ---- workers ------------------------------------------------------------------------

    def start_worker(self, pool: str) -> int:
        state = self.read_state() or StackState(self.prefect_url)
        if alive(state.workers.get(pool)):
            return state.workers[pool]
        pid = self._spawn([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                           "--type", "process", "--name", f"{pool}-{os.uname().nodename}"],
                          f"worker-{pool}.log")
        state.workers[pool] = pid
        self.write_state(state)
        return pid

    def stop_worker(self, pool: str) -> None:
        state = self.read_state()
        if state is None:
            return
        stop_group(state.workers.pop(pool, None))
        self.write_state(state)

    # ---- gateway ------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"

    def gateway_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.gateway_url}/_gateway/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_gateway(self, timeout_s: float = 30) -> int:
        state = self.read_state() or StackState(self.prefect_url)
        if alive(state.gateway_pid) and self.gateway_healthy():
            assert state.gateway_pid is not None
            return state.gateway_pid
        pid = self._spawn([sys.executable, "-m", "inference_endpoints.gateway.server"],
                          "gateway.log")
        state.gateway_pid = pid
        self.write_state(state)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.gateway_healthy():
                return pid
            if not alive(pid):
                raise RuntimeError(f"gateway exited; see {self.settings.log_dir / 'gateway.log'}")
            time.sleep(0.2)
        raise TimeoutError(f"gateway not answering after {timeout_s:.0f} s")

    # ---- console and REST API -----------------------------------------------------------

    @property
    def console_url(self) -> str:
        from inference_endpoints.console.config import ConsoleSettings

        return f"http://127.0.0.1:{ConsoleSettings().port}"

    def console_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.console_url}/openapi.json", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def start_console(self, timeout_s: float = 60) -> int:
        state = self.read_state() or StackState(self.prefect_url)
        if alive(state.console_pid) and self.console_healthy():
            assert state.console_pid is not None
            return state.console_pid
        pid = self._spawn([sys.executable, "-m", "inference_endpoints.console.server"], "console.log")
        state.console_pid = pid
        self.write_state(state)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.console_healthy():
                return pid
            if not alive(pid):
                raise RuntimeError(f"console exited; see {self.settings.log_dir / 'console.log'}")
            time.sleep(0.3)
        raise TimeoutError(f"console not answering after {timeout_s:.0f} s")

    # ---- metrics ------------------------------------------------------------------------

    def start_metrics(self) -> str:
        """Prometheus, discovering what to scrape from the registry; returns its URL."""
        from inference_endpoints.metrics.discovery import start_discovery
        from inference_endpoints.metrics.prometheus import start_prometheus

        state = self.read_state() or StackState(self.prefect_url)
        sd_url = None
        if not alive(state.discovery_pid):
            state.discovery_pid, sd_url = start_discovery(self.settings, env=self.env())
            self.write_state(state)
        if not alive(state.prometheus_pid):
            from inference_endpoints.metrics.config import MetricsConfig

            state.prometheus_pid, state.prometheus_url = start_prometheus(
                self.settings, sd_url or MetricsConfig().discovery_url, self.gateway_url)
            self.write_state(state)
        assert state.prometheus_url is not None
        return state.prometheus_url

    # ---- Docker -------------------------------------------------------------------------

    def use_docker(self, cache_dir: Path, image: str) -> str:
        """Serve cpu-dev endpoints in containers; returns the Docker daemon's URL.

        Starts dockerd under `cache_dir` unless one answers there (a daemon started here is
        recorded and stopped with the stack), builds the local vLLM-CPU image (cached; about
        5 minutes the first time) and points the pool's `engine-host` block at both.
        """
        import subprocess

        from blocks.settings_blocks import EngineHost
        from inference_endpoints.runtime.dockerd import start_dockerd

        daemon = start_dockerd(cache_dir, self.settings.log_dir)
        if daemon.started:
            state = self.read_state() or StackState(self.prefect_url)
            state.dockerd_pid, state.dockerd_url = daemon.pid, daemon.url
            self.write_state(state)
        subprocess.run(["bash", str(PROJECT_DIR / "scripts" / "build-engine-image.sh")], cwd=PROJECT_DIR,
                       env={**os.environ, "DOCKER_HOST": daemon.url, "IE_ENGINE_IMAGE": image}, check=True)
        EngineHost(engine_python="python3", backend_host=self.settings.backend_host,
                   run_dir=str(self.settings.run_dir / "engines"), log_dir=str(self.settings.log_dir),
                   runtime="docker", image=image, docker_host=daemon.url).save("cpu-dev", overwrite=True)
        return daemon.url

    def stop(self) -> None:
        state = self.read_state()
        if state is None:
            return
        for pool in list(state.workers):
            stop_group(state.workers.pop(pool))
        for attr in ("console_pid", "gateway_pid", "prometheus_pid", "discovery_pid"):
            stop_group(getattr(state, attr))
            setattr(state, attr, None)
        stop_group(state.prefect_pid)
        state.prefect_pid = None
        if state.dockerd_pid and state.dockerd_url:
            from inference_endpoints.runtime.dockerd import DockerDaemon

            DockerDaemon(state.dockerd_url, state.dockerd_pid, True).stop()
            state.dockerd_pid = state.dockerd_url = None
        self.write_state(state)
