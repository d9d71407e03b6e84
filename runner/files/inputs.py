"""Reading the input: raw lines of a file, a pipe or stdin, without blocking the event loop.

A regular file is read in large chunks by aiofiles (one thread hop per MiB). A pipe, FIFO or
terminal (stdin, `<(...)`) is read through the event loop itself, so whatever has arrived is
processed at once (a slow writer never holds jobs back) and a stop is never stuck behind a
blocked read.
"""
from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator

import aiofiles

from jobs.job import Job
from jobs.reader import BadLine, Duplicate, JobReader

CHUNK = 1 << 20  # one thread hop per MiB keeps aiofiles' per-call overhead negligible
STDIN = "-"


def _is_regular(path: str) -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode if path == STDIN else os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode)


async def _chunks(path: str) -> AsyncIterator[bytes]:
    if _is_regular(path):
        opened = (aiofiles.open(sys.stdin.fileno(), "rb", closefd=False) if path == STDIN
                  else aiofiles.open(path, "rb"))
        async with opened as f:
            while chunk := await f.read(CHUNK):
                yield chunk
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    if path == STDIN:
        pipe = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    else:  # O_NONBLOCK: opening a FIFO with no writer yet must not freeze the event loop (Linux)
        pipe = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)
    was_blocking = os.get_blocking(pipe.fileno())
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except BaseException:
        pipe.close()
        raise
    try:
        while chunk := await reader.read(CHUNK):
            yield chunk
    finally:
        transport.close()
        if path == STDIN:  # hand stdin back as we found it, for whatever reads it next
            os.set_blocking(sys.stdin.fileno(), was_blocking)
        pipe.close()


async def read_lines(path: str) -> AsyncIterator[bytes]:
    """Raw lines (newline stripped) of `path`, or of stdin for "-"; a last line needs no newline."""
    tail = b""
    async for chunk in _chunks(path):
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
    """Non-blank lines of a regular file, for progress totals; None for stdin, pipes and FIFOs
    (counting would consume them). Blocking: call it in a thread."""
    if path == STDIN or not _is_regular(path):
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
