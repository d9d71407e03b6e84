"""The simulator's endpoints beyond chat, completions and embeddings: `/v1/responses`,
`/v1/moderations`, `/v1/images/{generations,edits,variations}` (OpenAI, Azure deployment and
Azure v1 URL shapes), and `GET /sim-images/NAME` serving `url` image answers until they expire.

A request meets what the others meet (`runner.simulator.server`): Azure's api-version check, auth,
validation (400), quota, the rate limit (429), a fault, the latency. Token endpoints share their
model's RPM/TPM budget; image endpoints have their own per model: requests (RPM) and images per
minute (`SimConfig.ipm`), `n` images charged per request, headers `x-ratelimit-{limit,remaining,
reset}-images` beside the requests ones, and OpenAI's 429 "Rate limit exceeded for images per
minute in organization ORG. Limit: N/1min. Current: M/1min." (Azure: its own 429 body).
"""
from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from runner.simulator import images as img
from runner.simulator import responses as rsp
from runner.simulator.budgets import (
    ModelBudget, WindowBudget, bucket_states, format_duration, rate_limit_headers,
)
from runner.simulator.parsing import (
    AZURE, AZURE_DEFAULT_API_VERSION, MALFORMED_JSON, OPENAI, ORGANIZATION, QUOTA_ERROR,
    ApiError, api_key_of, azure_error, bad_request, check_model, openai_error,
)
from runner.simulator.service import (
    ConnectionDropped, Service, add_three_shapes, client_gone,
)

IMAGE_PATH = "/sim-images/"
_TAILS = (rsp.RESPONSES, rsp.MODERATIONS, img.GENERATIONS, img.EDITS, img.VARIATIONS)
_AZURE_OPERATION = {img.GENERATIONS: "ImageGenerations_Create", img.EDITS: "ImageEdits_Create",
                    img.VARIATIONS: "ImageVariations_Create"}


def add_routes(app: web.Application, sim: Service) -> None:
    """Register the routes of `sim` on `app`."""
    for tail in _TAILS:
        add_three_shapes(app, f"/{tail}", lambda request, shape, tail=tail: _serve(sim, request,
                                                                                   tail, shape))
    app.router.add_get(IMAGE_PATH + "{name}", _download(sim))


def _download(sim: Service) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        entry = sim.image_files.get(name)
        if entry is None or sim.clock() >= entry[1]:
            return web.Response(status=403, text="AuthenticationFailed: Signed expiry time has "
                                "passed", content_type="application/xml")
        if sim.config.download_fault_rate and sim.rng.random() < sim.config.download_fault_rate:
            return web.Response(status=500, text="InternalError")
        fmt = name.rsplit(".", 1)[-1]
        return web.Response(status=200, body=entry[0], content_type=f"image/{fmt}")
    return handle


async def _read(request: web.Request, tail: str) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """(fields, uploads): a JSON body, or for edits and variations a multipart form."""
    if tail in (img.EDITS, img.VARIATIONS):
        if not request.content_type.startswith("multipart/"):
            raise bad_request("Invalid Content-Type header (application/json), expected "
                       "multipart/form-data.")
        fields: dict[str, Any] = {}
        files: dict[str, list[bytes]] = {}
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""
            if part.filename is not None:
                files.setdefault(name.removesuffix("[]"), []).append(await part.read())
            else:
                fields[name] = await part.text()
        return fields, files
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, MALFORMED_JSON) from None
    if not isinstance(body, dict):
        raise bad_request("Invalid request body: expected a JSON object.")
    return body, {}


def _image_headers(shape: str, budget: ModelBudget) -> dict[str, str]:
    headers = rate_limit_headers("openai", shape, bucket_states(budget))
    return {k.replace("-tokens", "-images"): v for k, v in headers.items()}


def _image_rate_limited(shape: str, tail: str, model: str, budget: ModelBudget, verdict: Any,
                        n: int, api_version: str, headers: dict[str, str]) -> ApiError:
    wait = verdict.retry_after_s
    headers["retry-after"] = str(max(1, math.ceil(wait - 1e-9)))
    headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000 - 1e-6)))
    if shape != OPENAI:
        return ApiError(429, azure_error("429", (
            f"Requests to the {_AZURE_OPERATION[tail]} Operation under Azure OpenAI API version "
            f"{api_version} have exceeded rate limit of your current OpenAI S0 pricing tier. "
            f"Please retry after {headers['retry-after']} seconds.")), headers)
    if verdict.limit == "requests":
        message = (f"Rate limit reached for {model} in organization {ORGANIZATION} on requests per "
                   f"min (RPM): Limit {budget.rpm}, Used {budget.used('requests')}, Requested 1. "
                   f"Please try again in {format_duration(wait)}.")
        kind = "requests"
    else:
        message = (f"Rate limit exceeded for images per minute in organization {ORGANIZATION}. "
                   f"Limit: {budget.tpm}/1min. Current: {budget.used('tokens') + n}/1min. Please "
                   "visit https://platform.openai.com/docs/guides/rate-limits to learn how to "
                   "increase your rate limit.")
        kind = "images"
    return ApiError(429, openai_error(message, kind, None, "rate_limit_exceeded"), headers)


async def _serve(sim: Service, request: web.Request, tail: str, shape: str) -> web.Response:
    config = sim.config
    api_version = request.query.get("api-version", "")
    if shape == AZURE and not api_version:
        raise ApiError(400, azure_error("BadRequest", "Missing required query parameter: api-version"))
    key = api_key_of(request.headers, shape, config.api_key)
    deployment = request.match_info.get("deployment")
    if deployment is not None:
        check_model(shape, deployment, models=config.models, deployments=config.deployments)
    fields, files = await _read(request, tail)
    if tail == rsp.RESPONSES:
        model, text, limit = rsp.parse_responses(fields, deployment)
        charge, image_req = rsp.response_charge(text, limit), None
    elif tail == rsp.MODERATIONS:
        model, texts = rsp.parse_moderations(fields)
        model = deployment or model
        charge, image_req = sum(-(-len(t) // 4) for t in texts), None
    else:
        image_req = img.parse_image_request(tail, fields, files, deployment)
        model, charge = deployment or image_req.model, image_req.n
    if deployment is None:
        check_model(shape, model, models=config.models, deployments=config.deployments)
    if config.quota_requests is not None and sim.admitted >= config.quota_requests:
        raise ApiError(429, QUOTA_ERROR)
    if image_req is not None:
        budget = sim.image_budget(key if config.image_budget_scope == "key" else model)
        verdict = budget.admit(charge)
        headers = _image_headers(shape, budget)
        if not verdict.admitted:
            raise _image_rate_limited(shape, tail, model, budget, verdict, charge,
                                      api_version or AZURE_DEFAULT_API_VERSION, headers)
    else:  # the model's (or with budget_scope "key", the key's) budget, as the token endpoints
        budget = sim.budget(key if config.budget_scope == "key" else model)
        verdict = budget.admit(charge)
        states = budget.states() if isinstance(budget, WindowBudget) else bucket_states(budget)
        headers = rate_limit_headers(config.header_style, shape, states, scope=config.budget_scope)
        if not verdict.admitted:
            raise ApiError(429, openai_error(
                f"Rate limit reached for {model} in organization {ORGANIZATION} on "
                f"{verdict.limit} per min. Please try again in "
                f"{format_duration(verdict.retry_after_s)}.", verdict.limit, None,
                "rate_limit_exceeded"),
                {**headers, "retry-after-ms": str(max(1, math.ceil(verdict.retry_after_s * 1000)))})
    sim.admitted += 1
    sim.stats.tokens_charged += charge if image_req is None else 0
    sim.stats.by_key[key] += 1
    fault = sim.pick_fault()
    if config.latency_ms > 0:
        await sim.sleep(config.latency_ms / 1000)
    if fault == "hang":
        await sim.sleep(config.hang_s)
    sim.stats.served += 1

    def answer() -> dict[str, Any]:
        created = int(sim.wall_clock())
        if tail == rsp.RESPONSES:
            return rsp.response_answer(model, text, limit, response_id=sim.next_id("resp_", 32),
                                       created=created, text_format=rsp.json_format(fields))
        if tail == rsp.MODERATIONS:
            return rsp.moderation_answer(model, texts, response_id=sim.next_id("modr-", 24))
        return img.image_answer(image_req, created=created,
                                url_for=lambda raw, fmt: publish_image(sim, request, raw, fmt))

    reply = sim.reply(fault, answer, "results" if tail == rsp.MODERATIONS else None)
    if reply.reset:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionDropped
    if reply.status != 200:
        raise ApiError(reply.status, reply.body)
    if reply.complete and not client_gone(request):
        prompts = [text] if tail == rsp.RESPONSES else texts if tail == rsp.MODERATIONS else \
            [image_req.seed]
        for p in prompts:
            sim.stats.answered[p] += 1
        if image_req is not None:
            sim.stats.images += image_req.n
    return web.Response(status=200, body=reply.raw, content_type="application/json",
                        headers=headers)


def publish_image(sim: Service, request: web.Request, raw: bytes, fmt: str) -> str:
    """A URL on this simulator serving `raw` until `image_url_ttl_s` from now."""
    name = sim.next_id("img-", 24) + "." + fmt
    sim.image_files[name] = (raw, sim.clock() + sim.config.image_url_ttl_s)
    return f"{sim.origin}{IMAGE_PATH}{name}?se=sim&sig=sim"
