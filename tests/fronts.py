"""Tiny aiohttp servers put in front of the simulator for the credential tests: each is its own
origin (a free loopback port), records every request it gets (method, path, headers), and forwards
what it does not answer itself to the simulator.

- `Front(upstream)` forwards everything: another origin that would answer "as if nothing happened".
- `Front(upstream, redirect=rule, to=URL)`: answers a request for which `rule(n, method, path)` is
  true (n: requests seen before it) with a 307 to the same path and query at `to`.
- `Front(upstream, check=fn)`: `fn(request)` returns a `web.Response` to answer with (a 401 for an
  expired token, say) or None to forward.

`serving(front)` starts one on the running loop (yields its origin); `in_thread(build)` starts a
simulator and fronts on a loop of their own in a thread, for a runner started as a process.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "content-encoding"})

Rule = Callable[[int, str, str], bool]


class Front:
    def __init__(self, upstream: str, *, redirect: Rule | None = None, to: str | None = None,
                 check: Callable[[web.Request], web.Response | None] | None = None,
                 status: int = 307) -> None:
        self.upstream = upstream  # the simulator's origin: http://127.0.0.1:PORT
        self.redirect, self.to, self.check, self.status = redirect, to, check, status
        self.calls: list[tuple[str, str, dict[str, str]]] = []  # (method, path_qs, headers)
        self.redirected: list[int] = []  # indices into `calls` answered with a redirect
        self._session: aiohttp.ClientSession | None = None

    def headers_seen(self) -> list[dict[str, str]]:
        return [headers for _, _, headers in self.calls]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = len(self.calls)
        self.calls.append((request.method, request.path_qs, dict(request.headers)))
        if self.redirect is not None and self.redirect(n, request.method, request.path):
            self.redirected.append(n)
            return web.Response(status=self.status, headers={"Location": self.to + request.path_qs})
        if self.check is not None:
            answer = self.check(request)
            if answer is not None:
                return answer
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         headers=headers, data=await request.read(),
                                         allow_redirects=False) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            return web.Response(status=answer.status, body=body, headers=kept)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@contextlib.asynccontextmanager
async def serving(front: Front):
    """`front` on a free loopback port of the running loop; yields its origin."""
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", front.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()
        await front.close()


@contextlib.contextmanager
def in_thread(build: Callable[[contextlib.AsyncExitStack], Any]):
    """Run `await build(stack)` on a loop of its own in a daemon thread (it enters servers into
    `stack`) and yield what it returns; everything is closed on exit."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    done = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                outcome["value"] = await build(stack)
            except BaseException as exc:  # reported to the caller
                outcome["error"] = exc
                ready.set()
                return
            ready.set()
            await done.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    try:
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["value"]
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join(30)
        loop.close()
