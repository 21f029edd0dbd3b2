"""A local stack of its own for CLI tests: a data directory, free ports, and `endpoints …` as a subprocess.

The CLI runs as `python -m inference_endpoints.cli` from this checkout with its output
piped (not a TTY, as in scripts and CI), in an environment that points only at this
stack: it never shares the test session's Prefect server, ports or data directory.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_endpoints.localstack.demo import default_demo_dir, make_demo
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.services.operations import register_checkpoint
from inference_endpoints.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
PORTS = ("IE_PREFECT_PORT", "IE_GATEWAY_PORT", "IE_CONSOLE_PORT", "IE_PROMETHEUS_PORT",
         "IE_DISCOVERY_PORT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class IsolatedStack:
    data_dir: Path
    env: dict[str, str]

    @classmethod
    def make(cls, data_dir: Path) -> IsolatedStack:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("IE_", "PREFECT_")) and k != "DATABASE_URL"}
        env.update({port: str(free_port()) for port in PORTS})
        env.update({
            "IE_DATA_DIR": str(data_dir),
            "PREFECT_API_URL": f"http://127.0.0.1:{env['IE_PREFECT_PORT']}/api",
            # The stack's Prefect server requires it; `up` takes it from here (a GPU host would).
            "PREFECT_API_AUTH_STRING": f"ie:{secrets.token_urlsafe(16)}",
            "PREFECT_HOME": str(data_dir / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        })
        if "IE_DEMO_CACHE" in os.environ:
            env["IE_DEMO_CACHE"] = os.environ["IE_DEMO_CACHE"]
        return cls(data_dir, env)

    def port(self, name: str) -> int:
        return int(self.env[name])

    @property
    def prefect_api(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def prefect_auth(self) -> tuple[str, str]:
        user, _, password = self.env["PREFECT_API_AUTH_STRING"].partition(":")
        return user, password

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, prefect_port=self.port("IE_PREFECT_PORT"),
                        gateway_port=self.port("IE_GATEWAY_PORT"))

    def registry(self) -> Registry:
        return Registry(self.settings.db_url)

    def cli(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        """`endpoints ARGS`, output captured (piped: not a terminal)."""
        result = subprocess.run([sys.executable, "-m", "inference_endpoints.cli", *args],
                                cwd=PROJECT_DIR, env=self.env, capture_output=True, text=True,
                                timeout=timeout_s, check=False)
        print(f"$ endpoints {' '.join(args)}  -> {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "inference_endpoints.cli", *args],
                                cwd=PROJECT_DIR, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def python(self, code: str) -> str:
        """Run `code` in this stack's environment (for Prefect blocks); returns its stdout."""
        result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, env=self.env,
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def state(self) -> dict[str, Any]:
        path = self.data_dir / "run" / "stack.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def recorded_pids(self) -> dict[str, int]:
        """Every PID stack.json holds, by part (workers as `worker:<pool>`)."""
        state = self.state()
        pids = {k: v for k, v in state.items() if k.endswith("_pid") and v}
        pids.update({f"worker:{pool}": pid for pool, pid in state.get("workers", {}).items()})
        return pids

    def register_demo(self) -> str:
        """Initialise the registry and register the demo checkpoint; returns the org id."""
        registry = self.registry()
        registry.init(default_org="default")
        org = registry.get_org_by_name("default")
        assert org is not None
        if registry.find_checkpoint(org.id, "demo-tiny-llama", available_only=True) is None:
            demo = make_demo(default_demo_dir())
            register_checkpoint(registry, LocalCheckpointStore(self.settings.store_root), org.id,
                                demo.full, "demo-tiny-llama",  # the demo cache: a root of `default`
                                sources=SourcePolicy.from_settings(self.settings))
        return org.id
