"""Splitting pending requests into batch input files, and reading a batch's lines back. Pure.

A batch input file holds the lines of one endpoint and one model (OpenAI and Azure both require
every line of a batch to share its url, and Azure one deployment; one model per file also lets
the enqueued-token limit, which is per model, be kept exactly), at most `max_lines` lines and
`max_bytes` bytes. A line is a `jobs.packing.Request`: one job (custom_id = the job's), or a pack
of completions / embeddings jobs (custom_id = a line id of ours, the jobs listed in the state file),
its answer split back per job by index exactly as live (`jobs.packing.split_response`).

A draft keeps of each job only its custom_id and fingerprint: its line's bytes go to the draft's
file (`new_file`: a file beside the journal in a run, memory in tests) as they are made, so a
file of 50,000 lines costs its ids, not its requests.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from jobs.job import EMBEDDINGS, Job
from jobs.packing import Request, pack, _list_field
from jobs.tokens import rate_limit_charge

# Per-file limits (OpenAI: https://platform.openai.com/docs/guides/batch, "Rate limits": 50,000
# requests and 200 MB per input file; Azure OpenAI global batch: 100,000 requests and 200 MB per
# file, https://learn.microsoft.com/azure/ai-foundry/openai/how-to/batch, "Batch limits").
OPENAI_MAX_REQUESTS = 50_000
AZURE_MAX_REQUESTS = 100_000
MAX_FILE_BYTES = 200 * 1024 * 1024
# "/v1/embeddings batches are also restricted to a maximum of 50,000 embedding inputs across all
# requests in the batch" (OpenAI's and Azure's create-batch reference): packed lines count each input.
MAX_EMBEDDING_INPUTS = 50_000
PACK_LINE_PREFIX = "runner-pack-"
# The smallest `max_bytes` worth running: below it hardly any line fits (a line's JSON envelope
# alone is about 100 bytes), and every job would fail as too large.
MIN_FILE_BYTES = 1024


class LineTooLarge(ValueError):
    """One batch line is larger than a whole batch file may be: it can never be submitted."""

    def __init__(self, request: Request, size: int, limit: int) -> None:
        super().__init__(f"its batch line is {size:,} bytes, over the batch file limit of "
                         f"{limit:,} bytes (--batch-max-bytes)")
        self.request, self.size, self.limit = request, size, limit


@dataclass(slots=True)
class Draft:
    """A batch input file being filled: its lines (line id, the custom_ids it carries), its
    jobs' fingerprints, and its bytes, written to `out` as lines are added."""

    url: str
    model: str
    out: BinaryIO
    lines: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    size: int = 0
    tokens: int = 0
    inputs: int = 0  # prompts / inputs over all lines (embeddings files have a cap on them)
    cost: float = 0.0  # what the caller said its requests may cost (`Splitter.add`)


def line_bytes(line_id: str, request: Request, url: str, model: str) -> bytes:
    """One batch input line: the request's body sent as is, except its `model` (Azure: the
    deployment) and the url the provider wants (`url`)."""
    body = request.body if request.body.get("model") == model else {**request.body, "model": model}
    return orjson.dumps({"custom_id": line_id, "method": "POST", "url": url, "body": body}) + b"\n"


class Splitter:
    """Fills drafts per (url, model) and hands out full ones.

    `wire_url(url)` and `wire_model(model)` give what the provider wants in the file (Azure: no
    `/v1`, the deployment). `room(model)` is how many more tokens the model may enqueue now (None:
    no limit known): drafts handed out by this splitter count against it. A line that does not fit
    the room is held back (`held` counts its jobs; they stay pending), except on a model with
    nothing enqueued and nothing drafted, where it goes alone (the provider decides).
    `new_file()` opens the file a new draft's bytes go to."""

    def __init__(self, *, max_lines: int, max_bytes: int, wire_url: Callable[[str], str],
                 wire_model: Callable[[str], str],
                 room: Callable[[str], int | None] = lambda model: None,
                 idle: Callable[[str], bool] = lambda model: True,
                 new_file: Callable[[], BinaryIO] = io.BytesIO) -> None:
        if max_lines < 1 or max_bytes < 1:
            raise ValueError("max_lines and max_bytes must be at least 1")
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self._wire_url, self._wire_model = wire_url, wire_model
        self._room, self._idle = room, idle
        self._new_file = new_file
        self._drafts: dict[tuple[str, str], Draft] = {}
        self._spent: dict[str, int] = {}  # tokens drafted so far (handed out or open), per model
        self._packs = 0
        self.held = 0  # jobs kept for later: no enqueued-token room for them now

    def add(self, request: Request, cost: float = 0.0) -> list[Draft]:
        """Drafts now full (possibly none) after adding `request` as one line (`cost`: what it
        may cost, summed in `Draft.cost`). Raises `LineTooLarge` (nothing added) when the line
        alone is over `max_bytes`."""
        key = (request.url, request.model)
        model = request.model
        if len(request.jobs) > 1:
            self._packs += 1
            line_id = f"{PACK_LINE_PREFIX}{self._packs}-{request.jobs[0].custom_id[:40]}"
        else:
            line_id = request.jobs[0].custom_id
        raw = line_bytes(line_id, request, self._wire_url(request.url), self._wire_model(model))
        if len(raw) > self.max_bytes:
            raise LineTooLarge(request, len(raw), self.max_bytes)
        room = self._room(model)
        spent = self._spent.get(model, 0)
        if room is not None and spent + request.charge > room \
                and not (spent == 0 and self._idle(model)):
            self.held += len(request.jobs)
            return []
        ready: list[Draft] = []
        draft = self._drafts.get(key)
        inputs = request.prompts
        if draft is not None and (len(draft.lines) >= self.max_lines
                                  or draft.size + len(raw) > self.max_bytes
                                  or (request.url == EMBEDDINGS
                                      and draft.inputs + inputs > MAX_EMBEDDING_INPUTS)):
            ready.append(self._close(key))
            draft = None
        if draft is None:
            draft = self._drafts[key] = Draft(request.url, model, self._new_file())
        draft.lines.append((line_id, tuple(job.custom_id for job in request.jobs)))
        for job in request.jobs:
            if job.fingerprint is not None:
                draft.fingerprints[job.custom_id] = job.fingerprint
        draft.out.write(raw)
        draft.size += len(raw)
        draft.tokens += request.charge
        draft.inputs += inputs
        draft.cost += cost
        self._spent[model] = spent + request.charge
        return ready

    def flush(self) -> list[Draft]:
        return [self._close(key) for key in list(self._drafts)]

    def drafts(self) -> list[Draft]:
        """The drafts still being filled (to discard them when planning stops half way)."""
        return list(self._drafts.values())

    def _close(self, key: tuple[str, str]) -> Draft:
        return self._drafts.pop(key)


def job_requests(url: str, body: dict[str, Any], ids: tuple[str, ...]) -> Request:
    """The request a batch line carried, rebuilt from the line's body and its jobs' ids: for a
    pack, job i's body is the pack's with its own prompt/input (item i of the list)."""
    if len(ids) == 1:
        job = Job(custom_id=ids[0], url=url, body=body, line=0)
        return Request(url=url, body=body, jobs=(job,), charge=rate_limit_charge(url, body))
    name = _list_field(url)
    assert name is not None, "only completions and embeddings are packed"
    items = body[name]
    jobs = [Job(custom_id=cid, url=url, body={**body, name: items[i]}, line=0)
            for i, cid in enumerate(ids)]
    return pack(jobs, rate_limit_charge(url, body))


def default_max_requests(azure: bool) -> int:
    return AZURE_MAX_REQUESTS if azure else OPENAI_MAX_REQUESTS
