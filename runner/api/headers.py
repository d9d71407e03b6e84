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

    `retry-after-ms` (milliseconds) wins over `retry-after` (seconds, or an HTTP date); a header
    that is garbage, negative, inf or nan is ignored as if absent. An HTTP date is measured from
    `now` (epoch seconds, default `time.time()`); a date already past means "retry now" (0.0).
    No cap is applied here: capping is retry policy (`runner.outcome.MAX_SERVER_DELAY_S`).
    """
    raw_ms = _get(headers, RETRY_AFTER_MS)
    if raw_ms is not None:
        ms = _parse_seconds(raw_ms)
        if ms is not None:
            return ms / 1000.0
    raw = _get(headers, RETRY_AFTER)
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


def _parse_count(raw: str | None) -> int | None:
    """A non-negative integer; Azure's -1 ("unknown") and garbage become None."""
    if raw is None or not _INTEGER.fullmatch(raw):
        return None
    return int(raw)


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """The `x-ratelimit-*` headers of one response; each field is None when absent or unusable.

    `reset_*` are seconds until that budget is fully replenished (OpenAI sends "6m0s"-style
    durations). Azure sends only the `remaining-*` headers, so the other fields are None there.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo:
        """Read the six headers; never raises on garbage (that field is None)."""
        reset_requests = _get(headers, RESET_REQUESTS)
        reset_tokens = _get(headers, RESET_TOKENS)
        return cls(
            limit_requests=_parse_count(_get(headers, LIMIT_REQUESTS)),
            remaining_requests=_parse_count(_get(headers, REMAINING_REQUESTS)),
            reset_requests=None if reset_requests is None else parse_duration(reset_requests),
            limit_tokens=_parse_count(_get(headers, LIMIT_TOKENS)),
            remaining_tokens=_parse_count(_get(headers, REMAINING_TOKENS)),
            reset_tokens=None if reset_tokens is None else parse_duration(reset_tokens),
        )

    @property
    def empty(self) -> bool:
        """True when the response carried no usable rate-limit header at all."""
        return all(getattr(self, name) is None for name in self.__slots__)
