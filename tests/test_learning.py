"""What answers and 429s teach a budget (`runner.pacing.learning`): pure functions, tested as tables
of (what is known, what came back) -> (what is known now, the changes for the state)."""
from __future__ import annotations

import math

import pytest

from runner.api.headers import RateLimitInfo as Info
from runner.pacing.learning import (
    FALLBACK_RETRY_AFTER_S, INFER_FROM_429_SHARE, INFER_RAISE_AFTER_S, INFER_RAISE_STEP,
    REFUSED_MAX_S, WINDOW_PROBE_S, Answer, Hold, Known, Lower, SetLevel, SetLimit, Shape, apply,
    blame, learn_429, learn_answer, learn_headers, refused_horizon, since, window_end,
)
from runner.pacing.state import Limit, MemoryBudgetState, Snapshot

NOW = 100.0


def server(per_minute: float, capacity: float | None = None) -> Limit:
    return Limit(per_minute, "server", per_minute / 60 if capacity is None else capacity)


def changes_of(known: Known, snapshot: Snapshot, info: Info, answer: Answer = Answer(NOW),
               burst_s: float = 1.0):
    return learn_headers(known, snapshot, info, answer, burst_s=burst_s).changes


# -- aging the server's count ---------------------------------------------------------------------


@pytest.mark.parametrize("answer, kind, refills, moved", [
    (Answer(NOW), "requests", True, 0.0),  # tied to no admission: the headers are now
    (Answer(NOW, sent_at=NOW - 2.0), "requests", True, 2.0),  # 2 s of refill at 1/s
    (Answer(NOW, sent_at=NOW - 2.0, unseen_requests=3.0), "requests", True, -1.0),
    (Answer(NOW, sent_at=NOW - 2.0, unseen_requests=3.0), "requests", False, -3.0),  # a window
    (Answer(NOW, sent_at=NOW - 2.0, unseen_tokens=50.0), "tokens", True, 70.0),
    (Answer(NOW, sent_at=NOW + 1.0), "requests", True, 0.0),  # a clock that went back: no refill
])
def test_since_is_the_servers_refill_less_what_it_had_not_yet_counted(answer, kind, refills, moved):
    limit = Limit(60.0 if kind == "requests" else 3600.0, "server", 1.0)
    assert since(answer, kind, limit, refills=refills) == pytest.approx(moved)


@pytest.mark.parametrize("shape, reset, answer, end", [
    (Shape(window=True), 30.0, Answer(NOW, sent_at=NOW - 5.0), NOW + 25.0),  # from the admission
    (Shape(window=True), 2.0, Answer(NOW, sent_at=NOW - 5.0), NOW),  # past: now
    (Shape(window=True), None, Answer(NOW), None),  # start unknown
    (Shape(window=True, window_start=NOW - 50.0), None, Answer(NOW), NOW + 10.0),
    (Shape(window=True, window_start=NOW - 50.0, window_s=30.0), None, Answer(NOW), None),
    (Shape(window=True, window_start=NOW - 70.0), math.inf, Answer(NOW), None),
])
def test_a_windows_end_is_its_reset_from_the_admission_else_its_start_plus_length(shape, reset,
                                                                                 answer, end):
    assert window_end(shape, reset, answer) == end


@pytest.mark.parametrize("info, head_need, blamed", [
    (None, 0, [("requests", 1.0), ("tokens", 0.0)]),  # nothing said: both
    (Info(remaining_requests=5), 0, [("tokens", 0.0)]),  # requests left: tokens ran out
    (Info(remaining_tokens=500), 200, [("requests", 1.0)]),  # a burst's worth of tokens left
    (Info(remaining_tokens=150), 200, [("requests", 1.0), ("tokens", 200.0)]),  # not the head's
    (Info(remaining_requests=5, remaining_tokens=10_000), 0,
     [("requests", 1.0), ("tokens", 0.0)]),  # both cleared: both
])
def test_a_429_is_blamed_on_the_buckets_its_headers_do_not_clear(info, head_need, blamed):
    snapshot = Snapshot(server(600), server(60_000, capacity=300.0))
    assert blame(info, snapshot, head_need) == blamed


# -- headers ----------------------------------------------------------------------------------


def test_openai_headers_set_the_servers_limits_and_lower_the_aged_level():
    info = Info(limit_requests=600, remaining_requests=590, reset_requests=1.0,
                limit_tokens=60_000, remaining_tokens=59_000, reset_tokens=1.0, style="openai")
    answer = Answer(NOW, sent_at=NOW - 1.0, charged=100, unseen_requests=2.0,
                    unseen_tokens=200.0)
    lesson = learn_headers(Known(), Snapshot(), info, answer, burst_s=1.0)
    assert lesson.changes == (
        SetLimit("requests", Limit(600.0, "server", 10.0)),
        Lower("requests", 590 + 10.0 - 2.0),  # one second of refill, two requests unseen
        SetLimit("tokens", Limit(60_000.0, "server", 1000.0)),
        Lower("tokens", 59_000 + 1000.0 - 200.0),
    )
    assert not lesson.known.trusted and not lesson.known.windowed
    assert lesson.known.requests.held_most == 591 and lesson.known.requests.announces_remaining


@pytest.mark.parametrize("info, trusted, windowed", [
    (Info(limit_requests=600, remaining_requests=590, reset_requests=1.0), False, False),  # OpenAI
    (Info(limit_requests=60, remaining_requests=59, window_s=60.0, style="litellm"), True, False),
    (Info(limit_requests=60, remaining_requests=59, reset_requests=59.0), True, True),  # a window
    (Info(limit_requests=60, remaining_requests=59), True, False),  # a router's: no reset
    (Info(limit_requests=60, remaining_requests=59, reset_requests=math.inf), False, False),
])
def test_a_gateways_or_a_windows_count_is_trusted(info, trusted, windowed):
    known = learn_headers(Known(), Snapshot(), info, Answer(NOW), burst_s=1.0).known
    assert (known.requests.trusted, known.requests.window) == (trusted, windowed)


def test_a_trusted_servers_count_sets_the_level_both_ways_and_its_capacity_is_what_it_held():
    info = Info(limit_requests=60, remaining_requests=40, window_s=60.0, style="litellm")
    assert changes_of(Known(), Snapshot(), info) == (
        SetLimit("requests", Limit(60.0, "server", 41.0)), SetLevel("requests", 40.0))


@pytest.mark.parametrize("known_limit, info, change", [
    # Azure: remaining and reset infer the limit while the bucket is at least half full
    (None, Info(remaining_requests=450, reset_requests=15.0), Limit(600.0, "inferred", 10.0)),
    (None, Info(remaining_requests=450, reset_requests=45.0), None),  # nearly empty: no guess
    (None, Info(remaining_requests=450), None),  # no reset: says nothing of the limit
    # a user's number that remaining shows too low is raised; a higher one stays
    (Limit(100.0, "user", 5.0), Info(remaining_requests=450), Limit(450.0, "user", 7.5)),
    (Limit(900.0, "user", 15.0), Info(remaining_requests=450), None),
    (server(600), Info(remaining_requests=900, reset_requests=1.0), None),  # the server's stays
])
def test_without_a_limit_header_remaining_infers_one_only_where_it_can(known_limit, info, change):
    changes = changes_of(Known(), Snapshot(requests=known_limit), info)
    limits = [c.limit for c in changes if isinstance(c, SetLimit)]
    assert limits == ([] if change is None else [change])


def test_a_spent_window_holds_admission_until_its_reset():
    known = Known(requests=Shape(trusted=True, window=True, held_most=60))
    info = Info(limit_requests=60, remaining_requests=0, reset_requests=30.0)
    lesson = learn_headers(known, Snapshot(requests=server(60, 60.0)), info,
                           Answer(NOW, sent_at=NOW - 1.0), burst_s=1.0)
    assert lesson.changes[-2:] == (SetLevel("requests", 0.0), Hold(NOW - 1.0 + 30.0))
    assert lesson.known.requests.spent_at == NOW - 1.0


def test_a_fresh_windows_first_answer_dates_its_start_after_the_last_spent_admission():
    known = Known(requests=Shape(trusted=True, window=True, held_most=60, spent_at=40.0))
    info = Info(limit_requests=60, remaining_requests=59, reset_requests=60.0)
    lesson = learn_headers(known, Snapshot(requests=server(60, 60.0)), info,
                           Answer(NOW, sent_at=NOW), burst_s=1.0)
    assert lesson.known.requests.window_start == 40.0


# -- 429s -------------------------------------------------------------------------------------


def lesson_429(known=Known(), snapshot=Snapshot(), info=None, retry_after=None, *,
               answer=Answer(NOW), head_need=0, answer_rate=None):
    return learn_429(known, snapshot, info, retry_after, answer, head_need=head_need,
                     answer_rate=answer_rate, burst_s=1.0)


@pytest.mark.parametrize("known, retry_after, hold", [
    (Known(), 2.0, 2.0),  # the server's delay
    (Known(), None, FALLBACK_RETRY_AFTER_S),  # none: our fallback
    (Known(), -1.0, FALLBACK_RETRY_AFTER_S),  # unusable
    (Known(), math.nan, FALLBACK_RETRY_AFTER_S),
    (Known(requests=Shape(trusted=True)), None, WINDOW_PROBE_S),  # a gateway: one probe a period
])
def test_a_429_with_no_limit_known_holds_for_its_delay(known, retry_after, hold):
    lesson = lesson_429(known, retry_after=retry_after)
    assert lesson.changes == (Hold(NOW + hold),) and lesson.known.last_429 == NOW


def test_a_429_puts_the_blamed_bucket_in_debt_that_clears_when_the_delay_has_passed():
    snapshot = Snapshot(requests=server(600))
    lesson = lesson_429(snapshot=snapshot, info=Info(remaining_tokens=10**6), retry_after=3.0)
    assert lesson.changes == (Lower("requests", 1.0 - 10.0 * 3.0),)


@pytest.mark.parametrize("answer_rate, limit", [
    (None, None),  # fewer than two answers: nothing to infer from
    (120.0, Limit(120.0 * INFER_FROM_429_SHARE, "probed", 1.5)),
    (1.0, Limit(1.0, "probed", 1 / 60)),  # at least one a minute
])
def test_429s_with_no_limit_known_infer_one_from_the_answer_rate(answer_rate, limit):
    lesson = lesson_429(retry_after=1.0, answer_rate=answer_rate)
    limits = [c.limit for c in lesson.changes if isinstance(c, SetLimit)]
    assert limits == ([] if limit is None else [limit])


def test_a_probed_limit_is_cut_once_per_episode():
    probed = Snapshot(requests=Limit(100.0, "probed", 100 / 60))
    first = lesson_429(snapshot=probed, retry_after=2.0)
    assert first.changes[0] == SetLimit("requests", Limit(75.0, "probed", 1.25))
    assert first.known.episode_end == NOW + 2.0
    again = learn_429(first.known, Snapshot(requests=first.changes[0].limit), None, 2.0,
                      Answer(NOW + 1.0), head_need=0, answer_rate=None, burst_s=1.0)
    assert not any(isinstance(c, SetLimit) for c in again.changes)  # same episode


def test_a_window_length_429_without_headers_makes_the_servers_limit_a_window():
    lesson = lesson_429(snapshot=Snapshot(requests=server(60)), retry_after=60.0,
                        answer=Answer(NOW, sent_at=NOW - 1.0))
    assert lesson.known.requests.window and lesson.known.requests.trusted
    assert lesson.known.requests.window_s == 60.0
    assert lesson.changes == (Hold(NOW + 60.0), SetLevel("requests", 1.0))


def test_a_window_length_429_with_no_limit_infers_what_was_answered_per_window():
    known = Known(window_answers=30)
    lesson = lesson_429(known, retry_after=60.0)
    assert lesson.changes[0] == SetLimit("requests", Limit(30.0, "probed", 30.0))
    assert lesson.known.window_answers == 0 and lesson.known.requests.held_most == 30


def test_a_spent_window_whose_end_is_unknown_is_probed_one_request_at_a_time():
    known = Known(requests=Shape(trusted=True, window=True, announces_remaining=True))
    lesson = lesson_429(known, Snapshot(requests=server(60, 60.0)), retry_after=60.0,
                        answer=Answer(NOW, sent_at=NOW - 1.0))
    wait = WINDOW_PROBE_S - 1.0  # from the refused request's admission
    assert lesson.changes == (Hold(NOW + wait), SetLevel("requests", 1.0 - 1.0 * wait))


# -- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bound_at, last_429, raised", [
    (NOW - 1.0, NOW - INFER_RAISE_AFTER_S, True),  # held requests back, no 429 for long enough
    (NOW - 1.0, NOW - 1.0, False),  # a recent 429
    (-math.inf, NOW - INFER_RAISE_AFTER_S, False),  # nobody pressed it
])
def test_a_probed_limit_that_holds_requests_back_without_429s_is_raised(bound_at, last_429, raised):
    known = Known(last_429=last_429, probed_at=NOW - 2 * INFER_RAISE_AFTER_S, window_answers=4)
    snapshot = Snapshot(requests=Limit(100.0, "probed", 100 / 60))
    lesson = learn_answer(known, snapshot, Answer(NOW), requests_bound_at=bound_at, burst_s=1.0)
    assert lesson.known.window_answers == 5
    limit = Limit(100.0 * INFER_RAISE_STEP, "probed", 100.0 * INFER_RAISE_STEP / 60)
    assert lesson.changes == ((SetLimit("requests", limit),) if raised else ())


def test_a_lessons_changes_are_made_on_the_state_in_order():
    now = [0.0]
    state = MemoryBudgetState(clock=lambda: now[0])
    apply(state, (SetLimit("requests", Limit(60.0, "server", 5.0)), Lower("requests", 2.0),
                  SetLevel("requests", 4.0), Lower("requests", 3.0), Hold(7.0)))
    assert state.read().requests == Limit(60.0, "server", 5.0)
    assert state.level("requests") == 3.0
    assert state.admit(0).wait_s == 7.0


def test_429s_within_a_windows_episode_infer_nothing_more():
    first = lesson_429(Known(window_answers=30), retry_after=60.0)
    limit = first.changes[0].limit
    again = learn_429(first.known, Snapshot(requests=limit), None, 60.0, Answer(NOW + 5.0),
                      head_need=0, answer_rate=None, burst_s=1.0)
    assert not any(isinstance(c, SetLimit) for c in again.changes)
    assert again.known.episode_end == NOW + 60.0


# -- refusals in a row (a server that counts refused requests) ---------------------------------


@pytest.mark.parametrize("retry_after, streak, horizon", [
    (0.2, 0, 0.2), (0.2, 1, 0.2),  # the first 429 of a streak: the server's delay
    (0.2, 2, 0.4), (0.2, 4, 1.6),  # each refusal in a row doubles it
    (0.2, 30, REFUSED_MAX_S),  # up to a limit
    (30.0, 3, 30.0),  # never shorter than the server asked
    (0.0, 5, 0.0),
])
def test_the_debts_horizon_doubles_with_each_refusal_in_a_row(retry_after, streak, horizon):
    assert refused_horizon(retry_after, streak) == pytest.approx(horizon)


def test_a_streak_stretches_the_delay_to_two_requests_refill_of_a_slow_budget():
    known = Known(refused_streak=20)
    answer = Answer(NOW, sent_at=NOW, first_after_429=True)
    lesson = lesson_429(known, Snapshot(requests=server(3)), None, 1.0, answer=answer)
    assert lesson.changes == (Lower("requests", 0.05 - 0.05 * 40.0),)  # 3 RPM: 40 s


@pytest.mark.parametrize("streak, first_after_429, after, debt_s", [
    (0, False, 1, 0.2),  # a first 429
    (0, True, 1, 0.2),
    (1, True, 2, 0.4),  # the first request sent after the delay was refused: the delay was short
    (1, False, 1, 0.2),  # one of a burst sent after it: we sent too much, the delay was right
    (3, True, 4, 1.6),
])
def test_a_refusal_of_the_first_request_after_a_429_lengthens_the_debt(streak, first_after_429,
                                                                       after, debt_s):
    known = Known(refused_streak=streak, last_429=NOW - 1.0)
    answer = Answer(NOW, sent_at=NOW, first_after_429=first_after_429)
    lesson = lesson_429(known, Snapshot(requests=server(300)), None, 0.2, answer=answer)
    assert lesson.known.refused_streak == after
    assert lesson.changes == (Lower("requests", 1.0 - 5.0 * debt_s),)


@pytest.mark.parametrize("sent_at, streak", [
    (NOW - 0.5, 0),  # sent after the last 429 and answered: the debt is paid
    (NOW - 2.0, 3),  # sent before it: says nothing of the debt now
    (None, 0),
])
def test_only_an_answer_to_a_request_sent_after_the_last_429_ends_a_streak(sent_at, streak):
    known = Known(refused_streak=3, last_429=NOW - 1.0)
    lesson = learn_answer(known, Snapshot(), Answer(NOW, sent_at=sent_at),
                          requests_bound_at=-math.inf, burst_s=1.0)
    assert lesson.known.refused_streak == streak
