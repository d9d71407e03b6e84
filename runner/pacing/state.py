"""A budget's state: the numbers that every process pacing one (base URL, model) budget would
have to share, behind one small interface, so that the pacing logic does not care where they live.

State (here): each limit in force (its per-minute number, where that number came from, its bucket's
rate and capacity), the two buckets' levels, the time before which nothing is admitted (a hold),
and the calibration factor. Not state (per process): the FIFO queue, the cautious start's probe,
when and by how much calibration moves, and the counters (`runner.pacing.limiter.RateLimiter`);
what answers and 429s teach, which bucket a 429 blames (`runner.pacing.learning`).

Each `BudgetState` operation is one atomic step, so a store shared between processes can do each
in one round trip; `admit_async` in particular checks and takes both buckets at once ("take one
request and N tokens if both fit, else say how long to wait"). Reads come as one `Snapshot`. The
levels are not in it: they move with the clock, and reading them is for display (`level`).
`MemoryBudgetState` keeps the state in this process and is the default;
`runner.pacing.redis_state.RedisBudgetState` keeps it where several processes share it
(``shared``). Both implement the whole protocol, so the limiter never asks what a state can do.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from runner.pacing.bucket import TIME_EPSILON_S, TokenBucket, check_positive

__all__ = [
    "MINUTE_S",
    "Admission",
    "BudgetState",
    "Kind",
    "Limit",
    "MemoryBudgetState",
    "Snapshot",
]

MINUTE_S = 60.0
"""Server limits are per minute; bucket rates are per second."""

REQUEST = 1
"""One request costs one unit of the requests bucket (the server counts requests, not bytes)."""

Kind = Literal["requests", "tokens"]
"""Which of a budget's two limits: requests per minute or tokens per minute."""

SOURCES = frozenset({"user", "server", "inferred", "probed"})
"""Where a limit comes from: the user's flag, the server's ``limit`` header, inferred from its
``remaining``/``reset`` headers, or probed from its 429s."""


@dataclass(frozen=True, slots=True)
class Limit:
    """One per-minute limit in force, checked when built.

    per_minute: the limit. source: where the number came from (see `SOURCES`). capacity: what its
    bucket holds. Its bucket refills at `rate` = ``per_minute / 60`` per second.
    """

    per_minute: float
    source: str
    capacity: float

    def __post_init__(self) -> None:
        check_positive(self.per_minute, "per_minute")
        check_positive(self.capacity, "capacity")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {sorted(SOURCES)}, got {self.source!r}")

    @property
    def rate(self) -> float:
        """Units per second."""
        return self.per_minute / MINUTE_S


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The limits in force and the charge factor, read together. A limit of None is unknown
    (before the first answer) or unlimited (after it); its kind is never waited for."""

    requests: Limit | None = None
    tokens: Limit | None = None
    factor: float = 1.0

    def limit(self, kind: Kind) -> Limit | None:
        return self.requests if kind == "requests" else self.tokens


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of `BudgetState.admit`: taken (``wait_s == 0.0``), or the seconds until it
    would be and which buckets hold it back (a hold alone binds neither).

    ``send_in_s``: taken, but to be sent only this many seconds from now (a reservation: a state
    shared over the network takes a request that fits within a second or two at once, so the
    caller need not ask again; `BudgetState.refund` gives it back if it is not sent)."""

    wait_s: float = 0.0
    requests_bound: bool = False
    tokens_bound: bool = False
    send_in_s: float = 0.0

    @property
    def taken(self) -> bool:
        return self.wait_s == 0.0


_TAKEN = Admission()


class BudgetState(Protocol):
    """The shared numbers of one budget; every method is one atomic step on them.

    The writes (`set_limit`, `lower`, `set_level`, `hold`, `set_factor`, `refund`, `rename`)
    return at once; a state kept outside this process applies them in order before any later
    admission of this process, and `read` answers from what its last round trip brought back."""

    shared: bool
    """Whether other processes spend this budget too (their requests move the server's count,
    and no admission of ours explains them)."""

    def read(self) -> Snapshot:
        """Both limits in force and the charge factor."""
        ...

    async def admit_async(self, tokens: float) -> Admission:
        """If the hold has passed and each limited bucket has room (one request; `tokens` tokens;
        an amount above a bucket's capacity has room when it is full), take both and return a
        taken `Admission`. Otherwise take nothing and return the seconds until all of them allow
        it; a wait under `TIME_EPSILON_S` is no wait. A state of this process answers without
        suspending; one kept elsewhere answers after one round trip, and may take a request for
        later (`Admission.send_in_s`)."""
        ...

    def refund(self, tokens: float) -> None:
        """Give back the last admission, taken but not sent (a reservation its caller gave up):
        one request and `tokens` tokens, to the budget it was taken from."""
        ...

    def set_limit(self, kind: Kind, limit: Limit) -> None:
        """Put `limit` in force for `kind`. A first limit's bucket starts full; a changed rate or
        capacity keeps the level, clipped to the new capacity (`TokenBucket.set_rate`)."""
        ...

    def lower(self, kind: Kind, level: float) -> None:
        """Lower `kind`'s bucket to `level` if it holds more; never raises it. No-op with no limit
        or a non-finite `level`."""
        ...

    def set_level(self, kind: Kind, level: float) -> None:
        """Set `kind`'s bucket to `level` (clipped to its capacity), up or down: the word of a
        server whose own count is trusted. No-op with no limit or a non-finite `level`."""
        ...

    def hold(self, until: float) -> None:
        """Admit nothing before clock time `until`; never shortens a hold already set."""
        ...

    def set_factor(self, factor: float) -> None:
        """The calibration factor applied to token estimates from now on."""
        ...

    def rename(self, model: str) -> None:
        """Keep this budget under `model`'s name from now on, taking what it knows along (the
        key's one budget, `runner.pacing.limiters.KEY_BUDGET`, once the models share it). A state
        no other process sees has no name: nothing changes."""
        ...

    def level(self, kind: Kind) -> float | None:
        """`kind`'s bucket level now (for display); None with no limit."""
        ...


class MemoryBudgetState:
    """`BudgetState` kept in this process: two `TokenBucket`\\ s on `clock`, a hold, a factor.
    `admit` is `admit_async` without the coroutine."""

    __slots__ = ("_clock", "_buckets", "_hold_until", "_snapshot")

    shared = False

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket | None] = {"requests": None, "tokens": None}
        self._hold_until = -math.inf
        self._snapshot = Snapshot()

    def read(self) -> Snapshot:
        return self._snapshot

    def admit(self, tokens: float) -> Admission:
        now = self._clock()
        requests, token_bucket = self._buckets["requests"], self._buckets["tokens"]
        requests_wait = requests.wait_time(REQUEST) if requests is not None else 0.0
        tokens_wait = token_bucket.wait_time(tokens) if token_bucket is not None else 0.0
        wait = max(self._hold_until - now, requests_wait, tokens_wait)
        if wait > TIME_EPSILON_S:
            return Admission(wait, requests_wait > 0.0, tokens_wait > 0.0)
        if requests is not None:
            requests.take(REQUEST)
        if token_bucket is not None:
            token_bucket.take(tokens)
        return _TAKEN

    async def admit_async(self, tokens: float) -> Admission:
        return self.admit(tokens)

    def refund(self, tokens: float) -> None:
        requests, token_bucket = self._buckets["requests"], self._buckets["tokens"]
        if requests is not None:
            requests.refund(REQUEST)
        if token_bucket is not None:
            token_bucket.refund(tokens)

    def rename(self, model: str) -> None:
        pass  # this process's alone: no name to change

    def set_limit(self, kind: Kind, limit: Limit) -> None:
        bucket = self._buckets[kind]
        if bucket is None:
            self._buckets[kind] = TokenBucket(limit.rate, limit.capacity, clock=self._clock)
        elif (limit.rate, limit.capacity) != (bucket.rate, bucket.capacity):
            bucket.set_rate(limit.rate, limit.capacity)
        snapshot = self._snapshot
        self._snapshot = Snapshot(limit if kind == "requests" else snapshot.requests,
                                  limit if kind == "tokens" else snapshot.tokens, snapshot.factor)

    def lower(self, kind: Kind, level: float) -> None:
        bucket = self._buckets[kind]
        if bucket is not None:
            bucket.correct(level)

    def set_level(self, kind: Kind, level: float) -> None:
        bucket = self._buckets[kind]
        if bucket is not None:
            bucket.set_level(level)

    def hold(self, until: float) -> None:
        self._hold_until = max(self._hold_until, until)

    def set_factor(self, factor: float) -> None:
        snapshot = self._snapshot
        self._snapshot = Snapshot(snapshot.requests, snapshot.tokens, factor)

    def level(self, kind: Kind) -> float | None:
        bucket = self._buckets[kind]
        return bucket.level() if bucket is not None else None

    def __repr__(self) -> str:
        return (f"MemoryBudgetState(requests={self._buckets['requests']!r}, "
                f"tokens={self._buckets['tokens']!r})")
