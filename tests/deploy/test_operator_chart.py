"""The operator's part of the chart: narrow RBAC in the release namespace, probes on kopf's
liveness endpoint, an environment the code reads, its network policies, and nothing at all when
it is disabled."""

from __future__ import annotations

from typing import Any

from llm_batcher.settings import CommonSettings, OperatorSettings
from tests.deploy.support import NAMESPACE, Rendered, env_of, render, render_scenario

NAME = "llm-batcher-operator"
ACL = {"redis": {"auth": {"enabled": True}, "acl": {"enabled": True}}}
# Set by the chart from what it knows, not from an `operator.config` value.
DERIVED = {"LLMB_NAMESPACE", "LLMB_WORKER_SELECTOR", "LLMB_WORKER_DEPLOYMENT"}


def _operator_objects(rendered: Rendered) -> list[dict[str, Any]]:
    component = "app.kubernetes.io/component"
    return [o for o in rendered.objects if o["metadata"]["labels"].get(component) == "operator"]


def test_the_role_is_namespaced_narrow_and_bound_to_the_operator_only() -> None:
    rendered = render_scenario("default")
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
    role = rendered.get("Role", NAME)
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    assert rules == {
        (("",), ("pods",)): ["get", "list", "watch", "patch"],
        (("",), ("events",)): ["create"],
    }
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    binding = rendered.get("RoleBinding", NAME)
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": NAME,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    pod = rendered.get("Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == NAME and pod["automountServiceAccountToken"] is True
    # The token is mounted into the operator's pod only, never into other pods of the account.
    assert rendered.get("ServiceAccount", NAME)["automountServiceAccountToken"] is False


def test_probes_ask_kopf_s_liveness_endpoint() -> None:
    container = render_scenario("default").container("Deployment", NAME)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env_of(container)["LLMB_LIVENESS_PORT"]["value"] == str(ports["liveness"])
    assert env_of(container)["LLMB_HEALTH_HOST"]["value"] == "0.0.0.0"  # the kubelet reaches it
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert container["command"] == ["llm-batcher", "operator"]
    assert container["image"].startswith("llm-batcher-worker:")  # the image with kopf


def test_the_environment_is_what_the_code_reads_and_selects_the_worker_pods() -> None:
    rendered = render_scenario("default")
    env = env_of(rendered.container("Deployment", NAME))
    own = set(OperatorSettings.model_fields) - set(CommonSettings.model_fields)
    assert {f"LLMB_{name.upper()}" for name in own} <= set(env)
    assert env["LLMB_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    settings = OperatorSettings(
        **{k.removeprefix("LLMB_").lower(): v for k, v in values.items()}, namespace=NAMESPACE
    )
    worker = rendered.get("Deployment", settings.worker_deployment)
    assert settings.worker_labels == worker["spec"]["selector"]["matchLabels"]
    assert (
        settings.worker_labels.items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    )
    api = rendered.get("Deployment", "llm-batcher-api")["spec"]["template"]["metadata"]["labels"]
    assert not settings.worker_labels.items() <= api.items()
    assert settings.key_prefix == "llmb" and settings.lease_ms == 5000  # the common settings


def test_with_acl_users_the_operator_uses_the_worker_user() -> None:
    env = env_of(render(ACL).container("Deployment", NAME))
    assert env["LLMB_REDIS_URL"]["value"] == "redis://llmb-worker@llm-batcher-redis:6379/0"
    assert env["LLMB_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "worker-password"


def test_network_policies_let_it_reach_redis_and_the_api_server_only() -> None:
    rendered = render_scenario("default")
    spec = rendered.get("NetworkPolicy", NAME)["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in spec["egress"]]
    assert egress_ports == [{53}, {6379}, {443, 6443}]
    redis = rendered.get("NetworkPolicy", "llm-batcher-redis-operator")["spec"]
    assert redis["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    (rule,) = redis["ingress"]
    (peer,) = rule["from"]
    assert peer == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "llm-batcher",
                "app.kubernetes.io/instance": "llm-batcher",
                "app.kubernetes.io/component": "operator",
            }
        }
    }
    to_api_server = {"ipBlock": {"cidr": "10.96.0.1/32"}}
    pinned = render({"operator": {"networkPolicy": {"apiServerTo": [to_api_server]}}})
    assert pinned.get("NetworkPolicy", NAME)["spec"]["egress"][-1]["to"] == [to_api_server]


def test_disabled_renders_nothing_of_the_operator() -> None:
    kinds = sorted(o["kind"] for o in _operator_objects(render_scenario("default")))
    assert kinds == [
        "Deployment", "NetworkPolicy", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount"
    ]  # fmt: skip
    assert _operator_objects(render({"operator": {"enabled": False}})) == []


def test_with_monitoring_the_release_service_monitor_scrapes_its_metrics() -> None:
    """The release's one ServiceMonitor (with its `release` label for the dashboard) selects the
    operator's headless Service too."""
    rendered = render_scenario("monitoring")
    monitor = rendered.get("ServiceMonitor", "llm-batcher")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = rendered.get("Service", NAME)
    assert service["spec"]["clusterIP"] == "None"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (components,) = monitor["spec"]["selector"]["matchExpressions"]
    assert labels["app.kubernetes.io/component"] in components["values"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    (port,) = service["spec"]["ports"]
    container = rendered.container("Deployment", NAME)
    assert port["targetPort"] in [p["name"] for p in container["ports"]]
    assert "ServiceMonitor" not in render_scenario("default").kinds()
