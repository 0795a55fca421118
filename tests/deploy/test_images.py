"""The chart runs the images the project builds and the processes the e2e suite runs, and
skaffold.yaml builds those images and feeds them to the chart."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import yaml

from llm_batcher.cli import build_parser
from tests.deploy.images_support import DOCKERFILE, target
from tests.deploy.support import CHART_DIR, REPO, Rendered, chart, render, render_scenario

SKAFFOLD_TEXT = (REPO / "skaffold.yaml").read_text()
SKAFFOLD = yaml.safe_load(SKAFFOLD_TEXT)
IMAGES = {  # image -> (target of images/Dockerfile, chart values holding its repository and tag)
    "llm-batcher-api": ("api", "api.image"),
    "llm-batcher-worker": ("worker", "worker.image"),
    "llm-batcher-llm-mock": ("llm-mock", None),
}


def test_containers_run_the_project_commands() -> None:
    rendered = render_scenario("default")
    api = rendered.container("Deployment", "llm-batcher-api")
    worker = rendered.container("Deployment", "llm-batcher-worker")
    assert api["command"] == ["llm-batcher", "api"]
    assert worker["command"] == ["llm-batcher", "worker"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "llm-batcher" in scripts and "llm-mock" in scripts  # the worker's default LLM
    for command in (api["command"], worker["command"]):
        args = build_parser().parse_args(command[1:])
        assert args.command == command[1]


def test_images_default_to_the_app_version() -> None:
    rendered = render_scenario("default")
    version = chart().metadata["appVersion"]
    assert version == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for _, _, c in rendered.containers()}
    assert images == {
        f"llm-batcher-api:{version}",
        f"llm-batcher-worker:{version}",
        "docker.io/library/redis:7.4",
    }
    annotated = yaml.safe_load(chart().metadata["annotations"]["artifacthub.io/images"])
    assert {entry["image"] for entry in annotated} == images


def test_the_test_hook_runs_in_the_api_image() -> None:
    rendered = render_scenario("default")
    hook = rendered.get("Pod", "llm-batcher-test")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = hook["spec"]["containers"][0]
    assert container["image"] == rendered.container("Deployment", "llm-batcher-api")["image"]
    assert container["command"][:2] == ["llm-batcher", "check"]


def test_skaffold_builds_the_three_images_from_their_targets() -> None:
    assert SKAFFOLD["kind"] == "Config"
    version = int(re.fullmatch(r"skaffold/v4beta(\d+)", SKAFFOLD["apiVersion"]).group(1))
    assert version >= 13
    assert "Skaffold 2.15.0 or later" in SKAFFOLD_TEXT  # the first to read v4beta13
    artifacts = {a["image"]: a for a in SKAFFOLD["build"]["artifacts"]}
    # The dev loop builds what the chart runs; the mock's own image only in its profile.
    assert set(artifacts) == {"llm-batcher-api", "llm-batcher-worker"}
    (mock_profile,) = [p for p in SKAFFOLD["profiles"] if p["name"] == "llm-mock-image"]
    (patch,) = mock_profile["patches"]
    assert patch["op"] == "add" and patch["path"] == "/build/artifacts/-"
    artifacts[patch["value"]["image"]] = patch["value"]
    assert set(artifacts) == set(IMAGES)
    for image, (target_name, _) in IMAGES.items():
        assert artifacts[image]["context"] == "."
        assert (REPO / artifacts[image]["docker"]["dockerfile"]).resolve() == DOCKERFILE
        assert artifacts[image]["docker"]["target"] == target_name


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in dotted.items():
        node = tree
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def test_skaffold_deploys_the_chart_with_the_built_images() -> None:
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]).resolve() == CHART_DIR
    templates = release["setValueTemplates"]
    for image, (_, values_path) in IMAGES.items():
        if values_path is None:
            continue
        variable = image.replace("-", "_")
        assert templates[f"{values_path}.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert templates[f"{values_path}.tag"] == f"{{{{.IMAGE_TAG_{variable}}}}}"
    # Every value Skaffold sets exists in the chart (the schema refuses the others).
    placeholders = {key: "x" for key in templates}
    set_values = {k: yaml.safe_load(str(v)) for k, v in release.get("setValues", {}).items()}
    chart().validate_schema(_nested(placeholders | set_values))
    rendered = render(_nested(set_values))
    assert rendered.get("Deployment", "llm-batcher-worker")["spec"]["replicas"] == 2


def test_skaffold_forwards_the_api_port_and_has_a_kind_profile() -> None:
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    rendered = render_scenario("default")  # release "llm-batcher", as in skaffold.yaml
    assert release["name"] == "llm-batcher"
    (forward,) = SKAFFOLD["portForward"]
    service = rendered.get("Service", forward["resourceName"])
    assert forward["resourceType"] == "service" and forward["namespace"] == release["namespace"]
    assert forward["port"] == service["spec"]["ports"][0]["port"]
    assert forward["localPort"] == 8000
    (kind,) = [p for p in SKAFFOLD["profiles"] if p["name"] == "kind"]
    assert kind["activation"] == [{"kubeContext": "kind-.*"}]
    assert kind["patches"] == [{"op": "add", "path": "/build/local/push", "value": False}]


def _immutable_fields(rendered: Rendered) -> dict[str, Any]:
    """What an upgrade cannot change: selectors, and the StatefulSet's service and claims."""
    fields: dict[str, Any] = {}
    for obj in rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet"):
        spec, key = obj["spec"], f"{obj['kind']}/{obj['metadata']['name']}"
        fields[key] = [spec["selector"], spec.get("serviceName"), spec.get("volumeClaimTemplates")]
    return fields


def test_skaffold_dev_upgrades_the_readme_install_in_place() -> None:
    """`helm install` as the chart README does, then `skaffold dev` (any profile) on the same
    release and namespace: no field Kubernetes refuses to change may differ."""
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    readme = (CHART_DIR / "README.md").read_text()
    assert (
        f"helm install {release['name']} charts/llm-batcher --namespace {release['namespace']}"
        in readme
    )
    installed = render({})
    set_values = {k: yaml.safe_load(str(v)) for k, v in release.get("setValues", {}).items()}
    for profile in SKAFFOLD["profiles"]:
        for patch in profile["patches"]:
            if patch["path"].startswith("/deploy/helm/releases/0/setValues/"):
                set_values[patch["path"].rsplit("/", 1)[1]] = yaml.safe_load(str(patch["value"]))
    images = {"api.image.tag": "abc123", "worker.image.tag": "abc123"}
    developed = render(_nested(set_values | images))
    assert _immutable_fields(developed) == _immutable_fields(installed)


@pytest.mark.parametrize(
    ("image", "workload", "port"),
    [
        ("llm-batcher-api", "llm-batcher-api", 8000),
        ("llm-batcher-worker", "llm-batcher-worker", 8001),
    ],
)
def test_dockerfiles_match_the_chart(image: str, workload: str, port: int) -> None:
    """The image's entrypoint is the chart's command, its user uid 10001, its port the one the
    chart probes."""
    instructions = target(IMAGES[image][0])
    container = render_scenario("default").container("Deployment", workload)
    (entrypoint,) = [i.args for i in instructions if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == container["command"]
    (user,) = [i.args for i in instructions if i.keyword == "USER"]
    assert user in ("10001", "10001:10001")
    exposed = " ".join(i.args for i in instructions if i.keyword == "EXPOSE").split()
    assert exposed == [str(port)]
    assert port in [p["containerPort"] for p in container["ports"]]
