"""Token estimation, fully offline: what the API's rate limiter charges, and true prompt counts.

Two different numbers, on purpose:

- `rate_limit_charge()` is what the API's *rate limiter* counts against TPM before it runs the
  model: per prompt ceil(chars / 4) plus the completion budget (max tokens x n). It needs no
  tokenizer and matches the simulator's accounting exactly.
- `prompt_tokens()` is the *true* prompt size, for cost reports and context checks.

Pure: true counts come from a `TokenCounter` the caller passes in (the engine's is
`runner.tokenizer.token_counter`, tiktoken's encodings built offline). When it has no counter for a
model, counts fall back to the documented approximation ceil(chars / 4) and context checks are
skipped.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

from jobs.endpoints import (
    CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES, images_requested, moderation_inputs,
    response_text, spec_of,
)
from jobs.models import longest_prefix

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
DEFAULT_ENCODING = O200K_BASE  # unknown models (Azure deployment names, new models) use this

CHARS_PER_TOKEN = 4  # the rate limiter's estimate, and our approximation without a tokenizer
DEFAULT_MAX_TOKENS = {COMPLETIONS: 16, CHAT: 0}  # completion budget when absent
TOKENS_PER_MESSAGE = 3  # chat overhead per message (OpenAI cookbook counting)
TOKENS_PER_NAME = 1  # extra when a message has a `name`
TOKENS_REPLY_PRIMING = 3  # every chat reply is primed with <|start|>assistant<|message|>

CountTokens = Callable[[str], int]
"""The exact number of tokens in one text, under one encoding."""

TokenCounter = Callable[[str | None], CountTokens | None]
"""model -> the `CountTokens` of its encoding, or None when no verified encoding is available
(true counts are then approximated as ceil(chars / 4), and context checks are skipped)."""

# Model-name prefix -> encoding, matched by `jobs.models.longest_prefix` (so "gpt-4" covers
# "gpt-4-turbo" and "gpt-4-0613" but not an unknown "gpt-4.7"); the longest match wins.
MODEL_ENCODINGS: dict[str, str] = {
    "gpt-4o": O200K_BASE, "chatgpt-4o": O200K_BASE, "gpt-4.1": O200K_BASE,
    "gpt-4.5": O200K_BASE, "gpt-5": O200K_BASE, "gpt-oss": O200K_BASE,
    "o1": O200K_BASE, "o3": O200K_BASE, "o4": O200K_BASE, "o4-mini": O200K_BASE,
    "gpt-4": CL100K_BASE, "gpt-3.5": CL100K_BASE, "gpt-35": CL100K_BASE,
    "text-embedding-3": CL100K_BASE, "text-embedding-ada-002": CL100K_BASE,
    "davinci-002": CL100K_BASE, "babbage-002": CL100K_BASE,
}

# Model-name prefix -> context window in tokens (same matching). For embeddings: per input.
CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000, "gpt-4o-mini": 128_000, "chatgpt-4o": 128_000,
    "gpt-4.1": 1_047_576, "gpt-4.5": 128_000,
    "gpt-5": 400_000, "gpt-5-chat": 128_000,
    "o1": 200_000, "o1-mini": 128_000, "o1-preview": 128_000,
    "o3": 200_000, "o3-mini": 200_000, "o4-mini": 200_000,
    "gpt-4-turbo": 128_000, "gpt-4-1106": 128_000, "gpt-4-0125": 128_000,
    "gpt-4-vision": 128_000, "gpt-4-32k": 32_768, "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385, "gpt-3.5-turbo-16k": 16_385, "gpt-3.5-turbo-0613": 4_096,
    "gpt-3.5-turbo-0301": 4_096, "gpt-3.5-turbo-instruct": 4_096,
    "davinci-002": 16_384, "babbage-002": 16_384,
    "text-embedding-3-small": 8_192, "text-embedding-3-large": 8_192,
    "text-embedding-ada-002": 8_192,
}


@functools.lru_cache(maxsize=1024)
def _context_window(model: str | None) -> int | None:
    return longest_prefix(CONTEXT_WINDOWS, model)


def encoding_name_for_model(model: str | None) -> str:
    """The tiktoken encoding of `model`: o200k_base for gpt-4o / 4.1 / 4.5 / 5, o1 / o3 / o4 and
    chatgpt-4o; cl100k_base for gpt-4, gpt-3.5, text-embedding-3 / ada-002, davinci/babbage-002.
    Unknown or missing models (e.g. Azure deployment names) get `DEFAULT_ENCODING` (o200k_base),
    the encoding of every current OpenAI model."""
    return longest_prefix(MODEL_ENCODINGS, model) or DEFAULT_ENCODING


def context_window(model: str | None) -> int | None:
    """The context length of `model` in tokens (per input for embeddings); None when unknown."""
    return _context_window(model)


def _approx_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _count(count: CountTokens | None, text: str) -> int:
    """Tokens in `text`: exact with `count`, else approximated."""
    if not text:
        return 0
    if count is None:
        return _approx_tokens(text)
    return count(text)


def count_tokens(text: str, model: str | None, counter: TokenCounter) -> int:
    """True token count of `text` for `model` (approximation ceil(chars/4) if `counter` has none)."""
    return _count(counter(model), text)


# --- reading request bodies -----------------------------------------------------------------

def _kind(url: str) -> str:
    return spec_of(url).url


def _content_text(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a list (images etc. ignored)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


def _prompts(url: str, body: dict) -> tuple[str, list[str | list[int]]]:
    """(endpoint, one entry per prompt): text, or a list of token ids for token-array prompts."""
    kind = _kind(url)
    if kind == CHAT:
        return kind, ["".join(_content_text(m.get("content")) for m in _messages(body))]
    if kind == RESPONSES:
        return kind, [response_text(body)]
    if kind == MODERATIONS:
        return kind, list(moderation_inputs(body.get("input")))
    if kind not in (COMPLETIONS, EMBEDDINGS):
        return kind, []  # images: charged in images, not tokens
    value = body.get("prompt" if kind == COMPLETIONS else "input")
    if isinstance(value, str) or _is_token_ids(value):
        return kind, [value]
    if isinstance(value, list):
        return kind, [v for v in value if isinstance(v, str) or _is_token_ids(v)]
    return kind, []


def prompt_texts(url: str, body: dict) -> list[str]:
    """One text per prompt: chat -> [all message contents concatenated] (string contents, or the
    text parts of list contents); completions -> `prompt` (str or list of str); embeddings ->
    `input` (str or list of str). Token-id prompts (lists of ints) are left out.
    ValueError for an unsupported url."""
    return [p for p in _prompts(url, body)[1] if isinstance(p, str)]


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _max_tokens(kind: str, body: dict) -> int:
    """Completion budget of one completion: max_completion_tokens, else max_tokens, else the
    endpoint's default."""
    spec = spec_of(kind)
    for key in spec.output_fields:
        value = _positive_int(body.get(key))
        if value is not None:
            return value
    return spec.default_output


def _n(kind: str, body: dict) -> int:
    n = body.get("n", 1) if spec_of(kind).n_multiplies else 1
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def max_completion_tokens(url: str, body: dict) -> int:
    """Completion budget of the request: max tokens x n per prompt, summed; 0 for embeddings.
    Max tokens is max_completion_tokens, else max_tokens, else 16 (completions) / 0 (chat)."""
    kind, prompts = _prompts(url, body)
    return _max_tokens(kind, body) * _n(kind, body) * len(prompts)


def rate_limit_charge(url: str, body: dict) -> int:
    """The tokens the API's rate limiter charges for this request (and the simulator charges):
    sum over prompts of ceil(chars / 4) + max tokens x n; embeddings and moderations:
    ceil(chars / 4) per input, no completion part; Responses: ceil(chars / 4) of `instructions`
    and the input's texts + `max_output_tokens` (0 when absent, as for chat without max tokens).
    Image endpoints are charged in images, not tokens: `n` (default 1), against images per minute. A token-id prompt counts its length. Pure arithmetic, no tokenizer."""
    kind, prompts = _prompts(url, body)
    if spec_of(kind).images:
        return images_requested(kind, body)
    per_prompt = _max_tokens(kind, body) * _n(kind, body)
    return sum((_approx_tokens(p) if isinstance(p, str) else len(p)) + per_prompt
               for p in prompts)


def _chat_tokens(count: CountTokens | None, messages: Iterable[dict]) -> int:
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE + _count(count, str(message.get("role") or ""))
        total += _count(count, _content_text(message.get("content")))
        name = message.get("name")
        if isinstance(name, str) and name:
            total += TOKENS_PER_NAME + _count(count, name)
    return total


def _true_tokens(count: CountTokens | None, kind: str, body: dict,
                 prompt: str | list[int]) -> int:
    """True tokens of one prompt (see `prompt_tokens`)."""
    if kind == CHAT:
        return _chat_tokens(count, _messages(body))
    return _count(count, prompt) if isinstance(prompt, str) else len(prompt)


def prompt_tokens(url: str, body: dict, counter: TokenCounter) -> int:
    """True prompt tokens of the request by `counter`, summed over prompts. Chat adds the
    cookbook overhead: 3 per message (+ the role's tokens, + 1 and the name's tokens for a
    `name`) and 3 for the reply. Approximate (ceil(chars/4)) only if `counter` has no counter for
    the model."""
    kind, prompts = _prompts(url, body)
    count = counter(body.get("model"))
    return sum(_true_tokens(count, kind, body, p) for p in prompts)


def _byte_bound(kind: str, body: dict, prompt: str | list[int]) -> int:
    """An upper bound on the true token count of one prompt, without a tokenizer: a BPE token
    is at least one UTF-8 byte."""
    if not isinstance(prompt, str):
        return len(prompt)
    if kind == CHAT:
        return TOKENS_REPLY_PRIMING + sum(
            TOKENS_PER_MESSAGE + TOKENS_PER_NAME + len(str(m.get("role") or "").encode())
            + len(str(m.get("name") or "").encode()) + len(_content_text(m.get("content")).encode())
            for m in _messages(body))
    return len(prompt.encode())


def context_overflow(url: str, body: dict, counter: TokenCounter) -> str | None:
    """A message if a prompt plus its completion budget (max tokens, one completion) cannot fit the
    model's context window, else None. Embeddings: each input against the per-input window.

    Returns None when the model's window is unknown or `counter` has no counter for the model: a
    job is failed only when it surely cannot fit. Cheap for small prompts: `counter` is asked only
    when the UTF-8 byte length (an upper bound on tokens) plus the budget exceeds the window.
    """
    model = body.get("model")
    window = context_window(model)
    if window is None:
        return None
    kind, prompts = _prompts(url, body)
    budget = _max_tokens(kind, body)
    suspects = [(i, p) for i, p in enumerate(prompts) if _byte_bound(kind, body, p) + budget > window]
    if not suspects:
        return None
    count = counter(model)
    if count is None:
        return None
    for index, prompt in suspects:
        tokens = _true_tokens(count, kind, body, prompt)
        if tokens + budget > window:
            where = f"input {index}" if len(prompts) > 1 else "prompt"
            if kind == EMBEDDINGS:
                return f"{where} is {tokens} tokens, over the {window}-token input limit of {model}"
            return (f"{where} is {tokens} tokens + {budget} max completion tokens = "
                    f"{tokens + budget}, over the {window}-token context window of {model}")
    return None
