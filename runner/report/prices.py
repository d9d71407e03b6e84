"""What tokens cost: the price table shipped with runner (`prices.toml`), optionally overridden.

The table is data, dated and sourced in the file itself; it goes out of date, so users may pass
their own file of the same format (`--prices FILE`) whose entries replace the shipped ones.
A model is priced only when the table knows it: by its full name, else by its name without a date
suffix (`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`). Anything else is unknown (None), never guessed
from a similar name: `gpt-5-pro` is not `gpt-5`, a fine-tune is not its base model.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jobs.models import model_name, undated

PER_TOKENS = 1_000_000  # prices are per this many tokens
PACKAGED = "prices.toml"

_FIELDS = {"input", "cached_input", "output"}


class PriceTableError(ValueError):
    """A price file is unreadable, not TOML, or not in the documented format; names file and key."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens. `cached_input` is None when the source lists no cached price."""

    input: float
    output: float = 0.0
    cached_input: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by model name (lower case), and where they come from."""

    models: Mapping[str, Price]
    source: str = ""
    as_of: str = ""
    files: tuple[str, ...] = ()
    images: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: MappingProxyType({}))
    """model -> "SIZE/QUALITY" -> USD per image."""
    basis: str = "list prices"
    """What the prices are, as the summary names them ("Batch API prices (0.5 x list)")."""

    def image_price(self, model: str, size: str | None, quality: str | None) -> float | None:
        """USD for one image of `model` at `size` and `quality` (the model's defaults when None:
        1024x1024; standard, or for gpt-image-1 the dearest quality, an upper bound for `auto`);
        None when the table has no such entry."""
        table = self.images.get(model_name(model)) or self.images.get(undated(model_name(model)))
        if not table:
            return None
        size = size if size and size != "auto" else "1024x1024"
        if quality and quality != "auto":
            return table.get(f"{size}/{quality}")
        prices = [v for k, v in table.items() if k.startswith(size + "/")]
        return max(prices) if prices else None

    def lookup(self, model: str) -> Price | None:
        """The price of `model`: its exact entry, else the entry of its name without a date
        suffix; None when neither exists. A provider prefix (`openai/gpt-4o`) is ignored."""
        name = model_name(model)
        if name in self.models:
            return self.models[name]
        base = undated(name)
        return self.models.get(base) if base != name else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for these token counts at list price (no cache hits); None for an unknown model."""
        price = self.lookup(model)
        if price is None:
            return None
        return (prompt_tokens * price.input + completion_tokens * price.output) / PER_TOKENS

    def updated(self, other: PriceTable) -> PriceTable:
        """This table with `other`'s entries added, replacing same-named ones (a user override)."""
        return PriceTable(models=MappingProxyType({**self.models, **other.models}),
                          images=MappingProxyType({**self.images, **other.images}),
                          source="; ".join(s for s in (self.source, other.source) if s),
                          as_of=other.as_of or self.as_of,
                          files=self.files + other.files, basis=self.basis)


def parse_prices(text: str, origin: str) -> PriceTable:
    """A price table from TOML text; PriceTableError naming `origin` and the key when malformed."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PriceTableError(f"{origin}: not valid TOML: {e}") from None
    unknown = set(data) - {"meta", "models", "images"}
    if unknown:
        raise PriceTableError(f"{origin}: unknown table {sorted(unknown)[0]!r}; "
                              f"expected [meta] and [models.NAME]")
    meta = data.get("meta", {})
    models = data.get("models", {})
    if not isinstance(meta, dict) or not isinstance(models, dict):
        raise PriceTableError(f"{origin}: [meta] and [models] must be tables")
    prices = {name.lower(): _price(origin, name, entry) for name, entry in models.items()}
    images = data.get("images", {})
    for name, entry in images.items():
        if not isinstance(entry, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for v in entry.values()):
            raise PriceTableError(f"{origin}: images.{name} must map \"SIZE/QUALITY\" to USD per image")
    return PriceTable(models=MappingProxyType(prices), source=str(meta.get("source", "")),
                      images=MappingProxyType({k.lower(): MappingProxyType(dict(v))
                                               for k, v in images.items()}),
                      as_of=str(meta.get("as_of", "")), files=(origin,))


def _price(origin: str, name: str, entry: Any) -> Price:
    where = f"{origin}: models.{name}"
    if not isinstance(entry, dict):
        raise PriceTableError(f"{where} must be a table with input = ... and output = ...")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise PriceTableError(f"{where}: unknown key {sorted(unknown)[0]!r}; "
                              f"expected {', '.join(sorted(_FIELDS))}")
    if "input" not in entry:
        raise PriceTableError(f"{where}: missing input (USD per 1M input tokens)")
    values: dict[str, float] = {}
    for key, value in entry.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PriceTableError(f"{where}.{key} must be a number, got {value!r}")
        values[key] = float(value)
    try:
        return Price(**values)
    except ValueError as e:
        raise PriceTableError(f"{where}: {e}") from None


@functools.cache
def packaged_prices() -> PriceTable:
    """The table shipped in the runner package (read once per process)."""
    text = importlib.resources.files("runner.report").joinpath(PACKAGED).read_text(encoding="utf-8")
    return parse_prices(text, f"runner/{PACKAGED}")


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped table, with the entries of the user's `override` file (if any) winning."""
    table = packaged_prices()
    if override is None:
        return table
    try:
        text = override.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PriceTableError(f"cannot read price file {override}: {e}") from None
    return table.updated(parse_prices(text, str(override)))


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD at the shipped list prices; None for a model the table does not know."""
    return packaged_prices().cost(model, prompt_tokens, completion_tokens)


# OpenAI's Batch API costs 50% of the Standard tier's list price for the models it serves
# (https://platform.openai.com/docs/guides/batch: "50% lower costs"; Azure global batch: "50% less
# cost than global standard"). The shipped price table is the Standard tier's.
BATCH_PRICE_FACTOR = 0.5


def batch_price_table(prices: PriceTable) -> PriceTable:
    """`prices` at the Batch API's discount (`BATCH_PRICE_FACTOR`), per token and per image."""
    models = {name: dataclasses.replace(p, **{f.name: getattr(p, f.name) * BATCH_PRICE_FACTOR
                                              for f in dataclasses.fields(p)
                                              if isinstance(getattr(p, f.name), (int, float))})
              for name, p in prices.models.items()}
    images = {name: MappingProxyType({kind: usd * BATCH_PRICE_FACTOR for kind, usd in table.items()})
              for name, table in prices.images.items()}  # per image (dall-e; gpt-image-1's equivalents)
    return dataclasses.replace(prices, models=MappingProxyType(models),
                               images=MappingProxyType(images),
                               source=f"{prices.source} x {BATCH_PRICE_FACTOR:g} (Batch API)",
                               basis=f"Batch API prices ({BATCH_PRICE_FACTOR:g} x list)")
