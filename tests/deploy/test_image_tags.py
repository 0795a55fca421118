"""One tag scheme: images/build.sh tags every image with the chart's appVersion, which is the
package's version too, and the chart, compose.yaml and the docs all run that tag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.images_support import (
    APP_VERSION,
    BUILD_SCRIPT,
    COMPOSE_FILE,
    DOCKERFILE,
    IMAGES_README,
    REPO,
)
from tests.deploy.support import CHART_DIR, render, render_scenario

# A stand-in for docker that records its arguments, one call a line.
FAKE_DOCKER = """\
import json, os, sys
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def run_build_script(tmp_path: Path, *args: str, **env: str) -> tuple[list[str], list[list[str]]]:
    """Run images/build.sh with the fake docker: (the image names it printed, docker's calls)."""
    fake = tmp_path / "docker"
    fake.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}")
    fake.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMB_")}
    environ |= {"LLMB_DOCKER": str(fake), "FAKE_DOCKER_LOG": str(log), **env}
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,  # it must not depend on the working directory
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return result.stdout.split(), calls


def test_the_package_and_the_chart_have_one_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == APP_VERSION


def test_the_build_script_builds_every_target_with_the_chart_tag(tmp_path: Path) -> None:
    names, calls = run_build_script(tmp_path, "--network", "host")
    assert names == [f"llm-batcher-{t}:{APP_VERSION}" for t in ("api", "worker", "llm-mock")]
    for name, call in zip(names, calls, strict=True):
        target = name.split(":")[0].removeprefix("llm-batcher-")
        assert call[0] == "build"
        assert call[call.index("-f") + 1] == str(DOCKERFILE)
        assert call[call.index("--target") + 1] == target
        assert call[call.index("-t") + 1] == name
        assert call[-3:] == ["--network", "host", str(REPO)]  # extra arguments, then the context
    # ... exactly what the chart runs by default.
    rendered = render_scenario("default")
    for component in ("api", "worker"):
        image = rendered.container("Deployment", f"llm-batcher-{component}")["image"]
        assert image in names


def test_the_build_script_takes_a_registry_a_tag_and_a_base_image(tmp_path: Path) -> None:
    names, calls = run_build_script(
        tmp_path,
        LLMB_IMAGE_REGISTRY="registry.example.com/llmb/",
        LLMB_IMAGE_TAG="1.2.3",
        LLMB_BASE_IMAGE="debian:bookworm",
    )
    assert names[0] == "registry.example.com/llmb/llm-batcher-api:1.2.3"
    assert all("BASE_IMAGE=debian:bookworm" in call for call in calls)
    # The chart names the same image with the registry set as a value.
    values = {"global": {"imageRegistry": "registry.example.com/llmb"}}
    values |= {"api": {"image": {"tag": "1.2.3"}}}
    image = render(values).container("Deployment", "llm-batcher-api")["image"]
    assert image == names[0]


def test_compose_and_the_docs_run_the_same_tag() -> None:
    assert f"${{LLMB_IMAGE_TAG:-{APP_VERSION}}}" in COMPOSE_FILE.read_text()
    for doc in (IMAGES_README, DOCKERFILE, REPO / "README.md", CHART_DIR / "README.md"):
        text = doc.read_text()
        assert "llm-batcher-api:dev" not in text, doc
    assert "images/build.sh" in IMAGES_README.read_text()
    notes = render_scenario("default").notes
    assert "images/build.sh" in notes
    assert f"kind load docker-image llm-batcher-api:{APP_VERSION} llm-batcher-worker:" in notes
    assert "minikube image load" in notes


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, f"llm-batcher-api:{APP_VERSION}"),
        (
            {"api": {"image": {"registry": "ghcr.io/acme"}}},
            f"ghcr.io/acme/llm-batcher-api:{APP_VERSION}",
        ),
        (
            {"global": {"imageRegistry": "mirror:5000"}, "api": {"image": {"registry": "ghcr.io"}}},
            f"mirror:5000/llm-batcher-api:{APP_VERSION}",
        ),
        (
            {"api": {"image": {"registry": "ghcr.io", "digest": "sha256:" + "a" * 64}}},
            "ghcr.io/llm-batcher-api@sha256:" + "a" * 64,
        ),
    ],
)
def test_registry_digest_and_global_registry(values: dict[str, object], expected: str) -> None:
    rendered = render(values)
    assert rendered.container("Deployment", "llm-batcher-api")["image"] == expected
    hook = rendered.get("Pod", "llm-batcher-test")["spec"]["containers"][0]["image"]
    assert hook == expected  # the test pod runs the API image


def test_the_global_registry_reaches_redis_too() -> None:
    default = render_scenario("default").container("StatefulSet", "llm-batcher-redis")["image"]
    assert default == "docker.io/library/redis:7.4"
    mirrored = render({"global": {"imageRegistry": "mirror.local"}})
    image = mirrored.container("StatefulSet", "llm-batcher-redis")["image"]
    assert image == "mirror.local/library/redis:7.4"
    # Images from a registry need no loading into kind: the NOTES say so only for local ones.
    assert "kind load" not in mirrored.notes
