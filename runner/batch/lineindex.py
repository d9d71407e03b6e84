"""A batch's JSONL files by custom_id, read from disk when asked.

A batch's output file can be far larger than its input (long completions, images as base64), and
collecting one must not hold it in memory: `LineIndex` keeps only where each line is (file,
offset, length) and parses a line when it is asked for. Lines that are not JSON objects with a
string custom_id are skipped; a custom_id seen twice is its last line's.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

__all__ = ["LineIndex"]


class LineIndex:
    """The lines of `paths` (missing files skipped) by custom_id. Blocking: build it in a thread
    for large files. Close it (or use ``with``) to close the files."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self._files: list[BinaryIO] = []
        self._at: dict[str, tuple[int, int, int]] = {}
        try:
            for path in paths:
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    continue
                self._files.append(f)
                self._index(len(self._files) - 1, f)
        except BaseException:
            self.close()
            raise

    def _index(self, n: int, f: BinaryIO) -> None:
        offset = 0
        for raw in f:
            custom_id = _custom_id(raw)
            if custom_id is not None:
                self._at[custom_id] = (n, offset, len(raw))
            offset += len(raw)

    def get(self, custom_id: str) -> dict[str, Any] | None:
        """The line of `custom_id`, parsed; None when there is none."""
        at = self._at.get(custom_id)
        if at is None:
            return None
        n, offset, length = at
        f = self._files[n]
        f.seek(offset)
        return orjson.loads(f.read(length))

    def __len__(self) -> int:
        return len(self._at)

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

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
