"""Process-wide configuration, read from the environment (prefix `IE_`).

`DATABASE_URL` (no prefix) switches the registry to PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".inference-endpoints"


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
    prefect_port: int = 4200
    org: str = "default"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'registry.db'}"

    @property
    def store_root(self) -> Path:
        return self.data_dir / "checkpoints"

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


def get_settings() -> Settings:
    return Settings()
