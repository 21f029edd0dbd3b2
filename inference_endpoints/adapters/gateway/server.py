"""Run the gateway under uvicorn: `python -m inference_endpoints.adapters.gateway.server`.

Reads Settings (IE_GATEWAY_HOST, IE_GATEWAY_PORT, IE_BASE_DOMAIN, DATABASE_URL /
IE_DATA_DIR, the IE_GATEWAY_* bounds, IE_GATEWAY_ADMIN_TOKEN). uvloop + httptools when
available, with a header read timeout (protocol.py); no access log (it would cost
latency on every request, and bodies are never logged anyway).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from inference_endpoints.adapters.gateway.app import create_app
from inference_endpoints.adapters.gateway.config import GatewayConfig
from inference_endpoints.adapters.gateway.protocol import protocol_class
from inference_endpoints.settings import Settings


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "warning",
                   header_timeout_s: float = 10.0, parser: str = "auto") -> uvicorn.Config:
    """`parser`: "auto" (httptools when installed), "httptools" or "h11"."""
    fast = importlib.util.find_spec("uvloop") is not None
    return uvicorn.Config(
        app, host=host, port=port, lifespan="on", log_level=log_level, access_log=False,
        loop="uvloop" if fast else "asyncio",
        http=protocol_class(header_timeout_s, parser),
        server_header=False, date_header=False,  # the backend's own headers pass through
        proxy_headers=False, backlog=4096, timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Inference Endpoints gateway")
    parser.add_argument("--host", help="bind address (default: IE_GATEWAY_HOST)")
    parser.add_argument("--port", type=int, help="port (default: IE_GATEWAY_PORT)")
    parser.add_argument("--refresh-interval", type=float, default=0.5,
                        help="seconds between route-table change checks")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = GatewayConfig.from_settings(settings, refresh_interval_s=args.refresh_interval)
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, args.host or settings.gateway_host,
                                           args.port or settings.gateway_port, args.log_level,
                                           config.header_timeout_s))
    server.run()


@dataclass
class ThreadedServer:
    """An ASGI app served by uvicorn in a background thread (tests, bench, notebooks)."""

    app: Any
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 15.0,
                    header_timeout_s: float = 10.0, parser: str = "auto") -> ThreadedServer:
    """Start `app` on `port` (0: a free one) and return once it accepts connections."""
    config = uvicorn_config(app, host, port, header_timeout_s=header_timeout_s, parser=parser)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return ThreadedServer(app, server, thread, f"http://{host}:{bound}")


def run_in_thread(config: GatewayConfig, host: str = "127.0.0.1", port: int = 0,
                  parser: str = "auto") -> ThreadedServer:
    """A gateway in a background thread; `.app` is the GatewayApp."""
    return serve_in_thread(create_app(config), host, port,
                           header_timeout_s=config.header_timeout_s, parser=parser)


if __name__ == "__main__":
    main()
