"""Merging the outputs of several runs (the shards of one input, `runner merge`): one result line
per job, its final one, in flat memory. Pure: lines in, lines out; the lines are read through a
`MergeSource` (the files themselves for the command: `runner.files.outputs`).

The rule. Within one output the last line of a custom_id wins (as on resume). Across outputs a
success beats a failure, a permanent failure a transient one, and otherwise the later output
wins. Duplicate notes, blank lines and lines that are not JSON objects are dropped. Jobs come out
in the order they first appear, each line newline-terminated.

The picture. The lines of all outputs, laid end to end, are numbered from 0 (as
`bytes.splitlines` splits each output). Nothing of a line is kept but its number:

    each output, in turn   a table of that output's ids ─► per line: a `firsts` bit (its id's
    (`_scan_output`)       first line in this output), a `finals` bit and 2 bits of rank (its
                           id's last line in it); the table is dropped after the output
    all lines, once more   the lines with a bit set are read again; one table of every id holds
    (`_settle`)            its winning line so far (number and rank); a `firsts` bit stays only
                           where the id is new to that table (its first line overall); then
                           `finals` marks each id's winning line
    all lines, a third     at each first line, the id's winning line: the line itself when it
    time (`lines`)         wins, else read back by number

Memory: one slot per id at a time (`jobs.idtable.IdTable`: 8 bytes while one output is read,
growing with its ids; 4 for the table of every id, narrow, line numbers and ranks, reserved for
the outputs' ids added up: an id held by k outputs counts k times), four bits a line, and what
the source keeps to read a line back; never an id, a line or a body. Exact whatever the
digests: every id a table matches is read back from its line and compared (`IdTable`). The
first reading parses every line (`verdict`); the others take a result line's id from runner's
head when that is exact (`result_id`).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import orjson

from jobs.idtable import IdTable, default_digest
from jobs.results import Outcome, record_outcome

__all__ = ["Merge", "MemoryOutputs", "MergeSource", "merge_outputs", "result_id", "verdict"]

_RANK = {Outcome.TRANSIENT: 0, Outcome.PERMANENT: 1, Outcome.DONE: 2}
DONE = _RANK[Outcome.DONE]
RANK_BITS = 2  # a table position is the line number shifted left by this, or'ed with the rank
RANK_MASK = (1 << RANK_BITS) - 1


def verdict(raw: bytes) -> tuple[str, int] | None:
    """(custom_id, rank) of a result line; None when it is no job's result (not a JSON object,
    no custom_id, a duplicate note). A higher rank wins across outputs: a success over a
    permanent failure over a transient one."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    custom_id = record.get("custom_id") if isinstance(record, dict) else None
    if not isinstance(custom_id, str):
        return None
    response = record.get("response")
    if record.get("error") is None and type(response) is dict and response.get("status_code") == 200:
        return custom_id, DONE  # what record_outcome says of a success, sooner
    outcome = record_outcome(record)
    return None if outcome is None else (custom_id, _RANK[outcome])


# The head of runner's own lines, `{"id":"…","custom_id":"…"`, both without escapes.
_HEAD = re.compile(rb'\{"id":"[^"\\\n]*","custom_id":"([^"\\\n]*)"')


def result_id(raw: bytes) -> str | None:
    """The custom_id of a line `verdict` takes for a result (asked of no other line). Read
    from the head when the line has no backslash and names `"custom_id"` once: every key is then
    written as itself, so the head's is the only one."""
    head = _HEAD.match(raw)
    if head is not None and b"\\" not in raw and raw.count(b'"custom_id"') == 1:
        return head[1].decode()
    found = verdict(raw)
    return None if found is None else found[0]


class MergeSource(Protocol):
    """The outputs merged, read as numbered lines (each without its line break), a list of
    lines at a time."""

    def __len__(self) -> int:
        """How many outputs."""

    def output(self, k: int) -> Iterable[Sequence[bytes]]:
        """The lines of output `k`; outputs are asked for in order, 0 first, before `lines`."""

    def lines(self) -> Iterable[Sequence[bytes]]:
        """The lines of every output, end to end (line 0 first)."""

    def read(self, number: int) -> bytes:
        """Line `number` again (any line already given)."""


class MemoryOutputs:
    """A `MergeSource` in memory: each output a sequence of lines (tests and small tools)."""

    __slots__ = ("_outputs", "_lines")

    def __init__(self, outputs: Iterable[Iterable[bytes]]) -> None:
        self._outputs = [[raw.rstrip(b"\r\n") for raw in lines] for lines in outputs]
        self._lines = [line for lines in self._outputs for line in lines]

    def __len__(self) -> int:
        return len(self._outputs)

    def output(self, k: int) -> Iterable[Sequence[bytes]]:
        return [self._outputs[k]]

    def lines(self) -> Iterable[Sequence[bytes]]:
        return [self._lines]

    def read(self, number: int) -> bytes:
        return self._lines[number]


class Merge:
    """Each job's final line over the outputs of `source`, by the rule above. Building it reads
    the outputs twice; `lines()` reads them once more."""

    __slots__ = ("_source", "_digest", "_firsts", "_finals", "_ranks", "_count", "_ids", "_table")

    def __init__(self, source: MergeSource, *, digest: Callable[[str], int] = default_digest) -> None:
        self._source = source
        self._digest = digest
        self._firsts = bytearray()  # a line is its id's first (in its output, then overall)
        self._finals = bytearray()  # a line is its id's last in its output, then its winner
        self._ranks = bytearray()   # the rank of each last line, 2 bits a line
        self._count = 0  # lines numbered so far
        self._ids = 0    # ids added up over the outputs (an id in two outputs counts twice)
        for k in range(len(source)):
            self._scan_output(source.output(k))
        self._table = IdTable(self._id_at, digest=digest, narrow=True)  # 4 bytes a slot
        last = max(self._count - 1, 0) << RANK_BITS | RANK_MASK  # the highest position put
        self._table.reserve(self._ids, max_position=last)
        self._settle()

    def _id_at(self, position: int) -> str | None:
        return result_id(self._source.read(position >> RANK_BITS))

    def _scan_output(self, chunks: Iterable[Sequence[bytes]]) -> None:
        """Mark the first and the last line of each id of one output, and the last's rank."""
        table = IdTable(self._id_at, digest=self._digest)
        put = table.put
        firsts = self._firsts
        n = self._count
        for lines in chunks:
            end = n + len(lines)
            if end >> 3 >= len(firsts):
                firsts.extend(bytes((end >> 3) + 1 - len(firsts)))
            for found in map(verdict, lines):
                if found is not None and put(found[0], n << RANK_BITS | found[1]) < 0:
                    firsts[n >> 3] |= 1 << (n & 7)
                n += 1
        self._count = n
        self._ids += len(table)
        finals, ranks = self._finals, self._ranks
        finals.extend(bytes(len(firsts) - len(finals)))
        ranks.extend(bytes(2 * len(firsts) - len(ranks)))
        for position in table.positions():
            line = position >> RANK_BITS
            finals[line >> 3] |= 1 << (line & 7)
            ranks[line >> 2] |= (position & RANK_MASK) << 2 * (line & 3)

    def _settle(self) -> None:
        """Each id's winner: the last lines of each output, in order, by rank; the first line
        of each id overall."""
        table, firsts, finals, ranks = self._table, self._firsts, self._finals, self._ranks
        find, put = table.find, table.put
        n = 0
        for lines in self._source.lines():
            for raw in lines:
                byte, bit = n >> 3, 1 << (n & 7)
                if firsts[byte] & bit:
                    if finals[byte] & bit:  # the only line of its id in its output
                        rank = ranks[n >> 2] >> 2 * (n & 3) & RANK_MASK
                        held = put(result_id(raw), n << RANK_BITS | rank)
                        if held >= 0:
                            firsts[byte] &= ~bit  # seen in an earlier output
                            if rank < held & RANK_MASK:
                                put(result_id(raw), held)  # which stays the winner
                    elif find(result_id(raw)) >= 0:
                        firsts[byte] &= ~bit
                elif finals[byte] & bit:
                    rank = ranks[n >> 2] >> 2 * (n & 3) & RANK_MASK
                    custom_id = result_id(raw)
                    held = find(custom_id)
                    if held < 0 or rank >= held & RANK_MASK:
                        put(custom_id, n << RANK_BITS | rank)
                n += 1
        self._ranks = bytearray()
        finals[:] = bytes(len(finals))
        for position in table.positions():
            line = position >> RANK_BITS
            finals[line >> 3] |= 1 << (line & 7)

    def __len__(self) -> int:
        """Jobs merged."""
        return len(self._table)

    def holds(self, custom_id: str) -> bool:
        """Some output holds a result for `custom_id`."""
        return self._table.find(custom_id) >= 0

    def lines(self) -> Iterator[bytes]:
        """Each job's final line, newline-terminated, in the order the jobs first appear."""
        table, firsts, finals, read = self._table, self._firsts, self._finals, self._source.read
        n = 0
        for lines in self._source.lines():
            for raw in lines:
                byte, bit = n >> 3, 1 << (n & 7)
                if firsts[byte] & bit:
                    if finals[byte] & bit:
                        yield raw + b"\n"
                    else:
                        yield read(table.find(result_id(raw)) >> RANK_BITS) + b"\n"
                n += 1


def merge_outputs(outputs: Iterable[Iterable[bytes]], *,
                  digest: Callable[[str], int] = default_digest) -> list[bytes]:
    """Each job's final line (newline-terminated) over `outputs`, each a sequence of its lines
    (without line breaks), held in memory."""
    return list(Merge(MemoryOutputs(outputs), digest=digest).lines())
