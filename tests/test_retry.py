"""runner.outcome: classify() and decide() as tables, backoff on a seeded rng, the server's delay winning."""
from __future__ import annotations

import asyncio
import json
import random
import statistics

import aiohttp
import pytest

from jobs.results import is_transient
from runner.errors import (
    APIConnectionError, APITimeoutError, AuthenticationError, BadRequestError, BadResponseError,
    NChoicesIgnoredError, QuotaExceededError, RateLimitError, ServerError,
)
from runner.api.transport import no_answer_error, no_answer_errors
from runner.outcome import (
    MAX_MESSAGE_CHARS, MAX_SERVER_DELAY_S, RATE_LIMIT_STALL_S, SERVER_DELAY_JITTER_S, Action,
    Attempts, Backoff, Decision, Step, Verdict, api_error, classify, classify_bad_response, decide,
    retry_delay,
)

NOW = 1_445_412_470.0  # 2015-10-21 07:27:50 GMT


def err(message="boom", *, type_=None, code=None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": code}}).encode()


RPM_429 = err("Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3.",
              type_="requests", code="rate_limit_exceeded")
TPM_429 = err("Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000.",
              type_="tokens", code="rate_limit_exceeded")
RESETS = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "7.5s"}

CASES = [
    # (name, status, headers, body) -> (action, code, delay)
    ("200 ok", 200, {}, b"{}", Action.OK, "ok", None),
    ("201 ok", 201, {}, None, Action.OK, "ok", None),
    ("429 retry-after", 429, {"retry-after": "1.5"}, RPM_429, Action.RETRY, "rate_limit_exceeded", 1.5),
    ("429 retry-after-ms wins", 429, {"retry-after-ms": "200", "retry-after": "3"}, RPM_429,
     Action.RETRY, "rate_limit_exceeded", 0.2),
    ("429 http date", 429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, RPM_429,
     Action.RETRY, "rate_limit_exceeded", 10.0),
    ("429 retry-after capped", 429, {"retry-after": "3600"}, RPM_429,
     Action.RETRY, "rate_limit_exceeded", MAX_SERVER_DELAY_S),
    ("429 retry-after inf ignored", 429, {"retry-after": "inf"}, err("x"),
     Action.RETRY, "rate_limit_exceeded", None),
    ("429 tokens -> reset-tokens", 429, RESETS, TPM_429, Action.RETRY, "rate_limit_exceeded", 7.5),
    ("429 requests -> reset-requests", 429, RESETS, RPM_429, Action.RETRY, "rate_limit_exceeded", 2.0),
    ("429 unknown type -> max reset", 429, RESETS, err("slow down"),
     Action.RETRY, "rate_limit_exceeded", 7.5),
    ("429 openai prose", 429, {}, err("Limit 30000. Please try again in 1.5s. Visit x", type_="tokens"),
     Action.RETRY, "rate_limit_exceeded", 1.5),
    ("429 azure prose", 429, {},
     json.dumps({"error": {"code": "429", "message": "Requests ... have exceeded token rate "
                           "limit. Please retry after 2 seconds."}}).encode(),
     Action.RETRY, "rate_limit_exceeded", 2.0),
    ("429 litellm's reset time", 429, {"date": "Wed, 21 Oct 2015 07:28:00 GMT"},
     err("Rate limit exceeded for model_per_key: k:m. Limit type: requests. Current limit: 60, "
         "Remaining: 0. Limit resets at: 2015-10-21 07:28:45 UTC"),
     Action.RETRY, "rate_limit_exceeded", 45.0),
    ("429 no hint", 429, {}, b"", Action.RETRY, "rate_limit_exceeded", None),
    ("429 quota by code", 429, {"retry-after": "1"},
     err("You exceeded your current quota", type_="insufficient_quota", code="insufficient_quota"),
     Action.STOP_RUN, "insufficient_quota", None),
    ("429 quota by type", 429, {}, err("quota", type_="insufficient_quota"),
     Action.STOP_RUN, "insufficient_quota", None),
    ("401", 401, {}, err("Incorrect API key", code="invalid_api_key"),
     Action.STOP_RUN, "invalid_api_key", None),
    ("401 azure", 401, {}, b'{"error": {"code": "401", "message": "Access denied"}}',
     Action.STOP_RUN, "invalid_api_key", None),
    ("403", 403, {}, err("not allowed"), Action.STOP_RUN, "permission_denied", None),
    ("400 plain", 400, {}, err("bad", type_="invalid_request_error"),
     Action.FAIL_JOB, "invalid_request", None),
    ("400 context length", 400, {}, err("too long", code="context_length_exceeded"),
     Action.FAIL_JOB, "context_length_exceeded", None),
    ("400 azure content filter", 400, {}, err("filtered", code="content_filter"),
     Action.FAIL_JOB, "content_filter", None),
    ("404", 404, {}, err("The model does not exist"), Action.FAIL_JOB, "not_found", None),
    ("404 model_not_found", 404, {}, err("no", code="model_not_found"),
     Action.FAIL_JOB, "model_not_found", None),
    ("413", 413, {}, b"too big", Action.FAIL_JOB, "request_too_large", None),
    ("422", 422, {}, b"{}", Action.FAIL_JOB, "unprocessable", None),
    ("410 other 4xx", 410, {}, None, Action.FAIL_JOB, "http_410", None),
    ("408", 408, {}, None, Action.RETRY, "timeout", None),
    ("409", 409, {}, None, Action.RETRY, "server_error", None),
    ("500", 500, {}, err("oops", type_="server_error"), Action.RETRY, "server_error", None),
    ("502 html", 502, {}, b"<html><body>Bad Gateway</body></html>", Action.RETRY, "server_error", None),
    ("503 retry-after", 503, {"retry-after": "4"}, None, Action.RETRY, "server_error", 4.0),
    ("503 retry-after capped", 503, {"retry-after-ms": "600000"}, None,
     Action.RETRY, "server_error", MAX_SERVER_DELAY_S),
    ("302", 302, {}, None, Action.FAIL_JOB, "unexpected_status", None),
]


@pytest.mark.parametrize("name, status, headers, body, action, code, delay", CASES,
                         ids=[c[0] for c in CASES])
def test_classify_table(name, status, headers, body, action, code, delay):
    verdict = classify(status, headers, body, now=NOW)
    assert (verdict.action, verdict.code) == (action, code)
    assert verdict.delay == (None if delay is None else pytest.approx(delay))


EXCEPTIONS = [
    (asyncio.TimeoutError(), Action.RETRY, "timeout"),
    (aiohttp.ServerTimeoutError("read timed out"), Action.RETRY, "timeout"),
    (APITimeoutError("slow"), Action.RETRY, "timeout"),
    (aiohttp.ServerDisconnectedError(), Action.RETRY, "connection_error"),
    (aiohttp.ClientPayloadError("body cut short"), Action.RETRY, "connection_error"),
    (ConnectionResetError(104, "reset by peer"), Action.RETRY, "connection_error"),
    (OSError("network unreachable"), Action.RETRY, "connection_error"),
    (APIConnectionError("refused"), Action.RETRY, "connection_error"),
    (BadResponseError("truncated JSON"), Action.RETRY, "bad_response"),
    (NChoicesIgnoredError("1 choice came back where n=2 asked for 2"), Action.RETRY, "n_not_supported"),
    (RateLimitError("slow", status=429, headers={"retry-after": "2"}), Action.RETRY,
     "rate_limit_exceeded"),
    (KeyError("bug"), Action.FAIL_JOB, "internal_error"),
]


@pytest.mark.parametrize("exc, action, code", EXCEPTIONS,
                         ids=[type(e[0]).__name__ for e in EXCEPTIONS])
def test_classify_exceptions(exc, action, code):
    # what aiohttp or the OS raise reaches classify as the transport raises it: the tree's errors
    if isinstance(exc, no_answer_errors()):
        exc = no_answer_error(exc)
    verdict = classify(None, {}, None, exc=exc)
    assert (verdict.action, verdict.code) == (action, code)


@pytest.mark.parametrize("raw", [asyncio.TimeoutError(), aiohttp.ServerDisconnectedError(),
                                 OSError("network unreachable")], ids=type)
def test_classify_reads_only_the_trees_errors_a_raw_one_is_a_bug(raw):
    verdict = classify(None, {}, None, exc=raw)
    assert (verdict.action, verdict.code) == (Action.FAIL_JOB, "internal_error")


def test_exception_wins_over_status():
    assert classify(200, {}, b"{}", exc=APITimeoutError("slow")).code == "timeout"


def test_a_malformed_http_answer_is_retried_not_blamed_on_the_job():
    # aiohttp reports a header it cannot parse as a ClientResponseError with status 400
    exc = aiohttp.ClientResponseError(None, (), status=400, message="Invalid header token")
    verdict = classify(None, {}, None, exc=no_answer_error(exc))
    assert (verdict.action, verdict.code) == (Action.RETRY, "connection_error")
    assert "Invalid header token" in verdict.message


def test_cancellation_is_never_swallowed():
    with pytest.raises(asyncio.CancelledError):
        classify(None, {}, None, exc=asyncio.CancelledError())


def test_classify_needs_a_status_or_an_exception():
    with pytest.raises(ValueError):
        classify(None, {}, None)


def test_body_may_be_a_dict_or_str():
    body = {"error": {"message": "ctx", "code": "context_length_exceeded"}}
    assert classify(400, {}, body).code == "context_length_exceeded"
    assert classify(400, {}, json.dumps(body)).code == "context_length_exceeded"
    assert classify(400, {}, {"object": "error", "message": "vllm says no", "code": 400}).message \
        == "vllm says no"


def test_message_comes_from_the_body():
    assert classify(500, {}, err("The server had an error")).message == "The server had an error"
    assert classify(500, {}, None).message == "HTTP 500"


def test_message_never_contains_the_api_key():
    body = err("Incorrect API key provided: sk-proj-abcDEF123456789xyz. You can find your key "
               "at https://platform.openai.com/account/api-keys.", code="invalid_api_key")
    verdict = classify(401, {}, body)
    assert "abcDEF" not in verdict.message and "sk-***" in verdict.message
    masked = classify(401, {}, err("Incorrect API key provided: sk-abc***********************xyz."))
    assert "abc" not in masked.message


def test_message_is_trimmed_to_one_line():
    verdict = classify(400, {}, err("x" * 10_000 + "\n" + "y"))
    assert len(verdict.message) == MAX_MESSAGE_CHARS and "\n" not in verdict.message


def test_classify_bad_response_retries():
    verdict = classify_bad_response("no choices in the body")
    assert (verdict.action, verdict.code, verdict.delay) == (Action.RETRY, "bad_response", None)
    assert verdict.message == "no choices in the body"


def test_verdicts_are_validated_when_built():
    with pytest.raises(ValueError):
        Verdict(Action.RETRY, "rate_limit_exceeded", delay=float("nan"))
    with pytest.raises(ValueError):
        Verdict(Action.RETRY, "rate_limit_exceeded", delay=-1.0)
    with pytest.raises(ValueError):
        Verdict(Action.FAIL_JOB, "invalid_request", delay=1.0)
    with pytest.raises(ValueError):
        Verdict(Action.OK, "")


@pytest.mark.parametrize("status, body, cls", [
    (429, RPM_429, RateLimitError),
    (429, err("q", code="insufficient_quota"), QuotaExceededError),
    (401, None, AuthenticationError),
    (403, None, AuthenticationError),
    (400, err("bad"), BadRequestError),
    (404, None, BadRequestError),
    (500, None, ServerError),
    (408, None, ServerError),
])
def test_api_error_picks_the_subclass(status, body, cls):
    error = api_error(status, {"x-request-id": "req_1"}, body, request_id="req_1")
    assert type(error) is cls
    assert (error.status, error.request_id) == (status, "req_1")
    assert classify(None, {}, None, exc=error).code == error.code


def test_every_retry_or_stop_code_is_transient_and_job_faults_are_permanent():
    for case in CASES:
        verdict = classify(case[1], case[2], case[3], now=NOW)
        if verdict.action is Action.OK or verdict.code in ("invalid_api_key", "permission_denied"):
            continue  # auth: the run stops; see the report on TRANSIENT_CODES
        expected = verdict.action is not Action.FAIL_JOB
        assert is_transient(verdict.code, case[1]) is expected, case[0]
    for exc, _action, code in EXCEPTIONS:
        if code == "n_not_supported":  # retried once only to confirm; a written line is permanent
            assert not is_transient(code, 200)
        elif code != "internal_error":
            assert is_transient(code, None)


@pytest.mark.parametrize("code, status, transient", [
    (None, 429, True), (None, 500, True), (None, 503, True), (None, 408, True),
    (None, 400, False), (None, 404, False), (None, 422, False),
    ("rate_limit_exceeded", None, True), ("context_length_exceeded", 400, False),
])
def test_is_transient_table(code, status, transient):
    assert is_transient(code, status) is transient


# --- backoff ------------------------------------------------------------------------------

def test_backoff_stays_within_full_jitter_bounds():
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(42))
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2 ** attempt)
        assert backoff.ceiling(attempt) == ceiling
        for _ in range(200):
            assert 0.0 <= backoff.delay(attempt) <= ceiling


def test_backoff_is_capped_even_for_huge_attempts():
    backoff = Backoff(base=1.0, cap=5.0, rng=random.Random(1))
    assert backoff.ceiling(10_000) == 5.0
    assert 0.0 <= backoff.delay(10_000) <= 5.0


def test_backoff_is_uniform_over_its_range():
    backoff = Backoff(base=1.0, cap=30.0, rng=random.Random(7))
    samples = [backoff.delay(3) for _ in range(20_000)]  # uniform on [0, 8]
    assert statistics.fmean(samples) == pytest.approx(4.0, abs=0.1)
    assert min(samples) < 0.1 and max(samples) > 7.9
    below_half = sum(s < 4.0 for s in samples) / len(samples)
    assert below_half == pytest.approx(0.5, abs=0.02)


def test_backoff_is_reproducible_with_a_seeded_rng():
    a = Backoff(rng=random.Random(3))
    b = Backoff(rng=random.Random(3))
    assert [a.delay(i) for i in range(8)] == [b.delay(i) for i in range(8)]


def test_backoff_rejects_bad_parameters():
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(cap=float("inf"))
    with pytest.raises(ValueError):
        Backoff().delay(-1)


def test_server_delay_wins_plus_small_jitter():
    backoff = Backoff(base=100.0, cap=100.0, rng=random.Random(0))
    verdict = Verdict(Action.RETRY, "rate_limit_exceeded", delay=2.0)
    for attempt in range(5):
        assert 2.0 <= retry_delay(verdict, attempt, backoff) <= 2.0 + SERVER_DELAY_JITTER_S


def test_without_server_delay_backoff_decides():
    verdict = Verdict(Action.RETRY, "server_error")
    expected = Backoff(rng=random.Random(9)).delay(4)
    assert retry_delay(verdict, 4, Backoff(rng=random.Random(9))) == expected


def test_retry_delay_only_for_retries():
    with pytest.raises(ValueError):
        retry_delay(Verdict(Action.FAIL_JOB, "invalid_request"), 0, Backoff())


def test_connection_error_messages_mask_secrets_in_urls():
    exc = aiohttp.ClientConnectionError(
        "Cannot connect to https://x.openai.azure.com/openai/deployments/d?api-key=SECRET123&v=1")
    verdict = classify(None, {}, None, exc=no_answer_error(exc))
    assert "SECRET123" not in verdict.message and "api-key=***" in verdict.message


# --- which refusals blame a prompt ------------------------------------------------------------

def refusal(code=None, param=None) -> bytes:
    return json.dumps({"error": {"message": "no", "type": "invalid_request_error", "param": param,
                                 "code": code}}).encode()


@pytest.mark.parametrize("status, body, blames", [
    (400, refusal("context_length_exceeded"), True),
    (400, refusal("content_filter"), True),
    (400, refusal("content_policy_violation"), True),
    (400, refusal("invalid_prompt"), True),
    (400, refusal("string_above_max_length"), True),
    (400, refusal(None, param="prompt"), True),
    (400, refusal(None, param="input"), True),
    (400, {"error": {"code": "context_length_exceeded"}}, True),
    (400, refusal("unknown_parameter", param="temperature"), False),
    (400, refusal("model_not_found"), False),
    (400, refusal(["not", "a", "code"]), False),
    (400, {"message": "vLLM shape", "code": "context_length_exceeded"}, False),  # not OpenAI's shape
    (400, b"<html>Bad Request</html>", False),
    (400, b"[1, 2]", False),
    (404, refusal("context_length_exceeded"), False),  # only a 400 blames a prompt
    (422, refusal(None, param="prompt"), False),
    (429, RPM_429, False),
    (500, refusal("context_length_exceeded"), False),
])
def test_which_refusals_blame_a_prompt(status, body, blames):
    assert classify(status, {}, body).blames_prompt is blames


def test_only_a_refusal_can_blame_a_prompt():
    with pytest.raises(ValueError):
        Verdict(Action.RETRY, "server_error", blames_prompt=True)


@pytest.mark.parametrize("status, body, rate_limited", [
    (429, RPM_429, True),
    (429, err("quota", code="insufficient_quota"), False),
    (400, err("no", code="rate_limit_exceeded"), False),  # a refusal naming the code is not a 429
    (503, None, False),
    (200, b"{}", False),
])
def test_rate_limited_means_a_429_that_will_be_retried(status, body, rate_limited):
    assert classify(status, {}, body).rate_limited is rate_limited


# --- decide(): what to do about one outcome -------------------------------------------------

OK = Verdict(Action.OK, "ok")
QUOTA_STOP = Verdict(Action.STOP_RUN, "insufficient_quota", "out of credit")
PLAIN_400 = Verdict(Action.FAIL_JOB, "invalid_request", "bad field")
PROMPT_400 = Verdict(Action.FAIL_JOB, "context_length_exceeded", "too long", blames_prompt=True)
PACED_429 = Verdict(Action.RETRY, "rate_limit_exceeded", "slow down", delay=1.5)
BARE_429 = Verdict(Action.RETRY, "rate_limit_exceeded", "slow down")
SERVER_500 = Verdict(Action.RETRY, "server_error", "oops")
SERVER_503_DELAY = Verdict(Action.RETRY, "server_error", "busy", delay=4.0)
TIMED_OUT = Verdict(Action.RETRY, "timeout", "read timed out")

N_IGNORED = Verdict(Action.RETRY, "n_not_supported", "1 choice came back where n=2 asked for 2")
STALLED = RATE_LIMIT_STALL_S  # seconds without a success anywhere in the run

DECISIONS = [
    # (name, verdict, packed, attempts before, max_attempts, since_success, confirmed)
    #     -> (step, counts, attempts after)
    ("ok", OK, False, Attempts(), 6, 0, False, Step.SUCCEED, False, Attempts(1, 0, 0)),
    ("ok after retries", OK, True, Attempts(3, 2, 1), 6, 0, False,
     Step.SUCCEED, False, Attempts(4, 2, 1)),
    ("quota stops", QUOTA_STOP, False, Attempts(), 6, 0, False, Step.STOP_RUN, False, Attempts(1, 0, 0)),
    ("400 fails a single job", PLAIN_400, False, Attempts(), 6, 0, False,
     Step.FAIL, False, Attempts(1, 0, 0)),
    ("400 shared by a pack fails it whole", PLAIN_400, True, Attempts(), 6, 0, False,
     Step.FAIL, False, Attempts(1, 0, 0)),
    ("prompt 400 of a pack bisects", PROMPT_400, True, Attempts(), 6, 0, False,
     Step.BISECT, False, Attempts(1, 0, 0)),
    ("prompt 400 of a single job fails it", PROMPT_400, False, Attempts(), 6, 0, False,
     Step.FAIL, False, Attempts(1, 0, 0)),
    ("paced 429 is pacing", PACED_429, False, Attempts(), 6, 0, False,
     Step.RETRY_PACED, False, Attempts(1, 1, 0)),
    # the old rule counted every 4th paced 429; now none counts while the run makes progress
    ("paced 429s never count", PACED_429, True, Attempts(3, 3, 0), 6, 0, False,
     Step.RETRY_PACED, False, Attempts(4, 4, 0)),
    ("a paced 429 after 5 counted failures does not give up", PACED_429, False, Attempts(10, 7, 5), 6,
     STALLED - 1, False, Step.RETRY_PACED, False, Attempts(11, 8, 5)),
    ("a paced 429 after the run stalled stops it", PACED_429, False, Attempts(2, 2, 0), 6, STALLED, False,
     Step.STOP_RUN, False, Attempts(3, 3, 0)),
    # a gateway's 429 may name no delay: still pacing (the limiter holds its own), never counted
    ("429 without a delay is pacing too", BARE_429, False, Attempts(5, 0, 5), 6, 0, False,
     Step.RETRY_PACED, False, Attempts(6, 1, 5)),
    ("a 429 without a delay after the run stalled stops it", BARE_429, False, Attempts(), 6,
     STALLED, False, Step.STOP_RUN, False, Attempts(1, 1, 0)),
    ("500 backs off", SERVER_500, False, Attempts(), 6, 0, False,
     Step.RETRY_AFTER_SLEEP, True, Attempts(1, 0, 1)),
    ("503 with a delay sleeps it", SERVER_503_DELAY, False, Attempts(), 6, 0, False,
     Step.RETRY_AFTER_SLEEP, True, Attempts(1, 0, 1)),
    ("timeout backs off", TIMED_OUT, True, Attempts(2, 0, 2), 6, 0, False,
     Step.RETRY_AFTER_SLEEP, True, Attempts(3, 0, 3)),
    ("last attempt gives up", SERVER_500, False, Attempts(5, 0, 5), 6, 0, False,
     Step.FAIL, True, Attempts(6, 0, 6)),
    ("max_attempts 1: no retry", TIMED_OUT, False, Attempts(), 1, 0, False,
     Step.FAIL, True, Attempts(1, 0, 1)),
    ("a failure after paced 429s can give up", SERVER_500, False, Attempts(10, 7, 5), 6, 0, False,
     Step.FAIL, True, Attempts(11, 7, 6)),
    ("n ignored, unconfirmed: one retry to confirm", N_IGNORED, False, Attempts(), 6, 0, False,
     Step.RETRY_AFTER_SLEEP, True, Attempts(1, 0, 1)),
    ("n ignored, confirmed: a permanent failure", N_IGNORED, False, Attempts(1, 0, 1), 6, 0, True,
     Step.FAIL, False, Attempts(2, 0, 1)),
    ("n ignored by a pack, unconfirmed: its jobs go alone", N_IGNORED, True, Attempts(), 6, 0, False,
     Step.UNPACK, False, Attempts(1, 0, 0)),
    ("n ignored by a pack, confirmed: a permanent failure", N_IGNORED, True, Attempts(), 6, 0, True,
     Step.FAIL, False, Attempts(1, 0, 0)),
]


@pytest.mark.parametrize("name, verdict, packed, before, max_attempts, since_success, confirmed, "
                         "step, counts, after", DECISIONS, ids=[d[0] for d in DECISIONS])
def test_decide_table(name, verdict, packed, before, max_attempts, since_success, confirmed, step,
                      counts, after):
    decision = decide(verdict, before, packed=packed, max_attempts=max_attempts,
                      since_success=since_success, confirmed=confirmed)
    assert (decision.step, decision.counts, decision.attempts) == (step, counts, after)
    assert decision.code == verdict.code


def test_giving_up_says_how_many_requests_it_took():
    decision = decide(SERVER_500, Attempts(5, 0, 5), packed=False, max_attempts=6)
    assert decision.message == "gave up after 6 requests: oops"
    after_429s = decide(SERVER_500, Attempts(10, 7, 5), packed=False, max_attempts=6)
    assert after_429s.message == "gave up after 11 requests, 7 of them rate-limited: oops"
    assert decide(PLAIN_400, Attempts(), packed=False, max_attempts=6).message == "bad field"


def test_paced_429s_never_count_while_the_run_makes_progress():
    attempts = Attempts()
    for _ in range(1000):
        decision = decide(PACED_429, attempts, packed=False, max_attempts=2, since_success=STALLED - 0.1)
        assert (decision.step, decision.counts) == (Step.RETRY_PACED, False)
        attempts = decision.attempts
    assert attempts == Attempts(1000, 1000, 0)


def test_a_stall_stops_the_run_saying_how_long_nothing_succeeded():
    decision = decide(PACED_429, Attempts(), packed=False, max_attempts=6, since_success=STALLED + 20)
    assert decision.step is Step.STOP_RUN and decision.code == "rate_limit_exceeded"
    assert decision.message == (f"only 429s and no success anywhere in the run for {STALLED + 20:.0f} s "
                                f"(the limit is {STALLED:.0f} s): slow down")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            decide(PACED_429, Attempts(), packed=False, max_attempts=6, since_success=bad)


def test_a_sleep_is_the_server_delay_or_backoff_for_this_attempt():
    with_delay = decide(SERVER_503_DELAY, Attempts(), packed=False, max_attempts=6)
    assert 4.0 <= with_delay.wait(Backoff(rng=random.Random(0))) <= 4.0 + SERVER_DELAY_JITTER_S
    backoff = decide(SERVER_500, Attempts(2, 0, 2), packed=False, max_attempts=6)
    assert backoff.wait(Backoff(rng=random.Random(5))) == Backoff(rng=random.Random(5)).delay(2)
    with pytest.raises(ValueError):
        decide(PACED_429, Attempts(), packed=False, max_attempts=6).wait(Backoff())


def test_decisions_and_attempts_are_validated_when_built():
    with pytest.raises(ValueError):
        Decision(Step.RETRY_PACED, SERVER_500, Attempts(1, 0, 1), "oops")  # no delay to wait out
    with pytest.raises(ValueError):
        Decision(Step.BISECT, SERVER_500, Attempts(1, 0, 1), "oops")
    with pytest.raises(ValueError):
        Decision(Step.SUCCEED, PLAIN_400, Attempts(1, 0, 0), "")
    with pytest.raises(ValueError):
        Attempts(sent=1, paced=2)
    with pytest.raises(ValueError):
        Attempts(sent=-1)
    with pytest.raises(ValueError):
        decide(OK, Attempts(), packed=False, max_attempts=0)
