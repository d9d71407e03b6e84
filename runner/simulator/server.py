"""A simulated OpenAI-compatible API: the project's test double, faithful where the client can tell.

Endpoints (all POST, JSON in and out):

    OpenAI        /v1/chat/completions   /v1/completions   /v1/embeddings
                  auth `Authorization: Bearer KEY`
    Azure         /openai/deployments/{deployment}/{chat/completions|completions|embeddings}?api-version=V
                  auth `api-key: KEY` or `Authorization: Bearer KEY`; the deployment plays the model's
                  role (body `model` optional); a missing `api-version` is a 400
    Azure v1      /openai/v1/{chat/completions|completions|embeddings}   (api-version optional)

What a request meets, in order (the first that applies answers it):

    400  Azure deployment URL without api-version (Azure's `BadRequest` body)
    401  no key / wrong key (OpenAI body masks the key: `sk-abcde***wxyz`; Azure has its own body)
    400  malformed JSON; unknown body field; missing or
         ill-typed model/messages/prompt/input; a list prompt/input longer than 2048; `stream: true`
         (the simulator does not stream); a prompt containing `config.poison`
         (`context_length_exceeded`)
    429  `insufficient_quota` once `config.quota_requests` requests were admitted
    429  request larger than the whole TPM ("Request too large"), never retryable
    429  rate limited on requests or tokens, with `retry-after` / `retry-after-ms`
         -- from here on the request is admitted and charged;
    500  a list prompt/input of 2+ items, with `config.list_prompts == "error"` (blank message);
         then (with `config.serial`, queued for the one slot) the latency; then, with probability
         `config.fault_rate`, one of `config.faults`:
    500 / 503 / connection reset / hang `config.hang_s` then answer / 200 with the body cut in half /
         200 with one choice (or embedding) dropped from a multi-item answer
    200  the answer, its choices in shuffled order (unless `config.shuffle` is False)

Token charge (the server's accounting, which a client must mirror to pace itself), see
`token_charge`: per prompt `ceil(chars / 4)` of its text (chat: the characters of all message
contents) plus `max_tokens * n` (chat: `max_completion_tokens`, else `max_tokens`, else 0;
completions: `max_tokens`, else 16); embeddings: `ceil(chars / 4)` per input.
`SimConfig.charge_factor` scales it, to play a service whose accounting differs from that rule.

Rate limits are two continuously refilling token buckets per model (deployment on Azure): requests
at `rpm / 60` per second and tokens at `tpm / 60` per second, each holding `rate * burst_s`. A request
is admitted when both buckets hold its cost; a cost larger than a bucket's capacity is admitted when
that bucket is full and drives it negative (debt). The buckets read an injected clock, so their
arithmetic is tested without sleeping (`TokenBucket`, `ModelBudget`). Opt-in, as gateways do: one
budget per API key instead of per model (`budget_scope`), fixed 60 s windows instead of buckets
(`WindowBudget`, `limiter`), and other rate-limit header names (`rate_limit_headers`).

Answers are pure functions of the input (`completion_text`, `chat_prompt`, `embedding_vector`), so a
test can compute what each job must get back.

The hosted Batch API (Files and Batches endpoints) is `runner.simulator.batches`, installed on the
same app; each batch line is answered by `Simulator.answer_line`, this module's own logic.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from runner.simulator.batches import BatchConfig, BatchService

# ---------------------------------------------------------------------------------------------
# Policy numbers
# ---------------------------------------------------------------------------------------------
CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = {"chat": 0, "completions": 16}  # when the body names no max_tokens
MAX_BODY_BYTES = 64 * 1024 * 1024  # aiohttp's 1 MiB default would refuse big packed requests
MAX_LIST_ITEMS = 2048  # longest list `prompt` / `input`
MAX_N = 128
MAX_EMBEDDING_DIMS = 3072
DEFAULT_EMBEDDING_DIMS = 8
CONTEXT_LIMIT_TOKENS = 128_000  # quoted in the poison (context length) error
LATENCY_JITTER = 0.1  # latency is latency_ms * (1 +- up to this fraction)
ADMIT_EPSILON = 1e-9  # tolerance so a client that waited exactly retry-after is admitted
AZURE_TOO_LARGE_RETRY_S = 86_400  # what Azure tells a request that can never fit
SHUTDOWN_GRACE_S = 0.5  # stop() waits this long for handlers still running (e.g. a hang)
ORGANIZATION = "org-sim"
OPENAI_VERSION = "2020-10-01"
RATE_WINDOW_S = 60  # every limit here is per minute; the IETF policy's `w`
AZURE_DEFAULT_API_VERSION = "v1"  # quoted in Azure v1-shape messages when no api-version is given

KNOWN_FAULTS = frozenset({"500", "503", "hang", "reset", "truncated", "missing_choice"})

# The opt-in behaviours of other servers (SimConfig fields), each value's first entry the default
LIST_PROMPT_MODES = ("ok", "ignore", "error")
BUDGET_SCOPES = ("model", "key")
HEADER_STYLES = ("openai", "litellm", "litellm-router", "ietf", "none")
LIMITERS = ("bucket", "window", "minute")

CHAT, COMPLETIONS, EMBEDDINGS = "chat", "completions", "embeddings"
OPENAI, AZURE, AZURE_V1 = "openai", "azure", "azure_v1"

_ALLOWED_FIELDS: Mapping[str, frozenset[str]] = {
    CHAT: frozenset({
        "model", "messages", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stop", "seed", "user", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs",
        "top_logprobs", "response_format", "tools", "tool_choice", "parallel_tool_calls", "stream",
        "stream_options", "metadata", "store", "service_tier", "reasoning_effort", "modalities",
        "prediction", "audio", "functions", "function_call", "web_search_options",
        "prompt_cache_key", "safety_identifier", "verbosity",
    }),
    COMPLETIONS: frozenset({
        "model", "prompt", "suffix", "n", "max_tokens", "temperature", "top_p", "stop", "seed",
        "user", "logprobs", "echo", "best_of", "logit_bias", "frequency_penalty",
        "presence_penalty", "stream", "stream_options",
    }),
    EMBEDDINGS: frozenset({"model", "input", "encoding_format", "dimensions", "user"}),
}
_PROMPT_FIELD = {CHAT: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input"}
_PATH_TAILS = ((CHAT, "/chat/completions"), (COMPLETIONS, "/completions"), (EMBEDDINGS, "/embeddings"))
_AZURE_OPERATION = {CHAT: "ChatCompletions_Create", COMPLETIONS: "Completions_Create",
                    EMBEDDINGS: "Embeddings_Create"}
_RATE_LIMIT_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."


# ---------------------------------------------------------------------------------------------
# Pure answers and accounting
# ---------------------------------------------------------------------------------------------
def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def completion_text(prompt: str, j: int) -> str:
    """The text of choice `j` for `prompt`: `"sim:" + sha256(prompt)[:12] + "#j"`."""
    return f"sim:{_sha(prompt)[:12]}#{j}"


CLASSIFIER_TOKENS = ("15", "16", "17", "18", "19")  # candidate token ids when no logit_bias names any


def completion_logprobs(prompt: str, j: int, top: int,
                        logit_bias: Mapping[str, float] | None = None) -> tuple[str, dict[str, Any]]:
    """(text, logprobs) of choice `j` for `prompt` when `logprobs=top` is asked: one token, the
    most likely of the candidates (the token ids `logit_bias` names, else `CLASSIFIER_TOKENS`),
    each candidate's logit derived from the prompt plus its bias, as a fine-tuned classifier
    called with `max_tokens: 1` answers. The token of id `t` reads `" t<id>"`."""
    bias = {str(k): float(v) for k, v in (logit_bias or {}).items()}
    candidates = sorted(bias) or list(CLASSIFIER_TOKENS)
    logits = {t: -int(_sha(f"{prompt}#{j}#{t}")[:4], 16) / 8192 + bias.get(t, 0.0) / 10
              for t in candidates}
    peak = max(logits.values())
    norm = peak + math.log(sum(math.exp(v - peak) for v in logits.values()))
    ranked = sorted(candidates, key=lambda t: (-logits[t], t))
    best = ranked[0]
    text = f" t{best}"
    return text, {"tokens": [text], "token_logprobs": [round(logits[best] - norm, 6)],
                  "top_logprobs": [{f" t{t}": round(logits[t] - norm, 6) for t in ranked[:top]}],
                  "text_offset": [len(prompt)]}


def chat_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt text of a chat request: all message contents concatenated with no separator.

    A content given as a list of parts contributes its text parts; `None` contributes nothing.
    `len(chat_prompt(messages))` is the character count the token charge uses.
    """
    out: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(part["text"] for part in content
                       if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return "".join(out)


def embedding_vector(text: str, dims: int = DEFAULT_EMBEDDING_DIMS) -> list[float]:
    """A deterministic unit-length vector of `dims` floats derived from `text`."""
    raw: list[float] = []
    block = 0
    while len(raw) < dims:
        digest = hashlib.sha256(f"{block}:{text}".encode("utf-8")).digest()
        raw.extend(int.from_bytes(digest[k:k + 4], "big") / 2**31 - 1.0 for k in range(0, 32, 4))
        block += 1
    raw = raw[:dims]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def text_tokens(text: str) -> int:
    """The simulator's token estimate of a text: `ceil(len(text) / 4)`."""
    return -(-len(text) // CHARS_PER_TOKEN)


def token_charge(kind: str, prompts: Sequence[str], *, n: int = 1,
                 max_tokens: int | None = None) -> int:
    """Tokens a request costs against the TPM bucket; `kind` is "chat", "completions" or "embeddings".

    Per prompt: `text_tokens(prompt) + max_tokens * n`, where a missing `max_tokens` means
    `DEFAULT_MAX_TOKENS[kind]` (chat 0, completions 16); embeddings cost `text_tokens` per input.
    """
    prompt_cost = sum(text_tokens(p) for p in prompts)
    if kind == EMBEDDINGS:
        return prompt_cost
    out = DEFAULT_MAX_TOKENS[kind] if max_tokens is None else max_tokens
    return prompt_cost + out * n * len(prompts)


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


def mask_key(key: str) -> str:
    """A key as OpenAI shows it in errors: at most 8 leading and 4 trailing characters, never all."""
    head = min(8, max(0, len(key) // 2 - 1))
    tail = min(4, len(key) // 4)
    return key[:head] + "*" * max(1, len(key) - head - tail) + (key[-tail:] if tail else "")


# ---------------------------------------------------------------------------------------------
# Configuration and statistics
# ---------------------------------------------------------------------------------------------
def _check_number(name: str, value: float, *, minimum: float, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulated service behaves; checked when built (bad values raise `ValueError`).

    rpm, tpm: per-model limits (None = unlimited). burst_s: each bucket holds `rate * burst_s`
    (60 s = one minute's worth). latency_ms: mean delay before an admitted request is answered
    (+-10 % seeded jitter). fault_rate: probability that an admitted request meets one of `faults`
    (names from `KNOWN_FAULTS`). hang_s: how long the "hang" fault stalls. quota_requests: requests
    admitted before every request gets `insufficient_quota`. poison: a substring that makes a
    request fail with `context_length_exceeded`. shuffle: return choices out of order. seed: seeds
    the simulator's random source. api_key: the only key accepted (None = any non-empty key).
    charge_factor: the server charges `ceil(token_charge × charge_factor)` tokens per request, so a
    test can play a service whose accounting differs from the client's estimate (1.0 = the
    documented rule).

    Behaviours of other OpenAI-compatible servers, each off by default:

    list_prompts: what a list `prompt` (completions) or `input` (embeddings) of two or more items
    gets. "ok": every item answered. "ignore": only the first item is served, charged and answered
    (one choice per `n`, one embedding, usage for one), as a gateway mock does; the rest is dropped
    without a word. "error": the request is admitted and charged, then answered 500 with a blank
    error message, as a local server that takes one prompt does. A one-item list or a string is
    always served normally.
    honour_n: False plays a server that drops `n`: completions and chat get one choice (index 0)
    whatever `n` asks, and are charged for one.
    budget_scope: "model" keeps one RPM/TPM budget per model (deployment on Azure), as OpenAI does;
    "key" one per API key shared by every model, as LiteLLM's per-key limits and llmock do.
    limiter: "bucket" is OpenAI's continuously refilling buckets (above); "window" a gateway's fixed
    windows (`WindowBudget`): up to `rpm` requests and `tpm` tokens per 60 s from the window's first
    request, all at once, then 429 with `retry-after: 60` and LiteLLM's body until the window ends
    (`burst_s` unused); "minute" the same per calendar minute (multiples of 60 s on the clock), as
    LiteLLM's router counts a deployment's rpm.
    serial: True plays a local model server with one slot: admitted requests queue and are worked
    on one after another in arrival order, each taking `latency_ms`; a request whose client has
    gone (timed out) is still worked on before the next (`SimStats.abandoned`).
    ipm, image_url_ttl_s, download_fault_rate: the image endpoints' images-per-minute limit, how
    long a `url` answer can be downloaded, and the chance a download fails (`routes`, `images`).
    header_style: the rate-limit headers on every answer (see `rate_limit_headers`). "openai":
    OpenAI's six `x-ratelimit-*` (Azure URLs: its two remaining-*); "litellm": LiteLLM proxy's
    `x-ratelimit-{model_per_key|api_key}-{remaining|limit}-{requests|tokens}`, no reset;
    "litellm-router": its router's, for a deployment's limits: OpenAI's limit and remaining names, no
    reset, and 429s with no rate-limit header and only `llm_provider-retry-after: 60`; its windows
    refuse their rpm-th request (`rpm - 1` pass, as LiteLLM 1.108.7's router does); "ietf":
    the IETF draft's `RateLimit-Limit/-Remaining/-Reset/-Policy`; "none": no rate-limit headers.
    """

    rpm: int | None = None
    tpm: int | None = None
    burst_s: float = 60.0
    latency_ms: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = ("500", "503", "reset", "truncated")
    hang_s: float = 30.0
    quota_requests: int | None = None
    poison: str | None = None
    shuffle: bool = True
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)
    charge_factor: float = 1.0
    list_prompts: str = "ok"
    honour_n: bool = True
    budget_scope: str = "model"
    header_style: str = "openai"
    limiter: str = "bucket"
    serial: bool = False
    ipm: int | None = None  # images per minute per image model (runner.simulator.routes)
    image_url_ttl_s: float = 3600.0  # `url` image answers expire after this
    download_fault_rate: float = 0.0  # a GET of an image URL answers 500 with this probability

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "quota_requests", "ipm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an int or None, got {value!r}")
        for name in ("rpm", "tpm"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), minimum=0, strict=True)
        if self.quota_requests is not None:
            _check_number("quota_requests", self.quota_requests, minimum=0, strict=False)
        _check_number("burst_s", self.burst_s, minimum=0, strict=True)
        _check_number("latency_ms", self.latency_ms, minimum=0, strict=False)
        _check_number("hang_s", self.hang_s, minimum=0, strict=False)
        _check_number("fault_rate", self.fault_rate, minimum=0, strict=False)
        _check_number("charge_factor", self.charge_factor, minimum=0, strict=True)
        if self.fault_rate > 1:
            raise ValueError(f"fault_rate must be <= 1, got {self.fault_rate!r}")
        if isinstance(self.faults, str):
            raise ValueError("faults must be a tuple of fault names, not a string")
        object.__setattr__(self, "faults", tuple(self.faults))
        unknown = sorted(set(self.faults) - KNOWN_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(KNOWN_FAULTS)}")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault")
        if self.poison is not None and (not isinstance(self.poison, str) or not self.poison):
            raise ValueError("poison must be a non-empty string or None")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        _check_choice("list_prompts", self.list_prompts, LIST_PROMPT_MODES)
        _check_flag("honour_n", self.honour_n)
        _check_choice("budget_scope", self.budget_scope, BUDGET_SCOPES)
        _check_choice("header_style", self.header_style, HEADER_STYLES)
        _check_choice("limiter", self.limiter, LIMITERS)
        _check_flag("serial", self.serial)


@dataclass(slots=True)
class SimStats:
    """What the simulator saw; mutated by the server, read by tests.

    `answered` counts, per prompt text, the prompts whose every choice was delivered in a complete
    200 body to a client still connected: a prompt answered twice shows a count of 2.
    `tokens_charged` sums the token charge of admitted requests (as served: after any dropped list
    items or `n`). `served` counts admitted requests the server worked on to the end of their
    latency (and hang), whether or not anyone was still waiting; `abandoned` those of them whose
    client had gone by then: work done for nobody. `working` / `max_working`: requests inside their
    latency now / at most at once (1 with `serial`).
    """

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    rate_limited: int = 0  # every 429, including quota and too-large
    answered: Counter[str] = field(default_factory=Counter)
    tokens_charged: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    dropped_prompts: int = 0  # list items left unserved (`list_prompts="ignore"`)
    dropped_choices: int = 0  # choices asked by `n` and not produced (`honour_n=False`)
    by_key: Counter[str] = field(default_factory=Counter)  # admitted requests per API key
    # `limiter="window"`: admitted requests per (budget, window number counted from 1)
    by_window: Counter[tuple[str, int]] = field(default_factory=Counter)
    served: int = 0
    abandoned: int = 0
    working: int = 0
    max_working: int = 0


# ---------------------------------------------------------------------------------------------
# Rate limiting (pure, on an injected clock)
# ---------------------------------------------------------------------------------------------
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
    """The request and token buckets of one model (or Azure deployment)."""

    __slots__ = ("rpm", "tpm", "requests", "tokens")

    def __init__(self, rpm: int | None, tpm: int | None, burst_s: float, *,
                 clock: Callable[[], float]) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.requests = (TokenBucket(rpm / 60, rpm / 60 * burst_s, clock=clock)
                         if rpm is not None else None)
        self.tokens = (TokenBucket(tpm / 60, tpm / 60 * burst_s, clock=clock)
                       if tpm is not None else None)

    def admit(self, charge: int) -> Admission:
        """Take one request and `charge` tokens if both buckets allow, else say why and how long."""
        if self.tpm is not None and charge > self.tpm:
            return Admission(False, "tokens", 0.0, too_large=True)
        request_wait = self.requests.wait_time(1) if self.requests else 0.0
        token_wait = self.tokens.wait_time(charge) if self.tokens else 0.0
        if request_wait > 0 or token_wait > 0:
            limit = "requests" if request_wait > 0 else "tokens"
            return Admission(False, limit, max(request_wait, token_wait))
        if self.requests:
            self.requests.take(1)
        if self.tokens:
            self.tokens.take(charge)
        return Admission(True)

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


# ---------------------------------------------------------------------------------------------
# Request parsing (pure)
# ---------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An answer other than 200, carrying the status, JSON body and extra headers to send."""

    def __init__(self, status: int, body: dict[str, Any],
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def openai_error(message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, openai_error(message, param=param, code=code))


@dataclass(frozen=True, slots=True)
class SimRequest:
    """A validated request: its kind, model, prompt texts (one per prompt/input), n and options."""

    kind: str
    model: str
    prompts: tuple[str, ...]
    n: int = 1
    max_tokens: int | None = None
    echo: bool = False
    dims: int = DEFAULT_EMBEDDING_DIMS
    base64: bool = False
    logprobs: int | None = None  # completions: top logprobs asked
    logit_bias: Mapping[str, float] | None = None

    @property
    def charge(self) -> int:
        return token_charge(self.kind, self.prompts, n=self.n, max_tokens=self.max_tokens)


def _int_field(body: Mapping[str, Any], name: str, *, minimum: int,
               maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"Invalid type for '{name}': expected an integer, but got "
                   f"{type(value).__name__} instead.", name, "invalid_type")
    if value < minimum:
        raise _bad(f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
                   f"but got {value} instead.", name, "integer_below_min_value")
    if maximum is not None and value > maximum:
        raise _bad(f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, "
                   f"but got {value} instead.", name, "integer_above_max_value")
    return value


def _text_list(body: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        raise _bad(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"Invalid type for '{name}': expected a string or an array of strings.",
                   name, "invalid_type")
    if not value:
        raise _bad(f"Invalid '{name}': empty array. Expected an array with minimum length 1, "
                   "but got an empty array instead.", name, "empty_array")
    if len(value) > MAX_LIST_ITEMS:
        raise _bad(f"Invalid '{name}': array too long. Expected an array with maximum length "
                   f"{MAX_LIST_ITEMS}, but got an array with length {len(value)} instead.",
                   name, "array_above_max_length")
    return tuple(value)


def parse_request(kind: str, body: Any, deployment: str | None = None) -> SimRequest:
    """Validate a request body the way the service does; raise `ApiError` (400) when it would.

    `deployment` (Azure deployment URLs) stands in for the model when the body names none.
    """
    if not isinstance(body, dict):
        raise _bad("Invalid request body: expected a JSON object.")
    unknown = sorted(set(body) - _ALLOWED_FIELDS[kind])
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise _bad(f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}")
    model = deployment or body.get("model")
    if not model:
        raise _bad("you must provide a model parameter")
    if not isinstance(model, str):
        raise _bad("Invalid type for 'model': expected a string.", "model", "invalid_type")
    if body.get("stream"):
        raise _bad("The simulator does not stream; send stream=false.", "stream", "unsupported_value")
    if kind == EMBEDDINGS:
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise _bad(f"Invalid value for 'encoding_format': '{fmt}'. Supported values are: "
                       "'float' and 'base64'.", "encoding_format", "invalid_value")
        dims = _int_field(body, "dimensions", minimum=1, maximum=MAX_EMBEDDING_DIMS)
        return SimRequest(kind, model, _text_list(body, "input"),
                          dims=dims or DEFAULT_EMBEDDING_DIMS, base64=fmt == "base64")
    n = _int_field(body, "n", minimum=1, maximum=MAX_N) or 1
    if kind == CHAT:
        messages = body.get("messages")
        if messages is None:
            raise _bad("Missing required parameter: 'messages'.", "messages",
                       "missing_required_parameter")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _bad("Invalid type for 'messages': expected an array of objects.", "messages",
                       "invalid_type")
        if not messages:
            raise _bad("Invalid 'messages': empty array. Expected an array with minimum length 1, "
                       "but got an empty array instead.", "messages", "empty_array")
        max_tokens = _int_field(body, "max_completion_tokens", minimum=1)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", minimum=1)
        return SimRequest(kind, model, (chat_prompt(messages),), n=n, max_tokens=max_tokens)
    bias = body.get("logit_bias")
    if bias is not None and not (isinstance(bias, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and -100 <= v <= 100
            for v in bias.values())):
        raise _bad("Invalid 'logit_bias': expected a map of token ids to numbers in [-100, 100].",
                   "logit_bias", "invalid_value")
    return SimRequest(kind, model, _text_list(body, "prompt"), n=n,
                      max_tokens=_int_field(body, "max_tokens", minimum=0),
                      echo=bool(body.get("echo")),
                      logprobs=_int_field(body, "logprobs", minimum=0, maximum=5),
                      logit_bias=bias)


def build_answer(req: SimRequest, *, rng: random.Random, shuffle: bool, created: int,
                 response_id: str) -> dict[str, Any]:
    """The 200 body for `req`: choices (or embeddings) with correct indices, usage, OpenAI shapes."""
    prompt_tokens = sum(text_tokens(p) for p in req.prompts)
    if req.kind == EMBEDDINGS:
        items: list[dict[str, Any]] = []
        for i, text in enumerate(req.prompts):
            vector = embedding_vector(text, req.dims)
            embedding: Any = (base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                              if req.base64 else vector)
            items.append({"object": "embedding", "index": i, "embedding": embedding})
        if shuffle:
            rng.shuffle(items)
        return {"object": "list", "data": items, "model": req.model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for position, prompt in enumerate(req.prompts):
        for j in range(req.n):
            text = completion_text(prompt, j)
            completion_tokens += text_tokens(text)
            if req.kind == CHAT:
                choices.append({"index": j, "message": {"role": "assistant", "content": text,
                                                        "refusal": None},
                                "logprobs": None, "finish_reason": "stop"})
            else:
                logprobs = None
                if req.logprobs is not None:
                    text, logprobs = completion_logprobs(prompt, j, req.logprobs, req.logit_bias)
                choices.append({"text": prompt + text if req.echo else text,
                                "index": position * req.n + j, "logprobs": logprobs,
                                "finish_reason": "length" if logprobs else "stop"})
    if shuffle:
        rng.shuffle(choices)
    return {"id": response_id, "object": "chat.completion" if req.kind == CHAT else "text_completion",
            "created": created, "model": req.model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "system_fingerprint": "fp_sim"}


def answer_for(path: str, body: Any) -> dict[str, Any]:
    """The 200 body the simulator sends for `body` POSTed to `path` (any URL shape above, query
    ignored) when no rate limit or fault applies, its choices in index order; raises `ApiError`
    where the simulator answers 400. For tests whose `send` function stands in for the server."""
    path = path.split("?", 1)[0]
    kind = next((k for k, tail in _PATH_TAILS if path.endswith(tail)), None)
    if kind is None:
        raise ValueError(f"not a path the simulator serves: {path!r}")
    deployment = path.split("/openai/deployments/", 1)[1].split("/", 1)[0] \
        if "/openai/deployments/" in path else None
    return build_answer(parse_request(kind, body, deployment), rng=random.Random(0), shuffle=False,
                        created=0, response_id=("chatcmpl-" if kind == CHAT else "cmpl-") +
                        _sha(orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode())[:29])


# ---------------------------------------------------------------------------------------------
# Error bodies of the two services
# ---------------------------------------------------------------------------------------------
def _azure_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _rate_limited(shape: str, kind: str, model: str, api_version: str, budget: ModelBudget,
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
    return ApiError(429, _azure_error("429", (
        f"Requests to the {_AZURE_OPERATION[kind]} Operation under Azure OpenAI API version "
        f"{api_version} have exceeded {what} of your current OpenAI S0 pricing tier.{too_large} "
        f"Please retry after {headers['retry-after']} seconds. Please go here: "
        "https://aka.ms/oai/quotaincrease if you would like to further increase the default rate "
        "limit.")), headers)


def _window_limited(verdict: Admission, states: Sequence[LimitState], descriptor: str, value: str,
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


def _router_limited(model: str, budget: ModelBudget | WindowBudget) -> ApiError:
    """LiteLLM proxy's 429 when its router has no deployment under its rpm/tpm
    (usage-based-routing-v2): no rate-limit header, the delay only as `llm_provider-retry-after`,
    always 60 (as a real proxy answered it, litellm 1.108.7)."""
    return ApiError(429, {"error": {
        "message": f"litellm.RateLimitError: No deployments available for selected model. Passed "
                   f"model={model}. Deployments={{'{_sha(model)}': {{'current_rpm': "
                   f"{getattr(budget, 'requests_used', 0)}, 'rpm_limit': {budget.rpm}}}}}",
        "type": "None", "param": "None", "code": "429"}}, {"llm_provider-retry-after": "60"})


_QUOTA_ERROR = openai_error(
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota", None, "insufficient_quota")
_SERVER_ERROR = openai_error(
    "The server had an error while processing your request. Sorry about that!", "server_error")
_OVERLOADED_ERROR = openai_error(
    "That model is currently overloaded with other requests. You can retry your request, or "
    "contact us through our help center at help.openai.com if the error persists.",
    "server_error")
# A server that cannot take a list prompt fails inside, with nothing to say: LiteLLM's proxy
# renders such an exception with the strings "None" for type and param and the status as code.
_BLANK_SERVER_ERROR = {"error": {"message": "", "type": "None", "param": "None", "code": "500"}}
_MALFORMED_JSON = openai_error(
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)")
_NO_KEY = openai_error(
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
    "username) if you're accessing the API from your browser and are prompted for a username and "
    "password. You can obtain an API key from https://platform.openai.com/account/api-keys.")
_AZURE_DENIED = _azure_error(
    "401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API endpoint for "
    "your resource.")


def _poisoned(kind: str, tokens: int) -> ApiError:
    asked = CONTEXT_LIMIT_TOKENS + 1 + tokens
    return ApiError(400, openai_error(
        f"This model's maximum context length is {CONTEXT_LIMIT_TOKENS} tokens. However, your "
        f"{_PROMPT_FIELD[kind]} resulted in {asked} tokens. Please reduce the length of the "
        f"{_PROMPT_FIELD[kind]}.", "invalid_request_error", _PROMPT_FIELD[kind],
        "context_length_exceeded"))


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------
class _ConnectionDropped(Exception):
    """The handler closed the connection on purpose (the "reset" fault); nothing is sent."""


class Simulator:
    """The simulated service: `await start()` binds it, `stats` tells what it saw, `stop()` ends it.

    `clock` drives the rate-limit buckets (monotonic seconds); `rng` drives shuffling, faults and
    latency jitter (default `random.Random(config.seed)`); `sleep` is awaited for latency and hangs;
    `wall_clock` gives the `created` timestamps.
    """

    def __init__(self, config: SimConfig = SimConfig(), *,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 wall_clock: Callable[[], float] = time.time,
                 batch: BatchConfig | None = None) -> None:
        self.config = config
        self.stats = SimStats()
        self._clock = clock
        self._rng = rng if rng is not None else random.Random(config.seed)
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._budgets: dict[str, ModelBudget | WindowBudget] = {}
        self._admitted = 0  # toward config.quota_requests
        self._slot = asyncio.Lock()  # the one slot of a serial server
        self._serial_tasks: set[asyncio.Future[web.Response]] = set()
        self._ids = 0
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port = 0
        self.app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        for kind, tail in ((CHAT, "chat/completions"), (COMPLETIONS, "completions"),
                           (EMBEDDINGS, "embeddings")):
            self.app.router.add_post(f"/v1/{tail}", self._handler(kind, OPENAI))
            self.app.router.add_post(f"/openai/deployments/{{deployment}}/{tail}",
                                     self._handler(kind, AZURE))
            self.app.router.add_post(f"/openai/v1/{tail}", self._handler(kind, AZURE_V1))
        from runner.simulator.routes import add_routes  # Responses, moderations, images
        add_routes(self)
        self.batches = BatchService(self, batch or BatchConfig())  # the hosted Batch API
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
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; handlers still running after `SHUTDOWN_GRACE_S`, and serial work still
        queued or running, are cancelled."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.batches.stop()
        leftover = list(self._serial_tasks)  # work of serial requests nobody waits for any more
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
        if name not in self._budgets:
            config = self.config
            self._budgets[name] = (
                WindowBudget(config.rpm, config.tpm, clock=self._clock,
                             aligned=self._wall_clock if config.limiter == "minute" else None,
                             refuse_last=config.header_style == "litellm-router")
                if config.limiter in ("window", "minute") else
                ModelBudget(config.rpm, config.tpm, config.burst_s, clock=self._clock))
        return self._budgets[name]

    # -- plumbing ----------------------------------------------------------------------------
    def _next_id(self, prefix: str, length: int) -> str:
        """Unique, deterministic ids (they do not draw on the rng, so faults stay reproducible)."""
        self._ids += 1
        return prefix + _sha(f"{self.config.seed}:{self._ids}")[:length]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        request_id = self._next_id("req_", 32)
        try:
            try:
                response = await handler(request)
            except _ConnectionDropped:
                return web.Response(status=499)  # never written: the transport is closed
            except web.HTTPException as exc:  # the router's 404 / 405, a body over MAX_BODY_BYTES
                where = f"({request.method} {request.path})"
                message = {404: f"Invalid URL {where}", 405: f"Invalid method for URL {where}"}
                response = _json(exc.status, openai_error(message.get(exc.status, exc.reason)))
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

    def _handler(self, kind: str, shape: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                return await self._serve(request, kind, shape)
            except ApiError as err:
                return _json(err.status, err.body, err.headers)
        return handle

    def _check_auth(self, request: web.Request, shape: str) -> str:
        """The request's API key; raises the service's 401 when it has none or a wrong one."""
        bearer = request.headers.get("Authorization", "")
        scheme, _, token = bearer.partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
        if shape != OPENAI:
            key = key or request.headers.get("api-key", "").strip()
            if not key or (self.config.api_key is not None and key != self.config.api_key):
                raise ApiError(401, _AZURE_DENIED)
            return key
        if not key:
            raise ApiError(401, _NO_KEY)
        if self.config.api_key is not None and key != self.config.api_key:
            raise ApiError(401, openai_error(
                f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", code="invalid_api_key"))
        return key

    # -- the request path --------------------------------------------------------------------
    async def _serve(self, request: web.Request, kind: str, shape: str) -> web.Response:
        config = self.config
        api_version = request.query.get("api-version", "")
        if shape == AZURE and not api_version:
            raise ApiError(400, _azure_error("BadRequest",
                                             "Missing required query parameter: api-version"))
        key = self._check_auth(request, shape)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, _MALFORMED_JSON) from None
        req = parse_request(kind, body, request.match_info.get("deployment"))
        listed = len(req.prompts) > 1
        req = self._as_served(req)
        if config.poison is not None and any(config.poison in p for p in req.prompts):
            raise _poisoned(kind, sum(text_tokens(p) for p in req.prompts))
        if config.quota_requests is not None and self._admitted >= config.quota_requests:
            raise ApiError(429, _QUOTA_ERROR)
        budget_name = key if config.budget_scope == "key" else req.model
        budget = self.budget(budget_name)
        charge = req.charge if config.charge_factor == 1 else \
            math.ceil(round(req.charge * config.charge_factor, 6))  # round: 100 × 1.1 is 111 else
        verdict = budget.admit(charge)
        states = budget.states() if isinstance(budget, WindowBudget) else bucket_states(budget)
        headers = rate_limit_headers(config.header_style, shape, states, scope=config.budget_scope)
        if not verdict.admitted:
            if config.header_style == "litellm-router":
                raise _router_limited(req.model, budget)
            if isinstance(budget, WindowBudget):
                hashed = _sha(key)  # LiteLLM names a key by its sha256
                value = hashed if config.budget_scope == "key" else f"{hashed}:{req.model}"
                raise _window_limited(verdict, states, LITELLM_DESCRIPTOR[config.budget_scope],
                                      value, self._wall_clock() + RATE_WINDOW_S, headers)
            raise _rate_limited(shape, kind, req.model, api_version or AZURE_DEFAULT_API_VERSION,
                                budget, verdict, charge, headers)
        self._admitted += 1
        self.stats.tokens_charged += charge
        self.stats.by_key[key] += 1
        if isinstance(budget, WindowBudget):
            self.stats.by_window[budget_name, budget.windows] += 1
        if listed and config.list_prompts == "error":
            raise ApiError(500, _BLANK_SERVER_ERROR, headers)
        fault = self._pick_fault()
        work = self._work(request, req, fault, headers)
        return await (self._in_turn(work) if config.serial else work)

    async def _work(self, request: web.Request, req: SimRequest, fault: str | None,
                    headers: Mapping[str, str]) -> web.Response:
        """The admitted request's answer, or its fault, after the latency (and any hang).

        Counted in `stats.served` once the latency is over, and in `stats.abandoned` too when its
        client has gone by then (the work was wasted); not counted when cancelled before.
        """
        config, stats = self.config, self.stats
        stats.working += 1
        stats.max_working = max(stats.max_working, stats.working)
        try:
            if config.latency_ms > 0:
                jitter = 1 + self._rng.uniform(-LATENCY_JITTER, LATENCY_JITTER)
                await self._sleep(config.latency_ms * jitter / 1000)
            if fault == "hang":
                await self._sleep(config.hang_s)
        finally:
            stats.working -= 1
        stats.served += 1
        if _client_gone(request):
            stats.abandoned += 1
        if fault == "500":
            raise ApiError(500, _SERVER_ERROR)
        if fault == "503":
            raise ApiError(503, _OVERLOADED_ERROR)
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise _ConnectionDropped
        kind = req.kind
        answer = build_answer(req, rng=self._rng, shuffle=config.shuffle,
                              created=int(self._wall_clock()),
                              response_id=self._next_id("chatcmpl-" if kind == CHAT else "cmpl-", 29))
        items = answer["data" if kind == EMBEDDINGS else "choices"]
        if fault == "missing_choice" and len(items) > 1:
            items.pop(self._rng.randrange(len(items)))
        raw = orjson.dumps(answer)
        if fault == "truncated":
            raw = raw[:len(raw) // 2]
        elif not _client_gone(request):
            self._count_answered(req, items)
        return web.Response(status=200, body=raw, content_type="application/json", headers=headers)

    async def _in_turn(self, work: Coroutine[Any, Any, web.Response]) -> web.Response:
        """`work` done when the server's one slot is free, in arrival order (`config.serial`).

        The work is shielded: a client that leaves (times out) cancels its wait, not the work, which
        keeps the slot until done, as a one-slot local server keeps generating for nobody.
        """
        async def queued() -> web.Response:
            try:
                async with self._slot:
                    return await work
            finally:
                work.close()  # never started when cancelled in the queue (stop())

        task = asyncio.ensure_future(queued())
        self._serial_tasks.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    def _forget(self, task: asyncio.Future[web.Response]) -> None:
        self._serial_tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned request's fault is nobody's error

    def _as_served(self, req: SimRequest) -> SimRequest:
        """`req` as this server takes it: without the list items or `n` it does not honour."""
        config = self.config
        if len(req.prompts) > 1 and config.list_prompts == "ignore":
            self.stats.dropped_prompts += len(req.prompts) - 1
            req = replace(req, prompts=req.prompts[:1])
        if req.n > 1 and not config.honour_n:
            self.stats.dropped_choices += (req.n - 1) * len(req.prompts)
            req = replace(req, n=1)
        return req

    def answer_line(self, kind: str, body: Any, deployment: str | None = None
                    ) -> tuple[int, dict[str, Any]]:
        """(status, body) for one line of a hosted batch, by the live path's own rules (parsing,
        poison, the fault draw, the deterministic answer), without rate limits or latency: 500
        and 503 stand for every fault that breaks an answer, as the Batch API reports them."""
        try:
            req = self._as_served(parse_request(kind, body, deployment))
            if self.config.poison is not None and any(self.config.poison in p for p in req.prompts):
                raise _poisoned(kind, sum(text_tokens(p) for p in req.prompts))
        except ApiError as err:
            return err.status, err.body
        fault = self._pick_fault()
        if fault == "503":
            return 503, _OVERLOADED_ERROR
        if fault in ("500", "reset", "hang", "truncated"):
            return 500, _SERVER_ERROR
        answer = build_answer(req, rng=self._rng, shuffle=self.config.shuffle,
                              created=int(self._wall_clock()),
                              response_id=self._next_id("chatcmpl-" if kind == CHAT else "cmpl-", 29))
        items = answer["data" if kind == EMBEDDINGS else "choices"]
        if fault == "missing_choice" and len(items) > 1:
            items.pop(self._rng.randrange(len(items)))
        else:
            self._count_answered(req, items)
        return 200, answer

    def _pick_fault(self) -> str | None:
        config = self.config
        if config.fault_rate <= 0 or self._rng.random() >= config.fault_rate:
            return None
        fault = self._rng.choice(config.faults)
        self.stats.faults[fault] += 1
        return fault

    def _count_answered(self, req: SimRequest, items: list[dict[str, Any]]) -> None:
        per_prompt = 1 if req.kind == EMBEDDINGS else req.n
        delivered = Counter(item["index"] // per_prompt for item in items) if req.kind != CHAT \
            else Counter({0: len(items)})
        for position, prompt in enumerate(req.prompts):
            if delivered[position] == per_prompt:
                self.stats.answered[prompt] += 1


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=dict(headers or {}))


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
