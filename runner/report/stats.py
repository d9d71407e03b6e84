"""Run statistics: counters the dispatcher bumps, read by the progress display and the summary
(`runner.report.summary`)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from jobs import intake
from jobs.endpoints import images_requested, read_usage
from runner.exit_codes import EXIT_IN_PROGRESS, EXIT_OK, EXIT_SOME_FAILED, EXIT_STOPPED, EXIT_USAGE


@dataclass(slots=True)
class ModelUsage:
    """Tokens in and out of one model, summed over the jobs it answered (from their `usage`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    jobs: int = 0
    cached_tokens: int = 0      # of prompt_tokens, served from the prompt cache
    reasoning_tokens: int = 0   # of completion_tokens, spent reasoning
    images: int = 0             # images generated (image endpoints)


@dataclass(slots=True)
class RunStats:
    """Counts of one run. Plain mutable counters; only the event loop's thread writes them."""

    started: float = 0.0
    finished: float = 0.0
    jobs: int = 0                 # valid, unique jobs in the input
    already_done: int = 0         # skipped: a success line exists
    kept_failed: int = 0          # skipped: a permanent failure exists (no --retry-failed)
    kept_changed: int = 0         # skipped: changed since its result, kept (--changed keep)
    changed: int = 0              # sent again: changed since its result (--changed rerun)
    bad_lines: int = 0
    duplicates: int = 0
    succeeded: int = 0
    failed: Counter = field(default_factory=Counter)   # error code -> jobs failed this run
    requests: int = 0             # HTTP requests sent
    retries: int = 0
    rate_limited: int = 0         # 429 answers (rate limit, not quota)
    bisect_requests: int = 0      # extra requests spent splitting refused packs
    partial_answers: int = 0      # packed answers lacking some jobs' choices: the rest sent again
    packing_off: list[tuple[str, str, str]] = field(default_factory=list)  # (model, url, why)
    n_ignored: list[tuple[str, str, str]] = field(default_factory=list)  # (model, url, evidence)
    budget_shared: list[tuple[str, str]] = field(default_factory=list)  # (base URL, why)
    charged_tokens: int = 0       # our estimate of what the rate limiter charged
    images: int = 0               # images saved as files (image endpoints)
    model_images: Counter = field(default_factory=Counter)  # image model -> images saved
    image_kinds: Counter = field(default_factory=Counter)   # (model, size, quality) -> images
    in_flight: int = 0
    usage: dict[str, ModelUsage] = field(default_factory=dict)
    model_requests: Counter = field(default_factory=Counter)   # model -> requests sent
    model_charged: Counter = field(default_factory=Counter)    # model -> rate-limit tokens charged
    model_failed: Counter = field(default_factory=Counter)     # model -> jobs failed this run
    limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # model -> (rpm, tpm)
    # model -> (first request sent, last answer received): the time its rates are measured over
    model_sending: dict[str, tuple[float, float]] = field(default_factory=dict)
    live: bool = True             # False for the Batch API: its "requests" are lines submitted
    reads_input: bool = True      # False for `runner cancel`: it collects, it reads no INPUT
    stop_reason: str | None = None
    input_read: bool = False      # INPUT was read to its end (else `jobs` counts what was read)
    no_jobs: bool = False         # INPUT (not a shard of it) holds no job and no bad line: exit 2
    unusable_input: bool = False  # stopped because the input cannot be run at all (exit 2)
    misconfigured: bool = False  # stopped by a setting rerunning cannot mend (a ConfigurationError: exit 2)
    spend_cap: float | None = None  # --max-cost: USD this run might spend
    spent: float | None = None    # with a cap: USD spent (live: answers; batch: submitted, at most)
    spend_capped: bool = False    # the cap stopped the run
    limit: int | None = None      # --limit: this run took only the first so many pending jobs
    input_lines: int | None = None  # lines of INPUT (of its shard), when counted: pending = the rest

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def finished_jobs(self) -> int:
        return self.succeeded + self.failed_total

    def input_ended(self, *, sharded: bool) -> None:
        """INPUT was read to its end. One holding nothing at all (no job, no bad line) is worth
        telling cron apart from a finished run (exit 2); a shard of it may well be empty."""
        self.input_read = True
        self.no_jobs = not (sharded or self.jobs or self.bad_lines or self.duplicates)

    def count_settled(self, done: int, kept: int) -> None:
        """Jobs the resume index settled without reading them (`jobs.settled`): counted as the
        intake's Skip decisions would have been."""
        self.jobs += done + kept
        self.already_done += done
        self.kept_failed += kept

    def count_decision(self, decision: object) -> None:
        """Count what the intake (`jobs.intake`) decided for one input item."""
        match decision:
            case intake.Reject():
                self.bad_lines += 1
            case intake.Duplicate():
                self.duplicates += 1
            case intake.Skip(why=why):
                self.jobs += 1
                if why is intake.SkipReason.DONE:
                    self.already_done += 1
                elif why is intake.SkipReason.KEPT_FAILED:
                    self.kept_failed += 1
                else:
                    self.kept_changed += 1
            case intake.Refuse() | intake.Pending():
                self.jobs += 1
            case intake.Run(changed=True):
                self.changed += 1

    def add_usage(self, model: str, usage: object) -> None:
        """Count one job's `usage` (tokens in and out) under its model."""
        entry = self.usage.setdefault(model, ModelUsage())
        entry.jobs += 1
        counts = read_usage(usage)  # chat/completions or Responses/gpt-image-1 shape
        entry.prompt_tokens += counts.input
        entry.completion_tokens += counts.output
        entry.cached_tokens += counts.cached
        entry.reasoning_tokens += counts.reasoning

    def add_billed(self, model: str, usage: object) -> None:
        """Count the tokens of an answer no job could use (billed all the same), not as a job."""
        entry = self.usage.setdefault(model, ModelUsage())
        counts = read_usage(usage)
        entry.prompt_tokens += counts.input
        entry.completion_tokens += counts.output
        entry.cached_tokens += counts.cached
        entry.reasoning_tokens += counts.reasoning

    def count_images(self, model: str, url: str, body: dict) -> None:
        """Count the images one job's answer saved (its `n`), by model and by size and quality."""
        images = images_requested(url, body)
        self.images += images
        self.model_images[model] += images
        self.image_kinds[model, body.get("size"), body.get("quality")] += images

    def sent(self, model: str, now: float) -> None:
        """A request for `model` went on the wire at `now` (the first one opens its sending time)."""
        if model not in self.model_sending:
            self.model_sending[model] = (now, now)

    def answered(self, model: str, now: float) -> None:
        """A request for `model` left the wire at `now` (answered, refused or lost)."""
        first, _ = self.model_sending.get(model, (now, now))
        self.model_sending[model] = (first, now)

    def exit_code(self) -> int:
        """0: all jobs succeeded; 1: finished, some failed; 2: INPUT holds no jobs, or stopped because the input cannot be
        run (not a job file, an unreadable compression) or a setting is wrong (the API redirects
        to another origin, a fresh token is refused); 3: stopped early, resumable."""
        if self.stop_reason is not None:
            return EXIT_USAGE if self.unusable_input or self.misconfigured else EXIT_STOPPED
        if self.no_jobs:
            return EXIT_USAGE
        if self.failed_total or self.kept_failed or self.bad_lines or self.duplicates:
            return EXIT_SOME_FAILED
        return EXIT_OK


@dataclass(slots=True)
class BatchStats(RunStats):
    """`RunStats` plus the batches: exit code 4 while batches are still open at the provider."""

    batches_created: int = 0
    batches_collected: int = 0
    batch_lines: int = 0
    batch_status: Counter = field(default_factory=Counter)  # open batches by provider status
    in_progress: bool = False

    def exit_code(self) -> int:
        if self.stop_reason is None and self.in_progress:
            return EXIT_IN_PROGRESS
        return RunStats.exit_code(self)
