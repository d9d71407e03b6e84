"""The token bucket: a continuously refilling budget of one unit (requests or tokens) whose level
may go negative (debt), so that a request larger than the bucket is admitted when it is full and
pacing stays exact for any request size. Pure arithmetic on an injected clock."""
from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["TIME_EPSILON_S", "TokenBucket"]

TIME_EPSILON_S = 1e-9
"""A wait shorter than this is no wait. Covers float rounding in ``level + rate * dt`` (so a waiter
woken exactly on time is admitted) and is coarser than the clock's resolution, so a waiter can never
spin on sleeps too small to move the clock."""


def check_positive(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_amount(amount: float) -> float:
    if not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"amount must be a finite number >= 0, got {amount!r}")
    return float(amount)


class TokenBucket:
    """Continuously refilling bucket; level may go negative (debt).

    Invariants: ``level() <= capacity``; the level grows by ``rate`` per second of ``clock()`` until
    it is full. ``rate`` is units per second. The bucket starts full unless ``level`` is given.
    It reads the clock first when first used and refills from then on, so it may be built before
    the event loop runs.
    """

    __slots__ = ("_rate", "_capacity", "_level", "_last", "_clock")

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float],
        level: float | None = None,
    ) -> None:
        self._rate = check_positive(rate, "rate")
        self._capacity = check_positive(capacity, "capacity")
        self._level = self._capacity if level is None else min(float(level), self._capacity)
        self._last: float | None = None
        self._clock = clock

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    def _refill(self) -> float:
        now = self._clock()
        if self._last is not None and now > self._last:
            self._level = min(self._capacity, self._level + (now - self._last) * self._rate)
        if self._last is None or now > self._last:
            self._last = now
        return self._level

    def level(self) -> float:
        """The level now, after refilling for the time elapsed."""
        return self._refill()

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` fits (0.0 if it fits now). An amount above capacity fits when the
        bucket is full; taking it then drives the level negative."""
        need = min(check_amount(amount), self._capacity)
        wait = (need - self._refill()) / self._rate
        return wait if wait > TIME_EPSILON_S else 0.0

    def has_capacity(self, amount: float) -> bool:
        """True when `amount` fits now (see `wait_time`)."""
        return self.wait_time(amount) == 0.0

    def take(self, amount: float) -> None:
        """Deduct `amount` now, whether or not it fits (the level may go negative)."""
        self._refill()
        self._level -= check_amount(amount)

    def refund(self, amount: float) -> None:
        """Give `amount` back, never above capacity."""
        self._refill()
        self._level = min(self._capacity, self._level + check_amount(amount))

    def add_debt(self, amount: float) -> None:
        """Deduct `amount` that was spent without `take` (the level may go negative)."""
        self.take(amount)

    def correct(self, remaining: float) -> None:
        """The server says it holds `remaining`: ``level = min(level, remaining)``. A higher number
        is never trusted, since our own in-flight requests may not be counted in it yet."""
        if math.isfinite(remaining):
            self._level = min(self._refill(), float(remaining))

    def set_level(self, level: float) -> None:
        """The server says it holds `level` and is trusted: the level becomes that, up or down,
        clipped to the capacity."""
        if math.isfinite(level):
            self._refill()
            self._level = min(self._capacity, float(level))

    def set_rate(self, rate: float, capacity: float) -> None:
        """Change rate and capacity from now on; time elapsed so far refills at the old rate, and
        the level is clipped to the new capacity (it never jumps up)."""
        rate = check_positive(rate, "rate")
        capacity = check_positive(capacity, "capacity")
        self._refill()
        self._rate, self._capacity = rate, capacity
        self._level = min(self._level, capacity)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate:g}/s, capacity={self._capacity:g}, level={self._level:g})"
