"""The local stack's Prefect credential: one basic-auth string, kept 0600 in the data directory.

Prefect's self-hosted server checks `PREFECT_SERVER_API_AUTH_STRING` on every API call
except `GET /api/health` and `/api/ready`; every client (workers, flow runs, CLI, console)
sends `PREFECT_API_AUTH_STRING`. Without it anyone who reaches port 4200 could create a
flow run with any organization's parameters, or read the registry's database URL from a block.
"""

from __future__ import annotations

import os
import secrets

from inference_endpoints.settings import Settings

CLIENT_ENV = "PREFECT_API_AUTH_STRING"
SERVER_ENV = "PREFECT_SERVER_API_AUTH_STRING"
USER = "ie"


def prefect_auth_string(settings: Settings) -> str:
    """`PREFECT_API_AUTH_STRING` when set (a GPU host, a test session), else the stack's own."""
    explicit = os.environ.get(CLIENT_ENV)
    if explicit:
        return explicit
    path = settings.prefect_auth_path
    if path.exists():
        return path.read_text().strip()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    value = f"{USER}:{secrets.token_urlsafe(24)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
