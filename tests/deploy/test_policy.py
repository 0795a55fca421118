"""Policies over the rendered objects, in every scenario: hardened and sized containers, stable
selectors, shutdown timings derived from the code's drain times, Redis reachable only by the API
and workers, and the Redis password only ever referenced."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest

from tests.deploy.support import CHART_DIR, SCENARIOS, Rendered, env_of, render, render_scenario

SELECTOR_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}


def _is_hook(spec_owner: str, rendered: Rendered) -> bool:
    kind, name = spec_owner.split("/", 1)
    annotations = rendered.get(kind, name)["metadata"].get("annotations", {})
    return "helm.sh/hook" in annotations


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_is_sized(scenario: str) -> None:
    for owner, _, container in render_scenario(scenario).containers():
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), owner
        assert "memory" in resources.get("limits", {}), owner


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_long_running_container_has_probes(scenario: str) -> None:
    rendered = render_scenario(scenario)
    for owner, spec, container in rendered.containers():
        if _is_hook(owner, rendered) or container in spec.get("initContainers", []):
            continue  # the `helm test` pod and init containers run once: nothing to probe
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in container, f"{owner}: no {probe}"


def test_probes_use_the_code_health_endpoints() -> None:
    rendered = render_scenario("default")
    for name in ("llm-batcher-api", "llm-batcher-worker"):
        container = rendered.container("Deployment", name)
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        env = env_of(container)
        listen_port = env.get("LLMB_PORT", env.get("LLMB_HEALTH_PORT"))
        assert listen_port is not None and listen_port["value"] == str(port)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_runs_hardened(scenario: str) -> None:
    for owner, spec, container in render_scenario(scenario).containers():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, owner
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        # Only the operator calls the Kubernetes API (templates/operator/role.yaml).
        operator = owner.endswith("-operator")
        assert spec["automountServiceAccountToken"] is operator, owner
        # Kubernetes would inject <SERVICE>_PORT variables; a Service "llmb" would set LLMB_PORT.
        assert spec["enableServiceLinks"] is False, owner
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True, owner
        assert ctx["readOnlyRootFilesystem"] is True, owner
        assert ctx["allowPrivilegeEscalation"] is False, owner
        assert ctx["capabilities"]["drop"] == ["ALL"], owner
        assert "add" not in ctx["capabilities"], owner


def test_our_images_run_as_uid_10001() -> None:
    for owner, spec, container in render_scenario("default").containers():
        if container["image"].startswith("llm-batcher-"):
            assert spec["securityContext"]["runAsUser"] == 10001, owner
            assert spec["securityContext"]["runAsGroup"] == 10001, owner


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_worker_writes_its_batch_files_to_an_emptydir(scenario: str) -> None:
    rendered = render_scenario(scenario)
    (worker,) = [
        o for o in rendered.of_kind("Deployment") if o["metadata"]["name"].endswith("-worker")
    ]
    spec = worker["spec"]["template"]["spec"]
    container = spec["containers"][0]
    tmp_dir = env_of(container)["LLMB_TMP_DIR"]["value"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert tmp_dir in mounts and "emptyDir" in volumes[mounts[tmp_dir]]
    assert (
        volumes[mounts[tmp_dir]]["emptyDir"]["sizeLimit"]
        == rendered.values["worker"]["tmpDir"]["sizeLimit"]
    )


def _selectors(rendered: Rendered) -> dict[tuple[str, str], dict[str, Any]]:
    """Every label selector rendered, by (kind, component)."""
    found = {}
    for obj in rendered.objects:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
            selector = spec["selector"]["matchLabels"]
        elif kind == "Service":
            selector = spec["selector"]
        elif kind == "NetworkPolicy":
            selector = spec["podSelector"]["matchLabels"]
        else:
            continue
        found[(kind, selector["app.kubernetes.io/component"])] = selector
    return found


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_hold_only_the_standard_labels(scenario: str) -> None:
    rendered = render_scenario(scenario)
    for (kind, component), selector in _selectors(rendered).items():
        assert set(selector) == SELECTOR_KEYS, (kind, selector)
        assert selector["app.kubernetes.io/instance"] == "llm-batcher"
        assert selector["app.kubernetes.io/name"] == "llm-batcher"
        assert component in ("api", "worker", "redis", "operator")


def test_selectors_are_stable_across_value_changes() -> None:
    """Selectors are immutable: no value change but the chart's name may move them."""
    before = _selectors(render_scenario("default"))
    changes: dict[str, Any] = {
        "commonLabels": {"team": "x"},
        "api": {"podLabels": {"tier": "edge"}, "image": {"tag": "9.9.9"}, "replicaCount": 5},
        "worker": {"podLabels": {"tier": "gpu"}, "autoscaling": {"mode": "keda"}},
        "redis": {"image": {"repository": "docker.io/valkey/valkey", "tag": "8"}},
    }
    assert _selectors(render(changes)) == before
    for scenario in SCENARIOS:
        after = _selectors(render_scenario(scenario))
        assert {k: after[k] for k in after.keys() & before.keys()} == {
            k: before[k] for k in after.keys() & before.keys()
        }, scenario


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_select_the_pods(scenario: str) -> None:
    rendered = render_scenario(scenario)
    pod_labels = {
        obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: obj["spec"][
            "template"
        ]["metadata"]["labels"]
        for obj in rendered.objects
        if obj["kind"] in ("Deployment", "StatefulSet")
    }
    for (kind, component), selector in _selectors(rendered).items():
        labels = pod_labels[component]
        assert selector.items() <= labels.items(), (kind, component)
    for obj in rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet"):
        template = obj["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"]["matchLabels"].items() <= template.items()


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "api": {"config": {"shutdownGraceS": 12.5}, "preStopSleepS": 3},
            "worker": {"config": {"drainS": 90}, "shutdownMarginS": 20},
        },
        {"worker": {"config": {"batchTimeoutS": 600}}},
    ],
)
def test_termination_grace_covers_the_drain_times(values: dict[str, Any]) -> None:
    """API: preStop sleep + stream grace + margin; worker: batch drain + margin (the shutdown
    orders of api/server.py and worker/service.py)."""
    rendered = render(values)
    api_values, worker_values = rendered.values["api"], rendered.values["worker"]
    api = rendered.get("Deployment", "llm-batcher-api")["spec"]["template"]["spec"]
    assert api["terminationGracePeriodSeconds"] == (
        api_values["preStopSleepS"]
        + math.ceil(api_values["config"]["shutdownGraceS"])
        + api_values["shutdownMarginS"]
    )
    pre_stop = api["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["sleep", str(api_values["preStopSleepS"])]
    worker = rendered.get("Deployment", "llm-batcher-worker")["spec"]["template"]["spec"]
    # The drain defaults to the batch timeout: a scale-down lets the longest batch finish.
    config = worker_values["config"]
    drain_s = config.get("drainS", config["batchTimeoutS"])
    assert env_of(worker["containers"][0])["LLMB_DRAIN_S"]["value"] == str(drain_s)
    assert worker["terminationGracePeriodSeconds"] == (
        math.ceil(drain_s) + worker_values["shutdownMarginS"]
    )
    assert "lifecycle" not in worker["containers"][0]  # workers take no traffic: no preStop


def test_network_policy_admits_only_the_api_and_workers_to_redis() -> None:
    rendered = render_scenario("default")
    policy = rendered.get("NetworkPolicy", "llm-batcher-redis")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector or ipBlock: this namespace only

    def admitted(labels: dict[str, str]) -> bool:
        selector = peer["podSelector"]
        if not selector["matchLabels"].items() <= labels.items():
            return False
        return all(labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"])

    by_component = {}
    for obj, _ in rendered.pod_specs():
        meta = obj["metadata"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]
        by_component[meta["labels"]["app.kubernetes.io/component"]] = admitted(meta["labels"])
    # The operator reaches Redis through a policy of its own (tests/deploy/test_operator_chart.py).
    expected = {"api": True, "worker": True, "redis": False, "test": False, "operator": False}
    assert by_component == expected
    other_release = {
        "app.kubernetes.io/name": "llm-batcher",
        "app.kubernetes.io/instance": "another-release",
        "app.kubernetes.io/component": "api",
    }
    assert not admitted(other_release)


def test_redis_is_our_statefulset_with_aof_pvc_and_ping_probes() -> None:
    rendered = render_scenario("default")
    sts = rendered.get("StatefulSet", "llm-batcher-redis")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "docker.io/library/redis:7.4"
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "redis-cli -h 127.0.0.1 -p 6379 ping" in container[probe]["exec"]["command"][-1]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    service = rendered.get("Service", "llm-batcher-redis")
    assert (
        service["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "llm-batcher-redis"
    )
    env = env_of(rendered.container("Deployment", "llm-batcher-worker"))
    assert env["LLMB_REDIS_URL"]["value"] == "redis://llm-batcher-redis:6379/0"


def test_redis_without_persistence_keeps_its_data_in_an_emptydir() -> None:
    sts = render_scenario("custom-llm").get("StatefulSet", "llmb-redis")
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["data"]


# --- the Redis password ---------------------------------------------------------------------


def _password_refs(rendered: Rendered) -> dict[str, set[tuple[str, str]]]:
    """Secret references of every env var whose name says password, by variable name."""
    refs: dict[str, set[tuple[str, str]]] = {}
    for owner, _, container in rendered.containers():
        for name, entry in env_of(container).items():
            if "PASSWORD" in name or "AUTH" in name:
                assert "value" not in entry, f"{owner}: {name} has a plain value"
                ref = entry["valueFrom"]["secretKeyRef"]
                refs.setdefault(name, set()).add((ref["name"], ref["key"]))
    return refs


@pytest.mark.parametrize(
    ("scenario", "secret"),
    [
        ("default", ("llm-batcher-redis", "redis-password")),
        ("existing-secret", ("llmb-redis-credentials", "redis-password")),
        ("external-redis", ("managed-redis", "password")),
        ("custom-llm", None),  # auth off: no password anywhere
    ],
)
def test_the_password_is_referenced_never_inlined(
    scenario: str, secret: tuple[str, str] | None
) -> None:
    rendered = render_scenario(scenario)
    refs = _password_refs(rendered)
    if secret is None:
        assert refs == {}
        return
    assert refs["LLMB_REDIS_PASSWORD"] == {secret}
    if rendered.values["redis"]["enabled"]:
        assert refs["REDIS_PASSWORD"] == {secret}  # the Redis server's own
    users = {owner for owner, _, c in rendered.containers() if "LLMB_REDIS_URL" in env_of(c)}
    with_password = {
        owner for owner, _, c in rendered.containers() if "LLMB_REDIS_PASSWORD" in env_of(c)
    }
    assert users == with_password and users
    for owner, _, container in rendered.containers():
        url = env_of(container).get("LLMB_REDIS_URL", {}).get("value", "")
        assert "@" not in url, f"{owner}: credentials in the Redis URL"


def test_the_generated_secret_is_kept_and_its_value_appears_nowhere_else() -> None:
    rendered = render_scenario("default")
    secret = rendered.get("Secret", "llm-batcher-redis")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    encoded = secret["data"]["redis-password"]
    password = base64.b64decode(encoded).decode()
    assert len(password) == 32 and password.isalnum()
    for path, text in rendered.sources.items():
        if not path.endswith("redis/secret.yaml"):
            assert password not in text and encoded not in text, path
    # Generated only when no Secret exists: an upgrade reuses the live one through `lookup`
    # (which answers nothing offline; k8s-tests/ checks it on a cluster).
    template = (CHART_DIR / "templates" / "redis" / "secret.yaml").read_text()
    assert '(lookup "v1" "Secret" .Release.Namespace $name).data' in template
    assert render().get("Secret", "llm-batcher-redis")["data"] != secret["data"]


def test_redis_server_gets_the_password_from_the_environment() -> None:
    container = render_scenario("default").container("StatefulSet", "llm-batcher-redis")
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"  # expanded by the kubelet
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        script = container[probe]["exec"]["command"][-1]
        assert 'REDISCLI_AUTH="$REDIS_PASSWORD"' in script and " -a " not in script
