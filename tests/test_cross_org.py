"""Another organization's endpoints, checkpoints and keys answer exactly like unknown names.

Generated from the console app's route table: every route whose path names an endpoint,
checkpoint or key is called as organization B for organization A's object (by name and by
id) and must answer as it does for a name that exists nowhere (API: the same 404), change
nothing (row counts, A's object), while A calling it for its own object gets something
else (so a route that refused everyone would not pass). Routes that name no such object in
their path are listed below, each with why, and a new route fails until someone classifies
it. The registry lookups the flows and the CLI rely on alone are checked directly.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from inference_endpoints.adapters.console import create_app
from inference_endpoints.adapters.console.config import ConsoleSettings
from inference_endpoints.cli.common import Context, require_endpoint
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.persistence.checkpoint_lifecycle import delete_checkpoint
from inference_endpoints.persistence.db import get_engine
from inference_endpoints.persistence.models import ApiKey, Checkpoint, Endpoint, Organization, new_id
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.settings import Settings
from tests.archs import write_lora, write_tiny_llama
from tests.sources import tar_of
from tests.test_console_api import FakeOrchestrator, FakeTraffic

# The path segment before a parameter names the kind of object it is.
OBJECT_OF = {"endpoints": "endpoint", "checkpoints": "checkpoint", "keys": "key"}
# Path parameters that name no object of an organization.
NOT_AN_OBJECT = {("GET", "/vendor/{name}"): "a front-end library file from node_modules"}
# Routes whose path names no object. Those marked "ref in ..." take one elsewhere and are
# called below (REFS_ELSEWHERE); the others only ever see the caller's organization.
NO_PATH_OBJECT = {
    ("GET", "/openapi.json"): "the API schema", ("GET", "/docs"): "Swagger UI",
    ("GET", "/docs/oauth2-redirect"): "Swagger UI", ("GET", "/redoc"): "ReDoc",
    ("GET", "/api/v1/org"): "the caller's organization",
    ("GET", "/api/v1/endpoints"): "the caller's list",
    ("POST", "/api/v1/endpoints"): "ref in the body: checkpoint",
    ("POST", "/api/v1/endpoints/validate"): "ref in the body: checkpoint",
    ("GET", "/api/v1/activity"): "ref in the query: endpoint",
    ("GET", "/api/v1/checkpoints"): "the caller's list",
    ("POST", "/api/v1/checkpoints"): "ref in the body: base checkpoint",
    ("POST", "/api/v1/checkpoints/upload"): "ref in the query: base checkpoint",
    ("GET", "/api/v1/instances"): "the shared instance catalog",
    ("GET", "/api/v1/keys"): "the caller's keys", ("POST", "/api/v1/keys"): "a new key for the caller",
    ("GET", "/signin"): "sign-in form", ("POST", "/signin"): "sign-in with a key",
    ("POST", "/signout"): "sign-out", ("GET", "/"): "redirect", ("GET", "/endpoints"): "the caller's list",
    ("GET", "/endpoints/_table"): "the caller's list",
    ("GET", "/endpoints/new"): "ref in the query: checkpoint (form prefill)",
    ("POST", "/endpoints/new/validate"): "ref in the form: checkpoint",
    ("POST", "/endpoints/new"): "ref in the form: checkpoint",
    ("GET", "/checkpoints"): "the caller's list",
    ("POST", "/checkpoints/register"): "ref in the form: base checkpoint",
    ("GET", "/keys"): "the caller's keys", ("POST", "/keys"): "a new key for the caller",
    ("GET", "/sd/targets"): "Prometheus discovery: every org's targets, loopback callers only",
    ("GET", "/favicon.ico"): "the console's icon",
}
MOUNTS = {"/static": "the console's own CSS and JS"}
# Unknown references of each shape: a name, and an id that exists nowhere.
UNKNOWN = {"endpoint": ("no-such-endpoint", new_id("ep")), "checkpoint": ("no-such-checkpoint", new_id("ckpt")),
           "key": ("ie_nosuchkey", new_id("key"))}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    kind: str  # the kind of object the reference names
    build: Callable[[str], dict[str, Any]]  # reference -> httpx request arguments (path filled in)

    @property
    def page(self) -> bool:
        return not self.path.startswith("/api/")


def route_table(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every route of the app, mounts as ("MOUNT", path)."""
    for route in iter_route_contexts(app.routes):
        methods = route.methods or set()
        if not methods:
            yield "MOUNT", str(route.path)
        for method in sorted(methods - {"HEAD"}):
            yield method, str(route.path)


def path_calls(app: FastAPI) -> tuple[list[Call], list[str]]:
    """A call for each route whose path names an object, and every route nobody classified."""
    calls, unclassified = [], []
    for method, path in route_table(app):
        params = re.findall(r"\{(\w+)\}", path)
        if method == "MOUNT":
            if path not in MOUNTS:
                unclassified.append(f"mount {path}")
            continue
        if not params:
            if (method, path) not in NO_PATH_OBJECT:
                unclassified.append(f"{method} {path}")
            continue
        if (method, path) in NOT_AN_OBJECT:
            continue
        segment = re.search(r"/(\w+)/\{\w+\}", path)
        kind = OBJECT_OF.get(segment.group(1)) if segment and len(params) == 1 else None
        if kind is None:
            unclassified.append(f"{method} {path}")
            continue
        calls.append(Call(method, path, kind, _body_for(method, path)))
    return calls, unclassified


def _body_for(method: str, path: str) -> Callable[[str], dict[str, Any]]:
    """What a well-formed call sends besides the reference (a page form always has its token)."""
    if path.startswith("/api/"):
        body = ({"json": {"idle_stop_minutes": 30}} if method == "PATCH"
                else {"json": {"min_replicas": 2, "max_replicas": 2}} if path.endswith("/scale")
                else {"json": {"max_context": 512}} if path.endswith("/update") else {})
        return lambda ref: dict(body)
    if path.endswith("/_playground"):  # JSON, its token in a header: see Caller.send
        return lambda ref: {"json": {"prompt": "hi", "max_tokens": 1}}
    form = ({"idle_stop_minutes": "30"} if path.endswith("/idle-stop")
            else {"min_replicas": "2"} if path.endswith("/scale")
            else {"max_context": "512"} if path.endswith("/update") else {})
    return lambda ref: {"data": dict(form)} if method == "POST" else {}


# ---- two organizations in one console ---------------------------------------------------------

@dataclass
class Orgs:
    app: FastAPI
    registry: Registry
    orchestrator: FakeOrchestrator
    a: Organization
    b: Organization
    a_key: str
    b_key: str
    endpoint: Endpoint  # A's
    checkpoint: Checkpoint  # A's
    key: ApiKey  # A's, not the one A signs in with
    lora_src: Path

    def refs(self, kind: str) -> tuple[str, str]:
        """A's object of this kind: by name, and by id."""
        if kind == "endpoint":
            return self.endpoint.name, self.endpoint.id
        if kind == "checkpoint":
            return self.checkpoint.name, self.checkpoint.id
        return self.key.prefix, self.key.id

    def state(self) -> tuple[Any, ...]:
        """Everything a leaked call could change: row counts, A's objects, submitted runs."""
        ep = self.registry.get_endpoint(self.endpoint.id)
        ckpt = self.registry.find_checkpoint(self.a.id, self.checkpoint.id)
        key = next(k for k in self.registry.list_keys(self.a.id) if k.id == self.key.id)
        assert ep is not None and ckpt is not None
        return (self.registry.counts(), ep.status, ep.idle_stop_minutes, ckpt.status, key.revoked_at,
                len(self.orchestrator.calls))


def _app(tmp: Path, registry: Registry, orchestrator: FakeOrchestrator) -> FastAPI:
    settings = Settings(data_dir=tmp / "data", gateway_port=8780)
    return create_app(settings, console=ConsoleSettings(secret="test-secret", prometheus_url="http://127.0.0.1:9"),
                      registry=registry, store=LocalCheckpointStore(settings.store_root),
                      orchestrator=orchestrator, traffic=FakeTraffic())


def make_orgs(tmp: Path) -> Orgs:
    registry = Registry(f"sqlite:///{tmp / 'registry.db'}")
    registry.init(default_org="default")
    a = registry.get_org_by_name("default")
    assert a is not None
    a_key = registry.create_key(a.id, "signs-in").secret
    target_key = registry.create_key(a.id, "laptop").key
    b, b_new = registry.create_org("other")
    orchestrator = FakeOrchestrator()
    app = _app(tmp, registry, orchestrator)
    drops = Settings(data_dir=tmp / "data").imports_dir  # each organization's drop folder is a root
    src = write_tiny_llama(drops / a.name / "tiny")
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {a_key}"}
        assert client.post("/api/v1/checkpoints", json={"path": str(src), "name": "tiny"},
                           headers=auth).status_code == 201
        r = client.post("/api/v1/endpoints", headers=auth, json={
            "name": "secret-ep", "checkpoint": "tiny", "instance": "cpu-dev", "max_context": 1024,
            "precision": "float32"})
        assert r.status_code == 202, r.text
    endpoint = registry.find_endpoint(a.id, "secret-ep")
    checkpoint = registry.find_checkpoint(a.id, "tiny")
    assert endpoint is not None and checkpoint is not None
    lora = write_lora(drops / b.name / "lora", base=None)  # B's own: B's register gets to the base
    return Orgs(app, registry, orchestrator, a, b, a_key, b_new.secret, endpoint, checkpoint,
                target_key, lora)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Orgs]:
    """Both organizations built once (migrations, a real checkpoint import); tests get a copy."""
    tmp = tmp_path_factory.mktemp("cross-org")
    orgs = make_orgs(tmp)
    get_engine(orgs.registry.url).dispose()  # closes the WAL, so a file copy is the whole database
    return tmp, orgs


@pytest.fixture
def orgs(template: tuple[Path, Orgs], tmp_path: Path) -> Orgs:
    source, built = template
    copy = tmp_path / "orgs"
    shutil.copytree(source, copy, symlinks=True)
    registry = Registry(f"sqlite:///{copy / 'registry.db'}")
    orchestrator = FakeOrchestrator(calls=list(built.orchestrator.calls))
    return replace(built, app=_app(copy, registry, orchestrator), registry=registry,
                   orchestrator=orchestrator, lora_src=copy / built.lora_src.relative_to(source))


@dataclass
class Caller:
    """One organization's client: its key for the API, a signed-in session for the pages."""

    client: TestClient
    key: str
    csrf: str = ""

    @classmethod
    def signed_in(cls, app: FastAPI, key: str) -> Caller:
        client = TestClient(app)
        page = client.get("/signin")
        token = _csrf(page.text)
        r = client.post("/signin", data={"api_key": key, "csrf_token": token, "next": "/endpoints"},
                        follow_redirects=False)
        assert r.status_code == 303, r.text
        return cls(client, key, _csrf(client.get("/endpoints").text))

    def send(self, call: Call, ref: str) -> httpx.Response:
        args = call.build(ref)
        path = re.sub(r"\{\w+\}", ref, call.path)
        if call.page:
            if call.path.endswith("/_playground"):  # the playground sends the signed-in key itself
                headers = {"X-CSRF-Token": self.csrf, "Authorization": f"Bearer {self.key}"}
                return self.client.request(call.method, path, headers=headers, **args)
            if call.method == "POST":
                args.setdefault("data", {})["csrf_token"] = self.csrf
            return self.client.request(call.method, path, follow_redirects=True, **args)
        return self.client.request(call.method, path, headers={"Authorization": f"Bearer {self.key}"},
                                   **args)


def _csrf(html: str) -> str:
    found = CSRF.search(html)
    assert found, "page has no CSRF field"
    return found.group(1)


def answer(response: httpx.Response, ref: str) -> tuple[int, str, str]:
    """Status, final path and body, with the reference itself blanked out."""
    path = response.url.path.replace(ref, "<ref>")
    return response.status_code, path, response.text.replace(ref, "<ref>")


# ---- the generated checks ---------------------------------------------------------------------

def test_every_route_is_classified(orgs: Orgs) -> None:
    calls, unclassified = path_calls(orgs.app)
    assert not unclassified, ("routes nobody classified: list each in NO_PATH_OBJECT (and call it in "
                              f"REFS_ELSEWHERE if it takes a reference) or name its object: {unclassified}")
    kinds = {c.kind for c in calls}
    assert kinds == {"endpoint", "checkpoint", "key"} and len(calls) >= 15, calls


def _route_ids() -> list[str]:
    app = create_app(Settings(data_dir=Path("/nonexistent/ie-route-table")),
                     console=ConsoleSettings(secret="x"), orchestrator=FakeOrchestrator(), traffic=FakeTraffic())
    return [f"{c.method} {c.path}" for c in path_calls(app)[0]]


@pytest.mark.parametrize("route", _route_ids())
def test_another_orgs_object_answers_like_an_unknown_one(route: str, orgs: Orgs) -> None:
    call = next(c for c in path_calls(orgs.app)[0] if f"{c.method} {c.path}" == route)
    b = Caller.signed_in(orgs.app, orgs.b_key)
    before = orgs.state()
    for ref, unknown in zip(orgs.refs(call.kind), UNKNOWN[call.kind], strict=True):
        theirs, nothing = b.send(call, ref), b.send(call, unknown)
        assert answer(theirs, ref) == answer(nothing, unknown), f"{route} {ref!r} tells B that A has it"
        if not call.page:
            assert theirs.status_code == 404, (route, ref, theirs.text)
        assert orgs.state() == before, f"{route} as B changed A's data through {ref!r}"
    # The owner gets something else: the route really looks the object up.
    a = Caller.signed_in(orgs.app, orgs.a_key)
    name = orgs.refs(call.kind)[0]
    mine, unknown_to_a = a.send(call, name), a.send(call, UNKNOWN[call.kind][0])
    assert answer(mine, name) != answer(unknown_to_a, UNKNOWN[call.kind][0]), f"{route} refuses its owner too"


# ---- references outside the path ---------------------------------------------------------------

def _create_body(ref: str) -> dict[str, Any]:
    return {"name": "b-new", "checkpoint": ref, "instance": "cpu-dev", "max_context": 1024,
            "precision": "float32"}


def _form(ref: str) -> dict[str, Any]:
    return {"data": {"name": "b-new", "checkpoint": ref, "instance": "cpu-dev", "max_context": "1024",
                     "precision": "float32", "quantization": "none"}}


REFS_ELSEWHERE: dict[tuple[str, str], tuple[str, Callable[[Orgs, str], dict[str, Any]]]] = {
    ("GET", "/api/v1/activity"): ("endpoint", lambda o, ref: {"params": {"endpoint": ref}}),
    ("POST", "/api/v1/endpoints"): ("checkpoint", lambda o, ref: {"json": _create_body(ref)}),
    ("POST", "/api/v1/endpoints/validate"): ("checkpoint", lambda o, ref: {"json": _create_body(ref)}),
    ("POST", "/api/v1/checkpoints"): ("checkpoint", lambda o, ref: {"json": {
        "path": str(o.lora_src), "name": "b-lora", "base": ref}}),
    ("POST", "/api/v1/checkpoints/upload"): ("checkpoint", lambda o, ref: {
        "params": {"name": "b-lora", "base": ref}, "content": tar_of(o.lora_src)}),
    ("GET", "/endpoints/new"): ("checkpoint", lambda o, ref: {"params": {"checkpoint": ref}}),
    ("POST", "/endpoints/new/validate"): ("checkpoint", lambda o, ref: _form(ref)),
    ("POST", "/endpoints/new"): ("checkpoint", lambda o, ref: _form(ref)),
    ("POST", "/checkpoints/register"): ("checkpoint", lambda o, ref: {"data": {
        "path": str(o.lora_src), "name": "b-lora", "base": ref}}),
}


def test_refs_elsewhere_cover_every_route_that_takes_one() -> None:
    said = {route for route, why in NO_PATH_OBJECT.items() if why.startswith("ref in")}
    assert said == set(REFS_ELSEWHERE)


@pytest.mark.parametrize("route", [f"{m} {p}" for m, p in REFS_ELSEWHERE])
def test_another_orgs_reference_in_a_query_or_body_answers_like_an_unknown_one(
        route: str, orgs: Orgs) -> None:
    method, path = route.split(" ", 1)
    kind, build = REFS_ELSEWHERE[(method, path)]
    call = Call(method, path, kind, lambda ref: build(orgs, ref))
    b = Caller.signed_in(orgs.app, orgs.b_key)
    before = orgs.state()
    for ref, unknown in zip(orgs.refs(kind), UNKNOWN[kind], strict=True):
        theirs, nothing = b.send(call, ref), b.send(call, unknown)
        assert answer(theirs, ref) == answer(nothing, unknown), f"{route} {ref!r} tells B that A has it"
        assert theirs.status_code >= 400 or "No checkpoint" in theirs.text or call.method == "GET", theirs.text
        assert orgs.state() == before, f"{route} as B used A's {kind} {ref!r}"


# ---- the Python entry points that take a reference from a caller ----------------------------------

def test_registry_lookups_never_cross_organizations(orgs: Orgs, tmp_path: Path) -> None:
    """`find_endpoint` is the only org check of flows/stop_endpoint.py and cli require_endpoint."""
    reg, b = orgs.registry, orgs.b.id
    for ref in orgs.refs("endpoint"):
        assert reg.find_endpoint(b, ref) is None, f"find_endpoint gave org B A's endpoint by {ref!r}"
        with pytest.raises(typer.Exit) as refused:
            require_endpoint(Context(Settings(data_dir=tmp_path / "data"), reg, b), ref)
        assert refused.value.exit_code == 2
    for ref in orgs.refs("checkpoint"):
        assert reg.find_checkpoint(b, ref) is None, f"find_checkpoint gave org B A's checkpoint by {ref!r}"
        assert reg.find_checkpoint(b, ref, available_only=True) is None
        assert reg.checkpoint_view(b, ref) is None, f"checkpoint_view showed org B A's checkpoint {ref!r}"
        before = orgs.state()
        with pytest.raises(RequestInvalid) as refused:
            delete_checkpoint(reg, b, ref)
        assert refused.value.codes == ["checkpoint_not_found"] and orgs.state() == before
    # The owner finds them, by name and by id (the checks above are not vacuous).
    assert all(reg.find_endpoint(orgs.a.id, ref) is not None for ref in orgs.refs("endpoint"))
    assert all(reg.checkpoint_view(orgs.a.id, ref) is not None for ref in orgs.refs("checkpoint"))
    with pytest.raises(RequestInvalid):
        reg.revoke_key(b, orgs.key.prefix)
    assert orgs.state()[4] is None  # A's key is not revoked
