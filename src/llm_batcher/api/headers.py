"""The browser headers of every response: a Content-Security-Policy that forbids framing,
`nosniff`, and no Referer. Encoded once; the /generate path sends them as constants."""

from __future__ import annotations

from starlette.types import Message, Send

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The test page's policy (its <meta> tag says the same), for every response but the docs."""
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""FastAPI's /docs and /redoc load their scripts from a CDN and run an inline one."""
_COMMON = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
SECURITY_HEADERS: dict[str, str] = {"Content-Security-Policy": PAGE_CSP, **_COMMON}
"""The browser headers of every response."""
_DOCS_HEADERS = {"Content-Security-Policy": DOCS_CSP, **_COMMON}
_DOCS_PATHS = ("/docs", "/redoc")


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


_RAW = _raw(SECURITY_HEADERS)
RAW_SECURITY_HEADERS = tuple(_RAW)
"""SECURITY_HEADERS encoded, for answers written below the app (the server's 400 and 408)."""
_RAW_DOCS = _raw(_DOCS_HEADERS)


def with_security_headers(send: Send, path: str) -> Send:
    """``send``, adding the browser headers a response does not set itself."""
    extra = _RAW_DOCS if path.startswith(_DOCS_PATHS) else _RAW

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [pair for pair in extra if pair[0] not in present]
            message = {**message, "headers": headers}
        await send(message)

    return sending
