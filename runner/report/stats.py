"""Run statistics: counters the dispatcher bumps, read by the progress display and the summary."""
from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from jobs.packing import usage_count
from runner.redact import redact

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_BUG = 70  # EX_SOFTWARE: an internal error


@dataclass(slots=True)
class ModelUsage:
    """Tokens in and out of one model, summed over the jobs it answered (from their `usage`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    jobs: int = 0


@dataclass(slots=True)
class RunStats:
    """Counts of one run. Plain mutable counters; only the event loop's thread writes them."""

    started: float = 0.0
    finished: float = 0.0
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
    model_requests: Counter = field(default_factory=Counter)   # model -> requests sent
    model_charged: Counter = field(default_factory=Counter)    # model -> rate-limit tokens charged
    limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # model -> (rpm, tpm)
    stop_reason: str | None = None

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def finished_jobs(self) -> int:
        return self.succeeded + self.failed_total

    def add_usage(self, model: str, usage: object) -> None:
        """Count one job's `usage` (tokens in and out) under its model."""
        entry = self.usage.setdefault(model, ModelUsage())
        entry.jobs += 1
        if isinstance(usage, dict):
            entry.prompt_tokens += usage_count(usage.get("prompt_tokens"))
            entry.completion_tokens += usage_count(usage.get("completion_tokens"))

    def exit_code(self) -> int:
        """0: all jobs succeeded; 1: finished, some failed; 3: stopped early, resumable."""
        if self.stop_reason is not None:
            return EXIT_STOPPED
        if self.failed_total or self.kept_failed or self.bad_lines or self.duplicates:
            return EXIT_SOME_FAILED
        return EXIT_OK


def summary_dict(stats: RunStats, output: str, prices: object | None = None) -> dict:
    """The machine-readable summary (`--summary-json`). `prices`: a `runner.report.prices.PriceTable`.

    Achieved rates are over the whole wall time; allowed ones are the limits in force at the end
    (learned from the API's headers, else the user's). Costs are at list price from the price table;
    null for models the table does not know.
    """
    wall = max(0.0, stats.finished - stats.started)
    minutes = wall / 60 if wall > 0 else None
    models: dict[str, dict] = {}
    total_cost: float | None = None
    for model in sorted(set(stats.usage) | set(stats.model_requests)):
        usage = stats.usage.get(model, ModelUsage())
        rpm, tpm = stats.limits.get(model, (None, None))
        cost = None
        if prices is not None:
            cost = prices.cost(model, usage.prompt_tokens, usage.completion_tokens)  # type: ignore[attr-defined]
        if cost is not None:
            total_cost = (total_cost or 0.0) + cost
        models[model] = {
            "jobs_succeeded": usage.jobs,
            "requests": stats.model_requests.get(model, 0),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "charged_tokens": stats.model_charged.get(model, 0),
            "achieved_rpm": round(stats.model_requests.get(model, 0) / minutes, 1) if minutes else None,
            "allowed_rpm": rpm,
            "achieved_tpm": round(stats.model_charged.get(model, 0) / minutes, 1) if minutes else None,
            "allowed_tpm": tpm,
            "estimated_cost_usd": None if cost is None else round(cost, 6),
        }
    return {
        "output": output,
        "exit_code": stats.exit_code(),
        "stopped_early": stats.stop_reason,
        "wall_seconds": round(wall, 3),
        "jobs": {"in_input": stats.jobs, "succeeded": stats.succeeded,
                 "already_done": stats.already_done, "failed": stats.failed_total,
                 "kept_failed": stats.kept_failed, "bad_lines": stats.bad_lines,
                 "duplicates": stats.duplicates},
        "failures_by_code": dict(stats.failed.most_common()),
        "requests": {"sent": stats.requests, "retries": stats.retries,
                     "rate_limited_429": stats.rate_limited, "bisect_extra": stats.bisect_requests},
        "models": models,
        "estimated_cost_usd": None if total_cost is None else round(total_cost, 6),
    }


def summary_lines(stats: RunStats, output: str, prices: object | None = None) -> list[str]:
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
    data = summary_dict(stats, output, prices)
    for model, m in data["models"].items():
        rates = ""
        if m["achieved_rpm"] is not None:
            allowed_rpm = f"{m['allowed_rpm']:,.0f}" if m["allowed_rpm"] else "?"
            allowed_tpm = f"{m['allowed_tpm']:,.0f}" if m["allowed_tpm"] else "?"
            rates = (f" · {m['achieved_rpm']:,.0f} of {allowed_rpm} RPM"
                     f" · {m['achieved_tpm']:,.0f} of {allowed_tpm} TPM")
        cost = m["estimated_cost_usd"]
        cost_text = f" · ~${cost:,.4f}" if cost is not None else (" · cost unknown" if prices else "")
        lines.append(f"{model}: {m['prompt_tokens']:,} tokens in · {m['completion_tokens']:,} out"
                     f"{rates}{cost_text}")
    if data["estimated_cost_usd"] is not None:
        lines.append(f"estimated cost: ${data['estimated_cost_usd']:,.4f} at list prices")
    if stats.stop_reason:
        lines.append(f"STOPPED EARLY ({stats.stop_reason}); run the same command again to resume")
    return lines


class RunLog:
    """Where a run's messages go: the console, and with timestamps the `--log-file` (appended).

    Every message passes `redact` first, so the API key never reaches a terminal or a log file.
    """

    def __init__(self, echo: Callable[[str], None], log_file: Path | None = None,
                 secrets: Iterable[str] = (), now: Callable[[], datetime.datetime] | None = None) -> None:
        self._echo = echo
        self._secrets = tuple(s for s in secrets if s)
        self._now = now or (lambda: datetime.datetime.now().astimezone())
        self._file: IO[str] | None = None
        if log_file is not None:
            self._file = open(log_file, "a", encoding="utf-8", buffering=1)

    def __call__(self, message: str, *, echo: bool = True) -> None:
        message = redact(message, self._secrets)
        if echo:
            self._echo(message)
        if self._file is not None:
            stamp = self._now().isoformat(timespec="seconds")
            for line in message.splitlines() or [""]:
                self._file.write(f"{stamp} {line}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
