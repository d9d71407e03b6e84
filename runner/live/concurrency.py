"""Adaptive concurrency: how many requests one budget (endpoint + model) keeps in flight.

Two numbers bound a lane, and the smaller wins (`lane_limit`):

* **Little's law**, when the budget's rate is known: ``rate × latency × CONCURRENCY_HEADROOM``
  requests in flight use the whole budget at the observed latency. A latency that is high but flat
  is not congestion: it only means more requests must be in flight.
* **The server's capacity** (`ConcurrencyLimit`), learned from its answers as TCP and gradient
  concurrency limiters do (Netflix concurrency-limits' Gradient2 and Vegas; TCP's slow start and
  multiplicative decrease, RFC 5681). Latency that grows with the number in flight is a queue at
  the server (a local model server answering one request at a time); a read timeout is a queue
  longer than the timeout. Both shrink the limit; answers near the no-load latency grow it.

Slow start: a lane whose rate is unknown (a server that announces no limits) starts at
`INITIAL_LIMIT` and grows by one per answer whose latency stays near its minimum (doubling per round
trip) while the window is full. A lane whose rate is known is already paced by its budget (no more
than ``rate × latency`` can leave before the first answers come back, which is what Little's law
needs anyway), so the learned limit binds it only once the server has shown congestion.

Pure: latencies, times and in-flight counts come in as numbers, limits go out; no clock, no sleep.
"""
from __future__ import annotations

import math

__all__ = ["ConcurrencyLimit", "lane_limit", "littles_law", "MIN_CONCURRENCY",
           "CONCURRENCY_HEADROOM", "LATENCY_SMOOTHING"]

# Little's law sizing, for a lane whose rate is known (unchanged from the dispatcher's first version).
MIN_CONCURRENCY = 8           # floor of the Little's-law size: a few requests overlap even when fast
CONCURRENCY_HEADROOM = 1.5    # in flight = budget rate x latency x headroom, for requests waiting
                              # on the budget and for latency jitter

# The learned limit. Sources: Netflix concurrency-limits Gradient2Limit defaults (smoothing 0.2,
# rttTolerance 1.5, at most halving per update) and GradientLimit's sqrt queue allowance; TCP
# (RFC 5681): slow start adds one per acknowledgement, a loss halves the flight size, once per window.
INITIAL_LIMIT = 4             # slow start's first window after the first answer (RFC 6928 allows 4-10
                              # segments; a one-slot server then queues at most 4 x its latency)
MIN_LIMIT = 1                 # one request at a time is always allowed
LATENCY_SMOOTHING = 0.2       # EWMA weight of the newest latency sample (Gradient2: smoothing 0.2)
LATENCY_TOLERANCE = 1.5       # latency up to 1.5 x the no-load latency is not a queue (Gradient2's
                              # rttTolerance); above it the limit shrinks in proportion
MIN_GRADIENT = 0.5            # one answer can at most halve the target (Gradient2)
LIMIT_SMOOTHING = 0.2         # the limit moves this share of the way to its target per answer
                              # (Gradient2's smoothing)
TIMEOUT_DECREASE = 0.5        # a timeout halves the flight size (TCP loss: ssthresh = FlightSize/2)


def littles_law(rate_per_s: float, latency: float) -> int:
    """Requests in flight that use a budget of `rate_per_s` when each takes `latency` seconds
    (at least `MIN_CONCURRENCY`)."""
    return max(MIN_CONCURRENCY, math.ceil(rate_per_s * latency * CONCURRENCY_HEADROOM))


class ConcurrencyLimit:
    """The number of requests one server takes at once without queuing them, learned from answers.

    Contract:

    * `limit` is an int in [`minimum`, `maximum`]; it starts at `initial`.
    * Slow start: while answers come back within `LATENCY_TOLERANCE` × the no-load latency, each
      adds one if the window was full (`limit` in flight, this answer included: only then does the
      answer show the server coping with `limit` at once). The first answer over the tolerance
      (it waited in a queue), or a timeout, ends it.
    * Afterwards (Gradient2): each answer moves the limit `LIMIT_SMOOTHING` of the way to
      ``limit × gradient + sqrt(limit)``, where ``gradient = tolerance × no-load latency / smoothed
      latency`` clamped to [`MIN_GRADIENT`, 1]. Flat latency lets it grow (by the queue allowance
      sqrt(limit), only while the window is full); latency growing with the number in flight
      shrinks it. Against a server that answers one request at a time (latency = in flight × its
      service time) it settles at 3 to 4 (``n = n × 0.5 + sqrt(n)``), so answers take about 4 × the
      service time: inside a 120 s read timeout for services up to ~15 s (slow start can reach 6
      first). Longer services meet timeouts, below.
    * A timeout halves the number in flight (or the limit, if smaller), once per window: timeouts
      of requests sent before the last cut belong to the window already cut. The halved limit is
      also a ceiling (TCP's ssthresh): the queue allowance cannot climb back into timeouts; the
      ceiling rises by 1 / ceiling per answer of a full window that met no queue (its own latency
      within the tolerance: additive increase).
    * The no-load latency is the smallest smoothed latency seen; it never rises.
    """

    __slots__ = ("_limit", "_minimum", "_maximum", "_ceiling", "_slow_start", "_latency", "_no_load",
                 "_cut_at")

    def __init__(self, *, maximum: int, initial: int = INITIAL_LIMIT, minimum: int = MIN_LIMIT) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum} and {maximum}")
        self._minimum, self._maximum = minimum, maximum
        self._limit = float(min(maximum, max(minimum, initial)))
        self._ceiling = float(maximum)
        self._slow_start = True
        self._latency: float | None = None
        self._no_load: float | None = None
        self._cut_at = -math.inf

    @property
    def limit(self) -> int:
        return max(self._minimum, int(self._limit))

    @property
    def slow_start(self) -> bool:
        """True until the server has shown a queue (latency over the tolerance) or a timeout."""
        return self._slow_start

    @property
    def latency(self) -> float | None:
        """The smoothed latency of answers, seconds; None before the first."""
        return self._latency

    @property
    def no_load(self) -> float | None:
        """The smallest smoothed latency seen: the server's latency without a queue."""
        return self._no_load

    def on_answer(self, latency: float, in_flight: int) -> int:
        """An answer came back `latency` seconds after it was sent, with `in_flight` requests on the
        wire (itself included); returns the new limit."""
        if not math.isfinite(latency) or latency < 0:
            raise ValueError(f"latency must be a finite number >= 0, got {latency!r}")
        smoothed = latency if self._latency is None else \
            self._latency + LATENCY_SMOOTHING * (latency - self._latency)
        self._latency = smoothed
        self._no_load = smoothed if self._no_load is None else min(self._no_load, smoothed)
        full = in_flight >= self.limit
        queued = latency > LATENCY_TOLERANCE * self._no_load  # this answer waited in a queue
        if full and latency <= LATENCY_TOLERANCE * self._no_load:  # this answer met no queue:
            # additive increase of the ceiling a timeout left (TCP's AIMD)
            self._ceiling = min(float(self._maximum), self._ceiling + 1 / self._ceiling)
        if self._slow_start:
            if not queued:
                if full:
                    self._set(self._limit + 1)
                return self.limit
            self._slow_start = False
            self._set(max(self._limit, in_flight))  # what flew is the window that met the queue
        gradient = 1.0 if smoothed == 0 else \
            min(1.0, max(MIN_GRADIENT, LATENCY_TOLERANCE * self._no_load / smoothed))
        if gradient < 1.0 or full:
            target = self._limit * gradient + math.sqrt(self._limit)
            self._set(self._limit + LIMIT_SMOOTHING * (target - self._limit))
        return self.limit

    def on_timeout(self, sent_at: float, now: float, in_flight: int) -> int:
        """A request sent at `sent_at` got no answer within the read timeout, seen at `now` with
        `in_flight` requests on the wire (itself included); returns the new limit."""
        self._slow_start = False
        if sent_at >= self._cut_at:
            self._cut_at = now
            self._ceiling = float(self._maximum)
            self._set(min(self._limit, max(in_flight, 1)) * TIMEOUT_DECREASE)
            self._ceiling = max(float(self._minimum), self._limit)
        return self.limit

    def _set(self, limit: float) -> None:
        self._limit = min(self._ceiling, max(float(self._minimum), limit))


def lane_limit(learned: ConcurrencyLimit, *, cap: int, rate_per_s: float | None,
               burst: float = 0.0) -> int:
    """Requests one lane may have in flight: at most `cap`; with a known rate, what Little's law
    needs at the learned latency (the cap before any answer), or the `burst` the budget may spend
    at once when that is more (a window's quota), and the learned limit once the server has shown
    congestion; with no rate, the learned limit (slow start included)."""
    if rate_per_s is None:
        return min(cap, learned.limit)
    latency = learned.latency
    need = cap if latency is None else max(littles_law(rate_per_s, latency), math.ceil(burst))
    if learned.slow_start:
        return min(cap, need)
    return min(cap, need, learned.limit)
