"""The limiter: admit requests to one (base URL, model) budget so its RPM and TPM are used in full
and the server's own buckets never run dry.

Model. An OpenAI-style server refills each limit continuously at ``limit / 60`` per second. We
mirror each limit with a `TokenBucket` of the same rate and a *smaller* capacity,
``limit * burst_s / 60``: in steady state we send exactly the server's rate, and the most we ever
send at once is ``burst_s`` seconds' worth, which a server holding a whole minute's worth always
absorbs. A request larger than our capacity is admitted when the bucket is full and drives the
level negative (debt), so pacing stays exact for any request size.

Gateways and windows (README, "Gateways and other servers"). Where the server's count can be
trusted — a gateway's headers (LiteLLM's, the IETF draft's, a limit and remaining with no reset),
or a budget shown to be a fixed window (by its ``reset``, or by a window-length 429) — the bucket's
level follows the server's ``remaining`` both ways and may hold as much as the server has shown
it holds at once; a spent window holds every request until its end (or one probe every
`runner.pacing.learning.WINDOW_PROBE_S` finds it). Against OpenAI's own buckets none of this
applies: the 1 s burst stays.

`RateLimiter` pairs a requests bucket and a tokens bucket (`runner.pacing.bucket`), queues callers
FIFO and admits them. What response headers (`observe`) and 429s (`on_rate_limited`) teach is
decided by the pure functions of `runner.pacing.learning`, whose lessons the limiter applies;
charge mismatches calibrate the charge (`calibrate`, fed by
`runner.pacing.calibration.ChargeAudit` from the ``remaining-tokens`` deltas). The numbers it
admits by (limits, bucket levels, a hold, the charge factor) sit behind
`runner.pacing.state.BudgetState`, in this process by default.
`runner.pacing.limiters.Limiters` holds one `RateLimiter` per (base_url, model).

The dispatcher's side of the contract, per admitted request: `acquire` returns a `Permit`; call
exactly one of `observe(permit, info)` (any response, including one with no rate-limit headers),
`on_rate_limited(permit, retry_after, info)` (a 429) or `on_failure(permit)` (no response at all)
with it. The permit ties the answer to its admission, which ages the headers correctly and
calibrates the charge; ``permit=None`` reports an answer tied to no admission. During a cautious
start the next request waits for it.

Errors::

    ValueError
     └── RequestTooLarge   acquire(tokens) with tokens > the whole per-minute TPM: never admissible
"""
from __future__ import annotations

import asyncio
import bisect
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runner.api.headers import RateLimitInfo
from runner.errors import RunnerError
from runner.pacing import learning
from runner.pacing.bucket import TokenBucket, check_positive
from runner.pacing.calibration import CALIBRATION_ALPHA, ChargeAudit, moved_factor
from runner.pacing.learning import FALLBACK_RETRY_AFTER_S, Answer, Known, Lesson
from runner.pacing.state import (
    MINUTE_S,
    REQUEST,
    BudgetState,
    Kind,
    Limit,
    MemoryBudgetState,
)

__all__ = [
    "BucketView",
    "DEFAULT_BURST_S",
    "FALLBACK_RETRY_AFTER_S",
    "LimiterStats",
    "Permit",
    "RateLimiter",
    "RequestTooLarge",
]

DEFAULT_BURST_S = 1.0
"""Seconds of budget a bucket holds. OpenAI documents that a per-minute limit may be enforced in
shorter slices (60,000 RPM as 1,000 requests per second), so a burst above 1 s can draw 429s at the
start of a run while a smaller one gains nothing: steady-state throughput is the full rate anyway."""

ASK_AGAIN_S = 1e-3
"""How soon a request whose reservation a 429 undid asks again (the state then says how long)."""

ANSWERS_KEPT = 2048  # answer times kept for the rate 429s infer a limit from (memory)
ADMISSIONS_KEPT = 65536  # admission times kept for `admitted_last_minute` (memory)
ANSWERED_KEPT = 4096  # admission numbers of answers kept for `_answer` (memory)


class RequestTooLarge(RunnerError, ValueError):
    """A request needs more tokens than the whole per-minute TPM: no wait can ever admit it."""

    def __init__(self, tokens: int, tpm: float) -> None:
        super().__init__(
            f"request needs {tokens} tokens but the whole budget is {tpm:g} tokens per minute; "
            "it can never be admitted"
        )
        self.tokens = tokens
        self.tpm = tpm


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


class _LoopTime:
    """The running loop's `time()`, looked up once (on first use, inside the loop) and cached."""

    __slots__ = ("_time",)

    def __init__(self) -> None:
        self._time: Callable[[], float] | None = None

    def __call__(self) -> float:
        if self._time is None:
            self._time = asyncio.get_running_loop().time
        return self._time()


@dataclass(frozen=True, slots=True)
class Permit:
    """One admission by `RateLimiter.acquire`, handed back with the answer to its request
    (`observe`, `on_rate_limited`, `on_failure`) so the limiter knows which admission it answers.

    seq: admission number, from 1. at: admission time (the limiter's clock). estimate: our estimate
    of this request's tokens. estimated_total: our estimates of admissions 1..seq, summed.
    charged_total: tokens charged to our bucket for admissions 1..seq. charged: tokens charged for
    this request (``charge(estimate)``, at most the TPM).
    """

    seq: int
    at: float
    estimate: int
    estimated_total: int
    charged_total: int
    charged: int


class RateLimiter:
    """The budget of one (base URL, model): a requests bucket and a tokens bucket.

    ``rpm``/``tpm``: the user's numbers, or None for unknown (learned from headers). ``burst_s``:
    seconds of budget each bucket holds. ``clock`` defaults to the running loop's ``time()``,
    ``sleep`` to `asyncio.sleep`; both must tell the same time. ``state``: where the budget's
    shared numbers live (`BudgetState`; by default a `MemoryBudgetState` on ``clock``): the
    limiter decides (what answers teach, by `runner.pacing.learning`'s lessons), the state only
    keeps the numbers and admits atomically.

    Contract of `acquire`:

    * FIFO: callers are admitted in arrival order, so a large request is never starved by small
      ones. The head of the queue sleeps exactly until both buckets admit it; it re-checks early
      only when the state changes (`observe`, `on_rate_limited`, `on_failure`, `calibrate`).
    * A cancelled caller leaves the queue and consumes nothing.
    * Cautious start: while rpm or tpm is unknown and nothing has been observed, exactly one request
      (a probe) is admitted; the rest wait for the first `observe`. A limit the server does not
      announce by then is treated as unlimited until a later response announces one.

    Calibration: the token charge follows the server's own accounting. `acquire` returns a
    `Permit` for each admission, so an `observe` given that permit is known to show the server's
    bucket right after it charged that request; a `ChargeAudit` turns
    those observations into samples of the server's charge per estimated token, fed to
    `calibrate`. It needs the server's ``limit``, ``remaining`` and ``reset`` token headers
    (OpenAI sends all three; with Azure's remaining-only headers the factor stays as it is).
    Traffic from other clients of the same budget counts as our own, so the factor also leaves
    room for it (within [CALIBRATION_MIN, CALIBRATION_MAX]).
    """

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        burst_s: float = DEFAULT_BURST_S,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
        state: BudgetState | None = None,
    ) -> None:
        self._burst_s = check_positive(burst_s, "burst_s")
        self._clock = clock if clock is not None else _LoopTime()
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._state: BudgetState = state if state is not None else MemoryBudgetState(
            clock=self._clock)
        # What the answers taught (`runner.pacing.learning`); changed only by `_apply`.
        self._known = Known()
        for kind, value, name in (("requests", rpm, "rpm"), ("tokens", tpm, "tpm")):
            if value is not None:
                limit = check_positive(value, name)
                self._state.set_limit(kind, Limit(limit, "user", limit * self._burst_s / MINUTE_S))
        self._observed = False
        self._probe_in_flight = False
        self._lock = asyncio.Lock()  # FIFO; its holder is the head of the queue
        self._reserved_wake: asyncio.Future | None = None  # a 429 ends a reserved request's sleep
        self._wake: asyncio.Future[None] | None = None  # resolves when the head should re-check
        self._head_need = 0  # tokens the head of the queue is waiting for
        self._admitted_requests = 0
        self._admitted_tokens = 0
        self._estimated_tokens = 0  # our estimates of everything admitted, before calibration
        self._audit = ChargeAudit()
        self._samples = 0  # calibration samples taken from the server's headers
        self._wait_s = 0.0
        self._rate_limited = 0
        self._answers: deque[float] = deque(maxlen=ANSWERS_KEPT)  # recent answers (not 429s)
        self._admissions: deque[float] = deque(maxlen=ADMISSIONS_KEPT)  # recent admission times
        self._alone: TokenBucket | None = None  # the server's requests bucket if only we spent it
        self._answered: list[int] = []  # admission numbers of recent answers, sorted (see _answer)
        self._requests_bound_at = -math.inf  # when the requests limit last made a request wait
        self._after_429: int | None = None  # the first admission after the last 429 (None: to come)

    # -- what callers read -------------------------------------------------------------------

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit in force; None while unknown or unlimited."""
        limit = self._state.read().requests
        return limit.per_minute if limit is not None else None

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute limit in force; None while unknown or unlimited."""
        limit = self._state.read().tokens
        return limit.per_minute if limit is not None else None

    @property
    def requests_bucket(self) -> BucketView | None:
        """The bucket pacing requests (for display); None while unknown or unlimited."""
        return self._view("requests")

    @property
    def tokens_bucket(self) -> BucketView | None:
        """The bucket pacing tokens (for display); None while unknown or unlimited."""
        return self._view("tokens")

    def _view(self, kind: Kind) -> BucketView | None:
        limit = self._state.read().limit(kind)
        return BucketView(self._state, kind, limit) if limit is not None else None

    @property
    def calibration(self) -> float:
        """The factor `charge()` applies to estimates, within [CALIBRATION_MIN, CALIBRATION_MAX]."""
        return self._state.read().factor

    @property
    def stats(self) -> LimiterStats:
        return LimiterStats(self._admitted_requests, self._admitted_tokens, self._wait_s,
                            self._rate_limited)

    @property
    def server_paced(self) -> bool:
        """Whether requests are paced at the limit the server announced, by our own bucket (not
        by a gateway's count or a window's, whose edges draw 429s of their own)."""
        limit = self._state.read().requests
        shape = self._known.requests
        return (limit is not None and limit.source == "server"
                and not shape.trusted and not shape.window)

    def now(self) -> float:
        """The limiter's clock."""
        return self._clock()

    def unexplained_spend(self, info: RateLimitInfo, permit: Permit | None) -> float:
        """How many more requests the server says are spent of this budget than we sent to it:
        its ``remaining`` (aged to now as in `observe`) against a bucket of its announced
        per-minute limit that only our admissions spend (0 on the first call, which starts that
        bucket, for a window, and without a reset header, which alone tells a bucket from a
        window)."""
        limit, remaining = info.limit_requests, info.remaining_requests
        if (limit is None or remaining is None or info.reset_requests is None
                or info.window_s not in (None, MINUTE_S) or self._known.requests.window):
            return 0.0  # only a bucket shown by its reset refills as the bucket below does
        rate = limit / MINUTE_S
        server_now = remaining + learning.since(self._answer(permit), "requests",
                                                Limit(limit, "server", 1.0))
        if self._alone is None or self._alone.rate != rate:
            self._alone = TokenBucket(rate, float(limit), clock=self._clock,
                                      level=server_now)
            return 0.0
        return max(0.0, self._alone.level() - server_now)

    def held_most(self, kind: Kind) -> int:
        """The most of `kind` the server has said it holds at once (from ``remaining``)."""
        return self._known.shape(kind).held_most

    def admitted_last_minute(self) -> int:
        """Requests admitted in the last minute (at most `ADMISSIONS_KEPT`: memory)."""
        self._forget_admissions(self._clock())
        return len(self._admissions)

    def _forget_admissions(self, now: float) -> None:
        admissions = self._admissions
        while admissions and now - admissions[0] > MINUTE_S:
            admissions.popleft()

    def rename_budget(self, model: str) -> None:
        """Name this budget after `model` (`BudgetState.rename`: a state shared with other
        processes keeps it under that name from now on; one of this process alone has none)."""
        self._state.rename(model)

    def charge(self, estimate: int) -> int:
        """Tokens to deduct for a request we estimate at `estimate`: ``ceil(estimate × factor)``."""
        factor = self._state.read().factor
        if factor == 1.0:
            return int(estimate)
        return max(0, math.ceil(round(estimate * factor, 6)))  # round: 100 × 1.1 is 111 else

    # -- admission ---------------------------------------------------------------------------

    async def acquire(self, tokens: int) -> Permit:
        """Wait until a request of `tokens` estimated tokens may be sent, deduct it, and return its
        `Permit`; ``permit.charged`` is the tokens actually charged (``charge(tokens)``, at most
        the TPM). Report the answer to the request with that permit.

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
                delay = await self._take(charged)
                if delay == 0.0:
                    break
                self._head_need = charged
                try:
                    await self._wait(delay)
                finally:
                    self._head_need = 0
            permit = self._admitted(tokens, charged)
        self._wait_s += self._clock() - arrived
        return permit

    def _check_fits(self, tokens: int) -> None:
        tpm = self.tpm
        if tpm is not None and tokens > tpm:
            raise RequestTooLarge(tokens, tpm)

    def _charged(self, tokens: int) -> int:
        charged = self.charge(tokens)
        tpm = self.tpm
        return charged if tpm is None else min(charged, math.floor(tpm))

    def _probing(self) -> bool:
        snapshot = self._state.read()
        return not self._observed and (snapshot.requests is None or snapshot.tokens is None)

    async def _take(self, charged: int) -> float:
        """Take one request and `charged` tokens from the state if it admits them now (0.0), else
        the seconds until the head may be admitted; inf while it waits on a probe's answer. A
        state shared over the network is a round trip; a local one never suspends here."""
        probing = self._probing()
        if probing and self._probe_in_flight:
            return math.inf
        admission = await self._state.admit_async(charged)
        probing = self._probing()  # a shared state's answer may bring limits others learned
        if admission.requests_bound:
            self._requests_bound_at = self._clock()  # the requests limit is holding requests back
        if admission.send_in_s > 0.0:  # taken now for later (a shared state's reservation)
            try:
                kept = await self._sleep_reserved(admission.send_in_s)
            except BaseException:
                self._state.refund(charged)  # stopped before sending: the budget is not spent
                raise
            if not kept:  # a 429 meanwhile: give it back and ask again (the server's delay wins)
                self._state.refund(charged)
                return ASK_AGAIN_S
        if admission.taken and probing:
            self._probe_in_flight = True
        return admission.wait_s

    async def _sleep_reserved(self, delay: float) -> bool:
        """Sleep until a reserved request's turn; False if a 429 came meanwhile (`on_rate_limited`
        ends the sleep: what the reservation assumed no longer holds)."""
        rate_limited = self._reserved_wake = asyncio.get_running_loop().create_future()
        sleeper = asyncio.ensure_future(self._sleep(delay))
        try:
            await asyncio.wait((sleeper, rate_limited), return_when=asyncio.FIRST_COMPLETED)
            if sleeper.done():
                sleeper.result()
            return not rate_limited.done()
        finally:
            self._reserved_wake = None
            if not sleeper.done():
                sleeper.cancel()

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

    def _admitted(self, tokens: int, charged: int) -> Permit:
        self._admitted_requests += 1
        self._admitted_tokens += charged
        self._estimated_tokens += tokens
        permit = Permit(self._admitted_requests, self._clock(), tokens, self._estimated_tokens,
                        self._admitted_tokens, charged)
        self._admissions.append(permit.at)
        self._forget_admissions(permit.at)
        if self._alone is not None:
            self._alone.take(REQUEST)
        self._audit.admitted(permit.seq, permit.at, tokens, permit.estimated_total)
        if self._after_429 is None:
            self._after_429 = permit.seq
        return permit

    # -- learning (the lessons are `runner.pacing.learning`'s; the limiter applies them) -------

    @property
    def trusts_server(self) -> bool:
        """Whether the server's own count paces this budget beyond our steady bucket (see
        `observe`): its headers are a gateway's, or show a window."""
        return self._known.trusted

    @property
    def windowed(self) -> bool:
        """Whether the server restores this budget at once when a window ends."""
        return self._known.windowed

    def _apply(self, lesson: Lesson) -> None:
        """What an answer taught becomes what is known, and its changes go to the state."""
        self._known = lesson.known
        learning.apply(self._state, lesson.changes)

    def _answer(self, permit: Permit | None) -> Answer:
        """The answer to `permit`'s request, now, as the lessons need it: what we admitted after
        that request and have had no answer to before this one (``permit=None``: tied to no
        admission)."""
        now = self._clock()
        if permit is None:
            return Answer(now)
        later = self._admitted_requests - permit.seq
        # Requests admitted after this one whose answers came first were most likely counted
        # first: a burst answered out of order must not read as spending.
        answered = self._answered
        counted = len(answered) - bisect.bisect_right(answered, permit.seq)
        unseen = max(0, later - counted)
        after_tokens = self._admitted_tokens - permit.charged_total
        return Answer(now, permit.at, permit.charged, float(unseen),
                      after_tokens * unseen / later if later else 0.0,
                      first_after_429=permit.seq == self._after_429)

    def _answered_now(self, permit: Permit | None) -> None:
        """Remember that `permit`'s request was answered (after `_answer` counted the others)."""
        if permit is None:
            return
        bisect.insort(self._answered, permit.seq)
        if len(self._answered) > ANSWERED_KEPT:
            del self._answered[: len(self._answered) - ANSWERED_KEPT]

    def observe(self, permit: Permit | None, info: RateLimitInfo) -> None:
        """Learn from one response's rate-limit headers (call it for every response).

        * ``limit_*`` sets that bucket's rate (limit/60 per s) and capacity (limit × burst_s/60),
          overriding the user's number either way: the server knows its limit.
        * ``remaining_*`` lowers the bucket's level to what the server holds now by its own
          count, never raises it (`BudgetState.lower`). Given the `permit` of the request the
          response answers, that is ``remaining`` plus the server's refill since the request was
          admitted, less what we admitted after it: an answer that took seconds does not reset
          the bucket to a level long past. With ``permit=None`` it is ``remaining`` itself.
        * No ``limit_*`` (Azure sends only ``remaining_*``): with ``reset_*`` a limit is inferred
          (see `runner.pacing.learning.INFER_MAX_RESET_S`); without it ``remaining`` only raises
          a user's number it exceeds, since it may count a window shorter than a minute.
        * A gateway's headers, or a ``reset`` that shows a fixed window, make the server's count
          trusted: the level follows ``remaining`` both ways (`runner.pacing.learning`).
        * The first call (or a 429 carrying headers) ends the cautious start; a limit still unknown
          then counts as unlimited.
        * Given the `permit`, the token headers also calibrate the charge (see the class
          docstring).
        """
        answer = self._answer(permit)
        self._learn_headers(info, answer)
        self._answered_now(permit)
        if permit is not None:
            self._audit_tokens(permit, info)
        now = answer.now
        self._answers.append(now)
        while now - self._answers[0] > MINUTE_S:
            self._answers.popleft()
        self._apply(learning.learn_answer(self._known, self._state.read(), answer,
                                          requests_bound_at=self._requests_bound_at,
                                          burst_s=self._burst_s))
        self._notify()

    def _learn_headers(self, info: RateLimitInfo, answer: Answer) -> None:
        self._apply(learning.learn_headers(self._known, self._state.read(), info, answer,
                                           burst_s=self._burst_s))
        self._observed = True
        self._probe_in_flight = False

    def _audit_tokens(self, permit: Permit, info: RateLimitInfo) -> None:
        if self._state.shared:
            # A budget shared with other processes (Redis): the server's `remaining` drops by
            # their requests too, which this process's admissions cannot explain; read as our
            # own undercount, they would raise the shared factor for everyone (measured: 704
            # tokens charged per 410-token request, 0.55 of the budget used, two processes).
            return
        limit = self._state.read().tokens
        if (limit is None or limit.source != "server" or info.remaining_tokens is None
                or info.reset_tokens is None):
            return  # the refill rate or the bucket's state is not the server's own word
        sample = self._audit.record(permit.seq, permit.at, permit.estimated_total,
                                    info.remaining_tokens, info.reset_tokens, limit.rate)
        if sample is not None:
            self._samples += 1  # the first samples are averaged: the initial 1.0 is only a guess
            self._move_factor(*sample, weight=max(CALIBRATION_ALPHA, 1 / self._samples))

    def on_rate_limited(self, permit: Permit | None, retry_after: float | None,
                        info: RateLimitInfo | None) -> None:
        """A 429: admit nothing before ``retry_after`` seconds from now (when None or unusable:
        `FALLBACK_RETRY_AFTER_S`, or `runner.pacing.learning.WINDOW_PROBE_S` for a gateway's
        budget), and no more than the buckets allow after that.

        The bucket(s) to blame go into debt such that they refill to the head waiter's need
        exactly when ``retry_after`` elapses; repeated 429s for the same episode do not stack
        (the level is lowered to that target, not by it). The requests bucket is blamed unless
        ``info`` shows requests left, the tokens bucket unless it shows a burst's worth of tokens
        left; if both are cleared, both are blamed. With no bucket to blame (limits unknown or
        unlimited) admission is held for ``retry_after`` instead. Headers in ``info`` are
        `observe`d first (aged by `permit`, as there). During a cautious start this frees the
        probe slot. A request taken ahead (`_sleep_reserved`) is given back and asks again.
        (`runner.pacing.learning.learn_429` says what a 429 teaches.)
        """
        self._rate_limited += 1
        if self._reserved_wake is not None and not self._reserved_wake.done():
            self._reserved_wake.set_result(None)
        if permit is not None:
            self._audit.rejected(permit.seq, permit.estimate)
        answer = self._answer(permit)
        if info is not None and not info.empty:
            self._learn_headers(info, answer)
        self._answered_now(permit)  # refused, not charged: not unseen by later answers either
        self._probe_in_flight = False
        self._apply(learning.learn_429(
            self._known, self._state.read(), info, retry_after, answer,
            head_need=self._head_need, answer_rate=self._answer_rate(answer.now),
            burst_s=self._burst_s))
        self._after_429 = None  # the next admission is the first after it
        self._notify()

    def _answer_rate(self, now: float) -> float | None:
        """Answers per minute over the recent ones (at least a second's span); None with fewer
        than two."""
        if len(self._answers) < 2:
            return None
        span = max(now - self._answers[0], 1.0)
        return len(self._answers) / span * MINUTE_S

    def on_failure(self, permit: Permit | None) -> None:
        """The request admitted with `permit` ended with no response at all (connection error,
        timeout). Frees the probe slot during a cautious start, so the next waiter probes;
        otherwise a no-op (the server may or may not have charged it: calibration windows stand)."""
        if self._probe_in_flight:
            self._probe_in_flight = False
            self._notify()

    def calibrate(self, estimated: float, charged: float) -> None:
        """One sample of what the server charged (e.g. from the drop in ``remaining-tokens``) for a
        request we estimated at ``estimated``. The factor moves towards ``charged / estimated`` by
        `CALIBRATION_ALPHA` and stays within [CALIBRATION_MIN, CALIBRATION_MAX]; samples with a
        non-positive side are ignored."""
        self._move_factor(estimated, charged, weight=CALIBRATION_ALPHA)
        self._notify()

    def _move_factor(self, estimated: float, charged: float, *, weight: float) -> None:
        factor = self._state.read().factor
        moved = moved_factor(factor, estimated, charged, weight=weight)
        if moved != factor:
            self._state.set_factor(moved)

    def __repr__(self) -> str:
        return f"RateLimiter(rpm={self.rpm!r}, tpm={self.tpm!r}, state={self._state!r})"


class BucketView:
    """One bucket of a budget, read from its state (for display): the `rate` and `capacity` in
    force when the view was taken; `level()` reads the level now."""

    __slots__ = ("_state", "_kind", "rate", "capacity")

    def __init__(self, state: BudgetState, kind: Kind, limit: Limit) -> None:
        self._state, self._kind = state, kind
        self.rate, self.capacity = limit.rate, limit.capacity

    def level(self) -> float:
        level = self._state.level(self._kind)
        return level if level is not None else math.inf

    def __repr__(self) -> str:
        return f"BucketView({self._kind}, rate={self.rate:g}/s, capacity={self.capacity:g})"
