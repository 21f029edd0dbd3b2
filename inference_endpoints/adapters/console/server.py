"""Run the console: `python -m inference_endpoints.adapters.console.server` (127.0.0.1:8781 by default).

`IE_CONSOLE_PORT` / `IE_CONSOLE_HOST` move it; everything else comes from the
shared settings (`IE_DATA_DIR`, `DATABASE_URL`, `IE_GATEWAY_PORT`, ...) and
`PREFECT_API_URL` for submitting flows.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from inference_endpoints.adapters.console.app import create_app
from inference_endpoints.adapters.console.config import ConsoleSettings
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", help="bind address (default IE_CONSOLE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default IE_CONSOLE_PORT or 8781)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = Settings()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    console = ConsoleSettings(**overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    registry = Registry(settings.db_url)
    first = registry.init(default_org=settings.org)  # migrations and the instance catalog, idempotent
    if first is not None:  # this process made the default org: keep its key where the CLI looks
        from inference_endpoints.settings import save_cli_key

        save_cli_key(settings, first.secret)
    app = create_app(settings, console=console, registry=registry)
    uvicorn.run(app, host=console.host, port=console.port, log_level=args.log_level, proxy_headers=False)


if __name__ == "__main__":
    main()
