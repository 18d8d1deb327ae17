"""The service's outer wall: a pure-ASGI middleware that checks every HTTP request before the app sees it.

* **Host header** (DNS rebinding): the ``Host`` must name one of the allowed hosts (loopback names, the bound
  address and whatever the operator adds with ``--allowed-host``); anything else answers 400 before routing.
* **Body size**: a body over ``max_body`` bytes answers 413, whether announced by ``Content-Length`` or sent
  chunked (the body is read up to the limit, then replayed to the app).
* **Security headers** on every response: a Content-Security-Policy without inline script or style,
  ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Always allowed: the names of the loopback interface.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Bind addresses that mean "every interface": they name no host a client would send.
WILDCARD_BINDS = ("0.0.0.0", "::", "")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def allowed_host_set(bind: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """Lower-case host names accepted in the ``Host`` header: loopback, ``bind`` (unless a wildcard), ``extra``."""
    hosts = {h.lower() for h in LOOPBACK_HOSTS}
    if bind and bind not in WILDCARD_BINDS:
        hosts.add(bind.strip("[]").lower())
    hosts.update(h.strip().strip("[]").lower() for h in extra if h.strip())
    return frozenset(hosts)


def host_of(header: str) -> str:
    """The host part of a ``Host`` header value (``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``)."""
    h = header.strip().lower()
    if h.startswith("["):  # IPv6 literal
        end = h.find("]")
        return h[1:end] if end > 0 else h
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


class Guard:
    """ASGI middleware: Host check, body-size limit and security headers (see the module docstring)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str], max_body: int) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed_hosts)
        self.any_host = "*" in self.allowed
        self.max_body = int(max_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = host_of(headers.get("host", ""))
        if not self.any_host and host not in self.allowed:
            await _error(send_with_headers, 400, "invalid Host header: this server answers only to its own "
                         "address (start it with --allowed-host NAME to add one)")  # fmt: skip
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await _error(send_with_headers, 400, "invalid Content-Length header")
                return
            if n > self.max_body:
                await _error(send_with_headers, 413, self._too_large())
                return
        # read the body (at most max_body + 1 bytes), then replay it: chunked bodies are bounded too
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await _error(send_with_headers, 413, self._too_large())
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    def _too_large(self) -> str:
        return f"request body too large: at most {self.max_body} bytes"


async def _error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
