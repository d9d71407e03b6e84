"""Result records in the OpenAI Batch API output format, and what an existing output says.

A result line::

    {"id": "batch_req_...", "custom_id": "...",
     "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}

A failed job keeps the final non-200 `response` (or null when no answer arrived) and an
`"error": {"code": ..., "message": ...}`. An output may hold several lines for one id (a job retried
by a later run appends a new line): **the last line for an id is its result**, except lines whose
error code is `duplicate_custom_id`, which report a repeated input line and are never a job's result.
"""
from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Mapping
from typing import Any

from jobs.codes import DUPLICATE, PERMANENT_CODES, TRANSIENT_CODES, http_status_code

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
                   request_id: str | None, status: int = 200) -> dict[str, Any]:
    """The result line (with id `record_id`) of a job the API answered."""
    return {"id": record_id, "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None}


def error_record(custom_id: str, code: str, message: str, *, record_id: str,
                 status: int | None = None, body: Any = None,
                 request_id: str | None = None) -> dict[str, Any]:
    """The result line (with id `record_id`) of a job that failed; `status`/`body` are the final
    answer, if any."""
    response = None if status is None else {
        "status_code": status, "request_id": request_id, "body": body}
    return {"id": record_id, "custom_id": custom_id, "response": response,
            "error": {"code": code, "message": message}}


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


class OutputState:
    """What an existing output says of each custom_id: the last line wins.

    Holds only ids (and a failure code per failed id), never result bodies.
    """

    __slots__ = ("done", "transient", "permanent", "noted_duplicates")

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.transient: set[str] = set()
        self.permanent: dict[str, str] = {}
        self.noted_duplicates: set[str] = set()

    def add(self, record: Mapping[str, Any]) -> None:
        """Account for one result line, in file order."""
        custom_id = record.get("custom_id")
        if not isinstance(custom_id, str):
            return
        outcome = record_outcome(record)
        if outcome is None:
            self.noted_duplicates.add(custom_id)
            return
        self.done.discard(custom_id)
        self.transient.discard(custom_id)
        self.permanent.pop(custom_id, None)
        if outcome is Outcome.DONE:
            self.done.add(custom_id)
        elif outcome is Outcome.TRANSIENT:
            self.transient.add(custom_id)
        else:
            self.permanent[custom_id] = failure_code(record)

    def needs_run(self, custom_id: str, *, retry_failed: bool = False) -> bool:
        """Resume rule: run a job unless it succeeded, or failed permanently (without --retry-failed)."""
        if custom_id in self.done:
            return False
        if custom_id in self.permanent:
            return retry_failed
        return True
