"""Result records in the OpenAI Batch API output format, and what an existing output says.

A result line::

    {"id": "batch_req_...", "custom_id": "...",
     "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}

A failed job keeps the final non-200 `response` (or null when no answer arrived) and an
`"error": {"code": ..., "message": ...}`. An output may hold several lines for one id (a job retried
by a later run appends a new line): **the last line for an id is its result**, except lines whose
error code is `duplicate_custom_id`, which report a repeated input line and are never a job's result.

Every line runner writes for a job also carries `"fingerprint"`: a digest of the job it answers
(method, url and body in canonical JSON; not the custom_id), so a job edited under the same
custom_id is told apart from the job its result answered (`changed`). Readers of the Batch API
format ignore the extra key. A line without one (written by an older runner, or by the hosted
Batch API itself) counts as the answer to whatever job has its custom_id now.
"""
from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Set as AbstractSet
from typing import Any, NamedTuple, Protocol

import orjson

from jobs.codes import DUPLICATE, PERMANENT_CODES, TRANSIENT_CODES, http_status_code
from jobs.idtable import IdTable, default_digest

FINGERPRINT = "fingerprint"  # the result line's key holding its job's fingerprint
FINGERPRINT_BYTES = 16        # a BLAKE2b digest this long (32 hex digits): collisions are not a concern


def fingerprint(url: str, body: Mapping[str, Any], method: str = "POST") -> str:
    """The fingerprint of a job: BLAKE2b of its method, url and body as canonical JSON (keys
    sorted, no whitespace), as 32 hex digits. Equal for equal jobs whatever their key order or
    custom_id; any edit of the body (a prompt, a parameter, the model) changes it."""
    canonical = orjson.dumps([method, url, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=FINGERPRINT_BYTES).hexdigest()


# Final statuses worth retrying when a line names no code of ours (a hosted Batch API line).
TRANSIENT_STATUSES = frozenset({408, 409, 429})


class RecordIds:
    """A source of Batch-API style record ids: `batch_req_<prefix><n as 8+ hex digits>` for
    n = 0, 1, 2, ... Ids of one source never repeat; a fresh random `prefix` (16 hex digits) per
    run makes them unique across runs (the engine draws it: this module has no randomness)."""

    __slots__ = ("prefix", "_counter")

    PREFIX = re.compile(r"[0-9a-f]{16}")

    def __init__(self, prefix: str) -> None:
        if not self.PREFIX.fullmatch(prefix):
            raise ValueError(f"record id prefix must be 16 lower-case hex digits, got {prefix!r}")
        self.prefix = prefix
        self._counter = itertools.count()

    def __call__(self) -> str:
        """The next id."""
        return f"batch_req_{self.prefix}{next(self._counter):08x}"


def success_record(custom_id: str, body: Mapping[str, Any], *, record_id: str,
                   request_id: str | None, status: int = 200,
                   fingerprint: str | None = None) -> dict[str, Any]:
    """The result line (with id `record_id`) of a job the API answered; `fingerprint` is the
    job's (`fingerprint()`), omitted when None."""
    record = {"id": record_id, "custom_id": custom_id,
              "response": {"status_code": status, "request_id": request_id, "body": body},
              "error": None}
    if fingerprint is not None:
        record[FINGERPRINT] = fingerprint
    return record


def error_record(custom_id: str, code: str, message: str, *, record_id: str,
                 status: int | None = None, body: Any = None,
                 request_id: str | None = None, fingerprint: str | None = None) -> dict[str, Any]:
    """The result line (with id `record_id`) of a job that failed; `status`/`body` are the final
    answer, if any; `fingerprint` as for `success_record`."""
    response = None if status is None else {
        "status_code": status, "request_id": request_id, "body": body}
    record = {"id": record_id, "custom_id": custom_id, "response": response,
              "error": {"code": code, "message": message}}
    if fingerprint is not None:
        record[FINGERPRINT] = fingerprint
    return record


def is_transient(code: str | None, status: int | None) -> bool:
    """Whether a failure with this error code / final status is worth retrying in a later run.

    Our own codes decide first (`jobs.codes`); a line written by the hosted Batch API may carry only a status:
    408, 409, 429 and 5xx are transient, any other status permanent.
    """
    if code in TRANSIENT_CODES:
        return True
    if code in PERMANENT_CODES:
        return False
    if status is None:
        return True  # no answer at all (e.g. a batch that expired): worth another try
    return status in TRANSIENT_STATUSES or status >= 500


class Outcome(enum.Enum):
    DONE = "done"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def record_outcome(record: Mapping[str, Any]) -> Outcome | None:
    """The outcome a result line records; None for a duplicate note (not a job's result)."""
    error = record.get("error")
    response = record.get("response")
    status = response.get("status_code") if isinstance(response, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    if code == DUPLICATE:
        return None
    if not error and status == 200:
        return Outcome.DONE
    return Outcome.TRANSIENT if is_transient(code, status) else Outcome.PERMANENT


def failure_code(record: Mapping[str, Any]) -> str:
    """A failure's code, for counting failures by kind (the status when no code was written)."""
    error = record.get("error")
    if isinstance(error, Mapping) and error.get("code"):
        return str(error["code"])
    response = record.get("response")
    if isinstance(response, Mapping) and response.get("status_code") is not None:
        return http_status_code(response["status_code"])
    return "unknown"



# --- reading result lines cheaply -----------------------------------------------------------------
#
# Most lines of a large OUTPUT are runner's own success lines, written by `orjson.dumps` of
# `success_record` (keys in that order, no whitespace, non-ASCII as UTF-8):
#
#     {"id":"…","custom_id":"…","response":{"status_code":200,…},"error":null,"fingerprint":"…"}
#
# Their facts are read from the head and the tail alone: the head must be `_ID_HEAD` … `_CUSTOM_ID`
# id `_RESPONSE_200` (an id without a backslash) and the tail `_PRINTED_TAIL` + 32 letters/digits + `"}` or
# `_PLAIN_TAIL`. Any other line (a failure, a duplicate note, another tool's key order, escapes in
# an id) is parsed whole, as before. The shortcut trusts a line with runner's head and tail to be
# whole in between: runner writes each line with one `write()`, and a torn last line never gets
# here (the checkpoint cuts it off or ignores it).
_ID_HEAD = b'{"id":"'
_CUSTOM_ID = b'","custom_id":"'  # cannot occur inside a JSON string: its quotes would be escaped
_RESPONSE_200 = b'","response":{"status_code":200,'
MAX_HEAD = 1024  # a head longer than this (a huge id) is parsed whole
_PRINTED_TAIL = b'},"error":null,"fingerprint":"'
_PLAIN_TAIL = b'},"error":null}'
_PRINTED_LEN = len(_PRINTED_TAIL) + 2 * FINGERPRINT_BYTES + 2
# The same shape, matched over a whole buffer of lines in one pass (`OutputState.account_lines`).
_SUCCESS_LINE = re.compile(
    rb'^\{"id":"[^"\n]*","custom_id":"([^"\\\n]+)","response":\{"status_code":200,[^\n]*'
    rb'\},"error":null(?:,"fingerprint":"([0-9A-Za-z]{32})")?\}$', re.MULTILINE)


class NotARecord(ValueError):
    """A line of OUTPUT that is not a JSON object (a hand edit, disk corruption)."""


class LineFacts(NamedTuple):
    """What one result line says: whose it is, its outcome (None for a duplicate note), the
    failure code (None for a success) and the fingerprint it carries (None when none)."""

    custom_id: str
    outcome: Outcome | None
    code: str | None
    fingerprint: str | None


_facts = functools.partial(tuple.__new__, LineFacts)  # LineFacts from a tuple, without __new__'s cost


def record_facts(record: Mapping[str, Any]) -> LineFacts | None:
    """The facts of a parsed result line; None when it names no custom_id (not a job's)."""
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str):
        return None
    outcome = record_outcome(record)
    code = None if outcome is Outcome.DONE or outcome is None else failure_code(record)
    printed = record.get(FINGERPRINT)
    return LineFacts(custom_id, outcome, code, printed if isinstance(printed, str) else None)


def fast_facts(raw: bytes) -> tuple[str, str | None] | None:
    """(custom_id, fingerprint or None) of a runner success line read from its head and tail
    alone (see above); None when the line is not of that shape (`line_facts` parses it)."""
    match = _SUCCESS_LINE.fullmatch(raw)
    if match is None:
        return None
    printed = match[2]
    return (match[1].decode("utf-8", "surrogateescape"),
            None if printed is None else printed.decode("ascii"))


def line_facts(raw: bytes) -> LineFacts | None:
    """The facts of one raw result line (without its newline); None when it names no custom_id;
    `NotARecord` when it is not a JSON object. Runner's success lines are read without a parse."""
    fast = fast_facts(raw)
    if fast is not None:
        return _facts((fast[0], Outcome.DONE, None, fast[1]))
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise NotARecord("not a JSON object") from None
    if not isinstance(record, dict):
        raise NotARecord("not a JSON object")
    return record_facts(record)


# --- what an output holds ---------------------------------------------------------------------

class LineSource(Protocol):
    """Where the lines an `OutputState` accounted for can be read back, by position."""

    def read(self, position: int) -> bytes: ...


class MemoryLines:
    """A `LineSource` in memory (positions are indexes): for states built from records, as tests
    and small tools do. Grows with every line; a run reads OUTPUT through a file source."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[bytes] = []

    def append(self, raw: bytes) -> int:
        self._lines.append(raw)
        return len(self._lines) - 1

    def read(self, position: int) -> bytes:
        return self._lines[position]


class OutputState:
    """What an existing output says of each custom_id: the last line wins (a duplicate note is
    never a job's result: it only marks the id as noted).

    Memory: one 8-byte slot per id (`jobs.idtable.IdTable`: 9.4 to 19 bytes an id), never
    an id, a fingerprint or a body. What a line says is read back from `lines` (OUTPUT itself,
    by byte offset, for a run) when asked, so it is exact: an id is matched by comparing it with
    the id its line names, whatever the digests. Each question costs one read of that line.
    """

    __slots__ = ("lines", "_results", "_notes", "_last", "_asking", "_counts", "done",
                 "transient", "permanent", "fingerprints", "noted_duplicates")

    def __init__(self, lines: LineSource | None = None, *,
                 digest: Callable[[str], int] = default_digest) -> None:
        self.lines: LineSource = lines if lines is not None else MemoryLines()
        self._results = IdTable(self._recall, digest=digest)
        self._notes = IdTable(self._recall, digest=digest)
        self._last: LineFacts | None = None  # the facts of the line `_recall` read last
        # one question at a time: a question reads `_last` after its lookup set it, and the run's
        # ETA asks from a worker thread while the run asks from its own
        self._asking = threading.Lock()
        # final results by outcome, and final results (done or permanent) with a fingerprint
        self._counts = {Outcome.DONE: 0, Outcome.TRANSIENT: 0, Outcome.PERMANENT: 0, FINGERPRINT: 0}
        self.done = _Ids(self, Outcome.DONE)
        self.transient = _Ids(self, Outcome.TRANSIENT)
        self.permanent = _Codes(self)
        self.fingerprints = _Fingerprints(self)
        self.noted_duplicates = _Noted(self)

    def empty(self) -> bool:
        """Whether no line was accounted (no result, no note)."""
        return not len(self._results) and not len(self._notes)

    def reserve(self, lines: int) -> None:
        """Make room for about `lines` result lines at once (`IdTable.reserve`), while empty."""
        if not len(self._results):
            self._results.reserve(lines)

    def expect(self, ids: int) -> None:
        """The state will come to hold about `ids` ids (a run accounting what it writes): its
        table grows to them at once when it next grows (`IdTable.expect`)."""
        self._results.expect(ids)

    def _recall(self, position: int) -> str | None:
        try:
            facts = line_facts(self.lines.read(position))
        except (NotARecord, OSError):
            facts = None
        self._last = facts
        return None if facts is None else facts.custom_id

    # -- accounting --------------------------------------------------------------------------
    def add(self, record: Mapping[str, Any], position: int | None = None) -> None:
        """Account for one result line, in file order: `record` as written at `position` of
        `lines` (None: kept in this state's memory lines)."""
        facts = record_facts(record)
        if facts is None:
            return
        if position is None:
            if not isinstance(self.lines, MemoryLines):
                raise ValueError("a state read from a file takes records with their position")
            position = self.lines.append(orjson.dumps(record))
        self.account(facts, position)

    def account(self, facts: LineFacts, position: int, *, keep_done: bool = False) -> None:
        """Account for a line (`facts`, at `position` of `lines`), in file order. With
        `keep_done` a success stays the result whatever follows it (outputs read together)."""
        if facts.outcome is None:
            self._notes.put(facts.custom_id, position)
            return
        if keep_done and facts.outcome is not Outcome.DONE:
            held = self.final(facts.custom_id)
            if held is not None and held.outcome is Outcome.DONE:
                return
        counts = self._counts
        if self._results.put(facts.custom_id, position) >= 0:
            old = self._last  # the replaced line, read to confirm the id
            if old is not None and old.outcome is not None:
                counts[old.outcome] -= 1
                counts[FINGERPRINT] -= _printed(old) is not None
        counts[facts.outcome] += 1
        counts[FINGERPRINT] += _printed(facts) is not None

    def account_lines(self, data: bytes, position: int, *,
                      keep_done: bool = False) -> Iterator[tuple[int, bytes]]:
        """Account for every line of `data` (whole lines, each ending with a newline), found at
        `position` of `lines`, in order. Runner's success lines are matched over the whole buffer
        at once; the others are parsed one by one. Yields (offset in `data`, line) of each line
        that is not a JSON object, for the caller to report; blank lines are skipped."""
        ids: list[str] = []
        starts: list[int] = []
        printed = 0
        at = 0  # where the lines not matched yet start
        for match in _SUCCESS_LINE.finditer(data):
            start = match.start()
            if start != at:  # lines between two matches: not runner's success lines
                self._flush(ids, starts, printed, position)
                ids, starts, printed = [], [], 0
                yield from self._account_slow(data, at, start, position, keep_done)
            ids.append(match[1].decode("utf-8", "surrogateescape"))
            starts.append(start)
            printed += match[2] is not None
            at = match.end() + 1
        self._flush(ids, starts, printed, position)
        if at < len(data):
            yield from self._account_slow(data, at, len(data), position, keep_done)

    def _flush(self, ids: list[str], starts: list[int], printed: int, position: int) -> None:
        """Account for success lines (`ids` at `starts` + `position`, `printed` of them with a
        fingerprint)."""
        if not ids:
            return
        counts = self._counts
        counts[Outcome.DONE] += len(ids)
        counts[FINGERPRINT] += printed

        def replaced(n: int, old_position: int) -> None:
            old = self._last  # the replaced line, read to confirm the id
            if old is not None and old.outcome is not None:
                counts[old.outcome] -= 1
                counts[FINGERPRINT] -= _printed(old) is not None

        self._results.put_all(ids, [position + start for start in starts] if position else starts,
                              replaced)

    def _account_slow(self, data: bytes, start: int, end: int, position: int,
                      keep_done: bool) -> Iterator[tuple[int, bytes]]:
        while start < end:
            stop = data.find(b"\n", start, end)
            stop = end if stop < 0 else stop
            raw = data[start:stop]
            try:
                facts = line_facts(raw)
            except NotARecord:
                if raw and not raw.isspace():
                    yield start, raw
            else:
                if facts is not None:
                    self.account(facts, position + start, keep_done=keep_done)
            start = stop + 1

    def close(self) -> None:
        """Let go of the files the lines are read back from (the state answers no more)."""
        close = getattr(self.lines, "close", None)
        if close is not None:
            close()

    # -- questions ---------------------------------------------------------------------------
    def final(self, custom_id: str) -> LineFacts | None:
        """The facts of the last result line of `custom_id`; None when it has none."""
        with self._asking:
            return self._last if self._results.find(custom_id) >= 0 else None

    def needs_run(self, custom_id: str, *, retry_failed: bool = False,
                  retry_codes: frozenset[str] = frozenset()) -> bool:
        """Resume rule: run a job unless it succeeded, or failed permanently (unless
        --retry-failed, or --retry-codes names its failure's code). (Whether the job changed
        since is `changed`; `jobs.intake` applies both.)"""
        return needs_run(self.final(custom_id), retry_failed=retry_failed, retry_codes=retry_codes)

    def changed(self, custom_id: str, fingerprint: str | None) -> bool:
        """Whether the job now under `custom_id` (its `fingerprint`) differs from the job its final
        result answered. Never for a result without a fingerprint (written before they existed:
        it counts as unchanged), nor for a job with no final result."""
        return changed(self.final(custom_id), fingerprint)

    def claim(self, custom_id: str) -> LineFacts | None:
        """`final`, marking the id as claimed (by a line of INPUT: `unclaimed` are the others)."""
        with self._asking:
            return self._last if self._results.mark(custom_id) >= 0 else None

    def unclaimed(self) -> Iterator[LineFacts]:
        """The final lines of the ids not claimed (in no particular order)."""
        for position in self._results.unmarked():
            facts = self._facts_at(position)
            if facts is not None and facts.outcome is not None:
                yield facts

    def noted(self, custom_id: str) -> bool:
        """Whether OUTPUT holds a duplicate note for `custom_id`."""
        with self._asking:
            return self._notes.find(custom_id) >= 0

    def finals(self) -> Iterator[tuple[int, LineFacts]]:
        """(position, facts) of every id's final line, in no particular order."""
        for position in self._results.positions():
            facts = self._facts_at(position)
            if facts is not None and facts.outcome is not None:
                yield position, facts

    def _facts_at(self, position: int) -> LineFacts | None:
        self._recall(position)
        return self._last

    def count(self, what: Outcome | str) -> int:
        return self._counts[what]

    @property
    def nbytes(self) -> int:
        """Bytes of the tables (the memory that grows with OUTPUT)."""
        return self._results.nbytes + self._notes.nbytes


def _printed(facts: LineFacts) -> str | None:
    """The fingerprint a final line keeps for its id (a transient failure keeps none)."""
    return None if facts.outcome is Outcome.TRANSIENT else facts.fingerprint


def needs_run(final: LineFacts | None, *, retry_failed: bool = False,
              retry_codes: frozenset[str] = frozenset()) -> bool:
    """`OutputState.needs_run` for a job whose final line says `final` (None: it has none)."""
    if final is None or final.outcome is Outcome.TRANSIENT:
        return True
    if final.outcome is Outcome.DONE:
        return False
    return retry_failed or final.code in retry_codes


def changed(final: LineFacts | None, fingerprint: str | None) -> bool:
    """`OutputState.changed` for a job whose final line says `final` (None: it has none)."""
    if final is None or fingerprint is None:
        return False
    printed = _printed(final)
    return printed is not None and printed != fingerprint


class _Ids(AbstractSet[str]):
    """The ids whose final result has one outcome (read-only view)."""

    def __init__(self, state: OutputState, outcome: Outcome) -> None:
        self._state, self._outcome = state, outcome

    def __contains__(self, custom_id: object) -> bool:
        final = self._state.final(custom_id) if isinstance(custom_id, str) else None
        return final is not None and final.outcome is self._outcome

    def __len__(self) -> int:
        return self._state.count(self._outcome)

    def __iter__(self) -> Iterator[str]:
        return (f.custom_id for _, f in self._state.finals() if f.outcome is self._outcome)


class _Codes(Mapping[str, str]):
    """custom_id -> failure code of the ids failed permanently (read-only view)."""

    def __init__(self, state: OutputState) -> None:
        self._state = state

    def __getitem__(self, custom_id: str) -> str:
        final = self._state.final(custom_id)
        if final is None or final.outcome is not Outcome.PERMANENT:
            raise KeyError(custom_id)
        return final.code or "unknown"

    def __len__(self) -> int:
        return self._state.count(Outcome.PERMANENT)

    def __iter__(self) -> Iterator[str]:
        return (f.custom_id for _, f in self._state.finals() if f.outcome is Outcome.PERMANENT)


class _Fingerprints(Mapping[str, str]):
    """custom_id -> the fingerprint of its final result, for those that carry one (read-only)."""

    def __init__(self, state: OutputState) -> None:
        self._state = state

    def __getitem__(self, custom_id: str) -> str:
        final = self._state.final(custom_id)
        printed = None if final is None else _printed(final)
        if printed is None:
            raise KeyError(custom_id)
        return printed

    def __len__(self) -> int:
        return self._state.count(FINGERPRINT)

    def __iter__(self) -> Iterator[str]:
        return (f.custom_id for _, f in self._state.finals() if _printed(f) is not None)


class _Noted(AbstractSet[str]):
    """The ids OUTPUT holds a duplicate note for (read-only view)."""

    def __init__(self, state: OutputState) -> None:
        self._state = state

    def __contains__(self, custom_id: object) -> bool:
        return isinstance(custom_id, str) and self._state.noted(custom_id)

    def __len__(self) -> int:
        return len(self._state._notes)

    def __iter__(self) -> Iterator[str]:
        state = self._state
        for position in state._notes.positions():
            custom_id = state._recall(position)
            if custom_id is not None:
                yield custom_id
