"""The limiter: admit requests to one (base URL, model) budget so its RPM and TPM are used in full
and the server's own buckets never run dry.

Model. An OpenAI-style server refills each limit continuously at ``limit / 60`` per second. We
mirror each limit with a `TokenBucket` of the same rate and a *smaller* capacity,
``limit * burst_s / 60``: in steady state we send exactly the server's rate, and the most we ever
send at once is ``burst_s`` seconds' worth, which a server holding a whole minute's worth always
absorbs. A request larger than our capacity is admitted when the bucket is full and drives the
level negative (debt), so pacing stays exact for any request size.

`RateLimiter` pairs a requests bucket and a tokens bucket, queues callers FIFO, and learns from
response headers (`observe`), 429s (`on_rate_limited`) and charge mismatches (`calibrate`).
`Limiters` holds one `RateLimiter` per (base_url, model).

The dispatcher's side of the contract, per admitted request: call exactly one of `observe(info)`
(any response, including one with no rate-limit headers), `on_rate_limited(retry_after, info)` (a
429) or `on_failure()` (no response at all). During a cautious start the next request waits for it.

Errors::

    ValueError
     └── RequestTooLarge   acquire(tokens) with tokens > the whole per-minute TPM: never admissible
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_BURST_S",
    "LimiterStats",
    "Limiters",
    "RateLimitInfoLike",
    "RateLimiter",
    "RequestTooLarge",
    "TokenBucket",
]

MINUTE_S = 60.0
"""Server limits are per minute; bucket rates are per second."""

DEFAULT_BURST_S = 1.0
"""Seconds of budget a bucket holds. OpenAI documents that a per-minute limit may be enforced in
shorter slices (60,000 RPM as 1,000 requests per second), so a burst above 1 s can draw 429s at the
start of a run while a smaller one gains nothing: steady-state throughput is the full rate anyway."""

TIME_EPSILON_S = 1e-9
"""A wait shorter than this is no wait. Covers float rounding in ``level + rate * dt`` (so a waiter
woken exactly on time is admitted) and is coarser than the clock's resolution, so a waiter can never
spin on sleeps too small to move the clock."""

FALLBACK_RETRY_AFTER_S = 1.0
"""Debt horizon for a 429 whose response gave no usable ``retry-after``."""

INFER_MAX_RESET_S = 30.0
"""Infer a missing limit from ``remaining / (1 - reset / 60)`` only while ``reset`` is below this,
i.e. while the server's bucket is at least half full; closer to empty the division amplifies the
rounding of the headers into a wild guess."""

CALIBRATION_ALPHA = 0.2
"""EWMA weight of one `calibrate()` sample: about the last ten samples count."""
CALIBRATION_MIN = 0.5
CALIBRATION_MAX = 2.0
"""Bounds of the charge factor: no run of odd samples can make us charge less than half or more
than twice our own estimate."""

_REQUEST = 1  # one request costs one unit of the requests bucket


class RequestTooLarge(ValueError):
    """A request needs more tokens than the whole per-minute TPM: no wait can ever admit it."""

    def __init__(self, tokens: int, tpm: float) -> None:
        super().__init__(
            f"request needs {tokens} tokens but the whole budget is {tpm:g} tokens per minute; "
            "it can never be admitted"
        )
        self.tokens = tokens
        self.tpm = tpm


class RateLimitInfoLike(Protocol):
    """The shape of `runner.headers.RateLimitInfo`; each field None when the header was absent.
    ``reset_*`` is seconds until that server bucket is full again."""

    @property
    def limit_requests(self) -> int | None: ...
    @property
    def remaining_requests(self) -> int | None: ...
    @property
    def reset_requests(self) -> float | None: ...
    @property
    def limit_tokens(self) -> int | None: ...
    @property
    def remaining_tokens(self) -> int | None: ...
    @property
    def reset_tokens(self) -> float | None: ...


_INFO_FIELDS = ("limit_requests", "remaining_requests", "reset_requests",
                "limit_tokens", "remaining_tokens", "reset_tokens")


def _check_positive(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_amount(amount: float) -> float:
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
        self._rate = _check_positive(rate, "rate")
        self._capacity = _check_positive(capacity, "capacity")
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
        need = min(_check_amount(amount), self._capacity)
        wait = (need - self._refill()) / self._rate
        return wait if wait > TIME_EPSILON_S else 0.0

    def has_capacity(self, amount: float) -> bool:
        """True when `amount` fits now (see `wait_time`)."""
        return self.wait_time(amount) == 0.0

    def take(self, amount: float) -> None:
        """Deduct `amount` now, whether or not it fits (the level may go negative)."""
        self._refill()
        self._level -= _check_amount(amount)

    def refund(self, amount: float) -> None:
        """Give `amount` back, never above capacity."""
        self._refill()
        self._level = min(self._capacity, self._level + _check_amount(amount))

    def add_debt(self, amount: float) -> None:
        """Deduct `amount` that was spent without `take` (the level may go negative)."""
        self.take(amount)

    def correct(self, remaining: float) -> None:
        """The server says it holds `remaining`: ``level = min(level, remaining)``. A higher number
        is never trusted, since our own in-flight requests may not be counted in it yet."""
        if math.isfinite(remaining):
            self._level = min(self._refill(), float(remaining))

    def set_rate(self, rate: float, capacity: float) -> None:
        """Change rate and capacity from now on; time elapsed so far refills at the old rate, and
        the level is clipped to the new capacity (it never jumps up)."""
        rate = _check_positive(rate, "rate")
        capacity = _check_positive(capacity, "capacity")
        self._refill()
        self._rate, self._capacity = rate, capacity
        self._level = min(self._level, capacity)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate:g}/s, capacity={self._capacity:g}, level={self._level:g})"


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """A snapshot of one `RateLimiter`'s counters since it was built.

    requests: requests admitted. tokens: tokens charged for them (after calibration).
    wait_s: total seconds callers spent inside `acquire` before admission (cancelled calls excluded).
    rate_limited: 429s reported through `on_rate_limited`.
    """

    requests: int = 0
    tokens: int = 0
    wait_s: float = 0.0
    rate_limited: int = 0


class _Limit:
    """One dimension (requests or tokens): its per-minute limit, where that number came from, and
    the bucket that paces it. ``bucket is None`` means unknown (before the first observation) or
    unlimited (after it)."""

    __slots__ = ("limit", "source", "bucket")

    def __init__(self) -> None:
        self.limit: float | None = None
        self.source: str | None = None  # "user", "server" or "inferred"
        self.bucket: TokenBucket | None = None


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class RateLimiter:
    """The budget of one (base URL, model): a requests bucket and a tokens bucket.

    ``rpm``/``tpm``: the user's numbers, or None for unknown (learned from headers). ``burst_s``:
    seconds of budget each bucket holds. ``clock`` defaults to the running loop's ``time()``,
    ``sleep`` to `asyncio.sleep`; both must tell the same time.

    Contract of `acquire`:

    * FIFO: callers are admitted in arrival order, so a large request is never starved by small
      ones. The head of the queue sleeps exactly until both buckets admit it; it re-checks early
      only when the state changes (`observe`, `on_rate_limited`, `on_failure`, `calibrate`).
    * A cancelled caller leaves the queue and consumes nothing.
    * Cautious start: while rpm or tpm is unknown and nothing has been observed, exactly one request
      (a probe) is admitted; the rest wait for the first `observe`. A limit the server does not
      announce by then is treated as unlimited until a later response announces one.
    """

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        burst_s: float = DEFAULT_BURST_S,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self._burst_s = _check_positive(burst_s, "burst_s")
        self._clock = clock if clock is not None else _loop_time
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._requests = _Limit()
        self._tokens = _Limit()
        for dim, value, name in ((self._requests, rpm, "rpm"), (self._tokens, tpm, "tpm")):
            if value is not None:
                self._set_limit(dim, _check_positive(value, name), "user")
        self._observed = False
        self._probe_in_flight = False
        self._hold_until = -math.inf  # used only when a 429 finds no bucket to put into debt
        self._factor = 1.0
        self._lock = asyncio.Lock()  # FIFO; its holder is the head of the queue
        self._wake: asyncio.Future[None] | None = None  # resolves when the head should re-check
        self._head_need = 0  # tokens the head of the queue is waiting for
        self._admitted_requests = 0
        self._admitted_tokens = 0
        self._wait_s = 0.0
        self._rate_limited = 0

    # -- what callers read -------------------------------------------------------------------

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit in force; None while unknown or unlimited."""
        return self._requests.limit

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute limit in force; None while unknown or unlimited."""
        return self._tokens.limit

    @property
    def requests_bucket(self) -> TokenBucket | None:
        """The bucket pacing requests (for display); None while unknown or unlimited."""
        return self._requests.bucket

    @property
    def tokens_bucket(self) -> TokenBucket | None:
        """The bucket pacing tokens (for display); None while unknown or unlimited."""
        return self._tokens.bucket

    @property
    def calibration(self) -> float:
        """The factor `charge()` applies to estimates, within [CALIBRATION_MIN, CALIBRATION_MAX]."""
        return self._factor

    @property
    def stats(self) -> LimiterStats:
        return LimiterStats(self._admitted_requests, self._admitted_tokens, self._wait_s,
                            self._rate_limited)

    def charge(self, estimate: int) -> int:
        """Tokens to deduct for a request we estimate at `estimate`: ``ceil(estimate × factor)``."""
        if self._factor == 1.0:
            return int(estimate)
        return max(0, math.ceil(round(estimate * self._factor, 6)))  # round: 100 × 1.1 is 111 else

    # -- admission ---------------------------------------------------------------------------

    async def acquire(self, tokens: int) -> int:
        """Wait until a request of `tokens` estimated tokens may be sent, deduct it, and return the
        tokens actually charged (``charge(tokens)``, at most the TPM).

        Raises `RequestTooLarge` at once when ``tokens`` exceeds the per-minute TPM in force, or
        as soon as a learned TPM shows it does while it waits.
        """
        if not (isinstance(tokens, int) and tokens >= 0):
            raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")
        self._check_fits(tokens)
        arrived = self._clock()
        async with self._lock:
            while True:
                self._check_fits(tokens)
                charged = self._charged(tokens)
                delay = self._delay(charged)
                if delay == 0.0:
                    break
                self._head_need = charged
                try:
                    await self._wait(delay)
                finally:
                    self._head_need = 0
            self._admit(charged)
        self._wait_s += self._clock() - arrived
        return charged

    def _check_fits(self, tokens: int) -> None:
        tpm = self._tokens.limit
        if tpm is not None and tokens > tpm:
            raise RequestTooLarge(tokens, tpm)

    def _charged(self, tokens: int) -> int:
        charged = self.charge(tokens)
        tpm = self._tokens.limit
        return charged if tpm is None else min(charged, math.floor(tpm))

    def _probing(self) -> bool:
        return not self._observed and (self._requests.limit is None or self._tokens.limit is None)

    def _delay(self, charged: int) -> float:
        """Seconds until the head may be admitted; inf while it waits on a probe's answer."""
        if self._probing() and self._probe_in_flight:
            return math.inf
        delay = self._hold_until - self._clock()
        for dim, amount in ((self._requests, _REQUEST), (self._tokens, charged)):
            if dim.bucket is not None:
                delay = max(delay, dim.bucket.wait_time(amount))
        return delay if delay > TIME_EPSILON_S else 0.0

    async def _wait(self, delay: float) -> None:
        """Sleep `delay` (forever if inf), or less if the state changes meanwhile."""
        wake = self._wake = asyncio.get_running_loop().create_future()
        sleeper = None if math.isinf(delay) else asyncio.ensure_future(self._sleep(delay))
        try:
            if sleeper is None:
                await wake
            else:
                await asyncio.wait((sleeper, wake), return_when=asyncio.FIRST_COMPLETED)
                if sleeper.done():
                    sleeper.result()  # surface a failing injected sleep
        finally:
            self._wake = None
            if sleeper is not None and not sleeper.done():
                sleeper.cancel()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _admit(self, charged: int) -> None:
        if self._probing():
            self._probe_in_flight = True
        if self._requests.bucket is not None:
            self._requests.bucket.take(_REQUEST)
        if self._tokens.bucket is not None:
            self._tokens.bucket.take(charged)
        self._admitted_requests += 1
        self._admitted_tokens += charged

    # -- learning ----------------------------------------------------------------------------

    def _set_limit(self, dim: _Limit, limit: float, source: str) -> None:
        rate, capacity = limit / MINUTE_S, limit * self._burst_s / MINUTE_S
        if dim.bucket is None:
            dim.bucket = TokenBucket(rate, capacity, clock=self._clock)
        elif limit != dim.limit:
            dim.bucket.set_rate(rate, capacity)
        dim.limit, dim.source = limit, source

    def _learn(self, dim: _Limit, limit: int | None, remaining: int | None,
               reset: float | None) -> None:
        if limit is not None and limit > 0:
            self._set_limit(dim, float(limit), "server")
        elif remaining is not None and remaining > 0 and dim.source != "server":
            # No limit header (Azure): remaining <= limit always, so it is a safe lower bound; an
            # estimate from the reset time is used only when the user gave no number.
            estimate = float(remaining)
            if (dim.source != "user" and reset is not None
                    and 0 < reset < INFER_MAX_RESET_S and math.isfinite(reset)):
                estimate = max(estimate, remaining / (1 - reset / MINUTE_S))
            if dim.limit is None or estimate > dim.limit:
                self._set_limit(dim, estimate, "user" if dim.source == "user" else "inferred")
        if remaining is not None and dim.bucket is not None:
            dim.bucket.correct(remaining)

    def observe(self, info: RateLimitInfoLike) -> None:
        """Learn from one response's rate-limit headers (call it for every response).

        * ``limit_*`` sets that bucket's rate (limit/60 per s) and capacity (limit × burst_s/60),
          overriding the user's number either way: the server knows its limit.
        * ``remaining_*`` lowers the bucket's level to it, never raises it (`TokenBucket.correct`).
        * No ``limit_*`` (Azure sends only ``remaining_*``): a limit is inferred that is at least
          the largest ``remaining`` seen (see `INFER_MAX_RESET_S` for the use of ``reset_*``).
        * The first call ends the cautious start; a limit still unknown then counts as unlimited.
        """
        self._learn(self._requests, info.limit_requests, info.remaining_requests,
                    info.reset_requests)
        self._learn(self._tokens, info.limit_tokens, info.remaining_tokens, info.reset_tokens)
        self._observed = True
        self._probe_in_flight = False
        self._notify()

    def on_rate_limited(self, retry_after: float | None, info: RateLimitInfoLike | None) -> None:
        """A 429: admit nothing before ``retry_after`` seconds from now (`FALLBACK_RETRY_AFTER_S`
        when None or unusable), and no more than the buckets allow after that.

        The bucket(s) to blame go into debt such that they refill to the head waiter's need
        exactly when ``retry_after`` elapses; repeated 429s for the same episode do not stack
        (the level is lowered to that target, not by it). The requests bucket is blamed unless
        ``info`` shows requests left, the tokens bucket unless it shows a burst's worth of tokens
        left; if both are cleared, both are blamed. With no bucket to blame (limits unknown or
        unlimited) admission is held for ``retry_after`` instead. Headers in ``info`` are
        `observe`d first. During a cautious start this frees the probe slot.
        """
        self._rate_limited += 1
        if info is not None and any(getattr(info, f) is not None for f in _INFO_FIELDS):
            self.observe(info)
        if retry_after is None or not (math.isfinite(retry_after) and retry_after >= 0):
            retry_after = FALLBACK_RETRY_AFTER_S
        self._probe_in_flight = False
        debted = False
        for dim, need in self._blame(info):
            if dim.bucket is not None:
                bucket = dim.bucket
                bucket.correct(min(need, bucket.capacity) - bucket.rate * retry_after)
                debted = True
        if not debted:
            self._hold_until = max(self._hold_until, self._clock() + retry_after)
        self._notify()

    def _blame(self, info: RateLimitInfoLike | None) -> list[tuple[_Limit, float]]:
        token_need = max(self._head_need, 0)
        requests_ok = (info is not None and info.remaining_requests is not None
                       and info.remaining_requests >= _REQUEST)
        tokens_bucket = self._tokens.bucket
        tokens_ok = (info is not None and info.remaining_tokens is not None
                     and tokens_bucket is not None
                     and info.remaining_tokens >= max(tokens_bucket.capacity, token_need))
        both = [(self._requests, float(_REQUEST)), (self._tokens, float(token_need))]
        blamed = [pair for pair, ok in zip(both, (requests_ok, tokens_ok)) if not ok]
        return blamed or both

    def on_failure(self) -> None:
        """An admitted request ended with no response at all (connection error, timeout). Frees
        the probe slot during a cautious start, so the next waiter probes; otherwise a no-op."""
        if self._probe_in_flight:
            self._probe_in_flight = False
            self._notify()

    def calibrate(self, estimated: int, charged: int) -> None:
        """One sample of what the server charged (e.g. from the drop in ``remaining-tokens``) for a
        request we estimated at ``estimated``. The factor moves towards ``charged / estimated`` by
        `CALIBRATION_ALPHA` and stays within [CALIBRATION_MIN, CALIBRATION_MAX]; samples with a
        non-positive side are ignored."""
        if estimated <= 0 or charged <= 0:
            return
        factor = (1 - CALIBRATION_ALPHA) * self._factor + CALIBRATION_ALPHA * (charged / estimated)
        self._factor = min(CALIBRATION_MAX, max(CALIBRATION_MIN, factor))
        self._notify()

    def __repr__(self) -> str:
        return (f"RateLimiter(rpm={self.rpm!r}, tpm={self.tpm!r}, requests={self._requests.bucket!r}, "
                f"tokens={self._tokens.bucket!r})")


class Limiters:
    """Registry: one RateLimiter per (base_url, model) key, created on first use with the
    configured defaults (all keys share them; each learns its own limits from headers)."""

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        burst_s: float = DEFAULT_BURST_S,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self._defaults = dict(rpm=rpm, tpm=tpm, burst_s=burst_s, clock=clock, sleep=sleep)
        RateLimiter(**self._defaults)  # validate the defaults now, not on first use
        self._limiters: dict[tuple[str, str], RateLimiter] = {}

    def get(self, key: tuple[str, str]) -> RateLimiter:
        """The limiter for ``(base_url, model)``; the same object on every call."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = RateLimiter(**self._defaults)
        return limiter

    def items(self) -> list[tuple[tuple[str, str], RateLimiter]]:
        """Every (key, limiter) created so far, in creation order (for stats reports)."""
        return list(self._limiters.items())
