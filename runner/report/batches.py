"""The reports of the batch backend: its summary lines and JSON, the batches of an output as a
table, what `status --refresh` heard from the provider, and `estimate --via batch`'s file count.
Values in, text out: nothing here calls the provider or writes a file."""
from __future__ import annotations

import math
from typing import Any

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text


from runner.report.stats import BatchStats


def batch_json(stats: BatchStats) -> dict[str, Any]:
    return {"batches_created": stats.batches_created, "batches_collected": stats.batches_collected,
            "batch_lines": stats.batch_lines, "open": dict(stats.batch_status),
            "in_progress": stats.in_progress}


def batch_summary(stats: BatchStats) -> str:
    open_part = ", ".join(f"{n} {s}" for s, n in sorted(stats.batch_status.items())) or "none"
    text = (f"batches: {stats.batches_created} created ({stats.batch_lines:,} lines), "
            f"{stats.batches_collected} collected this run; still open at the provider: "
            f"{open_part}")
    if stats.in_progress and stats.stop_reason is None:
        text += " (exit 4: run the same command again later to collect them)"
    return text


def batches_table(state: Any) -> Group:
    """The batches of an output from its state file (no network): `state` is the journal as
    `runner.batch.state.read_state` reads it (report/ sits below batch/, so it is not imported)."""
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


def print_refresh(batches: list[dict[str, Any]]) -> None:
    for b in batches:
        counts = b.get("request_counts") or {}
        click.echo(f"{b.get('id')}: {b.get('status')}, {counts.get('completed', 0)}/"
                   f"{counts.get('total', 0)} done, {counts.get('failed', 0)} failed")


def batch_files(est: Any, max_requests: int) -> int:
    """Batch input files the requests make: one model and endpoint per file, at most
    `max_requests` lines each (a lower bound when lines are large: 200 MB also splits)."""
    return sum(math.ceil(m.requests / max_requests) for m in est.models if m.requests)
