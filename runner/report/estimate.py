"""`runner estimate`: the file-reading shell and the report around the pure `jobs.estimate`."""
from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pathlib import Path

from jobs.estimate import Estimate, estimate_lines
from jobs.results import OutputState
from runner.files.checkpoint import scan
from runner.files.inputs import input_lines, input_name
from runner.report.prices import PriceTable
from runner.report.render import flag_notes
from runner.tokenizer import token_counter


def estimate_file(input_path: str, *, rpm: float | None, tpm: float | None,
                  prices: PriceTable, ipm: float | None = None,
                  output: Path | None = None) -> Estimate:
    """Stream INPUT through `jobs.estimate`, with true token counts by `runner.tokenizer`;
    `runner.files.inputs.UnreadableInput` when INPUT cannot be read. With `output`, only what a
    rerun into it would send (read without changing it; `CheckpointError` when unreadable)."""
    state = None
    try:
        if output is not None:
            state = OutputState()
            scan(output, state)
        return estimate_lines(input_lines(input_path), input_name(input_path),
                              counter=token_counter, rpm=rpm, tpm=tpm, cost=prices.cost,
                              ipm=ipm, image_price=prices.image_price, output=state)
    finally:
        if state is not None:
            state.close()


def estimate_json(est: Estimate, prices: PriceTable) -> dict[str, Any]:
    """`Estimate.to_json()` plus where the prices come from."""
    return {**est.to_json(), "prices": {"source": prices.source, "as_of": prices.as_of,
                                        "files": list(prices.files)}}


def estimate_table(est: Estimate, prices: PriceTable) -> Group:
    """The human-readable estimate report."""
    limits = _limits_text(est)
    table = Table(title=f"{est.path}: {est.jobs:,} jobs, {est.requests:,} requests ({limits})",
                  title_justify="left", box=None, header_style="bold underline")
    table.add_column("model", no_wrap=True)
    for name in ("jobs", "requests", "prompt", "max out", "charge", "time", "max USD"):
        table.add_column(name, justify="right", min_width=len(name))
    for m in est.models:
        table.add_row(m.model, _count(m.jobs), _count(m.requests), _count(m.prompt_tokens),
                      _count(m.max_completion_tokens), _count(m.charge),
                      _duration(m.minutes(est.budget, est.ipm)),
                      "unknown" if m.cost is None else _usd(m.cost))
    table.add_row("total", _count(est.jobs), _count(est.requests),
                  _count(sum(m.prompt_tokens for m in est.models)),
                  _count(sum(m.max_completion_tokens for m in est.models)),
                  _count(sum(m.charge for m in est.models)), _duration(est.minutes),
                  _usd(est.cost) + (" + ?" if est.unpriced else ""), style="bold")
    notes = [Text("tokens: prompt = true prompt tokens (tiktoken); max out = completion budget "
                  "(max tokens x n); charge = what the rate limiter counts against TPM")]
    notes.append(Text(
        "max USD = prompt tokens x input price + max completion tokens x output price: an upper "
        f"bound at list prices (no cache hits, Standard tier); prices {prices.source or 'user file'}"
        f", as of {prices.as_of or 'unknown'}, may be out of date (override with --prices FILE)"))
    notes.append(Text("time = max(requests / RPM, rate-limit tokens / TPM) per model, models in "
                      "parallel: a lower bound (retries and latency add to it)"))
    if est.images:
        notes.append(Text(f"images: {est.images:,} asked for (n per job); image models are charged "
                          "images, not tokens (charge column), timed against --ipm, and priced per "
                          "image by model, size and quality"))
    if est.structured:
        notes.append(Text(f"structured outputs: {est.structured:,} jobs ask for JSON "
                          "(response_format); each answer is checked (JSON, and the schema when "
                          "given) and a broken one retried, counted against --max-attempts"))
    if est.uncapped:
        notes.append(Text(f"{est.uncapped:,} chat or Responses jobs set no max_tokens / "
                          "max_completion_tokens / max_output_tokens: "
                          "their output is unbounded and NOT in the cost", style="yellow"))
    if est.unpriced:
        notes.append(Text(f"no price for: {', '.join(est.unpriced)} (not in the price table; "
                          "add them with --prices FILE)", style="yellow"))
    if est.kept:
        notes.append(Text(f"{est.kept:,} jobs of the input have their result in the output and "
                          "are not counted (a rerun leaves them alone)"))
    notes += flag_notes(est.changed, "jobs changed since their results (counted: a run sends "
                                     "them again with --changed rerun)")
    notes += flag_notes(est.over_context, "jobs over their model's context window "
                                           "(never sent; they get an error line)")
    notes += flag_notes(est.bad_lines, "bad lines (skipped)")
    notes += flag_notes(est.duplicates, "duplicate custom_ids (only the first line runs)")
    return Group(table, *notes)


def _limits_text(est: Estimate) -> str:
    if est.budget.rpm is None and est.budget.tpm is None and est.ipm is None:
        return "no --rpm/--tpm: time unknown"
    parts = []
    if est.budget.rpm is not None:
        parts.append(f"RPM {est.budget.rpm:,g}")
    if est.budget.tpm is not None:
        parts.append(f"TPM {est.budget.tpm:,g}")
    if est.ipm is not None:
        parts.append(f"IPM {est.ipm:,g}")
    return ", ".join(parts) + " per model"


def _count(n: int) -> str:
    """Compact: 1,234 / 12.3k / 4.56M (exact numbers are in --json)."""
    if n < 10_000:
        return f"{n:,}"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _usd(amount: float) -> str:
    return f"{amount:.4f}" if amount < 1 else f"{amount:,.2f}"


def _duration(minutes: float | None) -> str:
    if minutes is None:
        return "?"
    if minutes < 1:
        return f"{minutes * 60:.0f}s"
    if minutes < 120:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"
