"""Responses the gateway writes itself, in OpenAI's error shape so SDKs show them well."""

from __future__ import annotations

import json
from typing import Any

from inference_endpoints.adapters.gateway.asgi import Send

JSON = (b"content-type", b"application/json")
CLOSE = (b"connection", b"close")  # uvicorn closes the connection after such a response


def error_body(message: str, type_: str, code: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code,
                                 **extra}}).encode()


# Identical for "does not exist" and "belongs to another organization".
NOT_FOUND = error_body("Endpoint not found.", "not_found_error",
                       "endpoint_not_found")
MISSING_KEY = error_body(
    "Missing API key: send `Authorization: Bearer <organization key>` "
    "(create one with `endpoints key create`).",
    "authentication_error", "missing_api_key")
INVALID_KEY = error_body("Invalid or revoked API key.", "authentication_error", "invalid_api_key")
GATEWAY_NOT_FOUND = error_body("Not found on the gateway. Endpoints are served at "
                               "http://<endpoint>.<org>.<base domain>/ or /e/<org>/<endpoint>/.",
                               "not_found_error", "not_found")
ADMIN_REQUIRED = error_body("Gateway administration needs the gateway's admin token: send "
                            "`Authorization: Bearer <IE_GATEWAY_ADMIN_TOKEN>` (default: the "
                            "`gateway-admin-token` file in the data directory).",
                            "authentication_error", "admin_token_required")


def too_large_body(limit: int) -> bytes:
    return error_body(f"Request body over the gateway's limit of {_size(limit)}.",
                      "invalid_request_error", "request_too_large", limit_bytes=limit)


def body_timeout_body(seconds: float) -> bytes:
    return error_body(f"Request body not received: nothing arrived for {seconds:g} s.",
                      "invalid_request_error", "request_timeout")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def not_ready_body(name: str, status: str) -> bytes:
    if status in ("stopped", "failed"):
        message = f"Endpoint {name} is {status}; create it again to serve it."
    else:
        message = f"Endpoint {name} is {status}, not ready to serve yet; retry shortly."
    return error_body(message, "service_unavailable", "endpoint_not_ready", status=status)


def bad_gateway_body(name: str, detail: str) -> bytes:
    return error_body(f"Endpoint {name}: the backend did not answer ({detail}).",
                      "bad_gateway", "backend_unavailable")


async def send_bytes(send: Send, status: int, body: bytes,
                     headers: list[tuple[bytes, bytes]] | None = None,
                     content_type: tuple[bytes, bytes] = JSON) -> None:
    all_headers = [content_type, (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
