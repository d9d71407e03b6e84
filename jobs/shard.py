"""Shards: `--shard K/N` runs only the jobs whose custom_id falls in shard K of N, so N processes on
any machines split one job file between them with no coordination.

The shard of a custom_id is a stable hash, the same on every machine and Python version (BLAKE2b of
its UTF-8 bytes, not `hash()`, which is salted per process). A duplicate line goes where its
custom_id goes; a bad line with no readable custom_id is reported by shard 1 only.
"""
from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Shard", "parse_shard", "shard_of"]

T = TypeVar("T")


def shard_of(custom_id: str, count: int) -> int:
    """The shard (1..count) of `custom_id`."""
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (1 <= index <= count), checked when built."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and isinstance(self.index, int)
                and self.count >= 1 and 1 <= self.index <= self.count):
            raise ValueError(f"a shard is K/N with 1 <= K <= N, got {self.index}/{self.count}")

    def holds(self, custom_id: str | None) -> bool:
        """Whether an input line of `custom_id` (None: none readable) belongs to this shard."""
        if custom_id is None:
            return self.index == 1
        return shard_of(custom_id, self.count) == self.index

    async def only(self, items: AsyncIterable[T]) -> AsyncIterator[T]:
        """The items (jobs, bad lines, duplicates) of this shard, in order."""
        async for item in items:
            if self.holds(getattr(item, "custom_id", None)):
                yield item

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` as a `Shard`; ValueError naming what is wrong."""
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        return Shard(int(index), int(count))
    except ValueError as exc:
        detail = f": {exc}" if str(exc) else ""
        raise ValueError(f"--shard takes K/N (such as 2/3), got {text!r}{detail}") from None
