"""The images built and run for real: `pytest -m docker` (the default run leaves these out).

images/setup-docker.sh first makes the machine able to (Docker, Compose, a base image); without
that, these tests fail saying so, or skip with LLMB_SKIP_IMAGES=1. They build the three targets of
images/Dockerfile and a Redis image, then:

- the build: the context holds only the package; a one-line code change rebuilds without
  reinstalling the dependencies;
- the images: user 10001:10001, entrypoints, environment; no compiler, pip or caches; nothing
  compiled at import;
- containers on a network of their own, read-only root, /tmp tmpfs, no capabilities: a /generate
  stream through the API to a worker; every process of the worker (the LLM child too) is uid
  10001; SIGTERM to the worker in the middle of a slow batch: the stream completes and the worker
  exits 0; SIGTERM to the API: exit 0; the llm-mock image on its own;
- compose.yaml itself (the Redis image substituted): two workers, one stream; a task queued when
  `docker-compose down` runs is answered after the next `up` (AOF on the named volume).

Every container, network, volume and rebuilt image they create is removed at the end.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_batcher.contract import EventKind
from tests.deploy.docker_support import (
    BUILD_LABEL,
    COMPOSE,
    HARDEN,
    NO_CACHE,
    REDIS_IMAGE,
    SKIP,
    TAG,
    TIMES,
    Stream,
    build,
    build_redis_image,
    check_done,
    counts_a_worker,
    dependencies_cached,
    docker,
    docker_bytes,
    docker_ok,
    events,
    image,
    logs,
    task_id,
    unusable_reason,
    wait_until,
)
from tests.deploy.images_support import APP_IMAGES, COMPOSE_FILE, REPO

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

RUN_ID = f"llmb-imgtest-{os.getpid()}"


@pytest.fixture(scope="module")
def images() -> Iterator[None]:
    """The three images and the Redis image, built once; whatever the tests started, removed."""
    reason = unusable_reason()
    if reason is not None:
        if SKIP:
            pytest.skip(f"IMAGES NOT BUILT AND NOT TESTED: {reason} (LLMB_SKIP_IMAGES=1)")
        pytest.fail(f"cannot test the images: {reason}; run images/setup-docker.sh first")
    start = time.monotonic()
    logs = {name: build(name, image(name), no_cache=NO_CACHE) for name in APP_IMAGES}
    kind = "dependencies from the cache" if dependencies_cached(logs["api"]) else "cold"
    TIMES[f"build of the three images ({kind})"] = time.monotonic() - start
    start = time.monotonic()
    build_redis_image()
    TIMES["build of the Redis image"] = time.monotonic() - start
    try:
        yield
    finally:
        ids = docker("ps", "-aq", "--filter", f"label={RUN_ID}", check=False).split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False)
        docker("network", "rm", RUN_ID, check=False)
        # Images of earlier builds that this one untagged.
        docker("image", "prune", "-f", "--filter", f"label={BUILD_LABEL}", check=False)


# === the build =================================================================================


def test_the_build_context_holds_only_the_package(images: None, tmp_path: Path) -> None:
    """What `COPY . ` would see: the build context after .dockerignore."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY . /context/\n")
    tag = f"llmb-context-{os.getpid()}"
    docker("build", "-q", "-f", str(tmp_path / "Dockerfile"), "-t", tag, str(REPO))
    container = docker("create", tag, "/none").strip()
    try:
        docker("export", "-o", str(tmp_path / "context.tar"), container)
    finally:
        docker("rm", container)
        docker("rmi", tag)
    with tarfile.open(tmp_path / "context.tar") as archive:
        listing = [name.removeprefix("./") for name in archive.getnames()]
    unwanted = {
        ".git",
        ".venv",
        "venv",
        "tests",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
    }
    for path in listing:
        parts = set(path.split("/"))
        assert not parts & unwanted, f".dockerignore lets {path} into the build context"
        assert not any(part.endswith(".egg-info") for part in parts), path
    assert "context/src/llm_batcher/__init__.py" in listing
    assert "context/requirements/runtime.txt" in listing
    assert "context/requirements/test.txt" not in listing


def test_a_code_change_rebuilds_without_reinstalling_the_dependencies(
    images: None, tmp_path: Path
) -> None:
    copy = tmp_path / "context"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    copy.mkdir()
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(REPO / name, copy / name)  # copy2: same modes, or the layers differ
    shutil.copytree(REPO / "src", copy / "src", ignore=ignore)
    shutil.copytree(REPO / "requirements", copy / "requirements")
    with (copy / "src" / "llm_batcher" / "__init__.py").open("a") as init:
        init.write(f"# rebuild check {time.time_ns()}\n")
    start = time.monotonic()
    try:
        for name in APP_IMAGES:
            log = build(name, image(name, f"rebuild-check-{os.getpid()}"), copy)
            assert dependencies_cached(log), f"{name}: a code change reinstalled the dependencies"
    finally:
        for name in APP_IMAGES:
            docker("rmi", image(name, f"rebuild-check-{os.getpid()}"), check=False)
    TIMES["build of the three images after a one-line code change"] = time.monotonic() - start


# === the images ================================================================================


def _config(ref: str) -> dict[str, object]:
    config: dict[str, object] = json.loads(
        docker("image", "inspect", "-f", "{{json .Config}}", ref)
    )
    return config


@pytest.mark.parametrize("name", list(APP_IMAGES))
def test_user_entrypoint_and_environment(images: None, name: str) -> None:
    config = _config(image(name))
    entrypoint, image_env = APP_IMAGES[name]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == entrypoint
    env = dict(str(pair).split("=", 1) for pair in config["Env"])  # type: ignore[attr-defined]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert {key: env.get(key) for key in image_env} == image_env


# Inside, on a read-only root: the user, no toolchain or installer, and nothing compiled at import
# (the bytecode of the stdlib and of the venv is in the image).
INSIDE = """
set -e
[ "$(id -u):$(id -g)" = 10001:10001 ] || { echo "runs as $(id -u):$(id -g)"; exit 1; }
for tool in gcc cc c++ make; do
  if command -v "$tool" >/dev/null; then echo "has $tool"; exit 1; fi
done
if [ -e /opt/venv/bin/pip ] || python3 -c "import pip" 2>/dev/null; then echo "has pip"; exit 1; fi
compiled=$(python3 -v -c "import llm_batcher.mock.cli, llm_batcher.api.server, \
llm_batcher.worker.service" 2>&1 | grep -c "code object from .*\\.py$" || true)
[ "$compiled" = 0 ] || { echo "$compiled modules compiled at import"; exit 1; }
"""
LEFTOVERS = (
    'for d in /root/.cache /build /tmp/pip-*; do [ ! -e "$d" ] || { echo "$d"; exit 1; }; done'
)


@pytest.mark.parametrize("name", list(APP_IMAGES))
def test_no_compiler_pip_caches_or_compiling(images: None, name: str) -> None:
    ref = image(name)
    docker(
        "run", "--rm", "--read-only", "--network", "none", "--entrypoint", "sh", ref, "-c", INSIDE
    )
    docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        "0",
        "--entrypoint",
        "sh",
        ref,
        "-c",
        LEFTOVERS,
    )


def test_the_llm_mock_image_on_its_own(images: None) -> None:
    answer = "The mock on its own"
    context = base64.b64encode(f"@mock ttft_ms=0 itl_ms=0\n{answer}".encode())
    output = docker_bytes(
        "run",
        "-i",
        "--rm",
        "--network",
        "none",
        *HARDEN,
        image("llm-mock"),
        "/dev/stdin",
        stdin=context,
    )
    lines = [json.loads(line) for line in output.splitlines()]
    assert "".join(line.get("token", "") for line in lines) == answer
    assert lines[-1] == {"index": 0, "finish": "stop"}


# === containers ================================================================================


@dataclass(frozen=True)
class Stack:
    worker: str
    api: str
    api_port: int


@pytest.fixture(scope="module")
def stack(images: None) -> Stack:
    """Redis, a worker and the API as containers on a network of their own."""
    docker("network", "create", RUN_ID)
    common = ["--label", RUN_ID, "--network", RUN_ID]
    docker(
        "run",
        "-d",
        "--name",
        f"{RUN_ID}-redis",
        *common,
        "--network-alias",
        "redis",
        *HARDEN,
        REDIS_IMAGE,
        "redis-server",
        "--appendonly",
        "yes",
        "--dir",
        "/data",
        "--protected-mode",
        "no",
    )
    wait_until("Redis answers", lambda: docker_ok("exec", f"{RUN_ID}-redis", "redis-cli", "ping"))
    env = ["-e", "LLMB_REDIS_URL=redis://redis:6379/0", "-e", f"LLMB_KEY_PREFIX={RUN_ID}"]
    worker, api = f"{RUN_ID}-worker", f"{RUN_ID}-api"
    docker(
        "run",
        "-d",
        "--name",
        worker,
        *common,
        *HARDEN,
        *env,
        "-e",
        "LLMB_WORKER_ID=imgtest-worker",
        "-e",
        "LLMB_MOCK_DIRECTIVES=true",  # the tests steer the mock (off by default, as in the chart)
        image("worker"),
    )
    docker(
        "run", "-d", "--name", api, *common, *HARDEN, *env, "-p", "127.0.0.1::8000", image("api")
    )
    port = int(docker("port", api, "8000/tcp").splitlines()[0].rsplit(":", 1)[1])
    try:
        wait_until(
            "API ready (Redis and a live worker)",
            lambda: counts_a_worker(f"http://127.0.0.1:{port}/readyz"),
            timeout_s=90,
        )
    except AssertionError:
        print(logs(worker)[-3000:], logs(api)[-3000:])
        raise
    return Stack(worker, api, port)


def test_a_stream_through_the_api_and_worker_containers(stack: Stack) -> None:
    answer = "Hello from the llm-batcher images"
    stream = Stream(stack.api_port, f"@mock ttft_ms=0 itl_ms=20\n{answer}")
    check_done(stream.wait(), answer, worker="imgtest-worker")


# Every process of the worker container (the LLM child included) runs as 10001, and the batch's
# context files are on the /tmp tmpfs.
WORKER_PROCESSES = """
uid_of() { while read -r key real _; do [ "$key" != Uid: ] || echo "$real"; done <"$1/status"; }
[ "$(uid_of /proc/1)" = 10001 ] || { echo "the worker (pid 1) is uid $(uid_of /proc/1)"; exit 1; }
child=$(grep -l "llm[-]mock" /proc/[0-9]*/cmdline | head -1)
[ -n "$child" ] || { echo "no LLM child process"; exit 1; }
[ "$(uid_of "${child%/cmdline}")" = 10001 ] || { echo "the LLM child is not uid 10001"; exit 1; }
ls -d /tmp/llmb-batch-*
"""


def _exit_status(container: str) -> int:
    return int(docker("wait", container, timeout_s=60).strip())


def test_worker_sigterm_lets_the_running_batch_finish(stack: Stack) -> None:
    answer = "one two three four five six seven eight nine ten eleven twelve"
    stream = Stream(stack.api_port, f"@mock ttft_ms=0 itl_ms=400\n{answer}")
    wait_until(
        "first token of the slow stream",
        lambda: any(event.kind == EventKind.TOKEN for event in events(stream.text)),
    )
    docker("exec", stack.worker, "sh", "-c", WORKER_PROCESSES)
    docker("kill", "--signal", "TERM", stack.worker)
    status = _exit_status(stack.worker)
    log = logs(stack.worker)
    assert status == 0, f"the worker exited {status} after SIGTERM:\n{log[-2000:]}"
    assert "letting the running batch finish" in log
    check_done(stream.wait(), answer, worker="imgtest-worker")


def test_api_sigterm_exits_0(stack: Stack) -> None:
    docker("kill", "--signal", "TERM", stack.api)
    assert _exit_status(stack.api) == 0


# === compose.yaml ==============================================================================


@dataclass
class ComposeProject:
    """The Compose stack. Its API is published on a port Docker picks (LLMB_API_PORT=0), read
    back after each `up`: a port chosen here could be taken before Docker binds it."""

    port: int = 0

    def run(self, *args: str, timeout_s: float = 180) -> str:
        env = os.environ | {
            "LLMB_IMAGE_TAG": TAG,
            "LLMB_REDIS_IMAGE": REDIS_IMAGE,
            "LLMB_API_PORT": "0",
        }
        result = subprocess.run(
            [COMPOSE, "--project-name", RUN_ID, "--file", str(COMPOSE_FILE), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=env,
        )
        assert result.returncode == 0, f"docker-compose {' '.join(args)}:\n{result.stderr[-3000:]}"
        return result.stdout

    def up(self) -> None:
        self.run("up", "-d", "--no-build")
        self.port = int(self.run("port", "api", "8000").strip().rsplit(":", 1)[1])
        try:
            ready = f"http://127.0.0.1:{self.port}/readyz"
            wait_until("compose: API ready", lambda: counts_a_worker(ready), timeout_s=90)
        except AssertionError:
            print(self.run("logs", "--tail", "20"))
            raise


@pytest.fixture(scope="module")
def compose(images: None) -> Iterator[ComposeProject]:
    project = ComposeProject()
    start = time.monotonic()
    project.up()
    TIMES["docker-compose up until the API is ready"] = time.monotonic() - start
    try:
        yield project
    finally:
        project.run("down", "--volumes", "--timeout", "5")


def test_compose_runs_two_workers_and_a_stream(compose: ComposeProject) -> None:
    assert len(compose.run("ps", "-q", "worker").split()) == 2
    answer = "Hello from docker-compose"
    check_done(Stream(compose.port, answer).wait(), answer)


def test_compose_down_keeps_a_queued_task_for_the_next_up(compose: ComposeProject) -> None:
    compose.run("stop", "worker")
    answer = "Queued while the stack went down"
    stream = Stream(compose.port, answer)
    wait_until("the queued task's id", lambda: task_id(stream.text) is not None)
    queued = task_id(stream.text)
    compose.run("down")
    closed = stream.wait()
    assert not [event for event in events(closed) if event.is_terminal], closed
    compose.up()
    resumed = Stream(compose.port, last_event_id=f"{queued}:-1")
    check_done(resumed.wait(), answer)
