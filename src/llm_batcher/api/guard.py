"""What stands between the API and its clients besides its browser headers (headers.py): the
Host check against DNS rebinding, and the limits on open streams per client and per process.

Each costs O(1) per request and no Redis call: a Host is one set lookup, a stream limit two dict
operations (SECURITY.md says why each exists).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

from llm_batcher.api.errors import ApiError
from llm_batcher.protocol.outcomes import ErrorCode
from llm_batcher.settings import ApiSettings, comma_list


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class TrustedHosts:
    """LLMB_TRUSTED_HOSTS: the Host names this API answers to."""

    def __init__(self, names: Iterable[str]) -> None:
        names = [name.lower() for name in names]
        self.any = "*" in names or not names
        self.exact = {name for name in names if not name.startswith("*.")}
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))

    def allows(self, scope: Scope) -> bool:
        """Whether the request's Host header names a trusted host (any, when `*` is trusted)."""
        if self.any:
            return True
        raw = _header(scope, b"host")
        if raw is None:
            return False
        host = raw.decode("latin-1").lower()
        # "[::1]:8000" -> "[::1]"; "name:8000" -> "name"
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 or "]:" in host else host
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


def untrusted_host() -> ApiError:
    return ApiError(ErrorCode.UNTRUSTED_HOST, "this API does not serve that Host")


class StreamLimits:
    """Counts the open /generate streams of the process and of each client.

    A client is its API key (a hash of its Bearer token) when it sends one, else its address;
    clients in LLMB_STREAM_LIMIT_EXEMPT are only counted toward the process's limit.
    """

    _EXEMPT_CACHE_SIZE = 4096

    def __init__(self, settings: ApiSettings) -> None:
        self.max_streams = settings.max_streams
        self.per_client = settings.max_streams_per_client
        self.exempt = [
            ipaddress.ip_network(net, strict=False)
            for net in comma_list(settings.stream_limit_exempt)
        ]
        self.open = 0
        self.by_client: dict[str, int] = {}
        self._exempt_cache: dict[str, bool] = {}

    def client_of(self, scope: Scope, authorization: str | None) -> str | None:
        """The client a per-client limit counts this request against; None: no such limit."""
        if not self.per_client:
            return None
        address = scope["client"][0] if scope.get("client") else ""
        if self._is_exempt(address):
            return None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip().encode()
            return "key:" + hashlib.sha256(token).hexdigest()[:32]
        return "addr:" + address

    def acquire(self, client: str | None) -> None:
        """Count a new stream; ApiError if the process or the client has too many open."""
        if self.open >= self.max_streams:
            raise ApiError(
                ErrorCode.SERVER_BUSY, f"this API process has {self.max_streams} open streams"
            )
        if client is not None:
            held = self.by_client.get(client, 0)
            if held >= self.per_client:
                raise ApiError(
                    ErrorCode.TOO_MANY_STREAMS,
                    f"this client has {self.per_client} open streams; close one or retry later",
                )
            self.by_client[client] = held + 1
        self.open += 1

    def release(self, client: str | None) -> None:
        """Count a stream (or a refused request that had acquired) as ended."""
        self.open -= 1
        if client is not None:
            held = self.by_client[client] - 1
            if held:
                self.by_client[client] = held
            else:
                del self.by_client[client]

    def _is_exempt(self, address: str) -> bool:
        known = self._exempt_cache.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            exempt = False  # a Unix socket, or no peer address
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # a dual-stack socket's IPv4 client
            exempt = any(ip in net for net in self.exempt)
        if len(self._exempt_cache) >= self._EXEMPT_CACHE_SIZE:
            self._exempt_cache.clear()
        self._exempt_cache[address] = exempt
        return exempt


class Guard:
    """The guards of one API process."""

    def __init__(self, settings: ApiSettings) -> None:
        self.hosts = TrustedHosts(settings.trusted_host_names)
        self.streams = StreamLimits(settings)
