"""The console's own settings (env prefix `IE_CONSOLE_`), next to the shared `Settings`.

Port, bind address, cookie secret, idle threshold and where Prometheus answers: only the
console reads them, so they live with it (the stack reads the port to start and probe it).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from inference_endpoints.settings import Settings


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IE_CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8781
    secret: str | None = None  # signs session cookies; default: a random one kept in the data dir
    session_hours: float = 12.0
    max_body_bytes: int = 1024 * 1024  # request bodies over this get 413, before they are read
    max_upload_bytes: int = 64 * 1024**3  # the checkpoint upload route's own limit (and the unpacked size)
    idle_threshold_minutes: float = 30.0  # the list flags endpoints idle for longer
    prometheus_url: str | None = None  # default: the metrics package's (IE_PROMETHEUS_URL / port)
    # Secure cookies need https; on by default only when the console is not on loopback.
    secure_cookies: bool | None = None
    prefect_ui_url: str | None = None  # links to serve runs; default: PREFECT_API_URL without /api

    def prefect_ui(self) -> str | None:
        """Where Prefect's UI answers, for links to a serve run's flow run (None: unknown)."""
        if self.prefect_ui_url:
            return self.prefect_ui_url.rstrip("/")
        api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
        return api.removesuffix("/api") if api.endswith("/api") else None

    def prometheus(self) -> str:
        if self.prometheus_url:
            return self.prometheus_url
        from inference_endpoints.adapters.console.metrics_tab import default_prometheus_url

        return default_prometheus_url()

    def cookie_secret(self, settings: Settings) -> str:
        """The explicit secret, else one created once and kept (0600) so restarts keep sessions."""
        if self.secret:
            return self.secret
        path = settings.data_dir / "console-secret"
        return _read_or_create_secret(path)

    @property
    def https_only(self) -> bool:
        if self.secure_cookies is not None:
            return self.secure_cookies
        return not self.host.startswith(("127.", "localhost", "::1"))


def _read_or_create_secret(path: Path) -> str:
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret
