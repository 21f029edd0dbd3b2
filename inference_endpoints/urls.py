"""An endpoint's public addresses: the stable URL (host form) and the path form."""

from __future__ import annotations

from dataclasses import dataclass

from inference_endpoints.settings import Settings


@dataclass(frozen=True)
class EndpointUrls:
    url: str  # http://<endpoint>.<org>.<base domain>:<port>
    path_url: str  # http://<gateway>/e/<org>/<endpoint>

    @property
    def openai_base(self) -> str:
        return f"{self.url}/v1"

    @property
    def health(self) -> str:
        return f"{self.url}/health"


def endpoint_urls(name: str, org: str, settings: Settings | None = None) -> EndpointUrls:
    s = settings or Settings()
    port = "" if s.gateway_port == 80 else f":{s.gateway_port}"
    return EndpointUrls(
        url=f"http://{name}.{org}.{s.base_domain}{port}",
        path_url=f"http://{s.gateway_host}{port}/e/{org}/{name}",
    )
