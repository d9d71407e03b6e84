"""Progress: a live display on a terminal, periodic one-line status logs otherwise (cron).

Rates come from a bounded deque of (time, done, tokens) samples, so they follow the last
`WINDOW_S` seconds rather than the whole run; time is injected (`clock`). rich is imported only
for the live display.

The ETA is the estimate's model (`jobs.estimate.time_left`), not jobs left over jobs per second
(which a fast model's jobs, done early, make far too hopeful): each budget's work left (its
models' share of the run's requests and rate-limit charge not yet finished) over that budget's
rate, the slowest budget deciding; and, when slower, the run's requests left over the requests
per second the run has achieved over the last `WINDOW_S` seconds (latency, the concurrency cap,
retries and 429s show there).
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from runner.pacing.limiters import Limiters
from runner.report.log import console_echo
from runner.report.stats import RunStats

if TYPE_CHECKING:
    from rich.console import Console, Group

    from jobs.estimate import ModelEstimate

WINDOW_S = 30.0          # rates are measured over this trailing window
ETA_MIN_SPAN_S = 10.0    # an achieved rate counts for the ETA once measured over this long
TTY_REFRESH_S = 0.5
LOG_INTERVAL_S = 30.0    # one status line this often when stdout is not a terminal


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Speed:
    """Jobs and tokens per second over a trailing window of samples."""

    def __init__(self, window: float = WINDOW_S, max_samples: int = 1000) -> None:
        self.window = window
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=max_samples)

    def sample(self, now: float, done: int, tokens: int) -> None:
        self._samples.append((now, done, tokens))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.popleft()

    def rates(self) -> tuple[float, float]:
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, d0, k0), (t1, d1, k1) = self._samples[0], self._samples[-1]
        span = t1 - t0
        return ((d1 - d0) / span, (k1 - k0) / span) if span > 0 else (0.0, 0.0)


class Eta:
    """Seconds left in a run (see the module docstring). `plan`: the run's work per model
    (`jobs.estimate.work_plan`), None until known; `budget_of(model, images)`: the limiter
    pacing the model (models sharing a budget share one), read anew at each estimate."""

    def __init__(self, stats: RunStats, budget_of: Callable[[str, bool], object],
                 window: float = WINDOW_S, max_samples: int = 1000) -> None:
        self.stats = stats
        self.budget_of = budget_of
        self.plan: dict[str, ModelEstimate] | None = None
        self.window = window
        self._samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=max_samples)

    def sample(self, now: float) -> None:
        sent = {m: (n, self.stats.model_charged.get(m, 0))
                for m, n in self.stats.model_requests.items()}
        self._samples.append((now, sent))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.popleft()

    def seconds(self) -> float | None:
        """Seconds until the slowest budget is done; None before the plan is known or while a
        budget with work left has no rate yet.

        Each budget's work left goes over its limits; the run's requests left go over the
        requests per second the whole run has achieved lately, which is what binds when latency,
        the concurrency cap, retries or 429s hold the run below its budgets (measured over the
        run, not per budget: a budget's share of the concurrency grows as others finish)."""
        if self.plan is None:
            return None
        from jobs.estimate import BudgetWork, time_left  # loaded once a plan exists
        budgets: dict[int, list] = {}  # id(limiter) -> [limiter, requests left, charge left]
        for model, work in self.plan.items():
            if not work.jobs:
                continue
            usage = self.stats.usage.get(model)
            finished = (usage.jobs if usage is not None else 0) + self.stats.model_failed.get(model, 0)
            left = max(0, work.jobs - finished) / work.jobs
            limiter = self.budget_of(model, bool(work.images))
            entry = budgets.setdefault(id(limiter), [limiter, 0.0, 0.0])
            entry[1] += work.requests * left
            entry[2] += work.charge * left
        works = [BudgetWork(requests, charge, getattr(limiter, "rpm", None),
                            getattr(limiter, "tpm", None))
                 for limiter, requests, charge in budgets.values()]
        if self._samples and self._samples[-1][0] - self._samples[0][0] >= ETA_MIN_SPAN_S:
            (t0, first), (t1, last) = self._samples[0], self._samples[-1]
            sent = sum(n for n, _ in last.values()) - sum(n for n, _ in first.values())
            works.append(BudgetWork(sum(w.requests for w in works), 0.0,
                                    requests_per_s=sent / (t1 - t0)))
        return time_left(works)


class ImageSpeed:
    """Images saved per minute, per image model, over a trailing window of samples."""

    def __init__(self, window: float = WINDOW_S, max_samples: int = 1000) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=max_samples)

    def sample(self, now: float, images: dict[str, int]) -> None:
        self._samples.append((now, dict(images)))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.popleft()

    def per_minute(self) -> dict[str, float]:
        if len(self._samples) < 2:
            return {}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return {}
        return {model: (n - first.get(model, 0)) * 60 / (t1 - t0) for model, n in last.items()}


def spend_text(stats: RunStats, prices: object | None, spend: object | None = None) -> str:
    """Tokens so far and what they cost: "tokens 12,345 in / 678 out · ~$0.0123 spent" (with
    --max-cost: "of the $5 cap"); the cost at the price table in use, left out when unknown."""
    prompt = sum(u.prompt_tokens for u in stats.usage.values())
    completion = sum(u.completion_tokens for u in stats.usage.values())
    text = f"tokens {prompt:,} in / {completion:,} out"
    if spend is not None:
        return text + (f" · ${spend.spent:,.4f} spent of the ${spend.cap:g} cap"  # type: ignore[attr-defined]
                       )
    if prices is not None:
        from runner.report.summary import summary_dict
        cost = summary_dict(stats, "", prices)["estimated_cost_usd"]
        if cost is not None:
            text += f" · ~${cost:,.4f} spent"
    return text


def describe_limits(limiters: Limiters) -> str:
    """The limits in force per model, e.g. "gpt-4o-mini 900 RPM / 240,000 TPM"."""
    parts = []
    for (_, model), limiter in limiters.items():
        rpm = f"{limiter.rpm:,.0f} RPM" if limiter.rpm else "? RPM"
        tpm = f"{limiter.tpm:,.0f} TPM" if limiter.tpm else "? TPM"
        parts.append(f"{model} {rpm} / {tpm}")
    return "; ".join(parts)


def status_line(stats: RunStats, total: int | None, speed: Speed,
                limits: str = "", eta: Eta | None = None, more: Sequence[str] = ()) -> str:
    """One line: done / failed / pending, speeds, 429s, ETA, `more` (tokens and spend, images per
    minute), current limits. Without `eta`, the ETA is jobs left over jobs per second."""
    done = stats.succeeded + stats.already_done + stats.kept_changed
    failed = stats.failed_total + stats.kept_failed
    jobs_s, tokens_s = speed.rates()
    parts = [f"{done:,}{f'/{total:,}' if total else ''} done", f"{failed:,} failed"]
    if total:
        pending = max(0, total - done - failed - stats.bad_lines - stats.duplicates)
        parts.append(f"{pending:,} pending")
        left = eta.seconds() if eta is not None else pending / jobs_s if jobs_s > 0 else None
        parts.append(f"ETA {fmt_duration(0.0 if not pending else left)}")
    parts += [f"{jobs_s:,.1f} jobs/s", f"{tokens_s:,.0f} tok/s", f"{stats.in_flight} in flight",
              f"429s {stats.rate_limited}", *more]
    if limits:
        parts.append(limits)
    return " · ".join(parts)


class ProgressReporter:
    """Shows `stats` while a run goes: rich Live on a terminal, status lines every LOG_INTERVAL_S
    otherwise. `console`: the terminal's (`runner.report.log.terminal_console`), None when there
    is none."""

    def __init__(self, stats: RunStats, total: int | None, *, console: Console | None,
                 clock: Callable[[], float], limits: Callable[[], str] = lambda: "",
                 tty: bool | None = None, log_interval: float = LOG_INTERVAL_S,
                 log: Callable[[str], None] | None = None, eta: Eta | None = None,
                 prices: object | None = None, spend: object | None = None,
                 image_limit: Callable[[str], float | None] = lambda model: None) -> None:
        self.stats = stats
        self.eta = eta
        self.prices = prices  # a PriceTable: spend so far at its prices
        self.spend = spend  # --max-cost: a `jobs.spend.Spend`
        self.image_limit = image_limit  # an image model's IPM limit, when known
        self.image_speed = ImageSpeed()
        self.total = total
        self.console = console
        self.clock = clock
        self.limits = limits
        self.tty = (console is not None and console.is_terminal) if tty is None else tty
        self.log_interval = log_interval
        self.log = log or console_echo(console)
        self.speed = Speed()

    def line(self) -> str:
        now = self.clock()
        self.speed.sample(now, self.stats.finished_jobs,
                          sum(u.prompt_tokens + u.completion_tokens for u in self.stats.usage.values()))
        if self.eta is not None:
            self.eta.sample(now)
        more = [spend_text(self.stats, self.prices, self.spend)]
        if self.stats.model_images:
            self.image_speed.sample(now, self.stats.model_images)
            for model, ipm in sorted(self.image_speed.per_minute().items()):
                limit = self.image_limit(model)
                more.append(f"{model} {ipm:,.0f}{f' of {limit:,.0f}' if limit else ''} IPM")
        return status_line(self.stats, self.total, self.speed, self.limits(), self.eta, more)

    def renderable(self) -> Group:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text
        line = self.line()
        done = (self.stats.finished_jobs + self.stats.already_done + self.stats.kept_failed
                + self.stats.kept_changed)
        bar = ProgressBar(total=float(self.total) if self.total else None, completed=float(done))
        return Group(Text(line), bar)

    async def run(self) -> None:
        """Report until cancelled."""
        self.line()  # first speed sample: rates are known from the first report on
        if self.tty:
            from rich.live import Live
            with Live(self.renderable(), console=self.console, refresh_per_second=4,
                      transient=False) as live:
                try:
                    while True:
                        await asyncio.sleep(TTY_REFRESH_S)
                        live.update(self.renderable())
                finally:
                    live.update(self.renderable())
        else:
            while True:
                await asyncio.sleep(self.log_interval)
                self.log(self.line())
