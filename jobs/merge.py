"""Merging the outputs of several runs (the shards of one input, `runner merge`): one result line
per job, its final one. Pure: lines in, lines out.

Within one output the last line of a custom_id wins (as on resume). Across outputs a success
beats a failure, a permanent failure a transient one, and otherwise the later output wins.
Duplicate notes, blank lines and lines that are not JSON objects are dropped. Jobs come out in
the order they first appear.
"""
from __future__ import annotations

from collections.abc import Iterable

import orjson

from jobs.results import Outcome, record_outcome

__all__ = ["merge_outputs"]

_RANK = {Outcome.TRANSIENT: 0, Outcome.PERMANENT: 1, Outcome.DONE: 2}


def _final(lines: Iterable[bytes]) -> dict[str, tuple[Outcome, bytes]]:
    final: dict[str, tuple[Outcome, bytes]] = {}
    for raw in lines:
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        custom_id = record.get("custom_id") if isinstance(record, dict) else None
        outcome = record_outcome(record) if isinstance(custom_id, str) else None
        if outcome is not None:
            final[custom_id] = (outcome, raw.rstrip(b"\r\n") + b"\n")
    return final


def merge_outputs(outputs: Iterable[Iterable[bytes]]) -> list[bytes]:
    """Each job's final line (newline-terminated) over `outputs`, each an iterable of its lines."""
    merged: dict[str, tuple[Outcome, bytes]] = {}
    for lines in outputs:
        for custom_id, (outcome, raw) in _final(lines).items():
            held = merged.get(custom_id)
            if held is None or _RANK[outcome] >= _RANK[held[0]]:
                merged[custom_id] = (outcome, raw)
    return [raw for _, raw in merged.values()]
