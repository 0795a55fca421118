"""A port-forward to the pods of a Service, with the Kubernetes Python client.

A local listener on 127.0.0.1 opens, for each connection it accepts, a port-forward websocket
to a ready pod chosen at that moment. So a connection cut by a pod that leaves (a rolling
upgrade, a deleted pod) is followed by one to another pod, as a Service would route it: what a
resuming client needs. `kubectl port-forward service/...` picks one pod once and dies with it.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.stream import portforward

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class PortForwarder:
    """Forwards 127.0.0.1:<port> to ``remote_port`` of the pod ``pick_pod()`` names per
    connection. ``stop()`` closes the listener and every open connection (safe twice)."""

    def __init__(self, core: Any, namespace: str, pick_pod: Callable[[], str], remote_port: int):
        self.core, self.namespace, self.pick_pod = core, namespace, pick_pod
        self.remote_port = remote_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.pods_used: list[str] = []
        self.thread = threading.Thread(target=self._accept, name="port-forward", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        forward = None
        try:
            pod = self.pick_pod()
            self.pods_used.append(pod)
            forward = portforward(
                self.core.connect_get_namespaced_pod_portforward,
                pod,
                self.namespace,
                ports=str(self.remote_port),
                _request_timeout=30,
            )
            remote = forward.socket(self.remote_port)
            remote.setblocking(True)
            with self.lock:
                self.open.add(client)
            _pipe(client, remote)
        except Exception as exc:  # any failure: this connection closes, the client sees it
            log.warning("port-forward connection failed: %s", exc)
        finally:
            with self.lock:
                self.open.discard(client)
            with contextlib.suppress(OSError):
                client.close()
            if forward is not None:
                forward.close()


def _pipe(client: socket.socket, remote: Any) -> None:
    """Copy bytes both ways until either side closes."""
    selector = selectors.DefaultSelector()
    selector.register(client, selectors.EVENT_READ, remote)
    selector.register(remote, selectors.EVENT_READ, client)
    try:
        while True:
            for key, _ in selector.select(timeout=1):
                source: Any = key.fileobj
                data = source.recv(CHUNK)
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        selector.close()
