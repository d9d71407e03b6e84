"""Reading and validating job files: bytes in, jobs or precise complaints out.

Pure: `parse_line` turns one raw line into a `Job`, a `BadLine`, or None (a blank line);
`read_jobs` streams many lines and flags a second line with an already seen `custom_id` as a
`Duplicate`. Memory grows only with the ids seen, never with the jobs themselves: 4 bytes a slot
of a narrow `jobs.idtable.IdTable` (the line number, confirmed by reading the line again) when the
input can be read again at an offset (`reread`: a regular, uncompressed file), else a dict of ids
(stdin, pipes, compressed inputs, which cannot be read twice).
"""
from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate

import orjson

from jobs.endpoints import SPECS, body_problem
from jobs.idtable import IdTable
from jobs.job import ENDPOINTS, METHODS, Job

BOM = b"\xef\xbb\xbf"  # what some editors write at the start of a UTF-8 file
MAX_SHOWN = 60  # characters of an offending value quoted in a message
NOT_A_JOB_FILE_AFTER = 20  # bad lines in a row at the start, with no job yet, that end the reading
LINES_PER_MARK = 64  # the reader keeps the byte offset of every this-many-th line (to read one again)
REREAD_SIZE = 1 << 13  # bytes read at first to find one line again (doubled until it is whole)


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that cannot become a job; `reason` says what is wrong in words a user can act on."""

    path: str
    line: int
    reason: str
    custom_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A valid line whose `custom_id` an earlier line (`first_line`) already used; only the first runs."""

    path: str
    line: int
    first_line: int
    custom_id: str

    @property
    def reason(self) -> str:
        return (f"duplicate custom_id {_show(self.custom_id)}: line {self.line} repeats line "
                f"{self.first_line}; only line {self.first_line} runs")

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class NotAJobFile(ValueError):
    """The input's first `NOT_A_JOB_FILE_AFTER` lines are all bad and none is a job, or it ended
    with bad lines and no job: it is not a job file (random bytes, a binary or compressed file read
    as text, a result file). `last` is the bad line that ended the reading, to be reported like the
    ones before it (None when the input simply ended: every bad line was already given out)."""

    def __init__(self, path: str, lines: int, last: BadLine | None,
                 looks_like_results: bool) -> None:
        what = (" (they look like result lines: is it an output file?)" if looks_like_results
                else "")
        ended = "reading stopped" if last is not None else "nothing to run"
        super().__init__(
            f"{path} does not look like a JSONL job file: its first {lines} lines hold no "
            f"job{what}. A job file has one JSON object a line with custom_id, method, url and "
            f"body; {ended}")
        self.path = path
        self.last = last


def _looks_like_result(raw: bytes) -> bool:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "custom_id" in obj and ("response" in obj or "error" in obj)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def parse_line(raw: bytes, line: int, path: str) -> Job | BadLine | None:
    """One raw line (with or without its newline) -> Job, BadLine, or None for a blank line."""
    if not raw.strip():
        return None

    def bad(reason: str, custom_id: str | None = None) -> BadLine:
        return BadLine(path, line, reason, custom_id)

    try:
        obj = orjson.loads(raw)  # it refuses invalid UTF-8 too: said below, by byte
    except orjson.JSONDecodeError as e:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad_byte:
            return bad(f"invalid UTF-8 at byte {bad_byte.start}")
        stripped = raw.strip()
        if stripped[:1] in (b"{", b"["):
            return bad(f"malformed or truncated JSON ({e})")
        return bad(f"not JSON: {_show(stripped.decode('utf-8'))}")
    if not isinstance(obj, dict):
        return bad(f"expected a JSON object, got {type(obj).__name__}")
    custom_id = obj.get("custom_id")
    if "custom_id" not in obj:
        return bad("missing custom_id")
    if not isinstance(custom_id, str):
        return bad(f"custom_id must be a string, got {type(custom_id).__name__}")
    if custom_id == "":
        return bad("custom_id is empty")
    method = obj.get("method", "POST")
    if method not in METHODS:
        return bad(f"unsupported method {_show(method)}; only POST", custom_id)
    if "url" not in obj:
        return bad("missing url", custom_id)
    url = obj.get("url")
    if url not in ENDPOINTS:
        return bad(f"unsupported url {_show(url)}; expected one of {', '.join(ENDPOINTS)}", custom_id)
    if "body" not in obj:
        return bad("missing body", custom_id)
    body = obj["body"]
    if not isinstance(body, dict):
        return bad(f"body must be a JSON object, got {type(body).__name__}", custom_id)
    model = body.get("model")
    optional = SPECS[url].default_model is not None
    if not (isinstance(model, str) and model) and not (optional and "model" not in body):
        return bad("body.model must be a non-empty string", custom_id)
    problem = body_problem(url, body)
    if problem is not None:
        return bad(problem, custom_id)
    return Job(custom_id=custom_id, url=url, body=body, line=line)


class _Recall:
    """The custom_id of line `line` of an input, read from it again (`reread`), from the offsets of
    every `LINES_PER_MARK`th line (`marks`, filled by the reader as it goes)."""

    __slots__ = ("_marks", "_reread")

    def __init__(self, marks: array, reread: Callable[[int, int], bytes]) -> None:
        self._marks = marks
        self._reread = reread

    def __call__(self, line: int) -> str | None:
        mark = (line - 1) // LINES_PER_MARK
        skip = line - 1 - mark * LINES_PER_MARK
        offset = self._marks[mark]
        data = b""
        size = REREAD_SIZE
        while True:
            more = self._reread(offset + len(data), size)
            data += more
            size *= 2
            lines = data.split(b"\n", skip + 1)
            if len(lines) > skip + 1 or not more:
                break
        raw = lines[skip] if len(lines) > skip else b""
        return line_id(raw[len(BOM):] if line == 1 and raw.startswith(BOM) else raw)


def line_id(raw: bytes) -> str | None:
    """The `custom_id` a raw line names, the job not checked; None when it names none."""
    try:
        custom_id = orjson.loads(raw).get("custom_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return custom_id if isinstance(custom_id, str) else None


def line_ids(raws: list[bytes], first: int = 2) -> list[str | None]:
    """`line_id` of each line (the first of them line `first` of its file: a BOM on line 1 is
    left out), at once while every line is an object naming a string id."""
    loads = orjson.loads
    try:
        ids = [loads(raw)["custom_id"] for raw in raws]
        if all(type(custom_id) is str for custom_id in ids):
            return ids
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        pass
    ids = [line_id(raw) for raw in raws]
    if first == 1 and raws and raws[0].startswith(BOM):
        ids[0] = line_id(raws[0][len(BOM):])
    return ids


class JobReader:
    """Feeds raw lines one at a time (from a sync or async source), numbering them and spotting
    duplicates. Raises `NotAJobFile` on the `NOT_A_JOB_FILE_AFTER`th bad line in a row at the start
    of an input that has shown no job yet.

    `reread(offset, size)` reads the input again (the bytes at `offset`): given when the lines fed
    are the input's bytes exactly (each followed by one newline), it lets the duplicate check keep
    a line number per id instead of the id (see the module docstring)."""

    __slots__ = ("path", "line", "_first_line", "_bad_at_start", "_results_at_start", "_reread",
                 "_offset", "_marks")

    def __init__(self, path: str, *, reread: Callable[[int, int], bytes] | None = None,
                 digest: Callable[[str], int] | None = None, duplicates: bool = True,
                 expected_lines: int | None = None) -> None:
        self.path = path
        self.line = 0
        self._reread = reread if duplicates else None
        self._offset = 0  # of the next line
        self._marks = array("Q")  # the offset of lines 1, 1 + LINES_PER_MARK, ...
        # `duplicates=False`: no check (the resume index vouches that INPUT holds none)
        # the table reads ids back through `_Recall`, not a method of the reader: no cycle, so
        # the table (53 MB at 10 million lines) goes with the reader, not at a later full collect
        recall = None if reread is None else _Recall(self._marks, reread)
        self._first_line: dict[str, int] | IdTable | None = None if not duplicates else (
            {} if recall is None else
            IdTable(recall, narrow=True) if digest is None
            else IdTable(recall, digest=digest, narrow=True))
        if expected_lines and isinstance(self._first_line, IdTable):
            self._first_line.reserve(expected_lines)  # one allocation, no doubling on the way
        self._bad_at_start: int | None = 0  # None once a job was seen
        self._results_at_start = 0

    def feed(self, raw: bytes) -> Job | BadLine | Duplicate | None:
        """The next line's verdict; None for a blank line."""
        self.line += 1
        if self._reread is not None:
            if (self.line - 1) % LINES_PER_MARK == 0:
                self._marks.append(self._offset)
            self._offset += len(raw) + 1
        if self.line == 1 and raw.startswith(BOM):  # a UTF-8 byte order mark starts the file
            raw = raw[len(BOM):]
        item = parse_line(raw, self.line, self.path)
        if isinstance(item, BadLine) and self._bad_at_start is not None:
            self._bad_at_start += 1
            self._results_at_start += _looks_like_result(raw)
            if self._bad_at_start >= NOT_A_JOB_FILE_AFTER:
                raise NotAJobFile(self.path, self._bad_at_start, item,
                                  self._results_at_start == self._bad_at_start)
        if isinstance(item, Job):
            self._bad_at_start = None
            if self._first_line is not None:
                seen = self._first_line.setdefault(item.custom_id, item.line)
                if seen >= 0 and seen != item.line:
                    return Duplicate(self.path, item.line, seen, item.custom_id)
        return item

    def note_many(self, raws: list[bytes], ids: list[str | None] | None = None
                  ) -> Duplicate | None:
        """Number the next lines without checking their jobs, only remembering each one's
        custom_id (`ids`, when the caller has them: `line_ids`) for the duplicate check; a line
        naming none is left out. For the pass that settles a partial resume index, which parses
        only the jobs it needs. The first Duplicate met, or None (stricter than `feed`, which
        remembers the ids of valid jobs only: a bad line's id counts here). Needs `reread`."""
        assert isinstance(self._first_line, IdTable), "note_many needs reread and duplicates"
        first = self.line + 1
        if ids is None:
            ids = line_ids(raws, first)
        starts = list(accumulate((len(raw) + 1 for raw in raws), initial=self._offset))
        self._marks.extend(starts[n] for n in range(-(first - 1) % LINES_PER_MARK, len(raws),
                                                    LINES_PER_MARK))
        self._offset = starts[-1]
        self.line += len(raws)
        lines = list(range(first, first + len(ids)))
        if None in ids:  # lines naming no id are left out
            lines = [line for line, custom_id in zip(lines, ids) if custom_id is not None]
            ids = [custom_id for custom_id in ids if custom_id is not None]
        seen = self._first_line.setdefault_all(ids, lines)  # type: ignore[arg-type]
        if not seen:
            return None
        n, earlier = seen[0]
        return Duplicate(self.path, lines[n], earlier, ids[n])  # type: ignore[arg-type]

    def skip(self, count: int) -> None:
        """Number `count` lines without reading them: jobs the resume index says need nothing
        (`jobs.settled`). Only for a reader without the duplicate check (`duplicates=False`)."""
        assert self._first_line is None, "skipping lines needs duplicates=False"
        if count:
            self.line += count
            self._bad_at_start = None

    def finish(self) -> None:
        """The input has ended: raise `NotAJobFile` if it held bad lines and no job at all."""
        if self._bad_at_start:
            raise NotAJobFile(self.path, self._bad_at_start, None,
                              self._results_at_start == self._bad_at_start)


def read_jobs(lines: Iterable[bytes], path: str, *,
              reread: Callable[[int, int], bytes] | None = None,
              expected_lines: int | None = None) -> Iterator[Job | BadLine | Duplicate]:
    """Jobs, bad lines and duplicates of a stream of raw lines, in file order; blank lines skipped
    (`reread` and `expected_lines` as for `JobReader`)."""
    reader = JobReader(path, reread=reread, expected_lines=expected_lines)
    for raw in lines:
        item = reader.feed(raw)
        if item is not None:
            yield item
    reader.finish()
