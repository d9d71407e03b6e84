"""The retry vocabulary, the same for every retry loop of runner: how long to wait before trying
again (`Backoff`), what a request has spent (`Attempts`), and how long trying again may go on
without progress (`GiveUpClock`).

Three loops retry, each with its own rules, said in these words::

    who retries                  waits                               gives up
    a live request (`runner.     the server's delay, else            `--max-attempts` counted
    outcome.decide`)             Backoff(0.5 s, 30 s)                Attempts (paced 429s are not
                                                                     counted: they end the run after
                                                                     RATE_LIMIT_STALL_S without a
                                                                     success anywhere)
    a Files/Batches call         the server's delay, else            GiveUpClock(CALL_GIVE_UP_S):
    (`runner.batch.run`)         Backoff(1 s, 300 s)                 600 s of no usable answer stop
                                                                     the run (resumable)
    an image download            Backoff(1 s, 30 s)                  DOWNLOAD_ATTEMPTS counted
    (`runner.files.images`)                                          Attempts, or at once on 403/404

(Redis, lost mid-run, is tried again by `runner.pacing.redis_state` on a doubling delay of its
own, 0.1 s to 5 s without jitter, until its `--redis-timeout`: a reconnection, not a request.)

What the server's delay is, and whether an outcome is worth another try at all, is
`runner.outcome.classify`'s; an endpoint that cannot work (nothing listening, a route that answers
404 for itself) stops a live run or a batch run before its first success instead of being retried
(`runner.outcome.stops_before_answer`).

Pure: the random source and the clock are injected (seed one, or pass a function, in tests).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "RandomSource", "Backoff", "Attempts", "GiveUpClock"]

BACKOFF_BASE_S = 0.5  # the live path's backoff: uniform(0, min(BACKOFF_CAP_S, 0.5 s * 2**attempt))
BACKOFF_CAP_S = 30.0


class RandomSource(Protocol):
    """Where jitter comes from: `random.Random`, or anything with its `random()` (a draw in [0, 1))."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff (AWS "full jitter", tenacity's `wait_random_exponential`).

    `delay(attempt)` is uniform in [0, min(cap, base * 2**attempt)]. Use it when the server gave
    no delay: many clients retrying after the same failure spread out instead of returning in
    lockstep. The random source is injected; seed it in tests.
    """

    base: float = BACKOFF_BASE_S
    cap: float = BACKOFF_CAP_S
    rng: RandomSource = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 0):
            raise ValueError(f"base must be a positive number, got {self.base}")
        if not (math.isfinite(self.cap) and self.cap >= 0):
            raise ValueError(f"cap must be a non-negative number, got {self.cap}")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of `delay(attempt)`: min(cap, base * 2**attempt)."""
        if attempt < 0:
            raise ValueError(f"attempt is 0-based, got {attempt}")
        if attempt >= 64:  # 2**64 * base exceeds any sane cap; avoids float overflow
            return self.cap
        return min(self.cap, self.base * 2.0 ** attempt)

    def delay(self, attempt: int) -> float:
        """Seconds to sleep before retry number `attempt` (0-based: the first retry is 0)."""
        return self.jitter(self.ceiling(attempt))

    def jitter(self, span: float) -> float:
        """A draw uniform in [0, span] from this backoff's random source (`random.Random.uniform`
        draws the very same number from the same source)."""
        return span * self.rng.random()


@dataclass(frozen=True, slots=True)
class Attempts:
    """What one request has spent so far; each outcome gives the next value. Start from `Attempts()`.

    `sent`: outcomes seen (requests sent, answered or not). `paced`: how many of them were 429s.
    `counted`: attempts used against the loop's limit (`--max-attempts`, `DOWNLOAD_ATTEMPTS`):
    each retried failure counts one, except 429s, which never count (a 429 is pacing, not
    failure; see `runner.outcome.decide` for when they end the run instead). `counted - 1` after a failure is
    the 0-based attempt its backoff is drawn for.
    """

    sent: int = 0
    paced: int = 0
    counted: int = 0

    def __post_init__(self) -> None:
        if min(self.sent, self.paced, self.counted) < 0:
            raise ValueError("attempt counters cannot be negative")
        if self.paced > self.sent or self.counted > self.sent:
            raise ValueError("paced and counted outcomes are among those sent")

    def then(self, *, paced: bool = False, counted: bool = False) -> Attempts:
        """The counters after one more outcome: one more sent, paced and/or counted as said."""
        return Attempts(self.sent + 1, self.paced + paced, self.counted + counted)


@dataclass(slots=True)
class GiveUpClock:
    """How long trying again has gone on without progress, against `limit` seconds.

    The clock runs from the first failure after the last success (or since it was built), and
    `succeeded()` stops it: `failed()` says whether it has now run for `limit` or more. `clock`
    is injected (the run's loop time; a fake one in tests).
    """

    limit: float
    clock: Callable[[], float]
    since: float | None = None  # when the current run of failures began; None while none

    def __post_init__(self) -> None:
        if not (math.isfinite(self.limit) and self.limit >= 0):
            raise ValueError(f"limit must be a non-negative number of seconds, got {self.limit}")

    def failed(self) -> bool:
        """One more failure: True when failures have now gone on for `limit` seconds or more."""
        now = self.clock()
        if self.since is None:
            self.since = now
        return now - self.since >= self.limit

    def succeeded(self) -> None:
        """Progress: the next failure starts the clock again."""
        self.since = None
