"""Configuration and statistics: how the simulated service behaves (`SimConfig`, checked when
built) and what it saw (`SimStats`, read by tests)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

KNOWN_FAULTS = frozenset({"500", "503", "hang", "reset", "truncated", "missing_choice"})

# The opt-in behaviours of other servers (SimConfig fields), each value's first entry the default
LIST_PROMPT_MODES = ("ok", "ignore", "error")
BUDGET_SCOPES = ("model", "key")
HEADER_STYLES = ("openai", "litellm", "litellm-router", "ietf", "none")
LIMITERS = ("bucket", "window", "minute")
URL_ERRORS = ("invalid_url", "unknown_url")
IMAGE_BUDGET_SCOPES = ("model", "key")


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

    Faults and refusals of the real service, each off by default (`runner.simulator.faults`):

    fault_rates: each fault's own probability per admitted request, e.g. `{"500": 0.01,
    "missing_choice": 0.01}` (a mapping or pairs; kept as pairs sorted by name; at most 1 in all);
    instead of `fault_rate` with `faults`, not beside them. "missing_choice" is the partial
    answer: a 200 whose answer has several items (a list prompt, `n` > 1, several inputs) comes
    back valid but without 1 to `max_dropped` of them (at least one kept).
    refused_count: a request refused 429 still takes one request from its budget (and, on the
    image endpoints, its `n` images), as OpenAI's rate-limit guide says failed requests count;
    `retry-after` then names the time until the debt is paid, so a client that waits it gets
    through and a client that resends at once never does (bucket limiter only).
    image_budget_scope: "model" keeps one image budget (RPM, `ipm`) per image model, as OpenAI
    does; "key" one per API key shared by dall-e-2, dall-e-3 and gpt-image-1.
    url_error: OpenAI's 404 body for a path it does not serve (`/chat/completions` without
    `/v1`, `/v1/v1/...`): "invalid_url" `Invalid URL (POST /path)` (code null, as through 2023)
    or "unknown_url" `Unknown request URL: POST /path. Please check the URL for typos, ...` (code
    `unknown_url`, as since 2024). Paths under `/openai/` get Azure's `{"code": "404", "message":
    "Resource not found"}` either way.
    json_fault_rate: the probability that a structured answer (a chat request with
    `response_format` json_object or json_schema) comes back with its JSON broken: cut short, or
    an object that misses the schema (`answers.broken_json`), as local servers and older models
    break it.
    models: the models that exist on OpenAI URLs (None: every name); another answers 404
    `model_not_found`. deployments: the same for Azure deployments (the URL's, or the body's
    `model` on the v1 URLs); another answers 404 `DeploymentNotFound`.
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
    fault_rates: Mapping[str, float] | tuple[tuple[str, float], ...] = ()  # kept as sorted pairs
    max_dropped: int = 1
    refused_count: bool = False
    image_budget_scope: str = "model"
    url_error: str = "invalid_url"
    models: tuple[str, ...] | None = None
    deployments: tuple[str, ...] | None = None
    json_fault_rate: float = 0.0

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
        _check_number("json_fault_rate", self.json_fault_rate, minimum=0, strict=False)
        if self.json_fault_rate > 1:
            raise ValueError(f"json_fault_rate must be <= 1, got {self.json_fault_rate!r}")
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
        self._check_fault_rates()
        if isinstance(self.max_dropped, bool) or not isinstance(self.max_dropped, int) \
                or self.max_dropped < 1:
            raise ValueError(f"max_dropped must be an int >= 1, got {self.max_dropped!r}")
        _check_flag("refused_count", self.refused_count)
        _check_choice("image_budget_scope", self.image_budget_scope, IMAGE_BUDGET_SCOPES)
        _check_choice("url_error", self.url_error, URL_ERRORS)
        for name in ("models", "deployments"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name} must be a tuple of non-empty names or None, got {value!r}")
            object.__setattr__(self, name, tuple(value))

    def _check_fault_rates(self) -> None:
        rates = self.fault_rates
        pairs = list(rates.items()) if isinstance(rates, Mapping) else list(rates)
        if not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            raise ValueError(f"fault_rates must map fault names to rates, got {rates!r}")
        unknown = sorted({name for name, _ in pairs} - KNOWN_FAULTS)
        if unknown or len({name for name, _ in pairs}) != len(pairs):
            raise ValueError(f"fault_rates: unknown or repeated fault(s) {unknown or pairs}; "
                             f"known: {sorted(KNOWN_FAULTS)}")
        for name, rate in pairs:
            _check_number(f"fault_rates[{name!r}]", rate, minimum=0, strict=False)
        if sum(rate for _, rate in pairs) > 1 + 1e-9:
            raise ValueError(f"fault_rates must add up to at most 1, got {rates!r}")
        if pairs and self.fault_rate > 0:
            raise ValueError("give fault_rate (with faults) or fault_rates, not both")
        object.__setattr__(self, "fault_rates", tuple(sorted((n, float(r)) for n, r in pairs if r)))


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
    images: int = 0  # images generated and answered (image endpoints)
    partial: int = 0  # 200 answers sent with items dropped (the "missing_choice" fault)
