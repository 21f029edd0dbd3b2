"""The gateway: the stable URL in front of every endpoint's current backend.

`create_app(GatewayConfig)` builds the ASGI app; `server.main()` runs it under uvicorn.
"""

from __future__ import annotations

from inference_endpoints.adapters.gateway.app import GatewayApp, create_app
from inference_endpoints.adapters.gateway.config import GatewayConfig

__all__ = ["GatewayApp", "GatewayConfig", "create_app"]
