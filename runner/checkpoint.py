"""The checkpoint: the output file itself, read on start and appended to as results arrive.

Durability contract: every result line is handed to the OS with one `write()` the moment it is
known, so a killed process (even SIGKILL) loses nothing it wrote; the file is fsync'd at least every
`FSYNC_INTERVAL_S`, so a power cut or kernel crash loses at most the lines of that last interval,
and a lost line only means its job runs again on resume. A line torn by a crash (no final newline)
is cut off when the file is next opened.

Only one run may append to an output at a time: `RunLock` holds an OS lock (flock) on
`OUTPUT.lock`, released by the kernel however the process ends.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiofiles.os
import orjson

from jobs.results import OutputState

FSYNC_INTERVAL_S = 1.0  # at most this much of the newest results is at risk from a power cut
READ_CHUNK = 1 << 20


class CheckpointError(Exception):
    """The output cannot serve as a checkpoint (locked by another run, unreadable, a directory)."""


@dataclass(slots=True)
class LoadReport:
    """What reading an existing output found."""

    lines: int = 0
    torn_bytes: int = 0
    bad_lines: list[int] = field(default_factory=list)


class RunLock:
    """An exclusive OS lock on `<output>.lock`; a second run on the same output is refused."""

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(
                f"{self.path.with_suffix('')} is being written by another run (pid {holder}, "
                f"lock {self.path}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def load(path: Path, state: OutputState) -> LoadReport:
    """Read an existing output into `state`, cutting off a torn last line. A missing file is empty.

    Lines that are not JSON objects (hand edits, disk corruption) are reported by number and skipped;
    their jobs run again.
    """
    report = LoadReport()
    if not path.exists():
        return report
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not an output file")
    good_end = 0  # offset just past the last newline
    with open(path, "rb") as f:
        tail = b""
        offset = 0
        while chunk := f.read(READ_CHUNK):
            data = tail + chunk
            start = 0
            while (nl := data.find(b"\n", start)) != -1:
                report.lines += 1
                _account(data[start:nl], report, state)
                start = nl + 1
            good_end = offset + len(chunk) - (len(data) - start)
            tail = data[start:]
            offset += len(chunk)
    if tail:
        report.torn_bytes = len(tail)
        with open(path, "r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return report


def _account(raw: bytes, report: LoadReport, state: OutputState) -> None:
    if not raw.strip():
        return
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        report.bad_lines.append(report.lines)
        return
    state.add(record)


class Checkpoint:
    """Appends result lines to the output; `sync()` makes them durable, `run_syncer()` does it often."""

    def __init__(self, path: Path, *, fsync: Callable[[int], Any] = os.fsync,
                 secrets: tuple[str, ...] = ()) -> None:
        self.path = path
        self._fsync = fsync
        # an API key must never land in a result line, even if a server echoes it back
        self._secrets = tuple(s.encode() for s in secrets if len(s) >= 8)
        self._fd: int | None = None
        self._dirty = False
        self.written = 0

    def open(self) -> None:
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:  # make the new file's directory entry durable too
            dir_fd = os.open(self.path.parent if str(self.path.parent) else ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def append(self, record: dict[str, Any]) -> None:
        """Hand one result line to the OS at once (one write: whole, or not at all, on a kill)."""
        assert self._fd is not None, "Checkpoint.open() first"
        data = orjson.dumps(record) + b"\n"
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, b"[REDACTED]")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._dirty = True
        self.written += 1

    async def sync(self) -> None:
        """fsync off the event loop (aiofiles runs it in a worker thread)."""
        if self._fd is not None and self._dirty:
            self._dirty = False
            await aiofiles.os.wrap(self._fsync)(self._fd)

    async def run_syncer(self, interval: float = FSYNC_INTERVAL_S) -> None:
        """Sync every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.sync()

    def close(self) -> None:
        if self._fd is not None:
            if self._dirty:
                self._fsync(self._fd)
            os.close(self._fd)
            self._fd = None
