"""What a job's result says, as one flat row of a table (`runner export`). Pure: a job and its
final result line in, a row out.

    job + result line ──► {"custom_id", "status", "answer", "finish_reason",
                           "prompt_tokens", "completion_tokens", "total_tokens",
                           "error_code", "error_message"}

`status` is "done" (a success line), "failed" (an error line: its `error_code` and
`error_message`), "pending" (no line yet) or "changed" (the line answers another job: its
`fingerprint` differs from this job's, so the job was edited since; its old answer is not given).
`answer` is the answer in the form a table wants: the text of a chat or completions choice (a list
of texts when `n` > 1), a Responses API answer's output text, the vector of an embedding, the
category scores of a moderation, the saved file paths of images. `expand` turns an answer that
is a JSON object (structured outputs, moderation scores) into columns.
"""
from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from jobs.endpoints import (
    CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES, read_usage, spec_of,
)
from jobs.results import FINGERPRINT, Outcome, failure_code, record_outcome

__all__ = ["COLUMNS", "DONE", "FAILED", "PENDING", "CHANGED", "STATUSES", "answer_of",
           "export_row", "expand"]

DONE, FAILED, PENDING, CHANGED = "done", "failed", "pending", "changed"
STATUSES = (DONE, FAILED, PENDING, CHANGED)
COLUMNS = ("custom_id", "status", "answer", "finish_reason", "prompt_tokens", "completion_tokens",
           "total_tokens", "error_code", "error_message")


def _choices(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    choices = body.get("choices")
    items = [c for c in choices if isinstance(c, Mapping)] if isinstance(choices, list) else []
    return sorted(items, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)


def _chat_answer(choice: Mapping[str, Any]) -> Any:
    message = choice.get("message")
    if not isinstance(message, Mapping):
        return None
    content = message.get("content")
    if content is None and message.get("tool_calls"):
        return message["tool_calls"]
    if content is None and isinstance(message.get("refusal"), str):
        return message["refusal"]
    return content


def _vector(value: Any) -> Any:
    """An embedding as a list of floats (a base64 one decoded: little-endian float32)."""
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return value


def _response_text(body: Mapping[str, Any]) -> str | None:
    texts = []
    for item in body.get("output") or ():
        if isinstance(item, Mapping) and item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, Mapping) and part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
    return "".join(texts) if texts else body.get("output_text")


def answer_of(url: str, body: Any, image_path: Callable[[str], str] = str) -> tuple[Any, Any]:
    """(answer, finish_reason) of a successful answer `body` to a job at `url` (see the module
    docstring); (None, None) for a body of no known shape. `image_path` maps a saved image's
    `file` (relative to the result file's folder) to the path the table gives."""
    if not isinstance(body, Mapping):
        return None, None
    if url in (CHAT, COMPLETIONS):
        choices = _choices(body)
        answers = [_chat_answer(c) if url == CHAT else c.get("text") for c in choices]
        reasons = [c.get("finish_reason") for c in choices]
        if len(choices) == 1:
            return answers[0], reasons[0]
        return answers, reasons
    if url == EMBEDDINGS:
        data = body.get("data")
        vectors = [_vector(d.get("embedding")) for d in data if isinstance(d, Mapping)] \
            if isinstance(data, list) else []
        return (vectors[0] if len(vectors) == 1 else vectors or None), None
    if url == MODERATIONS:
        results = body.get("results")
        first = results[0] if isinstance(results, list) and results else None
        return (first.get("category_scores") if isinstance(first, Mapping) else None), None
    if url == RESPONSES:
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return _response_text(body), reason or body.get("status")
    if spec_of(url).images:
        data = body.get("data")
        files = [image_path(d["file"]) for d in data
                 if isinstance(d, Mapping) and isinstance(d.get("file"), str)] \
            if isinstance(data, list) else []
        return files, None
    return None, None


def export_row(custom_id: str, url: str, fingerprint: str | None,
               record: Mapping[str, Any] | None,
               image_path: Callable[[str], str] = str) -> dict[str, Any]:
    """The table row (`COLUMNS`) of the job `custom_id` at `url` (its `fingerprint`, None when
    unknown), whose final result line is `record` (None: it has none yet)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row["custom_id"] = custom_id
    outcome = None if record is None else record_outcome(record)
    printed = None if record is None else record.get(FINGERPRINT)
    if outcome is None:
        row["status"] = PENDING
        return row
    final = outcome is not Outcome.TRANSIENT  # a transient failure is no answer: it just runs again
    if final and isinstance(printed, str) and fingerprint is not None and printed != fingerprint:
        row["status"] = CHANGED
        return row
    assert record is not None
    response = record.get("response")
    body = response.get("body") if isinstance(response, Mapping) else None
    if outcome is Outcome.DONE:
        row["status"] = DONE
        row["answer"], row["finish_reason"] = answer_of(url, body, image_path)
    else:
        row["status"] = FAILED
        row["error_code"] = failure_code(record)
        error = record.get("error")
        row["error_message"] = error.get("message") if isinstance(error, Mapping) else None
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if isinstance(usage, Mapping):
        counts = read_usage(usage)
        total = usage.get("total_tokens")
        row["prompt_tokens"], row["completion_tokens"] = counts.input, counts.output
        row["total_tokens"] = total if isinstance(total, int) else counts.input + counts.output
    return row


def expand(answer: Any) -> dict[str, Any] | None:
    """The columns of an answer that is a JSON object: a text holding one (structured outputs),
    or an object itself (moderation scores); None for any other answer."""
    if isinstance(answer, Mapping):
        return dict(answer)
    if not isinstance(answer, str):
        return None
    try:
        value = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
