"""runner.api.headers: rate-limit header parsing, tested as tables."""
from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from runner.api.headers import RateLimitInfo, parse_duration, parse_retry_after, reset_from_message

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
                                 remaining_tokens=159976, reset_tokens=360.0, style="openai")
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


# -- gateways' names ---------------------------------------------------------------------------

def test_litellm_per_model_headers_are_read_with_their_scope():
    info = RateLimitInfo.from_headers({
        "x-ratelimit-model_per_key-limit-requests": "60",
        "x-ratelimit-model_per_key-remaining-requests": "59",
        "x-ratelimit-model_per_key-limit-tokens": "10000",
        "x-ratelimit-model_per_key-remaining-tokens": "9980",
    })
    assert info == RateLimitInfo(limit_requests=60, remaining_requests=59, limit_tokens=10000,
                                 remaining_tokens=9980, window_s=60.0, scope="model",
                                 style="litellm")


def test_litellm_key_headers_name_a_budget_of_the_whole_key():
    headers = CIMultiDictProxy(CIMultiDict({"X-RateLimit-Api_Key-Limit-Requests": "600",
                                            "X-RateLimit-Api_Key-Remaining-Requests": "12"}))
    info = RateLimitInfo.from_headers(headers)
    assert (info.limit_requests, info.remaining_requests, info.scope) == (600, 12, "key")


def test_litellm_remaining_below_zero_is_zero_and_the_binding_descriptor_wins():
    info = RateLimitInfo.from_headers({
        "x-ratelimit-api_key-limit-requests": "600", "x-ratelimit-api_key-remaining-requests": "400",
        "x-ratelimit-model_per_key-limit-requests": "60",
        "x-ratelimit-model_per_key-remaining-requests": "-2",
    })
    assert (info.limit_requests, info.remaining_requests, info.scope) == (60, 0, "model")


def test_openai_names_win_over_a_gateways_own():
    info = RateLimitInfo.from_headers({
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-api_key-limit-requests": "60", "ratelimit-limit": "10",
    })
    assert (info.limit_requests, info.style, info.window_s) == (500, "openai", None)


@pytest.mark.parametrize("headers, expected", [
    # draft -06 and earlier: separate fields, the window in the policy
    ({"RateLimit-Limit": "100", "RateLimit-Remaining": "40", "RateLimit-Reset": "30",
      "RateLimit-Policy": "100;w=60"}, (100, 40, 30.0, 60.0)),
    ({"RateLimit-Limit": "10", "RateLimit-Remaining": "3", "RateLimit-Reset": "1",
      "RateLimit-Policy": "10;w=1, 500;w=3600"}, (10, 3, 1.0, 1.0)),
    # no policy: a minute
    ({"RateLimit-Limit": "100", "RateLimit-Remaining": "99", "RateLimit-Reset": "59"},
     (100, 99, 59.0, 60.0)),
    # draft -07 on: structured fields
    ({"RateLimit": '"default";r=50;t=30', "RateLimit-Policy": '"default";q=100;w=10'},
     (100, 50, 30.0, 10.0)),
    # Kong's per-window names beside the draft's
    ({"RateLimit-Limit": "5", "RateLimit-Remaining": "4", "RateLimit-Reset": "47",
      "X-RateLimit-Limit-Second": "5", "X-RateLimit-Remaining-Second": "4"},
     (5, 4, 47.0, 1.0)),
    ({"X-RateLimit-Limit-Minute": "30", "X-RateLimit-Remaining-Minute": "29"},
     (30, 29, None, 60.0)),
])
def test_ietf_draft_and_kong_headers_are_a_requests_quota_per_window(headers, expected):
    info = RateLimitInfo.from_headers(CIMultiDictProxy(CIMultiDict(headers)))
    assert (info.limit_requests, info.remaining_requests, info.reset_requests,
            info.window_s) == expected
    assert info.style == "ietf" and info.limit_tokens is None


def test_gateway_garbage_is_ignored():
    info = RateLimitInfo.from_headers({"ratelimit-limit": "many", "ratelimit-remaining": "-4",
                                       "x-ratelimit-api_key-limit-requests": "lots"})
    assert info.empty


def test_litellm_passes_retry_after_on_under_its_provider_prefix():
    headers = CIMultiDictProxy(CIMultiDict({"llm_provider-retry-after": "60"}))
    assert parse_retry_after(headers) == 60.0
    assert parse_retry_after({"llm_provider-retry-after": "60", "retry-after": "2"}) == 2.0


def test_kong_with_several_windows_reads_the_binding_one():
    """Kong sends each configured window; 9 of 10 left this second says nothing when 3 of 100
    are left this minute."""
    info = RateLimitInfo.from_headers({
        "x-ratelimit-limit-second": "10", "x-ratelimit-remaining-second": "9",
        "x-ratelimit-limit-minute": "100", "x-ratelimit-remaining-minute": "3"})
    assert (info.limit_requests, info.remaining_requests, info.window_s) == (100, 3, 60.0)


LITELLM_429 = ("Rate limit exceeded for model_per_key: 88dc:gpt-4o-mini. Limit type: requests. "
               "Current limit: 60, Remaining: 0. Limit resets at: {} UTC")


@pytest.mark.parametrize("message, headers, seconds", [
    # measured from the server's own date header, whatever our clock says
    (LITELLM_429.format("2015-10-21 07:28:30"), {"date": "Wed, 21 Oct 2015 07:28:00 GMT"}, 30.0),
    (LITELLM_429.format("2015-10-21 07:28:30"), {"date": "Wed, 21 Oct 2015 07:28:20 GMT"}, 10.0),
    # no date header (or a garbage one): from our clock (NOW is 07:27:50)
    (LITELLM_429.format("2015-10-21 07:28:30"), {}, 40.0),
    (LITELLM_429.format("2015-10-21 07:28:30"), {"date": "yesterday"}, 40.0),
    (LITELLM_429.format("2015-10-21 07:28:30.500"), {}, 40.5),
    (LITELLM_429.format("2015-10-21 07:27:00"), {}, 0.0),  # already past: now
    ("Limit resets at: 2015-10-21T07:28:00Z", {}, 10.0),
    (LITELLM_429.format("2015-13-45 99:00:00"), {}, None),  # not a date
    ("Limit resets at: 2015-10-21 07:28:30", {}, None),  # no zone: not a time we can place
    ("Rate limit reached. Please try again later.", {}, None),
    ("", {}, None),
    (None, {}, None),
])
def test_a_reset_time_in_a_429_message_is_read_from_the_servers_clock(message, headers, seconds):
    got = reset_from_message(message, headers, now=NOW)
    assert got == (None if seconds is None else pytest.approx(seconds))
