"""A batch's JSONL files by custom_id, read from disk when asked.

A batch's output file can be far larger than its input (long completions, images as base64), and
collecting one must not hold it in memory: `LineIndex` keeps only where each line is, in a
`jobs.idtable.IdTable` (8 bytes a slot, every match confirmed by reading the line's custom_id
back), and parses a line when it is asked for. Lines that are not JSON objects with a string
custom_id are skipped; a custom_id seen twice is its last line's.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from jobs.idtable import IdTable, default_digest

__all__ = ["LineIndex"]


class LineIndex:
    """The lines of `paths` (missing files skipped) by custom_id. Blocking: build it in a thread
    for large files. Close it (or use ``with``) to close the files."""

    def __init__(self, paths: Iterable[Path], *,
                 digest: Callable[[str], int] = default_digest) -> None:
        self._files: list[BinaryIO] = []
        self._bases: list[int] = []  # a line's position: its file's base + its offset there
        self._at = IdTable(self._recall, digest=digest)
        try:
            base = 0
            for path in paths:
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    continue
                self._files.append(f)
                self._bases.append(base)
                with open(path, "rb") as lines:  # `f` is for reading lines back meanwhile
                    base = self._index(base, lines)
        except BaseException:
            self.close()
            raise

    def _index(self, base: int, f: BinaryIO) -> int:
        """Index the lines of `f`, its positions from `base`; returns the next file's base."""
        offset = base
        for raw in f:
            custom_id = _custom_id(raw)
            if custom_id is not None:
                self._at.put(custom_id, offset)
            offset += len(raw)
        return offset + 1

    def _line(self, position: int) -> bytes:
        n = bisect_right(self._bases, position) - 1
        f = self._files[n]
        f.seek(position - self._bases[n])
        return f.readline()

    def _recall(self, position: int) -> str | None:
        return _custom_id(self._line(position))

    def get(self, custom_id: str) -> dict[str, Any] | None:
        """The line of `custom_id`, parsed; None when there is none."""
        position = self._at.find(custom_id)
        return None if position < 0 else orjson.loads(self._line(position))

    def __len__(self) -> int:
        return len(self._at)

    def close(self) -> None:
        """Close the files and let go of the table (it reads ids back through this object: the
        cycle would keep it until a full collection)."""
        for f in self._files:
            f.close()
        self._files = []
        self._at = IdTable(self._recall)

    def __enter__(self) -> LineIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _custom_id(raw: bytes) -> str | None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    custom_id = line.get("custom_id") if isinstance(line, dict) else None
    return custom_id if isinstance(custom_id, str) else None
