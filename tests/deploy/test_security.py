"""The chart's exposure: metrics on their own port, docs off, NetworkPolicies for the API, the
workers and their egress, ingress annotations per controller, and images pinned by digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from llm_batcher.local.embedded_redis import start_server, stop_process, valkey_binary
from llm_batcher.protocol.acl import user_rules
from tests.deploy.support import KUBE_VERSIONS, Rendered, env_of, render, validate_object

MONITORING = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}


def _policy(rendered: Rendered, component: str) -> dict[str, Any]:
    return rendered.get("NetworkPolicy", f"llm-batcher-{component}")["spec"]


def _ports(rule: dict[str, Any]) -> set[object]:
    return {p["port"] for p in rule["ports"]}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"redis": {"enabled": False}, "externalRedis": {"url": "redis://cache.prod:6380/0"}},
        {"api": {"config": {"metricsPort": 0}}, "worker": {"config": {"metricsPort": 0}}},
        {"api": {"networkPolicy": {"from": [{"namespaceSelector": MONITORING}]}}},
        {"redis": {"acl": {"enabled": True}}},
    ],
)
def test_security_objects_are_valid_kubernetes(values: dict[str, Any]) -> None:
    for obj in render(values | {"monitoring": {"serviceMonitor": {"enabled": True}}}).objects:
        for version in KUBE_VERSIONS:
            validate_object(obj, version)


def test_metrics_leave_the_public_port_and_docs_are_off() -> None:
    rendered = render({"monitoring": {"serviceMonitor": {"enabled": True}}})
    api = rendered.container("Deployment", "llm-batcher-api")
    env = env_of(api)
    assert env["LLMB_DOCS"]["value"] == "false"
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert env["LLMB_METRICS_PORT"]["value"] == str(ports["metrics"]) != str(ports["http"])
    service = rendered.get("Service", "llm-batcher-api")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "metrics": "metrics",
    }
    worker = rendered.get("Service", "llm-batcher-worker")
    assert [p["targetPort"] for p in worker["spec"]["ports"]] == ["metrics"]
    monitor = rendered.get("ServiceMonitor", "llm-batcher")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_the_ingress_routes_only_to_the_public_port() -> None:
    rendered = render({"api": {"ingress": {"enabled": True}}})
    ingress = rendered.get("Ingress", "llm-batcher-api")
    backends = [
        path["backend"]["service"]["port"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends == [{"name": "http"}]


def test_api_policy_admits_the_public_port_and_metrics_from_monitoring_only() -> None:
    spec = _policy(render(), "api")
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    public, metrics = spec["ingress"]
    assert _ports(public) == {"http"} and "from" not in public  # anyone: it is the API
    assert _ports(metrics) == {"metrics"}
    # ... and the `helm test` pod, which checks the autoscaling metric is exported.
    hook = {"podSelector": {"matchLabels": _selector("test")}}
    assert metrics["from"] == [{"namespaceSelector": MONITORING}, hook]
    without_hook = _policy(render({"helmTest": {"enabled": False}}), "api")["ingress"][1]
    assert without_hook["from"] == [{"namespaceSelector": MONITORING}]


def test_api_policy_admits_the_hook_pod_beside_the_ingress_controller() -> None:
    controller = {"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}
    spec = _policy(render({"api": {"networkPolicy": {"from": [controller]}}}), "api")
    public = spec["ingress"][0]
    assert public["from"] == [controller, {"podSelector": {"matchLabels": _selector("test")}}]


def _selector(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "llm-batcher",
        "app.kubernetes.io/instance": "llm-batcher",
        "app.kubernetes.io/component": component,
    }


def test_worker_policy_admits_only_metrics_from_monitoring() -> None:
    spec = _policy(render(), "worker")
    (only,) = spec["ingress"]
    assert _ports(only) == {"metrics"}
    assert only["from"] == [{"namespaceSelector": MONITORING}]


@pytest.mark.parametrize("component", ["api", "worker"])
def test_egress_reaches_only_dns_and_redis(component: str) -> None:
    dns, redis = _policy(render(), component)["egress"]
    assert _ports(dns) == {53}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert _ports(redis) == {6379}
    labels = redis["to"][0]["podSelector"]["matchLabels"]
    assert labels["app.kubernetes.io/component"] == "redis"


def test_egress_to_an_external_redis_uses_the_port_of_its_url() -> None:
    rendered = render(
        {"redis": {"enabled": False}, "externalRedis": {"url": "rediss://cache.prod:6380/0"}}
    )
    _, redis = _policy(rendered, "worker")["egress"]
    assert _ports(redis) == {6380} and "to" not in redis


def test_policies_can_be_extended_and_turned_off() -> None:
    model_server = {"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}], "ports": [{"port": 8080}]}
    spec = _policy(render({"worker": {"networkPolicy": {"extraEgress": [model_server]}}}), "worker")
    assert spec["egress"][-1] == model_server
    rendered = render(
        {
            "api": {"networkPolicy": {"enabled": False}},
            "worker": {"networkPolicy": {"enabled": False}},
            "operator": {"networkPolicy": {"enabled": False}},
            "networkPolicy": {"egress": {"enabled": False}},
        }
    )
    names = [o["metadata"]["name"] for o in rendered.of_kind("NetworkPolicy")]
    assert sorted(names) == ["llm-batcher-redis", "llm-batcher-redis-operator"]
    only_egress = _policy(render({"api": {"networkPolicy": {"enabled": False}}}), "api")
    assert only_egress["policyTypes"] == ["Egress"]


def test_ingress_annotations_follow_the_controller() -> None:
    def annotations(ingress: dict[str, Any]) -> dict[str, str]:
        rendered = render({"api": {"ingress": {"enabled": True, **ingress}}})
        return dict(rendered.get("Ingress", "llm-batcher-api")["metadata"].get("annotations", {}))

    nginx = annotations({})
    assert nginx["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert nginx["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    traefik = annotations({"controller": "traefik", "annotations": {"extra": "yes"}})
    assert traefik == {
        "traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
        "traefik.ingress.kubernetes.io/router.tls": "true",
        "extra": "yes",
    }
    assert annotations({"controller": ""}) == {}
    dropped = annotations(
        {"controllerAnnotations": {"nginx": {"nginx.ingress.kubernetes.io/proxy-body-size": None}}}
    )
    assert "nginx.ingress.kubernetes.io/proxy-body-size" not in dropped


def test_the_redis_image_can_be_pinned_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    rendered = render({"redis": {"image": {"digest": digest}}})
    redis = rendered.container("StatefulSet", "llm-batcher-redis")
    assert redis["image"] == f"docker.io/library/redis@{digest}"
    assert render().container("StatefulSet", "llm-batcher-redis")["image"].endswith(":7.4")


ACL = {"redis": {"acl": {"enabled": True}}, "config": {"keyPrefix": "prod"}}


def test_acl_users_get_their_own_urls_and_passwords() -> None:
    rendered = render(ACL)
    for component in ("api", "worker"):
        env = env_of(rendered.container("Deployment", f"llm-batcher-{component}"))
        assert env["LLMB_REDIS_URL"]["value"] == (
            f"redis://llmb-{component}@llm-batcher-redis:6379/0"
        )
        assert env["LLMB_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "llm-batcher-redis",
            "key": f"{component}-password",
        }
    secret = rendered.get("Secret", "llm-batcher-redis")
    assert set(secret["data"]) == {"redis-password", "api-password", "worker-password"}
    assert len(set(secret["data"].values())) == 3


def _user_rules(args: list[str], user: str) -> list[str]:
    """The rules after `--user USER` in redis-server's arguments."""
    start = args.index(user, args.index("--user")) + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    return args[start:end]


def test_acl_rules_are_the_code_rules() -> None:
    redis = render(ACL).container("StatefulSet", "llm-batcher-redis")
    for component in ("api", "worker"):
        password = f"$(REDIS_{component.upper()}_PASSWORD)"
        assert _user_rules(redis["args"], f"llmb-{component}") == user_rules("prod", password)
    env = env_of(redis)
    assert env["REDIS_API_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "api-password"
    assert "--user" not in render().container("StatefulSet", "llm-batcher-redis")["args"]


def test_a_redis_server_started_with_the_chart_args_knows_the_users(tmp_path: Path) -> None:
    """redis-server takes the `--user` lines as the chart renders them (the local Valkey)."""
    args = render(ACL).container("StatefulSet", "llm-batcher-redis")["args"]
    passwords = {
        "REDIS_PASSWORD": "admin",
        "REDIS_API_PASSWORD": "api",
        "REDIS_WORKER_PASSWORD": "w",
    }
    for name, value in passwords.items():
        args = [a.replace(f"$({name})", value) for a in args]
    args[args.index("--dir") + 1] = str(tmp_path)

    def argv(port: int) -> list[str]:
        args[args.index("--port") + 1] = str(port)
        return [str(valkey_binary()), *args, "--bind", "127.0.0.1", "--save", ""]

    port, server = start_server(argv, tmp_path / "valkey.log", password="admin")
    try:
        api = redis.Redis(port=port, username="llmb-api", password="api")
        assert api.set("prod:task:x", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            api.get("other:task:x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            api.flushall()
        worker = redis.Redis(port=port, username="llmb-worker", password="w")
        assert worker.get("prod:task:x") == b"1"
    finally:
        stop_process(server)
