"""The token endpoints: chat completions, completions and embeddings, over HTTP (`add_routes`) and
as one line of a hosted batch (`answer_line`), with the behaviours of other servers `SimConfig`
opts into (list prompts ignored or refused, `n` dropped, one slot).

    OpenAI        /v1/chat/completions   /v1/completions   /v1/embeddings
    Azure         /openai/deployments/{deployment}/{chat/completions|completions|embeddings}?api-version=V
    Azure v1      /openai/v1/{chat/completions|completions|embeddings}   (api-version optional)

The order a request meets the checks in is drawn in `runner.simulator.server`'s docstring.
`answer_for` is what these routes answer when no limit or fault applies, for tests whose `send`
function stands in for the server.
"""
from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from runner.simulator.answers import (
    CHAT, COMPLETIONS, EMBEDDINGS, SimRequest, build_answer, sha_hex, text_tokens,
)
from runner.simulator.budgets import (
    LITELLM_DESCRIPTOR, RATE_WINDOW_S, WindowBudget, bucket_states, rate_limit_headers,
    rate_limited, router_limited, window_limited,
)
from runner.simulator.faults import Reply
from runner.simulator.parsing import (
    AZURE, AZURE_DEFAULT_API_VERSION, BLANK_SERVER_ERROR, MALFORMED_JSON, QUOTA_ERROR, ApiError, api_key_of, azure_error, check_model, parse_request, poisoned,
)
from runner.simulator.service import (
    ConnectionDropped, Service, add_three_shapes, client_gone,
)

LATENCY_JITTER = 0.1  # latency is latency_ms * (1 +- up to this fraction)
PATH_TAILS = ((CHAT, "/chat/completions"), (COMPLETIONS, "/completions"), (EMBEDDINGS, "/embeddings"))


def add_routes(app: web.Application, service: Service) -> None:
    """Register the token endpoints of `service` on `app`, in the three URL shapes."""
    for kind, tail in PATH_TAILS:
        add_three_shapes(app, tail, lambda request, shape, kind=kind: _serve(service, request,
                                                                              kind, shape))


# -- the request path ------------------------------------------------------------------------
async def _serve(service: Service, request: web.Request, kind: str, shape: str) -> web.Response:
    config = service.config
    api_version = request.query.get("api-version", "")
    if shape == AZURE and not api_version:
        raise ApiError(400, azure_error("BadRequest",
                                        "Missing required query parameter: api-version"))
    key = api_key_of(request.headers, shape, config.api_key)
    deployment = request.match_info.get("deployment")
    if deployment is not None:
        check_model(shape, deployment, models=config.models, deployments=config.deployments)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, MALFORMED_JSON) from None
    req = parse_request(kind, body, deployment)
    if deployment is None:
        check_model(shape, req.model, models=config.models, deployments=config.deployments)
    listed = len(req.prompts) > 1
    req = _as_served(service, req)
    if config.poison is not None and any(config.poison in p for p in req.prompts):
        raise poisoned(kind, sum(text_tokens(p) for p in req.prompts))
    if config.quota_requests is not None and service.admitted >= config.quota_requests:
        raise ApiError(429, QUOTA_ERROR)
    budget_name = key if config.budget_scope == "key" else req.model
    budget = service.budget(budget_name)
    charge = req.charge if config.charge_factor == 1 else \
        math.ceil(round(req.charge * config.charge_factor, 6))  # round: 100 × 1.1 is 111 else
    verdict = budget.admit(charge)
    states = budget.states() if isinstance(budget, WindowBudget) else bucket_states(budget)
    headers = rate_limit_headers(config.header_style, shape, states, scope=config.budget_scope)
    if not verdict.admitted:
        if config.header_style == "litellm-router":
            raise router_limited(req.model, budget)
        if isinstance(budget, WindowBudget):
            hashed = sha_hex(key)  # LiteLLM names a key by its sha256
            value = hashed if config.budget_scope == "key" else f"{hashed}:{req.model}"
            raise window_limited(verdict, states, LITELLM_DESCRIPTOR[config.budget_scope],
                                 value, service.wall_clock() + RATE_WINDOW_S, headers)
        raise rate_limited(shape, kind, req.model, api_version or AZURE_DEFAULT_API_VERSION,
                           budget, verdict, charge, headers)
    service.admitted += 1
    service.stats.tokens_charged += charge
    service.stats.by_key[key] += 1
    if isinstance(budget, WindowBudget):
        service.stats.by_window[budget_name, budget.windows] += 1
    if listed and config.list_prompts == "error":
        raise ApiError(500, BLANK_SERVER_ERROR, headers)
    fault = service.pick_fault()
    work = _work(service, request, req, fault, headers)
    return await (_in_turn(service, work) if config.serial else work)


async def _work(service: Service, request: web.Request, req: SimRequest, fault: str | None,
                headers: Mapping[str, str]) -> web.Response:
    """The admitted request's answer, or its fault, after the latency (and any hang).

    Counted in `stats.served` once the latency is over, and in `stats.abandoned` too when its
    client has gone by then (the work was wasted); not counted when cancelled before.
    """
    config, stats = service.config, service.stats
    stats.working += 1
    stats.max_working = max(stats.max_working, stats.working)
    try:
        if config.latency_ms > 0:
            jitter = 1 + service.rng.uniform(-LATENCY_JITTER, LATENCY_JITTER)
            await service.sleep(config.latency_ms * jitter / 1000)
        if fault == "hang":
            await service.sleep(config.hang_s)
    finally:
        stats.working -= 1
    stats.served += 1
    if client_gone(request):
        stats.abandoned += 1
    reply = _reply(service, req, fault, over_http=True)
    if reply.reset:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionDropped
    if reply.status != 200:
        raise ApiError(reply.status, reply.body)
    if not reply.truncated and not client_gone(request):
        _count_answered(service, req, reply.body)
    return web.Response(status=200, body=reply.raw, content_type="application/json",
                        headers=headers)


def _reply(service: Service, req: SimRequest, fault: str | None, *, over_http: bool) -> Reply:
    """What the admitted `req` gets: its answer with `fault` applied (`faults.apply_fault`)."""
    def answer() -> dict[str, Any]:
        return build_answer(req, rng=service.rng, shuffle=service.config.shuffle,
                            break_json=service.config.json_fault_rate,
                            created=int(service.wall_clock()),
                            response_id=service.next_id("chatcmpl-" if req.kind == CHAT else "cmpl-",
                                                        29))
    return service.reply(fault, answer, "data" if req.kind == EMBEDDINGS else "choices",
                         over_http=over_http)


async def _in_turn(service: Service, work: Coroutine[Any, Any, web.Response]) -> web.Response:
    """`work` done when the server's one slot is free, in arrival order (`config.serial`).

    The work is shielded: a client that leaves (times out) cancels its wait, not the work, which
    keeps the slot until done, as a one-slot local server keeps generating for nobody.
    """
    async def queued() -> web.Response:
        try:
            async with service.slot:
                return await work
        finally:
            work.close()  # never started when cancelled in the queue (stop())

    task = asyncio.ensure_future(queued())
    service.serial_tasks.add(task)

    def forget(task: asyncio.Future[web.Response]) -> None:
        service.serial_tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned request's fault is nobody's error

    task.add_done_callback(forget)
    return await asyncio.shield(task)


def _as_served(service: Service, req: SimRequest) -> SimRequest:
    """`req` as this server takes it: without the list items or `n` it does not honour."""
    config = service.config
    if len(req.prompts) > 1 and config.list_prompts == "ignore":
        service.stats.dropped_prompts += len(req.prompts) - 1
        req = replace(req, prompts=req.prompts[:1])
    if req.n > 1 and not config.honour_n:
        service.stats.dropped_choices += (req.n - 1) * len(req.prompts)
        req = replace(req, n=1)
    return req


def answer_line(service: Service, kind: str, body: Any, deployment: str | None = None
                ) -> tuple[int, dict[str, Any]]:
    """(status, body) for one line of a hosted batch, by the live path's own rules (parsing,
    poison, the fault draw, the deterministic answer), without rate limits or latency: 500
    and 503 stand for every fault that breaks an answer, as the Batch API reports them."""
    try:
        req = _as_served(service, parse_request(kind, body, deployment))
        if service.config.poison is not None and any(service.config.poison in p for p in req.prompts):
            raise poisoned(kind, sum(text_tokens(p) for p in req.prompts))
    except ApiError as err:
        return err.status, err.body
    reply = _reply(service, req, service.pick_fault(), over_http=False)
    if reply.complete:
        _count_answered(service, req, reply.body)
    return reply.status, reply.body


def _count_answered(service: Service, req: SimRequest, answer: dict[str, Any]) -> None:
    """Count in `stats.answered` each prompt of `req` whose every choice `answer` holds."""
    items = answer["data" if req.kind == EMBEDDINGS else "choices"]
    per_prompt = 1 if req.kind == EMBEDDINGS else req.n
    delivered = Counter(item["index"] // per_prompt for item in items) if req.kind != CHAT \
        else Counter({0: len(items)})
    for position, prompt in enumerate(req.prompts):
        if delivered[position] == per_prompt:
            service.stats.answered[prompt] += 1


def answer_for(path: str, body: Any) -> dict[str, Any]:
    """The 200 body the simulator sends for `body` POSTed to `path` (any URL shape above, query
    ignored) when no rate limit or fault applies, its choices in index order; raises `ApiError`
    where the simulator answers 400. For tests whose `send` function stands in for the server."""
    path = path.split("?", 1)[0]
    kind = next((k for k, tail in PATH_TAILS if path.endswith(tail)), None)
    if kind is None:
        raise ValueError(f"not a path the simulator serves: {path!r}")
    deployment = path.split("/openai/deployments/", 1)[1].split("/", 1)[0] \
        if "/openai/deployments/" in path else None
    return build_answer(parse_request(kind, body, deployment), rng=random.Random(0), shuffle=False,
                        created=0, response_id=("chatcmpl-" if kind == CHAT else "cmpl-") +
                        sha_hex(orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode())[:29])
