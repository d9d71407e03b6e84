"""Reading the input (INPUT: a file, a pipe or FIFO, or stdin as "-"), for run, status and estimate.

`open_input` is the one place INPUT is opened; every reader goes through it:

- `input_lines`: raw lines, read synchronously (`runner status`, `runner estimate`);
- `read_lines` / `read_items`: raw lines / jobs without blocking the event loop (`runner run`). A
  regular file is read in large chunks by aiofiles (one thread hop per MiB). A pipe, FIFO or
  terminal is read through the event loop itself, so whatever has arrived is processed at once (a
  slow writer never holds jobs back) and a stop is never stuck behind a blocked read;
- `count_lines`: the non-blank lines of a regular file, for progress totals.

Every reader yields lines without their newline; a last line needs none; lines are split by
`runner.files.lines.LineSplitter`. A compressed INPUT (gzip, bzip2, xz: recognised by its first
bytes, whatever its name) is decompressed on the way, in pieces of at most `CHUNK` bytes, so
memory stays bounded however well it compresses (`runner.files.compression`); zstd and zip are
refused with a message saying how to decompress them.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import BinaryIO, Protocol

import aiofiles.threadpool

from jobs.job import Job
from jobs.reader import BOM, BadLine, Duplicate, JobReader, line_id, line_ids, parse_line
from jobs.settled import Settled
from runner.errors import UnusableInput
from runner.files.compression import MAGIC_BYTES, CompressionError, Decompressor, refusal, sniff
from runner.files.lines import LineSplitter, estimate_lines, sample

BINARY_PEEK = 8192  # bytes of a regular INPUT looked at for NUL bytes (a binary file)
SHORTEST_JOB_LINE = 64  # bytes: {"custom_id":"1","method":"POST","url":"/v1/embeddings","body":{}}
CHUNK = 1 << 20  # one thread hop per MiB keeps aiofiles' per-call overhead negligible
STDIN = "-"


class UnreadableInput(Exception):
    """INPUT cannot be opened or read (`input_lines`); the message names it and says why."""


class UnreadableFormat(UnreadableInput, UnusableInput):
    """INPUT is compressed in a format we do not read, or its compressed data is corrupt or cut
    short (raised by every reader, sync or async); the message names INPUT and what to do."""


class _Decoding:
    """The bytes of INPUT as they are meant to be read: decompressed when its first bytes show a
    format we read, untouched otherwise. Feed raw chunks in order, then call `finish`."""

    __slots__ = ("_name", "_head", "_decoder", "_decided")

    def __init__(self, path: str) -> None:
        self._name = input_name(path)
        self._head = b""
        self._decoder: Decompressor | None = None
        self._decided = False

    def _decide(self) -> Iterator[bytes]:
        self._decided = True
        head, self._head = self._head, b""
        kind = sniff(head)
        if kind in ("zstd", "zip"):
            raise UnreadableFormat(refusal(kind, self._name))
        if kind is not None:
            self._decoder = Decompressor(kind, CHUNK)
        yield from self._pass(head)

    def _pass(self, chunk: bytes) -> Iterator[bytes]:
        if self._decoder is None:
            if chunk:
                yield chunk
            return
        try:
            yield from self._decoder.feed(chunk)
        except CompressionError as e:
            raise UnreadableFormat(f"cannot read input {self._name}: {e}") from None

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        if self._decided:
            yield from self._pass(chunk)
            return
        self._head += chunk
        if len(self._head) >= MAGIC_BYTES:
            yield from self._decide()

    def finish(self) -> Iterator[bytes]:
        if not self._decided:
            yield from self._decide()
        if self._decoder is not None:
            try:
                self._decoder.finish()
            except CompressionError as e:
                raise UnreadableFormat(f"cannot read input {self._name}: {e}") from None


def input_name(path: str) -> str:
    """How messages name INPUT: its path, or "<stdin>"."""
    return "<stdin>" if path == STDIN else path


def open_input(path: str, *, nonblocking: bool = False) -> BinaryIO:
    """INPUT opened for reading bytes, unbuffered (readers read large chunks); for "-" the process's
    stdin, which closing the returned file leaves open. OSError when it cannot be opened.

    `nonblocking` opens a path with O_NONBLOCK, so that opening a FIFO whose writer has not
    started yet returns at once instead of freezing the event loop (Linux); for the event loop's
    pipe reader only. Stdin is taken as it is.
    """
    if path == STDIN:
        return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    if nonblocking:
        return open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)
    return open(path, "rb", buffering=0)


def _is_regular(path: str) -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode if path == STDIN else os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode)


# --- synchronous -------------------------------------------------------------------------------

def _lines_of(f: BinaryIO, path: str) -> Iterator[bytes]:
    lines = LineSplitter()
    decoding = _Decoding(path)
    while chunk := f.read(CHUNK):
        for piece in decoding.feed(chunk):
            yield from lines.feed(piece)
    for piece in decoding.finish():
        yield from lines.feed(piece)
    if lines.tail:
        yield lines.tail


def input_lines(path: str) -> Iterator[bytes]:
    """Raw lines of INPUT, read synchronously (blocking). Opened at the first line asked for;
    UnreadableInput ("cannot read input PATH: why") when it cannot be opened or read."""
    try:
        with open_input(path) as f:
            yield from _lines_of(f, path)
    except OSError as e:
        raise UnreadableInput(f"cannot read input {path}: {e.strerror}") from None


def count_lines(path: str, holds: Callable[[str | None], bool] | None = None) -> int | None:
    """Non-blank lines of a regular file, for progress totals; None for stdin, pipes and FIFOs
    (counting would consume them) and compressed files. With `holds` (`Shard.holds`), only the
    lines whose custom_id it holds (None: the line has none readable). OSError or
    UnreadableFormat when it cannot be read. Blocking: call it in a thread."""
    if path == STDIN or not _is_regular(path):
        return None
    with open_input(path) as f:
        if sniff(f.read(MAGIC_BYTES)) is not None:
            return None  # compressed: counting would decompress it all once more
        f.seek(0)
        lines = (line for line in _lines_of(f, path) if line.strip())
        if holds is None:
            return sum(1 for _ in lines)
        return sum(1 for line in lines if holds(_custom_id(line)))


def _custom_id(line: bytes) -> str | None:
    """The custom_id of a job line, if it has a readable one (for counting a shard's lines)."""
    return line_id(line) or None


def _not_text(head: bytes) -> bool:
    """Whether the first bytes of a file are not text: most of its lines are not UTF-8 (one bad
    line in a job file is that line's problem, reported by line like any other)."""
    lines = head.split(b"\n")
    if len(lines) > 1:
        lines = lines[:-1]  # the last may be cut by the end of the sample
    bad = 0
    for line in lines:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
    return bad * 2 > len(lines)


def check_format(path: str) -> None:
    """Raise UnreadableFormat at once when a regular INPUT is in a format we do not read (zstd,
    zip), before a run starts; OSError when it cannot be read. Pipes and stdin are checked as
    they are read."""
    if path == STDIN or not _is_regular(path):
        return
    with open_input(path) as f:
        head = f.read(BINARY_PEEK)
    kind = sniff(head[:MAGIC_BYTES])
    if kind in ("zstd", "zip"):
        raise UnreadableFormat(refusal(kind, input_name(path)))
    if kind is None and (b"\0" in head or _not_text(head)):
        raise UnreadableFormat(f"{input_name(path)} is a binary file, not a JSONL job file (one "
                               "JSON object a line with custom_id, method, url and body); "
                               "nothing was run")


# --- asynchronous ------------------------------------------------------------------------------

async def _chunks(path: str) -> AsyncIterator[bytes]:
    if _is_regular(path):
        f = await asyncio.to_thread(open_input, path)
        try:
            reader = aiofiles.threadpool.wrap(f)
            while chunk := await reader.read(CHUNK):
                yield chunk
        finally:
            f.close()
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    pipe = open_input(path, nonblocking=True)
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
    """Raw lines of INPUT, read without blocking the event loop. OSError when it cannot be read,
    UnreadableFormat when its compression is not read or its compressed data is broken."""
    lines = LineSplitter()
    decoding = _Decoding(path)
    async for chunk in _chunks(path):
        for piece in decoding.feed(chunk):
            for line in lines.feed(piece):
                yield line
    for piece in decoding.finish():
        for line in lines.feed(piece):
            yield line
    if lines.tail:
        yield lines.tail


async def read_items(path: str) -> AsyncIterator[Job | BadLine | Duplicate]:
    """The jobs, bad lines and duplicates of INPUT, in file order (blank lines skipped)."""
    with Rereader.of(path) as reread:
        reader = JobReader(input_name(path), reread=reread,
                           expected_lines=None if reread is None else reread.lines())
        async for raw in read_lines(path):
            item = reader.feed(raw)
            if item is not None:
                yield item
        reader.finish()


class Digest(Protocol):
    """A running SHA-256 (`hashlib.sha256()`): what a file's digest is carried on in."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Digest: ...


class ReadMark:
    """How far `read_unsettled` has read INPUT, at the end of a line (or of the file): `lines`
    lines, their first `size` bytes, and `hasher` fed those bytes (a partial resume index is
    written from it)."""

    __slots__ = ("hasher", "lines", "size")

    def __init__(self, hasher: Digest) -> None:
        self.lines = 0
        self.size = 0
        self.hasher = hasher


async def read_unsettled(path: str, source: BinaryIO, size: int | None, settled: Settled, *,
                         duplicates: bool = False, hasher: Digest | None = None,
                         mark: ReadMark | None = None) -> AsyncIterator[Job | BadLine | Duplicate]:
    """The items of INPUT's lines that `settled` (a resume index) leaves to read, in file order,
    read from `source` (INPUT, open; its first `size` bytes, the ones the index vouches for, and
    no further; None: to its end). Its DONE and KEPT lines are numbered but never parsed, runs of
    them a chunk at a time. No duplicate check (the index vouches that INPUT holds none) unless
    `duplicates`, for a `settled` with nothing settled: every line read, as `read_items` reads
    it. `hasher` is fed every byte read; or `mark` says how far it read, line by line, its
    hasher fed those bytes."""
    reread = Rereader(source.fileno()) if duplicates else None
    reader = JobReader(input_name(path), reread=reread, duplicates=duplicates,
                       expected_lines=None if reread is None else reread.lines())
    lines = LineSplitter()
    async for data in _whole_lines(source, size, lines):
        count = data.count(b"\n")
        if hasher is not None:
            hasher.update(data)
        if mark is not None:
            mark.hasher.update(data)
            mark.lines += count
            mark.size += len(data)
        if settled.settled_from(reader.line + 1, count):
            reader.skip(count)
            continue
        if not settled.states:  # nothing settled: every line read
            for raw in data[:-1].split(b"\n") if data else ():
                if (item := reader.feed(raw)) is not None:
                    yield item
            continue
        for raw in data[:-1].split(b"\n") if data else ():
            if settled.is_settled(reader.line + 1):
                reader.skip(1)
            elif (item := reader.feed(raw)) is not None:
                yield item
    if tail := lines.tail:
        if hasher is not None:
            hasher.update(tail)
        if mark is not None:  # a resume index checks no byte was added to it
            mark.hasher.update(tail)
            mark.lines += 1
            mark.size += len(tail)
        if settled.is_settled(reader.line + 1):
            reader.skip(1)
        elif (item := reader.feed(tail)) is not None:
            yield item
    reader.finish()


async def _whole_lines(source: BinaryIO, size: int | None,
                       lines: LineSplitter) -> AsyncIterator[bytes]:
    """The whole lines of `source`'s first `size` bytes (None: to its end), a chunk at a time,
    each ending with its newline; what follows the last newline is left in `lines.tail`."""
    chunks = aiofiles.threadpool.wrap(source)
    left = size
    while left is None or left > 0:
        chunk = await chunks.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            break
        if left is not None:
            left -= len(chunk)
        yield lines.whole(chunk)


async def settle_lines(path: str, source: BinaryIO, size: int, settled: Settled,
                       answered: set[str], *, hasher: Digest, vouched: tuple[int, str]
                       ) -> AsyncIterator[Job | BadLine]:
    """The pass that settles a partial resume index (`runner.files.resume_index`), whose
    `settled` states vouch for INPUT's first `vouched` bytes (their count and SHA-256): every
    line of INPUT (`source`, its first `size` bytes, all fed to `hasher`) read once for its
    custom_id alone, for the duplicate check (`JobReader.note_many`), and the items of the lines
    `settled` leaves whose ids are `answered` (results OUTPUT holds after the index), in file
    order, for the caller to decide; the ids met are taken out of `answered` (those left answer
    no line of INPUT). No other job is parsed: nothing answers it, or the index settled it. The
    pass ends early, `settled` spoilt (the index cannot be used: OUTPUT must be read whole), at
    a duplicate id, at a later result for a line the index settled (appended by another tool:
    the last line for an id decides), or when the vouched bytes changed."""
    reread = Rereader(source.fileno())
    reader = JobReader(input_name(path), reread=reread, expected_lines=reread.lines())
    wanted = answered
    lines = LineSplitter()
    done = 0  # bytes fed to `hasher`
    async for data in _whole_lines(source, size, lines):
        if not _hash_vouched(hasher, data, done, vouched, settled):
            return
        done += len(data)
        if data:
            for item in _settle_chunk(reader, data[:-1].split(b"\n"), settled, wanted):
                yield item
            if settled.void is not None:
                return
    if tail := lines.tail:
        if not _hash_vouched(hasher, tail, done, vouched, settled):
            return
        done += len(tail)
        for item in _settle_chunk(reader, [tail], settled, wanted):
            yield item
    if done < vouched[0]:  # cut short since: never compared
        settled.spoil("INPUT changed since its partial index was checked")


def _hash_vouched(hasher: Digest, data: bytes, done: int, vouched: tuple[int, str],
                  settled: Settled) -> bool:
    """Feed `data` (found after `done` bytes) to `hasher`, comparing the digest where the
    vouched bytes end; False, `settled` spoilt, when it differs (INPUT changed meanwhile)."""
    end, digest = vouched
    if not done < end <= done + len(data):
        hasher.update(data)
        return True
    with memoryview(data) as view:
        hasher.update(view[:end - done])
        if hasher.copy().hexdigest() != digest:
            settled.spoil("INPUT changed since its partial index was checked")
            return False
        hasher.update(view[end - done:])
    return True


def _settle_chunk(reader: JobReader, raws: list[bytes], settled: Settled,
                  wanted: set[str]) -> list[Job | BadLine]:
    """The next lines of the settling pass (`settle_lines`): their ids noted, the items of
    those `wanted` parsed; none, `settled` spoilt, at a duplicate or a wanted settled line."""
    first = reader.line + 1
    ids = line_ids(raws, first)
    if reader.note_many(raws, ids) is not None:
        settled.spoil("duplicate custom_ids")
        return []
    if not wanted or wanted.isdisjoint(ids):
        return []
    items = []
    for n, custom_id in enumerate(ids):
        line = first + n
        if custom_id not in wanted:
            continue
        if settled.is_settled(line):
            settled.spoil("a line of OUTPUT after the partial index answers a job it settled")
            return []
        wanted.discard(custom_id)
        raw = raws[n][len(BOM):] if line == 1 and raws[n].startswith(BOM) else raws[n]
        if (item := parse_line(raw, line, reader.path)) is not None:
            items.append(item)
    return items


def unsettled_items(path: str, settled: Settled) -> Iterator[Job | BadLine]:
    """The items of INPUT's lines that `settled` leaves to read (its PENDING lines), numbered as
    in the file, the others counted but never parsed (blocking; no duplicate check, as
    `read_unsettled`)."""
    reader = JobReader(input_name(path), duplicates=False)
    for number, raw in enumerate(input_lines(path), 1):
        if settled.is_settled(number):
            reader.skip(1)
        elif (item := reader.feed(raw)) is not None:
            yield item
    reader.finish()


class Rereader:
    """Reads a regular, uncompressed INPUT again at an offset (`JobReader`'s `reread`: its
    duplicate check then keeps line numbers, not ids). `Rereader.of(path)` is a context giving
    one, or None for stdin, pipes and compressed files (they cannot be read twice)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __call__(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def lines(self) -> int:
        """About how many lines INPUT holds (`lines.estimate_lines` of a `lines.sample`), for
        sizing the reader's table once: a narrow table that grows reads every id back."""
        size = os.fstat(self._fd).st_size
        return estimate_lines(sample(self._fd, size), size, SHORTEST_JOB_LINE)

    @staticmethod
    @contextlib.contextmanager
    def of(path: str) -> Iterator[Rereader | None]:
        fd = None
        if path != STDIN and _is_regular(path):
            try:
                fd = os.open(path, os.O_RDONLY)
                if sniff(os.pread(fd, MAGIC_BYTES, 0)) is not None:
                    os.close(fd)
                    fd = None
            except OSError:
                fd = None  # the readers proper report it
        try:
            yield None if fd is None else Rereader(fd)
        finally:
            if fd is not None:
                os.close(fd)
