"""The HTTP boundary: `send(HttpRequest) -> HttpResponse`, a plain async function.

Everything above this line is tested with scripted functions (no server); `aiohttp_sender` is the
real one. `send` returns any answer the server gives, whatever its status, and raises only when no
answer arrived (timeouts, refused or reset connections, a body cut short).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # a completion with many output tokens can take a while


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)  # carries the API key: never printed
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


Send = Callable[[HttpRequest], Awaitable[HttpResponse]]


def open_session(*, max_connections: int, connect_timeout: float = CONNECT_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S) -> aiohttp.ClientSession:
    """One shared session for a run: at most `max_connections` sockets. An answer must start within
    `read_timeout` and be complete within `connect_timeout + read_timeout` (a server trickling
    bytes cannot hold a request forever)."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections)
    timeout = aiohttp.ClientTimeout(total=connect_timeout + read_timeout, connect=connect_timeout,
                                    sock_read=read_timeout)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False,
                                 auto_decompress=True)


def aiohttp_sender(session: aiohttp.ClientSession) -> Send:
    """A `send` function over an aiohttp session."""

    async def send(request: HttpRequest) -> HttpResponse:
        async with session.request(request.method, request.url, headers=request.headers,
                                   data=request.body) as response:
            body = await response.read()
            headers = {k.lower(): v for k, v in response.headers.items()}
            return HttpResponse(response.status, headers, body)

    return send
