"""What the server's answers teach one budget, as pure functions: given what is known, one answer's
headers, one answer or one 429 gives a `Lesson`: what is known now, and the changes the budget's
state (`runner.pacing.state.BudgetState`) is to make. The limiter (`runner.pacing.limiter`)
admits; it learns only by applying lessons.

    an answer's headers ─► learn_headers ─┐
    any answer ──────────► learn_answer  ─┼─► Lesson ─► known: what the next lesson starts from
    a 429 ───────────────► learn_429     ─┘         └─► changes: SetLimit · Lower · SetLevel · Hold,
                                                        applied to the state in order (`apply`)

What is learned:

* **Limits.** A ``limit`` header is the server's word (source "server"); without one (Azure),
  ``remaining`` and ``reset`` infer one ("inferred", see `INFER_MAX_RESET_S`) or raise a user's
  number that is certainly too low; 429s with no limit known probe one ("probed",
  `INFER_FROM_429_SHARE`), raised again while it holds requests back and meets no 429.
* **Levels.** ``remaining``, aged to now (`since`: the server's refill since it took the request,
  less what we admitted after it and had no answer to before this one), lowers our bucket to the
  server's count; a trusted server's count sets it, both ways.
* **Shape** (`Shape`, per kind). Whether the server's count is trusted beyond our steady 1 s
  bucket (a gateway's headers), whether the budget is a fixed window (by its ``reset``, or by a
  window-length 429: `WINDOW_429_MIN_S`), the most it has shown it holds at once, and where its
  current window began and ends.
* **Debt.** A 429 puts the blamed bucket(s) into debt that clears when the server's delay has
  passed, or, for a window, holds everything until the window's end (or a probe finds it).

Every function here is pure: the same inputs give the same lesson, and nothing else changes.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

from runner.api.headers import RateLimitInfo
from runner.pacing.state import MINUTE_S, REQUEST, BudgetState, Kind, Limit, Snapshot

__all__ = [
    "FALLBACK_RETRY_AFTER_S", "INFER_FROM_429_SHARE", "INFER_MAX_RESET_S", "INFER_RAISE_AFTER_S",
    "INFER_RAISE_STEP", "KINDS", "REFUSED_AGAIN_FACTOR", "REFUSED_MAX_S", "WINDOW_429_MIN_S", "WINDOW_PROBE_S", "WINDOW_SHAPE_MARGIN",
    "Answer", "Change", "Hold", "Known", "Lesson", "Lower", "SetLevel", "SetLimit", "Shape",
    "apply", "blame", "learn_429", "refused_horizon", "learn_answer", "learn_headers", "since", "window_end",
]

KINDS: tuple[Kind, Kind] = ("requests", "tokens")

FALLBACK_RETRY_AFTER_S = 1.0
"""Debt horizon for a 429 whose response gave no usable ``retry-after``. Our choice, not the
server's: one second, the slice a per-minute limit may be enforced in (see
`runner.pacing.limiter.DEFAULT_BURST_S`)."""

INFER_FROM_429_SHARE = 0.75
"""When 429s arrive and no limit is known at all (a server that announces none, like Azure without
limit headers), the requests limit is inferred as this share of the rate the server was answering
at; each later 429 episode (at most one per second or per retry-after) lowers an inferred limit by
the same factor, and every `INFER_RAISE_AFTER_S` without a 429, while the limit is holding requests
back, raises it by `INFER_RAISE_STEP` to probe for more (a limit nobody presses is not raised).
The three numbers were tuned together on the simulator (tests/test_pacing.py, Azure without
limits: 0.87 of the ideal time, 4.5 % 429s)."""
INFER_RAISE_AFTER_S = 10.0  # tuned with INFER_FROM_429_SHARE
INFER_RAISE_STEP = 1.02  # tuned with INFER_FROM_429_SHARE

INFER_MAX_RESET_S = 30.0
"""Infer a missing limit from ``remaining / (1 - reset / 60)`` only while ``reset`` is below this,
i.e. while the server's bucket is at least half full; closer to empty the division amplifies the
rounding of the headers into a wild guess."""

WINDOW_SHAPE_MARGIN = 0.1
"""A budget is window-shaped when the server says it is further from fully restored than a
continuously refilling bucket could be: ``reset × rate`` exceeds the units spent
(``limit - remaining``) by more than this share of the limit (and at least one unit). OpenAI's
buckets give ``reset × rate == limit - remaining`` to the millisecond; a window restores all its
quota at once, so after one request of a fresh 60 s window ``reset`` is about 60 s where a bucket
would say one request's worth. The margin absorbs headers rounded to whole seconds."""

WINDOW_PROBE_S = 5.0
"""After a window-length 429, when the window's end is not known (no reset header, no window start
seen), one request goes every this many seconds to find it: the first answered one opens the new
window's whole quota at once (a calendar-minute window ends at most this long before we notice)."""

REFUSED_AGAIN_FACTOR = 2.0
"""A 429 to the first request sent after the previous 429 came (once the server's delay had
passed) says that delay was too short: as where refused requests count against the budget
(OpenAI's rate-limit guide), so that sending again at the refill rate keeps the budget in debt for
ever. Each such 429 in a row multiplies the debt's horizon by this factor (up to
`REFUSED_MAX_S`), so the sending rate falls below the server's refill rate until the debt clears;
an answer to a request sent after the last 429 ends the streak, and the rate is the limit's
again. (A 429 to a later request of a burst sent after the delay says we sent too much, not that
the delay was short: the limits learn that.)"""
REFUSED_MAX_S = 10.0
"""The longest a streak of refusals stretches the server's delay to (a server that asks for longer
is heeded as it asks): one request every 10 s is below the refill rate of any budget of 6 RPM or
more, and of a slower one the limit's own two requests' worth is waited instead. Longer would only
leave the budget unused once the debt has cleared."""

WINDOW_429_MIN_S = 10.0
"""A 429 asking for at least this long and carrying no rate-limit header is taken for a fixed
window's end (gateways such as LiteLLM say ``retry-after: 60``, the window's length): the requests
budget becomes a window; where no limit is known, it is inferred as what was admitted since the
last such 429, per that many seconds, not cut by a share."""


# -- the changes a lesson asks of the state ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetLimit:
    """Put `limit` in force for `kind` (`BudgetState.set_limit`)."""

    kind: Kind
    limit: Limit


@dataclass(frozen=True, slots=True)
class Lower:
    """Lower `kind`'s bucket to `level` if it holds more (`BudgetState.lower`)."""

    kind: Kind
    level: float


@dataclass(frozen=True, slots=True)
class SetLevel:
    """Set `kind`'s bucket to `level`, up or down (`BudgetState.set_level`)."""

    kind: Kind
    level: float


@dataclass(frozen=True, slots=True)
class Hold:
    """Admit nothing before clock time `until` (`BudgetState.hold`)."""

    until: float


Change = SetLimit | Lower | SetLevel | Hold


def apply(state: BudgetState, changes: Iterable[Change]) -> None:
    """Make `changes` on `state`, in order."""
    for change in changes:
        if isinstance(change, SetLimit):
            state.set_limit(change.kind, change.limit)
        elif isinstance(change, Lower):
            state.lower(change.kind, change.level)
        elif isinstance(change, SetLevel):
            state.set_level(change.kind, change.level)
        else:
            state.hold(change.until)


# -- what is known ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """What the server's answers have shown of one kind of budget (decisions kept for the run).

    trusted: its count paces us beyond our steady bucket (a gateway's, or a window): our level
    follows its ``remaining`` both ways and may hold up to `held_most`. window: it restores its
    whole quota at once when a window ends. held_most: the most it has said it holds at once.
    window_start: the earliest the current window can have begun. spent_at: the last admission
    that found its window spent. window_s: a window's length, where known.
    announces_remaining: its answers say what is left.
    """

    trusted: bool = False
    window: bool = False
    held_most: int = 0
    window_start: float | None = None
    spent_at: float | None = None
    window_s: float | None = None
    announces_remaining: bool = False


@dataclass(frozen=True, slots=True)
class Known:
    """What a budget's answers have taught so far: each kind's `Shape`, and the 429 history
    inference works from. last_429: when the last 429 came. episode_end: a 429 before this belongs
    to the episode already counted. probed_at: when a probed requests limit was last set, cut or
    raised. window_answers: answers since the last window-length 429 (no limit announced).
    refused_streak: 429s in a row, each to the first request sent after the one before came (see
    `REFUSED_AGAIN_FACTOR`); 0 after an answer to a request sent after the last 429."""

    requests: Shape = Shape()
    tokens: Shape = Shape()
    last_429: float = -math.inf
    episode_end: float = -math.inf
    probed_at: float = -math.inf
    window_answers: int = 0
    refused_streak: int = 0

    def shape(self, kind: Kind) -> Shape:
        return self.requests if kind == "requests" else self.tokens

    @property
    def trusted(self) -> bool:
        """Whether the server's own count paces some kind beyond our steady bucket."""
        return self.requests.trusted or self.tokens.trusted

    @property
    def windowed(self) -> bool:
        """Whether the server restores some kind at once when a window ends."""
        return self.requests.window or self.tokens.window


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer, as the lessons need it. now: when it came (the limiter's clock). sent_at: the
    admission of the request it answers (None: tied to no admission). charged: tokens charged for
    that request. unseen_requests, unseen_tokens: what we admitted after that request and had no
    answer to before this one (the server most likely had not counted it when it answered).
    first_after_429: the request was the first admitted after the last 429 came (sent once the
    server's delay had passed, alone)."""

    now: float
    sent_at: float | None = None
    charged: int = 0
    unseen_requests: float = 0.0
    unseen_tokens: float = 0.0
    first_after_429: bool = False


@dataclass(frozen=True, slots=True)
class Lesson:
    """What one answer taught: what is `known` now, and the `changes` for the state, in order."""

    known: Known
    changes: tuple[Change, ...] = ()


def since(answer: Answer, kind: Kind, limit: Limit, *, refills: bool = True) -> float:
    """How far the server's count of `kind` has moved since it wrote `answer`'s headers: its refill
    at `limit` since the request's admission (none in a window, where `refills` is False), less
    what we admitted after it and had no answer to before this one (0 with no admission)."""
    if answer.sent_at is None:
        return 0.0
    after = answer.unseen_requests if kind == "requests" else answer.unseen_tokens
    refill = limit.rate * max(0.0, answer.now - answer.sent_at) if refills else 0.0
    return refill - after


def window_end(shape: Shape, reset: float | None, answer: Answer) -> float | None:
    """When the window of `shape` ends: the server's `reset` counted from the admission of the
    request `answer` answers (a slow answer does not push the end later), else the window's start
    plus its length while that is still ahead; None when unknown."""
    now = answer.now
    if reset is not None and math.isfinite(reset):
        return max(now, (answer.sent_at if answer.sent_at is not None else now) + reset)
    start = shape.window_start
    if start is not None:
        end = start + (MINUTE_S if shape.window_s is None else shape.window_s)
        if end > now:
            return end
    return None


def blame(info: RateLimitInfo | None, snapshot: Snapshot, head_need: float
          ) -> list[tuple[Kind, float]]:
    """The buckets a 429 is blamed on, each with the need its debt is sized for: requests unless
    `info` shows requests left, tokens unless it shows a burst's worth (or the head waiter's
    `head_need`) left; both when both are cleared."""
    token_need = max(head_need, 0)
    requests_ok = (info is not None and info.remaining_requests is not None
                   and info.remaining_requests >= REQUEST)
    tokens = snapshot.tokens
    tokens_ok = (info is not None and info.remaining_tokens is not None
                 and tokens is not None
                 and info.remaining_tokens >= max(tokens.capacity, token_need))
    both: list[tuple[Kind, float]] = [("requests", float(REQUEST)),
                                      ("tokens", float(token_need))]
    blamed = [pair for pair, ok in zip(both, (requests_ok, tokens_ok)) if not ok]
    return blamed or both


# -- the lessons -------------------------------------------------------------------------------


def learn_headers(known: Known, snapshot: Snapshot, info: RateLimitInfo, answer: Answer, *,
                  burst_s: float) -> Lesson:
    """What one answer's rate-limit headers teach (see `runner.pacing.limiter.RateLimiter.observe`
    for the rules); `snapshot`: the limits in force before it, `burst_s`: the seconds of budget a
    bucket holds."""
    draft = _Draft(known, snapshot, burst_s)
    for kind in KINDS:
        _learn_kind(draft, kind, info, answer)
    return draft.lesson()


def learn_answer(known: Known, snapshot: Snapshot, answer: Answer, *, requests_bound_at: float,
                 burst_s: float) -> Lesson:
    """What an answer (not a 429) teaches by coming at all: one more answer in the window being
    counted; the end of a streak of refusals, when its request was sent after the last 429 came
    (an answer to one sent before says nothing of the debt now); and a probed requests limit that
    held requests back (`requests_bound_at`: when it last did) with no 429 for
    `INFER_RAISE_AFTER_S` goes up by `INFER_RAISE_STEP`."""
    now = answer.now
    draft = _Draft(known, snapshot, burst_s)
    draft.update(window_answers=known.window_answers + 1)
    if answer.sent_at is None or answer.sent_at >= known.last_429:
        draft.update(refused_streak=0)
    limit = snapshot.requests
    if (limit is not None and limit.source == "probed"
            and requests_bound_at > known.probed_at
            and now - max(known.last_429, known.probed_at) >= INFER_RAISE_AFTER_S):
        draft.update(probed_at=now)
        draft.set_limit("requests", limit.per_minute * INFER_RAISE_STEP, "probed")
    return draft.lesson()


def learn_429(known: Known, snapshot: Snapshot, info: RateLimitInfo | None,
              retry_after: float | None, answer: Answer, *, head_need: float,
              answer_rate: float | None, burst_s: float) -> Lesson:
    """What a 429 teaches, after its headers (`learn_headers`, already applied to `known` and
    `snapshot`): a limit inferred or cut where none is announced, a window where the delay is a
    window's length, and the debt that holds admission until the server's delay has passed (see
    `runner.pacing.limiter.RateLimiter.on_rate_limited`), or longer where 429s come in a row
    (`refused_horizon`). `head_need`: tokens the head of the queue waits for. `answer_rate`:
    answers per minute over the recent answers (None with fewer than two)."""
    draft = _Draft(known, snapshot, burst_s)
    now = answer.now
    streak = known.refused_streak + answer.first_after_429  # refused though sent after the delay
    draft.update(refused_streak=max(1, streak))
    if retry_after is None or not (math.isfinite(retry_after) and retry_after >= 0):
        # A gateway that counts windows may give no delay at all (LiteLLM's router for
        # completions): ask it once per probe period, not once a second.
        retry_after = WINDOW_PROBE_S if known.windowed or known.trusted else FALLBACK_RETRY_AFTER_S
    if info is not None:  # a window's end, where the server says it: not a gateway's fixed 60 s
        resets = [reset for kind in KINDS
                  if known.shape(kind).window and (reset := _reading(info, kind)[2]) is not None]
        if resets:
            retry_after = min(retry_after, max(resets))
    _infer_from_429(draft, now, retry_after, info is not None and not info.empty, answer_rate)
    snapshot = draft.snapshot
    longest = REFUSED_MAX_S
    if snapshot.requests is not None:  # a slow budget: two of its requests' refill at least
        longest = max(longest, 2 * REQUEST / snapshot.requests.rate)
    horizon = refused_horizon(retry_after, draft.known.refused_streak, longest)
    debted = False
    for kind, need in blame(info, snapshot, head_need):
        limit = snapshot.limit(kind)
        if limit is None:
            continue
        if draft.shape(kind).window:  # all of a window's quota comes back when it ends
            sent = answer.sent_at if answer.sent_at is not None else now
            draft.update_shape(kind, spent_at=sent)
            reset = _reading(info, kind)[2] if info is not None else None
            end = window_end(draft.shape(kind), reset, answer)
            if end is None and draft.shape(kind).announces_remaining:
                # Its end unknown, but the answers say what is left: one request at a time
                # finds the new window, whose first answer opens its whole quota.
                # (from the refused request's admission: its answer's latency is not added)
                wait = max(0.0, sent + min(retry_after, WINDOW_PROBE_S) - now)
                draft.change(Hold(now + wait))
                draft.change(SetLevel(kind, REQUEST - limit.rate * wait))  # one when it ends
            else:
                draft.change(Hold(now + retry_after if end is None
                                  else min(end, now + retry_after)))
                draft.change(SetLevel(kind, limit.capacity))
        else:
            draft.change(Lower(kind, min(need, limit.capacity) - limit.rate * horizon))
        debted = True
    if not debted:
        draft.change(Hold(now + horizon))
    return draft.lesson()


def refused_horizon(retry_after: float, streak: int, longest: float = REFUSED_MAX_S) -> float:
    """How long a 429's debt holds a bucket: the server's `retry_after` for the first 429 of a
    streak, `REFUSED_AGAIN_FACTOR` times longer for each 429 in a row after it (`Known.
    refused_streak`), up to `longest` (or the server's delay, when longer)."""
    if streak <= 1:
        return retry_after
    longer = retry_after * REFUSED_AGAIN_FACTOR ** min(streak - 1, 64)
    return max(retry_after, min(longer, longest))


# -- the steps -----------------------------------------------------------------------------------


class _Draft:
    """A lesson being written: what is known and the limits in force as the changes so far leave
    them, and the changes. Private to the functions above, which stay pure: each builds one from
    its inputs and returns the frozen `Lesson`."""

    __slots__ = ("known", "snapshot", "changes", "_burst_s")

    def __init__(self, known: Known, snapshot: Snapshot, burst_s: float) -> None:
        self.known, self.snapshot, self._burst_s = known, snapshot, burst_s
        self.changes: list[Change] = []

    def shape(self, kind: Kind) -> Shape:
        return self.known.shape(kind)

    def update(self, **fields: object) -> None:
        self.known = _replaced(self.known, fields)

    def update_shape(self, kind: Kind, **fields: object) -> None:
        shape = self.shape(kind)
        changed = _replaced(shape, fields)
        if changed is not shape:
            self.update(**{kind: changed})

    def change(self, change: Change) -> None:
        self.changes.append(change)

    def set_limit(self, kind: Kind, per_minute: float, source: str) -> None:
        """Put `per_minute` in force; its bucket holds `burst_s` of it, or what a trusted server
        has shown it holds at once when that is more."""
        capacity = per_minute * self._burst_s / MINUTE_S
        shape = self.shape(kind)
        if shape.trusted:
            capacity = max(capacity, float(shape.held_most))
        limit = Limit(per_minute, source, capacity)
        snapshot = self.snapshot
        self.snapshot = Snapshot(limit if kind == "requests" else snapshot.requests,
                                 limit if kind == "tokens" else snapshot.tokens, snapshot.factor)
        self.change(SetLimit(kind, limit))

    def lesson(self) -> Lesson:
        return Lesson(self.known, tuple(self.changes))


def _replaced(record, fields: dict[str, object]):
    """`record` with `fields` replaced; `record` itself when they hold those values already (most
    answers teach nothing new: an answer is spared building records equal to the ones it has)."""
    for name, value in fields.items():
        old = getattr(record, name)
        if type(old) is not type(value) or old != value:
            return dataclasses.replace(record, **fields)
    return record


def _reading(info: RateLimitInfo, kind: Kind) -> tuple[int | None, int | None, float | None]:
    """`info`'s limit, remaining and reset of `kind`."""
    if kind == "requests":
        return info.limit_requests, info.remaining_requests, info.reset_requests
    return info.limit_tokens, info.remaining_tokens, info.reset_tokens


def _learn_kind(draft: _Draft, kind: Kind, info: RateLimitInfo, answer: Answer) -> None:
    limit, remaining, reset = _reading(info, kind)
    known = draft.snapshot.limit(kind)
    source = known.source if known is not None else None
    if limit is not None and limit > 0:
        _learn_shape(draft, kind, info, limit, remaining, reset)
        draft.set_limit(kind, limit * MINUTE_S / (info.window_s or MINUTE_S), "server")
    elif remaining is not None and remaining > 0 and source != "server":
        # No limit header (Azure). With a reset time, remaining / (1 - reset/60) estimates the
        # per-minute limit. Without one, `remaining` may count a window shorter than a minute
        # (Azure enforces quotas over 1 s or 10 s windows), so it says nothing of the limit:
        # it only raises a user's number that is certainly too low, and otherwise the limit
        # stays unknown and 429s with their retry-after pace the run.
        estimate = None
        if reset is not None and 0 < reset < INFER_MAX_RESET_S and math.isfinite(reset):
            estimate = remaining / (1 - reset / MINUTE_S)
        elif source == "user":
            estimate = float(remaining)
        if estimate is not None and (known is None or estimate > known.per_minute):
            draft.set_limit(kind, estimate, "user" if source == "user" else "inferred")
    if remaining is None:
        return
    draft.update_shape(kind, announces_remaining=True)
    now_known = draft.snapshot.limit(kind)
    if now_known is None:
        return
    shape = draft.shape(kind)
    level = remaining + since(answer, kind, now_known, refills=not shape.window)
    draft.change(SetLevel(kind, level) if shape.trusted else Lower(kind, level))
    if shape.window:
        _note_window(draft, kind, info, remaining, answer)
        if level < REQUEST:  # spent: nothing until it comes back
            draft.update_shape(kind, spent_at=(answer.sent_at if answer.sent_at is not None
                                               else answer.now))
            end = window_end(draft.shape(kind), reset, answer)
            if end is not None:
                draft.change(Hold(end))


def _learn_shape(draft: _Draft, kind: Kind, info: RateLimitInfo, quota: int,
                 remaining: int | None, reset: float | None) -> None:
    """Whether `kind`'s budget is a window and whether the server's count is trusted beyond our
    steady bucket, from one answer that announces its `quota` (decisions are kept for the run)."""
    shape = draft.shape(kind)
    trusted, window, held_most = shape.trusted, shape.window, shape.held_most
    if info.style in ("litellm", "ietf") or (remaining is not None and reset is None):
        # A gateway's count: what it says it holds, it holds. (A limit and a remaining with no
        # reset is a gateway's too: OpenAI sends all three, Azure no limit; LiteLLM's router
        # sends OpenAI's names for a deployment's calendar-minute limits, without a reset.)
        trusted = True
    window_s = info.window_s or MINUTE_S
    if (remaining is not None and reset is not None and math.isfinite(reset)
            and reset * quota / window_s
            > (quota - remaining) + max(1.0, WINDOW_SHAPE_MARGIN * quota)):
        window = trusted = True
    if remaining is not None:
        spent = REQUEST if kind == "requests" else 0
        held_most = max(held_most, min(quota, remaining + spent))
    draft.update_shape(kind, trusted=trusted, window=window, held_most=held_most)


def _note_window(draft: _Draft, kind: Kind, info: RateLimitInfo, remaining: int,
                 answer: Answer) -> None:
    """A fresh window (``remaining`` all but this request's) began after the last admission that
    found the old one spent and at this request's admission at the latest: remember the earliest
    it can have begun, to know when it ends at the earliest. (Before any window was seen spent its
    start is unknown: windows may begin at a request, as LiteLLM's key limits do, or on the
    clock's minute, as its router's do.)"""
    if info.window_s is not None:
        draft.update_shape(kind, window_s=info.window_s)
    if answer.sent_at is None:
        return
    shape = draft.shape(kind)
    spent = REQUEST if kind == "requests" else answer.charged
    if remaining + spent < shape.held_most:
        return
    if shape.spent_at is not None and (shape.window_start is None
                                       or shape.spent_at > shape.window_start):
        draft.update_shape(kind, window_start=shape.spent_at)


def _infer_from_429(draft: _Draft, now: float, retry_after: float, announced: bool,
                    answer_rate: float | None) -> None:
    """A 429 with no limit known: infer one from the rate the server was answering at; an inferred
    limit shrinks once per episode (see `INFER_FROM_429_SHARE`). A window-length 429 that carries
    no rate-limit header is a fixed window's end instead: of a limit the server announced
    (`_window_learned`), or of one to infer (`_infer_window`)."""
    snapshot = draft.snapshot
    limit = snapshot.requests
    if (retry_after >= WINDOW_429_MIN_S and not announced and limit is not None
            and limit.source == "server"):
        _window_learned(draft, retry_after)  # its number is the server's; its shape is a window
    elif (retry_after >= WINDOW_429_MIN_S and not announced and snapshot.tokens is None
            and (limit is None or limit.source in ("probed", "user"))):
        _infer_window(draft, now, retry_after, keep=limit is not None and limit.source == "user")
    elif limit is not None and limit.source == "probed":
        if now >= draft.known.episode_end:
            draft.set_limit("requests", max(1.0, limit.per_minute * INFER_FROM_429_SHARE),
                            "probed")
            draft.update(episode_end=now + max(1.0, retry_after), probed_at=now)
    elif limit is None and snapshot.tokens is None and answer_rate is not None:
        draft.set_limit("requests", max(1.0, answer_rate * INFER_FROM_429_SHARE), "probed")
        draft.update(episode_end=now + max(1.0, retry_after), probed_at=now)
    draft.update(last_429=now)


def _window_learned(draft: _Draft, length: float) -> None:
    """A window-length 429: the requests budget is a window of `length` seconds."""
    shape = draft.shape("requests")
    draft.update_shape("requests", trusted=True, window=True,
                       window_s=length if shape.window_s is None else shape.window_s)


def _infer_window(draft: _Draft, now: float, retry_after: float, *, keep: bool) -> None:
    """A window-length 429 with no limit announced: the server allows what it answered since the
    last such 429 per `retry_after` seconds, all at once (see `WINDOW_429_MIN_S`). With `keep`
    (the user's limit) only the window is learned, not the number."""
    if now < draft.known.episode_end:
        return
    admitted = draft.known.window_answers
    if admitted >= 1:
        _window_learned(draft, retry_after)
        draft.update_shape("requests", held_most=admitted)
        limit = draft.snapshot.requests
        per_minute = (limit.per_minute if keep and limit is not None
                      else admitted * MINUTE_S / retry_after)
        draft.set_limit("requests", per_minute, "user" if keep else "probed")
    draft.update(window_answers=0, episode_end=now + retry_after, probed_at=now)
