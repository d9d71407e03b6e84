"""The checkpoint: the output file itself, read on start and appended to as results arrive.

Durability contract: every result line is handed to the OS with one `write()` the moment it is
known, so a killed process (even SIGKILL) loses nothing it wrote; the file is fsync'd at least every
`FSYNC_INTERVAL_S`, so a power cut or kernel crash loses at most the lines of that last interval,
and a lost line only means its job runs again on resume. A line torn by a crash (no final newline)
is cut off when the file is next opened.

Only one run may append to an output at a time: `RunLock` holds an OS lock (flock) on
`OUTPUT.lock`, released by the kernel however the process ends. A run that ends removes the lock
file (while still holding it); one left by a killed run is harmless: the next run locks it.
"""
from __future__ import annotations

import asyncio
import bisect
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiofiles.os
import orjson

from jobs.results import OutputState, line_facts
from runner.errors import StopRunError
from runner.files import PRIVATE_FILE
from runner.files.atomic import fsync_dir
from runner.files.lines import LineSplitter, estimate_lines, sample
from runner.redact import redact_bytes

if TYPE_CHECKING:
    from runner.files.resume_index import Digest

FSYNC_INTERVAL_S = 1.0  # at most this much of the newest results is at risk from a power cut
READ_CHUNK = 1 << 20
SHORTEST_RESULT_LINE = 64  # bytes: a result line names its id, custom_id, response and error
RECALL_WINDOW = 1 << 14  # bytes read around a result line recalled, kept for the next ones


class CheckpointError(StopRunError):
    """The output cannot serve as a checkpoint: locked by another run, a directory, or it cannot
    be read, repaired, written or synced (the message says which)."""


MAX_BAD_SHOWN = 20  # line numbers of non-result lines kept for messages


@dataclass(slots=True)
class LoadReport:
    """What reading an output found."""

    exists: bool = False
    lines: int = 0
    torn_bytes: int = 0        # an unfinished last line: `load` cuts it off, `scan` ignores it
    bad_lines: int = 0         # lines that are not JSON objects: skipped, their jobs run again
    first_bad_lines: list[int] = field(default_factory=list)
    good_end: int = 0          # file offset just past the last complete line
    unterminated: bool = False  # the last line is a whole record missing only its newline


class RunLock:
    """An exclusive OS lock on `<output>.lock`; a second run on the same output is refused."""

    def __init__(self, output: Path) -> None:
        self.output = output
        real = output.resolve()  # a symlinked name must not get a lock of its own
        self.path = real.with_name(real.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise CheckpointError (held by another run, or no lock file can be
        made: a missing folder is named as such). A lock file removed by the run that held it,
        between our open and our lock, is opened anew: the lock is always on the file the name
        holds now, so two runs can never hold locks on two different files."""
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise CheckpointError(
                    f"{self.output} is being written by another run (pid {holder}, "
                    f"lock {self.path}); wait for it to finish") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # removed (or replaced) by the run that held it: lock the new one
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass  # the pid is a courtesy for the message above; the lock is what counts
        self._fd = fd

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise CheckpointError(f"the folder of the output does not exist: {self.path.parent} "
                                  f"(for {self.output}); create it first") from None
        except OSError as e:
            raise CheckpointError(f"cannot create the lock file {self.path}: {e.strerror}") from None

    def release(self) -> None:
        """Remove the lock file, then let go of the lock (a run waiting on the old file sees it
        gone and locks a new one)."""
        if self._fd is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.path)
            except OSError:
                pass  # already gone, or the folder is read-only now: a lock file is harmless
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class OutputFiles:
    """The lines of one or more outputs read back by position (`jobs.results.LineSource`): a
    position is a byte offset into the outputs laid end to end, in the order they were added
    (`end` is where the next one starts). A read is one `pread` of `RECALL_WINDOW` bytes,
    whose whole lines are kept for the reads that follow (a run asks for lines in about the order
    they were written); the files are opened at the first read, closed by `close`."""

    __slots__ = ("_paths", "_bases", "_fds", "end", "_window")

    def __init__(self) -> None:
        self._paths: list[Path] = []
        self._bases: list[int] = []
        self._fds: list[int | None] = []
        self.end = 0
        self._window: tuple[int, bytes] = (0, b"")  # (position, bytes) last read
    def add(self, path: Path) -> int:
        """Take `path` as the next output; returns its base (set `end` past it once read)."""
        self._paths.append(path)
        self._bases.append(self.end)
        self._fds.append(None)
        return self.end

    def read(self, position: int) -> bytes:
        start, window = self._window
        at = position - start
        if 0 <= at < len(window):
            end = window.find(b"\n", at)
            if end >= 0:
                return window[at:end]
        n = bisect.bisect_right(self._bases, position) - 1
        fd = self._fds[n]
        if fd is None:
            fd = self._fds[n] = os.open(self._paths[n], os.O_RDONLY)
        offset = position - self._bases[n]
        before = min(offset, RECALL_WINDOW // 2)  # lines are asked for out of order, a little
        data = os.pread(fd, RECALL_WINDOW, offset - before)
        end = data.find(b"\n", before)
        while end < 0:
            more = os.pread(fd, RECALL_WINDOW, offset - before + len(data))
            if not more:
                return data[before:]
            at = more.find(b"\n")
            end = -1 if at < 0 else len(data) + at
            data += more
        self._window = (position - before, data)
        return data[before:end]

    def close(self) -> None:
        for n, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[n] = None

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


def scan(path: Path, state: OutputState, *, keep_done: bool = False, start: int = 0
         ) -> LoadReport:
    """Read an output into `state` without changing it (safe while a run writes it); `state`
    reads its lines back from the file from then on (`OutputFiles`: several outputs may be
    scanned into one state; `keep_done` as for `OutputState.account`). Only its lines from
    offset `start` on (the end of a line) with `start`: those a partial resume index leaves.

    The last line for a custom_id wins; a torn last line is ignored; lines that are not JSON
    objects (hand edits, disk corruption) are counted and skipped. A missing file is empty."""
    report = LoadReport()
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not an output file")
    files = _files_of(state)
    base = position = files.add(path)  # a missing file too: a run appends to it, and reads back
    if not path.exists():
        return report
    report.exists = True
    lines = LineSplitter()
    account = state.account
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if start:
                position += start
            else:
                state.reserve(estimate_lines(sample(f.fileno(), size), size,
                                             SHORTEST_RESULT_LINE))
            f.seek(start)
            while chunk := f.read(READ_CHUNK):
                data = lines.whole(chunk)  # the lines this chunk completes, newlines kept
                if not data:
                    continue
                first = report.lines
                if report.bad_lines < MAX_BAD_SHOWN:  # line numbers of bad lines: count as we go
                    for at, _ in state.account_lines(data, position, keep_done=keep_done):
                        _bad(report, first + data.count(b"\n", 0, at) + 1)
                else:
                    for _ in state.account_lines(data, position, keep_done=keep_done):
                        report.bad_lines += 1
                report.lines += data.count(b"\n")
                position += len(data)
    except OSError as e:
        raise CheckpointError(f"cannot read the output {path}: {e.strerror}") from None
    if start and report.first_bad_lines:  # rare: number them in the whole file
        before = _lines_before(path, start)
        report.first_bad_lines = [number + before for number in report.first_bad_lines]
    report.good_end = start + lines.complete
    files.end = base + report.good_end
    tail = lines.tail
    if tail:
        if _is_record(tail):  # whole, only its newline missing (written by another tool)
            report.lines += 1
            report.unterminated = True
            facts = line_facts(tail)
            if facts is not None:
                account(facts, position, keep_done=keep_done)
            files.end += len(tail) + 1
        else:
            report.torn_bytes = len(tail)
    return report


def _lines_before(path: Path, offset: int) -> int:
    count = 0
    with open(path, "rb") as f:
        while offset > 0 and (chunk := f.read(min(READ_CHUNK, offset))):
            count += chunk.count(b"\n")
            offset -= len(chunk)
    return count


def _files_of(state: OutputState) -> OutputFiles:
    """The files `state` reads its lines back from (made so while it is still empty)."""
    if not isinstance(state.lines, OutputFiles):
        if len(state.done) or len(state.transient) or len(state.permanent) \
                or len(state.noted_duplicates):
            raise ValueError("a state holding records cannot read an output file too")
        state.lines = OutputFiles()
    return state.lines


def _bad(report: LoadReport, number: int) -> None:
    report.bad_lines += 1
    if len(report.first_bad_lines) < MAX_BAD_SHOWN:
        report.first_bad_lines.append(number)


def load(path: Path, state: OutputState, *, start: int = 0) -> LoadReport:
    """`scan` (from `start`), then repair the file for appending: a torn last line left by a
    crash is cut off (its job runs again); a whole last line missing its newline gets one."""
    report = scan(path, state, start=start)
    try:
        if report.unterminated:
            with open(path, "ab") as f:
                f.write(b"\n")
                os.fsync(f.fileno())
        elif report.torn_bytes:
            with open(path, "r+b") as f:
                f.truncate(report.good_end)
                os.fsync(f.fileno())
    except OSError as e:
        raise CheckpointError(f"cannot repair the output {path}: {e.strerror}") from None
    return report


def _is_record(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


class Checkpoint:
    """Appends result lines to the output; `sync()` makes them durable, `run_syncer()` does it often."""

    def __init__(self, path: Path, *, fsync: Callable[[int], Any] = os.fsync,
                 secrets: tuple[str, ...] = ()) -> None:
        self.path = path
        self._fsync = fsync
        # an API key must never land in a result line, even if a server echoes it back
        self._secrets = tuple(secrets)
        self._fd: int | None = None
        self._dirty = False
        self._new_entry = False  # its directory entry not synced by this process yet
        self.written = 0
        self.size = 0  # the file's length: where the next line goes
        self.hasher: Digest | None = None  # fed every line appended (resume index's digest)
        self.broken = False  # a line could not be written whole

    def open(self) -> None:
        """Open (or create) the output for appending. Its directory entry is made durable by the
        first sync, with its first lines, not here: nothing waits on a disk before the first
        request, and until that sync no line is durable anyway. Every run syncs it once, not
        only the run that created the file: that run may have ended before syncing any line
        (killed, or `--via batch --no-wait`), leaving a name no later run would make durable."""
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        except OSError as e:
            raise CheckpointError(f"cannot open the output {self.path}: {e.strerror}") from None
        self.size = os.fstat(self._fd).st_size
        self._new_entry = True

    def append(self, record: dict[str, Any]) -> int:
        """Hand one result line to the OS at once (one write: whole, or not at all, on a kill);
        returns its offset in the file (as long as this run alone appends, as its lock ensures)."""
        assert self._fd is not None, "Checkpoint.open() first"
        data = redact_bytes(orjson.dumps(record) + b"\n", self._secrets)
        size = None  # the file's size before this line, known once a write fell short
        try:
            written = os.write(self._fd, data)  # one write: whole, or not at all on a kill
            if written < len(data):  # only on a full disk or a huge line: finish it
                size = os.fstat(self._fd).st_size - written
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self._fd, view):]
        except OSError as e:
            if size is not None:  # never leave half a line for the next one to fuse with
                try:
                    os.ftruncate(self._fd, size)
                except OSError:
                    pass
            self.broken = True
            raise CheckpointError(f"cannot write to the output {self.path}: {e.strerror}") from None
        if self.hasher is not None:
            self.hasher.update(data)
        self._dirty = True
        self.written += 1
        offset, self.size = self.size, self.size + len(data)
        return offset

    async def sync(self) -> None:
        """fsync off the event loop (aiofiles runs it in a worker thread). Raises CheckpointError
        when the output can no longer be made durable (fsync failed, or the file was deleted)."""
        if self._fd is None or not self._dirty:
            return
        self._dirty = False
        try:
            await aiofiles.os.wrap(self._fsync)(self._fd)
            if self._new_entry:
                await aiofiles.os.wrap(fsync_dir)(self.path.parent)
                self._new_entry = False
            deleted = os.fstat(self._fd).st_nlink == 0
        except OSError as e:
            self._dirty = True
            raise CheckpointError(f"cannot sync the output {self.path}: {e.strerror}") from None
        if deleted:
            raise CheckpointError(f"the output {self.path} was deleted during the run; results "
                                  "written since then are lost")

    async def run_syncer(self, interval: float = FSYNC_INTERVAL_S) -> None:
        """Sync every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.sync()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._dirty:
                    self._fsync(fd)
                    if self._new_entry:
                        fsync_dir(self.path.parent)
            except OSError as e:
                raise CheckpointError(f"cannot sync the output {self.path}: {e.strerror}") from None
            finally:
                os.close(fd)
