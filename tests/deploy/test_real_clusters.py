"""The chart on real clusters (its defects, each rendered by the real Helm engine): a bare kind
cluster gets no autoscaler that cannot work, a GPU model fits the schema, the worker may scale to
zero with KEDA, Redis refuses writes before it is OOM-killed, and the small things a platform
team checks (Kubernetes versions, topology spread, Secret checksums)."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.deploy.support import (
    BARE_CLUSTER,
    CHART_DIR,
    Rendered,
    chart,
    env_of,
    render,
    render_scenario,
)


def _worker(rendered: Rendered) -> dict[str, Any]:
    return rendered.get("Deployment", "llm-batcher-worker")


def _pod_spec(rendered: Rendered, kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.get(kind, name)["spec"]["template"]["spec"]
    return spec


# === autoscaling where it can work =============================================================


def test_a_bare_cluster_gets_fixed_workers_and_the_steps_to_autoscale() -> None:
    """No external metrics API (a fresh kind cluster): an HPA would only report
    FailedGetExternalMetric, so none is rendered; the NOTES name every missing piece."""
    bare = render(api_versions=BARE_CLUSTER)
    assert bare.of_kind("HorizontalPodAutoscaler") == []
    assert _worker(bare)["spec"]["replicas"] == bare.values["worker"]["replicaCount"] == 2
    notes = bare.notes
    assert "NO WORKER AUTOSCALER" in notes and "external.metrics.k8s.io/v1beta1" in notes
    assert "--set monitoring.serviceMonitor.enabled=true" in notes
    assert "monitoring.serviceMonitor.additionalLabels.release=" in notes
    assert "prometheus-community/prometheus-adapter" in notes
    assert "-f files/prometheus-adapter-values.yaml" in notes
    assert (CHART_DIR / "files" / "prometheus-adapter-values.yaml").is_file()
    assert "worker.autoscaling.mode=keda" in notes


def test_with_the_external_metrics_api_the_hpa_owns_the_replicas() -> None:
    full = render()  # prometheus-adapter serves external.metrics.k8s.io/v1beta1
    (hpa,) = full.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "llm-batcher-worker"
    assert "replicas" not in _worker(full)["spec"]
    assert "NO WORKER AUTOSCALER" not in full.notes
    # Without a ServiceMonitor nothing scrapes the metric: the NOTES say which label it needs.
    assert "monitoring.serviceMonitor.enabled is" in full.notes
    scraped = render({"monitoring": {"serviceMonitor": {"enabled": True}}})
    assert "monitoring.serviceMonitor.enabled is" not in scraped.notes


def test_keda_scales_the_workers_to_zero_and_wakes_them_on_the_first_task() -> None:
    values = {"worker": {"autoscaling": {"mode": "keda", "minReplicas": 0}}}
    rendered = render(values, api_versions=BARE_CLUSTER)  # KEDA's own CRD: asked for by name
    (scaled,) = rendered.of_kind("ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["cooldownPeriod"] == 300
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["activationThreshold"] == "0"
    assert "replicas" not in _worker(rendered)["spec"]
    assert "scale to zero" in rendered.notes
    # The API stays ready with no worker (its /readyz asks only for Redis): requests queue and
    # the queue depth wakes the workers.
    api = rendered.container("Deployment", "llm-batcher-api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_an_hpa_cannot_scale_to_zero() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="minReplicas"):
        chart().validate_schema({"worker": {"autoscaling": {"minReplicas": 0}}})
    chart().validate_schema({"worker": {"autoscaling": {"mode": "keda", "minReplicas": 0}}})


# === a real model: GPUs, runtime classes, caches, sidecars =====================================


def test_the_gpu_scenario_renders_a_gpu_worker() -> None:
    rendered = render_scenario("gpu-worker")
    spec = _pod_spec(rendered, "Deployment", "llm-batcher-worker")
    worker = spec["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "model-cache"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert "tmp" in volumes  # the chart's own volume stays
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert mounts["/models"] == "model-cache" and mounts["/dev/shm"] == "dshm"
    (init,) = spec["initContainers"]
    assert init["name"] == "fetch-weights"
    assert {m["name"] for m in init["volumeMounts"]} == {"model-cache"}
    assert worker["envFrom"] == [{"secretRef": {"name": "model-registry-token"}}]
    assert env_of(worker)["LLMB_LLM_ENV"]["value"] == "HF_HOME,CUDA_VISIBLE_DEVICES"
    # A mirror registry for every image of the chart.
    for _, _, container in rendered.containers():
        if container is not init:
            assert container["image"].startswith("registry.example.com/mirror/"), container


@pytest.mark.parametrize(
    ("resources", "accepted"),
    [
        ({"limits": {"nvidia.com/gpu": 2, "memory": "8Gi"}}, True),
        ({"limits": {"amd.com/gpu": 1}, "requests": {"hugepages-2Mi": "1Gi"}}, True),
        ({"requests": {"ephemeral-storage": "10Gi", "cpu": 2}}, True),
        ({"limits": {"memroy": "1Gi"}}, False),  # a typo stays refused
        ({"limits": {"gpu": 1}}, False),  # an extended resource has a domain
        ({"limit": {"cpu": 1}}, False),
    ],
)
def test_resources_take_extended_resources_and_refuse_typos(
    resources: dict[str, Any], accepted: bool
) -> None:
    values = {"worker": {"resources": resources}}
    if accepted:
        chart().validate_schema(values)
    else:
        with pytest.raises(helm_python.HelmValuesError):
            chart().validate_schema(values)


SIDECAR = {
    "name": "metrics-proxy",
    "image": "proxy:1",
    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
}


@pytest.mark.parametrize("component", ["api", "worker"])
def test_pods_take_sidecars_init_containers_volumes_and_env_from(component: str) -> None:
    values = {
        component: {
            "extraContainers": [SIDECAR],
            "initContainers": [dict(SIDECAR, name="warm-up")],
            "extraVolumes": [{"name": "cache", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            "extraEnvFrom": [{"configMapRef": {"name": "model-settings"}}],
            "runtimeClassName": "gvisor",
        }
    }
    spec = _pod_spec(render(values), "Deployment", f"llm-batcher-{component}")
    assert [c["name"] for c in spec["containers"]] == [component, "metrics-proxy"]
    assert [c["name"] for c in spec["initContainers"]] == ["warm-up"]
    assert {"tmp", "cache"} <= {v["name"] for v in spec["volumes"]}
    assert {"mountPath": "/cache", "name": "cache"} in spec["containers"][0]["volumeMounts"]
    assert spec["containers"][0]["envFrom"] == [{"configMapRef": {"name": "model-settings"}}]
    assert spec["runtimeClassName"] == "gvisor"
    with pytest.raises(helm_python.HelmValuesError):  # a mount without its path
        chart().validate_schema({component: {"extraVolumeMounts": [{"name": "cache"}]}})


def test_service_node_port_labels_and_pdb_min_available() -> None:
    rendered = render(
        {
            "api": {
                "service": {"type": "NodePort", "nodePort": 30080, "labels": {"expose": "yes"}},
                "pdb": {"minAvailable": 1},
            },
            "worker": {"pdb": {"minAvailable": "50%"}},
        }
    )
    service = rendered.get("Service", "llm-batcher-api")
    assert service["spec"]["ports"][0]["nodePort"] == 30080
    assert service["metadata"]["labels"]["expose"] == "yes"
    assert "expose" not in service["spec"]["selector"]
    api_pdb = rendered.get("PodDisruptionBudget", "llm-batcher-api")["spec"]
    assert api_pdb["minAvailable"] == 1 and "maxUnavailable" not in api_pdb
    worker_pdb = rendered.get("PodDisruptionBudget", "llm-batcher-worker")["spec"]
    assert worker_pdb["minAvailable"] == "50%" and "maxUnavailable" not in worker_pdb
    default = render_scenario("default").get("PodDisruptionBudget", "llm-batcher-api")["spec"]
    assert default["maxUnavailable"] == 1 and "minAvailable" not in default
    cluster_ip = render({"api": {"service": {"nodePort": 30080}}})
    assert "nodePort" not in cluster_ip.get("Service", "llm-batcher-api")["spec"]["ports"][0]


def test_redis_on_an_existing_claim_or_an_annotated_one() -> None:
    existing = render({"redis": {"persistence": {"existingClaim": "redis-data"}}})
    redis = existing.get("StatefulSet", "llm-batcher-redis")["spec"]
    assert "volumeClaimTemplates" not in redis
    volumes = {v["name"]: v for v in redis["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "redis-data"}}
    annotated = render({"redis": {"persistence": {"annotations": {"backup": "daily"}}}})
    (claim,) = annotated.get("StatefulSet", "llm-batcher-redis")["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["annotations"] == {"backup": "daily"}


def test_service_monitor_namespace_and_relabelings() -> None:
    relabel = [{"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}]
    rendered = render(
        {
            "monitoring": {
                "serviceMonitor": {
                    "enabled": True,
                    "namespace": "monitoring",
                    "relabelings": relabel,
                    "metricRelabelings": relabel,
                }
            }
        }
    )
    monitor = rendered.get("ServiceMonitor", "llm-batcher")
    assert monitor["metadata"]["namespace"] == "monitoring"
    # From another namespace it must still select the release's Services.
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["llmb"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    # The values' relabelings follow the chart's own, which sets `release` (test_monitoring.py).
    assert endpoint["relabelings"][1:] == relabel and endpoint["metricRelabelings"] == relabel


def test_extra_objects_are_rendered_with_templates() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-settings"}}
    as_text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-extra\n"
    rendered = render({"extraObjects": [config_map, as_text]})
    assert rendered.get("ConfigMap", "model-settings")["metadata"] == {"name": "model-settings"}
    assert rendered.get("ConfigMap", "llm-batcher-extra")


# === Redis refuses writes before it is OOM-killed ==============================================


def _redis_args(rendered: Rendered) -> list[str]:
    args: list[str] = rendered.container("StatefulSet", "llm-batcher-redis")["args"]
    return args


@pytest.mark.parametrize(
    ("redis", "maxmemory"),
    [
        ({}, str(512 * 1024 * 1024 * 8 // 10)),  # 80% of the default 512Mi limit
        ({"resources": {"limits": {"memory": "1G"}}}, "800000000"),
        ({"resources": {"limits": {"memory": "2Gi"}}, "maxmemory": "1gb"}, "1gb"),
    ],
)
def test_redis_has_maxmemory_below_its_limit_and_noeviction(
    redis: dict[str, Any], maxmemory: str
) -> None:
    args = _redis_args(render({"redis": redis}))
    assert args[args.index("--maxmemory") + 1] == maxmemory
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_redis_without_a_limit_or_with_an_unreadable_one() -> None:
    args = _redis_args(render({"redis": {"resources": {"limits": None}}}))  # null drops a default
    assert "--maxmemory" not in args  # nothing to stay below
    with pytest.raises(helm_python.HelmRenderError, match=r"set redis\.maxmemory"):
        render({"redis": {"resources": {"limits": {"memory": "1.5Gi"}}}})


# === smaller things ============================================================================


def test_older_kind_and_minikube_clusters_are_accepted() -> None:
    """kubeVersion asks only for what the chart uses (autoscaling/v2 and policy/v1, GA in 1.23),
    and the objects render for such a cluster (support.KUBE_VERSIONS validates them from 1.25,
    the oldest schema kubernetes-validate has)."""
    metadata = chart().metadata
    assert metadata["kubeVersion"] == ">=1.23.0-0"
    old = render(api_versions=BARE_CLUSTER, kube_version="v1.23.17")
    assert {"Deployment", "StatefulSet", "PodDisruptionBudget"} <= set(old.kinds())


def test_api_pods_spread_over_nodes_softly_by_default() -> None:
    spec = _pod_spec(render_scenario("default"), "Deployment", "llm-batcher-api")
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # never blocks a single-node cluster
    labels = render_scenario("default").get("Deployment", "llm-batcher-api")["spec"]["selector"]
    assert spread["labelSelector"] == labels
    own = [{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]
    mine = _pod_spec(
        render({"api": {"topologySpreadConstraints": own}}), "Deployment", "llm-batcher-api"
    )
    assert mine["topologySpreadConstraints"] == own
    off = _pod_spec(render({"api": {"spreadAcrossNodes": False}}), "Deployment", "llm-batcher-api")
    assert "topologySpreadConstraints" not in off


def _checksums(rendered: Rendered) -> dict[str, str]:
    pods = {
        "api": _pod_spec(rendered, "Deployment", "llm-batcher-api"),
        "worker": _pod_spec(rendered, "Deployment", "llm-batcher-worker"),
    }
    checksums = {
        name: rendered.get("Deployment", f"llm-batcher-{name}")["spec"]["template"]["metadata"][
            "annotations"
        ]["checksum/secrets"]
        for name in pods
    }
    redis = rendered.get("StatefulSet", "llm-batcher-redis")["spec"]["template"]["metadata"]
    return checksums | {"redis": redis["annotations"]["checksum/secrets"]}


def test_a_changed_generated_secret_rolls_the_pods_that_read_it() -> None:
    mine = {"redis": {"auth": {"existingSecret": "my-redis"}}}  # nothing random: a stable render
    before = _checksums(render(mine))
    assert before == _checksums(render(mine))
    keyed = _checksums(render(mine | {"api": {"auth": {"enabled": True}}}))
    assert keyed["api"] != before["api"]  # the API reads the keys Secret the chart generates
    assert keyed["worker"] == before["worker"] and keyed["redis"] == before["redis"]
    generated = _checksums(render())  # the chart's own Redis password Secret
    assert generated["worker"] != before["worker"] and generated["redis"] != before["redis"]


# === Redis behind Sentinel =====================================================================


def test_an_external_redis_behind_sentinel() -> None:
    rendered = render_scenario("sentinel")
    for name in ("llm-batcher-api", "llm-batcher-worker"):
        env = env_of(rendered.container("Deployment", name))
        assert env["LLMB_REDIS_SENTINELS"]["value"] == ",".join(
            f"redis-node-{i}.redis-headless.llmb.svc.cluster.local:26379" for i in range(3)
        )
        assert env["LLMB_REDIS_SENTINEL_MASTER"]["value"] == "mymaster"
        secret = env["LLMB_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "redis", "key": "redis-password"}
        assert env["LLMB_REDIS_URL"]["value"] == "redis://redis/0"
    egress = rendered.get("NetworkPolicy", "llm-batcher-api")["spec"]["egress"]
    ports = {p["port"] for rule in egress for p in rule["ports"]}
    assert {26379, 6379} <= ports  # the Sentinels, and the master they name
    # The URL may be left out: the Sentinels name the host.
    values = {"redis": {"enabled": False}, "externalRedis": {"sentinel": {"hosts": ["s:26379"]}}}
    chart().validate_schema(values)
    env = env_of(render(values).container("Deployment", "llm-batcher-worker"))
    assert env["LLMB_REDIS_URL"]["value"] == "redis://redis/0"
    assert "LLMB_REDIS_SENTINEL_PASSWORD" not in env
    with pytest.raises(helm_python.HelmValuesError):  # neither a URL nor Sentinels
        chart().validate_schema({"redis": {"enabled": False}})
    # The chart's own Redis has no Sentinel: the values are left alone.
    mine = render({"externalRedis": {"sentinel": {"hosts": ["s:26379"]}}})
    assert "LLMB_REDIS_SENTINELS" not in env_of(mine.container("Deployment", "llm-batcher-api"))
