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
import hashlib
import itertools
import re
from collections.abc import Mapping
from typing import Any

import orjson

from jobs.codes import DUPLICATE, PERMANENT_CODES, TRANSIENT_CODES, http_status_code

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


class OutputState:
    """What an existing output says of each custom_id: the last line wins.

    Holds only ids (a failure code per failed id, and the fingerprint of each final result that
    carries one), never result bodies.
    """

    __slots__ = ("done", "transient", "permanent", "noted_duplicates", "fingerprints")

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.transient: set[str] = set()
        self.permanent: dict[str, str] = {}
        self.noted_duplicates: set[str] = set()
        self.fingerprints: dict[str, str] = {}  # custom_id -> its final result's job fingerprint

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
        printed = record.get(FINGERPRINT)
        if outcome is not Outcome.TRANSIENT and isinstance(printed, str):
            self.fingerprints[custom_id] = printed
        else:
            self.fingerprints.pop(custom_id, None)
        if outcome is Outcome.DONE:
            self.done.add(custom_id)
        elif outcome is Outcome.TRANSIENT:
            self.transient.add(custom_id)
        else:
            self.permanent[custom_id] = failure_code(record)

    def needs_run(self, custom_id: str, *, retry_failed: bool = False,
                  retry_codes: frozenset[str] = frozenset()) -> bool:
        """Resume rule: run a job unless it succeeded, or failed permanently (unless
        --retry-failed, or --retry-codes names its failure's code). (Whether the job changed
        since is `changed`; `jobs.intake` applies both.)"""
        if custom_id in self.done:
            return False
        if custom_id in self.permanent:
            return retry_failed or self.permanent[custom_id] in retry_codes
        return True

    def changed(self, custom_id: str, fingerprint: str | None) -> bool:
        """Whether the job now under `custom_id` (its `fingerprint`) differs from the job its final
        result answered. Never for a result without a fingerprint (written before they existed:
        it counts as unchanged), nor for a job with no final result."""
        printed = self.fingerprints.get(custom_id)
        return printed is not None and fingerprint is not None and printed != fingerprint
