"""Process-wide configuration, read from the environment (prefix `IE_`).

`DATABASE_URL` (no prefix) switches the registry to PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ORG = "default"


def _default_data_dir() -> Path:
    return Path.home() / ".inference-endpoints"


def default_demo_dir() -> Path:
    """The demo checkpoint cache: one shared build for tests, CI and the demo (IE_DEMO_CACHE moves it)."""
    env = os.environ.get("IE_DEMO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "inference-endpoints" / "demo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IE_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "IE_DATABASE_URL")
    )
    backend_host: str = "127.0.0.1"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8780
    base_domain: str = "endpoints.localhost"
    # Gateway bounds on what a caller may hold open or send (see adapters/gateway/config.py).
    gateway_header_timeout_s: float = 10.0
    gateway_body_timeout_s: float = 30.0
    gateway_max_body_bytes: int = 16 * 1024 * 1024
    # Requests whose prompts start alike go to the same replica (vLLM prefix-cache hits).
    gateway_prefix_affinity: bool = False
    # Bearer token for the gateway's /metrics and /_gateway/stats; default: one created once
    # and kept (0600) in the data dir, read by Prometheus and the console from there.
    gateway_admin_token: str | None = None
    prefect_port: int = 4200
    org: str = DEFAULT_ORG

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'registry.db'}"

    @property
    def store_root(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def imports_dir(self) -> Path:
        """Parent of the per-organization drop folders (`<imports_dir>/<org name>`), import roots all."""
        return self.data_dir / "imports"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def cli_key_path(self) -> Path:
        """The local stack's key for the default organization, kept for the CLI (0600)."""
        return self.data_dir / "api-key"

    @property
    def prefect_auth_path(self) -> Path:
        """The local stack's Prefect basic-auth string (0600): see localstack/prefect_auth.py."""
        return self.data_dir / "prefect-auth"

    @property
    def gateway_admin_token_path(self) -> Path:
        """The bearer token for the gateway's /metrics and /_gateway/stats (0600)."""
        return self.data_dir / "gateway-admin-token"


def get_settings() -> Settings:
    return Settings()


def save_cli_key(settings: Settings, secret: str) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.cli_key_path
    path.write_text(secret + "\n")
    path.chmod(0o600)


def gateway_admin_token(settings: Settings) -> str:
    """IE_GATEWAY_ADMIN_TOKEN, else the data dir's token (created 0600 the first time)."""
    if settings.gateway_admin_token:
        return settings.gateway_admin_token
    path = settings.gateway_admin_token_path
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip() or token
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def cli_key(settings: Settings) -> str | None:
    """The organization key the CLI uses (IE_API_KEY, else the one the local stack stored)."""
    explicit = os.environ.get("IE_API_KEY")
    if explicit:
        return explicit
    path = settings.cli_key_path
    return path.read_text().strip() if path.exists() else None
