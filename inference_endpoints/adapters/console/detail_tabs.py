"""The detail page's Logs tab and playground: the engine's own log, and a call through the gateway.

The playground sends the prompt to the console, which forwards it to the endpoint's
stable URL with the key the user signed in with (kept in the browser tab, checked here
against the session's organization) and streams the answer back as it comes, so the
call is counted, limited and routed exactly like any client's.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from inference_endpoints.adapters.console.pages import Org, Svc
from inference_endpoints.adapters.console.service import ConsoleService
from inference_endpoints.adapters.console.web import CSRF_KEY, CsrfRejected, context
from inference_endpoints.persistence.models import Organization
from inference_endpoints.services.engine_log import pick_run, tail
from inference_endpoints.urls import endpoint_urls

LOG_LINES = (100, 500, 2000)
PLAYGROUND_TIMEOUT_S = 120.0

router = APIRouter(include_in_schema=False)


# ---- logs ----------------------------------------------------------------------------------------

@router.get("/endpoints/{name}/_logs")
def logs_fragment(request: Request, name: str, org: Org, svc: Svc, replica: int | None = None,
                  lines: int = 100) -> HTMLResponse:
    """The engine log tail of the live run (or one replica's), re-read on every poll."""
    ep = svc.endpoint(org, name)
    runs = svc.registry.runs.of(ep.id)
    run = pick_run(runs, ep.live_run, None, replica)
    lines = lines if lines in LOG_LINES else LOG_LINES[0]
    log = tail(run, lines) if run is not None else None
    ui = svc.deps.console.prefect_ui()
    replicas = sorted({r.replica for r in runs})
    values = {"ep": ep, "log": log, "replicas": replicas, "replica": replica, "lines": lines,
              "line_choices": LOG_LINES, "failed": ep.status == "failed",
              "prefect_run_url": f"{ui}/runs/flow-run/{run.flow_run_id}" if ui and run and run.flow_run_id
              else None}
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, "_logs.html", context(request, **values))
    return response


# ---- playground ----------------------------------------------------------------------------------

class PlaygroundCall(BaseModel):
    mode: Literal["chat", "completion"] = "chat"
    prompt: str = Field(min_length=1, max_length=8000)
    max_tokens: int = Field(default=64, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


def _refusal(status: int, code: str, message: str, hint: str = "") -> JSONResponse:
    return JSONResponse(status_code=status, content={"problems": [
        {"code": code, "field": "api_key" if status == 401 else "", "message": message, "hint": hint}]})


def upstream_body(call: PlaygroundCall, model: str) -> tuple[str, dict[str, Any]]:
    """The OpenAI path and streaming body the playground sends for `call`."""
    body: dict[str, Any] = {"model": model, "max_tokens": call.max_tokens, "temperature": call.temperature,
                            "stream": True, "stream_options": {"include_usage": True}}
    if call.mode == "chat":
        body["messages"] = [{"role": "user", "content": call.prompt}]
        return "/v1/chat/completions", body
    body["prompt"] = call.prompt
    return "/v1/completions", body


def _target(svc: ConsoleService, org: Organization, name: str, key: str) -> tuple[str, str] | None:
    """(the endpoint's path URL, its model name) when `key` is the org's; NotFound for no endpoint."""
    owner = svc.registry.org_for_key(key) if key else None
    if owner is None or owner.id != org.id:
        return None
    ep = svc.endpoint(org, name)
    return endpoint_urls(ep.name, org.name, svc.deps.settings).path_url, ep.name


def header_csrf(request: Request, x_csrf_token: Annotated[str, Header()] = "") -> None:
    """The CSRF check for a JSON body: the token comes as a header only (no form field)."""
    expected = request.session.get(CSRF_KEY)
    presented = x_csrf_token
    if not isinstance(expected, str) or not presented or not secrets.compare_digest(expected, presented):
        raise CsrfRejected()


@router.post("/endpoints/{name}/_playground", dependencies=[Depends(header_csrf)])
async def playground(name: str, call: PlaygroundCall, org: Org, svc: Svc,
                     authorization: Annotated[str, Header()] = "") -> Response:
    key = authorization.removeprefix("Bearer ").strip()
    target = await run_in_threadpool(_target, svc, org, name, key)  # registry reads: off the loop
    if target is None:
        return _refusal(401, "unauthorized", "The playground needs an API key of organization "
                        f"{org.name}.", "Paste one of its keys (Keys page); it stays in this browser tab.")
    base, model = target
    path, body = upstream_body(call, model)
    client = httpx.AsyncClient(timeout=httpx.Timeout(PLAYGROUND_TIMEOUT_S, connect=5.0))
    try:
        upstream = await client.send(client.build_request(
            "POST", f"{base}{path}", json=body,
            headers={"Authorization": f"Bearer {key}"}), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        return _refusal(502, "gateway_unreachable", f"The gateway did not answer: {exc}",
                        "Check the stack with `endpoints status`.")

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            await client.aclose()

    media = upstream.headers.get("content-type", "text/event-stream")
    return StreamingResponse(relay(), status_code=upstream.status_code, media_type=media,
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
