"""Reading the input: raw lines of a file (or stdin) in large chunks, off the event loop."""
from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiofiles

from jobs.job import Job
from jobs.reader import BadLine, Duplicate, JobReader

CHUNK = 1 << 20  # one thread hop per MiB keeps aiofiles' per-call overhead negligible
STDIN = "-"


async def read_lines(path: str) -> AsyncIterator[bytes]:
    """Raw lines (newline stripped) of `path`, or of stdin for "-"; a last line needs no newline."""
    if path == STDIN:
        opened = aiofiles.open(sys.stdin.fileno(), "rb", closefd=False)
    else:
        opened = aiofiles.open(path, "rb")
    async with opened as f:
        tail = b""
        while chunk := await f.read(CHUNK):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                yield line
        if tail:
            yield tail


async def read_items(path: str) -> AsyncIterator[Job | BadLine | Duplicate]:
    """The jobs, bad lines and duplicates of an input, in file order (blank lines skipped)."""
    reader = JobReader("<stdin>" if path == STDIN else path)
    async for raw in read_lines(path):
        item = reader.feed(raw)
        if item is not None:
            yield item


def count_lines(path: str) -> int | None:
    """Non-blank lines of a file, for progress totals; None for stdin."""
    if path == STDIN:
        return None
    count = 0
    with open(path, "rb") as f:
        tail = b""
        while chunk := f.read(CHUNK):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            count += sum(1 for line in lines if line.strip())
        if tail.strip():
            count += 1
    return count
