"""The intake: what each item read from a job file needs, decided once for every backend.

    item from the reader ─► decide() ─► Reject      a bad line: reported, never run
                                      ─► Duplicate   a repeated custom_id: reported (a note line
                                                     written once per id), never run
                                      ─► Skip        its final result is in OUTPUT (done, kept
                                                     failed, or changed and kept)
                                      ─► Refuse      changed since its result, and no choice made:
                                                     the run must not start (exit 2)
                                      ─► Pending ─► ready() ─► Reject  (prepare: an upload unreadable,
                                                                        an endpoint a backend lacks)
                                                           ─► Fail    (over its context window)
                                                           ─► Run     (with its rate-limit charge)

The resume rule (`OutputState.needs_run`) and the changed-job check (`OutputState.changed`)
are applied here and nowhere else: the live dispatcher and the batch planner are loops over
`Intake`. `decide` is pure; `ready` calls the injected `prepare` (which may read the file
system) and token counter.

A job is *changed* when its fingerprint (`jobs.results.fingerprint`) differs from the one its
final result (a success, or a permanent failure) was written with. What happens to it is the
run's `ChangedPolicy`: REFUSE (the default) stops the run before anything is sent, RERUN sends it
again (its new line supersedes the old, as the last line for an id always does), KEEP keeps the
old result. A result without a fingerprint counts as unchanged.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from jobs import codes, tokens
from jobs.job import Job
from jobs.reader import BadLine, Duplicate as DuplicateLine
from jobs.results import Outcome, OutputState, changed, fingerprint, needs_run
from jobs.settled import DONE, KEPT, Settled

MAX_CHANGED_SHOWN = 5  # changed jobs named in the refusal; the rest are counted


class ChangedPolicy(enum.Enum):
    """What a run does with jobs changed since their final result (`--changed`)."""

    REFUSE = "refuse"
    RERUN = "rerun"
    KEEP = "keep"


class SkipReason(enum.Enum):
    DONE = "done"                  # a success line answers this very job
    KEPT_FAILED = "kept_failed"    # a permanent failure, kept (no --retry-failed)
    KEPT_CHANGED = "kept_changed"  # changed since its result; --changed keep keeps that result


@dataclass(frozen=True, slots=True)
class Reject:
    """A line that cannot run (not a job, or a job that cannot be prepared)."""

    bad: BadLine


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A second line with a custom_id already read; `note` when its note line is still to be
    written (OUTPUT holds none for that id yet)."""

    duplicate: DuplicateLine
    note: bool


@dataclass(frozen=True, slots=True)
class Skip:
    """A job not run: `why`. `unprinted` when the result it keeps has no fingerprint (written
    before fingerprints existed: taken as the answer to the job as it is now)."""

    job: Job
    why: SkipReason
    unprinted: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """A job changed since its result, in a run that was not told what to do with such jobs."""

    job: Job


@dataclass(frozen=True, slots=True)
class Pending:
    """A job to run (`ready` prepares it); `changed` when it replaces a result of an earlier
    version of the job."""

    job: Job
    changed: bool = False


@dataclass(frozen=True, slots=True)
class Fail:
    """A job that fails without being sent (its prompt is over the model's context window)."""

    job: Job
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Run:
    """A job to send, with what the rate limiter charges for it."""

    job: Job
    charge: int
    changed: bool = False


Decision = Reject | Duplicate | Skip | Refuse | Pending


def settle(settled: Settled, decision: Decision | Fail | Run) -> None:
    """What the intake's decision says of its line, for `jobs.settled`: a job skipped as done or
    as a kept failure is settled; a job kept though changed, or a duplicate id, leave decisions
    that depend on more than a line's own state (no index of this run). A job sent settles when
    its result is written (the backend's part)."""
    match decision:
        case Skip(job, SkipReason.DONE):
            settled.set(job.line, DONE)
        case Skip(job, SkipReason.KEPT_FAILED):
            settled.set(job.line, KEPT)
        case Skip():
            settled.spoil("a job changed since the result it keeps")
        case Duplicate():
            settled.spoil("duplicate custom_ids")


class Intake:
    """Decides, item by item in file order, what each line of a job file needs against `state`
    (what OUTPUT already holds). `prepare` checks a job against what a backend can send (uploads
    readable, an endpoint it serves) and may rewrite its body; `counter` counts true tokens for
    the context-window check."""

    __slots__ = ("state", "retry_failed", "retry_codes", "changed", "_counter", "_prepare")

    def __init__(self, state: OutputState, *, retry_failed: bool = False,
                 retry_codes: frozenset[str] = frozenset(),
                 changed: ChangedPolicy = ChangedPolicy.REFUSE,
                 counter: tokens.TokenCounter | None = None,
                 prepare: Callable[[Job], Job | BadLine] | None = None) -> None:
        self.state = state
        self.retry_failed = retry_failed
        self.retry_codes = frozenset(retry_codes)  # permanent failures with these codes run again
        self.changed = changed
        self._counter = counter
        self._prepare = prepare

    def decide(self, item: Job | BadLine | DuplicateLine) -> Decision:
        """What the item needs, from OUTPUT alone (pure). A job comes back with its fingerprint."""
        if isinstance(item, BadLine):
            return Reject(item)
        if isinstance(item, DuplicateLine):
            return Duplicate(item, not self.state.noted(item.custom_id))
        job = item if item.fingerprint is not None else Job(  # not dataclasses.replace: 2x dearer
            custom_id=item.custom_id, url=item.url, body=item.body, line=item.line,
            fingerprint=fingerprint(item.url, item.body))
        final = self.state.final(job.custom_id)  # one look at OUTPUT per job
        if final is None or final.outcome is Outcome.TRANSIENT:
            return Pending(job)
        rerun = needs_run(final, retry_failed=self.retry_failed, retry_codes=self.retry_codes)
        if changed(final, job.fingerprint):
            if rerun:
                return Pending(job, changed=True)  # retried anyway: --retry-failed/-codes said so
            if self.changed is ChangedPolicy.REFUSE:
                return Refuse(job)
            if self.changed is ChangedPolicy.KEEP:
                return Skip(job, SkipReason.KEPT_CHANGED)
            return Pending(job, changed=True)
        if not rerun:
            why = SkipReason.DONE if final.outcome is Outcome.DONE else SkipReason.KEPT_FAILED
            return Skip(job, why, unprinted=final.fingerprint is None)
        return Pending(job)

    def ready(self, pending: Pending) -> Run | Fail | Reject:
        """The pending job prepared for sending, with its charge; or why it cannot be sent."""
        job = pending.job
        if self._prepare is not None:
            prepared = self._prepare(job)
            if isinstance(prepared, BadLine):
                return Reject(prepared)
            job = prepared
        if self._counter is not None:
            overflow = tokens.context_overflow(job.url, job.body, self._counter)
            if overflow is not None:
                return Fail(job, codes.CONTEXT_LENGTH_EXCEEDED, overflow)
        return Run(job, tokens.rate_limit_charge(job.url, job.body), pending.changed)


@dataclass(slots=True)
class ChangedReport:
    """The jobs of an input changed since their results: how many, the first few (id, line)."""

    count: int = 0
    first: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    def add(self, job: Job) -> None:
        self.count += 1
        if len(self.first) < MAX_CHANGED_SHOWN:
            self.first.append((job.custom_id, job.line))

    def message(self, input_name: str = "INPUT", output: str = "OUTPUT", *,
                sent: bool = False) -> str:
        """The refusal, naming the jobs and the two ways on (`sent`: whether jobs read before
        them may have been sent already, as when INPUT is stdin)."""
        shown = ", ".join(f"{cid!r} (line {line})" for cid, line in self.first)
        more = f" and {self.count - len(self.first):,} more" if self.count > len(self.first) else ""
        jobs = "job has" if self.count == 1 else "jobs have"
        what = ("Jobs read before it were run; nothing more is sent" if sent
                else "Nothing was sent")
        return (f"{self.count:,} {jobs} changed in {input_name} since {output} got their results: "
                f"{shown}{more}. {what}. Run again with --changed rerun to send them again (their "
                "new results supersede the old), or --changed keep to keep the old results")


def changed_jobs(items: Iterable[Job | BadLine | DuplicateLine], state: OutputState) -> ChangedReport:
    """Every job of `items` changed since its final result in `state` (pure)."""
    report = ChangedReport()
    intake = Intake(state)
    for item in items:
        if isinstance(item, Job) and isinstance(intake.decide(item), Refuse):
            report.add(item)
    return report
