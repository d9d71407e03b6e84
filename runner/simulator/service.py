"""The service every endpoint shares: one simulated account's configuration, statistics, budgets,
injected seams (clock, random source, sleep, wall clock) and ids, and the HTTP helpers the
endpoint modules answer with.

`completions`, `routes` and `batches` each take a `Service` and add their routes to an app;
`server.Simulator` builds one `Service`, installs them all and serves them. Nothing here knows a
route: the picture is one account reached through many URLs, which is what makes budgets shared
(per model, or per key) whatever endpoint a request comes through.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from runner.simulator.answers import sha_hex
from runner.simulator.budgets import ModelBudget, WindowBudget
from runner.simulator.config import SimConfig, SimStats
from runner.simulator.faults import Reply, apply_fault, draw_fault
from runner.simulator.parsing import AZURE, AZURE_V1, OPENAI, ApiError


class ConnectionDropped(Exception):
    """The handler closed the connection on purpose (the "reset" fault); nothing is sent."""


class Service:
    """One simulated account, shared by every endpoint.

    `clock` drives the rate-limit budgets (monotonic seconds); `rng` drives shuffling, faults and
    latency jitter (default `random.Random(config.seed)`); `sleep` is awaited for latency and hangs;
    `wall_clock` gives the `created` timestamps. `admitted` counts admitted requests (toward
    `config.quota_requests`); `origin` is `http://HOST:PORT` once served (image URLs point at it).
    """

    def __init__(self, config: SimConfig, *, clock: Callable[[], float],
                 rng: random.Random | None, sleep: Callable[[float], Awaitable[Any]],
                 wall_clock: Callable[[], float]) -> None:
        self.config = config
        self.stats = SimStats()
        self.clock = clock
        self.rng = rng if rng is not None else random.Random(config.seed)
        self.sleep = sleep
        self.wall_clock = wall_clock
        self.budgets: dict[str, ModelBudget | WindowBudget] = {}
        self.image_budgets: dict[str, ModelBudget] = {}  # model -> ModelBudget(rpm, ipm)
        self.image_files: dict[str, tuple[bytes, float]] = {}  # name -> (bytes, expires at on clock)
        self.admitted = 0  # toward config.quota_requests
        self.slot = asyncio.Lock()  # the one slot of a serial server
        self.serial_tasks: set[asyncio.Future[web.Response]] = set()
        self.origin = ""
        self._ids = 0

    def next_id(self, prefix: str, length: int) -> str:
        """Unique, deterministic ids (they do not draw on the rng, so faults stay reproducible)."""
        self._ids += 1
        return prefix + sha_hex(f"{self.config.seed}:{self._ids}")[:length]

    def budget(self, name: str) -> ModelBudget | WindowBudget:
        """The rate-limit budget of `name`, a model or, with `budget_scope="key"`, an API key
        (created unused on first use): buckets, or windows with `limiter="window"`."""
        if name not in self.budgets:
            config = self.config
            self.budgets[name] = (
                WindowBudget(config.rpm, config.tpm, clock=self.clock,
                             aligned=self.wall_clock if config.limiter == "minute" else None,
                             refuse_last=config.header_style == "litellm-router")
                if config.limiter in ("window", "minute") else
                ModelBudget(config.rpm, config.tpm, config.burst_s, clock=self.clock,
                            refused_takes=("requests",) if config.refused_count else ()))
        return self.budgets[name]

    def image_budget(self, name: str) -> ModelBudget:
        """The image budget of `name`, an image model or, with `image_budget_scope="key"`, an API
        key: requests (RPM) and images per minute (`ipm`)."""
        budget = self.image_budgets.get(name)
        if budget is None:
            config = self.config
            budget = self.image_budgets[name] = ModelBudget(
                config.rpm, config.ipm, config.burst_s, clock=self.clock,
                refused_takes=("requests", "tokens") if config.refused_count else ())
        return budget

    def pick_fault(self) -> str | None:
        """The fault an admitted request meets (`faults.draw_fault`), counted in `stats.faults`."""
        fault = draw_fault(self.config, self.rng)
        if fault is not None:
            self.stats.faults[fault] += 1
        return fault

    def reply(self, fault: str | None, answer: Callable[[], dict[str, Any]], items: str | None, *,
              over_http: bool = True) -> Reply:
        """`faults.apply_fault` with this account's random source and `max_dropped`; a partial
        answer is counted in `stats.partial`."""
        reply = apply_fault(fault, answer, items, rng=self.rng, max_dropped=self.config.max_dropped,
                            over_http=over_http)
        if reply.dropped:
            self.stats.partial += 1
        return reply


def client_gone(request: web.Request) -> bool:
    """Whether the client of `request` has closed its connection (or never had one)."""
    return request.transport is None or request.transport.is_closing()


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=dict(headers or {}))


def add_three_shapes(app: web.Application, tail: str,
                     serve: Callable[[web.Request, str], Awaitable[web.Response]]) -> None:
    """Register `serve(request, shape)` for `tail` ("/chat/completions") in the three URL shapes:
    OpenAI's `/v1`, Azure's `/openai/deployments/{deployment}` and Azure's `/openai/v1`. An
    `ApiError` it raises becomes the answer it carries."""
    for prefix, shape in (("/v1", OPENAI), ("/openai/deployments/{deployment}", AZURE),
                          ("/openai/v1", AZURE_V1)):
        async def handle(request: web.Request, shape: str = shape) -> web.Response:
            try:
                return await serve(request, shape)
            except ApiError as err:
                return json_response(err.status, err.body, err.headers)
        app.router.add_post(prefix + tail, handle)
