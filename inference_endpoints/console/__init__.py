"""The web console and REST API (`create_app`); run it with `python -m inference_endpoints.console.server`."""

from inference_endpoints.console.app import create_app

__all__ = ["create_app"]
