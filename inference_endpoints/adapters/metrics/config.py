"""Metrics settings, read from the environment (prefix `IE_`), separate from the core Settings.

Only the metrics package (and the stack, which starts Prometheus) reads them; they live with
it so it can grow knobs without touching the registry's settings.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class MetricsConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IE_", extra="ignore")

    prometheus_bin: str = "/usr/bin/prometheus"
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 9390
    # How long Prometheus keeps samples (its --storage.tsdb.retention.time); stated in the README.
    prometheus_retention: str = "15d"
    discovery_host: str = "127.0.0.1"
    discovery_port: int = 9391
    scrape_interval_s: float = 5.0
    # How often Prometheus asks the control plane for targets.
    sd_refresh_interval_s: float = 5.0
    # /sd/targets lists every org's backend addresses: loopback callers only by default.
    discovery_loopback_only: bool = True
    # Where the CLI, console and API find Prometheus (defaults to the local one).
    prometheus_url: str = ""

    @property
    def url(self) -> str:
        return self.prometheus_url or f"http://{self.prometheus_host}:{self.prometheus_port}"

    @property
    def discovery_url(self) -> str:
        return f"http://{self.discovery_host}:{self.discovery_port}/sd/targets"
