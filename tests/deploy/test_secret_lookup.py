"""The generated Redis password is kept across upgrades: rendered by the real Helm engine against
a stand-in Kubernetes API on 127.0.0.1, `lookup` finds the live Secret and the chart renders its
password unchanged; with no Secret there, it generates one."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import helm_python
import pytest
import yaml

from tests.deploy.support import NAMESPACE, RELEASE, chart

SECRET_PATH = f"/api/v1/namespaces/{NAMESPACE}/secrets/{RELEASE}-redis"
# Discovery: what client-go asks to map the kind Secret to its resource.
CORE_RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
         "verbs": ["get", "list"]},
    ],
}  # fmt: skip


class _FakeKubeApi(BaseHTTPRequestHandler):
    """Answers discovery and GET of the release's Redis Secret (404 when there is none)."""

    secret: ClassVar[dict[str, Any] | None] = None
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.requests.append(path)
        if path == "/api/v1":
            self._answer(200, CORE_RESOURCES)
        elif path == SECRET_PATH and self.secret is not None:
            self._answer(200, self.secret)
        else:
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
            self._answer(404, status | {"reason": "NotFound"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def helm_config() -> Iterator[helm_python.Config]:
    """A Helm configuration whose API server is the stand-in."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKubeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with helm_python.Config(kube_apiserver=url, kube_token="test", namespace=NAMESPACE) as cfg:
            yield cfg
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _rendered_secret(cfg: helm_python.Config) -> dict[str, Any]:
    sources = cfg.render(chart(), {}, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    secret: dict[str, Any] = yaml.safe_load(sources[f"{RELEASE}/templates/redis/secret.yaml"])
    return secret


def test_an_upgrade_keeps_the_live_password(helm_config: helm_python.Config) -> None:
    live = base64.b64encode(b"the-password-of-the-first-install").decode()
    _FakeKubeApi.secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{RELEASE}-redis", "namespace": NAMESPACE},
        "data": {"redis-password": live},
    }
    _FakeKubeApi.requests.clear()
    assert _rendered_secret(helm_config)["data"] == {"redis-password": live}
    assert SECRET_PATH in _FakeKubeApi.requests  # it did ask the cluster


def test_without_a_live_secret_a_password_is_generated(helm_config: helm_python.Config) -> None:
    _FakeKubeApi.secret = None
    first = _rendered_secret(helm_config)["data"]["redis-password"]
    second = _rendered_secret(helm_config)["data"]["redis-password"]
    assert first != second  # nothing to keep: a fresh one each time
    assert len(base64.b64decode(first)) == 32
