"""Splitting a byte stream, read in chunks, into lines: the one place that does it.

Pure, but for `sample`, which reads some of a file to estimate its lines. The input readers
(`runner.files.inputs`) and the checkpoint (`runner.files.checkpoint`) feed it the chunks they
read, of any size.
"""
from __future__ import annotations

import os


class LineSplitter:
    """The complete lines (newline stripped) of the chunks fed so far, in order.

    What follows the last newline waits in `tail` for the next chunk; once the stream has ended, a
    non-empty `tail` is a last line without a newline (or one torn by a crash: the caller decides).
    """

    __slots__ = ("tail", "_fed")

    def __init__(self) -> None:
        self.tail = b""
        self._fed = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines `chunk` completes; the rest of it becomes `tail`."""
        self._fed += len(chunk)
        lines = (self.tail + chunk).split(b"\n")
        self.tail = lines.pop()
        return lines

    def whole(self, chunk: bytes) -> bytes:
        """The lines `chunk` completes as one buffer, each with its newline (`feed` without
        splitting); the rest of it becomes `tail`."""
        self._fed += len(chunk)
        end = chunk.rfind(b"\n") + 1
        if not end:
            self.tail += chunk
            return b""
        data, self.tail = self.tail + chunk[:end], chunk[end:]
        return data

    @property
    def complete(self) -> int:
        """Bytes fed in complete lines: the stream offset just past the last newline."""
        return self._fed - len(self.tail)


ESTIMATE_SAMPLE = 1 << 20  # bytes of a file read to estimate how many lines it holds
ESTIMATE_PIECES = 16       # ... in this many pieces spread evenly over it (the head, ..., the end)


def sample(fd: int, size: int) -> bytes:
    """About `ESTIMATE_SAMPLE` bytes of the open file `fd` (`size` bytes long): all of it when it
    is that short, else `ESTIMATE_PIECES` pieces from its head to its end, laid end to end. For
    `estimate_lines`: a file whose lines grow or shrink along it is judged by all of it."""
    if size <= ESTIMATE_SAMPLE:
        return os.pread(fd, ESTIMATE_SAMPLE, 0)
    piece = ESTIMATE_SAMPLE // ESTIMATE_PIECES
    step = (size - piece) // (ESTIMATE_PIECES - 1)
    return b"".join(os.pread(fd, piece, k * step) for k in range(ESTIMATE_PIECES))


def estimate_lines(head: bytes, size: int, shortest: int) -> int:
    """How many lines a file of `size` bytes holds, judged by some of its bytes (`head`, or a
    `sample`); never more than `size / shortest` (`shortest`: the shortest line the file can
    hold), 0 when unknown. For sizing tables once instead of growing them: a file whose sample is
    not like the rest only costs a table one doubling larger or smaller than it needs."""
    lines = head.count(b"\n")
    if not lines or not size:
        return 0
    return min(size * lines // len(head), size // shortest)
