"""The simulated hosted Batch API: OpenAI's Files and Batches endpoints, and Azure's shapes.

Endpoints (JSON out; the file upload is multipart, the file content raw JSONL):

    OpenAI   POST /v1/files (multipart: purpose=batch, file)   GET /v1/files/{id}
             GET /v1/files/{id}/content   DELETE /v1/files/{id}   GET /v1/files
             POST /v1/batches   GET /v1/batches/{id}   GET /v1/batches (?after=&limit=)
             POST /v1/batches/{id}/cancel
    Azure    the same under /openai/files and /openai/batches, each with `?api-version=`;
             the batch `endpoint` and each line's `url` without the `/v1` prefix
             (`/chat/completions`), each line's `body.model` a deployment name

A batch goes `validating` -> `in_progress` -> `finalizing` -> `completed`, or `failed` (validation:
a bad line, a file over the limits, the enqueued-token limit), `expired` (`expire_after_lines`),
`cancelling` -> `cancelled`. Each line is answered by the live path's own logic (`completions.answer_line`:
request parsing, poison, faults, deterministic answers; no rate limits: a batch has its own quota),
at `lines_per_s`. Finished lines go to the output file (200) or the error file (any other status;
`batch_expired` / `batch_cancelled` with no response for lines never run). Time is the simulator's
injected `sleep` and `wall_clock`, so tests run batches on virtual time.

`BatchStats` records what ran: per line `custom_id`, the batch ids that ran it, so a test can prove
that no job ran in two batches.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from runner.simulator import images as img
from runner.simulator import responses as rsp
from runner.simulator.answers import CHAT, COMPLETIONS, EMBEDDINGS
from runner.simulator.completions import answer_line
from runner.simulator.parsing import ApiError, api_key_of, bad_request, parse_request
from runner.simulator.routes import publish_image
from runner.simulator.service import Service

# Published limits (OpenAI: https://platform.openai.com/docs/guides/batch, "Rate limits")
OPENAI_MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
AZURE_MAX_REQUESTS = 100_000  # Azure global batch: 100,000 requests per file
LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = 20, 100
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# Endpoints a batch may name (without the "/v1/" OpenAI puts before them); not image variations
BATCH_TAILS = ("chat/completions", "completions", "embeddings", "responses", "moderations",
               "images/generations", "images/edits")
ENQUEUED = frozenset({"in_progress", "finalizing"})


def _check(name: str, value: float | None, minimum: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """How the simulated Batch API behaves; checked when built.

    lines_per_s: how fast a batch's lines are answered. validate_s, finalize_s: seconds spent in
    `validating` and `finalizing`. expire_after_lines: a batch expires after answering this many
    lines (None: never); its other lines come back as `batch_expired`. max_requests, max_bytes:
    the per-file limits validation enforces (OpenAI's published 50,000 lines and 200 MB; Azure
    URLs get `AZURE_MAX_REQUESTS` unless max_requests is set lower). enqueued_token_limit: tokens
    (the live charge of every line) a model may have in batches `in_progress` or `finalizing` at
    once; a batch that would go over fails with `token_limit_exceeded` (None: no limit).
    invalid_marker: a line whose text contains it fails validation (`invalid_request`, naming the
    line), as a malformed line would. file_processing_s: an upload to the Azure URLs is `pending`
    this long before it is `processed`, as Azure answers; a batch over a pending file is refused.
    """

    lines_per_s: float = 1000.0
    validate_s: float = 1.0
    finalize_s: float = 1.0
    expire_after_lines: int | None = None
    max_requests: int | None = None
    max_bytes: int = MAX_FILE_BYTES
    enqueued_token_limit: int | None = None
    invalid_marker: str | None = None
    file_processing_s: float = 1.0

    def __post_init__(self) -> None:
        _check("lines_per_s", self.lines_per_s, 1e-9)
        _check("validate_s", self.validate_s, 0)
        _check("finalize_s", self.finalize_s, 0)
        _check("expire_after_lines", self.expire_after_lines, 0, optional=True)
        _check("max_requests", self.max_requests, 1, optional=True)
        _check("max_bytes", self.max_bytes, 1)
        _check("enqueued_token_limit", self.enqueued_token_limit, 1, optional=True)
        _check("file_processing_s", self.file_processing_s, 0)
        if self.invalid_marker is not None and not self.invalid_marker:
            raise ValueError("invalid_marker must be a non-empty string or None")


@dataclass(slots=True)
class BatchStats:
    """What the simulated Batch API saw: files uploaded and deleted, batches created, and per
    line `custom_id` the ids of the batches that ran it (`ran`: any answer) and of those that
    answered it 200 (`succeeded`). `paid` is per job, not per line: keyed by what the job asked
    (`job_keys`: each prompt / input of a packed line, else the line's body without its model),
    the ids of the batches that answered it 200, so a job paid for twice shows two batch ids
    there even when it went in packs with different line ids."""

    uploaded: int = 0
    deleted: int = 0
    created: int = 0
    by_status: Counter[str] = field(default_factory=Counter)  # final statuses
    ran: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    succeeded: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    paid: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lines_answered: int = 0
    max_enqueued: Counter[str] = field(default_factory=Counter)  # most tokens enqueued per model


def job_keys(endpoint: str, body: dict[str, Any]) -> list[str]:
    """One key per job a batch line carries: each item of a completions `prompt` or embeddings
    `input` list of strings (a packed line) or the string itself, else the body without `model`.
    Keys ignore the other fields: tests give every job its own prompt."""
    tail = endpoint.removeprefix("/v1").lstrip("/")
    name = {"completions": "prompt", "embeddings": "input"}.get(tail)
    items = body.get(name) if name else None
    items = [items] if isinstance(items, str) else items  # one job alone: keyed as if packed
    if isinstance(items, list) and items and all(isinstance(i, str) for i in items):
        return [f"{tail} {orjson.dumps(i).decode()}" for i in items]
    rest = {k: v for k, v in body.items() if k != "model"}
    return [f"{tail} {orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode()}"]


def _error(status: int, message: str, code: str | None = None,
           type_: str = "invalid_request_error", param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _ok(body: Any) -> web.Response:
    return web.Response(status=200, body=orjson.dumps(body), content_type="application/json")


class BatchService:
    """The Files and Batches API of one `Service`; `install` adds its routes to the app."""

    def __init__(self, sim: Service, config: BatchConfig) -> None:
        self.sim = sim
        self.config = config
        self.stats = BatchStats()
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # in creation order
        self._order: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tokens: dict[str, int] = {}  # batch id -> tokens it holds while enqueued
        self._models: dict[str, str] = {}  # batch id -> model

    def install(self, app: web.Application) -> None:
        for prefix, shape in (("/v1", "openai"), ("/openai", "azure")):
            r = app.router
            r.add_post(f"{prefix}/files", self._h(self.upload, shape))
            r.add_get(f"{prefix}/files", self._h(self.list_files, shape))
            r.add_get(f"{prefix}/files/{{file_id}}", self._h(self.get_file, shape))
            r.add_get(f"{prefix}/files/{{file_id}}/content", self._h(self.content, shape))
            r.add_delete(f"{prefix}/files/{{file_id}}", self._h(self.delete_file, shape))
            r.add_post(f"{prefix}/batches", self._h(self.create, shape))
            r.add_get(f"{prefix}/batches", self._h(self.list_batches, shape))
            r.add_get(f"{prefix}/batches/{{batch_id}}", self._h(self.get_batch, shape))
            r.add_post(f"{prefix}/batches/{{batch_id}}/cancel", self._h(self.cancel, shape))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _h(self, method: Any, shape: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if shape == "azure" and not request.query.get("api-version"):
                return web.Response(status=400, content_type="application/json", body=orjson.dumps(
                    {"error": {"code": "BadRequest",
                               "message": "Missing required query parameter: api-version"}}))
            try:
                api_key_of(request.headers, "openai" if shape == "openai" else "azure",
                           self.sim.config.api_key)
            except ApiError as err:
                return web.Response(status=err.status, body=orjson.dumps(err.body),
                                    content_type="application/json")
            return await method(request, shape)
        return handle

    def _now(self) -> int:
        return int(self.sim.wall_clock())

    # -- files -----------------------------------------------------------------------------------
    async def upload(self, request: web.Request, shape: str) -> web.Response:
        try:
            form = await request.post()
        except Exception:  # noqa: BLE001 - a body that is not multipart
            return _error(400, "Expected a multipart/form-data body with 'file' and 'purpose'.")
        purpose = form.get("purpose")
        upload = form.get("file")
        if purpose != "batch":
            return _error(400, f"Invalid value for 'purpose': {purpose!r}. This simulator "
                               "accepts only 'batch'.", "invalid_value", param="purpose")
        if not isinstance(upload, web.FileField):
            return _error(400, "Missing required parameter: 'file'.", "missing_required_parameter",
                          param="file")
        data = upload.file.read()
        file_id = self.sim.next_id("file-", 24)
        pending = shape == "azure" and self.config.file_processing_s > 0
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data),
                               "created_at": self._now(), "filename": upload.filename or "file",
                               "purpose": "batch", "status": "pending" if pending else "processed"}
        self.contents[file_id] = data
        if pending:
            asyncio.get_running_loop().call_later(self.config.file_processing_s,
                                                  self._processed, file_id)
        self.stats.uploaded += 1
        return _ok(self.files[file_id])

    def _processed(self, file_id: str) -> None:
        if file_id in self.files:
            self.files[file_id]["status"] = "processed"

    async def list_files(self, request: web.Request, shape: str) -> web.Response:
        data = list(reversed(self.files.values()))
        return _ok({"object": "list", "data": data, "has_more": False})

    async def get_file(self, request: web.Request, shape: str) -> web.Response:
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return self._no_file(request.match_info["file_id"])
        return _ok(file)

    async def content(self, request: web.Request, shape: str) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self.contents:
            return self._no_file(file_id)
        return web.Response(status=200, body=self.contents[file_id],
                            content_type="application/octet-stream")

    async def delete_file(self, request: web.Request, shape: str) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self.files:
            return self._no_file(file_id)
        del self.files[file_id]
        self.contents.pop(file_id, None)
        self.stats.deleted += 1
        return _ok({"id": file_id, "object": "file", "deleted": True})

    @staticmethod
    def _no_file(file_id: str) -> web.Response:
        return _error(404, f"No such File object: {file_id}", param="id")

    # -- batches ---------------------------------------------------------------------------------
    async def create(self, request: web.Request, shape: str) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "Invalid request body: expected a JSON object.")
        file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        allowed = tuple(("/v1/" if shape == "openai" else "/") + tail for tail in BATCH_TAILS)
        if file_id not in self.files:
            return _error(400, f"Invalid 'input_file_id': {file_id!r}. File not found.",
                          "invalid_value", param="input_file_id")
        if self.files[file_id]["status"] != "processed":
            return _error(400, f"The input file {file_id} is not processed yet (status "
                               f"{self.files[file_id]['status']!r}); try again when it is.",
                          "invalid_value", param="input_file_id")
        if endpoint not in allowed:
            return _error(400, f"Invalid value for 'endpoint': {endpoint!r}. Supported values "
                               f"are: {', '.join(allowed)}.", "invalid_value", param="endpoint")
        if body.get("completion_window") != "24h":
            return _error(400, "Invalid value for 'completion_window': only '24h' is supported.",
                          "invalid_value", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16 or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items())):
            return _error(400, "Invalid 'metadata': up to 16 string keys (64 characters) and "
                               "string values (512 characters).", "invalid_value", param="metadata")
        now = self._now()
        batch_id = self.sim.next_id("batch_", 24)
        batch = {
            "id": batch_id, "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": file_id, "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": None, "expires_at": now + 86_400, "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
            "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        self.batches[batch_id] = batch
        self._order.append(batch_id)
        self.stats.created += 1
        task = asyncio.ensure_future(self._process(batch, self.contents[file_id], shape))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _ok(batch)

    async def get_batch(self, request: web.Request, shape: str) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, f"No batch found with id '{request.match_info['batch_id']}'.")
        return _ok(batch)

    async def list_batches(self, request: web.Request, shape: str) -> web.Response:
        try:
            limit = int(request.query.get("limit", LIST_LIMIT_DEFAULT))
        except ValueError:
            return _error(400, "Invalid 'limit': expected an integer.", param="limit")
        limit = max(1, min(limit, LIST_LIMIT_MAX))
        newest_first = list(reversed(self._order))
        after = request.query.get("after")
        if after:
            if after not in self.batches:
                return _error(400, f"Invalid 'after': no batch {after!r}.", param="after")
            newest_first = newest_first[newest_first.index(after) + 1:]
        page = [self.batches[b] for b in newest_first[:limit]]
        return _ok({"object": "list", "data": page,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                    "has_more": len(newest_first) > limit})

    async def cancel(self, request: web.Request, shape: str) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, f"No batch found with id '{request.match_info['batch_id']}'.")
        if batch["status"] in TERMINAL or batch["status"] == "cancelling":
            if batch["status"] != "cancelling":
                return _error(400, f"Cannot cancel a batch with status '{batch['status']}'.")
            return _ok(batch)
        batch["status"] = "cancelling"
        batch["cancelling_at"] = self._now()
        return _ok(batch)

    # -- processing ------------------------------------------------------------------------------
    def _validate(self, raw: bytes, endpoint: str, shape: str
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
        """(lines, errors, model): the parsed lines, or the validation errors naming lines."""
        config = self.config
        errors: list[dict[str, Any]] = []
        limit = config.max_requests or (AZURE_MAX_REQUESTS if shape == "azure" else OPENAI_MAX_REQUESTS)
        if len(raw) > config.max_bytes:
            errors.append({"code": "file_too_large", "message": f"The input file is {len(raw)} bytes, "
                           f"over the limit of {config.max_bytes} bytes.", "param": None, "line": None})
            return [], errors, None
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        model = None
        texts = [t for t in raw.split(b"\n") if t.strip()]
        if len(texts) > limit:
            errors.append({"code": "too_many_requests", "message": f"The input file has "
                           f"{len(texts)} requests, over the limit of {limit} per batch.",
                           "param": None, "line": None})
            return [], errors, None
        for number, text in enumerate(texts, 1):
            def bad(code: str, message: str) -> None:
                errors.append({"code": code, "message": message, "param": None, "line": number})
            try:
                line = orjson.loads(text)
            except orjson.JSONDecodeError:
                bad("invalid_json_line", "This line is not parseable as valid JSON.")
                continue
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                bad("missing_required_parameter", "Missing required parameter: 'custom_id'.")
                continue
            if line["custom_id"] in seen:
                bad("duplicate_custom_id", f"The custom_id {line['custom_id']!r} is duplicated.")
                continue
            seen.add(line["custom_id"])
            if line.get("url") != endpoint:
                bad("invalid_url", f"The url {line.get('url')!r} does not match the batch's "
                                   f"endpoint {endpoint!r}.")
                continue
            if line.get("method") != "POST" or not isinstance(line.get("body"), dict):
                bad("invalid_request", "Each line needs method POST and an object body.")
                continue
            if config.invalid_marker is not None and config.invalid_marker in text.decode("utf-8", "replace"):
                bad("invalid_request", "This line is invalid (simulated validation failure).")
                continue
            this_model = line["body"].get("model")
            if model is None:
                model = this_model
            elif this_model != model:
                bad("mismatched_model", "Every line of a batch must use the same model.")
                continue
            lines.append(line)
        return lines, errors, model

    async def _process(self, batch: dict[str, Any], raw: bytes, shape: str) -> None:
        config, sleep = self.config, self.sim.sleep
        await sleep(config.validate_s)
        endpoint = batch["endpoint"]
        tail = endpoint.removeprefix("/v1").lstrip("/")
        kind = {"chat/completions": CHAT, "completions": COMPLETIONS,
                "embeddings": EMBEDDINGS}.get(tail, tail)
        lines, errors, model = self._validate(raw, endpoint, shape)
        if errors:
            return self._finish(batch, "failed", errors=errors)
        tokens = 0
        for line in lines:
            try:
                tokens += parse_request(kind, line["body"]).charge if kind in (
                    CHAT, COMPLETIONS, EMBEDDINGS) else 0
            except ApiError:
                pass
        limit = config.enqueued_token_limit
        model = model or ""
        if limit is not None:
            held = sum(t for b, t in self._tokens.items() if self._models.get(b) == model)
            if held + tokens > limit:
                return self._finish(batch, "failed", errors=[{
                    "code": "token_limit_exceeded", "param": None, "line": None,
                    "message": f"Enqueued token limit reached for {model} in organization "
                               f"org-sim. Limit: {limit:,} enqueued tokens. Please try again "
                               "once some in_progress batches have been completed."}])
        if batch["status"] == "cancelling":
            return self._cancelled(batch, lines, [], [])
        self._tokens[batch["id"]], self._models[batch["id"]] = tokens, model
        held = sum(t for b, t in self._tokens.items() if self._models.get(b) == model)
        self.stats.max_enqueued[model] = max(self.stats.max_enqueued[model], held)
        batch["status"], batch["in_progress_at"] = "in_progress", self._now()
        counts = batch["request_counts"]
        counts["total"] = len(lines)
        outputs: list[bytes] = []
        failures: list[bytes] = []
        step = max(1, int(config.lines_per_s / 10))
        try:
            for done, line in enumerate(lines):
                if batch["status"] == "cancelling":
                    return self._cancelled(batch, lines[done:], outputs, failures)
                if config.expire_after_lines is not None and done >= config.expire_after_lines:
                    return self._expired(batch, lines[done:], outputs, failures)
                if done % step == 0:
                    await sleep(step / config.lines_per_s)
                status, body = (answer_line(self.sim, kind, line["body"], deployment=None)
                                if kind in (CHAT, COMPLETIONS, EMBEDDINGS)
                                else _other_answer(self.sim, kind, line["body"], self.contents))
                self.stats.ran[line["custom_id"]].append(batch["id"])
                self.stats.lines_answered += 1
                record = orjson.dumps({
                    "id": self.sim.next_id("batch_req_", 32), "custom_id": line["custom_id"],
                    "response": {"status_code": status,
                                 "request_id": self.sim.next_id("req_", 32), "body": body},
                    "error": None})
                if status == 200:
                    self.stats.succeeded[line["custom_id"]].append(batch["id"])
                    for key in job_keys(endpoint, line["body"]):
                        self.stats.paid[key].append(batch["id"])
                    outputs.append(record)
                    counts["completed"] += 1
                else:
                    failures.append(record)
                    counts["failed"] += 1
            batch["status"], batch["finalizing_at"] = "finalizing", self._now()
            await sleep(config.finalize_s)
        finally:
            self._tokens.pop(batch["id"], None)
        self._finish(batch, "completed", outputs=outputs, failures=failures)

    def _unfinished(self, lines: list[dict[str, Any]], code: str, message: str) -> list[bytes]:
        return [orjson.dumps({"id": self.sim.next_id("batch_req_", 32),
                              "custom_id": line["custom_id"], "response": None,
                              "error": {"code": code, "message": message}}) for line in lines]

    def _cancelled(self, batch: dict[str, Any], rest: list[dict[str, Any]], outputs: list[bytes],
                   failures: list[bytes]) -> None:
        failures = failures + self._unfinished(rest, "batch_cancelled", CANCELLED_MESSAGE)
        batch["request_counts"]["failed"] += len(rest)
        self._finish(batch, "cancelled", outputs=outputs, failures=failures)

    def _expired(self, batch: dict[str, Any], rest: list[dict[str, Any]], outputs: list[bytes],
                 failures: list[bytes]) -> None:
        failures = failures + self._unfinished(rest, "batch_expired", EXPIRED_MESSAGE)
        batch["request_counts"]["failed"] += len(rest)
        self._finish(batch, "expired", outputs=outputs, failures=failures)

    def _store(self, name: str, records: list[bytes]) -> str:
        data = b"".join(r + b"\n" for r in records)
        file_id = self.sim.next_id("file-", 24)
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data),
                               "created_at": self._now(), "filename": name,
                               "purpose": "batch_output", "status": "processed"}
        self.contents[file_id] = data
        return file_id

    def _finish(self, batch: dict[str, Any], status: str, *, errors: list[dict[str, Any]] | None = None,
                outputs: list[bytes] = (), failures: list[bytes] = ()) -> None:  # type: ignore[assignment]
        now = self._now()
        if errors:
            batch["errors"] = {"object": "list", "data": errors}
        if outputs:
            batch["output_file_id"] = self._store(f"{batch['id']}_output.jsonl", list(outputs))
        if failures:
            batch["error_file_id"] = self._store(f"{batch['id']}_error.jsonl", list(failures))
        batch["status"] = status
        batch[{"completed": "completed_at", "failed": "failed_at", "expired": "expired_at",
               "cancelled": "cancelled_at"}[status]] = now
        self.stats.by_status[status] += 1


def _other_answer(sim: Service, tail: str, body: Any,
                  files: dict[str, bytes] | None = None) -> tuple[int, dict[str, Any]]:
    """(status, body) for a batch line to the Responses, moderations or image endpoints, by the
    live path's own parsing and answers (`runner.simulator.responses`, `images`) and the fault
    draw. `files`: the simulator's stored files, for edits naming an image by `file_id`."""
    try:
        if tail == rsp.RESPONSES:
            model, text, limit = rsp.parse_responses(body, None)
            prompts = [text]
        elif tail == rsp.MODERATIONS:
            model, prompts = rsp.parse_moderations(body)
        else:
            fields, uploads = _image_refs(tail, body, files or {})
            image_req = img.parse_image_request(tail, fields, uploads, None)
            prompts = [image_req.seed]
    except ApiError as err:
        return err.status, err.body

    def answer() -> dict[str, Any]:
        if tail == rsp.RESPONSES:
            return rsp.response_answer(model, text, limit, response_id=sim.next_id("resp_", 32),
                                       created=int(sim.wall_clock()),
                                       text_format=rsp.json_format(body))
        if tail != rsp.MODERATIONS:
            sim.stats.images += image_req.n
            return img.image_answer(image_req, created=int(sim.wall_clock()),
                                    url_for=lambda raw, fmt: publish_image(sim, None, raw, fmt))
        return rsp.moderation_answer(model, prompts, response_id=sim.next_id("modr-", 24))

    reply = sim.reply(sim.pick_fault(), answer, "results" if tail == rsp.MODERATIONS else None,
                      over_http=False)
    if reply.complete:
        for prompt in prompts:
            sim.stats.answered[prompt] += 1
    return reply.status, reply.body


def _image_refs(tail: str, body: Any, files: dict[str, bytes]
                ) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """(fields, uploads) of an image line as the live path's parser takes them. A batch line is
    JSON, so an edit names its images as the Images API's JSON body does: `images`, a list of
    `{"image_url": ...}` (a base64 `data:` URL; the simulator fetches no other URL) or
    `{"file_id": ...}`, and `mask`, one such object. A multipart-style `image` is refused."""
    if not isinstance(body, dict):
        raise bad_request("Invalid request body: expected a JSON object.")
    if tail != img.EDITS:
        return body, {}
    if "image" in body or "image[]" in body:
        raise bad_request("In a JSON body, give the images to edit as 'images': a list of objects with "
                   "'image_url' or 'file_id'.", "image", "invalid_value")
    refs = body.get("images")
    if not isinstance(refs, list) or not refs:
        raise bad_request("Missing required parameter: 'images'.", "images", "missing_required_parameter")
    uploads = {"image": [_image_ref(ref, "images", files) for ref in refs]}
    if body.get("mask") is not None:
        uploads["mask"] = [_image_ref(body["mask"], "mask", files)]
    return {k: v for k, v in body.items() if k not in ("images", "mask")}, uploads


def _image_ref(ref: Any, param: str, files: dict[str, bytes]) -> bytes:
    """The bytes an image reference (`{"image_url": "data:..."}` or `{"file_id": ...}`) names."""
    if not isinstance(ref, dict) or len(ref) != 1 or not ({"image_url", "file_id"} & set(ref)):
        raise bad_request(f"Invalid '{param}': each image must be an object with exactly one of "
                   "'image_url' or 'file_id'.", param, "invalid_value")
    if "file_id" in ref:
        data = files.get(ref["file_id"])
        if data is None:
            raise bad_request(f"Invalid 'file_id': {ref['file_id']!r}. File not found.", param,
                       "invalid_value")
        return data
    url = ref["image_url"]
    head, sep, payload = url.partition(",") if isinstance(url, str) else ("", "", "")
    if not (sep and head.startswith("data:image/") and head.endswith(";base64")):
        raise bad_request(f"Invalid '{param}': image_url must be a base64 data URL "
                   "(data:image/png;base64,...) in the simulator.", param, "invalid_value")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"Invalid '{param}': the data URL is not base64.", param,
                   "invalid_value") from None
