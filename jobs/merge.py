"""Merging the outputs of several runs (the shards of one input, `runner merge`): one result line
per job, its final one, in flat memory. Pure: lines in, lines out; the lines are read through a
`MergeSource` (the files themselves for the command: `runner.files.outputs`).

The rule. Within one output the last line of a custom_id wins (as on resume). Across outputs a
success beats a failure, a permanent failure a transient one, and otherwise the later output
wins. Duplicate notes, blank lines and lines that are not JSON objects are dropped. Jobs come out
in the order they first appear, each line newline-terminated.

The picture. The lines of all outputs, laid end to end, are numbered from 0 (as
`bytes.splitlines` splits each output). Nothing of a line is kept but its number:

    per output, in order   a table of that output's ids ─► per line: `firsts` bit (its id's first
    (`scan_output`)        line in this output), `finals` bit (its id's last line in it); the
                           table is dropped after the output
    all lines, once        the lines with a bit set are parsed again; one table of every id
    (`__init__`)           holds its winning line so far (number and rank); a `firsts` bit stays
                           only where the id is new to that table (its first line overall)
    all lines, once more   at each first line, the id's winning line: the line itself when its
    (`lines`)              `finals` bit (now: "wins") is set, else read back by number

Memory: one 8-byte slot per id at a time (`jobs.idtable.IdTable`, at most 75 % full, sized by the
outputs' ids added up), two bits a line, and what the source keeps to read a line back; never an
id, a line or a body. Exact whatever the digests: every id a table matches is read back from its
line and compared (`IdTable`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import orjson

from jobs.idtable import MAX_LOAD, IdTable, default_digest
from jobs.results import Outcome, record_outcome

__all__ = ["Merge", "MemoryOutputs", "MergeSource", "merge_outputs", "verdict"]

_RANK = {Outcome.TRANSIENT: 0, Outcome.PERMANENT: 1, Outcome.DONE: 2}
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
    outcome = record_outcome(record) if isinstance(custom_id, str) else None
    return None if outcome is None else (custom_id, _RANK[outcome])


class MergeSource(Protocol):
    """The outputs merged, read as numbered lines (each without its line break)."""

    def __len__(self) -> int:
        """How many outputs."""

    def output(self, k: int) -> Iterable[bytes]:
        """The lines of output `k`; outputs are asked for in order, 0 first, before `lines`."""

    def lines(self) -> Iterable[bytes]:
        """The lines of every output, end to end (line 0 first)."""

    def read(self, number: int) -> bytes:
        """Line `number` again (any line already yielded)."""


class MemoryOutputs:
    """A `MergeSource` in memory: each output a sequence of lines (tests and small tools)."""

    __slots__ = ("_outputs", "_lines")

    def __init__(self, outputs: Iterable[Iterable[bytes]]) -> None:
        self._outputs = [[raw.rstrip(b"\r\n") for raw in lines] for lines in outputs]
        self._lines = [line for lines in self._outputs for line in lines]

    def __len__(self) -> int:
        return len(self._outputs)

    def output(self, k: int) -> Iterable[bytes]:
        return self._outputs[k]

    def lines(self) -> Iterable[bytes]:
        return self._lines

    def read(self, number: int) -> bytes:
        return self._lines[number]


def _set(bits: bytearray, n: int) -> None:
    bits[n >> 3] |= 1 << (n & 7)


class Merge:
    """Each job's final line over the outputs of `source`, by the rule above. Building it reads
    the outputs twice; `lines()` reads them once more."""

    __slots__ = ("_source", "_digest", "_firsts", "_finals", "_count", "_ids", "_table")

    def __init__(self, source: MergeSource, *, digest: Callable[[str], int] = default_digest) -> None:
        self._source = source
        self._digest = digest
        self._firsts = bytearray()  # a line is its id's first (in its output, then overall)
        self._finals = bytearray()  # a line is its id's last in its output, then its winner
        self._count = 0  # lines numbered so far
        self._ids = 0    # ids added up over the outputs (an id in two outputs counts twice)
        for k in range(len(source)):
            self._scan_output(source.output(k))
        self._table = IdTable(self._id_at, digest=digest, slots=int(self._ids / MAX_LOAD) + 1)
        self._settle()

    def _id_at(self, position: int) -> str | None:
        found = verdict(self._source.read(position >> RANK_BITS))
        return None if found is None else found[0]

    def _scan_output(self, lines: Iterable[bytes]) -> None:
        """Mark the first and the last line of each id of one output."""
        table = IdTable(self._id_at, digest=self._digest)
        firsts = self._firsts
        n = self._count
        for raw in lines:
            if n >> 3 >= len(firsts):
                firsts.extend(bytes(len(firsts) + 1024))
            found = verdict(raw)
            if found is not None and table.put(found[0], n << RANK_BITS) < 0:
                firsts[n >> 3] |= 1 << (n & 7)
            n += 1
        self._count = n
        self._ids += len(table)
        finals = self._finals
        finals.extend(bytes(len(firsts) - len(finals)))
        for position in table.positions():
            _set(finals, position >> RANK_BITS)

    def _settle(self) -> None:
        """Each id's winner: the last lines of each output, in order, by rank; the first line
        of each id overall."""
        table, firsts, finals = self._table, self._firsts, self._finals
        for n, raw in enumerate(self._source.lines()):
            byte, bit = n >> 3, 1 << (n & 7)
            first, final = firsts[byte] & bit, finals[byte] & bit
            if not (first or final):
                continue
            found = verdict(raw)
            assert found is not None, "a line marked in the first reading is a result"
            custom_id, rank = found
            held = table.find(custom_id)
            if first and held >= 0:
                firsts[byte] &= ~bit  # seen in an earlier output
            if final and (held < 0 or rank >= held & RANK_MASK):
                table.put(custom_id, n << RANK_BITS | rank)
        finals[:] = bytes(len(finals))
        for position in table.positions():
            _set(finals, position >> RANK_BITS)

    def __len__(self) -> int:
        """Jobs merged."""
        return len(self._table)

    def holds(self, custom_id: str) -> bool:
        """Some output holds a result for `custom_id`."""
        return self._table.find(custom_id) >= 0

    def lines(self) -> Iterator[bytes]:
        """Each job's final line, newline-terminated, in the order the jobs first appear."""
        table, firsts, finals, read = self._table, self._firsts, self._finals, self._source.read
        for n, raw in enumerate(self._source.lines()):
            byte, bit = n >> 3, 1 << (n & 7)
            if not firsts[byte] & bit:
                continue
            if finals[byte] & bit:
                yield raw + b"\n"
            else:
                found = verdict(raw)
                assert found is not None, "a first line is a result"
                yield read(table.find(found[0]) >> RANK_BITS) + b"\n"


def merge_outputs(outputs: Iterable[Iterable[bytes]], *,
                  digest: Callable[[str], int] = default_digest) -> list[bytes]:
    """Each job's final line (newline-terminated) over `outputs`, each a sequence of its lines
    (without line breaks), held in memory."""
    return list(Merge(MemoryOutputs(outputs), digest=digest).lines())
