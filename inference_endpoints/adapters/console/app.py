"""`create_app(settings)`: the console's FastAPI app (REST API, pages, static files).

Front-end libraries are served from `node_modules/` as installed from the npm
registry (`scripts/setup-frontend.sh`); nothing of theirs lives in the repository.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from inference_endpoints.adapters.console import api, create_form, detail_tabs, pages, updates
from inference_endpoints.adapters.console.config import ConsoleSettings
from inference_endpoints.adapters.console.guard import ApiGuard
from inference_endpoints.adapters.console.orchestrator import Orchestrator, PrefectOrchestrator
from inference_endpoints.adapters.console.queries import org_for_session
from inference_endpoints.adapters.console.service import (
    ConsoleDeps,
    ConsoleService,
    NotFound,
    TrafficReader,
    Unavailable,
)
from inference_endpoints.adapters.console.traffic import TrafficSource
from inference_endpoints.adapters.console.web import (
    SESSION_KEY,
    CsrfRejected,
    SignInRequired,
    context,
    make_templates,
)
from inference_endpoints.core.errors import Problem, RequestInvalid, StorageFull
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import CheckpointStore, LocalCheckpointStore
from inference_endpoints.settings import Settings

log = logging.getLogger(__name__)
PROJECT_DIR = Path(__file__).resolve().parents[3]
STATIC_DIR = Path(__file__).parent / "static"
FAVICON = STATIC_DIR / "favicon.svg"
# Only these files of node_modules are served (not the whole tree).
VENDOR = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
}


def node_modules_dir() -> Path:
    return PROJECT_DIR / "node_modules"


def create_app(settings: Settings | None = None, *, console: ConsoleSettings | None = None,
               registry: Registry | None = None, store: CheckpointStore | None = None,
               orchestrator: Orchestrator | None = None, traffic: TrafficReader | None = None) -> FastAPI:
    settings = settings or Settings()
    console = console or ConsoleSettings()
    registry = registry or Registry(settings.db_url)
    deps = ConsoleDeps(
        settings=settings, console=console, registry=registry,
        store=store or LocalCheckpointStore(settings.store_root),
        orchestrator=orchestrator or PrefectOrchestrator(),
        traffic=traffic or TrafficSource(settings),
    )
    app = FastAPI(title="Inference Endpoints", version="1",
                  description="Serve fine-tuned checkpoints as persistent HTTP endpoints. "
                  "Authenticate with `Authorization: Bearer <organization API key>`.")
    app.state.service = ConsoleService(deps)
    app.state.templates = make_templates()
    app.add_middleware(SessionMiddleware, secret_key=console.cookie_secret(settings),
                       session_cookie="ie_console", max_age=int(console.session_hours * 3600),
                       same_site="lax", https_only=console.https_only)
    app.add_middleware(ApiGuard, key_is_valid=lambda key: registry.org_for_key(key) is not None,
                       max_body=console.max_body_bytes,
                       uploads={api.UPLOAD_PATH: console.max_upload_bytes})  # added last: outermost
    app.include_router(api.router)
    app.include_router(create_form.router)  # before the pages: /endpoints/new is not an endpoint
    app.include_router(pages.router)
    app.include_router(detail_tabs.router)
    app.include_router(updates.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _vendor_routes(app)
    _favicon_route(app)
    _service_discovery(app, registry)
    _error_handlers(app)
    return app


def _vendor_routes(app: FastAPI) -> None:
    from fastapi.responses import FileResponse

    @app.get("/vendor/{name}", include_in_schema=False)
    def vendor(name: str) -> Response:
        rel = VENDOR.get(name)
        path = node_modules_dir() / rel if rel else None
        if path is None or not path.is_file():
            return Response(f"/* {name} is missing: run scripts/setup-frontend.sh */", status_code=404,
                            media_type="application/javascript")
        return FileResponse(path, media_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=3600"})


def _favicon_route(app: FastAPI) -> None:
    """Browsers ask for /favicon.ico whatever the page links: answer the SVG rather than a 404."""
    from fastapi.responses import FileResponse

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return FileResponse(FAVICON, media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})


def _service_discovery(app: FastAPI, registry: Registry) -> None:
    """Prometheus' HTTP service discovery (`/sd/targets`, loopback only), when the metrics package is here."""
    try:
        from inference_endpoints.adapters.metrics import discovery
    except ImportError:
        return
    app.include_router(discovery.router, include_in_schema=False)
    app.dependency_overrides[discovery.get_registry] = lambda: registry


def _api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _problems(status: int, problems: list[Problem], extra: dict[str, object] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"problems": [p.to_dict() for p in problems],
                                                     **(extra or {})})


def sign_in_target(request: Request) -> str:
    """/signin?next=<the page asked for, query included>, encoded so `?tab=…&window=…` survives.

    An htmx fragment's own path is no page to come back to: its page (HX-Current-URL) is.
    """
    path, query = request.url.path, request.url.query
    current = request.headers.get("hx-current-url") if request.headers.get("hx-request") == "true" else None
    if current:
        parts = urlsplit(current)
        if parts.path.startswith("/"):
            path, query = parts.path, parts.query
    target = f"{path}?{query}" if query else path
    return "/signin?next=" + quote(target, safe="/")


def session_org(request: Request) -> None:
    """Error pages of routes that never ran `page_org` (unknown paths): find the signed-in org
    anyway, so the page keeps its navigation. Best effort: an error page must never fail."""
    if getattr(request.state, "org", None) is not None or "session" not in request.scope:
        return
    try:
        key_hash = request.session.get(SESSION_KEY)
        if isinstance(key_hash, str):
            request.state.org = org_for_session(request.app.state.service.registry, key_hash)
    except Exception:  # the registry may be what failed
        log.debug("no org for the error page of %s", request.url.path, exc_info=True)


def _error_handlers(app: FastAPI) -> None:
    def page_error(request: Request, status: int, title: str, message: str) -> Response:
        templates = request.app.state.templates
        session_org(request)
        response: Response = templates.TemplateResponse(
            request, "error.html", context(request, title=title, message=message), status_code=status)
        return response

    @app.exception_handler(RequestInvalid)
    def invalid(request: Request, exc: RequestInvalid) -> Response:
        if _api(request):
            return _problems(422, exc.problems, exc.details or None)
        return page_error(request, 422, "Request rejected", exc.summary())

    @app.exception_handler(StorageFull)
    def storage_full(request: Request, exc: StorageFull) -> Response:
        if _api(request):
            return _problems(507, [exc.problem])
        return page_error(request, 507, "Out of disk space", f"{exc.problem.message} {exc.problem.hint}")

    @app.exception_handler(NotFound)
    def not_found(request: Request, exc: NotFound) -> Response:
        if _api(request):
            return _problems(404, [exc.problem])
        return page_error(request, 404, "Not found", exc.problem.message)

    @app.exception_handler(Unavailable)
    def unavailable(request: Request, exc: Unavailable) -> Response:
        if _api(request):
            return _problems(503, [exc.problem])
        return page_error(request, 503, "Try again", f"{exc.problem.message} {exc.problem.hint}")

    @app.exception_handler(api.Unauthorized)
    def unauthorized(request: Request, exc: api.Unauthorized) -> Response:
        response = _problems(401, [exc.problem])
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(SignInRequired)
    def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        target = sign_in_target(request)
        if request.headers.get("hx-request") == "true":
            return Response(status_code=200, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(CsrfRejected)
    def csrf_rejected(request: Request, exc: CsrfRejected) -> Response:
        return page_error(request, 403, "Form expired",
                          "This form was not sent from this console session (missing or stale CSRF "
                          "token). Reload the page and try again.")

    @app.exception_handler(RequestValidationError)
    def bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = [Problem("invalid_" + str(e.get("type", "value")).split(".")[0],
                            ".".join(str(part) for part in e.get("loc", ())[1:]) or "body",
                            str(e.get("msg", "invalid value")), "") for e in exc.errors()]
        if _api(request):
            return _problems(422, problems)
        return page_error(request, 422, "Request rejected", "; ".join(p.message for p in problems))

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _api(request):
            return _problems(exc.status_code, [Problem("http_" + str(exc.status_code), "", str(exc.detail))])
        if exc.status_code == 404:
            detail = str(exc.detail)
            message = f"There is no page at {request.url.path}." if detail == "Not Found" else detail
            return page_error(request, 404, "Not found", message)
        return page_error(request, exc.status_code, "Error", str(exc.detail))

    @app.exception_handler(Exception)
    def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        if _api(request):
            return _problems(500, [Problem("internal_error", "", "Something went wrong on our side.",
                                           "Try again; the console log has the details.")])
        return page_error(request, 500, "Something went wrong",
                          "The console log has the details. Try again in a moment.")
