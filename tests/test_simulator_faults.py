"""The simulator's faults and refusals as the real service gives them: routes, models, deployments
and keys that do not exist; partial answers; 500s, 503s, resets and truncated bodies at their own
rates from the one fault function; and refused requests that still count against the budget."""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from click.testing import CliRunner
from multidict import CIMultiDict

from runner.simulator.budgets import ModelBudget
from runner.simulator.config import SimConfig
from runner.simulator.faults import apply_fault, draw_fault
from runner.simulator.server import Simulator

AUTH = {"Authorization": "Bearer sk-test-key-0123456789"}
AZURE_VERSION = "2024-10-21"
UNKNOWN_URL_TAIL = ". Please check the URL for typos, or see the docs at " \
                   "https://platform.openai.com/docs/api-reference/."
AZURE_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                "provide a valid key for an active subscription and use a correct regional API "
                "endpoint for your resource.")
DEPLOYMENT_NOT_FOUND = ("The API deployment for this resource does not exist. If you created the "
                        "deployment within the last 5 minutes, please wait a moment and try again.")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chat_body(content: str = "hello", **extra: object) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


async def post(session: aiohttp.ClientSession, url: str, body: object,
               headers: dict[str, str] | None = AUTH) -> tuple[int, CIMultiDict, object]:
    async with session.post(url, data=orjson.dumps(body), headers=headers or {}) as resp:
        raw = await resp.read()
        return resp.status, CIMultiDict(resp.headers), orjson.loads(raw) if raw else None


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# ---------------------------------------------------------------------------------------------
# Wrong routes, models, deployments and keys
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/chat/completions", "/v1/v1/chat/completions", "/completions",
                                  "/v1/chat/completions/chat/completions"])
async def test_a_path_openai_does_not_serve_is_404_invalid_url_naming_method_and_path(
        session, path) -> None:
    async with Simulator() as sim:
        status, headers, body = await post(session, sim.azure_endpoint + path, chat_body())
    assert status == 404 and "x-request-id" in headers
    assert body == {"error": {"message": f"Invalid URL (POST {path})",
                              "type": "invalid_request_error", "param": None, "code": None}}
    assert sim.stats.by_status == {404: 1} and sim.stats.answered == {}


async def test_the_2024_unknown_url_body_names_the_path_with_its_query(session) -> None:
    async with Simulator(SimConfig(url_error="unknown_url")) as sim:
        status, _, body = await post(session, sim.azure_endpoint + "/chat/completions?x=1",
                                     chat_body())
    assert status == 404
    assert body == {"error": {"message": "Unknown request URL: POST /chat/completions?x=1"
                                         + UNKNOWN_URL_TAIL,
                              "type": "invalid_request_error", "param": None,
                              "code": "unknown_url"}}


@pytest.mark.parametrize("path", ["/openai/openai/deployments/d/chat/completions",
                                  "/openai/chat/completions", "/openai/v1/v1/chat/completions"])
async def test_a_path_azure_does_not_serve_is_its_resource_not_found(session, path) -> None:
    async with Simulator() as sim:
        status, headers, body = await post(session, f"{sim.azure_endpoint}{path}?api-version="
                                           f"{AZURE_VERSION}", chat_body(), headers={"api-key": "k"})
    assert status == 404 and "apim-request-id" in headers
    assert body == {"error": {"code": "404", "message": "Resource not found"}}


async def test_a_model_that_does_not_exist_is_404_model_not_found_and_others_are_served(
        session) -> None:
    async with Simulator(SimConfig(models=("m", "gpt-image-1"))) as sim:
        url = sim.base_url
        known = await post(session, url + "/chat/completions", chat_body())
        unknown = await post(session, url + "/chat/completions", {**chat_body(), "model": "gpt-5x"})
        image = await post(session, url + "/images/generations",
                           {"model": "dall-e-3", "prompt": "a cat"})
    assert known[0] == 200
    assert unknown[0] == 404 and unknown[2] == {"error": {
        "message": "The model `gpt-5x` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": None, "code": "model_not_found"}}
    assert image[0] == 404 and image[2]["error"]["code"] == "model_not_found"
    assert sim.stats.tokens_charged == known[2]["usage"]["prompt_tokens"]  # 404s are not charged


@pytest.mark.parametrize("tail", ["chat/completions", "images/generations"])
async def test_an_azure_deployment_that_does_not_exist_is_404_deployment_not_found(
        session, tail) -> None:
    body = chat_body() if tail == "chat/completions" else {"prompt": "a cat"}
    async with Simulator(SimConfig(deployments=("chat-prod", "draw"))) as sim:
        base = f"{sim.azure_endpoint}/openai/deployments"
        query = f"?api-version={AZURE_VERSION}"
        missing = await post(session, f"{base}/chat-dev/{tail}{query}", body,
                             headers={"api-key": "k"})
        v1 = await post(session, f"{sim.azure_endpoint}/openai/v1/chat/completions",
                        {**chat_body(), "model": "chat-dev"}, headers={"api-key": "k"})
        there = await post(session, f"{base}/{'chat-prod' if 'chat' in tail else 'draw'}/{tail}"
                           f"{query}", body, headers={"api-key": "k"})
    for status, _, answer in (missing, v1):
        assert status == 404
        assert answer == {"error": {"code": "DeploymentNotFound", "message": DEPLOYMENT_NOT_FOUND}}
    assert there[0] == 200


async def test_a_wrong_key_is_401_invalid_api_key_on_openai_and_access_denied_on_azure(
        session) -> None:
    async with Simulator(SimConfig(api_key="sk-right-0123456789")) as sim:
        openai = await post(session, sim.base_url + "/chat/completions", chat_body())
        azure = await post(session, f"{sim.azure_endpoint}/openai/deployments/d/chat/completions"
                           f"?api-version={AZURE_VERSION}", chat_body(), headers={"api-key": "x"})
    assert openai[0] == 401 and openai[2]["error"]["code"] == "invalid_api_key"
    assert openai[2]["error"]["type"] == "invalid_request_error"
    assert azure[0] == 401 and azure[2] == {"error": {"code": "401", "message": AZURE_DENIED}}


# ---------------------------------------------------------------------------------------------
# The one fault function: rates, partial answers
# ---------------------------------------------------------------------------------------------
def test_each_fault_is_drawn_at_its_own_rate_from_one_seeded_source() -> None:
    config = SimConfig(fault_rates={"500": 0.1, "503": 0.05, "reset": 0.02, "truncated": 0.03,
                                    "missing_choice": 0.2})
    rng = random.Random(3)
    drawn = Counter(draw_fault(config, rng) for _ in range(20_000))
    for fault, rate in config.fault_rates:
        assert drawn[fault] / 20_000 == pytest.approx(rate, abs=0.01), fault
    assert drawn[None] / 20_000 == pytest.approx(0.6, abs=0.01)
    again = random.Random(3)
    assert [draw_fault(config, again) for _ in range(50)] == \
        [draw_fault(config, r) for r in [random.Random(3)] for _ in range(50)]


@pytest.mark.parametrize("rates", [{"500": 0.6, "503": 0.6}, {"explode": 0.1}, {"500": -0.1},
                                   {"500": float("nan")}])
def test_fault_rates_refuse_what_cannot_be_a_probability(rates) -> None:
    with pytest.raises(ValueError):
        SimConfig(fault_rates=rates)


def test_fault_rates_go_alone_and_max_dropped_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="not both"):
        SimConfig(fault_rate=0.1, fault_rates={"500": 0.1})
    with pytest.raises(ValueError, match="max_dropped"):
        SimConfig(max_dropped=0)


@pytest.mark.parametrize(("fault", "status", "over_http"), [
    ("500", 500, True), ("503", 503, True), ("reset", 0, True), ("500", 500, False),
    ("503", 503, False), ("reset", 500, False), ("hang", 500, False), ("truncated", 500, False)])
def test_a_fault_that_breaks_the_answer_never_builds_it(fault, status, over_http) -> None:
    built = []
    reply = apply_fault(fault, lambda: built.append(1) or {"choices": []}, "choices",
                        rng=random.Random(0), over_http=over_http)
    assert reply.status == status and built == [] and not reply.complete
    assert reply.reset == (fault == "reset" and over_http)


def test_a_partial_answer_keeps_valid_json_and_at_least_one_item() -> None:
    rng = random.Random(1)
    seen = set()
    for _ in range(200):
        body = {"choices": [{"index": i} for i in range(4)]}
        reply = apply_fault("missing_choice", lambda: body, "choices", rng=rng, max_dropped=9)
        kept = orjson.loads(reply.raw)["choices"]
        assert reply.status == 200 and 1 <= len(kept) <= 3 and reply.dropped == 4 - len(kept)
        assert {c["index"] for c in kept} < {0, 1, 2, 3} and not reply.complete
        seen.add(len(kept))
    assert seen == {1, 2, 3}  # anything from one dropped to all but one
    single = apply_fault("missing_choice", lambda: {"choices": [{"index": 0}]}, "choices", rng=rng)
    assert single.complete and single.dropped == 0


async def test_partial_answers_drop_choices_of_list_prompts_and_n_at_the_given_rate(session) -> None:
    config = SimConfig(fault_rates={"missing_choice": 0.25}, seed=11)
    async with Simulator(config) as sim:
        url = sim.base_url
        answers = [await post(session, url + "/completions",
                              {"model": "c", "prompt": [f"p{i}", f"q{i}"], "n": 2})
                   for i in range(200)]
        chats = [await post(session, url + "/chat/completions", chat_body(str(i), n=3))
                 for i in range(40)]
        singles = [await post(session, url + "/chat/completions", chat_body(f"one {i}"))
                   for i in range(40)]
    short = [a for _, _, a in answers if len(a["choices"]) < 4]
    assert all(s == 200 for s, _, _ in answers + chats + singles)
    assert len(short) / len(answers) == pytest.approx(0.25, abs=0.08)
    assert all(len(a["choices"]) == 3 for a in short)  # max_dropped 1: one choice each
    assert any(len(a["choices"]) == 2 for _, _, a in chats)
    assert all(len(a["choices"]) == 1 for _, _, a in singles)  # nothing to drop from one choice
    assert sim.stats.partial == len(short) + sum(len(a["choices"]) == 2 for _, _, a in chats)


async def test_issue_25_faults_come_at_their_rates_over_http(session) -> None:
    rates = {"500": 0.1, "503": 0.1, "reset": 0.1, "truncated": 0.1, "missing_choice": 0.1}
    async with Simulator(SimConfig(fault_rates=rates, seed=2)) as sim:
        seen: Counter[str] = Counter()
        for i in range(300):
            try:
                async with session.post(sim.base_url + "/completions", headers=AUTH, data=orjson.dumps(
                        {"model": "c", "prompt": [f"a{i}", f"b{i}"]})) as resp:
                    raw = await resp.read()
            except aiohttp.ClientError:
                seen["reset"] += 1
                continue
            if resp.status != 200:
                seen[str(resp.status)] += 1
                continue
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                seen["truncated"] += 1
                continue
            seen["missing_choice" if len(body["choices"]) < 2 else "ok"] += 1
    assert seen == {**sim.stats.faults, "ok": 300 - sum(sim.stats.faults.values())}
    for fault in rates:
        assert 10 <= seen[fault] <= 55, seen


async def test_responses_and_images_also_hang_on_the_hang_fault(session) -> None:
    async with Simulator(SimConfig(fault_rates={"hang": 1.0}, hang_s=5.0)) as sim:
        timeout = aiohttp.ClientTimeout(total=0.3)
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(sim.base_url + "/responses", headers=AUTH, timeout=timeout,
                                    data=orjson.dumps({"model": "m", "input": "hi"})) as resp:
                await resp.read()
    assert sim.stats.faults == {"hang": 1} and sim.stats.answered == {}


# ---------------------------------------------------------------------------------------------
# Refused requests that count; image models sharing one budget
# ---------------------------------------------------------------------------------------------
def test_a_refused_request_that_counts_takes_a_request_and_says_when_the_debt_is_paid() -> None:
    clock = FakeClock()
    budget = ModelBudget(60, None, 1.0, clock=clock, refused_takes=("requests",))  # 1 per s, holds 1
    assert budget.admit(1).admitted
    refused = [budget.admit(1) for _ in range(3)]  # resent at once: each one deepens the debt
    assert not any(v.admitted for v in refused)
    assert [v.retry_after_s for v in refused] == pytest.approx([2.0, 3.0, 4.0])
    clock.now += 3.999
    assert not budget.admit(1).admitted  # still in debt, and now deeper
    clock.now += 5.0 + 1e-6  # what that refusal said to wait
    assert budget.admit(1).admitted


def test_free_refusals_leave_the_budget_as_it_was() -> None:
    clock = FakeClock()
    budget = ModelBudget(60, None, 1.0, clock=clock)
    assert budget.admit(1).admitted
    assert [budget.admit(1).retry_after_s for _ in range(3)] == pytest.approx([1.0, 1.0, 1.0])
    clock.now += 1.0
    assert budget.admit(1).admitted


async def test_a_client_that_resends_at_once_never_gets_through_when_refusals_count(session) -> None:
    clock = FakeClock()
    async with Simulator(SimConfig(rpm=60, burst_s=1, refused_count=True), clock=clock) as sim:
        url = sim.base_url + "/chat/completions"
        first = await post(session, url, chat_body())
        statuses = []
        for _ in range(20):
            clock.now += 0.5  # twice the refill rate: enough if refusals were free
            statuses.append((await post(session, url, chat_body()))[0])
        waited = (await post(session, url, chat_body()))[1]
        clock.now += float(waited["retry-after-ms"]) / 1000
        after = await post(session, url, chat_body())
    assert first[0] == 200 and set(statuses) == {429} and after[0] == 200
    async with Simulator(SimConfig(rpm=60, burst_s=1), clock=clock) as free:
        url = free.base_url + "/chat/completions"
        for _ in range(21):
            clock.now += 0.5
            await post(session, url, chat_body())
    assert free.stats.by_status[200] == 11  # every other one: refusals cost nothing


async def test_refused_image_requests_take_their_images_too(session) -> None:
    clock = FakeClock()
    config = SimConfig(rpm=600, ipm=6, burst_s=10, refused_count=True)  # holds 1 image
    async with Simulator(config, clock=clock) as sim:
        url = sim.base_url + "/images/generations"
        body = {"model": "dall-e-2", "prompt": "a cat", "response_format": "b64_json"}
        assert (await post(session, url, body))[0] == 200
        refused = await post(session, url, {**body, "n": 1})
    assert refused[0] == 429 and refused[2]["error"]["type"] == "images"
    assert sim.service.image_budget("dall-e-2").tokens.level == pytest.approx(-1)


async def test_image_models_on_one_key_share_one_request_budget_when_scoped_by_key(session) -> None:
    clock = FakeClock()
    bodies = [{"model": m, "prompt": "a cat", "response_format": "b64_json"}
              for m in ("dall-e-2", "dall-e-3")] + [{"model": "gpt-image-1", "prompt": "a cat"}]
    for scope, expected in (("model", [200, 200, 200]), ("key", [200, 200, 429])):
        config = SimConfig(rpm=120, burst_s=1, image_budget_scope=scope)  # holds 2 requests
        async with Simulator(config, clock=clock) as sim:
            statuses = [(await post(session, sim.base_url + "/images/generations", b))[0]
                        for b in bodies]
        assert statuses == expected, scope
    assert set(sim.service.image_budgets) == {"sk-test-key-0123456789"}


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def test_simulate_command_passes_the_new_modes_to_the_config(monkeypatch) -> None:
    from runner.cli.main import main
    from runner.simulator import server
    seen: list[SimConfig] = []
    monkeypatch.setattr(server, "serve", lambda config, host, port, **kw: seen.append(config))
    args = ["simulate", "--fault-rates", "500=0.01,503=0.02,reset=0.005,truncated=0.005",
            "--partial-rate", "0.01", "--max-dropped", "3", "--refused-count",
            "--image-budget-scope", "key", "--url-error", "unknown_url", "--api-key", "sk-x",
            "--models", "m1,m2", "--deployments", "d1"]
    assert CliRunner().invoke(main, args).exit_code == 0
    config = seen[0]
    assert dict(config.fault_rates) == {"500": 0.01, "503": 0.02, "reset": 0.005,
                                        "truncated": 0.005, "missing_choice": 0.01}
    assert (config.max_dropped, config.refused_count, config.image_budget_scope,
            config.url_error, config.api_key, config.models, config.deployments) == \
        (3, True, "key", "unknown_url", "sk-x", ("m1", "m2"), ("d1",))
    refused = CliRunner().invoke(main, ["simulate", "--fault-rates", "500=lots"])
    assert refused.exit_code == 2 and "NAME=RATE" in refused.output
