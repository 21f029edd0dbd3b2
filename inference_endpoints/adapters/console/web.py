"""Sessions, CSRF and templates for the console's pages.

The session is a signed cookie (Starlette's SessionMiddleware, itsdangerous;
HttpOnly, SameSite=Lax) holding the SHA-256 of the key the user signed in with,
never the key, and a CSRF token. Every request re-checks the key, so revoking it
signs the session out. State-changing forms carry the token as a field, htmx
requests as the `X-CSRF-Token` header.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Form, Header, Request
from fastapi.templating import Jinja2Templates

from inference_endpoints.adapters.console.queries import org_for_session
from inference_endpoints.adapters.console.service import ConsoleService
from inference_endpoints.core.cost import aware
from inference_endpoints.persistence.models import Organization

TEMPLATES_DIR = Path(__file__).parent / "templates"
SESSION_KEY = "kh"
CSRF_KEY = "csrf"
FLASH_KEY = "flash"


class SignInRequired(Exception):
    """The page needs a signed-in session; answered with a redirect to /signin."""


class CsrfRejected(Exception):
    """A state-changing request without the session's CSRF token."""


def csrf_token(request: Request) -> str:
    token = request.session.get(CSRF_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_KEY] = token
    return token


def check_csrf(request: Request, csrf_form: Annotated[str, Form(alias="csrf_token")] = "",
               x_csrf_token: Annotated[str | None, Header()] = None) -> None:
    expected = request.session.get(CSRF_KEY)
    presented = x_csrf_token or csrf_form
    if not isinstance(expected, str) or not presented or not secrets.compare_digest(expected, presented):
        raise CsrfRejected()


def sign_in(request: Request, key_hash: str) -> None:
    request.session.clear()
    request.session[SESSION_KEY] = key_hash
    request.session[CSRF_KEY] = secrets.token_urlsafe(32)  # a new token with every sign-in


def sign_out(request: Request) -> None:
    request.session.clear()


def page_service(request: Request) -> ConsoleService:
    svc: ConsoleService = request.app.state.service
    return svc


def page_org(request: Request, svc: Annotated[ConsoleService, Depends(page_service)]) -> Organization:
    key_hash = request.session.get(SESSION_KEY)
    org = org_for_session(svc.registry, key_hash) if isinstance(key_hash, str) else None
    if org is None:
        request.session.pop(SESSION_KEY, None)
        raise SignInRequired()
    request.state.org = org
    return org


def flash(request: Request, kind: str, text: str) -> None:
    request.session[FLASH_KEY] = {"kind": kind, "text": text}


def take_flash(request: Request) -> dict[str, str] | None:
    value = request.session.pop(FLASH_KEY, None)
    return value if isinstance(value, dict) else None


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# ---- template filters ---------------------------------------------------------------------------

def fmt_money(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "$0.00"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def fmt_duration(value: timedelta | float | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def fmt_time(value: datetime | None) -> str:
    moment = aware(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


# The CLI's flags, as the create form names the same fields: a hint on a page speaks the page.
FORM_LABELS = {"max-context": "max context", "precision": "precision", "instance": "instance",
               "quantization": "quantization", "name": "name", "checkpoint": "checkpoint",
               "idle-stop-minutes": "idle auto-stop", "min-replicas": "min replicas",
               "max-replicas": "max replicas", "scale-target": "target per replica"}
_FLAG = re.compile(r"`?--([a-z][a-z-]*)(?:[ =]([^\s`]+))?`?")


def form_words(text: str | None) -> str:
    """'Use --max-context 2048 or less' -> 'Use max context 2048 or less' (the form's field)."""
    if not text:
        return ""

    def label(match: re.Match[str]) -> str:
        name = FORM_LABELS.get(match.group(1))
        if name is None:
            return match.group(0)
        value = match.group(2)
        return f"{name} {value}" if value else name

    return _FLAG.sub(label, text)


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env = templates.env
    env.filters.update(money=fmt_money, duration=fmt_duration, time=fmt_time, bytes=fmt_bytes,
                       form_words=form_words)
    env.globals.update(csrf_token=csrf_token)
    return templates


def context(request: Request, **values: Any) -> dict[str, Any]:
    """What every page template gets: the org (if signed in) and a pending flash message."""
    return {"request": request, "org": getattr(request.state, "org", None),
            "flash": take_flash(request), **values}
