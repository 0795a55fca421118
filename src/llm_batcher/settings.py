"""Configuration from ``LLMB_*`` environment variables: one settings object per process kind.

Settings are built by each entry point at start-up and passed down; nothing here reads the
environment at import time. Validation failures stop the process with one clear line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_batcher.listeners import check_listening

MOCK_PROGRAM = "llm-mock"
MOCK_STDIN_FLAG = "--files-from-stdin"
MOCK_DIRECTIVES_FLAG = "--directives"


def _metrics_port(usual: str) -> Any:
    """LLMB_METRICS_PORT of the API and the worker."""
    return Field(
        0, ge=0, le=65535, description=f"Serve /metrics only on this port (0: on the {usual} port)."
    )


def _listen_fd(instead_of: str) -> Any:
    """A setting naming a listening socket inherited from the parent (listeners.py)."""
    return Field(
        None,
        ge=0,
        description=f"Serve on this inherited listening socket (a file descriptor) instead of "
        f"binding {instead_of}: a parent that binds port 0 itself knows the port before this "
        "process starts (`llm-batcher up`, the tests).",
    )


def _check_listen_fd(value: int | None) -> int | None:
    return None if value is None else check_listening(value)


class CommonSettings(BaseSettings):
    """Settings every process reads."""

    model_config = SettingsConfigDict(env_prefix="LLMB_", extra="ignore", frozen=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis (or Valkey) URL; a password goes in the URL or LLMB_REDIS_PASSWORD.",
    )
    redis_password: str | None = Field(
        None, description="Redis password, if not in the URL (the chart sets it from a Secret)."
    )
    redis_sentinels: str = Field(
        "",
        description="Comma-separated host:port of Redis Sentinels. When set, every process asks "
        "them for the master of LLMB_REDIS_SENTINEL_MASTER (again after a failover), and "
        "LLMB_REDIS_URL gives only the database, user, password and TLS (its host is ignored).",
    )
    redis_sentinel_master: str = Field(
        "", description="Name the Sentinels monitor the master under; needed with the Sentinels."
    )
    redis_sentinel_password: str | None = Field(
        None, description="Password of the Sentinels themselves, if they have one."
    )
    key_prefix: str = Field("llmb", description="Prefix of every Redis key this deployment uses.")
    result_ttl_s: float = Field(
        3600, gt=0, description="How long a task's answer stays in Redis for resuming streams."
    )
    task_timeout_s: float = Field(
        300, gt=0, description="Deadline of a task from its arrival; then it ends with `timeout`."
    )
    lease_ms: int = Field(
        5000,
        ge=500,
        description="A worker's hold on its tasks; renewed every lease/3. A dead worker's tasks "
        "go to another worker this long after its last renewal.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Deliveries of one task before it is dead-lettered with an error."
    )
    stats_window_s: float = Field(
        300, gt=0, description="Sliding window of /stats (latency quantiles, slowest requests)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object a line."
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str) -> str:
        for address in comma_list(value):
            host_port(address)
        return value

    @model_validator(mode="after")
    def _check_sentinel_master(self) -> CommonSettings:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("LLMB_REDIS_SENTINELS needs LLMB_REDIS_SENTINEL_MASTER")
        if self.redis_sentinels and self.redis_url.startswith("unix://"):
            raise ValueError("LLMB_REDIS_SENTINELS needs a redis:// or rediss:// LLMB_REDIS_URL")
        return self

    @model_validator(mode="after")
    def _check_result_ttl(self) -> CommonSettings:
        # A task's keys expire one result TTL after its arrival: a task still within its
        # deadline then would lose them mid-run and end `lost`.
        if self.result_ttl_s < self.task_timeout_s:
            raise ValueError(
                f"LLMB_RESULT_TTL_S ({self.result_ttl_s:g}) must be at least "
                f"LLMB_TASK_TIMEOUT_S ({self.task_timeout_s:g})"
            )
        return self

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) of each Sentinel of LLMB_REDIS_SENTINELS (empty: no Sentinel)."""
        return [host_port(address) for address in comma_list(self.redis_sentinels)]

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in " {}\n"):
            raise ValueError("must be non-empty, without spaces or braces")
        return value


class ServingSettings(CommonSettings):
    """What the API and the worker share: /metrics on its own port, if asked."""

    metrics_port: int = _metrics_port("main")
    metrics_fd: int | None = _listen_fd("LLMB_METRICS_PORT")

    _metrics_fd_ok = field_validator("metrics_fd")(_check_listen_fd)

    @property
    def metrics_apart(self) -> bool:
        """/metrics is served on a port of its own, not on the process's main port."""
        return bool(self.metrics_port) or self.metrics_fd is not None


class ApiSettings(ServingSettings):
    """Settings of `llm-batcher api`."""

    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API listens on.")
    max_queue: int = Field(
        10000, ge=1, description="Tasks queued or running above which /generate answers 503."
    )
    max_context_bytes: int = Field(
        131072, ge=1, description="Largest context in UTF-8 bytes; larger ones get 413."
    )
    ping_s: float = Field(15, gt=0, description="Interval of SSE comment pings on idle streams.")
    retry_ms: int = Field(
        1000, ge=0, description="SSE `retry:` sent to clients: how soon EventSource reconnects."
    )
    shutdown_grace_s: float = Field(
        20, ge=0, description="On SIGTERM, how long open streams may finish before being closed."
    )
    send_timeout_s: float = Field(
        30,
        gt=0,
        description="A stream whose client takes no data for this long (its socket buffers "
        "full) is closed.",
    )
    stats_slowest: int = Field(
        10, ge=0, le=1000, description="How many of the slowest requests /stats lists."
    )
    redis_max_connections: int = Field(
        8, ge=2, description="Redis connections of one API process (plus one for pub/sub)."
    )
    redis_timeout_s: float = Field(
        1.0, gt=0, description="Timeout of one Redis call; past it /generate answers 503."
    )
    # --- security: limits on clients, browsers, exposure (SECURITY.md) ---
    max_streams: int = Field(
        20000, ge=1, description="Open /generate streams of one API process; more get 503."
    )
    max_streams_per_client: int = Field(
        256,
        ge=0,
        description="Open /generate streams of one client (its API key when API keys are on, "
        "else its address); more get 429. 0: no limit.",
    )
    stream_limit_exempt: str = Field(
        "127.0.0.0/8,::1",
        description="Comma-separated networks whose clients the per-client limit leaves alone "
        "(loopback by default: `up`, the tests and the benchmark open thousands of streams).",
    )
    request_read_timeout_s: float = Field(
        10,
        gt=0,
        description="A request's headers and body must arrive within this long of its first "
        "byte (or of the connection's opening); else the connection is closed.",
    )
    trusted_hosts: str = Field(
        "*",
        description="Comma-separated Host names the API answers (`*.example.com` matches "
        "subdomains, `*` any); others get 421. Guards a local API against DNS rebinding.",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies whose X-Forwarded-For names the client (uvicorn's "
        "forwarded_allow_ips; `*` trusts any: only where nothing else can reach the API).",
    )
    docs: bool = Field(True, description="Serve /docs and /openapi.json.")
    metrics_port: int = _metrics_port("API")
    listen_fd: int | None = _listen_fd("LLMB_HOST:LLMB_PORT")

    _listen_fd_ok = field_validator("listen_fd")(_check_listen_fd)

    @field_validator("stream_limit_exempt")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        for name in comma_list(value):
            try:
                ipaddress.ip_network(name, strict=False)
            except ValueError:
                raise ValueError(f"{name!r} is not an IP network") from None
        return value

    @property
    def trusted_host_names(self) -> list[str]:
        """The names of LLMB_TRUSTED_HOSTS, lower case."""
        return [name.lower() for name in comma_list(self.trusted_hosts)]

    # --- access: API keys, admin keys, /stats -------------------------------------------------
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys; when any is set (here or in api_keys_file), "
        "/generate and /v1/* need `Authorization: Bearer <key>`.",
    )
    api_keys_file: str | None = Field(
        None, description="File of API keys (comma- or line-separated), added to api_keys."
    )
    admin_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated admin keys: /stats with one shows task ids and contexts.",
    )
    stats_require_key: bool = Field(
        False, description="/stats answers only requests with an API key or an admin key."
    )

    @field_validator("api_keys_file")
    @classmethod
    def _check_api_keys_file(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                text = Path(value).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read {value}: {exc}") from None
            if not split_keys(text):
                raise ValueError(f"{value} holds no key")
        return value

    @field_validator("stats_require_key")
    @classmethod
    def _check_stats_keys(cls, value: bool, info: ValidationInfo) -> bool:
        keys = [info.data.get(name) for name in ("api_keys", "admin_keys")]
        if (
            value
            and not info.data.get("api_keys_file")
            and not any(isinstance(k, SecretStr) and split_keys(k.get_secret_value()) for k in keys)
        ):
            raise ValueError("needs LLMB_API_KEYS, LLMB_API_KEYS_FILE or LLMB_ADMIN_KEYS")
        return value

    # --- OpenAI-compatible API -----------------------------------------------------------
    model_name: str = Field(
        "llm-batcher-mock",
        min_length=1,
        description="The model /v1/models lists; /v1/* requests must name it (404 otherwise).",
    )

    def api_key_list(self) -> list[str]:
        """Every API key, from api_keys and api_keys_file (empty: /generate is open)."""
        keys = split_keys(self.api_keys.get_secret_value())
        if self.api_keys_file is not None:
            keys += split_keys(Path(self.api_keys_file).read_text(encoding="utf-8"))
        return keys

    def admin_key_list(self) -> list[str]:
        """Every admin key."""
        return split_keys(self.admin_keys.get_secret_value())


def split_keys(text: str) -> list[str]:
    """Keys separated by commas, white space or new lines."""
    return [key for key in text.replace(",", " ").split() if key]


class WorkerSettings(ServingSettings):
    """Settings of `llm-batcher worker`."""

    max_batch: int = Field(4, ge=1, le=256, description="Most tasks in one LLM batch.")
    window_ms: int = Field(
        50, ge=0, description="How long a batch waits for more tasks after its first one."
    )
    window_policy: Literal["adaptive", "fixed"] = Field(
        "adaptive",
        description="`adaptive`: a batch waits the window only when recent arrivals (of every "
        "API) say another task is likely within it, or when its first task already waited a "
        "window for a worker (worker/window.py); `fixed`: every batch waits the window.",
    )
    llm_command: str = Field(
        "llm-mock", description="LLM command (no shell); context files are appended as arguments."
    )
    llm_files: Literal["auto", "argv", "stdin"] = Field(
        "auto",
        description="How the LLM gets its context files: `argv` appends them to the command at "
        "batch time; `stdin` keeps a spare child started ahead of time and writes their paths to "
        "its stdin (docs/protocol.md); `auto`: stdin for llm-mock, argv for other commands.",
    )
    batch_timeout_s: float = Field(
        120, gt=0, description="Deadline of one LLM run; a child still running is killed."
    )
    drain_s: float = Field(
        25, ge=0, description="On SIGTERM, how long the running batch may take to finish."
    )
    heartbeat_timeout_ms: int = Field(
        1500,
        ge=300,
        description="A worker whose heartbeat (sent every timeout/4, from a thread that batch "
        "work does not hold up) is older than this is dead: the next idle worker takes its "
        "tasks over at once, without waiting for their lease.",
    )
    redis_full_wait_s: float = Field(
        10,
        ge=0,
        description="How long a worker retries (with backoff) a write of a task's answer that "
        "Redis refuses for lack of memory (maxmemory, noeviction) before it ends the task with "
        "`redis_full`.",
    )
    tmp_dir: str | None = Field(
        None, description="Where per-batch context files go (default: the system temp folder)."
    )
    health_host: str = Field("127.0.0.1", description="Address of the worker's health server.")
    health_port: int = Field(
        8001, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics (0: any free)."
    )
    worker_id: str = Field("", description="Name of this worker in Redis (default: host-pid).")
    # --- security: what the LLM child sees, and metrics off the health port (SECURITY.md) ---
    llm_env: str = Field(
        "",
        description="Comma-separated names of environment variables passed to the LLM child on "
        "top of the allowlist (PATH, HOME, LANG, LC_*, TMPDIR, TZ, PYTHON*, LLMB_MOCK_*).",
    )
    metrics_port: int = _metrics_port("health")
    health_fd: int | None = _listen_fd("LLMB_HEALTH_HOST:LLMB_HEALTH_PORT")

    _health_fd_ok = field_validator("health_fd")(_check_listen_fd)

    # --- what one request may cost ----------------------------------------------------------
    max_tokens: int = Field(
        4096,
        ge=1,
        description="Most tokens of one answer: at this many the worker ends the task (done, "
        "finish_reason `length`) and drops the rest of its output; its batch-mates run on.",
    )
    mock_directives: bool = Field(
        False,
        description="Whether llm-mock honours `@mock` lines in contexts (on in `llm-batcher up` "
        "and Compose); off, such a line is ordinary text, so no client sets its own cost.",
    )

    @field_validator("llm_command")
    @classmethod
    def _check_command(cls, value: str) -> str:
        if not shlex.split(value):
            raise ValueError("must name a program")
        return value

    @field_validator("llm_env")
    @classmethod
    def _check_llm_env(cls, value: str) -> str:
        for name in comma_list(value):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @property
    def llm_env_names(self) -> list[str]:
        """The variable names LLMB_LLM_ENV lists."""
        return comma_list(self.llm_env)

    @model_validator(mode="after")
    def _default_worker_id(self) -> WorkerSettings:
        if not self.worker_id:
            object.__setattr__(self, "worker_id", f"{socket.gethostname()}-{os.getpid()}")
        return self

    @property
    def runs_mock(self) -> bool:
        """The LLM command is the mock LLM."""
        return Path(shlex.split(self.llm_command)[0]).name == MOCK_PROGRAM

    @property
    def llm_files_on_stdin(self) -> bool:
        """Whether the LLM reads its context file paths from stdin (and a spare is kept)."""
        return self.llm_files == "stdin" or (self.llm_files == "auto" and self.runs_mock)

    @property
    def llm_argv(self) -> list[str]:
        """The LLM command as an argument vector.

        A bare program name not on PATH is looked up beside this Python interpreter, so that
        `.venv/bin/llm-batcher worker` finds `.venv/bin/llm-mock` without an activated venv. The
        mock is told to read its files from stdin when that is how it gets them, and whether to
        honour `@mock` directives.
        """
        argv = shlex.split(self.llm_command)
        if os.sep not in argv[0] and shutil.which(argv[0]) is None:
            beside = Path(sys.executable).parent / argv[0]
            if beside.exists():
                argv[0] = str(beside)
        if self.runs_mock:
            # On the command line, not in the environment: the setting wins over whatever the
            # child's environment holds, and a context has no say in either.
            argv.append(f"{MOCK_DIRECTIVES_FLAG}={'on' if self.mock_directives else 'off'}")
        if self.runs_mock and self.llm_files_on_stdin and MOCK_STDIN_FLAG not in argv:
            argv.append(MOCK_STDIN_FLAG)
        return argv


class OperatorSettings(CommonSettings):
    """Settings of `llm-batcher operator` (operator/): binds Redis consumers to worker pods."""

    namespace: str = Field(
        "", description="Namespace of the worker pods; the operator watches only this one."
    )
    worker_selector: str = Field(
        "app.kubernetes.io/component=worker",
        description="Labels of the worker pods, `name=value` pairs separated by commas.",
    )
    worker_deployment: str = Field(
        "", description="The workers' Deployment, which dead-letter Events are posted on."
    )
    sweep_s: float = Field(
        30, gt=0, description="How often consumers that belong to no live worker are removed."
    )
    cost_s: float = Field(
        5, gt=0, description="How often worker pods' pod-deletion-cost follows their tasks."
    )
    patches_per_s: float = Field(
        5, gt=0, description="Most pod patches a second, in the long run (a token bucket)."
    )
    patch_burst: int = Field(10, ge=1, description="Most pod patches in a burst.")
    dead_letter_poll_s: float = Field(
        2, gt=0, description="How often the dead-letter stream is read for new Events."
    )
    lock_ttl_ms: int = Field(
        15000,
        ge=1000,
        description="The operator's Redis lock: the one acting replica renews it every ttl/3; "
        "another takes over this long after the holder stopped.",
    )
    liveness_port: int = Field(
        8080, ge=1, le=65535, description="Port of kopf's liveness endpoint (/healthz)."
    )
    health_host: str = Field(
        "127.0.0.1", description="Address of the liveness endpoint and of /metrics."
    )
    metrics_port: int = Field(
        8002, ge=0, le=65535, description="Port of the operator's /metrics (0: none)."
    )

    @field_validator("worker_selector")
    @classmethod
    def _check_selector(cls, value: str) -> str:
        labels(value)
        return value

    @property
    def worker_labels(self) -> dict[str, str]:
        """LLMB_WORKER_SELECTOR as a dict."""
        return labels(self.worker_selector)


def labels(value: str) -> dict[str, str]:
    """`a=b,c=d` as {"a": "b", "c": "d"}; ValueError for an item without `=` or an empty list."""
    pairs = [item.split("=", 1) for item in comma_list(value)]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ValueError("must be name=value pairs separated by commas")
    return {name.strip(): text.strip() for name, text in pairs}


def comma_list(value: str) -> list[str]:
    """The items of a comma-separated list, blanks dropped."""
    return [name.strip() for name in value.split(",") if name.strip()]


def host_port(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6 address]:port``) as a pair; ValueError naming what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)
