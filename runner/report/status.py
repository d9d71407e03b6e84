"""Where a job file stands, without calling the API: `status` after (or between) runs.

It only reads. In particular it never touches OUTPUT: it does not take the run lock, and a torn
last line (left by a killed run) is reported, not cut off; the next `runner run` cuts it. It may
therefore run while a run is writing OUTPUT, and see a consistent prefix of it.

Status exit codes (`runner.exit_codes`) mirror what `runner run` would exit with if it had just
finished, so a cron script needs one `case` for both commands:

    0  every job of INPUT has a success line
    1  nothing left a plain rerun would do, but some jobs failed permanently (or INPUT has bad or
       duplicate lines); fix them, or rerun with --retry-failed
    2  INPUT or OUTPUT cannot be read
    3  work remains: jobs without a result line, or failed transiently (rate limit, 5xx, timeout,
       quota); `runner run` with the same arguments resumes them

3 wins over 1 because it is the one a script can act on by itself (run again).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from jobs.flags import FlagSample
from jobs.job import Job
from jobs.reader import BadLine, Duplicate, NotAJobFile, read_jobs
from jobs.results import Outcome, OutputState, changed, fingerprint
from runner.files.checkpoint import CheckpointError, LoadReport, scan
from runner.files.inputs import Rereader, UnreadableInput, input_lines, input_name
from runner.report.render import flag_notes
from runner.exit_codes import EXIT_OK, EXIT_SOME_FAILED, EXIT_STOPPED

MAX_SHOWN = 20  # ids or line numbers listed per kind; the rest are only counted


class StatusError(Exception):
    """INPUT or OUTPUT cannot be read (exit code 2)."""


# --- reading ------------------------------------------------------------------------------------

def scan_output(path: Path, state: OutputState, *, keep_done: bool = False) -> LoadReport:
    """Read OUTPUT into `state` without writing to it (`runner.files.checkpoint.scan`)."""
    try:
        return scan(path, state, keep_done=keep_done)
    except CheckpointError as e:
        raise StatusError(str(e)) from None


def _combined(reports: list[LoadReport]) -> LoadReport:
    """One report for several outputs read together (the first bad line numbers of the first
    output that has any)."""
    if len(reports) == 1:
        return reports[0]
    combined = LoadReport(exists=any(r.exists for r in reports))
    for report in reports:
        combined.lines += report.lines
        combined.torn_bytes += report.torn_bytes
        combined.bad_lines += report.bad_lines
        if not combined.first_bad_lines:
            combined.first_bad_lines = list(report.first_bad_lines)
    return combined


# --- status -------------------------------------------------------------------------------------

@dataclass(slots=True)
class Status:
    """Each valid, unique job of INPUT in exactly one of: done, failed permanently, failed
    transiently, pending (no result line). Failures are counted by error code."""

    input: str
    output: str
    jobs: int = 0
    done: int = 0
    permanent: Counter[str] = field(default_factory=Counter)
    transient: Counter[str] = field(default_factory=Counter)
    pending: int = 0
    changed: FlagSample = field(default_factory=lambda: FlagSample(MAX_SHOWN))  # edited since their result
    unprinted: int = 0                    # final results without a fingerprint (counted unchanged)
    bad_lines: FlagSample = field(default_factory=lambda: FlagSample(MAX_SHOWN))
    duplicates: FlagSample = field(default_factory=lambda: FlagSample(MAX_SHOWN))
    unknown_ids: int = 0                  # result ids that INPUT does not contain
    first_unknown_ids: list[str] = field(default_factory=list)
    scan: LoadReport = field(default_factory=LoadReport)

    @property
    def failed_permanent(self) -> int:
        return sum(self.permanent.values())

    @property
    def failed_transient(self) -> int:
        return sum(self.transient.values())

    @property
    def remaining(self) -> int:
        """Jobs a plain rerun would send: pending plus transient failures."""
        return self.pending + self.failed_transient

    def exit_code(self) -> int:
        """0 all done; 3 a rerun has work (or jobs changed since their results, for a run with
        --changed); else 1 if anything failed or INPUT has bad lines."""
        if self.remaining or self.changed.count:
            return EXIT_STOPPED
        if self.failed_permanent or self.bad_lines.count or self.duplicates.count:
            return EXIT_SOME_FAILED
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input, "output": self.output, "exit_code": self.exit_code(),
            "jobs": self.jobs, "done": self.done, "pending": self.pending,
            "failed_permanent": {"total": self.failed_permanent, "by_code": dict(self.permanent)},
            "failed_transient": {"total": self.failed_transient, "by_code": dict(self.transient)},
            "remaining": self.remaining, "changed": self.changed.to_json(),
            "results_without_fingerprint": self.unprinted,
            "bad_lines": self.bad_lines.to_json(), "duplicates": self.duplicates.to_json(),
            "unknown_ids": {"count": self.unknown_ids, "first": self.first_unknown_ids},
            "output_file": {"exists": self.scan.exists, "lines": self.scan.lines,
                            "torn_bytes": self.scan.torn_bytes,
                            "bad_lines": {"count": self.scan.bad_lines,
                                          "first": self.scan.first_bad_lines}},
        }


def status(input_path: str, output: Path | Sequence[Path], *,
           keep_changed: bool = False) -> Status:
    """The status of INPUT's jobs in OUTPUT (or in several outputs together, such as the shards of
    `--shard K/N`: a job done in any of them is done, as `runner merge` keeps it; otherwise its
    last line in the last of them counts); with `keep_changed` (`--changed keep`) a job edited
    since its result counts as that result says;
    StatusError when any cannot be read.

    Memory: the ids of the outputs (as a run holds them) and of INPUT (as the reader's duplicate
    check holds them); never a result body.
    """
    outputs = [output] if isinstance(output, Path) else list(output)
    state = OutputState()
    keep_done = len(outputs) > 1  # a job done in any output stays done, as merge keeps it
    result = Status(input=input_name(input_path), output=", ".join(str(o) for o in outputs))
    try:
        result.scan = _combined([scan_output(path, state, keep_done=keep_done)
                                 for path in outputs])
        try:
            with Rereader.of(input_path) as reread:
                for item in read_jobs(input_lines(input_path), result.input, reread=reread,
                                      expected_lines=None if reread is None else reread.lines()):
                    _classify(item, state, result, keep_changed)
        except (UnreadableInput, NotAJobFile) as e:
            raise StatusError(str(e)) from None
        # What `_classify` did not claim belongs to no input line.
        for final in state.unclaimed():
            result.unknown_ids += 1
            if len(result.first_unknown_ids) < MAX_SHOWN:
                result.first_unknown_ids.append(final.custom_id)
    finally:
        state.close()
    return result


def _classify(item: Job | BadLine | Duplicate, state: OutputState, result: Status,
              keep_changed: bool = False) -> None:
    if isinstance(item, BadLine):
        result.bad_lines.add(item)
        return
    if isinstance(item, Duplicate):
        result.duplicates.add(item)
        return
    result.jobs += 1
    custom_id = item.custom_id
    # Each id is claimed once (the reader drops repeats), so the unclaimed are ids not in INPUT.
    final = state.claim(custom_id)
    if final is None:
        result.pending += 1
    elif final.outcome is Outcome.TRANSIENT:
        result.transient[final.code or "unknown"] += 1
    else:
        if final.fingerprint is None:
            result.unprinted += 1
        if not keep_changed and changed(final, fingerprint(item.url, item.body)):
            result.changed.add(BadLine(result.input, item.line, "changed since its result was "
                                       "written", custom_id))
        elif final.outcome is Outcome.DONE:
            result.done += 1
        else:
            result.permanent[final.code or "unknown"] += 1


def status_table(s: Status, *, open_batches: int = 0) -> Group:
    """The human-readable status report (`open_batches`: of `--via batch`, still at the
    provider)."""
    table = Table(title=f"{s.input} -> {s.output}", title_justify="left", box=None,
                  header_style="bold underline")
    table.add_column("jobs")
    table.add_column("count", justify="right")
    table.add_column("detail")
    table.add_row("done", f"{s.done:,}", "")
    table.add_row("failed, permanent", f"{s.failed_permanent:,}", _codes(s.permanent))
    table.add_row("failed, transient", f"{s.failed_transient:,}", _codes(s.transient))
    table.add_row("pending", f"{s.pending:,}", "no result line yet")
    if s.changed.count:
        table.add_row("changed", f"{s.changed.count:,}", "edited since their result")
    table.add_row("total", f"{s.jobs:,}", "valid, unique jobs in input", style="bold")
    notes: list[Text] = []
    if not s.scan.exists:
        notes.append(Text(f"{s.output} does not exist yet: nothing has run"))
    if s.scan.torn_bytes:
        notes.append(Text(f"{s.output}: unfinished last line ({s.scan.torn_bytes} bytes) from an "
                          "interrupted run; the next run cuts it off and reruns its job"))
    if s.scan.bad_lines:
        notes.append(Text(f"{s.output}: {s.scan.bad_lines:,} lines are not result lines (lines "
                          f"{_numbers(s.scan.first_bad_lines, s.scan.bad_lines)}); their jobs run again"))
    if s.unprinted:
        notes.append(Text(f"{s.unprinted:,} results carry no job fingerprint (written before runner "
                          "recorded them, or by another tool): they count as answers to the jobs as "
                          "they are now"))
    notes += flag_notes(s.changed, "jobs changed since their results")
    notes += flag_notes(s.bad_lines, "bad input lines")
    notes += flag_notes(s.duplicates, "duplicate custom_ids (only the first line runs)")
    if s.unknown_ids:
        shown = ", ".join(s.first_unknown_ids)
        more = f" and {s.unknown_ids - len(s.first_unknown_ids):,} more" if s.unknown_ids > len(s.first_unknown_ids) else ""
        notes.append(Text(f"{s.unknown_ids:,} result custom_ids are not in {s.input} "
                          f"(wrong input file?): {shown}{more}"))
    notes.append(Text(_verdict(s, open_batches), style="bold"))
    return Group(table, *notes)


def _verdict(s: Status, open_batches: int = 0) -> str:
    if open_batches:
        return (f"{open_batches:,} batches still open at the provider: run the same `runner run "
                "--via batch` command again later (exit 4)")
    code = s.exit_code()
    if s.changed.count:
        return (f"{s.changed.count:,} jobs changed since their results: `runner run` refuses "
                "them until told --changed rerun (send them again) or --changed keep (keep the "
                "old results) (exit 3)")
    if code == EXIT_OK:
        return "all jobs done (exit 0)"
    if code == EXIT_STOPPED:
        return (f"{s.remaining:,} jobs remain: run the same `runner run` command again to resume "
                "(exit 3)")
    advice = []
    if s.permanent:
        codes = ",".join(code for code, _ in s.permanent.most_common())
        advice.append(f"send the failed jobs again with --retry-codes {codes} (or fix them "
                      "first: an edited job is sent again with --changed rerun)")
    if s.bad_lines.count or s.duplicates.count:
        advice.append("fix the bad or duplicate input lines (no retry can: they were never sent)")
    return f"finished with failures: {'; '.join(advice)} (exit 1)"


def _codes(counter: Counter[str]) -> str:
    return ", ".join(f"{code} {n:,}" for code, n in counter.most_common())


def _numbers(first: list[int], total: int) -> str:
    text = ", ".join(str(n) for n in first)
    return text + (f" and {total - len(first):,} more" if total > len(first) else "")


