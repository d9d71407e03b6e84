"""The simulator keeps the promises the rest of the project relies on: OpenAI's and Azure's shapes,
deterministic answers, exact bucket arithmetic on a fake clock, and each fault as a client sees it."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from runner.simulator.answers import (
    chat_prompt,
    completion_text,
    embedding_vector,
    text_tokens,
    token_charge,
)
from runner.simulator.budgets import (
    Admission,
    LimitState,
    ModelBudget,
    TokenBucket,
    WindowBudget,
    bucket_states,
    format_duration,
    rate_limit_headers,
)
from runner.simulator.completions import answer_for
from runner.simulator.config import KNOWN_FAULTS, SimConfig
from runner.simulator.parsing import ApiError, mask_key
from runner.simulator.server import Simulator, run_in_thread

AUTH = {"Authorization": "Bearer sk-test-key-0123456789"}
AZURE_VERSION = "2024-10-21"


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chat_body(content: str = "hello", **extra: object) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


async def post(session: aiohttp.ClientSession, url: str, body: object,
               headers: dict[str, str] | None = AUTH) -> tuple[int, CIMultiDict, object]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(url, data=data, headers=headers or {}) as resp:
        raw = await resp.read()
        return resp.status, CIMultiDict(resp.headers), orjson.loads(raw) if raw else None


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"),
    (59.25, "59.25s"), (360, "6m0s"), (90.5, "1m30.5s"), (3723, "1h2m3s"), (-1, "0s"),
])
def test_durations_use_openai_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("key", ["sk-proj-abcdefghijklmnopqrstuvwxyz0123", "sk-abc", "k", "abcdefghijkl"])
def test_masked_key_never_shows_the_whole_key(key: str) -> None:
    masked = mask_key(key)
    assert key not in masked and "*" in masked and len(masked) == len(key)


def test_masked_key_keeps_openai_head_and_tail() -> None:
    assert mask_key("sk-v3s3wXXXXXXXXXXbfcr") == "sk-v3s3w**********bfcr"


def test_token_charge_follows_the_documented_rule() -> None:
    assert text_tokens("") == 0 and text_tokens("abcd") == 1 and text_tokens("abcde") == 2
    assert token_charge("chat", ["abcde"]) == 2  # chat: no max_tokens -> 0 output tokens
    assert token_charge("chat", ["abcde"], n=3, max_tokens=10) == 2 + 30
    assert token_charge("completions", ["abcde"]) == 2 + 16  # completions default 16
    assert token_charge("completions", ["abcde", "a"], n=2, max_tokens=5) == (2 + 10) + (1 + 10)
    assert token_charge("embeddings", ["abcde", "a"], n=9, max_tokens=99) == 3


def test_answers_are_pure_functions_of_prompt_and_choice() -> None:
    assert completion_text("p", 0) == completion_text("p", 0)
    assert len({completion_text("p", 0), completion_text("p", 1), completion_text("q", 0)}) == 3
    assert completion_text("p", 2).startswith("sim:") and completion_text("p", 2).endswith("#2")
    messages = [{"role": "system", "content": "ab"},
                {"role": "user", "content": [{"type": "text", "text": "cd"}]}]
    assert chat_prompt(messages) == "abcd"
    vector = embedding_vector("x", 16)
    assert vector == embedding_vector("x", 16) != embedding_vector("y", 16)
    assert len(vector) == 16 and math.isclose(sum(v * v for v in vector), 1.0)


@pytest.mark.parametrize("kwargs", [
    {"rpm": -1}, {"rpm": 0}, {"tpm": -5}, {"tpm": 1.5}, {"burst_s": 0}, {"latency_ms": -1},
    {"fault_rate": 1.5}, {"fault_rate": -0.1}, {"fault_rate": float("nan")},
    {"faults": ("500", "explode")}, {"faults": "500"}, {"fault_rate": 0.5, "faults": ()},
    {"hang_s": -1}, {"quota_requests": -1}, {"poison": ""}, {"api_key": ""},
])
def test_config_rejects_values_the_service_could_not_have(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)


def test_config_accepts_every_known_fault() -> None:
    assert set(SimConfig(fault_rate=1, faults=tuple(KNOWN_FAULTS)).faults) == KNOWN_FAULTS


def test_bucket_admits_up_to_capacity_then_refills_continuously() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=4.0, clock=clock)
    assert bucket.wait_time(4) == 0
    bucket.take(3)
    assert bucket.wait_time(2) == pytest.approx(0.5)  # 1 left, 1 missing at 2/s
    clock.advance(0.5)
    assert bucket.wait_time(2) == 0 and bucket.level == pytest.approx(2.0)
    clock.advance(100)
    assert bucket.level == 4.0  # never above capacity


def test_cost_above_capacity_is_admitted_when_full_and_leaves_debt() -> None:
    clock = FakeClock()
    budget = ModelBudget(rpm=None, tpm=600, burst_s=2, clock=clock)  # 10 tok/s, capacity 20
    assert budget.admit(50) == Admission(True)
    assert budget.tokens.level == pytest.approx(-30)
    refused = budget.admit(50)
    assert not refused.admitted and refused.limit == "tokens"
    assert refused.retry_after_s == pytest.approx(5.0)  # until full again: 50 tokens at 10/s
    clock.advance(5.0)
    assert budget.admit(50).admitted


def test_request_larger_than_whole_tpm_can_never_be_admitted() -> None:
    budget = ModelBudget(rpm=None, tpm=600, burst_s=2, clock=FakeClock())
    verdict = budget.admit(601)
    assert verdict == Admission(False, "tokens", 0.0, too_large=True)
    assert budget.tokens.level == pytest.approx(20)  # nothing charged


def test_refusal_names_the_short_bucket_and_waits_for_both() -> None:
    clock = FakeClock()
    budget = ModelBudget(rpm=60, tpm=600, burst_s=1, clock=clock)  # 1 request, 10 tokens
    assert budget.admit(10).admitted
    verdict = budget.admit(10)
    assert verdict.limit == "requests" and verdict.retry_after_s == pytest.approx(1.0)
    clock.advance(0.5)
    budget.tokens.take(5)  # tokens now further behind than requests
    verdict = budget.admit(10)
    assert verdict.limit == "requests" and verdict.retry_after_s == pytest.approx(1.0)


def test_rate_limit_headers_report_limit_remaining_and_time_to_full() -> None:
    clock = FakeClock()
    budget = ModelBudget(rpm=120, tpm=6000, burst_s=60, clock=clock)
    assert budget.admit(1500).admitted
    assert budget.headers("openai") == {
        "x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "119",
        "x-ratelimit-reset-requests": "500ms",
        "x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "4500",
        "x-ratelimit-reset-tokens": "15s",
    }
    assert budget.headers("azure") == {"x-ratelimit-remaining-requests": "119",
                                       "x-ratelimit-remaining-tokens": "4500"}
    assert ModelBudget(rpm=None, tpm=60, burst_s=60, clock=clock).headers("openai").keys() == {
        "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"}


# ---------------------------------------------------------------------------------------------
# Over HTTP
# ---------------------------------------------------------------------------------------------
async def test_chat_answer_is_deterministic_with_usage_and_request_id(session) -> None:
    async with Simulator() as sim:
        status, headers, body = await post(session, sim.base_url + "/chat/completions",
                                           chat_body("abcdefgh", n=2))
    assert status == 200 and headers["x-request-id"].startswith("req_")
    assert body["object"] == "chat.completion" and body["model"] == "m"
    texts = {c["index"]: c["message"]["content"] for c in body["choices"]}
    assert texts == {0: completion_text("abcdefgh", 0), 1: completion_text("abcdefgh", 1)}
    assert all(c["finish_reason"] == "stop" and c["logprobs"] is None for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 10, "total_tokens": 12}
    assert sim.stats.answered == {"abcdefgh": 1} and sim.stats.by_status == {200: 1}


async def test_list_prompt_choices_are_shuffled_with_prompt_major_indices(session) -> None:
    prompts = ["alpha", "beta", "gamma"]
    for shuffle in (True, False):
        async with Simulator(SimConfig(shuffle=shuffle)) as sim:
            status, _, body = await post(session, sim.base_url + "/completions",
                                         {"model": "m", "prompt": prompts, "n": 2})
        assert status == 200 and body["object"] == "text_completion"
        order = [c["index"] for c in body["choices"]]
        assert sorted(order) == list(range(6))
        assert (order != sorted(order)) == shuffle
        for choice in body["choices"]:
            prompt, j = prompts[choice["index"] // 2], choice["index"] % 2
            assert choice["text"] == completion_text(prompt, j)
        assert sim.stats.answered == {p: 1 for p in prompts}


async def test_embeddings_have_indexed_data_in_float_or_base64(session) -> None:
    inputs = ["one", "two", "three", "four"]
    async with Simulator() as sim:
        url = sim.base_url + "/embeddings"
        status, _, body = await post(session, url, {"model": "e", "input": inputs, "dimensions": 4})
        _, _, b64 = await post(session, url, {"model": "e", "input": "one",
                                              "encoding_format": "base64"})
    assert status == 200 and body["object"] == "list"
    assert sorted(d["index"] for d in body["data"]) == [0, 1, 2, 3]
    for item in body["data"]:
        assert item["object"] == "embedding"
        assert item["embedding"] == embedding_vector(inputs[item["index"]], 4)
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}  # "three" is 2 tokens
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(embedding_vector("one"), abs=1e-6)


@pytest.mark.parametrize(("body", "message", "param"), [
    (chat_body(foo=1), "Unrecognized request argument supplied: foo", None),
    (chat_body(foo=1, bar=2), "Unrecognized request arguments supplied: bar, foo", None),
    ({"messages": [{"role": "user", "content": "x"}]}, "you must provide a model parameter", None),
    ({"model": "m"}, "Missing required parameter: 'messages'.", "messages"),
    (chat_body(n=0), "Invalid 'n'", "n"),
    (chat_body(stream=True), "does not stream", "stream"),
])
async def test_invalid_chat_bodies_get_openai_400s(session, body, message, param) -> None:
    async with Simulator() as sim:
        status, headers, got = await post(session, sim.base_url + "/chat/completions", body)
    assert status == 400 and "x-request-id" in headers
    assert message in got["error"]["message"]
    assert got["error"]["type"] == "invalid_request_error" and got["error"]["param"] == param


async def test_malformed_json_missing_prompt_and_overlong_lists_are_400(session) -> None:
    async with Simulator() as sim:
        url = sim.base_url
        bad_json = await post(session, url + "/chat/completions", b"{not json")
        no_prompt = await post(session, url + "/completions", {"model": "m"})
        long_prompt = await post(session, url + "/completions", {"model": "m", "prompt": ["x"] * 2049})
        long_input = await post(session, url + "/embeddings", {"model": "m", "input": ["x"] * 2049})
    assert [r[0] for r in (bad_json, no_prompt, long_prompt, long_input)] == [400] * 4
    assert "could not parse the JSON body" in bad_json[2]["error"]["message"]
    assert no_prompt[2]["error"]["param"] == "prompt"
    assert long_input[2]["error"]["code"] == "array_above_max_length"
    assert sim.stats.answered == {}


async def test_missing_or_wrong_key_is_401_and_never_echoes_the_key(session) -> None:
    secret = "sk-proj-right-key-abcdefghijklmnop"
    wrong = "sk-proj-wrong-key-abcdefghijklmnop"
    async with Simulator(SimConfig(api_key=secret)) as sim:
        url = sim.base_url + "/chat/completions"
        missing = await post(session, url, chat_body(), headers=None)
        bad = await post(session, url, chat_body(), headers={"Authorization": f"Bearer {wrong}"})
        good = await post(session, url, chat_body(), headers={"Authorization": f"Bearer {secret}"})
    assert missing[0] == 401 and "didn't provide an API key" in missing[2]["error"]["message"]
    assert bad[0] == 401 and bad[2]["error"]["code"] == "invalid_api_key"
    assert bad[2]["error"]["message"].startswith("Incorrect API key provided: sk-proj-")
    assert wrong not in orjson.dumps(bad[2]).decode() and "x-request-id" in bad[1]
    assert good[0] == 200


async def test_quota_exhausted_gives_insufficient_quota_429(session) -> None:
    async with Simulator(SimConfig(quota_requests=2)) as sim:
        results = [await post(session, sim.base_url + "/chat/completions", chat_body(str(i)))
                   for i in range(4)]
    assert [r[0] for r in results] == [200, 200, 429, 429]
    error = results[2][2]["error"]
    assert error["type"] == error["code"] == "insufficient_quota"
    assert error["message"].startswith("You exceeded your current quota")
    assert sim.stats.rate_limited == 2


async def test_rpm_429_has_openai_body_headers_and_clears_after_retry_after(session) -> None:
    clock = FakeClock()
    async with Simulator(SimConfig(rpm=60, burst_s=2), clock=clock) as sim:
        url = sim.base_url + "/chat/completions"
        first = [await post(session, url, chat_body()) for _ in range(2)]
        status, headers, body = await post(session, url, chat_body())
        clock.advance(int(headers["retry-after-ms"]) / 1000)
        after = await post(session, url, chat_body())
    assert [r[0] for r in first] == [200, 200] and status == 429 and after[0] == 200
    assert first[1][1]["x-ratelimit-remaining-requests"] == "0"
    assert headers["retry-after"] == "1" and headers["retry-after-ms"] == "1000"
    assert headers["x-ratelimit-reset-requests"] == "2s"
    assert body["error"] == {
        "message": "Rate limit reached for m in organization org-sim on requests per min (RPM): "
                   "Limit 60, Used 2, Requested 1. Please try again in 1s. Visit "
                   "https://platform.openai.com/account/rate-limits to learn more.",
        "type": "requests", "param": None, "code": "rate_limit_exceeded"}


async def test_tpm_429_and_too_large_request(session) -> None:
    clock = FakeClock()
    async with Simulator(SimConfig(tpm=600, burst_s=2), clock=clock) as sim:
        url = sim.base_url + "/completions"
        ok = await post(session, url, {"model": "m", "prompt": "x" * 16, "max_tokens": 16})
        limited = await post(session, url, {"model": "m", "prompt": "x" * 16, "max_tokens": 16})
        huge = await post(session, url, {"model": "m", "prompt": "x", "max_tokens": 600})
    assert ok[0] == 200 and ok[1]["x-ratelimit-remaining-tokens"] == "0"  # 20 - 20
    assert limited[0] == 429 and limited[2]["error"]["type"] == "tokens"
    assert "Used 20, Requested 20. Please try again in 2s." in limited[2]["error"]["message"]
    assert huge[0] == 429 and huge[2]["error"]["message"].startswith("Request too large for m")
    assert "retry-after" not in huge[1]
    assert sim.stats.tokens_charged == 20


async def test_charge_factor_scales_what_the_server_charges(session) -> None:
    clock = FakeClock()
    async with Simulator(SimConfig(tpm=6000, burst_s=2, charge_factor=1.3), clock=clock) as sim:
        url = sim.base_url + "/completions"
        status, headers, _ = await post(session, url, {"model": "m", "prompt": "x" * 16,
                                                        "max_tokens": 96})
    assert status == 200 and sim.stats.tokens_charged == 130  # (4 + 96) × 1.3
    assert headers["x-ratelimit-remaining-tokens"] == str(200 - 130)


def test_charge_factor_must_be_positive() -> None:
    for factor in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            SimConfig(charge_factor=factor)


async def test_each_model_has_its_own_budget(session) -> None:
    async with Simulator(SimConfig(rpm=60, burst_s=1), clock=FakeClock()) as sim:
        url = sim.base_url + "/chat/completions"
        results = [await post(session, url, {**chat_body(), "model": model})
                   for model in ("a", "b", "a")]
    assert [r[0] for r in results] == [200, 200, 429]


async def test_poisoned_prompt_fails_the_whole_packed_request(session) -> None:
    async with Simulator(SimConfig(poison="POISON")) as sim:
        status, _, body = await post(session, sim.base_url + "/completions",
                                     {"model": "m", "prompt": ["fine", "has POISON", "fine too"]})
        clean = await post(session, sim.base_url + "/completions", {"model": "m", "prompt": "fine"})
    assert status == 400 and clean[0] == 200
    assert body["error"]["code"] == "context_length_exceeded" and body["error"]["param"] == "prompt"
    assert "maximum context length" in body["error"]["message"]
    assert sim.stats.answered == {"fine": 1}


def fault_config(fault: str, **extra: object) -> SimConfig:
    return SimConfig(fault_rate=1.0, faults=(fault,), **extra)


@pytest.mark.parametrize(("fault", "status", "type_"), [("500", 500, "server_error"),
                                                        ("503", 503, "server_error")])
async def test_server_error_faults(session, fault, status, type_) -> None:
    async with Simulator(fault_config(fault)) as sim:
        got = await post(session, sim.base_url + "/chat/completions", chat_body())
    assert got[0] == status and got[2]["error"]["type"] == type_ and "x-request-id" in got[1]
    assert sim.stats.faults == {fault: 1} and sim.stats.answered == {}


async def test_reset_fault_drops_the_connection_without_an_answer(session) -> None:
    async with Simulator(fault_config("reset")) as sim:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, sim.base_url + "/chat/completions", chat_body())
    assert sim.stats.by_status == {} and sim.stats.answered == {}


async def test_truncated_fault_sends_half_a_json_body(session) -> None:
    async with Simulator(fault_config("truncated")) as sim:
        async with session.post(sim.base_url + "/chat/completions", json=chat_body(),
                                headers=AUTH) as resp:
            raw = await resp.read()
    assert resp.status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    assert sim.stats.answered == {}


async def test_missing_choice_fault_drops_one_item(session) -> None:
    async with Simulator(fault_config("missing_choice")) as sim:
        _, _, chat = await post(session, sim.base_url + "/chat/completions", chat_body(n=3))
        _, _, emb = await post(session, sim.base_url + "/embeddings",
                               {"model": "e", "input": ["a", "b"]})
        _, _, single = await post(session, sim.base_url + "/chat/completions", chat_body("solo"))
    assert len(chat["choices"]) == 2 and len(emb["data"]) == 1 and len(single["choices"]) == 1
    delivered = ("a", "b")[emb["data"][0]["index"]]
    assert sim.stats.answered == {"solo": 1, delivered: 1}  # incomplete prompts are not answered


async def test_hang_fault_outlasts_the_client_timeout_and_is_not_counted(session) -> None:
    async with Simulator(fault_config("hang", hang_s=5.0)) as sim:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(session, sim.base_url + "/chat/completions", chat_body()),
                                   0.2)
        await until(lambda: sim.stats.in_flight == 0)  # cancelled with the connection
    assert sim.stats.answered == {} and sim.stats.faults == {"hang": 1}


async def test_faulted_requests_are_charged_like_healthy_ones(session) -> None:
    body = {"model": "m", "prompt": "abcdefgh", "max_tokens": 4}
    charged = []
    for config in (SimConfig(tpm=10_000), fault_config("500", tpm=10_000)):
        async with Simulator(config, clock=FakeClock()) as sim:
            await post(session, sim.base_url + "/completions", body)
            charged.append((sim.stats.tokens_charged, sim.budget("m").tokens.level))
    assert charged[0] == charged[1] == (6, 10_000 - 6)


async def test_latency_delays_answers_and_concurrency_is_recorded(session) -> None:
    async with Simulator(SimConfig(latency_ms=100)) as sim:
        url = sim.base_url + "/chat/completions"
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(post(session, url, chat_body(str(i))) for i in range(5)))
        elapsed = asyncio.get_running_loop().time() - started
    assert all(r[0] == 200 for r in results) and 0.09 <= elapsed < 1.0
    assert sim.stats.max_in_flight == 5 and sim.stats.in_flight == 0
    assert sim.stats.answered == {str(i): 1 for i in range(5)}


async def test_azure_deployment_shape_auth_headers_and_429(session) -> None:
    clock = FakeClock()
    async with Simulator(SimConfig(rpm=60, tpm=6000, burst_s=1), clock=clock) as sim:
        base = f"{sim.azure_endpoint}/openai/deployments/gpt4o-prod/chat/completions"
        url = f"{base}?api-version={AZURE_VERSION}"
        body = {"messages": [{"role": "user", "content": "hi"}]}
        no_version = await post(session, base, body, headers={"api-key": "k"})
        no_key = await post(session, url, body, headers=None)
        ok = await post(session, url, body, headers={"api-key": "k"})
        limited = await post(session, url, body, headers={"Authorization": "Bearer k"})
    assert no_version[0] == 400 and "api-version" in no_version[2]["error"]["message"]
    assert no_key[0] == 401 and no_key[2]["error"]["code"] == "401"
    assert ok[0] == 200 and ok[2]["model"] == "gpt4o-prod"
    assert ok[2]["choices"][0]["message"]["content"] == completion_text("hi", 0)
    rate_headers = {k.lower() for k in ok[1] if k.lower().startswith("x-ratelimit")}
    assert rate_headers == {"x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"}
    assert ok[1]["x-ratelimit-remaining-tokens"] == "99"
    status, headers, error = limited
    assert status == 429 and headers["retry-after"] == "1" and headers["retry-after-ms"] == "1000"
    assert error == {"error": {"code": "429", "message": (
        f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        f"{AZURE_VERSION} have exceeded call rate limit of your current OpenAI S0 pricing tier. "
        "Please retry after 1 seconds. Please go here: https://aka.ms/oai/quotaincrease if you "
        "would like to further increase the default rate limit.")}}


async def test_azure_v1_shape_takes_the_model_from_the_body(session) -> None:
    async with Simulator(SimConfig(tpm=600, burst_s=1), clock=FakeClock()) as sim:
        url = f"{sim.azure_endpoint}/openai/v1/embeddings"
        ok = await post(session, url, {"model": "emb", "input": ["a", "b"]}, headers={"api-key": "k"})
        limited = await post(session, url, {"model": "emb", "input": "x" * 40},
                             headers={"api-key": "k"})
    assert ok[0] == 200 and ok[2]["model"] == "emb"
    assert limited[0] == 429 and "exceeded token rate limit" in limited[2]["error"]["message"]
    assert "Embeddings_Create" in limited[2]["error"]["message"]


async def test_unknown_path_is_404_with_request_id(session) -> None:
    async with Simulator() as sim:
        status, headers, body = await post(session, sim.base_url + "/nope", {})
    assert status == 404 and "x-request-id" in headers
    assert body["error"]["message"] == "Invalid URL (POST /v1/nope)"


def test_run_in_thread_serves_blocking_clients() -> None:
    with run_in_thread(SimConfig()) as base_url:
        request = urllib.request.Request(base_url + "/chat/completions", data=orjson.dumps(chat_body()),
                                         headers={**AUTH, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            body = orjson.loads(resp.read())
    assert body["choices"][0]["message"]["content"] == completion_text("hello", 0)


@pytest.mark.slow  # starts a subprocess
def test_serve_prints_the_base_url_first_and_exits_cleanly_on_ctrl_c() -> None:
    code = "from runner.simulator.config import SimConfig; from runner.simulator.server import serve; serve(SimConfig(), '127.0.0.1', 0)"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("http://127.0.0.1:") and line.endswith("/v1")
            request = urllib.request.Request(line + "/embeddings", headers=AUTH,
                                             data=orjson.dumps({"model": "e", "input": "x"}))
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", chat_body("abcdefgh", n=2)),
    ("/v1/completions", {"model": "m", "prompt": ["alpha", "beta"], "n": 2, "max_tokens": 3}),
    ("/v1/embeddings", {"model": "e", "input": ["one", "two"], "dimensions": 4}),
    (f"/openai/deployments/dep/chat/completions?api-version={AZURE_VERSION}", chat_body()),
])
async def test_answer_for_is_what_the_server_answers_without_shuffling(session, path, body) -> None:
    async with Simulator(SimConfig(shuffle=False)) as sim:
        status, _, served = await post(session, sim.azure_endpoint + path, body)
    expected = answer_for(path, body)
    assert status == 200
    assert {k: v for k, v in served.items() if k not in ("id", "created")} == \
        {k: v for k, v in expected.items() if k not in ("id", "created")}


def test_answer_for_refuses_what_the_server_refuses() -> None:
    with pytest.raises(ApiError) as refused:
        answer_for("/v1/chat/completions", chat_body(colour="blue"))
    assert refused.value.status == 400
    with pytest.raises(ValueError, match="not a path"):
        answer_for("/v1/images", {"model": "m"})


# ---------------------------------------------------------------------------------------------
# Behaviours of other servers (opt-in)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"list_prompts": "drop"}, {"list_prompts": None}, {"honour_n": 0}, {"honour_n": "no"},
])
def test_config_rejects_unknown_modes(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SimConfig(**kwargs)


async def test_ignored_list_prompt_answers_and_charges_only_the_first_item(session) -> None:
    async with Simulator(SimConfig(list_prompts="ignore", tpm=60_000), clock=FakeClock()) as sim:
        url = sim.base_url
        status, _, body = await post(session, url + "/completions",
                                     {"model": "m", "prompt": ["alpha", "beta", "gamma"], "n": 2,
                                      "max_tokens": 3})
        _, _, emb = await post(session, url + "/embeddings", {"model": "e", "input": ["one", "two"]})
    assert status == 200
    assert sorted((c["index"], c["text"]) for c in body["choices"]) == \
        [(0, completion_text("alpha", 0)), (1, completion_text("alpha", 1))]
    assert body["usage"]["prompt_tokens"] == text_tokens("alpha")
    assert [d["index"] for d in emb["data"]] == [0]
    assert emb["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
    assert sim.stats.answered == {"alpha": 1, "one": 1} and sim.stats.dropped_prompts == 3
    assert sim.stats.tokens_charged == (2 + 3 * 2) + 1  # "alpha" with n=2, then "one"


async def test_refused_list_prompt_is_a_blank_500_after_admission(session) -> None:
    async with Simulator(SimConfig(list_prompts="error", rpm=60), clock=FakeClock()) as sim:
        url = sim.base_url
        listed = await post(session, url + "/completions", {"model": "m", "prompt": ["a", "b"]})
        emb = await post(session, url + "/embeddings", {"model": "e", "input": ["a", "b"]})
        one = await post(session, url + "/completions", {"model": "m", "prompt": ["a"]})
        plain = await post(session, url + "/embeddings", {"model": "e", "input": "a"})
    assert listed[0] == emb[0] == 500
    assert listed[2] == {"error": {"message": "", "type": "None", "param": "None", "code": "500"}}
    assert listed[1]["x-ratelimit-remaining-requests"] == "59"  # charged like an answered request
    assert one[0] == plain[0] == 200 and sim.stats.answered == {"a": 2}


async def test_dropped_n_gives_one_choice_whatever_n_asks(session) -> None:
    async with Simulator(SimConfig(honour_n=False)) as sim:
        _, _, chat = await post(session, sim.base_url + "/chat/completions", chat_body("hi", n=3))
        _, _, completion = await post(session, sim.base_url + "/completions",
                                      {"model": "m", "prompt": ["a", "b"], "n": 2})
    assert [(c["index"], c["message"]["content"]) for c in chat["choices"]] == \
        [(0, completion_text("hi", 0))]
    assert sorted((c["index"], c["text"]) for c in completion["choices"]) == \
        [(0, completion_text("a", 0)), (1, completion_text("b", 0))]
    assert sim.stats.answered == {"hi": 1, "a": 1, "b": 1} and sim.stats.dropped_choices == 4


def test_config_rejects_unknown_scopes_and_header_styles() -> None:
    for kwargs in ({"budget_scope": "team"}, {"header_style": "x-ratelimit"}):
        with pytest.raises(ValueError, match="must be one of"):
            SimConfig(**kwargs)


async def test_key_scope_shares_one_budget_across_models_per_key(session) -> None:
    other_key = {"Authorization": "Bearer sk-other-key-9876543210"}
    config = SimConfig(rpm=60, tpm=6000, burst_s=2, budget_scope="key")
    async with Simulator(config, clock=FakeClock()) as sim:
        url = sim.base_url + "/chat/completions"
        first = await post(session, url, {**chat_body(), "model": "a"})
        second = await post(session, url, {**chat_body(), "model": "b"})
        limited = await post(session, url, {**chat_body(), "model": "c"})
        other = await post(session, url, {**chat_body(), "model": "a"}, headers=other_key)
    assert [r[0] for r in (first, second, limited, other)] == [200, 200, 429, 200]
    assert first[1]["x-ratelimit-remaining-requests"] == "1"
    assert second[1]["x-ratelimit-remaining-requests"] == "0"  # model b drew on a's budget
    assert limited[1]["retry-after"] == "1" and "Limit 60, Used 2" in limited[2]["error"]["message"]
    assert other[1]["x-ratelimit-remaining-requests"] == "1"
    assert sim.stats.by_key == {"sk-test-key-0123456789": 2, "sk-other-key-9876543210": 1}
    assert sim.budget("sk-test-key-0123456789").requests.level == pytest.approx(0)


def rate_headers(headers: CIMultiDict) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()
            if "ratelimit" in k.lower()}


@pytest.mark.parametrize(("style", "scope", "expected"), [
    ("litellm", "model", {
        "x-ratelimit-model_per_key-limit-requests": "120",
        "x-ratelimit-model_per_key-remaining-requests": "119",
        "x-ratelimit-model_per_key-limit-tokens": "6000",
        "x-ratelimit-model_per_key-remaining-tokens": "5998"}),
    ("litellm", "key", {
        "x-ratelimit-api_key-limit-requests": "120", "x-ratelimit-api_key-remaining-requests": "119",
        "x-ratelimit-api_key-limit-tokens": "6000", "x-ratelimit-api_key-remaining-tokens": "5998"}),
    ("ietf", "model", {"ratelimit-limit": "120", "ratelimit-remaining": "119",
                       "ratelimit-reset": "1", "ratelimit-policy": "120;w=60"}),
    ("none", "model", {}),
    ("openai", "model", {
        "x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "119",
        "x-ratelimit-reset-requests": "500ms", "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5998", "x-ratelimit-reset-tokens": "20ms"}),
])
async def test_header_style_names_the_limits_as_that_server_does(session, style, scope,
                                                                 expected) -> None:
    config = SimConfig(rpm=120, tpm=6000, header_style=style, budget_scope=scope)
    async with Simulator(config, clock=FakeClock()) as sim:
        status, headers, _ = await post(session, sim.base_url + "/chat/completions",
                                        chat_body("abcdefgh"))
    assert status == 200 and rate_headers(headers) == expected


@pytest.mark.parametrize("style", ["litellm", "ietf", "none"])
async def test_header_style_applies_to_azure_urls_and_429s(session, style) -> None:
    config = SimConfig(rpm=60, burst_s=1, header_style=style)
    async with Simulator(config, clock=FakeClock()) as sim:
        url = f"{sim.azure_endpoint}/openai/deployments/d/chat/completions?api-version={AZURE_VERSION}"
        ok = await post(session, url, chat_body(), headers={"api-key": "k"})
        limited = await post(session, url, chat_body(), headers={"api-key": "k"})
    assert ok[0] == 200 and limited[0] == 429 and limited[1]["retry-after"] == "1"
    expected = {"litellm": {"x-ratelimit-model_per_key-limit-requests": "60",
                            "x-ratelimit-model_per_key-remaining-requests": "0"},
                "ietf": {"ratelimit-limit": "60", "ratelimit-remaining": "0",
                         "ratelimit-reset": "1", "ratelimit-policy": "60;w=60"},
                "none": {}}[style]
    assert rate_headers(ok[1]) == rate_headers(limited[1]) == expected


def test_ietf_headers_report_tokens_when_requests_are_unlimited_and_litellm_shows_debt() -> None:
    clock = FakeClock()
    budget = ModelBudget(rpm=None, tpm=600, burst_s=2, clock=clock)  # 10 tok/s, capacity 20
    assert budget.admit(50).admitted
    states = bucket_states(budget)
    assert rate_limit_headers("ietf", "openai", states) == {
        "RateLimit-Limit": "600", "RateLimit-Remaining": "0", "RateLimit-Reset": "5",
        "RateLimit-Policy": "600;w=60"}
    assert rate_limit_headers("litellm", "openai", states) == {
        "x-ratelimit-model_per_key-remaining-tokens": "-30",
        "x-ratelimit-model_per_key-limit-tokens": "600"}


def test_openai_style_headers_are_the_budgets_own() -> None:
    clock = FakeClock()
    budget = ModelBudget(rpm=120, tpm=6000, burst_s=60, clock=clock)
    assert budget.admit(1500).admitted
    for shape in ("openai", "azure"):
        assert rate_limit_headers("openai", shape, bucket_states(budget)) == budget.headers(shape)


def test_window_admits_a_whole_minute_at_once_then_refuses_until_it_ends() -> None:
    clock = FakeClock()
    window = WindowBudget(rpm=3, tpm=None, clock=clock)
    assert [window.admit(1).admitted for _ in range(3)] == [True] * 3
    assert window.admit(1) == Admission(False, "requests", 60.0)
    clock.advance(59.9)
    assert window.admit(1) == Admission(False, "requests", 60.0)  # always 60, not the time left
    assert window.time_left() == pytest.approx(0.1)
    clock.advance(0.1)
    assert window.admit(1).admitted and window.windows == 2
    clock.advance(30)  # the new window opened at its first request, 30 s ago
    assert [window.admit(1).admitted for _ in range(3)] == [True, True, False]
    assert window.states() == [LimitState("requests", 3, 0, pytest.approx(30))]


def test_window_counts_tokens_and_admits_an_oversize_request_into_a_fresh_window() -> None:
    clock = FakeClock()
    window = WindowBudget(rpm=None, tpm=100, clock=clock)
    assert window.admit(60).admitted
    assert window.admit(60) == Admission(False, "tokens", 60.0)
    assert window.admit(40).admitted
    clock.advance(60)
    assert window.admit(150).admitted  # never "too large": LiteLLM counts tokens afterwards
    assert window.states() == [LimitState("tokens", 100, -50, 60.0)]
    assert window.admit(1).limit == "tokens"


async def test_window_limiter_429_is_litellms_with_retry_after_60(session) -> None:
    clock = FakeClock()
    config = SimConfig(rpm=2, limiter="window")
    async with Simulator(config, clock=clock, wall_clock=lambda: 0.0) as sim:
        url = sim.base_url + "/chat/completions"
        first = [await post(session, url, chat_body()) for _ in range(2)]
        clock.advance(30)
        limited = await post(session, url, chat_body())
        clock.advance(30)
        after = await post(session, url, chat_body())
    assert [r[0] for r in first] == [200, 200] and limited[0] == 429 and after[0] == 200
    assert [r[1]["x-ratelimit-remaining-requests"] for r in first] == ["1", "0"]
    assert first[1][1]["x-ratelimit-reset-requests"] == "1m0s"
    status, headers, body = limited
    assert headers["retry-after"] == "60" and "retry-after-ms" not in headers
    assert headers["x-ratelimit-reset-requests"] == "30s"
    hashed = hashlib.sha256(b"sk-test-key-0123456789").hexdigest()
    assert body == {"error": {
        "message": f"litellm.RateLimitError: Rate limit exceeded for model_per_key: {hashed}:m. "
                   "Limit type: requests. Current limit: 2, Remaining: 0. "
                   "Limit resets at: 1970-01-01 00:01:00 UTC",
        "type": "None", "param": "None", "code": "429"}}
    assert after[1]["x-ratelimit-remaining-requests"] == "1"
    assert sim.stats.by_window == {("m", 1): 2, ("m", 2): 1} and sim.stats.rate_limited == 1


async def test_window_per_key_with_litellm_headers_counts_down_across_models(session) -> None:
    config = SimConfig(rpm=3, tpm=1000, limiter="window", budget_scope="key",
                       header_style="litellm")
    async with Simulator(config, clock=FakeClock()) as sim:
        url = sim.base_url + "/completions"
        results = [await post(session, url, {"model": model, "prompt": "abcd", "max_tokens": 9})
                   for model in ("a", "b", "c", "a")]
    assert [r[0] for r in results] == [200, 200, 200, 429]
    assert [r[1]["x-ratelimit-api_key-remaining-requests"] for r in results] == ["2", "1", "0", "0"]
    assert [r[1]["x-ratelimit-api_key-remaining-tokens"] for r in results] == \
        ["990", "980", "970", "970"]
    assert results[3][2]["error"]["message"].startswith(
        "litellm.RateLimitError: Rate limit exceeded for api_key: "
        + hashlib.sha256(b"sk-test-key-0123456789").hexdigest() + ". Limit type: requests.")
    assert results[3][1]["rate_limit_type"] == "requests"
    assert sim.stats.by_window == {("sk-test-key-0123456789", 1): 3}


def test_config_rejects_an_unknown_limiter() -> None:
    with pytest.raises(ValueError, match="limiter must be one of 'bucket', 'window'"):
        SimConfig(limiter="leaky")


class GateSleep:
    """A sleep that lasts until the test opens its gate: one gate per call, in call order."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Future[None]] = []

    async def __call__(self, seconds: float) -> None:
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate

    def open(self, i: int) -> None:
        self.gates[i].set_result(None)


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.005)


def test_config_rejects_a_non_bool_serial() -> None:
    with pytest.raises(ValueError, match="serial must be True or False"):
        SimConfig(serial=1)


async def test_serial_server_works_on_one_request_at_a_time(session) -> None:
    sleep = GateSleep()
    async with Simulator(SimConfig(serial=True, latency_ms=100), sleep=sleep) as sim:
        url = sim.base_url + "/chat/completions"
        posts = [asyncio.create_task(post(session, url, chat_body(str(i)))) for i in range(3)]
        await until(lambda: sim.stats.in_flight == 3 and len(sleep.gates) == 1)
        for i in range(3):
            await until(lambda: len(sleep.gates) == i + 1)
            assert sim.stats.working == 1  # the others wait for the slot
            sleep.open(i)
        results = await asyncio.gather(*posts)
    assert [r[0] for r in results] == [200] * 3
    assert sim.stats.answered == {"0": 1, "1": 1, "2": 1}
    assert sim.stats.served == 3 and sim.stats.abandoned == 0 and sim.stats.max_working == 1


async def test_serial_server_finishes_abandoned_requests_before_the_next(session) -> None:
    sleep = GateSleep()
    async with Simulator(SimConfig(serial=True, latency_ms=100), sleep=sleep) as sim:
        url = sim.base_url + "/chat/completions"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(session, url, chat_body("gone")), 0.1)
        await until(lambda: sim.stats.in_flight == 0)  # the client left; its work goes on
        waiting = asyncio.create_task(post(session, url, chat_body("next")))
        await until(lambda: sim.stats.in_flight == 1)
        assert len(sleep.gates) == 1 and sim.stats.served == 0  # "gone" holds the slot
        sleep.open(0)
        await until(lambda: len(sleep.gates) == 2)
        assert sim.stats.served == 1 and sim.stats.abandoned == 1
        sleep.open(1)
        status, _, body = await waiting
    assert status == 200 and body["choices"][0]["message"]["content"] == completion_text("next", 0)
    assert sim.stats.answered == {"next": 1}
    assert sim.stats.max_working == 1  # "next" never worked beside "gone": it queued behind it
    assert sim.stats.served == 2 and sim.stats.abandoned == 1 and sim.stats.by_status == {200: 1}


async def test_concurrent_server_stops_working_for_a_client_that_left(session) -> None:
    sleep = GateSleep()
    async with Simulator(SimConfig(latency_ms=100), sleep=sleep) as sim:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(session, sim.base_url + "/chat/completions", chat_body()),
                                   0.1)
        await until(lambda: sim.stats.in_flight == 0)
    assert sim.stats.working == 0 and sim.stats.served == sim.stats.abandoned == 0


async def test_stopping_a_serial_server_cancels_work_nobody_waits_for(session) -> None:
    sleep = GateSleep()
    sim = Simulator(SimConfig(serial=True, latency_ms=100), sleep=sleep)
    await sim.start()
    try:
        for content in ("working", "queued"):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(post(session, sim.base_url + "/chat/completions",
                                            chat_body(content)), 0.1)
        await until(lambda: sim.stats.in_flight == 0)
        assert sim.stats.working == 1 and len(sleep.gates) == 1
    finally:
        async with asyncio.timeout(5):
            await sim.stop()
    assert sim.stats.working == 0 and sim.stats.served == 0


def test_simulate_command_passes_each_mode_to_the_config(monkeypatch) -> None:
    from click.testing import CliRunner

    from runner.cli.main import main
    from runner.simulator import config, server
    seen: list[SimConfig] = []
    monkeypatch.setattr(server, "serve", lambda config, host, port, **kw: seen.append(config))
    args = ["simulate", "--list-prompts", "ignore", "--ignore-n", "--budget-scope", "key",
            "--limiter", "window", "--header-style", "ietf", "--serial"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, ["simulate"]).exit_code == 0
    assert (seen[0].list_prompts, seen[0].honour_n, seen[0].budget_scope, seen[0].limiter,
            seen[0].header_style, seen[0].serial) == ("ignore", False, "key", "window", "ietf", True)
    assert seen[1] == SimConfig()
    refused = CliRunner().invoke(main, ["simulate", "--header-style", "x"])
    assert refused.exit_code == 2 and "'x' is not one of" in refused.output
    choices = {p.name: tuple(p.type.choices) for p in main.commands["simulate"].params
               if hasattr(p.type, "choices")}
    assert choices == {"list_prompts": config.LIST_PROMPT_MODES, "budget_scope": config.BUDGET_SCOPES,
                       "limiter": config.LIMITERS, "header_style": config.HEADER_STYLES,
                       "image_budget_scope": config.IMAGE_BUDGET_SCOPES,
                       "url_error": config.URL_ERRORS}


def test_calendar_minute_windows_end_on_the_minute_and_the_router_refuses_the_rpm_th():
    from runner.simulator.budgets import WindowBudget
    now = [125.0]  # 5 s into a minute
    budget = WindowBudget(3, None, clock=lambda: now[0], aligned=lambda: now[0], refuse_last=True)
    assert [budget.admit(1).admitted for _ in range(3)] == [True, True, False]  # rpm - 1 pass
    now[0] = 179.9
    assert not budget.admit(1).admitted
    now[0] = 180.0  # the next calendar minute, 55 s after the first request
    assert budget.admit(1).admitted
