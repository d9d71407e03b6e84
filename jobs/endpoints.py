"""Every endpoint a job may name, and what runner knows about each: the one table both backends
(live, and the hosted Batch API) read.

Pure. For each job `url` an `EndpointSpec` says whether jobs can share a request (and through which
list field), where each job's share of an answer is (`items`, matched by `index` or by position),
what the rate limiter charges (tokens, or images for the image endpoints), which fields bound the
output, whether the request is multipart (image uploads), whether the hosted Batch API takes it,
and the model the API assumes when the body names none. `read_usage` reads either usage shape
(chat/completions `prompt_tokens`, Responses `input_tokens` with cached and reasoning details) into
one `Usage`; `images_requested` is what an image request charges against images per minute.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MODERATIONS = "/v1/moderations"
IMAGES_GENERATIONS = "/v1/images/generations"
IMAGES_EDITS = "/v1/images/edits"
IMAGES_VARIATIONS = "/v1/images/variations"

TOKENS = "tokens"  # the budget's second bucket counts tokens (TPM)
IMAGES = "images"  # ... images (IPM)

DEFAULT_IMAGE_N = 1


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What runner knows about one endpoint.

    list_field: the body field a pack lists its jobs' prompts in (None: never packed).
    items: the answer's list each job gets its own part of ("choices", "data", "results"; None:
    the whole answer is the job's). indexed: items carry an `index` (else matched by position).
    text_fields: where the rate limiter's characters are. output_fields: fields bounding the
    output tokens, first found wins; default_output: the bound when none is given. n_multiplies:
    `n` multiplies the output budget. unit: what the budget's second bucket counts (TOKENS or
    IMAGES). multipart: sent as multipart/form-data (uploads). batch: the hosted Batch API takes
    it. default_model: the model the API uses when the body names none (None: `model` required).
    """

    url: str
    list_field: str | None = None
    items: str | None = None
    indexed: bool = True
    text_fields: tuple[str, ...] = ()
    output_fields: tuple[str, ...] = ()
    default_output: int = 0
    n_multiplies: bool = False
    unit: str = TOKENS
    multipart: bool = False
    batch: bool = True
    default_model: str | None = None

    @property
    def packable(self) -> bool:
        return self.list_field is not None

    @property
    def images(self) -> bool:
        return self.unit == IMAGES


SPECS: Mapping[str, EndpointSpec] = {s.url: s for s in (
    EndpointSpec(CHAT, items="choices", text_fields=("messages",),
                 output_fields=("max_completion_tokens", "max_tokens"), n_multiplies=True),
    EndpointSpec(COMPLETIONS, list_field="prompt", items="choices", text_fields=("prompt",),
                 output_fields=("max_tokens",), default_output=16, n_multiplies=True),
    EndpointSpec(EMBEDDINGS, list_field="input", items="data", text_fields=("input",)),
    # Responses: the answer is one object (output items, status, usage); never packed.
    EndpointSpec(RESPONSES, text_fields=("instructions", "input"),
                 output_fields=("max_output_tokens",)),
    # Moderations: `results` come back in input order and carry no index.
    EndpointSpec(MODERATIONS, list_field="input", items="results", indexed=False,
                 text_fields=("input",), default_model="omni-moderation-latest"),
    EndpointSpec(IMAGES_GENERATIONS, items="data", indexed=False, unit=IMAGES,
                 default_model="dall-e-2"),
    EndpointSpec(IMAGES_EDITS, items="data", indexed=False, unit=IMAGES, multipart=True,
                 default_model="dall-e-2"),
    EndpointSpec(IMAGES_VARIATIONS, items="data", indexed=False, unit=IMAGES, multipart=True,
                 batch=False, default_model="dall-e-2"),
)}

ENDPOINTS = tuple(SPECS)
IMAGE_ENDPOINTS = tuple(url for url, s in SPECS.items() if s.images)

# Upload fields of the multipart endpoints: each names a file (a path in the job line).
UPLOAD_FIELDS = {IMAGES_EDITS: ("image", "mask"), IMAGES_VARIATIONS: ("image",)}


def spec_of(url: str) -> EndpointSpec:
    """The spec of a job url (`/v1/...`) or of a full URL ending in one's tail; ValueError else."""
    spec = SPECS.get(url)
    if spec is not None:
        return spec
    for known, spec in SPECS.items():
        if url.split("?", 1)[0].endswith(known.removeprefix("/v1")):
            return spec
    raise ValueError(f"unsupported url {url!r}")


def model_of(url: str, body: Mapping[str, Any]) -> str:
    """The body's model, or the one the API assumes when it names none (moderations, images)."""
    model = body.get("model")
    if isinstance(model, str) and model:
        return model
    default = SPECS[url].default_model if url in SPECS else None
    if default is None:
        raise KeyError("model")
    return default


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return 0
    return int(value)


def images_requested(url: str, body: Mapping[str, Any]) -> int:
    """Images an image request asks for (`n`, default 1); 0 for every other endpoint."""
    if url not in SPECS or not SPECS[url].images:
        return 0
    n = body.get("n", DEFAULT_IMAGE_N)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else DEFAULT_IMAGE_N


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens an answer reports having spent, whatever its shape. `cached` is part of `input`,
    `reasoning` part of `output` (as the API counts them)."""

    input: int = 0
    output: int = 0
    cached: int = 0
    reasoning: int = 0


def read_usage(usage: Any) -> Usage:
    """One `Usage` from an answer's `usage`: chat/completions/embeddings (`prompt_tokens`,
    `completion_tokens`, `prompt_tokens_details.cached_tokens`,
    `completion_tokens_details.reasoning_tokens`), or the Responses API and gpt-image-1
    (`input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`,
    `output_tokens_details.reasoning_tokens`). Anything that is not a count reads as 0."""
    if not isinstance(usage, Mapping):
        return Usage()
    responses_shape = "input_tokens" in usage or "output_tokens" in usage
    inp, out = ("input_tokens", "output_tokens") if responses_shape else \
        ("prompt_tokens", "completion_tokens")
    in_details = usage.get(f"{inp}_details")
    out_details = usage.get(f"{out}_details")
    return Usage(
        input=_count(usage.get(inp)), output=_count(usage.get(out)),
        cached=_count(in_details.get("cached_tokens")) if isinstance(in_details, Mapping) else 0,
        reasoning=_count(out_details.get("reasoning_tokens"))
        if isinstance(out_details, Mapping) else 0)


def response_text(body: Mapping[str, Any]) -> str:
    """The text the Responses API's rate limiter reads: `instructions` and every text in `input`
    (a string, or items whose `content` is a string or parts with `text`)."""
    parts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        parts.append(instructions)
    value = body.get("input")
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, Mapping):
                continue
            content = item.get("content", item.get("text"))
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p["text"] for p in content
                             if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return "".join(parts)


def moderation_inputs(value: Any) -> list[str]:
    """The texts of a moderations `input`: a string, a list of strings, or a list of multimodal
    parts (`{"type": "text", "text": ...}`; image parts carry no text)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    if all(isinstance(v, str) for v in value):
        return list(value)
    return ["".join(p["text"] for p in value
                    if isinstance(p, Mapping) and isinstance(p.get("text"), str))]


def upload_paths(url: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, path) of every file a multipart job uploads, in field order: `image` (a path, or
    a list of paths for gpt-image-1 edits) and `mask`."""
    out: list[tuple[str, str]] = []
    for name in UPLOAD_FIELDS.get(url, ()):
        value = body.get(name)
        if isinstance(value, str):
            out.append((name, value))
        elif isinstance(value, list):
            out.extend((name, v) for v in value if isinstance(v, str))
    return out


def body_problem(url: str, body: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of a body for `url` that the API would refuse and a user can
    fix in the job line, or None. Only what needs no file system: whether named files exist is
    checked by the run before anything is sent."""
    if url in UPLOAD_FIELDS:
        image = body.get("image")
        many = url == IMAGES_EDITS and isinstance(image, list) and image and all(
            isinstance(v, str) and v for v in image)
        if not (isinstance(image, str) and image) and not many:
            what = "a path, or a list of paths" if url == IMAGES_EDITS else "a path"
            return f"body.image must be {what} to an image file (relative to the job file)"
        mask = body.get("mask")
        if mask is not None and not (isinstance(mask, str) and mask):
            return "body.mask must be a path to an image file (relative to the job file)"
    if url in (IMAGES_GENERATIONS, IMAGES_EDITS) and not (
            isinstance(body.get("prompt"), str) and body["prompt"]):
        return "body.prompt must be a non-empty string"
    if url in (RESPONSES, MODERATIONS) and "input" not in body:
        return "body.input is missing"
    return None
