"""One run from the command line, whichever backend: open the log, run, summarise, write the JSON
summary, and turn what happened into the exit code. Both `runner run` (live) and `--via batch`
(`runner.cli.batch`) go through `execute`."""
from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from runner.exit_codes import EXIT_BUG, EXIT_USAGE
from runner.redact import redact
from runner.report.log import RunLog, console_echo, terminal_console
from runner.report.prices import PriceTable
from runner.report.stats import RunStats
from runner.report.summary import summary_dict, summary_lines

if TYPE_CHECKING:
    from rich.console import Console

    from runner.report.metrics import MetricsFile

__all__ = ["execute"]


def execute(start: Callable[[Console | None, RunLog], Awaitable[RunStats]], *, title: str, output: Path,
            api_key: str | None, usage_errors: tuple[type[BaseException], ...],
            log_file: Path | None = None, summary_json: Path | None = None,
            prices: PriceTable | None = None,
            more_lines: Callable[[RunStats], list[str]] = lambda stats: [],
            more_json: Callable[[RunStats], Mapping[str, Any]] = lambda stats: {},
            metrics: MetricsFile | None = None) -> int:
    """Run `start(console, log)` and report it; the exit code. `usage_errors` end the run with
    exit 2 and their message (an output in use, an unreachable Redis, ...); any other exception is
    a bug (exit 70, the traceback in the log). `more_lines` and `more_json` add a backend's own
    summary lines and JSON keys. The API key never reaches the log or the JSON summary. `start`
    gets a rich console on a terminal (for a live display), else None (`terminal_console`).
    `metrics` (--metrics-file) gets its last write, with the exit code, whatever the end."""
    console = terminal_console()
    secrets = (api_key,) if api_key else ()
    try:
        log = RunLog(console_echo(console), log_file, secrets=secrets)
    except OSError as e:
        click.echo(f"runner: cannot open log file {log_file}: {e.strerror}", err=True)
        return EXIT_USAGE
    stats: RunStats | None = None
    code = EXIT_BUG
    try:
        log(title, echo=False)
        if metrics is not None:
            metrics.log = log
        try:
            stats = asyncio.run(start(console, log))
        except usage_errors as e:
            log(f"runner: {e}")
            code = EXIT_USAGE
            return code
        except Exception:  # a bug: say so plainly, keep the traceback for the report
            log("runner: internal error (a bug; please report it with this log):\n"
                + traceback.format_exc())
            return code
        for line in [*summary_lines(stats, str(output), prices), *more_lines(stats)]:
            log(line)
        code = stats.exit_code()
        if summary_json is not None:
            data = {**summary_dict(stats, str(output), prices), **more_json(stats)}
            text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
            try:
                summary_json.write_text(redact(text, secrets))
            except OSError as e:
                log(f"runner: cannot write the summary {summary_json}: {e.strerror}")
        log(f"runner: exit code {code}", echo=False)
        return code
    finally:
        if metrics is not None:
            metrics.finish(code, stats)
        log.close()
