"""Budgets and their headers: the rate limits a request meets, what the headers say of them, and
the 429 that refuses.

OpenAI's limits are two continuously refilling token buckets per model (deployment on Azure):
requests at `rpm / 60` per second and tokens at `tpm / 60` per second, each holding
`rate * burst_s` (`TokenBucket`, `ModelBudget`). A request is admitted when both buckets hold its
cost; a cost larger than a bucket's capacity is admitted when that bucket is full and drives it
negative (debt). Gateways keep fixed 60 s windows instead (`WindowBudget`). Every budget reads an
injected clock, so its arithmetic is tested without sleeping. `rate_limit_headers` writes a
budget's state (`LimitState`) in the header style of OpenAI, Azure, LiteLLM or the IETF draft;
`rate_limited`, `window_limited` and `router_limited` are the 429s of OpenAI / Azure, LiteLLM's
proxy and LiteLLM's router.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runner.simulator.answers import CHAT, COMPLETIONS, EMBEDDINGS, sha_hex
from runner.simulator.parsing import OPENAI, ORGANIZATION, ApiError, azure_error, openai_error

ADMIT_EPSILON = 1e-9  # tolerance so a client that waited exactly retry-after is admitted
AZURE_TOO_LARGE_RETRY_S = 86_400  # what Azure tells a request that can never fit
RATE_WINDOW_S = 60  # every limit here is per minute; the IETF policy's `w`

_AZURE_OPERATION = {CHAT: "ChatCompletions_Create", COMPLETIONS: "Completions_Create",
                    EMBEDDINGS: "Embeddings_Create"}
_RATE_LIMIT_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."


def format_duration(seconds: float) -> str:
    """OpenAI's duration format, rounded up to the millisecond: `0s`, `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"



class TokenBucket:
    """A bucket refilling at `rate` per second up to `capacity`, starting full; may go negative.

    `wait_time(amount)` is 0 when `amount` may be taken now, else the seconds until it may: an
    amount above the capacity may be taken once the bucket is full. ``level`` starts it below full
    (for tests that need a server bucket in a given state).
    """

    __slots__ = ("rate", "capacity", "_level", "_stamp", "_clock")

    def __init__(self, rate: float, capacity: float, *, clock: Callable[[], float],
                 level: float | None = None) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be > 0")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._level = capacity if level is None else min(level, capacity)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._stamp:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = max(self._stamp, now)

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    def wait_time(self, amount: float) -> float:
        deficit = min(amount, self.capacity) - self.level
        return deficit / self.rate if deficit > ADMIT_EPSILON else 0.0

    def take(self, amount: float) -> None:
        self._refill()
        self._level -= amount

    def time_to_full(self) -> float:
        """What the ``reset`` header says: seconds until full with no traffic."""
        return max(0.0, (self.capacity - self.level) / self.rate)

    def remaining(self) -> int:
        """What the ``remaining`` header says: whole units left, never negative."""
        return max(0, math.floor(self.level + ADMIT_EPSILON))


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one request: admitted, or refused by `limit` ("requests" / "tokens").

    `retry_after_s` is the time until both buckets would admit it (0 when admitted); `too_large`
    means the charge exceeds the whole per-minute TPM and can never be admitted.
    """

    admitted: bool
    limit: str | None = None
    retry_after_s: float = 0.0
    too_large: bool = False


class ModelBudget:
    """The request and token buckets of one model (or Azure deployment); on the image endpoints
    the second bucket counts images.

    `refused_takes` names the buckets a refused request still takes from (its one request,
    its `charge` of "tokens"), as OpenAI counts failed requests against the per-minute limit;
    the refusal's `retry_after_s` is then the time until the debt is paid. Empty: refusals are
    free. A request too large to ever fit takes only its request.
    """

    __slots__ = ("rpm", "tpm", "requests", "tokens", "refused_takes")

    def __init__(self, rpm: int | None, tpm: int | None, burst_s: float, *,
                 clock: Callable[[], float], refused_takes: tuple[str, ...] = ()) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.requests = (TokenBucket(rpm / 60, rpm / 60 * burst_s, clock=clock)
                         if rpm is not None else None)
        self.tokens = (TokenBucket(tpm / 60, tpm / 60 * burst_s, clock=clock)
                       if tpm is not None else None)
        unknown = set(refused_takes) - {"requests", "tokens"}
        if unknown:
            raise ValueError(f"refused_takes names unknown buckets {sorted(unknown)}")
        self.refused_takes = tuple(refused_takes)

    def admit(self, charge: int) -> Admission:
        """Take one request and `charge` tokens if both buckets allow, else say why and how long."""
        if self.tpm is not None and charge > self.tpm:
            if self.requests and "requests" in self.refused_takes:
                self.requests.take(1)
            return Admission(False, "tokens", 0.0, too_large=True)
        request_wait, token_wait = self._waits(charge)
        if request_wait > 0 or token_wait > 0:
            limit = "requests" if request_wait > 0 else "tokens"
            if self.refused_takes:
                if self.requests and "requests" in self.refused_takes:
                    self.requests.take(1)
                if self.tokens and "tokens" in self.refused_takes:
                    self.tokens.take(charge)
                request_wait, token_wait = self._waits(charge)
            return Admission(False, limit, max(request_wait, token_wait))
        if self.requests:
            self.requests.take(1)
        if self.tokens:
            self.tokens.take(charge)
        return Admission(True)

    def _waits(self, charge: int) -> tuple[float, float]:
        return (self.requests.wait_time(1) if self.requests else 0.0,
                self.tokens.wait_time(charge) if self.tokens else 0.0)

    def used(self, limit: str) -> int:
        bucket = self.requests if limit == "requests" else self.tokens
        return max(0, round(bucket.capacity - bucket.level)) if bucket else 0

    def headers(self, shape: str) -> dict[str, str]:
        """Rate-limit headers as the service sends them: OpenAI's six, or Azure's two remaining-*."""
        out: dict[str, str] = {}
        for name, limit, bucket in (("requests", self.rpm, self.requests),
                                    ("tokens", self.tpm, self.tokens)):
            if bucket is None:
                continue
            remaining = str(bucket.remaining())
            if shape == OPENAI:
                out[f"x-ratelimit-limit-{name}"] = str(limit)
                out[f"x-ratelimit-remaining-{name}"] = remaining
                out[f"x-ratelimit-reset-{name}"] = format_duration(bucket.time_to_full())
            else:
                out[f"x-ratelimit-remaining-{name}"] = remaining
        return out


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit of a budget as headers tell it: `name` "requests" or "tokens", its per-minute
    `limit`, what `remaining` now (negative while in debt), and `reset_s` until fully restored."""

    name: str
    limit: int
    remaining: int
    reset_s: float


def bucket_states(budget: ModelBudget) -> list[LimitState]:
    """The limits of a continuously refilling budget (requests first; unlimited ones left out)."""
    return [LimitState(name, limit, math.floor(bucket.level + ADMIT_EPSILON), bucket.time_to_full())
            for name, limit, bucket in (("requests", budget.rpm, budget.requests),
                                        ("tokens", budget.tpm, budget.tokens))
            if bucket is not None and limit is not None]


class WindowBudget:
    """Fixed-window limits as a gateway keeps them (LiteLLM's proxy, llmock): up to `rpm` requests
    and `tpm` tokens per `window_s` seconds, counted from the window's first request; all may come
    at once, and the counts start again at zero when the window ends.

    A refused request waits for the window's end; its `retry_after_s` is always `window_s`, as
    LiteLLM says, not the time left. Tokens are checked against what the window has used, so a
    charge above the whole `tpm` is admitted into a fresh window (LiteLLM counts a request's tokens
    after answering it) and is never refused as too large.
    """

    __slots__ = ("rpm", "tpm", "window_s", "requests_used", "tokens_used", "windows", "_start",
                 "_clock", "aligned", "refuse_last")

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = RATE_WINDOW_S, *,
                 clock: Callable[[], float], aligned: Callable[[], float] | None = None,
                 refuse_last: bool = False) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self.requests_used = 0
        self.tokens_used = 0
        self.windows = 0  # windows opened so far; the current one's number
        self._start: float | None = None
        self._clock = clock
        self.aligned = aligned  # calendar windows: multiples of window_s on this (wall) clock, as
        # LiteLLM's router counts a deployment's rpm per wall-clock minute
        self.refuse_last = refuse_last  # ... and refuses its rpm-th request: rpm - 1 pass

    def _roll(self) -> float:
        now = self._clock()
        if self._start is not None and now - self._start >= self.window_s:
            self._start = None
            self.requests_used = self.tokens_used = 0
        return now

    def admit(self, charge: int) -> Admission:
        """Count one request and `charge` tokens in the current window if both fit, else refuse."""
        now = self._roll()
        if self.rpm is not None and self.requests_used + 1 > self.rpm - self.refuse_last:
            return Admission(False, "requests", float(self.window_s))
        if self.tpm is not None and self.tokens_used and self.tokens_used + charge > self.tpm:
            return Admission(False, "tokens", float(self.window_s))
        if self._start is None:
            self._start = now if self.aligned is None else now - self.aligned() % self.window_s
            self.windows += 1
        self.requests_used += 1
        self.tokens_used += charge
        return Admission(True)

    def time_left(self) -> float:
        """Seconds until the current window ends (0 when none is open)."""
        now = self._roll()
        return 0.0 if self._start is None else max(0.0, self._start + self.window_s - now)

    def states(self) -> list[LimitState]:
        """The limits as headers tell them (requests first; unlimited ones left out)."""
        left = self.time_left()
        return [LimitState(name, limit, limit - used, left)
                for name, limit, used in (("requests", self.rpm, self.requests_used),
                                          ("tokens", self.tpm, self.tokens_used))
                if limit is not None]


# LiteLLM proxy's names, read in BerriAI/litellm: litellm/proxy/hooks/parallel_request_limiter_v3.py
# (async_post_call_success_hook) and litellm/proxy/hooks/_rate_limit_headers.py. Per limit
# descriptor it sends `x-ratelimit-{descriptor}-remaining-{type}` = limit - used (may go negative)
# and `x-ratelimit-{descriptor}-limit-{type}`, type "requests" / "tokens"; no reset header (its
# docs, docs/proxy/response_headers.md, list OpenAI's six, which it only passes on from a backend).
# The descriptor is "model_per_key" for a key's per-model limit and "api_key" for a key's limit.
LITELLM_DESCRIPTOR = {"model": "model_per_key", "key": "api_key"}


def rate_limit_headers(style: str, shape: str, states: Sequence[LimitState], *,
                       scope: str = "model") -> dict[str, str]:
    """The rate-limit headers a server of `style` (`HEADER_STYLES`) sends for `states`.

    "ietf" follows draft-ietf-httpapi-ratelimit-headers up to -06 (separate fields, still what
    gateways commonly send): `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (whole
    seconds) and `RateLimit-Policy: {limit};w=60`, for one limit: requests when there is an RPM,
    else tokens. Drafts -07 on replaced them with two structured fields, `RateLimit: "default";r=..;t=..`
    and `RateLimit-Policy: "default";q=..;w=..`, which the simulator does not send.
    """
    out: dict[str, str] = {}
    if style == "none" or not states:
        return out
    if style == "ietf":
        state = states[0]
        return {"RateLimit-Limit": str(state.limit),
                "RateLimit-Remaining": str(max(0, state.remaining)),
                "RateLimit-Reset": str(math.ceil(state.reset_s - 1e-9)),
                "RateLimit-Policy": f"{state.limit};w={RATE_WINDOW_S}"}
    for state in states:
        if style == "litellm-router":  # a deployment's limits: OpenAI's names, no reset
            out[f"x-ratelimit-remaining-{state.name}"] = str(max(0, state.remaining))
            out[f"x-ratelimit-limit-{state.name}"] = str(state.limit)
        elif style == "litellm":
            prefix = f"x-ratelimit-{LITELLM_DESCRIPTOR[scope]}"
            out[f"{prefix}-remaining-{state.name}"] = str(state.remaining)
            out[f"{prefix}-limit-{state.name}"] = str(state.limit)
        elif shape == OPENAI:
            out[f"x-ratelimit-limit-{state.name}"] = str(state.limit)
            out[f"x-ratelimit-remaining-{state.name}"] = str(max(0, state.remaining))
            out[f"x-ratelimit-reset-{state.name}"] = format_duration(state.reset_s)
        else:
            out[f"x-ratelimit-remaining-{state.name}"] = str(max(0, state.remaining))
    return out



def rate_limited(shape: str, kind: str, model: str, api_version: str, budget: ModelBudget,
                  verdict: Admission, charge: int, headers: dict[str, str]) -> ApiError:
    if shape == OPENAI and verdict.too_large:
        return ApiError(429, openai_error(
            f"Request too large for {model} in organization {ORGANIZATION} on tokens per min (TPM): "
            f"Limit {budget.tpm}, Requested {charge}. The input or output tokens must be reduced in "
            f"order to run successfully. {_RATE_LIMIT_DOCS}", "tokens", None, "rate_limit_exceeded"),
            headers)
    wait = AZURE_TOO_LARGE_RETRY_S if verdict.too_large else verdict.retry_after_s
    headers["retry-after"] = str(max(1, math.ceil(wait - 1e-9)))
    headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000 - 1e-6)))
    if shape == OPENAI:
        unit, limit = ("RPM", budget.rpm) if verdict.limit == "requests" else ("TPM", budget.tpm)
        requested = 1 if verdict.limit == "requests" else charge
        return ApiError(429, openai_error(
            f"Rate limit reached for {model} in organization {ORGANIZATION} on {verdict.limit} per "
            f"min ({unit}): Limit {limit}, Used {budget.used(verdict.limit)}, Requested {requested}. "
            f"Please try again in {format_duration(wait)}. {_RATE_LIMIT_DOCS}",
            verdict.limit, None, "rate_limit_exceeded"), headers)
    what = "call rate limit" if verdict.limit == "requests" else "token rate limit"
    too_large = (f" This request asks for {charge} tokens, more than the limit of {budget.tpm} "
                 "tokens per minute: it is too large to ever succeed." if verdict.too_large else "")
    return ApiError(429, azure_error("429", (
        f"Requests to the {_AZURE_OPERATION[kind]} Operation under Azure OpenAI API version "
        f"{api_version} have exceeded {what} of your current OpenAI S0 pricing tier.{too_large} "
        f"Please retry after {headers['retry-after']} seconds. Please go here: "
        "https://aka.ms/oai/quotaincrease if you would like to further increase the default rate "
        "limit.")), headers)


def window_limited(verdict: Admission, states: Sequence[LimitState], descriptor: str, value: str,
                    resets_at: float, headers: dict[str, str]) -> ApiError:
    """LiteLLM proxy's 429 for a key over a fixed-window limit (parallel_request_limiter_v3):
    `retry-after` is the window length whatever is left of it, the body's `code` the string "429",
    `type` and `param` the string "None"; the message names the limit descriptor and the hashed key."""
    state = next(s for s in states if s.name == verdict.limit)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(resets_at))
    headers = {**headers, "retry-after": str(math.ceil(verdict.retry_after_s)),
               "rate_limit_type": state.name, "reset_at": stamp}
    return ApiError(429, {"error": {
        "message": f"litellm.RateLimitError: Rate limit exceeded for {descriptor}: {value}. "
                   f"Limit type: {state.name}. Current limit: {state.limit}, Remaining: "
                   f"{max(0, state.remaining)}. Limit resets at: {stamp}",
        "type": "None", "param": "None", "code": "429"}}, headers)


def router_limited(model: str, budget: ModelBudget | WindowBudget) -> ApiError:
    """LiteLLM proxy's 429 when its router has no deployment under its rpm/tpm
    (usage-based-routing-v2): no rate-limit header, the delay only as `llm_provider-retry-after`,
    always 60 (as a real proxy answered it, litellm 1.108.7)."""
    return ApiError(429, {"error": {
        "message": f"litellm.RateLimitError: No deployments available for selected model. Passed "
                   f"model={model}. Deployments={{'{sha_hex(model)}': {{'current_rpm': "
                   f"{getattr(budget, 'requests_used', 0)}, 'rpm_limit': {budget.rpm}}}}}",
        "type": "None", "param": "None", "code": "429"}}, {"llm_provider-retry-after": "60"})
