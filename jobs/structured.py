"""Structured outputs checked: a job that asks for JSON gets an answer that is JSON, and fits the
schema it gave. Pure: a job's body and its answer in, a problem (or None) out.

    job asks response_format json_object / json_schema    (chat)
          or text.format json_object / json_schema        (Responses API)
    answer ──► each choice's text ──► JSON? ──► fits the schema? (jsonschema) ──► None | "why not"

Both backends call `first_problem` on every successful answer (the live dispatcher after
`split_response`, the batch collector on each line); a problem becomes an `InvalidJSONError`
(`runner.errors`), which `runner.outcome.classify` makes a retry with the code `invalid_json`,
counted against `--max-attempts`, and finally a failure with the validator's message. A choice
the model refused (`message.refusal`, no content) or one that called tools is not checked: it is
the answer, not broken JSON. A schema that is itself invalid is the job's own problem: the API
refuses such a request before any answer, so it is never met here.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from jobs.endpoints import CHAT, RESPONSES

__all__ = ["JSON_TYPES", "json_request", "answer_problem", "first_problem"]

JSON_TYPES = ("json_object", "json_schema")
MAX_VALIDATORS = 64  # compiled schemas kept (a file usually has one)


class _JobLike(Protocol):
    url: str
    body: dict[str, Any]


def json_request(url: str, body: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any] | None] | None:
    """(True, the schema or None for json_object) when the job at `url` asks for a JSON answer;
    None when it does not."""
    if url == CHAT:
        fmt = body.get("response_format")
        spec = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
    elif url == RESPONSES:
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
        spec = fmt
    else:
        return None
    if not isinstance(fmt, Mapping) or fmt.get("type") not in JSON_TYPES:
        return None
    if fmt.get("type") == "json_object":
        return True, None
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return True, schema if isinstance(schema, Mapping) else None


def _texts(url: str, answer: Mapping[str, Any]) -> list[str]:
    """The texts of an answer that must be JSON: each chat choice's content, or a Responses
    answer's output text (refusals and tool calls are not among them)."""
    if url == CHAT:
        texts = []
        for choice in answer.get("choices") or ():
            message = choice.get("message") if isinstance(choice, Mapping) else None
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, str):
                texts.append(content)
        return texts
    if answer.get("status") == "incomplete":
        return []  # cut short as the job allowed (max_output_tokens): the answer, not a fault
    parts = []
    for item in answer.get("output") or ():
        if isinstance(item, Mapping) and item.get("type") == "message":
            parts += [str(p.get("text", "")) for p in item.get("content") or ()
                      if isinstance(p, Mapping) and p.get("type") == "output_text"]
    return ["".join(parts)] if parts else []


@functools.lru_cache(maxsize=MAX_VALIDATORS)
def _validator(schema_json: bytes) -> Any:
    import jsonschema  # noqa: PLC0415  (only runs that ask for a schema load it)
    schema = orjson.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


def _schema_problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    import jsonschema  # noqa: PLC0415
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path))
    return f"the answer does not fit the schema{f' at {where}' if where else ''}: {error.message}"


def answer_problem(url: str, body: Mapping[str, Any], answer: Any) -> str | None:
    """Why `answer` (a job's own part of a 2xx answer) is no answer to the job at `url` with
    `body`, which asks for JSON; None when it is, or when the job asks for no JSON."""
    asked = json_request(url, body)
    if asked is None or not isinstance(answer, Mapping):
        return None
    _, schema = asked
    for text in _texts(url, answer):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            return f"the answer is not valid JSON ({e}): {text[:80]!r}"
        if schema is None:
            if not isinstance(value, dict):
                return f"the answer is JSON but not an object (json_object asks for one): {text[:80]!r}"
            continue
        problem = _schema_problem(value, schema)
        if problem is not None:
            return problem
    return None


def first_problem(jobs: Sequence[_JobLike], answers: Iterable[Any]) -> str | None:
    """The first `answer_problem` of `answers` (one per job of `jobs`, None for one that did not
    come back), or None."""
    for job, answer in zip(jobs, answers):
        if answer is not None:
            problem = answer_problem(job.url, job.body, answer)
            if problem is not None:
                return problem
    return None
