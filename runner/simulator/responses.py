"""The simulator's Responses API (`/v1/responses`) and moderations (`/v1/moderations`): validation
as the service does it, and answers that are pure functions of the input.

Responses: `input` a string or a list of message items, `instructions`, `max_output_tokens` (at
least 16, as the API requires). The answer is a `response` object with one `message` output item
whose text is `completion_text(input text, 0)`; a `max_output_tokens` below that text's tokens
gives `status: "incomplete"` with `incomplete_details: {"reason": "max_output_tokens"}` and the
text cut to fit. `usage` has `input_tokens` (with `input_tokens_details.cached_tokens`: half of
the input, rounded down, when the input is 1024 tokens or more, as OpenAI caches long prefixes),
`output_tokens` (with `output_tokens_details.reasoning_tokens`: 0, or 64 for o-series and gpt-5 models) and
`total_tokens`. A prompt containing "<<fail>>" answers a 200 with `status: "failed"` and a
`server_error`, as the service reports a failure inside a response.

Moderations: `input` a string, a list of strings, or a list of multimodal parts; `results` in
input order, no `index`; `flagged` and the scores derived from each input's sha256.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.simulator.answers import (
    CHARS_PER_TOKEN, completion_text, sha_hex, structured_text, text_tokens,
)
from runner.simulator.parsing import MAX_LIST_ITEMS, bad_request

RESPONSES, MODERATIONS = "responses", "moderations"
MIN_OUTPUT_TOKENS = 16
CACHE_MIN_TOKENS = 1024
FAIL_MARKER = "<<fail>>"

RESPONSES_FIELDS = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
    "tool_choice", "parallel_tool_calls", "text", "reasoning", "metadata", "store", "user",
    "previous_response_id", "include", "truncation", "service_tier", "stream", "background",
    "prompt_cache_key", "safety_identifier", "max_tool_calls", "top_logprobs", "prompt",
})
MODERATION_FIELDS = frozenset({"model", "input"})
MODERATION_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


def response_input_text(body: Mapping[str, Any]) -> str:
    """The text of a Responses request the answer derives from and the limiter charges:
    `instructions` then every text of `input`."""
    parts: list[str] = []
    if isinstance(body.get("instructions"), str):
        parts.append(body["instructions"])
    value = body.get("input")
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, list):
        for item in value:
            content = item.get("content") if isinstance(item, Mapping) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p["text"] for p in content
                             if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return "".join(parts)


def parse_responses(body: Any, deployment: str | None) -> tuple[str, str, int | None]:
    """(model, input text, max_output_tokens) of a valid Responses body; ApiError 400 else."""
    if not isinstance(body, dict):
        raise bad_request("Invalid request body: expected a JSON object.")
    unknown = sorted(set(body) - RESPONSES_FIELDS)
    if unknown:
        raise bad_request(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    model = body.get("model") or deployment
    if not isinstance(model, str) or not model:
        raise bad_request("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    value = body.get("input")
    if value is None:
        raise bad_request("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if not isinstance(value, (str, list)):
        raise bad_request("Invalid type for 'input': expected a string or an array of input items.",
                   "input", "invalid_type")
    if body.get("stream") or body.get("background"):
        raise bad_request("The simulator neither streams nor runs in the background.", "stream",
                   "unsupported_value")
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise bad_request("Invalid type for 'max_output_tokens': expected an integer.",
                       "max_output_tokens", "invalid_type")
        if limit < MIN_OUTPUT_TOKENS:
            raise bad_request(f"Invalid 'max_output_tokens': integer below minimum value. Expected a "
                       f"value >= {MIN_OUTPUT_TOKENS}, but got {limit} instead.",
                       "max_output_tokens", "integer_below_min_value")
    return model, response_input_text(body), limit


def response_charge(text: str, max_output_tokens: int | None) -> int:
    """The Responses API's rate-limit charge: ceil(chars / 4) of the input + max_output_tokens."""
    return -(-len(text) // CHARS_PER_TOKEN) + (max_output_tokens or 0)


def json_format(body: Any) -> Mapping[str, Any] | None:
    """The body's `text.format` when it asks for JSON (json_object or json_schema), else None."""
    text = body.get("text") if isinstance(body, Mapping) else None
    fmt = text.get("format") if isinstance(text, Mapping) else None
    return fmt if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema") \
        else None


def response_answer(model: str, text: str, max_output_tokens: int | None, *, response_id: str,
                    created: int, text_format: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `response` object for this input (see the module docstring); with `text_format`
    (`json_format` of the body) its text is `structured_text`, JSON fitting the schema."""
    answer = completion_text(text, 0) if text_format is None else structured_text(
        text, 0, {"type": text_format["type"], "json_schema": text_format})
    reasoning = 64 if model.startswith(("o1", "o3", "o4", "gpt-5")) else 0
    input_tokens = text_tokens(text)
    if FAIL_MARKER in text:
        return {"id": response_id, "object": "response", "created_at": created, "model": model,
                "status": "failed", "error": {"code": "server_error",
                                              "message": "The model failed to generate a response."},
                "incomplete_details": None, "output": [], "usage": None}
    status, details = "completed", None
    out_tokens = text_tokens(answer) + reasoning
    if max_output_tokens is not None and out_tokens > max_output_tokens:
        keep = max(0, (max_output_tokens - reasoning) * CHARS_PER_TOKEN)
        answer, out_tokens = answer[:keep], max_output_tokens
        status, details = "incomplete", {"reason": "max_output_tokens"}
    cached = input_tokens // 2 if input_tokens >= CACHE_MIN_TOKENS else 0
    return {
        "id": response_id, "object": "response", "created_at": created, "model": model,
        "status": status, "error": None, "incomplete_details": details,
        "max_output_tokens": max_output_tokens,
        "output": [{"type": "message", "id": "msg_" + sha_hex(text)[:24], "status": status,
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": answer, "annotations": []}]}],
        "usage": {"input_tokens": input_tokens,
                  "input_tokens_details": {"cached_tokens": cached},
                  "output_tokens": out_tokens,
                  "output_tokens_details": {"reasoning_tokens": reasoning},
                  "total_tokens": input_tokens + out_tokens},
    }


def parse_moderations(body: Any) -> tuple[str, list[str]]:
    """(model, one text per input) of a valid moderations body; ApiError 400 else."""
    if not isinstance(body, dict):
        raise bad_request("Invalid request body: expected a JSON object.")
    unknown = sorted(set(body) - MODERATION_FIELDS)
    if unknown:
        raise bad_request(f"Unrecognized request argument supplied: {', '.join(unknown)}")
    model = body.get("model") or "omni-moderation-latest"
    value = body.get("input")
    if value is None:
        raise bad_request("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if isinstance(value, str):
        return model, [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) > MAX_LIST_ITEMS:
            raise bad_request("Invalid 'input': array too long.", "input", "array_above_max_length")
        return model, list(value)
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return model, ["".join(p["text"] for p in value if isinstance(p.get("text"), str))]
    raise bad_request("Invalid type for 'input': expected a string, an array of strings or an array of "
               "multimodal inputs.", "input", "invalid_type")


def moderation_result(text: str) -> dict[str, Any]:
    """The result for one input: scores from its sha256; flagged when any score is over 0.5."""
    digest = sha_hex(text)
    scores = {c: round(int(digest[2 * i:2 * i + 2], 16) / 255, 4)
              for i, c in enumerate(MODERATION_CATEGORIES)}
    return {"flagged": any(v > 0.5 for v in scores.values()),
            "categories": {c: v > 0.5 for c, v in scores.items()},
            "category_scores": scores,
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES}}


def moderation_answer(model: str, texts: list[str], *, response_id: str) -> dict[str, Any]:
    """The moderations answer: one result per input, in input order (no index)."""
    return {"id": response_id, "model": model, "results": [moderation_result(t) for t in texts]}


__all__ = ["parse_responses", "response_answer", "json_format", "response_charge",
           "parse_moderations", "moderation_answer", "moderation_result"]
