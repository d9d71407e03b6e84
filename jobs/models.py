"""Model names: how a name written in a job (or a price file) is normalised and matched to a table.

Pure. Two matching rules, on purpose, for two kinds of table:

- `longest_prefix` (encodings, context windows): a family entry covers its variants, so an entry
  matches the whole name or the name up to a "-" ("gpt-4" covers "gpt-4-turbo", not "gpt-4.7");
  a fine-tune counts as its base model. A wrong guess only shifts a token count.
- exact, else without a date suffix (prices, `undated`): a similar name is never guessed, since
  "gpt-5-pro" is not priced like "gpt-5" and a fine-tune does not cost what its base costs.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

# A snapshot date at the end of a model name: -2024-07-18 (new style) or -0125 (old style),
# optionally followed by -preview (gpt-4-0125-preview).
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})(?:-preview)?$")


def model_name(model: str) -> str:
    """`model` lower-cased, without surrounding blanks or a provider prefix ("openai/gpt-4o")."""
    return model.strip().lower().rsplit("/", 1)[-1]


def base_model(model: str) -> str:
    """`model_name`, and for a fine-tune its base model
    ("ft:gpt-4o-mini-2024-07-18:org::id" -> "gpt-4o-mini-2024-07-18")."""
    name = model_name(model)
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name


def undated(name: str) -> str:
    """`name` without a snapshot date suffix ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini",
    "gpt-4-0125-preview" -> "gpt-4"); unchanged when it has none."""
    return _DATE_SUFFIX.sub("", name)


def longest_prefix(table: Mapping[str, T], model: str | None) -> T | None:
    """The entry of `table` for `model`'s `base_model`: of the keys equal to it or a prefix of it
    up to a "-", the longest; None when none matches or `model` is empty."""
    if not model:
        return None
    name = base_model(model)
    best = None
    for prefix in table:
        if (name == prefix or name.startswith(prefix + "-")) and (
                best is None or len(prefix) > len(best)):
            best = prefix
    return None if best is None else table[best]
