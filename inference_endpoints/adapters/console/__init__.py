"""The web console and REST API (`create_app`).

Run it with `python -m inference_endpoints.adapters.console.server`.
"""

from inference_endpoints.adapters.console.app import create_app

__all__ = ["create_app"]
