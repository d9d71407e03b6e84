"""What one line of a finished batch means for its jobs. Pure: an answer in, an outcome out.

A line of a batch's output or error file is judged exactly as a live answer is: `classify()` reads
its status and body, `jobs.packing.split_response` matches a packed answer back to its jobs by
index (a partial answer keeps the jobs answered in full and sends only the others again), and
`decide()` says what to do, given the attempts the jobs have spent (kept in the batch
journal). The outcome is the result lines to write, or the jobs to send again (an attempt counted
or not), or the halves of a refused pack to send as packs of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.packing import (
    ListNotTaken, MissingChoices, NChoicesIgnored, PartialAnswer, Request, split_response,
)
from jobs.results import error_record, success_record
from jobs.structured import first_problem
from runner.errors import BadResponseError, InvalidJSONError, ListNotTakenError, NChoicesIgnoredError
from runner.outcome import Action, Attempts, Step, classify, decide

# Error codes of a line that never ran: its job goes into a later batch, no attempt spent.
UNFINISHED_CODES = frozenset({"batch_expired", "batch_cancelled"})


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What to do about one batch line. `records`: result lines to write (every job's, on a
    success or a final failure). `retry`: jobs to send again, an attempt counted. `halves`: job
    groups to send again as packs of their own (a refused pack split). `gave_up`: jobs given a
    final failure. `usage`: each success's `usage`. `retried`: whether this was a retry at all
    (counted or not); a line that never ran is none of these: its jobs are simply pending."""

    records: tuple[dict[str, Any], ...] = ()
    retry: tuple[str, ...] = ()
    halves: tuple[tuple[str, ...], ...] = ()
    gave_up: tuple[str, ...] = ()
    usage: tuple[Any, ...] = ()
    code: str | None = None  # the failure code of `gave_up`
    retried: bool = False
    unpacked: bool = False  # `halves` are the jobs sent alone, not the halves of a bisection


def judge_line(line_id: str, ids: tuple[str, ...], request: Request | None, answer: dict[str, Any],
               *, spent: int, max_attempts: int, fallback_id: str) -> LineOutcome:
    """The outcome of `answer`, the provider's line for batch line `line_id` carrying the jobs
    `ids` (`request`: that line rebuilt; None when it cannot be). `spent`: attempts the jobs have
    used. Result-line ids derive from the provider's line id (`fallback_id` when it has none), one
    per job, so the same line collected twice gives the same ids."""
    record_id = str(answer.get("id") or fallback_id)
    response = answer.get("response") if isinstance(answer.get("response"), dict) else None
    error = answer.get("error") if isinstance(answer.get("error"), dict) else None
    if response is None:
        code = str((error or {}).get("code") or "")
        if code in UNFINISHED_CODES:
            return LineOutcome()  # never ran: pending again, no attempt spent
        message = (error or {}).get("message") or "the batch line has no response"
        verdict = classify(None, {}, None, exc=BadResponseError(f"{code or 'no response'}: {message}"))
        status, body, request_id = None, None, None
    else:
        status, body = response.get("status_code"), response.get("body")
        request_id = response.get("request_id")
        verdict = classify(status if isinstance(status, int) else 500, {}, body)
    answers = None
    if verdict.action is Action.OK:
        try:
            if request is None:
                raise MissingChoices("the batch line's request is unknown (its local file is gone)")
            answers = split_response(request, body)
            problem = first_problem(request.jobs, answers)  # structured outputs checked
            if problem is not None:
                verdict = classify(None, {}, None, exc=InvalidJSONError(problem))
        except PartialAnswer as exc:  # keep what came back: only the jobs lacking choices go again
            assert request is not None
            rid = lambda i: f"{record_id}-{i}"  # noqa: E731 (a pack's ids, as on success)
            kept = sorted(exc.answers)
            return LineOutcome(
                records=tuple(success_record(request.jobs[i].custom_id, exc.answers[i],
                                             record_id=rid(i), request_id=request_id)
                              for i in kept),
                usage=tuple(exc.answers[i].get("usage") for i in kept),
                retry=tuple(request.jobs[i].custom_id for i in exc.missing), retried=True)
        except ListNotTaken as exc:  # the first job answered (mostly); the others go alone
            assert request is not None
            if exc.first is None:
                return LineOutcome(halves=tuple((job.custom_id,) for job in request.jobs),
                                   retried=True, unpacked=True)
            first = request.jobs[0]
            return LineOutcome(
                records=(success_record(first.custom_id, exc.first, record_id=f"{record_id}-0",
                                        request_id=request_id),),
                usage=(exc.first.get("usage"),),
                halves=tuple((job.custom_id,) for job in request.jobs[1:]), retried=True,
                unpacked=True)
        except MissingChoices as exc:
            error_cls = (NChoicesIgnoredError if isinstance(exc, NChoicesIgnored) else
                         ListNotTakenError if isinstance(exc, ListNotTaken) else BadResponseError)
            verdict = classify(None, {}, None, exc=error_cls(str(exc)))
    decision = decide(verdict, Attempts(spent, 0, spent), packed=len(ids) > 1,
                      max_attempts=max_attempts)
    rid = (lambda i: record_id) if len(ids) == 1 else (lambda i: f"{record_id}-{i}")
    step = decision.step
    if step is Step.SUCCEED:
        assert answers is not None and request is not None
        return LineOutcome(
            records=tuple(success_record(job.custom_id, own, record_id=rid(i), request_id=request_id)
                          for i, (job, own) in enumerate(zip(request.jobs, answers))),
            usage=tuple(own.get("usage") for own in answers))
    if step is Step.FAIL:
        return LineOutcome(
            records=tuple(error_record(cid, decision.code, decision.message, record_id=rid(i),
                                       status=status, body=body, request_id=request_id)
                          for i, cid in enumerate(ids)),
            gave_up=ids, code=decision.code)
    if step is Step.BISECT:
        mid = len(ids) // 2
        return LineOutcome(halves=tuple(p for p in (ids[:mid], ids[mid:]) if p))
    if step is Step.UNPACK:
        return LineOutcome(halves=tuple((cid,) for cid in ids), unpacked=True)
    # a retry (or a stop-like answer inside one line): into a later batch
    return LineOutcome(retry=ids if decision.counts else (), retried=True)
