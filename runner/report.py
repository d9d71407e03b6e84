"""Run statistics: counters the dispatcher bumps, read by the progress display and the summary."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3


@dataclass(slots=True)
class ModelUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0


@dataclass(slots=True)
class RunStats:
    """Counts of one run. Plain mutable counters; only the event loop's thread writes them."""

    started: float = 0.0
    finished: float = 0.0
    lines_read: int = 0
    jobs: int = 0                 # valid, unique jobs in the input
    already_done: int = 0         # skipped: a success line exists
    kept_failed: int = 0          # skipped: a permanent failure exists (no --retry-failed)
    bad_lines: int = 0
    duplicates: int = 0
    succeeded: int = 0
    failed: Counter = field(default_factory=Counter)   # error code -> jobs failed this run
    requests: int = 0             # HTTP requests sent
    retries: int = 0
    rate_limited: int = 0         # 429 answers (rate limit, not quota)
    bisect_requests: int = 0      # extra requests spent splitting refused packs
    charged_tokens: int = 0       # our estimate of what the rate limiter charged
    in_flight: int = 0
    usage: dict[str, ModelUsage] = field(default_factory=dict)
    stop_reason: str | None = None

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def finished_jobs(self) -> int:
        return self.succeeded + self.failed_total

    def add_usage(self, model: str, usage: object) -> None:
        entry = self.usage.setdefault(model, ModelUsage())
        entry.requests += 1
        if isinstance(usage, dict):
            entry.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            entry.completion_tokens += int(usage.get("completion_tokens") or 0)

    def exit_code(self) -> int:
        """0: all jobs succeeded; 1: finished, some failed; 3: stopped early, resumable."""
        if self.stop_reason is not None:
            return EXIT_STOPPED
        if self.failed_total or self.kept_failed or self.bad_lines or self.duplicates:
            return EXIT_SOME_FAILED
        return EXIT_OK


def summary_lines(stats: RunStats, output: str) -> list[str]:
    """The human-readable end-of-run summary (stderr)."""
    wall = max(0.0, stats.finished - stats.started)
    lines = [
        f"output: {output}",
        f"jobs: {stats.jobs:,} in input · {stats.succeeded:,} succeeded now · "
        f"{stats.already_done:,} already done · {stats.failed_total:,} failed now · "
        f"{stats.kept_failed:,} kept failed from earlier runs",
    ]
    if stats.bad_lines or stats.duplicates:
        lines.append(f"input problems: {stats.bad_lines:,} bad lines · "
                     f"{stats.duplicates:,} duplicate custom_ids (see messages above)")
    if stats.failed:
        lines.append("failures: " + ", ".join(f"{code} {n:,}" for code, n in stats.failed.most_common()))
    lines.append(f"requests: {stats.requests:,} sent · {stats.retries:,} retries · "
                 f"{stats.rate_limited:,} rate-limited (429) · wall {wall:,.1f}s")
    if stats.bisect_requests:
        lines.append(f"bisecting refused packs cost {stats.bisect_requests:,} extra requests")
    for model, usage in sorted(stats.usage.items()):
        lines.append(f"tokens {model}: {usage.prompt_tokens:,} in · {usage.completion_tokens:,} out")
    if stats.stop_reason:
        lines.append(f"STOPPED EARLY ({stats.stop_reason}); run the same command again to resume")
    return lines
