"""Compressed job files: recognised by their first bytes, never by their name, and decompressed as
a stream in bounded pieces.

Read: gzip (`.gz`, several members concatenated too), bzip2 (`.bz2`) and xz (`.xz`), all from
Python's standard library. Recognised and refused with a message that says how to decompress:
zstd and zip (no well-kept zstd decoder ships with Python 3.11; a zip archive holds files, not a
stream). Anything else is read as plain JSONL.

`Decompressor` is pure (bytes in, bytes out, no I/O): it serves the async reader of a run and the
blocking readers of `status` and `estimate` alike. However well the input compresses, it never
hands out more than `max_piece` bytes at once, so memory stays bounded by the chunk size (a small
file that inflates to gigabytes is read like a large plain one).
"""
from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Iterable, Iterator

MAGIC_BYTES = 6  # enough of a file's start to recognise every format below
_GZIP = b"\x1f\x8b"
_BZIP2 = b"BZh"
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"
_ZIP = b"PK\x03\x04"

READ = ("gzip", "bzip2", "xz")


class CompressionError(ValueError):
    """The input is compressed in a format we do not read, or its compressed data is corrupt or
    cut short. The message names the format and what to do."""


def sniff(head: bytes) -> str | None:
    """The compression of a file starting with `head` ("gzip", "bzip2", "xz", "zstd", "zip"), or
    None for anything else (plain text, or bytes of no known format)."""
    if head.startswith(_GZIP):
        return "gzip"
    if head.startswith(_BZIP2) and len(head) > 3 and head[3:4].isdigit():
        return "bzip2"
    if head.startswith(_XZ):
        return "xz"
    if head.startswith(_ZSTD):
        return "zstd"
    if head.startswith(_ZIP):
        return "zip"
    return None


def _new(kind: str):  # a fresh stdlib decompressor of one stream (gzip: one member)
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor()


class Decompressor:
    """Feeds compressed chunks, yields decompressed pieces of at most `max_piece` bytes.

    `kind` is one of `READ`. Concatenated streams (several gzip members, as `cat a.gz b.gz`
    makes) are read one after another. `finish()` raises `CompressionError` when the data ended
    in the middle of a stream.
    """

    __slots__ = ("kind", "max_piece", "_inner")

    def __init__(self, kind: str, max_piece: int) -> None:
        if kind not in READ:
            raise ValueError(f"cannot decompress {kind!r}; expected one of {READ}")
        if max_piece < 1:
            raise ValueError("max_piece must be at least 1")
        self.kind = kind
        self.max_piece = max_piece
        self._inner = _new(kind)

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The decompressed pieces of `chunk`, each at most `max_piece` bytes; the caller consumes
        each piece before asking for the next, so only one piece is held at a time."""
        try:
            yield from self._feed(chunk)
        except (zlib.error, OSError, EOFError, lzma.LZMAError) as e:
            raise CompressionError(f"corrupt {self.kind} data ({e})") from None

    def _feed(self, data: bytes) -> Iterator[bytes]:
        gzip = self.kind == "gzip"
        while True:
            if self._inner.eof:  # a stream ended: what follows is the next one (or padding)
                if gzip:
                    data = data.lstrip(b"\x00")
                if not data:
                    return
                self._inner = _new(self.kind)
            inner = self._inner
            piece = inner.decompress(data, self.max_piece)
            if gzip:  # zlib hands back the input it did not reach
                data = inner.unused_data if inner.eof else inner.unconsumed_tail
            else:  # bz2 and lzma keep it, and the output not yet handed out, inside
                data = inner.unused_data if inner.eof else b""
            if piece:
                yield piece
            elif not data:
                return

    def finish(self) -> None:
        """The compressed input has ended: raise `CompressionError` if it ended mid-stream."""
        if not self._inner.eof:
            raise CompressionError(f"the {self.kind} data is cut short (an incomplete file?)")


def refusal(kind: str, path: str) -> str:
    """The message for a file compressed in a format we recognise but do not read; `path` is
    "<stdin>" for standard input."""
    if path == "<stdin>":
        tool = {"zstd": "zstd -dc FILE", "zip": "unzip -p FILE"}[kind]
        how = f"decompress it on the way in ({tool} | runner run - ...)"
    else:
        how = {"zstd": f"decompress it first (zstd -d {path}) or recompress it with gzip",
               "zip": f"extract the job file first (unzip {path})"}[kind]
    return f"{path} is {kind}-compressed; runner reads plain, gzip, bzip2 and xz JSONL: {how}"


def decompressed(chunks: Iterable[bytes], kind: str, max_piece: int) -> Iterator[bytes]:
    """The decompressed pieces of a whole stream of compressed chunks (blocking readers)."""
    decoder = Decompressor(kind, max_piece)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.finish()
