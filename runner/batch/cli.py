"""The command-line side of the batch backend: `runner run --via batch`, `runner cancel`, and the
batch parts of `runner status` and `runner estimate`. Thin: options in, one function called."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text

from runner.api.endpoint import Endpoint
from runner.batch.plan import AZURE_MAX_REQUESTS, OPENAI_MAX_REQUESTS
from runner.batch.run import BatchRunConfig, BatchStats, run_batch
from runner.batch.state import BatchState, read_state
from runner.cli.execute import execute
from runner.errors import ChangedJobsError
from runner.files.checkpoint import CheckpointError
from runner.report.prices import PriceTable

# OpenAI's Batch API costs 50% of the Standard tier's list price for the models it serves
# (https://platform.openai.com/docs/guides/batch: "50% lower costs"; Azure global batch: "50% less
# cost than global standard"). The shipped price table is the Standard tier's.
BATCH_PRICE_FACTOR = 0.5


def batch_price_table(prices: PriceTable) -> PriceTable:
    """`prices` at the Batch API's discount (`BATCH_PRICE_FACTOR`), per token and per image."""
    models = {name: dataclasses.replace(p, **{f.name: getattr(p, f.name) * BATCH_PRICE_FACTOR
                                              for f in dataclasses.fields(p)
                                              if isinstance(getattr(p, f.name), (int, float))})
              for name, p in prices.models.items()}
    images = {name: MappingProxyType({kind: usd * BATCH_PRICE_FACTOR for kind, usd in table.items()})
              for name, table in prices.images.items()}  # per image (dall-e; gpt-image-1's equivalents)
    return dataclasses.replace(prices, models=MappingProxyType(models),
                               images=MappingProxyType(images),
                               source=f"{prices.source} x {BATCH_PRICE_FACTOR:g} (Batch API)")


def execute_batch(config: BatchRunConfig, *, progress: bool = True, log_file: Path | None = None,
                  summary_json: Path | None = None, prices: PriceTable | None = None) -> int:
    """Run (or cancel) through the Batch API; the exit code (0, 1, 2, 3, 4 or 70)."""
    what = "cancel" if config.cancel else "batch"
    return execute(
        lambda console, log: run_batch(config, console=console, log=log, progress=progress),
        title=f"runner ({what}): {config.input} -> {config.output}", output=config.output,
        api_key=config.endpoint.api_key, usage_errors=(CheckpointError, OSError, ChangedJobsError),
        log_file=log_file, summary_json=summary_json,
        prices=batch_price_table(prices) if prices is not None else None,
        more_lines=lambda stats: [batch_summary(stats)],
        more_json=lambda stats: {"batch": batch_json(stats)})


def batch_json(stats: BatchStats) -> dict[str, Any]:
    return {"batches_created": stats.batches_created, "batches_collected": stats.batches_collected,
            "batch_lines": stats.batch_lines, "open": dict(stats.batch_status),
            "in_progress": stats.in_progress}


def batch_summary(stats: BatchStats) -> str:
    open_part = ", ".join(f"{n} {s}" for s, n in sorted(stats.batch_status.items())) or "none"
    text = (f"batches: {stats.batches_created} created ({stats.batch_lines:,} lines), "
            f"{stats.batches_collected} collected this run; still open at the provider: "
            f"{open_part}; costs above at Batch API prices ({BATCH_PRICE_FACTOR:g} x list)")
    if stats.in_progress and stats.stop_reason is None:
        text += " (exit 4: run the same command again later to collect them)"
    return text


# -- runner status: the batches of an output ---------------------------------------------------------

def batches_table(state: BatchState) -> Group:
    """The batches of an output from its state file (no network)."""
    table = Table(title=f"batches of this output ({state.path.name})", title_justify="left",
                  box=None, header_style="bold underline")
    for name in ("chunk", "batch", "model", "lines", "jobs", "status", "done", "failed"):
        table.add_column(name, justify="right" if name in ("lines", "jobs", "done", "failed") else "left")
    shown = 0
    for chunk in state.chunks.values():
        if chunk.closed and shown > 20:
            continue
        shown += 1
        status = chunk.status or ("submitting" if not chunk.closed else "closed")
        table.add_row(chunk.chunk, chunk.batch_id or "-", chunk.model, f"{chunk.line_count:,}",
                      f"{chunk.job_count:,}", status + ("" if chunk.closed else " (open)"),
                      f"{chunk.counts.get('completed', 0):,}", f"{chunk.counts.get('failed', 0):,}")
    open_n = len(state.open_chunks())
    note = Text(f"{open_n} batch(es) open at the provider: `runner run ... --via batch` collects "
                "them when they finish" if open_n else "no batch open at the provider")
    return Group(table, note)


async def refresh(output: Path, endpoint: Endpoint) -> list[dict[str, Any]]:
    """Ask the provider for each open batch of `output` (read only: the state file is not written)."""
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
                answers.append(await client.get(chunk.batch_id))
        return answers


def print_refresh(batches: list[dict[str, Any]]) -> None:
    for b in batches:
        counts = b.get("request_counts") or {}
        click.echo(f"{b.get('id')}: {b.get('status')}, {counts.get('completed', 0)}/"
                   f"{counts.get('total', 0)} done, {counts.get('failed', 0)} failed")


# -- runner estimate --via batch ----------------------------------------------------------------------

def batch_files(est: Any, max_requests: int) -> int:
    """Batch input files the requests make: one model and endpoint per file, at most
    `max_requests` lines each (a lower bound when lines are large: 200 MB also splits)."""
    return sum(math.ceil(m.requests / max_requests) for m in est.models if m.requests)


def default_max_requests(azure: bool) -> int:
    return AZURE_MAX_REQUESTS if azure else OPENAI_MAX_REQUESTS
