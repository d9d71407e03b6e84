"""Accounting and answers: what a validated request costs and what it gets back.

A `SimRequest` is a request the service accepted (`runner.simulator.parsing` builds it). Its token
charge is the server's accounting, which a client must mirror to pace itself (`token_charge`): per
prompt `ceil(chars / 4)` of its text (chat: the characters of all message contents, `chat_prompt`)
plus `max_tokens * n` (chat: `max_completion_tokens`, else `max_tokens`, else 0; completions:
`max_tokens`, else 16); embeddings: `ceil(chars / 4)` per input.

Answers are pure functions of the input (`completion_text`, `completion_logprobs`,
`embedding_vector`, `structured_text`), so a test can compute what each job must get back;
`build_answer` puts them in OpenAI's shapes with correct indices and usage. A chat request asking
for JSON (`response_format` json_object or json_schema) gets `structured_text`: JSON that fits its
schema, its values derived from the prompt; with `break_json` > 0 that JSON is broken at that
rate (`broken_json`: cut short, or an object that misses the schema), as local servers and older
models break it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = {"chat": 0, "completions": 16}  # when the body names no max_tokens
DEFAULT_EMBEDDING_DIMS = 8

CHAT, COMPLETIONS, EMBEDDINGS = "chat", "completions", "embeddings"


def sha_hex(text: str) -> str:
    """The sha256 of `text` (UTF-8) in hex: the seed of every derived answer and id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def completion_text(prompt: str, j: int) -> str:
    """The text of choice `j` for `prompt`: `"sim:" + sha256(prompt)[:12] + "#j"`."""
    return f"sim:{sha_hex(prompt)[:12]}#{j}"


CLASSIFIER_TOKENS = ("15", "16", "17", "18", "19")  # candidate token ids when no logit_bias names any


def completion_logprobs(prompt: str, j: int, top: int,
                        logit_bias: Mapping[str, float] | None = None) -> tuple[str, dict[str, Any]]:
    """(text, logprobs) of choice `j` for `prompt` when `logprobs=top` is asked: one token, the
    most likely of the candidates (the token ids `logit_bias` names, else `CLASSIFIER_TOKENS`),
    each candidate's logit derived from the prompt plus its bias, as a fine-tuned classifier
    called with `max_tokens: 1` answers. The token of id `t` reads `" t<id>"`."""
    bias = {str(k): float(v) for k, v in (logit_bias or {}).items()}
    candidates = sorted(bias) or list(CLASSIFIER_TOKENS)
    logits = {t: -int(sha_hex(f"{prompt}#{j}#{t}")[:4], 16) / 8192 + bias.get(t, 0.0) / 10
              for t in candidates}
    peak = max(logits.values())
    norm = peak + math.log(sum(math.exp(v - peak) for v in logits.values()))
    ranked = sorted(candidates, key=lambda t: (-logits[t], t))
    best = ranked[0]
    text = f" t{best}"
    return text, {"tokens": [text], "token_logprobs": [round(logits[best] - norm, 6)],
                  "top_logprobs": [{f" t{t}": round(logits[t] - norm, 6) for t in ranked[:top]}],
                  "text_offset": [len(prompt)]}


def chat_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt text of a chat request: all message contents concatenated with no separator.

    A content given as a list of parts contributes its text parts; `None` contributes nothing.
    `len(chat_prompt(messages))` is the character count the token charge uses.
    """
    out: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(part["text"] for part in content
                       if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return "".join(out)


def schema_instance(schema: Any, seed: str) -> Any:
    """A value fitting the JSON schema `schema` (objects with every property, the first of an
    enum or anyOf, strings derived from `seed`): what a model following the schema answers."""
    if not isinstance(schema, Mapping):
        return f"sim:{sha_hex(seed)[:12]}"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        options = schema["enum"]
        return options[int(sha_hex(seed)[:8], 16) % len(options)]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema_instance(schema[key][0], seed)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: schema_instance(sub, f"{seed}.{name}") for name, sub in props.items()}
    if kind == "array":
        return [schema_instance(schema.get("items"), f"{seed}[0]")]
    if kind == "integer":
        return int(sha_hex(seed)[:4], 16) % 100
    if kind == "number":
        return round(int(sha_hex(seed)[:4], 16) / 65536, 4)
    if kind == "boolean":
        return int(sha_hex(seed)[:2], 16) % 2 == 0
    if kind == "null":
        return None
    return f"sim:{sha_hex(seed)[:12]}"


def structured_text(prompt: str, j: int, response_format: Mapping[str, Any]) -> str:
    """The JSON text of choice `j` for `prompt` under `response_format`: an instance of its
    json_schema's schema, or `{"answer": completion_text(prompt, j)}` for json_object."""
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        value = schema_instance(schema, f"{prompt}#{j}")
    else:
        value = {"answer": completion_text(prompt, j)}
    return json.dumps(value, ensure_ascii=False)


def broken_json(text: str, rng: random.Random) -> str:
    """`text` (JSON) broken as models break it: cut short half the time, else an object of
    another shape (`{"oops": ...}`: valid JSON that misses a schema's properties)."""
    if rng.random() < 0.5:
        return text[: max(1, len(text) // 2)]
    return json.dumps({"oops": text[:20]})


def embedding_vector(text: str, dims: int = DEFAULT_EMBEDDING_DIMS) -> list[float]:
    """A deterministic unit-length vector of `dims` floats derived from `text`."""
    raw: list[float] = []
    block = 0
    while len(raw) < dims:
        digest = hashlib.sha256(f"{block}:{text}".encode("utf-8")).digest()
        raw.extend(int.from_bytes(digest[k:k + 4], "big") / 2**31 - 1.0 for k in range(0, 32, 4))
        block += 1
    raw = raw[:dims]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def text_tokens(text: str) -> int:
    """The simulator's token estimate of a text: `ceil(len(text) / 4)`."""
    return -(-len(text) // CHARS_PER_TOKEN)


def token_charge(kind: str, prompts: Sequence[str], *, n: int = 1,
                 max_tokens: int | None = None) -> int:
    """Tokens a request costs against the TPM bucket; `kind` is "chat", "completions" or "embeddings".

    Per prompt: `text_tokens(prompt) + max_tokens * n`, where a missing `max_tokens` means
    `DEFAULT_MAX_TOKENS[kind]` (chat 0, completions 16); embeddings cost `text_tokens` per input.
    """
    prompt_cost = sum(text_tokens(p) for p in prompts)
    if kind == EMBEDDINGS:
        return prompt_cost
    out = DEFAULT_MAX_TOKENS[kind] if max_tokens is None else max_tokens
    return prompt_cost + out * n * len(prompts)



@dataclass(frozen=True, slots=True)
class SimRequest:
    """A validated request: its kind, model, prompt texts (one per prompt/input), n and options."""

    kind: str
    model: str
    prompts: tuple[str, ...]
    n: int = 1
    max_tokens: int | None = None
    echo: bool = False
    dims: int = DEFAULT_EMBEDDING_DIMS
    base64: bool = False
    logprobs: int | None = None  # completions: top logprobs asked
    logit_bias: Mapping[str, float] | None = None
    response_format: Mapping[str, Any] | None = None  # chat asking for JSON (json_object/_schema)

    @property
    def charge(self) -> int:
        return token_charge(self.kind, self.prompts, n=self.n, max_tokens=self.max_tokens)



def build_answer(req: SimRequest, *, rng: random.Random, shuffle: bool, created: int,
                 response_id: str, break_json: float = 0.0) -> dict[str, Any]:
    """The 200 body for `req`: choices (or embeddings) with correct indices, usage, OpenAI shapes;
    a structured choice's JSON broken with probability `break_json` (`broken_json`)."""
    prompt_tokens = sum(text_tokens(p) for p in req.prompts)
    if req.kind == EMBEDDINGS:
        items: list[dict[str, Any]] = []
        for i, text in enumerate(req.prompts):
            vector = embedding_vector(text, req.dims)
            embedding: Any = (base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                              if req.base64 else vector)
            items.append({"object": "embedding", "index": i, "embedding": embedding})
        if shuffle:
            rng.shuffle(items)
        return {"object": "list", "data": items, "model": req.model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for position, prompt in enumerate(req.prompts):
        for j in range(req.n):
            text = completion_text(prompt, j)
            if req.kind == CHAT and req.response_format is not None:
                text = structured_text(prompt, j, req.response_format)
                if break_json and rng.random() < break_json:
                    text = broken_json(text, rng)
            completion_tokens += text_tokens(text)
            if req.kind == CHAT:
                choices.append({"index": j, "message": {"role": "assistant", "content": text,
                                                        "refusal": None},
                                "logprobs": None, "finish_reason": "stop"})
            else:
                logprobs = None
                if req.logprobs is not None:
                    text, logprobs = completion_logprobs(prompt, j, req.logprobs, req.logit_bias)
                choices.append({"text": prompt + text if req.echo else text,
                                "index": position * req.n + j, "logprobs": logprobs,
                                "finish_reason": "length" if logprobs else "stop"})
    if shuffle:
        rng.shuffle(choices)
    return {"id": response_id, "object": "chat.completion" if req.kind == CHAT else "text_completion",
            "created": created, "model": req.model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "system_fingerprint": "fp_sim"}
