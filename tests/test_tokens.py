"""jobs.tokens: the rate limiter's charge, true counts and context checks (with the engine's
counter, `runner.tokenizer.token_counter`)."""
from __future__ import annotations

import math

import pytest
import quicktok

from jobs import tokens
from jobs.tokens import (
    context_window, encoding_name_for_model, max_completion_tokens, prompt_texts,
    rate_limit_charge,
)
from runner import tokenizer
from runner.tokenizer import get_encoding, token_counter

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "naïve café — Grüße aus Köln; ¿qué tal? 日本語のテキストです。 Привет мир! 🎉🚀 مرحبا",
    "def f(x):\n    return x ** 2  # 12345678901234\n\n\n   trailing   ",
    "I'm sure they'll've DONE it; we'd SAY IT'S fine\r\n\t\u00a0",
]


def count_tokens(text, model):
    return tokens.count_tokens(text, model, token_counter)


def prompt_tokens(url, body):
    return tokens.prompt_tokens(url, body, token_counter)


def context_overflow(url, body):
    return tokens.context_overflow(url, body, token_counter)


@pytest.mark.parametrize("model, name", [
    ("gpt-4o", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"),
    ("gpt-4.1-nano", "o200k_base"), ("gpt-4.5-preview", "o200k_base"), ("gpt-5", "o200k_base"),
    ("gpt-5-mini", "o200k_base"), ("o1", "o200k_base"), ("o1-mini", "o200k_base"),
    ("o3-mini", "o200k_base"), ("o4-mini-2025-04-16", "o200k_base"),
    ("chatgpt-4o-latest", "o200k_base"), ("GPT-4O", "o200k_base"),
    ("openai/gpt-4o", "o200k_base"), ("ft:gpt-4o-mini-2024-07-18:org::abc", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-4-turbo", "cl100k_base"), ("gpt-4-0613", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"), ("gpt-3.5-turbo-instruct", "cl100k_base"),
    ("text-embedding-3-small", "cl100k_base"), ("text-embedding-ada-002", "cl100k_base"),
    ("ft:gpt-3.5-turbo:org::x", "cl100k_base"),
    ("my-azure-deployment", "o200k_base"), (None, "o200k_base"), ("", "o200k_base"),
])
def test_model_to_encoding(model, name):
    assert encoding_name_for_model(model) == name


@pytest.mark.parametrize("model, window", [
    ("gpt-4o", 128_000), ("gpt-4o-mini", 128_000), ("gpt-4o-2024-08-06", 128_000),
    ("gpt-4.1", 1_047_576), ("gpt-4.1-mini", 1_047_576), ("gpt-5", 400_000),
    ("gpt-5-nano", 400_000), ("o1", 200_000), ("o3", 200_000), ("o4-mini", 200_000),
    ("gpt-4-turbo", 128_000), ("gpt-4-turbo-2024-04-09", 128_000), ("gpt-4", 8_192),
    ("gpt-4-0613", 8_192), ("gpt-3.5-turbo", 16_385), ("gpt-3.5-turbo-instruct", 4_096),
    ("davinci-002", 16_384), ("babbage-002", 16_384), ("text-embedding-3-large", 8_192),
    ("gpt-4.7-future", None), ("my-deployment", None), (None, None),
])
def test_context_window_longest_prefix(model, window):
    assert context_window(model) == window


def chat(*contents, **extra):
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": c} for c in contents],
            **extra}


@pytest.mark.parametrize("url, body, charge", [
    (CHAT, chat("abcd" * 5), 5),  # 20 chars, no max tokens: chat's default budget is 0
    (CHAT, chat("abcde"), 2),  # ceil(5 / 4)
    (CHAT, chat("abcd", "abcd", max_tokens=10), 12),  # contents concatenated: one prompt
    (CHAT, chat("abcd", max_tokens=10, n=3), 31),
    (CHAT, chat("abcd", max_completion_tokens=7, n=2), 15),
    (CHAT, {"model": "gpt-4o", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "abcd"},
                                     {"type": "image_url", "image_url": {"url": "http://x"}},
                                     {"type": "text", "text": "efgh"}]}]}, 2),
    (CHAT, {"model": "gpt-4o", "messages": [{"role": "assistant", "content": None}]}, 0),
    (COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": "abcdefgh"}, 2 + 16),
    (COMPLETIONS, {"model": "m", "prompt": "abcdefgh", "max_tokens": 100}, 102),
    (COMPLETIONS, {"model": "m", "prompt": ["abcd", "abcdefghi"], "max_tokens": 10}, 1 + 10 + 3 + 10),
    (COMPLETIONS, {"model": "m", "prompt": ["abcd", "abcd"], "max_tokens": 10, "n": 2}, 2 * (1 + 20)),
    (COMPLETIONS, {"model": "m", "prompt": [1, 2, 3], "max_tokens": 1}, 3 + 1),  # token ids
    (EMBEDDINGS, {"model": "text-embedding-3-small", "input": "abcdefghi"}, 3),
    (EMBEDDINGS, {"model": "text-embedding-3-small", "input": ["abcd", "abcde", "日本語"],
                  "max_tokens": 99}, 1 + 2 + 1),
])
def test_rate_limit_charge_table(url, body, charge):
    assert rate_limit_charge(url, body) == charge


@pytest.mark.parametrize("url, body, budget", [
    (CHAT, chat("x"), 0), (CHAT, chat("x", max_tokens=50, n=2), 100),
    (COMPLETIONS, {"prompt": ["a", "b"]}, 32), (COMPLETIONS, {"prompt": "a", "max_tokens": 5}, 5),
    (EMBEDDINGS, {"input": ["a", "b"]}, 0),
])
def test_max_completion_tokens(url, body, budget):
    assert max_completion_tokens(url, body) == budget


@pytest.mark.parametrize("url, body, texts", [
    (CHAT, chat("ab", "cd"), ["abcd"]),
    (COMPLETIONS, {"prompt": "p"}, ["p"]),
    (COMPLETIONS, {"prompt": ["p", "q"]}, ["p", "q"]),
    (EMBEDDINGS, {"input": "e"}, ["e"]),
    (EMBEDDINGS, {"input": ["e", "f"]}, ["e", "f"]),
])
def test_prompt_texts(url, body, texts):
    assert prompt_texts(url, body) == texts


def test_unsupported_url_is_an_error():
    with pytest.raises(ValueError):
        rate_limit_charge("/v1/audio/speech", {})


def test_prompt_tokens_counts_chat_overhead_like_the_cookbook():
    encoding = quicktok.get_encoding("o200k_base")
    body = {"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello world", "name": "bob"}]}
    expected = (3 + len(encoding.encode("system")) + len(encoding.encode("You are terse."))
                + 3 + len(encoding.encode("user")) + len(encoding.encode("hello world"))
                + 1 + len(encoding.encode("bob")) + 3)
    assert prompt_tokens(CHAT, body) == expected


def test_prompt_tokens_sums_prompts_with_the_models_encoding():
    text = SAMPLES[1]
    cl100k = len(quicktok.get_encoding("cl100k_base").encode(text))
    o200k = len(quicktok.get_encoding("o200k_base").encode(text))
    assert cl100k != o200k
    assert prompt_tokens(COMPLETIONS, {"model": "gpt-3.5-turbo-instruct",
                                       "prompt": [text, text]}) == 2 * cl100k
    assert prompt_tokens(EMBEDDINGS, {"model": "gpt-4o", "input": text}) == o200k
    assert count_tokens(text, "gpt-4") == cl100k


def test_special_token_text_counts_as_plain_text():
    assert count_tokens("<|endoftext|>", "gpt-4o") > 1


def test_non_ascii_charge_counts_characters_not_bytes():
    text = "é" * 8 + "🎉" * 4  # 12 characters, 32 UTF-8 bytes
    assert rate_limit_charge(EMBEDDINGS, {"model": "text-embedding-3-small", "input": text}) == 3


def test_context_overflow_found():
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello " * 9000}]}
    message = context_overflow(CHAT, body)
    assert message is not None and "8192" in message and "gpt-4" in message


def test_context_overflow_counts_the_completion_budget():
    prompt = "hello " * 4000  # ~4000 tokens
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "max_tokens": 50}
    assert context_overflow(COMPLETIONS, body) is None
    assert "max completion tokens" in context_overflow(COMPLETIONS, {**body, "max_tokens": 500})


def test_context_overflow_names_the_embedding_input():
    body = {"model": "text-embedding-3-small", "input": ["short", "word " * 9000]}
    assert context_overflow(EMBEDDINGS, body).startswith("input 1 is")


def test_context_overflow_unknown_model_is_not_checked():
    assert context_overflow(CHAT, {"model": "my-deployment",
                                   "messages": [{"role": "user", "content": "x " * 10**6}]}) is None


class _CountingEncoding:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def encode_ordinary(self, text):
        self.calls += 1
        return self.inner.encode_ordinary(text)


@pytest.fixture
def counting(monkeypatch):
    wrapped = {name: _CountingEncoding(get_encoding(name)) for name in ("o200k_base", "cl100k_base")}
    monkeypatch.setattr(tokenizer, "get_encoding", lambda name: wrapped[name])
    return wrapped


def test_fast_path_skips_tiktoken_for_short_prompts(counting):
    for i in range(2000):
        assert context_overflow(CHAT, chat(f"job {i}: say hi", max_tokens=100)) is None
        assert context_overflow(COMPLETIONS, {"model": "gpt-3.5-turbo-instruct",
                                              "prompt": ["short", "prompts"]}) is None
        assert context_overflow(EMBEDDINGS, {"model": "text-embedding-3-small",
                                             "input": "tiny"}) is None
    assert sum(e.calls for e in counting.values()) == 0


def test_tiktoken_runs_only_when_bytes_could_overflow(counting):
    text = "日本語のテキスト" * 500  # 4000 characters, 12000 UTF-8 bytes > 8192, far fewer tokens
    assert context_overflow(COMPLETIONS, {"model": "gpt-4", "prompt": text, "max_tokens": 0}) is None
    assert counting["cl100k_base"].calls == 1


def test_charges_are_cheap_for_many_tiny_jobs(monkeypatch):
    """Cheap: the charge is arithmetic on characters and never loads or runs a tokenizer (its
    speed is measured in bench/throughput.py, not here)."""
    def no_tokenizer(name):
        raise AssertionError(f"the rate-limit charge asked for the {name} tokenizer")

    import runner.tokenizer
    monkeypatch.setattr(runner.tokenizer, "get_encoding", no_tokenizer)
    bodies = [chat(f"job {i}", max_tokens=10) for i in range(2_000)]
    total = sum(rate_limit_charge(CHAT, b) for b in bodies)
    assert total == sum(math.ceil(len(f"job {i}") / 4) + 10 for i in range(2_000))
