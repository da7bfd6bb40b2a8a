"""What every request must pass before a route sees it: a ``Host`` header naming this server
(against DNS rebinding) and, when the server has a token, that token (``Authorization:
Bearer``, or the cookie set once from the printed ``?token=`` link). No CORS headers are ever
sent, so other origins cannot read answers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from ..errors import ConfigError

COOKIE = "featx_token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token. Raises :class:`ConfigError`."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"host {host} is reachable from other machines; a token is required there",
            hint="give a token, or bind 127.0.0.1",
            param="host",
        )


@dataclass(frozen=True)
class Guard:
    """Who may talk to the server: the host names it answers to, and its token (if any)."""

    hosts: tuple[str, ...] = LOOPBACK_NAMES
    token: str | None = None
    extra_hosts: tuple[str, ...] = field(default=())

    def host_allowed(self, header: str) -> bool:
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        if header.startswith("[") and "]:" in header:
            name = header.split("]:", 1)[0] + "]"
        return name.lower() in {h.lower() for h in (*self.hosts, *self.extra_hosts)}

    def token_ok(self, given: str | None) -> bool:
        return self.token is None or (
            given is not None and hmac.compare_digest(given.encode(), self.token.encode())
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _refuse(
    send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def guarded(app: ASGIApp, guard: Guard) -> ASGIApp:
    """``app`` behind the checks of ``guard`` (pure ASGI, before any routing)."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if host is None or not guard.host_allowed(host):
            await _refuse(send, 400, f"host {host!r} is not this server's")
            return
        if guard.token is None:
            await app(scope, receive, send)
            return
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        from_link = query.get("token", [None])[0]
        if from_link is not None and guard.token_ok(from_link):
            cookie = f"{COOKIE}={guard.token}; HttpOnly; SameSite=Strict; Path=/".encode()
            await send_redirect(send, scope, cookie)
            return
        auth = _header(scope, b"authorization")
        given = auth[7:] if auth is not None and auth.lower().startswith("bearer ") else None
        if given is None:
            jar = SimpleCookie(_header(scope, b"cookie") or "")
            given = jar[COOKIE].value if COOKIE in jar else None
        if given is None:
            await _refuse(
                send, 401, "this server needs its token", [(b"www-authenticate", b"Bearer")]
            )
            return
        if not guard.token_ok(given):
            await _refuse(send, 403, "wrong token")
            return
        await app(scope, receive, send)

    return wrapper


async def send_redirect(send: Send, scope: Scope, cookie: bytes) -> None:
    """Set the token cookie and send the browser to the same path without ``?token=``."""
    location = str(scope.get("path", "/")).encode("latin-1")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location), (b"set-cookie", cookie)],
        }
    )
    await send({"type": "http.response.body", "body": b""})
