"""The adaptive concurrency limit, on fake samples: no server, no clock, exact answers."""
from __future__ import annotations

import pytest

from runner.live.concurrency import (INITIAL_LIMIT, MIN_CONCURRENCY, ConcurrencyLimit, lane_limit,
                                     littles_law)


def answers_at_full_window(limit: ConcurrencyLimit, latency: float, count: int) -> None:
    for _ in range(count):
        limit.on_answer(latency, limit.limit)


def test_slow_start_adds_one_per_answer_of_a_full_window_while_latency_is_flat():
    limit = ConcurrencyLimit(maximum=128)
    assert limit.limit == INITIAL_LIMIT and limit.slow_start
    answers_at_full_window(limit, 7.0, 4)  # one round trip of the first window: it doubles
    assert limit.limit == 2 * INITIAL_LIMIT and limit.slow_start


def test_a_window_not_full_does_not_grow():
    limit = ConcurrencyLimit(maximum=128)
    for _ in range(50):
        limit.on_answer(0.5, 1)  # one request at a time says nothing about room for five
    assert limit.limit == INITIAL_LIMIT


def test_high_but_flat_latency_is_not_congestion_the_limit_grows_to_the_maximum():
    limit = ConcurrencyLimit(maximum=128)
    answers_at_full_window(limit, 30.0, 200)
    assert limit.limit == 128 and limit.slow_start


def test_latency_within_the_tolerance_keeps_slow_start_going():
    limit = ConcurrencyLimit(maximum=128)
    for latency in (1.0, 1.1, 0.9, 1.2, 1.0, 1.1):  # +-20 % jitter
        limit.on_answer(latency, limit.limit)
    assert limit.slow_start and limit.limit == INITIAL_LIMIT + 6


def test_latency_that_grows_with_the_number_in_flight_ends_slow_start_and_shrinks_the_limit():
    # a server that works one request at a time: each waits for all ahead of it
    service_s = 7.0
    limit = ConcurrencyLimit(maximum=128)
    in_flight = 1
    for _ in range(40):
        limit.on_answer(service_s * in_flight, in_flight)
        in_flight = limit.limit
    assert not limit.slow_start
    assert limit.no_load == pytest.approx(service_s)
    # it settles near n = 1.5 + sqrt(n), about 3: queues stay far below a 120 s read timeout
    assert 2 <= limit.limit <= 4


def test_a_large_window_meeting_a_queue_is_cut_towards_what_the_server_takes():
    limit = ConcurrencyLimit(maximum=128, initial=100)
    limit.on_answer(7.0, 100)  # no-load latency
    limit.on_answer(7.0 * 50, 100)  # a queue of 50 answers ahead of it
    assert limit.limit == 92  # the target is halved (the gradient's floor), then smoothed (0.2)
    for _ in range(100):
        limit.on_answer(7.0 * 50, 100)
    # the target never drops below limit / 2 + sqrt(limit) (Gradient2's queue allowance): 4
    assert 3 <= limit.limit <= 4


def test_a_timeout_halves_the_requests_in_flight():
    limit = ConcurrencyLimit(maximum=128, initial=64)
    assert limit.on_timeout(sent_at=0.0, now=120.0, in_flight=40) == 20
    assert not limit.slow_start


def test_a_timeout_halves_the_limit_when_fewer_are_in_flight():
    limit = ConcurrencyLimit(maximum=128, initial=16)
    assert limit.on_timeout(sent_at=0.0, now=120.0, in_flight=40) == 8


def test_timeouts_of_one_window_cut_once():
    limit = ConcurrencyLimit(maximum=128, initial=64)
    limit.on_timeout(sent_at=0.0, now=120.0, in_flight=64)
    for i in range(1, 40):  # the rest of that window, sent before the cut, times out too
        limit.on_timeout(sent_at=0.0, now=120.0 + i * 0.1, in_flight=64 - i)
    assert limit.limit == 32
    # a request sent after the cut that still times out: the smaller window is still too big
    assert limit.on_timeout(sent_at=121.0, now=241.0, in_flight=32) == 16


@pytest.mark.parametrize("initial, minimum, maximum", [(4, 1, 128), (1, 1, 1), (8, 2, 16)])
def test_the_limit_stays_within_its_bounds(initial, minimum, maximum):
    limit = ConcurrencyLimit(maximum=maximum, initial=initial, minimum=minimum)
    answers_at_full_window(limit, 0.2, 500)
    assert limit.limit == maximum
    for i in range(20):
        limit.on_timeout(sent_at=float(i), now=float(i), in_flight=limit.limit)
    assert limit.limit == minimum
    answers_at_full_window(limit, 100.0, 100)  # a queue: 500 x the no-load latency
    assert minimum <= limit.limit <= max(minimum, 4)  # the queue allowance's floor, in bounds


@pytest.mark.parametrize("latency", [-1.0, float("nan"), float("inf")])
def test_a_latency_that_is_not_a_duration_is_refused(latency):
    with pytest.raises(ValueError):
        ConcurrencyLimit(maximum=8).on_answer(latency, 1)


@pytest.mark.parametrize("minimum, maximum", [(0, 8), (9, 8)])
def test_bounds_are_checked_when_built(minimum, maximum):
    with pytest.raises(ValueError):
        ConcurrencyLimit(maximum=maximum, minimum=minimum)


def congested() -> ConcurrencyLimit:
    limit = ConcurrencyLimit(maximum=128, initial=16)
    limit.on_timeout(sent_at=0.0, now=1.0, in_flight=10)  # -> 5, slow start over
    limit.on_answer(2.0, 5)
    return limit


def after_answers(latency: float, count: int) -> ConcurrencyLimit:
    limit = ConcurrencyLimit(maximum=128)
    answers_at_full_window(limit, latency, count)
    return limit


@pytest.mark.parametrize("learned, cap, rate, expected", [
    # no known rate: the learned limit (slow start included) under the cap
    (ConcurrencyLimit(maximum=128), 128, None, INITIAL_LIMIT),
    (after_answers(1.0, 200), 128, None, 128),
    (after_answers(1.0, 200), 16, None, 16),
    # a known rate paces the start: the cap before any latency is known, then Little's law
    (ConcurrencyLimit(maximum=128), 128, 15.0, 128),
    (after_answers(2.0, 1), 128, 15.0, 45),               # 15/s x 2 s x 1.5
    (after_answers(0.01, 1), 128, 15.0, MIN_CONCURRENCY),  # fast answers: the floor
    (after_answers(2.0, 1), 32, 15.0, 32),
    # ... until the server has shown congestion: then the learned limit binds too
    (congested(), 128, 15.0, 5),
], ids=["unknown-rate-start", "unknown-rate-grown", "unknown-rate-capped", "rate-no-latency",
        "rate-2s", "rate-fast", "rate-capped", "rate-congested"])
def test_lane_limit(learned, cap, rate, expected):
    assert lane_limit(learned, cap=cap, rate_per_s=rate) == expected


def test_littles_law_keeps_rate_times_latency_in_flight_with_headroom():
    assert littles_law(15.0, 2.0) == 45
    assert littles_law(15.0, 0.0) == MIN_CONCURRENCY


def test_after_a_timeout_the_queue_allowance_does_not_climb_back_into_it():
    limit = ConcurrencyLimit(maximum=128, initial=8)
    limit.on_answer(40.0, 8)  # no-load latency 40 s
    limit.on_timeout(sent_at=0.0, now=130.0, in_flight=8)
    assert limit.limit == 4
    for _ in range(50):  # answers that queued behind the others: no growth past the cut
        limit.on_answer(160.0, limit.limit)
    assert limit.limit <= 4


def test_after_a_timeout_answers_that_meet_no_queue_raise_the_limit_additively():
    limit = ConcurrencyLimit(maximum=128, initial=8)
    limit.on_answer(1.0, 8)
    limit.on_timeout(sent_at=0.0, now=130.0, in_flight=8)  # a stall, not the server's capacity
    answers_at_full_window(limit, 1.0, 5)  # about one window of fast answers: +1
    assert limit.limit == 5
    answers_at_full_window(limit, 1.0, 200)
    assert limit.limit > 16
