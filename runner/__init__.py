"""runner: an async batch job runner for OpenAI-compatible APIs.

From Python (`runner.client`; loaded on first use, so `runner --help` imports none of it)::

    import runner
    summary = runner.run("jobs.jsonl", "results.jsonl", rpm=500)
    for result in runner.results("results.jsonl", jobs="jobs.jsonl"):
        ...
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.client import Result, RunOptions, RunSummary, results, run, run_async

__all__ = ["run", "run_async", "results", "RunOptions", "RunSummary", "Result"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runner import client
        return getattr(client, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
