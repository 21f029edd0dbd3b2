"""A fast stand-in for vLLM's OpenAI server, for gateway tests and the benchmark.

Raw ASGI (so its own overhead stays small and steady). Like vLLM it checks a
bearer key on /v1/* only, streams SSE, and stops generating when its caller hangs
up; `state` records that, so tests can assert the gateway closed the upstream.

Timing knobs come from the command line or per request (query string):
`ttft_ms` before the first chunk (or the whole JSON answer), `itl_ms` between
chunks, `chunks` (else the body's max_tokens). `lockstep=1` sends each chunk after the
first only once the test has counted the previous one as received (`state.acks`), so a
test can prove streaming without measuring time: a buffering proxy would deadlock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from inference_endpoints.adapters.gateway.asgi import Receive, Scope, Send

JSON = (b"content-type", b"application/json")
SSE = (b"content-type", b"text/event-stream; charset=utf-8")


@dataclass
class FakeState:
    """What happened upstream; read by tests (in-process) or via GET /_state."""

    running: int = 0
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    bytes_received: int = 0
    chunks_sent: int = 0  # SSE data events sent, all streams together
    acks: int = 0  # lockstep streams: chunks the test says it received
    last_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeUpstream:
    model: str = "fake-model"
    api_key: str | None = None
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    state: FakeState = field(default_factory=FakeState)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                if (await receive())["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        if path == "/health":
            await _send(send, 200, b"")
        elif path == "/_state":
            await _send(send, 200, json.dumps(self.state.__dict__).encode())
        elif path.startswith("/v1/") and not self._authorized(scope):
            await _send(send, 401, b'{"error":"Unauthorized"}')
        elif path == "/v1/models":
            await _send(send, 200, json.dumps({"object": "list", "data": [
                {"id": self.model, "object": "model", "owned_by": "fake"}]}).encode())
        elif path in ("/v1/completions", "/v1/chat/completions"):
            await self.completion(scope, receive, send, query)
        elif path == "/v1/error":
            await _read_body(receive)
            await _send(send, 400, json.dumps({"error": {"message": "max_tokens is too large",
                        "type": "BadRequestError", "param": "max_tokens", "code": 400}}).encode())
        elif path == "/v1/echo":
            body = await _read_body(receive)
            self.state.bytes_received += len(body)
            await _send(send, 200, body, (b"content-type", b"application/octet-stream"))
        elif path == "/v1/headers":
            await _read_body(receive)
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            headers[":path"] = (scope.get("raw_path") or b"").decode()
            headers[":query"] = scope["query_string"].decode()
            self.state.last_headers = headers
            await _send(send, 200, json.dumps(headers).encode())
        else:
            await _send(send, 404, b'{"detail":"Not Found"}')

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None:
            return True
        expected = f"Bearer {self.api_key}".encode()
        return any(k == b"authorization" and v == expected for k, v in scope["headers"])

    async def completion(self, scope: Scope, receive: Receive, send: Send,
                         query: dict[str, str]) -> None:
        raw = await _read_body(receive)
        request: dict[str, Any] = json.loads(raw) if raw else {}
        ttft = float(query.get("ttft_ms", self.ttft_ms)) / 1000
        itl = float(query.get("itl_ms", self.itl_ms)) / 1000
        chunks = int(query.get("chunks", request.get("max_tokens", 16)))
        lockstep = query.get("lockstep") == "1"
        state = self.state
        state.running += 1
        state.started += 1
        work = asyncio.ensure_future(
            self._stream(send, chunks, ttft, itl, lockstep) if request.get("stream")
            else self._json(send, ttft))
        hangup = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((work, hangup), return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                work.result()
                state.completed += 1
            else:  # like vLLM: the caller left, abort the generation
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                state.cancelled += 1
        finally:
            hangup.cancel()
            state.running -= 1

    async def _json(self, send: Send, ttft: float) -> None:
        if ttft:
            await asyncio.sleep(ttft)
        body = json.dumps({"id": "cmpl-fake", "object": "text_completion", "created": int(
            time.time()), "model": self.model, "choices": [{"index": 0, "text": " hello",
                                                            "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        await _send(send, 200, body)

    async def _stream(self, send: Send, chunks: int, ttft: float, itl: float,
                      lockstep: bool = False) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [SSE]})
        if ttft:
            await asyncio.sleep(ttft)
        acks = self.state.acks
        for i in range(chunks):
            if i and itl:
                await asyncio.sleep(itl)
            while lockstep and self.state.acks - acks < i:
                await asyncio.sleep(0.005)
            event = {"id": "cmpl-fake", "object": "text_completion", "model": self.model,
                     "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}],
                     "t": time.time()}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + json.dumps(event).encode() + b"\n\n"})
            self.state.chunks_sent += 1
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send(send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes] = JSON) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [content_type, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="fake OpenAI upstream (127.0.0.1 only)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    args = parser.parse_args()
    app = FakeUpstream(api_key=args.api_key, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", backlog=4096, timeout_keep_alive=30)


if __name__ == "__main__":
    main()
