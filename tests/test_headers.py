"""runner.api.headers: rate-limit header parsing, tested as tables."""
from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from runner.api.headers import RateLimitInfo, parse_duration, parse_retry_after

NOW = 1_445_412_470.0  # 2015-10-21 07:27:50 GMT


@pytest.mark.parametrize("text, seconds", [
    ("20ms", 0.02),
    ("1s", 1.0),
    ("1.5s", 1.5),
    ("6m0s", 360.0),
    ("1m30s", 90.0),
    ("1h2m3.5s", 3723.5),
    ("2h", 7200.0),
    ("500us", 0.0005),
    ("0.5", 0.5),
    ("7", 7.0),
    (" 1s ", 1.0),
    ("0s", 0.0),
    ("", None),
    ("s", None),
    ("1x", None),
    ("1s2", None),
    ("-1s", None),
    ("-1", None),
    ("inf", None),
    ("nan", None),
    ("1e3", None),
    ("1 s", None),
    ("garbage", None),
])
def test_parse_duration_table(text, seconds):
    got = parse_duration(text)
    assert got == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize("headers, seconds", [
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "2"}, 2.0),
    ({"retry-after": "0"}, 0.0),
    ({"retry-after": "inf"}, None),
    ({"retry-after": "nan"}, None),
    ({"retry-after": "-1"}, None),
    ({"retry-after": "soon"}, None),
    ({"retry-after": ""}, None),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 10.0),  # an HTTP date, from NOW
    ({"retry-after": "Wed, 21 Oct 2015 07:00:00 GMT"}, 0.0),   # a date already past: retry now
    ({"retry-after": "Wed, 99 Oct 2015 07:28:00 GMT"}, None),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "3"}, 0.25),      # retry-after-ms wins
    ({"retry-after-ms": "nan", "retry-after": "3"}, 3.0),       # ... unless it is garbage
    ({"retry-after-ms": "-5", "retry-after": "3"}, 3.0),
    ({"retry-after-ms": "inf"}, None),
    ({}, None),
])
def test_parse_retry_after_table(headers, seconds):
    got = parse_retry_after(headers, now=NOW)
    assert got == (None if seconds is None else pytest.approx(seconds))


def test_retry_after_date_uses_injected_now():
    headers = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert parse_retry_after(headers, now=NOW - 20) == pytest.approx(30.0)


def test_parse_retry_after_accepts_case_insensitive_mappings():
    headers = CIMultiDictProxy(CIMultiDict({"Retry-After-Ms": "100"}))
    assert parse_retry_after(headers) == pytest.approx(0.1)


def test_rate_limit_info_reads_openai_headers():
    info = RateLimitInfo.from_headers({
        "x-ratelimit-limit-requests": "5000", "x-ratelimit-limit-tokens": "160000",
        "x-ratelimit-remaining-requests": "4999", "x-ratelimit-remaining-tokens": "159976",
        "x-ratelimit-reset-requests": "12ms", "x-ratelimit-reset-tokens": "6m0s",
    })
    assert info == RateLimitInfo(limit_requests=5000, remaining_requests=4999,
                                 reset_requests=pytest.approx(0.012), limit_tokens=160000,
                                 remaining_tokens=159976, reset_tokens=360.0)
    assert not info.empty


def test_rate_limit_info_azure_sends_only_remaining():
    headers = CIMultiDictProxy(CIMultiDict({"X-RateLimit-Remaining-Requests": "99",
                                            "X-RateLimit-Remaining-Tokens": "9000"}))
    info = RateLimitInfo.from_headers(headers)
    assert (info.remaining_requests, info.remaining_tokens) == (99, 9000)
    assert info.limit_requests is info.limit_tokens is info.reset_requests is info.reset_tokens is None
    assert not info.empty


def test_rate_limit_info_garbage_becomes_none():
    info = RateLimitInfo.from_headers({
        "x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "lots",
        "x-ratelimit-reset-tokens": "nan", "x-ratelimit-limit-requests": "1e3",
        "x-ratelimit-remaining-requests": "", "x-ratelimit-reset-requests": "-2s",
    })
    assert info == RateLimitInfo()
    assert info.empty


def test_rate_limit_info_without_headers_is_empty():
    assert RateLimitInfo.from_headers({"content-type": "application/json"}).empty


def test_rate_limit_info_is_frozen():
    info = RateLimitInfo()
    with pytest.raises(AttributeError):
        info.remaining_tokens = 5  # type: ignore[misc]
