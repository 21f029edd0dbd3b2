"""FAKE Kubernetes API server: stands in for a cluster, which cannot run on these machines.

It answers the few calls the control plane makes through the real `kubernetes` client
(Secrets and networking.k8s.io/v1 NetworkPolicies: create, read, replace, delete; a pod's
container log) the way the API server does: JSON objects, `Status` errors with 404 (read,
replace or delete of a missing object), 409 (create of an existing one) and 400 (a replace
whose body names another object), `stringData` turned into base64 `data`. Everything else is
a 404. Bound to 127.0.0.1 on a free port; `kubeconfig()` writes a
kubeconfig file pointing at it.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

_SECRETS = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
_POLICIES = re.compile(r"^/apis/networking\.k8s\.io/v1/namespaces/([^/]+)/networkpolicies(?:/([^/]+))?$")
_POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


class FakeKubeApi:
    """In-memory Secrets, NetworkPolicies and pod logs behind an HTTP server (FAKE: no cluster here)."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.network_policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str, str], list[str]] = {}  # (namespace, pod, container)
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, forever if never started
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        }
        path.write_text(json.dumps(config))
        return path

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.secrets.get((namespace, name))
        if secret is None:
            return None
        return base64.b64decode(secret["data"][key]).decode()

    def _stored(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """The object as the API server keeps it (a Secret's `stringData` becomes `data`)."""
        body = dict(body)
        if plural == "secrets":
            data = dict(body.get("data") or {})
            for key, value in (body.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(value.encode()).decode()
            body["data"] = data
        body["metadata"] = {**body.get("metadata", {}), "namespace": namespace}
        return body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
                raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": reason, "message": message, "code": code})

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                data: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
                return data

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                with api._lock:
                    api.requests.append((method, url.path))
                    secrets = _SECRETS.match(url.path)
                    policies = _POLICIES.match(url.path)
                    log = _POD_LOG.match(url.path)
                    if secrets:
                        self._objects(api.secrets, "secrets", method, *secrets.groups())
                    elif policies:
                        self._objects(api.network_policies, "networkpolicies", method,
                                      *policies.groups())
                    elif log and method == "GET":
                        ns, pod = log.groups()
                        container = parse_qs(url.query).get("container", [""])[0]
                        tail = int(parse_qs(url.query).get("tailLines", ["0"])[0] or 0)
                        lines = api.logs.get((ns, pod, container))
                        if lines is None:
                            self._status(404, "NotFound", f'pods "{pod}" not found')
                        else:
                            self._send(200, "\n".join(lines[-tail:] if tail else lines) + "\n",
                                       "text/plain")
                    else:
                        self._status(404, "NotFound", f"the server could not find {url.path}")

            def _objects(self, store: dict[tuple[str, str], dict[str, Any]], plural: str,
                         method: str, ns: str, name: str | None) -> None:
                kind = f"{plural}.networking.k8s.io" if plural == "networkpolicies" else plural
                body = self._body() if method in ("POST", "PUT") else {}
                if method == "PUT" and body.get("metadata", {}).get("name") != name:
                    self._status(400, "BadRequest", "the name of the object does not match the URL")
                elif method == "POST" and name is None:
                    key = (ns, body["metadata"]["name"])
                    if key in store:
                        self._status(409, "AlreadyExists", f'{kind} "{key[1]}" already exists')
                    else:
                        store[key] = api._stored(plural, ns, body)
                        self._send(201, store[key])
                elif name is not None and (ns, name) not in store:
                    self._status(404, "NotFound", f'{kind} "{name}" not found')
                elif method == "GET" and name is not None:
                    self._send(200, store[(ns, name)])
                elif method == "PUT" and name is not None:
                    store[(ns, name)] = api._stored(plural, ns, body)
                    self._send(200, store[(ns, name)])
                elif method == "DELETE" and name is not None:
                    store.pop((ns, name))
                    self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                else:
                    self._status(405, "MethodNotAllowed", f"{method} not allowed")

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PUT(self) -> None:
                self._route("PUT")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        return Handler
