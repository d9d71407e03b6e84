"""The retry vocabulary (`runner.retry`) as tables: full-jitter backoff drawn from an injected
source, attempts counted, and a give-up clock on a fake clock (no real sleeping anywhere)."""
from __future__ import annotations

import random

import pytest

from runner.retry import Attempts, Backoff, GiveUpClock


class Fixed:
    """A random source whose every draw is `value`."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("base, cap, attempt, draw, delay", [
    (0.5, 30.0, 0, 1.0, 0.5),     # the first retry: up to base
    (0.5, 30.0, 3, 1.0, 4.0),     # doubling per attempt
    (0.5, 30.0, 3, 0.25, 1.0),    # full jitter: anywhere from 0 to the ceiling
    (0.5, 30.0, 3, 0.0, 0.0),
    (0.5, 30.0, 6, 1.0, 30.0),    # capped
    (1.0, 300.0, 8, 1.0, 256.0),  # the batch calls' backoff
    (1.0, 300.0, 9, 0.5, 150.0),
    (1.0, 30.0, 3, 1.0, 8.0),     # the downloads' (their fifth try waits at most 8 s)
    (1.0, 5.0, 10_000, 1.0, 5.0),  # no overflow, however many attempts
])
def test_backoff_is_the_draw_times_the_capped_doubling(base, cap, attempt, draw, delay):
    assert Backoff(base, cap, rng=Fixed(draw)).delay(attempt) == delay


def test_backoff_draws_exactly_what_random_uniform_would_from_the_same_seed():
    # the draw moved from `rng.uniform(0, c)` to `c * rng.random()`: seeded runs are unchanged
    ours, theirs = random.Random(11), random.Random(11)
    backoff = Backoff(rng=ours)
    for attempt in range(12):
        assert backoff.delay(attempt) == theirs.uniform(0.0, backoff.ceiling(attempt))
    assert backoff.jitter(0.5) == theirs.uniform(0.0, 0.5)


@pytest.mark.parametrize("before, paced, counted, after", [
    (Attempts(), False, True, Attempts(1, 0, 1)),       # a failure retried
    (Attempts(), True, False, Attempts(1, 1, 0)),       # a 429 that said when: pacing, not counted
    (Attempts(), False, False, Attempts(1, 0, 0)),      # sent, neither (a pack sent job by job)
    (Attempts(4, 2, 2), False, True, Attempts(5, 2, 3)),
    (Attempts(4, 2, 2), True, False, Attempts(5, 3, 2)),
])
def test_each_outcome_is_one_more_sent_and_paced_or_counted_as_said(before, paced, counted, after):
    assert before.then(paced=paced, counted=counted) == after


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# (seconds to advance, then "fail" or "ok", what `failed()` said or None for a success)
GIVE_UP = [
    ("a first failure starts the clock", [(0, "fail", False)]),
    ("failures for less than the limit go on", [(0, "fail", False), (599.9, "fail", False)]),
    ("failures for the limit give up", [(0, "fail", False), (300, "fail", False),
                                        (300, "fail", True)]),
    ("time before the first failure does not count", [(5000, "fail", False), (599, "fail", False)]),
    ("a success starts it again", [(0, "fail", False), (599, "ok", None), (1, "fail", False),
                                   (599, "fail", False), (1, "fail", True)]),
]


@pytest.mark.parametrize("steps", [g[1] for g in GIVE_UP], ids=[g[0] for g in GIVE_UP])
def test_the_give_up_clock_runs_from_the_first_failure_since_the_last_success(steps):
    clock = FakeClock()
    give_up = GiveUpClock(600.0, clock)
    for advance, event, said in steps:
        clock.now += advance
        if event == "ok":
            give_up.succeeded()
        else:
            assert give_up.failed() is said


@pytest.mark.parametrize("limit", [-1.0, float("nan"), float("inf")])
def test_a_give_up_clock_needs_a_finite_limit(limit):
    with pytest.raises(ValueError):
        GiveUpClock(limit, FakeClock())


def test_attempts_are_validated_when_built():
    with pytest.raises(ValueError):
        Attempts(sent=1, counted=2)
    with pytest.raises(ValueError):
        Attempts(paced=-1)
