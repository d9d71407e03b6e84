"""Request parsing and error bodies: what the service refuses, and how each refusal reads.

`parse_request` validates a chat, completions or embeddings body as OpenAI does and returns a
`SimRequest`, or raises `ApiError` (400) with OpenAI's body; `api_key_of` reads the key the way
each URL shape takes it and raises the service's 401. The other bodies here (quota, server errors,
malformed JSON, context length) are every non-429 error body the simulator sends, word for word
as the two services send them: OpenAI's `{"error": {"message", "type", "param", "code"}}` and
Azure's `{"error": {"code", "message"}}`. The 429 bodies live with the budgets that refuse.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.simulator.answers import (
    CHAT, COMPLETIONS, DEFAULT_EMBEDDING_DIMS, EMBEDDINGS, SimRequest, chat_prompt,
)

MAX_LIST_ITEMS = 2048  # longest list `prompt` / `input`
MAX_N = 128
MAX_EMBEDDING_DIMS = 3072
CONTEXT_LIMIT_TOKENS = 128_000  # quoted in the poison (context length) error
ORGANIZATION = "org-sim"
AZURE_DEFAULT_API_VERSION = "v1"  # quoted in Azure v1-shape messages when no api-version is given

OPENAI, AZURE, AZURE_V1 = "openai", "azure", "azure_v1"

_ALLOWED_FIELDS: Mapping[str, frozenset[str]] = {
    CHAT: frozenset({
        "model", "messages", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stop", "seed", "user", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs",
        "top_logprobs", "response_format", "tools", "tool_choice", "parallel_tool_calls", "stream",
        "stream_options", "metadata", "store", "service_tier", "reasoning_effort", "modalities",
        "prediction", "audio", "functions", "function_call", "web_search_options",
        "prompt_cache_key", "safety_identifier", "verbosity",
    }),
    COMPLETIONS: frozenset({
        "model", "prompt", "suffix", "n", "max_tokens", "temperature", "top_p", "stop", "seed",
        "user", "logprobs", "echo", "best_of", "logit_bias", "frequency_penalty",
        "presence_penalty", "stream", "stream_options",
    }),
    EMBEDDINGS: frozenset({"model", "input", "encoding_format", "dimensions", "user"}),
}
_PROMPT_FIELD = {CHAT: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input"}


class ApiError(Exception):
    """An answer other than 200, carrying the status, JSON body and extra headers to send."""

    def __init__(self, status: int, body: dict[str, Any],
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def openai_error(message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 with OpenAI's `invalid_request_error` body."""
    return ApiError(400, openai_error(message, param=param, code=code))



def azure_error(code: str, message: str) -> dict[str, Any]:
    """Azure's error body: `{"error": {"code": code, "message": message}}`."""
    return {"error": {"code": code, "message": message}}



def mask_key(key: str) -> str:
    """A key as OpenAI shows it in errors: at most 8 leading and 4 trailing characters, never all."""
    head = min(8, max(0, len(key) // 2 - 1))
    tail = min(4, len(key) // 4)
    return key[:head] + "*" * max(1, len(key) - head - tail) + (key[-tail:] if tail else "")



def _int_field(body: Mapping[str, Any], name: str, *, minimum: int,
               maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"Invalid type for '{name}': expected an integer, but got "
                   f"{type(value).__name__} instead.", name, "invalid_type")
    if value < minimum:
        raise bad_request(f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
                   f"but got {value} instead.", name, "integer_below_min_value")
    if maximum is not None and value > maximum:
        raise bad_request(f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, "
                   f"but got {value} instead.", name, "integer_above_max_value")
    return value


def _text_list(body: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        raise bad_request(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"Invalid type for '{name}': expected a string or an array of strings.",
                   name, "invalid_type")
    if not value:
        raise bad_request(f"Invalid '{name}': empty array. Expected an array with minimum length 1, "
                   "but got an empty array instead.", name, "empty_array")
    if len(value) > MAX_LIST_ITEMS:
        raise bad_request(f"Invalid '{name}': array too long. Expected an array with maximum length "
                   f"{MAX_LIST_ITEMS}, but got an array with length {len(value)} instead.",
                   name, "array_above_max_length")
    return tuple(value)


def _response_format(value: Any) -> Mapping[str, Any] | None:
    """A chat `response_format` asking for JSON, checked as the service checks it; None for
    text or none; ApiError 400 for another shape."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return value
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request("Missing required parameter: 'response_format.json_schema.name'.",
                              "response_format.json_schema.name", "missing_required_parameter")
        return value
    raise bad_request(f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object' and "
                      "'json_schema'.", "response_format.type", "invalid_value")


def parse_request(kind: str, body: Any, deployment: str | None = None) -> SimRequest:
    """Validate a request body the way the service does; raise `ApiError` (400) when it would.

    `deployment` (Azure deployment URLs) stands in for the model when the body names none.
    """
    if not isinstance(body, dict):
        raise bad_request("Invalid request body: expected a JSON object.")
    unknown = sorted(set(body) - _ALLOWED_FIELDS[kind])
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise bad_request(f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}")
    model = deployment or body.get("model")
    if not model:
        raise bad_request("you must provide a model parameter")
    if not isinstance(model, str):
        raise bad_request("Invalid type for 'model': expected a string.", "model", "invalid_type")
    if body.get("stream"):
        raise bad_request("The simulator does not stream; send stream=false.", "stream", "unsupported_value")
    if kind == EMBEDDINGS:
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise bad_request(f"Invalid value for 'encoding_format': '{fmt}'. Supported values are: "
                       "'float' and 'base64'.", "encoding_format", "invalid_value")
        dims = _int_field(body, "dimensions", minimum=1, maximum=MAX_EMBEDDING_DIMS)
        return SimRequest(kind, model, _text_list(body, "input"),
                          dims=dims or DEFAULT_EMBEDDING_DIMS, base64=fmt == "base64")
    n = _int_field(body, "n", minimum=1, maximum=MAX_N) or 1
    if kind == CHAT:
        messages = body.get("messages")
        if messages is None:
            raise bad_request("Missing required parameter: 'messages'.", "messages",
                       "missing_required_parameter")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise bad_request("Invalid type for 'messages': expected an array of objects.", "messages",
                       "invalid_type")
        if not messages:
            raise bad_request("Invalid 'messages': empty array. Expected an array with minimum length 1, "
                       "but got an empty array instead.", "messages", "empty_array")
        max_tokens = _int_field(body, "max_completion_tokens", minimum=1)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", minimum=1)
        return SimRequest(kind, model, (chat_prompt(messages),), n=n, max_tokens=max_tokens,
                          response_format=_response_format(body.get("response_format")))
    bias = body.get("logit_bias")
    if bias is not None and not (isinstance(bias, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and -100 <= v <= 100
            for v in bias.values())):
        raise bad_request("Invalid 'logit_bias': expected a map of token ids to numbers in [-100, 100].",
                   "logit_bias", "invalid_value")
    return SimRequest(kind, model, _text_list(body, "prompt"), n=n,
                      max_tokens=_int_field(body, "max_tokens", minimum=0),
                      echo=bool(body.get("echo")),
                      logprobs=_int_field(body, "logprobs", minimum=0, maximum=5),
                      logit_bias=bias)



QUOTA_ERROR = openai_error(
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota", None, "insufficient_quota")
SERVER_ERROR = openai_error(
    "The server had an error while processing your request. Sorry about that!", "server_error")
OVERLOADED_ERROR = openai_error(
    "That model is currently overloaded with other requests. You can retry your request, or "
    "contact us through our help center at help.openai.com if the error persists.",
    "server_error")
# A server that cannot take a list prompt fails inside, with nothing to say: LiteLLM's proxy
# renders such an exception with the strings "None" for type and param and the status as code.
BLANK_SERVER_ERROR = {"error": {"message": "", "type": "None", "param": "None", "code": "500"}}
MALFORMED_JSON = openai_error(
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)")
NO_KEY = openai_error(
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
    "username) if you're accessing the API from your browser and are prompted for a username and "
    "password. You can obtain an API key from https://platform.openai.com/account/api-keys.")
AZURE_DENIED = azure_error(
    "401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API endpoint for "
    "your resource.")


def poisoned(kind: str, tokens: int) -> ApiError:
    """The 400 `context_length_exceeded` of a request of `tokens` whose prompt holds the poison."""
    asked = CONTEXT_LIMIT_TOKENS + 1 + tokens
    return ApiError(400, openai_error(
        f"This model's maximum context length is {CONTEXT_LIMIT_TOKENS} tokens. However, your "
        f"{_PROMPT_FIELD[kind]} resulted in {asked} tokens. Please reduce the length of the "
        f"{_PROMPT_FIELD[kind]}.", "invalid_request_error", _PROMPT_FIELD[kind],
        "context_length_exceeded"))


def api_key_of(headers: Mapping[str, str], shape: str, expected: str | None) -> str:
    """The request's API key; raises the service's 401 when it has none, or one other than
    `expected` (None: any non-empty key is right). OpenAI takes `Authorization: Bearer KEY`;
    Azure's shapes take that or `api-key: KEY`."""
    bearer = headers.get("Authorization", "")
    scheme, _, token = bearer.partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else ""
    if shape != OPENAI:
        key = key or headers.get("api-key", "").strip()
        if not key or (expected is not None and key != expected):
            raise ApiError(401, AZURE_DENIED)
        return key
    if not key:
        raise ApiError(401, NO_KEY)
    if expected is not None and key != expected:
        raise ApiError(401, openai_error(
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.", code="invalid_api_key"))
    return key


# -- what does not exist: a route, a model, a deployment -----------------------------------------
AZURE_NOT_FOUND = azure_error("404", "Resource not found")  # any path under /openai/ it lacks
DEPLOYMENT_NOT_FOUND = azure_error(
    "DeploymentNotFound", "The API deployment for this resource does not exist. If you created the "
    "deployment within the last 5 minutes, please wait a moment and try again.")


def unknown_route(method: str, path: str, style: str) -> dict[str, Any]:
    """The 404 body for a path the service does not serve (`path` with its query, if any).

    Under `/openai/` Azure's; else OpenAI's in `style` (`SimConfig.url_error`): "invalid_url",
    `Invalid URL (POST /path)` with a null code, as OpenAI answered through 2023, or
    "unknown_url", `Unknown request URL: POST /path. ...` with code `unknown_url`, as since 2024.
    """
    if path.startswith("/openai/"):
        return AZURE_NOT_FOUND
    if style == "unknown_url":
        return openai_error(f"Unknown request URL: {method} {path}. Please check the URL for typos, "
                            "or see the docs at https://platform.openai.com/docs/api-reference/.",
                            code="unknown_url")
    return openai_error(f"Invalid URL ({method} {path.split('?', 1)[0]})")


def check_model(shape: str, name: str, *, models: tuple[str, ...] | None,
                deployments: tuple[str, ...] | None) -> None:
    """Raise the service's 404 when `name` does not exist: on OpenAI URLs a model not in `models`
    (`model_not_found`), on Azure's a deployment not in `deployments` (`DeploymentNotFound`);
    None stands for every name."""
    if shape == OPENAI:
        if models is not None and name not in models:
            raise ApiError(404, openai_error(
                f"The model `{name}` does not exist or you do not have access to it.",
                code="model_not_found"))
    elif deployments is not None and name not in deployments:
        raise ApiError(404, DEPLOYMENT_NOT_FOUND)
