"""The HTTP boundary: `send(HttpRequest) -> HttpResponse`, a plain async function.

Everything above this line is tested with scripted functions (no server); `aiohttp_sender` is the
real one. `send` returns any answer the server gives, whatever its status, and raises only when no
answer arrived: `APITimeoutError` when a timeout fired, `APIConnectionError` otherwise (refused or
reset connections, a body cut short, an HTTP answer aiohttp cannot parse), each raised from the
original aiohttp or OS error (`no_answer_error`). Their messages are masked (`runner.redact`).

Redirects (`follow_redirects`, which `aiohttp_sender` applies; aiohttp's own following is off):
a call that carries a credential (`CREDENTIAL_HEADERS`: the `Authorization` bearer key or token,
Azure's `api-key`, ...) never leaves its origin (scheme, host and port). A redirect to another
origin raises `CrossOriginRedirect` instead of being followed: nothing is sent there, and the run
stops (exit 2). aiohttp alone would drop only `Authorization` and carry `api-key` along. A redirect
within the origin is followed with the same headers (307/308 with the same method and body;
301/302/303 for GET only, up to `MAX_REDIRECTS`); any other is returned as the answer it is. A call
with no credential (an image download from a signed URL) follows redirects anywhere.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from runner.errors import (
    APIConnectionError, APITimeoutError, APIUnreachableError, CrossOriginRedirect, StopRunError,
    describe,
)
from runner.redact import mask_secrets

if TYPE_CHECKING:
    import aiohttp

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # a completion with many output tokens can take a while
# A body streamed from a file (a batch input file, up to 200 MB) may take as long as its length at
# this rate, on top of the usual total: a slow uplink still gets a whole batch file through
UPLOAD_MIN_BYTES_S = 100_000


@dataclass(frozen=True, slots=True)
class FileBody:
    """A request body sent from a file rather than from memory: `head`, the first `size` bytes of
    the file at `path`, then `tail` (a batch input file's multipart upload: up to 200 MB, never
    read whole). `aiohttp_sender` streams it a `STREAM_CHUNK` at a time, its `length` given as
    the Content-Length; `read()` gives it whole, for a `send` that does not stream (tests)."""

    head: bytes
    path: str
    size: int  # bytes of the file, as it was when the request was made
    tail: bytes = b""

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("size must not be negative")

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def read(self) -> bytes:
        """The whole body. OSError when the file cannot be read, or is shorter than `size`."""
        with open(self.path, "rb") as f:
            data = f.read(self.size)
        if len(data) < self.size:
            raise OSError(f"{self.path}: {len(data)} bytes, not {self.size}")
        return self.head + data + self.tail

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces of at most `STREAM_CHUNK` bytes (the file read off the event loop).
        OSError when the file cannot be read, or is shorter than `size`."""
        import aiofiles  # noqa: PLC0415 (with aiohttp: only a run that sends pays for it)

        yield self.head
        async with aiofiles.open(self.path, "rb") as f:
            left = self.size
            while left:
                piece = await f.read(min(STREAM_CHUNK, left))
                if not piece:
                    raise OSError(f"{self.path}: {self.size - left} bytes, not {self.size}")
                left -= len(piece)
                yield piece
        yield self.tail


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)  # carries the API key: never printed
    body: bytes | FileBody = b""
    save_to: str | None = None
    """A file for a successful answer's body, written as it arrives (a batch output file may be
    far larger than memory should hold): the response's `body` is then empty. A `send` that does
    not stream may ignore it and return the body (the caller writes it: `body_to_file`)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


Send = Callable[[HttpRequest], Awaitable[HttpResponse]]

MAX_REDIRECTS = 5  # same-origin redirects followed for one call; the last answer is returned after
CREDENTIAL_HEADERS = frozenset({
    "authorization", "api-key", "proxy-authorization", "cookie", "x-api-key",
    "ocp-apim-subscription-key",  # Azure API Management's key, for a gateway in front of Azure
})
"""Request headers that carry a secret (lower-case): a call with any of them stays on its origin."""
_FOLLOWED = frozenset({301, 302, 303, 307, 308})
_KEEP_METHOD = frozenset({307, 308})  # 301/302/303 turn a POST into a GET: never for an API call
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of an absolute URL, lower-case, the default port filled in; a URL that
    does not parse is an origin of its own (never equal to a real one)."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return "", url, -1


def carries_credentials(headers: Mapping[str, str]) -> bool:
    """Whether a request's headers hold a secret (see `CREDENTIAL_HEADERS`)."""
    return any(name.lower() in CREDENTIAL_HEADERS for name in headers)


def redirect_target(request: HttpRequest, response: HttpResponse) -> str | None:
    """The absolute URL a redirect answer points to, or None when it is not one (no `location`)."""
    if response.status not in _FOLLOWED:
        return None
    location = response.headers.get("location")
    return urljoin(request.url, location.strip()) if location and location.strip() else None


def follow_redirects(send: Send, max_redirects: int = MAX_REDIRECTS) -> Send:
    """`send` that follows redirects by the rules of the module docstring: a credential never
    leaves the origin of the call (`CrossOriginRedirect`, raised before anything is sent there)."""

    async def following(request: HttpRequest) -> HttpResponse:
        response = await send(request)
        followed = 0
        while (target := redirect_target(request, response)) is not None:
            if origin(target) != origin(request.url) and carries_credentials(request.headers):
                raise CrossOriginRedirect(request.url, target, response.status)
            if followed == max_redirects:
                break
            if response.status in _KEEP_METHOD:
                request = dataclasses.replace(request, url=target)
            elif request.method in ("GET", "HEAD"):
                request = dataclasses.replace(request, url=target, body=b"")
            else:
                break  # a POST moved with 301/302/303: the answer it is (a 3xx)
            followed += 1
            response = await send(request)
        return response

    return following


def no_answer_errors() -> tuple[type[BaseException], ...]:
    """What aiohttp and the OS raise when no answer arrived. (TimeoutError is asyncio.TimeoutError
    and aiohttp.ServerTimeoutError; it is an OSError too.) aiohttp is imported on first use: a
    command that sends nothing does not pay for it."""
    import aiohttp
    return (TimeoutError, aiohttp.ClientError, OSError)


def no_answer_error(exc: TimeoutError | aiohttp.ClientError | OSError,
                    url: str | None = None) -> APIConnectionError:
    """The tree's error for one of `no_answer_errors()`: `APITimeoutError` for a timeout,
    `APIUnreachableError` when no connection could be made, else `APIConnectionError`, with a
    one-line, masked message naming the original error, and the `url` called (its query cut)."""
    import aiohttp
    url = url.split("?")[0] if url is not None else None
    if isinstance(exc, aiohttp.ClientResponseError):
        # We never raise for a status, so this is aiohttp failing to parse the answer (a broken
        # proxy, an oversized header): no answer from the API, worth another try.
        return APIConnectionError(mask_secrets(f"malformed HTTP answer: {exc.message}"), url=url)
    if isinstance(exc, TimeoutError):
        return APITimeoutError(mask_secrets(describe(exc)), url=url)
    if _unreachable(exc):
        return APIUnreachableError(mask_secrets(describe(exc)), url=url)
    return APIConnectionError(mask_secrets(describe(exc)), url=url)


def _no_answer_loaded() -> tuple[type[BaseException], ...]:
    """`no_answer_errors()` without importing aiohttp: an aiohttp error cannot be raised before
    aiohttp is loaded (a run that sends nothing never loads it)."""
    aiohttp = sys.modules.get("aiohttp")
    return (TimeoutError, OSError) if aiohttp is None else (TimeoutError, aiohttp.ClientError, OSError)


def only_tree_errors(send: Send) -> Send:
    """`send` whose failures are all errors of the project's tree: what aiohttp or the OS raises
    (a `send` other than `aiohttp_sender`, which converts them itself) becomes `no_answer_error`'s
    error, raised from the original. Every backend sends through it, so `classify` reads only the
    tree's errors."""

    async def converting(request: HttpRequest) -> HttpResponse:
        try:
            return await send(request)
        except _no_answer_loaded() as exc:
            raise no_answer_error(exc, request.url) from exc

    return converting


UNREACHABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


def _unreachable(exc: BaseException) -> bool:
    """Whether no connection could be made to the server at all: refused, no route, the host
    name does not resolve, TLS failed. Not a local shortage (too many open files) nor a
    connection lost after it was made (reset, disconnected)."""
    import aiohttp
    if isinstance(exc, aiohttp.ClientSSLError):
        return True
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, (socket.gaierror, ssl.SSLError)):
        return True
    return isinstance(exc, OSError) and exc.errno in UNREACHABLE_ERRNOS


def open_session(*, max_connections: int, connect_timeout: float = CONNECT_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S) -> aiohttp.ClientSession:
    """One shared session for a run: at most `max_connections` sockets. An answer must start within
    `read_timeout` and be complete within `connect_timeout + read_timeout` (a server trickling
    bytes cannot hold a request forever)."""
    import aiohttp
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections)
    timeout = aiohttp.ClientTimeout(total=connect_timeout + read_timeout, connect=connect_timeout,
                                    sock_read=read_timeout)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False,
                                 auto_decompress=True)


def request_timeout(timeout: aiohttp.ClientTimeout, request: HttpRequest) -> aiohttp.ClientTimeout:
    """The session's `timeout` for `request`, but: a download saved to a file has no total (a long
    one is fine while bytes keep coming, `sock_read` apart); a body streamed from a file gets
    its length at `UPLOAD_MIN_BYTES_S` more."""
    import aiohttp  # noqa: PLC0415 (see no_answer_errors)
    if request.save_to is not None:
        return aiohttp.ClientTimeout(total=None, connect=timeout.connect,
                                     sock_read=timeout.sock_read)
    if isinstance(request.body, FileBody) and timeout.total is not None:
        return aiohttp.ClientTimeout(total=timeout.total + request.body.length / UPLOAD_MIN_BYTES_S,
                                     connect=timeout.connect, sock_read=timeout.sock_read)
    return timeout


class SessionSender:
    """A run's `send` over one aiohttp session (`open_session`'s), opened by the first request:
    a run with nothing to send (a resume of a finished file) never imports aiohttp, about 10 MB.
    `close()` closes the session if it was opened; a request after it is a RuntimeError."""

    __slots__ = ("_open", "_session", "_send", "_closed")

    def __init__(self, *, max_connections: int, connect_timeout: float = CONNECT_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S) -> None:
        self._open = functools.partial(open_session, max_connections=max_connections,
                                       connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._send: Send | None = None
        self._closed = False

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if self._send is None:
            if self._closed:
                raise RuntimeError("the run's HTTP session is closed")
            self._session = self._open()
            self._send = aiohttp_sender(self._session)
        return await self._send(request)

    async def close(self) -> None:
        self._closed = True
        self._send = None
        if self._session is not None:
            await self._session.close()


def aiohttp_sender(session: aiohttp.ClientSession) -> Send:
    """A `send` function over an aiohttp session, following redirects by `follow_redirects`; see
    the module docstring for what it raises."""
    import aiohttp  # noqa: PLC0415 (see no_answer_errors)

    no_answer = no_answer_errors()

    async def send(request: HttpRequest) -> HttpResponse:
        timeout = request_timeout(session.timeout, request)
        data, headers = request.body, request.headers
        if isinstance(data, FileBody):  # streamed from its file, its length said first
            data, headers = data.chunks(), {**headers, "Content-Length": str(data.length)}
        try:
            async with session.request(request.method, request.url, headers=headers,
                                       data=data, timeout=timeout,
                                       allow_redirects=False) as response:
                headers = {k.lower(): v for k, v in response.headers.items()}
                if request.save_to is not None and 200 <= response.status < 300:
                    await _stream_to(response, request.save_to)
                    return HttpResponse(response.status, headers, b"")
                body = await response.read()
                return HttpResponse(response.status, headers, body)
        except no_answer as exc:
            raise no_answer_error(exc, request.url) from exc

    return follow_redirects(send)


STREAM_CHUNK = 1 << 20  # one thread hop per MiB written


async def _stream_to(response: aiohttp.ClientResponse, path: str) -> None:
    """The answer's body into `path` (replaced), a MiB at a time, off the event loop. The file
    that cannot be written (disk full, say) raises `StopRunError`: not an error of the network,
    and not one that trying again would mend."""
    import aiofiles  # noqa: PLC0415 (with aiohttp: only a run that sends pays for it)

    try:
        f = await aiofiles.open(path, "wb", buffering=0)  # a write that fails says so at once
    except OSError as exc:
        raise StopRunError(f"cannot write {path}: {exc.strerror}") from None
    try:
        async for chunk in response.content.iter_chunked(STREAM_CHUNK):
            view = memoryview(chunk)
            try:
                while view:  # a raw write may take less than it was given (a disk filling up)
                    view = view[await f.write(view):]
            except OSError as exc:
                raise StopRunError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        await f.close()


async def body_to_file(response: HttpResponse, path: str) -> None:
    """After a `send` with ``save_to=path``: the body into `path` where `send` returned it in
    memory instead of streaming it (a scripted `send` in tests). A file that cannot be written
    raises `StopRunError`, as when the body is streamed."""
    if response.body or not os.path.exists(path):
        import aiofiles  # noqa: PLC0415

        try:
            async with aiofiles.open(path, "wb") as f:
                await f.write(response.body)
        except OSError as exc:
            raise StopRunError(f"cannot write {path}: {exc.strerror}") from None
