"""Several outputs read as one sequence of numbered lines, and any line read again by its number
(`jobs.merge.MergeSource`, for `runner merge`).

A file's lines are what `bytes.splitlines` makes of it (a break is `\\n`, `\\r\\n` or `\\r`; a last
line without one counts), numbered from 0 over the files laid end to end. The files are streamed
in chunks, never held whole; the first reading of each keeps the byte offset of every
`LINES_PER_MARK`th line (8 bytes per that many lines), from which a line is found again with one
`pread`. The last span read of each file is kept for the reads that follow.
"""
from __future__ import annotations

import bisect
import itertools
import os
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["OutputLines", "UnreadableOutput", "split_lines"]

READ_CHUNK = 1 << 20
LINES_PER_MARK = 16       # the offset of every this-many-th line of a file is kept
MARK_SHIFT = LINES_PER_MARK.bit_length() - 1
REREAD_SIZE = 1 << 14     # bytes read at first to find a line again (doubled until it is whole)


class UnreadableOutput(Exception):
    """An output cannot be read (the message names it and says why)."""


def split_lines(data: bytes) -> tuple[list[bytes], list[int]]:
    """The lines of `data` (whole lines, as `data.splitlines()`) and the length of each with its
    line break."""
    if b"\r" not in data:
        lines = data.split(b"\n")
        if lines[-1]:
            return lines, [len(line) + 1 for line in lines[:-1]] + [len(lines[-1])]
        lines.pop()
        return lines, [len(line) + 1 for line in lines]
    parts = data.splitlines(keepends=True)
    return [part.rstrip(b"\r\n") for part in parts], [len(part) for part in parts]


class OutputLines:
    """The lines of `paths`, in order (see the module docstring). `output(k)` must be read
    through, for k = 0, 1, ... in turn, before `lines()` or `read()` asks for its lines.
    `UnreadableOutput` when a file cannot be read."""

    __slots__ = ("_paths", "_starts", "_ends", "_marks", "_fds", "_windows")

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._starts: list[int] = []        # the number of each output's first line
        self._ends: list[int] = []          # the number past its last line, once read through
        self._marks: list[array] = []       # per output: offsets of its lines 0, 16, 32, ...
        self._fds: list[int | None] = [None] * len(self._paths)
        # per output, the lines read back last: (number of the first, lines)
        self._windows: list[tuple[int, list[bytes]]] = [(0, [])] * len(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __enter__(self) -> OutputLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunks(self, k: int) -> Iterator[tuple[list[bytes], list[int]]]:
        """Output `k`'s lines, a chunk's worth at a time, with their lengths."""
        path = self._paths[k]
        tail = b""
        try:
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    end = chunk.rfind(b"\n") + 1
                    if not end:
                        tail += chunk
                        continue
                    data, tail = tail + chunk[:end], chunk[end:]
                    yield split_lines(data)
        except OSError as e:
            raise UnreadableOutput(f"cannot read {path}: {e.strerror}") from None
        if tail:
            yield split_lines(tail)

    def output(self, k: int) -> Iterator[list[bytes]]:
        """The lines of output `k`, a chunk's worth at a time; the first time, its marks are
        taken on the way. Read again, it stops at the lines the first reading found (lines
        appended since are not merged)."""
        if k < len(self._ends):
            left = self._ends[k] - self._starts[k]
            for lines, _ in self._chunks(k):
                if len(lines) >= left:
                    yield lines[:left]
                    return
                left -= len(lines)
                yield lines
            return
        if k != len(self._starts):
            raise ValueError(f"output {k} read before output {len(self._starts)}")
        marks = array("Q")
        self._starts.append(self._ends[-1] if self._ends else 0)
        self._marks.append(marks)
        number = offset = 0  # within this output
        for lines, lengths in self._chunks(k):
            skip = -number % LINES_PER_MARK
            if skip < len(lines):
                starts = list(itertools.accumulate(lengths, initial=offset))
                marks.extend(starts[skip:len(lines):LINES_PER_MARK])
            number += len(lines)
            offset += sum(lengths)
            yield lines
        self._ends.append(self._starts[k] + number)

    def lines(self) -> Iterator[list[bytes]]:
        """Every line of every output, end to end, a chunk's worth at a time."""
        for k in range(len(self._paths)):
            yield from self.output(k)

    def read(self, number: int) -> bytes:
        """Line `number` (of an output read through, or being read), without its line break."""
        k = bisect.bisect_right(self._starts, number) - 1
        first, lines = self._windows[k]
        at = number - first
        if 0 <= at < len(lines):
            return lines[at]
        within = number - self._starts[k]
        mark = within >> MARK_SHIFT
        offset = self._marks[k][mark]
        skip = within - (mark << MARK_SHIFT)
        fd = self._fds[k]
        path = self._paths[k]
        try:
            if fd is None:
                fd = self._fds[k] = os.open(path, os.O_RDONLY)
            size = REREAD_SIZE
            while True:
                data = os.pread(fd, size, offset)
                end = data.rfind(b"\n") + 1
                whole = len(data) < size  # the file ends within it
                lines, _ = split_lines(data if whole else data[:end])
                if len(lines) > skip or whole:
                    break
                size *= 2
        except OSError as e:
            raise UnreadableOutput(f"cannot read {path}: {e.strerror}") from None
        if len(lines) <= skip:
            raise UnreadableOutput(f"cannot read {path}: it changed while being merged")
        self._windows[k] = (number - skip, lines)
        return lines[skip]

    def close(self) -> None:
        for k, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[k] = None
