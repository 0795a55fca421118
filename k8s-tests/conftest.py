"""Live-cluster tests of the Helm chart, against the release `k8s-tests/run.sh` installed.

They run against the current kube context: release LLMB_K8S_RELEASE (default `llm-batcher`) in
namespace LLMB_K8S_NAMESPACE (default `llm-batcher`), the names of the chart README's
walkthrough, which run.sh follows. They change it as a user would (delete pods, restart Redis,
upgrade) and the last one uninstalls it, only when LLMB_K8S_UNINSTALL=1 (run.sh sets it).
Without a reachable cluster holding that release, every test is skipped with one line saying
what they need (they fail instead with LLMB_K8S_REQUIRE=1, which run.sh sets). On a failure,
the report carries the namespace's pods, logs and events.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
# `tests.support` (the SSE client and the stream contract's checks) lives beside this folder.
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from kube import Release, release_from_config, wait_for  # noqa: E402
from portforward import PortForwarder  # noqa: E402

RELEASE = os.environ.get("LLMB_K8S_RELEASE", "llm-batcher")
NAMESPACE = os.environ.get("LLMB_K8S_NAMESPACE", "llm-batcher")
NEEDS = (
    f"k8s-tests need a reachable Kubernetes cluster in the current kube context, with the chart "
    f"installed as release {RELEASE} in namespace {NAMESPACE} (k8s-tests/run.sh does both; "
    f"LLMB_K8S_RELEASE and LLMB_K8S_NAMESPACE name another)"
)
READY_TIMEOUT_S = 300

_release: Release | None = None  # for the failure report, once the cluster was reached


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scaling: waits on the workers' autoscaler (minutes, each wait bounded)"
    )


def _cluster_problem() -> str | None:
    """Why the suite cannot run against the release, or None."""
    try:
        from kubernetes import client, config
    except ImportError:
        return "the kubernetes package is missing (pip install -e '.[test]')"
    try:
        config.load_kube_config()
    except (config.ConfigException, OSError) as exc:
        return f"there is no kube context ({str(exc).strip() or type(exc).__name__})"
    configuration = client.Configuration.get_default_copy()
    configuration.retries = 0  # an absent cluster must skip at once, not after retries
    probe = client.ApiClient(configuration)
    try:
        client.VersionApi(probe).get_code(_request_timeout=5)
        deployments = client.AppsV1Api(probe).list_namespaced_deployment(
            NAMESPACE,
            label_selector=f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=api",
            _request_timeout=10,
        )
    except Exception as exc:  # urllib3's connection errors, TLS, 401, 403...: all mean "not here"
        return f"the current kube context did not answer ({type(exc).__name__}: {exc})"[:300]
    if not deployments.items:
        return "the cluster has no API Deployment of that release"
    return None


@pytest.fixture(scope="session", autouse=True)
def cluster() -> None:
    """Skips every test, with one line saying what they need, unless the release is there."""
    problem = _cluster_problem()
    if problem and os.environ.get("LLMB_K8S_REQUIRE") == "1":
        pytest.fail(f"{NEEDS}: {problem}", pytrace=False)  # run.sh: a skip would hide it
    if problem:
        pytest.skip(f"{NEEDS}: {problem}")


@pytest.fixture(scope="session")
def release(cluster: None) -> Release:
    """The release, once its API and Redis are ready and its workers rolled out."""
    global _release
    _release = release = release_from_config(RELEASE, NAMESPACE)
    wait_ready(release)
    return release


def wait_ready(release: Release) -> None:
    wait_for(lambda: release.rolled_out("api"), READY_TIMEOUT_S, "the API Deployment")
    wait_for(release.redis_ready, READY_TIMEOUT_S, "the Redis StatefulSet")
    wait_for(lambda: release.rolled_out("worker"), READY_TIMEOUT_S, "the worker Deployment")


@pytest.fixture(scope="session")
def operator(release: Release) -> Any:
    """The release's operator Deployment; skips the test when the release has none."""
    deployment = release.deployment("operator")
    if deployment is None:
        pytest.skip(f"release {RELEASE} has no operator Deployment (operator.enabled)")
    return deployment


class Api:
    """Port-forwards to the API pods: `url` (the API) and `metrics_url` (its /metrics)."""

    def __init__(self, release: Release) -> None:
        ports = _container_ports(release, "api")
        pick = lambda: release.ready_pod_name("api")  # noqa: E731 - chosen per connection
        self.http = PortForwarder(release.core, release.namespace, pick, ports["http"])
        metrics_port = ports.get("metrics", ports["http"])  # api.config.metricsPort 0: on http
        self.metrics = PortForwarder(release.core, release.namespace, pick, metrics_port)
        self.url, self.metrics_url = self.http.url, f"{self.metrics.url}/metrics"

    def stop(self) -> None:
        self.http.stop()
        self.metrics.stop()


def _container_ports(release: Release, component: str) -> dict[str, int]:
    deployment = release.deployment(component)
    assert deployment is not None
    container = deployment.spec.template.spec.containers[0]
    return {p.name: p.container_port for p in container.ports or []}


@pytest.fixture(scope="session")
def api(release: Release) -> Iterator[Api]:
    """Port-forwards to the release's API, closed after the session."""
    forwarded = Api(release)
    try:
        yield forwarded
    finally:
        forwarded.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=300)) as http:
        yield http


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the pods, their logs and the events of the namespace."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and _release is not None:
        report.sections.append((f"namespace {NAMESPACE}: pods, logs, events", _release.dump()))
    elif report.skipped and isinstance(report.longrepr, tuple) and NEEDS in report.longrepr[2]:
        # Reported at the fixture, not at each test, so that `-ra` folds them into one line.
        report.longrepr = (__file__, None, report.longrepr[2])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """These tests run in file order, then in the order written (a shuffling plugin aside):
    they share one release, which the last one uninstalls."""
    slots = [i for i, item in enumerate(items) if HERE in item.path.parents]
    ordered = sorted((items[i] for i in slots), key=lambda it: (it.path.name, it.location[1]))
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item
