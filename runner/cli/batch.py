"""The command-line side of the batch backend: `runner run --via batch` and `runner cancel` go
through `execute_batch`; `status --refresh` asks the provider with `refresh`. Its reports are
`runner.report.batches`'."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from runner.api.endpoint import Endpoint, batch_setup_hint
from runner.batch.run import BatchRunConfig
from runner.client import run_engine
from runner.batch.state import read_state
from runner.cli.execute import execute
from runner.errors import ChangedJobsError, EndpointUnusable, RunnerError
from runner.files.checkpoint import CheckpointError
from runner.outcome import classify, stops_before_answer
from runner.report.batches import batch_json, batch_summary
from runner.report.prices import PriceTable, batch_price_table


def execute_batch(config: BatchRunConfig, *, progress: bool = True, log_file: Path | None = None,
                  summary_json: Path | None = None, prices: PriceTable | None = None,
                  metrics: Any = None) -> int:
    """Run (or cancel) through the Batch API; the exit code (0, 1, 2, 3, 4 or 70). `metrics`
    (a `runner.report.metrics.MetricsFile`) is written while the run goes and at its end."""
    what = "cancel" if config.cancel else "batch"
    if metrics is not None and prices is not None:
        metrics.prices = batch_price_table(prices)
    if config.max_cost is not None and config.prices is None:  # the cap counts at batch prices
        from runner.report.prices import load_prices
        config = dataclasses.replace(config, prices=batch_price_table(prices or load_prices()))
    return execute(
        lambda console, log: run_engine(config, console=console, log=log, progress=progress,
                                        handle_signals=True, metrics=metrics),
        title=f"runner ({what}): {config.input} -> {config.output}", output=config.output,
        api_key=config.endpoint.api_key, usage_errors=(CheckpointError, OSError, ChangedJobsError),
        log_file=log_file, summary_json=summary_json,
        prices=batch_price_table(prices) if prices is not None else None,
        more_lines=lambda stats: [batch_summary(stats)],
        more_json=lambda stats: {"batch": batch_json(stats)}, metrics=metrics)


async def refresh(output: Path, endpoint: Endpoint) -> list[dict[str, Any]]:
    """Ask the provider for each open batch of `output` (read only: the state file is not
    written). A first call finding the endpoint not working (nothing listening, a route that
    answers 404 for itself) raises `EndpointUnusable`, naming the URL and the likely fix; any
    other failure raises its own error."""
    from runner.api.transport import aiohttp_sender, open_session
    from runner.batch.client import BatchClient
    state = read_state(output)
    if state is None:
        return []
    async with open_session(max_connections=4) as session:
        client = BatchClient(aiohttp_sender(session), endpoint)
        answers = []
        for chunk in state.open_chunks():
            if chunk.batch_id:
                try:
                    answers.append(await client.get(chunk.batch_id))
                except RunnerError as exc:
                    verdict = classify(None, {}, None, exc=exc)
                    if stops_before_answer(verdict, answered=bool(answers)):
                        hint = batch_setup_hint(endpoint, getattr(exc, "url", None), verdict.code)
                        raise EndpointUnusable(f"{hint} ({verdict.code}: {verdict.message})"
                                               ) from None
                    raise
        return answers
