"""Charge calibration: what the server charges per token we estimate, measured from its
``remaining-tokens`` header (`ChargeAudit`), and the bounds of the factor it feeds."""
from __future__ import annotations

import bisect
import math

__all__ = [
    "CALIBRATION_ALPHA",
    "CALIBRATION_MAX",
    "CALIBRATION_MIN",
    "CALIBRATION_WINDOW_S",
    "ChargeAudit",
    "moved_factor",
]

CALIBRATION_ALPHA = 0.2
"""EWMA weight of one `calibrate()` sample: about the last ten samples count."""
CALIBRATION_MIN = 0.5  # see CALIBRATION_MAX
CALIBRATION_MAX = 2.0
"""Bounds of the charge factor: no run of odd samples can make us charge less than half or more
than twice our own estimate."""

CALIBRATION_WINDOW_S = 2.0
"""Shortest stretch of admissions one calibration sample spans. Requests whose order at the server
differs from ours blur a sample's two edges by about one request each; over a few seconds of
traffic that is a few percent, and the EWMA smooths it further."""
CALIBRATION_MIN_REQUESTS = 8
"""Fewest admissions one calibration sample spans, so that no single request dominates it."""
CALIBRATION_HORIZON_S = 4 * CALIBRATION_WINDOW_S
"""Observations older than this (by admission time) are forgotten."""
CALIBRATION_REORDER_S = 0.05
"""Requests admitted this close together may reach the server in either order."""
CALIBRATION_EDGE_SHARE = 0.05
"""A window is used only if the requests admitted within `CALIBRATION_REORDER_S` of its two ends
(whose order at the server is uncertain) carry at most this share of its estimate: a window that
starts inside a burst, where the server may have counted any of the burst first, is skipped."""
CALIBRATION_COVER = 0.5
"""Two observations ``dt`` apart prove the server's bucket stayed below full between them only if
``dt`` is under this fraction of the earlier one's ``reset`` (time to full with no traffic): the
slack absorbs the difference between our admission time and the server's."""


def moved_factor(factor: float, estimated: float, charged: float, *, weight: float) -> float:
    """The charge factor after one sample ``(estimated, charged)`` of the server's accounting: an
    EWMA step of `weight` towards ``charged / estimated``, kept within [CALIBRATION_MIN,
    CALIBRATION_MAX]. A sample with a non-positive side leaves `factor` as it is."""
    if estimated <= 0 or charged <= 0:
        return factor
    moved = (1 - weight) * factor + weight * (charged / estimated)
    return min(CALIBRATION_MAX, max(CALIBRATION_MIN, moved))


class ChargeAudit:
    """Measures what the server charges per token we estimate, from its ``remaining-tokens`` header.

    Each observation is one admitted request's headers, which show the server's token bucket right
    after it charged that request: its level (``remaining``) and the seconds it would take to fill
    with no traffic (``reset``). Between two observations a and b, taken in admission order, the
    server consumed ``remaining(a) - remaining(b) + rate × (t_b - t_a)`` tokens, provided its bucket
    never filled up in between (a full bucket stops refilling, and the formula would overcount).
    That consumption pays for the requests admitted after a up to b, whose estimates we know.

    `record` returns such a sample ``(estimated, charged)`` when a valid window ends at the new
    observation, else None. A window is valid when it spans at least `CALIBRATION_WINDOW_S` and
    `CALIBRATION_MIN_REQUESTS` admissions, and when every consecutive pair of observations in it
    is close enough that the bucket cannot have filled between them (`CALIBRATION_COVER`): gaps in
    traffic, idle stretches and observations of a full bucket all break windows. Requests refused
    with a 429 (`rejected`) were not charged, so their estimates leave the window's. Requests
    admitted close to either end may reach the server on the other side of it; a window is used
    only when they are a small part of it (`CALIBRATION_EDGE_SHARE`), so it grows past
    `CALIBRATION_WINDOW_S` when admissions are dense, and one starting inside a burst is skipped.
    Every admission is reported (`admitted`), observed or not. Pure: times and counts are given,
    nothing is read.
    """

    __slots__ = ("_observations", "_rejected", "_first_seq", "_admitted_at", "_admitted_total",
                 "_admitted_estimate")

    def __init__(self) -> None:
        # (seq, at, estimated_total, remaining, reset), sorted by seq (admission order)
        self._observations: list[tuple[int, float, int, int, float]] = []
        self._rejected: list[tuple[int, int]] = []  # (seq, estimate) of refused requests, sorted
        self._first_seq = 1  # admissions first_seq, first_seq + 1, ... in the three lists below
        self._admitted_at: list[float] = []
        self._admitted_total: list[int] = []  # estimated_total after each admission
        self._admitted_estimate: list[int] = []

    def admitted(self, seq: int, at: float, estimate: int, estimated_total: int) -> None:
        """Admission `seq` (numbered 1, 2, ... without gaps) at time `at`, estimated at
        `estimate`; `estimated_total` is the sum of our estimates of admissions 1..seq."""
        if not self._admitted_at:
            self._first_seq = seq
        self._admitted_at.append(at)
        self._admitted_total.append(estimated_total)
        self._admitted_estimate.append(estimate)
        gone = bisect.bisect_left(self._admitted_at,
                                  at - CALIBRATION_HORIZON_S - CALIBRATION_REORDER_S)
        if gone:
            del self._admitted_at[:gone], self._admitted_total[:gone], self._admitted_estimate[:gone]
            self._first_seq += gone

    def _near(self, seq: int, at: float) -> int:
        """Our estimates of the admissions other than `seq` within `CALIBRATION_REORDER_S` of it."""
        times, totals, estimates = self._admitted_at, self._admitted_total, self._admitted_estimate
        index = seq - self._first_seq
        if not 0 <= index < len(times):
            return 0
        low = bisect.bisect_left(times, at - CALIBRATION_REORDER_S)
        high = bisect.bisect_right(times, at + CALIBRATION_REORDER_S) - 1
        return totals[high] - (totals[low] - estimates[low]) - estimates[index]

    def rejected(self, seq: int, estimate: int) -> None:
        """Admission `seq`, estimated at `estimate` tokens, was refused (429): never charged."""
        bisect.insort(self._rejected, (seq, estimate))

    def record(self, seq: int, at: float, estimated_total: int, remaining: int, reset: float,
               rate: float) -> tuple[int, float] | None:
        """Admission number `seq` at time `at` (``estimated_total``: the sum of our estimates of
        admissions up to and including it) was answered with ``remaining`` tokens left, ``reset``
        seconds from full, by a server refilling ``rate`` tokens per second. Returns the sample of
        the window ending here, if valid: ``(our estimate, the server's charge)`` for it."""
        observations = self._observations
        entry = (seq, at, estimated_total, remaining, reset)
        bisect.insort(observations, entry)
        self._forget_before(observations[-1][1] - CALIBRATION_HORIZON_S)
        if reset <= 0:
            return None
        index = bisect.bisect_left(observations, entry)
        while True:  # walk back to the newest observation far enough behind this one
            index -= 1
            if index < 0:
                return None
            earlier, later = observations[index], observations[index + 1]
            if later[1] - earlier[1] >= CALIBRATION_COVER * earlier[4]:
                return None  # the bucket may have filled up in between
            if (at - earlier[1] >= CALIBRATION_WINDOW_S
                    and seq - earlier[0] >= CALIBRATION_MIN_REQUESTS
                    and (self._near(earlier[0], earlier[1]) + self._near(seq, at)
                         <= CALIBRATION_EDGE_SHARE * (estimated_total - earlier[2]))):
                break
        first_seq, first_at, first_total, first_remaining, _ = earlier
        rejected = self._rejected
        refused = rejected[bisect.bisect_right(rejected, (first_seq, math.inf)):
                           bisect.bisect_right(rejected, (seq, math.inf))]
        estimated = estimated_total - first_total - sum(estimate for _, estimate in refused)
        charged = first_remaining - remaining + rate * (at - first_at)
        return (estimated, charged) if estimated > 0 and charged > 0 else None

    def _forget_before(self, horizon: float) -> None:
        observations = self._observations
        drop = 0
        while drop < len(observations) and observations[drop][1] < horizon:
            drop += 1
        if drop:
            del observations[:drop]
            oldest = observations[0][0] if observations else math.inf
            del self._rejected[:bisect.bisect_left(self._rejected, (oldest, -1))]
