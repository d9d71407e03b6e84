"""`--metrics-file PATH`: a run's counters in the Prometheus text format, for the monitoring people
already run (node_exporter's textfile collector, the convention for cron jobs).

    RunStats ─► StatsCollector (a prometheus_client collector) ─► write_to_textfile(PATH)
                  read at each write                                 a temporary file renamed over
                                                                     PATH: a scrape never sees half

`MetricsFile` writes every `METRICS_INTERVAL_S` while the run goes and once at its end, with the
exit code. Only counts, model names, error codes and OUTPUT's file name go in: never the key, a
URL, a prompt or an answer. The time of the last success is the wall-clock time of the write that
first saw it (`clock`, injected), so it is late by at most the interval.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from runner.report.stats import RunStats

METRICS_INTERVAL_S = 15.0  # seconds between writes while the run goes
PREFIX = "runner"


class StatsCollector:
    """Reads a `RunStats` (and what `MetricsFile` knows: start, last success, exit code) into
    metric families each time the registry is collected."""

    def __init__(self, owner: MetricsFile) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        owner, stats = self.owner, self.owner.stats
        labels = ["output"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            family.add_metric([owner.output], value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            family.add_metric([owner.output], value)
            return family

        yield gauge("running", "1 while the run goes, 0 once it has ended",
                    0.0 if owner.exit_code is not None else 1.0)
        yield gauge("start_timestamp_seconds", "When the run started (Unix time)", owner.started)
        if owner.exit_code is not None:
            yield gauge("exit_code", "The run's exit code (0 all done, 1 some failed, 2 usage, "
                        "3 stopped resumable, 4 batches still open)", owner.exit_code)
        if owner.last_success is not None:
            yield gauge("last_success_timestamp_seconds",
                        "When a job last succeeded in this run (Unix time)", owner.last_success)
        if stats is None:
            return
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs of INPUT by state: done (this run or "
                                 "before), failed (permanently, this run or kept), pending",
                                 labels=[*labels, "state"])
        done = stats.succeeded + stats.already_done + stats.kept_changed
        failed = stats.failed_total + stats.kept_failed
        jobs.add_metric([owner.output, "done"], done)
        jobs.add_metric([owner.output, "failed"], failed)
        if stats.input_lines is not None:
            pending = stats.input_lines - done - failed - stats.bad_lines - stats.duplicates
            jobs.add_metric([owner.output, "pending"], max(0, pending))
        yield jobs
        yield counter("jobs_succeeded", "Jobs that succeeded in this run", stats.succeeded)
        by_code = CounterMetricFamily(f"{PREFIX}_jobs_failed", "Jobs that failed in this run, "
                                      "by error code", labels=[*labels, "code"])
        for code, n in sorted(stats.failed.items()):
            by_code.add_metric([owner.output, code], n)
        yield by_code
        yield counter("requests", "HTTP requests sent (--via batch: lines submitted)",
                      stats.requests)
        yield counter("rate_limited", "429 answers (rate limit)", stats.rate_limited)
        yield counter("retries", "Requests sent again", stats.retries)
        tokens = CounterMetricFamily(f"{PREFIX}_tokens", "Tokens by model, from the answers' "
                                     "usage", labels=[*labels, "model", "direction"])
        for model, usage in sorted(stats.usage.items()):
            tokens.add_metric([owner.output, model, "prompt"], usage.prompt_tokens)
            tokens.add_metric([owner.output, model, "completion"], usage.completion_tokens)
        yield tokens
        images = CounterMetricFamily(f"{PREFIX}_images", "Images saved, by model",
                                     labels=[*labels, "model"])
        for model, n in sorted(stats.model_images.items()):
            images.add_metric([owner.output, model], n)
        yield images
        if owner.prices is not None:
            from runner.report.summary import summary_dict
            cost = CounterMetricFamily(f"{PREFIX}_cost_usd", "Estimated cost by model in USD, at "
                                       "the price table in use", labels=[*labels, "model"])
            for model, m in summary_dict(stats, "", owner.prices)["models"].items():
                if m["estimated_cost_usd"] is not None:
                    cost.add_metric([owner.output, model], m["estimated_cost_usd"])
            yield cost


class MetricsFile:
    """The metrics file of one run. `write()` may be called any time; `run()` writes every
    `interval` seconds until cancelled; `finish(exit_code)` writes the last one."""

    def __init__(self, path: Path, output: Path, stats: RunStats | None = None, *,
                 prices: Any = None, clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] = lambda message: None) -> None:
        self.path = path
        self.output = output.name
        self.stats = stats
        self.prices = prices
        self.clock = clock
        self.log = log
        self.started = clock()
        self.last_success: float | None = None
        self.exit_code: int | None = None
        self._succeeded = 0
        self._failing = False
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StatsCollector(self))  # type: ignore[arg-type]

    def write(self) -> None:
        """Write PATH atomically; a failure is said once in the log, and the run goes on."""
        if self.stats is not None and self.stats.succeeded > self._succeeded:
            self._succeeded = self.stats.succeeded
            self.last_success = self.clock()
        try:
            write_to_textfile(str(self.path), self.registry)
        except OSError as e:
            if not self._failing:
                self.log(f"runner: cannot write the metrics file {self.path}: {e.strerror or e}")
            self._failing = True
        else:
            self._failing = False

    def finish(self, exit_code: int, stats: RunStats | None = None) -> None:
        if stats is not None:
            self.stats = stats
        self.exit_code = exit_code
        self.write()

    async def run(self, interval: float = METRICS_INTERVAL_S) -> None:
        """Write now and every `interval` seconds until cancelled."""
        while True:
            self.write()
            await asyncio.sleep(interval)
