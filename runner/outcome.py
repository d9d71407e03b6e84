"""The outcome policy, in one place: what a call's outcome means and what to do about it.

Two pure steps, the same for every backend (the live dispatcher, or one reading Batch API results):

1. `classify()`, the only code that reads statuses, headers and bodies, turns what came back from
   one call (an answer, or the exception raised when none came) into a `Verdict`: OK, retry (after
   the server's delay, or backoff), fail the job(s), or stop the whole run; and whether a refusal
   may be one prompt's fault.
2. `decide()` turns a Verdict, whether the request is a pack, what the request has spent so far
   (`Attempts`), how long the run has gone without a success, and whether the lane has answered
   like this before, into a `Decision`: succeed, retry when the limiter admits it (it holds the
   server's delay as debt), retry after a sleep, fail, bisect the pack, send its jobs alone, or
   stop the run; and whether this outcome counted against `--max-attempts`.

Backends act on decisions and never look at status codes; the errors they raise are classified
too (`classify(exc=...)`), and only errors of the project's tree (`runner.errors`): a backend
turns what aiohttp or the OS raised into the tree's errors first (`runner.api.transport.no_answer_error`).

Retry timing: the server's delay (`retry-after-ms`, `retry-after`, the `x-ratelimit-reset-*`
header of the exhausted budget, Azure's "Please retry after N seconds", or the reset time LiteLLM
writes into its message) wins, capped at `MAX_SERVER_DELAY_S`; without one, full-jitter
exponential `Backoff`. `Backoff` and `Attempts` are the retry vocabulary every retry loop shares
(`runner.retry`); they are named here too.
"""
from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs import codes
from runner.api.headers import RateLimitInfo, parse_duration, parse_retry_after, reset_from_message
from runner.errors import (
    APIConnectionError, APIError, APITimeoutError, APIUnreachableError, AuthenticationError,
    BadRequestError, BadResponseError, ConfigurationError, InvalidJSONError, ListNotTakenError,
    NChoicesIgnoredError,
    QuotaExceededError, RateLimitError, ServerError, StopRunError, describe,
)
from runner.errors import error_fields as _error_fields
from runner.redact import mask_secrets
from runner.retry import BACKOFF_BASE_S, BACKOFF_CAP_S, Attempts, Backoff

__all__ = [
    "MAX_SERVER_DELAY_S", "SERVER_DELAY_JITTER_S", "BACKOFF_BASE_S", "BACKOFF_CAP_S",
    "MAX_MESSAGE_CHARS", "RATE_LIMIT_STALL_S",
    "Action", "Verdict", "classify", "classify_bad_response", "api_error", "Backoff", "retry_delay",
    "Step", "Attempts", "Decision", "decide", "stops_before_answer",
]

MAX_SERVER_DELAY_S = 60.0  # a server-directed wait longer than this is cut to this
SERVER_DELAY_JITTER_S = 0.5  # added on top of a server delay so waiters don't return in lockstep
MAX_MESSAGE_CHARS = 500  # error messages written into result lines are trimmed to this
# A 429 is pacing and never counts against --max-attempts (with no delay named, the limiter holds
# its own: a gateway's 429 often names none), unless the whole run has had no success for this
# long: then the run stops (resumable), the budget is not coming back.
RATE_LIMIT_STALL_S = 300.0

OK_CODE = "ok"  # the code of an OK verdict; never written into a result line
STOPPED_CODE = "stopped"  # a StopRunError naming no code of its own; never written either

# Default result code of a 4xx that fails the job when the body names none.
_CLIENT_ERROR_CODES = {400: codes.INVALID_REQUEST, 404: codes.NOT_FOUND,
                       413: codes.REQUEST_TOO_LARGE, 422: codes.UNPROCESSABLE}
_RETRY_STATUSES = frozenset({408, 409})

# Azure / OpenAI prose: "Please retry after 2 seconds", "Please try again in 1.5s" / "in 6m0s".
_MESSAGE_DELAY = re.compile(
    r"(?:retry after|try again in)\s+((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|h|m|s)?)+)", re.IGNORECASE)


class Action(enum.Enum):
    RETRY = "retry"  # try this job again, after `Verdict.delay` or a backoff
    FAIL_JOB = "fail_job"  # write an error result for this job; no retry
    STOP_RUN = "stop_run"  # nothing else can succeed (bad key, no quota): stop dispatching
    OK = "ok"  # a 2xx answer; the caller still checks the JSON (see `classify_bad_response`)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about one call.

    `code` is the error code written into the job's result line ("ok" for OK); `message` is
    human-readable, at most `MAX_MESSAGE_CHARS`, and never contains an API key. `delay` is the
    server-directed wait in seconds, already capped at `MAX_SERVER_DELAY_S`; None means "use
    backoff". Only RETRY verdicts carry a delay. `blames_prompt` marks a refusal that one prompt of
    a packed request can cause (see `classify`); only FAIL_JOB verdicts carry it. `endpoint_fault`
    marks an outcome that says the endpoint as configured may not work at all (a route it does
    not serve, an Azure deployment it lacks, nothing listening): before the run's first success
    it stops the run instead of costing a job (`decide`). `misconfigured` marks a STOP_RUN that
    rerunning as it is cannot mend (a `ConfigurationError`: the run exits 2).
    """

    action: Action
    code: str
    message: str = ""
    delay: float | None = None
    blames_prompt: bool = False
    endpoint_fault: bool = False
    misconfigured: bool = False

    def __post_init__(self) -> None:
        if not self.code:
            raise ValueError("a verdict needs a code")
        if self.delay is not None:
            if self.action is not Action.RETRY:
                raise ValueError("only a RETRY verdict has a delay")
            if not (math.isfinite(self.delay) and 0 <= self.delay <= MAX_SERVER_DELAY_S):
                raise ValueError(f"delay must be within [0, {MAX_SERVER_DELAY_S}], got {self.delay}")
        if self.blames_prompt and self.action is not Action.FAIL_JOB:
            raise ValueError("only a FAIL_JOB verdict blames a prompt")
        if self.endpoint_fault and self.action not in (Action.FAIL_JOB, Action.RETRY):
            raise ValueError("only a FAIL_JOB or RETRY verdict is an endpoint fault")
        if self.misconfigured and self.action is not Action.STOP_RUN:
            raise ValueError("only a STOP_RUN verdict is misconfigured")

    @property
    def rate_limited(self) -> bool:
        """A 429 rate-limit answer (not quota): the budget's limiter must hear of it."""
        return self.action is Action.RETRY and self.code == codes.RATE_LIMITED


_OK = Verdict(Action.OK, OK_CODE)


def _clean_message(text: str) -> str:
    """One line, no API key, at most MAX_MESSAGE_CHARS."""
    text = mask_secrets(" ".join(text.split()))
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


def _blames_a_prompt(body: bytes | str | Mapping | None) -> bool:
    """Whether a 400 refusal may be one prompt's fault, so bisecting a refused pack finds the
    guilty job(s): an OpenAI-shaped body whose `error.code` is a prompt-level one
    (`jobs.codes.PROMPT_FAULT_CODES`: context length, content filter) or whose `error.param` names
    the prompt list. Any other refusal (an unknown field, model or value) is shared by every job
    of the pack: bisecting would spend two requests per job to learn nothing."""
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        try:
            body = json.loads(bytes(body) if not isinstance(body, str) else body)
        except ValueError:
            return False
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return False
    code = error.get("code")
    prompt_code = isinstance(code, str) and code in codes.PROMPT_FAULT_CODES
    return prompt_code or error.get("param") in ("prompt", "input")


def _cap(delay: float | None) -> float | None:
    return None if delay is None else min(delay, MAX_SERVER_DELAY_S)


def _delay_from_message(message: str | None) -> float | None:
    if not message:
        return None
    match = _MESSAGE_DELAY.search(message)
    return None if match is None else parse_duration(match.group(1))  # bare number = seconds


def _rate_limit_delay(headers: Mapping[str, str], kind: str | None, message: str | None,
                      now: float | None) -> float | None:
    """Server-directed wait for a 429: retry-after*, then the exhausted budget's reset, then prose
    (a delay, or the reset time a gateway writes: `reset_from_message`)."""
    delay = parse_retry_after(headers, now=now)
    if delay is not None:
        return delay
    info = RateLimitInfo.from_headers(headers)
    if kind is not None and kind.startswith("tokens") and info.reset_tokens is not None:
        return info.reset_tokens
    if kind == "requests" and info.reset_requests is not None:
        return info.reset_requests
    resets = [r for r in (info.reset_requests, info.reset_tokens) if r is not None]
    if resets:
        return max(resets)
    delay = _delay_from_message(message)
    return delay if delay is not None else reset_from_message(message, headers, now=now)


def _classify_exception(exc: BaseException, now: float | None) -> Verdict:
    if not isinstance(exc, Exception):
        raise exc  # CancelledError, KeyboardInterrupt: never swallowed as a "failure"
    if isinstance(exc, APIError):
        return classify(exc.status, exc.headers, exc.body, now=now)
    if isinstance(exc, StopRunError):  # from `send`: no token to be had, a redirect refused
        return Verdict(Action.STOP_RUN, getattr(exc, "code", None) or STOPPED_CODE,
                       _clean_message(str(exc) or describe(exc)),
                       misconfigured=isinstance(exc, ConfigurationError))
    if isinstance(exc, ListNotTakenError):  # a lesson only when seen twice (runner.live.capabilities)
        return Verdict(Action.RETRY, codes.LIST_NOT_TAKEN, _clean_message(str(exc)))
    if isinstance(exc, NChoicesIgnoredError):  # unusable now; permanent once confirmed (`decide`)
        return Verdict(Action.RETRY, codes.N_NOT_SUPPORTED, _clean_message(str(exc)))
    if isinstance(exc, InvalidJSONError):  # retried like bad_response, under its own code
        return Verdict(Action.RETRY, codes.INVALID_JSON, _clean_message(str(exc)))
    if isinstance(exc, BadResponseError):
        return classify_bad_response(str(exc))
    if isinstance(exc, APITimeoutError):
        return Verdict(Action.RETRY, codes.TIMEOUT, _clean_message(str(exc) or describe(exc)))
    if isinstance(exc, APIConnectionError):  # refused, no such host, TLS failed: nothing there
        return Verdict(Action.RETRY, codes.CONNECTION_ERROR, _clean_message(str(exc) or describe(exc)),
                       endpoint_fault=isinstance(exc, APIUnreachableError))
    return Verdict(Action.FAIL_JOB, codes.INTERNAL_ERROR, _clean_message(describe(exc)))


def classify(status: int | None, headers: Mapping[str, str], body: bytes | str | Mapping | None,
             *, exc: BaseException | None = None, now: float | None = None) -> Verdict:
    """Decide what one call's outcome means. Pure: no I/O, no clock except an HTTP-date retry-after
    measured from `now` (epoch seconds, default `time.time()`).

    Pass the answer (`status`, response `headers` with lower-case names, raw `body`) or, when none
    arrived, the exception (`exc` wins when given; a `BaseException` that is not an `Exception`,
    such as `asyncio.CancelledError`, is re-raised). Rules:

    - 2xx: OK (the caller still validates the JSON; see `classify_bad_response`). A parsed 2xx
      body (a Mapping) is read for the Responses API's own outcome: `status: "incomplete"` is OK
      when `incomplete_details.reason` is `max_output_tokens` (the answer is the user's, cut
      short as asked), FAIL_JOB "content_filter" when it is `content_filter`; `status: "failed"`
      is its `error` object classified like an error body (`server_error` and `rate_limit_exceeded`
      RETRY, any other code FAIL_JOB with that code); `cancelled`, `queued`, `in_progress`
      (a background response) FAIL_JOB "unexpected_status".
    - 429 `insufficient_quota` (error code or type): STOP_RUN "insufficient_quota".
    - other 429: RETRY "rate_limit_exceeded", delay from retry-after-ms / retry-after, else the
      reset header of the budget named by the body's `type` ("tokens"/"requests"; else the larger
      reset), else "try again in 1.5s" / "retry after 2 seconds" in the message, else the reset
      time LiteLLM writes there ("Limit resets at: 2026-12-07 12:41:08 UTC", from the answer's
      `date` header, else `now`), else None.
    - 401: STOP_RUN "invalid_api_key"; 403: STOP_RUN "permission_denied".
    - 408: RETRY "timeout"; 409 and 5xx: RETRY "server_error"; both honour retry-after.
    - other 4xx: FAIL_JOB with the body's error code ("context_length_exceeded" etc.) or
      "invalid_request" (400) / "not_found" (404) / "request_too_large" (413) /
      "unprocessable" (422) / "http_<status>". A 400 whose `error.code` is a prompt-level one
      (`jobs.codes.PROMPT_FAULT_CODES`) or whose `error.param` is "prompt"/"input" blames a prompt.
    - 1xx/3xx: FAIL_JOB "unexpected_status".
    - `APITimeoutError`: RETRY "timeout"; `APIConnectionError`: RETRY "connection_error", with the
      error's message (an `APIUnreachableError` is an endpoint fault); a `StopRunError` (raised by `send`: no
      Entra ID token to be had, a redirect to another origin refused): STOP_RUN with the error's
      `code` and message, `misconfigured` for a `ConfigurationError`; `NChoicesIgnoredError`: RETRY
      "n_not_supported" (see `decide`); `InvalidJSONError`: RETRY "invalid_json"; other
      `BadResponseError`s: RETRY "bad_response";
      an `APIError`: as its status, headers and body; any other exception, a raw aiohttp or OS
      error among them (a backend sends through `runner.api.transport.only_tree_errors`, so
      one reaching here is a bug): FAIL_JOB "internal_error".

    Delays are capped at `MAX_SERVER_DELAY_S`. Messages come from the body's error message,
    trimmed to `MAX_MESSAGE_CHARS` with any API key masked; request headers are never consulted.
    """
    if exc is not None:
        return _classify_exception(exc, now)
    if status is None:
        raise ValueError("classify() needs a status or an exception")
    if 200 <= status < 300:
        return _answer_verdict(body) if isinstance(body, Mapping) else _OK
    code, kind, message = _error_fields(body)
    text = _clean_message(message or f"HTTP {status}")
    if status == 429:
        if codes.QUOTA in (code, kind):
            return Verdict(Action.STOP_RUN, codes.QUOTA, text)
        return Verdict(Action.RETRY, codes.RATE_LIMITED, text,
                       _cap(_rate_limit_delay(headers, kind, message, now)))
    if status == 401:
        return Verdict(Action.STOP_RUN, codes.INVALID_API_KEY, text)
    if status == 403:
        return Verdict(Action.STOP_RUN, codes.PERMISSION_DENIED, text)
    if status in _RETRY_STATUSES or status >= 500:
        return Verdict(Action.RETRY, codes.TIMEOUT if status == 408 else codes.SERVER_ERROR, text,
                       _cap(parse_retry_after(headers, now=now)))
    if 400 <= status < 500:
        route = status == 404 and _route_not_found(code, message, body)
        code = code or _CLIENT_ERROR_CODES.get(status) or codes.http_status_code(status)
        blames = status == 400 and _blames_a_prompt(body)
        return Verdict(Action.FAIL_JOB, code, text, blames_prompt=blames, endpoint_fault=route)
    return Verdict(Action.FAIL_JOB, codes.UNEXPECTED_STATUS, text)


# 404 bodies that blame the URL, not the job: OpenAI's "Invalid URL (POST /chat/completions)" and
# its later "Unknown request URL" (code unknown_url), Azure's "Resource not found",
# a web framework's "Not Found" ({"detail": "Not Found"}, "404 page not found"), an HTML page;
# Azure's DeploymentNotFound. A 404 naming a model ("model_not_found", vLLM's "The model `x`
# does not exist") is the job's own.
_ROUTE_404_CODES = frozenset({"DeploymentNotFound", "unknown_url", "404"})
_ROUTE_404_MESSAGE = re.compile(
    r"^\s*(invalid url\b|unknown request url\b|resource not found\b|(404:?\s*)?(page\s+)?not found\b|<)",
    re.IGNORECASE)


def _route_not_found(code: str | None, message: str | None, body: Any) -> bool:
    """Whether a 404 says the URL itself is wrong (see `_ROUTE_404_CODES`), not the job."""
    if code is not None:
        return code in _ROUTE_404_CODES
    if message is None and isinstance(body, (bytes, str)):
        try:  # a web framework's {"detail": "..."}: the route only when it says just that
            detail = json.loads(body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, str):
            return detail.strip().lower() == "not found"
    if message is None:
        return True  # no message at all (an empty body): the route
    return bool(_ROUTE_404_MESSAGE.match(message))


_RETRY_ANSWER_CODES = frozenset({codes.SERVER_ERROR, codes.RATE_LIMITED})


def _answer_verdict(body: Mapping) -> Verdict:
    """The verdict on a parsed 2xx body: OK unless it is a Responses API object that did not
    complete (see `classify`)."""
    status = body.get("status")
    if body.get("object") != "response" or status in ("completed", None):
        return _OK
    if status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        if reason == "content_filter":
            return Verdict(Action.FAIL_JOB, codes.CONTENT_FILTER,
                           "the response is incomplete: content_filter")
        return _OK  # max_output_tokens: the answer, as long as the job allowed
    if status == "failed":
        code, _, message = _error_fields(body)
        code = code or codes.SERVER_ERROR
        text = _clean_message(message or "the response failed")
        if code in _RETRY_ANSWER_CODES:
            return Verdict(Action.RETRY, code, text)
        return Verdict(Action.FAIL_JOB, code, text)
    return Verdict(Action.FAIL_JOB, codes.UNEXPECTED_STATUS,
                   _clean_message(f"the response's status is {status!r}"))


def classify_bad_response(reason: str) -> Verdict:
    """RETRY "bad_response": a 2xx answer whose body the caller could not use (`reason` says why)."""
    return Verdict(Action.RETRY, codes.BAD_RESPONSE, _clean_message(reason or "unusable response body"))


_ERROR_CLASSES = {codes.RATE_LIMITED: RateLimitError, codes.QUOTA: QuotaExceededError,
                  codes.INVALID_API_KEY: AuthenticationError,
                  codes.PERMISSION_DENIED: AuthenticationError}


def api_error(status: int, headers: Mapping[str, str], body: bytes | str | Mapping | None, *,
              request_id: str | None = None, now: float | None = None,
              url: str | None = None) -> APIError:
    """The `APIError` subclass for a non-2xx answer, carrying `classify()`'s code and message
    (and the `url` called, for a message that must name it)."""
    verdict = classify(status, headers, body, now=now)
    if verdict.action is Action.OK:
        raise ValueError(f"status {status} is not an error")
    if verdict.code in _ERROR_CLASSES:
        cls = _ERROR_CLASSES[verdict.code]
    elif verdict.action is Action.RETRY:
        cls = ServerError
    else:
        cls = BadRequestError
    return cls(verdict.message, status=status, body=body, request_id=request_id,
               headers=headers, code=verdict.code, url=url)


def retry_delay(verdict: Verdict, attempt: int, backoff: Backoff) -> float:
    """Seconds to wait before retrying after `verdict` (a RETRY) on 0-based `attempt`.

    With a server delay d: a value in [min(d, MAX_SERVER_DELAY_S), that + SERVER_DELAY_JITTER_S]
    (the server wins; the jitter only de-synchronises waiters). Without one: `backoff.delay(attempt)`.
    """
    if verdict.action is not Action.RETRY:
        raise ValueError(f"{verdict.action} is not a retry")
    if verdict.delay is None:
        return backoff.delay(attempt)
    return min(verdict.delay, MAX_SERVER_DELAY_S) + backoff.jitter(SERVER_DELAY_JITTER_S)


# -- the decision ----------------------------------------------------------------------------------

def stops_before_answer(verdict: Verdict, *, answered: bool) -> bool:
    """Whether `verdict` stops the run because the endpoint as configured does not work: an
    endpoint fault (a route answering 404 for itself, nothing listening) before the run has had
    any success (`answered`). Every backend stops on it rather than retry or fail a job: the
    whole file would fail the same way."""
    return verdict.endpoint_fault and not answered


class Step(enum.Enum):
    """What a backend does next about one request (see `decide`)."""

    SUCCEED = "succeed"  # write each job's answer
    RETRY_PACED = "retry_paced"  # send again as soon as the limiter admits it: it holds the delay
    RETRY_AFTER_SLEEP = "retry_after_sleep"  # sleep `Decision.wait(backoff)`, then send again
    FAIL = "fail"  # write an error line for every job: `Decision.code`, `Decision.message`
    BISECT = "bisect"  # send each half of the pack again, so only the guilty jobs fail
    UNPACK = "unpack"  # send each job of the pack alone
    STOP_RUN = "stop_run"  # nothing else can succeed (bad key, no quota): stop the run, resumably


# Which steps each verdict can lead to (a RETRY that used up the attempts fails).
_STEPS = {
    Action.OK: frozenset({Step.SUCCEED}),
    Action.STOP_RUN: frozenset({Step.STOP_RUN}),
    Action.FAIL_JOB: frozenset({Step.FAIL, Step.BISECT, Step.STOP_RUN}),  # STOP: an endpoint fault
    Action.RETRY: frozenset({Step.RETRY_PACED, Step.RETRY_AFTER_SLEEP, Step.FAIL, Step.UNPACK,
                             Step.STOP_RUN}),
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one outcome of one request.

    `attempts` are the counters after this outcome: pass them to the next `decide`. `counts` says
    whether this outcome used up one of `--max-attempts`. `message` is what a FAIL writes into
    each job's line (the verdict's, or after giving up, how many requests it took and why).
    """

    step: Step
    verdict: Verdict
    attempts: Attempts
    message: str
    counts: bool = False

    def __post_init__(self) -> None:
        if self.step not in _STEPS[self.verdict.action]:
            raise ValueError(f"a {self.verdict.action.value} verdict cannot lead to "
                             f"{self.step.value}")
        if self.step is Step.RETRY_PACED and not self.verdict.rate_limited:
            raise ValueError("a paced retry is a 429's")

    @property
    def code(self) -> str:
        """The error code of a FAIL (and of every other step): the verdict's."""
        return self.verdict.code

    @property
    def delay(self) -> float | None:
        """The server's delay, capped: what a RETRY_PACED waits out in the limiter (None: the
        limiter's own, `runner.pacing.learning.FALLBACK_RETRY_AFTER_S` or a window's probe)."""
        return self.verdict.delay

    def wait(self, backoff: Backoff) -> float:
        """Seconds to sleep before a RETRY_AFTER_SLEEP: `retry_delay` for this attempt (the
        server's delay when it gave one, else full-jitter backoff)."""
        if self.step is not Step.RETRY_AFTER_SLEEP:
            raise ValueError(f"{self.step.value} does not sleep")
        return retry_delay(self.verdict, self.attempts.counted - 1, backoff)


def decide(verdict: Verdict, attempts: Attempts, *, packed: bool, max_attempts: int,
           since_success: float = 0.0, confirmed: bool = False,
           answered: bool = True) -> Decision:
    """What to do about `verdict`, the outcome of one request (of `packed` jobs, or one), given
    what it has spent so far. Pure; the same for every backend.

    `since_success`: seconds since the run last had a success (any 2xx answer), or since it started
    if none yet. `confirmed`: the answers of this lane (base URL, endpoint, model) have shown it
    ignores `n`, this one included (the caller counts them). The table::

        verdict                                  step                counts as an attempt
        OK                                       SUCCEED             -
        STOP_RUN                                 STOP_RUN            -
        FAIL_JOB, blames_prompt, packed          BISECT              -
        FAIL_JOB, otherwise                      FAIL                -
        RETRY n_not_supported, confirmed         FAIL                -
        RETRY n_not_supported, packed            UNPACK              -
        RETRY n_not_supported, otherwise         RETRY_AFTER_SLEEP   yes
        RETRY, a 429 (a delay named or not)      RETRY_PACED         no
          ... no success for RATE_LIMIT_STALL_S  STOP_RUN            -
        RETRY, otherwise                         RETRY_AFTER_SLEEP   yes
        endpoint_fault, not `answered`           STOP_RUN            -

    A RETRY whose count reaches `max_attempts` is a FAIL instead, with the verdict's code and the
    message "gave up after N requests[, M of them rate-limited]: <verdict's message>"; but an
    endpoint fault never fails a job: when nothing listens any more (the server went away) the
    run stops (resumable) rather than write failures for jobs that never reached it. `answered`: the run
    has had a success (any 2xx answer): until then an endpoint fault (a wrong URL, nothing
    listening) stops the run instead of failing every job of the file. An answer
    ignoring `n` needs one confirmation, not `max_attempts` retries; an unconfirmed one to a pack
    is sent again job by job, since its shape may be a server answering only the first prompt.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if not (math.isfinite(since_success) and since_success >= 0):
        raise ValueError(f"since_success must be a finite number >= 0, got {since_success!r}")
    sent = attempts.sent + 1
    action = verdict.action
    if stops_before_answer(verdict, answered=answered):
        return Decision(Step.STOP_RUN, verdict, Attempts(sent, attempts.paced, attempts.counted),
                        f"before any answer from it: {verdict.message}")
    if action is not Action.RETRY:
        after = Attempts(sent, attempts.paced, attempts.counted)
        if action is Action.OK:
            step = Step.SUCCEED
        elif action is Action.STOP_RUN:
            step = Step.STOP_RUN
        else:
            step = Step.BISECT if packed and verdict.blames_prompt else Step.FAIL
        return Decision(step, verdict, after, verdict.message)
    if verdict.code == codes.N_NOT_SUPPORTED and (packed or confirmed):
        after = Attempts(sent, attempts.paced, attempts.counted)
        return Decision(Step.FAIL if confirmed else Step.UNPACK, verdict, after, verdict.message)
    paced_429 = verdict.rate_limited
    paced = attempts.paced + paced_429
    if paced_429:
        after = Attempts(sent, paced, attempts.counted)
        if since_success >= RATE_LIMIT_STALL_S:
            return Decision(Step.STOP_RUN, verdict, after,
                            f"only 429s and no success anywhere in the run for {since_success:.0f} s "
                            f"(the limit is {RATE_LIMIT_STALL_S:.0f} s): {verdict.message}")
        return Decision(Step.RETRY_PACED, verdict, after, verdict.message)
    after = Attempts(sent, paced, attempts.counted + 1)
    if after.counted >= max_attempts and verdict.endpoint_fault:
        return Decision(Step.STOP_RUN, verdict, after,
                        f"the server stopped answering (after {sent} requests, the last found "
                        f"nothing listening): {verdict.message}")
    if after.counted >= max_attempts:
        note = f", {paced} of them rate-limited" if paced else ""
        return Decision(Step.FAIL, verdict, after,
                        f"gave up after {sent} requests{note}: {verdict.message}", True)
    return Decision(Step.RETRY_AFTER_SLEEP, verdict, after, verdict.message, True)
