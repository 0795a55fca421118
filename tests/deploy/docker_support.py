"""What the Docker tests (test_docker.py) share: the Docker and Compose commands, image builds, a
bounded wait, and /generate streams read over HTTP from the containers.

Variables (images/README.md): LLMB_SKIP_IMAGES, LLMB_BASE_IMAGE, LLMB_IMAGE_TAG,
LLMB_BUILD_NO_CACHE, LLMB_BUILD_NETWORK, LLMB_BUILD_CA_BUNDLE, LLMB_DOCKER, LLMB_COMPOSE.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llm_batcher.contract import Event, EventKind, check, parse
from tests.deploy.images_support import APP_VERSION, DOCKERFILE, IMAGES, REPO

DOCKER = os.environ.get("LLMB_DOCKER", "/usr/bin/docker")
COMPOSE = os.environ.get("LLMB_COMPOSE", "docker-compose")
LOCAL_BASE = "llmb-local-python:bookworm"  # what images/setup-docker.sh makes
BASE = os.environ.get("LLMB_BASE_IMAGE", LOCAL_BASE)
TAG = os.environ.get("LLMB_IMAGE_TAG") or APP_VERSION  # as images/build.sh tags them
NO_CACHE = os.environ.get("LLMB_BUILD_NO_CACHE") == "1"
BUILD_NETWORK = os.environ.get("LLMB_BUILD_NETWORK", "host")
CA_BUNDLE = os.environ.get("LLMB_BUILD_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
SKIP = os.environ.get("LLMB_SKIP_IMAGES") == "1"
REDIS_IMAGE = f"llmb-redis-local:{TAG}"
BUILD_LABEL = "llmb-images-test=1"
# Run-time hardening of every llm-batcher container, as compose.yaml and the chart run them.
HARDEN = [
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges:true",
]

# Timings of this run (label -> seconds), printed at the end of the session (conftest.py).
TIMES: dict[str, float] = {}


def image(name: str, tag: str = TAG) -> str:
    """The reference of one of the three images of the package."""
    return f"llm-batcher-{name}:{tag}"


def docker(*args: str, timeout_s: float = 120, check: bool = True) -> str:
    """Run the Docker client; its stdout. A failure shows stderr."""
    result = subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=os.environ | {"DOCKER_BUILDKIT": "1"},
    )
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result.stdout


def docker_bytes(*args: str, stdin: bytes = b"") -> bytes:
    """Run the Docker client with bytes on stdin; its stdout."""
    result = subprocess.run(
        [DOCKER, *args], input=stdin, capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stderr.decode()[-3000:]}"
    return result.stdout


def logs(container: str) -> str:
    """Everything a container wrote, stdout and stderr (where the processes log)."""
    result = subprocess.run(
        [DOCKER, "logs", container], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout + result.stderr


def docker_ok(*args: str) -> bool:
    """Whether a Docker command succeeds."""
    return (
        subprocess.run([DOCKER, *args], capture_output=True, timeout=60, check=False).returncode
        == 0
    )


def unusable_reason() -> str | None:
    """Why Docker cannot build and run the images here, or None."""
    if not Path(DOCKER).exists():
        return f"no Docker client at {DOCKER}"
    if not docker_ok("info"):
        return "no Docker daemon answers"
    if not docker_ok("image", "inspect", BASE):
        return f"no base image {BASE}"
    return None


def build(target: str, tag: str, context: Path = REPO, *, no_cache: bool = False) -> str:
    """Build a target of images/Dockerfile; the build log (plain progress)."""
    args = [
        "build",
        "--progress=plain",
        "--network",
        BUILD_NETWORK,
        "--label",
        BUILD_LABEL,
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "-f",
        str(DOCKERFILE),
        "--target",
        target,
        "-t",
        tag,
    ]
    if CA_BUNDLE != "none" and Path(CA_BUNDLE).is_file():
        args += ["--secret", f"id=pipcert,src={CA_BUNDLE}"]
    if no_cache:
        args.append("--no-cache")
    result = subprocess.run(
        [DOCKER, *args, str(context)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=os.environ | {"DOCKER_BUILDKIT": "1"},
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"docker build --target {target}:\n{log[-4000:]}"
    return log


def build_redis_image() -> None:
    """The test-only Redis image, from Debian's package on the same base."""
    docker(
        "build",
        "--network",
        BUILD_NETWORK,
        "--label",
        BUILD_LABEL,
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "-t",
        REDIS_IMAGE,
        str(IMAGES / "redis-local"),
        timeout_s=600,
    )


def dependencies_cached(log: str) -> bool:
    """Whether the build step that installs the locked dependencies came from the cache."""
    step = re.search(r"^(#\d+) \[build \d+/\d+\] RUN --mount=type=secret,id=pipcert", log, re.M)
    assert step, "no dependency step in the build log"
    return re.search(rf"^{step[1]} CACHED$", log, re.M) is not None


def wait_until(what: str, condition: Callable[[], bool], timeout_s: float = 30) -> None:
    """Poll a condition every 50 ms until it holds; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)


def counts_a_worker(readyz_url: str) -> bool:
    """Whether an API's /readyz answers 2xx and counts a live worker (a worker does not make
    the API ready: requests are queued without one)."""
    try:
        answer = httpx.get(readyz_url, timeout=2)
    except httpx.HTTPError:
        return False
    return answer.is_success and (answer.json().get("workers") or 0) > 0


@dataclass
class Stream:
    """One /generate stream read in a thread of its own, its text kept as it arrives."""

    port: int
    context: str | None = None
    last_event_id: str | None = None
    text: str = ""
    error: BaseException | None = None
    _thread: threading.Thread = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        url = f"http://127.0.0.1:{self.port}/generate"
        if self.context is not None:
            request = {"method": "POST", "json": {"context": self.context}}
        else:
            request = {"method": "GET", "headers": {"Last-Event-ID": str(self.last_event_id)}}
        try:
            with httpx.stream(url=url, timeout=httpx.Timeout(10, read=60), **request) as response:
                response.raise_for_status()
                for chunk in response.iter_text():
                    self.text += chunk
        except httpx.RemoteProtocolError:
            pass  # the server went away mid-stream: what `down` does to an open stream
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def wait(self, timeout_s: float = 60) -> str:
        """The whole stream, once the server closed it."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the stream did not end within {timeout_s} s"
        if self.error is not None:
            raise self.error
        return self.text


def events(stream: str) -> list[Event]:
    """The complete events of an SSE stream (one still arriving is left out)."""
    return parse(stream)


def check_done(stream: str, answer: str, worker: str | None = None) -> dict[str, Any]:
    """The stream keeps the contract and ends with `done` whose text is the answer; its data."""
    verdict = check(events(stream), expected_text=answer)
    assert verdict.ok, str(verdict)
    assert verdict.terminal is not None
    done = verdict.terminal.data
    assert worker is None or done["worker"] == worker, f"answered by {done['worker']}"
    return done


def task_id(stream: str) -> str | None:
    """The task id of the stream's `task` event, once it arrived."""
    for event in events(stream):
        if event.kind == EventKind.TASK:
            return str(event.data["task_id"])
    return None
