"""Pure parsing of the rate-limit headers an OpenAI-compatible API sends back.

No I/O and no clock of its own: the current wall time is injected where an HTTP date needs it.
`headers` is any mapping whose keys are lower-case (what `runner.api.transport` builds) or a
case-insensitive mapping (aiohttp's `CIMultiDictProxy`); names are always looked up lower-case.

Every parser returns None for a value it cannot trust (garbage, negative, inf, nan): a bad header
must never turn into a wait of -1 s or forever.
"""
from __future__ import annotations

import datetime
import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

RETRY_AFTER_MS = "retry-after-ms"
RETRY_AFTER = "retry-after"
LITELLM_PROVIDER_PREFIX = "llm_provider-"  # LiteLLM's proxy: `llm_provider-retry-after: 60`
LIMIT_REQUESTS = "x-ratelimit-limit-requests"
LIMIT_TOKENS = "x-ratelimit-limit-tokens"
REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
RESET_REQUESTS = "x-ratelimit-reset-requests"
RESET_TOKENS = "x-ratelimit-reset-tokens"

_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_INTEGER = re.compile(r"\d+")
# Go-style duration parts as OpenAI writes them: "20ms", "1.5s", "6m0s", "1h2m3.5s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}


def _get(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value.strip() if isinstance(value, str) else None


def _finite_non_negative(value: float) -> float | None:
    return value if math.isfinite(value) and value >= 0 else None


def _parse_seconds(s: str) -> float | None:
    """A plain non-negative decimal ("1", "1.5", ".5"); no sign, exponent, inf or nan."""
    if not _NUMBER.fullmatch(s):
        return None
    return _finite_non_negative(float(s))


def parse_duration(s: str) -> float | None:
    """Seconds in OpenAI's reset format ("20ms", "1s", "1.5s", "6m0s", "1h2m3.5s") or a bare number
    of seconds ("0.5"); None for anything else, including negatives, inf and nan."""
    if not isinstance(s, str):
        return None
    s = s.strip()
    if not s:
        return None
    bare = _parse_seconds(s)
    if bare is not None:
        return bare
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(s) or pos == 0:
        return None
    return _finite_non_negative(total)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, or None when it says nothing usable.

    `retry-after-ms` (milliseconds) wins over `retry-after` (seconds, or an HTTP date); where
    neither is sent, LiteLLM's `llm_provider-retry-after(-ms)` are read the same way. A header
    that is garbage, negative, inf or nan is ignored as if absent. An HTTP date is measured from
    `now` (epoch seconds, default `time.time()`); a date already past means "retry now" (0.0).
    No cap is applied here: capping is retry policy (`runner.outcome.MAX_SERVER_DELAY_S`).
    """
    for prefix in ("", LITELLM_PROVIDER_PREFIX):
        if _get(headers, prefix + RETRY_AFTER_MS) or _get(headers, prefix + RETRY_AFTER):
            break  # LiteLLM's proxy passes the delay on under its own prefix
    raw_ms = _get(headers, prefix + RETRY_AFTER_MS)
    if raw_ms is not None:
        ms = _parse_seconds(raw_ms)
        if ms is not None:
            return ms / 1000.0
    raw = _get(headers, prefix + RETRY_AFTER)
    if raw is None:
        return None
    seconds = _parse_seconds(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC with no claim about local time
        when = when.replace(tzinfo=datetime.timezone.utc)
    wait = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, wait) if math.isfinite(wait) else None


# LiteLLM's proxy (its v3 rate limiter) ends a 429's message with the window's end, in UTC:
# "... Limit resets at: 2026-12-07 12:41:08 UTC" (on /v1/completions with no retry-after header).
_RESETS_AT = re.compile(r"Limit resets at:\s*(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d+)?)"
                        r"\s*(?:UTC|GMT|Z|\+00:00)", re.IGNORECASE)


def reset_from_message(message: str | None, headers: Mapping[str, str], *,
                       now: float | None = None) -> float | None:
    """Seconds until the reset time a well-known server writes into its 429 message (LiteLLM:
    "Limit resets at: 2026-12-07 12:41:08 UTC"), or None when the message names none. The time
    is the server's: it is measured from the answer's `date` header when that is a usable HTTP
    date (so a clock apart from the server's does not matter), else from `now` (epoch seconds,
    default `time.time()`). A reset already past means "retry now" (0.0)."""
    if not message:
        return None
    match = _RESETS_AT.search(message)
    if match is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}+00:00")
    except ValueError:
        return None
    reference = None
    date = _get(headers, "date")
    if date is not None:
        try:
            reference = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            reference = None
    if reference is None or not math.isfinite(reference):
        reference = time.time() if now is None else now
    wait = when.timestamp() - reference
    return max(0.0, wait) if math.isfinite(wait) else None


def _parse_count(raw: str | None) -> int | None:
    """A non-negative integer; Azure's -1 ("unknown") and garbage become None."""
    if raw is None or not _INTEGER.fullmatch(raw):
        return None
    return int(raw)


# Gateway names. LiteLLM's proxy (litellm/proxy/hooks/parallel_request_limiter_v3.py) sends, per
# limit descriptor, `x-ratelimit-{descriptor}-{limit|remaining}-{requests|tokens}`, with no reset
# header; `remaining` may go below zero. The descriptor says whose budget it is: "api_key" (the
# key's, over every model), "model_per_key" (the key's for one model), "user", "team", ...
_GATEWAY_NAME = re.compile(r"x-ratelimit-([a-z0-9_]+)-(limit|remaining)-(requests|tokens)")
KEY_DESCRIPTORS = frozenset({"api_key", "key", "user", "team", "org", "organization",
                             "end_user", "project"})
"""LiteLLM descriptors of a budget that spans every model of the key (or of a wider owner)."""
# The IETF draft (draft-ietf-httpapi-ratelimit-headers): up to -06 separate fields
# `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds until the quota is restored)
# and `RateLimit-Policy: 100;w=60` (quota 100 per 60 s window); from -07 two structured fields,
# `RateLimit: "default";r=50;t=30` and `RateLimit-Policy: "default";q=100;w=60`. Kong adds
# `X-RateLimit-Limit-Minute` / `X-RateLimit-Remaining-Minute` (and -Second, -Hour, ...).
IETF_LIMIT, IETF_REMAINING, IETF_RESET = "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"
IETF_POLICY, IETF_STRUCTURED = "ratelimit-policy", "ratelimit"
_PARAM = re.compile(r";\s*([a-z]+)\s*=\s*(\d+(?:\.\d+)?)")
_KONG_WINDOWS = (("second", 1.0), ("minute", 60.0), ("hour", 3600.0), ("day", 86400.0))
DEFAULT_WINDOW_S = 60.0
"""The window of an IETF quota that names none: gateways' limits are per minute by default."""


def _signed_count(raw: str | None) -> int | None:
    """An integer that may be negative (LiteLLM's remaining), clamped at 0; garbage is None."""
    if raw is None:
        return None
    raw = raw.strip()
    if raw.startswith("-") and _INTEGER.fullmatch(raw[1:]):
        return 0
    return _parse_count(raw)


def _first_number(raw: str | None) -> float | None:
    """The leading number of a field such as "100" or "100, 100;w=60"; None for garbage."""
    if raw is None:
        return None
    match = _NUMBER.match(raw.strip())
    return _finite_non_negative(float(match.group(0))) if match else None


def _params(raw: str) -> dict[str, float]:
    return {name: float(value) for name, value in _PARAM.findall(raw.lower())}


def _policy_window(policy: str, limit: float | None) -> float | None:
    """The window of the policy ("100;w=60, 1000;w=3600") whose quota is `limit`, else the first's."""
    windows = []
    for item in policy.split(","):
        quota, window = _first_number(item), _params(item).get("w")
        if window:
            windows.append((quota, window))
    return next((w for q, w in windows if q == limit), windows[0][1] if windows else None)


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """The rate-limit headers of one response; each field is None when absent or unusable.

    OpenAI's six `x-ratelimit-*` headers are read first; where a response carries none of them, a
    gateway's names are read instead (LiteLLM's, the IETF draft's, Kong's; see the README).

    `limit_*` is the quota per `window_s` seconds: a minute for OpenAI, whose budgets refill
    continuously (`window_s` None); a gateway's declared window otherwise, whose quota may all be
    spent at once and comes back when the window ends. `reset_*` are seconds until that budget is
    fully restored (OpenAI sends "6m0s"-style durations; the IETF draft whole seconds). Azure sends
    only the `remaining-*` headers, so the other fields are None there. `scope` is "key" when the
    headers name a budget of the whole key (LiteLLM's "api_key" descriptor), "model" when they name
    one model's, None when they do not say. `style` names the headers read ("openai", "litellm",
    "ietf"; None when there were none).
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    window_s: float | None = None
    scope: str | None = None
    style: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo:
        """Read the headers; never raises on garbage (that field is None)."""
        reset_requests = _get(headers, RESET_REQUESTS)
        reset_tokens = _get(headers, RESET_TOKENS)
        info = cls(
            limit_requests=_parse_count(_get(headers, LIMIT_REQUESTS)),
            remaining_requests=_parse_count(_get(headers, REMAINING_REQUESTS)),
            reset_requests=None if reset_requests is None else parse_duration(reset_requests),
            limit_tokens=_parse_count(_get(headers, LIMIT_TOKENS)),
            remaining_tokens=_parse_count(_get(headers, REMAINING_TOKENS)),
            reset_tokens=None if reset_tokens is None else parse_duration(reset_tokens),
        )
        if not info.empty:
            return cls(**{**_fields(info), "style": "openai"})
        return _gateway(headers) or _ietf(headers) or info

    @property
    def empty(self) -> bool:
        """True when the response carried no usable rate-limit header at all."""
        return all(getattr(self, name) is None for name in _FIELDS)


_FIELDS = ("limit_requests", "remaining_requests", "reset_requests", "limit_tokens",
           "remaining_tokens", "reset_tokens")


def _fields(info: RateLimitInfo) -> dict[str, object]:
    return {name: getattr(info, name) for name in info.__slots__}


def _gateway(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """LiteLLM's per-descriptor headers; where several descriptors limit one kind, the one with
    the least remaining binds."""
    found: dict[tuple[str, str], dict[str, int]] = {}  # (kind, descriptor) -> {limit, remaining}
    for name in headers:
        match = _GATEWAY_NAME.fullmatch(name.lower())
        if match is None:
            continue
        descriptor, what, kind = match.groups()
        value = _signed_count(_get(headers, name))
        if value is not None:
            found.setdefault((kind, descriptor), {})[what] = value
    if not found:
        return None
    fields: dict[str, object] = {"style": "litellm", "window_s": DEFAULT_WINDOW_S}
    scopes = []
    for kind in ("requests", "tokens"):
        candidates = [(values.get("remaining", values.get("limit", 0)), descriptor, values)
                      for (k, descriptor), values in found.items() if k == kind]
        if not candidates:
            continue
        _, descriptor, values = min(candidates, key=lambda c: (c[0], c[1]))
        fields[f"limit_{kind}"] = values.get("limit")
        fields[f"remaining_{kind}"] = values.get("remaining")
        scopes.append("key" if descriptor in KEY_DESCRIPTORS else "model")
    fields["scope"] = "key" if "key" in scopes else "model"
    return RateLimitInfo(**fields)


def _ietf(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """The IETF draft's fields (both generations) and Kong's per-window names, as a requests
    quota: the draft's quota units are requests unless a gateway says otherwise."""
    limit = remaining = reset = window = None
    structured = _get(headers, IETF_STRUCTURED)
    policy = _get(headers, IETF_POLICY)
    if structured is not None:  # draft -07 and later
        params = _params(structured)
        remaining, reset = params.get("r"), params.get("t")
        policy_params = _params(policy) if policy is not None else {}
        limit, window = policy_params.get("q"), policy_params.get("w")
    else:
        limit = _first_number(_get(headers, IETF_LIMIT))
        remaining = _first_number(_get(headers, IETF_REMAINING))
        reset = _first_number(_get(headers, IETF_RESET))
        if policy is not None:
            window = _policy_window(policy, limit)
    kong = []  # Kong's windows that are sent: (share left, limit, remaining, seconds)
    for suffix, seconds in _KONG_WINDOWS:
        kong_limit = _parse_count(_get(headers, f"x-ratelimit-limit-{suffix}"))
        kong_remaining = _parse_count(_get(headers, f"x-ratelimit-remaining-{suffix}"))
        if kong_limit is None and kong_remaining is None:
            continue
        share = (kong_remaining / kong_limit if kong_limit and kong_remaining is not None
                 else math.inf)
        kong.append((share, kong_limit, kong_remaining, seconds))
    if kong and window is None:
        # The window the draft's fields describe (Kong's RateLimit-* name the one closest to
        # its limit), else the binding one: the least share left.
        matching = [k for k in kong if limit is not None and k[1] == limit]
        _, limit, remaining, window = min(matching or kong)
    if limit is None and remaining is None:
        return None
    return RateLimitInfo(
        limit_requests=None if limit is None else int(limit),
        remaining_requests=None if remaining is None else int(remaining),
        reset_requests=reset,
        window_s=window if window else DEFAULT_WINDOW_S,
        style="ietf",
    )
