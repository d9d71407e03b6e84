"""A simulated OpenAI-compatible API: the project's test double, faithful where the client can tell.

Endpoints (all POST, JSON in and out):

    OpenAI        /v1/chat/completions   /v1/completions   /v1/embeddings
                  auth `Authorization: Bearer KEY`
    Azure         /openai/deployments/{deployment}/{chat/completions|completions|embeddings}?api-version=V
                  auth `api-key: KEY` or `Authorization: Bearer KEY`; the deployment plays the model's
                  role (body `model` optional); a missing `api-version` is a 400
    Azure v1      /openai/v1/{chat/completions|completions|embeddings}   (api-version optional)

What a request meets, in order (the first that applies answers it):

    404  a path the service does not serve (`/chat/completions` without `/v1`, `/v1/v1/...`):
         OpenAI's `Invalid URL (POST /path)` (or its 2024 `unknown_url`, `config.url_error`);
         under `/openai/`, Azure's `Resource not found`
    400  Azure deployment URL without api-version (Azure's `BadRequest` body)
    401  no key / wrong key (OpenAI body masks the key: `sk-abcde***wxyz`; Azure has its own body)
    404  an Azure deployment not in `config.deployments` (`DeploymentNotFound`)
    400  malformed JSON; unknown body field; missing or
         ill-typed model/messages/prompt/input; a list prompt/input longer than 2048; `stream: true`
         (the simulator does not stream)
    404  a model not in `config.models` (`model_not_found`; Azure v1: a deployment, as above)
    400  a prompt containing `config.poison` (`context_length_exceeded`)
    429  `insufficient_quota` once `config.quota_requests` requests were admitted
    429  request larger than the whole TPM ("Request too large"), never retryable
    429  rate limited on requests or tokens, with `retry-after` / `retry-after-ms` (with
         `config.refused_count` the refusal still takes its request from the budget)
         -- from here on the request is admitted and charged;
    500  a list prompt/input of 2+ items, with `config.list_prompts == "error"` (blank message);
         then (with `config.serial`, queued for the one slot) the latency; then the fault drawn
         (`runner.simulator.faults`: `config.fault_rate` over `config.faults`, or each at its own
         rate in `config.fault_rates`):
    500 / 503 / connection reset / hang `config.hang_s` then answer / 200 with the body cut in half /
         200 without 1 to `config.max_dropped` choices (or embeddings) of a multi-item answer
    200  the answer, its choices in shuffled order (unless `config.shuffle` is False)

The modules, each importing only those above it:

    answers      accounting and answers: the token charge, the deterministic texts and vectors,
                 `SimRequest`, `build_answer`
    parsing      request parsing and error bodies (400, 401, quota, server errors)
    budgets      rate-limit budgets (buckets, windows), their headers and their 429s
    config       `SimConfig` (how it behaves) and `SimStats` (what it saw)
    faults       the fault draw and the one function that applies a fault to any answer
    responses,   the Responses, moderations and image endpoints' parsing and answers (pure)
    images
    service      `Service`: the one account every endpoint shares (budgets, seams, ids)
    completions  chat, completions and embeddings over HTTP, and as a batch line
    routes       Responses, moderations and images over HTTP; image downloads
    batches      the hosted Batch API (Files and Batches endpoints)
    server       this module: the app (`Simulator`), `serve`, `run_in_thread`

Token charge: see `runner.simulator.answers`; `SimConfig.charge_factor` scales it, to play a
service whose accounting differs from that rule. Rate limits: see `runner.simulator.budgets`;
opt-in, as gateways do: one budget per API key instead of per model (`budget_scope`), fixed 60 s
windows instead of buckets (`limiter`), and other rate-limit header names (`header_style`).
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from runner.simulator import completions, routes
from runner.simulator.batches import BatchConfig, BatchService
from runner.simulator.budgets import ModelBudget, WindowBudget
from runner.simulator.config import SimConfig
from runner.simulator.parsing import ORGANIZATION, openai_error, unknown_route
from runner.simulator.service import ConnectionDropped, Service, json_response

MAX_BODY_BYTES = 64 * 1024 * 1024  # aiohttp's 1 MiB default would refuse big packed requests
SHUTDOWN_GRACE_S = 0.5  # stop() waits this long for handlers still running (e.g. a hang)
OPENAI_VERSION = "2020-10-01"


class Simulator:
    """The simulated service: `await start()` binds it, `stats` tells what it saw, `stop()` ends it.

    `clock` drives the rate-limit buckets (monotonic seconds); `rng` drives shuffling, faults and
    latency jitter (default `random.Random(config.seed)`); `sleep` is awaited for latency and hangs;
    `wall_clock` gives the `created` timestamps. `service` is the account every endpoint shares.
    """

    def __init__(self, config: SimConfig = SimConfig(), *,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 wall_clock: Callable[[], float] = time.time,
                 batch: BatchConfig | None = None) -> None:
        self.service = Service(config, clock=clock, rng=rng, sleep=sleep, wall_clock=wall_clock)
        self.stats = self.service.stats
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port = 0
        self.app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        completions.add_routes(self.app, self.service)
        routes.add_routes(self.app, self.service)  # Responses, moderations, images
        self.batches = BatchService(self.service, batch or BatchConfig())  # the hosted Batch API
        self.batches.install(self.app)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind and serve; return the OpenAI base URL `http://HOST:PORT/v1`."""
        runner = web.AppRunner(self.app, handler_cancellation=True,
                               shutdown_timeout=SHUTDOWN_GRACE_S, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self._host, self._port = runner.addresses[0][:2]
        self.service.origin = self.azure_endpoint
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; handlers still running after `SHUTDOWN_GRACE_S`, and serial work still
        queued or running, are cancelled."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.batches.stop()
        leftover = list(self.service.serial_tasks)  # work of serial requests nobody waits for any more
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def config(self) -> SimConfig:
        """How the service behaves; a test may swap it mid-run (every request reads it anew)."""
        return self.service.config

    @config.setter
    def config(self, config: SimConfig) -> None:
        self.service.config = config

    @property
    def base_url(self) -> str:
        return f"{self.azure_endpoint}/v1"

    @property
    def azure_endpoint(self) -> str:
        if not self._port:
            raise RuntimeError("the simulator is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def budget(self, name: str) -> ModelBudget | WindowBudget:
        """The rate-limit budget of `name`, a model or, with `budget_scope="key"`, an API key
        (created unused on first use): buckets, or windows with `limiter="window"`."""
        return self.service.budget(name)

    # -- plumbing ----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        request_id = self.service.next_id("req_", 32)
        try:
            try:
                response = await handler(request)
            except ConnectionDropped:
                return web.Response(status=499)  # never written: the transport is closed
            except web.HTTPException as exc:  # the router's 404 / 405, a body over MAX_BODY_BYTES
                if exc.status == 404:
                    body = unknown_route(request.method, request.path_qs, self.config.url_error)
                elif exc.status == 405:
                    body = openai_error(f"Invalid method for URL ({request.method} {request.path})")
                else:
                    body = openai_error(exc.reason)
                response = json_response(exc.status, body)
            stats.by_status[response.status] += 1
            if response.status == 429:
                stats.rate_limited += 1
            response.headers["x-request-id"] = request_id
            if request.path.startswith("/openai/"):
                response.headers["apim-request-id"] = request_id
            else:
                response.headers["openai-organization"] = ORGANIZATION
                response.headers["openai-version"] = OPENAI_VERSION
            return response
        finally:
            stats.in_flight -= 1


# ---------------------------------------------------------------------------------------------
# Running it outside a test's event loop
# ---------------------------------------------------------------------------------------------
def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8000,
          batch: BatchConfig | None = None) -> None:
    """Serve until interrupted (the CLI's `runner simulate`); print the base URL on one line first."""
    async def main() -> None:
        sim = Simulator(config, batch=batch)
        print(await sim.start(host, port), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await sim.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


@contextlib.contextmanager
def run_in_thread(config: SimConfig = SimConfig(), host: str = "127.0.0.1",
                  port: int = 0, *, simulator: Simulator | None = None) -> Iterator[str]:
    """A simulator on its own event loop in a daemon thread; yields its base URL, stops on exit.

    Pass `simulator` to keep a handle on its `stats` (read them after the block, or accept races)."""
    loop = asyncio.new_event_loop()
    sim = simulator or Simulator(config)
    ready = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome["url"] = loop.run_until_complete(sim.start(host, port))
        except BaseException as exc:  # reported to the caller below
            outcome["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(sim.stop())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, name="runner-simulator", daemon=True)
    thread.start()
    ready.wait()
    if "error" in outcome:
        thread.join()
        raise outcome["error"]
    try:
        yield outcome["url"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
