"""runner.tokenizer: tiktoken's encodings built offline, verified, never downloaded."""
from __future__ import annotations

import base64
import functools
import hashlib
import struct

import pytest
import quicktok
import tiktoken
import tiktoken.load
import tiktoken.registry

from jobs import tokens
from runner import tokenizer
from runner.tokenizer import get_encoding, token_counter

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "naïve café — Grüße aus Köln; ¿qué tal? 日本語のテキストです。 Привет мир! 🎉🚀 مرحبا",
    "def f(x):\n    return x ** 2  # 12345678901234\n\n\n   trailing   ",
    "I'm sure they'll've DONE it; we'd SAY IT'S fine\r\n\t\u00a0",
]
CHAT = "/v1/chat/completions"


def count_tokens(text, model):
    return tokens.count_tokens(text, model, token_counter)


def context_overflow(url, body):
    return tokens.context_overflow(url, body, token_counter)


@pytest.fixture
def fresh_encodings(monkeypatch):
    """Each test that swaps the data sources builds encodings from scratch, through a cache of its
    own (`tokenizer.get_encoding` and `token_counter` use it), and leaves no trace: the encodings
    the process built stay cached for the other tests."""
    monkeypatch.setattr(tokenizer, "get_encoding", functools.cache(get_encoding.__wrapped__))


@functools.cache
def _shipped(name: str) -> tuple[bytes, dict[bytes, int]]:
    """quicktok's vocab file of encoding `name`, and its ranks, read once for this module (callers
    copy the ranks before changing them)."""
    spec = tokenizer._SPECS[name]
    data = (tokenizer._quicktok_data_dir() / spec.vocab_file).read_bytes()
    return data, tokenizer._read_quicktok_vocab(data)


def shipped_ranks(name: str) -> dict[bytes, int]:
    """The ranks of quicktok's vocab file of encoding `name`: a copy of its own."""
    return dict(_shipped(name)[1])


def _forbid_downloads(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tiktoken tried to load/download an encoding file")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_network)
    monkeypatch.setattr(tiktoken.load, "load_tiktoken_bpe", no_network)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    monkeypatch.setattr(tiktoken.registry, "get_encoding", no_network)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_offline_encoding_matches_quicktok_without_any_download(name, monkeypatch, fresh_encodings):
    _forbid_downloads(monkeypatch)
    encoding = tokenizer.get_encoding(name)
    assert isinstance(encoding, tiktoken.Encoding) and encoding.name == name
    reference = quicktok.get_encoding(name)
    for text in SAMPLES:
        assert encoding.encode_ordinary(text) == list(reference.encode(text))
        assert encoding.decode(encoding.encode_ordinary(text)) == text
    assert tokenizer.get_encoding(name) is encoding  # built once per process


def test_special_tokens_match_tiktoken_ext():
    assert get_encoding("o200k_base")._special_tokens == {
        "<|endoftext|>": 199999, "<|endofprompt|>": 200018}
    assert get_encoding("cl100k_base")._special_tokens == {
        "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}


def test_shipped_data_has_tiktokens_sha256():
    # and the file's own pinned sha256, which spares a run this re-serialisation, is that file's
    for name, spec in tokenizer._SPECS.items():
        data, ranks = _shipped(name)  # tokenizer._read_quicktok_vocab(the file's bytes)
        assert tokenizer._tiktoken_file_sha256(ranks) == spec.sha256
        assert hashlib.sha256(data).hexdigest() == spec.vocab_sha256


def test_a_vocab_file_laid_out_otherwise_is_checked_against_tiktokens_sha256(tmp_path, monkeypatch):
    # another quicktok release: not the pinned file, the same ranks: accepted after the full check
    spec = tokenizer._SPECS["cl100k_base"]
    ranks = shipped_ranks("cl100k_base")
    blob = struct.pack("<I", len(ranks)) + b"".join(
        struct.pack("<H", len(t)) + t + struct.pack("<I", r) for t, r in reversed(ranks.items()))
    (tmp_path / spec.vocab_file).write_bytes(blob)
    monkeypatch.setattr(tokenizer, "_quicktok_data_dir", lambda: tmp_path)
    checked, full_check = [], tokenizer._tiktoken_file_sha256
    monkeypatch.setattr(tokenizer, "_tiktoken_file_sha256",
                        lambda r: checked.append(len(r)) or full_check(r))
    assert tokenizer._ranks_from_quicktok(spec) == ranks
    assert checked == [len(ranks)]


def test_tampered_shipped_vocab_is_refused(tmp_path, monkeypatch):
    spec = tokenizer._SPECS["cl100k_base"]
    ranks = shipped_ranks("cl100k_base")
    ranks[b"hello"], ranks[b"world"] = ranks[b"world"], ranks[b"hello"]
    blob = struct.pack("<I", len(ranks)) + b"".join(
        struct.pack("<H", len(t)) + t + struct.pack("<I", r) for t, r in ranks.items())
    (tmp_path / spec.vocab_file).write_bytes(blob)
    monkeypatch.setattr(tokenizer, "_quicktok_data_dir", lambda: tmp_path)
    assert tokenizer._read_quicktok_vocab(blob) == ranks  # well-formed ...
    assert tokenizer._ranks_from_quicktok(spec) is None  # ... but not what tiktoken expects


def _tiktoken_file(ranks: dict[bytes, int]) -> bytes:
    return b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n"
                    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))


def test_corrupt_data_falls_back_to_tiktokens_cache(tmp_path, monkeypatch, fresh_encodings):
    _forbid_downloads(monkeypatch)
    spec = tokenizer._SPECS["cl100k_base"]
    real = shipped_ranks("cl100k_base")
    bad_dir = tmp_path / "quicktok-data"
    bad_dir.mkdir()
    tampered = dict(real)
    tampered[b"hello"] = 5  # one wrong rank: the sha256 check must refuse this copy
    body = _tiktoken_file(tampered)
    (bad_dir / spec.vocab_file).write_bytes(b"\x00\x00")  # truncated binary file
    monkeypatch.setattr(tokenizer, "_quicktok_data_dir", lambda: bad_dir)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache_file = cache / hashlib.sha1(spec.url.encode()).hexdigest()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    cache_file.write_bytes(body)  # wrong hash: refused too
    with pytest.warns(RuntimeWarning):
        assert tokenizer.get_encoding("cl100k_base") is None
    tokenizer.get_encoding.cache_clear()

    cache_file.write_bytes(_tiktoken_file(real))
    encoding = tokenizer.get_encoding("cl100k_base")
    assert encoding is not None
    assert encoding.encode_ordinary(SAMPLES[1]) == list(quicktok.get_encoding("cl100k_base").encode(SAMPLES[1]))


def test_without_data_counts_are_approximated_with_one_warning(tmp_path, monkeypatch,
                                                              fresh_encodings):
    _forbid_downloads(monkeypatch)
    monkeypatch.setattr(tokenizer, "_quicktok_data_dir", lambda: None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="approximated"):
        assert count_tokens("x" * 10, "gpt-4o") == 3  # ceil(10 / 4)
    assert count_tokens("日本語", "gpt-4o") == 1  # no second warning: get_encoding is cached
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 30_000}]}
    assert context_overflow(CHAT, body) is None  # never fail a job on a guess


def test_unknown_encoding_name_is_an_error():
    with pytest.raises(ValueError):
        get_encoding("p50k_base")
