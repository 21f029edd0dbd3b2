"""One data directory and one Prefect API address per test session, set before Prefect is imported.

Without PREFECT_API_URL any Prefect client call would silently start an ephemeral
server; with it, every flow in the session talks to the stack the e2e fixtures start.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SessionEnv:
    data_dir: Path
    prefect_port: int
    gateway_port: int


def _setup() -> SessionEnv:
    data_dir = Path(tempfile.mkdtemp(prefix="ie-test-"))
    env = SessionEnv(data_dir, _free_port(), _free_port())
    os.environ["IE_DATA_DIR"] = str(data_dir)
    os.environ["IE_PREFECT_PORT"] = str(env.prefect_port)
    os.environ["IE_GATEWAY_PORT"] = str(env.gateway_port)
    os.environ["IE_PROMETHEUS_PORT"] = str(_free_port())
    os.environ["IE_DISCOVERY_PORT"] = str(_free_port())
    os.environ["IE_CONSOLE_PORT"] = str(_free_port())
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{env.prefect_port}/api"
    # The stack's server requires it (localstack/prefect_auth.py); every client here sends it.
    os.environ["PREFECT_API_AUTH_STRING"] = f"ie:{secrets.token_urlsafe(16)}"
    os.environ["PREFECT_HOME"] = str(data_dir / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_UI_ENABLED"] = "false"
    os.environ.pop("DATABASE_URL", None)
    return env


SESSION = _setup()
