"""A Kubernetes API server that knows pods and events in one namespace, on 127.0.0.1: enough of
the API for kopf to log in from a kubeconfig, discover pods, list and watch them, and for the
operator to patch pods and post Events. The test pushes watch events and reads what was sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

NAMESPACE = "llmb"
_RESOURCES = [
    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
     "verbs": ["get", "list", "watch", "patch"]},
    {"name": "events", "singularName": "event", "namespaced": True, "kind": "Event",
     "verbs": ["create", "list", "watch"]},
    {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
     "verbs": ["get", "list", "watch"]},
]  # fmt: skip


@dataclass
class FakeKube:
    """The server's state: the pods, the open watches, and what the operator sent."""

    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    watches: list[asyncio.Queue[dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    def push(self, event_type: str, pod: dict[str, Any]) -> None:
        """Send a watch event to every open watch, and keep the pod (or forget a deleted one)."""
        name = pod["metadata"]["name"]
        if event_type == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod
        for queue in self.watches:
            queue.put_nowait({"type": event_type, "object": pod})

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig.json"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {
                "cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
        }))  # fmt: skip
        return path

    # --- routes ----------------------------------------------------------------------------

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            items = list(self.pods.values())
            meta = {"resourceVersion": "1"}
            return web.json_response({"kind": "PodList", "metadata": meta, "items": items})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.watches.append(queue)
        try:
            while True:
                event = await queue.get()
                await response.write(json.dumps(event).encode() + b"\n")
        finally:
            self.watches.remove(queue)

    async def _patch_pod(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        patch = await request.json()
        self.patches.append((name, patch))
        pod = self.pods.get(name)
        if pod is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        annotations = pod["metadata"].setdefault("annotations", {})
        annotations.update(patch.get("metadata", {}).get("annotations", {}))
        return web.json_response(pod)

    async def _post_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.events.append(body)
        return web.json_response(body, status=201)

    @staticmethod
    def _fixed(body: dict[str, Any]) -> Any:
        async def answer(_: web.Request) -> web.Response:
            return web.json_response(body)

        return answer

    def app(self) -> web.Application:
        app = web.Application()
        fixed = {
            "/version": {"major": "1", "minor": "31", "gitVersion": "v1.31.0"},
            "/api": {"kind": "APIVersions", "versions": ["v1"]},
            "/apis": {"kind": "APIGroupList", "groups": []},
            "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": _RESOURCES},
        }
        for path, body in fixed.items():
            app.router.add_get(path, self._fixed(body))
        base = f"/api/v1/namespaces/{NAMESPACE}"
        app.router.add_get(f"{base}/pods", self._pods)
        app.router.add_patch(f"{base}/pods/{{name}}", self._patch_pod)
        app.router.add_post(f"{base}/events", self._post_event)
        return app


@asynccontextmanager
async def fake_kube() -> AsyncIterator[FakeKube]:
    """The fake API server on a free port of 127.0.0.1, for the duration of the block."""
    kube = FakeKube()
    runner = web.AppRunner(kube.app(), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kube.url = f"http://127.0.0.1:{port}"
    try:
        yield kube
    finally:
        await runner.cleanup()
