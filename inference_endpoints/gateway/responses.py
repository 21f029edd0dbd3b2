"""Responses the gateway writes itself, in OpenAI's error shape so SDKs show them well."""

from __future__ import annotations

import json
from typing import Any

from inference_endpoints.gateway.asgi import Send

JSON = (b"content-type", b"application/json")


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
FORBIDDEN = error_body("Gateway administration is only available from loopback.",
                       "permission_error", "forbidden")


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
