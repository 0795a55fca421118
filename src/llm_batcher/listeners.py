"""Listening sockets a parent binds and hands to a child (LLMB_LISTEN_FD, LLMB_HEALTH_FD,
LLMB_METRICS_FD).

A parent that must know a child's port binds the socket itself, on port 0 when any port will do,
reads back the port the kernel gave it, and passes the socket down (``pass_fds``): the port is
known before the child starts and nothing else can take it in between. Picking a free port,
closing it and letting the child bind it later races every other process on the machine (issue
15). `llm-batcher up` and the tests do this; a child that `up` restarts gets the same socket, so
its port does not change.
"""

from __future__ import annotations

import socket


def listener(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (0: a free port the kernel picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def port_of(sock: socket.socket) -> int:
    """The port ``sock`` is bound to."""
    return int(sock.getsockname()[1])


def inherited(fd: int) -> socket.socket:
    """The listening socket a parent passed as ``fd``; this process's own children do not get it."""
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    return sock


def check_listening(fd: int) -> int:
    """``fd`` if it is a listening socket, else ValueError (the settings' start-up check)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"file descriptor {fd} is not an open socket ({exc.strerror})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        sock.detach()  # only looked at: the process serves on it later
    if not listening:
        raise ValueError(f"file descriptor {fd} is not a listening socket")
    return fd
