"""What the image and compose checks share: paths, the setting names the code reads, a Dockerfile
reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from llm_batcher.settings import ApiSettings, WorkerSettings
from tests.deploy.support import CHART_DIR, MOCK_ENV, REPO

IMAGES = REPO / "images"
BUILD_SCRIPT = IMAGES / "build.sh"
# The one tag of every image: the chart's appVersion (images/build.sh, the chart, compose.yaml).
APP_VERSION = str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"])
COMPOSE_FILE = REPO / "compose.yaml"
IMAGES_README = IMAGES / "README.md"
DOCKERFILE = IMAGES / "Dockerfile"
SETUP_SCRIPT = IMAGES / "setup-docker.sh"
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
TEST_LOCK = REPO / "requirements" / "test.txt"
# The three images of the package, targets of images/Dockerfile:
# target -> (entrypoint, environment the image must set).
APP_IMAGES: dict[str, tuple[list[str], dict[str, str]]] = {
    "api": (["llm-batcher", "api"], {"LLMB_HOST": "0.0.0.0"}),
    "worker": (["llm-batcher", "worker"], {"LLMB_HEALTH_HOST": "0.0.0.0", "LLMB_TMP_DIR": "/tmp"}),
    "llm-mock": (["llm-mock"], {}),
}


def setting_names() -> set[str]:
    """Every LLMB_* variable a process reads: the settings classes, and the mock's variables."""
    names = {
        "LLMB_" + field.upper()
        for kind in (ApiSettings, WorkerSettings)
        for field in kind.model_fields
    }
    return names | MOCK_ENV


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case) and its arguments, continuations joined."""

    keyword: str
    args: str


def read_dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile (comments dropped, continuation lines joined)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, f"{path}: the last instruction ends with a backslash"
    return instructions


def stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    """Instructions per build stage, by stage name (FROM ... AS name)."""
    result: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for instruction in instructions:
        if instruction.keyword == "FROM":
            name = instruction.args.split()[-1] if " AS " in instruction.args.upper() else ""
            current = result.setdefault(name, [])
        elif current is not None:
            current.append(instruction)
    return result


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """Variables set by ENV instructions (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in instruction.args.split():
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {instruction.args!r}: use the KEY=VALUE form"
                env[key] = value
    return env


def target(name: str) -> list[Instruction]:
    """What a target of images/Dockerfile runs with: the shared runtime stage, then its own."""
    by_stage = stages(read_dockerfile(DOCKERFILE))
    return by_stage["runtime"] + by_stage[name]
