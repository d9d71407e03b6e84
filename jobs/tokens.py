"""Token estimation, fully offline: what the API's rate limiter charges, and true prompt counts.

Two different numbers, on purpose:

- `rate_limit_charge()` is what the API's *rate limiter* counts against TPM before it runs the
  model: per prompt ceil(chars / 4) plus the completion budget (max tokens x n). It needs no
  tokenizer and matches the simulator's accounting exactly.
- `prompt_tokens()` is the *true* prompt size (tiktoken), for cost reports and context checks.

Encodings are built without the network. tiktoken would download its BPE files on first use;
instead we read the copies shipped as data files by the `quicktok-v1` dependency
(`quicktok/data/{o200k,cl100k}.vocab`: little-endian u32 count, then per entry u16 length, token
bytes, u32 rank), re-serialise them in tiktoken's format and check tiktoken's own sha256 before use.
If those files are missing or wrong, a file already in tiktoken's cache (`TIKTOKEN_CACHE_DIR`,
`DATA_GYM_CACHE_DIR`, or `<tmp>/data-gym-cache`) is used, verified the same way. Otherwise the
encoding is None, a warning is issued once per encoding, and counts fall back to the documented
approximation ceil(chars / 4). Nothing here ever downloads.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import math
import os
import struct
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from jobs.job import CHAT, COMPLETIONS, EMBEDDINGS
from jobs.models import longest_prefix

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
DEFAULT_ENCODING = O200K_BASE  # unknown models (Azure deployment names, new models) use this

CHARS_PER_TOKEN = 4  # the rate limiter's estimate, and our approximation without a tokenizer
DEFAULT_MAX_TOKENS = {COMPLETIONS: 16, CHAT: 0}  # completion budget when absent
TOKENS_PER_MESSAGE = 3  # chat overhead per message (OpenAI cookbook counting)
TOKENS_PER_NAME = 1  # extra when a message has a `name`
TOKENS_REPLY_PRIMING = 3  # every chat reply is primed with <|start|>assistant<|message|>

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    """What tiktoken_ext/openai_public.py declares for one encoding, and where our copy lives."""

    vocab_file: str  # in quicktok/data/
    url: str  # tiktoken's download URL; names its cache file
    sha256: str  # of the tiktoken-format file
    pat_str: str
    special_tokens: dict[str, int]


_SPECS = {
    O200K_BASE: _EncodingSpec(
        vocab_file="o200k.vocab",
        url="https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join([
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    CL100K_BASE: _EncodingSpec(
        vocab_file="cl100k.vocab",
        url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        special_tokens={_ENDOFTEXT: 100257, _FIM_PREFIX: 100258, _FIM_MIDDLE: 100259,
                        _FIM_SUFFIX: 100260, _ENDOFPROMPT: 100276},
    ),
}

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


# --- building the encodings offline ---------------------------------------------------------

def _quicktok_data_dir() -> Path | None:
    """quicktok's data directory, found without importing quicktok."""
    try:
        spec = importlib.util.find_spec("quicktok")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if data.is_dir():
            return data
    return None


def _tiktoken_cache_dir() -> Path | None:
    """Where tiktoken keeps downloaded files (same rules as tiktoken.load.read_file_cached)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _read_quicktok_vocab(data: bytes) -> dict[bytes, int]:
    """Parse quicktok's binary vocab; ValueError if it is malformed."""
    try:
        (count,) = struct.unpack_from("<I", data, 0)
        ranks: dict[bytes, int] = {}
        offset = 4
        for _ in range(count):
            (length,) = struct.unpack_from("<H", data, offset)
            offset += 2
            token = data[offset:offset + length]
            offset += length
            (rank,) = struct.unpack_from("<I", data, offset)
            offset += 4
            ranks[token] = rank
    except struct.error as e:
        raise ValueError("truncated vocab file") from e
    if offset != len(data) or len(ranks) != count:
        raise ValueError("malformed vocab file")
    return ranks


def _tiktoken_file_sha256(ranks: dict[bytes, int]) -> str:
    digest = hashlib.sha256()
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        digest.update(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    return digest.hexdigest()


def _ranks_from_quicktok(spec: _EncodingSpec) -> dict[bytes, int] | None:
    data_dir = _quicktok_data_dir()
    if data_dir is None:
        return None
    try:
        ranks = _read_quicktok_vocab((data_dir / spec.vocab_file).read_bytes())
    except (OSError, ValueError):
        return None
    return ranks if _tiktoken_file_sha256(ranks) == spec.sha256 else None


def _ranks_from_tiktoken_cache(spec: _EncodingSpec) -> dict[bytes, int] | None:
    cache_dir = _tiktoken_cache_dir()
    if cache_dir is None:
        return None
    path = cache_dir / hashlib.sha1(spec.url.encode()).hexdigest()
    try:
        contents = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(contents).hexdigest() != spec.sha256:
        return None
    ranks = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding | None:
    """The tiktoken encoding `name` ("o200k_base" or "cl100k_base"), built offline and verified
    against tiktoken's sha256; None (with a one-time warning) when no verified data is available.

    Built once per process. Never touches the network. ValueError for any other name.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown encoding {name!r}; expected one of {sorted(_SPECS)}")
    spec = _SPECS[name]
    ranks = _ranks_from_quicktok(spec) or _ranks_from_tiktoken_cache(spec)
    if ranks is None:
        warnings.warn(f"no verified {name} data (quicktok-v1 data files missing or corrupt, and "
                      f"not in tiktoken's cache): token counts are approximated as "
                      f"ceil(chars / {CHARS_PER_TOKEN})", RuntimeWarning, stacklevel=2)
        return None
    return tiktoken.Encoding(name, pat_str=spec.pat_str, mergeable_ranks=ranks,
                             special_tokens=dict(spec.special_tokens))


def _approx_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _count(encoding: tiktoken.Encoding | None, text: str) -> int:
    """Tokens in `text`; special-token strings count as plain text (a prompt may contain them)."""
    if not text:
        return 0
    if encoding is None:
        return _approx_tokens(text)
    return len(encoding.encode_ordinary(text))


def count_tokens(text: str, model: str | None) -> int:
    """True token count of `text` for `model` (approximation ceil(chars/4) if no encoding)."""
    return _count(get_encoding(encoding_name_for_model(model)), text)


# --- reading request bodies -----------------------------------------------------------------

def _kind(url: str) -> str:
    for endpoint in (CHAT, COMPLETIONS, EMBEDDINGS):
        if url == endpoint or url.endswith(endpoint.removeprefix("/v1")):
            return endpoint
    raise ValueError(f"unsupported url {url!r}")


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
    if kind == EMBEDDINGS:
        return 0
    for key in ("max_completion_tokens", "max_tokens"):
        value = _positive_int(body.get(key))
        if value is not None:
            return value
    return DEFAULT_MAX_TOKENS[kind]


def _n(kind: str, body: dict) -> int:
    n = body.get("n", 1) if kind in (CHAT, COMPLETIONS) else 1
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def max_completion_tokens(url: str, body: dict) -> int:
    """Completion budget of the request: max tokens x n per prompt, summed; 0 for embeddings.
    Max tokens is max_completion_tokens, else max_tokens, else 16 (completions) / 0 (chat)."""
    kind, prompts = _prompts(url, body)
    return _max_tokens(kind, body) * _n(kind, body) * len(prompts)


def rate_limit_charge(url: str, body: dict) -> int:
    """The tokens the API's rate limiter charges for this request (and the simulator charges):
    sum over prompts of ceil(chars / 4) + max tokens x n; embeddings: ceil(chars / 4) per input,
    no completion part. A token-id prompt counts its length. Pure arithmetic, no tokenizer."""
    kind, prompts = _prompts(url, body)
    per_prompt = _max_tokens(kind, body) * _n(kind, body)
    return sum((_approx_tokens(p) if isinstance(p, str) else len(p)) + per_prompt
               for p in prompts)


def _chat_tokens(encoding: tiktoken.Encoding | None, messages: Iterable[dict]) -> int:
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE + _count(encoding, str(message.get("role") or ""))
        total += _count(encoding, _content_text(message.get("content")))
        name = message.get("name")
        if isinstance(name, str) and name:
            total += TOKENS_PER_NAME + _count(encoding, name)
    return total


def _true_tokens(encoding: tiktoken.Encoding | None, kind: str, body: dict,
                 prompt: str | list[int]) -> int:
    """True tokens of one prompt (see `prompt_tokens`)."""
    if kind == CHAT:
        return _chat_tokens(encoding, _messages(body))
    return _count(encoding, prompt) if isinstance(prompt, str) else len(prompt)


def prompt_tokens(url: str, body: dict) -> int:
    """True prompt tokens of the request via tiktoken, summed over prompts. Chat adds the
    cookbook overhead: 3 per message (+ the role's tokens, + 1 and the name's tokens for a
    `name`) and 3 for the reply. Approximate (ceil(chars/4)) only if no encoding is available."""
    kind, prompts = _prompts(url, body)
    encoding = get_encoding(encoding_name_for_model(body.get("model")))
    return sum(_true_tokens(encoding, kind, body, p) for p in prompts)


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


def context_overflow(url: str, body: dict) -> str | None:
    """A message if a prompt plus its completion budget (max tokens, one completion) cannot fit the
    model's context window, else None. Embeddings: each input against the per-input window.

    Returns None when the model's window is unknown or no verified encoding is available: a job
    is failed only when it surely cannot fit. Cheap for small prompts: tiktoken runs only when
    the UTF-8 byte length (an upper bound on tokens) plus the budget exceeds the window.
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
    encoding = get_encoding(encoding_name_for_model(model))
    if encoding is None:
        return None
    for index, prompt in suspects:
        tokens = _true_tokens(encoding, kind, body, prompt)
        if tokens + budget > window:
            where = f"input {index}" if len(prompts) > 1 else "prompt"
            if kind == EMBEDDINGS:
                return f"{where} is {tokens} tokens, over the {window}-token input limit of {model}"
            return (f"{where} is {tokens} tokens + {budget} max completion tokens = "
                    f"{tokens + budget}, over the {window}-token context window of {model}")
    return None
