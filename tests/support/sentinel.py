"""A Redis Sentinel deployment on loopback, as real processes: one primary, one replica and three
Sentinels, from the machine's `redis-server` (else the embedded Valkey binary, which has the same
`--sentinel` mode). Short failure detection (down-after 1 s) so that a failover takes seconds.

The data servers require a password and so do the Sentinels (a different one), so that every
test on it goes through both settings (LLMB_REDIS_URL's password, LLMB_REDIS_SENTINEL_PASSWORD).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from llm_batcher.local.embedded_redis import start_server, valkey_binary

MASTER = "llmb-test"
"""The name the Sentinels monitor the primary under."""
DATA_PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def server_binary() -> str:
    """The machine's redis-server, else the Valkey binary the package depends on."""
    return shutil.which("redis-server") or str(valkey_binary())


@dataclass
class Server:
    """One redis-server process (data server or Sentinel) with its config and log in ``dir``;
    ``config(port)`` is its config on that port, which start() picks."""

    name: str
    dir: Path
    config: Callable[[int], str]
    password: str
    sentinel: bool = False
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start on a free port (another if a process takes it first: start_server) and wait
        until it answers."""
        for folder in (self.dir / "primary", self.dir / "replica"):
            folder.mkdir(parents=True, exist_ok=True)
        conf = self.dir / f"{self.name}.conf"  # a Sentinel rewrites its config: a file of its own

        def argv(port: int) -> list[str]:
            conf.write_text(self.config(port))
            return [server_binary(), str(conf), *(["--sentinel"] if self.sentinel else [])]

        log = self.dir / f"{self.name}.log"
        self.port, self.process = start_server(
            argv, log, password=self.password, start_new_session=True
        )

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Resume (if stopped) and terminate; kill what does not stop."""
        if self.process is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self, password: str) -> SyncRedis:
        return SyncRedis(port=self.port, password=password, socket_timeout=2)

    def log(self) -> str:
        path = self.dir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _data_config(port: int, primary_port: int | None, data_dir: Path) -> str:
    lines = [
        f"port {port}",
        f"dir {data_dir}",  # a full sync writes an RDB file there
        "bind 127.0.0.1",
        "protected-mode no",
        'save ""',
        "appendonly no",
        f"requirepass {DATA_PASSWORD}",
        f"masterauth {DATA_PASSWORD}",
    ]
    if primary_port is not None:
        lines.append(f"replicaof 127.0.0.1 {primary_port}")
    return "\n".join(lines) + "\n"


def _sentinel_config(port: int, primary_port: int, data_dir: Path) -> str:
    return (
        f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {data_dir}\n"
        f"requirepass {SENTINEL_PASSWORD}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
        f"sentinel auth-pass {MASTER} {DATA_PASSWORD}\n"
        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel parallel-syncs {MASTER} 1\n"
    )


@dataclass
class SentinelSet:
    """One primary, one replica, three Sentinels; start() waits until all know each other."""

    dir: Path
    primary: Server = field(init=False)
    replica: Server = field(init=False)
    sentinels: list[Server] = field(init=False)

    def __post_init__(self) -> None:
        # The replica and the Sentinels name the primary's port: they start after it.
        self.primary = Server(
            "primary",
            self.dir,
            lambda port: _data_config(port, None, self.dir / "primary"),
            DATA_PASSWORD,
        )
        self.replica = Server(
            "replica",
            self.dir,
            lambda port: _data_config(port, self.primary.port, self.dir / "replica"),
            DATA_PASSWORD,
        )
        self.sentinels = [
            Server(
                f"sentinel-{i}",
                self.dir,
                lambda port: _sentinel_config(port, self.primary.port, self.dir),
                SENTINEL_PASSWORD,
                sentinel=True,
            )
            for i in range(3)
        ]

    @property
    def servers(self) -> list[Server]:
        return [self.primary, self.replica, *self.sentinels]

    @property
    def sentinel_list(self) -> str:
        """LLMB_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def url(self) -> str:
        """LLMB_REDIS_URL: its host and port are ignored with Sentinels (a closed port here)."""
        return f"redis://:{DATA_PASSWORD}@127.0.0.1:1/0"

    def settings(self) -> dict[str, str]:
        """The LLMB_* settings (lower case, as Stack and the settings classes take them)."""
        return {
            "redis_url": self.url,
            "redis_sentinels": self.sentinel_list,
            "redis_sentinel_master": MASTER,
            "redis_sentinel_password": SENTINEL_PASSWORD,
        }

    def start(self, timeout_s: float = 30) -> None:
        """Start every process; wait until the replica is in sync and every Sentinel sees the
        replica and the two other Sentinels (so that a failover can be agreed on at once)."""
        for server in self.servers:  # the primary first
            server.start()
        self._wait(self._ready, timeout_s, "the Sentinel deployment to be ready")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def wait_failover(self, timeout_s: float = 30) -> float:
        """Wait until the Sentinels name the replica as master and it accepts writes; returns
        the seconds waited."""
        started = time.monotonic()

        def promoted() -> bool:
            if any(self._master_port_of(s) != self.replica.port for s in self.sentinels):
                return False
            with contextlib.suppress(RedisError), self.replica.client(DATA_PASSWORD) as client:
                return bool(client.info("replication")["role"] == "master")
            return False

        self._wait(promoted, timeout_s, "the replica to be promoted")
        return time.monotonic() - started

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log()[-3000:]}" for s in self.servers)

    def _master_port_of(self, sentinel: Server) -> int | None:
        with contextlib.suppress(RedisError), sentinel.client(SENTINEL_PASSWORD) as client:
            address = client.sentinel_get_master_addr_by_name(MASTER)
            return int(address[1]) if address else None
        return None

    def _ready(self) -> bool:
        try:
            with self.replica.client(DATA_PASSWORD) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            for sentinel in self.sentinels:
                with sentinel.client(SENTINEL_PASSWORD) as client:
                    state = client.sentinel_master(MASTER)
                    if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                        return False
        except (RedisError, OSError):
            return False
        return True

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``condition`` (blocking: call from a thread in async code); fail on timeout or
        when a server exited by itself."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            for server in self.servers:
                if server.process is not None and server.process.poll() not in (None, -9):
                    raise AssertionError(f"{server.name} exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.05)
