"""Loading tiktoken encodings offline, and the token counter the engine hands to `jobs.tokens`.

tiktoken would download its BPE files on first use; instead we read the copies shipped as data
files by the `quicktok-v1` dependency (`quicktok/data/{o200k,cl100k}.vocab`: little-endian u32
count, then per entry u16 length, token bytes, u32 rank) and check them before use. A file whose own
sha256 is the one pinned here (quicktok-v1 0.4.0's; tests/test_tokenizer.py re-serialises it in
tiktoken's format against tiktoken's sha256) is used as read; any other is re-serialised and checked
against tiktoken's own sha256, which costs as much again as reading it. If those files are missing
or wrong, a file already in tiktoken's cache (`TIKTOKEN_CACHE_DIR`, `DATA_GYM_CACHE_DIR`, or
`<tmp>/data-gym-cache`) is used, verified the same way. Otherwise the encoding is None, a warning is
issued once per encoding, and counts fall back to the documented approximation ceil(chars / 4).
Nothing here ever downloads.

This is the I/O half of token counting (files, environment, warnings); the arithmetic is pure, in
`jobs.tokens`, which takes `token_counter` as its `TokenCounter`.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import os
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.tokens import (CHARS_PER_TOKEN, CL100K_BASE, O200K_BASE, CountTokens,
                         encoding_name_for_model)

if TYPE_CHECKING:
    import tiktoken

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    """What tiktoken_ext/openai_public.py declares for one encoding, and where our copy lives."""

    vocab_file: str  # in quicktok/data/
    vocab_sha256: str  # of that file as quicktok-v1 0.4.0 ships it
    url: str  # tiktoken's download URL; names its cache file
    sha256: str  # of the tiktoken-format file
    pat_str: str
    special_tokens: dict[str, int]


_SPECS = {
    O200K_BASE: _EncodingSpec(
        vocab_file="o200k.vocab",
        vocab_sha256="6b17521f79788c7ace48fc75f6edde125637a90b0018427e68f28d051b2ac1fe",
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
        vocab_sha256="4a945d497c213acde921bc8d69bc8dad9c603ea97c50c014e04ad0fadc09eecb",
        url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        special_tokens={_ENDOFTEXT: 100257, _FIM_PREFIX: 100258, _FIM_MIDDLE: 100259,
                        _FIM_SUFFIX: 100260, _ENDOFPROMPT: 100276},
    ),
}

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


_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from


def _read_quicktok_vocab(data: bytes) -> dict[bytes, int]:
    """Parse quicktok's binary vocab; ValueError if it is malformed."""
    try:
        (count,) = _U32(data, 0)
        ranks: dict[bytes, int] = {}
        offset = 4
        for _ in range(count):
            (length,) = _U16(data, offset)
            start = offset + 2
            offset = start + length
            (ranks[data[start:offset]],) = _U32(data, offset)
            offset += 4
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
        data = (data_dir / spec.vocab_file).read_bytes()
        ranks = _read_quicktok_vocab(data)
    except (OSError, ValueError):
        return None
    if hashlib.sha256(data).hexdigest() == spec.vocab_sha256:
        return ranks  # the very file whose ranks are tiktoken's (tests/test_tokenizer.py)
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

    Built once per process, on first use: tiktoken itself is imported then, so a run whose
    prompts all fit their context window by their byte length never loads it. Never touches the
    network. ValueError for any other name.
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
    import tiktoken
    return tiktoken.Encoding(name, pat_str=spec.pat_str, mergeable_ranks=ranks,
                             special_tokens=dict(spec.special_tokens))


def token_counter(model: str | None) -> CountTokens | None:
    """The engine's `jobs.tokens.TokenCounter`: the exact counter of `model`'s encoding (see
    `jobs.tokens.encoding_name_for_model`), or None when no verified data for it is available.

    Special-token strings in a text count as plain text (a prompt may contain them).
    """
    encoding = get_encoding(encoding_name_for_model(model))
    if encoding is None:
        return None
    return lambda text: len(encoding.encode_ordinary(text))
